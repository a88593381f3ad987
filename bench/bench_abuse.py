"""Availability under abuse: normal clients beside hostile ones, against a real `dicom-api` on 127.0.0.1.

Usage (from the repository root, with the project's venv; the database as the API benchmark builds it):

    .venv/bin/python bench/make_api_db.py $TMP/bench100k.db $TMP/bench1m.db --slices 1000000
    .venv/bin/python bench/bench_abuse.py $TMP/bench1m.db [--clients 50] [--abusers 4] [--duration 30] \\
        [--workers 2] [--variant NAME=SERVER_ARGS ...] [--rounds 1] [--scaling 1,2,4] [--json out.json]

What it does, all on loopback, bounded in time:

1. for each --variant (default: one, `default=`, the server's defaults; e.g. `--variant "in-worker=--heavy-processes
   0" --variant default=` compares two configurations in one run), --rounds times, in turn: starts
   `dicom-api --workers W SERVER_ARGS` over the database and waits for /readyz;
2. runs --clients normal clients (the query mix of bench/load_test.py: nested trees, lookups, filters, facets,
   paging; one keep-alive connection each) for --duration seconds, while a probe asks /healthz on a new
   connection every 50 ms (as an orchestrator's liveness probe does): the run without abuse;
3. runs the same again with --abusers hostile clients added, each sending in turn: a CPU-heavy query (40
   aliases of 1,000 slices with their parents: it runs into the time limit), 50 aliases of nested `groupBy`,
   an `in` of 1,000,000 values (a body over the size limit), an `or` of 9,000 filters, 15 nested `not`,
   forged cursors and malformed bodies;
4. for each of --scaling's worker counts, starts a server with the first variant's arguments and measures
   requests/s with `wrk` (C, so that the load generator takes little of the CPU it measures): --scaling-clients
   connections sending the normal clients' mix (200 requests built from it, in turn), for --duration seconds.
   Without `wrk` on the PATH it says so and skips this step.

The normal clients run in this process; the /healthz probe and the hostile clients each in a process of their
own, so that neither the probe's timing nor the normal clients' waits on the other clients' Python (a hostile
body of 6 MB is encoded once, not at every send). They all still share the machine's cores with the server.

It prints, per run: /healthz p50/p99/max, the normal clients' requests, p50/p99/max, failures (HTTP status other
than 200, GraphQL errors, transport errors or timeouts), requests/s, the server's peak memory and CPU seconds (the
supervisor, its workers and their heavy processes; memory summed, sampled every 0.2 s), the load average before
and after, the hostile answers by code and the longest of each kind, and how many requests of any client took
longer than the server's time limit + 1 s. Exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import ClientState, mix, samples  # noqa: E402  (the same normal clients as the load test)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from api_helpers import ApiProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Server(ApiProcess):
    """A real `dicom-api` with `workers` processes (tests/api_helpers.py starts and stops it), its memory and CPU."""

    def __init__(self, db: Path, workers: int, log: Path, args: list[str] | None = None) -> None:
        level = os.environ.get("BENCH_SERVER_LOG_LEVEL", "warning")
        super().__init__(f"sqlite:///{db}", "--workers", str(workers), "--log-level", level, *(args or []), log=log)
        self.peak_rss = 0
        self.timeout = 30.0
        if "--timeout" in (args or []):
            self.timeout = float(args[args.index("--timeout") + 1])  # type: ignore[index]

    def pids(self) -> list[int]:
        """The supervisor and its descendants (workers, their heavy processes)."""
        pids, index = [self.proc.pid], 0
        while index < len(pids):
            pid = pids[index]
            index += 1
            with contextlib.suppress(OSError):
                pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return pids

    def rss(self) -> int:
        """Bytes of resident memory of the supervisor and its descendants."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def cpu_seconds(self) -> float:
        """CPU seconds of the supervisor and its live descendants, plus those their ended children left."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")


# Hostile requests: (name, method, body bytes or JSON, headers)


def hostile_requests() -> list[tuple[str, Any]]:
    heavy = " ".join(
        f"a{i}: allSlices(first: 1000) {{ nodes {{ sopInstanceUid sliceLocation imagePositionPatient raw "
        "series { raw study { raw patient { raw } } } } }"
        for i in range(40)
    )
    groups = " ".join(
        f"g{i}: allSeries(first: 1000) {{ nodes {{ slices {{ groupBy(field: SLICE_LOCATION) {{ value count }} }} }} }}"
        for i in range(50)
    )
    deep: dict[str, Any] = {"modality": {"eq": "CT"}}
    for _ in range(15):
        deep = {"not": deep}
    cursor = base64.urlsafe_b64encode(b'["c1","+SliceID",[99999999999999999999999]]').decode().rstrip("=")
    series_where = "query($w: SeriesWhere) { allSeries(where: $w) { totalCount } }"
    return [
        ("heavy CPU (40 aliases x 1,000 slices)", {"query": "{ " + heavy + " }"}),
        ("50 aliases of nested groupBy", {"query": "{ " + groups + " }"}),
        (
            "in of 1,000,000 values",
            {"query": series_where, "variables": {"w": {"modality": {"in": ["CT"] * 1_000_000}}}},
        ),
        (
            "or of 9,000 filters",
            {"query": series_where, "variables": {"w": {"or": [{"modality": {"eq": "CT"}}] * 9000}}},
        ),
        ("15 nested not", {"query": series_where, "variables": {"w": deep}}),
        (
            "forged cursor",
            {"query": f'{{ allSlices(first: 5, after: "{cursor}") {{ nodes {{ sliceId }} }} }}'},
        ),
        ("body null", b"null"),
        ("invalid UTF-8", b'{"query": "\xff"}'),
        ("JSON 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
        ("batch array", b'[{"query": "{ __typename }"}]'),
    ]


async def hostile_client(
    url: str, stop: float, codes: Counter[str], seconds: dict[str, list[float]], seed: int
) -> None:
    requests = [(name, body if isinstance(body, bytes) else json.dumps(body).encode()) for name, body in HOSTILE]
    random.Random(seed).shuffle(requests)
    async with httpx.AsyncClient(timeout=120) as client:
        index = 0
        while time.monotonic() < stop:
            name, content = requests[index % len(requests)]
            index += 1
            start = time.monotonic()
            try:
                response = await client.post(
                    f"{url}/graphql", content=content, headers={"content-type": "application/json"}
                )
                try:
                    code = response.json()["errors"][0]["extensions"]["code"]
                except (ValueError, KeyError, IndexError, TypeError):
                    code = f"HTTP {response.status_code}, no error" if response.status_code == 200 else "no code"
            except httpx.HTTPError as exc:
                code = f"transport: {type(exc).__name__}"
            codes[f"{name}: {code}"] += 1
            seconds.setdefault(name, []).append(time.monotonic() - start)


HOSTILE: list[tuple[str, Any]] = []


def hostile_process(url: str, abusers: int, start: Any, out: Any) -> None:
    """The hostile clients, in a process of their own: ready, they wait for the time to stop from `start`, and
    put their answers' codes and times to `out` (queues)."""
    HOSTILE.extend(hostile_requests())
    out.put("ready")
    stop = start.get()
    codes: Counter[str] = Counter()
    seconds: dict[str, list[float]] = {}

    async def all_clients() -> None:
        await asyncio.gather(*(hostile_client(url, stop, codes, seconds, 1000 + i) for i in range(abusers)))

    cpu = os.times()
    asyncio.run(all_clients())
    after = os.times()
    out.put((dict(codes), seconds, after.user - cpu.user + after.system - cpu.system))


