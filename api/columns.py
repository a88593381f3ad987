"""The static map of what the API exposes: per table, every column with its GraphQL name, value kind and
sensitivity, and the relations between tables. The columns come from the registry (model/registry.py); this
module adds what only the API needs (attribute and enum names, the relations, row typing).

Everything that turns client input into SQL (filters, ordering, facets) looks columns up here, so a client
string never names a column or reaches SQL as code.

Each column also carries its DICOM PS3.15 entry (`Ps315`): the attribute's tag, the action Table E.1-1 gives it
under the Basic Application Level Confidentiality Profile, and the actions of the options that change it.
`api.masking` turns those actions into what a de-identified access level sees.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicom_db.model import registry
from dicom_db.model.registry import BASIC_PROFILE_CODE, Kind, Option, Ps315, camel_case, snake_case

__all__ = ["BASIC_PROFILE_CODE", "Kind", "Option", "Ps315", "camel_case", "snake_case"]


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # as in schema.sql
    kind: Kind
    ps315: Ps315 = Ps315("")  # PS3.15 Table E.1-1's actions for the attribute (api.masking applies them)
    value_column: str | None = None  # numeric twin of a TEXT column: typed, filtered and ordered by it
    attr: str = ""  # Python attribute on types and inputs (snake_case); GraphQL shows it in camelCase
    enum: str = ""  # order/group enum value, UPPER_SNAKE_CASE of the column name
    required: bool = False  # never null: its field is non-null
    description: str = ""  # the field's description in the schema

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


def _columns(table: str) -> tuple[Column, ...]:
    """The table's columns the API exposes (the registry's entries with a kind), in registry order."""
    return tuple(
        Column(e.column, e.kind, e.ps315, e.value_column, required=e.required, description=e.description)
        for e in registry.entries(table)
        if e.kind is not None
    )


PATIENT = Table("Patient", "Patient", "PatientID", _columns("Patient"), children=Link("studies", "Study", "PatientID"))
STUDY = Table(
    "Study",
    "Study",
    "StudyInstanceUID",
    _columns("Study"),
    parent=Link("patient", "Patient", "PatientID"),
    children=Link("series", "Series", "StudyInstanceUID"),
)
SERIES = Table(
    "Series",
    "Series",
    "SeriesInstanceUID",
    _columns("Series"),
    parent=Link("study", "Study", "StudyInstanceUID"),
    children=Link("slices", "SliceMetadata", "SeriesInstanceUID"),
)
SLICE = Table(
    "SliceMetadata",
    "Slice",
    "SliceID",
    _columns("SliceMetadata"),
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
        numbers = list(map(float, str(value).split("\\")))
    except ValueError:
        return None
    # NaN and infinities are not valid DS values and cannot be sent as JSON numbers.
    return numbers if all(map(math.isfinite, numbers)) else None


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
