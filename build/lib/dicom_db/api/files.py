"""`GET /files/{sopInstanceUid}`: the DICOM file an instance was ingested from, for full access only.

The path comes only from the ingest's file index (`Database.instance_files`: the file with status 'ingested'
for that SOPInstanceUID); nothing the client sends reaches the file system. An unknown instance, a UID no
database holds (a NUL character, a lone surrogate) and a file gone from disk since the ingest get a 404; a token
that may not read files gets 403: the files hold every attribute unmasked, and pixels can show burnt-in names.
The file is streamed (Starlette's FileResponse), with its size as Content-Length.
"""

from __future__ import annotations

import os
import stat

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from dicom_db.api.auth import principal_of
from dicom_db.api.db import Database
from dicom_db.api.errors import DatabaseBusy, DatabaseUnavailable
from dicom_db.api.http import error_response
from dicom_db.api.settings import Settings
from dicom_db.ingest.paths import from_text

MEDIA_TYPE = "application/dicom"


class Files:
    """The ASGI endpoint (app.py wraps it in RequireToken when tokens are configured)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.respond(Request(scope, receive))
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        refusal = refuse_file_access(request, self.settings, "Files")
        if refusal is not None:
            return refusal
        sop = request.path_params["sop_uid"]
        if not _storable(sop):
            return file_error(404, "NOT_FOUND", "No ingested instance with that SOPInstanceUID.")
        try:
            async with self.database.request():
                found = (await self.database.instance_files([sop])).get(sop)
        except (DatabaseUnavailable, DatabaseBusy):
            return database_unavailable()
        if found is None:
            return file_error(404, "NOT_FOUND", f"No ingested instance {sop}.")
        path = from_text(found[0])  # a name that is not UTF-8 is stored escaped (ingest/paths.py)
        try:
            status = os.stat(path)
        except OSError as exc:
            return file_error(404, "NOT_FOUND", f"The file of instance {sop} is gone: {exc.strerror}.")
        if not stat.S_ISREG(status.st_mode):
            return file_error(404, "NOT_FOUND", f"The file of instance {sop} is gone: not a regular file any more.")
        return FileResponse(
            path,
            media_type=MEDIA_TYPE,
            filename=f"{sop}.dcm",
            stat_result=status,
            headers={"Cache-Control": "private, no-cache"},
        )


def _storable(text: str) -> bool:
    """False for a string no database holds (a NUL character; a lone surrogate, which is not UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refuse_file_access(request: Request, settings: Settings, what: str) -> Response | None:
    """The 401 or 403 for a request that may not read DICOM files (downloads, thumbnails), else None."""
    principal = principal_of(request.scope, bool(settings.tokens))
    if principal is None:  # RequireToken lets nothing through without one; fail closed all the same
        return file_error(401, "UNAUTHENTICATED", "Authentication required.")
    if not principal.level.may_read_files:
        return file_error(403, "FORBIDDEN", f"{what} need a token with full access.")
    return None


def database_unavailable() -> Response:
    return file_error(503, "UNAVAILABLE", "The database is not available right now; try again.")


def file_error(status: int, code: str, message: str) -> JSONResponse:
    """The JSON error of the file endpoints (api/http.py's shape: a message and a code)."""
    return error_response(status, message, code)
