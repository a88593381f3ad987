"""Every ```graphql example in the documentation runs against pydicom's files, and answers in the shape asked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import graphql
import pytest
from api_helpers import Api

from dicom_db.api.schema import sdl

pytest_plugins = ["api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "api.md"]
BLOCK = re.compile(r"^```graphql\n(.*?)^```", re.S | re.M)
SCHEMA = graphql.build_schema(sdl())


def _examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        if doc.exists():
            for i, match in enumerate(BLOCK.finditer(doc.read_text())):
                found.append((f"{doc.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


EXAMPLES = _examples()


def test_the_api_docs_have_examples() -> None:
    assert sum(1 for name, _ in EXAMPLES if name.startswith("docs/api.md")) >= 7


def _check_shape(selection: graphql.SelectionSetNode, value: Any, path: str) -> None:
    """Every field the query selects is in the answer, at every depth."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_shape(selection, item, f"{path}[{i}]")
        return
    if value is None:
        return
    assert isinstance(value, dict), path
    for node in selection.selections:
        assert isinstance(node, graphql.FieldNode), "examples use plain fields"
        key = (node.alias or node.name).value
        assert key in value, f"{path}.{key} missing"
        if node.selection_set is not None:
            _check_shape(node.selection_set, value[key], f"{path}.{key}")


@pytest.mark.parametrize(("name", "query"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_documented_query_runs(dicomdir: Api, name: str, query: str) -> None:
    document = graphql.parse(query)
    assert graphql.validate(SCHEMA, document) == []
    data = dicomdir.data(query)
    [operation] = document.definitions
    assert isinstance(operation, graphql.OperationDefinitionNode)
    _check_shape(operation.selection_set, data, "data")
    for key, value in data.items():
        assert value is not None, f"{name}: {key} found nothing"
        if isinstance(value, dict) and "nodes" in value:
            assert value["nodes"], f"{name}: {key} found nothing"


def test_documented_results(dicomdir: Api) -> None:
    """A few examples' answers, checked value by value."""
    by_name = dict(EXAMPLES)
    names = {
        n["patientName"]
        for n in dicomdir.data(by_name["docs/api.md#4"])["allPatients"]["nodes"]  # the match example
    }
    assert names == {"Doe^Peter", "Citizen^Jan"}
    thin = dicomdir.data(by_name["docs/api.md#3"])["allPatients"]["nodes"]
    assert thin == [{"patientId": "98890234", "patientName": "Doe^Peter"}]
    facets = dicomdir.data(by_name["docs/api.md#6"])
    assert sum(g["count"] for g in facets["allSeries"]["groupBy"]) == facets["allSeries"]["totalCount"]
