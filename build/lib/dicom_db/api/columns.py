"""The static map of what the API exposes: per table, every column with its GraphQL name, value kind and
sensitivity, and the relations between tables.

Everything that turns client input into SQL (filters, ordering, facets) looks columns up here, so a client
string never names a column or reaches SQL as code.

Each column also carries its DICOM PS3.15 entry (`Ps315`): the attribute's tag, the action Table E.1-1 gives it
under the Basic Application Level Confidentiality Profile, and the actions of the options that change it.
`api.masking` turns those actions into what a de-identified access level sees.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Kind(enum.Enum):
    """How a stored value is typed in GraphQL, filtered and ordered."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"  # stored as ISO text when the DICOM date was valid, else as the raw text
    INT_TEXT = "int_text"  # a TEXT column holding a DICOM IS value, exposed as Int
    FLOAT_LIST = "float_list"  # backslash-joined DS values, exposed as [Float!]
    STRING_LIST = "string_list"  # backslash-joined CS/LO values, exposed as [String!]


_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|$)|[A-Z]?[a-z]+|\d+")


def snake_case(column: str) -> str:
    """`SOPInstanceUID` -> `sop_instance_uid` (Strawberry then shows it as `sopInstanceUid`)."""
    return "_".join(w.lower() for w in _WORDS.findall(column))


def camel_case(attr: str) -> str:
    """`patient_name` -> `patientName`: how Strawberry shows a Python attribute in the schema."""
    head, *rest = attr.split("_")
    return head + "".join(word.capitalize() for word in rest)


class Option(enum.Enum):
    """Options of PS3.15's Basic Profile (the option columns of Table E.1-1), as named in a tokens file; `code`
    is the option's code in DICOM CID 7050."""

    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"

    @property
    def code(self) -> str:
        return _OPTION_CODES[self]


_OPTION_CODES = {
    Option.CLEAN_DESCRIPTORS: "113105",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "113106",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "113107",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "113108",
    Option.RETAIN_DEVICE_IDENTITY: "113109",
    Option.RETAIN_UIDS: "113110",
    Option.RETAIN_INSTITUTION_IDENTITY: "113112",
}
BASIC_PROFILE_CODE = "113100"


@dataclass(frozen=True, slots=True)
class Ps315:
    """A column's entry in DICOM PS3.15 Annex E.

    `basic` is the action of Table E.1-1 under the Basic Profile: K keep, X remove, Z empty (or a dummy), D a
    dummy, U a new UID, C clean, and the combined codes (X/Z, X/D, Z/D) of attributes whose type varies by IOD.
    `options` are the options with an entry for the attribute, in precedence order, and their action. Attributes
    the table does not list are kept (K). Three attributes are set rather than listed (PS3.15 E.1.1 and E.3.6):
    `=YES` (Patient Identity Removed), `=METHOD` (De-identification Method: the level's profile and options) and
    `=MODIFIED` (Longitudinal Temporal Information Modified, when dates are modified). None of our columns is
    one of the attributes Retain Device Identity or Retain Institution Identity keep (station name, serial
    numbers, institution name...): those options change nothing here."""

    tag: str  # "(gggg,eeee)"; empty for a column that is no DICOM attribute
    basic: str = "K"
    options: tuple[tuple[Option, str], ...] = ()

    def action(self, options: frozenset[Option]) -> str:
        """The action under the Basic Profile with `options`: the first listed option the level has, else basic."""
        for option, action in self.options:
            if option in options:
                return action
        return self.basic


_FULL, _MODIF = Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES
_DATES = ((_FULL, "K"), (_MODIF, "C"))  # dates and times under the longitudinal options
_CHARS = ((Option.RETAIN_PATIENT_CHARACTERISTICS, "K"),)
_UIDS = ((Option.RETAIN_UIDS, "K"),)
_DESC = ((Option.CLEAN_DESCRIPTORS, "C"),)


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # as in schema.sql
    kind: Kind
    ps315: Ps315 = Ps315("")  # PS3.15 Table E.1-1's actions for the attribute (api.masking applies them)
    value_column: str | None = None  # numeric twin of a TEXT column: typed, filtered and ordered by it
    attr: str = ""  # Python attribute on types and inputs (snake_case); GraphQL shows it in camelCase
    enum: str = ""  # order/group enum value, UPPER_SNAKE_CASE of the column name

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr", self.attr or snake_case(self.name))
        object.__setattr__(self, "enum", self.attr.upper())

    @property
    def field_name(self) -> str:
        """The field (and filter entry) in the schema."""
        return camel_case(self.attr)


