"""What the tables hold, derived from the files on disk: one batch of file reads applied in one transaction.

The rules (docs/ingest.md, "Keys and the rules for merging"), each a function of the files alone, never of
the order or the runs in which they were read, so that an incremental run leaves the tables a fresh ingest of
the same files would:

- an instance's row comes from its **owner**, the file that holds it with the smallest path; the other files
  holding it are duplicates (a duplicate with other content is reported as a conflict);
- a series' row comes from its **representative** instance, the smallest (InstanceNumber, SOPInstanceUID);
- a study's and a patient's columns each take the value of the last owner file, in path order, that has one;
  a study belongs to the patient that value names;
- a series, study or patient left without instances goes.

`SourceFile` records what each file held when it was last read and `SourceHeader` the Patient and Study values
files carry; every row a batch touches is derived again from those records. A row whose source is a file not
in the batch (a duplicate that becomes the owner, the next representative of a series) is read again from disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from dicom_db.ingest import db as q
from dicom_db.ingest.migrate import MAPPING_VERSION
from dicom_db.ingest.paths import from_text, to_text

if TYPE_CHECKING:
    from dicom_db.ingest.db import Store
    from dicom_db.ingest.reader import FileResult

INGESTED, DUPLICATE, NOT_DICOM, FAILED = "ingested", "duplicate", "not_dicom", "failed"
HOLDING = (INGESTED, DUPLICATE)


class FoundFile(NamedTuple):  # a tuple: a walk makes one per file, and a re-run does little else
    path: str
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int


@dataclass(slots=True)
class Parsed:
    """One file's read as a worker returns it: the reader's result and the hashes the records keep."""

    result: FileResult
    header: str | None = None  # hash of its Patient and Study values (SourceHeader)
    patient: str | None = None  # JSON of the values, PATIENT_FIELDS order
    study: str | None = None  # JSON, STUDY_FIELDS order
    content: str | None = None  # hash of everything read


class Item(NamedTuple):
    found: FoundFile
    parsed: Parsed


@dataclass
class BatchReport:
    outcomes: list[tuple[str, str, str | None]] = field(default_factory=list)  # (path, status, reason)
    removed: int = 0  # files gone from disk whose records were dropped
    warnings: list[str] = field(default_factory=list)


def rank_key(number: int | None, sop: str) -> str:
    """Sort key choosing a series' representative: smallest InstanceNumber, then SOPInstanceUID."""
    # Offset so that negative numbers sort before positive ones as text; instances without a number last.
    rank = f"{number + 10**11:013d}" if number is not None and abs(number) < 10**11 else "9" * 13
    return f"{rank}|{sop}"


Reread = Callable[[list[str]], tuple[list[Item], list[str]]]


def apply_batch(store: Store, items: list[Item], gone: Iterable[str], reread: Reread) -> BatchReport:
    """Record `items` (in path order) and the files `gone` from disk, and derive every row they touch again.
    `reread(paths)` reads stored paths again from disk: the items read and the paths that have vanished."""
    with store.transaction():
        return _Batch(store, reread).run(items, list(gone))


