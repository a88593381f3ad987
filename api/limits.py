"""Query limits and the checks that run before a query touches the database.

One schema extension, `QueryGuard`, made per request:

- parse: Strawberry's MaxTokensLimiter (next to it in the schema) aborts a document over `max_tokens`; the guard
  gives that error its code and a message that names the limit;
- validate: the sizes of input values (`api.inputs`: list lengths, nesting and size of `where` inputs, in
  the document and in the raw variables) and the document's depth and aliases (`Structure`) are measured
  first, then graphql-core's rules run with field suggestions hidden ("Did you mean ...?" would list the
  schema to a client that may not introspect it);
- execute, before any resolver: variables are coerced (suggestions hidden), the node budget is computed
  (`Cost`: GitHub's method, the product of page sizes down each path, summed) and, for a de-identified token,
  any filter, ordering or facet on a masked field is refused. A refusal answers without executing: no SQL runs.
  A request over `heavy_nodes` is not executed either when its view serves heavy requests elsewhere (the
  context's `offload`): its node count is noted in the context, for the view to hand it to a heavy process
  (api.heavy).

Strawberry's QueryDepthLimiter and MaxAliasesLimiter are not used: they expand a fragment again at every spread,
so a few hundred bytes of fragments spreading one another twice keep them busy for minutes. Here a fragment is
measured once (memoized by name), so a check costs time linear in the document.

The time limit is enforced around the whole operation by the HTTP view (api.app).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLSyntaxError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SchemaMetaFieldDef,
    SelectionSetNode,
    TypeMetaFieldDef,
    get_named_type,
    get_nullable_type,
    validate,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from dicom_db.api.columns import TABLES, Column, Table
from dicom_db.api.errors import ForbiddenError, LimitExceeded, UserInputError
from dicom_db.api.inputs import input_errors
from dicom_db.api.masking import FULL, Access
from dicom_db.api.settings import Settings

# Fields whose items are the rows of their connection: counted by the connection, multiplied below it.
PAGE_FIELDS = ("nodes", "edges")
FETCHES_PAGE = ("nodes", "edges", "pageInfo")
ROW_TYPES = {t.type_name: t for t in TABLES.values()}
CONNECTIONS = {f"{t.type_name}Connection": t for t in TABLES.values()}
WHERE_INPUTS = {f"{t.type_name}Where": t for t in TABLES.values()}
ORDER_INPUTS = {f"{t.type_name}OrderBy": t for t in TABLES.values()}
GROUP_ENUMS = {f"{t.type_name}GroupField": t for t in TABLES.values()}
# Leaf fields that are lists of values of child rows (at most the maximum page size each): the table they read.
VALUE_LISTS = {"modalities": "Series"}
# Object types that are not rows of the four tables but are fetched per parent (a row of the ingest's file
# index): each counts one, like a parent relation.
FETCHED_OBJECTS = ("DicomFile",)


def limit_error(limit: str, value: float, message: str) -> LimitExceeded:
    code = {
        "maxDepth": "DEPTH_LIMIT_EXCEEDED",
        "maxAliases": "ALIAS_LIMIT_EXCEEDED",
        "maxTokens": "TOKEN_LIMIT_EXCEEDED",
        "maxNodes": "NODE_LIMIT_EXCEEDED",
        "timeout": "TIME_LIMIT_EXCEEDED",
    }[limit]
    return LimitExceeded(message, code, limit, value)


def timeout_error(seconds: float) -> LimitExceeded:
    return limit_error(
        "timeout", seconds, f"The request ran longer than the time limit of {seconds:g} s (timeout) and was stopped."
    )


# Depth and aliases: the document's shape, no types needed (it runs before validation).


# Fields, inline fragments and fragment spreads nested in one another: no real query comes near, and it bounds
# the stack every walk over the document (these checks, graphql-core's) needs.
MAX_NESTING = 100


@dataclass(frozen=True, slots=True)
class Shape:
    depth: int  # field levels of a selection set, its own included
    aliases: int
    nesting: int  # fields, inline fragments and spreads nested, its own included


EMPTY = Shape(0, 0, 0)


class Structure:
    """Depth, aliases and nesting of each operation, in time linear in the document.

    Each fragment is measured once, after the fragments it spreads (in an order found without recursion), so a
    spread costs a lookup however often it occurs; within one selection set the walk stops past MAX_NESTING."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.memo: dict[str, Shape] = {}
        for name in _spread_order(fragments):
            self.memo[name] = self.selection_set(fragments[name].selection_set)

    def selection_set(self, selection_set: SelectionSetNode, nesting: int = 0) -> Shape:
        if nesting > MAX_NESTING:
            return Shape(0, 0, 1)  # deeper than anything is allowed: the total says so
        depth = aliases = deepest = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                inner = self.selection_set(node.selection_set, nesting + 1) if node.selection_set else EMPTY
                depth = max(depth, 1 + inner.depth)
                aliases += inner.aliases + (1 if node.alias else 0)
            elif isinstance(node, InlineFragmentNode):
                inner = self.selection_set(node.selection_set, nesting + 1)
                depth = max(depth, inner.depth)
                aliases += inner.aliases
            elif isinstance(node, FragmentSpreadNode):
                inner = self.memo.get(node.name.value, EMPTY)  # unknown, or in a cycle: validation says so
                depth = max(depth, inner.depth)
                aliases += inner.aliases
            else:
                continue
            deepest = max(deepest, 1 + inner.nesting)
        return Shape(depth, aliases, deepest)


