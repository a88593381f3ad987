// dicom-db study browser: a study list (search, facets, ordering, cursor paging) and a study page (series with
// thumbnails, each series' slices), built on the public GraphQL API (POST /graphql) and GET /thumbnails/ only.
// No framework: `h` builds elements (text is always set as text, never parsed as HTML), `render*` draw a view.
// Addresses: / (the list; its search is in the query string) and /studies/<StudyInstanceUID> (a study).

const PAGE_SIZE = 25;
const SLICE_PAGE = 100;
const TOKEN_KEY = 'dicom-db-token';
const ORDERS = {
  'date-desc': [{ field: 'STUDY_DATE', direction: 'DESC' }],
  'date-asc': [{ field: 'STUDY_DATE', direction: 'ASC' }],
  description: [{ field: 'STUDY_DESCRIPTION', direction: 'ASC' }],
  'study-id': [{ field: 'STUDY_ID', direction: 'ASC' }],
};
const FILTERS = ['patient', 'description', 'from', 'to', 'modality', 'year', 'order'];

const main = document.getElementById('main');
const errorBox = document.getElementById('error');
const tokenForm = document.getElementById('token-form');
const forgetToken = document.getElementById('forget-token');
// A de-identified token may not filter on patient names or IDs (the API answers FORBIDDEN): then the patient
// search looks the patient up by pseudonym (`patient(patientId:)`) and lists that patient's studies. Learnt from
// the first such answer.
let patientNamesHidden = false;
// The `after` of each list page seen so far, per search (the query string without the page), to go back.
const cursorsBySearch = new Map();
let view = 0; // increases with every navigation: an answer for an older view is dropped

// --- GraphQL ------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function graphql(query, variables) {
  let response;
  try {
    response = await fetch('/graphql', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...authHeaders() },
      body: JSON.stringify({ query, variables }),
    });
  } catch (exc) {
    throw new ApiError(`The server did not answer: ${exc.message}`, 'NETWORK');
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`The server answered ${response.status} ${response.statusText} without JSON.`, 'HTTP');
  }
  const first = body && body.errors && body.errors[0];
  if (response.status === 401) askForToken(first ? first.message : 'This server needs a token.');
  if (first) {
    // Errors found before execution (a variable that is not a date, say) carry no code of their own.
    const code = (first.extensions && first.extensions.code) || (response.ok ? 'GRAPHQL_ERROR' : `HTTP_${response.status}`);
    throw new ApiError(first.message, code);
  }
  if (!response.ok) throw new ApiError(`The server answered ${response.status}.`, `HTTP_${response.status}`);
  return body.data;
}

// --- Elements -----------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function text(value) {
  return value === null || value === undefined || value === '' ? '—' : String(value);
}

// A DICOM person name, Family^Given^Middle^Prefix^Suffix, as "Family, Given Middle".
function personName(value) {
  if (!value) return text(value);
  const [family = '', given = '', middle = ''] = value.split('=')[0].split('^');
  const rest = [given, middle].filter(Boolean).join(' ');
  return family && rest ? `${family}, ${rest}` : family || rest || value;
}

function showError(error) {
  errorBox.replaceChildren(
    h('strong', {}, error.code ? `${error.code}: ` : 'Error: '),
    error.message,
    h('button', { type: 'button', class: 'close', onclick: () => (errorBox.hidden = true) }, '×'),
  );
  errorBox.hidden = false;
}

function clearError() {
  errorBox.hidden = true;
}

function askForToken(message) {
  tokenForm.hidden = false;
  forgetToken.hidden = !sessionStorage.getItem(TOKEN_KEY);
  showError({ code: 'UNAUTHENTICATED', message: `${message} Enter a token above.` });
}

tokenForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const value = document.getElementById('token').value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  tokenForm.hidden = true;
  forgetToken.hidden = false;
  patientNamesHidden = false;
  route();
});

forgetToken.addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  forgetToken.hidden = true;
  tokenForm.hidden = false;
  patientNamesHidden = false;
});
forgetToken.hidden = !sessionStorage.getItem(TOKEN_KEY);

// --- Navigation ---------------------------------------------------------------------------------------------

function navigate(url) {
  history.pushState(null, '', url);
  route();
}

function link(href, ...children) {
  return h(
    'a',
    {
      href,
      onclick: (event) => {
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
        event.preventDefault();
        navigate(href);
      },
    },
    ...children,
  );
}

