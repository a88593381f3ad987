"""Executing and encoding a response without holding the event loop.

A worker serves many requests on one event loop, and a time limit (`asyncio.timeout`) can only strike when the
loop runs. graphql-core completes a list of already fetched objects, and `json.dumps` encodes a response, in one
stretch of Python: for a response of a hundred thousand rows that is seconds during which `/healthz` and every
other request of the worker wait, and the time limit cannot fire. So here

- long lists are completed a slice at a time, yielding to the loop between slices (`CooperativeExecution`);
- the response is encoded piece by piece (`encode_response`), yielding to the loop and counting bytes as it
  goes: a response over `maxResponseBytes` is abandoned before it is ever whole, and the client gets an error
  instead of a truncated document;
- past the request's deadline every object fails at once (`complete_object_value`), so that the rest of a
  cancelled execution costs little.

What this cannot do: graphql-core completes a list with one task per row, and the tasks of a large request are
all ready in the same turn of the loop, which the other requests of the worker then wait for
(docs/benchmarks.md, "Availability under abuse").
"""

from __future__ import annotations

import asyncio
import json
import math
import warnings
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLOutputType, GraphQLResolveInfo
from graphql.pyutils import Path
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from dicom_db.api.errors import LimitExceeded, TimeLimitExceeded

# When the time limit cancels a large execution, graphql-core's and this module's coroutines that never got to
# run (a field of every pending row) are collected unawaited, and Python warns for each: thousands of warnings,
# written to stderr, that take seconds of the event loop past the deadline and say nothing a reader can act on.
warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)

YIELD_EVERY = 200  # list items completed, or response pieces encoded, between two turns of the event loop


class CooperativeExecution(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = getattr(self.context_value, "deadline", math.inf)
        self.clock = asyncio.get_running_loop().time

    def complete_object_value(self, *args: Any, **kwargs: Any) -> Any:
        # Past the deadline every object fails at once, so that the rest of a large response costs nothing
        # while the time limit's cancellation reaches every task.
        if self.clock() > self.deadline:
            raise TimeLimitExceeded()
        return super().complete_object_value(*args, **kwargs)

    def complete_iterable_value(
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: GraphQLResolveInfo,
        path: Path,
        items: Any,
        position_context: Any,
    ) -> Any:
        if not isinstance(items, list) or len(items) <= YIELD_EVERY:
            return super().complete_iterable_value(item_type, field_details_list, info, path, items, position_context)
        return self._complete_in_slices(item_type, field_details_list, info, path, items, position_context)

    async def _complete_in_slices(
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: GraphQLResolveInfo,
        path: Path,
        items: list[Any],
        position_context: Any,
    ) -> list[Any]:
        """graphql-core's completion of a list (without @stream, which this schema does not offer), with a turn
        of the event loop every YIELD_EVERY items; items that complete asynchronously are awaited together."""
        completed: list[Any] = []
        pending: list[int] = []
        try:
            for index, item in enumerate(items):
                if index and index % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                item_path = path.add_key(index, None)
                if self.is_awaitable(item):
                    completed.append(
                        self.complete_awaitable_list_item_value(
                            item, item_type, field_details_list, info, item_path, position_context
                        )
                    )
                    pending.append(index)
                elif self.complete_list_item_value(
                    item, completed, item_type, field_details_list, info, item_path, position_context
                ):
                    pending.append(index)
        except BaseException:
            # Cancelled (the time limit) or failed: the items begun are settled before the error goes on. Past
            # the deadline each fails at once (complete_object_value here, statements in api.db), so this is
            # quick; left to be collected unawaited, each would warn, which for thousands of items takes seconds,
            # and settled in the background they would outlive the request.
            if pending:
                await asyncio.gather(*(completed[index] for index in pending), return_exceptions=True)
            raise
        if pending:
            results = await asyncio.gather(*(completed[i] for i in pending))
            for index, result in zip(pending, results, strict=True):
                completed[index] = result
        return completed


class ResponseTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")
        self.limit = limit


def response_too_large(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"The response would be larger than the limit of {limit:,} bytes (maxResponseBytes); ask for fewer rows "
        "or fields.",
        "RESPONSE_LIMIT_EXCEEDED",
        "maxResponseBytes",
        limit,
    )


async def encode_response(data: Any, limit: int) -> str:
    """`json.dumps(data, separators=(",", ":"))`, ASCII only (so characters are bytes), made piece by piece;
    ResponseTooLarge as soon as it would exceed `limit` bytes."""
    parts: list[str] = []
    size = 0
    for count, piece in enumerate(_pieces(data), start=1):
        size += len(piece)
        if size > limit:
            raise ResponseTooLarge(limit)
        parts.append(piece)
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return "".join(parts)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _pieces(value: Any) -> Iterator[str]:
    """JSON text of `value` in pieces. A container of at most PIECE_ITEMS values, all levels counted (a row with
    its fields, its small lists and its parent objects), is written by the C encoder, and so is a run of such
    items of a list, up to PIECE_ITEMS of them; larger containers are walked."""
    if _small(value):
        yield _dumps(value)
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield ("," if index else "") + _dumps(str(key)) + ":"
            yield from _pieces(item)
        yield "}"
    else:
        yield "["
        run: list[Any] = []
        first = True
        for item in value:
            if _small(item) and len(run) < PIECE_ITEMS:
                run.append(item)
                continue
            if run:
                yield ("" if first else ",") + _dumps(run)[1:-1]
                first, run = False, ([item] if _small(item) else [])
                if run:
                    continue
            if not first:
                yield ","
            first = False
            yield from _pieces(item)
        if run:
            yield ("" if first else ",") + _dumps(run)[1:-1]
        yield "]"


PIECE_ITEMS = 256


def _small(value: Any) -> bool:
    """A scalar, or a container of at most PIECE_ITEMS values at all its levels."""
    if type(value) is not dict and type(value) is not list:
        return True
    budget = PIECE_ITEMS
    stack = [value]
    while stack:
        container = stack.pop()
        budget -= len(container)
        if budget < 0:
            return False
        for item in container.values() if type(container) is dict else container:
            if type(item) is dict or type(item) is list:
                stack.append(item)
    return True
