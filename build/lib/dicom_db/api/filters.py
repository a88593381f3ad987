"""Compile `where` inputs into SQL from a fixed operator registry and the static column map.

Semantics, the same on SQLite and PostgreSQL:
- the entries of one input, and the operators of one filter, are combined with AND;
- `ne` and `notIn` also match rows where the value is null, and `not` is the complement of its input: a row
  matches `{not: X}` exactly when it does not match `X`;
- `and: []` matches every row, `or: []` none;
- `contains` and `startsWith` are case-sensitive; `match` takes DICOM wildcards (`*` any run, `?` one
  character) and is case-insensitive;
- date comparisons see only valid ISO dates; `isNull: true` matches when the typed date is null (no value, or
  stored text that is not a date);
- parent filters (`study: {...}`) keep rows whose parent matches; `some`/`none` keep rows with at least one /
  no child that matches.

For a de-identifying access level (api.masking) dates compare shifted, as the level sees them, and a UID column
compares pseudonyms: each pseudonym is deciphered into the UID's digest, which the database has indexed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strawberry import UNSET

from dicom_db.api.columns import TABLES, Column, Kind, Table
from dicom_db.api.errors import ForbiddenError, UserInputError
from dicom_db.api.masking import FULL, UID_DIGEST_OF, UID_OPERATORS, Access, Treatment
from dicom_db.api.sql import FALSE, TRUE, Dialect, Fragment, Params, json_list, q, shifted_expr, value_expr


def given(value: Any) -> bool:
    """Whether an optional input was sent: omitted inputs are UNSET, explicit nulls None; both mean "no filter"."""
    return value is not None and value is not UNSET


def compile_where(table: Table, where: Any, dialect: Dialect, alias: str = "t0", access: Access = FULL) -> Fragment:
    """The SQL condition for `where` (a Strawberry input or None) on `table` aliased `alias`."""
    params = Params("w")
    sql = _Compiler(dialect, params, access).where(table, where, alias) if given(where) else TRUE
    return Fragment(sql, tuple(params.values.items()))


# Comparison templates: {e} is the column expression, {p} the bound value.
_COMPARE = {
    "eq": "{e} = {p}",
    "ne": "({e} <> {p} OR {e} IS NULL)",
    "gt": "{e} > {p}",
    "gte": "{e} >= {p}",
    "lt": "{e} < {p}",
    "lte": "{e} <= {p}",
}

# The filter input of each kind of column (api/types.py makes the inputs from OPERATORS).
STRING, INT, FLOAT, DATE, BOOLEAN = "StringFilter", "IntFilter", "FloatFilter", "DateFilter", "BooleanFilter"
FILTER_OF_KIND: dict[Kind, str] = {
    Kind.STRING: STRING,
    Kind.STRING_LIST: STRING,  # lists filter on their stored DICOM text, e.g. "ORIGINAL\\PRIMARY\\AXIAL"
    Kind.FLOAT_LIST: STRING,
    Kind.INT: INT,
    Kind.INT_TEXT: INT,
    Kind.FLOAT: FLOAT,
    Kind.DATE: DATE,
    Kind.BOOL: BOOLEAN,
}
MAX_MATCH_LENGTH = 10_000
_UID_COLUMNS = {holder: (uid, digest) for holder, uid, digest in UID_DIGEST_OF.values()}


def like_pattern(wildcards: str) -> str:
    """DICOM wildcard matching (`*`, `?`) as a LIKE pattern with '!' escaping LIKE's own special characters."""
    escaped = wildcards.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_").lower()


