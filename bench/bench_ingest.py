"""Measure `dicom-ingest` against a bare pydicom parse loop over the same files, side by side.

Usage (from the repository root, with the project's venv):

    .venv/bin/python bench/bench_ingest.py CORPUS [CORPUS ...] [--jobs N] [--rounds 3] [--json FILE]

For each corpus folder it first walks the tree once (sorted list of regular files; the walk is timed on its
own and NOT included in the bare loop's time) and reads every file once in full so that the page cache holds
the whole corpus: every measurement then reads from RAM. Then, for `--rounds` rounds, alternating which side
goes first, it measures:

  (a) bare:    `pydicom.dcmread(f, stop_before_pixels=True)` over the walked file list in a fork Pool of N
               processes (pool start-up included; same `imap` and chunk size as the ingest's pool);
  (s) bare script: the same loop as a script a user would write, run as a subprocess and timed end to end
               (interpreter start, `import pydicom`, os.walk, the pool): what (b) pays for start-up, the bare
               side pays too. (a) is the strict yardstick; (s) shows how much of the gap on small trees is
               start-up that any pydicom-based tool pays;
  (r) reader:  the same pool loop calling the ingest's own `ingest.reader.read_file` (header parse plus the
               conversion to row values), without any database: a diagnostic that splits the gap between
               (a) and (b) into worker-side and parent-side costs (skip with --no-reader);
  (b) ingest:  `dicom-ingest CORPUS --db sqlite:///fresh.db --jobs N --quiet` as a subprocess, timed end to end
               (interpreter start, imports, schema, walk, parse, write, summary);
  (c) re-run:  the same command again over the unchanged tree (every file skipped by path, size and mtime).

It prints a markdown table of medians (files/s, ingest/bare ratio, first-run/re-run speedup) and the
per-round seconds; `--json FILE` also writes every measurement. The ratio and the speedup are computed per
round (the two sides ran back to back) and the median of those is reported. It also records the CPU seconds
of every measurement (user + system of all its processes, from getrusage of the waited-for children) and the
CPU ratio bare/ingest, which the load of other processes on a shared machine barely moves. Databases go to a
temporary folder (`--workdir`) and are deleted.

`--cold` (root only) measures from disk instead: it drops the page cache (`sync; echo 3 >
/proc/sys/vm/drop_caches`) before each of bare, bare script, reader only and ingest, and skips the warm-up read.
The re-run follows its first run without a drop (the first run has just read the tree's metadata).

`--postgres URL` (a server's admin database, e.g. postgresql://postgres@127.0.0.1:5432/test) has the ingest
write into a fresh PostgreSQL database on that server each round (`bench_ingest_tmp`, created and dropped)
instead of a SQLite file. The server's own CPU is not counted in the ingest's CPU seconds.

`--ingest-src DIR` measures the `ingest` package found in DIR (a patched copy of the repository, say) instead
of the installed one, for both (r) and (b)/(c): the way to measure a proposed change without touching the tree.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pydicom

SUMMARY = re.compile(
    r"(?P<found>\d+) files found, (?P<ingested>\d+) ingested, (?P<unchanged>\d+) unchanged, "
    r"(?P<duplicates>\d+) duplicates, (?P<not_dicom>\d+) not DICOM, (?P<failed>\d+) failed.* in (?P<seconds>[\d.]+) s"
)


@dataclass
class Round:
    bare_s: float
    reader_s: float | None
    ingest_s: float
    ingest_internal_s: float  # the "in X s" of dicom-ingest's summary: file index, skip, parse, write
    rerun_s: float
    rerun_internal_s: float
    bare_first: bool
    # CPU seconds (user + system) of every process of the measurement: the pool workers for bare and reader,
    # the dicom-ingest process and its workers for ingest. Other load on the machine barely changes them.
    bare_cpu: float = 0.0
    reader_cpu: float | None = None
    ingest_cpu: float = 0.0
    rerun_cpu: float = 0.0
    script_s: float | None = None  # the bare loop as a script, end to end (subprocess)


@dataclass
class Result:
    corpus: str
    files: int
    jobs: int
    walk_s: float
    warm_read_s: float
    warm_bytes: int
    startup_s: float  # median wall time of `dicom-ingest --help`: interpreter start and imports
    summary_first: dict[str, int] = field(default_factory=dict)
    summary_rerun: dict[str, int] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)

    def median(self, fn: Callable[[Round], float | None]) -> float | None:
        values = [v for v in map(fn, self.rounds) if v is not None]
        return statistics.median(values) if values else None

    def rate(self, fn: Callable[[Round], float | None]) -> float | None:
        seconds = self.median(fn)
        return self.files / seconds if seconds else None

    @property
    def ratio(self) -> float | None:
        """Median over rounds of (ingest files/s) / (bare files/s), both on the same files."""
        return self.median(lambda r: r.bare_s / r.ingest_s)

    @property
    def cpu_ratio(self) -> float | None:
        """Median over rounds of bare CPU seconds / ingest CPU seconds: the ratio with the noise taken out."""
        return self.median(lambda r: r.bare_cpu / r.ingest_cpu if r.ingest_cpu else None)

    @property
    def script_ratio(self) -> float | None:
        """Median over rounds of (ingest files/s) / (bare script files/s): both end to end."""
        return self.median(lambda r: r.script_s / r.ingest_s if r.script_s else None)

    @property
    def reader_ratio(self) -> float | None:
        return self.median(lambda r: r.bare_s / r.reader_s if r.reader_s else None)

    @property
    def speedup(self) -> float | None:
        """Median over rounds of first-run seconds / re-run seconds."""
        return self.median(lambda r: r.ingest_s / r.rerun_s)


# ------------------------------------------------------------------------------------------ pool workers


def _quiet() -> None:
    warnings.simplefilter("ignore")


def _bare(path: str) -> bool:
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False  # not DICOM or broken: counted, as the ingest also tries and reports such files
    return True


def _reader_init() -> None:
    _quiet()
    import dicom_db.ingest.reader  # noqa: F401  (imported in the worker: the parent's bare loop keeps pydicom's defaults)


def _reader(path: str) -> bool:
    from dicom_db.ingest.reader import read_file

    return read_file(path).status == "dicom"


def _chunksize(n: int, jobs: int) -> int:
    return max(1, min(32, n // (jobs * 8)))  # what ingest/pipeline.py uses


def children_cpu() -> float:
    """CPU seconds used so far by this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    """CPU seconds used so far by this process (all threads: the pool's task and result handlers too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pool_loop(
    files: Sequence[str], jobs: int, fn: Callable[[str], bool], init: Callable[[], None]
) -> tuple[float, float]:
    """(wall, CPU) seconds to run `fn` over `files` in a fresh fork pool of `jobs` processes.

    CPU counts the workers and this process (which feeds the pool and collects results), as the ingest's CPU
    counts its parent and its workers.
    """
    cpu = children_cpu() + own_cpu()
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(jobs, initializer=init) as pool:
        for _ in pool.imap(fn, files, chunksize=_chunksize(len(files), jobs)):
            pass
        pool.close()
        pool.join()  # reap the workers, so that their CPU time is counted
    return time.perf_counter() - start, children_cpu() + own_cpu() - cpu


# The bare loop as a user would write it: walk, then dcmread in a pool; run as `python -c BARE_SCRIPT DIR JOBS`.
BARE_SCRIPT = """
import multiprocessing, os, sys, warnings
import pydicom

