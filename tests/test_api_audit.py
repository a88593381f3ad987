"""The GraphQL-over-HTTP audit of the `graphql-http` npm package against a real `dicom-api` (uvicorn).

    .venv/bin/pytest tests/test_api_audit.py -s        # prints every audit result

The test fills a database with the real `dicom-ingest` (pydicom's dicomdirtests files and a written CT series),
starts `dicom-api` on a free port of 127.0.0.1, installs audit/ with `npm ci` when its node_modules is missing,
runs `node audit/run.mjs URL` and asserts that no MUST audit fails (status "error"). It does so twice: against a
server without tokens, and against one with a full-access token (DICOM_API_TOKENS) that every audit request
carries (DICOM_DB_AUDIT_TOKEN), so that authentication does not change how the API speaks HTTP. The SHOULD/MAY
audits that warn are listed, with the reason, in docs/api.md ("GraphQL over HTTP audit"); the test also pins that
list, so a new warning (or one that went away) is noticed and documented. Skips, saying why, only when node or npm
is not installed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_helpers import api_process
from conftest import DICOMDIR_TESTS, run_ingest
from dicom_factory import write_series

ROOT = Path(__file__).resolve().parents[1]
AUDIT = ROOT / "audit"

# The audits that warn, by id, each explained in docs/api.md; none since the API answers
# application/graphql-response+json with its status codes.
EXPECTED_WARNINGS: set[str] = set()


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    write_series(root / "written", count=3)
    db = root / "audit.db"
    run_ingest(DICOMDIR_TESTS, root / "written", "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=0, cwd=root)
    return db


@dataclass(frozen=True)
class Server:
    url: str
    token: str | None  # the bearer token every request needs, None when the server has no tokens


@pytest.fixture(scope="module", params=["open", "token"])
def server(request: pytest.FixtureRequest, audit_db: Path) -> Iterator[Server]:
    """`dicom-api` without tokens, and with one full-access token (DICOM_API_TOKENS) that the audit then sends."""
    env = {}
    token = None
    if request.param == "token":
        token = secrets.token_urlsafe(24)
        env["DICOM_API_TOKENS"] = f"{token}:full:audit"
    log = audit_db.with_name(f"dicom-api-{request.param}.log")
    with api_process(f"sqlite:///{audit_db}", log=log, env=env) as api:
        yield Server(f"{api.url}/graphql", token)


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the graphql-http audit (apt-get install nodejs npm)")
    if not (AUDIT / "node_modules" / "graphql-http").is_dir():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=AUDIT, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    return node


def test_graphql_over_http_audit(node: str, server: Server) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DICOM_DB_AUDIT_TOKEN"}
    if server.token:
        env["DICOM_DB_AUDIT_TOKEN"] = server.token
    proc = subprocess.run(
        [node, "run.mjs", server.url], cwd=AUDIT, env=env, capture_output=True, text=True, timeout=120
    )
    print(proc.stdout)
    results = re.findall(r"^(ok|notice|warn|error) +(\S+) ", proc.stdout, flags=re.M)
    assert len(results) >= 50, f"too few audits ran:\n{proc.stdout}\n{proc.stderr}"
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error")]
    assert not errors, "MUST audits failed:\n" + "\n".join(errors)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    warned = {audit_id for status, audit_id in results if status in ("warn", "notice")}
    assert warned == EXPECTED_WARNINGS, (
        f"warnings changed (update docs/api.md and EXPECTED_WARNINGS): new {sorted(warned - EXPECTED_WARNINGS)}, "
        f"gone {sorted(EXPECTED_WARNINGS - warned)}"
    )


def test_docs_explain_every_warning() -> None:
    docs = (ROOT / "docs" / "api.md").read_text()
    section = docs.split("## GraphQL over HTTP audit", 1)
    assert len(section) == 2, "docs/api.md has no 'GraphQL over HTTP audit' section"
    missing = [audit_id for audit_id in sorted(EXPECTED_WARNINGS) if audit_id not in section[1]]
    assert not missing, f"warnings not explained in docs/api.md: {missing}"