function route() {
  view += 1;
  clearError();
  const match = window.location.pathname.match(/^\/studies\/([^/]+)$/);
  if (match) return renderStudy(decodeURIComponent(match[1]), view);
  return renderList(new URLSearchParams(window.location.search), view);
}

window.addEventListener('popstate', route);

// --- Study list ---------------------------------------------------------------------------------------------

const LIST_QUERY = `
query StudyList($where: StudyWhere!, $byModality: StudyWhere!, $byYear: StudyWhere!,
                $orderBy: [StudyOrderBy!], $first: Int!, $after: String) {
  studies: allStudies(where: $where, orderBy: $orderBy, first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      studyInstanceUid studyDate studyDescription studyId seriesCount modalities
      patient { patientId patientName patientSex }
    }
  }
  modalities: allSeries(where: {study: $byModality}) { groupBy(field: MODALITY) { value count } }
  years: allStudies(where: $byYear) { groupBy(field: STUDY_DATE, datePart: YEAR) { value count } }
}`;

// The same for one patient, found by pseudonym (de-identified access). The modality facet needs a filter on the
// patient, which that access may not use: it is left out.
const PATIENT_QUERY = `
query PatientStudies($patientId: String!, $where: StudyWhere!, $byYear: StudyWhere!,
                     $orderBy: [StudyOrderBy!], $first: Int!, $after: String) {
  patient(patientId: $patientId) {
    studies(where: $where, orderBy: $orderBy, first: $first, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      nodes {
        studyInstanceUid studyDate studyDescription studyId seriesCount modalities
        patient { patientId patientName patientSex }
      }
    }
    years: studies(where: $byYear) { groupBy(field: STUDY_DATE, datePart: YEAR) { value count } }
  }
}`;

const NO_STUDIES = { totalCount: 0, nodes: [], pageInfo: { hasNextPage: false, endCursor: null } };

async function listStudies(params, variables) {
  if (!(params.get('patient') && patientNamesHidden)) return graphql(LIST_QUERY, variables);
  const { byModality, ...rest } = variables;
  const data = await graphql(PATIENT_QUERY, { ...rest, patientId: params.get('patient') });
  const patient = data.patient;
  return { studies: patient ? patient.studies : NO_STUDIES, years: patient ? patient.years : { groupBy: [] } };
}

// The StudyWhere of the search, without the filters named in `skip` (a facet counts as if its own choice were
// not made, so that its other values stay visible).
function studyWhere(params, skip = []) {
  const and = [];
  const patient = params.get('patient');
  if (patient && !patientNamesHidden) {
    const pattern = `*${patient}*`;
    and.push({ or: [{ patientId: { match: pattern } }, { patient: { patientName: { match: pattern } } }] });
  }
  const description = params.get('description');
  if (description) and.push({ studyDescription: { match: `*${description}*` } });
  const from = params.get('from');
  const to = params.get('to');
  if (from && !skip.includes('date')) and.push({ studyDate: { gte: from } });
  if (to && !skip.includes('date')) and.push({ studyDate: { lte: to } });
  const year = params.get('year');
  if (year && !skip.includes('year')) and.push({ studyDate: { gte: `${year}-01-01`, lte: `${year}-12-31` } });
  const modality = params.get('modality');
  if (modality && !skip.includes('modality')) and.push({ series: { some: { modality: { eq: modality } } } });
  return and.length ? { and } : {};
}

function searchKey(params) {
  const key = new URLSearchParams(params);
  key.delete('page');
  return key.toString();
}

