"""File paths as the database stores them and as reports show them: lossless for any bytes a name holds.

POSIX file names are bytes; Python gives the bytes that are not UTF-8 as lone surrogates, which neither
SQLite nor PostgreSQL text (nor a UTF-8 terminal) can hold. A name that is valid UTF-8 is stored as it is. Any
other is stored as `bytes:` followed by the name with each byte that is not part of a UTF-8 character written
`\\xNN` and each backslash doubled: readable, reversible, and never equal to a stored UTF-8 path, all of which
are absolute (they start with `/`).
"""

from __future__ import annotations

import re

BYTES_PREFIX = "bytes:"
_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")


def to_text(path: str) -> str:
    """The stored and reported form of a path as `os.scandir` gives it (surrogate escapes for bad bytes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    escaped = path.replace("\\", "\\\\")
    return BYTES_PREFIX + "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c for c in escaped)


def from_text(text: str) -> str:
    """The path `to_text` stored, as the file system takes it (surrogate escapes for bad bytes)."""
    if not text.startswith(BYTES_PREFIX):
        return text

    def unescape(match: re.Match[str]) -> str:
        token = match.group(1)
        return "\\" if token == "\\" else chr(0xDC00 + int(token[1:], 16))

    return _ESCAPED.sub(unescape, text[len(BYTES_PREFIX) :])
