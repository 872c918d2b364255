"""Fixtures for the serving tests: a model repository copied from the committed zoo (real exported
models) and a real uvicorn server on 127.0.0.1 at a free port, stopped after its tests."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from app.core.repository_format import variant_sources
from app.server import build_server
from app.settings import Settings

ZOO = Path(__file__).resolve().parents[2] / "models"
# Small models covering every /predict task and both input kinds of the V2 protocol.
TEST_MODELS = (
    "mlp-digits",
    "lenet5-digits",
    "lstm-order",
    "bert-scramble",
    "autoencoder-digits",
    "vae-digits",
    "gpt-corpus",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_models(target: Path, names=TEST_MODELS, variants: bool = False) -> Path:
    """The committed models ``names``, each as trained (its variants too with ``variants``: the zoo's
    optimized and int8 versions; tests/training/test_variants.py serves them)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        made = set() if variants else {str(v) for v in variant_sources(ZOO / name)}
        shutil.copytree(
            ZOO / name, target / name, ignore=lambda folder, entries, made=made: made & set(entries)
        )
    return target


def set_batching(repository: Path, name: str, **fields) -> None:
    """Edit a model's config.json batching/instances in place (the server reads it at start)."""
    path = repository / name / "config.json"
    config = json.loads(path.read_text())
    for key, value in fields.items():
        section = "instances" if key in ("count", "device", "intra_op_threads") else "batching"
        config.setdefault(section, {})[key] = value
    path.write_text(json.dumps(config))


def reference_session(repository: Path, name: str, graph_file: str = "model.onnx") -> ort.InferenceSession:
    """A plain onnxruntime session of the same file: the ground truth the server must reproduce."""
    return ort.InferenceSession(str(repository / name / "1" / graph_file), providers=["CPUExecutionProvider"])


class LiveServer:
    """The server ``python -m app`` runs (app/server.py: uvicorn with its guards), in a background
    thread: real HTTP on 127.0.0.1 at a free port."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = settings.model_copy(update={"host": "127.0.0.1", "port": self.port})
        self.server = build_server(settings, log_level="warning")
        self.app = self.server.frontend
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "server thread did not stop"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return copy_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(repository) -> Iterator[LiveServer]:
    with LiveServer(Settings(model_repository=repository)) as live:
        yield live


@pytest.fixture()
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
