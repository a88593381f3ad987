"""The reader's two paths give one answer.

`read_file` reads the common file the fast way (pydicom's element parser, values decoded from the raw bytes)
and everything else through pydicom's `read_partial` and value conversion (`read_reference`). These tests read
real files both ways and compare: every file pydicom ships, the real scanner series when present, and files
written here with values at the edges of each decoding rule (padding, multi-values, character sets, VRs other
than the dictionary's, transfer syntaxes the fast path leaves alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import DICOMDIR_TESTS, PYDICOM_DATA, SHARED_DATA
from dicom_factory import make_dataset, uid
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from dicom_db.ingest.reader import FileResult, read_fast, read_file, read_reference


def _all_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file())


def _fast_or_none(path: Path) -> FileResult | None:
    try:
        return read_fast(str(path))
    except Exception:  # read_file takes the reference path then; what matters is that no answer differs
        return None


def test_both_paths_agree_on_every_file_pydicom_ships_and_the_scanner_series() -> None:
    files = _all_files(PYDICOM_DATA)
    assert len(files) > 150
    files += _all_files(SHARED_DATA)  # the scanner series, where the checkout sits beside ../shared
    fast_count = 0
    for path in files:
        fast = _fast_or_none(path)
        reference = read_reference(str(path))
        if fast is not None:
            fast_count += 1
            assert fast == reference, path
        assert read_file(str(path)) == reference, path
    # The fast path must carry the common files, or it is dead code: every image of the dicomdirtests
    # hierarchy (explicit VR little endian with file meta) goes that way, but for TINY_ALPHA's header-only files,
    # which end before the last attribute read: the reference path tells those from truncated files.
    dicomdir_images = [
        p
        for p in _all_files(DICOMDIR_TESTS)
        if not p.name.startswith(("DICOMDIR", "README")) and "TINY_ALPHA" not in p.parts
    ]
    assert dicomdir_images and all(_fast_or_none(p) is not None for p in dicomdir_images)
    assert fast_count >= len(dicomdir_images)


def _write(path: Path, raw: dict[int, tuple[str, Any]], syntax: str | None = None, **attrs: Any) -> Path:
    """A CT image whose listed elements hold exactly the given bytes (pydicom writes bytes as they are)."""
    ds = make_dataset(
        StudyInstanceUID=uid("reader/study"),
        SeriesInstanceUID=uid("reader/series"),
        SOPInstanceUID=uid(f"reader/{path.name}"),
        PatientID="READER-1",
        Modality="CT",
        InstanceNumber=1,
        Rows=4,
        Columns=4,
        BitsAllocated=16,
        PixelData=b"\0" * 32,
        **attrs,
    )
    for tag, (vr, value) in raw.items():
        ds.add_new(tag, vr, value)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


PATIENT_NAME, CHARSET, STUDY_DATE, STUDY_TIME = 0x00100010, 0x00080005, 0x00080020, 0x00080030
SLICE_THICKNESS, INSTANCE_NUMBER, MODALITY, SOP_CLASS = 0x00180050, 0x00200013, 0x00080060, 0x00080016
PIXEL_PADDING, PIXEL_REPRESENTATION, SERIES_DESCRIPTION = 0x00280120, 0x00280103, 0x0008103E
STUDY_UID, REFERRING_PHYSICIAN = 0x0020000D, 0x00080090

# name -> (raw elements, transfer syntax, fast path expected, {table.column: expected value})
CASES: dict[str, tuple[dict[int, tuple[str, Any]], str | None, bool, dict[str, Any]]] = {
    "latin-1 name": (
        {CHARSET: ("CS", b"ISO_IR 100"), PATIENT_NAME: ("PN", "Müller^Jürgen ".encode("latin-1"))},
        None,
        True,
        {"patient.PatientName": "Müller^Jürgen"},
    ),
    "UTF-8 name and description": (
        {
            CHARSET: ("CS", b"ISO_IR 192"),
            PATIENT_NAME: ("PN", "Παπαδόπουλος^Δημήτριος".encode()),
            SERIES_DESCRIPTION: ("LO", "Séries \\ two ".encode()),
        },
        None,
        True,
        {"patient.PatientName": "Παπαδόπουλος^Δημήτριος", "series.SeriesDescription": "Séries\\ two"},
    ),
    "bytes that are not UTF-8": (
        {CHARSET: ("CS", b"ISO_IR 192"), SERIES_DESCRIPTION: ("LO", b"caf\xe9")},
        None,
        False,
        {},
    ),
    "ISO 2022 escape sequences": (
        {
            CHARSET: ("CS", b"\\ISO 2022 IR 87"),
            PATIENT_NAME: ("PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"),
        },
        None,
        False,
        {"patient.PatientName": "Yamada^Tarou=山田^太郎"},
    ),
    "names: only the end of the whole value is stripped": (
        {PATIENT_NAME: ("PN", b"Doe^John \\Roe^Jane "), REFERRING_PHYSICIAN: ("PN", b"Ref^A\x00\\Ref^B\x00")},
        None,
        True,
        {"patient.PatientName": "Doe^John \\Roe^Jane", "study.ReferringPhysicianName": "Ref^A\x00\\Ref^B"},
    ),
    "name with component groups": (
        {PATIENT_NAME: ("PN", b"Yamada^Tarou=YAMADA^TAROU")},
        None,
        False,
        {"patient.PatientName": "Yamada^Tarou=YAMADA^TAROU"},
    ),
    "padded multi-valued DS, zero-padded IS": (
        {SLICE_THICKNESS: ("DS", b" 1.50 \\2.0 "), INSTANCE_NUMBER: ("IS", b"0012")},
        None,
        True,
        {"series.SliceThickness": "1.50\\2.0", "slice.SliceThickness": 1.5, "slice.SliceNumber": 12},
    ),
    "IS written as a decimal": ({INSTANCE_NUMBER: ("IS", b"3.0 ")}, None, False, {"slice.SliceNumber": 3}),
    "multi-valued date": ({STUDY_DATE: ("DA", b"20200101\\20200102")}, None, False, {}),
    "date, time and padding": (
        {STUDY_DATE: ("DA", b"20200229"), STUDY_TIME: ("TM", b"101530.25 "), SOP_CLASS: ("UI", b"1.2.3.4\x00")},
        None,
        True,
        {"study.StudyDate": "2020-02-29", "study.StudyTime": "10:15:30.25", "slice.SOPClassUID": "1.2.3.4"},
    ),
    "empty and blank values": (
        {MODALITY: ("CS", b"  "), 0x00100040: ("CS", b"")},
        None,
        True,
        {"series.Modality": None, "patient.PatientSex": None},
    ),
    "signed pixel padding": (
        {PIXEL_REPRESENTATION: ("US", 1), PIXEL_PADDING: ("SS", -2000)},
        None,
        True,
        {"slice.PixelPaddingValue": -2000},
    ),
    "implicit VR little endian": (
        {SLICE_THICKNESS: ("DS", b"0.625 ")},
        ImplicitVRLittleEndian,
        True,
        {"slice.SliceThickness": 0.625},
    ),
    "implicit VR, pixel padding of ambiguous VR": (
        {PIXEL_REPRESENTATION: ("US", 1), PIXEL_PADDING: ("SS", -1)},
        ImplicitVRLittleEndian,
        False,
        {"slice.PixelPaddingValue": -1},
    ),
    "explicit VR big endian": ({}, ExplicitVRBigEndian, False, {"series.Modality": "CT", "series.Rows": 4}),
    "deflated": ({}, DeflatedExplicitVRLittleEndian, False, {"series.Modality": "CT"}),
    "a private element longer than the first read": (
        {0x00191010: ("OB", b"\1" * 300_000)},
        None,
        True,
        {"series.Modality": "CT"},
    ),
    "a private element longer than the longest read": (
        {0x00191010: ("OB", b"\1" * 5_000_000)},
        None,
        False,
        {"series.Modality": "CT"},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_edge_values_read_alike_both_ways(tmp_path: Path, name: str) -> None:
    raw, syntax, fast_expected, expected = CASES[name]
    path = str(_write(tmp_path / "edge.dcm", raw, syntax))
    reference = read_reference(path)
    assert reference.status == "dicom", reference.reason
    fast = _fast_or_none(Path(path))
    assert (fast is not None) == fast_expected
    if fast is not None:
        assert fast == reference
    assert read_file(path) == reference
    for key, value in expected.items():
        table, column = key.split(".")
        assert getattr(reference, table)[column] == value, key


def _rewrite(path: Path, written: bytes, instead: bytes) -> None:
    """Replace one element's bytes as pydicom wrote them: for what pydicom will not write (it fixes VRs and
    padding), but other writers do."""
    data = path.read_bytes()
    assert data.count(written) == 1
    path.write_bytes(data.replace(written, instead))


# name -> (raw elements as pydicom writes them, their bytes, the bytes some other writer puts there, fast path expected)
REWRITTEN: dict[str, tuple[dict[int, tuple[str, Any]], bytes, bytes, bool]] = {
    # As some anonymisers do: a standard element as UN (4-byte length form).
    "a standard element written as UN": (
        {MODALITY: ("CS", b"MR")},
        b"\x08\x00\x60\x00CS\x02\x00MR",
        b"\x08\x00\x60\x00UN\x00\x00\x02\x00\x00\x00MR",
        False,
    ),
    # pydicom's UID() strips whitespace other than the padding from each value.
    "a UID ending in a line feed": (
        {STUDY_UID: ("UI", b"1.2.826.0.1.3680043.8.498.77")},
        b"\x20\x00\x0d\x00UI\x1c\x001.2.826.0.1.3680043.8.498.77",
        b"\x20\x00\x0d\x00UI\x1c\x001.2.826.0.1.3680043.8.498.7\n",
        False,
    ),
    # A character set whose VR is not CS.
    "SpecificCharacterSet as OB": (
        {CHARSET: ("CS", b"ISO_IR 100")},
        b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100",
        b"\x08\x00\x05\x00OB\x00\x00\x0a\x00\x00\x00ISO_IR 100",
        False,
    ),
}


@pytest.mark.parametrize("name", REWRITTEN)
def test_elements_pydicom_would_not_write_read_alike_both_ways(tmp_path: Path, name: str) -> None:
    raw, written, instead, fast_expected = REWRITTEN[name]
    path = _write(tmp_path / "rewritten.dcm", raw)
    _rewrite(path, written, instead)
    reference = read_reference(str(path))
    fast = _fast_or_none(path)
    assert (fast is not None) == fast_expected
    assert read_file(str(path)) == reference  # whatever pydicom makes of it, failure included


def test_a_name_pydicom_cannot_re_encode_reads_alike_both_ways(tmp_path: Path) -> None:
    # pydicom re-encodes names with its own ISO 2022 encoders, and fails on an empty component.
    path = _write(tmp_path / "jis.dcm", {CHARSET: ("CS", b"ISO 2022 IR 87"), PATIENT_NAME: ("PN", b"Yamada^^Tarou")})
    assert _fast_or_none(path) is None
    assert read_file(str(path)) == read_reference(str(path))


def test_a_sequence_across_the_first_read_is_read_fast(tmp_path: Path) -> None:
    # An undefined-length sequence before the UIDs that runs past the first 64 KiB read: read again, longer.
    path = _write(tmp_path / "seq.dcm", {})
    ds = pydicom.dcmread(path)
    items = []
    for i in range(1200):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid(f"reader/ref/{i}")
        items.append(item)
    ds.ReferencedImageSequence = items
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size > 2 * 64 * 1024
    fast = _fast_or_none(path)
    assert fast is not None and fast == read_reference(str(path))


def test_a_truncated_header_reads_alike_both_ways(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.dcm", {SERIES_DESCRIPTION: ("LO", b"AXIAL")}).read_bytes()
    for cut in range(132, len(whole), 7):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(whole[:cut])
        fast = _fast_or_none(path)
        reference = read_reference(str(path))
        if fast is not None:
            assert fast == reference, cut
        assert read_file(str(path)) == reference, cut
