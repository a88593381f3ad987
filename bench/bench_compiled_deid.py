"""The two execution paths (`--execution resolvers` and `--execution compiled`) under a de-identified token, side
by side in one run, beside the same cases asked with full access.

Usage (from the repository root, with the project's venv; a generated database, see bench_compiled.py):

    .venv/bin/python bench/bench_compiled_deid.py sqlite:////tmp/b/bench10k.db [--reps 15] [--warmup 3] \\
        [--tree-slices 1000] [--json FILE]

Two in-process apps over the same database (Starlette's TestClient: the whole HTTP, GraphQL and SQL path, no
network), one per execution path, each with a `full` and a `deidentified` token and a pseudonym key. The cases
are bench_compiled.py's latency cases: the tree (one patient, `--tree-slices` slices, 10 fields per slice) and
the walk (the patient with the most slices, every column at every level), asked by each token; the de-identified
token names the patient by its pseudonym, as it was shown it. Before timing, every case's answers are compared
byte for byte between the paths, and the compiled app's counter (`app.state.compiled.outcomes`) must show that
the compiled path answered it itself. Then `--reps` repetitions, the two paths of a repetition back to back, in
alternating order; medians, p90 and the median of per-repetition ratios (compiled/resolvers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from dicom_db.api.app import create_app
from dicom_db.api.auth import AccessLevel, Token
from dicom_db.api.masking import Pseudonyms
from dicom_db.api.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from bench_compiled import PATHS, Case, Floor, latency_cases  # noqa: E402  (the same cases, chosen the same way)

TOKENS = {
    "full": Token("bench-full-token-0123456789abcdef", AccessLevel.FULL, "full"),
    "deidentified": Token("bench-deid-token-0123456789abcdef", AccessLevel.DEIDENTIFIED, "deid"),
}
KEY = b"the benchmark's pseudonym key, 32b"


def post(client: TestClient, token: Token, case: Case, variables: dict[str, Any]) -> tuple[int, bytes]:
    response = client.post(
        "/graphql",
        json={"query": case.query, "variables": variables},
        headers={"Authorization": f"Bearer {token.secret}"},
    )
    return response.status_code, response.content


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def measure(
    clients: dict[str, TestClient], token: Token, case: Case, variables: dict[str, Any], reps: int, warmup: int
) -> dict[str, Any]:
    outcomes = clients["compiled"].app.state.compiled.outcomes  # type: ignore[attr-defined]
    before = outcomes["compiled"]
    answers = {path: post(client, token, case, variables) for path, client in clients.items()}
    status, body = answers["resolvers"]
    if status != 200 or b'"errors"' in body:
        raise SystemExit(f"{case.name} ({token.level.name}): status {status}, {body[:300]!r}")
    if answers["resolvers"] != answers["compiled"]:
        raise SystemExit(f"{case.name} ({token.level.name}): the paths answer differently")
    if outcomes["compiled"] != before + 1:
        raise SystemExit(f"{case.name} ({token.level.name}): not compiled: {dict(outcomes)}")
    for _ in range(warmup):
        for client in clients.values():
            post(client, token, case, variables)
    samples: dict[str, list[float]] = {path: [] for path in PATHS}
    for rep in range(reps):
        for path in PATHS if rep % 2 == 0 else PATHS[::-1]:
            started = time.perf_counter()
            status, _ = post(clients[path], token, case, variables)
            samples[path].append(time.perf_counter() - started)
            assert status == 200
    ratios = [c / r for c, r in zip(samples["compiled"], samples["resolvers"], strict=True)]
    out: dict[str, Any] = {"bytes": len(body)}
    for path in PATHS:
        values = sorted(samples[path])
        out[path] = {"median_ms": _ms(statistics.median(values)), "p90_ms": _ms(values[int(len(values) * 0.9)])}
    out["compiled/resolvers"] = round(statistics.median(ratios), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the database URL (sqlite:///FILE or postgresql://...)")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions of each case (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--tree-slices", type=int, default=1000, help="slices of the tree case (default 1000)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    floor = Floor(args.url)
    try:
        cases = latency_cases(floor, args.tree_slices)
    finally:
        floor.close()
    pseudonyms = Pseudonyms(KEY)
    report: dict[str, Any] = {"url": args.url, "reps": args.reps, "load_start": os.getloadavg(), "cases": {}}
    settings = {"database_url": args.url, "tokens": tuple(TOKENS.values()), "pseudonym_key": KEY}
    apps = {path: TestClient(create_app(Settings(execution=path, **settings))) for path in PATHS}
    with apps["resolvers"] as resolvers, apps["compiled"] as compiled:
        clients = {"resolvers": resolvers, "compiled": compiled}
        for case in cases:
            for level, token in TOKENS.items():
                variables = dict(case.variables)
                if level != "full":  # the patient as this token knows it
                    variables["patientId"] = pseudonyms(variables["patientId"])
                result = measure(clients, token, case, variables, args.reps, args.warmup)
                report["cases"][f"{case.name} {level}"] = {"rows": case.rows, **result}
                print(f"{case.name} {level}: {result}", flush=True)
    report["load_end"] = os.getloadavg()
    print()
    print("| case | token | resolvers (ms) | compiled (ms) | compiled/resolvers |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, entry in report["cases"].items():
        case_name, level = name.split(" ")
        print(
            f"| {case_name} | {level} | {entry['resolvers']['median_ms']} | {entry['compiled']['median_ms']} "
            f"| {entry['compiled/resolvers']} |"
        )
    print(f"\nload average: {report['load_start'][0]:.2f} at start, {report['load_end'][0]:.2f} at end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
