"""`GET /thumbnails/{seriesInstanceUid}.png`: the series' middle instance as a small PNG (api.images), for full
access only.

The file comes from the ingest's file index (`Database.middle_instance_file`). Images are decoded in worker
threads, a few at a time, so that a page of thumbnails does not starve GraphQL requests; each result (a PNG, or
why there is none) is kept in memory under the file's path, size and modification time, so a file changed by a
later ingest is decoded again. A series without an image, and a file that cannot be read or decoded, get a 404
whose JSON says why; a de-identified token gets 403: pixels can show burnt-in names, and the files hold every
attribute unmasked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dicom_db.api.db import Database
from dicom_db.api.errors import DatabaseBusy, DatabaseUnavailable
from dicom_db.api.files import database_unavailable, file_error, refuse_file_access
from dicom_db.api.images import NoImage, thumbnail_png
from dicom_db.api.settings import Settings
from dicom_db.ingest.paths import from_text

log = logging.getLogger("dicom_api.thumbnails")

CACHE_ENTRIES = 2048  # about 10-60 KB each
DECODERS = 2  # images decoded at once per process


class ThumbnailCache:
    """The most recently used results, each a PNG or the reason there is none."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._items: OrderedDict[tuple[str, int, int], bytes | str] = OrderedDict()

    def get(self, key: tuple[str, int, int]) -> bytes | str | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, int, int], value: bytes | str) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)


class Thumbnails:
    """The ASGI endpoint (app.py wraps it in RequireToken when tokens are configured)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.cache = ThumbnailCache()
        self._decoding = asyncio.Semaphore(DECODERS)
        self.decoded = 0  # images decoded so far: tests read it to see the cache work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.respond(Request(scope, receive))
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        refusal = refuse_file_access(request, self.settings, "Thumbnails")
        if refusal is not None:
            return refusal
        series = request.path_params["series_uid"]
        try:
            async with self.database.request():
                path = await self.database.middle_instance_file(series)
        except (DatabaseUnavailable, DatabaseBusy):
            return database_unavailable()
        if path is None:
            return file_error(404, "NOT_FOUND", f"No series {series} with an ingested file.")
        path = from_text(path)  # a name that is not UTF-8 is stored escaped (ingest/paths.py)
        try:
            stat = os.stat(path)
        except OSError as exc:
            return file_error(404, "NOT_FOUND", f"The file of series {series} is gone: {exc.strerror}.")
        key = (path, stat.st_size, stat.st_mtime_ns)
        etag = '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:32] + '"'
        result = self.cache.get(key)
        if result is None:
            result = await self._render(Path(path))
            self.cache.put(key, result)
        if isinstance(result, str):
            return file_error(404, "NO_IMAGE", f"Series {series} has no thumbnail: {result}.")
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(result, media_type="image/png", headers=headers)

    async def _render(self, path: Path) -> bytes | str:
        async with self._decoding:
            self.decoded += 1
            try:
                return await asyncio.to_thread(thumbnail_png, path)
            except NoImage as exc:
                log.info("no thumbnail for %s: %s", path, exc)
                return str(exc)
