"""Small SQL building blocks shared by filters, pagination and the query functions: quoting, bound
parameters and the few phrases that differ between SQLite and PostgreSQL.

Identifiers only ever come from `api.columns`; every value goes through `Params.add` as a bound parameter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicom_db.api.columns import Column, Kind, Table
from dicom_db.api.masking import MAX_SHIFT_DAYS, PSEUDONYM_DIGITS, PSEUDONYM_PREFIX

FALSE = "1 = 0"
TRUE = "1 = 1"


def q(identifier: str) -> str:
    """Quote an identifier taken from the column map (schema.sql quotes them so PostgreSQL keeps their case)."""
    return '"' + identifier.replace('"', '""') + '"'


class Params:
    """Collects bound values for one statement fragment; names carry a prefix so fragments can be combined."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, Any] = {}

    def add(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = value
        return ":" + name


@dataclass(frozen=True, slots=True)
class Fragment:
    """SQL text with its bound values; hashable so that equal requests share one loader batch."""

    sql: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)


class Dialect:
    """Phrases in SQLite's spelling; `PostgresDialect` overrides what PostgreSQL spells differently."""

    name = "sqlite"

    def in_values(self, expr: str, param: str, kind: Kind) -> str:
        """`expr` is one of the JSON array bound as `param`: one parameter, however long the list."""
        return f"{expr} IN (SELECT value FROM json_each({param}))"

    def contains(self, expr: str, param: str) -> str:
        return f"instr({expr}, {param}) > 0"

    def starts_with(self, expr: str, param: str) -> str:
        return f"substr({expr}, 1, length({param})) = {param}"

    def ilike(self, expr: str, param: str) -> str:
        """Case-insensitive LIKE with '!' as escape; `param` is already lower-case. SQLite's own LIKE folds
        ASCII only, so the API registers `dicom_lower` (Python's str.lower) on its SQLite connections."""
        return f"dicom_lower({expr}) LIKE {param} ESCAPE '!'"

    def is_iso_date(self, expr: str) -> str:
        return f"{expr} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'"

    def pseudonym(self, expr: str) -> str:
        """`api.masking.Pseudonyms` of `expr`, computed by the database (registered on each connection)."""
        return f"dicom_pseudonym({expr})"

    def shift_date(self, expr: str, patient: str) -> str:
        """`api.masking.Pseudonyms.shift_date`: the ISO date `expr` moved by the offset of patient `patient`,
        NULL for anything else (a registered function on SQLite)."""
        return f"dicom_shift_date({expr}, {patient})"

    def uid_hash(self, expr: str) -> str:
        """`api.masking.uid_hash` (what the ingest stores), for databases made before it stored it."""
        return f"dicom_uid_hash({expr})"

    def int_text(self, expr: str) -> str:
        """The integer in a TEXT column holding a DICOM IS value, NULL when it is not one (as api.columns)."""
        t = f"trim({expr})"
        return (
            f"(CASE WHEN ({t} GLOB '[0-9]*' OR {t} GLOB '[+-][0-9]*') AND substr({t}, 2) NOT GLOB '*[^0-9]*' "
            f"AND length({t}) <= 19 THEN CAST({t} AS INTEGER) END)"
        )


