"""Enhanced multi-frame images give the rows a classic series of the same geometry gives.

An enhanced image (Enhanced CT/MR, what recent Siemens and Philips scanners write) is one instance holding all
the frames, with pixel spacing, orientation, position, rescale and exposure in functional groups instead of at
the top level. The files here are written with pydicom from a classic series (dicom_factory.write_series): the
same study, series and first instance, its per-image attributes moved into Shared and Per-frame Functional
Groups. Both are ingested with the real CLI and their rows compared; the enhanced file's one row holds its first
frame's values (docs/ingest.md, "Enhanced multi-frame images").
"""

from __future__ import annotations

import contextlib
import copy
import sqlite3
from pathlib import Path
from typing import Any

import pydicom
import pytest
from api_helpers import serve
from conftest import SHARED_DATA, TEST_FILES, run_ingest
from dicom_factory import write_series
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from dicom_db.ingest import reader
from dicom_db.ingest.reader import FUNCTIONAL_GROUP_SOP_CLASSES, read_fast, read_file, read_reference

FRAMES = 3

# The classic attributes an Enhanced CT keeps in its Shared Functional Groups: macro -> {attribute in the
# macro's item: the classic attribute whose value it holds}.
COMMON_MACROS: dict[str, dict[str, str]] = {
    "PixelMeasuresSequence": {
        "PixelSpacing": "PixelSpacing",
        "SliceThickness": "SliceThickness",
        "SpacingBetweenSlices": "SpacingBetweenSlices",
    },
    "PlaneOrientationSequence": {"ImageOrientationPatient": "ImageOrientationPatient"},
    "PixelValueTransformationSequence": {"RescaleIntercept": "RescaleIntercept", "RescaleSlope": "RescaleSlope"},
}
CT_MACROS: dict[str, dict[str, str]] = {
    **COMMON_MACROS,
    "CTXRayDetailsSequence": {"KVP": "KVP"},
    "CTExposureSequence": {
        "ExposureTimeInms": "ExposureTime",
        "XRayTubeCurrentInmA": "XRayTubeCurrent",
        "ExposureInmAs": "Exposure",
    },
    "CTReconstructionSequence": {
        "ConvolutionKernel": "ConvolutionKernel",
        "ReconstructionDiameter": "ReconstructionDiameter",
    },
    "CTAcquisitionDetailsSequence": {
        "TableHeight": "TableHeight",
        "GantryDetectorTilt": "GantryDetectorTilt",
        "RotationDirection": "RotationDirection",
    },
}
# An Enhanced MR's.
MR_MACROS: dict[str, dict[str, str]] = {
    **COMMON_MACROS,
    "MRTimingAndRelatedParametersSequence": {"RepetitionTime": "RepetitionTime", "FlipAngle": "FlipAngle"},
    "MREchoSequence": {"EffectiveEchoTime": "EchoTime"},
}
# FD in the macros where the classic attribute is a DS or an IS.
FD_ATTRIBUTES = {"ExposureTimeInms", "XRayTubeCurrentInmA", "ExposureInmAs", "EffectiveEchoTime"}
# ...and per frame: each frame's position and acquisition date and time.
PER_FRAME_MOVED = ("ImagePositionPatient", "AcquisitionDate", "AcquisitionTime")

SYNTAXES = {
    "explicit VR little endian": ExplicitVRLittleEndian,
    "implicit VR little endian": ImplicitVRLittleEndian,
    "explicit VR big endian": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}
FAST_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


# What the classic series hold besides write_series' attributes.
CT_EXTRA: dict[str, Any] = dict(
    ReconstructionDiameter=250,
    TableHeight=152.5,
    GantryDetectorTilt=0,
    RotationDirection="CW",
    XRayTubeCurrent=250,
    Exposure=125,
)
MR_EXTRA: dict[str, Any] = dict(EchoTime="4.6", RepetitionTime="2000", FlipAngle="90", MagneticFieldStrength="3")


def classic_series(folder: Path, name: str = "mf", modality: str = "CT") -> list[Path]:
    """A classic CT (or MR) series of FRAMES slices, with every attribute a functional group can hold. SliceLocation
    is left empty: no functional group holds it (an enhanced image has none). So is PixelPaddingValue, whose
    VR (US or SS) implicit VR leaves to the reference path: the implicit VR files here go the fast way."""
    return write_series(
        folder,
        study=f"{name}/study",
        series=f"{name}/series",
        count=FRAMES,
        modality=modality,
        SOPClassUID=CTImageStorage if modality == "CT" else MRImageStorage,
        SpacingBetweenSlices=1.25,
        **(CT_EXTRA if modality == "CT" else MR_EXTRA),
        SliceLocation=None,
        PixelPaddingValue=None,
    )


