"""Availability under abuse: normal clients beside hostile ones, against a real `dicom-api` on 127.0.0.1.

Usage (from the repository root, with the project's venv; the database as the API benchmark builds it):

    .venv/bin/python bench/make_api_db.py $TMP/bench100k.db $TMP/bench1m.db --slices 1000000
    .venv/bin/python bench/bench_abuse.py $TMP/bench1m.db [--clients 50] [--abusers 4] [--duration 30] \\
        [--workers 2] [--scaling 1,2] [--json out.json]

What it does, all on loopback, bounded in time:

1. starts `dicom-api --workers W` over the database and waits for /readyz;
2. runs --clients normal clients (the query mix of bench/load_test.py: nested trees, lookups, filters, facets,
   paging; one keep-alive connection each) for --duration seconds, while a probe asks /healthz on a new
   connection every 50 ms (as an orchestrator's liveness probe does): the run without abuse;
3. runs the same again with --abusers hostile clients added, each sending in turn: a CPU-heavy query (40
   aliases of 1,000 slices with their parents: it runs into the time limit), 50 aliases of nested `groupBy`,
   an `in` of 1,000,000 values (a body over the size limit), an `or` of 9,000 filters, 15 nested `not`,
   forged cursors and malformed bodies;
4. for each of --scaling's worker counts, starts a server and runs the normal clients alone: requests/s.

It prints, per run: /healthz p50/p99, the normal clients' requests, p50/p99, failures (HTTP status other than
200, GraphQL errors, transport errors or timeouts), requests/s, the server's peak memory (RSS of the supervisor
and its workers, summed, sampled every 0.2 s), and the hostile answers by code. Exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import sys
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
    """A real `dicom-api` with `workers` processes (tests/api_helpers.py starts and stops it), and its memory."""

    def __init__(self, db: Path, workers: int, log: Path) -> None:
        level = os.environ.get("BENCH_SERVER_LOG_LEVEL", "warning")
        super().__init__(f"sqlite:///{db}", "--workers", str(workers), "--log-level", level, log=log)
        self.peak_rss = 0

    def rss(self) -> int:
        """Bytes of resident memory of the supervisor and its workers."""
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            pids += [int(c) for c in children]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total


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
    requests = hostile_requests()
    random.Random(seed).shuffle(requests)
    async with httpx.AsyncClient(timeout=120) as client:
        index = 0
        while time.monotonic() < stop:
            name, body = requests[index % len(requests)]
            index += 1
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
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


async def health_probe(url: str, stop: float, out: list[float], failures: list[int]) -> None:
    while time.monotonic() < stop:
        start = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=30) as client:  # a new connection each time, as a probe does
                ok = (await client.get(f"{url}/healthz")).status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append(time.monotonic() - start)
        if not ok:
            failures[0] += 1
        await asyncio.sleep(0.05)


async def memory_sampler(server: Server, stop: float) -> None:
    while time.monotonic() < stop:
        server.peak_rss = max(server.peak_rss, server.rss())
        await asyncio.sleep(0.2)


async def run(server: Server, db: Path, clients: int, abusers: int, duration: float) -> dict[str, Any]:
    smp = samples(db, random.Random(7), "full")
    stop = time.monotonic() + duration
    normal: dict[str, Any] = {"latency": [], "failures": 0, "reasons": Counter()}
    health: list[float] = []
    health_failures = [0]
    codes: Counter[str] = Counter()
    hostile_seconds: dict[str, list[float]] = {}
    server.peak_rss = 0
    cpu = os.times()
    tasks = [normal_client(server.url, stop, i, smp, normal) for i in range(clients)]
    tasks += [hostile_client(server.url, stop, codes, hostile_seconds, 1000 + i) for i in range(abusers)]
    tasks += [health_probe(server.url, stop, health, health_failures), memory_sampler(server, stop)]
    start = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    after = os.times()
    return {
        "clients": clients,
        "abusers": abusers,
        "seconds": round(elapsed, 1),
        "healthz": {
            "probes": len(health),
            "failures": health_failures[0],
            "p50_ms": round(percentile(health, 50) * 1000, 1),
            "p99_ms": round(percentile(health, 99) * 1000, 1),
            "max_ms": round(max(health, default=float("nan")) * 1000, 1),
        },
        "normal": {
            "requests": len(normal["latency"]),
            "failures": normal["failures"],
            "p50_ms": round(percentile(normal["latency"], 50) * 1000, 1),
            "p99_ms": round(percentile(normal["latency"], 99) * 1000, 1),
            "requests_per_s": round(len(normal["latency"]) / elapsed, 1),
            "failure_reasons": dict(normal["reasons"]),
        },
        "hostile": dict(sorted(codes.items())),
        "hostile_max_seconds": {k: round(max(v), 2) for k, v in sorted(hostile_seconds.items())},
        "server_peak_rss_mb": round(server.peak_rss / 2**20),
        "client_cpu_s": round(after.user - cpu.user + after.system - cpu.system, 1),
    }


def report(name: str, result: dict[str, Any]) -> None:
    h, n = result["healthz"], result["normal"]
    print(
        f"{name}: /healthz p50 {h['p50_ms']} ms p99 {h['p99_ms']} ms max {h['max_ms']} ms ({h['probes']} probes, "
        f"{h['failures']} failed); normal {n['requests']} requests, p50 {n['p50_ms']} ms p99 {n['p99_ms']} ms, "
        f"{n['failures']} failed, {n['requests_per_s']} req/s; server peak RSS {result['server_peak_rss_mb']} MB",
        flush=True,
    )
    for reason, count in n["failure_reasons"].items():
        print(f"    failed {count:5d} x {reason}")
    for code, count in result["hostile"].items():
        print(f"    hostile {count:5d} x {code}")
    for name, seconds in result["hostile_max_seconds"].items():
        print(f"    hostile, longest answer: {seconds:6.2f} s for {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path, help="a SQLite database filled by dicom-ingest (or make_api_db.py)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--abusers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scaling", default="1,2", help="worker counts for the requests/s runs ('' for none)")
    parser.add_argument("--scaling-clients", type=int, default=20)
    parser.add_argument("--log", type=Path, default=Path("/tmp/bench_abuse_server.log"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} at start", flush=True)
    results: dict[str, Any] = {"db": str(args.db), "workers": args.workers, "load_at_start": load[0]}
    server = Server(args.db, args.workers, args.log)
    try:
        server.wait_ready()
        asyncio.run(run(server, args.db, 5, 0, 5))  # warm-up: page cache, connections
        results["without abuse"] = asyncio.run(run(server, args.db, args.clients, 0, args.duration))
        report(f"{args.workers} workers, {args.clients} clients, no abuse", results["without abuse"])
        results["with abuse"] = asyncio.run(run(server, args.db, args.clients, args.abusers, args.duration))
        report(f"{args.workers} workers, {args.clients} clients + {args.abusers} abusive", results["with abuse"])
    finally:
        server.stop()
    log_text = args.log.read_text()
    results["tracebacks_in_server_log"] = log_text.count("Traceback")
    print(f"tracebacks in the server's log: {results['tracebacks_in_server_log']}")
    results["scaling"] = {}
    for workers in [int(w) for w in args.scaling.split(",") if w.strip()]:
        server = Server(args.db, workers, args.log)
        try:
            server.wait_ready()
            asyncio.run(run(server, args.db, 5, 0, 3))
            result = asyncio.run(run(server, args.db, args.scaling_clients, 0, args.duration))
        finally:
            server.stop()
        results["scaling"][workers] = result
        report(f"scaling: {workers} workers, {args.scaling_clients} clients", result)
    load = os.getloadavg()
    results["load_at_end"] = load[0]
    print(f"load average {load[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
