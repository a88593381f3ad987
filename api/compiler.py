"""Compile a GraphQL operation into SQL that builds its response: one statement per root field, whose single value
is the field's JSON (SQLite's json_object/json_group_array, PostgreSQL's json_build_object/json_agg).

Everything is generated from `api.columns.TABLES` and the GraphQL schema: a column field of a row type, a
connection to the child table, the relation to the parent table, lookups and root connections are recognised
by their types, so a new column compiles without a change here. Filters, ordering, cursors and page sizes go
through the functions the resolvers use (`compile_where`, `order_keys`, `decode_cursor`, `page_size`): the same
SQL conditions, the same errors.

What the SQL cannot type exactly as the resolvers do (a float beyond what SQLite's printf renders exactly, an
integer beyond GraphQL's 32 bits, a date text Python would read and SQL would not, a missing parent row) comes
out as `MARKER`, and the operation then runs on the resolvers. A few values are typed in Python after the JSON
is read (`Fix`): lists of numbers from backslash-joined text (with `api.columns.CONVERTERS` itself), cursors
(`api.pagination.encode_cursor`), facet values as text, PostgreSQL's floats in `raw` and cursors, which it
sends as text so that no digit is lost, and what a de-identifying access level shows (`api.masking`:
pseudonyms, shifted dates on PostgreSQL). Anything else the compiler does not know raises `NotCompiled`, and
the resolvers run it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLIncludeDirective,
    GraphQLList,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
    get_nullable_type,
)
from graphql.execution.values import get_argument_values, get_directive_values
from strawberry import UNSET

from dicom_db.api.columns import CONVERTERS, TABLES, Column, Kind, Table, camel_case
from dicom_db.api.db import DATE_PARTS, frames_expr
from dicom_db.api.filters import compile_where
from dicom_db.api.masking import FULL, UID_HASHES, Access, Treatment, treatment
from dicom_db.api.pagination import (
    OrderKey,
    after_branches,
    decode_cursor,
    encode_cursor,
    fingerprint,
    key_expr,
    order_exprs,
    order_keys,
)
from dicom_db.api.pagination import order_sql as pagination_order_sql
from dicom_db.api.pagination import page_size as checked_page_size
from dicom_db.api.settings import Settings
from dicom_db.api.sql import (
    POSTGRES,
    TRUE,
    Dialect,
    Fragment,
    patient_expr,
    q,
    shifted_expr,
    valid_date,
    value_expr,
)
from dicom_db.api.types import file_url

# A value the SQL could not type as the resolvers would: the operation runs on the resolvers instead. A stored
# value that happens to hold this text only costs that detour.
MARKER = "dicom-db:not-compiled:7c1e5a"
MAX_KEYS = 50  # keys of one JSON object: PostgreSQL's functions take at most 100 arguments
INT32 = (-(2**31), 2**31 - 1)  # GraphQL's Int
# Floats SQLite's printf('%!.17g') renders so that they read back exactly (checked on random doubles; beyond
# these magnitudes its long-double arithmetic may miss the last digit).
FLOAT_RANGE = ("1e-30", "1e30")
# printf's format, as a bound parameter: the `databases` package formats statements with Python's `%` when it
# binds parameters, so no '%' may be in the SQL text.
FORMAT, FORMAT_VALUE = ":jfmt", "%!.17g"

# Fields of row types that are not columns: the object's ID (`Type:key`), and lists of values of child rows.
ID_COLUMNS = {"SliceMetadata": "SOPInstanceUID"}  # otherwise the table's key
VALUE_LISTS = {("Study", "modalities"): ("Series", "Modality")}

Fix = Callable[[Any], Any]
# Why an operation runs on the resolvers when its arguments fail (the resolvers say how, at the field's path);
# reasons never hold client text, so that counting them stays bounded.
REFUSED_ARGUMENTS = "arguments the resolvers refuse"


class NotCompiled(Exception):
    """This operation, or this execution of it, runs on the resolvers; the message says why."""


@dataclass(frozen=True, slots=True)
class RootField:
    key: str  # the response key
    sql: str | None  # one statement whose single value is the field's JSON text; None: `constant`
    params: dict[str, Any] = field(default_factory=dict)
    fix: Fix | None = None
    constant: Any = None


@dataclass(frozen=True, slots=True)
class Plan:
    fields: tuple[RootField, ...]
    shapes: frozenset[str]  # what the operation uses, for tests and logs ("nested connection", "groupBy", ...)


# Values as JSON, per dialect.


class Json:
    """SQLite's spelling; `PostgresJson` overrides."""

    marker = f"'{MARKER}'"

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.nested_json = SUBQUERIES_KEEP_JSON

    def obj(self, pairs: Sequence[tuple[str, str]]) -> str:
        if len(pairs) > MAX_KEYS:
            raise NotCompiled(f"an object of {len(pairs)} fields")
        return "json_object(" + ", ".join(f"{_literal(k)}, {v}" for k, v in pairs) + ")"

    def sub(self, select: str) -> str:
        """A scalar subquery yielding JSON, as a JSON value. SQLite versions that forget that a value is JSON
        across a subquery get it parsed again with json(); that costs a level of the parser's stack, whose depth
        bounds how deeply a statement can nest."""
        return f"({select})" if self.nested_json else f"json(({select}))"

    def agg(self, expr: str, order: str, where: str | None = None, json_items: bool = True) -> str:
        item = f"json({expr})" if json_items else expr
        filt = f" FILTER (WHERE {where})" if where else ""
        return f"json_group_array({item}){filt}"

    def array(self, exprs: Sequence[str]) -> str:
        return "json_array(" + ", ".join(exprs) + ")"

    def boolean(self, condition: str) -> str:
        return f"CASE WHEN {condition} THEN json('true') ELSE json('false') END"

    def const_bool(self, value: bool) -> str:
        return "json('true')" if value else "json('false')"

    def text(self, value: str) -> str:
        return _literal(value)

    def string(self, x: str) -> str:
        """A text expression as a JSON string."""
        return x

    def least(self, a: str, b: str) -> str:
        return f"min({a}, {b})"

    def sort_text(self, expr: str) -> str:
        return expr  # BINARY collation: code point order, as Python's sorted()

    # Leaves: (SQL giving the JSON value, a fix applied in Python or None).

    def _exact(self, x: str) -> str:
        low, high = FLOAT_RANGE
        return f"abs({x}) < {high} AND (abs({x}) > {low} OR {x} = 0)"

    def typed(self, column: Column, x: str) -> tuple[str, Fix | None]:
        """A column as its GraphQL field shows it (`x`: the stored value, or its numeric twin)."""
        kind, m = column.kind, self.marker
        if kind is Kind.STRING:
            return self.string(x), None
        if kind is Kind.INT:
            lo, hi = INT32
            fits = f"typeof({x}) = 'integer' AND {x} BETWEEN {lo} AND {hi}"
            return f"CASE WHEN {x} IS NULL THEN NULL WHEN {fits} THEN {x} ELSE {m} END", None
        if kind is Kind.FLOAT:
            # One level of CASE for each leaf: a statement's depth is its deepest leaf's (see Json.sub).
            number = f"typeof({x}) IN ('real', 'integer') AND {self._exact(x)}"
            return f"CASE WHEN {x} IS NULL THEN NULL WHEN {number} THEN json(printf({FORMAT}, {x})) ELSE {m} END", None
        if kind is Kind.BOOL:
            flag = self.boolean(f"{x} <> 0")
            return f"CASE WHEN {x} IS NULL THEN NULL WHEN typeof({x}) = 'integer' THEN {flag} ELSE {m} END", None
        if kind is Kind.DATE:
            return self.date(x), None
        if kind is Kind.INT_TEXT:
            return self.int_text(x), None
        if kind is Kind.STRING_LIST:
            return self.string_list(x), None
        if kind is Kind.FLOAT_LIST:
            return x, _nullable(CONVERTERS[Kind.FLOAT_LIST])
        raise NotCompiled(f"a column of kind {kind.value}")

    def raw(self, column: Column | None, x: str) -> tuple[str, Fix | None]:
        """A stored value as the driver returns it (`raw`, cursors, facets): floats exactly, the rest as is."""
        real = f"typeof({x}) = 'real'"
        exact = f"json(printf({FORMAT}, {x}))"
        return f"CASE WHEN {real} AND {self._exact(x)} THEN {exact} WHEN {real} THEN {self.marker} ELSE {x} END", None

    def date(self, x: str) -> str:
        """`api.columns`' date: an ISO date Python's date.fromisoformat reads, else null. Ten characters that are
        not plain ISO digits but that Python might still read (a week date, other scripts' digits) go back."""
        iso = f"{x} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'"
        maybe = f"length({x}) = 10 AND ({x} GLOB '*[^ -~]*' OR {x} GLOB '*[Ww]*')"
        valid = _valid_date_flat(x)
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN typeof({x}) <> 'text' THEN NULL WHEN {iso} AND {valid} THEN {x} "
            f"WHEN {maybe} THEN {self.marker} END"
        )

    def int_text(self, x: str) -> str:
        lo, hi = INT32
        t = f"CAST({x} AS INTEGER)"
        strict = (
            f"({x} GLOB '[0-9]*' OR {x} GLOB '[+-][0-9]*') AND substr({x}, 2) NOT GLOB '*[^0-9]*' AND length({x}) <= 19"
        )
        in_range = f"(CASE WHEN {t} BETWEEN {lo} AND {hi} THEN {t} ELSE {self.marker} END)"
        int_range = f"(CASE WHEN {x} BETWEEN {lo} AND {hi} THEN {x} ELSE {self.marker} END)"
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN typeof({x}) = 'integer' THEN {int_range} "
            f"WHEN typeof({x}) <> 'text' THEN {self.marker} WHEN {strict} THEN {in_range} "
            f"WHEN {x} NOT GLOB '*[^ -~]*' AND {x} NOT GLOB '*[0-9]*' THEN NULL ELSE {self.marker} END"
        )

    def string_list(self, x: str) -> str:
        # In JSON string text a backslash pair is always one escaped backslash: the separators.
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN typeof({x}) <> 'text' THEN {self.marker} "
            f"ELSE json('[' || replace(json_quote({x}), '\\\\', '\",\"') || ']') END"
        )

    def null_or(self, x: str, value: str) -> str:
        """The object `value`, or the marker when there is none (a required relation without its row)."""
        return f"COALESCE({value}, {self.marker})"

    def int32(self, x: str) -> str:
        """A computed integer that is never null, or the marker beyond GraphQL's Int."""
        lo, hi = INT32
        return f"CASE WHEN {x} BETWEEN {lo} AND {hi} THEN {x} ELSE {self.marker} END"