async def normal_client(url: str, stop: float, seed: int, smp: Any, out: dict[str, Any]) -> None:
    state = ClientState(random.Random(seed))
    kinds = mix()
    weights = [w for _, w, _ in kinds]
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < stop:
            kind, _, build = state.rng.choices(kinds, weights)[0]
            query, variables = build(smp, state)
            start = time.monotonic()
            reason = None
            try:
                response = await client.post(f"{url}/graphql", json={"query": query, "variables": variables})
                body = response.json()
                if response.status_code != 200 or "errors" in body:
                    codes = {e.get("extensions", {}).get("code") for e in body.get("errors", [])}
                    reason = f"HTTP {response.status_code} {sorted(map(str, codes))}"
            except (httpx.HTTPError, ValueError) as exc:
                reason = type(exc).__name__
            out["latency"].append(time.monotonic() - start)
            if reason is not None:
                out["failures"] += 1
                out["reasons"][f"{kind}: {reason}"] += 1


def health_probe(url: str, start: Any, out: Any) -> None:
    """In a process of its own: GET /healthz on a new connection every 50 ms until the time `start` gives; the
    times and failures to `out`."""
    out.put("ready")
    stop = start.get()
    times: list[float] = []
    failures = 0
    host, port = url.removeprefix("http://").split(":")
    while time.monotonic() < stop:
        start = time.monotonic()
        # A new connection each time, as a probe does; http.client, whose set-up costs next to nothing (an
        # httpx client builds an SSL context, tens of milliseconds of CPU that would be timed as the server's).
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", "/healthz")
            ok = connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            connection.close()
        times.append(time.monotonic() - start)
        failures += not ok
        time.sleep(0.05)
    out.put((times, failures))


SPAWN = multiprocessing.get_context("spawn")