def _item(**attrs: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def enhanced_from(
    slices: list[Path],
    out: Path,
    *,
    syntax: str = ExplicitVRLittleEndian,
    per_frame_only: bool = False,
    undefined_length: bool = False,
    frames: int | None = None,
    macros: dict[str, dict[str, str]] = CT_MACROS,
    sop_class: str = EnhancedCTImageStorage,
) -> Path:
    """An Enhanced CT (or MR: `macros`, `sop_class`) holding the classic `slices` as frames: the first slice's
    top level without the moved attributes, the shared macros in the Shared item (or in every Per-frame item:
    `per_frame_only`), each slice's position and acquisition date and time in its Per-frame item. `frames`
    repeats the last slice's item to make a long Per-frame sequence."""
    classic = [pydicom.dcmread(p) for p in slices]
    ds = Dataset(copy.deepcopy(classic[0]))  # a plain dataset, which pydicom writes in any byte order
    ds.file_meta = copy.deepcopy(classic[0].file_meta)
    shared = Dataset()
    for macro, moved in macros.items():
        values = {attr: ds[keyword].value for attr, keyword in moved.items()}
        values.update({attr: float(value) for attr, value in values.items() if attr in FD_ATTRIBUTES})
        setattr(shared, macro, [_item(**values)])
    per_frame = []
    for slice_ in classic + classic[-1:] * max(0, (frames or 0) - len(classic)):
        item = _item(
            PlanePositionSequence=[_item(ImagePositionPatient=slice_.ImagePositionPatient)],
            FrameContentSequence=[_item(FrameAcquisitionDateTime=slice_.AcquisitionDate + slice_.AcquisitionTime)],
        )
        if per_frame_only:
            item.update(copy.deepcopy(shared))
        per_frame.append(item)
    for keyword in {kw for moved in macros.values() for kw in moved.values()} | {*PER_FRAME_MOVED}:
        del ds[keyword]
    del ds["SliceLocation"]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.NumberOfFrames = len(per_frame)
    ds.SharedFunctionalGroupsSequence = [] if per_frame_only else [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    if undefined_length:
        ds["PerFrameFunctionalGroupsSequence"].is_undefined_length = True
        for item in per_frame:
            item.is_undefined_length_sequence_item = True
    ds.PixelData = b"\0" * 32
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = syntax
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def table_rows(db: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1')]


def ingest(folder: Path, *args: str) -> Path:
    db = folder.parent / f"{folder.name}.db"
    run_ingest(folder, "--db", f"sqlite:///{db}", *args, check=0)
    return db


def assert_same_rows_as_classic(classic_db: Path, enhanced_db: Path) -> None:
    """The enhanced file's rows are the classic series' rows, its slice the classic first slice."""
    for table in ("Patient", "Study", "Series"):
        assert table_rows(enhanced_db, table) == table_rows(classic_db, table), table
    (first, *_) = sorted(table_rows(classic_db, "SliceMetadata"), key=lambda row: row["SliceNumber"])
    (enhanced,) = table_rows(enhanced_db, "SliceMetadata")
    differ = {"SliceID", "SOPClassUID", "NumberOfFrames", "TransferSyntaxUID"}  # the classic files are explicit VR
    assert {k: v for k, v in enhanced.items() if k not in differ} == {k: v for k, v in first.items() if k not in differ}
    assert enhanced["SOPClassUID"] in FUNCTIONAL_GROUP_SOP_CLASSES
    # one row for the instance, its frames counted (a classic image has no NumberOfFrames)
    assert first["NumberOfFrames"] is None
    assert enhanced["NumberOfFrames"] >= len(table_rows(classic_db, "SliceMetadata"))


def assert_both_paths_agree(path: Path, fast_expected: bool) -> None:
    reference = read_reference(str(path))
    fast = read_fast(str(path))
    assert (fast is not None) == fast_expected
    if fast is not None:
        assert fast == reference
    assert read_file(str(path)) == reference


@pytest.mark.parametrize("per_frame_only", [False, True], ids=["shared and per-frame", "per-frame only"])
@pytest.mark.parametrize("syntax", SYNTAXES.values(), ids=SYNTAXES.keys())
def test_an_enhanced_ct_gives_the_rows_of_the_classic_series(tmp_path: Path, syntax: str, per_frame_only: bool) -> None:
    slices = classic_series(tmp_path / "classic")
    enhanced = enhanced_from(slices, tmp_path / "enhanced" / "ct.dcm", syntax=syntax, per_frame_only=per_frame_only)
    assert_both_paths_agree(enhanced, fast_expected=syntax in FAST_SYNTAXES)
    assert_same_rows_as_classic(ingest(tmp_path / "classic"), ingest(tmp_path / "enhanced"))


@pytest.mark.parametrize("syntax", FAST_SYNTAXES, ids=["explicit VR", "implicit VR"])
def test_an_enhanced_mr_gives_the_rows_of_the_classic_series(tmp_path: Path, syntax: str) -> None:
    slices = classic_series(tmp_path / "classic", modality="MR")
    enhanced = enhanced_from(
        slices, tmp_path / "enhanced" / "mr.dcm", syntax=syntax, macros=MR_MACROS, sop_class=EnhancedMRImageStorage
    )
    assert_both_paths_agree(enhanced, fast_expected=True)
    db = ingest(tmp_path / "enhanced")
    assert_same_rows_as_classic(ingest(tmp_path / "classic"), db)
    (slice_,) = table_rows(db, "SliceMetadata")
    assert (slice_["EchoTime"], slice_["RepetitionTime"], slice_["FlipAngle"]) == (4.6, 2000.0, 90.0)
    assert (slice_["SpacingBetweenSlices"], slice_["MagneticFieldStrength"]) == (1.25, 3.0)


def test_the_geometry_is_the_first_frames_and_a_slice_thickness_filter_finds_it(tmp_path: Path) -> None:
    slices = classic_series(tmp_path / "classic")
    enhanced_from(slices, tmp_path / "enhanced" / "ct.dcm", syntax=ImplicitVRLittleEndian)
    db = ingest(tmp_path / "enhanced")
    (series,) = table_rows(db, "Series")
    assert series["SliceThickness"] == "1.25" and series["SliceThicknessValue"] == 1.25
    assert series["PixelSpacing"] == "0.5\\0.5"
    assert series["ImageOrientationPatient"] == "1.0\\0.0\\0.0\\0.0\\1.0\\0.0"  # as pydicom wrote them
    assert series["ImagePositionPatient"] == "-125.0\\-125.0\\-100.0"  # the first frame's
    assert (series["KVP"], series["ExposureTime"], series["ConvolutionKernel"]) == (120.0, 500, "STANDARD")
    (slice_,) = table_rows(db, "SliceMetadata")
    assert (slice_["SliceThickness"], slice_["RescaleIntercept"], slice_["RescaleSlope"]) == (1.25, -1024.0, 1.0)
    assert (slice_["AcquisitionDate"], slice_["AcquisitionTime"]) == ("2021-03-15", "10:16:00")
    assert (slice_["XRayTubeCurrent"], slice_["Exposure"], slice_["NumberOfFrames"]) == (250, 125, FRAMES)
    with sqlite3.connect(db) as conn:
        thin = conn.execute('SELECT count(*) FROM "Series" WHERE "SliceThicknessValue" < 2').fetchone()
    assert thin == (1,)


def test_a_top_level_value_wins_over_the_functional_groups(tmp_path: Path) -> None:
    slices = classic_series(tmp_path / "classic")
    path = enhanced_from(slices, tmp_path / "enhanced" / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.SliceThickness = "2.5"  # the Pixel Measures macro says 1.25
    ds.AcquisitionDate = "20200101"  # no top-level AcquisitionTime: that one comes from the first frame
    ds.save_as(path, enforce_file_format=True)
    assert_both_paths_agree(path, fast_expected=True)
    result = read_file(str(path))
    assert (result.series["SliceThickness"], result.slice["SliceThickness"]) == ("2.5", 2.5)
    assert result.series["PixelSpacing"] == "0.5\\0.5"
    assert (result.slice["AcquisitionDate"], result.slice["AcquisitionTime"]) == ("2020-01-01", "10:16:00")


def test_an_enhanced_mr_fills_the_mr_columns_by_keyword(tmp_path: Path) -> None:
    # The MR and exposure columns are filled by keyword wherever the reader has a column of that name.
    path = tmp_path / "mr.dcm"
    ds = pydicom.dcmread(classic_series(tmp_path / "classic")[0])
    for keyword in ("PixelSpacing", "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient"):
        del ds[keyword]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.Modality = "MR"
    ds.NumberOfFrames = 1  # a single frame: the SOP class alone says to read the functional groups
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[_item(PixelSpacing=[0.9, 0.9], SliceThickness="3", SpacingBetweenSlices="3.3")],
            PlaneOrientationSequence=[_item(ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])],
            MRTimingAndRelatedParametersSequence=[_item(RepetitionTime="2000", FlipAngle="90")],
            CTExposureSequence=[_item(XRayTubeCurrentInmA=250.4, ExposureInmAs=125.0)],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        _item(
            PlanePositionSequence=[_item(ImagePositionPatient=["-120", "10.5", "80"])],
            MREchoSequence=[_item(EffectiveEchoTime=4.6)],
            FrameContentSequence=[_item(FrameAcquisitionDateTime="20240102235959.123456+0100")],
        )
    ]
    ds.save_as(path, enforce_file_format=True)
    values = {"SOPClassUID": EnhancedMRImageStorage, "RescaleSlope": "2"}
    filled = reader.with_functional_groups(str(path), values, "1", deflated=False)
    assert filled == {
        "SOPClassUID": EnhancedMRImageStorage,
        "RescaleSlope": "2",  # top level: kept
        "PixelSpacing": "0.9\\0.9",
        "SliceThickness": "3",
        "SpacingBetweenSlices": "3.3",
        "ImageOrientationPatient": "1\\0\\0\\0\\0\\-1",
        "ImagePositionPatient": "-120\\10.5\\80",
        "RepetitionTime": "2000",
        "FlipAngle": "90",
        "EchoTime": "4.6",  # EffectiveEchoTime, FD, in ms as EchoTime
        "XRayTubeCurrent": "250",  # an IS column: the FD rounded
        "Exposure": "125",
        "AcquisitionDate": "2024-01-02",
        "AcquisitionTime": "23:59:59.123456",  # local time, as TM: the UTC offset is dropped
    }
    assert_both_paths_agree(path, fast_expected=True)


@pytest.mark.parametrize("undefined_length", [False, True], ids=["defined length", "undefined length"])
def test_only_the_first_frame_of_a_long_per_frame_sequence_is_read(tmp_path: Path, undefined_length: bool) -> None:
    slices = classic_series(tmp_path / "classic")
    path = enhanced_from(slices, tmp_path / "enhanced" / "ct.dcm", frames=5000, undefined_length=undefined_length)
    data = path.read_bytes()
    per_frame_at = data.index(b"\x00\x52\x30\x92")  # (5200,9230)
    assert len(data) - per_frame_at > 400_000
    limit = per_frame_at + 2000  # the first frame's item, not the sequence
    run_ingest(
        tmp_path / "enhanced", "--db", f"sqlite:///{tmp_path / 'enhanced.db'}", "--max-header-bytes", limit, check=0
    )
    assert_same_rows_as_classic(ingest(tmp_path / "classic"), tmp_path / "enhanced.db")
    (series,) = table_rows(tmp_path / "enhanced.db", "Series")
    assert series["ImagePositionPatient"] == "-125.0\\-125.0\\-100.0"
    # A limit that ends inside the first frame fails the file, as any header longer than the limit.
    db = tmp_path / "short.db"
    proc = run_ingest(
        tmp_path / "enhanced", "--db", f"sqlite:///{db}", "--max-header-bytes", per_frame_at + 40, check=1
    )
    assert "header longer than" in proc.stderr


def test_a_file_cut_in_its_functional_groups_fails_alike_both_ways(tmp_path: Path) -> None:
    slices = classic_series(tmp_path / "classic")
    whole_path = enhanced_from(slices, tmp_path / "enhanced" / "ct.dcm")
    whole = whole_path.read_bytes()
    expected = read_file(str(whole_path))
    shared_at = whole.index(b"\x00\x52\x29\x92")
    # (5200,9230) SQ, 12 bytes, then the first item's tag and length: the first frame ends there.
    per_frame_at = whole.index(b"\x00\x52\x30\x92")
    first_frame_end = per_frame_at + 20 + int.from_bytes(whole[per_frame_at + 16 : per_frame_at + 20], "little")
    for cut in range(shared_at + 4, len(whole), 7):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(whole[:cut])
        reference = read_reference(str(path))
        assert read_file(str(path)) == reference, cut
        try:
            fast = read_fast(str(path))
        except Exception:  # read_file goes the reference way then
            fast = None
        assert fast is None or fast == reference, cut
        if cut < first_frame_end:
            assert reference.status == "failed", cut
            if cut >= shared_at + 12:  # past the Shared sequence's own header, which pydicom's parser reports
                assert (reference.reason or "").startswith("truncated: an element runs past the end of the file"), cut
        else:  # what follows the first frame is never read
            assert reference.series == expected.series and reference.slice == expected.slice, cut
        path.unlink()


def test_a_classic_image_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path stops at (0028,1053) for a classic image; reading on to the functional groups is for
    # enhanced and multi-frame images only.
    calls: list[str] = []
    read_groups = reader._functional_groups

    def counting(path: str, deflated: bool) -> Any:
        calls.append(path)
        return read_groups(path, deflated)

    monkeypatch.setattr(reader, "_functional_groups", counting)
    slices = classic_series(tmp_path / "classic")
    for path in slices:
        assert read_file(str(path)).status == "dicom"
    assert calls == []
    enhanced = enhanced_from(slices, tmp_path / "enhanced.dcm")
    assert read_file(str(enhanced)).series["SliceThickness"] == "1.25"
    assert calls == [str(enhanced)]


def test_pydicoms_segmentation_with_functional_groups(tmp_path: Path) -> None:
    # pydicom ships one image with functional groups: a Segmentation whose NumberOfFrames was left out.
    path = TEST_FILES / "liver_1frame.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID in FUNCTIONAL_GROUP_SOP_CLASSES and "NumberOfFrames" not in ds
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    position = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert_both_paths_agree(path, fast_expected=True)
    db = tmp_path / "liver.db"
    folder = tmp_path / "liver"
    folder.mkdir()
    (folder / path.name).symlink_to(path)
    run_ingest(folder, "--db", f"sqlite:///{db}", check=0)
    (series,) = table_rows(db, "Series")
    assert series["SliceThickness"] == str(measures.SliceThickness)
    assert series["PixelSpacing"] == "\\".join(map(str, measures.PixelSpacing))
    assert series["ImageOrientationPatient"] == "\\".join(map(str, orientation))
    assert series["ImagePositionPatient"] == "\\".join(map(str, position))
    (slice_,) = table_rows(db, "SliceMetadata")
    assert slice_["ImagePositionPatient"] == series["ImagePositionPatient"]
    assert slice_["SliceThickness"] == float(measures.SliceThickness)


def _scanner_enhanced_files() -> list[Path]:
    found = []
    for path in sorted(SHARED_DATA.rglob("*")) if SHARED_DATA.is_dir() else []:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "NumberOfFrames"])
        except Exception:
            continue
        if ds.get("SOPClassUID") in FUNCTIONAL_GROUP_SOP_CLASSES:
            found.append(path)
    return found


