"""The Starlette application: `/graphql` (POST, GET with `?query=`, GraphiQL for browsers) and `/healthz`.

`create_app(settings)` assembles everything in one place, so that what a deployment changes (settings,
extensions, middleware) has one home.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.schema import BaseSchema

from api.db import Database
from api.loaders import Context, Loaders
from api.schema import build_schema
from api.settings import Settings
from api.types import make_node

log = logging.getLogger("dicom_api")

DEFAULT_QUERY = """# dicom-db GraphQL API. Ctrl-Enter runs the query; the Docs panel lists every field,
# filter (where), ordering (orderBy) and facet (groupBy). More examples: docs/api.md.
{
  allPatients(first: 10, orderBy: [{field: PATIENT_NAME}]) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      patientId
      patientName
      studyCount
      studies(orderBy: [{field: STUDY_DATE, direction: DESC}]) {
        nodes {
          studyDate
          studyDescription
          modalities
          series(first: 5) {
            nodes { modality seriesDescription sliceThickness sliceCount }
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


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI view with this API's context: fresh loaders for every request."""

    def __init__(self, schema: BaseSchema, *, database: Database, settings: Settings) -> None:
        super().__init__(schema, graphql_ide="graphiql" if settings.graphiql else None)
        self.database = database
        self.settings = settings

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        return Context(
            request=request,  # type: ignore[arg-type]
            response=response,  # type: ignore[arg-type]
            db=self.database,
            settings=self.settings,
            loaders=Loaders(self.database, make_node),
        )

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(with_default_query(self.graphql_ide_html, DEFAULT_QUERY))


def with_default_query(html: str, query: str) -> str:
    """Strawberry's GraphiQL page with `query` in its editor instead of the generic welcome text."""
    literal = query.replace("\\", "\\\\").replace("`", "\\`").replace("${", "\\${")
    return re.sub(
        r"const EXAMPLE_QUERY = `.*?`;", lambda _: f"const EXAMPLE_QUERY = `{literal}`;", html, count=1, flags=re.S
    )


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    database = Database(settings.database_url, pool_size=settings.pool_size, busy_timeout_ms=settings.busy_timeout_ms)
    schema = build_schema(introspection=settings.introspection, mask_errors=settings.mask_errors)
    graphql = GraphQLApp(schema, database=database, settings=settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await database.connect()
        try:
            yield
        finally:
            await database.disconnect()

    async def healthz(request: Request) -> Response:
        try:
            await database.ping()
        except Exception as exc:  # health checks report, they do not raise
            log.warning("health check failed: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def home(request: Request) -> Response:
        return RedirectResponse("/graphql")

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
            Route("/graphql", graphql, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/", home, methods=["GET"]),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.database = database
    app.state.settings = settings
    return app
