"""The registry's mapping table in docs/ingest.md. `python -m dicom_db.model.docs` prints it; `--write` puts it
between the markers in docs/ingest.md (tests/test_registry.py fails when the file is stale)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dicom_db.model.registry import mapping_table

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "ingest.md"
_SECTION = re.compile(r"(<!-- registry:start -->\n).*?(<!-- registry:end -->)", re.S)


def with_table(text: str) -> str:
    """`text` with the mapping table between its markers replaced by the registry's."""
    return _SECTION.sub(lambda m: m.group(1) + mapping_table() + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dicom_db.model.docs", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"update {DOC_PATH.name} in place")
    if parser.parse_args().write:
        DOC_PATH.write_text(with_table(DOC_PATH.read_text()))
        print(f"wrote {DOC_PATH}")
    else:
        print(mapping_table(), end="")


if __name__ == "__main__":
    main()
