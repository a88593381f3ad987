"""Page through a filtered query with a GraphQL client library (gql) and print a table.

    pip install -e '.[examples]'
    dicom-api --db sqlite:///dicom.db &
    python examples/list_series.py --modality CT --thinner-than 1.0 --since 2020-01-01

Each request asks for one page; the next one starts after the previous page's `endCursor`, until
`hasNextPage` is false. The server never counts an offset, so the last page costs what the first did.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.httpx import HTTPXTransport

QUERY = gql(
    """
    query Series($where: SeriesWhere, $first: Int!, $after: String) {
      allSeries(where: $where, first: $first, after: $after,
                orderBy: [{field: SLICE_THICKNESS}, {field: SERIES_INSTANCE_UID}]) {
        totalCount
        pageInfo { hasNextPage endCursor }
        nodes {
          seriesInstanceUid modality sliceThickness sliceCount seriesDescription
          study { studyDate patient { patientId } }
        }
      }
    }
    """
)

COLUMNS = [
    ("patient", lambda n: n["study"]["patient"]["patientId"]),
    ("study date", lambda n: n["study"]["studyDate"]),
    ("modality", lambda n: n["modality"]),
    ("thickness", lambda n: n["sliceThickness"]),
    ("slices", lambda n: n["sliceCount"]),
    ("description", lambda n: n["seriesDescription"]),
    ("series UID", lambda n: n["seriesInstanceUid"]),
]


def where_from(args: argparse.Namespace) -> dict[str, Any]:
    """The `where` input for the options given: plain JSON, bound as a variable by the client."""
    where: dict[str, Any] = {}
    if args.modality:
        where["modality"] = {"eq": args.modality}
    if args.thinner_than is not None:
        where["sliceThickness"] = {"lt": args.thinner_than}
    if args.since:
        where["study"] = {"studyDate": {"gte": args.since}}
    return where


def fetch_all(client: Any, where: dict[str, Any], page_size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (totalCount, node) for every series matching `where`, one request per page."""
    after = None
    while True:
        request = GraphQLRequest(QUERY, variable_values={"where": where, "first": page_size, "after": after})
        page = client.execute(request)["allSeries"]
        for node in page["nodes"]:
            yield page["totalCount"], node
        if not page["pageInfo"]["hasNextPage"]:
            return
        after = page["pageInfo"]["endCursor"]


def render(nodes: Sequence[dict[str, Any]]) -> str:
    rows = [[_cell(get(n)) for _, get in COLUMNS] for n in nodes]
    widths = [max([len(name), *(len(r[i]) for r in rows)]) for i, (name, _) in enumerate(COLUMNS)]
    lines = ["  ".join(name.ljust(w) for (name, _), w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List DICOM series from a dicom-api server, page by page.")
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql", help="GraphQL endpoint (%(default)s)")
    parser.add_argument("--modality", help="only this modality, e.g. CT")
    parser.add_argument("--thinner-than", type=float, metavar="MM", help="only series thinner than MM millimetres")
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="only series of studies on or after this date")
    parser.add_argument("--page-size", type=int, default=100, help="series per request, 1 or more (%(default)s)")
    args = parser.parse_args(argv)
    if args.page_size < 1:  # a page of 0 would never advance
        parser.error(f"--page-size must be at least 1, got {args.page_size}")

    transport = HTTPXTransport(url=args.url, timeout=30)
    try:
        with Client(transport=transport, fetch_schema_from_transport=False) as session:
            results = list(fetch_all(session, where_from(args), args.page_size))
    except TransportQueryError as exc:  # the server refused the query: say what it said
        errors = exc.errors or [{"message": str(exc)}]
        print(f"list_series.py: {'; '.join(str(e.get('message')) for e in errors)}", file=sys.stderr)
        return 1
    except (TransportError, httpx.HTTPError, OSError) as exc:
        print(f"list_series.py: cannot query {args.url}: {exc}", file=sys.stderr)
        return 1
    nodes = [node for _, node in results]
    print(render(nodes))
    total = results[0][0] if results else 0
    print(f"\n{len(nodes)} of {total} series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
