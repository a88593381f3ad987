"""What a newcomer meets first on the command line: every option of both commands has help text, the exit
statuses are listed, and a busy port is reported as such (not as a database failure)."""

from __future__ import annotations

import argparse
import socket
import subprocess

import pytest
from api_helpers import api_command, ingest_into, write_synthetic
from conftest import run_ingest

from dicom_db.api.cli import EXIT_ADDRESS
from dicom_db.api.cli import build_parser as api_parser
from dicom_db.ingest.cli import build_parser as ingest_parser


@pytest.mark.parametrize("parser", [api_parser, ingest_parser], ids=["dicom-api", "dicom-ingest"])
def test_every_option_has_help(parser) -> None:
    actions = [a for a in parser()._actions if not isinstance(a, argparse._HelpAction)]
    missing = [a.option_strings or a.dest for a in actions if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"options without help: {missing}"


def test_ingest_help_lists_its_exit_statuses() -> None:
    text = " ".join(run_ingest("--help", check=0).stdout.split())
    statuses = ("0 every DICOM file", "1 some files failed", "2 usage error", "3 database error", "130 interrupted")
    for status in (*statuses, "143 terminated"):
        assert status in text


def test_a_busy_port_says_so(tmp_path) -> None:
    write_synthetic(tmp_path / "files")
    db = ingest_into(tmp_path, tmp_path / "busy.db", tmp_path / "files")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [*api_command(), "--db", f"sqlite:///{db}", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == EXIT_ADDRESS == 4
    assert f"dicom-api: cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr and "Application startup" not in proc.stderr
