"""dicom-ingest on real files: row counts, exact values, idempotency, incremental runs, duplicates."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import termios
from pathlib import Path

import pydicom
import pytest
from conftest import CHARSET_FILES, DICOMDIR_TESTS, TEST_FILES, dump_tables, ingest_command, rows, run_ingest
from dicom_factory import uid, write_series

SUMMARY = re.compile(
    r"(\d+) files found, (\d+) ingested, (\d+) unchanged, (\d+) duplicates, (\d+) not DICOM, (\d+) failed"
)


def summary(stdout: str) -> dict[str, int]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    keys = ("found", "ingested", "unchanged", "duplicates", "not_dicom", "failed")
    return dict(zip(keys, map(int, match.groups()), strict=True))


def independent_count(folder: Path) -> dict[str, set[str]]:
    """What the tree holds, read with plain pydicom: the UIDs of image instances, series, studies, patients."""
    found: dict[str, set[str]] = {"sop": set(), "series": set(), "study": set(), "patient": set()}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "DirectoryRecordSequence" in ds or not all(
            k in ds for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        ):
            continue
        found["sop"].add(ds.SOPInstanceUID)
        found["series"].add(ds.SeriesInstanceUID)
        found["study"].add(ds.StudyInstanceUID)
        found["patient"].add(ds.PatientID)
    return found


@pytest.fixture(scope="module")
def dicomdir_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tree = tmp_path_factory.mktemp("tree") / "dicomdirtests"
    shutil.copytree(DICOMDIR_TESTS, tree)
    db = tree.parent / "dicom.db"
    proc = run_ingest(tree, "--db", f"sqlite:///{db}", check=0)
    return tree, db, proc.stdout


def test_dicomdirtests_rows_match_an_independent_count(dicomdir_db: tuple[Path, Path, str]) -> None:
    tree, db, stdout = dicomdir_db
    expected = independent_count(tree)
    # 2 patients with 6 studies in the DICOMDIR hierarchy, plus TINY_ALPHA: one patient, one study.
    assert len(expected["patient"]) == 3 and len(expected["study"]) == 7
    assert {r[0] for r in rows(db, 'SELECT "SOPInstanceUID" FROM "SliceMetadata"')} == expected["sop"]
    assert {r[0] for r in rows(db, 'SELECT "SeriesInstanceUID" FROM "Series"')} == expected["series"]
    assert {r[0] for r in rows(db, 'SELECT "StudyInstanceUID" FROM "Study"')} == expected["study"]
    assert {r[0] for r in rows(db, 'SELECT "PatientID" FROM "Patient"')} == expected["patient"]
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    counts = summary(stdout)
    assert counts["found"] == files
    assert counts["ingested"] == len(expected["sop"])
    # DICOMDIR files and the READMEs are skipped with a reason, not failed.
    assert counts["not_dicom"] == files - len(expected["sop"])
    assert counts["failed"] == 0 and counts["duplicates"] == 0
    assert sum(counts.values()) - counts["found"] == counts["found"]
    assert rows(db, "PRAGMA foreign_key_check") == []
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]


def test_dicomdirtests_relations(dicomdir_db: tuple[Path, Path, str]) -> None:
    _, db, _ = dicomdir_db
    per_patient = rows(
        db,
        'SELECT p."PatientID", p."PatientName", COUNT(DISTINCT st."StudyInstanceUID"), COUNT(sl."SliceID") '
        'FROM "Patient" p JOIN "Study" st ON st."PatientID" = p."PatientID" '
        'JOIN "Series" se ON se."StudyInstanceUID" = st."StudyInstanceUID" '
        'JOIN "SliceMetadata" sl ON sl."SeriesInstanceUID" = se."SeriesInstanceUID" GROUP BY 1, 2 ORDER BY 1',
    )
    expected: dict[str, list] = {}
    for path in DICOMDIR_TESTS.rglob("*"):
        if path.is_file() and path.parent.name not in ("dicomdirtests",) and "TINY_ALPHA" not in path.parts:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            entry = expected.setdefault(ds.PatientID, [str(ds.PatientName), set(), 0])
            entry[1].add(ds.StudyInstanceUID)
            entry[2] += 1
    tiny = [p for p in (DICOMDIR_TESTS / "TINY_ALPHA").rglob("IM*")]
    for path in tiny:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        entry = expected.setdefault(ds.PatientID, [str(ds.PatientName), set(), 0])
        entry[1].add(ds.StudyInstanceUID)
        entry[2] += 1
    assert per_patient == [(pid, e[0], len(e[1]), e[2]) for pid, e in sorted(expected.items())]


def test_exact_values_of_a_known_file(tmp_path: Path) -> None:
    db = tmp_path / "ct.db"
    run_ingest(TEST_FILES / "CT_small.dcm", "--db", f"sqlite:///{db}", check=0)
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    assert rows(db, 'SELECT * FROM "Patient"') == [
        ("1CT1", "CompressedSamples^CT1", "O", "000Y", None, None, None, None, 0)
    ]
    assert rows(db, 'SELECT "StudyInstanceUID", "PatientID", "StudyDate", "StudyTime", "StudyID" FROM "Study"') == [
        (ds.StudyInstanceUID, "1CT1", "2004-01-19", "07:27:30", "1CT1")
    ]
    series = rows(
        db,
        'SELECT "Modality", "SliceThickness", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", '
        '"Rows", "Columns", "ImageType", "KVP", "SliceLocation", "ConvolutionKernel", "SliceThicknessValue" '
        'FROM "Series"',
    )
    assert series == [
        (
            "CT",
            "5.000000",
            "0.661468\\0.661468",
            "-158.135803\\-179.035797\\-75.699997",
            "1.000000\\0.000000\\0.000000\\0.000000\\1.000000\\0.000000",
            128,
            128,
            "ORIGINAL\\PRIMARY\\AXIAL",
            120.0,
            -77.2040634155,
            "STANDARD",
            5.0,
        )
    ]
    slice_ = rows(
        db,
        'SELECT "SOPInstanceUID", "SliceNumber", "SliceLocation", "SliceThickness", "PixelPaddingValue", '
        '"RescaleIntercept", "RescaleSlope", "AcquisitionDate" FROM "SliceMetadata"',
    )
    assert slice_ == [(ds.SOPInstanceUID, 1, -77.2040634155, 5.0, -2000, -1024.0, 1.0, "1997-04-30")]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrRuss.dcm", "Люкceмбypг"),
        ("chrGerm.dcm", "Äneas^Rüdiger"),
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
        ("chrArab.dcm", "قباني^لنزار"),
        ("chrGreek.dcm", "Διονυσιος"),
        ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
    ],
)
def test_names_in_other_character_sets_are_unicode(tmp_path: Path, name: str, expected: str) -> None:
    db = tmp_path / "cs.db"
    run_ingest(CHARSET_FILES / name, "--db", f"sqlite:///{db}", check=0)
    assert rows(db, 'SELECT "PatientName" FROM "Patient"') == [(expected,)]


def test_all_charset_files(tmp_path: Path) -> None:
    db = tmp_path / "cs.db"
    proc = run_ingest(CHARSET_FILES, "--db", f"sqlite:///{db}", "--errors", tmp_path / "e.jsonl")
    counts = summary(proc.stdout)
    # chrSQEncoding*.dcm are fragments without UIDs: reported, not stored. FileInfo.txt is not DICOM.
    assert counts["failed"] == 2 and counts["not_dicom"] == 1 and proc.returncode == 1
    assert "chrSQEncoding.dcm: missing StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID" in proc.stderr
    names = [r[0] for r in rows(db, 'SELECT "PatientName" FROM "Patient"')]
    assert "Buc^Jérôme" in names and all("\ufffd" not in n for n in names if n)


def test_written_series_values_and_representative(tmp_path: Path) -> None:
    write_series(tmp_path / "in" / "s1", count=40, thickness=0.625, first_location=-50.0)
    db = tmp_path / "w.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    got = rows(db, 'SELECT "SliceNumber", "SliceLocation", "SliceThickness" FROM "SliceMetadata" ORDER BY 1')
    assert got == [(i + 1, -50.0 + i * 0.625, 0.625) for i in range(40)]
    # The series row holds the values of its first instance (smallest InstanceNumber).
    assert rows(
        db, 'SELECT "InstanceNumber", "SliceLocation", "SliceThickness", "ImagePositionPatient" FROM "Series"'
    ) == [("1", -50.0, "0.625", "-125.0\\-125.0\\-50.0")]
    assert rows(db, 'SELECT "StudyDate", "StudyTime", "ReferringPhysicianName" FROM "Study"') == [
        ("2021-03-15", "10:15:30.25", "Ref^Doctor")
    ]


def test_representative_does_not_depend_on_file_order(tmp_path: Path) -> None:
    # Slice 1 is written last on disk (name sorts last) and in a separate run: it still becomes representative.
    paths = write_series(tmp_path / "in", count=5)
    first = paths[0]
    moved = tmp_path / "later" / "zzz.dcm"
    moved.parent.mkdir()
    shutil.move(first, moved)
    db = tmp_path / "r.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    assert rows(db, 'SELECT "InstanceNumber" FROM "Series"') == [("2",)]
    run_ingest(moved, "--db", f"sqlite:///{db}", check=0)
    assert rows(db, 'SELECT "InstanceNumber" FROM "Series"') == [("1",)]


def test_reingest_is_idempotent_and_incremental(tmp_path: Path) -> None:
    shutil.copytree(DICOMDIR_TESTS, tmp_path / "tree")
    write_series(tmp_path / "tree" / "extra", count=20)
    db = tmp_path / "i.db"
    first = run_ingest(tmp_path / "tree", "--db", f"sqlite:///{db}", check=0)
    before = dump_tables(db)
    second = run_ingest(tmp_path / "tree", "--db", f"sqlite:///{db}", check=0)
    c1, c2 = summary(first.stdout), summary(second.stdout)
    assert c2["ingested"] == 0 and c2["unchanged"] == c1["ingested"] and c2["not_dicom"] == c1["not_dicom"]
    assert dump_tables(db) == before
    # Touch every file: all are parsed again, and the tables are still identical (SliceIDs included).
    for path in (tmp_path / "tree").rglob("*"):
        if path.is_file():
            os.utime(path)
    third = run_ingest(tmp_path / "tree", "--db", f"sqlite:///{db}", check=0)
    assert summary(third.stdout)["ingested"] == c1["ingested"]
    assert dump_tables(db) == before


def test_overlapping_paths_and_links_count_each_file_once(tmp_path: Path) -> None:
    tree = tmp_path / "in"
    write_series(tree / "a", count=3)
    write_series(tree / "b", count=2, series="series-2")
    (tree / "link-to-a").symlink_to(tree / "a")  # a link to a folder: not followed
    (tree / "b" / "link.dcm").symlink_to(tree / "a" / "slice0000.dcm")  # a link to a file: read, a duplicate
    db = tmp_path / "o.db"
    proc = run_ingest(tree, tree / "a", tree / "a" / "slice0001.dcm", "--db", f"sqlite:///{db}", check=0)
    assert summary(proc.stdout) == {
        "found": 6,
        "ingested": 5,
        "unchanged": 0,
        "duplicates": 1,
        "not_dicom": 0,
        "failed": 0,
    }
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(5,)]
    assert rows(db, 'SELECT COUNT(*) FROM "SourceFile"') == [(6,)]


def test_a_link_to_a_folder_given_as_the_path_is_walked(tmp_path: Path) -> None:
    write_series(tmp_path / "real" / "a", count=3)
    (tmp_path / "link").symlink_to(tmp_path / "real")  # e.g. /data -> /mnt/nas/collection
    proc = run_ingest(tmp_path / "link", "--db", f"sqlite:///{tmp_path / 'l.db'}", check=0)
    assert summary(proc.stdout)["ingested"] == 3
    paths = [r[0] for r in rows(tmp_path / "l.db", 'SELECT "Path" FROM "SourceFile" ORDER BY "Path"')]
    assert paths == [str(tmp_path / "link" / "a" / f"slice{i:04d}.dcm") for i in range(3)]


def test_a_file_rewritten_with_the_same_size_and_mtime_is_noticed(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in", count=3)
    db = tmp_path / "u.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    assert summary(run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0).stdout)["unchanged"] == 3
    # Same size and mtime but garbage inside: the inode's change time gives it away, and what is on disk wins.
    st = paths[1].stat()
    paths[1].write_bytes(b"\0" * st.st_size)
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    counts = summary(proc.stdout)
    assert (counts["unchanged"], counts["not_dicom"]) == (2, 1)
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(2,)]


def test_changed_file_updates_its_rows(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in", count=3)
    db = tmp_path / "c.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    ds = pydicom.dcmread(paths[0])
    ds.SeriesDescription = "RENAMED"
    ds.SliceLocation = 42.5
    ds.StudyDescription = "NEW STUDY DESCRIPTION"
    ds.save_as(paths[0])
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    assert summary(proc.stdout)["ingested"] == 1 and summary(proc.stdout)["unchanged"] == 2
    assert rows(db, 'SELECT "SeriesDescription", "SliceLocation" FROM "Series"') == [("RENAMED", 42.5)]
    # A study's columns come from the last file in path order that has a value: the two files after it say
    # otherwise, as a fresh ingest of the same files would find.
    assert rows(db, 'SELECT "StudyDescription" FROM "Study"') == [("CT CHEST",)]
    assert rows(db, 'SELECT "SliceLocation" FROM "SliceMetadata" WHERE "SliceNumber" = 1') == [(42.5,)]
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(3,)]
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{tmp_path / 'fresh.db'}", check=0)
    assert dump_tables(db) == dump_tables(tmp_path / "fresh.db")


def test_file_rewritten_as_another_instance_replaces_the_old_one(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=2)
    db = tmp_path / "x.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    # The folder is overwritten with another series of another patient.
    shutil.rmtree(tmp_path / "in")
    write_series(tmp_path / "in", count=2, patient_id="PAT-2", study="study-2", series="series-2")
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    assert rows(db, 'SELECT "PatientID" FROM "Patient"') == [("PAT-2",)]
    assert rows(db, 'SELECT "SeriesInstanceUID" FROM "Series"') == [(uid("series-2"),)]
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(2,)]
    assert rows(db, "PRAGMA foreign_key_check") == []


def test_same_instance_in_two_files_is_stored_once(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in" / "a", count=4)
    (tmp_path / "in" / "b").mkdir()
    shutil.copy(paths[2], tmp_path / "in" / "b" / "copy.dcm")
    db = tmp_path / "d.db"
    errors = tmp_path / "errors.jsonl"
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", "--errors", errors, check=0)
    counts = summary(proc.stdout)
    assert (counts["found"], counts["ingested"], counts["duplicates"]) == (5, 4, 1)
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(4,)]
    assert rows(db, 'SELECT "Path", "Reason" FROM "SourceFile" WHERE "Status" = \'duplicate\'') == [
        (str(tmp_path / "in" / "b" / "copy.dcm"), f"same SOPInstanceUID as {paths[2]}")
    ]


def test_moved_tree_takes_over_its_instances(tmp_path: Path) -> None:
    write_series(tmp_path / "old", count=3)
    db = tmp_path / "m.db"
    run_ingest(tmp_path / "old", "--db", f"sqlite:///{db}", check=0)
    before = dump_tables(db)
    shutil.move(tmp_path / "old", tmp_path / "new")
    proc = run_ingest(tmp_path / "new", "--db", f"sqlite:///{db}", check=0)
    assert summary(proc.stdout)["ingested"] == 3  # not duplicates of files that no longer exist
    assert dump_tables(db) == before
    assert all(p.startswith(str(tmp_path / "new")) for (p,) in rows(db, 'SELECT "Path" FROM "SourceFile"'))


def test_files_without_patient_id_are_never_merged(tmp_path: Path) -> None:
    write_series(tmp_path / "in" / "a", patient_id=None, study="anon-a", series="anon-a-1", count=2)
    write_series(tmp_path / "in" / "b", patient_id=None, study="anon-b", series="anon-b-1", count=2)
    write_series(tmp_path / "in" / "c", patient_id=None, study="anon-b", series="anon-b-2", count=2)
    db = tmp_path / "n.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    assert rows(db, 'SELECT "PatientID", "PatientIDGenerated" FROM "Patient" ORDER BY 1') == sorted(
        [(f"NOID-{uid('anon-a')}", 1), (f"NOID-{uid('anon-b')}", 1)]
    )
    assert rows(db, 'SELECT COUNT(*) FROM "Series"') == [(3,)]


def test_quiet_prints_only_the_summary(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=2)
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{tmp_path / 'q.db'}", "--quiet", check=0)
    assert proc.stderr == ""
    assert len(proc.stdout.strip().splitlines()) == 1 and SUMMARY.search(proc.stdout)


def test_database_url_from_environment(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=2)
    db = tmp_path / "env.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}"}
    run_ingest(tmp_path / "in", check=0, env=env)
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(2,)]


def test_default_database_is_dicom_db_in_the_working_directory(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=1)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run_ingest(tmp_path / "in", check=0, cwd=tmp_path, env=env)
    assert rows(tmp_path / "dicom.db", 'SELECT COUNT(*) FROM "SliceMetadata"') == [(1,)]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_jobs_give_identical_tables(tmp_path: Path, jobs: str) -> None:
    shutil.copytree(DICOMDIR_TESTS, tmp_path / "tree")
    reference = tmp_path / "ref.db"
    run_ingest(tmp_path / "tree", "--db", f"sqlite:///{reference}", "--jobs", "2", "--batch-size", "7", check=0)
    db = tmp_path / "j.db"
    run_ingest(tmp_path / "tree", "--db", f"sqlite:///{db}", "--jobs", jobs, check=0)
    assert dump_tables(db) == dump_tables(reference)


def test_help_describes_every_option() -> None:
    proc = run_ingest("--help", check=0)
    for option in ("--db", "--jobs", "--errors", "--quiet", "PATH"):
        assert option in proc.stdout


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=5)
    db = tmp_path / "tty.db"
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        proc = subprocess.run(
            [*ingest_command(), str(tmp_path / "in"), "--db", f"sqlite:///{db}"],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            timeout=120,
        )
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    assert b"100%" in shown and b"5/5" in shown  # tqdm's bar, on the terminal only
    assert SUMMARY.search(proc.stdout) and "%|" not in proc.stdout
