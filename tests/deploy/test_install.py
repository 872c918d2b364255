"""The install paths of the README, each in a fresh venv: serving only (what `make run` installs), and
a GPU server (`.[gpu]`). This machine has no GPU: the GPU build is shown to install, to offer CUDA,
and to serve on the CPU with the fallback logged, or to refuse a model that demands CUDA while the
server stays up. The training install (`make train-setup`) runs before the README's training examples
(tests/test_readme.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.app.conftest import free_port
from tests.deploy.conftest import ROOT, install_extra, venv_distributions

FOOTPRINT_LIMIT_MB = 700
HEAVY = ("torch", "onnx", "onnxscript", "scikit-learn", "matplotlib")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_serving_dependency_footprint(serve_venv: Path) -> None:
    dists = venv_distributions(serve_venv)
    assert "onnxruntime" in dists and "fastapi" in dists and "uvicorn" in dists
    for heavy in (*HEAVY, "onnxruntime-gpu"):
        assert heavy not in dists, f"{heavy} {dists[heavy]} in the serving environment"
    assert "deepserve" not in dists
    site = next((serve_venv / "lib").glob("python3*/site-packages"))
    total_mb = dir_bytes(serve_venv) / 1e6
    site_mb = dir_bytes(site) / 1e6
    print(f"serving venv: {total_mb:.0f} MB ({site_mb:.0f} MB site-packages, {len(dists)} distributions)")
    assert total_mb < FOOTPRINT_LIMIT_MB


@pytest.mark.slow
def test_training_commands_without_the_training_extra_say_how_to_install_it(serve_venv: Path) -> None:
    """After `make run` (the serving extra only), a training command prints one error line with the
    install command, not a ModuleNotFoundError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in (["list"], ["train", "mlp-digits", "--epochs", "1"], ["verify"]):
        result = subprocess.run(
            [str(serve_venv / "bin" / "python"), "-m", "training", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the training extra is not installed")
        assert "torch" in lines[0] and "make train-setup" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_wheel_install_serves_the_playground(serve_venv: Path, tmp_path: Path) -> None:
    """A non-editable install (the project built as a wheel and installed, not the checkout) serves
    the playground page: its assets are package data (pyproject's [tool.setuptools.package-data])."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("app", "training"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("deepserve-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    assert {"app/ui/index.html", "app/ui/app.js", "app/ui/style.css"} <= packaged
    installed = tmp_path / "site"
    pip = [str(serve_venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--target", str(installed), str(wheel)], check=True, timeout=300)
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "mlp-digits", repository / "mlp-digits")
    process, url = _serve(serve_venv, repository, "cpu", tmp_path / "server.log", code=installed)
    try:
        with urllib.request.urlopen(f"{url}/", timeout=10) as page:
            assert "deepserve playground" in page.read().decode()
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        with urllib.request.urlopen(f"{url}/ui/app.js", timeout=10) as script:
            assert b"const PANELS" in script.read()
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def gpu_venv(tmp_path_factory) -> Path:
    return install_extra(tmp_path_factory.mktemp("gpu-deps"), "gpu")


def _serve(
    venv: Path, repository: Path, device: str, log: Path, code: Path = ROOT
) -> tuple[subprocess.Popen, str]:
    """``python -m app`` of the venv, importing the project from ``code`` (the checkout, or an install)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_") and k != "PYTHONPATH"}
    env.update(
        SERVE_MODEL_REPOSITORY=str(repository),
        SERVE_HOST="127.0.0.1",
        SERVE_PORT=str(port),
        SERVE_DEVICE=device,
        PYTHONPATH=str(code),
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "app"],
            cwd=code,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/health/live", timeout=2):
                return process, url
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.slow
def test_gpu_install_offers_cuda_and_holds_no_training_side(gpu_venv: Path) -> None:
    dists = venv_distributions(gpu_venv)
    assert "onnxruntime-gpu" in dists and "onnxruntime" not in dists, sorted(dists)
    for heavy in HEAVY:
        assert heavy not in dists, f"{heavy} {dists[heavy]} in the GPU serving environment"
    providers = subprocess.run(
        [
            str(gpu_venv / "bin" / "python"),
            "-c",
            "import onnxruntime; print(onnxruntime.get_available_providers())",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "CUDAExecutionProvider" in providers, providers


@pytest.mark.slow
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_gpu_build_serves_without_a_gpu(gpu_venv: Path, tmp_path: Path, device: str) -> None:
    """No GPU here, and the CUDA libraries absent: onnxruntime-gpu still lists CUDA, the session falls
    back to the CPU, and the server says so (log and /models) and serves, whether CUDA was preferred
    (`auto`) or asked for (`cuda`)."""
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "mlp-digits", repository / "mlp-digits")
    log = tmp_path / "server.log"
    process, url = _serve(gpu_venv, repository, device, log)
    try:
        deadline = time.monotonic() + 60
        while (state := _get(f"{url}/models"))[1]["models"][0]["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        (model,) = state[1]["models"]
        body = json.dumps({"model": "mlp-digits", "inputs": [[0.0] * 64]}).encode()
        request = urllib.request.Request(f"{url}/predict", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer = response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, json.load(exc)
        text = log.read_text()
        assert model["state"] == "ready" and model["provider"] == "CPUExecutionProvider", model
        assert status == 200 and answer["outputs"][0]["label"] in [str(i) for i in range(10)], answer
        assert "CUDA was requested but the session fell back to CPUExecutionProvider" in text, text
        assert _get(f"{url}/health/live")[0] == 200
        assert "Traceback" not in text, text
    finally:
        process.terminate()
        process.wait(timeout=30)
