"""The Starlette application: `/graphql` (POST, GET with `?query=`, GraphiQL for browsers), `/healthz`
(liveness: answers without touching the database), `/readyz` (readiness: the database answers), and for full
access `/files/` (api.files) and `/thumbnails/` (api.thumbnails).

`create_app(settings)` assembles everything in one place, so that what a deployment changes (settings,
extensions, middleware) has one home.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any

import strawberry.http.async_base_view
import strawberry.http.streaming
from cross_web import HTTPException
from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema import BaseSchema
from strawberry.types import ExecutionResult

from dicom_db.api.auth import PRINCIPAL_KEY, RequireToken, describe_tokens, principal_of
from dicom_db.api.browser import browser_page
from dicom_db.api.columns import STUDY
from dicom_db.api.compiled import CompiledExecution
from dicom_db.api.db import Database
from dicom_db.api.execution import ResponseTooLarge, encode_response, response_too_large
from dicom_db.api.files import Files
from dicom_db.api.graphiql import STATIC, graphiql_response
from dicom_db.api.heavy import HeavyAnswer, HeavyBusy, HeavyRequest, HeavyRequests, too_many_requests
from dicom_db.api.http import (
    BadRequest,
    BodyTooLarge,
    SingleAuthorization,
    body_too_large,
    declared_length,
    error_body,
    error_response,
    limit_body,
    parse_request_json,
)
from dicom_db.api.limits import timeout_error
from dicom_db.api.loaders import Context, Loaders
from dicom_db.api.masking import Access, Pseudonyms
from dicom_db.api.schema import build_schema, unexpected
from dicom_db.api.settings import Settings
from dicom_db.api.thumbnails import Thumbnails
from dicom_db.api.types import make_node

log = logging.getLogger("dicom_api")

# Seconds between row counts of the tables (the node budget's caps, api.limits): an ingest that runs meanwhile
# adds at most this long's worth of rows that the budget does not yet know of.
ROW_COUNT_INTERVAL = 10.0
READY_TIMEOUT = 1.0  # seconds /readyz waits for the database

DEFAULT_QUERY = """# dicom-db. Ctrl-Enter runs this query; the
# Docs panel lists every field, filter (where),
# order (orderBy) and facet (groupBy).
# More examples: docs/api.md
{
  allPatients(
    first: 10
    orderBy: [{field: PATIENT_NAME}]
  ) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      patientId
      patientName
      studyCount
      studies(
        orderBy: [
          {field: STUDY_DATE, direction: DESC}
        ]
      ) {
        nodes {
          studyDate
          studyDescription
          modalities
          series(first: 5) {
            nodes {
              modality
              seriesDescription
              sliceThickness
              sliceCount
            }
          }
        }
      }
    }
  }
  modalities: allSeries {
    groupBy(field: MODALITY) { value count }
  }
}
"""


# The same, for a token that may not order by patient name. (Lines stay short: the query fits GraphiQL's editor
# at 1280 px, which tests/test_browser.py checks.)
DEIDENTIFIED_DEFAULT_QUERY = DEFAULT_QUERY.replace("    orderBy: [{field: PATIENT_NAME}]\n", "")
STUDY_DATE_ORDER = """(
        orderBy: [
          {field: STUDY_DATE, direction: DESC}
        ]
      )"""


# Strawberry's view parses each request's Content-Type and Accept headers with email.message, ~20 µs a header: a
# tenth of a small compiled query's Python. The headers take a handful of values, so their parse is kept.
_parse_content_type = lru_cache(maxsize=256)(parse_content_type)
strawberry.http.async_base_view.parse_content_type = _parse_content_type  # type: ignore[attr-defined]
strawberry.http.streaming.parse_content_type = _parse_content_type  # type: ignore[attr-defined]


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI view with this API's context: the request's access level, fresh loaders, one database
    session (one connection, one snapshot) and the time limit; with `heavy`, requests over `heavyNodes` are
    served by its processes (api.heavy)."""

    def __init__(
        self, schema: BaseSchema, *, database: Database, settings: Settings, heavy: HeavyRequests | None = None
    ) -> None:
        super().__init__(schema, graphql_ide="graphiql" if settings.graphiql else None)
        self.database = database
        self.settings = settings
        self.heavy = heavy
        compiled = settings.execution == "compiled"
        self.compiled = CompiledExecution(schema._schema, database, settings) if compiled else None  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strawberry's view, with the body limited in size and every refusal as JSON with a code (Strawberry
        answers its own refusals as plain text)."""
        if scope["type"] != "http":  # no websocket route leads here
            return
        limit = self.settings.max_body_bytes
        length = declared_length(scope)
        if length is not None and length > limit:
            await body_too_large(limit)(scope, receive, send)
            return
        request = Request(scope, limit_body(receive, limit))
        try:
            response = await self._answer_compiled(request) or await self.run(request)
        except HTTPException as exc:
            response = error_response(exc.status_code, _sentence(exc.reason))
        except BodyTooLarge:
            response = body_too_large(limit)
        except ClientDisconnect:  # the client left while sending its request: nobody to answer
            log.debug("a client disconnected before its request was read")
            return
        await response(scope, receive, send)

    async def _answer_compiled(self, request: Request) -> Response | None:
        """A plain JSON POST that the compiled path answers, answered here: the rest of Strawberry's view (its
        request adapter, header parsing and result-type checks) costs more than a small compiled query's own
        Python. None: Strawberry's view serves the request, on the resolvers if the compiled path declined it."""
        if (
            self.compiled is None
            or request.method != "POST"
            or request.headers.get("content-type") != "application/json"
            or _STREAMING.search(request.headers.get("accept", ""))
        ):
            return None
        # In the view's order: the context (which refuses an unauthenticated request), then the body.
        sub_response = await self.get_sub_response(request)
        context = await self.get_context(request, sub_response)
        data = self.parse_json(await request.body())  # kept by the request, for the view if it serves it
        if type(data) is not dict:  # a batch, or not a request: the view says what is wrong
            return None
        query, variables = data.get("query"), data.get("variables")
        name, extensions = data.get("operationName"), data.get("extensions")
        if not (
            type(query) is str
            and (variables is None or type(variables) is dict)
            and (name is None or type(name) is str)
            and (extensions is None or type(extensions) is dict)
        ):
            return None
        request_data = GraphQLRequestData(
            query=query, variables=variables, operation_name=name, extensions=extensions, protocol="http"
        )
        result = await self._execute(request_data, context, None)
        if result is None:
            setattr(request.state, DECLINED, True)  # the view's execution goes straight to the resolvers
            return None
        return self.create_response(await self.process_result(request, result), sub_response)

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return parse_request_json(data)
        except BadRequest as exc:
            raise HTTPException(400, str(exc)) from None

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        principal = principal_of(request.scope, bool(self.settings.tokens))
        if principal is None:  # tokens configured, yet nothing authenticated this request: fail closed
            raise HTTPException(401, "Authentication required")
        access = Access(principal.level, self.database.pseudonyms)
        # The time limit runs from here: execution (api.execution checks it) and the encoding of the response.
        # A heavy process (api.heavy) gets the deadline its worker set.
        deadline = getattr(request.state, DEADLINE, None) or asyncio.get_running_loop().time() + self.settings.timeout
        if isinstance(request, Request):
            setattr(request.state, DEADLINE, deadline)
        return Context(
            request=request,  # type: ignore[arg-type]
            response=response,  # type: ignore[arg-type]
            db=self.database,
            settings=self.settings,
            loaders=Loaders(self.database, partial(make_node, access=access)),
            access=access,
            deadline=deadline,
            offload=self.heavy is not None,
        )

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        if isinstance(result, Relayed):  # a heavy process's answer, encoded there
            answer = result.answer
            return Encoded({}, answer.body, answer.status, answer.content_type or "application/json")  # type: ignore[typeddict-item]
        # The last word on errors. MaskErrors masks what resolvers raise, but an exception raised in an
        # extension's hook (a bug in api.limits, say) skips the hooks' post-processing, MaskErrors' included.
        if self.settings.mask_errors and result.errors:
            result.errors = [_masked(e) if unexpected(e) else e for e in result.errors]
        response = await super().process_result(request, result)
        # Encoded here, within what is left of the time limit and the response size limit, and yielding to the
        # event loop (api.execution); `encode_json` then only hands the text over.
        limit = self.settings.max_response_bytes
        deadline = getattr(request.state, DEADLINE, None) or asyncio.get_running_loop().time() + self.settings.timeout
        try:
            async with asyncio.timeout_at(deadline):
                text = await encode_response(response, limit, getattr(result, "size", None))
        except ResponseTooLarge:
            log.warning("a response exceeded the limit of %d bytes and was not sent", limit)
            return await super().process_result(request, ExecutionResult(None, [response_too_large(limit)]))
        except TimeoutError:
            log.warning("a request ran into the time limit of %g s and was stopped", self.settings.timeout)
            return await super().process_result(request, ExecutionResult(None, [timeout_error(self.settings.timeout)]))
        if not prefers_graphql_response(request.headers.get("accept", "")):
            return Encoded(response, text)
        # GraphQL over HTTP's own media type: a request that failed before execution (it did not parse or
        # validate, its variables did not coerce, a limit refused it) has no `data` and a 400. Errors of the
        # execution have a path, but for the time limit, which stops an execution under way.
        before_execution = all(e.path is None and _code(e) != "TIME_LIMIT_EXCEEDED" for e in result.errors or ())
        if result.data is None and result.errors and before_execution:
            response = {k: v for k, v in response.items() if k != "data"}  # type: ignore[assignment]
            return Encoded(response, await encode_response(response, limit), 400, GRAPHQL_RESPONSE)
        return Encoded(response, text, 200, GRAPHQL_RESPONSE)

    def create_response(self, response_data: Any, sub_response: Response) -> Response:
        response = super().create_response(response_data, sub_response)
        if isinstance(response_data, Encoded):
            response.status_code = sub_response.status_code or response_data.status  # a refusal's own first
            if response_data.media_type != "application/json":
                response.headers["content-type"] = response_data.media_type
        return response

    def encode_json(self, data: object) -> str | bytes:
        return data.text if isinstance(data, Encoded) else super().encode_json(data)

    async def execute_operation(self, *args: Any, **kwargs: Any) -> Any:
        request = kwargs["request"]
        result = await self._execute(
            kwargs.get("request_data"),
            kwargs.get("context"),
            partial(super().execute_operation, *args, **kwargs),
            compiled=not getattr(request.state, DECLINED, False),
        )
        context = kwargs.get("context")
        if isinstance(context, Context) and context.heavy_nodes is not None:  # left by the guard: heavy
            return await self._execute_heavy(request, context, kwargs["sub_response"])
        return result

    async def _execute(
        self,
        request_data: Any,
        context: Any,
        resolvers: Callable[[], Awaitable[Any]] | None,
        compiled: bool = True,
    ) -> Any:
        """The request's result within its session and time limit: compiled (api.compiled) when that path takes
        it, else by `resolvers`; None when it declines and there are none."""
        deadline = getattr(context, "deadline", None) or asyncio.get_running_loop().time() + self.settings.timeout
        async with self.database.request(deadline) as session:
            try:
                async with asyncio.timeout_at(deadline) as timeout:
                    result = None
                    if self.compiled is not None and compiled:  # None: the resolvers run it (or hand it on)
                        result = await self.compiled.execute(request_data, context)
                    if result is None and resolvers is not None:
                        result = await resolvers()
            except TimeoutError:
                if not timeout.expired():
                    raise
                session.interrupt()  # the statements under way stop; the session ends as the block exits
                log.warning("a request ran into the time limit of %g s and was stopped", self.settings.timeout)
                return ExecutionResult(data=None, errors=[timeout_error(self.settings.timeout)])
        return result

    async def _execute_heavy(self, request: Request, context: Context, sub_response: Response) -> ExecutionResult:
        """Serve a request that the guard found heavy in one of the worker's heavy processes (api.heavy)."""
        heavy = self.heavy
        assert heavy is not None and context.heavy_nodes is not None
        principal = (request.scope.get("state") or {}).get(PRINCIPAL_KEY)
        job = HeavyRequest(
            method=request.method,
            path=request.url.path,
            query_string=request.scope.get("query_string", b""),
            headers=list(request.scope["headers"]),
            body=await request.body(),
            state={PRINCIPAL_KEY: principal} if principal is not None else {},
            table_rows=self.database.table_rows,
            seconds=context.deadline - asyncio.get_running_loop().time(),
        )
        try:
            answer = await heavy.serve(job, context.deadline)
        except HeavyBusy as busy:
            sub_response.status_code = 429
            sub_response.headers["retry-after"] = str(busy.retry_after)
            log.info("a heavy request (%d rows) was refused: the heavy processes are busy", context.heavy_nodes)
            error = too_many_requests(heavy.size, context.heavy_nodes, self.settings.heavy_nodes, busy.retry_after)
            return ExecutionResult(data=None, errors=[error])
        except Exception as exc:  # the process died (killed by the system, say): this request's failure alone
            log.error("a heavy request's process failed: %s: %s", type(exc).__name__, exc)
            return ExecutionResult(data=None, errors=[GraphQLError("Unexpected error.")])
        if answer is None:
            log.warning(
                "a heavy request ran into the time limit of %g s; its process was stopped", self.settings.timeout
            )
            return ExecutionResult(data=None, errors=[timeout_error(self.settings.timeout)])
        return Relayed(data=None, errors=None, answer=answer)

    async def render_graphql_ide(self, request: Request) -> Response:
        principal = principal_of(request.scope, bool(self.settings.tokens))
        deidentified = principal is not None and not principal.level.full
        query = DEIDENTIFIED_DEFAULT_QUERY if deidentified else DEFAULT_QUERY
        if principal is not None and Access(principal.level, self.database.pseudonyms).forbids(
            STUDY.by_name["StudyDate"], STUDY
        ):  # a level that removes dates (a declared `basic`) may not order by them either
            query = query.replace(STUDY_DATE_ORDER, "")
        return graphiql_response(query)


