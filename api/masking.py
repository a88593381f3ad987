"""What an access level sees: DICOM PS3.15's actions (`api.columns`, each column's `Ps315`) applied at query time.

A level is the Basic Application Level Confidentiality Profile plus a set of options (`api.auth.AccessLevel`);
`full` applies nothing. Under a de-identifying level every column gets one `Treatment`, from the action Table
E.1-1 gives its attribute under the level's options:

- K: as stored. C on a description (Clean Descriptors) is also kept as stored: the API cannot clean free text,
  so a level with that option suits collections whose descriptions were reviewed.
- X, Z, D (and X/Z, X/D, Z/D): null; PatientID's Z/D is a dummy consistent per patient, the pseudonym
  `anon-` + 16 hex digits of HMAC-SHA256(key, PatientID).
- U: a pseudonymous UID, `2.25.` + the decimal of a 128-bit block cipher (an 8-round Feistel network whose round
  function is HMAC-SHA256 under a key derived from the server's key) applied to the first 128 bits of SHA-256
  of the UID. The ingest stores that digest, indexed (`ingest.db.UID_HASHES`), so a pseudonym the client sends
  is deciphered into the digest and found by an index seek; without the key a pseudonym can be neither turned
  into the UID nor checked against a guessed one.
- C on a date: shifted by the patient's offset, a whole number of days in +-[1, 3652] derived from HMAC(key,
  PatientID), never zero and the same for every row of the patient's tree, so intervals within a patient stay.
  Times are kept (the shift is whole days). The database computes the same shift (`api.sql.Dialect.shift_date`),
  so that filters, ordering and facets compare the shifted dates, never the stored ones.
- `=YES`, `=METHOD`, `=MODIFIED`: the values PS3.15 E.1.1 and E.3.6 set.

Filters, ordering and facets may use the columns the database can compute as shown (kept, shifted, UIDs); the
others (null, constant, the PatientID pseudonym) are refused with FORBIDDEN (`api.limits`). UID columns compare
by pseudonym with eq, ne, in, notIn and isNull only, and order by a keyed hash (HMAC), a fixed but meaningless
order.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicom_db.api.auth import AccessLevel
from dicom_db.api.columns import BASIC_PROFILE_CODE, TABLES, Column, Kind, Option, Table

PSEUDONYM_PREFIX = "anon-"
PSEUDONYM_DIGITS = 16  # 64 bits: a collision among a million patients has a chance of about 3 in 100 million
_BLOCK = 64  # SHA-256's block size, for HMAC's padded keys
UID_ROOT = "2.25."  # ISO/IEC 9834-8: a UID made of a 128-bit integer
_UID_PSEUDONYM = re.compile(r"2\.25\.(0|[1-9][0-9]{0,38})")
# The dates a shift moves: ISO text in ASCII digits, as the ingest stores DA values and as the databases' own
# check reads them (api.sql.Dialect.is_iso_date), so that what a de-identified token sees, filters and orders by
# agree. Python's date.fromisoformat alone would also take week dates and other scripts' digits.
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FEISTEL_ROUNDS = 8
MAX_SHIFT_DAYS = 3652  # about ten years either way

# Per table: the UID column and the column holding its digest (the same map as ingest.db.UID_HASHES).
UID_HASHES = {
    "Study": ("StudyInstanceUID", "StudyInstanceUIDHash"),
    "Series": ("SeriesInstanceUID", "SeriesInstanceUIDHash"),
    "SliceMetadata": ("SOPInstanceUID", "SOPInstanceUIDHash"),
}
# Where the digest of each UID column is: (table holding it, its UID column, the digest column).
UID_DIGEST_OF: dict[tuple[str, str], tuple[str, str, str]] = {
    ("Study", "StudyInstanceUID"): ("Study", "StudyInstanceUID", "StudyInstanceUIDHash"),
    ("Series", "SeriesInstanceUID"): ("Series", "SeriesInstanceUID", "SeriesInstanceUIDHash"),
    ("Series", "StudyInstanceUID"): ("Study", "StudyInstanceUID", "StudyInstanceUIDHash"),
    ("SliceMetadata", "SOPInstanceUID"): ("SliceMetadata", "SOPInstanceUID", "SOPInstanceUIDHash"),
    ("SliceMetadata", "SeriesInstanceUID"): ("Series", "SeriesInstanceUID", "SeriesInstanceUIDHash"),
}


def uid_hash(uid: Any) -> str | None:
    """The first 128 bits of SHA-256 of a UID, as 32 hex digits (what the ingest stores beside it)."""
    return None if uid is None else hashlib.sha256(str(uid).encode("utf-8")).hexdigest()[:32]


class Pseudonyms:
    """Everything keyed by the server's pseudonym key: PatientID pseudonyms, pseudonymous UIDs, date offsets."""

    def __init__(self, key: bytes | None = None) -> None:
        self.configured = key is not None
        self._key = key if key is not None else secrets.token_bytes(32)
        self._uid_key = hmac.new(self._key, b"dicom-db UID pseudonyms", hashlib.sha256).digest()
        self._date_key = hmac.new(self._key, b"dicom-db date offsets", hashlib.sha256).digest()
        # Set by api.db at connect: whether the database stores the UID digests (databases made before them
        # are served too, with the digest computed per row: a scan instead of a seek until dicom-ingest runs).
        self.stored_digests = True
        self.uid = functools.lru_cache(maxsize=1 << 16)(self._uid)
        self._keyed = functools.lru_cache(maxsize=1 << 17)(self._hmac)
        self.date_offset = functools.lru_cache(maxsize=1 << 16)(self._date_offset)
        self.shift_date = functools.lru_cache(maxsize=1 << 17)(self._shift_date)

    def __repr__(self) -> str:
        return f"Pseudonyms(configured={self.configured})"

    @property
    def key(self) -> bytes:
        """The key, for a process that must give the same pseudonyms (api.heavy)."""
        return self._key

    def __call__(self, value: Any) -> str | None:
        """The PatientID pseudonym; also the keyed hash by which de-identified pages order IDs and UIDs (SQLite
        calls it for every row such a page reads: cached)."""
        return None if value is None else self._keyed(str(value))

    def _hmac(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:PSEUDONYM_DIGITS]

    def pads(self, key: bytes | None = None) -> tuple[bytes, bytes]:
        """HMAC's inner and outer padded keys, from which SQL computes the same HMAC with plain SHA-256:
        HMAC(k, m) = H(k ^ opad || H(k ^ ipad || m))."""
        key = self._key if key is None else key
        key = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
        key = key.ljust(_BLOCK, b"\0")
        return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)

    def date_pads(self) -> tuple[bytes, bytes]:
        return self.pads(self._date_key)

    # UIDs

    def _uid(self, value: Any) -> str | None:
        digest = uid_hash(value)
        if digest is None:
            return None
        return UID_ROOT + str(int.from_bytes(self._feistel(bytes.fromhex(digest), encrypt=True), "big"))

    def uid_digest(self, pseudonym: str) -> str | None:
        """The digest behind a pseudonymous UID; None for a string that is not one (it then finds nothing)."""
        match = _UID_PSEUDONYM.fullmatch(pseudonym)
        if match is None:
            return None
        number = int(match.group(1))
        if number >= 1 << 128:
            return None
        return self._feistel(number.to_bytes(16, "big"), encrypt=False).hex()

    def _feistel(self, block: bytes, *, encrypt: bool) -> bytes:
        left, right = block[:8], block[8:]
        rounds = range(_FEISTEL_ROUNDS) if encrypt else reversed(range(_FEISTEL_ROUNDS))
        for i in rounds:
            if encrypt:
                left, right = right, _xor(left, self._round(i, right))
            else:
                left, right = _xor(right, self._round(i, left)), left
        return left + right

    def _round(self, i: int, half: bytes) -> bytes:
        return hmac.new(self._uid_key, bytes([i]) + half, hashlib.sha256).digest()[:8]

    # Dates

    def _date_offset(self, patient_id: str) -> int:
        """Days every date of the patient moves: +-[1, MAX_SHIFT_DAYS], never 0 (api.sql spells it in SQL)."""
        digest = hmac.new(self._date_key, patient_id.encode("utf-8"), hashlib.sha256).digest()
        n = int.from_bytes(digest[:4], "big")
        days = 1 + (n >> 1) % MAX_SHIFT_DAYS
        return -days if n & 1 else days

    def _shift_date(self, value: Any, patient_id: Any) -> str | None:
        """An ISO date moved by the patient's offset; None for anything else (stored text that is no date)."""
        if not isinstance(value, str) or not _ISO_DATE.fullmatch(value) or patient_id is None:
            return None
        try:
            return (dt.date.fromisoformat(value) + dt.timedelta(days=self.date_offset(str(patient_id)))).isoformat()
        except (ValueError, OverflowError):
            return None


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


