"""Page weight and time to first list of the study browser, in Debian's Chromium against a real `dicom-api`.

Usage (from the repository root, with the project's venv and the dev extras):

    .venv/bin/python bench/bench_browser.py $TMP/bench1m.db --rounds 7

Starts `dicom-api --db sqlite:///DB` on a free port of 127.0.0.1, then, `--rounds` times, opens `/` in a fresh
browser context (empty cache, as on a first visit) and waits for the study list. It reports, as medians: the
time from navigation start to the list being in the document (the page's own `performance.mark`), the
browser's timing of the list's GraphQL request, and the bytes transferred (compressed, headers excluded, from
the Resource Timing entries) and decoded, per file. Every request off the server's origin is counted (it must
be 0); requests are watched, not intercepted, so that the script adds no latency. The first round runs against
a server that has just started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from served import running_api  # noqa: E402

MEASURE = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const entries = [nav, ...performance.getEntriesByType('resource')];
  return entries.map(e => ({name: e.name, type: e.initiatorType, transfer: e.transferSize,
                            decoded: e.decodedBodySize, duration: e.duration}));
}"""


def one_round(browser, base: str) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    off_origin: list[str] = []
    page = context.new_page()
    # Watched, not intercepted: interception would add a round trip to this script per request. The page's
    # Content-Security-Policy keeps the browser on the origin; any attempt elsewhere still shows up here.
    page.on("request", lambda r: None if r.url.startswith(base) else off_origin.append(r.url))
    page.goto(f"{base}/", wait_until="commit")
    page.locator("table.studies tbody tr").first.wait_for(timeout=60_000)
    # The page marks the moment it has put the list in the document (User Timing), in ms from navigation start.
    first_list_ms = page.evaluate("() => performance.getEntriesByName('dicom-db:list')[0].startTime")
    summary = page.locator("#summary").inner_text()
    entries = page.evaluate(MEASURE)
    context.close()
    graphql = [e for e in entries if e["name"].endswith("/graphql")]
    return {
        "first_list_ms": first_list_ms,
        "graphql_ms": graphql[0]["duration"] if graphql else float("nan"),
        "transfer": sum(e["transfer"] for e in entries),
        "decoded": sum(e["decoded"] for e in entries),
        "files": {e["name"].removeprefix(base): (e["transfer"], e["decoded"]) for e in entries},
        "off_origin": off_origin,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium"))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("bench_browser: no Chromium (apt-get install chromium)")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_browser_api.log"
    with running_api(args.db, log) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        started = time.perf_counter()
        rounds = [one_round(browser, base) for _ in range(args.rounds)]
        browser.close()
    first, rest = rounds[0], rounds[1:] or rounds
    print(
        f"database: {args.db} ({args.db.stat().st_size / 1e6:.0f} MB); {len(rounds)} rounds in "
        f"{time.perf_counter() - started:.1f} s; list: {first['summary']}"
    )
    print(f"requests off the origin: {sum(len(r['off_origin']) for r in rounds)}")
    print()
    print("| | first round (server just started) | median of the other rounds |")
    print("| --- | ---: | ---: |")
    print(
        f"| time to first list | {first['first_list_ms']:.0f} ms | "
        f"{statistics.median(r['first_list_ms'] for r in rest):.0f} ms |"
    )
    print(
        f"| of which the list's GraphQL request | {first['graphql_ms']:.0f} ms | "
        f"{statistics.median(r['graphql_ms'] for r in rest):.0f} ms |"
    )
    print(
        f"| bytes transferred (compressed) | {first['transfer'] / 1e3:.1f} kB | "
        f"{statistics.median(r['transfer'] for r in rest) / 1e3:.1f} kB |"
    )
    print(
        f"| bytes decoded | {first['decoded'] / 1e3:.1f} kB | "
        f"{statistics.median(r['decoded'] for r in rest) / 1e3:.1f} kB |"
    )
    print()
    print("| file | transferred | decoded |")
    print("| --- | ---: | ---: |")
    for name, (transfer, decoded) in first["files"].items():
        print(f"| `{name}` | {transfer / 1e3:.1f} kB | {decoded / 1e3:.1f} kB |")


if __name__ == "__main__":
    main()
