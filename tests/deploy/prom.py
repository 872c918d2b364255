"""A real Prometheus (Debian's package) on 127.0.0.1 at a free port, scraping a live app every second."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.app.conftest import free_port

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"


@contextmanager
def running_prometheus(target: str, workdir: Path, rules: bool = True) -> Iterator[str]:
    """Start Prometheus scraping ``target`` (host:port) as job "api"; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: the test command installs Debian's prometheus package"
    port = free_port()
    rule_line = f"rule_files: ['{RULES}/*.yml']\n" if rules else ""
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        + rule_line
        + f"scrape_configs:\n  - job_name: api\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, expr: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for(url: str, expr: str, check, timeout_s: float = 30.0) -> list[dict]:
    """Poll ``expr`` until ``check(result)`` holds (the first scrape lands a few seconds after start).
    A Prometheus still starting (a container's: nothing listening yet, or 503 until its storage is
    ready) is polled again; any other failure is the test's."""
    deadline = time.monotonic() + timeout_s
    result: list[dict] | str = []
    while time.monotonic() < deadline:
        try:
            result = query(url, expr)
        except httpx.TransportError as exc:
            result = f"not reachable ({exc!r})"
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503:
                raise
            result = "503 (starting)"
        else:
            if check(result):
                return result
        time.sleep(0.5)
    raise AssertionError(f"{expr}: still {result} after {timeout_s} s")
