"""The ingest run: walk the paths, skip unchanged files, parse the rest in worker processes, write batches.

Files are processed in sorted path order and results are consumed in that order, so that a run that was
interrupted and started again writes exactly what one uninterrupted run writes.
"""

from __future__ import annotations

import os
import signal
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from ingest.db import IndexedFile, Store

if TYPE_CHECKING:
    from ingest.reader import FileResult

# Statuses a file can end a run with; the summary counts one per file found.
INGESTED, UNCHANGED, DUPLICATE, NOT_DICOM, FAILED, NOT_REACHED = (
    "ingested",
    "unchanged",
    "duplicate",
    "not_dicom",
    "failed",
    "not_reached",
)
SKIPPABLE = {INGESTED, DUPLICATE, NOT_DICOM}  # a failed file is tried again on every run


class FoundFile(NamedTuple):  # a tuple: a walk makes one per file, and a re-run does little else
    path: str
    size: int
    mtime_ns: int


class Outcome(NamedTuple):
    path: str
    status: str
    reason: str | None = None


class Summary:
    def __init__(self) -> None:
        self.found = 0
        self.counts: dict[str, int] = dict.fromkeys((INGESTED, UNCHANGED, DUPLICATE, NOT_DICOM, FAILED, NOT_REACHED), 0)
        self.problems: list[Outcome] = []  # failed and not-DICOM files, with reasons
        self.seconds = 0.0
        self.interrupted = False

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.status in (FAILED, NOT_DICOM):
            self.problems.append(outcome)


def walk(paths: Iterable[str]) -> tuple[list[FoundFile], list[Outcome]]:
    """Every regular file under `paths`, sorted, and the entries that cannot be files to read.

    Symbolic links to files are followed; links to directories met on the way are not (no cycles, no double
    counting), but a path given as an argument is walked even if it is a link to a folder.
    """
    found: list[FoundFile] = []
    bad: list[Outcome] = []

    def visit_dir(path: str) -> None:
        try:
            with os.scandir(path) as entries:
                listed = list(entries)
        except OSError as exc:
            bad.append(Outcome(path, FAILED, f"cannot list directory: {exc.strerror}"))
            return
        for entry in listed:
            try:
                # The directory entry's type needs no system call; only files and links are stat'ed.
                if entry.is_dir(follow_symlinks=False):
                    visit_dir(entry.path)
                    continue
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append(FoundFile(entry.path, st.st_size, st.st_mtime_ns))
                    continue
            except OSError:
                pass  # vanished or unreadable entry: visit() says which
            visit(entry.path)

    def visit(path: str, argument: bool = False) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):
                bad.append(Outcome(path, FAILED, "broken symbolic link"))
            else:
                bad.append(Outcome(path, FAILED, "file vanished during the walk"))
            return
        except OSError as exc:
            bad.append(Outcome(path, FAILED, f"cannot stat: {exc.strerror}"))
            return
        if stat.S_ISDIR(st.st_mode):
            if argument or not os.path.islink(path):
                visit_dir(path)
        elif stat.S_ISREG(st.st_mode):
            found.append(FoundFile(path, st.st_size, st.st_mtime_ns))
        else:
            bad.append(Outcome(path, NOT_DICOM, "not a regular file"))

    roots = list(paths)
    for root in roots:
        visit(os.path.abspath(root), argument=True)
    if len(roots) > 1:
        # Overlapping arguments (a folder and a file or folder inside it) name some paths twice: count them once
        # (the last look at a file wins, should it have changed in between).
        found = list({f.path: f for f in found}.values())
        bad = list(set(bad))
    found.sort()  # by path (unique now, so the other fields never decide)
    bad.sort()
    return found, bad


def _worker_init() -> None:
    # The parent decides what Ctrl-C means; workers just keep parsing until told to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _quiet_pydicom()


def _quiet_pydicom() -> None:
    import logging

    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)


Batch = list[tuple[FoundFile, "FileResult"]]


