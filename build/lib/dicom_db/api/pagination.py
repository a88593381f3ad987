"""Ordering, opaque keyset cursors and page specifications.

Every page is ordered by the requested keys and then by the table's primary key, so the order is total and a
cursor (the ordering values of a row) says exactly where the next page starts: `WHERE (keys) > (cursor)` in
the requested directions, never an OFFSET. Nulls sort last in both directions, on both databases.

A cursor is base64url of JSON `["c1", "<order fingerprint>", [values...]]`: opaque to clients, checked on the
way in (a cursor made for another `orderBy` is refused rather than silently skipping rows).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicom_db.api.columns import Column, Kind, Table
from dicom_db.api.errors import ForbiddenError, UserInputError
from dicom_db.api.masking import FULL, Access, Treatment
from dicom_db.api.sql import FALSE, Dialect, Fragment, Params, shifted_expr, value_expr

CURSOR_VERSION = "c1"
MAX_CURSOR_LENGTH = 8192  # characters; the API's own cursors hold a few ordering values
INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True, slots=True)
class OrderKey:
    column: str  # stored column name (api.columns)
    descending: bool = False
    pseudonym: bool = False  # ordered by a keyed hash of the column (de-identified access to IDs and UIDs)
    shifted: bool = False  # ordered by the date as shifted for de-identified access


@dataclass(frozen=True, slots=True)
class PageSpec:
    """One connection's arguments, compiled: equal specs at one level share one SQL statement."""

    table: str
    where: Fragment
    order: tuple[OrderKey, ...]
    limit: int
    after: tuple[Any, ...] | None = None
    with_patient: bool = False  # rows also hold their patient's ID (api.masking.Access.needs_patient)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.order)


@dataclass(slots=True)
class Page:
    nodes: list[Any]
    keys: list[tuple[Any, ...]]  # each node's ordering values, from which its cursor is made
    has_next: bool
    has_previous: bool
    fingerprint: str

    def cursor(self, index: int) -> str:
        return encode_cursor(self.fingerprint, self.keys[index])


def fingerprint(order: Sequence[OrderKey]) -> str:
    # Keyed and shifted keys are marked, so that a cursor made for one access level is refused by the other.
    return ",".join(
        ("-" if k.descending else "+") + ("~" if k.pseudonym else "") + ("@" if k.shifted else "") + k.column
        for k in order
    )


def order_keys(
    table: Table, order_by: Sequence[Any] | None, *, nested: bool, access: Access = FULL
) -> tuple[OrderKey, ...]:
    """The requested keys (inputs with `.field` and `.direction`), or the table's default, then the primary key.
    For de-identified access a pseudonymised primary key orders by its pseudonym."""
    keys: list[OrderKey] = []
    if order_by:
        for item in order_by:
            column = table.by_enum[item.field.value]
            if access.forbids(column, table):  # api.limits refuses this before execution; kept here as a backstop
                raise ForbiddenError(f"de-identified access cannot order by {column.enum}")
            # A null direction (sent explicitly) means the default, ascending.
            descending = item.direction is not None and item.direction.value == "DESC"
            keys.append(_key(table, column, access, descending))
    elif nested:
        keys.extend(OrderKey(name) for name in table.nested_order)
    seen: set[str] = set()
    unique = []
    for key in keys:
        if key.column not in seen:  # a repeated key adds nothing to the order
            seen.add(key.column)
            unique.append(key)
        if key.column == table.key:  # the key is unique: later keys can never break a tie
            return tuple(unique)
    return (*unique, _key(table, table.key_column, access, False))


def _key(table: Table, column: Column, access: Access, descending: bool) -> OrderKey:
    how = access.treatment(table, column)
    keyed = how in (Treatment.PSEUDONYM, Treatment.UID)
    return OrderKey(column.name, descending, pseudonym=keyed, shifted=how is Treatment.SHIFTED)


def page_size(first: int | None, default: int, maximum: int) -> int:
    if first is None:
        return default
    if not 0 <= first <= maximum:
        raise UserInputError(f"`first` must be between 0 and {maximum}, got {first}")
    return first


