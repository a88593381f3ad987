"""Authentication and the two access levels: no token, a wrong token, a full token and a de-identified token,
on queries that touch every masked field directly, through filters, ordering, facets, nested paths and `raw`;
pseudonyms; token configuration; tokens never in a log line, a message or a repr; the bind refusal of the CLI.

The synthetic corpus (api_helpers.write_synthetic): PAT001 Alpha^Anna born 1970-01-01 (study 1: accession
ACC-1, referring physician Who^Doctor), PAT002 Bravo^Bob (birth date stored as text "19801345"), PAT003
ÄRGER^Élodie, and a patient without PatientID (NOID-<study UID>) named Nobody^Known.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import UID_ROOT, TestClient
from api_helpers import TokenClient as Client

from dicom_db.api import auth
from dicom_db.api.app import DEFAULT_QUERY, DEIDENTIFIED_DEFAULT_QUERY, create_app
from dicom_db.api.auth import AccessLevel, Authenticator, Token, parse_tokens, read_tokens_file
from dicom_db.api.masking import Pseudonyms, masked_fields
from dicom_db.api.settings import Settings, SettingsError

pytest_plugins = ["api_fixtures"]

FULL_TOKEN = "full-token-0123456789abcdefXYZ"
DEID_TOKEN = "deid-token-0123456789abcdefXYZ"
KEY = b"a pseudonym key of the test suite"
TOKENS = (Token(FULL_TOKEN, AccessLevel.FULL, "alice"), Token(DEID_TOKEN, AccessLevel.DEIDENTIFIED, "bob"))
BIN = Path(sys.executable).parent

# Every masked field, as a de-identified token gets it: null, or for PatientID a pseudonym.
MASKED = {
    ("Patient", "patient_id", "pseudonym"),
    ("Patient", "patient_name", "null"),
    ("Patient", "patient_birth_date", "null"),
    ("Study", "patient_id", "pseudonym"),
    ("Study", "referring_physician_name", "null"),
    ("Slice", "accession_number", "null"),
}


def pseudonym(patient_id: str, key: bytes = KEY) -> str:
    return "anon-" + hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:16]


@pytest.fixture(scope="module")
def app_client(synthetic_db: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{synthetic_db}", tokens=TOKENS, pseudonym_key=KEY)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def full(app_client: TestClient) -> Client:
    return Client(app_client, FULL_TOKEN)


@pytest.fixture(scope="module")
def deid(app_client: TestClient) -> Client:
    return Client(app_client, DEID_TOKEN)


# Without a valid token: 401, a JSON error, a challenge, and nothing run.

QUERY = '{ patient(patientId: "PAT001") { patientName } }'


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="dicom-db"'),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, 'Bearer realm="dicom-db"'),
        ({"Authorization": "Bearer"}, 'Bearer realm="dicom-db"'),
        ({"Authorization": f"Token {FULL_TOKEN}"}, 'Bearer realm="dicom-db"'),
        ({"Authorization": "Bearer wrong-token-0123456789abcdef"}, 'Bearer realm="dicom-db", error="invalid_token"'),
        ({"Authorization": f"Bearer {FULL_TOKEN[:-1]}"}, 'Bearer realm="dicom-db", error="invalid_token"'),
        ({"Authorization": f"Bearer {FULL_TOKEN}x"}, 'Bearer realm="dicom-db", error="invalid_token"'),
        ({"Authorization": f"Bearer {FULL_TOKEN.upper()}"}, 'Bearer realm="dicom-db", error="invalid_token"'),
        ({"Authorization": f"Bearer {FULL_TOKEN},{DEID_TOKEN}"}, 'Bearer realm="dicom-db", error="invalid_token"'),
    ],
)
def test_requests_without_a_valid_token_are_refused(
    app_client: TestClient, headers: dict[str, str], challenge: str
) -> None:
    before = app_client.app.state.database.statements  # type: ignore[attr-defined]
    for response in (
        app_client.post("/graphql", json={"query": QUERY}, headers=headers),
        app_client.get("/graphql", params={"query": QUERY}, headers=headers),
        app_client.get("/graphql", headers={**headers, "accept": "text/html"}),  # the GraphiQL page
    ):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.headers["www-authenticate"] == challenge
        [error] = response.json()["errors"]
        assert error["extensions"] == {"code": "UNAUTHENTICATED"}
        assert "Alpha" not in response.text and "graphiql" not in response.text.lower()
    assert app_client.app.state.database.statements == before  # type: ignore[attr-defined]


def test_health_check_needs_no_token(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}


def test_a_valid_token_opens_every_way_in(app_client: TestClient) -> None:
    for token in (FULL_TOKEN, DEID_TOKEN):
        headers = {"Authorization": f"Bearer {token}"}
        assert app_client.post("/graphql", json={"query": "{ allSeries { totalCount } }"}, headers=headers).json() == {
            "data": {"allSeries": {"totalCount": 6}}
        }
        page = app_client.get("/graphql", headers={**headers, "accept": "text/html"})
        assert page.status_code == 200 and "graphiql" in page.text.lower()
        # The scheme is case-insensitive (RFC 7235).
        lower = app_client.get(
            "/graphql", params={"query": "{ allSeries { totalCount } }"}, headers={"Authorization": f"bearer {token}"}
        )
        assert lower.status_code == 200


def test_graphiql_default_query_runs_for_each_level(app_client: TestClient) -> None:
    for token, query in ((FULL_TOKEN, DEFAULT_QUERY), (DEID_TOKEN, DEIDENTIFIED_DEFAULT_QUERY)):
        client = Client(app_client, token)
        page = app_client.get("/graphql", headers={**client.headers, "accept": "text/html"})
        line = next(line.strip() for line in query.splitlines() if "allPatients(" in line)
        assert line in page.text
        assert ("PATIENT_NAME" in page.text) is (token == FULL_TOKEN)
        assert client.data(query)["allPatients"]["totalCount"] == 4


def test_cors_preflight_needs_no_token(synthetic_db: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{synthetic_db}", tokens=TOKENS, cors_origins=("http://app.test",))
    with TestClient(create_app(settings)) as client:
        response = client.options(
            "/graphql",
            headers={
                "origin": "http://app.test",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert response.status_code == 200
        assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_without_tokens_every_request_has_full_access(synthetic: Any) -> None:
    data = synthetic.data('{ patient(patientId: "PAT001") { patientName patientBirthDate } }')
    assert data == {"patient": {"patientName": "Alpha^Anna", "patientBirthDate": "1970-01-01"}}


# What each level sees.

TREE = """{
  allPatients(orderBy: [{field: PATIENT_SEX}]) { nodes {
    patientId patientName patientBirthDate raw
    studies { nodes {
      patientId referringPhysicianName raw
      patient { patientId patientName }
      series { nodes { slices(first: 2) { nodes { accessionNumber raw series { study { patient { patientId } } } } } } }
    } }
  } }
}"""


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_the_documented_list_of_masked_fields_is_the_code(app_client: TestClient) -> None:
    # The person-identifying fields; the whole PS3.15 table is tests/test_api_deidentification.py's.
    assert set(masked_fields()) >= MASKED
    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    for type_name, attr, shown in MASKED:
        head, *rest = attr.split("_")
        field = head + "".join(w.capitalize() for w in rest)
        assert re.search(rf"`{type_name}\.{field}`[^\n]*{shown}", docs), (type_name, field, shown)


def test_full_access_sees_every_field(full: Client) -> None:
    data = full.data(TREE)
    patients = {p["patientId"]: p for p in data["allPatients"]["nodes"]}
    anna = patients["PAT001"]
    assert (anna["patientName"], anna["patientBirthDate"]) == ("Alpha^Anna", "1970-01-01")
    assert anna["raw"]["PatientName"] == "Alpha^Anna"
    study = next(s for s in anna["studies"]["nodes"] if s["referringPhysicianName"])
    assert (study["patientId"], study["referringPhysicianName"]) == ("PAT001", "Who^Doctor")
    accessions = {n["accessionNumber"] for n in _walk(data) if "accessionNumber" in n}
    assert "ACC-1" in accessions
    assert patients["PAT002"]["raw"]["PatientBirthDate"] == "19801345"


def test_deidentified_access_sees_masked_fields_nowhere(deid: Client, full: Client) -> None:
    data = deid.data(TREE)
    text = json.dumps(data, ensure_ascii=False)
    real_ids = [p["patientId"] for p in full.data("{ allPatients { nodes { patientId } } }")["allPatients"]["nodes"]]
    assert len(real_ids) == 4
    for secret in [*real_ids, "Alpha", "Bravo", "ÄRGER", "Nobody", "1970", "19801345", "ACC-1", "Who^Doctor"]:
        assert secret not in text, secret
    pseudonyms = {pseudonym(i) for i in real_ids}
    for node in _walk(data):
        if "patientId" in node:
            assert node["patientId"] in pseudonyms
        for field in ("patientName", "patientBirthDate", "referringPhysicianName", "accessionNumber"):
            if field in node:
                assert node[field] is None
        raw = node.get("raw")
        if isinstance(raw, dict):
            for column in ("PatientName", "PatientBirthDate", "ReferringPhysicianName", "AccessionNumber"):
                assert raw.get(column) is None
            if "PatientID" in raw:
                assert raw["PatientID"] in pseudonyms
    # The same patient has the same pseudonym as a patient, as a study's patientId, and from a slice upwards.
    for patient in data["allPatients"]["nodes"]:
        for study in patient["studies"]["nodes"]:
            assert study["patientId"] == study["patient"]["patientId"] == patient["patientId"]
            for node in _walk(study["series"]):
                if "study" in node:
                    assert node["study"]["patient"]["patientId"] == patient["patientId"]


def test_deidentified_access_keeps_what_is_not_masked(deid: Client) -> None:
    study = Pseudonyms(KEY).uid(UID_ROOT + ".1")
    data = deid.data(
        "{ allPatients(orderBy: [{field: PATIENT_SEX}]) { nodes { patientSex patientIdGenerated studyCount } } "
        'study(studyInstanceUid: "' + study + '") { studyInstanceUid studyTime studyDescription studyId } }'
    )
    assert [(p["patientSex"], p["patientIdGenerated"]) for p in data["allPatients"]["nodes"]] == [
        ("F", False),
        ("M", False),
        ("O", False),
        (None, True),
    ]
    # PS3.15: the UID replaced, times kept (dates move by whole days), StudyID and descriptions removed.
    assert data["study"] == {
        "studyInstanceUid": study,
        "studyTime": "10:15:00",
        "studyDescription": None,
        "studyId": None,
    }


def test_pseudonyms_are_stable_and_keyed(synthetic_db: Path, deid: Client, full: Client) -> None:
    ids = sorted(p["patientId"] for p in full.data("{ allPatients { nodes { patientId } } }")["allPatients"]["nodes"])
    shown = deid.data("{ allPatients { nodes { patientId } } }")["allPatients"]["nodes"]
    assert all(re.fullmatch(r"anon-[0-9a-f]{16}", p["patientId"]) for p in shown)
    assert sorted(p["patientId"] for p in shown) == sorted(pseudonym(i) for i in ids)
    # Another server with the same key (a restart) shows the same pseudonyms; another key, others.
    for key, same in ((KEY, True), (b"another key of the test suite!", False)):
        settings = Settings(database_url=f"sqlite:///{synthetic_db}", tokens=TOKENS, pseudonym_key=key)
        with TestClient(create_app(settings)) as client:
            again = Client(client, DEID_TOKEN).data("{ allPatients { nodes { patientId } } }")["allPatients"]["nodes"]
        assert (sorted(p["patientId"] for p in again) == sorted(p["patientId"] for p in shown)) is same


def test_without_a_key_pseudonyms_last_one_server_start(synthetic_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    answers = []
    for _ in range(2):
        settings = Settings(database_url=f"sqlite:///{synthetic_db}", tokens=TOKENS)
        with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
            deid = Client(client, DEID_TOKEN)
            query = '{ patient(patientId: "x") { patientId } allPatients(first: 1) { nodes { patientId } } }'
            first = deid.data(query)["allPatients"]["nodes"][0]["patientId"]
            # Within one start the pseudonym is stable, and finds its patient.
            assert deid.data(f'{{ patient(patientId: "{first}") {{ patientId }} }}') == {
                "patient": {"patientId": first}
            }
            answers.append(
                sorted(
                    p["patientId"] for p in deid.data("{ allPatients { nodes { patientId } } }")["allPatients"]["nodes"]
                )
            )
    assert answers[0] != answers[1]
    assert "pseudonyms de-identified tokens see change whenever the server restarts" in caplog.text


def test_lookup_by_pseudonym(deid: Client, full: Client) -> None:
    anon = pseudonym("PAT001")
    assert deid.data(f'{{ patient(patientId: "{anon}") {{ patientId patientSex }} }}') == {
        "patient": {"patientId": anon, "patientSex": "F"}
    }
    # The real ID finds nothing for a de-identified token; the pseudonym finds nothing for a full one.
    assert deid.data('{ patient(patientId: "PAT001") { patientId } }') == {"patient": None}
    assert full.data(f'{{ patient(patientId: "{anon}") {{ patientId }} }}') == {"patient": None}
    aliases = " ".join(
        f'p{i}: patient(patientId: "{pseudonym(p)}") {{ patientSex }}'
        for i, p in enumerate(["PAT001", "PAT002", "PAT003"])
    )
    assert deid.data(f"{{ {aliases} }}") == {f"p{i}": {"patientSex": s} for i, s in enumerate("FMO")}


def test_deidentified_pages_in_pseudonym_order_and_cursors_hold_no_ids(deid: Client, full: Client) -> None:
    real_ids = [p["patientId"] for p in full.data("{ allPatients { nodes { patientId } } }")["allPatients"]["nodes"]]
    seen: list[str] = []
    cursors: list[str] = []
    after = None
    while True:
        page = deid.data(
            "query($after: String) { allPatients(first: 1, after: $after) { "
            "edges { cursor node { patientId } } pageInfo { hasNextPage endCursor } } }",
            after=after,
        )["allPatients"]
        seen += [e["node"]["patientId"] for e in page["edges"]]
        cursors += [e["cursor"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == sorted(pseudonym(i) for i in real_ids)  # every patient once, in pseudonym order
    for cursor in cursors:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        assert not any(i in decoded for i in real_ids), decoded
    # A de-identified cursor is refused by full access, and a full one by de-identified access.
    full_cursor = full.data("{ allPatients(first: 1) { pageInfo { endCursor } } }")["allPatients"]["pageInfo"]
    for client, cursor in ((full, cursors[0]), (deid, full_cursor["endCursor"])):
        body = client.post("query($c: String) { allPatients(after: $c) { totalCount } }", c=cursor)
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# Filtering, ordering and grouping by a masked field: refused before any SQL runs, the same whatever the value.

S = f'"{UID_ROOT}.1"'
REFUSED = [
    ('{ allPatients(where: {patientId: {eq: "PAT001"}}) { totalCount } }', "filter on Patient.patientId"),
    ('{ allPatients(where: {patientName: {match: "alpha*"}}) { totalCount } }', "filter on Patient.patientName"),
    ('{ allPatients(where: {patientBirthDate: {gt: "1960-01-01"}}) { totalCount } }', "Patient.patientBirthDate"),
    ('{ allStudies(where: {patientId: {in: ["PAT001"]}}) { totalCount } }', "filter on Study.patientId"),
    ("{ allStudies(where: {referringPhysicianName: {isNull: false}}) { totalCount } }", "Study.referringPhysicianName"),
    ('{ allSlices(where: {accessionNumber: {startsWith: "ACC"}}) { totalCount } }', "Slice.accessionNumber"),
    # Through parent and children filters, and/or/not.
    ('{ allStudies(where: {patient: {patientName: {contains: "A"}}}) { totalCount } }', "Patient.patientName"),
    ("{ allSeries(where: {study: {patient: {patientBirthDate: {isNull: true}}}}) { totalCount } }", "patientBirthDate"),
    ('{ allSlices(where: {series: {study: {referringPhysicianName: {eq: "x"}}}}) { totalCount } }', "Study.referring"),
    (
        '{ allPatients(where: {studies: {some: {series: {some: {slices: {none: {accessionNumber: {eq: "A"}}}}}}}}) '
        "{ totalCount } }",
        "Slice.accessionNumber",
    ),
    ('{ allPatients(where: {or: [{patientSex: {eq: "F"}}, {patientName: {eq: "x"}}]}) { totalCount } }', "Name"),
    ('{ allPatients(where: {not: {and: [{patientId: {ne: "x"}}]}}) { totalCount } }', "Patient.patientId"),
    # On nested connections.
    (
        '{ allPatients { nodes { studies(where: {referringPhysicianName: {eq: "x"}}) { totalCount } } } }',
        "Study.referringPhysicianName",
    ),
    (
        f'{{ study(studyInstanceUid: {S}) {{ series {{ nodes {{ slices(where: {{accessionNumber: {{eq: "A"}}}}) '
        "{ totalCount } } } } }",
        "Slice.accessionNumber",
    ),
    # Ordering, at the root and nested.
    ("{ allPatients(orderBy: [{field: PATIENT_NAME}]) { totalCount } }", "order by PATIENT_NAME"),
    (
        "{ allPatients(orderBy: [{field: PATIENT_SEX}, {field: PATIENT_ID, direction: DESC}]) { totalCount } }",
        "PATIENT_ID",
    ),
    ("{ allPatients(orderBy: [{field: PATIENT_BIRTH_DATE}]) { totalCount } }", "order by PATIENT_BIRTH_DATE"),
    ("{ allStudies(orderBy: [{field: PATIENT_ID}]) { totalCount } }", "order by PATIENT_ID"),
    (
        "{ allPatients { nodes { studies(orderBy: [{field: REFERRING_PHYSICIAN_NAME}]) { totalCount } } } }",
        "order by REFERRING_PHYSICIAN_NAME",
    ),
    ("{ allSlices(orderBy: [{field: ACCESSION_NUMBER}]) { totalCount } }", "order by ACCESSION_NUMBER"),
    # Facets, at the root and nested.
    ("{ allPatients { groupBy(field: PATIENT_NAME) { value count } } }", "group by PATIENT_NAME"),
    ("{ allPatients { groupBy(field: PATIENT_BIRTH_DATE, datePart: YEAR) { value } } }", "group by PATIENT_BIRTH"),
    ("{ allPatients { groupBy(field: PATIENT_ID) { value } } }", "group by PATIENT_ID"),
    ("{ allStudies { groupBy(field: PATIENT_ID) { value } } }", "group by PATIENT_ID"),
    ("{ allStudies { groupBy(field: REFERRING_PHYSICIAN_NAME) { value } } }", "group by REFERRING_PHYSICIAN_NAME"),
    (
        "{ allSeries { nodes { slices { groupBy(field: ACCESSION_NUMBER) { value count } } } } }",
        "group by ACCESSION_NUMBER",
    ),
    # Inside a fragment.
    (
        "{ allPatients { ...P } } fragment P on PatientConnection { groupBy(field: PATIENT_NAME) { value } }",
        "group by PATIENT_NAME",
    ),
]


@pytest.mark.parametrize(("query", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_masked_fields_cannot_be_filtered_ordered_or_grouped(
    deid: Client, full: Client, query: str, message: str
) -> None:
    before = deid.statements
    body = deid.post(query)
    assert deid.statements == before  # refused before any SQL
    assert body["data"] is None
    assert body["errors"], body
    assert all(e["extensions"] == {"code": "FORBIDDEN"} for e in body["errors"])
    assert any(message in e["message"] and "De-identified access cannot" in e["message"] for e in body["errors"])
    assert "errors" not in full.post(query)  # full access may


def test_refusals_through_variables(deid: Client) -> None:
    cases = [
        ("query($w: PatientWhere) { allPatients(where: $w) { totalCount } }", {"w": {"patientName": {"eq": "x"}}}),
        (
            "query($w: SliceWhere) { allSlices(where: $w) { totalCount } }",
            {"w": {"series": {"study": {"patient": {"patientId": {"eq": "PAT001"}}}}}},
        ),
        ("query($o: [StudyOrderBy!]) { allStudies(orderBy: $o) { totalCount } }", {"o": [{"field": "PATIENT_ID"}]}),
        ("query($f: PatientGroupField!) { allPatients { groupBy(field: $f) { value } } }", {"f": "PATIENT_NAME"}),
        ("query($s: StringFilter) { allSlices(where: {accessionNumber: $s}) { totalCount } }", {"s": {"eq": "A"}}),
    ]
    for query, variables in cases:
        before = deid.statements
        body = deid.post(query, **variables)
        assert deid.statements == before
        assert body["data"] is None and body["errors"][0]["extensions"] == {"code": "FORBIDDEN"}, body
    # An unused or null variable names no masked field.
    assert "errors" not in deid.post("query($w: PatientWhere) { allPatients(where: $w) { totalCount } }", w=None)


def test_a_refusal_says_nothing_about_the_data(deid: Client) -> None:
    """Whether the value matches a patient or not, the answer is the same: no count, no timing of a query."""
    answers = {
        json.dumps(deid.post(f'{{ allPatients(where: {{patientName: {{eq: "{name}"}}}}) {{ totalCount }} }}'))
        for name in ("Alpha^Anna", "Nobody^Here", "")
    }
    assert len(answers) == 1


# Token configuration.


def test_tokens_from_the_environment_and_a_file(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(
        f"# team tokens\n\n{'f' * 20} full alice smith\n  {'d' * 20}   deidentified\n{'e' * 24} DEIDENTIFIED\n"
    )
    env = {
        "DICOM_API_TOKENS": f"{'a' * 16}:full:ci, {'b' * 16}:deidentified",
        "DICOM_API_TOKENS_FILE": str(tokens_file),
    }
    settings = Settings.from_env(env)
    assert [(t.secret, t.level.value, t.name) for t in settings.tokens] == [
        ("a" * 16, "full", "ci"),
        ("b" * 16, "deidentified", "DICOM_API_TOKENS entry 2"),
        ("f" * 20, "full", "alice smith"),
        ("d" * 20, "deidentified", f"tokens file {tokens_file} line 4"),
        ("e" * 24, "deidentified", f"tokens file {tokens_file} line 5"),
    ]
    assert Settings.from_env({"DICOM_API_TOKENS": "", "DICOM_API_TOKENS_FILE": ""}).tokens == ()
    # The command line's --tokens-file wins over the environment's.
    other = tmp_path / "other"
    other.write_text(f"{'o' * 16} full\n")
    assert [
        t.secret for t in Settings.from_env({"DICOM_API_TOKENS_FILE": str(tokens_file)}, tokens_file=str(other)).tokens
    ] == ["o" * 16]


SECRET = "s3cr3t-Value-That-Must-Not-Leak"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DICOM_API_TOKENS": f"{SECRET}"}, "DICOM_API_TOKENS entry 1: expected TOKEN:LEVEL"),
        ({"DICOM_API_TOKENS": f"{SECRET}:admin"}, "DICOM_API_TOKENS entry 1: unknown access level 'admin'"),
        ({"DICOM_API_TOKENS": "x:full,short:full"}, "DICOM_API_TOKENS entry 1: the token is too short (1 characters"),
        ({"DICOM_API_TOKENS": f"{SECRET}*:full"}, "DICOM_API_TOKENS entry 1: a token may hold only"),
        ({"DICOM_API_TOKENS": f"{SECRET}:full,{SECRET}:deidentified"}, "the same token is configured twice"),
        ({"DICOM_API_TOKENS_FILE": "/nonexistent/tokens"}, "cannot read the tokens file /nonexistent/tokens"),
        ({"DICOM_API_PSEUDONYM_KEY": "short"}, "the pseudonym key must be at least 16 bytes long"),
    ],
)
def test_bad_token_settings_are_named_never_shown(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
    assert SECRET not in str(info.value) and "short" not in str(info.value).replace("too short", "")


def test_a_bad_tokens_file_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{'a' * 16} full\n{SECRET}\n")
    with pytest.raises(
        auth.TokenError, match=rf"tokens file {re.escape(str(path))} line 2: expected TOKEN LEVEL"
    ) as info:
        read_tokens_file(path)
    assert SECRET not in str(info.value)


def test_tokens_are_in_no_repr() -> None:
    settings = Settings(tokens=TOKENS, pseudonym_key=KEY)
    assert FULL_TOKEN not in repr(settings) and DEID_TOKEN not in repr(settings) and KEY.decode() not in repr(settings)
    assert FULL_TOKEN not in repr(parse_tokens(f"{FULL_TOKEN}:full"))


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever token matches (or none), every configured token is compared with hmac.compare_digest on
    digests of one length: no early exit that would time which token, or how much of it, is right."""
    tokens = [Token(f"token-number-{i:04d}-abcdef", AccessLevel.FULL, f"t{i}") for i in range(5)]
    authenticator = Authenticator(tokens)
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented in (tokens[0].secret, tokens[4].secret, "nope", "x" * 500):
        calls.clear()
        found = authenticator.authenticate(presented)
        assert len(calls) == 5 and set(calls) == {(32, 32)}
        assert (found.name if found else None) == {tokens[0].secret: "t0", tokens[4].secret: "t4"}.get(presented)


