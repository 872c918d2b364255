"""Fresh virtual environments with one extra of the project installed, as a user (or an image stage)
would make them: pyproject.toml alone, an empty README.md, ``pip install .[extra]``, project removed.
And the Docker engine of the image tests (marker ``docker``): the engine, the base images, the serve
image."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def install_extra(build: Path, extra: str) -> Path:
    """A fresh venv under ``build`` holding the dependencies of ``.[extra]`` (from the package index;
    seconds with a warm pip cache) and not the project itself."""
    shutil.copy(ROOT / "pyproject.toml", build)
    (build / "README.md").touch()
    venv = build / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    started = time.perf_counter()
    result = subprocess.run(
        [*pip, "install", "-q", f".[{extra}]"], cwd=build, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    subprocess.run([*pip, "uninstall", "-q", "--yes", "deepserve"], check=True, timeout=60)
    print(f"\npip install .[{extra}] into a fresh venv: {time.perf_counter() - started:.1f} s")
    return venv


def venv_distributions(venv: Path) -> dict[str, str]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {
        d.metadata["Name"].lower().replace("_", "-"): d.version
        for d in importlib.metadata.distributions(path=[str(site)])
    }


@pytest.fixture(scope="session")
def serve_venv(tmp_path_factory) -> Path:
    """What `make run` and the image's serve-deps stage install: the serving extra alone."""
    return install_extra(tmp_path_factory.mktemp("serve-deps"), "serve")


# ------------------------------------------------------------------------------ the Docker engine
def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "docker: builds and runs the images on a real Docker engine (`make test` runs them as a separate "
        "step: pytest -m docker tests/deploy)",
    )


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.deploy.engine import FIGURES

    if FIGURES:
        terminalreporter.section("docker figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """An engine this user reaches: the running one, else dockerd started (as root, through sudo when
    not root) by scripts/docker_engine.sh and stopped by its PID at the end (by the last test run using
    it). No engine to be had is a failure, never a skip: these tests are the only ones that build and
    run the images. Images and containers carry the label deepserve.test=<this run's PID>."""
    from tests.deploy.engine import DOCKER, TEST_LABEL, docker

    script = [str(ROOT / "scripts" / "docker_engine.sh")]
    env = {**os.environ, "DOCKER": DOCKER}
    me = str(os.getpid())
    started = time.perf_counter()
    result = subprocess.run(
        [*script, "start", me],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        pytest.fail(f"no Docker engine for the image tests: {result.stderr.strip()}", pytrace=False)
    print(f"\n{result.stderr.strip()} ({time.perf_counter() - started:.1f} s)")
    try:
        yield DOCKER
    finally:
        # Whatever a failed test left behind (each test removes its own): containers, then images.
        left = docker("ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
        if left:
            docker("rm", "-f", "-v", *left, check=False)
        images = docker("images", "-q", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
        if images:
            docker("rmi", "-f", *sorted(set(images)), check=False)
        subprocess.run([*script, "stop", me], env=env, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def base_images(docker_engine: str) -> dict[str, str]:
    """PYTHON_IMAGE, CUDA_IMAGE, PROMETHEUS_IMAGE: the official images where the engine has or can pull
    them, else the local stand-ins of scripts/make_base_images.sh (made only when missing)."""
    from tests.deploy.engine import figure

    started = time.perf_counter()
    result = subprocess.run(
        [str(ROOT / "scripts" / "make_base_images.sh")],
        env={**os.environ, "DOCKER": docker_engine},
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    images = dict(line.split("=", 1) for line in result.stdout.split())
    assert set(images) == {"PYTHON_IMAGE", "CUDA_IMAGE", "PROMETHEUS_IMAGE"}, result.stdout
    made = [line.split(": ", 1)[1] for line in result.stderr.splitlines() if " made in " in line]
    figure(
        f"base images: {time.perf_counter() - started:.1f} s ({'; '.join(made) or 'all present'}) -> "
        + ", ".join(f"{k}={v}" for k, v in images.items())
    )
    return images


@pytest.fixture(scope="session")
def serve_image(base_images: dict[str, str]) -> str:
    """The serve target built from the repository (BuildKit, host network), removed at the end."""
    from tests.deploy.engine import build, docker, figure

    tag = f"deepserve-test:serve-{os.getpid()}"
    result = build("serve", tag, {"PYTHON_IMAGE": base_images["PYTHON_IMAGE"]})
    ran = result.ran("serve-deps") + result.ran("serve")
    size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
    figure(
        f"serve image: built in {result.seconds:.1f} s ({len(ran)} steps not cached: "
        f"{'cold' if any('pip install' in r for r in ran) else 'dependencies cached'}), {size / 1e6:.0f} MB"
    )
    return tag
