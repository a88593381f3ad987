"""Size limits of a request's input values: arguments written in the document and variables, measured as sent,
before anything coerces them (graphql-core's coercion of a list of a million values is itself the cost to avoid).

- `maxListLength`: items of any one list (an `in` of UIDs, an `or` of filters);
- `maxWhereDepth`: input objects nested in one argument or variable, filters included
  (`{not: {patientName: {eq: "x"}}}` is 3 deep): each level nests the SQL condition, and SQLite's parser gives up
  past about 16;
- `maxWhereSize`: input objects in one argument or variable: each is a term of the SQL condition, and SQLite refuses
  an expression more than 1,000 terms deep.

A variable is measured on its own and where an argument uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    ListValueNode,
    ObjectValueNode,
    ValueNode,
    VariableNode,
    visit,
)
from graphql.language import Visitor

from dicom_db.api.errors import LimitExceeded
from dicom_db.api.settings import Settings

CODES = {
    "maxListLength": "LIST_LIMIT_EXCEEDED",
    "maxWhereDepth": "WHERE_DEPTH_LIMIT_EXCEEDED",
    "maxWhereSize": "WHERE_SIZE_LIMIT_EXCEEDED",
}


@dataclass(slots=True)
class Size:
    depth: int = 0  # input objects nested
    objects: int = 0  # input objects in all
    longest: int = 0  # items of the longest list

    def add(self, inner: Size, depth: int) -> None:
        self.depth = max(self.depth, depth + inner.depth)
        self.objects += inner.objects
        self.longest = max(self.longest, inner.longest)


def measure_json(value: Any, stop_depth: int) -> Size:
    """The size of a JSON value (a raw variable), without recursion; the walk stops below `stop_depth` objects
    (the value is already too deep). Only containers are pushed: scalars are most of a large variable."""
    if type(value) is not dict and type(value) is not list:
        return Size()
    objects = longest = deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if type(item) is dict:
            depth += 1
            objects += 1
            deepest = max(deepest, depth)
            if depth > stop_depth:
                continue
            children: Any = item.values()
        else:  # a list
            longest = max(longest, len(item))
            children = item
        for child in children:
            if type(child) is dict or type(child) is list:
                push((child, depth))
    return Size(deepest, objects, longest)


# The variables last measured, by identity: the compiled path (api.compiled) checks a request, and when it refuses,
# the resolvers' guard (api.limits) checks the same request again; a large variable (an `or` of thousands of filters)
# is then walked once, not twice. The entry holds the value itself, so the identity cannot be reused meanwhile.
_last_measured: tuple[Any, int, dict[str, Size]] | None = None


def measure_variables(variables: dict[str, Any], stop_depth: int) -> dict[str, Size]:
    global _last_measured
    last = _last_measured
    if last is not None and last[0] is variables and last[1] == stop_depth:
        return last[2]
    measured = {name: measure_json(value, stop_depth) for name, value in variables.items()}
    _last_measured = (variables, stop_depth, measured)
    return measured


def measure_ast(node: ValueNode, variables: dict[str, Size]) -> Size:
    size = Size()
    stack: list[tuple[ValueNode, int]] = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, ObjectValueNode):
            depth += 1
            size.objects += 1
            size.depth = max(size.depth, depth)
            stack.extend((f.value, depth) for f in item.fields)
        elif isinstance(item, ListValueNode):
            size.longest = max(size.longest, len(item.values))
            stack.extend((v, depth) for v in item.values)
        elif isinstance(item, VariableNode):
            size.add(variables.get(item.name.value, Size()), depth)
    return size


def variables_over_limits(variables: dict[str, Any], settings: Settings) -> bool:
    """Whether a variable, measured on its own, is over a limit (`input_errors` says which, and where)."""
    return any(
        value > allowed
        for size in measure_variables(variables, settings.max_where_depth + 1).values()
        for _, value, allowed, _ in _measures(size, settings)
    )


def input_errors(document: DocumentNode, variables: Any, settings: Settings) -> list[GraphQLError]:
    """Errors for every argument and variable over a limit (one per limit and name)."""
    errors: dict[tuple[str, str], GraphQLError] = {}
    measured = measure_variables(variables, settings.max_where_depth + 1) if isinstance(variables, dict) else {}
    for name, size in measured.items():
        _check(size, f"variable ${name}", settings, errors)

    class Arguments(Visitor):
        def enter_field(self, node: FieldNode, *_: Any) -> None:
            for argument in node.arguments or ():
                if isinstance(argument.value, VariableNode):  # measured as the variable
                    continue
                size = measure_ast(argument.value, measured)
                _check(size, f"argument `{argument.name.value}` of `{node.name.value}`", settings, errors)

    visit(document, Arguments())
    return list(errors.values())


def _measures(size: Size, settings: Settings) -> tuple[tuple[str, int, int, str], ...]:
    """Each limit of a measured value: (its name, the value's measure, the limit, how a message says it)."""
    return (
        ("maxListLength", size.longest, settings.max_list_length, "a list of {value:,} items"),
        ("maxWhereDepth", size.depth, settings.max_where_depth, "input objects nested {value:,} deep"),
        ("maxWhereSize", size.objects, settings.max_where_size, "{value:,} input objects"),
    )


def _check(size: Size, what: str, settings: Settings, errors: dict[tuple[str, str], GraphQLError]) -> None:
    for limit, value, allowed, noun in _measures(size, settings):
        if value > allowed and (limit, what) not in errors:
            message = f"The {what} holds {noun.format(value=value)}; the limit is {allowed:,} ({limit})."
            if limit == "maxWhereDepth" and value > settings.max_where_depth + 1:
                message = f"The {what} nests input objects deeper than {allowed:,}, the limit ({limit})."
            errors[(limit, what)] = LimitExceeded(message, CODES[limit], limit, allowed)