def _spread_order(fragments: dict[str, FragmentDefinitionNode]) -> list[str]:
    """Fragment names, each after the fragments it spreads (depth-first, post-order, with a stack of its own).
    In a cycle, which validation refuses, one of the fragments is measured before the one it spreads."""
    spreads = {name: _spreads(definition.selection_set) for name, definition in fragments.items()}
    order: list[str] = []
    seen: set[str] = set()
    for root in fragments:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(spreads[root]))]
        while stack:
            name, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                order.append(name)
            elif child in spreads and child not in seen:
                seen.add(child)
                stack.append((child, iter(spreads[child])))
    return order


def _spreads(selection_set: SelectionSetNode) -> list[str]:
    names, stack = [], [selection_set]
    while stack:
        for node in stack.pop().selections:
            if isinstance(node, FragmentSpreadNode):
                names.append(node.name.value)
            elif getattr(node, "selection_set", None) is not None:
                stack.append(node.selection_set)
    return names


def shape_errors(document: Any, settings: Settings) -> list[GraphQLError]:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    structure = Structure(fragments)
    errors: list[GraphQLError] = []
    for operation in document.definitions:
        if not isinstance(operation, OperationDefinitionNode):
            continue
        shape = structure.selection_set(operation.selection_set)
        if shape.nesting > MAX_NESTING:
            message = (
                f"The query nests fields and fragments more than {MAX_NESTING} deep; the depth limit is "
                f"{settings.max_depth} (maxDepth)."
            )
            errors.append(limit_error("maxDepth", settings.max_depth, message))
        elif shape.depth > settings.max_depth:
            errors.append(
                limit_error(
                    "maxDepth",
                    settings.max_depth,
                    f"The query is {shape.depth} fields deep; the limit is {settings.max_depth} (maxDepth).",
                )
            )
        if shape.aliases > settings.max_aliases:
            errors.append(
                limit_error(
                    "maxAliases",
                    settings.max_aliases,
                    f"The query uses {shape.aliases:,} aliases; the limit is {settings.max_aliases} (maxAliases).",
                )
            )
    return errors


# The node budget and the fields a de-identified token may not filter, order or group by: needs types and
# variable values, so it runs after validation.


