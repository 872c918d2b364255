"""A free port on 127.0.0.1 for a benchmark's server (the benchmarks import this as a sibling module)."""

from __future__ import annotations

import socket

RESERVED_PORTS = {8000, 9090}  # other processes on these machines may hold them


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