async function renderList(params, current) {
  const order = ORDERS[params.get('order')] ? params.get('order') : 'date-desc';
  if (!cursorsBySearch.has(searchKey(params))) cursorsBySearch.set(searchKey(params), [null]);
  const cursors = cursorsBySearch.get(searchKey(params));
  const asked = Math.max(0, Number(params.get('page') || 0) | 0);
  const page = Math.min(asked, cursors.length - 1);
  if (page !== asked) {
    // A page number from another visit: its cursor is not known here, so the list starts again.
    const key = searchKey(params);
    history.replaceState(null, '', key ? `/?${key}` : '/');
  }
  const variables = {
    where: studyWhere(params),
    byModality: studyWhere(params, ['modality']),
    byYear: studyWhere(params, ['year']),
    orderBy: ORDERS[order],
    first: PAGE_SIZE,
    after: cursors[page],
  };
  const started = performance.now();
  let data;
  try {
    data = await listStudies(params, variables);
  } catch (error) {
    if (error.code === 'FORBIDDEN' && params.get('patient') && !patientNamesHidden) {
      patientNamesHidden = true; // a de-identified token: search pseudonyms only
      return renderList(params, current);
    }
    if (current !== view) return;
    main.replaceChildren(searchForm(params, order), h('p', { class: 'empty' }, 'No studies could be listed.'));
    return showError(error);
  }
  if (current !== view) return;
  const studies = data.studies;
  cursors[page + 1] = studies.pageInfo.endCursor;
  const first = page * PAGE_SIZE + 1;
  const last = page * PAGE_SIZE + studies.nodes.length;
  main.replaceChildren(
    searchForm(params, order),
    h(
      'div',
      { class: 'list-layout' },
      h(
        'aside',
        { class: 'facets' },
        data.modalities ? facet('Modality (series)', 'modality', data.modalities.groupBy, params) : null,
        facet('Study year', 'year', newestFirst(data.years.groupBy), params),
      ),
      h(
        'section',
        { class: 'results' },
        h(
          'p',
          { class: 'summary', id: 'summary' },
          studies.totalCount === 0
            ? 'No study matches.'
            : `Studies ${first}–${last} of ${studies.totalCount}`,
          h('span', { class: 'timing' }, ` (${Math.round(performance.now() - started)} ms)`),
        ),
        studies.nodes.length ? studyTable(studies.nodes) : null,
        h(
          'nav',
          { class: 'pager' },
          h('button', { type: 'button', id: 'previous', disabled: page === 0, onclick: () => goToPage(params, page - 1) }, '← Previous'),
          h('span', {}, ` page ${page + 1} `),
          h(
            'button',
            { type: 'button', id: 'next', disabled: !studies.pageInfo.hasNextPage, onclick: () => goToPage(params, page + 1) },
            'Next →',
          ),
        ),
      ),
    ),
  );
  document.title = `dicom-db studies (${studies.totalCount})`;
  performance.mark('dicom-db:list'); // when the list is in the page (bench/bench_browser.py reads it)
}

function goToPage(params, page) {
  const next = new URLSearchParams(params);
  if (page > 0) next.set('page', page);
  else next.delete('page');
  navigate(next.toString() ? `/?${next}` : '/');
}

// A new search starts from its first page.
function search(params) {
  const next = new URLSearchParams();
  for (const key of FILTERS) if (params.get(key)) next.set(key, params.get(key));
  navigate(next.toString() ? `/?${next}` : '/');
}

function searchForm(params, order) {
  const field = (name, label, type = 'search') =>
    h('label', {}, label, h('input', { name, type, value: params.get(name) || '' }));
  return h(
    'form',
    {
      class: 'search',
      id: 'search',
      onsubmit: (event) => {
        event.preventDefault();
        const form = new FormData(event.target);
        const next = new URLSearchParams();
        for (const key of FILTERS) if (params.get(key)) next.set(key, params.get(key));
        for (const [key, value] of form.entries()) {
          if (String(value).trim()) next.set(key, String(value).trim());
          else next.delete(key);
        }
        search(next);
      },
    },
    field('patient', patientNamesHidden ? 'Patient ID (pseudonym)' : 'Patient (name or ID)'),
    field('description', 'Description'),
    field('from', 'From', 'date'),
    field('to', 'To', 'date'),
    h(
      'label',
      {},
      'Order',
      h(
        'select',
        { name: 'order', onchange: (event) => event.target.form.requestSubmit() },
        ...[
          ['date-desc', 'Newest first'],
          ['date-asc', 'Oldest first'],
          ['description', 'Description'],
          ['study-id', 'Study ID'],
        ].map(([value, label]) => h('option', { value, selected: value === order }, label)),
      ),
    ),
    h('button', { type: 'submit' }, 'Search'),
    FILTERS.some((key) => params.get(key)) ? link('/', 'Clear') : null,
  );
}

// Years in order, the newest first, studies without a date last (groupBy lists the most frequent first).
function newestFirst(groups) {
  return [...groups].sort((a, b) => (a.value === null) - (b.value === null) || String(b.value).localeCompare(a.value));
}