class Treatment(enum.Enum):
    """What a level shows of a column."""

    STORED = "as stored"
    NULL = "null"
    PSEUDONYM = "pseudonym"  # PatientID: anon- + HMAC
    UID = "pseudonymous UID"
    SHIFTED = "shifted"  # dates: by the patient's offset
    CONSTANT = "set"  # a value PS3.15 sets (Patient Identity Removed, ...)


def treatment(column: Column, options: frozenset[Option]) -> tuple[Treatment, str | None]:
    """A column's treatment under the Basic Profile with `options`, and the value of a CONSTANT."""
    action = column.ps315.action(options)
    if action.startswith("="):
        return Treatment.CONSTANT, method(options) if action == "=METHOD" else action[1:]
    if action == "K":
        return Treatment.STORED, None
    if action == "U":
        return Treatment.UID, None
    if action == "C":
        return (Treatment.SHIFTED if column.kind is Kind.DATE else Treatment.STORED), None
    if column.name == "PatientID":  # Z/D: a dummy value, consistent per patient, so that trees still join
        return Treatment.PSEUDONYM, None
    return Treatment.NULL, None


def method(options: frozenset[Option]) -> str:
    """De-identification Method (LO, at most 64 characters): the CID 7050 codes of the profile and options."""
    codes = sorted(o.code for o in options)
    return "dicom-db at query time: DCM " + " ".join([BASIC_PROFILE_CODE, *codes])


