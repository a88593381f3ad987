"""The schema: schema.graphql matches the code, every column is a field, filter, order and group key, and the
names of ../shared/API.md hold."""

from __future__ import annotations

import graphql
import pytest

from dicom_db.api.auth import AccessLevel
from dicom_db.api.columns import PATIENT, SERIES, SLICE, STUDY, TABLES, Kind, Table, snake_case
from dicom_db.api.masking import Treatment, treatment
from dicom_db.api.schema import SDL_PATH, sdl

SCHEMA = graphql.build_schema(sdl())
TYPE_OF_KIND = {
    Kind.STRING: "String",
    Kind.INT: "Int",
    Kind.INT_TEXT: "Int",
    Kind.FLOAT: "Float",
    Kind.BOOL: "Boolean",
    Kind.DATE: "Date",
    Kind.FLOAT_LIST: "[Float!]",
    Kind.STRING_LIST: "[String!]",
}
FILTER_OF_KIND = {
    Kind.STRING: "StringFilter",
    Kind.INT: "IntFilter",
    Kind.INT_TEXT: "IntFilter",
    Kind.FLOAT: "FloatFilter",
    Kind.BOOL: "BooleanFilter",
    Kind.DATE: "DateFilter",
    Kind.FLOAT_LIST: "StringFilter",
    Kind.STRING_LIST: "StringFilter",
}


def test_schema_graphql_is_up_to_date() -> None:
    assert SDL_PATH.read_text() == sdl(), "schema.graphql is stale: run `python -m dicom_db.api.schema --write`"


def _camel(column: str) -> str:
    head, *rest = snake_case(column).split("_")
    return head + "".join(w.capitalize() for w in rest)


@pytest.mark.parametrize("table", list(TABLES.values()), ids=lambda t: t.type_name)
def test_every_column_is_a_field_a_filter_an_order_and_a_group_key(table: Table) -> None:
    node = SCHEMA.get_type(table.type_name)
    where = SCHEMA.get_type(f"{table.type_name}Where")
    order = SCHEMA.get_type(f"{table.type_name}OrderField")
    group = SCHEMA.get_type(f"{table.type_name}GroupField")
    assert isinstance(node, graphql.GraphQLObjectType)
    assert isinstance(where, graphql.GraphQLInputObjectType)
    assert isinstance(order, graphql.GraphQLEnumType) and isinstance(group, graphql.GraphQLEnumType)
    for column in table.columns:
        name = _camel(column.name)
        field_type = str(graphql.get_nullable_type(node.fields[name].type))
        assert field_type == TYPE_OF_KIND[column.kind], column.name
        assert str(where.fields[name].type) == FILTER_OF_KIND[column.kind], column.name
        assert column.enum in order.values and column.enum in group.values
    assert len(order.values) == len(group.values) == len(table.columns)


def test_names_follow_the_contract() -> None:
    for column, field in [
        ("PatientID", "patientId"),
        ("StudyInstanceUID", "studyInstanceUid"),
        ("KVP", "kvp"),
        ("SliceThickness", "sliceThickness"),
        ("SOPInstanceUID", "sopInstanceUid"),
        ("DeIdentificationMethod", "deIdentificationMethod"),
    ]:
        assert _camel(column) == field
    assert {"MODALITY", "SLICE_THICKNESS", "BODY_PART_EXAMINED"} <= set(SCHEMA.get_type("SeriesOrderField").values)
    assert "STUDY_DATE" in SCHEMA.get_type("StudyOrderField").values
    assert "PATIENT_SEX" in SCHEMA.get_type("PatientGroupField").values
    assert list(SCHEMA.get_type("OrderDirection").values) == ["ASC", "DESC"]


def _field(type_name: str, field: str) -> str:
    return str(SCHEMA.get_type(type_name).fields[field].type)


def _args(type_name: str, field: str) -> dict[str, str]:
    return {name: str(arg.type) for name, arg in SCHEMA.get_type(type_name).fields[field].args.items()}


