"""GraphiQL from the API's own origin: the page, and the npm builds it loads from /static/vendor/.

The builds (React, GraphiQL, the explorer plugin) are vendored by scripts/update_vendor.py, which records each
file's sha-384 in api/static/vendor/manifest.json; the page names every file with that `integrity`, so a browser
refuses a file that is not the one vendored. Nothing on the page loads from another origin (fonts are inlined in
GraphiQL's stylesheet), so GraphiQL works on a machine without internet.
"""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
PREFIX = "/static"  # where app.py mounts STATIC

# The pages' own rule that nothing is loaded from, or sent to, another origin (GraphiQL and its editor set inline
# styles; thumbnails are shown from blob: URLs).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

STYLES = ("graphiql.min.css", "plugin-explorer.css")
# In load order: GraphiQL's build expects React and ReactDOM as globals, the plugin expects GraphiQL.
SCRIPTS = ("react.production.min.js", "react-dom.production.min.js", "graphiql.min.js", "plugin-explorer.umd.js")


@cache
def manifest() -> dict:
    return json.loads((VENDOR / "manifest.json").read_text())


def _integrity(name: str) -> str:
    return manifest()["files"][name]["integrity"]


def graphiql_response(query: str) -> HTMLResponse:
    return HTMLResponse(graphiql_page(query), headers=PAGE_HEADERS)


def graphiql_page(query: str) -> str:
    """The GraphiQL page, with `query` in its editor when the browser has no query of its own stored yet."""
    # JSON inside <script>: "</" would end the element early, so it is escaped (JSON allows "<\/").
    literal = json.dumps(query).replace("</", "<\\/")
    links = "\n".join(
        f'    <link rel="stylesheet" href="{PREFIX}/vendor/{n}" integrity="{_integrity(n)}">' for n in STYLES
    )
    scripts = "\n".join(f'    <script src="{PREFIX}/vendor/{n}" integrity="{_integrity(n)}"></script>' for n in SCRIPTS)
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>dicom-db GraphiQL</title>
    <link rel="icon" href="data:,">
{links}
    <style>body {{ margin: 0; overflow: hidden; }} #graphiql {{ height: 100vh; }}</style>
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL from {html.escape(PREFIX)}/vendor/ ...</div>
    <script type="application/json" id="default-query">{literal}</script>
{scripts}
    <script src="{PREFIX}/graphiql-start.js"></script>
  </body>
</html>
"""
