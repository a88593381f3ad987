// The GraphQL-over-HTTP audit of the graphql-http package, run against a running dicom-api.
//
//   cd audit && npm ci && node run.mjs http://127.0.0.1:8000/graphql
//
// Prints one line per audit (ok, notice, warn or error, its id and name, and the reason when it did not pass)
// and a summary line. Exits 1 when any MUST audit fails (status "error"), 2 on a usage error, 0 otherwise.
// When the server needs a token, set DICOM_DB_AUDIT_TOKEN: every request then carries
// `Authorization: Bearer <token>`.
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url || process.argv.length > 3) {
  console.error('usage: node run.mjs URL   (e.g. http://127.0.0.1:8000/graphql)');
  process.exit(2);
}

const token = process.env.DICOM_DB_AUDIT_TOKEN;
const fetchFn = token
  ? (input, init = {}) => {
      const headers = new Headers(init.headers);
      headers.set('authorization', `Bearer ${token}`);
      return fetch(input, { ...init, headers });
    }
  : fetch;

async function bodyOf(response) {
  try {
    const text = await response.clone().text();
    return text.length > 300 ? `${text.slice(0, 300)}...` : text;
  } catch {
    return '(body already read)';
  }
}

const results = await auditServer({ url, fetchFn });
const counts = { ok: 0, notice: 0, warn: 0, error: 0 };
for (const result of results) {
  counts[result.status] += 1;
  if (result.status === 'ok') {
    console.log(`ok     ${result.id} ${result.name}`);
  } else {
    const response = result.response;
    const detail = response ? ` [HTTP ${response.status} ${response.headers.get('content-type')}: ${await bodyOf(response)}]` : '';
    console.log(`${result.status.padEnd(6)} ${result.id} ${result.name}: ${result.reason}${detail}`);
  }
}
console.log(
  `audits: ${results.length}, ok: ${counts.ok}, notice: ${counts.notice}, warn: ${counts.warn}, error: ${counts.error}`,
);
process.exit(counts.error > 0 ? 1 : 0);
