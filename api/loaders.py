"""Per-request DataLoaders: every relation and connection of one query level is fetched in one statement.

Resolvers never query the database themselves: they ask a loader for one key, and the loader runs one
statement per distinct specification for all keys asked for in the same event-loop tick (all parents of a
level). So the number of statements follows the shape of the query, never the number of rows.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError
from strawberry.dataloader import DataLoader

from dicom_db.api.columns import TABLES, Table
from dicom_db.api.db import Database
from dicom_db.api.execution import YIELD_EVERY
from dicom_db.api.masking import FULL, UID_HASHES, Access, uid_hash
from dicom_db.api.pagination import Page, PageSpec
from dicom_db.api.sql import Fragment

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from dicom_db.api.settings import Settings

# (table, column, value, mode, with the patient's ID): mode "" finds `column` = value, "pseudonym" its pseudonym
# (PatientID), "digest" the UID digest (value: a digest) of a pseudonymous UID; see Database.rows_by_keys.
RowKey = tuple[str, str, Any, str, bool]
PageKey = tuple[PageSpec, Any]  # (spec, parent key or None for a root connection)
CountKey = tuple[str, Fragment, Any]  # (table, where, parent key or None)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    table: str
    where: Fragment
    column: str
    date_part: str | None
    limit: int
    view: str = ""  # "shifted" or "keyed" (Database.groups)


def row_key(table: Table, column: str, value: Any, access: Access = FULL, mode: str = "") -> RowKey:
    return (table.name, column, value, mode, access.needs_patient(table))


GroupKey = tuple[GroupSpec, Any]


class Loaders:
    """The loaders of one request. `make_node(table, row)` turns a stored row into a GraphQL object."""

    def __init__(self, db: Database, make_node: Callable[[Table, Sequence[Any]], Any]) -> None:
        self.db = db
        self.make_node = make_node
        self.rows: DataLoader[RowKey, Any] = DataLoader(self._load_rows)
        self.pages: DataLoader[PageKey, Page] = DataLoader(self._load_pages)
        self.counts: DataLoader[CountKey, int] = DataLoader(self._load_counts)
        self.frames: DataLoader[Any, int] = DataLoader(self._load_frames)
        self.groups: DataLoader[GroupKey, list[tuple[Any, int]]] = DataLoader(self._load_groups)
        # SOPInstanceUID -> (stored path, size) of the file the instance's row comes from, or None
        self.files: DataLoader[str, tuple[str, int] | None] = DataLoader(self._load_files)

    async def _load_rows(self, keys: list[RowKey]) -> list[Any]:
        wanted: dict[tuple[str, str, str, bool], set[Any]] = defaultdict(set)
        for key in keys:
            wanted[_row_group(key)].add(key[2])

        async def fetch(table_name: str, column: str, mode: str, patient: bool, values: set[Any]) -> dict[Any, Any]:
            table = TABLES[table_name]
            rows = await self.db.rows_by_keys(table, column, sorted(values), mode=mode, with_patient=patient)
            if mode == "digest":
                index = table.select.index(UID_HASHES[table.name][0])
                key_of: Callable[[Any], Any] = uid_hash
            else:
                index = table.select.index(column)
                key_of = self.db.pseudonyms if mode == "pseudonym" else _identity
            return {key_of(row[index]): self.make_node(table, row) for row in rows}

        found = await _gather({k: fetch(*k, v) for k, v in wanted.items()})
        return [found[_row_group(key)].get(key[2]) for key in keys]

    async def _load_pages(self, keys: list[PageKey]) -> list[Page]:
        parents: dict[PageSpec, list[Any]] = defaultdict(list)
        for spec, parent in keys:
            parents[spec].append(parent)
        results = await _gather({spec: self._fetch_pages(spec, ps) for spec, ps in parents.items()})
        return [results[spec][parent] for spec, parent in keys]

    async def _fetch_pages(self, spec: PageSpec, parents: list[Any]) -> dict[Any, Page]:
        table = TABLES[spec.table]
        width = len(table.select) + spec.with_patient
        depth = len(spec.order)
        grouped: dict[Any, list[tuple[Any, ...]]] = {p: [] for p in parents}
        nested = sorted(p for p in grouped if p is not None)
        if None in grouped:  # a root connection
            grouped[None] = await self.db.page(spec)
        if nested:
            assert table.parent is not None
            for row in await self.db.pages(spec, table.parent.fk, nested):
                grouped[row[-1]].append(row)
        pages = {}
        made = 0
        for parent, rows in grouped.items():
            if made >= YIELD_EVERY:  # nodes for many rows: let the event loop (and the time limit) run meanwhile
                made = 0
                await asyncio.sleep(0)
            made += min(len(rows), spec.limit)
            # `first: 0` asks for counts only: no page, so no next page either (there is no cursor to go on from).
            has_next = spec.limit > 0 and len(rows) > spec.limit
            rows = rows[: spec.limit]
            pages[parent] = Page(
                nodes=[self.make_node(table, row) for row in rows],
                keys=[tuple(row[width : width + depth]) for row in rows],
                has_next=has_next,
                has_previous=spec.after is not None,
                fingerprint=spec.fingerprint,
            )
        return pages

    async def _load_frames(self, series: list[Any]) -> list[int]:
        found = await self.db.frame_counts(sorted(set(series)))
        return [found.get(key, 0) for key in series]

    async def _load_counts(self, keys: list[CountKey]) -> list[int]:
        parents: dict[tuple[str, Fragment], list[Any]] = defaultdict(list)
        for table, where, parent in keys:
            parents[(table, where)].append(parent)

        async def fetch(table_name: str, where: Fragment, ps: list[Any]) -> dict[Any, int]:
            table = TABLES[table_name]
            counts: dict[Any, int] = {}
            nested = sorted({p for p in ps if p is not None})
            if None in ps:
                counts[None] = await self.db.count(table, where)
            if nested:
                assert table.parent is not None
                counts.update(await self.db.counts(table, where, table.parent.fk, nested))
            return counts

        results = await _gather({k: fetch(*k, ps) for k, ps in parents.items()})
        return [results[(table, where)].get(parent, 0) for table, where, parent in keys]

    async def _load_groups(self, keys: list[GroupKey]) -> list[list[tuple[Any, int]]]:
        parents: dict[GroupSpec, list[Any]] = defaultdict(list)
        for spec, parent in keys:
            parents[spec].append(parent)

        async def fetch(spec: GroupSpec, ps: list[Any]) -> dict[Any, list[tuple[Any, int]]]:
            table = TABLES[spec.table]
            grouped: dict[Any, list[tuple[Any, int]]] = defaultdict(list)
            nested = sorted({p for p in ps if p is not None})
            if None in ps:
                grouped[None] = await self.db.groups(
                    table, spec.where, spec.column, spec.date_part, spec.limit, spec.view
                )
            if nested:
                assert table.parent is not None
                rows = await self.db.groups_by_parent(
                    table, spec.where, spec.column, spec.date_part, table.parent.fk, nested, spec.view
                )
                for parent, value, count in rows:
                    if len(grouped[parent]) < spec.limit:
                        grouped[parent].append((value, count))
            return grouped

        results = await _gather({spec: fetch(spec, ps) for spec, ps in parents.items()})
        return [results[spec].get(parent, []) for spec, parent in keys]

    async def _load_files(self, keys: list[str]) -> list[tuple[str, int] | None]:
        found = await self.db.instance_files(sorted(set(keys)))
        return [found.get(key) for key in keys]


def _row_group(key: RowKey) -> tuple[str, str, str, bool]:
    return (key[0], key[1], key[3], key[4])


def _identity(value: Any) -> Any:
    return value


async def _gather(jobs: dict[Any, Any]) -> dict[Any, Any]:
    """Start the statements of one batch together: they queue on the request's connection, while the Python
    around them (building nodes) overlaps."""
    values = await asyncio.gather(*jobs.values())
    return dict(zip(jobs.keys(), values, strict=True))


@dataclass(slots=True)
class Context:
    """What resolvers see as `info.context`, made anew for every request."""

    request: Request
    response: Response
    db: Database
    settings: Settings
    loaders: Loaders
    access: Access = FULL  # what this request may see (api.masking)
    deadline: float = math.inf  # event-loop time by which the request must be answered (api.execution)
    # Compiled connection arguments (or the error they gave) by field path: the resolver of a nested
    # connection runs once per parent with the same arguments, and compiles them once.
    specs: dict[tuple[str, ...], PageSpec | GraphQLError] = field(default_factory=dict)
    # Heavy requests (api.heavy): whether this worker runs them in processes of their own, and the node count of
    # this request when the guard (api.limits) found it over `heavyNodes` and so left it for one of them.
    offload: bool = False
    heavy_nodes: int | None = None
