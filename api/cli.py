"""`dicom-api`: parse options, check where it may listen and that the database opens, serve the app with uvicorn
in `--workers` processes (uvicorn's own supervisor: it binds the socket once, starts the workers and restarts one
that dies).

Each worker builds its app from the same command line (`worker_app`, an application factory: uvicorn starts its
workers afresh, so they get the arguments through the environment, never the tokens themselves), and the one
pseudonym key is made here, so that every worker shows a patient under the same pseudonym.

Exit codes: 2 bad option, URL or token configuration, or a refused address; 3 the database cannot be opened,
lacks the dicom-db tables or has another schema version (an older one: the message names the command that
upgrades it); 4 the address cannot be listened on (the port is in use).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import socket
import sys
from typing import Any

import uvicorn
import uvicorn.config
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from dicom_db.api.app import RANDOM_KEY_WARNING, create_app
from dicom_db.api.auth import BindRefused, check_bind
from dicom_db.api.db import Database
from dicom_db.api.errors import DatabaseUnavailable, UnsupportedDatabaseURL
from dicom_db.api.listen import AddressUnavailable, check_address
from dicom_db.api.settings import DEFAULT_DB, EXECUTIONS, Settings, SettingsError

EXIT_USAGE, EXIT_DATABASE, EXIT_ADDRESS = 2, 3, 4
WORKER_HEALTHCHECK_SECONDS = 30
ARGV_ENV = "DICOM_API_WORKER_ARGV"  # the command line's arguments, for the workers (JSON list)

EPILOG = """\
authentication:
  Tokens are never taken from the command line (other users can read it): set DICOM_API_TOKENS to
  "TOKEN:LEVEL[:NAME],..." and/or name a file of "TOKEN LEVEL [NAME]" lines with --tokens-file or
  DICOM_API_TOKENS_FILE. LEVEL is full, deidentified (DICOM PS3.15's Basic Profile with modified dates,
  patient characteristics and device identity retained) or a level the tokens file declares with a line
  "level NAME OPTION ..." (docs/api.md). With tokens, every request to /graphql needs
  "Authorization: Bearer TOKEN" (else 401). Without tokens, dicom-api listens only on a loopback address
  unless --allow-unauthenticated-remote is given.
  De-identified tokens see pseudonyms, pseudonymous UIDs and shifted dates keyed by DICOM_API_PSEUDONYM_KEY
  (or the file named by --pseudonym-key-file / DICOM_API_PSEUDONYM_KEY_FILE); without a key, they change at
  every start.

exit status: 0 stopped normally; 2 bad option, URL or token configuration, or an address refused without
authentication; 3 the database cannot be opened, lacks the dicom-db tables or has another schema version (an
older one: `dicom-ingest --upgrade --db URL` upgrades it); 4 the address cannot be listened on (the port is in
use). docs/api.md has every setting."""


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
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes, each with its own connections: a heavy request keeps one busy, the others "
        "serve (default: $DICOM_API_WORKERS, else the machine's cores)",
    )

    parser.add_argument(
        "--execution",
        choices=EXECUTIONS,
        help="how queries run: compiled (one SQL statement per root field builds the JSON; shapes it cannot "
        "compile run on the resolvers) or resolvers (default: $DICOM_API_EXECUTION, else "
        f"{Settings().execution})",
    )

    access = parser.add_argument_group("access")
    access.add_argument(
        "--tokens-file",
        metavar="FILE",
        help='bearer tokens, one "TOKEN LEVEL [NAME]" per line, LEVEL full, deidentified or a level declared '
        'there by "level NAME OPTION ..." (default: '
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
        ("--timeout", "timeout", float, "seconds a request may run, all its work included"),
        ("--max-body-bytes", "max_body_bytes", int, "size of a request body (larger: 413)"),
        ("--max-response-bytes", "max_response_bytes", int, "size of a response (larger: an error instead)"),
        ("--max-list-length", "max_list_length", int, "items of a list in an argument or variable"),
        ("--max-where-depth", "max_where_depth", int, "input objects nested in an argument or variable (where)"),
        ("--max-where-size", "max_where_size", int, "input objects in an argument or variable (where)"),
        ("--pool-size", "pool_size", int, "database connections per worker (one per request being served)"),
        ("--pool-timeout", "pool_timeout", float, "seconds a request waits for a connection (then UNAVAILABLE)"),
        ("--heavy-nodes", "heavy_nodes", int, "a request whose node count is over this runs in a heavy process"),
        (
            "--heavy-processes",
            "heavy_processes",
            int,
            "processes per worker for heavy requests, one request each; more at once: TOO_MANY_REQUESTS; 0: "
            "heavy requests run in the worker",
        ),
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
    argv = sys.argv[1:] if argv is None else argv
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
    os.environ[ARGV_ENV] = json.dumps(argv)
    if settings.pseudonym_key is None:  # one random key for all workers, else each would pseudonymise its own way
        os.environ["DICOM_API_PSEUDONYM_KEY"] = secrets.token_urlsafe(32)
        if any(not t.level.full for t in settings.tokens):  # the workers now see a key
            print(f"WARNING:     dicom_api: {RANDOM_KEY_WARNING}", file=sys.stderr, flush=True)
    config = TCPConfig(
        "dicom_db.api.cli:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # The supervisor kills a worker that does not answer its ping within this long. A worker deep in a
        # heavy request (a garbage collection of a large response holds the interpreter) is busy, not hung,
        # and killing it would drop every request it serves.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        log_level=log_level,
        log_config=log_config(log_level),
    )
    try:  # what uvicorn.run does, with this config
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass


class TCPConfig(uvicorn.Config):
    """uvicorn's configuration, whose listening socket for several workers says it is TCP. uvicorn's supervisor
    creates it with protocol 0, so asyncio never sets TCP_NODELAY on the connections it accepts, and on a
    keep-alive connection every request after the first waited ~40 ms for the client's delayed ACK (about 22
    requests/s on one connection; Kludex/uvicorn#3149, open). One worker listens through asyncio, which does."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())


def worker_app() -> Starlette:
    """The app of one worker, from the command line `main` checked (uvicorn calls this in each worker)."""
    args = build_parser().parse_args(json.loads(os.environ.get(ARGV_ENV, "[]")))
    return create_app(settings_from_args(args), start_heavy_processes=True)


def log_config(level: str) -> dict[str, Any]:
    """Uvicorn's logging, with the API's own messages (authentication, refused requests, server errors) beside
    its own, and its access log without query strings (api.http.RedactQueryString)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query"] = {"()": "dicom_db.api.http.RedactQueryString"}
    config["handlers"]["access"]["filters"] = ["redact_query"]
    config["formatters"]["dicom_api"] = {"format": "%(levelname)s:     %(name)s: %(message)s"}
    config["handlers"]["dicom_api"] = {
        "class": "logging.StreamHandler",
        "formatter": "dicom_api",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["dicom_api"] = {"handlers": ["dicom_api"], "level": level.upper(), "propagate": False}
    return config


async def _check_database(settings: Settings) -> None:
    """Fail before listening, with a message instead of a startup traceback."""
    database = Database(settings.database_url, pool_size=1)
    await database.connect()
    await database.disconnect()


def _exit(code: int, message: str) -> None:
    print(f"dicom-api: {message}", file=sys.stderr)
    sys.exit(code)