# Treatments a filter, an order or a facet cannot use: the database holds no such value to compare.
_REFUSED = frozenset({Treatment.NULL, Treatment.CONSTANT, Treatment.PSEUDONYM})
UID_OPERATORS = frozenset({"eq", "ne", "in_", "not_in", "is_null"})
_PYTHON_NAMES = {"in": "in_", "notIn": "not_in", "isNull": "is_null", "startsWith": "starts_with"}


@dataclass(frozen=True, slots=True)
class Access:
    """The view of the data one request has."""

    level: AccessLevel = AccessLevel.FULL
    pseudonyms: Pseudonyms | None = field(default=None, repr=False)

    @property
    def deidentified(self) -> bool:
        return not self.level.full

    @property
    def may_read_files(self) -> bool:
        """Whether this access may read file paths and file contents (Slice.file, /files/, thumbnails)."""
        return self.level.may_read_files

    def treatment(self, table: Table, column: Column) -> Treatment:
        if not self.deidentified:
            return Treatment.STORED
        return _treatments(self.level.options, table.name, column.name)[0]

    def forbids(self, column: Column, table: Table | None = None) -> bool:
        """Whether this access may not filter, order or group by `column` (it would reveal what it hides)."""
        if not self.deidentified:
            return False
        table = table or _table_of(column)
        return self.treatment(table, column) in _REFUSED

    def refuses_operators(self, table: Table, column: Column, operators: Iterable[str]) -> bool:
        """Whether a filter on a pseudonymous UID uses an operator that would compare the real UIDs (`operators`:
        GraphQL names)."""
        if self.treatment(table, column) is not Treatment.UID:
            return False
        return any(_PYTHON_NAMES.get(op, op) not in UID_OPERATORS for op in operators)

    def needs_patient(self, table: Table) -> bool:
        """Whether rows of `table` need their patient's ID to be shown (dates shifted, rows without PatientID)."""
        return self.deidentified and _plan(self.level.options, table.name).needs_patient

    def row(self, table: Table, row: Sequence[Any]) -> Sequence[Any]:
        """`row` (columns in `table.select` order, then the patient's ID when `needs_patient`) as this access may
        see it."""
        if not self.deidentified:
            return row
        assert self.pseudonyms is not None, "de-identified access needs the server's pseudonyms"
        plan = _plan(self.level.options, table.name)
        shown = list(row)
        patient = row[plan.patient_index] if plan.patient_index is not None else None
        for index, how, value in plan.steps:
            if how is Treatment.NULL:
                shown[index] = None
            elif how is Treatment.CONSTANT:
                shown[index] = value
            elif how is Treatment.PSEUDONYM:
                shown[index] = self.pseudonyms(row[index])
            elif how is Treatment.UID:
                shown[index] = self.pseudonyms.uid(row[index])
            elif how is Treatment.SHIFTED:
                shown[index] = self.pseudonyms.shift_date(row[index], patient)
        return tuple(shown)