class PostgresJson(Json):
    marker = f"to_json(CAST('{MARKER}' AS text))"

    def obj(self, pairs: Sequence[tuple[str, str]]) -> str:
        if len(pairs) > MAX_KEYS:
            raise NotCompiled(f"an object of {len(pairs)} fields")
        return "json_build_object(" + ", ".join(f"CAST({_literal(k)} AS text), {v}" for k, v in pairs) + ")"

    def sub(self, select: str) -> str:
        return f"({select})"

    def agg(self, expr: str, order: str, where: str | None = None, json_items: bool = True) -> str:
        filt = f" FILTER (WHERE {where})" if where else ""
        return f"COALESCE(json_agg({expr} ORDER BY {order}){filt}, CAST('[]' AS json))"

    def array(self, exprs: Sequence[str]) -> str:
        return "json_build_array(" + ", ".join(exprs) + ")"

    def boolean(self, condition: str) -> str:
        return f"to_json({condition})"

    def const_bool(self, value: bool) -> str:
        return "to_json(true)" if value else "to_json(false)"

    def text(self, value: str) -> str:
        return f"CAST({_literal(value)} AS text)"

    def string(self, x: str) -> str:
        return f"to_json({x})"

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})"

    def sort_text(self, expr: str) -> str:
        return f'{expr} COLLATE "C"'

    def typed(self, column: Column, x: str) -> tuple[str, Fix | None]:
        kind, m = column.kind, self.marker
        if kind is Kind.STRING:
            return self.string(x), None
        if kind is Kind.INT:
            lo, hi = INT32
            return (
                f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} BETWEEN {lo} AND {hi} THEN to_json({x}) ELSE {m} END",
                None,
            )
        if kind is Kind.FLOAT:
            # PostgreSQL writes an integral value as an integer (120, -0), which reads back as one: given a
            # fraction, it reads as the float it is (its text is the shortest that does). Not finite: the
            # resolvers fail the field (GraphQL's Float holds no NaN), so the marker sends it to them.
            integral = f"{x} = trunc({x}) AND abs({x}) < 1e15"
            return (
                f"CASE WHEN {x} IS NULL THEN NULL WHEN {integral} THEN CAST(CAST({x} AS text) || '.0' AS json) "
                f"WHEN abs({x}) < CAST('Infinity' AS DOUBLE PRECISION) THEN to_json({x}) ELSE {m} END",
                None,
            )
        if kind is Kind.BOOL:
            return f"CASE WHEN {x} IS NULL THEN NULL ELSE to_json({x} <> 0) END", None
        if kind is Kind.DATE:
            return self.date(x), None
        if kind is Kind.INT_TEXT:
            return self.int_text(x), None
        if kind is Kind.STRING_LIST:
            return self.string_list(x), None
        if kind is Kind.FLOAT_LIST:
            return f"to_json({x})", _nullable(CONVERTERS[Kind.FLOAT_LIST])
        raise NotCompiled(f"a column of kind {kind.value}")

    def int32(self, x: str) -> str:
        lo, hi = INT32
        return f"CASE WHEN {x} BETWEEN {lo} AND {hi} THEN to_json({x}) ELSE {self.marker} END"

    def raw(self, column: Column | None, x: str) -> tuple[str, Fix | None]:
        if column is not None and column.kind is Kind.FLOAT and not column.value_column:  # DOUBLE PRECISION
            return f"to_json(CAST({x} AS text))", _nullable(float)
        return f"to_json({x})", None

    def raw_float(self, x: str) -> tuple[str, Fix | None]:
        return f"to_json(CAST({x} AS text))", _nullable(float)

    def date(self, x: str) -> str:
        iso = f"{x} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$'"
        maybe = f"length({x}) = 10 AND {x} ~ '[^ -~]|[Ww]'"
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {iso} THEN (CASE WHEN {valid_date(x)} THEN to_json({x}) END) "
            f"WHEN {maybe} THEN {self.marker} END"
        )

    def int_text(self, x: str) -> str:
        lo, hi = INT32
        t = f"CAST({x} AS BIGINT)"
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} ~ '^[+-]?[0-9]{{1,18}}$' THEN "
            f"(CASE WHEN {t} BETWEEN {lo} AND {hi} THEN to_json({t}) ELSE {self.marker} END) "
            f"WHEN {x} ~ '^[ -~]*$' AND {x} !~ '[0-9]' THEN NULL ELSE {self.marker} END"
        )

    def string_list(self, x: str) -> str:
        # string_to_array('') is an empty array; Python's ''.split('\\') is [''].
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = '' THEN to_json(ARRAY[CAST('' AS text)]) "
            f"ELSE to_json(string_to_array({x}, chr(92))) END"
        )