@dataclass(frozen=True, slots=True)
class Link:
    """A foreign key seen from one side: `attr` is the field name on that side."""

    attr: str
    table: str  # the table on the other side
    fk: str  # the child's column holding the parent's key


@dataclass(slots=True)
class Table:
    name: str  # SQL table name
    type_name: str  # GraphQL type name
    key: str  # primary key column, the last ordering key of every page
    columns: tuple[Column, ...]
    # Default order of nested connections (Series.slices: by slice number); root connections use the key.
    nested_order: tuple[str, ...] = ()
    parent: Link | None = None
    children: Link | None = None
    by_attr: dict[str, Column] = field(default_factory=dict)
    by_enum: dict[str, Column] = field(default_factory=dict)
    by_name: dict[str, Column] = field(default_factory=dict)
    select: tuple[str, ...] = ()  # stored columns a row holds, in order: every column, then numeric twins

    def __post_init__(self) -> None:
        self.by_attr = {c.attr: c for c in self.columns}
        self.by_enum = {c.enum: c for c in self.columns}
        self.by_name = {c.name: c for c in self.columns}
        twins = tuple(c.value_column for c in self.columns if c.value_column)
        self.select = tuple(c.name for c in self.columns) + twins

    @property
    def key_column(self) -> Column:
        return self.by_name[self.key]


S, INT, F, B, D = Kind.STRING, Kind.INT, Kind.FLOAT, Kind.BOOL, Kind.DATE

PATIENT = Table(
    "Patient",
    "Patient",
    "PatientID",
    (
        Column("PatientID", S, Ps315("(0010,0020)", "Z/D")),
        Column("PatientName", S, Ps315("(0010,0010)", "Z")),
        Column("PatientSex", S, Ps315("(0010,0040)", "Z", _CHARS)),
        Column("PatientAge", S, Ps315("(0010,1010)", "X", _CHARS)),
        Column("PatientBirthDate", D, Ps315("(0010,0030)", "Z")),
        Column("PatientIdentityRemoved", S, Ps315("(0012,0062)", "=YES")),
        Column("DeIdentificationMethod", S, Ps315("(0012,0063)", "=METHOD")),
        Column("LastMenstrualDate", D, Ps315("(0010,21D0)", "X", _DATES)),
        Column("PatientIDGenerated", B),
    ),
    children=Link("studies", "Study", "PatientID"),
)

STUDY = Table(
    "Study",
    "Study",
    "StudyInstanceUID",
    (
        Column("StudyInstanceUID", S, Ps315("(0020,000D)", "U", _UIDS)),
        Column("PatientID", S, Ps315("(0010,0020)", "Z/D")),
        Column("StudyDescription", S, Ps315("(0008,1030)", "X", _DESC)),
        Column("StudyDate", D, Ps315("(0008,0020)", "Z", _DATES)),
        # ISO time text "HH:MM:SS(.ffffff)": sorts and compares as text
        Column("StudyTime", S, Ps315("(0008,0030)", "Z", _DATES)),
        Column("StudyID", S, Ps315("(0020,0010)", "Z")),
        Column("SeriesDate", D, Ps315("(0008,0021)", "X/D", _DATES)),
        Column("ReferringPhysicianName", S, Ps315("(0008,0090)", "Z")),
    ),
    parent=Link("patient", "Patient", "PatientID"),
    children=Link("series", "Series", "StudyInstanceUID"),
)

SERIES = Table(
    "Series",
    "Series",
    "SeriesInstanceUID",
    (
        Column("SeriesInstanceUID", S, Ps315("(0020,000E)", "U", _UIDS)),
        Column("StudyInstanceUID", S, Ps315("(0020,000D)", "U", _UIDS)),
        Column("SeriesDescription", S, Ps315("(0008,103E)", "X", _DESC)),
        Column("Modality", S, Ps315("(0008,0060)")),
        # TEXT in the user's schema; the ingest fills the numeric twin so that filters compare numbers.
        Column("SliceThickness", F, Ps315("(0018,0050)"), value_column="SliceThicknessValue"),
        Column("PixelSpacing", Kind.FLOAT_LIST, Ps315("(0028,0030)")),
        Column("ImagePositionPatient", Kind.FLOAT_LIST, Ps315("(0020,0032)")),
        Column("ImageOrientationPatient", Kind.FLOAT_LIST, Ps315("(0020,0037)")),
        Column("Rows", INT, Ps315("(0028,0010)")),
        Column("Columns", INT, Ps315("(0028,0011)")),
        Column("ImageType", Kind.STRING_LIST, Ps315("(0008,0008)")),
        Column("AcquisitionNumber", Kind.INT_TEXT, Ps315("(0020,0012)")),
        Column("InstanceNumber", Kind.INT_TEXT, Ps315("(0020,0013)")),
        Column("PatientPosition", S, Ps315("(0018,5100)")),
        Column("ExposureTime", INT, Ps315("(0018,1150)")),
        Column("KVP", F, Ps315("(0018,0060)")),
        Column("TableHeight", F, Ps315("(0018,1130)")),
        Column("SliceLocation", F, Ps315("(0020,1041)")),
        Column("BodyPartExamined", S, Ps315("(0018,0015)")),
        Column("ScanOptions", S, Ps315("(0018,0022)")),
        Column("ReconstructionDiameter", F, Ps315("(0018,1100)")),
        Column("DistanceSourceToPatient", F, Ps315("(0018,1111)")),
        Column("GantryDetectorTilt", F, Ps315("(0018,1120)")),
        Column("RotationDirection", S, Ps315("(0018,1140)")),
        Column("ConvolutionKernel", Kind.STRING_LIST, Ps315("(0018,1210)")),
    ),
    parent=Link("study", "Study", "StudyInstanceUID"),
    children=Link("slices", "SliceMetadata", "SeriesInstanceUID"),
)

