"""Fresh virtual environments with one extra of the project installed, as a user (or an image stage)
would make them: pyproject.toml alone, an empty README.md, ``pip install .[extra]``, project removed."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import time
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
