"""Read one DICOM file's header into plain Python values: the only module that imports pydicom.

`read_file(path)` never raises for bad input: it returns a `FileResult` whose `status` says what the file
was (`dicom`, `not_dicom` or `failed`) and, for failures, a `reason` a person can act on.

Two paths, one answer. The common file (preamble, file meta with a group length, little endian, values in the
VRs the standard gives them, no ISO 2022 escapes) goes the fast way: pydicom's element parser over the bytes
read at once, values decoded from the raw bytes here. Every other file, and every file whose fast reading
meets anything unexpected, goes through pydicom's `read_partial` and its value conversion, which is the
reference: tests/test_reader.py checks that both paths give the same result on every file they both read.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, BinaryIO

import pydicom
import pydicom.config
from pydicom.charset import convert_encodings, custom_encoders
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_partial, read_sequence_item
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    BreastTomosynthesisImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    EnhancedUSVolumeStorage,
    EnhancedXAImageStorage,
    EnhancedXRFImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MRSpectroscopyStorage,
    OphthalmicTomographyImageStorage,
    ParametricMapStorage,
    PrivateTransferSyntaxes,
    SegmentationStorage,
    XRay3DAngiographicImageStorage,
    XRay3DCraniofacialImageStorage,
)
from pydicom.valuerep import PersonName
from pydicom.values import convert_string

from dicom_db.ingest.derive import rank_key
from dicom_db.ingest.limits import DEFAULT_MAX_HEADER_BYTES
from dicom_db.model import registry

# Values that break a VR's rules are kept as read instead of raising on access; ingest never fails a whole
# file for one malformed number.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Column -> DICOM keyword, per table, and how each column is stored: from the registry (model/registry.py).
PATIENT_COLUMNS: dict[str, str] = registry.read_keywords("Patient")
STUDY_COLUMNS: dict[str, str] = registry.read_keywords("Study")
SERIES_COLUMNS: dict[str, str] = registry.read_keywords("Series")
SLICE_COLUMNS: dict[str, str] = registry.read_keywords("SliceMetadata")
# The stored type decides (TEXT columns keep DICOM's text form, numbers are numbers); SliceThickness, say, is TEXT
# in Series (the user's type) but REAL in SliceMetadata.
_TYPES = {(e.table, e.column): e.sql_type for e in registry.ENTRIES}
_TYPED: dict[str, dict[str, str]] = {
    table: {c: _TYPES[table, c] for c in columns if _TYPES[table, c] != "TEXT"}
    for table, columns in (("Series", SERIES_COLUMNS), ("SliceMetadata", SLICE_COLUMNS))
}
_VR = {e.keyword: e.vr for e in registry.ENTRIES if e.origin is registry.Origin.DICOM}
DATE_KEYWORDS = {kw for kw, vr in _VR.items() if vr == "DA"}
TIME_KEYWORDS = {kw for kw, vr in _VR.items() if vr == "TM"}
# Read from the file meta information (group 0002), not from the dataset.
META_KEYWORDS = {e.keyword for e in registry.ENTRIES if e.tag.startswith("(0002,")}

# NumberOfFrames: whether to read the functional groups of an enhanced multi-frame image (end of this module).
EXTRA_KEYWORDS = ("SpecificCharacterSet", "PixelRepresentation", "DirectoryRecordSequence", "NumberOfFrames")
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
    # The file could not be read (permissions, I/O error): what it holds is unknown, so what it held stays.
    io_error: bool = False


# Bytes of a header read at most (ingest/limits.py): a file that claims gigabytes costs at most this much.
_limits = {"max_header_bytes": DEFAULT_MAX_HEADER_BYTES}


def set_max_header_bytes(limit: int) -> None:
    _limits["max_header_bytes"] = limit


def read_file(path: str) -> FileResult:
    """Parse the header of `path` (no pixel data, only the tags the tables need)."""
    try:
        result = read_fast(path)
    except _NotRegular:
        return FileResult(path, "not_dicom", "not a regular file")
    except OSError as exc:
        return FileResult(path, "failed", f"cannot read file: {exc.strerror or _one_line(exc)}", io_error=True)
    except Exception:  # anything unexpected: the reference path below reads the file again and says why
        result = None
    return result if result is not None else read_reference(path)


class _NotRegular(Exception):
    pass


def _open(path: str) -> BinaryIO:
    """The file, opened without blocking: a FIFO or device put where a file was is refused, never waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegular
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _TooLong(Exception):
    pass


