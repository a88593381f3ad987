"""A real `dicom-api` process on a free port of 127.0.0.1, for tests that need HTTP from outside the process (a
browser). The app-in-process tests use api_helpers.serve instead."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_command() -> list[str]:
    exe = BIN / "dicom-api"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from api.cli import main; main()"]


@contextmanager
def running_api(db: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`dicom-api --db sqlite:///DB` with only `env` as its own settings; yields its base URL."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DICOM_", "DATABASE_URL"))}
    environ.update(env or {})
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*api_command(), "--db", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen, base: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dicom-api exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"dicom-api did not answer {base}/healthz within {timeout} s")
