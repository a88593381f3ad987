"""Strawberry types: Patient, Study, Series, Slice, their connections, filter and order inputs.

Leaf fields are plain attributes filled from the stored row when the object is made (a resolver per leaf
would cost far more than the value). Resolvers exist only where the database is needed, relations and
connections, and they go through the request's loaders. Typed values follow `api.columns`; a value that
cannot be typed is null and its stored text stays reachable through `raw`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import strawberry
from graphql import GraphQLError
from strawberry import UNSET
from strawberry.scalars import JSON
from strawberry.types import Info

from dicom_db.api import filters
from dicom_db.api.columns import PATIENT, SERIES, SLICE, STUDY, TABLES, Kind, Table, row_reader
from dicom_db.api.errors import ForbiddenError, NotFoundError, UserInputError
from dicom_db.api.filters import compile_where
from dicom_db.api.loaders import Context, GroupSpec, row_key
from dicom_db.api.masking import FULL, Access, Treatment
from dicom_db.api.pagination import Page, PageSpec, decode_cursor, order_keys, page_size
from dicom_db.api.sql import TRUE, Fragment

Ctx = Info[Context, None]
NodeT = TypeVar("NodeT")


# Enums


@strawberry.enum(description="Sort direction; nulls come last either way.")
class OrderDirection(enum.Enum):
    ASC = "ASC"
    DESC = "DESC"


@strawberry.enum(description="Group dates by year (YYYY), month (YYYY-MM) or day (YYYY-MM-DD).")
class DatePart(enum.Enum):
    YEAR = "YEAR"
    MONTH = "MONTH"
    DAY = "DAY"


def _column_enum(name: str, table: Table, purpose: str) -> type[enum.Enum]:
    members = {c.enum: c.enum for c in table.columns}
    return strawberry.enum(
        enum.Enum(name, members),  # type: ignore[misc]
        description=f"A column of {table.type_name} to {purpose}, named after the column in UPPER_SNAKE_CASE.",
    )


PatientOrderField = _column_enum("PatientOrderField", PATIENT, "order by")
StudyOrderField = _column_enum("StudyOrderField", STUDY, "order by")
SeriesOrderField = _column_enum("SeriesOrderField", SERIES, "order by")
SliceOrderField = _column_enum("SliceOrderField", SLICE, "order by")
PatientGroupField = _column_enum("PatientGroupField", PATIENT, "count values of")
StudyGroupField = _column_enum("StudyGroupField", STUDY, "count values of")
SeriesGroupField = _column_enum("SeriesGroupField", SERIES, "count values of")
SliceGroupField = _column_enum("SliceGroupField", SLICE, "count values of")


# Filter inputs. Operators of one filter are combined with AND; see api.filters for null semantics.


# Filter inputs, one per kind of column, made from the operator registry (api.filters.OPERATORS).
_FILTER_DESCRIPTIONS = {
    filters.STRING: "Text comparisons. `match` takes DICOM wildcards (* any run, ? one character), case-insensitive; "
    "`contains` and `startsWith` are case-sensitive. `ne` and `notIn` also match null. Multi-valued attributes "
    "compare their stored DICOM text, values joined by a backslash.",
    filters.FLOAT: "Number comparisons; `ne` also matches null.",
    filters.INT: "Integer comparisons; `ne` also matches null.",
    filters.DATE: "ISO date comparisons. Comparisons see valid dates only; `isNull: true` matches when the typed "
    "date is null (no value, or stored text that is not a date).",
    filters.BOOLEAN: None,
}
_OPERAND_TYPES: dict[str, Any] = {
    filters.STRING: str,
    filters.FLOAT: float,
    filters.INT: int,
    filters.DATE: dt.date,
    filters.BOOLEAN: bool,
}


def _filter_input(name: str) -> Any:
    operand = _OPERAND_TYPES[name]
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    for op in filters.OPERATORS:
        if name in op.inputs:
            value = {"value": operand, "list": list[operand], "flag": bool}[op.operand]
            annotations[op.attr] = value | None
            namespace[op.attr] = strawberry.field(name=op.name, default=UNSET)
    return strawberry.input(type(name, (), namespace), description=_FILTER_DESCRIPTIONS[name])


StringFilter = _filter_input(filters.STRING)
FloatFilter = _filter_input(filters.FLOAT)
IntFilter = _filter_input(filters.INT)
DateFilter = _filter_input(filters.DATE)
BooleanFilter = _filter_input(filters.BOOLEAN)


_FILTER_TYPES: dict[str, Any] = {
    filters.STRING: StringFilter,
    filters.INT: IntFilter,
    filters.FLOAT: FloatFilter,
    filters.BOOLEAN: BooleanFilter,
    filters.DATE: DateFilter,
}


def _with_filters(table: Table) -> Any:
    """Give a `where` input class one optional filter per column of `table`, before the entries it declares."""

    def add(cls: type) -> type:
        fields: dict[str, Any] = {}
        for column in table.columns:
            fields[column.attr] = _FILTER_TYPES[filters.FILTER_OF_KIND[column.kind]] | None
            setattr(cls, column.attr, UNSET)
        cls.__annotations__ = {**fields, **cls.__dict__.get("__annotations__", {})}
        return cls

    return add


@strawberry.input(description="Patients. Entries are combined with AND.")
@_with_filters(PATIENT)
class PatientWhere:
    studies: StudyListFilter | None = strawberry.field(default=UNSET, description="Filter on the patient's studies.")
    and_: list[PatientWhere] | None = strawberry.field(name="and", default=UNSET)
    or_: list[PatientWhere] | None = strawberry.field(name="or", default=UNSET)
    not_: PatientWhere | None = strawberry.field(name="not", default=UNSET)


@strawberry.input(description="Studies. Entries are combined with AND.")
@_with_filters(STUDY)
class StudyWhere:
    patient: PatientWhere | None = strawberry.field(default=UNSET, description="Filter on the study's patient.")
    series: SeriesListFilter | None = strawberry.field(default=UNSET, description="Filter on the study's series.")
    and_: list[StudyWhere] | None = strawberry.field(name="and", default=UNSET)
    or_: list[StudyWhere] | None = strawberry.field(name="or", default=UNSET)
    not_: StudyWhere | None = strawberry.field(name="not", default=UNSET)


@strawberry.input(description="Series. Entries are combined with AND.")
@_with_filters(SERIES)
class SeriesWhere:
    study: StudyWhere | None = strawberry.field(default=UNSET, description="Filter on the series' study.")
    slices: SliceListFilter | None = strawberry.field(default=UNSET, description="Filter on the series' slices.")
    and_: list[SeriesWhere] | None = strawberry.field(name="and", default=UNSET)
    or_: list[SeriesWhere] | None = strawberry.field(name="or", default=UNSET)
    not_: SeriesWhere | None = strawberry.field(name="not", default=UNSET)


@strawberry.input(description="Slices. Entries are combined with AND.")
@_with_filters(SLICE)
class SliceWhere:
    series: SeriesWhere | None = strawberry.field(default=UNSET, description="Filter on the slice's series.")
    and_: list[SliceWhere] | None = strawberry.field(name="and", default=UNSET)
    or_: list[SliceWhere] | None = strawberry.field(name="or", default=UNSET)
    not_: SliceWhere | None = strawberry.field(name="not", default=UNSET)


@strawberry.input(description="At least one (`some`) or no (`none`) study matches.")
class StudyListFilter:
    some: StudyWhere | None = UNSET
    none: StudyWhere | None = UNSET


@strawberry.input(description="At least one (`some`) or no (`none`) series matches.")
class SeriesListFilter:
    some: SeriesWhere | None = UNSET
    none: SeriesWhere | None = UNSET


@strawberry.input(description="At least one (`some`) or no (`none`) slice matches.")
class SliceListFilter:
    some: SliceWhere | None = UNSET
    none: SliceWhere | None = UNSET


@strawberry.input
class PatientOrderBy:
    field: PatientOrderField  # type: ignore[valid-type]
    direction: OrderDirection | None = OrderDirection.ASC


@strawberry.input
class StudyOrderBy:
    field: StudyOrderField  # type: ignore[valid-type]
    direction: OrderDirection | None = OrderDirection.ASC


@strawberry.input
class SeriesOrderBy:
    field: SeriesOrderField  # type: ignore[valid-type]
    direction: OrderDirection | None = OrderDirection.ASC


@strawberry.input
class SliceOrderBy:
    field: SliceOrderField  # type: ignore[valid-type]
    direction: OrderDirection | None = OrderDirection.ASC


# Connections


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool = strawberry.field(description="True when the page was asked for with `after`.")
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="How many rows of the filtered set hold `value` (null: no value).")
class GroupCount:
    value: str | None
    count: int


@strawberry.type
class Edge(Generic[NodeT]):
    cursor: str
    node: NodeT


@strawberry.type
class Connection(Generic[NodeT]):
    _spec: strawberry.Private[PageSpec]
    _parent: strawberry.Private[Any]  # the parent's key for a nested connection, None at the root

    @strawberry.field(description="Rows matching `where`, whatever `first` and `after`.")
    async def total_count(self, info: Ctx) -> int:
        return await info.context.loaders.counts.load((self._spec.table, self._spec.where, self._parent))

    @strawberry.field
    async def nodes(self, info: Ctx) -> list[NodeT]:
        return (await self._page(info)).nodes

    @strawberry.field
    async def edges(self, info: Ctx) -> list[Edge[NodeT]]:
        page = await self._page(info)
        return [Edge(cursor=page.cursor(i), node=node) for i, node in enumerate(page.nodes)]

    @strawberry.field
    async def page_info(self, info: Ctx) -> PageInfo:
        page = await self._page(info)
        last = len(page.nodes) - 1
        return PageInfo(
            has_next_page=page.has_next,
            has_previous_page=page.has_previous,
            start_cursor=page.cursor(0) if page.nodes else None,
            end_cursor=page.cursor(last) if page.nodes else None,
        )

    async def _page(self, info: Ctx) -> Page:
        return await info.context.loaders.pages.load((self._spec, self._parent))

    async def _groups(
        self, info: Ctx, field: enum.Enum, date_part: DatePart | None, first: int | None
    ) -> list[GroupCount]:
        table = TABLES[self._spec.table]
        column = table.by_enum[field.value]
        date_part = None if date_part is UNSET else date_part
        first = None if first is UNSET else first
        access = info.context.access
        if access.forbids(column, table):  # api.limits refuses this before execution; kept as a backstop
            raise ForbiddenError(f"de-identified access cannot group by {field.value}")
        if date_part is not None and column.kind is not Kind.DATE:
            raise UserInputError(f"`datePart` applies to date fields only, not {field.value}")
        limit = page_size(first, info.context.settings.max_page_size, info.context.settings.max_page_size)
        how = access.treatment(table, column)
        view = {Treatment.SHIFTED: "shifted", Treatment.UID: "keyed"}.get(how, "")
        part = date_part.value if date_part else None
        spec = GroupSpec(table.name, self._spec.where, column.name, part, limit, view)
        groups = await info.context.loaders.groups.load((spec, self._parent))
        as_text = _bool_text if column.kind is Kind.BOOL else _value_text
        if how is Treatment.UID:  # the client sees pseudonyms
            assert access.pseudonyms is not None
            return [GroupCount(value=access.pseudonyms.uid(value), count=count) for value, count in groups]
        return [GroupCount(value=as_text(value), count=count) for value, count in groups]


_GROUP_DOC = (
    "Counts per value of `field` over the whole filtered set (not just this page), most frequent first; "
    "`datePart` groups dates by year, month or day; `first` caps the number of groups (default: the maximum "
    "page size)."
)


def _value_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _bool_text(value: Any) -> str | None:
    return None if value is None else ("true" if value else "false")


# Nodes


def _raw(table: Table, row: Sequence[Any]) -> dict[str, Any]:
    """The stored values of a row by column name, as ingested (DICOM text for text columns); `row` is the row
    as the request's access may see it."""
    return {column.name: row[i] for i, column in enumerate(table.columns)}