class _Bounded:
    """A file for pydicom that never reads past `limit` bytes nor allocates more than the file holds, and notes
    whether an element ran past the end of the file (a truncated file, whose values would be incomplete)."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._fh = fh
        self.name = getattr(fh, "name", None)
        self.size = os.fstat(fh.fileno()).st_size
        self.limit = limit
        self.truncated = False
        self.inflated_cut = False

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._fh.seek(offset, whence)
        if position > self.size:
            self.truncated = True  # an element skipped past the end
        return position

    def read(self, size: int | None = -1) -> bytes:
        position = self._fh.tell()
        if size is None or size < 0:
            return self._deflated(position)
        available = max(0, self.size - position)
        if position + min(size, available) > self.limit:
            raise _TooLong
        if size > available and position and not (available == 0 and size == 8):
            self.truncated = True  # a value or header cut by the end of the file (8 bytes at the end: the end)
        return self._fh.read(min(size, available))

    def _deflated(self, position: int) -> bytes:
        """pydicom reads the rest of a deflated file at once and inflates it whole; give it a stream that
        inflates to at most `limit` bytes (the header; what follows it is never needed)."""
        if self.size - position > self.limit:
            raise _TooLong
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        data = inflater.decompress(self._fh.read(), self.limit)
        self.inflated_cut = bool(inflater.unconsumed_tail) or not inflater.eof
        packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()


def read_reference(path: str) -> FileResult:
    """`read_file` through pydicom's `read_partial` and value conversion: any file, any encoding."""
    try:
        ds = _read(path)
    except _NotDicom as exc:
        return FileResult(path, "not_dicom", str(exc))
    except _NotRegular:
        return FileResult(path, "not_dicom", "not a regular file")
    except _Failed as exc:
        return FileResult(path, "failed", str(exc))
    except _TooLong:
        limit = _limits["max_header_bytes"]
        return FileResult(path, "failed", f"header longer than {limit} bytes (--max-header-bytes)")
    except MemoryError:
        return FileResult(path, "failed", "out of memory while reading the header")
    except RecursionError:
        return FileResult(path, "failed", "sequences nested too deeply to parse")
    except (InvalidDicomError, EOFError) as exc:
        return FileResult(path, "failed", f"invalid DICOM: {_one_line(exc)}")
    except OSError as exc:
        return FileResult(path, "failed", f"cannot read file: {exc.strerror or _one_line(exc)}", io_error=True)
    except Exception as exc:  # pydicom raises many kinds on corrupt input; report, never crash a run
        return FileResult(path, "failed", f"cannot parse DICOM header: {type(exc).__name__}: {_one_line(exc)}")
    try:
        return _to_result(path, ds)
    except _Failed as exc:
        return FileResult(path, "failed", str(exc))
    except OSError as exc:
        return FileResult(path, "failed", f"cannot read file: {exc.strerror or _one_line(exc)}", io_error=True)
    except RecursionError:
        return FileResult(path, "failed", "sequences nested too deeply to parse")
    except Exception as exc:
        return FileResult(path, "failed", f"cannot decode DICOM header: {type(exc).__name__}: {_one_line(exc)}")


class _NotDicom(Exception):
    pass


class _Failed(Exception):
    """The file is DICOM but its header cannot be stored whole; the message says why."""


def _read(path: str) -> Dataset:
    with _open(path) as raw:
        fh = _Bounded(raw, _limits["max_header_bytes"])
        if fh.size == 0:
            raise _NotDicom("empty file")
        try:
            return _dcmread(fh)
        except InvalidDicomError:
            # A file without the 128-byte preamble and "DICM" may still be DICOM (old ACR-NEMA style or a raw
            # dataset): read it only when it starts like a dataset (an element of group 0002 or 0008), so that
            # text files and images are never "read" as junk.
            fh.seek(0)
            fh.truncated = False
            head = fh.read(4)
            if head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
                fh.seek(0)
                return _dcmread(fh, force=True)
            raise _NotDicom("not a DICOM file (no DICM prefix, does not start with a DICOM element)") from None


