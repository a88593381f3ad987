"""Read one DICOM file's header into plain Python values: the only module that imports pydicom.

`read_file(path)` never raises for bad input: it returns a `FileResult` whose `status` says what the file
was (`dicom`, `not_dicom` or `failed`) and, for failures, a `reason` a person can act on.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pydicom
import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Values that break a VR's rules are kept as read instead of raising on access; ingest never fails a whole
# file for one malformed number.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Column -> DICOM keyword, per table. Columns whose name is not a DICOM keyword are mapped explicitly.
PATIENT_COLUMNS: dict[str, str] = {
    "PatientID": "PatientID",
    "PatientName": "PatientName",
    "PatientSex": "PatientSex",
    "PatientAge": "PatientAge",
    "PatientBirthDate": "PatientBirthDate",
    "PatientIdentityRemoved": "PatientIdentityRemoved",
    "DeIdentificationMethod": "DeidentificationMethod",
    "LastMenstrualDate": "LastMenstrualDate",
}
STUDY_COLUMNS: dict[str, str] = {
    "StudyInstanceUID": "StudyInstanceUID",
    "StudyDescription": "StudyDescription",
    "StudyDate": "StudyDate",
    "StudyTime": "StudyTime",
    "StudyID": "StudyID",
    "SeriesDate": "SeriesDate",
    "ReferringPhysicianName": "ReferringPhysicianName",
}
SERIES_COLUMNS: dict[str, str] = {
    "SeriesInstanceUID": "SeriesInstanceUID",
    "SeriesDescription": "SeriesDescription",
    "Modality": "Modality",
    "SliceThickness": "SliceThickness",
    "PixelSpacing": "PixelSpacing",
    "ImagePositionPatient": "ImagePositionPatient",
    "ImageOrientationPatient": "ImageOrientationPatient",
    "Rows": "Rows",
    "Columns": "Columns",
    "ImageType": "ImageType",
    "AcquisitionNumber": "AcquisitionNumber",
    "InstanceNumber": "InstanceNumber",
    "PatientPosition": "PatientPosition",
    "ExposureTime": "ExposureTime",
    "KVP": "KVP",
    "TableHeight": "TableHeight",
    "SliceLocation": "SliceLocation",
    "BodyPartExamined": "BodyPartExamined",
    "ScanOptions": "ScanOptions",
    "ReconstructionDiameter": "ReconstructionDiameter",
    "DistanceSourceToPatient": "DistanceSourceToPatient",
    "GantryDetectorTilt": "GantryDetectorTilt",
    "RotationDirection": "RotationDirection",
    "ConvolutionKernel": "ConvolutionKernel",
}
SLICE_COLUMNS: dict[str, str] = {
    "SOPInstanceUID": "SOPInstanceUID",
    "SOPClassUID": "SOPClassUID",
    "AcquisitionDate": "AcquisitionDate",
    "AcquisitionTime": "AcquisitionTime",
    "ContrastBolusAgent": "ContrastBolusAgent",
    "AccessionNumber": "AccessionNumber",
    # No attribute is called SliceNumber: the instance's InstanceNumber (0020,0013) numbers the slice.
    "SliceNumber": "InstanceNumber",
    "SliceLocation": "SliceLocation",
    "SliceThickness": "SliceThickness",
    "PixelPaddingValue": "PixelPaddingValue",
    "RescaleIntercept": "RescaleIntercept",
    "RescaleSlope": "RescaleSlope",
    # The de-identification flag "Longitudinal Temporal Information Modified" (0028,0303).
    "LongitudinalTemporalInfo": "LongitudinalTemporalInformationModified",
    "ImagePositionPatient": "ImagePositionPatient",
}

# How each column is stored: the seed types decide (TEXT columns keep DICOM's text form, numbers are numbers).
INT_COLUMNS = {"Rows", "Columns", "ExposureTime", "SliceNumber", "PixelPaddingValue"}
FLOAT_COLUMNS = {
    "KVP",
    "TableHeight",
    "SliceLocation",
    "ReconstructionDiameter",
    "DistanceSourceToPatient",
    "GantryDetectorTilt",
    "RescaleIntercept",
    "RescaleSlope",
}
# SliceThickness is TEXT in Series (the user's type) but REAL in SliceMetadata.
SLICE_FLOAT_COLUMNS = FLOAT_COLUMNS | {"SliceThickness"}
DATE_KEYWORDS = {"PatientBirthDate", "LastMenstrualDate", "StudyDate", "SeriesDate", "AcquisitionDate"}
TIME_KEYWORDS = {"StudyTime", "AcquisitionTime"}

EXTRA_KEYWORDS = ("SpecificCharacterSet", "PixelRepresentation", "DirectoryRecordSequence")
VALUE_KEYWORDS: list[str] = sorted(
    {*PATIENT_COLUMNS.values(), *STUDY_COLUMNS.values(), *SERIES_COLUMNS.values(), *SLICE_COLUMNS.values()}
)
KEYWORDS: list[str] = sorted({*VALUE_KEYWORDS, *EXTRA_KEYWORDS})


@dataclass(slots=True)
class FileResult:
    """What one file held: plain values per table, or why it was not ingested."""

    path: str
    status: str  # "dicom" | "not_dicom" | "failed"
    reason: str | None = None
    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    slice: dict[str, Any] = field(default_factory=dict)


def read_file(path: str) -> FileResult:
    """Parse the header of `path` (no pixel data, only the tags the tables need)."""
    try:
        ds = _read(path)
    except _NotDicom as exc:
        return FileResult(path, "not_dicom", str(exc))
    except RecursionError:
        return FileResult(path, "failed", "sequences nested too deeply to parse")
    except (InvalidDicomError, EOFError) as exc:
        return FileResult(path, "failed", f"invalid DICOM: {_one_line(exc)}")
    except OSError as exc:
        return FileResult(path, "failed", f"cannot read file: {exc.strerror or _one_line(exc)}")
    except Exception as exc:  # pydicom raises many kinds on corrupt input; report, never crash a run
        return FileResult(path, "failed", f"cannot parse DICOM header: {type(exc).__name__}: {_one_line(exc)}")
    try:
        return _to_result(path, ds)
    except RecursionError:
        return FileResult(path, "failed", "sequences nested too deeply to parse")
    except Exception as exc:
        return FileResult(path, "failed", f"cannot decode DICOM header: {type(exc).__name__}: {_one_line(exc)}")


class _NotDicom(Exception):
    pass


def _read(path: str) -> Dataset:
    if os.path.getsize(path) == 0:
        raise _NotDicom("empty file")
    try:
        return _dcmread(path)
    except InvalidDicomError:
        # A file without the 128-byte preamble and "DICM" may still be DICOM (old ACR-NEMA style or a raw
        # dataset): read it only when it starts like a dataset (an element of group 0002 or 0008), so that
        # text files and images are never "read" as junk.
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
            return _dcmread(path, force=True)
        raise _NotDicom("not a DICOM file (no DICM prefix, does not start with a DICOM element)") from None


# Elements come in ascending tag order: past the last tag the tables need, the rest of the header (vendor
# private groups, request sequences, overlays, pixel data) is not read at all. Lookups use the tags, not the
# keywords: pydicom turns a keyword into a tag on every access, which cost more than the parse itself.
TAG_OF: dict[str, int] = {kw: int(tag_for_keyword(kw)) for kw in KEYWORDS}  # type: ignore[arg-type]
_TAGS = sorted(TAG_OF.values())
_LAST_TAG = _TAGS[-1]


def _past_last_tag(tag: int, vr: str | None, length: int) -> bool:
    return int.__gt__(tag, _LAST_TAG)  # int's comparison: BaseTag's Python-level __gt__ is slow here


def _dcmread(path: str, force: bool = False) -> Dataset:
    with open(path, "rb") as fh:
        return read_partial(fh, stop_when=_past_last_tag, specific_tags=_TAGS, force=force)


def _to_result(path: str, ds: Dataset) -> FileResult:
    charset = ds._character_set
    values = {kw: _value(ds, kw, charset) for kw in VALUE_KEYWORDS}
    if values["SOPClassUID"] == MEDIA_STORAGE_DIRECTORY or TAG_OF["DirectoryRecordSequence"] in ds._dict:
        return FileResult(path, "not_dicom", "DICOMDIR (a media directory, not an image)")
    missing = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not values.get(kw)]
    if missing:
        return FileResult(path, "failed", "missing " + ", ".join(missing))

    patient = {col: values[kw] for col, kw in PATIENT_COLUMNS.items()}
    patient["PatientIDGenerated"] = 0
    if not patient["PatientID"]:
        # No ID: one synthetic patient per study, so that studies of different people are never merged.
        patient["PatientID"] = "NOID-" + values["StudyInstanceUID"]
        patient["PatientIDGenerated"] = 1
    study = {col: values[kw] for col, kw in STUDY_COLUMNS.items()}
    study["PatientID"] = patient["PatientID"]
    series = {col: _typed(col, values[kw]) for col, kw in SERIES_COLUMNS.items()}
    series["StudyInstanceUID"] = values["StudyInstanceUID"]
    series["SliceThicknessValue"] = _as_float(values["SliceThickness"])
    series["RepresentativeKey"] = representative_key(values["InstanceNumber"], values["SOPInstanceUID"])
    slice_ = {col: _typed(col, values[kw], SLICE_FLOAT_COLUMNS) for col, kw in SLICE_COLUMNS.items()}
    slice_["SeriesInstanceUID"] = values["SeriesInstanceUID"]
    return FileResult(path, "dicom", None, patient, study, series, slice_)


def representative_key(instance_number: str | None, sop_uid: str) -> str:
    """Sort key choosing a series' representative instance: smallest InstanceNumber, then SOPInstanceUID."""
    number = _as_int(instance_number)
    # Offset so that negative numbers sort before positive ones as text; instances without a number last.
    rank = f"{number + 10**11:013d}" if number is not None and abs(number) < 10**11 else "9" * 13
    return f"{rank}|{sop_uid}"


