"""The Starlette application: `/graphql` (POST, GET with `?query=`, GraphiQL for browsers) and `/healthz`.

`create_app(settings)` assembles everything in one place, so that what a deployment changes (settings,
extensions, middleware) has one home.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from cross_web import HTTPException
from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema import BaseSchema
from strawberry.types import ExecutionResult

from api.auth import RequireToken, describe_tokens, principal_of
from api.browser import browser_page
from api.db import Database
from api.graphiql import STATIC, graphiql_response
from api.limits import timeout_error
from api.loaders import Context, Loaders
from api.masking import Access, Pseudonyms
from api.schema import build_schema, unexpected
from api.settings import Settings
from api.thumbnails import Thumbnails
from api.types import make_node

log = logging.getLogger("dicom_api")

# Seconds between row counts of the tables (the node budget's caps, api.limits): an ingest that runs meanwhile
# adds at most this long's worth of rows that the budget does not yet know of.
ROW_COUNT_INTERVAL = 10.0

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


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI view with this API's context: the request's access level, fresh loaders, one database
    session (one connection, one snapshot) and the time limit."""

    def __init__(self, schema: BaseSchema, *, database: Database, settings: Settings) -> None:
        super().__init__(schema, graphql_ide="graphiql" if settings.graphiql else None)
        self.database = database
        self.settings = settings

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        principal = principal_of(request.scope, bool(self.settings.tokens))
        if principal is None:  # tokens configured, yet nothing authenticated this request: fail closed
            raise HTTPException(401, "Authentication required")
        access = Access(principal.level, self.database.pseudonyms)
        return Context(
            request=request,  # type: ignore[arg-type]
            response=response,  # type: ignore[arg-type]
            db=self.database,
            settings=self.settings,
            loaders=Loaders(self.database, partial(make_node, access=access)),
            access=access,
        )

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        # The last word on errors. MaskErrors masks what resolvers raise, but an exception raised in an
        # extension's hook (a bug in api.limits, say) skips the hooks' post-processing, MaskErrors' included.
        if self.settings.mask_errors and result.errors:
            result.errors = [_masked(e) if unexpected(e) else e for e in result.errors]
        return await super().process_result(request, result)

    async def execute_operation(self, *args: Any, **kwargs: Any) -> Any:
        async with self.database.request() as session:
            try:
                async with asyncio.timeout(self.settings.timeout) as deadline:
                    return await super().execute_operation(*args, **kwargs)
            except TimeoutError:
                if not deadline.expired():
                    raise
                session.interrupt()  # the statements under way stop; the session ends as the block exits
                log.warning("a request ran into the time limit of %g s and was stopped", self.settings.timeout)
                return ExecutionResult(data=None, errors=[timeout_error(self.settings.timeout)])

    async def render_graphql_ide(self, request: Request) -> Response:
        principal = principal_of(request.scope, bool(self.settings.tokens))
        deidentified = principal is not None and not principal.level.full
        query = DEIDENTIFIED_DEFAULT_QUERY if deidentified else DEFAULT_QUERY
        return graphiql_response(query)


def _masked(error: GraphQLError) -> GraphQLError:
    return GraphQLError("Unexpected error.", nodes=error.nodes, path=error.path)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    pseudonyms = Pseudonyms(settings.pseudonym_key)
    database = Database(
        settings.database_url,
        pool_size=settings.pool_size,
        busy_timeout_ms=settings.busy_timeout_ms,
        pseudonyms=pseudonyms,
    )
    schema = build_schema(settings, row_counts=lambda: database.table_rows)
    graphql = GraphQLApp(schema, database=database, settings=settings)
    # With tokens, nothing reaches the GraphQL view (GraphiQL page included) without a valid one.
    endpoint: ASGIApp = RequireToken(graphql, settings.tokens) if settings.tokens else graphql
    thumbnails: ASGIApp = Thumbnails(database, settings)
    if settings.tokens:
        thumbnails = RequireToken(thumbnails, settings.tokens)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _log_access_settings(settings, pseudonyms)
        await database.connect()
        counting = asyncio.create_task(_count_rows_every(database, ROW_COUNT_INTERVAL))
        try:
            yield
        finally:
            counting.cancel()
            await database.disconnect()

    async def healthz(request: Request) -> Response:
        try:
            await database.ping()
        except Exception as exc:  # health checks report, they do not raise
            log.warning("health check failed: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
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
            Route("/thumbnails/{series_uid}.png", thumbnails, methods=["GET"]),
            Route("/", browser_page, methods=["GET"]),
            Route("/studies/{study_uid}", browser_page, methods=["GET"]),
            # GraphiQL's builds and the study browser: public code, no data, so no token is needed for them.
            Mount("/static", GZipMiddleware(StaticFiles(directory=STATIC)), name="static"),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.database = database
    app.state.settings = settings
    return app


def _log_access_settings(settings: Settings, pseudonyms: Pseudonyms) -> None:
    if settings.tokens:
        log.info("authentication required; tokens: %s", describe_tokens(settings.tokens))
    else:
        log.info("no tokens configured: every request has full access")
    deidentified = any(not t.level.full for t in settings.tokens)
    if deidentified and not pseudonyms.configured:
        log.warning(
            "no pseudonym key configured (DICOM_API_PSEUDONYM_KEY or DICOM_API_PSEUDONYM_KEY_FILE): the pseudonyms "
            "de-identified tokens see change whenever the server restarts"
        )


async def _count_rows_every(database: Database, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await database.count_rows()
        except Exception as exc:  # the database may be restarting: the last counts stay, the next try may work
            log.warning("counting the tables' rows failed: %s", exc)
