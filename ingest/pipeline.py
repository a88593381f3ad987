"""The ingest run: walk the paths, skip unchanged files, parse the rest in supervised worker processes, write
batches (ingest/derive.py says what a batch writes).

Files are processed in sorted path order and results are consumed in that order, so that a run that was
interrupted and started again writes exactly what one uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import stat
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from dicom_db.ingest.db import DELETE_UNUSED_HEADERS, PATIENT_FIELDS, STUDY_FIELDS, IndexedFile, Store
from dicom_db.ingest.derive import DUPLICATE, FAILED, INGESTED, NOT_DICOM, FoundFile, Item, Parsed, apply_batch
from dicom_db.ingest.limits import DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES
from dicom_db.ingest.migrate import MAPPING_VERSION
from dicom_db.ingest.paths import from_text, to_text

UNCHANGED, NOT_REACHED = "unchanged", "not_reached"
SKIPPABLE = {INGESTED, DUPLICATE, NOT_DICOM}  # a failed file is tried again on every run
# A file changed this close before the walk may change again within the same tick of the file system's clock
# (a few ms) without its ctime moving: it is recorded with an unknown ctime, so the next run reads it again.
RACY_NS = 50_000_000

__all__ = ["DUPLICATE", "FAILED", "INGESTED", "NOT_DICOM", "NOT_REACHED", "UNCHANGED", "FoundFile", "Ingest", "walk"]


class Outcome(NamedTuple):
    path: str  # as stored and reported (ingest/paths.py)
    status: str
    reason: str | None = None


class Summary:
    def __init__(self) -> None:
        self.found = 0
        self.counts: dict[str, int] = dict.fromkeys((INGESTED, UNCHANGED, DUPLICATE, NOT_DICOM, FAILED, NOT_REACHED), 0)
        self.problems: list[Outcome] = []  # failed and not-DICOM files, with reasons
        self.removed = 0  # files gone from disk whose rows were released
        self.conflicts = 0  # each printed as a warning when found
        self.seconds = 0.0
        self.interrupted = False

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.status in (FAILED, NOT_DICOM):
            self.problems.append(outcome)


class Walk(NamedTuple):
    found: list[FoundFile]
    bad: list[Outcome]
    roots: list[str]  # the absolute paths walked
    kept: set[str]  # stored paths that exist but could not be looked at: their records stay
    unlisted: list[str]  # folders that could not be listed: nothing under them is taken as gone
    started_ns: int  # wall clock when the walk began


def walk(paths: Iterable[str]) -> Walk:
    """Every regular file under `paths`, sorted, and the entries that cannot be files to read.

    Symbolic links to files are followed; links to directories met on the way are not (no cycles, no double
    counting), but a path given as an argument is walked even if it is a link to a folder.
    """
    found: list[FoundFile] = []
    bad: list[Outcome] = []
    kept: set[str] = set()
    unlisted: list[str] = []

    def visit_dir(path: str) -> None:
        try:
            with os.scandir(path) as entries:
                listed = list(entries)
        except OSError as exc:
            bad.append(Outcome(to_text(path), FAILED, f"cannot list directory: {exc.strerror}"))
            unlisted.append(path)
            return
        for entry in listed:
            try:
                # The directory entry's type needs no system call; only files and links are stat'ed.
                if entry.is_dir(follow_symlinks=False):
                    visit_dir(entry.path)
                    continue
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append(FoundFile(entry.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
                    continue
            except OSError:
                pass  # vanished or unreadable entry: visit() says which
            visit(entry.path)

    def visit(path: str, argument: bool = False) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            reason = "broken symbolic link" if os.path.islink(path) else "file vanished during the walk"
            bad.append(Outcome(to_text(path), FAILED, reason))
            return
        except OSError as exc:
            bad.append(Outcome(to_text(path), FAILED, f"cannot stat: {exc.strerror}"))
            kept.add(to_text(path))
            return
        if stat.S_ISDIR(st.st_mode):
            if argument or not os.path.islink(path):
                visit_dir(path)
        elif stat.S_ISREG(st.st_mode):
            found.append(FoundFile(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
        else:
            bad.append(Outcome(to_text(path), NOT_DICOM, "not a regular file"))

    started_ns = time.time_ns()
    roots = [os.path.abspath(p) for p in paths]
    for root in roots:
        visit(root, argument=True)
    if len(roots) > 1:
        # Overlapping arguments (a folder and a file or folder inside it) name some paths twice: count them once
        # (the last look at a file wins, should it have changed in between).
        found = list({f.path: f for f in found}.values())
        bad = list(set(bad))
    found.sort()  # by path (unique now, so the other fields never decide)
    bad.sort()
    return Walk(found, bad, roots, kept, unlisted, started_ns)


def stale(store: Store) -> Walk:
    """The files recorded as holding an instance that were read under an older mapping, wherever they are, as a
    walk under no folder, so that nothing is taken as gone (`dicom-ingest --upgrade`)."""
    started_ns = time.time_ns()
    found: list[FoundFile] = []
    bad: list[Outcome] = []
    kept: set[str] = set()
    for text in store.stale_paths(MAPPING_VERSION):
        path = from_text(text)
        try:
            st = os.stat(path)
        except OSError as exc:  # its rows stay as they are: an ingest over its folder releases them if it is gone
            bad.append(Outcome(text, FAILED, f"cannot be read again: {exc.strerror}"))
            kept.add(text)
            continue
        found.append(FoundFile(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    found.sort()  # in the order a walk gives (PostgreSQL's ORDER BY follows the locale)
    return Walk(found, bad, [], kept, [], started_ns)


def _under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _worker_init(max_header_bytes: int) -> None:
    # The parent decides what Ctrl-C and SIGTERM mean; workers just keep parsing until told to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _setup_reader(max_header_bytes)


def _setup_reader(max_header_bytes: int) -> None:
    import logging

    from dicom_db.ingest.reader import set_max_header_bytes

    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    set_max_header_bytes(max_header_bytes)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def parse(path: str) -> Parsed:
    """Read one file and hash what the records keep of it (in a worker)."""
    from dicom_db.ingest.reader import read_file

    r = read_file(path)
    if r.status != "dicom":
        return Parsed(r)
    patient = json.dumps([r.patient[f] for f in PATIENT_FIELDS])
    study = json.dumps([r.study[f] for f in STUDY_FIELDS])
    # pickle, not JSON, for the content hash: a third of the cost, and as stable for the same values.
    values = tuple(tuple(d.values()) for d in (r.patient, r.study, r.series, r.slice))
    return Parsed(r, _digest(f"{patient}\n{study}".encode()), patient, study, _digest(pickle.dumps(values, 5)))


def parse_chunk(paths: list[str]) -> list[Parsed]:
    return [parse(p) for p in paths]


def _lost(path: str, reason: str) -> Parsed:
    from dicom_db.ingest.reader import FileResult

    return Parsed(FileResult(path, "failed", reason, io_error=True))


class Ingest:
    """One run of dicom-ingest against one database."""

    def __init__(
        self,
        store: Store,
        jobs: int,
        batch_size: int = 1000,
        batch_seconds: float = 2.0,
        progress: Callable[[int], None] | None = None,
        file_timeout: float = DEFAULT_FILE_TIMEOUT,
        max_header_bytes: int | None = None,
        prune: bool = True,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.jobs = max(1, jobs)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.progress = progress or (lambda n: None)
        self.file_timeout = file_timeout
        self.max_header_bytes = max_header_bytes or DEFAULT_MAX_HEADER_BYTES
        self.prune = prune
        self.warn = warn or (lambda message: None)
        self.stop_requested = False
        self.summary = Summary()
        self._index: dict[str, IndexedFile] = {}
        self._racy_after = 0
        self._present: list[str] = []

    def request_stop(self) -> None:
        self.stop_requested = True

    def run(self, walked: Walk) -> Summary:
        start = time.perf_counter()
        found = walked.found
        self.summary.found = len(found) + len(walked.bad)
        for outcome in walked.bad:
            self.summary.add(outcome)
        self._index = self.store.file_index()
        todo = self._changed(found)
        gone = self._gone(walked) if self.prune else []
        self._racy_after = walked.started_ns - RACY_NS
        batch: list[Item] = []
        last_flush, done = time.monotonic(), 0
        for item in self._parse(todo):
            batch.append(item)
            done += 1
            self.progress(1)
            if self.stop_requested:
                break
            if len(batch) >= self.batch_size or time.monotonic() - last_flush > self.batch_seconds:
                self._flush(batch, gone)
                batch, gone, last_flush = [], [], time.monotonic()
        if batch or gone:
            self._flush(batch, gone)
        if todo or self.summary.removed:
            with self.store.transaction():
                self.store.execute(DELETE_UNUSED_HEADERS)
        if self.stop_requested:
            self.summary.interrupted = True
            self.summary.counts[NOT_REACHED] += len(todo) - done
        self.summary.seconds = time.perf_counter() - start
        return self.summary

    def _changed(self, found: list[FoundFile]) -> list[FoundFile]:
        """The files to parse: new, changed (size, mtime, inode or ctime), failed last time, or holding an
        instance whose rows were read under an older mapping (a not-DICOM file stays what it was)."""
        todo: list[FoundFile] = []
        unchanged = 0
        index = self._index
        self._present = texts = [to_text(f.path) for f in found]
        for f, text in zip(found, texts, strict=True):
            known = index.get(text)
            if (
                known
                and known.size == f.size
                and known.mtime_ns == f.mtime_ns
                and known.inode == f.inode
                and known.ctime_ns == f.ctime_ns
                and known.status in SKIPPABLE
                and (known.mapping >= MAPPING_VERSION or known.status == NOT_DICOM)
            ):
                if known.status == NOT_DICOM:
                    self.summary.add(Outcome(text, NOT_DICOM, "unchanged since it was found not to be DICOM"))
                else:
                    unchanged += 1
            else:
                todo.append(f)
        self.summary.counts[UNCHANGED] += unchanged
        self.progress(len(found) - len(todo))
        return todo

    def _gone(self, walked: Walk) -> list[str]:
        """Stored paths under the walked roots that are no longer on disk (nor merely unreadable)."""
        present = set(self._present) | walked.kept
        gone = []
        for text in self._index:
            if text in present:
                continue
            path = from_text(text)
            if _under(path, walked.roots) and not _under(path, walked.unlisted) and not os.path.lexists(path):
                gone.append(text)
        return sorted(gone)

    # ------------------------------------------------------------------ parsing
    def _parse(self, todo: list[FoundFile]) -> Iterator[Item]:
        """Parsed files in `todo` order, from a pool whose workers may die or hang: a chunk that does not
        come back in time, or whose worker died, is read again file by file; a file that fails alone is
        reported failed, and the run goes on."""
        if not todo:
            return
        import multiprocessing
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures import wait
        from concurrent.futures.process import BrokenProcessPool

        from pebble import ProcessExpired, ProcessFuture, ProcessPool

        # Imported before the workers fork, so that each starts with pydicom loaded.
        _setup_reader(self.max_header_bytes)
        chunk = max(1, min(16, len(todo) // (self.jobs * 8)))
        chunks = deque(todo[i : i + chunk] for i in range(0, len(todo), chunk))

        def start() -> ProcessPool:
            return ProcessPool(
                max_workers=self.jobs,
                initializer=_worker_init,
                initargs=(self.max_header_bytes,),
                context=multiprocessing.get_context("fork"),
            )

        def schedule(files: list[FoundFile]) -> ProcessFuture:
            return pool.schedule(parse_chunk, ([f.path for f in files],), timeout=self.file_timeout)

        pool = start()
        pending: deque[tuple[list[FoundFile], ProcessFuture | None]] = deque()
        retried = rebuilt = restarts = 0

        def restart(exc: BaseException) -> None:
            """A new pool for a broken one: pebble gives up on a pool whose worker dies before it has taken a
            task ("All workers expired"), failing every task and refusing new ones. The pending files are read
            again, in order, by the new pool."""
            nonlocal pool, pending, rebuilt, restarts
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                raise RuntimeError(f"the pool of reading processes broke {restarts} times: {exc}") from exc
            pool.stop()
            pool.join()
            pool = start()
            rebuilt += sum(len(files) for files, _ in pending)
            pending = deque((files, None) for files, _ in pending)

        try:
            while chunks or pending:
                try:  # pending entries without a future yet (None), then new chunks, go to the pool
                    for index in range(len(pending)):
                        if pending[index][1] is None:
                            pending[index] = (pending[index][0], schedule(pending[index][0]))
                    while chunks and len(pending) < self.jobs * 4:
                        pending.append((chunks[0], schedule(chunks[0])))
                        chunks.popleft()
                except RuntimeError as exc:  # "Unexpected error within the Pool"
                    if pool.active:
                        raise
                    restart(exc)
                    continue
                files, future = pending.popleft()
                assert future is not None  # scheduled above
                while not wait([future], timeout=0.2).done:
                    if self.stop_requested:
                        return
                try:
                    results = future.result()
                except BrokenProcessPool as exc:
                    pending.appendleft((files, future))
                    restart(exc)
                    continue
                except (FutureTimeout, ProcessExpired) as exc:
                    if len(files) > 1:
                        retried += len(files)
                        pending.extendleft(reversed([([f], None) for f in files]))
                        continue
                    results = [_lost(files[0].path, _lost_reason(exc, self.file_timeout))]
                except Exception as exc:  # the reader never raises; a pickling problem, say, fails the file only
                    results = [_lost(f.path, f"cannot read: {type(exc).__name__}: {exc}") for f in files]
                for f, parsed in zip(files, results, strict=True):
                    yield Item(f._replace(ctime_ns=-1) if f.ctime_ns >= self._racy_after else f, parsed)
        finally:
            pool.stop()
            pool.join()
            if retried:
                self.warn(f"a worker died or hung while reading {retried} files: they were read again one by one")
            if rebuilt:
                self.warn(f"the pool of reading processes broke {restarts} times: {rebuilt} files were read again")

    def _reread(self, texts: list[str]) -> tuple[list[Item], list[str]]:
        """Files the database names read again in this process (a new owner or representative of a batch)."""
        _setup_reader(self.max_header_bytes)
        items, vanished = [], []
        for text in texts:
            path = from_text(text)
            try:
                st = os.stat(path)
            except OSError:
                vanished.append(text)
                continue
            items.append(Item(FoundFile(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns), parse(path)))
        return items, vanished

    # ------------------------------------------------------------------ writing
    def _flush(self, batch: list[Item], gone: list[str]) -> None:
        report = apply_batch(self.store, batch, gone, self._reread)
        # Count only once the batch is committed: an interrupted write counts nothing.
        for path, status, reason in report.outcomes:
            self.summary.add(Outcome(path, status, reason))
        self.summary.removed += report.removed
        self.summary.conflicts += len(report.warnings)
        for message in report.warnings:
            self.warn(message)


# A pool that keeps breaking is the machine's failure (it cannot fork, say), not a file's: the run stops.
MAX_POOL_RESTARTS = 5


def _lost_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return f"reading took longer than {timeout:g} s (--file-timeout): the worker was stopped"
    code = getattr(exc, "exitcode", None)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"the worker reading it died ({name}{': out of memory?' if name == 'SIGKILL' else ''})"
    return f"the worker reading it died (exit status {code})"