function facet(title, name, groups, params) {
  const chosen = params.get(name);
  return h(
    'section',
    { class: 'facet', dataset: { facet: name } },
    h('h3', {}, title),
    groups.length === 0 ? h('p', { class: 'empty' }, 'none') : null,
    h(
      'ul',
      {},
      ...groups.map((group) => {
        const value = group.value;
        const next = new URLSearchParams(params);
        next.delete('page');
        if (value === null) return h('li', { class: 'none' }, `(none) `, h('span', { class: 'count' }, group.count));
        if (chosen === value) next.delete(name);
        else next.set(name, value);
        return h(
          'li',
          { class: chosen === value ? 'chosen' : null },
          h(
            'a',
            {
              href: `/?${next}`,
              onclick: (event) => {
                event.preventDefault();
                search(next);
              },
            },
            value,
          ),
          ' ',
          h('span', { class: 'count' }, group.count),
        );
      }),
    ),
  );
}

function studyTable(studies) {
  return h(
    'table',
    { class: 'studies' },
    h('thead', {}, h('tr', {}, ...['Date', 'Patient', 'ID', 'Sex', 'Description', 'Modalities', 'Series'].map((t) => h('th', {}, t)))),
    h(
      'tbody',
      {},
      ...studies.map((study) =>
        h(
          'tr',
          { dataset: { uid: study.studyInstanceUid } },
          h('td', { class: 'date' }, text(study.studyDate)),
          h('td', {}, personName(study.patient.patientName)),
          h('td', { class: 'mono' }, text(study.patient.patientId)),
          h('td', {}, text(study.patient.patientSex)),
          h('td', {}, link(`/studies/${encodeURIComponent(study.studyInstanceUid)}`, study.studyDescription || '(no description)')),
          h('td', {}, study.modalities.join(', ')),
          h('td', { class: 'number' }, study.seriesCount),
        ),
      ),
    ),
  );
}

// --- Study page ---------------------------------------------------------------------------------------------

const STUDY_QUERY = `
query Study($uid: String!) {
  study(studyInstanceUid: $uid) {
    studyInstanceUid studyDate studyTime studyDescription studyId referringPhysicianName modalities
    patient { patientId patientName patientSex patientAge patientBirthDate }
    series(first: 500) {
      totalCount
      nodes {
        seriesInstanceUid modality seriesDescription bodyPartExamined sliceThickness rows columns sliceCount
      }
    }
  }
}`;

const SLICES_QUERY = `
query Slices($uid: String!, $first: Int!, $after: String) {
  series(seriesInstanceUid: $uid) {
    slices(first: $first, after: $after, orderBy: [{field: SLICE_NUMBER}, {field: SOP_INSTANCE_UID}]) {
      totalCount
      pageInfo { hasNextPage endCursor }
      nodes { sliceNumber sliceLocation sliceThickness acquisitionDate sopInstanceUid }
    }
  }
}`;

async function renderStudy(uid, current) {
  main.replaceChildren(h('p', { class: 'loading' }, 'Loading...'));
  let data;
  try {
    data = await graphql(STUDY_QUERY, { uid });
  } catch (error) {
    if (current !== view) return;
    main.replaceChildren(link('/', '← All studies'));
    return showError(error);
  }
  if (current !== view) return;
  const study = data.study;
  if (!study) {
    main.replaceChildren(link('/', '← All studies'));
    return showError({ code: 'NOT_FOUND', message: `No study ${uid}.` });
  }
  const p = study.patient;
  document.title = `${study.studyDescription || 'Study'} ${study.studyDate || ''} – dicom-db`;
  main.replaceChildren(
    link('/', '← All studies'),
    h('h1', {}, study.studyDescription || '(no description)'),
    h(
      'dl',
      { class: 'study' },
      ...[
        ['Date', `${text(study.studyDate)} ${study.studyTime || ''}`],
        ['Patient', `${personName(p.patientName)} (${text(p.patientId)})`],
        ['Sex, age, birth date', `${text(p.patientSex)}, ${text(p.patientAge)}, ${text(p.patientBirthDate)}`],
        ['Study ID', text(study.studyId)],
        ['Referring physician', text(study.referringPhysicianName)],
        ['Modalities', study.modalities.join(', ') || '—'],
        ['StudyInstanceUID', study.studyInstanceUid],
      ].map(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]),
    ),
    h('h2', {}, `Series (${study.series.totalCount})`),
    h('div', { class: 'series-grid' }, ...study.series.nodes.map(seriesCard)),
  );
}

