"""The HTTP edge: every answer the API refuses at the HTTP level is a GraphQL-over-HTTP JSON error with a code.

- `error_response`: `{"errors": [{"message": ..., "extensions": {"code": ...}}]}` with an HTTP status;
- `limit_body`: a `receive` that refuses a request body past the size limit while it arrives (413), never
  holding more of it than the limit;
- `parse_request_json`: the body of a POST as GraphQL over HTTP asks for it, one JSON object (invalid UTF-8,
  malformed JSON, JSON nested past the parser's recursion limit, a batch array, `null`, `42` or `"str"` are
  refused with 400);
- `SingleAuthorization`: a request with more than one `Authorization` header is refused (which one would count
  depends on the component that reads it);
- `RedactQueryString`: a logging filter that drops the query string from uvicorn's access log lines (a
  client may put anything there, a token included).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("dicom_api.http")

CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL_SERVER_ERROR",
    503: "UNAVAILABLE",
}


def error_body(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **extensions: Any
) -> JSONResponse:
    body = error_body(message, code or CODES.get(status, "BAD_REQUEST"), **extensions)
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """The request body is longer than the limit (raised by the `receive` of `limit_body`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


def body_too_large(limit: int) -> JSONResponse:
    return error_response(
        413,
        f"The request body is larger than the limit of {limit:,} bytes (maxBodyBytes).",
        "PAYLOAD_TOO_LARGE",
        limit="maxBodyBytes",
        value=limit,
    )


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number; None without one; -1 when it is not a number."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


def limit_body(receive: Receive, limit: int) -> Receive:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return limited


class BadRequest(ValueError):
    """A request body that is not one GraphQL-over-HTTP request; the message says what is wrong."""


def parse_request_json(body: str | bytes) -> dict[str, Any]:
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("The request body is not valid UTF-8.") from None
    try:
        data = json.loads(body)
    except RecursionError:
        raise BadRequest("The request body is JSON nested too deeply to parse.") from None
    except ValueError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    if isinstance(data, list):
        raise BadRequest("Batched requests (a JSON array) are not supported: send one operation per request.")
    if not isinstance(data, dict):
        raise BadRequest(
            'The request body must be a JSON object such as {"query": "...", "variables": {...}}, '
            f"not {type(data).__name__ if data is not None else 'null'}."
        )
    name = data.get("operationName")
    if name is not None and not isinstance(name, str):
        raise BadRequest("The GraphQL operation's `operationName` must be a string or null, if provided.")
    return data


class SingleAuthorization:
    """Refuses (400) a request that carries more than one `Authorization` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            count = sum(1 for key, _ in scope.get("headers", ()) if key.lower() == b"authorization")
            if count > 1:
                log.warning("refused a request to %s with %d Authorization headers", scope.get("path"), count)
                response = error_response(400, "Send one Authorization header, not several.", "BAD_REQUEST")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RedactQueryString(logging.Filter):
    """Uvicorn's access log line without the query string: `GET /graphql?query=...&token=...` is logged as
    `GET /graphql?<redacted>`. The record's arguments are (client, method, path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<redacted>", *args[3:])
        return True
