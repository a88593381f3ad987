"""Heavy requests, served in processes of their own so that they cannot hold a worker's event loop.

A worker serves all its requests on one event loop, and graphql-core completes a list with one task per row, all
ready in the same turn of the loop (api.execution): a request of a hundred thousand rows makes the worker's other
requests, `/healthz` included, wait for seconds, and its time limit can only strike between such turns. So a
request whose node count (api.limits) is over `heavyNodes` is not executed by the worker. Its HTTP request (the
method, path, query string, headers and body as received, the principal its token gave, and what is left of its
time limit) goes to one of the worker's `heavyProcesses` processes, which serves it with the same code (a view of
its own, api.app.heavy_view) and sends back the HTTP answer, which the worker relays as it is. So:

- the worker's loop only waits on a pipe meanwhile: `/healthz` and the light requests go on;
- the process runs at a lower CPU priority (HEAVY_NICENESS), so that light requests get the CPU first when it is
  scarce, and a heavy request gets what is left;
- at the deadline the worker answers TIME_LIMIT_EXCEEDED itself and the process is killed (pebble's ProcessPool
  terminates the process of a cancelled task and starts a new one): the limit holds to the second, however
  long the process would have taken to notice it;
- a worker runs at most `heavyProcesses` heavy requests at once; one more is refused at once with
  TOO_MANY_REQUESTS (HTTP 429 and Retry-After: when the first running one must end), rather than queued.

`dicom-api`'s workers start their processes at startup; an app made otherwise (tests, create_app) at its first
heavy request. They are started with the `spawn` method: a worker has threads (aiosqlite's, pebble's), which
`fork` does not copy safely.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pebble import ProcessExpired, ProcessPool
from starlette.types import ASGIApp, Message

from dicom_db.api.errors import LimitExceeded
from dicom_db.api.settings import Settings

log = logging.getLogger("dicom_api.heavy")

HEAVY_NICENESS = 10  # added to a heavy process's nice value: about a tenth of a light worker's CPU share
STOP_TIMEOUT = 10.0  # seconds the processes get to stop when the worker does


@dataclass(frozen=True, slots=True)
class HeavyRequest:
    """What a heavy process needs to serve a request as its worker would have."""

    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    state: dict[str, Any]  # the request's state that the view reads (the principal)
    table_rows: dict[str, int] | None  # the worker's row counts, so that the node count is the same
    seconds: float  # left of the time limit


@dataclass(frozen=True, slots=True)
class HeavyAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def content_type(self) -> str:
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == b"content-type"), "")


def too_many_requests(running: int, nodes: int, heavy_nodes: int, retry_after: int) -> LimitExceeded:
    return LimitExceeded(
        f"The server is already running as many heavy requests as it may at once ({running}); this one may "
        f"return up to {nodes:,} rows, over {heavy_nodes:,} (heavyNodes). Try again in {retry_after} s, or ask "
        "for fewer rows.",
        "TOO_MANY_REQUESTS",
        "heavyProcesses",
        running,
    )


class HeavyBusy(Exception):
    """Every heavy process is serving a request (or starting): the request is refused, not queued."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"heavy processes busy, retry after {retry_after} s")
        self.retry_after = retry_after