def test_a_real_scanners_enhanced_file() -> None:
    files = _scanner_enhanced_files()
    if not files:
        pytest.skip(f"no enhanced multi-frame image among the scanner files in {SHARED_DATA} (all classic)")
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        groups = [*ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence[0]]
        measures = next(group.PixelMeasuresSequence for group in groups if "PixelMeasuresSequence" in group)
        result = read_file(str(path))
        assert result == read_reference(str(path)), path
        assert result.series["PixelSpacing"] == "\\".join(map(str, measures[0].PixelSpacing)), path
        assert result.series["ImagePositionPatient"], path


def test_a_classic_series_and_its_enhanced_form_count_the_same_images(tmp_path: Path) -> None:
    """One row per instance: `sliceCount` counts rows (1 for the enhanced file), `frameCount` counts images, the
    same for both forms; and a slice thickness filter finds the series in both forms."""
    slices = classic_series(tmp_path / "classic")
    enhanced_from(slices, tmp_path / "enhanced" / "ct.dcm")
    counts = []
    for db in (ingest(tmp_path / "classic"), ingest(tmp_path / "enhanced")):
        with contextlib.contextmanager(serve)(f"sqlite:///{db}") as api:
            data = api.data("{ allSeries(where: { sliceThickness: { gte: 1 } }) { nodes { sliceCount frameCount } } }")
        counts.append(data["allSeries"]["nodes"])
    assert counts == [
        [{"sliceCount": len(slices), "frameCount": len(slices)}],
        [{"sliceCount": 1, "frameCount": len(slices)}],
    ]
