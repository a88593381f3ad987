"""API settings: defaults, overridden by the environment, overridden by command-line options.

Environment (docs/api.md has the table): DATABASE_URL, DICOM_API_HOST, DICOM_API_PORT, DICOM_API_CORS_ORIGINS
(comma-separated), DICOM_API_PAGE_SIZE, DICOM_API_MAX_PAGE_SIZE, DICOM_API_POOL_SIZE, DICOM_API_GRAPHIQL (1/0),
DICOM_API_INTROSPECTION (1/0); access: DICOM_API_TOKENS, DICOM_API_TOKENS_FILE, DICOM_API_PSEUDONYM_KEY,
DICOM_API_PSEUDONYM_KEY_FILE, DICOM_API_ALLOW_UNAUTHENTICATED_REMOTE (1/0); limits: DICOM_API_MAX_DEPTH,
DICOM_API_MAX_ALIASES, DICOM_API_MAX_TOKENS, DICOM_API_MAX_NODES, DICOM_API_TIMEOUT (seconds),
DICOM_API_MAX_BODY_BYTES, DICOM_API_MAX_RESPONSE_BYTES, DICOM_API_MAX_LIST_LENGTH, DICOM_API_MAX_WHERE_DEPTH,
DICOM_API_MAX_WHERE_SIZE, DICOM_API_POOL_TIMEOUT (seconds); serving: DICOM_API_WORKERS, DICOM_API_HEAVY_NODES,
DICOM_API_HEAVY_PROCESSES, DICOM_API_EXECUTION (compiled or resolvers).

Secrets (tokens, the pseudonym key) never appear in a message of this module: a bad entry is named by its
position, never by its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dicom_db.api.auth import Token, TokenError, parse_tokens, read_tokens_file

DEFAULT_DB = "sqlite:///dicom.db"
# How /graphql executes a query: `compiled` (api.compiled: one SQL statement per root field builds the JSON, for
# the shapes api.compiler knows; the rest runs on the resolvers) or `resolvers` (Strawberry's resolvers only).
EXECUTIONS = ("compiled", "resolvers")
MIN_PSEUDONYM_KEY = 16  # characters of a configured pseudonym key


class SettingsError(ValueError):
    """A setting has a value the API cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DB
    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    default_page_size: int = 100  # `first` when a connection is asked without it
    max_page_size: int = 1000  # the largest `first` accepted (and the largest `groupBy` list)
    # Database connections kept open per worker; a request holds one from its first statement to its end, so this
    # is also how many requests a worker serves at once (the others wait for a connection, in order). Few: a worker
    # has one core's worth of Python, and more requests at once only interleave on its event loop, where each adds
    # to the wait of `/healthz` and of every other request (bench/bench_abuse.py, docs/benchmarks.md: /healthz p99
    # 73-563 ms with 16, 18-23 ms with 4, at the same throughput).
    pool_size: int = 4
    busy_timeout_ms: int = 5000  # how long an SQLite read waits for a writer's lock
    graphiql: bool = True  # serve GraphiQL on GET /graphql to browsers
    introspection: bool = True
    mask_errors: bool = True  # unexpected errors become "Unexpected error." (details go to the log)
    # Access. No tokens: no authentication, and the server only listens on a loopback address unless told
    # otherwise (api.auth.check_bind).
    tokens: tuple[Token, ...] = ()
    allow_unauthenticated_remote: bool = False
    # Key of the PatientID pseudonyms shown to de-identified tokens; None: a random key per server start.
    pseudonym_key: bytes | None = field(default=None, repr=False)
    # Query limits (api.limits): far above what a frontend asks, low enough that no query takes the server down.
    max_depth: int = 20  # nested field levels
    max_aliases: int = 50  # aliased fields in the document
    max_tokens: int = 2000  # lexical tokens in the document (long lists belong in variables)
    max_nodes: int = 2_000_000  # rows a response may hold (api.limits.Budget): 3 nested levels of 100 fit
    timeout: float = 30.0  # seconds a request may run
    max_body_bytes: int = 1_000_000  # a POST body larger than this is refused (413) before it is parsed
    max_response_bytes: int = 100_000_000  # a response that would be larger is replaced by an error
    max_list_length: int = 10_000  # items of one list in an argument or a variable (`in`, `or`, ...)
    # Input objects nested in one argument or variable, and input objects in it in all: each becomes a level or
    # a term of the SQL condition, and SQLite refuses conditions nested or chained beyond its parser's limits.
    max_where_depth: int = 12
    max_where_size: int = 1000
    pool_timeout: float = 10.0  # seconds a request waits for a free database connection before UNAVAILABLE
    # Serving: worker processes, each with its own event loop and connection pool.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # A request whose node budget is over `heavy_nodes` runs in one of its worker's `heavy_processes` processes
    # (api.heavy), at a lower CPU priority and killed at its time limit, so that it cannot hold the worker's
    # event loop; with all of them busy it is refused at once (TOO_MANY_REQUESTS). 0 processes: heavy requests
    # run in the worker like any other. The default is above every query of the study browser, GraphiQL's
    # example and bench/load_test.py's mix (at most 75,521 on a 1M-slice database), below 40 aliases of 1,000
    # slices with their parents (160,000).
    heavy_nodes: int = 100_000
    heavy_processes: int = 1
    execution: str = "compiled"  # one of EXECUTIONS

    def __post_init__(self) -> None:
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise SettingsError(
                f"page sizes: need 1 <= default ({self.default_page_size}) <= maximum ({self.max_page_size})"
            )
        if self.pool_size < 1:
            raise SettingsError(f"pool size must be at least 1, got {self.pool_size}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be between 0 and 65535, got {self.port}")
        for name in (
            "max_depth",
            "max_aliases",
            "max_tokens",
            "max_nodes",
            "max_body_bytes",
            "max_response_bytes",
            "max_list_length",
            "max_where_depth",
            "max_where_size",
            "workers",
            "heavy_nodes",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.heavy_processes < 0:
            raise SettingsError(f"heavy_processes must be at least 0, got {self.heavy_processes}")
        if not 0 < self.timeout <= 3600:
            raise SettingsError(f"timeout must be more than 0 and at most 3600 seconds, got {self.timeout}")
        if not 0 < self.pool_timeout <= 3600:
            raise SettingsError(f"pool timeout must be more than 0 and at most 3600 seconds, got {self.pool_timeout}")
        if self.pseudonym_key is not None and len(self.pseudonym_key) < MIN_PSEUDONYM_KEY:
            raise SettingsError(f"the pseudonym key must be at least {MIN_PSEUDONYM_KEY} bytes long")
        if self.execution not in EXECUTIONS:
            raise SettingsError(f"execution must be one of {', '.join(EXECUTIONS)}, got {self.execution!r}")
        secrets = [t.secret for t in self.tokens]
        if len(set(secrets)) != len(secrets):
            raise SettingsError("the same token is configured twice")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default: os.environ), then `overrides` (command-line options; None: not
        given). `tokens_file` and `pseudonym_key_file` are read here, so that a missing file is a settings error."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("DATABASE_URL"):
            values["database_url"] = env["DATABASE_URL"]
        for name, key, parse in (
            ("host", "DICOM_API_HOST", str),
            ("port", "DICOM_API_PORT", int),
            ("cors_origins", "DICOM_API_CORS_ORIGINS", _origins),
            ("default_page_size", "DICOM_API_PAGE_SIZE", int),
            ("max_page_size", "DICOM_API_MAX_PAGE_SIZE", int),
            ("pool_size", "DICOM_API_POOL_SIZE", int),
            ("graphiql", "DICOM_API_GRAPHIQL", _flag),
            ("introspection", "DICOM_API_INTROSPECTION", _flag),
            ("allow_unauthenticated_remote", "DICOM_API_ALLOW_UNAUTHENTICATED_REMOTE", _flag),
            ("max_depth", "DICOM_API_MAX_DEPTH", int),
            ("max_aliases", "DICOM_API_MAX_ALIASES", int),
            ("max_tokens", "DICOM_API_MAX_TOKENS", int),
            ("max_nodes", "DICOM_API_MAX_NODES", int),
            ("timeout", "DICOM_API_TIMEOUT", float),
            ("max_body_bytes", "DICOM_API_MAX_BODY_BYTES", int),
            ("max_response_bytes", "DICOM_API_MAX_RESPONSE_BYTES", int),
            ("max_list_length", "DICOM_API_MAX_LIST_LENGTH", int),
            ("max_where_depth", "DICOM_API_MAX_WHERE_DEPTH", int),
            ("max_where_size", "DICOM_API_MAX_WHERE_SIZE", int),
            ("pool_timeout", "DICOM_API_POOL_TIMEOUT", float),
            ("workers", "DICOM_API_WORKERS", int),
            ("heavy_nodes", "DICOM_API_HEAVY_NODES", int),
            ("heavy_processes", "DICOM_API_HEAVY_PROCESSES", int),
            ("execution", "DICOM_API_EXECUTION", str),
        ):
            if env.get(key, "") != "":
                try:
                    values[name] = parse(env[key])
                except ValueError as exc:
                    raise SettingsError(f"{key}={env[key]!r}: {exc}") from None
        tokens_file = overrides.pop("tokens_file", None) or env.get("DICOM_API_TOKENS_FILE") or None
        key_file = overrides.pop("pseudonym_key_file", None) or env.get("DICOM_API_PSEUDONYM_KEY_FILE") or None
        try:
            tokens = parse_tokens(env.get("DICOM_API_TOKENS", ""), "DICOM_API_TOKENS")
            if tokens_file:
                tokens += read_tokens_file(Path(tokens_file))
        except TokenError as exc:
            raise SettingsError(str(exc)) from None
        if tokens:
            values["tokens"] = tuple(tokens)
        if key_file:
            values["pseudonym_key"] = _read_key(Path(key_file))
        elif env.get("DICOM_API_PSEUDONYM_KEY"):
            values["pseudonym_key"] = env["DICOM_API_PSEUDONYM_KEY"].strip().encode()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise SettingsError(f"cannot read the pseudonym key file {path}: {exc.strerror or exc}") from None


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")
