"""The compiled execution path: the database builds the response, Python checks, caches and sends it.

For a request it can take (one query operation, a shape `api.compiler` knows, any access level), `CompiledExecution`
runs the checks the resolvers' path runs before executing (`api.limits`: parse with the token limit, input sizes,
depth and aliases, validation, variables, the node budget) and, when none refuses, one SQL statement per root
field. Whenever any check refuses, or the compiler does not know a field, or a value comes back that the SQL
could not type exactly (`api.compiler.MARKER`), it answers None and the request runs on the Strawberry resolvers
as before: they stay the reference, and they produce every error. So errors are the resolvers' own, by
construction, and data is checked against them by tests/test_api_compiled.py.

Parsed and validated documents are cached by text, plans by document, operation, variables, the tables' row
counts (the node budget depends on them) and the access (a plan masks as its level does, with the server's
pseudonyms): a repeated query pays neither parsing nor planning. Plans hold no data: pseudonyms are computed
anew for every response.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    parse,
    specified_rules,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.utilities import get_operation_ast
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from dicom_db.api.compiler import MARKER, Compiler, NotCompiled, Plan
from dicom_db.api.db import Database
from dicom_db.api.errors import QueryTooComplex
from dicom_db.api.inputs import input_errors, variables_over_limits
from dicom_db.api.limits import Budget, shape_errors
from dicom_db.api.masking import FULL, Access
from dicom_db.api.settings import Settings

log = logging.getLogger("dicom_api.compiled")

CACHE_SIZE = 512  # documents, and plans
# Characters of query text and variables beyond which a request is planned but not kept: the caches' memory stays
# bounded (CACHE_SIZE entries of at most this much) whatever clients send.
MAX_CACHED_TEXT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Document:
    node: DocumentNode
    fragments: dict[str, FragmentDefinitionNode]


class _Lru(OrderedDict):  # type: ignore[type-arg]
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_recent(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any, size: int = 0) -> None:
        if size > MAX_CACHED_TEXT:
            return
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


_MISSING = object()


class TooComplex(NotCompiled):
    pass


class CompiledResult(ExecutionResult):
    """A compiled answer, with the characters of JSON the database wrote for it: the encoder writes a small one
    in one call (api.execution.encode_response)."""

    __slots__ = ("size",)

    def __init__(self, data: dict[str, Any], size: int) -> None:
        super().__init__(data=data, errors=None)
        self.size = size


def _size(key: tuple[Any, ...]) -> int:
    query, _, variables, _, _ = key
    return len(query) + len(variables)


class CompiledExecution:
    def __init__(self, schema: GraphQLSchema, database: Database, settings: Settings) -> None:
        self.schema = schema
        self.database = database
        self.settings = settings
        self.documents = _Lru(CACHE_SIZE)  # query text -> Document, or the reason it is not compiled
        self.plans = _Lru(CACHE_SIZE)  # (query, operation, variables, row counts) -> Plan or a reason
        # Requests answered here ("compiled"), and those sent to the resolvers, by reason: tests and logs read it.
        self.outcomes: Counter[str] = Counter()
        rules = [*specified_rules, MaybeNullValidationRule, OneOfInputValidationRule]
        if not settings.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules = tuple(rules)

    async def execute(self, request_data: Any, context: Any) -> ExecutionResult | None:
        """The request's result, or None: run it on the resolvers."""
        key, plan = self._plan_for(request_data, context)
        if isinstance(plan, str):
            self.outcomes[plan] += 1
            return None
        try:
            data, size = await self.run(plan)
        except NotCompiled as exc:
            self.outcomes[str(exc)] += 1
            if isinstance(exc, TooComplex):  # the statement, not the data: it never compiles
                self.plans.put(key, str(exc), _size(key))
            return None
        self.outcomes["compiled"] += 1
        return CompiledResult(data, size)

    def plan_for(self, request_data: Any, context: Any) -> Plan | str:
        """The request's plan, or why it runs on the resolvers."""
        return self._plan_for(request_data, context)[1]

    def _plan_for(self, request_data: Any, context: Any) -> tuple[Any, Plan | str]:
        if isinstance(request_data, list):
            return None, "a batch"
        if getattr(request_data, "protocol", "http") != "http":
            return None, "a streaming request"
        query = getattr(request_data, "query", None)
        if not isinstance(query, str):
            return None, "no query"
        access = getattr(context, "access", FULL)
        document = self.document(query)
        if isinstance(document, str):
            return None, document
        variables = request_data.variables
        if isinstance(variables, dict) and variables_over_limits(variables, self.settings):
            # Refused before the variables are encoded into the cache key (an `or` of thousands of filters costs
            # more to encode than to refuse); the resolvers' guard reuses the measurement to say why.
            return None, "inputs over the limits"
        operation_name = request_data.operation_name
        rows = self.database.table_rows
        try:
            # The access (its level, and the server's pseudonyms): a plan's masking and checks are one level's.
            key = (
                query,
                operation_name,
                json.dumps(variables, sort_keys=True),
                tuple(sorted((rows or {}).items())),
                access,
            )
        except (TypeError, ValueError):
            return None, "variables that are not JSON"
        plan = self.plans.get_recent(key)
        if plan is _MISSING:
            try:
                plan = self._plan(document, variables, operation_name, rows, access)
            except Exception:  # a bug in a check: the resolvers' path runs the same check, and masks what it raises
                log.exception("planning a compiled query failed; the resolvers run it")
                return None, "a check that failed"
            self.plans.put(key, plan, _size(key))
        return key, plan

    def document(self, query: str) -> Document | str:
        found = self.documents.get_recent(query)
        if found is not _MISSING:
            return found
        document: Document | str
        try:
            node = parse(query, max_tokens=self.settings.max_tokens)
        except GraphQLError:
            document = "a document that does not parse"
        else:
            if shape_errors(node, self.settings) or validate(self.schema, node, self.rules, hide_suggestions=True):
                document = "a document that does not validate"
            else:
                fragments = {d.name.value: d for d in node.definitions if isinstance(d, FragmentDefinitionNode)}
                document = Document(node, fragments)
        self.documents.put(query, document, len(query))
        return document

    def _plan(
        self,
        document: Document,
        variables: Any,
        operation_name: str | None,
        rows: dict[str, int] | None,
        access: Access,
    ) -> Plan | str:
        """The checks of api.limits.QueryGuard that depend on variables, then the compiler."""
        if input_errors(document.node, variables, self.settings):
            return "inputs over the limits"
        operation = get_operation_ast(document.node, operation_name)
        if operation is None:
            return "no such operation"
        coerced = get_variable_values(
            self.schema, operation.variable_definitions or (), variables or {}, hide_suggestions=True
        )
        if isinstance(coerced, list):
            return "variables that do not coerce"
        root = self.schema.get_root_type(operation.operation)
        if root is None:
            return "no root type"
        budget = Budget(self.schema, document.fragments, coerced, self.settings, access, rows)
        nodes = budget.selection_set(operation.selection_set, root, 1, True, None).nodes
        if budget.forbidden or budget.unstorable or nodes > self.settings.max_nodes:
            return "a query the limits refuse"
        if self.settings.heavy_processes and nodes > self.settings.heavy_nodes:
            # The resolvers' guard hands it to a heavy process (api.heavy), where it is compiled in turn.
            return "a heavy request"
        try:
            compiler = Compiler(
                self.schema, document.fragments, coerced, self.settings, self.database.dialect, access=access
            )
            return compiler.operation(operation)
        except NotCompiled as exc:
            return str(exc)

    async def run(self, plan: Plan) -> tuple[dict[str, Any], int]:
        """The response's data, and the characters of JSON the database wrote for it."""
        data: dict[str, Any] = {}
        size = 0
        # One statement in all: run alone, it reads one snapshot without a transaction (api.db.Database.fetch).
        alone = sum(f.sql is not None for f in plan.fields) == 1
        for root_field in plan.fields:
            if root_field.sql is None:
                data[root_field.key] = root_field.constant
                continue
            try:
                rows = await self.database.fetch(root_field.sql, root_field.params, alone=alone)
            except QueryTooComplex:
                # Past the database's limits (SQLite's parser stack bounds how deeply a statement nests).
                await self.database.recover()
                raise TooComplex("a statement too deep for the database") from None
            except Exception as exc:
                # A value SQLite's JSON cannot hold (a BLOB), a PostgreSQL cast that fails on a stored value, or
                # the database failing: the resolvers run the request and answer as they do, with their own error
                # if it fails again.
                log.debug("a compiled statement failed, running the resolvers: %s", exc)
                await self.database.recover()
                raise NotCompiled("a statement that failed") from None
            text = rows[0][0]
            size += len(text or "")
            if text is None:
                data[root_field.key] = None
                continue
            if MARKER in text:
                raise NotCompiled("a value the SQL could not type")
            value = orjson.loads(text)  # about twice as fast as json.loads; the same values
            data[root_field.key] = value if root_field.fix is None else root_field.fix(value)
        return data, size