class _Compiler:
    def __init__(self, dialect: Dialect, params: Params, access: Access) -> None:
        self.dialect = dialect
        self.params = params
        self.access = access
        self.aliases = 0
        self.valid_dates: set[str] = set()  # expressions that hold an ISO date or NULL, never other text

    def _alias(self) -> str:
        self.aliases += 1
        return f"t{self.aliases}"

    def where(self, table: Table, where: Any, alias: str) -> str:
        parts: list[str] = []
        for column in table.columns:
            value = getattr(where, column.attr, None)
            if given(value):
                if self.access.forbids(column, table):  # api.limits refuses this before execution; a backstop
                    raise ForbiddenError(f"de-identified access cannot filter on {table.type_name}.{column.field_name}")
                how = self.access.treatment(table, column)
                if how is Treatment.UID:
                    parts.append(self.uid_filter(table, column, value, alias))
                elif how is Treatment.SHIFTED:
                    expr = shifted_expr(table, column, alias, self.dialect)
                    self.valid_dates.add(expr)
                    parts.append(self.column_filter(column, value, alias, expr))
                else:
                    parts.append(self.column_filter(column, value, alias))
        if table.parent is not None:
            parent_where = getattr(where, table.parent.attr, None)
            if given(parent_where):
                parts.append(self.parent_filter(table, parent_where, alias))
        if table.children is not None:
            children = getattr(where, table.children.attr, None)
            if given(children):
                parts.extend(self.children_filter(table, children, alias))
        if given(where.and_):
            parts.extend(self.where(table, w, alias) for w in where.and_)
        if given(where.or_):
            ors = [self.where(table, w, alias) for w in where.or_]
            parts.append("(" + " OR ".join(f"({o})" for o in ors) + ")" if ors else FALSE)
        if given(where.not_):
            # COALESCE: a condition that is NULL for a row (unknown) counts as not matching, so NOT keeps it.
            parts.append(f"NOT COALESCE(({self.where(table, where.not_, alias)}), {FALSE})")
        return " AND ".join(f"({p})" for p in parts) if parts else TRUE

    def parent_filter(self, table: Table, parent_where: Any, alias: str) -> str:
        link = table.parent
        assert link is not None
        parent = TABLES[link.table]
        sub = self._alias()
        inner = self.where(parent, parent_where, sub)
        # Uncorrelated IN: the database evaluates the parent set once and probes the foreign-key index.
        return f"{alias}.{q(link.fk)} IN (SELECT {sub}.{q(parent.key)} FROM {q(parent.name)} {sub} WHERE {inner})"

    def children_filter(self, table: Table, children: Any, alias: str) -> list[str]:
        link = table.children
        assert link is not None
        child = TABLES[link.table]
        parts = []
        for attr, negate in (("some", False), ("none", True)):
            child_where = getattr(children, attr, None)
            if not given(child_where):
                continue
            sub = self._alias()
            inner = self.where(child, child_where, sub)
            # NOT IN over a set holding NULL is never true: keep NULL keys out of the set.
            subquery = (
                f"SELECT {sub}.{q(link.fk)} FROM {q(child.name)} {sub} WHERE {sub}.{q(link.fk)} IS NOT NULL "
                f"AND ({inner})"
            )
            parts.append(f"{alias}.{q(table.key)} {'NOT IN' if negate else 'IN'} ({subquery})")
        return parts

    def column_filter(self, column: Column, filt: Any, alias: str, expr: str | None = None) -> str:
        expr = expr or value_expr(column, alias, self.dialect)
        parts = []
        for op in _OPS_BY_INPUT[FILTER_OF_KIND[column.kind]]:
            value = getattr(filt, op.attr, None)
            if given(value):
                parts.append(op.build(self, column, expr, value))
        return " AND ".join(f"({p})" for p in parts) if parts else TRUE

    def uid_filter(self, table: Table, column: Column, filt: Any, alias: str) -> str:
        """A UID column compared by pseudonym: rows whose UID's digest is that of the pseudonym. A pseudonym that
        is not one of ours matches nothing; substring operators would compare the real UIDs, so they are refused."""
        used = {op.attr for op in _OPS_BY_INPUT[STRING] if given(getattr(filt, op.attr, None))}
        if used - UID_OPERATORS:
            raise ForbiddenError(
                f"de-identified access compares {table.type_name}.{column.field_name} (a pseudonymous UID) with "
                "eq, ne, in, notIn and isNull only"
            )
        keys = self.access.pseudonyms
        assert keys is not None
        expr = f"{alias}.{q(column.name)}"
        holder_name, uid, _ = UID_DIGEST_OF[(table.name, column.name)]
        holder = TABLES[holder_name]

        def member(pseudonyms: list[str]) -> str:
            digests = [d for d in map(keys.uid_digest, pseudonyms) if d is not None]
            if not digests:
                return FALSE
            param = self.params.add(json_list(digests))
            if holder is table:  # the row's own UID: its digest column
                return self.dialect.in_values(self._digest_expr(holder, alias), param, Kind.STRING)
            sub = self._alias()
            found = self.dialect.in_values(self._digest_expr(holder, sub), param, Kind.STRING)
            return f"{expr} IN (SELECT {sub}.{q(uid)} FROM {q(holder.name)} {sub} WHERE {found})"

        parts = []
        if given(filt.eq):
            parts.append(member([filt.eq]))
        if given(filt.ne):
            parts.append(f"NOT COALESCE(({member([filt.ne])}), {FALSE}) OR {expr} IS NULL")
        if given(filt.in_):
            parts.append(member(filt.in_))
        if given(filt.not_in):
            parts.append(f"NOT COALESCE(({member(filt.not_in)}), {FALSE}) OR {expr} IS NULL")
        if given(filt.is_null):
            parts.append(f"{expr} IS NULL" if filt.is_null else f"{expr} IS NOT NULL")
        return " AND ".join(f"({p})" for p in parts) if parts else TRUE

    def _digest_expr(self, table: Table, alias: str) -> str:
        uid, digest = _UID_COLUMNS[table.name]
        assert self.access.pseudonyms is not None
        if self.access.pseudonyms.stored_digests:
            return f"{alias}.{q(digest)}"
        return self.dialect.uid_hash(f"{alias}.{q(uid)}")  # a database older than the digests: a scan

    # Operators (the builders of OPERATORS, below): each returns a condition with its value bound.

    def op_compare(self, op: str, column: Column, expr: str, value: Any) -> str:
        if column.kind is Kind.DATE:
            value = _iso(value)
        sql = _COMPARE[op].format(e=expr, p=self.params.add(value))
        if column.kind is Kind.DATE and op != "eq" and expr not in self.valid_dates:
            sql = f"({sql}) AND {self.dialect.is_iso_date(expr)}"
        return sql

    def op_in(self, column: Column, expr: str, values: list[Any], negate: bool) -> str:
        if not values:
            return TRUE if negate else FALSE
        kind = Kind.STRING if column.kind in (Kind.STRING_LIST, Kind.FLOAT_LIST) else column.kind
        condition = self.dialect.in_values(expr, self.params.add(json_list(values)), kind)
        return f"NOT ({condition}) OR {expr} IS NULL" if negate else condition

    def op_is_null(self, column: Column, expr: str, value: bool) -> str:
        if column.kind is Kind.DATE:
            valid = self.dialect.is_iso_date(expr)
            return f"{expr} IS NULL OR NOT ({valid})" if value else f"{expr} IS NOT NULL AND {valid}"
        return f"{expr} IS NULL" if value else f"{expr} IS NOT NULL"

    def op_match(self, column: Column, expr: str, value: str) -> str:
        if len(value) > MAX_MATCH_LENGTH:  # SQLite refuses LIKE patterns over 50,000 bytes; no DICOM value is near
            raise UserInputError(f"`match` takes at most {MAX_MATCH_LENGTH} characters, got {len(value)}")
        return self.dialect.ilike(expr, self.params.add(like_pattern(value)))


