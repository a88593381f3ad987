"""`dicom-api`: parse options, check where it may listen and that the database opens, serve the app with uvicorn.

Exit codes: 2 bad option, URL or token configuration, or a refused address; 3 the database cannot be opened or
lacks the dicom-db tables; 4 the address cannot be listened on (the port is in use).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvicorn

from api.app import create_app
from api.auth import BindRefused, check_bind
from api.db import Database
from api.errors import DatabaseUnavailable, UnsupportedDatabaseURL
from api.listen import AddressUnavailable, check_address
from api.settings import DEFAULT_DB, Settings, SettingsError

EXIT_USAGE, EXIT_DATABASE, EXIT_ADDRESS = 2, 3, 4

EPILOG = """\
authentication:
  Tokens are never taken from the command line (other users can read it): set DICOM_API_TOKENS to
  "TOKEN:LEVEL[:NAME],..." and/or name a file of "TOKEN LEVEL [NAME]" lines with --tokens-file or
  DICOM_API_TOKENS_FILE. LEVEL is full or deidentified. With tokens, every request to /graphql needs
  "Authorization: Bearer TOKEN" (else 401). Without tokens, dicom-api listens only on a loopback address
  unless --allow-unauthenticated-remote is given.
  De-identified tokens see PatientID as a pseudonym keyed by DICOM_API_PSEUDONYM_KEY (or the file named by
  --pseudonym-key-file / DICOM_API_PSEUDONYM_KEY_FILE); without a key, pseudonyms change at every start.

exit status: 0 stopped normally; 2 bad option, URL or token configuration, or an address refused without
authentication; 3 the database cannot be opened or lacks the dicom-db tables; 4 the address cannot be listened
on (the port is in use). docs/api.md has every setting."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-api",
        description="Serve the dicom-db database over GraphQL: POST/GET /graphql (GraphiQL in a browser), "
        "GET /healthz. The database is opened read-only.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="least severe messages logged, the server's and uvicorn's (default: %(default)s)",
    )

    access = parser.add_argument_group("access")
    access.add_argument(
        "--tokens-file",
        metavar="FILE",
        help='bearer tokens, one "TOKEN LEVEL [NAME]" per line, LEVEL full or deidentified (default: '
        "$DICOM_API_TOKENS_FILE; tokens in $DICOM_API_TOKENS are added)",
    )
    access.add_argument(
        "--allow-unauthenticated-remote",
        action="store_const",
        const=True,
        help="without tokens, listen on a non-loopback --host all the same: anyone who reaches it reads the "
        "database (default: $DICOM_API_ALLOW_UNAUTHENTICATED_REMOTE, else refused)",
    )
    access.add_argument(
        "--pseudonym-key-file",
        metavar="FILE",
        help="key of the PatientID pseudonyms de-identified tokens see (default: $DICOM_API_PSEUDONYM_KEY_FILE, "
        "else $DICOM_API_PSEUDONYM_KEY, else a random key per start)",
    )
    access.add_argument(
        "--no-graphiql",
        dest="graphiql",
        action="store_const",
        const=False,
        help="serve no GraphiQL page (default: $DICOM_API_GRAPHIQL, else served)",
    )
    access.add_argument(
        "--no-introspection",
        dest="introspection",
        action="store_const",
        const=False,
        help="refuse introspection queries (default: $DICOM_API_INTROSPECTION, else allowed)",
    )

    limits = parser.add_argument_group("limits (each also $DICOM_API_<NAME>, e.g. DICOM_API_MAX_DEPTH)")
    defaults = Settings()
    for option, name, kind, what in (
        ("--page-size", "default_page_size", int, "`first` of a connection asked without it"),
        ("--max-page-size", "max_page_size", int, "largest `first` (and `groupBy` list)"),
        ("--max-depth", "max_depth", int, "nested field levels of a query"),
        ("--max-aliases", "max_aliases", int, "aliased fields of a query"),
        ("--max-tokens", "max_tokens", int, "lexical tokens of a query document"),
        ("--max-nodes", "max_nodes", int, "rows a query may return, counted from its page sizes before it runs"),
        ("--timeout", "timeout", float, "seconds a request may run"),
        ("--pool-size", "pool_size", int, "database connections (one per request being served)"),
    ):
        limits.add_argument(
            option,
            dest=name,
            type=kind,
            metavar="SECONDS" if kind is float else "N",
            help=f"{what} (default: {_number(getattr(defaults, name))})",
        )
    return parser


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """The environment's settings, overridden by the options given (None: not given)."""
    options = dict(vars(args))
    options.pop("log_level")
    options["database_url"] = options.pop("db")
    cors = options.pop("cors_origin")
    options["cors_origins"] = tuple(cors) if cors else None
    return Settings.from_env(environ, **options)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    log_level = args.log_level
    try:
        settings = settings_from_args(args)
        check_bind(settings)
    except (SettingsError, BindRefused) as exc:
        _exit(EXIT_USAGE, str(exc))
    try:
        asyncio.run(_check_database(settings))
    except UnsupportedDatabaseURL as exc:
        _exit(EXIT_USAGE, str(exc))
    except DatabaseUnavailable as exc:
        _exit(EXIT_DATABASE, str(exc))
    try:
        check_address(settings.host, settings.port)
    except AddressUnavailable as exc:
        _exit(EXIT_ADDRESS, str(exc))
    _log_to_stderr(log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


def _log_to_stderr(level: str) -> None:
    """The API's own messages (authentication, refused requests, server errors) beside uvicorn's."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("dicom_api")
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


async def _check_database(settings: Settings) -> None:
    """Fail before listening, with a message instead of a startup traceback."""
    database = Database(settings.database_url, pool_size=1)
    await database.connect()
    await database.disconnect()


def _exit(code: int, message: str) -> None:
    print(f"dicom-api: {message}", file=sys.stderr)
    sys.exit(code)