# Elements come in ascending tag order: past the last tag the tables need, the rest of the header (vendor
# private groups, request sequences, overlays, pixel data) is not read at all. Lookups use the tags, not the
# keywords: pydicom turns a keyword into a tag on every access, which cost more than the parse itself.
TAG_OF: dict[str, int] = {kw: int(tag_for_keyword(kw)) for kw in KEYWORDS}  # type: ignore[arg-type]
_TAGS = sorted(TAG_OF.values())
_LAST_TAG = _TAGS[-1]


def _past_last_tag(tag: int, vr: str | None, length: int) -> bool:
    return int.__gt__(tag, _LAST_TAG)  # int's comparison: BaseTag's Python-level __gt__ is slow here


def _dcmread(fh: _Bounded, force: bool = False) -> Dataset:
    stopped: list[bool] = []

    def stop(tag: int, vr: str | None, length: int) -> bool:
        if int.__gt__(tag, _LAST_TAG):
            stopped.append(True)
            return True
        return False

    ds = read_partial(fh, stop_when=stop, specific_tags=_TAGS, force=force)  # type: ignore[arg-type]
    if fh.truncated and not stopped:
        raise _Failed("truncated: an element runs past the end of the file, before the last attribute read")
    if fh.inflated_cut and not stopped:
        raise _Failed(f"deflated header larger than {fh.limit} bytes (--max-header-bytes)")
    return ds


def _to_result(path: str, ds: Dataset) -> FileResult:
    charset = ds._character_set
    values = {kw: _value(ds, kw, charset) for kw in VALUE_KEYWORDS if kw not in META_KEYWORDS}
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    for kw in META_KEYWORDS:
        values[kw] = _value(meta, kw, charset) if meta is not None else None
    if values["SOPClassUID"] == MEDIA_STORAGE_DIRECTORY or TAG_OF["DirectoryRecordSequence"] in ds._dict:
        return FileResult(path, "not_dicom", "DICOMDIR (a media directory, not an image)")
    values = with_functional_groups(path, values, _value(ds, "NumberOfFrames", charset), deflated=_is_deflated(ds))
    return _rows(path, values)


def _rows(path: str, values: dict[str, str | None]) -> FileResult:
    """The table rows of one image from its values as DICOM text (None for absent or empty)."""
    missing = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not values.get(kw)]
    if missing:
        return FileResult(path, "failed", "missing " + ", ".join(missing))

    patient = {col: values.get(kw) for col, kw in PATIENT_COLUMNS.items()}
    patient["PatientIDGenerated"] = 0
    if not patient["PatientID"]:
        # No ID: one synthetic patient per study, so that studies of different people are never merged.
        patient["PatientID"] = "NOID-" + values["StudyInstanceUID"]
        patient["PatientIDGenerated"] = 1
    study = {col: values.get(kw) for col, kw in STUDY_COLUMNS.items()}
    study["PatientID"] = patient["PatientID"]
    typed = _TYPED["Series"]
    series = {col: _typed(typed.get(col), values.get(kw)) for col, kw in SERIES_COLUMNS.items()}
    series["SliceThicknessValue"] = _as_float(values["SliceThickness"])
    series["RepresentativeKey"] = representative_key(values["InstanceNumber"], values["SOPInstanceUID"])
    typed = _TYPED["SliceMetadata"]
    slice_ = {col: _typed(typed.get(col), values.get(kw)) for col, kw in SLICE_COLUMNS.items()}
    return FileResult(path, "dicom", None, patient, study, series, slice_)


def representative_key(instance_number: str | None, sop_uid: str) -> str:
    """Sort key choosing a series' representative instance (ingest/derive.py)."""
    return rank_key(_as_int(instance_number), sop_uid)


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


def _typed(sql_type: str | None, text: str | None) -> Any:
    if sql_type == "INTEGER":
        return _as_int(text)
    if sql_type == "REAL":
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
    """An integer of DICOM's range for IS (32-bit signed, as PostgreSQL's INTEGER), else None."""
    number = _as_float(text)
    if number is None or not number.is_integer() or not -(2**31) <= number < 2**31:
        return None
    return int(number)