# The tables' columns as fields: from the registry (model/registry.py, through api.columns), so that a column
# added there is a field, a filter entry and an order and group value without an edit here.
_VALUE_TYPES: dict[Kind, Any] = {
    Kind.STRING: str,
    Kind.INT: int,
    Kind.FLOAT: float,
    Kind.BOOL: bool,
    Kind.DATE: dt.date,
    Kind.INT_TEXT: int,
    Kind.FLOAT_LIST: list[float],
    Kind.STRING_LIST: list[str],
}


def _with_fields(table: Table) -> Any:
    """Give a node class one field per column of `table`, before the fields and resolvers it declares."""

    def add(cls: type) -> type:
        fields: dict[str, Any] = {}
        for column in table.columns:
            value = _VALUE_TYPES[column.kind]
            fields[column.attr] = value if column.required else value | None
            if column.description:
                setattr(cls, column.attr, strawberry.field(description=column.description))
        cls.__annotations__ = {**fields, **cls.__dict__.get("__annotations__", {})}
        return cls

    return add


_RAW_DOC = (
    "The stored values of this row by column name (DICOM text for text columns). A typed field is null when "
    "its stored text cannot be parsed (an invalid date, a malformed number); the text stays here."
)


_ID_DOC = (
    "A key for client caches (Apollo, urql, Relay): the type and the row's key as this token sees it, so that a "
    "de-identified token's IDs hold pseudonyms only."
)