def read(path):
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False
    return True

warnings.simplefilter("ignore")
files = sorted(os.path.join(d, n) for d, _, names in os.walk(sys.argv[1]) for n in names)
jobs = int(sys.argv[2])
with multiprocessing.get_context("fork").Pool(jobs) as pool:
    for _ in pool.imap(read, files, chunksize=max(1, min(32, len(files) // (jobs * 8)))):
        pass
"""


def bare_script(corpus: str, jobs: int) -> float:
    """Wall seconds of the bare loop as a script, from interpreter start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_SCRIPT, os.path.abspath(corpus), str(jobs)], check=True)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ ingest


# Set by --ingest-src: a folder holding another `ingest` package (e.g. a patched copy) to measure instead of the
# installed one. The editable install's import hook is removed so that this folder wins.
INGEST_SRC: str | None = None
# The folder is made the package `dicom_db` (what the install does), and also put on sys.path so that a snapshot
# from before the package had that name (whose modules import `ingest.*`) runs too.
_LAUNCHER = (
    "import sys, types; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
    "pkg = types.ModuleType('dicom_db'); pkg.__path__ = [{src!r}]; sys.modules['dicom_db'] = pkg; "
    "sys.path.insert(0, {src!r}); from dicom_db.ingest.cli import main; main()"
)


def use_ingest_src(src: str) -> None:
    global INGEST_SRC
    INGEST_SRC = os.path.abspath(src)
    if not os.path.isfile(os.path.join(INGEST_SRC, "ingest", "reader.py")):
        raise SystemExit(f"--ingest-src {src}: no ingest/reader.py there")
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    package = types.ModuleType("dicom_db")
    package.__path__ = [INGEST_SRC]
    sys.modules["dicom_db"] = package
    sys.path.insert(0, INGEST_SRC)


def ingest_command() -> list[str]:
    if INGEST_SRC:
        return [sys.executable, "-c", _LAUNCHER.format(src=INGEST_SRC)]
    exe = Path(sys.executable).parent / "dicom-ingest"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from dicom_db.ingest.cli import main; main()"]


def run_ingest(corpus: str, url: str, jobs: int) -> tuple[float, dict[str, int], float, float]:
    """(wall seconds, summary counts, the run's own seconds, CPU seconds) of one `dicom-ingest` subprocess."""
    cmd = [*ingest_command(), corpus, "--db", url, "--jobs", str(jobs), "--quiet"]
    cpu = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu
    match = SUMMARY.search(proc.stdout)
    if proc.returncode not in (0, 1) or match is None:
        raise SystemExit(f"dicom-ingest failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    counts = {k: int(v) for k, v in match.groupdict().items() if k != "seconds"}
    return wall, counts, float(match["seconds"]), cpu


class TargetDatabase:
    """Where the ingest writes: a SQLite file in the work folder, or a database on a PostgreSQL server."""

    PG_NAME = "bench_ingest_tmp"
    _drop = f'DROP DATABASE IF EXISTS "{PG_NAME}" WITH (FORCE)'

    def __init__(self, workdir: Path, postgres: str | None) -> None:
        self.file = workdir / "bench.db"
        self.postgres = postgres
        if postgres:
            base = urlsplit(postgres)
            self.url = urlunsplit((base.scheme, base.netloc, f"/{self.PG_NAME}", "", ""))
        else:
            self.url = f"sqlite:///{self.file}"

    def reset(self) -> None:
        """Make it empty (no tables): a fresh file, or the PostgreSQL database dropped and created again."""
        if self.postgres:
            self._pg_admin(self._drop, f'CREATE DATABASE "{self.PG_NAME}"')
        else:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.file}{suffix}").unlink(missing_ok=True)

    def remove(self) -> None:
        if self.postgres:
            self._pg_admin(self._drop)
        else:
            self.reset()

    def _pg_admin(self, *statements: str) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.postgres)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())