def _iso(value: dt.date) -> str:
    if not isinstance(value, dt.date):  # the Date scalar already parsed it; guard against other callers
        raise UserInputError(f"expected an ISO date, got {value!r}")
    return value.isoformat()


def _bool_eq(c: _Compiler, expr: str, value: bool) -> str:
    # PostgreSQL stores the flag as INTEGER: compare with a number on both databases.
    return f"{expr} = {c.params.add(1 if value else 0)}"


@dataclass(frozen=True, slots=True)
class Operator:
    """One filter operator: the inputs that offer it, what it takes, and the SQL it builds (values bound)."""

    attr: str  # the Python attribute on the input
    name: str  # the GraphQL name
    inputs: tuple[str, ...]  # the filter inputs that offer it (FILTER_OF_KIND's values)
    operand: str  # "value" (of the input's type), "list" (of them) or "flag" (a Boolean)
    build: Callable[[_Compiler, Column, str, Any], str]


_ALL = (STRING, INT, FLOAT, DATE, BOOLEAN)
_ORDERED = (INT, FLOAT, DATE)

# The operator registry: one entry per operator, in the order the inputs list them. Adding one is an entry here
# (and its tests): the inputs of api/types.py and the compiler above follow.
OPERATORS: tuple[Operator, ...] = (
    Operator("eq", "eq", _ALL, "value", lambda c, col, e, v: _bool_eq(c, e, v) if col.kind is Kind.BOOL
             else c.op_compare("eq", col, e, v)),
    Operator("ne", "ne", (STRING, INT, FLOAT), "value", lambda c, col, e, v: c.op_compare("ne", col, e, v)),
    Operator("gt", "gt", _ORDERED, "value", lambda c, col, e, v: c.op_compare("gt", col, e, v)),
    Operator("gte", "gte", _ORDERED, "value", lambda c, col, e, v: c.op_compare("gte", col, e, v)),
    Operator("lt", "lt", _ORDERED, "value", lambda c, col, e, v: c.op_compare("lt", col, e, v)),
    Operator("lte", "lte", _ORDERED, "value", lambda c, col, e, v: c.op_compare("lte", col, e, v)),
    Operator("in_", "in", (STRING, INT, FLOAT), "list", lambda c, col, e, v: c.op_in(col, e, v, negate=False)),
    Operator("not_in", "notIn", (STRING,), "list", lambda c, col, e, v: c.op_in(col, e, v, negate=True)),
    Operator("is_null", "isNull", _ALL, "flag", lambda c, col, e, v: c.op_is_null(col, e, v)),
    Operator("contains", "contains", (STRING,), "value", lambda c, col, e, v: c.dialect.contains(e, c.params.add(v))),
    Operator("starts_with", "startsWith", (STRING,), "value",
             lambda c, col, e, v: c.dialect.starts_with(e, c.params.add(v))),
    Operator("match", "match", (STRING,), "value", lambda c, col, e, v: c.op_match(col, e, v)),
)  # fmt: skip
_OPS_BY_INPUT: dict[str, tuple[Operator, ...]] = {
    name: tuple(op for op in OPERATORS if name in op.inputs) for name in _ALL
}
