"""The study browser's files, served in-process: both of its addresses serve the page, which loads only files
of this server; tests/test_browser.py runs it in Chromium."""

from __future__ import annotations

import re

from api_helpers import Api, serve

from dicom_db.api.auth import parse_tokens
from dicom_db.api.graphiql import STATIC

pytest_plugins = ["api_fixtures"]


def test_the_list_and_each_study_address_serve_the_page(synthetic: Api) -> None:
    for path in ("/", "/studies/1.2.826.0.1.3680043.10.543.1", "/studies/anything?x=1"):
        response = synthetic.client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), path
        assert response.text == (STATIC / "browser" / "index.html").read_text()
    assert synthetic.client.get("/studies/a/b").status_code == 404


def test_the_page_loads_only_this_servers_files(synthetic: Api) -> None:
    page = synthetic.client.get("/").text
    urls = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert {u for u in urls if u.startswith("/static/")} == {
        "/static/browser/browser.css",
        "/static/browser/browser.js",
    }
    assert all(u.startswith("/") or u == "data:," for u in urls), urls
    for url in ("/static/browser/browser.css", "/static/browser/browser.js"):
        assert synthetic.client.get(url).status_code == 200
    script = (STATIC / "browser" / "browser.js").read_text()
    # Requests go to this origin only: relative URLs, no http(s) address anywhere in the code.
    assert "http" not in script.replace("innerHTML", "")
    assert "innerHTML" not in script  # text is set as text, never parsed as HTML
    css = (STATIC / "browser" / "browser.css").read_text()
    assert "url(" not in css and "@import" not in css


def test_the_page_needs_no_token_but_the_data_does(synthetic_db) -> None:

    tokens = tuple(parse_tokens("browser-page-token-0123456789:full"))
    for api in serve(f"sqlite:///{synthetic_db}", tokens=tokens):
        assert api.client.get("/").status_code == 200
        assert api.client.get("/static/browser/browser.js").status_code == 200
        assert api.client.post("/graphql", json={"query": "{ allStudies { totalCount } }"}).status_code == 401


def test_the_pages_forbid_other_origins(synthetic: Api) -> None:
    pages = [synthetic.client.get(p) for p in ("/", "/studies/1.2.3")]
    pages.append(synthetic.client.get("/graphql", headers={"accept": "text/html"}))
    for page in pages:
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