FULL = Access()


def _table_of(column: Column) -> Table:
    for table in TABLES.values():
        if any(c is column for c in table.columns):
            return table
    raise KeyError(column.name)


@functools.cache
def _treatments(options: frozenset[Option], table: str, column: str) -> tuple[Treatment, str | None]:
    return treatment(TABLES[table].by_name[column], options)


@dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple[tuple[int, Treatment, str | None], ...]  # (index in the row, treatment, constant)
    patient_index: int | None  # where the row holds its patient's ID
    needs_patient: bool  # the ID must be appended to the row (the table has no PatientID column)


@functools.cache
def _plan(options: frozenset[Option], table_name: str) -> _Plan:
    table = TABLES[table_name]
    steps = []
    for column in table.columns:
        how, value = treatment(column, options)
        if how is not Treatment.STORED:
            steps.append((table.select.index(column.name), how, value))
    shifts = any(how is Treatment.SHIFTED for _, how, _ in steps)
    if "PatientID" in table.by_name:
        return _Plan(tuple(steps), table.select.index("PatientID"), False)
    return _Plan(tuple(steps), len(table.select) if shifts else None, shifts)


def masked_fields(options: frozenset[Option] | None = None) -> list[tuple[str, str, str]]:
    """(type, field attribute, what the level gets) for every field a level does not show as stored (default:
    the `deidentified` level): the documented list."""
    options = AccessLevel.DEIDENTIFIED.options if options is None else options
    rows = []
    for t in TABLES.values():
        for c in t.columns:
            how, value = treatment(c, options)
            if how is not Treatment.STORED:
                rows.append((t.type_name, c.attr, f"{how.value} {value}" if value else how.value))
    return rows


_OPTION_HEADS = {
    Option.RETAIN_UIDS: "Rtn. UIDs",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "Rtn. Pat. Chars.",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "Rtn. Long. Full Dates",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "Rtn. Long. Modif. Dates",
    Option.CLEAN_DESCRIPTORS: "Clean Desc.",
}


def ps315_table() -> str:
    """The documented table (docs/api.md): per column, its tag, Table E.1-1's actions under the Basic Profile and
    the options that list one of our attributes, and what the `deidentified` level returns."""
    options = AccessLevel.DEIDENTIFIED.options
    heads = ["field", "attribute", "Basic", *_OPTION_HEADS.values(), "`deidentified` gets"]
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for table in TABLES.values():
        for column in table.columns:
            entry = dict(column.ps315.options)
            how, value = treatment(column, options)
            shown = f"`{value}`" if how is Treatment.CONSTANT else how.value
            cells = [
                f"`{table.type_name}.{column.field_name}`",
                f"{column.ps315.tag} {column.name}" if column.ps315.tag else f"{column.name} (not DICOM)",
                column.ps315.basic,
                *(entry.get(option, "") for option in _OPTION_HEADS),
                shown,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