class Ingest:
    """One run of dicom-ingest against one database."""

    def __init__(
        self,
        store: Store,
        jobs: int,
        batch_size: int = 1000,
        batch_seconds: float = 2.0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.jobs = max(1, jobs)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.progress = progress or (lambda n: None)
        self.stop_requested = False
        self.summary = Summary()
        self._index: dict[str, IndexedFile] = {}

    def request_stop(self) -> None:
        self.stop_requested = True

    def run(self, found: list[FoundFile], bad: list[Outcome]) -> Summary:
        start = time.perf_counter()
        self.summary.found = len(found) + len(bad)
        for outcome in bad:
            self.summary.add(outcome)
        self._index = self.store.file_index()
        todo = self._changed(found)
        batch: Batch = []
        last_flush, done = time.monotonic(), 0
        for item in self._parse(todo):
            batch.append(item)
            done += 1
            self.progress(1)
            if self.stop_requested:
                break
            if len(batch) >= self.batch_size or time.monotonic() - last_flush > self.batch_seconds:
                self._flush(batch)
                batch, last_flush = [], time.monotonic()
        self._flush(batch)
        if self.stop_requested:
            self.summary.interrupted = True
            self.summary.counts[NOT_REACHED] += len(todo) - done
        self.summary.seconds = time.perf_counter() - start
        return self.summary

    def _changed(self, found: list[FoundFile]) -> list[FoundFile]:
        """The files to parse: new, changed (size or mtime), or failed last time; the rest are counted."""
        todo: list[FoundFile] = []
        unchanged = 0
        for f in found:
            known = self._index.get(f.path)
            if known and known.size == f.size and known.mtime_ns == f.mtime_ns and known.status in SKIPPABLE:
                if known.status == NOT_DICOM:
                    self.summary.add(Outcome(f.path, NOT_DICOM, "unchanged since it was found not to be DICOM"))
                else:
                    unchanged += 1
            else:
                todo.append(f)
        self.summary.counts[UNCHANGED] += unchanged
        self.progress(len(found) - len(todo))
        return todo

    def _parse(self, todo: list[FoundFile]) -> Iterator[tuple[FoundFile, FileResult]]:
        if not todo:
            return
        # Imported here, before the workers fork, and only when there is something to parse (so are
        # multiprocessing and logging): a re-run over an unchanged tree is mostly start-up, and pydicom's
        # imports alone took longer than the rest of it.
        from ingest.reader import read_file

        if self.jobs == 1 or len(todo) < 4:
            _quiet_pydicom()
            for f in todo:
                yield f, read_file(f.path)
            return
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        chunk = max(1, min(32, len(todo) // (self.jobs * 8)))
        with ctx.Pool(self.jobs, initializer=_worker_init) as pool:
            yield from zip(todo, pool.imap(read_file, (f.path for f in todo), chunksize=chunk), strict=True)
            pool.terminate()

    def _flush(self, batch: Batch) -> None:
        if not batch:
            return
        dicom = [(f, r) for f, r in batch if r.status == "dicom"]
        owners = self.store.sop_owners([r.slice["SOPInstanceUID"] for _, r in dicom])
        patients: dict[str, dict[str, Any]] = {}
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        slices: list[dict[str, Any]] = []
        sources: list[dict[str, Any]] = []
        released: list[str] = []
        vanished: list[str] = []
        outcomes: list[Outcome] = []
        for f, r in batch:
            sop = r.slice.get("SOPInstanceUID") if r.status == "dicom" else None
            status, reason = {"dicom": INGESTED}.get(r.status, r.status), r.reason
            if sop is not None:
                owner = owners.get(sop)
                if owner is not None and owner != f.path and not os.path.exists(owner):
                    vanished.append(owner)  # the file moved: this path takes over its instance
                    owner = None
                if owner is not None and owner != f.path:
                    status, reason = DUPLICATE, f"same SOPInstanceUID as {owner}"
                else:
                    owners[sop] = f.path
                    _merge(patients, r.patient["PatientID"], r.patient)
                    _merge(studies, r.study["StudyInstanceUID"], r.study)
                    _keep_representative(series, r.series)
                    slices.append(r.slice)
            previous = self._index.get(f.path)
            if (
                previous is not None
                and previous.status == INGESTED
                and previous.sop_uid
                and previous.sop_uid != sop
                and status != FAILED
            ):
                released.append(previous.sop_uid)
            if status == FAILED and previous is not None and previous.status == INGESTED:
                # Keep the instance the file held when it last read well; record the failure.
                sop = previous.sop_uid
            sources.append(
                {
                    "Path": f.path,
                    "Size": f.size,
                    "MtimeNs": f.mtime_ns,
                    "Status": status,
                    "SOPInstanceUID": sop,
                    "Reason": reason,
                }
            )
            outcomes.append(Outcome(f.path, status, reason))
        promoted: list[str] = []
        if released:
            # A duplicate file takes over a released instance only if it is still on disk.
            for paths in (self.store.duplicate_holders(released)).values():
                existing = [p for p in paths if os.path.exists(p)]
                vanished.extend(p for p in paths if p not in existing)
                promoted.extend(existing[:1])
        self.store.write_batch(
            patients.values(), studies.values(), series.values(), slices, sources, released, vanished, promoted
        )
        # Count only once the batch is committed: an interrupted write counts nothing.
        for outcome in outcomes:
            self.summary.add(outcome)


def _merge(rows: dict[str, dict[str, Any]], key: str, row: dict[str, Any]) -> None:
    """Later files win, but a missing value never erases a known one (as the upsert does)."""
    current = rows.get(key)
    if current is None:
        rows[key] = dict(row)
    else:
        current.update({k: v for k, v in row.items() if v is not None})


def _keep_representative(rows: dict[str, dict[str, Any]], row: dict[str, Any]) -> None:
    current = rows.get(row["SeriesInstanceUID"])
    if current is None or row["RepresentativeKey"] <= current["RepresentativeKey"]:
        rows[row["SeriesInstanceUID"]] = row