async def normal_clients(url: str, smp: Any, clients: int, stop: float, out: dict[str, Any]) -> None:
    await asyncio.gather(*(normal_client(url, stop, i, smp, out) for i in range(clients)))


async def sample_memory(server: Server, stop: float) -> None:
    while time.monotonic() < stop:
        server.peak_rss = max(server.peak_rss, server.rss())
        await asyncio.sleep(0.2)


def run(server: Server, db: Path, clients: int, abusers: int, duration: float) -> dict[str, Any]:
    smp = samples(db, random.Random(7), "full")
    normal: dict[str, Any] = {"latency": [], "failures": 0, "reasons": Counter()}
    server.peak_rss = 0
    health_out, hostile_out, go = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Queue()
    others = [SPAWN.Process(target=health_probe, args=(server.url, go, health_out))]
    if abusers:
        others.append(SPAWN.Process(target=hostile_process, args=(server.url, abusers, go, hostile_out)))
    for process in others:
        process.start()
    for out in (health_out, hostile_out)[: len(others)]:  # started (imports done): all begin together
        assert out.get(timeout=300) == "ready"
    load_before = os.getloadavg()[0]
    server_cpu = server.cpu_seconds()
    cpu = os.times()
    start = time.monotonic()
    stop = start + duration  # the same clock in every process (CLOCK_MONOTONIC)
    for _ in others:
        go.put(stop)

    async def clients_and_memory() -> None:
        await asyncio.gather(normal_clients(server.url, smp, clients, stop, normal), sample_memory(server, stop))

    asyncio.run(clients_and_memory())
    elapsed = time.monotonic() - start
    after = os.times()
    health, health_failures = health_out.get(timeout=300)
    codes, hostile_seconds, hostile_cpu = hostile_out.get(timeout=300) if abusers else ({}, {}, 0.0)
    for process in others:
        process.join()
    limit = server.timeout + 1
    overran = sum(t > limit for t in normal["latency"]) + sum(t > limit for v in hostile_seconds.values() for t in v)
    return {
        "clients": clients,
        "abusers": abusers,
        "seconds": round(elapsed, 1),
        "healthz": {
            "probes": len(health),
            "failures": health_failures,
            "p50_ms": round(percentile(health, 50) * 1000, 1),
            "p99_ms": round(percentile(health, 99) * 1000, 1),
            "max_ms": round(max(health, default=float("nan")) * 1000, 1),
        },
        "normal": {
            "requests": len(normal["latency"]),
            "failures": normal["failures"],
            "p50_ms": round(percentile(normal["latency"], 50) * 1000, 1),
            "p99_ms": round(percentile(normal["latency"], 99) * 1000, 1),
            "max_ms": round(max(normal["latency"], default=float("nan")) * 1000, 1),
            "requests_per_s": round(len(normal["latency"]) / elapsed, 1),
            "failure_reasons": dict(normal["reasons"]),
        },
        "hostile": dict(sorted(codes.items())),
        "hostile_max_seconds": {k: round(max(v), 2) for k, v in sorted(hostile_seconds.items())},
        "over_time_limit_plus_1s": overran,
        "server_peak_rss_mb": round(server.peak_rss / 2**20),
        "server_cpu_s": round(server.cpu_seconds() - server_cpu, 1),
        "client_cpu_s": round(after.user - cpu.user + after.system - cpu.system, 1),
        "hostile_client_cpu_s": round(hostile_cpu, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def report(name: str, result: dict[str, Any]) -> None:
    h, n = result["healthz"], result["normal"]
    print(
        f"{name}: /healthz p50 {h['p50_ms']} ms p99 {h['p99_ms']} ms max {h['max_ms']} ms ({h['probes']} probes, "
        f"{h['failures']} failed); normal {n['requests']} requests, p50 {n['p50_ms']} ms p99 {n['p99_ms']} ms "
        f"max {n['max_ms']} ms, {n['failures']} failed, {n['requests_per_s']} req/s; over the time limit + 1 s: "
        f"{result['over_time_limit_plus_1s']}; server peak RSS {result['server_peak_rss_mb']} MB, CPU "
        f"{result['server_cpu_s']} s; clients' CPU {result['client_cpu_s']} s, hostile clients' "
        f"{result['hostile_client_cpu_s']} s; load {result['load_before']} -> {result['load_after']}",
        flush=True,
    )
    for reason, count in n["failure_reasons"].items():
        print(f"    failed {count:5d} x {reason}")
    for code, count in result["hostile"].items():
        print(f"    hostile {count:5d} x {code}")
    for name, seconds in result["hostile_max_seconds"].items():
        print(f"    hostile, longest answer: {seconds:6.2f} s for {name}")


WRK_SCRIPT = """
local bodies = {%s}
local i = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) errors = 0 end
function request()
  i = i %% #bodies + 1
  return wrk.format("POST", "/graphql", {["Content-Type"] = "application/json"}, bodies[i])
end
function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then errors = errors + 1 end
end
function done(summary, latency, requests)
  local e = 0
  for _, t in ipairs(threads) do e = e + t:get("errors") end
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d\\n", summary.requests, e, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(db: Path, folder: Path) -> Path:
    """A wrk script sending 200 requests of the normal clients' mix in turn (and counting those with errors)."""
    smp = samples(db, random.Random(7), "full")
    state = ClientState(random.Random(11))
    kinds = mix()
    weights = [w for _, w, _ in kinds]
    bodies = []
    for _ in range(200):
        _, _, build = state.rng.choices(kinds, weights)[0]
        query, variables = build(smp, state)
        bodies.append("[==[" + json.dumps({"query": query, "variables": variables}) + "]==]")
    path = folder / "mix.lua"
    path.write_text(WRK_SCRIPT % ", ".join(bodies))
    return path


def wrk(server: Server, script: Path, connections: int, duration: float) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    server_cpu = server.cpu_seconds()
    command = ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "60s", "-s", str(script)]
    output = subprocess.run([*command, server.url], capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    requests, errors, micros, p50, p99, longest = (int(v) for v in line.split()[1:])
    return {
        "connections": connections,
        "requests": requests,
        "errors": errors,
        "requests_per_s": round(requests / (micros / 1e6), 1),
        "p50_ms": round(p50 / 1000, 1),
        "p99_ms": round(p99 / 1000, 1),
        "max_ms": round(longest / 1000, 1),
        "server_cpu_s": round(server.cpu_seconds() - server_cpu, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path, help="a SQLite database filled by dicom-ingest (or make_api_db.py)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--abusers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=SERVER_ARGS",
        help="a server configuration to measure, e.g. 'in-worker=--heavy-processes 0' (repeatable; default: "
        "'default=', the server's defaults)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times each variant is measured, in turn")
    parser.add_argument("--scaling", default="1,2", help="worker counts for the requests/s runs ('' for none)")
    parser.add_argument("--scaling-clients", type=int, default=20, help="wrk's connections")
    parser.add_argument("--log", type=Path, default=Path("/tmp/bench_abuse_server.log"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = [v.partition("=") for v in args.variant or ["default="]]

    load = os.getloadavg()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} at start", flush=True)
    results: dict[str, Any] = {"db": str(args.db), "workers": args.workers, "load_at_start": load[0], "runs": []}
    tracebacks = 0
    for round_ in range(1, args.rounds + 1):
        for name, _, server_args in variants:
            server = Server(args.db, args.workers, args.log, shlex.split(server_args))
            try:
                server.wait_ready()
                run(server, args.db, 5, 0, 5)  # warm-up: page cache, connections
                for abusers in (0, args.abusers):
                    result = run(server, args.db, args.clients, abusers, args.duration)
                    result.update(variant=name, server_args=server_args, round=round_)
                    results["runs"].append(result)
                    report(
                        f"[{name}, round {round_}] {args.workers} workers, {args.clients} clients, {abusers} abusive",
                        result,
                    )
            finally:
                server.stop()
            tracebacks += args.log.read_text().count("Traceback")
    results["tracebacks_in_server_log"] = tracebacks
    print(f"tracebacks in the server's log: {tracebacks}")
    results["scaling"] = {}
    worker_counts = [int(w) for w in args.scaling.split(",") if w.strip()]
    if worker_counts and shutil.which("wrk") is None:
        print("scaling: wrk is not on the PATH (apt-get install wrk): skipped")
        worker_counts = []
    with tempfile.TemporaryDirectory() as folder:
        script = wrk_script(args.db, Path(folder)) if worker_counts else None
        for workers in worker_counts:
            server = Server(args.db, workers, args.log, shlex.split(variants[0][2]))
            try:
                server.wait_ready()
                run(server, args.db, 5, 0, 3)
                result = wrk(server, script, args.scaling_clients, args.duration)  # type: ignore[arg-type]
            finally:
                server.stop()
            results["scaling"][workers] = result
            print(
                f"scaling: {workers} workers, wrk {args.scaling_clients} connections: {result['requests_per_s']} "
                f"req/s, p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms max {result['max_ms']} ms, "
                f"{result['errors']} of {result['requests']} with errors; server CPU {result['server_cpu_s']} s; "
                f"load {result['load_before']} -> {result['load_after']}",
                flush=True,
            )
    load = os.getloadavg()
    results["load_at_end"] = load[0]
    print(f"load average {load[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
