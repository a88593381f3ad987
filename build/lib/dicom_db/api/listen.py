"""Whether the server can listen where it is told to, checked before it starts: uvicorn reports a busy port only
after the app has started, and then exits with status 3, which `dicom-api` uses for "the database cannot be
opened"."""

from __future__ import annotations

import socket


class AddressUnavailable(Exception):
    """Nothing can listen on the host and port (in use, or not an address of this machine); the message says so."""


def check_address(host: str, port: int) -> None:
    """Bind a socket as uvicorn will (SO_REUSEADDR), then let it go. Port 0 (any free port) is not checked."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressUnavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = " (another dicom-api, or another server; choose another with --port)" if exc.errno == 98 else ""
            raise AddressUnavailable(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
