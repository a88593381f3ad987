"""`dicom-ingest`: parse arguments, show progress, print the summary, map outcomes to exit codes.

Exit codes: 0 every DICOM file found was ingested (or unchanged), 1 some files failed (listed),
2 usage error (bad path, bad URL, an --errors file that cannot be written), 3 the database could not be opened
or written, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from dicom_db.ingest.db import DatabaseError, Store, parse_url
from dicom_db.ingest.limits import DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES
from dicom_db.ingest.paths import to_text
from dicom_db.ingest.pipeline import (
    DUPLICATE,
    FAILED,
    INGESTED,
    NOT_DICOM,
    NOT_REACHED,
    UNCHANGED,
    Ingest,
    Summary,
    stale,
    walk,
)

if TYPE_CHECKING:
    from tqdm import tqdm

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_DATABASE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
DEFAULT_DB = "sqlite:///dicom.db"
LISTED_FAILURES = 50


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-ingest",
        description="Walk files and folders recursively, read DICOM headers and fill the dicom-db database "
        "(Patient, Study, Series, SliceMetadata). Unchanged files are skipped on later runs.",
        epilog="exit status: 0 every DICOM file found was ingested (or was unchanged); 1 some files failed (listed, "
        "and in --errors); 2 usage error (bad path, bad URL, bad option, an --errors file that cannot be written); "
        "3 database error; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): what was committed stays, a re-run "
        "goes on from there.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="DICOM files or folders to walk (none with --upgrade)")
    parser.add_argument(
        "--db",
        default=os.environ.get("DATABASE_URL", DEFAULT_DB),
        help="database URL: sqlite:///FILE or postgresql://USER@HOST/DB (default: $DATABASE_URL, else %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes parsing headers (default: all cores, %(default)s here)",
    )
    parser.add_argument("--errors", metavar="FILE", help="write one JSON line per failed or non-DICOM file")
    parser.add_argument("--quiet", action="store_true", help="print nothing but the summary")
    parser.add_argument("--batch-size", type=int, default=1000, help="files per transaction (default: %(default)s)")
    parser.add_argument(
        "--file-timeout",
        type=float,
        default=DEFAULT_FILE_TIMEOUT,
        metavar="SECONDS",
        help="a file whose reading takes longer is reported failed and its worker replaced (default: %(default)g)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=DEFAULT_MAX_HEADER_BYTES,
        metavar="BYTES",
        help="read at most this much of a header (deflated data: once inflated); a longer one fails the file: "
        "memory stays within --jobs times a small multiple of it (default: %(default)s)",
    )
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="upgrade the database made by an earlier dicom-ingest in place and read again every file it records "
        "that was read under an older mapping, wherever it is (an ingest over PATH upgrades the database too, "
        "and reads again those under PATH)",
    )
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="keep the rows of files that are gone from the folders walked (default: release them)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
    except KeyboardInterrupt:  # Ctrl-C before the run started writing
        print("dicom-ingest: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


def _run(args: argparse.Namespace) -> int:
    if args.upgrade and args.paths:
        return _usage("--upgrade takes no PATH (an ingest over PATH upgrades the database too)")
    if not args.paths and not args.upgrade:
        return _usage("give the files or folders to ingest (PATH), or --upgrade")
    missing = [p for p in args.paths if not os.path.lexists(p)]
    if missing:
        return _usage(f"no such file or directory: {', '.join(map(to_text, missing))}")
    if args.jobs < 1 or args.batch_size < 1:
        return _usage("--jobs and --batch-size must be at least 1")
    if args.file_timeout <= 0 or args.max_header_bytes < 1024:
        return _usage("--file-timeout must be positive and --max-header-bytes at least 1024")
    try:
        parse_url(args.db)
    except DatabaseError as exc:
        return _usage(str(exc))
    errors = None
    if args.errors:
        try:  # opened now, so that a path that cannot be written is found before the run, not after it
            errors = open(args.errors, "w", encoding="utf-8")  # noqa: SIM115 - closed in _ingest
        except OSError as exc:
            return _usage(f"cannot write --errors {args.errors}: {exc.strerror}")
    try:
        return _ingest(args, errors)
    finally:
        if errors:
            errors.close()


def _ingest(args: argparse.Namespace, errors: TextIO | None) -> int:
    store = Store(args.db)
    try:
        store.open()
    except DatabaseError as exc:
        print(f"dicom-ingest: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    try:
        walked = walk(args.paths) if args.paths else stale(store)
    except DatabaseError as exc:
        store.close()
        print(f"dicom-ingest: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    bar = _progress_bar(len(walked.found)) if not args.quiet and sys.stderr.isatty() else None
    ingest = Ingest(
        store,
        args.jobs,
        batch_size=args.batch_size,
        progress=bar.update if bar else None,
        file_timeout=args.file_timeout,
        max_header_bytes=args.max_header_bytes,
        prune=args.prune,
        warn=lambda message: print(f"warning: {message}", file=sys.stderr),
    )
    stopped_by: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        ingest.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = ingest.run(walked)
    except DatabaseError as exc:
        if bar:
            bar.close()
        print(f"dicom-ingest: {exc}", file=sys.stderr)
        print("dicom-ingest: stopped; every batch committed before this error is kept", file=sys.stderr)
        return EXIT_DATABASE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar:
            bar.close()
        store.close()
    if errors:
        _write_errors(errors, summary)
    _print_summary(summary, sys.stdout, sys.stderr)
    if summary.interrupted:
        return EXIT_TERMINATED if stopped_by and stopped_by[0] == signal.SIGTERM else EXIT_INTERRUPTED
    return EXIT_FAILED_FILES if summary.counts[FAILED] else EXIT_OK


def _progress_bar(total: int) -> tqdm:
    from tqdm import tqdm  # only on a terminal: its import is a tenth of a re-run over 10,000 unchanged files

    return tqdm(total=total, unit="file", file=sys.stderr, smoothing=0.1)


def _usage(message: str) -> int:
    print(f"dicom-ingest: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _write_errors(fh: TextIO, summary: Summary) -> None:
    for p in summary.problems:
        fh.write(json.dumps({"path": p.path, "status": p.status, "reason": p.reason}, ensure_ascii=False) + "\n")


def _print_summary(summary: Summary, out: TextIO, err: TextIO) -> None:
    failed = [p for p in summary.problems if p.status == FAILED]
    for p in failed[:LISTED_FAILURES]:
        print(f"failed: {p.path}: {p.reason}", file=err)
    if len(failed) > LISTED_FAILURES:
        print(f"... and {len(failed) - LISTED_FAILURES} more failed files (list them all with --errors FILE)", file=err)
    c = summary.counts
    rate = (c[INGESTED] + c[DUPLICATE]) / summary.seconds if summary.seconds else 0.0
    parts = [
        f"{summary.found} files found",
        f"{c[INGESTED]} ingested",
        f"{c[UNCHANGED]} unchanged",
        f"{c[DUPLICATE]} duplicates",
        f"{c[NOT_DICOM]} not DICOM",
        f"{c[FAILED]} failed",
        f"{summary.removed} gone",
        f"{summary.conflicts} conflicts",
    ]
    if summary.interrupted:
        parts.append(f"{c[NOT_REACHED]} not reached (interrupted)")
    print(f"dicom-ingest: {', '.join(parts)} in {summary.seconds:.1f} s ({rate:.0f} files/s)", file=out)