class _Batch:
    def __init__(self, store: Store, reread: Reread) -> None:
        self.store = store
        self.reread = reread
        self.report = BatchReport()
        self.in_hand: dict[str, Item] = {}  # stored path -> the file as read in this batch
        self.reread_done: set[str] = set()
        self.sops: set[str] = set()
        self.headers: set[str] = set()  # headers whose files' contributions changed
        self.owner: dict[str, str] = {}  # SOPInstanceUID -> owner path, for the touched instances
        self.slice_rows: dict[str, dict[str, Any]] = {}
        self.dropped_slices: set[str] = set()
        self.series: set[str] = set()
        self.series_rows: dict[str, dict[str, Any]] = {}
        self.series_source: dict[str, str] = {}
        self.studies: set[str] = set()
        self.patients: set[str] = set()

    def run(self, items: list[Item], gone: list[str]) -> BatchReport:
        stream = [to_text(i.found.path) for i in items]
        self._record(items, gone)
        while True:
            wanted, vanished = self._owners()
            if not wanted and not vanished:
                wanted = self._representatives()
            if not wanted and not vanished:
                break
            read, gone_too = self.reread(sorted(wanted))
            self.reread_done.update(wanted)
            self._record(read, sorted({*vanished, *gone_too}))
        self._derive_parents()
        self._write()
        self._outcomes(stream, items)
        return self.report

    # ------------------------------------------------------------------ records
    def _record(self, items: list[Item], gone: list[str]) -> None:
        """Write what each file holds now into SourceFile (and its header into SourceHeader)."""
        store = self.store
        texts = [to_text(i.found.path) for i in items]
        previous = {r[0]: r[1:] for r in store.sources(texts + gone)}
        sources, headers = [], {}
        for text, item in zip(texts, items, strict=True):
            r = item.parsed.result
            if r.io_error:
                continue  # unreadable: what it held is unknown, so its record and rows stay as they are
            self.in_hand[text] = item
            self._release(previous.get(text))
            sop = None
            if r.status == "dicom":
                sop = r.slice["SOPInstanceUID"]
                self.sops.add(sop)
                self.headers.add(item.parsed.header)  # type: ignore[arg-type]
                headers[item.parsed.header] = {
                    "Hash": item.parsed.header,
                    "PatientID": r.patient["PatientID"],
                    "StudyInstanceUID": r.study["StudyInstanceUID"],
                    "Patient": item.parsed.patient,
                    "Study": item.parsed.study,
                }
            f = item.found
            sources.append(
                {
                    "Path": text,
                    "Size": f.size,
                    "MtimeNs": f.mtime_ns,
                    "Inode": f.inode,
                    "CtimeNs": f.ctime_ns,
                    # Ownership is decided below, among every file that holds the instance.
                    "Status": INGESTED if sop else r.status,
                    "SOPInstanceUID": sop,
                    "Reason": None if sop else r.reason,
                    "Header": item.parsed.header if sop else None,
                    "ContentHash": item.parsed.content if sop else None,
                    "MappingVersion": MAPPING_VERSION,
                }
            )
        dropped = [p for p in gone if p in previous]
        for text in dropped:
            self._release(previous[text])
        self.report.removed += len(dropped)
        store.write(q.INSERT_HEADER, headers.values())
        store.write(q.DELETE_SOURCE, ({"path": p} for p in dropped))
        store.write(q.UPSERT_SOURCE, sources)

    def _release(self, previous: tuple[Any, ...] | None) -> None:
        if previous is not None and previous[0] in HOLDING and previous[1]:
            self.sops.add(previous[1])
            if previous[2]:
                self.headers.add(previous[2])

    # ------------------------------------------------------------------ instances
    def _owners(self) -> tuple[set[str], set[str]]:
        """Decide the owner of every touched instance: the files to read again from disk (a duplicate that
        becomes the owner, a holder changed since it was read) and the holders that are gone from disk."""
        store = self.store
        holders: dict[str, list[tuple[str, str, str | None, str | None, str | None]]] = {}
        wanted: set[str] = set()
        vanished: set[str] = set()
        for sop, path, status, reason, header, content, mapping, *recorded in store.holders(sorted(self.sops)):
            if path not in self.in_hand and path not in self.reread_done:
                # A file outside this batch (or outside the folders walked) is believed only while it is on
                # disk as it was read: never let a moved or rewritten file decide who holds an instance. Nor one
                # read under an older mapping: its content hash cannot be compared with a current read's.
                now = _stat(path)
                if now is None:
                    vanished.add(path)
                    continue
                if now != tuple(recorded) or mapping < MAPPING_VERSION:
                    wanted.add(path)
            holders.setdefault(sop, []).append((path, status, reason, header, content))
        if wanted or vanished:
            return wanted, vanished
        flips = []
        self.slice_rows.clear()
        self.dropped_slices.clear()
        for sop in self.sops:
            files = sorted(holders.get(sop, ()))
            if not files:
                self.dropped_slices.add(sop)
                self.owner.pop(sop, None)
                continue
            owner = files[0][0]
            self.owner[sop] = owner
            for path, status, reason, header, _ in files:
                desired = INGESTED if path == owner else DUPLICATE
                why = None if path == owner else f"same SOPInstanceUID as {owner}"
                if (status, reason) != (desired, why):
                    flips.append({"path": path, "status": desired, "reason": why})
                    if header and status != desired:
                        self.headers.add(header)
            if owner in self.in_hand:
                self.slice_rows[sop] = self.in_hand[owner].parsed.result.slice
            elif files[0][1] != INGESTED:
                wanted.add(owner)  # a duplicate becomes the owner: its row comes from what it holds now
            self._same_sop_conflicts(sop, files)
        store.write(q.SET_SOURCE_STATUS, flips)
        return wanted - self.reread_done, set()

    def _same_sop_conflicts(self, sop: str, files: list[tuple[str, str, str | None, str | None, str | None]]) -> None:
        owner, content = files[0][0], files[0][4]
        for path, *_, other in files[1:]:
            if other != content and (path in self.in_hand or owner in self.in_hand):
                self.report.warnings.append(
                    f"conflict: {path} holds SOPInstanceUID {sop} with other values than {owner}, "
                    "whose values are kept (the smallest path owns an instance)"
                )

    # ------------------------------------------------------------------ series
    def _representatives(self) -> set[str]:
        """Derive every touched series' row from its representative instance; the files to read again."""
        store = self.store
        touched = set(store.slice_series(sorted(self.sops)).values())
        touched.update(row["SeriesInstanceUID"] for row in self.slice_rows.values())
        self.series = touched
        old = store.series_rows(sorted(touched))
        self.studies.update(study for study, _ in old.values() if study)
        members: dict[str, list[tuple[int | None, str]]] = {}
        for series, sop, number in store.series_slices(sorted(touched)):
            if sop not in self.slice_rows and sop not in self.dropped_slices:
                members.setdefault(series, []).append((number, sop))
        for sop, row in self.slice_rows.items():
            members.setdefault(row["SeriesInstanceUID"], []).append((row["SliceNumber"], sop))
        best = {s: min(m, key=lambda x: rank_key(*x)) for s, m in members.items()}
        unknown = sorted({sop for _, sop in best.values()} - self.owner.keys())
        owners = dict(self.owner)
        owners.update({r[0]: r[1] for r in store.holders(unknown) if r[2] == INGESTED})
        wanted: set[str] = set()
        self.series_rows.clear()
        for series, (number, sop) in best.items():
            path = owners.get(sop)
            if path is None:
                continue  # a row no file record backs (a database not built by the ingest): left as it is
            self.series_source[series] = path
            if path in self.in_hand:
                self.series_rows[series] = self.in_hand[path].parsed.result.series
            elif old.get(series, (None, None))[1] != rank_key(number, sop):
                wanted.add(path)  # the representative changed to a file not in hand
        return wanted - self.reread_done

    # ------------------------------------------------------------------ studies and patients
    def _derive_parents(self) -> None:
        store = self.store
        keys = store.headers(sorted(self.headers))
        for patient, study in keys.values():
            self.studies.add(study)
            self.patients.add(patient)
        self.studies.update(row["StudyInstanceUID"] for row in self.series_rows.values())
        self.patients.update(store.study_patients(sorted(self.studies)).values())
        self.study_rows = _merged(store.study_variants(sorted(self.studies), MAPPING_VERSION), 2, q.STUDY_FIELDS)
        self.patients.update(row["PatientID"] for row in self.study_rows.values())
        self.patient_rows = _merged(store.patient_variants(sorted(self.patients), MAPPING_VERSION), 1, q.PATIENT_FIELDS)
        self._hierarchy_conflicts()

    def _hierarchy_conflicts(self) -> None:
        seen: set[tuple[str, str]] = set()
        current = self.store.series_rows(sorted(self.series - self.series_rows.keys()))
        for text, item in self.in_hand.items():
            r = item.parsed.result
            if r.status != "dicom" or self.owner.get(r.slice["SOPInstanceUID"]) != text:
                continue
            series, study, patient = r.series["SeriesInstanceUID"], r.study["StudyInstanceUID"], r.patient["PatientID"]
            row = self.series_rows.get(series)
            kept_study = row["StudyInstanceUID"] if row else current.get(series, (study, None))[0]
            if kept_study != study and (series, study) not in seen:
                seen.add((series, study))
                self.report.warnings.append(
                    f"conflict: series {series} is under study {study} in {text} but under study {kept_study} "
                    f"in {self.series_source.get(series, 'its representative file')}, whose study is kept "
                    "(a series belongs to the study of its representative instance)"
                )
            kept_patient = self.study_rows.get(study, {}).get("PatientID", patient)
            if kept_patient != patient and (study, patient) not in seen:
                seen.add((study, patient))
                self.report.warnings.append(
                    f"conflict: study {study} belongs to patient {patient} in {text} but to patient "
                    f"{kept_patient} in a file after it in path order, which is kept (the last file that names "
                    "a patient decides)"
                )

    # ------------------------------------------------------------------ writes
    def _write(self) -> None:
        """Write the derived rows parents first, then drop what is left empty children first."""
        store = self.store
        store.write(q.UPSERT_PATIENT, self.patient_rows.values())
        store.write(q.UPSERT_STUDY, q.with_hash(self.study_rows.values(), "Study"))
        store.write(q.UPSERT_SERIES, q.with_hash(self.series_rows.values(), "Series"))
        ordered = (self.slice_rows[s] for s in sorted(self.slice_rows, key=self._slice_order))
        store.write(q.UPSERT_SLICE, q.with_hash(ordered, "SliceMetadata"))
        store.write(q.DELETE_SLICE, ({"key": s} for s in sorted(self.dropped_slices)))
        store.write(q.DELETE_SERIES_IF_EMPTY, ({"key": s} for s in sorted(self.series)))
        store.write(q.DELETE_STUDY_IF_EMPTY, ({"key": s} for s in sorted(self.studies)))
        store.write(q.DELETE_PATIENT_IF_EMPTY, ({"key": p} for p in sorted(self.patients)))

    def _slice_order(self, sop: str) -> str:
        # New rows get their SliceIDs in path order, as a walk in path order gives them.
        return self.owner[sop]

    def _outcomes(self, stream: list[str], items: list[Item]) -> None:
        for text, item in zip(stream, items, strict=True):
            r = item.parsed.result
            if r.status != "dicom" or r.io_error:
                self.report.outcomes.append((text, FAILED if r.io_error else r.status, r.reason))
                continue
            owner = self.owner.get(r.slice["SOPInstanceUID"])
            if owner == text:
                self.report.outcomes.append((text, INGESTED, None))
            else:
                self.report.outcomes.append((text, DUPLICATE, f"same SOPInstanceUID as {owner}"))


def _stat(text: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(from_text(text))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _merged(variants: list[tuple[str, str, str, str]], which: int, fields: tuple[str, ...]) -> dict[str, dict]:
    """Rows keyed by the first column: per column, the value of the last variant (by its last path) that has one."""
    rows: dict[str, dict[str, Any]] = {}
    for key, patient, study, _ in sorted(variants, key=lambda v: v[3]):
        row = rows.setdefault(key, dict.fromkeys(fields))
        # strict=False: values kept under an older mapping may lack the columns added since (left None).
        for name, value in zip(fields, json.loads(patient if which == 1 else study), strict=False):
            if value is not None:
                row[name] = value
    return rows
