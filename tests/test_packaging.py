"""A plain (non-editable) install works: the wheel holds the package `dicom_db` with schema.sql and the GraphiQL
assets as package data, and both commands run from it, away from the source tree (as in the Dockerfile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pydicom.data

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import dicom_db.api.app, dicom_db.ingest.db
from dicom_db.ingest.cli import main
from starlette.testclient import TestClient
from dicom_db.api.app import create_app
from dicom_db.api.settings import Settings

site = sys.argv[1]
for module in (dicom_db.api.app, dicom_db.ingest.db):
    assert module.__file__.startswith(site), module.__file__
assert dicom_db.ingest.db.SCHEMA_PATH.is_file() and dicom_db.ingest.db.SCHEMA_PATH.is_relative_to(site)
try:
    main([sys.argv[2], "--db", "sqlite:///" + sys.argv[3], "--jobs", "1", "--quiet"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
with TestClient(create_app(Settings(database_url="sqlite:///" + sys.argv[3]))) as client:
    body = client.post("/graphql", json={"query": "{ allSlices { totalCount } }"}).json()
    assert body == {"data": {"allSlices": {"totalCount": 1}}}, body
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower(), page.status_code
    for path in {p.split('"')[0] for p in page.text.split('src="')[1:]} | {
        p.split('"')[0] for p in page.text.split('href="')[1:]
    }:
        if path.startswith("/static/"):
            assert client.get(path).status_code == 200, path
print("ok")
"""


def dockerfile_sources(context: Path) -> None:
    """Copy into `context` what the Dockerfile copies into its image before `pip install .`."""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, context / source)


def test_wheel_installs_and_runs_without_the_source_tree(tmp_path: Path) -> None:
    # Built from what the Dockerfile copies (no Docker engine here): its file list is enough for a plain install.
    context = tmp_path / "context"
    context.mkdir()
    dockerfile_sources(context)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(context)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("dicom_db-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dicom_db/schema.sql" in names
    assert any(n.startswith("dicom_db/api/static/vendor/") for n in names)
    assert not any(n.startswith(("tests/", "api/", "ingest/", "dicom_db/tests/")) for n in names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "ct.dcm").write_bytes(Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes())
    # -S: no site-packages processing, so that the editable install of this checkout is not seen; the
    # dependencies come from this environment's site-packages, after the installed wheel.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    result = subprocess.run(
        [sys.executable, "-S", "-c", SCRIPT, str(site), str(dicom), str(tmp_path / "db.sqlite")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
