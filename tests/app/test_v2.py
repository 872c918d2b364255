"""The KServe V2 protocol, driven by the real tritonclient (no Content-Type, binary tensors by
default), for an image model and a sequence model, JSON and binary."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.app.conftest import reference_session


@pytest.fixture()
def tc(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(tc) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("lenet5-digits") and tc.is_model_ready("lenet5-digits", "1")
    meta = tc.get_model_metadata("lstm-order")
    assert meta["name"] == "lstm-order" and meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("tokens", "INT64"), ("lengths", "INT64")]
    assert "binary_tensor_data" in tc.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_image_model_json_and_binary(tc, repository, binary) -> None:
    x = np.random.default_rng(0).normal(size=(5, 1, 28, 28)).astype(np.float32)
    result = tc.infer(
        "lenet5-digits",
        [_input("input", x, "FP32", binary)],
        outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
    )
    expected = reference_session(repository, "lenet5-digits").run(None, {"input": x})[0]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    assert ("binary_data_size" in result.get_output("logits").get("parameters", {})) is binary


@pytest.mark.parametrize("binary", [True, False])
def test_sequence_model_json_and_binary(tc, repository, binary) -> None:
    tokens = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]], np.int64)
    lengths = np.array([4, 6], np.int64)
    result = tc.infer(
        "lstm-order",
        [_input("tokens", tokens, "INT64", binary), _input("lengths", lengths, "INT64", binary)],
        outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
        model_version="1",
    )
    expected = reference_session(repository, "lstm-order").run(None, {"tokens": tokens, "lengths": lengths})[
        0
    ]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)


def test_default_outputs_and_int32_ids(tc, repository) -> None:
    tokens = np.array([[5, 6, 7]], np.int32)  # INT32 is widened to the graph's INT64
    result = tc.infer(
        "lstm-order",
        [_input("tokens", tokens, "INT32", True), _input("lengths", np.array([3], np.int32), "INT32", True)],
    )
    assert result.as_numpy("logits").shape == (1, 4)


@pytest.mark.parametrize(
    ("inputs", "status", "fragment"),
    [
        ([("tokens", np.array([[5, 99]], np.int64), "INT64")], 422, "missing inputs"),
        (
            [
                ("tokens", np.array([[5, 99]], np.int64), "INT64"),
                ("lengths", np.array([2], np.int64), "INT64"),
            ],
            422,
            "token ids must be in",
        ),
        (
            [
                ("tokens", np.array([[5, 6]], np.int64), "INT64"),
                ("lengths", np.array([3], np.int64), "INT64"),
            ],
            422,
            "lengths",
        ),
        ([("tokens", np.array([[5.0, 6.0]], np.float32), "FP32")], 422, "datatype 'FP32'"),
        ([("nope", np.array([1], np.int64), "INT64")], 422, "unknown input 'nope'"),
    ],
)
def test_errors_reach_tritonclient(tc, inputs, status, fragment) -> None:
    with pytest.raises(InferenceServerException) as caught:
        tc.infer("lstm-order", [_input(n, a, d, True) for n, a, d in inputs])
    assert caught.value.status() == str(status)
    assert fragment in caught.value.message()


def test_unknown_model_and_version(tc) -> None:
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        tc.infer("nope", [_input("input", x, "FP32", True)])
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException) as caught:
        tc.infer("mlp-digits", [_input("input", x, "FP32", True)], model_version="3")
    assert caught.value.status() == "404"


def test_raw_http_framing_errors(client) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    )
    good = header + np.zeros(64, np.float32).tobytes()
    ok = client.post(
        "/v2/models/mlp-digits/infer",
        content=good,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 10]
    short = client.post(
        "/v2/models/mlp-digits/infer",
        content=good[:-4],
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert short.status_code == 400 and "runs past the end" in short.json()["error"]
    for value in ("abc", "-1", str(len(good) + 1)):
        bad = client.post(
            "/v2/models/mlp-digits/infer", content=good, headers={"Inference-Header-Content-Length": value}
        )
        assert bad.status_code == 400 and "Inference-Header-Content-Length" in bad.json()["error"]
    not_json = client.post("/v2/models/mlp-digits/infer", content=b"\x00\x01")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    nan = client.post(
        "/v2/models/mlp-digits/infer",
        content=b'{"inputs": [{"name": "input", "shape": [1, 64], '
        b'"datatype": "FP32", "data": [NaN' + b", 0" * 63 + b"]}]}",
    )
    assert nan.status_code == 400  # NaN is not JSON; orjson refuses it
    nan_bytes = header + np.full(64, np.nan, np.float32).tobytes()
    nan = client.post(
        "/v2/models/mlp-digits/infer",
        content=nan_bytes,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert nan.status_code == 422 and "NaN" in nan.json()["error"]
    wrong_count = client.post(
        "/v2/models/mlp-digits/infer",
        json={"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 10}]},
    )
    assert wrong_count.status_code == 422 and "do not fill shape" in wrong_count.json()["error"]