def test_tokens_are_never_logged(app_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    bad = "wrong-token-0123456789abcdefgh"
    with caplog.at_level(logging.DEBUG):
        responses = [
            app_client.post("/graphql", json={"query": QUERY}, headers={"Authorization": f"Bearer {token}"})
            for token in (FULL_TOKEN, DEID_TOKEN, bad)
        ]
        responses.append(
            app_client.post("/graphql", json={"query": "{ x }"}, headers={"Authorization": f"Bearer {FULL_TOKEN}"})
        )
    assert [r.status_code for r in responses] == [200, 200, 401, 200]
    assert "request by alice (full access)" in caplog.text and "a token that is not valid" in caplog.text
    for token in (FULL_TOKEN, DEID_TOKEN, bad):
        assert token not in caplog.text
        assert all(token not in r.text for r in responses)


# The real CLI: where it may listen.


def _api_command() -> list[str]:
    exe = BIN / "dicom-api"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from dicom_db.api.cli import main; main()"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOM_API_", "DATABASE_URL"))}
    return {**env, **extra}


def test_cli_refuses_a_remote_address_without_tokens(synthetic_db: Path) -> None:
    for args, env in (
        (["--host", "0.0.0.0"], _clean_env()),
        ([], _clean_env(DICOM_API_HOST="example.org")),  # likewise from the environment
    ):
        proc = subprocess.run(
            [*_api_command(), "--db", f"sqlite:///{synthetic_db}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 2
        host = args[1] if args else "example.org"
        assert f"refusing to listen on {host} without authentication" in proc.stderr
        assert "--allow-unauthenticated-remote" in proc.stderr and "Traceback" not in proc.stderr


def test_which_addresses_are_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert auth.is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "example.org", "localhost.example.org", ""):
        assert not auth.is_loopback(host), host
    for settings in (Settings(host="0.0.0.0", tokens=TOKENS), Settings(host="::", allow_unauthenticated_remote=True)):
        auth.check_bind(settings)  # allowed
    with pytest.raises(auth.BindRefused):
        auth.check_bind(Settings(host="10.0.0.1"))


def test_cli_bad_token_settings_exit_2_without_showing_the_token(synthetic_db: Path) -> None:
    proc = subprocess.run(
        [*_api_command(), "--db", f"sqlite:///{synthetic_db}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(DICOM_API_TOKENS=f"{SECRET}:superuser"),
    )
    assert proc.returncode == 2
    assert "DICOM_API_TOKENS entry 1: unknown access level 'superuser'" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [*_api_command(), *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(
                f"dicom-api exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("dicom-api did not start")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    output, _ = proc.communicate(timeout=30)
    return output


def test_cli_listens_remotely_when_told_or_with_tokens(synthetic_db: Path) -> None:
    db = f"sqlite:///{synthetic_db}"
    proc, url = _serve(["--db", db, "--host", "0.0.0.0", "--allow-unauthenticated-remote"], _clean_env())
    try:
        assert httpx.post(f"{url}/graphql", json={"query": "{ allSeries { totalCount } }"}).status_code == 200
    finally:
        _stop(proc)
    env = _clean_env(DICOM_API_TOKENS=f"{FULL_TOKEN}:full:alice", DICOM_API_PSEUDONYM_KEY=KEY.decode())
    proc, url = _serve(["--db", db, "--host", "0.0.0.0", "--log-level", "debug"], env)
    try:
        query = {"query": QUERY}
        assert httpx.post(f"{url}/graphql", json=query).status_code == 401
        ok = httpx.post(f"{url}/graphql", json=query, headers={"Authorization": f"Bearer {FULL_TOKEN}"})
        assert ok.json() == {"data": {"patient": {"patientName": "Alpha^Anna"}}}
    finally:
        output = _stop(proc)
    assert "authentication required; tokens: alice (full)" in output
    assert FULL_TOKEN not in output and KEY.decode() not in output
