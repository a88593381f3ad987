"""API settings: defaults, overridden by the environment, overridden by command-line options.

Environment: DATABASE_URL, DICOM_API_HOST, DICOM_API_PORT, DICOM_API_CORS_ORIGINS (comma-separated),
DICOM_API_PAGE_SIZE, DICOM_API_MAX_PAGE_SIZE, DICOM_API_POOL_SIZE, DICOM_API_GRAPHIQL (1/0),
DICOM_API_INTROSPECTION (1/0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

DEFAULT_DB = "sqlite:///dicom.db"


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
    pool_size: int = 4  # database connections kept open
    busy_timeout_ms: int = 5000  # how long an SQLite read waits for a writer's lock
    graphiql: bool = True  # serve GraphiQL on GET /graphql to browsers
    introspection: bool = True
    mask_errors: bool = True  # unexpected errors become "Unexpected error." (details go to the log)

    def __post_init__(self) -> None:
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise SettingsError(
                f"page sizes: need 1 <= default ({self.default_page_size}) <= maximum ({self.max_page_size})"
            )
        if self.pool_size < 1:
            raise SettingsError(f"pool size must be at least 1, got {self.pool_size}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be between 0 and 65535, got {self.port}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
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
        ):
            if env.get(key, "") != "":
                try:
                    values[name] = parse(env[key])
                except ValueError as exc:
                    raise SettingsError(f"{key}={env[key]!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")