@strawberry.type(description="A patient (one row of the Patient table).")
@_with_fields(PATIENT)
class Patient:
    _row: strawberry.Private[Sequence[Any]]  # as stored: the keys relations follow
    _shown: strawberry.Private[Sequence[Any]]  # as the request's access may see it

    @strawberry.field(description=_ID_DOC)
    def id(self) -> strawberry.ID:
        return strawberry.ID(f"Patient:{self.patient_id}")

    @strawberry.field(description=_RAW_DOC)
    def raw(self) -> JSON:
        return _raw(PATIENT, self._shown)

    @strawberry.field(description="Number of studies of this patient.")
    async def study_count(self, info: Ctx) -> int:
        return await info.context.loaders.counts.load((STUDY.name, _ALL, self._row[_PATIENT_ID]))

    @strawberry.field
    def studies(
        self,
        info: Ctx,
        where: StudyWhere | None = UNSET,
        order_by: list[StudyOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> StudyConnection:
        spec = _spec(info, STUDY, where, order_by, first, after, True)
        return StudyConnection(_spec=spec, _parent=self._row[_PATIENT_ID])


@strawberry.type(description="A study (one row of the Study table).")
@_with_fields(STUDY)
class Study:
    _row: strawberry.Private[Sequence[Any]]
    _shown: strawberry.Private[Sequence[Any]]

    @strawberry.field(description=_ID_DOC)
    def id(self) -> strawberry.ID:
        return strawberry.ID(f"Study:{self.study_instance_uid}")

    @strawberry.field(description=_RAW_DOC)
    def raw(self) -> JSON:
        return _raw(STUDY, self._shown)

    @strawberry.field
    async def patient(self, info: Ctx) -> Patient:
        return await _required(info, PATIENT, self._row[_STUDY_PATIENT_ID], "study", self.study_instance_uid)

    @strawberry.field(description="Number of series in this study.")
    async def series_count(self, info: Ctx) -> int:
        return await info.context.loaders.counts.load((SERIES.name, _ALL, self._row[_STUDY_UID]))

    @strawberry.field(description="The distinct modalities of this study's series, sorted.")
    async def modalities(self, info: Ctx) -> list[str]:
        spec = GroupSpec(SERIES.name, _ALL, "Modality", None, info.context.settings.max_page_size)
        groups = await info.context.loaders.groups.load((spec, self._row[_STUDY_UID]))
        return sorted(str(value) for value, _ in groups if value is not None)

    @strawberry.field
    def series(
        self,
        info: Ctx,
        where: SeriesWhere | None = UNSET,
        order_by: list[SeriesOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> SeriesConnection:
        spec = _spec(info, SERIES, where, order_by, first, after, True)
        return SeriesConnection(_spec=spec, _parent=self._row[_STUDY_UID])


@strawberry.type(description="A series (one row of the Series table; per-image values come from its first instance).")
@_with_fields(SERIES)
class Series:
    _row: strawberry.Private[Sequence[Any]]
    _shown: strawberry.Private[Sequence[Any]]

    @strawberry.field(description=_ID_DOC)
    def id(self) -> strawberry.ID:
        return strawberry.ID(f"Series:{self.series_instance_uid}")

    @strawberry.field(description=_RAW_DOC)
    def raw(self) -> JSON:
        return _raw(SERIES, self._shown)

    @strawberry.field
    async def study(self, info: Ctx) -> Study:
        return await _required(info, STUDY, self._row[_SERIES_STUDY_UID], "series", self.series_instance_uid)

    @strawberry.field(description="Number of slices (DICOM instances) in this series.")
    async def slice_count(self, info: Ctx) -> int:
        return await info.context.loaders.counts.load((SLICE.name, _ALL, self._row[_SERIES_UID]))

    @strawberry.field(
        description="Number of images in this series: an instance of several frames (an enhanced multi-frame "
        "image) counts its frames, any other instance one; so a classic series and its enhanced form count the "
        "same, where `sliceCount` counts instances (rows)."
    )
    async def frame_count(self, info: Ctx) -> int:
        return await info.context.loaders.frames.load(self._row[_SERIES_UID])

    @strawberry.field(description="The series' slices, by default in slice-number order.")
    def slices(
        self,
        info: Ctx,
        where: SliceWhere | None = UNSET,
        order_by: list[SliceOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> SliceConnection:
        spec = _spec(info, SLICE, where, order_by, first, after, True)
        return SliceConnection(_spec=spec, _parent=self._row[_SERIES_UID])


@strawberry.type(description="A slice: one DICOM instance (one row of the SliceMetadata table).")
@_with_fields(SLICE)
class Slice:
    _row: strawberry.Private[Sequence[Any]]
    _shown: strawberry.Private[Sequence[Any]]

    @strawberry.field(description=_ID_DOC)
    def id(self) -> strawberry.ID:
        return strawberry.ID(f"Slice:{self.sop_instance_uid}")

    @strawberry.field(description=_RAW_DOC)
    def raw(self) -> JSON:
        return _raw(SLICE, self._shown)

    @strawberry.field
    async def series(self, info: Ctx) -> Series:
        return await _required(info, SERIES, self._row[_SLICE_SERIES_UID], "slice", self.sop_instance_uid)

    @strawberry.field(
        description="The file this instance was ingested from; null when the ingest's file index has none for it "
        "(a database not made by dicom-ingest). Full access only: any other token gets FORBIDDEN."
    )
    async def file(self, info: Ctx) -> DicomFile | None:
        if not info.context.access.may_read_files:
            raise ForbiddenError("Slice.file needs a token with full access: file paths and contents identify.")
        sop = self._row[_SLICE_SOP_UID]  # as stored (only full access gets here, and it sees it so)
        found = await info.context.loaders.files.load(sop)
        if found is None:
            return None
        path, size = found
        return DicomFile(path=path, size=size, url=file_url(sop))


@strawberry.type(description="The DICOM file an instance was ingested from.")
class DicomFile:
    path: str = strawberry.field(
        description="The file's path as the ingest stored it (absolute); a name that is not UTF-8 in its stored "
        "form, `bytes:` followed by the name with each such byte written \\xNN and each backslash doubled."
    )
    size: int = strawberry.field(description="The file's size in bytes when it was ingested.")
    url: str = strawberry.field(
        description="Where to download the file: `/files/{sopInstanceUid}`, relative to this server (a GET with "
        "the same token)."
    )


def file_url(sop_instance_uid: str) -> str:
    return "/files/" + quote(sop_instance_uid, safe="")


@strawberry.type
class PatientConnection(Connection[Patient]):
    @strawberry.field(description=_GROUP_DOC)
    async def group_by(
        self, info: Ctx, field: PatientGroupField, date_part: DatePart | None = UNSET, first: int | None = UNSET
    ) -> list[GroupCount]:
        return await self._groups(info, field, date_part, first)


@strawberry.type
class StudyConnection(Connection[Study]):
    @strawberry.field(description=_GROUP_DOC)
    async def group_by(
        self, info: Ctx, field: StudyGroupField, date_part: DatePart | None = UNSET, first: int | None = UNSET
    ) -> list[GroupCount]:
        return await self._groups(info, field, date_part, first)


@strawberry.type
class SeriesConnection(Connection[Series]):
    @strawberry.field(description=_GROUP_DOC)
    async def group_by(
        self, info: Ctx, field: SeriesGroupField, date_part: DatePart | None = UNSET, first: int | None = UNSET
    ) -> list[GroupCount]:
        return await self._groups(info, field, date_part, first)


@strawberry.type
class SliceConnection(Connection[Slice]):
    @strawberry.field(description=_GROUP_DOC)
    async def group_by(
        self, info: Ctx, field: SliceGroupField, date_part: DatePart | None = UNSET, first: int | None = UNSET
    ) -> list[GroupCount]:
        return await self._groups(info, field, date_part, first)


# Building objects and specs

_ALL = Fragment(TRUE)
_NODE_CLASSES: dict[str, type] = {"Patient": Patient, "Study": Study, "Series": Series, "SliceMetadata": Slice}
_READERS = {name: row_reader(TABLES[name]) for name in _NODE_CLASSES}
# Where relations find the stored keys (never the PatientID pseudonym or the pseudonymous UIDs shown).
_PATIENT_ID = PATIENT.select.index("PatientID")
_STUDY_PATIENT_ID = STUDY.select.index("PatientID")
_STUDY_UID = STUDY.select.index("StudyInstanceUID")
_SERIES_UID = SERIES.select.index("SeriesInstanceUID")
_SERIES_STUDY_UID = SERIES.select.index("StudyInstanceUID")
_SLICE_SERIES_UID = SLICE.select.index("SeriesInstanceUID")
_SLICE_SOP_UID = SLICE.select.index("SOPInstanceUID")


def make_node(table: Table, row: Sequence[Any], access: Access = FULL) -> Any:
    """The GraphQL object for a stored row (columns in `table.select` order), as `access` may see it: every
    field and `raw` come from the masked row; only relations read the stored keys."""
    shown = access.row(table, row)
    return _NODE_CLASSES[table.name](**_READERS[table.name](shown), _row=row, _shown=shown)


async def _required(info: Ctx, table: Table, key: Any, child: str, child_key: str) -> Any:
    node = await info.context.loaders.rows.load(row_key(table, table.key, key, info.context.access))
    if node is None:
        # The missing key is not in the message: it may be a PatientID, which a de-identified token may not see.
        raise NotFoundError(f"{child} {child_key} points to a {table.type_name} that is not in the database")
    return node


def _spec(
    info: Ctx,
    table: Table,
    where: Any,
    order_by: Sequence[Any] | None,
    first: int | None,
    after: str | None,
    nested: bool,
) -> PageSpec:
    """Compile a connection's arguments, once per field of the query (not once per parent row)."""
    # The response path without list indices names one field of the query, and GraphQL validation
    # guarantees that a field has the same arguments wherever it occurs at that path. A bad argument is
    # remembered too: it is the same error for every parent row (api.limits reports it once).
    key = tuple(k for k in info.path.as_list() if isinstance(k, str))
    cached = info.context.specs.get(key)
    if cached is None:
        try:
            cached = _compile_spec(info, table, where, order_by, first, after, nested)
        except GraphQLError as error:
            cached = error
        info.context.specs[key] = cached
    if isinstance(cached, GraphQLError):
        raise GraphQLError(cached.message, extensions=cached.extensions)
    return cached


def _compile_spec(
    info: Ctx,
    table: Table,
    where: Any,
    order_by: Sequence[Any] | None,
    first: int | None,
    after: str | None,
    nested: bool,
) -> PageSpec:
    settings = info.context.settings
    access = info.context.access
    first = None if first is UNSET else first
    after = None if after is UNSET else after
    order = order_keys(table, order_by, nested=nested, access=access)
    return PageSpec(
        table=table.name,
        where=compile_where(table, where, info.context.db.dialect, access=access),
        order=order,
        limit=page_size(first, settings.default_page_size, settings.max_page_size),
        after=decode_cursor(table, after, order) if after is not None else None,
        with_patient=access.needs_patient(table),
    )


def root_spec(
    info: Ctx, table: Table, where: Any, order_by: Sequence[Any] | None, first: int | None, after: str | None
) -> PageSpec:
    return _spec(info, table, where, order_by, first, after, False)
