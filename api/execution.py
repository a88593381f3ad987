"""Executing and encoding a response without holding the event loop.

A worker serves many requests on one event loop, and a time limit (`asyncio.timeout`) can only strike when the
loop runs. graphql-core completes a list of already fetched objects, and a JSON encoder writes a response, in one
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

import orjson
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


async def encode_response(data: Any, limit: int, expected: int | None = None) -> bytes:
    """`data` as compact UTF-8 JSON (orjson's), made piece by piece, yielding to the event loop every
    YIELD_BYTES; ResponseTooLarge as soon as it would exceed `limit` bytes. `expected`: about how long the text
    will be, when known (a compiled answer's): under PIECE_BYTES it is written in one call."""
    if expected is not None and expected < PIECE_BYTES:
        text = dumps(data)
        if len(text) > limit:
            raise ResponseTooLarge(limit)
        return text
    parts: list[bytes] = []
    size = since_yield = 0
    for count, piece in enumerate(_pieces(data), start=1):
        size += len(piece)
        if size > limit:
            raise ResponseTooLarge(limit)
        parts.append(piece)
        since_yield += len(piece)
        if since_yield > YIELD_BYTES or count % YIELD_EVERY == 0:
            since_yield = 0
            await asyncio.sleep(0)
    return b"".join(parts)


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8: orjson, or the standard library for what orjson refuses (an integer beyond 64 bits,
    nesting deeper than 255 levels), alike but for float spelling."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _pieces(value: Any) -> Iterator[bytes]:
    """JSON text of `value` in pieces. Objects are walked down to their lists; a list's items are written in runs,
    each run by one orjson call, whose length adapts so that a piece is about PIECE_BYTES. A single item larger
    than BIG_ITEM makes the rest of its list walked item by item instead (a patient among patients holding
    thousands of slices), so that no one call holds the event loop for long."""
    if type(value) is dict:
        yield b"{"
        for index, (key, item) in enumerate(value.items()):
            yield (b"," if index else b"") + dumps(str(key)) + b":"
            yield from _pieces(item)
        yield b"}"
    elif type(value) is list and len(value) > 1:
        yield b"["
        index, run, walk = 0, 1, False
        while index < len(value):
            if walk:
                if index:
                    yield b","
                yield from _pieces(value[index])
                index += 1
                continue
            piece = dumps(value[index : index + run])
            yield (b"," if index else b"") + piece[1:-1]
            index += run
            if run == 1 and len(piece) > BIG_ITEM:
                walk = True
            else:
                run = max(1, min(run * 4, run * PIECE_BYTES // len(piece)))
        yield b"]"
    else:
        yield dumps(value)


PIECE_BYTES = 64 * 1024  # orjson writes this much in well under a millisecond
BIG_ITEM = 1 << 20
YIELD_BYTES = 1 << 20