def _value(ds: Dataset, keyword: str, charset: Any) -> str | None:
    """The element as DICOM text: multi-values joined with a backslash, names as Unicode, dates ISO."""
    value = _get(ds, keyword, charset)
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        # Ambiguous VRs (US or SS) read without the tag that resolves them arrive as raw bytes.
        if keyword == "PixelPaddingValue" and len(value) in (2, 4):
            pixel_representation = (
                ds[TAG_OF["PixelRepresentation"]].value if TAG_OF["PixelRepresentation"] in ds._dict else 0
            )
            signed = pixel_representation == 1
            return str(int.from_bytes(value, "big" if not ds.is_little_endian else "little", signed=signed))
        return value.decode("latin-1").strip("\x00 ") or None
    if keyword in DATE_KEYWORDS:
        return iso_date(str(value))
    if keyword in TIME_KEYWORDS:
        return iso_time(str(value))
    text = "\\".join(_scalar(v) for v in value) if isinstance(value, MultiValue | list | tuple) else _scalar(value)
    text = text.strip("\x00 ")
    return text or None


def _scalar(value: Any) -> str:
    if isinstance(value, PersonName):
        return str(value)  # decoded with SpecificCharacterSet; keeps the "=" component groups
    return str(value)


_DATE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TIME = re.compile(r"^(\d{2}):?(\d{2})?:?(\d{2})?(\.\d{1,6})?$")


