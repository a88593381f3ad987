"""`dicom-api`: parse options, check the database opens, serve the app with uvicorn.

Exit codes: 2 bad option or URL, 3 the database cannot be opened or lacks the dicom-db tables.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn

from api.app import create_app
from api.db import Database
from api.errors import DatabaseUnavailable, UnsupportedDatabaseURL
from api.settings import DEFAULT_DB, Settings, SettingsError

EXIT_USAGE, EXIT_DATABASE = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-api",
        description="Serve the dicom-db database over GraphQL: POST/GET /graphql (GraphiQL in a browser), "
        "GET /healthz. The database is opened read-only.",
    )
    parser.add_argument(
        "--db",
        help=f"database URL: sqlite:///FILE or postgresql://USER@HOST/DB (default: $DATABASE_URL, else {DEFAULT_DB})",
    )
    parser.add_argument("--host", help="address to listen on (default: $DICOM_API_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $DICOM_API_PORT, else 8000)")
    parser.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin allowed to call the API, e.g. http://localhost:3000 (repeatable; default: "
        "$DICOM_API_CORS_ORIGINS, comma-separated, else none)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            database_url=args.db,
            host=args.host,
            port=args.port,
            cors_origins=tuple(args.cors_origin) if args.cors_origin else None,
        )
    except SettingsError as exc:
        _exit(EXIT_USAGE, str(exc))
    try:
        asyncio.run(_check_database(settings))
    except UnsupportedDatabaseURL as exc:
        _exit(EXIT_USAGE, str(exc))
    except DatabaseUnavailable as exc:
        _exit(EXIT_DATABASE, str(exc))
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)


async def _check_database(settings: Settings) -> None:
    """Fail before listening, with a message instead of a startup traceback."""
    database = Database(settings.database_url, pool_size=1)
    await database.connect()
    await database.disconnect()


def _exit(code: int, message: str) -> None:
    print(f"dicom-api: {message}", file=sys.stderr)
    sys.exit(code)