def _get(ds: Dataset, keyword: str, charset: Any = None) -> Any:
    """The element's value, None when absent. Converted straight from the raw element with the file's
    character set: Dataset.__getitem__ looks the character set up again for every element and stores the
    converted element back, which cost more than parsing the file."""
    elem = ds._dict.get(TAG_OF[keyword])
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        try:
            elem = convert_raw_data_element(elem, encoding=charset or ds._character_set, ds=ds)
        except (ValueError, OverflowError):
            if elem.VR not in ("IS", "DS", None) or not isinstance(elem.value, bytes):
                raise
            return elem.value  # a number pydicom cannot hold (1e400, Infinity): kept as text, stored as NULL
    return elem.value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


# ----------------------------------------------------------------------------------------------- fast path
#
# pydicom's `read_partial` builds a FileMetaDataset (validated element by element), a Dataset and, on access,
# DataElements with value objects (DSfloat, IS, PersonName, MultiValue) that are turned straight back into
# text here: together about twice the cost of the element parsing itself. The fast path keeps pydicom's
# element parser (`data_element_generator`, the loop at the heart of `dcmread`) and skips the rest.

# Bytes read at once: most headers end (up to the last needed tag) within the first few KiB, and a network
# file system pays for every byte read. A header that goes on is read again with up to _MAX_READ bytes; one
# longer than that takes the reference path.
_FIRST_READ = 64 * 1024
_MAX_READ = 4 * 1024 * 1024
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, length 4: the file meta group's length
_TRANSFER_SYNTAX = 0x00020010
_META_TAGS = [TAG_OF[kw] for kw in META_KEYWORDS]
_CHARSET = TAG_OF["SpecificCharacterSet"]
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_FAST = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", *PrivateTransferSyntaxes}  # big endian, deflate
_VALUE_TAGS: list[tuple[str, int]] = [(kw, TAG_OF[kw]) for kw in VALUE_KEYWORDS]
_VR_OF: dict[int, str] = {tag: dictionary_VR(tag) for _, tag in _VALUE_TAGS}
_UI = re.compile(rb"[0-9.\\]*[\x00 ]*")  # UIDs as written: pydicom's UID() strips any other whitespace per value
_DS = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")
_IS = re.compile(r" *[+-]?[0-9]+ *")


class _Unusual(Exception):
    """Something the fast path does not decode exactly as pydicom would: read the file the reference way."""