def _subqueries_keep_json() -> bool:
    """Whether this SQLite (the library aiosqlite uses too) keeps a scalar subquery's JSON as JSON."""
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        found = connection.execute("SELECT json_object('a', (SELECT json_object('b', 1)))").fetchone()[0]
    return bool(found == '{"a":{"b":1}}')


SUBQUERIES_KEEP_JSON = _subqueries_keep_json()


def _valid_date_flat(x: str) -> str:
    """`api.sql.valid_date` for SQLite, with as few parentheses as it takes (a statement's depth is bounded by SQLite's
    parser stack): text compared as text (the digits are zero-padded), converted by arithmetic only. SQLite's own
    date() is no check: it gives back '2021-02-30' as it was."""
    y, m, d = f"substr({x}, 1, 4)", f"substr({x}, 6, 2)", f"substr({x}, 9, 2)"
    leap = f"({y} - {y} / 4 * 4 = 0 AND {y} - {y} / 100 * 100 <> 0 OR {y} - {y} / 400 * 400 = 0)"
    days = f"substr('312831303130313130313031', 2 * {m} - 1, 2) + ({m} = '02' AND {leap})"
    return f"{y} <> '0000' AND {m} BETWEEN '01' AND '12' AND {d} >= '01' AND {d} + 0 <= {days}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _nullable(convert: Callable[[Any], Any]) -> Fix:
    def fix(value: Any) -> Any:
        return None if value is None else convert(value)

    return fix


def _iso(value: Any) -> str | None:
    """A date as GraphQL's Date shows it."""
    return None if value is None else value.isoformat()


def _value_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _bool_text(value: Any) -> str | None:
    return None if value is None else ("true" if value else "false")


def json_for(dialect: Dialect) -> Json:
    return PostgresJson(dialect) if dialect is POSTGRES else Json(dialect)


# Fixes: applied to the JSON read back, only along the branches that need one.


def _object_fix(items: list[tuple[str, Fix]]) -> Fix | None:
    if not items:
        return None

    def fix(value: Any) -> Any:
        if value is not None:
            for key, item in items:
                value[key] = item(value[key])
        return value

    return fix


def _list_fix(item: Fix | None) -> Fix | None:
    if item is None:
        return None

    def fix(values: Any) -> Any:
        return None if values is None else [item(v) for v in values]

    return fix


# Arguments: graphql-core's coerced values, read through the attribute names the resolvers' inputs have.


