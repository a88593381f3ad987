"""Query limits: each one rejects a query just over it and accepts one just under it, with a code and a message
that name the limit and its value, before any SQL runs; the defaults, and every setting from the environment
and the command line; the time limit stops a slow request and the database work under it.

The synthetic corpus (api_helpers.write_synthetic) has 4 patients, 5 studies, 6 series and 55 slices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import Api, serve
from graphql import Lexer, Source, TokenKind, get_introspection_query

from dicom_db.api.cli import build_parser, settings_from_args
from dicom_db.api.settings import Settings, SettingsError

pytest_plugins = ["api_fixtures"]


@pytest.fixture(scope="module")
def small(synthetic_db: Path) -> Iterator[Api]:
    """Small limits, so that queries just over and just under them stay short (each test meets one)."""
    yield from serve(
        f"sqlite:///{synthetic_db}",
        max_depth=8,
        max_aliases=3,
        max_tokens=60,
        max_nodes=15,
        max_page_size=20,
        default_page_size=5,
    )


def tokens(query: str) -> int:
    """Lexical tokens as the token limit counts them: comments included, the end of the document not."""
    lexer = Lexer(Source(query))
    while lexer.advance().kind is not TokenKind.EOF:
        pass
    count = 0
    token = lexer.token.prev
    while token is not None and token.kind is not TokenKind.SOF:
        count += 1
        token = token.prev
    return count


def refused(api: Api, query: str, code: str, message: str, **variables: Any) -> dict[str, Any]:
    before = api.statements
    started = time.perf_counter()
    body = api.post(query, variables)
    # Not a speed test (bench/ measures speed): a guard against checks that walk a document exponentially,
    # loose enough for a loaded 2-core CI machine.
    assert time.perf_counter() - started < 10
    assert api.statements == before, "a refused query ran SQL"
    assert body["data"] is None, body
    [error] = body["errors"]
    assert error["extensions"]["code"] == code, error
    assert message in error["message"], error["message"]
    return error


def accepted(api: Api, query: str, **variables: Any) -> dict[str, Any]:
    return api.data(query, **variables)


# Depth: nested field levels, fragments included.


def test_depth_just_under_and_just_over(synthetic_db: Path) -> None:
    for api in serve(f"sqlite:///{synthetic_db}", max_depth=6):
        at_limit = '{ patient(patientId: "PAT001") { studies { nodes { patient { studies { totalCount } } } } } }'
        over = '{ patient(patientId: "PAT001") { studies { nodes { patient { studies { nodes { studyId } } } } } } }'
        assert accepted(api, at_limit)["patient"]["studies"]["nodes"][0]["patient"]["studies"] == {"totalCount": 2}
        error = refused(api, over, "DEPTH_LIMIT_EXCEEDED", "The query is 7 fields deep; the limit is 6 (maxDepth).")
        assert error["extensions"] == {"code": "DEPTH_LIMIT_EXCEEDED", "limit": "maxDepth", "value": 6}
        # Through fragments and inline fragments as well.
        fragments = (
            '{ patient(patientId: "PAT001") { ...A } } fragment A on Patient { studies { ... on StudyConnection '
            "{ nodes { ...B } } } } fragment B on Study { patient { studies { nodes { studyId } } } }"
        )
        refused(api, fragments, "DEPTH_LIMIT_EXCEEDED", "7 fields deep")
        assert accepted(api, fragments.replace("studies { nodes { studyId } }", "studyCount"))


def test_default_depth(synthetic: Api) -> None:
    def cycle(levels: int) -> str:
        # patient { studies { nodes { patient { ... studyCount } } } }: 3 levels per cycle, +1 root +1 leaf.
        body = "studyCount"
        for _ in range(levels):
            body = f"studies(first: 1) {{ nodes {{ patient {{ {body} }} }} }}"
        return f'{{ patient(patientId: "PAT001") {{ {body} }} }}'

    assert accepted(synthetic, cycle(6))  # 2 + 18 = 20 levels
    refused(synthetic, cycle(7), "DEPTH_LIMIT_EXCEEDED", "the limit is 20 (maxDepth)")


def test_a_very_deep_document_is_refused_quickly(synthetic: Api) -> None:
    query = "{ " + "allPatients { nodes { " * 30 + "patientId" + " } }" * 30 + " }"
    refused(synthetic, query, "DEPTH_LIMIT_EXCEEDED", "The query is 61 fields deep; the limit is 20 (maxDepth).")
    # Deeper than the parser goes (graphql-core stops at its recursion limit): the same limit, in other words.
    query = "{ " + "allPatients { nodes { " * 300 + "patientId" + " } }" * 300 + " }"
    refused(synthetic, query, "DEPTH_LIMIT_EXCEEDED", "nested too deeply to parse; the limit is 20 (maxDepth)")


# Aliases.


def test_aliases_just_under_and_just_over(small: Api) -> None:
    three = "{ a: allSeries { totalCount } b: allStudies { totalCount } c: allSlices { totalCount } }"
    assert accepted(small, three) == {"a": {"totalCount": 6}, "b": {"totalCount": 5}, "c": {"totalCount": 55}}
    four = three[:-1] + "d: allPatients { totalCount } }"
    error = refused(small, four, "ALIAS_LIMIT_EXCEEDED", "The query uses 4 aliases; the limit is 3 (maxAliases).")
    assert error["extensions"] == {"code": "ALIAS_LIMIT_EXCEEDED", "limit": "maxAliases", "value": 3}
    # Aliases in a fragment count at every spread.
    spread = "{ a: allSeries { ...F } b: allSeries { ...F } } fragment F on SeriesConnection { x: totalCount }"
    refused(small, spread, "ALIAS_LIMIT_EXCEEDED", "The query uses 4 aliases")


def test_default_aliases(synthetic: Api) -> None:
    def aliased(n: int) -> str:
        return "{ " + " ".join(f"a{i}: allSeries(first: 0) {{ totalCount }}" for i in range(n)) + " }"

    assert len(accepted(synthetic, aliased(50))) == 50
    refused(synthetic, aliased(51), "ALIAS_LIMIT_EXCEEDED", "The query uses 51 aliases; the limit is 50")


# Tokens (comments count: they cost the parser as much).


def test_tokens_just_under_and_just_over(small: Api) -> None:
    base = "{ allSeries { totalCount } }"
    padding = "\n# a comment" * (60 - tokens(base))
    assert tokens(base + padding) == 60
    assert accepted(small, base + padding) == {"allSeries": {"totalCount": 6}}
    error = refused(
        small, base + padding + "\n#", "TOKEN_LIMIT_EXCEEDED", "more than 60 tokens; the limit is 60 (maxTokens)"
    )
    assert error["extensions"] == {"code": "TOKEN_LIMIT_EXCEEDED", "limit": "maxTokens", "value": 60}
    assert "variables" in error["message"]


def test_default_tokens(synthetic: Api) -> None:
    def modalities(n: int) -> str:
        values = " ".join(f'"M{i}"' for i in range(n))
        return f"{{ allSeries(where: {{modality: {{in: [{values}]}}}}) {{ totalCount }} }}"

    n = 2000 - tokens(modalities(0))
    assert tokens(modalities(n)) == 2000
    assert accepted(synthetic, modalities(n)) == {"allSeries": {"totalCount": 0}}
    refused(synthetic, modalities(n + 1), "TOKEN_LIMIT_EXCEEDED", "more than 2000 tokens; the limit is 2000")
    # A long list goes in a variable, where it is no token.
    uids = [f"1.2.3.{i}" for i in range(5000)]
    query = "query($u: [String!]) { allSeries(where: {seriesInstanceUid: {in: $u}}) { totalCount } }"
    assert accepted(synthetic, query, u=uids) == {"allSeries": {"totalCount": 0}}


# Page size (`first`): fails its field, before its SQL.


def test_page_size_just_under_and_just_over(small: Api) -> None:
    assert len(accepted(small, "{ allSlices(first: 15) { nodes { sliceId } } }")["allSlices"]["nodes"]) == 15
    for query in (
        "{ allSlices(first: 21) { nodes { sliceId } } }",
        "{ allSeries(first: 1) { groupBy(field: MODALITY, first: 21) { value } } }",
    ):
        before = small.statements
        body = small.post(query)
        assert small.statements == before
        assert body["errors"][0]["message"] == "`first` must be between 0 and 20, got 21"
        assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}


def test_a_bad_nested_argument_is_one_error_not_one_per_parent(synthetic: Api) -> None:
    body = synthetic.post("{ allSeries { nodes { slices(first: 5000) { totalCount } } } }")
    assert body["data"] is None
    assert body["errors"] == [
        {
            "message": "`first` must be between 0 and 1000, got 5000",
            "locations": [{"line": 1, "column": 23}],
            "path": ["allSeries", "nodes", 0, "slices"],
            "extensions": {"code": "BAD_USER_INPUT"},
        }
    ]
    body = synthetic.post('{ allStudies { nodes { series(after: "nope") { totalCount } } } }')
    assert len(body["errors"]) == 1 and body["errors"][0]["message"].startswith("`after` is not a cursor")


# The node budget: rows a query may return, from its page sizes (GitHub's count), capped by table sizes where
# the rows are distinct.


def test_node_budget_just_under_and_just_over(small: Api) -> None:
    # 3 series, then 4 slices each: 3 + 12 = 15 rows.
    under = "{ allSeries(first: 3) { nodes { slices(first: 4) { nodes { sliceId } } } } }"
    assert len(accepted(small, under)["allSeries"]["nodes"]) == 3
    over = under.replace("first: 4", "first: 5")  # 3 + 15 = 18
    error = refused(
        small, over, "NODE_LIMIT_EXCEEDED", "The query may return up to 18 rows; the limit is 15 (maxNodes)."
    )
    assert error["extensions"] == {"code": "NODE_LIMIT_EXCEEDED", "limit": "maxNodes", "value": 15}
    # Without `first`, a connection counts the default page size (5 here): 3 + 3 * 5 = 18.
    refused(small, under.replace("(first: 4)", ""), "NODE_LIMIT_EXCEEDED", "up to 18 rows")
    # `first` given by a variable counts the same.
    query = "query($n: Int) { allSeries(first: 3) { nodes { slices(first: $n) { nodes { sliceId } } } } }"
    assert accepted(small, query, n=4)
    refused(small, query, "NODE_LIMIT_EXCEEDED", "up to 18 rows", n=5)
    # Counts alone fetch no page: 0 rows for the connection. A facet counts its groups: its `first`, by default
    # the maximum page size (20 here).
    facet = "{ allSlices(first: 20) { totalCount groupBy(field: SLICE_THICKNESS, first: 15) { value } } }"
    assert accepted(small, facet)
    refused(small, facet.replace(", first: 15", ""), "NODE_LIMIT_EXCEEDED", "up to 20 rows")


def test_node_budget_counts(small: Api, synthetic: Api) -> None:
    def rows(api: Api, query: str) -> str:
        body = api.post(query)
        return body["errors"][0]["message"] if "errors" in body else "accepted"

    # A level of distinct rows is capped by its table: 4 patients, 5 studies, 6 series, 55 slices.
    assert rows(small, "{ allPatients(first: 20) { nodes { studies(first: 20) { nodes { studyId } } } } }") == (
        "accepted"  # min(20, 4) + min(80, 5) = 9
    )
    # After a parent relation parents may repeat: no cap. 10 slices + their 10 series + 10 * 20 slices.
    assert "up to 220 rows" in rows(
        small, "{ allSlices(first: 10) { nodes { series { slices(first: 20) { nodes { sliceId } } } } } }"
    )
    # Edges count like nodes, and asking for pageInfo fetches the page: 2 slices, their 2 series, 2 * 7 slices.
    assert "up to 18 rows" in rows(
        small, "{ allSlices(first: 2) { edges { node { series { slices(first: 7) { pageInfo { hasNextPage } } } } } } }"
    )
    # A lookup counts one row, and its children are distinct: 1 + 1 + min(17, 6 series in all) = 8.
    assert (
        rows(
            small,
            '{ patient(patientId: "PAT001") { studies(first: 1) { edges { node { series(first: 17) '
            "{ pageInfo { hasNextPage } } } } } } }",
        )
        == "accepted"
    )
    # The defaults: two hops up and down with pages of 1000 are far over 2,000,000 rows.
    hops = (
        "{ allSlices(first: 1000) { nodes { series { slices(first: 1000) { nodes { series { slices(first: 1000) "
        "{ nodes { sliceId } } } } } } } } }"
    )
    message = rows(synthetic, hops)
    assert "up to 55,110,110 rows; the limit is 2,000,000 (maxNodes)" in message


def test_the_introspection_query_fits_the_default_limits(synthetic: Api) -> None:
    """GraphiQL and client generators introspect with this query."""
    data = accepted(synthetic, get_introspection_query(descriptions=True, input_value_deprecation=True))
    assert data["__schema"]["queryType"]["name"] == "Query"


def test_introspection_lists_count_and_nest_only_so_far(small: Api, synthetic: Api) -> None:
    """Introspection nests without end (a type's fields' types' fields ...): graphql-core refuses more than a
    few levels of it, and its lists count in the node budget like any other."""
    types = len(synthetic.data("{ __schema { types { name } } }")["__schema"]["types"])
    refused(small, "{ __schema { types { name } } }", "NODE_LIMIT_EXCEEDED", f"up to {types} rows")
    inner = "name"
    for _ in range(5):
        inner = f"fields {{ type {{ ofType {{ {inner} }} }} }}"
    before = synthetic.statements
    body = synthetic.post(f"{{ __schema {{ types {{ {inner} }} }} }}")
    assert synthetic.statements == before
    assert body == {
        "data": None,
        "errors": [{"message": "Maximum introspection depth exceeded", "locations": [{"line": 1, "column": 3}]}],
    }


def test_long_chains_of_fragments_are_refused_without_recursing_through_them(synthetic_db: Path) -> None:
    """Fragments spreading the next, or inline fragments nested, add no field level but would nest any walk
    over the document as deep as the chain is long: past 100, the depth limit refuses them."""
    with_room = {"max_tokens": 100_000}  # so that the chains, not the token limit, are what is refused
    for api in serve(f"sqlite:///{synthetic_db}", **with_room):
        n = 3000
        chain = "".join(f"fragment F{i} on Query {{ ...F{i + 1} }}\n" for i in range(n))
        query = "{ ...F0 }\n" + chain + f"fragment F{n} on Query {{ allSeries {{ totalCount }} }}"
        message = "The query nests fields and fragments more than 100 deep; the depth limit is 20 (maxDepth)."
        refused(api, query, "DEPTH_LIMIT_EXCEEDED", message)
        inline = "{ " + "... on Query { " * 101 + "__typename" + " }" * 101 + " }"
        refused(api, inline, "DEPTH_LIMIT_EXCEEDED", message)
        short = "".join(f"fragment F{i} on Query {{ ...F{i + 1} }}\n" for i in range(90))
        query = "{ ...F0 }\n" + short + "fragment F90 on Query { allSeries { totalCount } }"
        assert accepted(api, query) == {"allSeries": {"totalCount": 6}}


def test_fragment_bombs_are_measured_in_linear_time(synthetic: Api) -> None:
    """Fragments that spread the next one twice: 2^n expansions, a few hundred bytes. Strawberry's own depth
    and alias limiters expand every spread; these checks measure each fragment once."""
    n = 40
    same_level = "".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}\n" for i in range(n))
    query = "{ ...F0 }\n" + same_level + f"fragment F{n} on Query {{ allSeries(first: 1) {{ totalCount }} }}"
    started = time.perf_counter()
    assert accepted(synthetic, query) == {"allSeries": {"totalCount": 6}}
    nested = "".join(
        f"fragment G{i} on Patient {{ studies(first: 2) {{ nodes {{ patient {{ ...G{i + 1} }} }} }} "
        f"x{i}: studies(first: 2) {{ nodes {{ patient {{ ...G{i + 1} }} }} }} }}\n"
        for i in range(n)
    )
    query = '{ patient(patientId: "PAT001") { ...G0 } }\n' + nested + f"fragment G{n} on Patient {{ patientId }}"
    before = synthetic.statements
    body = synthetic.post(query)
    assert synthetic.statements == before and body["data"] is None
    assert {e["extensions"]["code"] for e in body["errors"]} == {"DEPTH_LIMIT_EXCEEDED", "ALIAS_LIMIT_EXCEEDED"}
    assert time.perf_counter() - started < 10  # 2^40 expansions would never finish: linear, not a speed test


# The time limit.


def test_a_slow_request_is_stopped_at_the_time_limit(synthetic_db: Path) -> None:
    for api in serve(f"sqlite:///{synthetic_db}", timeout=0.5):
        database = api.database
        real_run = database._run

        async def slow_run(connection: Any, sql: str, values: Any, *args: Any, run: Any = real_run, **kw: Any) -> Any:
            if "SliceMetadata" in sql:
                await asyncio.sleep(30)
            return await run(connection, sql, values, *args, **kw)

        database._run = slow_run
        started = time.perf_counter()
        body = api.post("{ allSeries { totalCount } allSlices { totalCount } }")
        assert time.perf_counter() - started < 5
        assert body == {
            "data": None,
            "errors": [
                {
                    "message": "The request ran longer than the time limit of 0.5 s (timeout) and was stopped.",
                    "extensions": {"code": "TIME_LIMIT_EXCEEDED", "limit": "timeout", "value": 0.5},
                }
            ],
        }
        database._run = real_run
        # The connection went back to the pool, and the next requests are served.
        for _ in range(2 * database.pool_size):
            assert api.data("{ allSlices { totalCount } }") == {"allSlices": {"totalCount": 55}}
        assert database._pool.qsize() == database.pool_size


def test_a_timeout_interrupts_the_running_sqlite_statement(synthetic: Api) -> None:
    """The database work stops too: sqlite3's interrupt() ends a statement that would run for ever."""
    database = synthetic.database
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"

    async def run() -> tuple[str, float]:
        async with database.request() as session:
            task = asyncio.create_task(database.fetch(endless))
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            session.interrupt()
            try:
                await task
            except BaseException as exc:  # cancelled, or sqlite3's "interrupted"
                outcome = type(exc).__name__
            else:
                outcome = "finished"
        return outcome, time.perf_counter() - started

    portal = synthetic.client.portal
    assert portal is not None
    outcome, seconds = portal.call(run)
    assert outcome in ("CancelledError", "OperationalError"), outcome
    assert seconds < 5  # the session ended (its ROLLBACK waited for the statement to stop)
    assert synthetic.data("{ allSeries { totalCount } }") == {"allSeries": {"totalCount": 6}}


# Settings.


def test_limits_from_the_environment_and_the_command_line() -> None:
    env = {
        "DICOM_API_MAX_DEPTH": "12",
        "DICOM_API_MAX_ALIASES": "7",
        "DICOM_API_MAX_TOKENS": "900",
        "DICOM_API_MAX_NODES": "5000",
        "DICOM_API_TIMEOUT": "2.5",
        "DICOM_API_MAX_PAGE_SIZE": "300",
        "DICOM_API_PAGE_SIZE": "30",
        "DICOM_API_GRAPHIQL": "0",
        "DICOM_API_INTROSPECTION": "off",
        "DICOM_API_ALLOW_UNAUTHENTICATED_REMOTE": "yes",
        "DICOM_API_POOL_SIZE": "2",
    }
    settings = Settings.from_env(env)
    assert (settings.max_depth, settings.max_aliases, settings.max_tokens, settings.max_nodes) == (12, 7, 900, 5000)
    assert (settings.timeout, settings.max_page_size, settings.default_page_size) == (2.5, 300, 30)
    assert (settings.graphiql, settings.introspection, settings.allow_unauthenticated_remote) == (False, False, True)
    args = build_parser().parse_args(
        ["--max-depth", "9", "--max-aliases", "8", "--max-tokens", "700", "--max-nodes", "600", "--timeout", "1.5"]
        + ["--max-page-size", "50", "--page-size", "10", "--no-graphiql", "--no-introspection", "--pool-size", "3"]
        + ["--allow-unauthenticated-remote"]
    )
    cli = settings_from_args(args, env)
    assert (cli.max_depth, cli.max_aliases, cli.max_tokens, cli.max_nodes, cli.timeout) == (9, 8, 700, 600, 1.5)
    assert (cli.max_page_size, cli.default_page_size, cli.pool_size) == (50, 10, 3)
    assert (cli.graphiql, cli.introspection, cli.allow_unauthenticated_remote) == (False, False, True)
    # Options not given leave the environment's values.
    assert settings_from_args(build_parser().parse_args([]), env) == settings
    defaults = Settings()
    assert (defaults.max_depth, defaults.max_aliases, defaults.max_tokens) == (20, 50, 2000)
    assert (defaults.max_nodes, defaults.timeout, defaults.max_page_size) == (2_000_000, 30.0, 1000)
    assert (defaults.heavy_nodes, defaults.heavy_processes) == (100_000, 1)
    heavy = {"DICOM_API_HEAVY_NODES": "5000", "DICOM_API_HEAVY_PROCESSES": "0"}
    assert (Settings.from_env(heavy).heavy_nodes, Settings.from_env(heavy).heavy_processes) == (5000, 0)
    args = build_parser().parse_args(["--heavy-nodes", "7", "--heavy-processes", "2"])
    assert (settings_from_args(args, heavy).heavy_nodes, settings_from_args(args, heavy).heavy_processes) == (7, 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DICOM_API_MAX_DEPTH": "0"}, "max_depth must be at least 1"),
        ({"DICOM_API_MAX_NODES": "-5"}, "max_nodes must be at least 1"),
        ({"DICOM_API_MAX_TOKENS": "many"}, "DICOM_API_MAX_TOKENS='many'"),
        ({"DICOM_API_TIMEOUT": "0"}, "timeout must be more than 0"),
        ({"DICOM_API_TIMEOUT": "soon"}, "DICOM_API_TIMEOUT='soon'"),
        ({"DICOM_API_HEAVY_NODES": "0"}, "heavy_nodes must be at least 1"),
        ({"DICOM_API_HEAVY_PROCESSES": "-1"}, "heavy_processes must be at least 0"),
    ],
)
def test_bad_limits_are_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