def _not_group_2(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def read_fast(path: str) -> FileResult | None:
    """`read_file` for the common file, or None when the file needs the reference path."""
    most = min(_MAX_READ, _limits["max_header_bytes"])
    with _open(path) as fh:
        data = fh.read(min(_FIRST_READ, most))
        elements = _header_elements(data, complete=len(data) < min(_FIRST_READ, most))
        if elements is _GOES_ON and len(data) < most:
            data += fh.read(most - len(data))
            elements = _header_elements(data, complete=len(data) < most)
    if not isinstance(elements, dict) or TAG_OF["DirectoryRecordSequence"] in elements:
        return None
    try:
        encodings = _encodings(elements.get(_CHARSET))
        values = {kw: _decode(elements.get(tag), _VR_OF[tag], encodings) for kw, tag in _VALUE_TAGS}
        frames = _decode(elements.get(TAG_OF["NumberOfFrames"]), "IS", encodings)
    except (_Unusual, UnicodeError, LookupError):
        return None
    if values["SOPClassUID"] == MEDIA_STORAGE_DIRECTORY:
        return None
    values = with_functional_groups(path, values, frames, deflated=False)
    result = _rows(path, values)
    return result if result.status == "dicom" else None


_GOES_ON = object()  # the bytes read end before the last needed tag, and the file goes on


def _header_elements(data: bytes, complete: bool) -> dict[int, RawDataElement] | object | None:
    """The needed elements of the header in `data` (`complete`: the whole file), _GOES_ON, or None when the
    file is not one for the fast path."""
    if data[128:132] != b"DICM" or data[132:140] != _GROUP_LENGTH:
        return None
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    fp = BytesIO(data)
    fp.seek(144)
    meta = {int(e.tag): e for e in data_element_generator(fp, False, True, stop_when=_not_group_2)}
    if fp.tell() != meta_end or _TRANSFER_SYNTAX not in meta:
        return None if complete or meta_end < len(data) else _GOES_ON
    syntax = (meta[_TRANSFER_SYNTAX].value or b"").decode("latin-1").rstrip("\x00 ")
    if syntax in _NOT_FAST:
        return None
    implicit = syntax == _IMPLICIT_LE
    first = data[meta_end : meta_end + 6]
    if len(first) < 6:
        return None if complete else _GOES_ON
    # A command set (group 0000) or a dataset whose first element contradicts the transfer syntax: pydicom
    # has its own rules for both.
    if first[:2] == b"\x00\x00" or implicit == (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B):
        return None
    try:
        elements = {
            int(e.tag): e for e in data_element_generator(fp, implicit, True, _past_last_tag, None, "iso8859", _TAGS)
        }
    except Exception:
        if complete:
            raise  # read_file goes the reference way, which says what is wrong
        return _GOES_ON  # a sequence running past the bytes read raises where a plain element would not
    if fp.tell() >= len(data):
        # The bytes read ended before the last needed tag: read on, or, at the end of the file, let the
        # reference path tell a header that simply ends there from a truncated one.
        return None if complete else _GOES_ON
    elements.update((tag, meta[tag]) for tag in _META_TAGS if tag in meta)
    return elements


def _encodings(elem: RawDataElement | None) -> list[str]:
    """The Python codec for (0008,0005), as pydicom's Dataset._character_set gives it, or _Unusual for what the
    fast path leaves to pydicom: several character sets (code extensions), the ISO 2022 sets pydicom encodes
    with its own encoders (it re-encodes names with them, and may fail), a VR other than CS."""
    if elem is None:
        return ["iso8859"]
    if elem.VR not in (None, "CS"):
        raise _Unusual
    value = convert_string(elem.value, True) if elem.value else ""
    encodings = convert_encodings(value) if value else ["iso8859"]
    if len(encodings) != 1 or encodings[0] in custom_encoders:
        raise _Unusual
    return encodings


def _decode(elem: RawDataElement | None, vr: str, encodings: list[str]) -> str | None:
    """The raw value as the text `_value` makes of pydicom's converted value, or _Unusual."""
    if elem is None:
        return None
    found = elem.VR  # None when the file is implicit VR
    if found is not None and found != vr and not (vr == "US or SS" and found in ("US", "SS")):
        raise _Unusual  # a VR other than the dictionary's (UN, say): pydicom converts those its own way
    raw = elem.value
    if not raw:
        return None
    vr = found or vr
    if vr == "UI":
        if not _UI.fullmatch(raw):
            raise _Unusual
        return raw.decode("latin-1").strip("\x00 ") or None
    if vr in ("CS", "AS"):
        return raw.decode("latin-1").strip("\x00 ") or None
    if vr in ("DA", "TM"):
        text = raw.decode("latin-1").rstrip(" \x00")
        if "\\" in text:
            raise _Unusual
        if not text:
            return None
        return iso_date(text) if vr == "DA" else iso_time(text)
    if vr == "DS":
        items = raw.decode("latin-1").strip().rstrip(" \x00").split("\\")
        if not all(_DS.fullmatch(item) for item in items):
            raise _Unusual
        return "\\".join(item.strip() for item in items).strip("\x00 ") or None
    if vr == "IS":
        items = raw.decode("latin-1").rstrip(" \x00").split("\\")
        if not all(_IS.fullmatch(item) for item in items):
            raise _Unusual
        return "\\".join(item.strip() for item in items).strip("\x00 ") or None
    if vr in ("US", "SS"):
        if len(raw) != 2:
            raise _Unusual
        return str(int.from_bytes(raw, "little", signed=vr == "SS"))
    if b"\x1b" in raw:
        raise _Unusual  # ISO 2022 escape sequences: pydicom switches character sets within the value
    if vr in ("SH", "LO", "UC"):  # pydicom strips each value's end (convert_text)
        text = raw.decode(encodings[0])
        return "\\".join(item.rstrip("\x00 ") for item in text.split("\\")).strip("\x00 ") or None
    if vr == "PN":  # pydicom strips the end of the whole value only (convert_PN)
        text = raw.rstrip(b"\x00 ").decode(encodings[0])
        if "=" in text:
            raise _Unusual  # component groups (ideographic, phonetic): PersonName's own rules
        return text.strip("\x00 ") or None
    raise _Unusual


# ------------------------------------------------------------------------------------ enhanced multi-frame
#
# An enhanced multi-frame image (Enhanced CT, MR and PET, their Legacy Converted forms, segmentations, ...) is
# one instance holding many frames. What a classic image holds at the top level (pixel spacing, orientation,
# position, rescale, timing, exposure) it keeps in functional groups, after the last attribute read above: the
# Shared Functional Groups Sequence (5200,9229), one item for what all frames share, and the Per-frame
# Functional Groups Sequence (5200,9230), one item per frame. Each functional group is a macro: a sequence of
# one item that holds the attributes. Such a file stays one row, its instance's, with its first frame's values
# and its frame count in NumberOfFrames (docs/ingest.md, "Enhanced multi-frame images").

# Column keyword -> where a functional group holds its value: (macro sequence, attribute in the macro's item).
# A column empty at the top level takes the Shared item's value, else the first Per-frame item's. An attribute
# of another name holds the same quantity in the same unit (EffectiveEchoTime, ExposureTimeInms in ms,
# XRayTubeCurrentInmA, ExposureInmAs): only its VR differs, FD, written as the column's DS or IS would be.
# FrameAcquisitionDateTime (DT) gives both AcquisitionDate and AcquisitionTime (without its UTC offset, as TM).
FUNCTIONAL_GROUP_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "PixelSpacing": (("PixelMeasuresSequence", "PixelSpacing"),),
    "SliceThickness": (("PixelMeasuresSequence", "SliceThickness"),),
    "SpacingBetweenSlices": (("PixelMeasuresSequence", "SpacingBetweenSlices"),),
    "ImageOrientationPatient": (("PlaneOrientationSequence", "ImageOrientationPatient"),),
    "ImagePositionPatient": (("PlanePositionSequence", "ImagePositionPatient"),),
    "RescaleIntercept": (("PixelValueTransformationSequence", "RescaleIntercept"),),
    "RescaleSlope": (("PixelValueTransformationSequence", "RescaleSlope"),),
    "AcquisitionDate": (("FrameContentSequence", "FrameAcquisitionDateTime"),),
    "AcquisitionTime": (("FrameContentSequence", "FrameAcquisitionDateTime"),),
    "RepetitionTime": (("MRTimingAndRelatedParametersSequence", "RepetitionTime"),),
    "FlipAngle": (("MRTimingAndRelatedParametersSequence", "FlipAngle"),),
    "EchoTime": (("MREchoSequence", "EffectiveEchoTime"),),
    "KVP": (("CTXRayDetailsSequence", "KVP"),),
    "ExposureTime": (("CTExposureSequence", "ExposureTimeInms"),),
    "XRayTubeCurrent": (("CTExposureSequence", "XRayTubeCurrentInmA"),),
    "Exposure": (("CTExposureSequence", "ExposureInmAs"),),
    "ConvolutionKernel": (("CTReconstructionSequence", "ConvolutionKernel"),),
    "ReconstructionDiameter": (("CTReconstructionSequence", "ReconstructionDiameter"),),
    "TableHeight": (("CTAcquisitionDetailsSequence", "TableHeight"),),
    "GantryDetectorTilt": (("CTAcquisitionDetailsSequence", "GantryDetectorTilt"),),
    "RotationDirection": (("CTAcquisitionDetailsSequence", "RotationDirection"),),
}