class PostgresDialect(Dialect):
    name = "postgresql"
    _CASTS = {Kind.INT: "BIGINT", Kind.INT_TEXT: "BIGINT", Kind.FLOAT: "DOUBLE PRECISION"}

    def in_values(self, expr: str, param: str, kind: Kind) -> str:
        cast = self._CASTS.get(kind)
        value = f"CAST(value AS {cast})" if cast else "value"
        return f"{expr} IN (SELECT {value} FROM jsonb_array_elements_text(CAST({param} AS jsonb)))"

    def contains(self, expr: str, param: str) -> str:
        return f"strpos({expr}, {param}) > 0"

    def starts_with(self, expr: str, param: str) -> str:
        return f"left({expr}, char_length({param})) = {param}"

    def ilike(self, expr: str, param: str) -> str:
        return f"lower({expr}) LIKE {param} ESCAPE '!'"

    def is_iso_date(self, expr: str) -> str:
        return f"{expr} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$'"

    def pseudonym(self, expr: str) -> str:
        # HMAC-SHA256 from the built-in sha256(); the padded keys are session settings of each connection
        # (api.db), so that the key is in no statement's text or parameters (which the debug log shows).
        inner = f"sha256(decode(current_setting('dicom_api.hmac_ipad'), 'hex') || convert_to({expr}, 'UTF8'))"
        outer = f"sha256(decode(current_setting('dicom_api.hmac_opad'), 'hex') || {inner})"
        return f"('{PSEUDONYM_PREFIX}' || substr(encode({outer}, 'hex'), 1, {PSEUDONYM_DIGITS}))"

    def shift_date(self, expr: str, patient: str) -> str:
        # The offset as api.masking computes it, from HMAC-SHA256(date key, PatientID): n = its first 32 bits,
        # sign from n's lowest bit, 1 + (n >> 1) % MAX_SHIFT_DAYS days. The padded date keys are session
        # settings (api.db), like the pseudonym's.
        inner = f"sha256(decode(current_setting('dicom_api.date_ipad'), 'hex') || convert_to({patient}, 'UTF8'))"
        outer = f"sha256(decode(current_setting('dicom_api.date_opad'), 'hex') || {inner})"
        n = f"CAST(CAST(('x' || substr(encode({outer}, 'hex'), 1, 8)) AS bit(32)) AS bigint)"
        days = f"((CASE WHEN {n} % 2 = 1 THEN -1 ELSE 1 END) * (1 + ({n} / 2) % {MAX_SHIFT_DAYS}))"
        moved = f"(CAST({expr} AS date) + CAST({days} AS integer))"
        # Python's date ends at years 1 and 9999 (masking gives null beyond), PostgreSQL's goes on.
        in_range = f"{moved} BETWEEN DATE '0001-01-01' AND DATE '9999-12-31'"
        shifted = f"(CASE WHEN {in_range} THEN to_char({moved}, 'YYYY-MM-DD') END)"
        # Nested CASEs: the calendar check must come before the CAST, which fails on '2021-02-30'.
        valid = f"(CASE WHEN {valid_date(expr)} THEN {shifted} END)"
        return f"(CASE WHEN {self.is_iso_date(expr)} AND {patient} IS NOT NULL THEN {valid} END)"

    def uid_hash(self, expr: str) -> str:
        return f"substr(encode(sha256(convert_to({expr}, 'UTF8')), 'hex'), 1, 32)"

    def int_text(self, expr: str) -> str:
        return f"(CASE WHEN {expr} ~ '^\\s*[+-]?[0-9]{{1,18}}\\s*$' THEN CAST(trim({expr}) AS BIGINT) END)"


SQLITE = Dialect()
POSTGRES = PostgresDialect()


def valid_date(x: str) -> str:
    """An ISO date text (already matched as DDDD-DD-DD) that is a real calendar date from year 1 on, as Python's
    date.fromisoformat reads it: PostgreSQL's CAST would fail on '2021-02-30' (and end the transaction)."""
    y, m, d = (f"CAST(substr({x}, {a}, {n}) AS INTEGER)" for a, n in ((1, 4), (6, 2), (9, 2)))
    leap = f"(({_divides(4, y)} AND NOT {_divides(100, y)}) OR {_divides(400, y)})"
    days = (
        f"CASE WHEN {m} IN (4, 6, 9, 11) THEN 30 WHEN {m} = 2 THEN (CASE WHEN {leap} THEN 29 ELSE 28 END) ELSE 31 END"
    )
    return f"{y} >= 1 AND {m} BETWEEN 1 AND 12 AND {d} >= 1 AND {d} <= ({days})"


def _divides(n: int, y: str) -> str:
    # Integer division on both databases; no '%' in SQL text (see api.compiler.FORMAT).
    return f"({y} - ({y} / {n}) * {n} = 0)"


def json_list(values: Sequence[Any]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def value_expr(column: Column, alias: str, dialect: Dialect) -> str:
    """The SQL expression a column is filtered, ordered and grouped by."""
    expr = f"{alias}.{q(column.value_column or column.name)}"
    return dialect.int_text(expr) if column.kind is Kind.INT_TEXT else expr


def patient_expr(table: Table, alias: str) -> str:
    """The PatientID of a row of `table` aliased `alias` (a correlated subquery below Study)."""
    if table.name in ("Patient", "Study"):
        return f"{alias}.{q('PatientID')}"
    if table.name == "Series":
        return f'(SELECT _st."PatientID" FROM "Study" _st WHERE _st."StudyInstanceUID" = {alias}."StudyInstanceUID")'
    return (
        '(SELECT _st."PatientID" FROM "Series" _se JOIN "Study" _st ON _st."StudyInstanceUID" = _se."StudyInstanceUID" '
        f'WHERE _se."SeriesInstanceUID" = {alias}."SeriesInstanceUID")'
    )


def shifted_expr(table: Table, column: Column, alias: str, dialect: Dialect) -> str:
    """A date column as a de-identified level sees it: moved by its patient's offset."""
    return dialect.shift_date(value_expr(column, alias, dialect), patient_expr(table, alias))