function seriesCard(series) {
  const slices = h('div', { class: 'slices' });
  return h(
    'article',
    { class: 'series', dataset: { uid: series.seriesInstanceUid } },
    thumbnail(series.seriesInstanceUid),
    h('h3', {}, `${text(series.modality)} · ${series.seriesDescription || '(no description)'}`),
    h(
      'p',
      { class: 'meta' },
      `${series.sliceCount} slice${series.sliceCount === 1 ? '' : 's'}`,
      series.sliceThickness !== null ? ` · ${series.sliceThickness} mm` : '',
      series.rows ? ` · ${series.rows}×${series.columns}` : '',
      series.bodyPartExamined ? ` · ${series.bodyPartExamined}` : '',
    ),
    h('p', { class: 'mono uid' }, series.seriesInstanceUid),
    h(
      'details',
      { ontoggle: (event) => event.target.open && !slices.dataset.loaded && loadSlices(series.seriesInstanceUid, slices, null) },
      h('summary', {}, 'Slices'),
      slices,
    ),
  );
}

// A thumbnail is fetched (not an <img src>) so that the request carries the token, and only once its card comes
// near the screen, so that a study of hundreds of series does not ask for hundreds of images at once. A series
// without one shows why in its place (the API's message as the tooltip).
const nearScreen = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      nearScreen.unobserve(entry.target);
      loadThumbnail(entry.target);
    }
  },
  { rootMargin: '400px' },
);

function thumbnail(uid) {
  const box = h('div', { class: 'thumbnail', dataset: { uid } }, h('span', { class: 'placeholder' }, 'loading image...'));
  nearScreen.observe(box);
  return box;
}

function loadThumbnail(box) {
  const uid = box.dataset.uid;
  fetch(`/thumbnails/${encodeURIComponent(uid)}.png`, { headers: authHeaders() })
    .then(async (response) => {
      if (response.ok) {
        const url = URL.createObjectURL(await response.blob());
        const image = h('img', { src: url, alt: `middle slice of series ${uid}` });
        image.addEventListener('load', () => {
          URL.revokeObjectURL(url); // decoded: the blob can go
          box.classList.add('loaded');
        });
        box.replaceChildren(image);
        return;
      }
      let message = `${response.status}`;
      try {
        const body = await response.json();
        message = body.errors[0].message;
      } catch {
        // not JSON: keep the status
      }
      const label = response.status === 403 ? 'no image: needs full access' : 'no image';
      box.replaceChildren(h('span', { class: 'placeholder', title: message }, label));
      box.classList.add('no-image');
    })
    .catch((error) => box.replaceChildren(h('span', { class: 'placeholder', title: error.message }, 'no image')));
}

async function loadSlices(uid, box, after) {
  box.dataset.loaded = 'yes';
  let data;
  try {
    data = await graphql(SLICES_QUERY, { uid, first: SLICE_PAGE, after });
  } catch (error) {
    box.dataset.loaded = '';
    return showError(error);
  }
  const slices = data.series.slices;
  let table = box.querySelector('table');
  if (!table) {
    table = h(
      'table',
      { class: 'slice-table' },
      h('thead', {}, h('tr', {}, ...['#', 'Location (mm)', 'Thickness', 'Acquired'].map((t) => h('th', {}, t)))),
      h('tbody'),
    );
    box.replaceChildren(h('p', { class: 'meta' }, `${slices.totalCount} slices`), table);
  }
  table.tBodies[0].append(
    ...slices.nodes.map((s) =>
      h(
        'tr',
        { title: `SOPInstanceUID ${s.sopInstanceUid}`, dataset: { uid: s.sopInstanceUid } },
        h('td', { class: 'number' }, text(s.sliceNumber)),
        h('td', { class: 'number' }, text(s.sliceLocation)),
        h('td', { class: 'number' }, text(s.sliceThickness)),
        h('td', { class: 'date' }, text(s.acquisitionDate)),
      ),
    ),
  );
  box.querySelector('button.more')?.remove();
  if (slices.pageInfo.hasNextPage) {
    box.append(
      h('button', { type: 'button', class: 'more', onclick: () => loadSlices(uid, box, slices.pageInfo.endCursor) }, 'More slices'),
    );
  }
}

route();