def startup_seconds(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*ingest_command(), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------- corpus


def walk(corpus: str) -> list[str]:
    """Regular files under `corpus` (links to files followed, not to folders), sorted, as absolute paths."""
    files = []
    for folder, _dirs, names in os.walk(os.path.abspath(corpus)):
        files.extend(p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p))
    return sorted(files)


def drop_caches() -> None:
    """Empty the page cache (root only), so that the next measurement reads from disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def warm(files: Sequence[str]) -> int:
    """Read every file in full once, so that all measurements read from the page cache."""
    total = 0
    for path in files:
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    total += len(chunk)
        except OSError:
            pass
    return total


def bench_corpus(
    corpus: str,
    jobs: int,
    rounds: int,
    reader: bool,
    workdir: Path,
    startup: float,
    cold: bool = False,
    postgres: str | None = None,
) -> Result:
    start = time.perf_counter()
    files = walk(corpus)
    walk_s = time.perf_counter() - start
    if not files:
        raise SystemExit(f"no files under {corpus}")
    start = time.perf_counter()
    size = sum(os.path.getsize(f) for f in files) if cold else warm(files)
    warm_s = 0.0 if cold else time.perf_counter() - start
    fresh = drop_caches if cold else (lambda: None)
    result = Result(corpus, len(files), jobs, walk_s, warm_s, size, startup)
    db = TargetDatabase(workdir, postgres)
    for i in range(rounds):
        bare_first = i % 2 == 0
        bare: tuple[float, float] | None = None
        reader_s = reader_cpu = None
        if bare_first:
            fresh()
            bare = pool_loop(files, jobs, _bare, _quiet)
            fresh()
            script_s = bare_script(corpus, jobs)
        db.reset()
        fresh()
        ingest_s, result.summary_first, internal, ingest_cpu = run_ingest(corpus, db.url, jobs)
        rerun_s, result.summary_rerun, rerun_internal, rerun_cpu = run_ingest(corpus, db.url, jobs)
        db.remove()
        if not bare_first:
            fresh()
            bare = pool_loop(files, jobs, _bare, _quiet)
            fresh()
            script_s = bare_script(corpus, jobs)
        if reader:
            fresh()
            reader_s, reader_cpu = pool_loop(files, jobs, _reader, _reader_init)
        assert bare is not None
        result.rounds.append(
            Round(
                bare[0],
                reader_s,
                ingest_s,
                internal,
                rerun_s,
                rerun_internal,
                bare_first,
                bare[1],
                reader_cpu,
                ingest_cpu,
                rerun_cpu,
                script_s,
            )
        )
        print(
            f"  round {i + 1}/{rounds}: bare {bare[0]:.2f} s (cpu {bare[1]:.2f}), script {script_s:.2f} s, "
            f"reader {reader_s or 0:.2f} s "
            f"(cpu {reader_cpu or 0:.2f}), ingest {ingest_s:.2f} s (cpu {ingest_cpu:.2f}), re-run {rerun_s:.2f} s",
            file=sys.stderr,
        )
    if result.summary_first["found"] != len(files):
        print(f"warning: ingest found {result.summary_first['found']} files, the walk {len(files)}", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(results: Sequence[Result], rounds: int) -> str:
    lines = [
        f"Medians of {rounds} rounds; ratios and speedup are medians of per-round values (both sides back to back). "
        '"CPU" ratio: bare CPU seconds / ingest CPU seconds (all processes), which other load barely moves.',
        "",
        "| corpus | files | jobs | bare parse files/s | reader only files/s | ingest files/s | ingest / bare "
        "| ingest / bare, CPU | ingest / bare script | re-run files/s | first / re-run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.corpus} | {r.files} | {r.jobs} | {_fmt(r.rate(lambda x: x.bare_s))} "
            f"| {_fmt(r.rate(lambda x: x.reader_s))} | {_fmt(r.rate(lambda x: x.ingest_s))} "
            f"| {_fmt(r.ratio, '.2f')}x | {_fmt(r.cpu_ratio, '.2f')}x | {_fmt(r.script_ratio, '.2f')}x "
            f"| {_fmt(r.rate(lambda x: x.rerun_s))} "
            f"| {_fmt(r.speedup, '.1f')}x |"
        )
    lines += [
        "",
        "Median seconds (walk and warm-up read done once, before the rounds; CLI start-up = `dicom-ingest --help`; "
        '"internal" = the time the ingest reports itself, without start-up, schema and walk):',
        "",
        "| corpus | MiB | walk | warm-up read | CLI start-up | bare | bare script | reader only | ingest wall "
        "| ingest internal | re-run wall | re-run internal | bare CPU | reader CPU | ingest CPU | re-run CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [
            r.walk_s,
            r.warm_read_s,
            r.startup_s,
            r.median(lambda x: x.bare_s),
            r.median(lambda x: x.script_s),
            r.median(lambda x: x.reader_s),
            r.median(lambda x: x.ingest_s),
            r.median(lambda x: x.ingest_internal_s),
            r.median(lambda x: x.rerun_s),
            r.median(lambda x: x.rerun_internal_s),
            r.median(lambda x: x.bare_cpu),
            r.median(lambda x: x.reader_cpu),
            r.median(lambda x: x.ingest_cpu),
            r.median(lambda x: x.rerun_cpu),
        ]
        lines.append(f"| {r.corpus} | {r.warm_bytes / 2**20:.0f} | " + " | ".join(_fmt(c, ".2f") for c in cells) + " |")
    lines += ["", "Per round, seconds (bare / bare script / reader only / ingest / re-run; * = bare ran first):", ""]
    for r in results:
        per = "; ".join(
            f"{'*' if x.bare_first else ''}{x.bare_s:.2f} / {_fmt(x.script_s, '.2f')} / {_fmt(x.reader_s, '.2f')} / "
            f"{x.ingest_s:.2f} / "
            f"{x.rerun_s:.2f}"
            for x in r.rounds
        )
        first, rerun = r.summary_first, r.summary_rerun
        lines.append(
            f"- {r.corpus}: {per}. First run: {first.get('ingested')} ingested, {first.get('not_dicom')} not DICOM, "
            f"{first.get('failed')} failed, {first.get('duplicates')} duplicates; re-run: {rerun.get('unchanged')} "
            "unchanged."
        )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram = "unknown"
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(line.split()[1] for line in fh if line.startswith("MemTotal")))
            ram = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="+", help="folders of DICOM files (read only; nothing is written there)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds (default: %(default)s)")
    parser.add_argument("--no-reader", action="store_true", help="skip the reader-only diagnostic loop")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each measurement (root)")
    parser.add_argument("--postgres", metavar="URL", help="ingest into PostgreSQL: a server's admin database URL")
    parser.add_argument("--workdir", help="folder for the temporary databases (default: a new temporary folder)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    parser.add_argument(
        "--ingest-src",
        metavar="DIR",
        help="measure the `ingest` package in DIR (e.g. a patched copy of the repository) instead of the installed one",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rounds < 1:
        parser.error("--jobs and --rounds must be at least 1")
    if args.ingest_src:
        use_ingest_src(args.ingest_src)

    _quiet()
    info = machine()
    print(f"machine: {info}; ingest command: {ingest_command()}", file=sys.stderr)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ingest_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        startup = startup_seconds()
        for corpus in args.corpus:
            print(f"{corpus}:", file=sys.stderr)
            results.append(
                bench_corpus(
                    corpus, args.jobs, args.rounds, not args.no_reader, workdir, startup, args.cold, args.postgres
                )
            )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(results, args.rounds))
    if args.json:
        payload = {
            "machine": info,
            "command": " ".join(["bench/bench_ingest.py", *(argv if argv is not None else sys.argv[1:])]),
            "results": [
                {
                    **asdict(r),
                    "bare_files_per_s": r.rate(lambda x: x.bare_s),
                    "reader_files_per_s": r.rate(lambda x: x.reader_s),
                    "ingest_files_per_s": r.rate(lambda x: x.ingest_s),
                    "rerun_files_per_s": r.rate(lambda x: x.rerun_s),
                    "ingest_over_bare": r.ratio,
                    "ingest_over_bare_cpu": r.cpu_ratio,
                    "ingest_over_bare_script": r.script_ratio,
                    "reader_over_bare": r.reader_ratio,
                    "first_over_rerun": r.speedup,
                }
                for r in results
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
