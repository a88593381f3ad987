"""Bearer-token authentication and access levels.

Tokens come from DICOM_API_TOKENS (`TOKEN:LEVEL[:NAME]`, comma-separated) and/or the file named by
DICOM_API_TOKENS_FILE (one `TOKEN LEVEL [NAME]` per line). When any is configured, every request to /graphql
(GraphiQL page included) must carry `Authorization: Bearer TOKEN`, else it is answered 401 before the GraphQL
layer sees it. Without tokens there is no authentication, and `check_bind` keeps the server on loopback unless
told that a remote, unauthenticated listener is intended.

Levels: `full` (every column as stored) and `deidentified` (DICOM PS3.15's Basic Profile with the options Retain
Longitudinal Temporal Information with Modified Dates, Retain Patient Characteristics and Retain Device
Identity); a tokens file may declare more, `level NAME OPTION...` (options as named by `api.columns.Option`),
for its own tokens. `api.masking` applies a level's profile.

A token's value is a secret: it is compared in constant time, and no message, log line or repr shows it; a bad
entry is named by its source and position, or by its NAME.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_db.api.columns import Option

if TYPE_CHECKING:
    from dicom_db.api.settings import Settings

log = logging.getLogger("dicom_api.auth")

MIN_TOKEN_LENGTH = 16
# RFC 6750's b64token: also guarantees that a token holds neither ':' nor ',' nor whitespace (the separators).
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
REALM = "dicom-db"
PRINCIPAL_KEY = "dicom_api.principal"  # where the authenticated principal is kept in the ASGI scope's state


@dataclass(frozen=True, slots=True)
class AccessLevel:
    """`full`, or PS3.15's Basic Profile with `options` (api.masking applies it)."""

    name: str
    options: frozenset[Option] = frozenset()
    full: bool = False

    FULL: ClassVar[AccessLevel]
    DEIDENTIFIED: ClassVar[AccessLevel]

    @property
    def value(self) -> str:
        return self.name

    @property
    def may_read_files(self) -> bool:
        """File paths and contents (Slice.file, /files/, thumbnails) identify: only `full` reads them."""
        return self.full


AccessLevel.FULL = AccessLevel("full", full=True)
AccessLevel.DEIDENTIFIED = AccessLevel(
    "deidentified",
    frozenset(
        {
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
            Option.RETAIN_PATIENT_CHARACTERISTICS,
            Option.RETAIN_DEVICE_IDENTITY,
        }
    ),
)
BUILTIN_LEVELS = {level.name: level for level in (AccessLevel.FULL, AccessLevel.DEIDENTIFIED)}
_LEVEL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class TokenError(ValueError):
    """A token entry cannot be used; the message names the entry, never the token."""


@dataclass(frozen=True, slots=True)
class Token:
    secret: str = field(repr=False)
    level: AccessLevel
    name: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request runs as: the token's name (for logs) and its access level."""

    name: str
    level: AccessLevel


ANONYMOUS = Principal("anonymous", AccessLevel.FULL)  # no tokens configured: a local, single-user server


def _token(secret: str, level: str, name: str, where: str, levels: dict[str, AccessLevel] = BUILTIN_LEVELS) -> Token:
    if not _TOKEN.fullmatch(secret):
        raise TokenError(f"{where}: a token may hold only letters, digits and -._~+/ (and = at its end)")
    if len(secret) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{where}: the token is too short ({len(secret)} characters, at least {MIN_TOKEN_LENGTH}); make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    access = levels.get(level.strip().lower())
    if access is None:
        known = ", ".join(levels)
        raise TokenError(f"{where}: unknown access level {level.strip()!r}; use one of {known}") from None
    return Token(secret, access, name.strip() or where)


def _level(parts: list[str], levels: dict[str, AccessLevel], where: str) -> AccessLevel:
    """`level NAME OPTION...`: the Basic Profile with those options (comma- or space-separated)."""
    if len(parts) < 2 or not _LEVEL_NAME.fullmatch(parts[1]):
        raise TokenError(f"{where}: expected level NAME OPTION... with NAME of lower-case letters, digits, - and _")
    if parts[1] in levels:
        raise TokenError(f"{where}: the level {parts[1]!r} is already defined")
    options = set()
    for word in " ".join(parts[2:]).replace(",", " ").split():
        try:
            options.add(Option(word.lower()))
        except ValueError:
            known = ", ".join(o.value for o in Option)
            raise TokenError(f"{where}: unknown option {word!r}; options: {known}") from None
    return AccessLevel(parts[1], frozenset(options))


