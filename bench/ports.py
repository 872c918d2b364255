"""What the benchmarks share (they import this as a sibling module): a free port on 127.0.0.1, and a
server started on it pinned to core 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESERVED_PORTS = {8000, 9090}  # other processes on these machines may hold them


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def start_server(
    extra_env: dict[str, str] | None = None, *, pinned: bool = True, cwd: Path = ROOT
) -> tuple[subprocess.Popen, str]:
    """The app on core 1 (``taskset -c 1``; unpinned: on every core), one single-threaded session per
    graph unless ``extra_env`` says otherwise, ready; returns the process and its URL. ``cwd``: the
    checkout whose ``app`` runs (another one: set PYTHONPATH to it too)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    env.update({"SERVE_INSTANCES": "1", "SERVE_INTRA_OP_THREADS": "1", **(extra_env or {})})
    command = ["taskset", "-c", "1"] if pinned else []
    command += [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(command, cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")