DEADLINE = "dicom_api_deadline"  # where a request's deadline (event-loop time) is kept in request.state
DECLINED = "dicom_api_compiled_declined"  # set in request.state when the compiled path declined the request
# Accept headers asking for a streamed response (multipart or server-sent events): Strawberry's view serves them.
_STREAMING = re.compile(r"multipart/mixed|text/event-stream", re.IGNORECASE)


@dataclass
class Relayed(ExecutionResult):
    """The answer of a heavy process (api.heavy), relayed as it is."""

    answer: HeavyAnswer | None = None


class Encoded(dict):  # type: ignore[type-arg]
    """A response and its JSON text, encoded by `GraphQLApp.process_result`, with its status and media type."""

    def __init__(
        self,
        response: GraphQLHTTPResponse,
        text: str | bytes,
        status: int = 200,
        media_type: str = "application/json",
    ) -> None:
        super().__init__(response)
        self.text = text
        self.status = status
        self.media_type = media_type


GRAPHQL_RESPONSE = "application/graphql-response+json"


def prefers_graphql_response(accept: str) -> bool:
    """Whether an Accept header prefers `application/graphql-response+json` to `application/json` (higher
    quality; on a tie, the newer type). Without either (no header, `*/*`) the answer is `application/json`."""
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    new = quality.get(GRAPHQL_RESPONSE, 0.0)
    return new > 0 and new >= quality.get("application/json", 0.0)