def test_query_root_and_relations_match_the_contract() -> None:
    assert _args("Query", "patient") == {"patientId": "String!"}
    assert _args("Query", "study") == {"studyInstanceUid": "String!"}
    assert _args("Query", "series") == {"seriesInstanceUid": "String!"}
    assert _args("Query", "slice") == {"sopInstanceUid": "String!"}
    for root, name in [("allPatients", "Patient"), ("allStudies", "Study"), ("allSeries", "Series")]:
        assert _field("Query", root) == f"{name}Connection!"
        assert _args("Query", root) == {
            "where": f"{name}Where",
            "orderBy": f"[{name}OrderBy!]",
            "first": "Int",
            "after": "String",
        }
    assert _field("Query", "allSlices") == "SliceConnection!"
    assert _args("Patient", "studies")["where"] == "StudyWhere"
    assert _field("Patient", "studies") == "StudyConnection!"
    assert _field("Study", "patient") == "Patient!"
    assert _field("Study", "series") == "SeriesConnection!"
    assert _field("Series", "study") == "Study!"
    assert _field("Series", "slices") == "SliceConnection!"
    assert _field("Slice", "series") == "Series!"
    assert _field("Slice", "sliceId") == "Int!"
    assert _field("Slice", "sopInstanceUid") == "String!"
    assert _field("Series", "pixelSpacing") == "[Float!]"
    assert _field("Study", "modalities") == "[String!]!"
    for name in ("Patient", "Study", "Series", "Slice"):
        connection = SCHEMA.get_type(f"{name}Connection")
        assert {k: str(f.type) for k, f in connection.fields.items()} == {
            "totalCount": "Int!",
            "nodes": f"[{name}!]!",
            "edges": f"[{name}Edge!]!",
            "pageInfo": "PageInfo!",
            "groupBy": "[GroupCount!]!",
        }
        assert str(connection.fields["groupBy"].args["field"].type) == f"{name}GroupField!"
        assert {k: str(f.type) for k, f in SCHEMA.get_type(f"{name}Edge").fields.items()} == {
            "cursor": "String!",
            "node": f"{name}!",
        }
    assert {k: str(f.type) for k, f in SCHEMA.get_type("GroupCount").fields.items()} == {
        "value": "String",
        "count": "Int!",
    }
    assert set(SCHEMA.get_type("PageInfo").fields) == {"hasNextPage", "hasPreviousPage", "startCursor", "endCursor"}


def test_filter_inputs_match_the_contract() -> None:
    def fields(name: str) -> dict[str, str]:
        return {k: str(f.type) for k, f in SCHEMA.get_type(name).fields.items()}

    assert fields("StringFilter") == {
        "eq": "String",
        "ne": "String",
        "in": "[String!]",
        "notIn": "[String!]",
        "isNull": "Boolean",
        "contains": "String",
        "startsWith": "String",
        "match": "String",
    }
    number_ops = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "isNull"]
    assert list(fields("FloatFilter")) == list(fields("IntFilter")) == number_ops
    assert fields("FloatFilter")["in"] == "[Float!]" and fields("IntFilter")["gt"] == "Int"
    assert fields("DateFilter") == {
        "eq": "Date",
        "gt": "Date",
        "gte": "Date",
        "lt": "Date",
        "lte": "Date",
        "isNull": "Boolean",
    }
    series_where = fields("SeriesWhere")
    assert series_where["modality"] == "StringFilter"
    assert series_where["sliceThickness"] == "FloatFilter"
    assert series_where["study"] == "StudyWhere"
    assert series_where["slices"] == "SliceListFilter"
    assert (series_where["and"], series_where["or"], series_where["not"]) == (
        "[SeriesWhere!]",
        "[SeriesWhere!]",
        "SeriesWhere",
    )
    assert fields("SliceListFilter") == {"some": "SliceWhere", "none": "SliceWhere"}
    assert fields("StudyWhere")["patient"] == "PatientWhere"
    assert fields("PatientWhere")["studies"] == "StudyListFilter"
    assert fields("SliceWhere")["series"] == "SeriesWhere"
    assert fields("SeriesOrderBy") == {"field": "SeriesOrderField!", "direction": "OrderDirection"}


def test_the_person_identifying_columns_are_hidden_from_deidentified_access() -> None:
    hidden = {
        (t.name, c.name)
        for t in (PATIENT, STUDY, SERIES, SLICE)
        for c in t.columns
        if treatment(c, AccessLevel.DEIDENTIFIED.options)[0] in (Treatment.NULL, Treatment.PSEUDONYM)
    }
    assert {
        ("Patient", "PatientID"),
        ("Patient", "PatientName"),
        ("Patient", "PatientBirthDate"),
        ("Study", "PatientID"),
        ("Study", "ReferringPhysicianName"),
        ("Study", "StudyID"),
        ("SliceMetadata", "AccessionNumber"),
    } <= hidden
