"""What a de-identified token may see: the person-identifying columns of `api.columns` (`sensitive=True`)
masked in every row before any of it becomes a field, `raw` included, and PatientID replaced by a pseudonym.

The pseudonym is "anon-" + the first 16 hex digits of HMAC-SHA256(key, PatientID): stable for as long as the
key is (DICOM_API_PSEUDONYM_KEY; a random key per server start when none is configured), the same wherever the
ID appears (Patient.patientId, Study.patientId, `raw`), and useless for getting the ID back without the key.
The database computes the same value (`api.sql.Dialect.pseudonym`), so that a de-identified client can look a
patient up by pseudonym and page through patients in pseudonym order: ordering by the real ID would tell the
order of the IDs, and a cursor holding one would hand it out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.auth import AccessLevel
from api.columns import TABLES, Column, Table

PSEUDONYM_PREFIX = "anon-"
PSEUDONYM_DIGITS = 16  # 64 bits: a collision among a million patients has a chance of about 3 in 100 million
PSEUDONYMISED = frozenset({"PatientID"})  # sensitive columns that get a pseudonym; the others become null
_BLOCK = 64  # SHA-256's block size, for HMAC's padded keys


class Pseudonyms:
    def __init__(self, key: bytes | None = None) -> None:
        self.configured = key is not None
        self._key = key if key is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"Pseudonyms(configured={self.configured})"

    def __call__(self, value: Any) -> str | None:
        if value is None:
            return None
        digest = hmac.new(self._key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:PSEUDONYM_DIGITS]

    def pads(self) -> tuple[bytes, bytes]:
        """HMAC's inner and outer padded keys, from which SQL computes the same pseudonym with plain SHA-256:
        HMAC(k, m) = H(k ^ opad || H(k ^ ipad || m))."""
        key = hashlib.sha256(self._key).digest() if len(self._key) > _BLOCK else self._key
        key = key.ljust(_BLOCK, b"\0")
        return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


@dataclass(frozen=True, slots=True)
class Access:
    """The view of the data one request has."""

    level: AccessLevel = AccessLevel.FULL
    pseudonyms: Pseudonyms | None = field(default=None, repr=False)

    @property
    def deidentified(self) -> bool:
        return self.level is AccessLevel.DEIDENTIFIED

    def forbids(self, column: Column) -> bool:
        """Whether this access may not filter, order or group by `column` (it would reveal the masked values)."""
        return self.deidentified and column.sensitive

    def row(self, table: Table, row: Sequence[Any]) -> Sequence[Any]:
        """`row` (columns in `table.select` order) as this access may see it."""
        if not self.deidentified:
            return row
        assert self.pseudonyms is not None, "de-identified access needs the server's pseudonyms"
        shown = list(row)
        for index, pseudonymise in _PLANS[table.name]:
            shown[index] = self.pseudonyms(row[index]) if pseudonymise else None
        return tuple(shown)


FULL = Access()

# Per table: the index in a stored row of each sensitive column, and whether it gets a pseudonym.
_PLANS: dict[str, list[tuple[int, bool]]] = {
    t.name: [(t.select.index(c.name), c.name in PSEUDONYMISED) for c in t.columns if c.sensitive]
    for t in TABLES.values()
}


def masked_fields() -> list[tuple[str, str, str]]:
    """(type, field attribute, what a de-identified token gets) for every masked field: the documented list."""
    return [
        (t.type_name, c.attr, "pseudonym" if c.name in PSEUDONYMISED else "null")
        for t in TABLES.values()
        for c in t.columns
        if c.sensitive
    ]