def encode_cursor(fp: str, values: Sequence[Any]) -> str:
    raw = json.dumps([CURSOR_VERSION, fp, list(values)], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(table: Table, cursor: str, order: Sequence[OrderKey]) -> tuple[Any, ...]:
    """The ordering values in `cursor`, checked against `order` and the columns' kinds."""
    bad = UserInputError(f"`after` is not a cursor returned by this API for this query: {cursor[:80]!r}")
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, fp, values = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise bad from None
    if version != CURSOR_VERSION or not isinstance(values, list):
        raise bad
    if fp != fingerprint(order):
        raise UserInputError("`after` is a cursor for another `orderBy`: use a cursor from the same ordering")
    if len(values) != len(order):
        raise bad
    for key, value in zip(order, values, strict=True):
        if not _fits(table.by_name[key.column], value) or (value is None and key.column == table.key):
            raise bad
    return tuple(values)


def _fits(column: Column, value: Any) -> bool:
    """A value the column can hold and the database can be sent: a 64-bit integer, a finite number, a string
    without NUL or lone surrogates (a forged cursor may hold anything JSON can)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if column.kind in (Kind.INT, Kind.INT_TEXT, Kind.BOOL):
        return isinstance(value, int) and value in INT64
    if column.kind is Kind.FLOAT:
        return (isinstance(value, int) and value in INT64) or (isinstance(value, float) and math.isfinite(value))
    return isinstance(value, str) and "\x00" not in value and _utf8(value)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_expr(table: Table, key: OrderKey, alias: str, dialect: Dialect) -> str:
    column = table.by_name[key.column]
    if key.shifted:
        return shifted_expr(table, column, alias, dialect)
    expr = value_expr(column, alias, dialect)
    return dialect.pseudonym(expr) if key.pseudonym else expr


def order_sql(table: Table, order: Sequence[OrderKey], alias: str, dialect: Dialect) -> str:
    parts = []
    for key in order:
        expr = key_expr(table, key, alias, dialect)
        parts.append(f"{expr} {'DESC' if key.descending else 'ASC'} NULLS LAST")
    return ", ".join(parts)


def order_exprs(table: Table, order: Sequence[OrderKey], alias: str, dialect: Dialect) -> list[str]:
    return [key_expr(table, key, alias, dialect) for key in order]


def after_branches(
    table: Table, order: Sequence[OrderKey], values: Sequence[Any], alias: str, dialect: Dialect
) -> list[Fragment]:
    """Rows strictly after `values` in `order`, as one or two disjoint conditions (their OR is the whole).

    The first key decides the shape. After a non-null value v the rows are those from v on (a range an index
    can seek, then ties broken by the later keys) and, since nulls sort last, the rows whose first key is
    null: two branches, so that neither hides the range from the planner behind an OR. After a null, only
    the nulls remain, ordered by the later keys.
    """
    params = Params("c")
    first, *later_keys = order
    head, *later_values = values
    expr = key_expr(table, first, alias, dialect)
    rest = _after_rest(table, later_keys, later_values, alias, dialect, params)
    if head is None:
        return [Fragment(f"{expr} IS NULL AND {rest}", tuple(params.values.items()))]
    p = params.add(head)
    strict, wide = ("<", "<=") if first.descending else (">", ">=")
    if first.column == table.key:  # unique and never null: nothing to tie, no null region
        return [Fragment(f"{expr} {strict} {p}", tuple(params.values.items()))]
    seek = f"{expr} {wide} {p} AND ({expr} {strict} {p} OR ({expr} = {p} AND {rest}))"
    values_ = tuple(params.values.items())
    return [Fragment(seek, values_), Fragment(f"{expr} IS NULL", ())]


def _after_rest(
    table: Table, order: Sequence[OrderKey], values: Sequence[Any], alias: str, dialect: Dialect, params: Params
) -> str:
    """Rows after `values` among rows tied on the earlier keys: OR over i of (keys before i equal AND key i
    after)."""
    ors = []
    equal: list[str] = []
    for key, value in zip(order, values, strict=True):
        expr = key_expr(table, key, alias, dialect)
        if value is None:
            after = FALSE  # nulls sort last in both directions: nothing sorts after a null but other nulls
            same = f"{expr} IS NULL"
        else:
            p = params.add(value)
            after = f"{expr} {'<' if key.descending else '>'} {p}"
            if key.column != table.key:  # the primary key is never null
                after += f" OR {expr} IS NULL"
            same = f"{expr} = {p}"
        if after != FALSE:
            ors.append(" AND ".join([*equal, f"({after})"]))
        equal.append(f"({same})")
    return "(" + " OR ".join(f"({o})" for o in ors) + ")" if ors else FALSE
