"""The real Docker engine for the image tests: the client, builds (timed, with the steps BuildKit took
from its cache), containers on the host network, and the figures the run prints at its end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# BuildKit skips the stages a target does not need (the legacy builder would train the zoo with torch
# for every serve build). Debian's docker.io client has BuildKit built in; a client without it (a
# newer static one lacking the buildx plugin) refuses DOCKER_BUILDKIT=1, so Debian's is preferred.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
BUILD_ENV = {**os.environ, "DOCKER_BUILDKIT": "1"}
# On every image and container a test run makes, for its cleanup (other runs may share the engine).
TEST_LABEL = f"deepserve.test={os.getpid()}"

FIGURES: list[str] = []  # printed in the run's summary (tests/deploy/conftest.py)


def figure(text: str) -> None:
    FIGURES.append(text)
    print(text)


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs
    )
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-3000:]}"
    return result


@dataclass
class Build:
    tag: str
    seconds: float
    log: str

    def step_lines(self, stage: str) -> dict[str, str]:
        """BuildKit's plain progress: '#N [stage i/n] INSTRUCTION' -> 'CACHED' or 'DONE'."""
        steps: dict[str, str] = {}
        names = dict(re.findall(rf"^(#\d+) \[{re.escape(stage)} \d+/\d+\] (.+)$", self.log, re.MULTILINE))
        for number, instruction in names.items():
            outcome = re.findall(rf"^{number} (CACHED|DONE)", self.log, re.MULTILINE)
            steps[instruction] = outcome[-1] if outcome else "?"
        return steps

    def ran(self, stage: str) -> list[str]:
        """The instructions of ``stage`` that were executed, not taken from the cache (FROM aside)."""
        steps = self.step_lines(stage).items()
        return [i for i, outcome in steps if outcome != "CACHED" and not i.startswith("FROM ")]


def build(
    target: str, tag: str, build_args: dict[str, str], context: Path = ROOT, timeout: float = 1200
) -> Build:
    """docker build --target TARGET on the host network (the engine may have no bridge)."""
    command = [DOCKER, "build", "--progress", "plain", "--network", "host", "--target", target]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    command += ["--label", TEST_LABEL, "-t", tag, str(context)]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=BUILD_ENV, stdin=subprocess.DEVNULL
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-6000:]}"
    return Build(tag, seconds, result.stdout + result.stderr)


def inspect(kind: str, name: str) -> dict:
    return json.loads(docker(kind, "inspect", name).stdout)[0]


def run_container(image: str, name: str, env: dict[str, str], *extra: str) -> str:
    """Detached, host networking, bounded to the compose file's 2 CPUs / 2 GB."""
    args = ["run", "-d", "--name", name, "--label", TEST_LABEL, "--network", "host"]
    args += ["--cpus", "2", "--memory", "2g"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    docker(*args, *extra, image)
    return name


def remove_container(name: str) -> None:
    docker("rm", "-f", "-v", name, check=False)


def logs(name: str, tail: int = 4000) -> str:
    result = docker("logs", name, check=False)
    return (result.stdout + result.stderr)[-tail:]


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, timeout_s: float, alive=lambda: True, why=lambda: "") -> dict:
    """Poll /health/ready until 200; ``alive`` false (the server exited) or the deadline fails it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = get(f"{url}/health/ready", timeout=2)
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        assert alive(), f"the server exited: {why()}"
        assert time.monotonic() < deadline, f"{url} not ready after {timeout_s} s: {why()}"
        time.sleep(0.3)