# The SOP classes built on functional groups, read even with a single frame. Any other image is read for its
# functional groups only when NumberOfFrames says more than one frame.
FUNCTIONAL_GROUP_SOP_CLASSES = frozenset(
    {
        EnhancedCTImageStorage,
        EnhancedMRImageStorage,
        EnhancedMRColorImageStorage,
        EnhancedPETImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        LegacyConvertedEnhancedPETImageStorage,
        EnhancedXAImageStorage,
        EnhancedXRFImageStorage,
        EnhancedUSVolumeStorage,
        BreastTomosynthesisImageStorage,
        XRay3DAngiographicImageStorage,
        XRay3DCraniofacialImageStorage,
        OphthalmicTomographyImageStorage,
        ParametricMapStorage,
        SegmentationStorage,
        MRSpectroscopyStorage,
    }
)

_SHARED_GROUPS = 0x52009229
_PER_FRAME_GROUPS = 0x52009230
_GROUP_TAGS: dict[str, int] = {
    keyword: int(tag_for_keyword(keyword))  # type: ignore[arg-type]
    for sources in FUNCTIONAL_GROUP_SOURCES.values()
    for pair in sources
    for keyword in pair
}
_COLUMN_VR: dict[str, str] = {kw: dictionary_VR(tag_for_keyword(kw)) for kw in FUNCTIONAL_GROUP_SOURCES}
_DT = re.compile(r"(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?(?:[+-]\d{4})?")


