"""The study browser: static files (api/static/browser/) that use only the public GraphQL API and the thumbnails.

`/` is its study list and `/studies/{studyInstanceUid}` a study's page: both serve the same page, which reads the
address itself, so a study's address can be shared and opened directly. The page holds no data, so it needs no
token; the requests it makes do (it asks for one when the server answers 401).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from dicom_db.api.graphiql import PAGE_HEADERS, STATIC

INDEX = STATIC / "browser" / "index.html"


async def browser_page(request: Request) -> Response:
    return FileResponse(INDEX, media_type="text/html", headers={"Cache-Control": "no-cache", **PAGE_HEADERS})
