"""Broken and tampered models disable themselves, never the server; versions are served as asked."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import ValidationError

from app.core.repository_format import ModelConfig
from app.registry import _effective_config
from app.settings import Settings
from tests.app.conftest import ZOO, LiveServer, copy_models, set_batching


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory):
    root = copy_models(tmp_path_factory.mktemp("broken"), ("mlp-digits", "lstm-order"))
    # Truncated graph: fails the sha256 check (the next test turns the check off: onnxruntime refuses it).
    shutil.copytree(ZOO / "mlp-digits", root / "truncated")
    graph = root / "truncated" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    _rename(root / "truncated", "truncated")
    # Tampered: one byte flipped.
    shutil.copytree(ZOO / "mlp-digits", root / "tampered")
    data = bytearray((root / "tampered" / "1" / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (root / "tampered" / "1" / "model.onnx").write_bytes(bytes(data))
    _rename(root / "tampered", "tampered")
    # Invalid config.json.
    shutil.copytree(ZOO / "mlp-digits", root / "badconfig")
    (root / "badconfig" / "config.json").write_text('{"name": "badconfig", "task": "juggling"}')
    # Adaptive batching: one without its latency target (refused at load, saying so), one right.
    for name, batching in (
        ("badauto", {"max_queue_delay_ms": "auto"}),
        ("auto", {"max_queue_delay_ms": "auto", "latency_target_ms": 20}),
    ):
        shutil.copytree(ZOO / "mlp-digits", root / name)
        _rename(root / name, name)
        set_batching(root, name, **batching)
    # A second version of lstm-order, and a policy that serves both: version 2 is served by default,
    # version 1 on request (without a policy only the highest is loaded: tests/app/test_model_control.py).
    shutil.copytree(root / "lstm-order" / "1", root / "lstm-order" / "2")
    config = json.loads((root / "lstm-order" / "config.json").read_text())
    config["version_policy"] = {"all": {}}
    (root / "lstm-order" / "config.json").write_text(json.dumps(config))
    with LiveServer(Settings(model_repository=root)) as live:
        yield live


def test_adaptive_batching_serves_and_shows_in_the_triton_config(broken_server) -> None:
    with broken_server.client() as c:
        ok = c.post("/predict", json={"model": "auto", "inputs": [0.0] * 64})
        assert ok.status_code == 200
        config = c.get("/v2/models/auto/config").json()
        # Triton has no adaptive delay: its bound (a hold never outlasts the target), and what it is.
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20_000
        assert config["parameters"]["max_queue_delay_ms"] == {"string_value": "auto"}
        assert config["parameters"]["latency_target_ms"] == {"string_value": "20"}
        assert c.get("/models/auto").json()["batching"]["max_queue_delay_ms"] == "auto"


def test_serve_settings_switch_batching_to_auto_and_back() -> None:
    config = ModelConfig.model_validate_json((ZOO / "mlp-digits" / "config.json").read_text())
    auto = _effective_config(config, Settings(max_queue_delay_ms="auto", latency_target_ms=15))
    assert (auto.batching.max_queue_delay_ms, auto.batching.latency_target_ms) == ("auto", 15)
    fixed = _effective_config(auto, Settings(max_queue_delay_ms=3))  # the model's target goes with auto
    assert (fixed.batching.max_queue_delay_ms, fixed.batching.latency_target_ms) == (3, None)
    with pytest.raises(ValidationError, match="needs latency_target_ms"):
        _effective_config(config, Settings(max_queue_delay_ms="auto"))


def _rename(folder, name: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["name"] = name
    (folder / "config.json").write_text(json.dumps(config))


def test_broken_models_are_listed_with_reasons(broken_server) -> None:
    with broken_server.client() as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 200
        states = ready.json()["models"]
        assert states == {
            "auto": "ready",
            "badauto": "failed",
            "badconfig": "failed",
            "lstm-order": "ready",
            "mlp-digits": "ready",
            "tampered": "failed",
            "truncated": "failed",
        }
        reasons = {m["name"]: m["reason"] for m in c.get("/models").json()["models"]}
        assert "sha256 does not match" in reasons["tampered"]
        assert "sha256 does not match" in reasons["truncated"]
        # Which fields are wrong, without the config's contents or the repository's absolute path.
        assert reasons["badconfig"] == "ModelConfig is invalid: family, graphs, task"
        assert reasons["badauto"] == (
            'ModelConfig is invalid: batching (max_queue_delay_ms "auto" needs latency_target_ms (the p99 '
            "to stay under))"
        )
        assert all(str(broken_server.app.state.registry.root) not in r for r in reasons.values() if r)
        response = c.post("/predict", json={"model": "tampered", "inputs": [0.0] * 64})
        assert response.status_code == 503 and "not ready" in response.json()["error"]
        assert c.get("/v2/models/tampered/ready").status_code == 400
        ok = c.post("/predict", json={"model": "mlp-digits", "inputs": [0.0] * 64})
        assert ok.status_code == 200


def test_truncated_graph_without_sha_check_fails_in_onnxruntime(tmp_path) -> None:
    root = copy_models(tmp_path, ("mlp-digits",))
    shutil.copytree(ZOO / "mlp-digits", root / "truncated")
    _rename(root / "truncated", "truncated")
    graph = root / "truncated" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with LiveServer(Settings(model_repository=root, verify_sha256=False)) as live, live.client() as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert models["truncated"]["state"] == "failed" and models["mlp-digits"]["state"] == "ready"
        assert (
            "onnxruntime" in models["truncated"]["reason"].lower() or "Fail" in models["truncated"]["reason"]
        )


def test_versions(broken_server) -> None:
    with broken_server.client() as c:
        meta = c.get("/models/lstm-order").json()
        assert meta["version"] == 2 and meta["versions"] == [1, 2]
        one = c.post("/predict", json={"model": "lstm-order", "version": 1, "inputs": "ABefCD"})
        assert one.status_code == 200 and one.json()["version"] == 1
        assert c.post("/predict", json={"model": "lstm-order", "inputs": "ABefCD"}).json()["version"] == 2
        assert c.get("/v2/models/lstm-order/versions/1/ready").status_code == 200
        assert c.get("/v2/models/lstm-order/versions/abc").status_code == 422


def test_empty_repository_serves_nothing_but_stays_up(tmp_path) -> None:
    with LiveServer(Settings(model_repository=tmp_path / "missing")) as live, live.client() as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 503
        assert c.post("/predict", json={"model": "x", "inputs": [1.0]}).status_code == 404
