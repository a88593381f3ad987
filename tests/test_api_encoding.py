"""The response encoder (api.execution.encode_response): orjson's compact UTF-8 JSON, written in pieces.

Both execution paths send their results through it, so their bytes can only match if the pieces join into the
one document orjson writes for the whole; and a large response must still give the event loop turns and stop at
the size limit before it is whole. The HTTP tests (test_api_compiled.py byte for byte, test_api_availability.py
for the limit) run it inside the real server; these check its edges directly.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import orjson
import pytest

from dicom_db.api.execution import BIG_ITEM, PIECE_BYTES, ResponseTooLarge, encode_response


def _slice(i: int) -> dict[str, Any]:
    return {
        "sliceId": i,
        "sopInstanceUid": f"1.2.3.{i}",
        "sliceLocation": i * 0.625 - 100.0,
        "imagePositionPatient": [-125.0, -125.0 + i / 3, -0.0],
        "patientName": 'Müller^Zoë 山田 \U0001f600 \x00\x1f "quoted" back\\slash',
        "acquisitionDate": None,
        "flag": i % 2 == 0,
    }


def _series(n: int, slices: int) -> list[dict[str, Any]]:
    return [{"seriesInstanceUid": f"9.{s}", "slices": {"nodes": [_slice(i) for i in range(slices)]}} for s in range(n)]


CASES = {
    "scalars": {"data": {"a": 1, "b": 1.5, "c": "x", "d": None, "e": True, "f": [], "g": {}, "h": [1]}},
    "floats": {"data": {"v": [120.0, -0.0, 0.1, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 2**53 + 0.0]}},
    "many small rows": {"data": {"allSlices": {"totalCount": 5000, "nodes": [_slice(i) for i in range(5000)]}}},
    # Items over BIG_ITEM: the rest of their list is walked item by item.
    "big items": {"data": {"allPatients": {"nodes": [{"studies": {"nodes": _series(3, 3000)}} for _ in range(3)]}}},
    "errors": {"data": None, "errors": [{"message": "é", "path": ["a", 0], "extensions": {"code": "X"}}]},
}


def encode(value: Any, limit: int = 1 << 40) -> bytes:
    return asyncio.run(encode_response(value, limit))


@pytest.mark.parametrize("name", CASES)
def test_pieces_join_into_the_document_orjson_writes_for_the_whole(name: str) -> None:
    value = CASES[name]
    text = encode(value)
    assert text == orjson.dumps(value)
    assert json.loads(text) == value  # the standard library reads the same values back


def test_the_big_case_is_big_enough_to_walk() -> None:
    item = CASES["big items"]["data"]["allPatients"]["nodes"][0]
    assert len(orjson.dumps(item)) > BIG_ITEM > PIECE_BYTES


def test_non_ascii_is_sent_as_utf8_and_what_orjson_refuses_is_still_written() -> None:
    text = encode({"data": {"name": "Zoë \U0001f600"}})
    assert text == '{"data":{"name":"Zoë \U0001f600"}}'.encode()
    # Beyond 64 bits (a `raw` value) orjson refuses; the standard library writes that piece, alike.
    big = {"data": {"raw": {"x": 2**70, "y": "é"}}}
    assert json.loads(encode(big)) == big
    # Not finite (a stored float in `raw`): null, valid JSON.
    assert encode({"data": {"raw": [math.nan, math.inf]}}) == b'{"data":{"raw":[null,null]}}'


def test_a_response_over_the_limit_stops_before_it_is_whole() -> None:
    value = CASES["many small rows"]
    whole = len(orjson.dumps(value))
    with pytest.raises(ResponseTooLarge):
        encode(value, limit=whole - 1)
    assert len(encode(value, limit=whole)) == whole


def test_a_large_response_gives_the_event_loop_turns() -> None:
    value = CASES["big items"]
    size = len(orjson.dumps(value))

    async def run() -> int:
        turns = 0
        done = False

        async def tick() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        start = turns
        await encode_response(value, 1 << 40)
        done = True
        await ticker
        return turns - start

    # A turn after each MiB written (YIELD_BYTES), beside the first item, written whole (~2 MiB) before the walk
    # begins: at least one turn per 2 MiB.
    assert asyncio.run(run()) >= size // (2 << 20) >= 3
