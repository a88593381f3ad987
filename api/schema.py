"""The Query root and the schema. `python -m dicom_db.api.schema` prints the SDL; `--write` updates schema.graphql."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry import UNSET
from strawberry.extensions import MaskErrors, MaxTokensLimiter, SchemaExtension
from strawberry.extensions.disable_introspection import DisableIntrospection
from strawberry.types import ExecutionContext
from strawberry.utils.logging import StrawberryLogger

from dicom_db.api.columns import PATIENT, SERIES, SLICE, STUDY, Table
from dicom_db.api.execution import CooperativeExecution
from dicom_db.api.limits import QueryGuard, RowCounts
from dicom_db.api.loaders import row_key
from dicom_db.api.masking import Treatment
from dicom_db.api.settings import Settings
from dicom_db.api.types import (
    Ctx,
    Patient,
    PatientConnection,
    PatientOrderBy,
    PatientWhere,
    Series,
    SeriesConnection,
    SeriesOrderBy,
    SeriesWhere,
    Slice,
    SliceConnection,
    SliceOrderBy,
    SliceWhere,
    Study,
    StudyConnection,
    StudyOrderBy,
    StudyWhere,
    root_spec,
)

log = logging.getLogger("dicom_api")

SDL_PATH = Path(__file__).resolve().parent.parent / "schema.graphql"

_CONNECTION_DOC = (
    "A page of {what}: filter with `where`, order with `orderBy` (the primary key breaks ties), page with "
    "`first` (default and maximum set by the server) and `after` (an `endCursor` or edge `cursor`)."
)


@strawberry.type
class Query:
    @strawberry.field(description="A patient by PatientID (for a de-identified token: by its pseudonym).")
    async def patient(self, info: Ctx, patient_id: str) -> Patient | None:
        access = info.context.access
        # De-identified access knows patients by pseudonym only: the real ID finds nothing.
        mode = "pseudonym" if access.treatment(PATIENT, PATIENT.key_column) is Treatment.PSEUDONYM else ""
        return await info.context.loaders.rows.load(row_key(PATIENT, PATIENT.key, patient_id, access, mode))

    @strawberry.field(description="A study by StudyInstanceUID (for a de-identified token: its pseudonymous UID).")
    async def study(self, info: Ctx, study_instance_uid: str) -> Study | None:
        return await _by_uid(info, STUDY, STUDY.key, study_instance_uid)

    @strawberry.field(description="A series by SeriesInstanceUID (for a de-identified token: its pseudonymous UID).")
    async def series(self, info: Ctx, series_instance_uid: str) -> Series | None:
        return await _by_uid(info, SERIES, SERIES.key, series_instance_uid)

    @strawberry.field(description="A slice by SOPInstanceUID (for a de-identified token: its pseudonymous UID).")
    async def slice(self, info: Ctx, sop_instance_uid: str) -> Slice | None:
        return await _by_uid(info, SLICE, "SOPInstanceUID", sop_instance_uid)

    @strawberry.field(description=_CONNECTION_DOC.format(what="patients"))
    def all_patients(
        self,
        info: Ctx,
        where: PatientWhere | None = UNSET,
        order_by: list[PatientOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> PatientConnection:
        return PatientConnection(_spec=root_spec(info, PATIENT, where, order_by, first, after), _parent=None)

    @strawberry.field(description=_CONNECTION_DOC.format(what="studies"))
    def all_studies(
        self,
        info: Ctx,
        where: StudyWhere | None = UNSET,
        order_by: list[StudyOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> StudyConnection:
        return StudyConnection(_spec=root_spec(info, STUDY, where, order_by, first, after), _parent=None)

    @strawberry.field(description=_CONNECTION_DOC.format(what="series"))
    def all_series(
        self,
        info: Ctx,
        where: SeriesWhere | None = UNSET,
        order_by: list[SeriesOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> SeriesConnection:
        return SeriesConnection(_spec=root_spec(info, SERIES, where, order_by, first, after), _parent=None)

    @strawberry.field(description=_CONNECTION_DOC.format(what="slices"))
    def all_slices(
        self,
        info: Ctx,
        where: SliceWhere | None = UNSET,
        order_by: list[SliceOrderBy] | None = UNSET,
        first: int | None = UNSET,
        after: str | None = UNSET,
    ) -> SliceConnection:
        return SliceConnection(_spec=root_spec(info, SLICE, where, order_by, first, after), _parent=None)


async def _by_uid(info: Ctx, table: Table, column: str, uid: str) -> Any:
    """The row with this UID; a level that sees pseudonymous UIDs finds rows by pseudonym only (deciphered into
    the UID's stored digest: an index seek), and the real UID finds nothing."""
    access = info.context.access
    if access.treatment(table, table.by_name[column]) is not Treatment.UID:
        return await info.context.loaders.rows.load(row_key(table, column, uid, access))
    assert access.pseudonyms is not None
    digest = access.pseudonyms.uid_digest(uid)
    if digest is None:
        return None
    return await info.context.loaders.rows.load(row_key(table, column, digest, access, "digest"))


def unexpected(error: GraphQLError) -> bool:
    """An error a resolver raised by accident (it may hold SQL or paths), as opposed to our own errors and
    GraphQL's validation and coercion errors, which only describe the client's query."""
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError)


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # A client's mistake is answered in the response; only the server's own failures belong in its log.
        for error in errors:
            if unexpected(error):
                StrawberryLogger.error(error, execution_context)
            else:
                log.debug("query error: %s", error.message)


def build_schema(settings: Settings | None = None, row_counts: RowCounts | None = None) -> strawberry.Schema:
    """The schema with this deployment's checks; `row_counts` gives the tables' sizes (api.limits.Budget)."""
    settings = settings or Settings()
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        # The guard first: its checks run before the others' and it has the last word on errors (codes, dedupe).
        partial(QueryGuard, settings, row_counts),
        partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
    ]
    if settings.mask_errors:
        extensions.append(partial(MaskErrors, should_mask_error=unexpected))
    if not settings.introspection:
        extensions.append(DisableIntrospection)
    return Schema(query=Query, extensions=extensions, execution_context_class=CooperativeExecution)


def sdl() -> str:
    return build_schema().as_str() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicom_db.api.schema", description="Print the API's GraphQL SDL.")
    parser.add_argument("--write", action="store_true", help=f"write it to {SDL_PATH.name} instead")
    args = parser.parse_args(argv)
    if args.write:
        SDL_PATH.write_text(sdl())
        print(f"wrote {SDL_PATH}")
    else:
        sys.stdout.write(sdl())
    return 0


if __name__ == "__main__":
    sys.exit(main())
