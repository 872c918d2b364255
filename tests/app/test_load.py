"""Over HTTP, under concurrent load: every caller gets its own answer, a full queue answers 429 fast
while admitted requests complete, a passed deadline answers 504, and a failing batch answers 500 to
its own callers only. Bounded in count and time."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto, helper

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, reference_session, set_batching


def write_lookup_model(root) -> None:
    """A real graph that onnxruntime fails on some inputs: y = table[index], table of 10 rows, so an
    index >= 10 makes Gather raise (the server cannot know the range: no tokenizer declares it)."""
    index = helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 4], [float(i) for i in range(40)])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["y"])], "lookup", [index], [y], [table]
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    folder = root / "lookup" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(data)
    graph_spec = {
        "file": "model.onnx",
        "inputs": [{"name": "index", "dtype": "int64", "shape": [-1]}],
        "outputs": [{"name": "y", "shape": [-1, 4]}],
    }
    config = {
        "name": "lookup",
        "family": "test",
        "task": "reconstruction",
        "graphs": {"model": graph_spec},
        "batching": {"max_batch_size": 1},  # one request per batch: which batch fails is deterministic
        "instances": {"count": 1},
    }
    (root / "lookup" / "config.json").write_text(json.dumps(config))
    report = {
        "metrics": {},
        "parity": {"max_abs_diff": 0.0, "batch_sizes": [1]},
        "sha256": {"model.onnx": hashlib.sha256(data).hexdigest()},
        "command": "tests",
        "seed": 0,
    }
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def load_server(tmp_path_factory):
    root = copy_models(tmp_path_factory.mktemp("load"), ("mlp-digits", "lenet5-digits", "autoencoder-digits"))
    set_batching(root, "lenet5-digits", count=1, max_batch_size=1, max_queue_size=2)
    set_batching(root, "autoencoder-digits", count=1, max_batch_size=1, timeout_ms=1)
    write_lookup_model(root)
    # No admission wait: a request over the bound is refused at once (the wait has its own tests).
    with LiveServer(Settings(model_repository=root, admission_wait_s=0)) as live:
        yield live, root


def _post_all(server, bodies, path="/predict", workers=32):
    with server.client() as c, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: c.post(path, json=b), bodies))


def test_many_concurrent_callers_get_their_own_answers(load_server) -> None:
    server, root = load_server
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 6)), 64)).astype(np.float32) for _ in range(200)]
    responses = _post_all(server, [{"model": "mlp-digits", "inputs": x.tolist()} for x in inputs])
    session = reference_session(root, "mlp-digits")
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = session.run(None, {"input": x})[0].argmax(-1).tolist()
        assert [o["index"] for o in response.json()["outputs"]] == expected


def test_full_queue_answers_429_with_retry_after(load_server) -> None:
    server, _ = load_server
    body = {"model": "lenet5-digits", "inputs": np.zeros((1, 28, 28)).tolist()}
    responses = _post_all(server, [body] * 120, workers=48)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["Retry-After"] == "1" and "in progress" in rejected.json()["error"]


def test_deadline_answers_504(load_server) -> None:
    server, _ = load_server
    body = {"model": "autoencoder-digits", "inputs": np.zeros((1, 28, 28)).tolist()}
    codes = [r.status_code for r in _post_all(server, [body] * 60)]
    assert set(codes) <= {200, 504} and 504 in codes


def test_failing_batch_answers_500_to_its_callers_only(load_server) -> None:
    server, _ = load_server
    bad = {"inputs": [{"name": "index", "shape": [1], "datatype": "INT64", "data": [12]}]}
    good = {"inputs": [{"name": "index", "shape": [1], "datatype": "INT64", "data": [2]}]}
    responses = _post_all(server, [bad, good] * 20, path="/v2/models/lookup/infer", workers=16)
    for i, response in enumerate(responses):
        if i % 2 == 0:
            assert response.status_code == 500 and "inference failed" in response.json()["error"]
        else:
            assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [
                8.0,
                9.0,
                10.0,
                11.0,
            ]
    with server.client() as c:
        assert c.get("/health/ready").status_code == 200