def _code(error: GraphQLError) -> Any:
    return (error.extensions or {}).get("code")


def _sentence(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else text + "."


def _masked(error: GraphQLError) -> GraphQLError:
    return GraphQLError("Unexpected error.", nodes=error.nodes, path=error.path)


def _database(settings: Settings, pseudonyms: Pseudonyms) -> Database:
    return Database(
        settings.database_url,
        pool_size=settings.pool_size,
        busy_timeout_ms=settings.busy_timeout_ms,
        pool_timeout=settings.pool_timeout,
        pseudonyms=pseudonyms,
    )


async def heavy_view(settings: Settings) -> tuple[GraphQLApp, Database]:
    """The GraphQL view of a heavy process (api.heavy), its database connected: its worker's settings (the
    pseudonym key included, so that pseudonyms are the same), one connection, no heavy processes of its own.
    Its worker has checked the token and the Authorization header already."""
    settings = replace(settings, heavy_processes=0, pool_size=1)
    database = _database(settings, Pseudonyms(settings.pseudonym_key))
    await database.connect()
    schema = build_schema(settings, row_counts=lambda: database.table_rows)
    return GraphQLApp(schema, database=database, settings=settings), database


def create_app(settings: Settings | None = None, *, start_heavy_processes: bool = False) -> Starlette:
    """The app; `start_heavy_processes`: at startup (a served worker), else at the first heavy request."""
    settings = settings or Settings.from_env()
    pseudonyms = Pseudonyms(settings.pseudonym_key)
    database = _database(settings, pseudonyms)
    schema = build_schema(settings, row_counts=lambda: database.table_rows)
    heavy = None
    if settings.heavy_processes:
        heavy = HeavyRequests(replace(settings, pseudonym_key=pseudonyms.key))
    graphql = GraphQLApp(schema, database=database, settings=settings, heavy=heavy)
    # With tokens, nothing reaches the GraphQL view (GraphiQL page included) without a valid one.
    endpoint: ASGIApp = RequireToken(graphql, settings.tokens) if settings.tokens else graphql
    thumbnails: ASGIApp = Thumbnails(database, settings)
    files: ASGIApp = Files(database, settings)
    if settings.tokens:
        thumbnails = RequireToken(thumbnails, settings.tokens)
        files = RequireToken(files, settings.tokens)
    endpoint = SingleAuthorization(endpoint)
    thumbnails = SingleAuthorization(thumbnails)
    files = SingleAuthorization(files)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _log_access_settings(settings, pseudonyms)
        await database.connect()
        counting = asyncio.create_task(_count_rows_every(database, ROW_COUNT_INTERVAL))
        if heavy is not None and start_heavy_processes:
            heavy.start()
        try:
            yield
        finally:
            counting.cancel()
            if heavy is not None:
                await heavy.stop()
            await database.disconnect()

    async def healthz(request: Request) -> Response:
        # Liveness: this process answers. It never waits for the database, so that slow queries holding every
        # connection do not make a live server look dead.
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await database.ping()
        except Exception as exc:  # readiness checks report, they do not raise
            reason = "no answer within 1 s" if isinstance(exc, TimeoutError) else " ".join(str(exc).split())
            log.warning("readiness check failed: %s", reason or type(exc).__name__)
            return JSONResponse(
                {"status": "unavailable", **error_body("The database did not answer within 1 s.", "UNAVAILABLE")},
                status_code=503,
            )
        return JSONResponse({"status": "ok"})

    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type", "Authorization"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=[
            Route("/graphql", endpoint, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/thumbnails/{series_uid}.png", thumbnails, methods=["GET"]),
            Route("/files/{sop_uid}", files, methods=["GET"]),
            Route("/", browser_page, methods=["GET"]),
            Route("/studies/{study_uid}", browser_page, methods=["GET"]),
            # GraphiQL's builds and the study browser: public code, no data, so no token is needed for them.
            Mount("/static", GZipMiddleware(StaticFiles(directory=STATIC)), name="static"),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={StarletteHTTPException: _http_error, Exception: _server_error},
    )
    app.state.database = database
    app.state.settings = settings
    app.state.compiled = graphql.compiled  # None unless settings.execution is "compiled"
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a method a route does not take) as JSON with a code."""
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, _sentence(exc.detail), headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback (a bug of ours); the client gets JSON with a code, no details.
    return error_response(500, "Unexpected error.", "INTERNAL_SERVER_ERROR")


RANDOM_KEY_WARNING = (
    "no pseudonym key configured (DICOM_API_PSEUDONYM_KEY or DICOM_API_PSEUDONYM_KEY_FILE): the pseudonyms "
    "de-identified tokens see change whenever the server restarts"
)


def _log_access_settings(settings: Settings, pseudonyms: Pseudonyms) -> None:
    if settings.tokens:
        log.info("authentication required; tokens: %s", describe_tokens(settings.tokens))
    else:
        log.info("no tokens configured: every request has full access")
    deidentified = any(not t.level.full for t in settings.tokens)
    if deidentified and not pseudonyms.configured:
        log.warning(RANDOM_KEY_WARNING)


async def _count_rows_every(database: Database, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        if not database.connected:  # the app is shutting down
            return
        try:
            await database.count_rows()
        except Exception as exc:  # the database may be restarting: the last counts stay, the next try may work
            log.warning("counting the tables' rows failed: %s", exc)
