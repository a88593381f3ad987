"""GraphiQL from the server's own origin: the vendored npm builds are the ones the manifest names (sha-384, as
the page's `integrity` attributes say), the page loads nothing from elsewhere, and the files are served
(compressed). tests/test_browser.py runs the page in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from api_helpers import Api

from dicom_db.api.app import DEFAULT_QUERY, DEIDENTIFIED_DEFAULT_QUERY
from dicom_db.api.graphiql import SCRIPTS, STATIC, STYLES, VENDOR, graphiql_page, manifest

pytest_plugins = ["api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "scripts" / "vendor" / "package.json"
LOCK = ROOT / "scripts" / "vendor" / "package-lock.json"


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def test_every_vendored_file_matches_its_recorded_sha384() -> None:
    files = manifest()["files"]
    assert set(files) == set(SCRIPTS) | set(STYLES)
    for name, entry in files.items():
        assert sri((VENDOR / name).read_bytes()) == entry["integrity"], f"{name} is not the file vendored"
    licences = manifest()["licenses"]
    assert sri((VENDOR / licences["file"]).read_bytes()) == licences["integrity"]
    # Nothing else in the folder: a file no manifest names would be served unchecked.
    assert {p.name for p in VENDOR.iterdir()} == {*files, licences["file"], "manifest.json"}


def test_manifest_packages_are_the_pinned_npm_releases() -> None:
    pins = json.loads(PINS.read_text())["dependencies"]
    lock = json.loads(LOCK.read_text())["packages"]
    packages = manifest()["packages"]
    assert {name: p["version"] for name, p in packages.items()} == pins
    for name, package in packages.items():
        assert lock[f"node_modules/{name}"]["version"] == package["version"]
        assert lock[f"node_modules/{name}"]["integrity"] == package["integrity"]
        assert package["integrity"].startswith("sha512-")
    licences = (VENDOR / "LICENSES.txt").read_text()
    for name, package in packages.items():
        assert f"\n{name} {package['version']} (MIT)\n" in licences, name


def test_page_names_each_file_with_its_integrity_and_nothing_off_origin() -> None:
    page = graphiql_page(DEFAULT_QUERY)
    for name in (*STYLES, *SCRIPTS):
        assert f'"/static/vendor/{name}" integrity="{manifest()["files"][name]["integrity"]}"' in page
    urls = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert urls and all(u.startswith("/static/") or u == "data:," for u in urls), urls
    # Scripts load in dependency order: React, ReactDOM, GraphiQL, the explorer plugin, then the start script.
    positions = [page.index(f"/static/vendor/{n}") for n in SCRIPTS] + [page.index("/static/graphiql-start.js")]
    assert positions == sorted(positions)


def test_vendored_builds_reference_no_font_or_stylesheet_off_origin() -> None:
    css = (VENDOR / "graphiql.min.css").read_text() + (VENDOR / "plugin-explorer.css").read_text()
    urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
    assert urls and all(u.startswith("data:") for u in urls), [u[:60] for u in urls if not u.startswith("data:")]
    assert "@import" not in css
    start = (STATIC / "graphiql-start.js").read_text()
    assert "http" not in start and "Cookies" not in start


def test_default_query_is_embedded_safely() -> None:
    hostile = "# </script><script>alert(1)</script>\n{ allSeries { totalCount } }"
    page = graphiql_page(hostile)
    embedded = re.search(r'<script type="application/json" id="default-query">(.*?)</script>', page, re.S)
    assert embedded is not None and json.loads(embedded.group(1)) == hostile


def test_default_queries_fit_the_editor() -> None:
    # GraphiQL's query editor shows about 50 characters beside its toolbar at a 1280-pixel window (the browser
    # test measures it); the example stays within that.
    for query in (DEFAULT_QUERY, DEIDENTIFIED_DEFAULT_QUERY):
        assert max(len(line) for line in query.splitlines()) <= 48
    assert "PATIENT_NAME" in DEFAULT_QUERY and "PATIENT_NAME" not in DEIDENTIFIED_DEFAULT_QUERY


def test_graphiql_page_and_assets_are_served(synthetic: Api) -> None:
    page = synthetic.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "/static/vendor/graphiql.min.js" in page.text
    for name in (*SCRIPTS, *STYLES):
        response = synthetic.client.get(f"/static/vendor/{name}", headers={"accept-encoding": "gzip"})
        assert response.status_code == 200, name
        assert sri(response.content) == manifest()["files"][name]["integrity"]
        if len(response.content) > 1000:
            assert response.headers["content-encoding"] == "gzip", name
    assert synthetic.client.get("/static/graphiql-start.js").status_code == 200
    assert synthetic.client.get("/static/vendor/missing.js").status_code == 404
    assert synthetic.client.get("/static/../api/app.py").status_code == 404