class HeavyRequests:
    """The heavy processes of one worker: `settings.heavy_processes` of them, each serving one request at a
    time. `settings` is what the processes build their view from (api.app.heavy_view).

    A request is only handed to a process that is known to have started and to be free, so that nothing queues
    inside the pool: a process has started when a no-op task given to the pool has run (pebble gives a task to
    a process once its initializer is done), and a killed one is replaced the same way. A request that finds no
    free process waits (within its time limit) if one is starting and no other request waits for it, and is
    refused otherwise. (With several processes starting at once, the first one up may run the others' no-op
    tasks too: a request may then wait in the pool for a process still starting, within its time limit.)"""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size: int = settings.heavy_processes
        self.pool: ProcessPool | None = None
        self.free = 0  # processes started and serving nothing
        self.starting = 0
        self.waiting = 0  # requests waiting for a process that is starting
        self.deadlines: list[float] = []  # of the requests being served, event-loop time
        self._changed: asyncio.Event | None = None

    def start(self) -> None:
        """Start the processes: a served worker does at startup (api.cli), else the first heavy request does."""
        if self.pool is None:
            self.pool = ProcessPool(
                max_workers=self.size,
                initializer=_start_process,
                initargs=(self.settings,),
                context=multiprocessing.get_context("spawn"),
            )
            for _ in range(self.size):
                self._await_start()

    def _await_start(self) -> None:
        assert self.pool is not None
        loop = asyncio.get_running_loop()
        self.starting += 1
        probe = self.pool.schedule(_started)
        probe.add_done_callback(lambda future: loop.call_soon_threadsafe(self._on_started, future))

    def _on_started(self, probe: Future[None]) -> None:
        self.starting -= 1
        error = None if probe.cancelled() else probe.exception()
        if error is None:
            self.free += 1
        else:  # the pool is broken (stopped, or its processes cannot start): nothing to wait for
            log.error("a heavy process did not start: %s: %s", type(error).__name__, error)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def retry_after(self, now: float) -> int:
        """Whole seconds until the first running request must end (at least 1)."""
        return max(1, math.ceil(min(self.deadlines, default=now) - now))

    async def serve(self, request: HeavyRequest, deadline: float) -> HeavyAnswer | None:
        """The answer of a heavy process, or None when `deadline` (event-loop time) came first, in which case
        the process is killed. HeavyBusy when no process is free; what made the process fail otherwise
        (pebble's ProcessExpired when it died)."""
        self.start()
        assert self.pool is not None
        loop = asyncio.get_running_loop()
        if not self.free:
            if self.waiting >= self.starting:
                raise HeavyBusy(self.retry_after(loop.time()))
            self.waiting += 1
            try:
                async with asyncio.timeout_at(deadline):
                    while not self.free:
                        if self._changed is None:
                            self._changed = asyncio.Event()
                        await self._changed.wait()
            except TimeoutError:
                return None
            finally:
                self.waiting -= 1
        self.free -= 1
        self.deadlines.append(deadline)
        future = self.pool.schedule(_serve, args=(request,))
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            return None
        finally:
            self.deadlines.remove(deadline)
            if future.done() and not future.cancelled() and not isinstance(future.exception(), ProcessExpired):
                self.free += 1
                self._notify()
            else:  # cancelled (the deadline, or the worker stopping) or dead: pebble kills it and starts another
                future.cancel()
                self._await_start()

    async def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            await asyncio.to_thread(self.pool.join, STOP_TIMEOUT)
            self.pool = None


# In a heavy process.

_view: tuple[asyncio.AbstractEventLoop, ASGIApp, Any] | None = None


def _start_process(settings: Settings) -> None:
    """pebble runs this once in each heavy process as it starts: lower priority, a view, an open database."""
    global _view
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s", level=logging.WARNING)
    from dicom_db.api.app import heavy_view  # here: api.app imports this module

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    view, database = loop.run_until_complete(heavy_view(settings))
    _view = (loop, view, database)
    os.nice(HEAVY_NICENESS)  # after the start (imports, schema, connection), which a request may be waiting for


def _started() -> None:
    """A no-op: that it ran says that a process has started."""


def _serve(request: HeavyRequest) -> HeavyAnswer:
    assert _view is not None, "the heavy process did not start"
    loop, view, database = _view
    database.table_rows = request.table_rows
    return loop.run_until_complete(_call(view, request, loop.time() + request.seconds))


async def _call(view: ASGIApp, request: HeavyRequest, deadline: float) -> HeavyAnswer:
    from dicom_db.api.app import DEADLINE

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.query_string,
        "headers": request.headers,
        "client": None,
        "server": None,
        "state": {**request.state, DEADLINE: deadline},
    }
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Future()  # the client never leaves: the worker stays connected to it
        raise AssertionError("unreachable")

    start: Message = {}
    parts: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await view(scope, receive, send)
    return HeavyAnswer(start["status"], list(start.get("headers", [])), b"".join(parts))