def with_functional_groups(
    path: str, values: dict[str, str | None], frames: str | None, *, deflated: bool
) -> dict[str, str | None]:
    """`values` (as DICOM text) with the columns the top level leaves empty filled from the functional groups,
    for an image of more than one frame (`frames`, NumberOfFrames) or of a SOP class built on functional
    groups. Any other file is returned as it is, without reading further: a classic image is read once."""
    if not ((_as_int(frames) or 0) > 1 or values.get("SOPClassUID") in FUNCTIONAL_GROUP_SOP_CLASSES):
        return values
    missing = [keyword for keyword in FUNCTIONAL_GROUP_SOURCES if values.get(keyword) is None]
    if not missing:
        return values
    shared, first, charset = _functional_groups(path, deflated)
    filled = dict(values)
    for keyword in missing:
        text = _group_value(keyword, shared, first, charset)
        if text is not None:
            filled[keyword] = text
    return filled


def _is_deflated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _group_value(keyword: str, shared: Dataset | None, first: Dataset | None, charset: Any) -> str | None:
    for sequence, attribute in FUNCTIONAL_GROUP_SOURCES[keyword]:
        for group in (shared, first):
            macro = _item(group, sequence, charset)
            if macro is None:
                continue
            value, vr = _group_element(macro, attribute, charset)
            text = _group_text(keyword, value, vr)
            if text is not None:
                return text
    return None


def _item(ds: Dataset | None, keyword_or_tag: str | int, charset: Any) -> Dataset | None:
    """The first item of a sequence element of `ds`, or None."""
    if ds is None:
        return None
    value, _ = _group_element(ds, keyword_or_tag, charset)
    if isinstance(value, Sequence) and len(value) and isinstance(value[0], Dataset):
        return value[0]
    return None


def _group_element(ds: Dataset, keyword_or_tag: str | int, charset: Any) -> tuple[Any, str | None]:
    """The element's value and VR, as `_get` converts them; (None, None) when absent. The converted element
    is kept in `ds` (a dataset of this reading only): a macro serves several columns, its sequence is parsed
    once."""
    tag = keyword_or_tag if isinstance(keyword_or_tag, int) else _GROUP_TAGS[keyword_or_tag]
    elem = ds._dict.get(tag)
    if elem is None:
        return None, None
    if isinstance(elem, RawDataElement):
        try:
            elem = ds._dict[tag] = convert_raw_data_element(elem, encoding=charset, ds=ds)
        except (ValueError, OverflowError):
            if elem.VR not in ("IS", "DS", None) or not isinstance(elem.value, bytes):
                raise
            return elem.value, elem.VR  # a number pydicom cannot hold: kept as text, stored as NULL
    return elem.value, elem.VR


def _group_text(keyword: str, value: Any, vr: str | None) -> str | None:
    """A functional group's value as the DICOM text the column's own attribute would give (`_value`)."""
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ") or None
    if keyword in ("AcquisitionDate", "AcquisitionTime"):
        match = _DT.fullmatch(str(value).strip("\x00 "))
        if match is None:
            return None  # not a date and time: no date or time rather than a guess
        date, time = match.groups()
        return iso_date(date) if keyword == "AcquisitionDate" else iso_time(time) if time else None
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if vr in ("FD", "FL"):
        try:
            texts = [_float_text(float(v), _COLUMN_VR[keyword]) for v in items]
        except (ValueError, OverflowError):
            return None  # NaN or infinity
        return "\\".join(texts) or None
    return "\\".join(_scalar(v) for v in items).strip("\x00 ") or None