class _Input:
    """A coerced input object (a dict keyed by GraphQL names) seen as the Strawberry input `compile_where`
    reads: `patient_id`, `in_`, `and_`, ... ; missing entries are UNSET."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, attr: str) -> Any:
        name = camel_case(attr.rstrip("_"))
        if name not in self._values:
            return UNSET
        return _wrap(self._values[name])


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return _Input(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class _Enum:
    value: str


@dataclass(frozen=True, slots=True)
class _OrderBy:
    field: _Enum
    direction: _Enum | None


def _enum_name(value: Any) -> str:
    value = getattr(value, "value", value)
    return value if isinstance(value, str) else str(value)


# The compiler.

_ROW_TYPES = {t.type_name: t for t in TABLES.values()}
_CONNECTIONS = {f"{t.type_name}Connection": t for t in TABLES.values()}


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


class Compiler:
    """Compiles one operation with its coerced variables; raises NotCompiled for anything it does not know."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        variables: dict[str, Any],
        settings: Settings,
        dialect: Dialect,
        access: Access = FULL,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.settings = settings
        self.dialect = dialect
        self.access = access
        self.json = json_for(dialect)
        self.shapes: set[str] = set()
        self.aliases = itertools.count()
        self.params: dict[str, Any] = {}

    # Selections

    def collect(
        self, parent: GraphQLObjectType, selection_sets: Sequence[SelectionSetNode]
    ) -> dict[str, list[FieldNode]]:
        """Fields by response key, in response order, fragments expanded and equal keys merged (as graphql-core's
        collect_fields; directives are not compiled)."""
        fields: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()  # a fragment spread again adds nothing (and a document could spread it 2^n times)

        def visit(selection_set: SelectionSetNode) -> None:
            for node in selection_set.selections:
                if node.directives and not self.included(node):
                    continue
                if isinstance(node, FieldNode):
                    fields.setdefault((node.alias or node.name).value, []).append(node)
                    continue
                if isinstance(node, InlineFragmentNode):
                    condition, inner = node.type_condition, node.selection_set
                    self.shapes.add("inline fragment")
                elif isinstance(node, FragmentSpreadNode):
                    if node.name.value in visited:
                        continue
                    visited.add(node.name.value)
                    definition = self.fragments[node.name.value]
                    condition, inner = definition.type_condition, definition.selection_set
                    if definition.directives:
                        raise NotCompiled("a directive on a fragment definition")
                    self.shapes.add("fragment")
                else:
                    raise NotCompiled(f"a selection of kind {type(node).__name__}")
                if condition is not None and condition.name.value != parent.name:
                    raise NotCompiled(f"a fragment on {condition.name.value} within {parent.name}")
                visit(inner)

        for selection_set in selection_sets:
            visit(selection_set)
        return fields

    def included(self, node: Any) -> bool:
        """@skip and @include, as graphql-core decides them (a plan depends on the variables they read)."""
        known = {GraphQLSkipDirective.name, GraphQLIncludeDirective.name}
        if any(d.name.value not in known for d in node.directives):
            raise NotCompiled("a directive other than @skip and @include")
        self.shapes.add("@skip/@include")
        skip = get_directive_values(GraphQLSkipDirective, node, self.variables)
        if skip and skip.get("if") is True:
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, self.variables)
        return not (include and include.get("if") is False)

    def sub_fields(self, parent: GraphQLObjectType, nodes: list[FieldNode]) -> dict[str, list[FieldNode]]:
        return self.collect(parent, [n.selection_set for n in nodes if n.selection_set is not None])

    def arguments(self, definition: GraphQLField, node: FieldNode) -> dict[str, Any]:
        try:
            return get_argument_values(definition, node, self.variables)
        except GraphQLError:
            raise NotCompiled(REFUSED_ARGUMENTS) from None

    def field_def(self, parent: GraphQLObjectType, name: str) -> GraphQLField:
        definition = parent.fields.get(name)
        if definition is None:
            raise NotCompiled(f"{parent.name}.{name}")
        return definition

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name

    def fragment(self, fragment: Fragment, prefix: str) -> str:
        """`fragment`'s SQL with its parameters renamed apart (`prefix`), added to the statement's."""
        sql = fragment.sql
        for name, value in sorted(fragment.params, key=lambda p: -len(p[0])):
            new = f"{prefix}_{name}"
            sql = re.sub(rf":{re.escape(name)}\b", ":" + new, sql)
            self.params[new] = value
        return sql

    # The operation

    def operation(self, operation: OperationDefinitionNode) -> Plan:
        if operation.operation.value != "query":
            raise NotCompiled(f"a {operation.operation.value}")
        root = self.schema.query_type
        assert root is not None
        fields = []
        for key, nodes in self.collect(root, [operation.selection_set]).items():
            self.params = {}
            self.aliases = itertools.count()
            root_field = self.root_field(root, key, nodes)
            if root_field.sql is not None and FORMAT in root_field.sql:
                root_field.params[FORMAT[1:]] = FORMAT_VALUE
            fields.append(root_field)
        return Plan(tuple(fields), frozenset(self.shapes))

    def root_field(self, root: GraphQLObjectType, key: str, nodes: list[FieldNode]) -> RootField:
        name = nodes[0].name.value
        if name == "__typename":
            self.shapes.add("__typename")
            return RootField(key, None, constant=root.name)
        definition = self.field_def(root, name)
        named = get_named_type(definition.type)
        args = self.arguments(definition, nodes[0])
        if named.name in _CONNECTIONS:
            self.shapes.add("connection")
            table = _CONNECTIONS[named.name]
            select, fix = self.connection(table, named, nodes, args, parent=None)
            return RootField(key, select, dict(self.params), fix)
        if named.name in _ROW_TYPES and len(args) == 1:
            table = _ROW_TYPES[named.name]
            [(arg_name, value)] = args.items()
            column = next((c for c in table.columns if c.field_name == arg_name), None)
            if column is None or not isinstance(value, str):
                raise NotCompiled(f"Query.{name}({arg_name})")
            self.shapes.add("lookup")
            alias = self.alias()
            found = self.lookup(table, column, alias, value)
            if found is None:
                return RootField(key, None, constant=None)
            obj, fix = self.row(table, named, self.sub_fields(named, nodes), alias)
            select = f"SELECT {obj} FROM {q(table.name)} {alias} WHERE {found}"
            return RootField(key, f"SELECT ({select})", dict(self.params), fix)
        raise NotCompiled(f"Query.{name}")

    def lookup(self, table: Table, column: Column, alias: str, value: str) -> str | None:
        """The condition finding a lookup's row as the resolvers do (`Query.patient`, `_by_uid` in api.schema and
        `Database.rows_by_keys`): by pseudonym or pseudonymous UID when the access shows those; None when `value`
        cannot be one (the resolvers answer null)."""
        x = f"{alias}.{q(column.name)}"
        how = self.access.treatment(table, column)
        if how is Treatment.PSEUDONYM:
            return f"{self.dialect.pseudonym(x)} = {self.param(value)}"
        if how is Treatment.UID:
            pseudonyms = self.access.pseudonyms
            assert pseudonyms is not None
            if UID_HASHES.get(table.name, ("",))[0] != column.name:
                raise NotCompiled(f"a lookup by {column.name}")
            digest = pseudonyms.uid_digest(value)
            if digest is None:
                return None
            self.shapes.add("pseudonymous UID lookup")
            # The stored digest, indexed; a database made before it stored digests computes it per row.
            held = f"{alias}.{q(UID_HASHES[table.name][1])}" if pseudonyms.stored_digests else self.dialect.uid_hash(x)
            return f"{held} = {self.param(digest)}"
        return f"{x} = {self.param(value)}"

    def alias(self) -> str:
        return f"c{next(self.aliases)}"

    # Rows

    def row(self, table: Table, type_: Any, fields: dict[str, list[FieldNode]], alias: str) -> tuple[str, Fix | None]:
        """The JSON object of a row of `table` aliased `alias`, and its fix."""
        pairs: list[tuple[str, str]] = []
        fixes: list[tuple[str, Fix]] = []
        by_field = {c.field_name: c for c in table.columns}
        children = TABLES[table.children.table] if table.children else None
        parent = TABLES[table.parent.table] if table.parent else None
        for key, nodes in fields.items():
            name = nodes[0].name.value
            sql: str
            fix: Fix | None = None
            if name == "__typename":
                self.shapes.add("__typename")
                sql = self.json.text(type_.name)
            elif name in by_field:
                sql, fix = self.field_value(table, by_field[name], alias)
            elif name == "id":
                sql, fix = self.id_value(table, type_.name, alias)
            elif name == "raw":
                self.shapes.add("raw")
                raw_pairs, raw_fixes = [], []
                for column in table.columns:
                    if self.access.treatment(table, column) is Treatment.STORED:
                        value, column_fix = self.json.raw(column, f"{alias}.{q(column.name)}")
                    else:
                        value, column_fix = self.shown(table, column, alias)
                    raw_pairs.append((column.name, value))
                    if column_fix is not None:
                        raw_fixes.append((column.name, column_fix))
                sql, fix = self.json.obj(raw_pairs), _object_fix(raw_fixes)
            elif parent is not None and table.parent is not None and name == table.parent.attr:
                self.shapes.add("parent")
                parent_type = get_named_type(self.field_def(type_, name).type)
                sub = self.alias()
                obj, fix = self.row(parent, parent_type, self.sub_fields(parent_type, nodes), sub)
                where = f"{sub}.{q(parent.key)} = {alias}.{q(table.parent.fk)}"
                sql = self.json.null_or(alias, self.json.sub(f"SELECT {obj} FROM {q(parent.name)} {sub} WHERE {where}"))
            elif children is not None and table.children is not None and name == camel_case(table.children.attr):
                self.shapes.add("nested connection")
                definition = self.field_def(type_, name)
                connection_type = get_named_type(definition.type)
                args = self.arguments(definition, nodes[0])
                link = (table.children.fk, f"{alias}.{q(table.key)}")
                select, fix = self.connection(children, connection_type, nodes, args, parent=link)
                sql = self.json.sub(select)
            elif (
                children is not None
                and table.children is not None
                and name == _lower_first(children.type_name) + "Count"
            ):
                self.shapes.add("count")
                sub = self.alias()
                where = f"{sub}.{q(table.children.fk)} = {alias}.{q(table.key)}"
                sql = f"(SELECT COUNT(*) FROM {q(children.name)} {sub} WHERE {where})"
            elif (table.name, name) == ("Series", "frameCount") and children is not None:
                self.shapes.add("frame count")
                sub = self.alias()
                assert table.children is not None
                where = f"{sub}.{q(table.children.fk)} = {alias}.{q(table.key)}"
                # As the resolvers' int(SUM(...)), 0 for none (CAST: over text values SQLite's SUM is a float);
                # beyond GraphQL's Int the resolvers answer an error: the marker sends the request to them.
                frames = f"COALESCE(CAST(SUM({frames_expr(sub)}) AS BIGINT), 0)"
                counted = f"SELECT {frames} AS _f FROM {q(children.name)} {sub} WHERE {where}"
                sql = self.json.sub(f"SELECT {self.json.int32('_fc._f')} FROM ({counted}) _fc")
            elif (table.name, name) in VALUE_LISTS:
                self.shapes.add("value list")
                sql = self.value_list(table, name, alias)
            elif (table.name, name) == ("SliceMetadata", "file"):
                sql, fix = self.file_value(type_, nodes, alias)
            else:
                raise NotCompiled(f"{type_.name}.{name}")
            pairs.append((key, sql))
            if fix is not None:
                fixes.append((key, fix))
        return self.json.obj(pairs), _object_fix(fixes)

    # Columns as the request's access shows them: `api.masking.Access.row` (what `shown` mirrors), then the row
    # reader (`api.columns.CONVERTERS`) for typed fields. Nulls and set values are SQL constants; pseudonyms, and
    # shifted dates on PostgreSQL, are computed by `api.masking.Pseudonyms` itself after the JSON is read (a
    # `Fix`), so that there is one implementation of each.

    def field_value(self, table: Table, column: Column, alias: str) -> tuple[str, Fix | None]:
        """A column's typed field, as this access shows it."""
        how = self.access.treatment(table, column)
        if how is Treatment.STORED:
            return self.json.typed(column, f"{alias}.{q(column.value_column or column.name)}")
        if column.value_column:  # the reader would read the twin, which masking leaves as stored
            raise NotCompiled("a masked column with a numeric twin")
        if how is Treatment.NULL and not column.required:
            return "NULL", None
        if how is Treatment.CONSTANT and column.kind is Kind.STRING:
            return self.shown(table, column, alias)
        if how in (Treatment.PSEUDONYM, Treatment.UID) and column.kind is Kind.STRING:
            return self.shown(table, column, alias)
        if how is Treatment.SHIFTED and column.kind is Kind.DATE:
            sql, shift = self.shown(table, column, alias)
            if shift is None:  # an ISO date or null already (Pseudonyms.shift_date)
                return sql, None
            return sql, lambda pair: _iso(CONVERTERS[Kind.DATE](shift(pair)))
        raise NotCompiled(f"a {how.value} column of kind {column.kind.value}")

    def shown(self, table: Table, column: Column, alias: str) -> tuple[str, Fix | None]:
        """The value `api.masking.Access.row` puts in place of a masked column's stored one (what `raw` shows)."""
        how = self.access.treatment(table, column)
        x = f"{alias}.{q(column.name)}"
        pseudonyms = self.access.pseudonyms
        assert pseudonyms is not None, "de-identified access needs the server's pseudonyms"
        if how is Treatment.NULL:
            return "NULL", None
        if how is Treatment.CONSTANT:
            _, value = treatment(column, self.access.level.options)
            assert value is not None
            return self.json.text(value), None
        stored, _ = self.json.raw(None, x)  # the value as the driver returns it (floats exactly, or the marker)
        if how is Treatment.PSEUDONYM:
            return stored, pseudonyms
        if how is Treatment.UID:
            return stored, pseudonyms.uid
        if how is Treatment.SHIFTED:
            self.shapes.add("shifted date")
            if not isinstance(self.json, PostgresJson):
                # SQLite's shift_date is `Pseudonyms.shift_date` itself, registered on each connection, given the
                # values the driver would give Python: the shown value, computed by one implementation.
                return shifted_expr(table, column, alias, self.dialect), None
            # PostgreSQL's own date arithmetic differs at the edges (invalid dates raise, years before 1 exist):
            # Python shifts the stored text, given the patient's ID.
            patient, _ = self.json.raw(None, patient_expr(table, alias))

            def shift(pair: Any) -> Any:
                return pseudonyms.shift_date(pair[0], pair[1])

            return self.json.array([stored, patient]), shift
        raise NotCompiled(f"a {how.value} column")

    def id_value(self, table: Table, type_name: str, alias: str) -> tuple[str, Fix | None]:
        """`id`: the type and the row's key as this access shows it."""
        column = table.by_name[ID_COLUMNS.get(table.name, table.key)]
        x = f"{alias}.{q(column.name)}"
        how = self.access.treatment(table, column)
        if how is Treatment.STORED:
            return f"CASE WHEN {x} IS NULL THEN {self.json.marker} ELSE {self._id(type_name, x)} END", None
        if how not in (Treatment.PSEUDONYM, Treatment.UID):
            raise NotCompiled(f"an id whose key is {how.value}")
        stored, keyed = self.shown(table, column, alias)
        assert keyed is not None
        prefix = type_name + ":"
        return f"CASE WHEN {x} IS NULL THEN {self.json.marker} ELSE {stored} END", lambda v: prefix + str(keyed(v))

    def _id(self, type_name: str, x: str) -> str:
        return self.json.string(f"{_literal(type_name + ':')} || {x}")

    def value_list(self, table: Table, name: str, alias: str) -> str:
        """`Study.modalities`: the distinct values of a child column, sorted (the resolvers take them from the
        facet of at most the maximum page size of values)."""
        child_name, column_name = VALUE_LISTS[(table.name, name)]
        child = TABLES[child_name]
        assert table.children is not None and table.children.table == child.name
        sub = self.alias()
        v = f"{sub}.{q(column_name)}"
        groups = (
            f"SELECT {v} AS _v FROM {q(child.name)} {sub} WHERE {sub}.{q(table.children.fk)} = {alias}.{q(table.key)} "
            f"GROUP BY 1 ORDER BY COUNT(*) DESC, ({v}) IS NULL, {v} LIMIT {self.settings.max_page_size}"
        )
        values = (
            f"SELECT _g._v AS _v FROM ({groups}) _g WHERE _g._v IS NOT NULL ORDER BY {self.json.sort_text('_g._v')}"
        )
        agg = self.json.agg("_s._v", self.json.sort_text("_s._v"), json_items=False)
        return self.json.sub(f"SELECT {agg} FROM ({values}) _s")

    def file_value(self, type_: Any, nodes: list[FieldNode], alias: str) -> tuple[str, Fix | None]:
        """`Slice.file`: the instance's file in the ingest's index, as `Database.instance_files` finds it (status
        'ingested'; by the slice's stored SOPInstanceUID, which only full access reads), `url` made by the
        resolvers' `file_url`. Two such files (not made by dicom-ingest) or a size beyond GraphQL's Int: the
        marker, and the resolvers answer."""
        if not self.access.may_read_files:
            raise NotCompiled("Slice.file without full access")  # the resolvers answer FORBIDDEN
        self.shapes.add("file")
        file_type = get_named_type(self.field_def(type_, "file").type)
        sub, sop = self.alias(), f'{alias}."SOPInstanceUID"'
        pairs: list[tuple[str, str]] = []
        urls: list[tuple[str, Fix]] = []
        for key, field_nodes in self.sub_fields(file_type, nodes).items():
            name = field_nodes[0].name.value
            if name == "__typename":
                pairs.append((key, self.json.text(file_type.name)))
            elif name == "path":
                pairs.append((key, self.json.string(f'max({sub}."Path")')))
            elif name == "size":
                pairs.append((key, self.json.int32(f'max({sub}."Size")')))
            elif name == "url":
                pairs.append((key, self.json.string(sop)))
                urls.append((key, file_url))
            else:
                raise NotCompiled(f"{file_type.name}.{name}")
        one = self.json.obj(pairs)
        found = f'{sub}."Status" = \'ingested\' AND {sub}."SOPInstanceUID" = {sop}'
        select = (
            f"SELECT CASE WHEN COUNT(*) = 0 THEN NULL WHEN COUNT(*) = 1 THEN {one} ELSE {self.json.marker} END "
            f'FROM "SourceFile" {sub} WHERE {found}'
        )
        return self.json.sub(select), _object_fix(urls)

    # Connections

    def connection(
        self,
        table: Table,
        connection_type: Any,
        nodes: list[FieldNode],
        args: dict[str, Any],
        parent: tuple[str, str] | None,
    ) -> tuple[str, Fix | None]:
        """A SELECT giving the connection's JSON, and its fix. `parent`: (the child's foreign key, the parent's key
        expression) of a nested connection."""
        alias = self.alias()
        where_input = args.get("where")
        order_by = args.get("orderBy")
        first, after = args.get("first"), args.get("after")
        if where_input:
            self.shapes.add("where")
        if order_by:
            self.shapes.add("orderBy")
        if after is not None:
            self.shapes.add("after")
        items = [
            _OrderBy(
                _Enum(_enum_name(o["field"])), None if o.get("direction") is None else _Enum(_enum_name(o["direction"]))
            )
            for o in order_by or ()
        ]
        try:
            order = order_keys(table, items or None, nested=parent is not None, access=self.access)
            limit = checked_page_size(first, self.settings.default_page_size, self.settings.max_page_size)
            cursor = decode_cursor(table, after, order) if after is not None else None
            where = compile_where(table, _wrap(where_input) if where_input else None, self.dialect, alias, self.access)
        except GraphQLError:  # the resolvers report it, at its path
            raise NotCompiled(REFUSED_ARGUMENTS) from None
        conditions = []
        if parent is not None:
            conditions.append(f"{alias}.{q(parent[0])} = {parent[1]}")
        if where.sql != TRUE:
            conditions.append(f"({self.fragment(where, alias)})")
        filtered = " AND ".join(conditions) or TRUE  # the rows counted and grouped
        # After a cursor, one or two disjoint conditions (api.pagination.after_branches): each its own page, so
        # that each seeks an index, as the resolvers' root pages do.
        branches = [] if cursor is None else after_branches(table, order, cursor, alias, self.dialect)
        branch_sql = [self.fragment(b, alias) for b in branches]

        fp = fingerprint(order)
        cursor_values, cursor_fix = self.cursor_values(table, order, alias)

        def make_cursor(values: Any) -> str:
            return encode_cursor(fp, cursor_fix(values))

        pairs: list[tuple[str, str]] = []
        fixes: list[tuple[str, Fix]] = []
        in_page = f"_p._rn <= {limit}"
        uses_page = False
        for key, field_nodes in self.sub_fields(connection_type, nodes).items():
            name = field_nodes[0].name.value
            fix: Fix | None = None
            if name == "__typename":
                sql = self.json.text(connection_type.name)
            elif name == "totalCount":
                self.shapes.add("totalCount")
                sql = f"(SELECT COUNT(*) FROM {q(table.name)} {alias} WHERE {filtered})"
            elif name == "nodes":
                uses_page = True
                row_type = get_named_type(self.field_def(connection_type, name).type)
                obj, row_fix = self.row(table, row_type, self.sub_fields(row_type, field_nodes), alias)
                sql = self.json.agg(obj, "_p._rn", in_page, json_items=False)
                fix = _list_fix(row_fix)
            elif name == "edges":
                self.shapes.add("edges")
                uses_page = True
                edge_type = get_named_type(self.field_def(connection_type, name).type)
                edge_pairs: list[tuple[str, str]] = []
                edge_fixes: list[tuple[str, Fix]] = []
                for edge_key, edge_nodes in self.sub_fields(edge_type, field_nodes).items():
                    edge_field = edge_nodes[0].name.value
                    if edge_field == "__typename":
                        edge_pairs.append((edge_key, self.json.text(edge_type.name)))
                    elif edge_field == "cursor":
                        edge_pairs.append((edge_key, cursor_values))
                        edge_fixes.append((edge_key, make_cursor))
                    elif edge_field == "node":
                        row_type = get_named_type(self.field_def(edge_type, edge_field).type)
                        obj, row_fix = self.row(table, row_type, self.sub_fields(row_type, edge_nodes), alias)
                        edge_pairs.append((edge_key, obj))
                        if row_fix is not None:
                            edge_fixes.append((edge_key, row_fix))
                    else:
                        raise NotCompiled(f"{edge_type.name}.{edge_field}")
                sql = self.json.agg(self.json.obj(edge_pairs), "_p._rn", in_page, json_items=False)
                fix = _list_fix(_object_fix(edge_fixes))
            elif name == "pageInfo":
                self.shapes.add("pageInfo")
                uses_page = True
                info_type = get_named_type(self.field_def(connection_type, name).type)
                info_pairs: list[tuple[str, str]] = []
                info_fixes: list[tuple[str, Fix]] = []
                for info_key, info_nodes in self.sub_fields(info_type, field_nodes).items():
                    info_field = info_nodes[0].name.value
                    if info_field == "__typename":
                        info_pairs.append((info_key, self.json.text(info_type.name)))
                    elif info_field == "hasNextPage":
                        has_next = (
                            self.json.boolean(f"COUNT(*) > {limit}") if limit > 0 else self.json.const_bool(False)
                        )
                        info_pairs.append((info_key, has_next))
                    elif info_field == "hasPreviousPage":
                        info_pairs.append((info_key, self.json.const_bool(cursor is not None)))
                    elif info_field in ("startCursor", "endCursor"):
                        info_pairs.append((info_key, self.json.agg(cursor_values, "_p._rn", in_page, json_items=False)))
                        pick = 0 if info_field == "startCursor" else -1
                        info_fixes.append((info_key, _pick_cursor(make_cursor, pick)))
                    else:
                        raise NotCompiled(f"{info_type.name}.{info_field}")
                sql = self.json.obj(info_pairs)
                fix = _object_fix(info_fixes)
            elif name == "groupBy":
                self.shapes.add("groupBy")
                definition = self.field_def(connection_type, name)
                sql, fix = self.group_by(table, definition, field_nodes, alias, filtered)
            else:
                raise NotCompiled(f"{connection_type.name}.{name}")
            pairs.append((key, sql))
            if fix is not None:
                fixes.append((key, fix))
        obj = self.json.obj(pairs)
        if not uses_page:
            return f"SELECT {obj}", _object_fix(fixes)
        keys = order
        order = pagination_order_sql(table, keys, alias, self.dialect)
        key = f"{alias}.{q(table.key)}"
        if len(branch_sql) <= 1:
            where = " AND ".join(conditions + [f"({b})" for b in branch_sql]) or TRUE
            inner = (
                f"SELECT {key} AS _pk, ROW_NUMBER() OVER (ORDER BY {order}) AS _rn FROM {q(table.name)} {alias} "
                f"WHERE {where} ORDER BY {order} LIMIT {limit + 1}"
            )
        else:
            exprs = ", ".join(f"{e} AS _o{i}" for i, e in enumerate(order_exprs(table, keys, alias, self.dialect)))
            parts = []
            for i, branch in enumerate(branch_sql):
                where = " AND ".join([*conditions, f"({branch})"])
                parts.append(
                    f"SELECT * FROM (SELECT {key} AS _pk, {exprs} FROM {q(table.name)} {alias} WHERE {where} "
                    f"ORDER BY {order} LIMIT {limit + 1}) _b{i}"
                )
            by = ", ".join(f"_u._o{i} {'DESC' if k.descending else 'ASC'} NULLS LAST" for i, k in enumerate(keys))
            inner = (
                f"SELECT _u._pk AS _pk, ROW_NUMBER() OVER (ORDER BY {by}) AS _rn FROM ({' UNION ALL '.join(parts)}) _u "
                f"ORDER BY {by} LIMIT {limit + 1}"
            )
        # The page's rows in order, then the rows themselves: SQLite aggregates rows in the order its loops visit
        # them, and CROSS JOIN keeps the ordered page in the outer loop; PostgreSQL's aggregates say their order.
        join = "CROSS JOIN" if self.dialect is not POSTGRES else "JOIN"
        return f"SELECT {obj} FROM ({inner}) _p {join} {q(table.name)} {alias} ON {key} = _p._pk", _object_fix(fixes)

    def cursor_values(self, table: Table, order: Sequence[OrderKey], alias: str) -> tuple[str, Fix]:
        """The JSON array of a row's ordering values (what `api.pagination` puts in a cursor), and its fix."""
        exprs, fixes = [], []
        for key in order:
            column = table.by_name[key.column]
            expr = value_expr(column, alias, self.dialect)
            raw_column = column if column.kind is not Kind.INT_TEXT else None
            if key.pseudonym or key.shifted:  # text the database computes, as in the resolvers' pages
                sql, fix = self.json.raw(None, key_expr(table, key, alias, self.dialect))
            elif raw_column is not None and column.value_column and isinstance(self.json, PostgresJson):
                sql, fix = self.json.raw_float(expr)
            else:
                sql, fix = self.json.raw(raw_column, expr)
            exprs.append(sql)
            fixes.append(fix)

        def fix_values(values: list[Any]) -> list[Any]:
            return [v if f is None else f(v) for f, v in zip(fixes, values, strict=True)]

        return self.json.array(exprs), fix_values

    def group_by(
        self, table: Table, definition: GraphQLField, nodes: list[FieldNode], alias: str, filtered: str
    ) -> tuple[str, Fix | None]:
        args = self.arguments(definition, nodes[0])
        column = table.by_enum.get(_enum_name(args.get("field")))
        if column is None:
            raise NotCompiled("groupBy field")
        date_part = args.get("datePart")
        date_part = None if date_part is None else _enum_name(date_part)
        if date_part is not None and column.kind is not Kind.DATE:
            raise NotCompiled("datePart on a field that is no date")  # the resolvers' error
        try:
            limit = checked_page_size(args.get("first"), self.settings.max_page_size, self.settings.max_page_size)
        except GraphQLError:
            raise NotCompiled(REFUSED_ARGUMENTS) from None
        if self.access.forbids(column, table):  # api.limits refuses it first; the resolvers say how
            raise NotCompiled("a groupBy the access forbids")
        how = self.access.treatment(table, column)
        if how is Treatment.SHIFTED:
            value = shifted_expr(table, column, alias, self.dialect)
        else:
            value = value_expr(column, alias, self.dialect)
        if date_part is not None:
            value = (
                f"(CASE WHEN {self.dialect.is_iso_date(value)} THEN substr({value}, 1, {DATE_PARTS[date_part]}) END)"
            )
        # api.db.Database.groups' order; values shown as pseudonymous UIDs break ties by a keyed hash.
        tie = self.dialect.pseudonym(value) if how is Treatment.UID else value
        ranking = f"COUNT(*) DESC, ({value}) IS NULL, {tie}"
        groups = (
            f"SELECT {value} AS _v, COUNT(*) AS _n, ROW_NUMBER() OVER (ORDER BY {ranking}) AS _rn "
            f"FROM {q(table.name)} {alias} WHERE {filtered} GROUP BY 1 ORDER BY {ranking} LIMIT {limit}"
        )
        group_type = get_named_type(definition.type)
        assert isinstance(get_nullable_type(definition.type), GraphQLList)
        raw_column = column if date_part is None and column.kind is not Kind.INT_TEXT else None
        if raw_column is not None and column.value_column and isinstance(self.json, PostgresJson):
            value_sql, value_fix = self.json.raw_float("_g._v")
        else:
            value_sql, value_fix = self.json.raw(raw_column, "_g._v")
        as_text = _bool_text if column.kind is Kind.BOOL else _value_text
        if how is Treatment.UID:  # the client sees pseudonyms (api.types Connection._groups)
            assert self.access.pseudonyms is not None
            as_text = self.access.pseudonyms.uid
        text_fix: Fix = as_text if value_fix is None else (lambda v: as_text(value_fix(v)))
        pairs, fixes = [], []
        for key, field_nodes in self.sub_fields(group_type, nodes).items():
            name = field_nodes[0].name.value
            if name == "__typename":
                pairs.append((key, self.json.text(group_type.name)))
            elif name == "value":
                pairs.append((key, value_sql))
                fixes.append((key, text_fix))
            elif name == "count":
                pairs.append((key, "_g._n"))
            else:
                raise NotCompiled(f"{group_type.name}.{name}")
        agg = self.json.agg(self.json.obj(pairs), "_g._rn", json_items=False)
        return self.json.sub(f"SELECT {agg} FROM ({groups}) _g"), _list_fix(_object_fix(fixes))


def _pick_cursor(make: Callable[[Any], str], index: int) -> Fix:
    def fix(values: Any) -> str | None:
        return make(values[index]) if values else None

    return fix