SLICE = Table(
    "SliceMetadata",
    "Slice",
    "SliceID",
    (
        Column("SliceID", INT),
        Column("SOPInstanceUID", S, Ps315("(0008,0018)", "U", _UIDS)),
        Column("SeriesInstanceUID", S, Ps315("(0020,000E)", "U", _UIDS)),
        Column("SOPClassUID", S, Ps315("(0008,0016)")),
        Column("AcquisitionDate", D, Ps315("(0008,0022)", "X/Z", _DATES)),
        Column("AcquisitionTime", S, Ps315("(0008,0032)", "X/Z", _DATES)),
        Column("ContrastBolusAgent", S, Ps315("(0018,0010)", "Z/D", _DESC)),
        Column("AccessionNumber", S, Ps315("(0008,0050)", "Z")),
        Column("SliceNumber", INT, Ps315("(0020,0013)")),
        Column("SliceLocation", F, Ps315("(0020,1041)")),
        Column("SliceThickness", F, Ps315("(0018,0050)")),
        Column("PixelPaddingValue", INT, Ps315("(0028,0120)")),
        Column("RescaleIntercept", F, Ps315("(0028,1052)")),
        Column("RescaleSlope", F, Ps315("(0028,1053)")),
        Column("LongitudinalTemporalInfo", S, Ps315("(0028,0303)", "K", ((_MODIF, "=MODIFIED"),))),
        Column("ImagePositionPatient", Kind.FLOAT_LIST, Ps315("(0020,0032)")),
    ),
    nested_order=("SliceNumber",),
    parent=Link("series", "Series", "SeriesInstanceUID"),
)

TABLES: dict[str, Table] = {t.name: t for t in (PATIENT, STUDY, SERIES, SLICE)}


def _date(value: Any) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value) if len(value) == 10 else None
    except (TypeError, ValueError):
        return None


_INT_TEXT = re.compile(r"\s*[+-]?\d{1,18}\s*")


def _int_text(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and _INT_TEXT.fullmatch(value) else None


def _float_list(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        numbers = [float(v) for v in str(value).split("\\")]
    except ValueError:
        return None
    # NaN and infinities are not valid DS values and cannot be sent as JSON numbers.
    return numbers if all(n == n and abs(n) != float("inf") for n in numbers) else None


def _string_list(value: Any) -> list[str] | None:
    return None if value is None else str(value).split("\\")


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _identity(value: Any) -> Any:
    return value


CONVERTERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.STRING: _identity,
    Kind.INT: _identity,
    Kind.FLOAT: _identity,
    Kind.BOOL: _bool,
    Kind.DATE: _date,
    Kind.INT_TEXT: _int_text,
    Kind.FLOAT_LIST: _float_list,
    Kind.STRING_LIST: _string_list,
}


def row_reader(table: Table) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A function turning one stored row (columns in `table.select` order) into typed attribute values."""
    plan: list[tuple[str, int, Callable[[Any], Any]]] = []
    for column in table.columns:
        index = table.select.index(column.value_column or column.name)
        plan.append((column.attr, index, CONVERTERS[column.kind]))
    plain = [(attr, index) for attr, index, convert in plan if convert is _identity]
    converted = [(attr, index, convert) for attr, index, convert in plan if convert is not _identity]

    def read(row: Sequence[Any]) -> dict[str, Any]:
        values = {attr: row[index] for attr, index in plain}
        for attr, index, convert in converted:
            values[attr] = convert(row[index])
        return values

    return read
