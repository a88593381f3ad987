"""Bad input, bad arguments, kills and Ctrl-C: every file is ingested or listed, and the database stays whole."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import DICOMDIR_TESTS, TEST_FILES, dump_tables, ingest_command, rows, run_ingest
from dicom_factory import make_dataset, uid, write_series
from test_ingest import summary


def _explicit_sq(tag: tuple[int, int]) -> bytes:
    return struct.pack("<HH", *tag) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)


ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _valid(name: str) -> pydicom.Dataset:
    return make_dataset(
        PatientID="BAD-1",
        StudyInstanceUID=uid("bad-study"),
        SeriesInstanceUID=uid("bad-series"),
        SOPInstanceUID=uid(name),
        Modality="CT",
    )


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """One good series plus one file of every kind of bad input."""
    root = tmp_path / "bad"
    write_series(root / "good", count=3)
    (root / "notes.txt").write_text("not DICOM at all\n")
    (root / "empty.dcm").write_bytes(b"")
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(ct[:700])
    # A valid dataset written without the 128-byte preamble and DICM prefix: still DICOM, ingested.
    no_preamble = _valid("no-preamble")
    no_preamble.preamble = None
    pydicom.dcmwrite(root / "no_preamble.dcm", no_preamble, enforce_file_format=False)
    # Sequences nested 5,000 deep: pydicom recurses past Python's limit. The tag, ReferencedSeriesSequence
    # (0008,1115), is one the reader must read through (it stops after the last tag it needs).
    _valid("deep").save_as(root / "deep.dcm", enforce_file_format=True)
    depth = 5000
    with open(root / "deep.dcm", "ab") as fh:
        fh.write((_explicit_sq((0x0008, 0x1115)) + ITEM) * depth + (ITEM_END + SEQ_END) * depth)
    # The same nesting after every tag the tables need is never read: that file is ingested.
    _valid("deep-late").save_as(root / "deep_late.dcm", enforce_file_format=True)
    with open(root / "deep_late.dcm", "ab") as fh:
        fh.write((_explicit_sq((0x0040, 0xA730)) + ITEM) * depth + (ITEM_END + SEQ_END) * depth)
    # A sequence whose item claims more bytes than the file has, before the UIDs.
    broken = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" + struct.pack("<I", 4000)
    broken += struct.pack("<HHI", 0xFFFE, 0xE000, 3990) + b"\x10\x00\x10\x00PN\x04\x00ab"
    _valid("broken-seq").save_as(root / "broken_seq.dcm", enforce_file_format=True)
    data = (root / "broken_seq.dcm").read_bytes()
    at = data.index(struct.pack("<HH", 0x0008, 0x0018))  # SOPInstanceUID: put the broken sequence before it
    (root / "broken_seq.dcm").write_bytes(data[:at] + broken + data[at:])
    (root / "dangling.dcm").symlink_to(root / "does-not-exist.dcm")
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", root / "DICOMDIR")
    os.mkfifo(root / "fifo")
    return root


def test_every_bad_file_is_listed_with_a_reason(bad_tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    errors = tmp_path / "errors.jsonl"
    proc = run_ingest(bad_tree, "--db", f"sqlite:///{db}", "--errors", errors, check=1)
    assert "Traceback" not in proc.stderr
    listed = {Path(r["path"]).name: r for r in map(json.loads, errors.read_text().splitlines())}
    assert listed["notes.txt"]["status"] == "not_dicom"
    assert listed["empty.dcm"] == {"path": str(bad_tree / "empty.dcm"), "status": "not_dicom", "reason": "empty file"}
    assert listed["DICOMDIR"]["reason"] == "DICOMDIR (a media directory, not an image)"
    assert listed["fifo"]["reason"] == "not a regular file"
    assert listed["dangling.dcm"] == {
        "path": str(bad_tree / "dangling.dcm"),
        "status": "failed",
        "reason": "broken symbolic link",
    }
    assert listed["truncated.dcm"]["status"] == "failed"
    assert listed["truncated.dcm"]["reason"].startswith("truncated: an element runs past the end of the file")
    assert listed["deep.dcm"]["reason"] == "sequences nested too deeply to parse"
    assert listed["broken_seq.dcm"]["status"] == "failed"
    for name in ("dangling.dcm", "truncated.dcm", "deep.dcm", "broken_seq.dcm"):
        assert f"failed: {bad_tree / name}: {listed[name]['reason']}" in proc.stderr
    counts = summary(proc.stdout)
    assert counts == {"found": 13, "ingested": 5, "unchanged": 0, "duplicates": 0, "not_dicom": 4, "failed": 4}
    # The good series, the preamble-less file and the late deep sequence are in; nothing of the bad files is.
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(5,)]
    assert rows(db, 'SELECT "SOPInstanceUID" FROM "SliceMetadata" WHERE "SOPInstanceUID" = ?', (uid("no-preamble"),))
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "PRAGMA foreign_key_check") == []


def test_failed_files_are_retried_on_the_next_run(bad_tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    run_ingest(bad_tree, "--db", f"sqlite:///{db}", check=1)
    again = run_ingest(bad_tree, "--db", f"sqlite:///{db}", check=1)
    counts = summary(again.stdout)
    assert (counts["unchanged"], counts["failed"], counts["not_dicom"]) == (5, 4, 4)
    # Fix the broken file: the next run ingests it and exits 0 once nothing fails.
    _valid("truncated").save_as(bad_tree / "truncated.dcm", enforce_file_format=True)
    for name in ("dangling.dcm", "deep.dcm", "broken_seq.dcm"):
        (bad_tree / name).unlink()
    fixed = run_ingest(bad_tree, "--db", f"sqlite:///{db}", check=0)
    assert summary(fixed.stdout)["ingested"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_series(tmp_path / "in", count=1)[0]
    path.chmod(0)
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{tmp_path / 'u.db'}", check=1)
    assert f"failed: {path}: cannot read file: Permission denied" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/folder"], "no such file or directory: /no/such/folder"),
        (["{tree}", "--db", "mysql://x/y"], "unsupported database URL 'mysql://x/y'"),
        (["{tree}", "--db", "not a url"], "unsupported database URL"),
        (["{tree}", "--jobs", "0"], "--jobs and --batch-size must be at least 1"),
        (["{tree}", "--jobs", "two"], "invalid int value: 'two'"),
        ([], "give the files or folders to ingest (PATH), or --upgrade"),
        (["{tree}", "--upgrade"], "--upgrade takes no PATH"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_ingest(*[a.format(tree=tmp_path) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_database_exits_3_without_traceback(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=2)
    proc = run_ingest(tmp_path / "in", "--db", "sqlite:////no/such/dir/x.db", check=3)
    assert "cannot open database sqlite:////no/such/dir/x.db" in proc.stderr and "Traceback" not in proc.stderr


def test_read_only_database_exits_3_and_keeps_its_rows(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=2)
    db = tmp_path / "ro.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    before = dump_tables(db)
    write_series(tmp_path / "in2", count=2, series="series-ro-2")
    url = f"sqlite:///file:{db}?mode=ro"  # a read-only connection, which even root cannot write through
    proc = run_ingest(tmp_path / "in2", "--db", url, check=3)
    assert "readonly database" in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert dump_tables(db) == before


def _big_tree(root: Path, series: int = 12, per_series: int = 50) -> Path:
    for s in range(series):
        write_series(
            root / f"p{s % 4}" / f"s{s}",
            patient_id=f"P{s % 4}",
            study=f"study-{s // 2}",
            series=f"series-{s}",
            count=per_series,
            first_location=float(s),
        )
    return root


@pytest.fixture(scope="module")
def crash_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = _big_tree(tmp_path_factory.mktemp("crash") / "tree")
    clean = root.parent / "clean.db"
    run_ingest(root, "--db", f"sqlite:///{clean}", "--batch-size", "25", check=0)
    return root, dump_tables(clean)


def _slice_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute('SELECT COUNT(*) FROM "SliceMetadata"').fetchone()[0]
    except sqlite3.Error:
        return 0


def _start(tree: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*ingest_command(), str(tree), "--db", f"sqlite:///{db}", "--batch-size", "25", "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(db: Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while _slice_count(db) < at_least and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("after_rows", [1, 150, 400])
def test_killed_run_recovers_to_the_uninterrupted_result(
    crash_tree: tuple[Path, dict], tmp_path: Path, after_rows: int
) -> None:
    tree, expected = crash_tree
    db = tmp_path / "killed.db"
    proc = _start(tree, db)
    _wait_for_rows(db, proc, after_rows)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "the run finished before it could be killed: make the tree larger"
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "PRAGMA foreign_key_check") == []
    partial = _slice_count(db)
    assert 0 < partial < 600
    rerun = run_ingest(tree, "--db", f"sqlite:///{db}", "--batch-size", "25", check=0)
    assert summary(rerun.stdout)["unchanged"] == partial
    assert dump_tables(db) == expected


def test_ctrl_c_stops_after_the_batch_prints_the_summary_and_exits_130(
    crash_tree: tuple[Path, dict], tmp_path: Path
) -> None:
    tree, expected = crash_tree
    db = tmp_path / "int.db"
    proc = _start(tree, db)
    _wait_for_rows(db, proc, 50)
    assert proc.poll() is None, "the run finished before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    counts = summary(out)
    assert "not reached (interrupted)" in out
    assert counts["ingested"] == _slice_count(db)
    assert 0 < counts["ingested"] < 600
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    run_ingest(tree, "--db", f"sqlite:///{db}", check=0)
    assert dump_tables(db) == expected


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real 'disk full' for SQLite. Needs root (CI and the dev machines run as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_exits_3_with_a_clear_error_and_a_whole_database(tiny_disk: Path, tmp_path: Path) -> None:
    _big_tree(tmp_path / "tree", series=6, per_series=100)
    db = tiny_disk / "full.db"
    proc = run_ingest(tmp_path / "tree", "--db", f"sqlite:///{db}", "--batch-size", "50", check=3)
    assert "database or disk is full" in proc.stderr and "Traceback" not in proc.stderr
    assert "every batch committed before this error is kept" in proc.stderr
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "PRAGMA foreign_key_check") == []
    committed = _slice_count(db)
    assert 0 < committed < 600
    # Every slice stored has its series, study and patient, and every committed file its SourceFile row.
    assert rows(db, 'SELECT COUNT(*) FROM "SourceFile" WHERE "Status" = \'ingested\'') == [(committed,)]


def test_twenty_kills_at_random_moments_all_recover(crash_tree: tuple[Path, dict], tmp_path: Path) -> None:
    tree, expected = crash_tree
    rng = random.Random(20261129)
    for trial in range(20):
        db = tmp_path / f"kill{trial}.db"
        proc = _start(tree, db)
        time.sleep(rng.uniform(0.0, 1.5))  # from before the schema exists to the last batches
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if db.exists():
            assert rows(db, "PRAGMA integrity_check") == [("ok",)], f"trial {trial}"
            assert rows(db, "PRAGMA foreign_key_check") == [], f"trial {trial}"
        run_ingest(tree, "--db", f"sqlite:///{db}", "--batch-size", "25", check=0)
        assert dump_tables(db) == expected, f"trial {trial}"