def parse_tokens(text: str, source: str = "DICOM_API_TOKENS") -> list[Token]:
    """`TOKEN:LEVEL[:NAME],...` (blank entries ignored); a missing name becomes "<source> entry N"."""
    tokens = []
    for number, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        parts = entry.strip().split(":", 2)
        where = f"{source} entry {number}"
        if len(parts) < 2:
            raise TokenError(f"{where}: expected TOKEN:LEVEL or TOKEN:LEVEL:NAME")
        tokens.append(_token(parts[0], parts[1], parts[2] if len(parts) > 2 else "", where))
    return tokens


def read_tokens_file(path: Path) -> list[Token]:
    """One `TOKEN LEVEL [NAME]` per line, or `level NAME OPTION...` declaring a level for the file's tokens
    (anywhere in the file); blank lines and lines starting with # are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise TokenError(f"cannot read the tokens file {path}: {reason}") from None
    levels = dict(BUILTIN_LEVELS)
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"tokens file {path} line {number}"
        if line.split()[0] == "level":  # never a token: tokens are at least 16 characters long
            level = _level(line.split(), levels, where)
            levels[level.name] = level
        else:
            entries.append((line.split(None, 2), where))
    tokens = []
    for parts, where in entries:
        if len(parts) < 2:
            raise TokenError(f"{where}: expected TOKEN LEVEL [NAME]")
        tokens.append(_token(parts[0], parts[1], parts[2] if len(parts) > 2 else "", where, levels))
    return tokens


class Authenticator:
    """Finds the token a request presents. Every configured token is compared, in constant time, whatever
    matches: how long the check takes says nothing about which token, or how much of one, was right."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        # Compare digests, not the tokens themselves: equal lengths, so not even a token's length leaks.
        self._digests = [(Principal(t.name, t.level), _digest(t.secret)) for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def authenticate(self, presented: str) -> Principal | None:
        digest = _digest(presented)
        found = None
        for principal, expected in self._digests:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class RequireToken:
    """ASGI wrapper of the GraphQL endpoint: 401 with a JSON error unless the request presents a valid token;
    the principal is put in the scope's state for `get_context`."""

    def __init__(self, app: ASGIApp, tokens: Sequence[Token]) -> None:
        self.app = app
        self.authenticator = Authenticator(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # only HTTP reaches /graphql (no websocket route); refuse anything else
            return
        header = _header(scope, b"authorization")
        match = _BEARER.fullmatch(header) if header is not None else None
        principal = self.authenticator.authenticate(match.group(1)) if match else None
        if principal is None:
            client = (scope.get("client") or ("?",))[0]
            reason = "no bearer token" if match is None else "a token that is not valid"
            log.warning("refused a request from %s to %s: %s", client, scope.get("path"), reason)
            await _refusal(valid_form=match is not None)(scope, receive, send)
            return
        log.debug("request by %s (%s access)", principal.name, principal.level.value)
        scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _refusal(valid_form: bool) -> JSONResponse:
    if valid_form:
        message, challenge = "The bearer token is not valid.", f'Bearer realm="{REALM}", error="invalid_token"'
    else:
        message, challenge = "Authentication required: send `Authorization: Bearer <token>`.", f'Bearer realm="{REALM}"'
    body = {"errors": [{"message": message, "extensions": {"code": "UNAUTHENTICATED"}}]}
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})


def principal_of(scope: Any, tokens_configured: bool) -> Principal | None:
    """The request's principal: the one RequireToken found, else anonymous full access when no tokens are
    configured; None (refuse) when tokens are configured but nothing authenticated the request."""
    principal = (scope.get("state") or {}).get(PRINCIPAL_KEY)
    if principal is not None:
        return principal
    return None if tokens_configured else ANONYMOUS


# Where the server may listen.


class BindRefused(Exception):
    """Listening on a non-loopback address without authentication, without being told that it is intended."""


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def check_bind(settings: Settings) -> None:
    if settings.tokens or settings.allow_unauthenticated_remote or is_loopback(settings.host):
        return
    raise BindRefused(
        f"refusing to listen on {settings.host} without authentication: anyone who can reach it could read the "
        "database. Configure tokens (DICOM_API_TOKENS or DICOM_API_TOKENS_FILE), listen on 127.0.0.1, or pass "
        "--allow-unauthenticated-remote (DICOM_API_ALLOW_UNAUTHENTICATED_REMOTE=1) if this is intended"
    )


def describe_tokens(tokens: Iterable[Token]) -> str:
    """For the startup log: names and levels, never the tokens."""
    return ", ".join(f"{t.name} ({t.level.value})" for t in tokens)
