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
    extra_env: dict[str, str] | None = None,
    *,
    pinned: bool = True,
    cwd: Path = ROOT,
    as_users_run: bool = False,
    defaults: bool = False,
    log_path: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """The app on core 1 (``taskset -c 1``; unpinned: on every core), one single-threaded session per
    graph unless ``extra_env`` says otherwise (``defaults``: the models' own instances and threads),
    ready; returns the process and its URL. ``cwd`` is the checkout whose ``app`` runs (another
    worktree, to compare two versions in one run; PYTHONPATH is set to it); ``as_users_run`` starts
    it with ``python -m app`` (its guarded HTTP protocol and settings such as the thread switch
    interval) instead of plain uvicorn; its output goes to ``log_path`` when given."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    env["PYTHONPATH"] = str(cwd)
    if not defaults:
        env.update({"SERVE_INSTANCES": "1", "SERVE_INTRA_OP_THREADS": "1"})
    env.update(extra_env or {})
    command = ["taskset", "-c", "1"] if pinned else []
    if as_users_run:
        env.update({"SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(port)})
        command += [sys.executable, "-m", "app"]
    else:
        command += [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    log = log_path.open("ab") if log_path is not None else None
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=log)
    finally:
        if log is not None:
            log.close()  # the child has its own copy
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")