def _float_text(number: float, column_vr: str) -> str:
    """An FD as the column's attribute writes it: an IS rounded to an integer, a DS in its shortest form."""
    if column_vr == "IS":
        return str(round(number))
    text = repr(number)
    return text[:-2] if text.endswith(".0") else text


def _functional_groups(path: str, deflated: bool) -> tuple[Dataset | None, Dataset | None, Any]:
    """The Shared item, the first Per-frame item and the character set, from a second, bounded reading of the
    file with pydicom: up to the Per-frame sequence, then its first item only, so that a sequence of thousands
    of frames costs one (a deflated file, which pydicom inflates into a stream of its own, is read to the end
    of the sequence). A file whose groups cannot be read whole fails, as one truncated before (0028,1053)."""
    with _open(path) as raw:
        fh = _Bounded(raw, _limits["max_header_bytes"])
        try:
            return _read_functional_groups(fh, deflated)
        except (_Failed, RecursionError):
            raise
        except _TooLong:
            raise _Failed(f"header longer than {fh.limit} bytes (--max-header-bytes)") from None
        except OSError as exc:
            if exc.errno is not None:
                raise  # the file could not be read: what it holds is unknown
            reason = _one_line(exc)
        except Exception as exc:  # pydicom raises many kinds on corrupt input
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
        if fh.truncated or (not deflated and fh.tell() >= fh.size):
            raise _Failed("truncated: an element runs past the end of the file, in the functional groups")
        raise _Failed(f"cannot parse the functional groups: {reason}")


def _read_functional_groups(fh: _Bounded, deflated: bool) -> tuple[Dataset | None, Dataset | None, Any]:
    last = _PER_FRAME_GROUPS if deflated else _PER_FRAME_GROUPS - 1
    stopped_at: list[tuple[int, str | None, int]] = []

    def stop(tag: int, vr: str | None, length: int) -> bool:
        if int.__gt__(tag, last):
            stopped_at.append((int(tag), vr, length))
            return True
        return False

    # force: the first reading has already found this file to be DICOM, with or without a preamble.
    tags: list[int] = [_SHARED_GROUPS, _PER_FRAME_GROUPS]
    ds = read_partial(fh, stop_when=stop, specific_tags=tags, force=True)  # type: ignore[arg-type]
    if (fh.truncated or fh.inflated_cut) and not stopped_at:
        raise _Failed("truncated: an element runs past the end of the file, in the functional groups")
    charset = ds._character_set
    shared = _item(ds, _SHARED_GROUPS, charset)
    if deflated:
        return shared, _item(ds, _PER_FRAME_GROUPS, charset), charset
    if not stopped_at or stopped_at[0][0] != _PER_FRAME_GROUPS:
        return shared, None, charset
    return shared, _first_frame(fh, ds, stopped_at[0][1], stopped_at[0][2], charset), charset


def _first_frame(fh: _Bounded, ds: Dataset, vr: str | None, length: int, charset: Any) -> Dataset | None:
    """The first item of the Per-frame sequence, whose element starts at `fh`'s position (pydicom rewinds to
    the element its stop_when stopped at)."""
    if length == 0 or vr not in (None, "SQ", "UN"):
        return None
    implicit, little = ds.original_encoding
    order = "little" if little else "big"
    header = fh.read(8 if vr is None else 12)
    tag = int.from_bytes(header[0:2], order) << 16 | int.from_bytes(header[2:4], order)
    if tag != _PER_FRAME_GROUPS:
        raise _Failed("cannot parse the functional groups: the Per-frame sequence is not where pydicom stopped")
    # An undefined-length UN holds its items in implicit VR little endian (PS3.5 6.2.2).
    item = read_sequence_item(fh, implicit or vr == "UN", little, charset)  # type: ignore[arg-type]
    if fh.truncated:
        raise _Failed("truncated: an element runs past the end of the file, in the functional groups")
    return item
