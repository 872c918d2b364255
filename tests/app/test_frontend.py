"""The front door dispatches /predict and V2 infer directly; with SERVE_DIRECT_DISPATCH=false the same
handlers run behind FastAPI. Both paths must answer identically."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.settings import Settings
from tests.app.conftest import LiveServer


@pytest.fixture(scope="module")
def fastapi_path(repository):
    with LiveServer(Settings(model_repository=repository, direct_dispatch=False)) as live:
        yield live


REQUESTS = [
    (
        "/predict",
        {"model": "mlp-digits", "inputs": np.linspace(-1, 1, 128).reshape(2, 64).tolist(), "top_k": 2},
    ),
    ("/predict", {"model": "lstm-order", "inputs": ["ABCDefABCD", "e"]}),
    ("/predict", {"model": "lstm-order", "inputs": ["ABCD", "dcba"]}),  # outside the vocabulary: 422
    ("/predict", {"model": "lstm-order", "inputs": ["ABCD", "dcba"], "map_unknown": True}),
    ("/predict", {"model": "mlp-digits", "inputs": [0.0] * 64, "format": "png"}),  # not for a classifier
    ("/predict", {"model": "autoencoder-digits", "inputs": [0.0] * 784, "image_format": "png"}),
    ("/generate", {"model": "gpt-corpus", "prompt": "snow \u2603"}),  # outside the vocabulary: 422
    ("/generate", {"model": "gpt-corpus", "prompt": "The ", "num_beams": 2}),  # not for a language model
    ("/predict", {"model": "nope", "inputs": [1.0]}),
    ("/predict", {"model": "mlp-digits", "inputs": [1.0]}),
    ("/predict", {"model": "mlp-digits"}),
    (
        "/v2/models/mlp-digits/infer",
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]},
    ),
    (
        "/v2/models/mlp-digits/versions/1/infer",
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.5] * 2}]},
    ),
    ("/v2/models/mlp-digits/versions/x/infer", {"inputs": []}),
]


@pytest.mark.parametrize(("path", "body"), REQUESTS)
def test_both_paths_answer_the_same(server, fastapi_path, path, body) -> None:
    with server.client() as direct, fastapi_path.client() as routed:
        # One request id for both: a V2 answer without a client id carries the request's.
        same_id = {"X-Request-Id": "both-paths"}
        a = direct.post(path, content=orjson.dumps(body), headers=same_id)
        b = routed.post(path, content=orjson.dumps(body), headers=same_id)
    assert a.status_code == b.status_code
    assert a.json() == b.json()
    assert a.headers["content-type"] == b.headers["content-type"]


def test_binary_v2_and_body_limit_on_both_paths(server, fastapi_path) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    body = header + np.ones(64, np.float32).tobytes()
    answers = []
    for live in (server, fastapi_path):
        with live.client() as c:
            r = c.post(
                "/v2/models/mlp-digits/infer",
                content=body,
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
            length = int(r.headers["inference-header-content-length"])
            answers.append(np.frombuffer(r.content[length:], np.float32))
            limit = live.app.state.dataplane.settings.max_body_bytes
            big = c.post("/predict", content=b" " * (limit + 1))
            assert big.status_code == 413 and "larger than" in big.json()["error"]
    np.testing.assert_array_equal(answers[0], answers[1])


def test_generate_answers_the_same_on_both_paths(server, fastapi_path) -> None:
    """The handler table (app/api/handlers.py) serves /generate on both paths, streamed too."""
    body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 12, "temperature": 0}
    answers = []
    for live in (server, fastapi_path):
        with live.client() as c:
            plain = c.post("/generate", json=body).json()
            with c.stream("POST", "/generate", json={**body, "stream": True}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                events = [orjson.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
            refused = c.post("/generate", content=orjson.dumps(body), headers={"content-type": "text/plain"})
            assert refused.status_code == 415
        assert "".join(e["token"] for e in events[:-1]) == events[-1]["text"] == plain["text"]
        answers.append((plain["text"], plain["finish_reason"], plain["usage"], refused.json()))
    assert answers[0] == answers[1]
    # Both paths freed their admission slots (a stream holds one until it ends).
    for live in (server, fastapi_path):
        assert live.app.state.registry.gate("gpt-corpus").held == 0