def iso_date(text: str) -> str | None:
    """DICOM DA (YYYYMMDD, or ACR-NEMA YYYY.MM.DD) as an ISO date; the original text if it is not a date."""
    text = text.strip()
    match = _DATE.match(text)
    if match:
        try:
            return dt.date(*(int(g) for g in match.groups())).isoformat()
        except ValueError:
            pass
    return text or None


def iso_time(text: str) -> str | None:
    """DICOM TM (HHMMSS.FFFFFF, parts optional) as an ISO time; the original text if it is not a time."""
    text = text.strip()
    match = _TIME.match(text)
    if match:
        hh, mm, ss, frac = match.groups()
        if int(hh) < 24 and int(mm or 0) < 60 and int(ss or 0) < 61:
            return f"{hh}:{mm or '00'}:{ss or '00'}{frac or ''}"
    return text or None


def _typed(column: str, text: str | None, float_columns: set[str] = FLOAT_COLUMNS) -> Any:
    if column in INT_COLUMNS:
        return _as_int(text)
    if column in float_columns:
        return _as_float(text)
    return text


def _as_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        number = float(text.split("\\")[0])
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _as_int(text: str | None) -> int | None:
    number = _as_float(text)
    return int(number) if number is not None and number.is_integer() else None


def _get(ds: Dataset, keyword: str, charset: Any = None) -> Any:
    """The element's value, None when absent. Converted straight from the raw element with the file's
    character set: Dataset.__getitem__ looks the character set up again for every element and stores the
    converted element back, which cost more than parsing the file."""
    elem = ds._dict.get(TAG_OF[keyword])
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=charset or ds._character_set, ds=ds)
    return elem.value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