@dataclass(slots=True)
class Cost:
    nodes: int = 0  # rows the selection may return, for all the instances it is evaluated on
    fetches_page: bool = False  # the selection (of a connection) asks for its page, not only for counts


@dataclass(frozen=True, slots=True)
class Page:
    rows: int  # rows the connection may return in all
    distinct: bool  # and they are distinct rows (see Budget)


class Budget:
    """How many rows a query may return, before it runs.

    GitHub's method: a connection returns at most `first` rows per parent (the default page size without
    `first`), so the rows at a level are the product of the page sizes above it, and the query's total is the
    sum over its connections. A row fetched by a lookup, a parent relation or `Slice.file` counts one; a
    `groupBy` list counts its `first` (default: the maximum page size) per parent, capped like a level of
    distinct rows (groups of distinct parents are at most the rows they group); introspection lists count as
    many items as the longest such list of this schema.

    Unlike GitHub's API this one has default page sizes and a maximum of 1000, so products of page sizes
    soon say nothing (four nested connections of 1000 make 10^12). So a level is also capped by its table's
    row count whenever its rows are distinct: those of a root connection, and the children of distinct
    parents (each child row has one parent). After a parent relation (`Slice.series`) parents may repeat, and
    only the product counts. Row counts come from `Database.table_rows`, refreshed in the background; without
    them only the product counts.

    For de-identified access it also notes every reference to a masked field in `where`, `orderBy` or
    `groupBy`, literal or in a variable."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        variables: Any,
        settings: Settings,
        access: Access,
        table_rows: dict[str, int] | None,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.settings = settings
        self.access = access
        self.table_rows = table_rows
        self.bounds = _introspection_bounds(schema)
        self.memo: dict[tuple[str, int, bool, Page | None], Cost] = {}
        self.active: set[str] = set()
        self.forbidden: dict[str, FieldNode] = {}  # message -> first field that made it
        self.unstorable: dict[str, FieldNode] = {}  # field name -> first field with a string no database holds

    def selection_set(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType,
        instances: int,
        distinct: bool,
        page: Page | None,
    ) -> Cost:
        """The cost of `selection_set` evaluated on `instances` objects of type `parent` (`distinct`: no two are
        the same row); `page`: the connection's rows, when `parent` is a connection."""
        total = Cost()
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                cost = self.field(node, parent, instances, distinct, page)
                total.fetches_page |= node.name.value in FETCHES_PAGE
            elif isinstance(node, InlineFragmentNode):
                condition = self._type(node.type_condition.name.value, parent) if node.type_condition else parent
                cost = self.selection_set(node.selection_set, condition, instances, distinct, page)
            elif isinstance(node, FragmentSpreadNode):
                cost = self.fragment(node.name.value, instances, distinct, page)
            else:
                continue
            total.nodes += cost.nodes
            total.fetches_page |= cost.fetches_page
        return total

    def fragment(self, name: str, instances: int, distinct: bool, page: Page | None) -> Cost:
        key = (name, instances, distinct, page)
        if key in self.memo:
            return self.memo[key]
        definition = self.fragments.get(name)
        if definition is None or name in self.active:
            return Cost()
        self.active.add(name)
        try:
            parent = self.schema.get_type(definition.type_condition.name.value)
            cost = self.selection_set(definition.selection_set, parent, instances, distinct, page) if parent else Cost()
        finally:
            self.active.discard(name)
        self.memo[key] = cost
        return cost

    def _type(self, name: str, default: GraphQLNamedType) -> GraphQLNamedType:
        found = self.schema.get_type(name)
        return found if found is not None else default

    def field(
        self, node: FieldNode, parent: GraphQLNamedType, instances: int, distinct: bool, page: Page | None
    ) -> Cost:
        name = node.name.value
        definition = _field(parent, name, self.schema)
        if definition is None:
            return Cost()
        args = self._arguments(definition, node)
        if any(map(_unstorable, _strings(args))):
            self.unstorable.setdefault(name, node)
        if self.access.deidentified:
            for arg_name, value in args.items():
                self._check_value(definition.args[arg_name].type, value, node)
        if node.selection_set is None:
            if name in VALUE_LISTS and parent.name in ROW_TYPES:  # a list of values read from child rows
                items = instances * self.settings.max_page_size
                if distinct and self.table_rows is not None:
                    items = min(items, self.table_rows.get(VALUE_LISTS[name], items))
                return Cost(items)
            return Cost()
        child = get_named_type(definition.type)
        selection = node.selection_set
        if page is not None and name in PAGE_FIELDS:  # a connection's rows: counted by the connection
            return self.selection_set(selection, child, page.rows, page.distinct, None)
        if name == "node" and parent.name.endswith("Edge"):  # likewise, through an edge
            return self.selection_set(selection, child, instances, distinct, None)
        if child.name in CONNECTIONS:
            rows = instances * self._page_size(args.get("first"))
            if distinct and self.table_rows is not None:
                rows = min(rows, self.table_rows.get(CONNECTIONS[child.name].name, rows))
            inner = self.selection_set(selection, child, instances, distinct, Page(rows, distinct))
            return Cost(inner.nodes + (rows if inner.fetches_page else 0))
        if (name.startswith("__") or parent.name.startswith("__")) and _is_list(definition):
            items = instances * self.bounds.get(f"{parent.name}.{name}", len(self.schema.type_map))
            return Cost(items + self.selection_set(selection, child, items, False, None).nodes)
        if child.name in ROW_TYPES or child.name in FETCHED_OBJECTS:
            # A root lookup finds one row; a parent relation may find the same parent for many children.
            root = parent is self.schema.query_type
            return Cost(instances + self.selection_set(selection, child, instances, root, None).nodes)
        if name == "groupBy" and parent.name in CONNECTIONS:
            # At most `first` groups per connection (default: the maximum page size); the groups of distinct
            # parents partition the rows they count, so they are also at most the table's rows.
            groups = instances * self._page_size(args.get("first"), self.settings.max_page_size)
            if distinct and self.table_rows is not None:
                groups = min(groups, self.table_rows.get(CONNECTIONS[parent.name].name, groups))
            return Cost(groups + self.selection_set(selection, child, groups, False, None).nodes)
        return Cost(self.selection_set(selection, child, instances, distinct, None).nodes)

    def _page_size(self, first: Any, default: int | None = None) -> int:
        if not isinstance(first, int):
            return self.settings.default_page_size if default is None else default
        # An out-of-range `first` fails its field before it fetches anything, with its own clear error.
        return first if 0 <= first <= self.settings.max_page_size else 0

    def _arguments(self, definition: GraphQLField, node: FieldNode) -> dict[str, Any]:
        if not definition.args:
            return {}
        try:
            return get_argument_values(definition, node, self.variables, hide_suggestions=True)
        except GraphQLError:  # execution reports it, with its path
            return {}

    def _check_value(self, type_: GraphQLInputType, value: Any, node: FieldNode) -> None:
        """Note masked columns in an argument value (coerced: GraphQL names, enum members)."""
        if value is None:
            return
        nullable = get_nullable_type(type_)
        if isinstance(nullable, GraphQLList):
            for item in value if isinstance(value, list) else [value]:
                self._check_value(nullable.of_type, item, node)
            return
        if isinstance(nullable, GraphQLEnumType) and nullable.name in GROUP_ENUMS:
            self._refuse(GROUP_ENUMS[nullable.name], _enum_name(value), "group by", node)
            return
        if not isinstance(nullable, GraphQLInputObjectType) or not isinstance(value, dict):
            return
        where = WHERE_INPUTS.get(nullable.name)
        order = ORDER_INPUTS.get(nullable.name)
        if order is not None and "field" in value:
            self._refuse(order, _enum_name(value["field"]), "order by", node)
        for key, item in value.items():
            if where is not None:
                column = _column_by_field(where, key)
                if column is not None and self.access.forbids(column, where):
                    self._forbid(f"De-identified access cannot filter on {where.type_name}.{key}.", node)
                elif (
                    column is not None and isinstance(item, dict) and self.access.refuses_operators(where, column, item)
                ):
                    self._forbid(
                        f"De-identified access compares {where.type_name}.{key} (a pseudonymous UID) with eq, ne, "
                        "in, notIn and isNull only.",
                        node,
                    )
            field = nullable.fields.get(key)
            if field is not None:
                self._check_value(field.type, item, node)

    def _refuse(self, table: Table, enum_name: str, verb: str, node: FieldNode) -> None:
        column = table.by_enum.get(enum_name)
        if column is not None and self.access.forbids(column):
            self._forbid(f"De-identified access cannot {verb} {enum_name}.", node)

    def _forbid(self, message: str, node: FieldNode) -> None:
        self.forbidden.setdefault(message, node)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _unstorable(text: str) -> bool:
    """A NUL character (PostgreSQL text cannot hold it, no DICOM value does) or a lone surrogate (not UTF-8: no
    driver can send it). Such a string can match nothing; it is refused rather than sent to the database."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _column_by_field(table: Table, field_name: str) -> Column | None:
    return _FIELD_COLUMNS[table.name].get(field_name)


_FIELD_COLUMNS = {t.name: {c.field_name: c for c in t.columns} for t in TABLES.values()}


def _field(parent: GraphQLNamedType, name: str, schema: GraphQLSchema) -> GraphQLField | None:
    if name == "__schema" and parent is schema.query_type:
        return SchemaMetaFieldDef
    if name == "__type" and parent is schema.query_type:
        return TypeMetaFieldDef
    fields = getattr(parent, "fields", None)
    return fields.get(name) if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) and fields else None


def _is_list(definition: GraphQLField) -> bool:
    return isinstance(get_nullable_type(definition.type), GraphQLList)


_BOUNDS: weakref.WeakKeyDictionary[GraphQLSchema, dict[str, int]] = weakref.WeakKeyDictionary()


def _introspection_bounds(schema: GraphQLSchema) -> dict[str, int]:
    """The longest list each introspection field can return for this schema."""
    cached = _BOUNDS.get(schema)
    if cached is not None:
        return cached
    types = list(schema.type_map.values())
    with_fields = [t for t in types if isinstance(t, GraphQLObjectType | GraphQLInterfaceType)]
    bounds = {
        "__Schema.types": len(types),
        "__Schema.directives": len(schema.directives),
        "__Type.fields": max((len(t.fields) for t in with_fields), default=0),
        "__Type.inputFields": max((len(t.fields) for t in types if isinstance(t, GraphQLInputObjectType)), default=0),
        "__Type.enumValues": max((len(t.values) for t in types if isinstance(t, GraphQLEnumType)), default=0),
        "__Type.interfaces": max((len(t.interfaces) for t in with_fields), default=0),
        "__Type.possibleTypes": len(types),
        "__Field.args": max((len(f.args) for t in with_fields for f in t.fields.values()), default=0),
        "__Directive.args": max((len(d.args) for d in schema.directives), default=0),
    }
    _BOUNDS[schema] = bounds
    return bounds


# The extension.


RowCounts = Callable[[], dict[str, int] | None]


class QueryGuard(SchemaExtension):
    """`row_counts` gives the server's row counts per table (the node budget's caps); without it, or before the
    first count, the request's database is asked for its own."""

    def __init__(self, settings: Settings, row_counts: RowCounts | None = None) -> None:
        self.settings = settings
        self.row_counts = row_counts

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and getattr(result, "errors", None):
            result.errors = _dedupe([self._coded(e) for e in result.errors])

    def _coded(self, error: GraphQLError) -> GraphQLError:
        """The parser's limits (tokens, and nesting beyond what it can parse) as limit errors."""
        if not isinstance(error, GraphQLSyntaxError):
            return error
        if "Document contains more than" in error.message:
            limit = self.settings.max_tokens
            return limit_error(
                "maxTokens",
                limit,
                f"The query has more than {limit} tokens; the limit is {limit} (maxTokens). Send long lists as "
                "variables.",
            )
        if "nested too deeply" in error.message:
            limit = self.settings.max_depth
            return limit_error(
                "maxDepth", limit, f"The query is nested too deeply to parse; the limit is {limit} (maxDepth)."
            )
        return error

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None and context.pre_execution_errors is None:
            errors = input_errors(document, context.variables, self.settings) or shape_errors(document, self.settings)
            if not errors:
                # Strawberry's own validation, with suggestions hidden (it has no option for that).
                rules = (*context.validation_rules, MaybeNullValidationRule, OneOfInputValidationRule)
                errors = validate(context.schema._schema, document, rules, hide_suggestions=True)
            context.pre_execution_errors = errors
        yield

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        if context.result is None and context.graphql_document is not None:
            errors, nodes = self._pre_execution_errors()
            # A result set here means "do not execute": Strawberry answers it as is.
            if errors:
                context.result = ExecutionResult(data=None, errors=errors)
            elif nodes > self.settings.heavy_nodes and getattr(context.context, "offload", False):
                # Heavy: left to a process of its own (api.heavy), which the view (api.app) hands it to.
                context.context.heavy_nodes = nodes
                context.result = ExecutionResult(data=None)
        yield

    def _pre_execution_errors(self) -> tuple[list[GraphQLError], int]:
        """The errors that refuse the request before it runs, and its node count."""
        context = self.execution_context
        document = context.graphql_document
        assert document is not None
        schema = context.schema._schema
        operation = get_operation_ast(document, context.operation_name)
        if operation is None:
            return [], 0  # graphql-core explains which operation is missing
        variables = get_variable_values(
            schema, operation.variable_definitions or (), context.variables or {}, hide_suggestions=True
        )
        if isinstance(variables, list):
            return variables, 0
        root = schema.get_root_type(operation.operation)
        if root is None:
            return [], 0
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        access = getattr(context.context, "access", FULL)
        table_rows = self.row_counts() if self.row_counts is not None else None
        if table_rows is None:
            table_rows = getattr(getattr(context.context, "db", None), "table_rows", None)
        budget = Budget(schema, fragments, variables, self.settings, access, table_rows)
        nodes = budget.selection_set(operation.selection_set, root, 1, True, None).nodes
        if budget.forbidden:
            return [ForbiddenError(message, node) for message, node in budget.forbidden.items()], nodes
        if budget.unstorable:
            return [
                UserInputError(
                    f"An argument of `{name}` holds a NUL character (U+0000) or a lone surrogate: no stored value "
                    "holds one.",
                    node,
                )
                for name, node in budget.unstorable.items()
            ], nodes
        limit = self.settings.max_nodes
        if nodes > limit:
            return [
                limit_error(
                    "maxNodes",
                    limit,
                    f"The query may return up to {nodes:,} rows; the limit is {limit:,} (maxNodes). Ask for "
                    "fewer rows with `first` on the connections, nested ones above all (a connection without "
                    f"`first` counts {self.settings.default_page_size}).",
                )
            ], nodes
        return [], nodes


def _dedupe(errors: list[GraphQLError]) -> list[GraphQLError]:
    """One error per message per field of the query: a bad argument of a nested connection fails it under every
    parent row, and each failure says the same."""
    seen: set[tuple[str, tuple[str, ...] | None]] = set()
    unique = []
    for error in errors:
        path = tuple(p for p in error.path if isinstance(p, str)) if error.path else None
        key = (error.message, path)
        if key not in seen:
            seen.add(key)
            unique.append(error)
    return unique
