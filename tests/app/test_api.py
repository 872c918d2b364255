"""POST /predict, /models and health against a real server, checked against plain onnxruntime runs of
the same files."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax
from sklearn.datasets import load_digits

from tests.app.conftest import reference_session


def png_b64(pixels: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.images, data.target


def test_health_and_model_list(client) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["models"]["mlp-digits"] == "ready"
    assert ready.json()["providers"]["mlp-digits"] == "CPUExecutionProvider"
    names = {m["name"] for m in client.get("/models").json()["models"]}
    assert {"mlp-digits", "lenet5-digits", "lstm-order"} <= names


def test_model_metadata_carries_report_figures(client) -> None:
    meta = client.get("/models/lenet5-digits").json()
    assert meta["task"] == "classification"
    assert meta["provider"] == "CPUExecutionProvider"
    assert meta["graphs"]["model"]["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert len(meta["labels"]) == 10
    assert meta["metrics"]["test_accuracy"] > 0.9
    assert meta["parity"]["max_abs_diff"] < 1e-4
    assert meta["batching"]["max_batch_size"] >= 1
    assert client.get("/models/lenet5-digits", params={"version": 7}).status_code == 404


def test_model_metadata_names_kinds_architecture_and_plots(client, repository) -> None:
    """What the playground (app/ui/) builds its panels from: the kind at each endpoint (app/kinds.py),
    the network's configuration and the report's pictures."""
    report = json.loads((repository / "lenet5-digits" / "1" / "report.json").read_text())
    meta = client.get("/models/lenet5-digits").json()
    assert meta["kinds"] == {"/predict": "classifier"}
    assert meta["architecture"] == report["model_config"]
    assert meta["plots"] == report["plots"] and "confusion_matrix.png" in meta["plots"]
    kinds = {m["name"]: m["kinds"] for m in client.get("/models").json()["models"]}
    assert kinds["vae-digits"] == {"/predict": "VAE", "/generate": "image generator"}
    assert kinds["gpt-corpus"] == {"/generate": "language model"}
    assert kinds["lstm-order"] == {"/predict": "text classifier"}
    assert kinds["autoencoder-digits"] == {"/predict": "autoencoder"}


def raw_get(server, path: str) -> tuple[int, str, bytes]:
    """GET with the path sent as written (httpx would resolve its dot segments first)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("content-type"), answer.read()
    finally:
        connection.close()


def test_report_plots_are_served_and_nothing_else(client, server, repository) -> None:
    folder = repository / "lenet5-digits" / "1"
    answer = client.get("/models/lenet5-digits/plots/confusion_matrix.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content == (folder / "confusion_matrix.png").read_bytes()
    assert client.get("/models/lenet5-digits/plots/curves.png", params={"version": 1}).status_code == 200
    # Files of the folder that the report does not list, and every way out of it: 404, never the file.
    for path in (
        "/models/lenet5-digits/plots/report.json",
        "/models/lenet5-digits/plots/model.onnx",
        "/models/lenet5-digits/plots/..",
        "/models/lenet5-digits/plots/..%2Fconfig.json",
        "/models/lenet5-digits/plots/%2E%2E%2F%2E%2E%2Fmlp-digits%2F1%2Fcurves.png",
        "/models/lenet5-digits/plots/%2Fetc%2Fpasswd",
        "/models/lenet5-digits/plots/../../mlp-digits/1/curves.png",
        "/models/lenet5-digits/plots/../1/report.json",
    ):
        status, content_type, body = raw_get(server, path)
        assert status == 404, (path, status)
        assert content_type == "application/json" and b"PNG" not in body and b"sha256" not in body, path
    missing = client.get("/models/lenet5-digits/plots/nope.png").json()["error"]
    assert "no plot 'nope.png'" in missing and "confusion_matrix.png" in missing
    assert client.get("/models/nope/plots/curves.png").status_code == 404
    assert client.get("/models/lenet5-digits/plots/curves.png", params={"version": 7}).status_code == 404
    assert client.get("/models/lenet5-digits/plots/curves.png", params={"version": -1}).status_code == 422


def test_text_model_metadata_shows_its_vocabulary(client, repository) -> None:
    """What a text request may contain is visible before a request is refused for it."""
    config = json.loads((repository / "lstm-order" / "config.json").read_text())
    meta = client.get("/models/lstm-order").json()
    assert meta["preprocessing"]["vocabulary"] == config["preprocessing"]["tokenizer"]["chars"]
    assert "vocabulary" not in client.get("/models/lenet5-digits").json()["preprocessing"]
    for char in meta["preprocessing"]["vocabulary"]:
        body = {"model": "lstm-order", "inputs": [char * 3]}
        assert client.post("/predict", json=body).status_code == 200


def test_image_classifier_from_png_matches_onnxruntime(client, repository, digits) -> None:
    images, targets = digits
    pixels = [(images[i] / 16 * 255).round().astype(np.uint8) for i in range(6)]
    response = client.post("/predict", json={"model": "mlp-digits", "inputs": [png_b64(p) for p in pixels]})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    # The same preprocessing by hand: [0, 1] scale, the config's mean/std, flattened to 64.
    pre = json.loads((repository / "mlp-digits" / "config.json").read_text())["preprocessing"]
    x = (np.stack(pixels).astype(np.float32) / 255 - pre["mean"][0]) / pre["std"][0]
    logits = reference_session(repository, "mlp-digits").run(None, {"input": x.reshape(6, 64)})[0]
    expected = softmax(logits.astype(np.float64), axis=-1)
    for out, probs in zip(outputs, expected, strict=True):
        assert out["index"] == int(probs.argmax()) and out["label"] == str(probs.argmax())
        np.testing.assert_allclose(out["probabilities"], probs, atol=1e-5)
    accuracy = np.mean([o["index"] == t for o, t in zip(outputs, targets[:6], strict=True)])
    assert accuracy >= 5 / 6


def test_top_k_and_jpeg_and_resize(client, digits) -> None:
    images, _ = digits
    big = np.kron((images[3] / 16 * 255).astype(np.uint8), np.ones((4, 4), np.uint8))  # 32x32, resized to 28
    rgb = np.stack([big] * 3, -1)
    body = {"model": "lenet5-digits", "inputs": png_b64(rgb, "JPEG"), "top_k": 3}
    out = client.post("/predict", json=body).json()["outputs"][0]
    assert [c["probability"] for c in out["top_k"]] == sorted(
        (c["probability"] for c in out["top_k"]), reverse=True
    )
    assert out["top_k"][0]["label"] == out["label"] and len(out["top_k"]) == 3
    assert "probabilities" not in out


def test_numeric_tensor_single_and_list(client, repository) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    single = client.post("/predict", json={"model": "mlp-digits", "inputs": x[0].tolist()}).json()["outputs"]
    many = client.post("/predict", json={"model": "mlp-digits", "inputs": x.tolist()}).json()["outputs"]
    assert len(single) == 1 and len(many) == 3
    logits = reference_session(repository, "mlp-digits").run(None, {"input": x})[0]
    assert [o["index"] for o in many] == logits.argmax(-1).tolist()
    assert single[0]["probabilities"] == many[0]["probabilities"]


def test_text_classifier_pads_and_matches_alone(client, repository) -> None:
    texts = ["eAfBgChDij", "BA", "jihgfeDCBAjihgfeDCBAjihgfe"]
    batch = client.post("/predict", json={"model": "lstm-order", "inputs": texts}).json()["outputs"]
    for text, out in zip(texts, batch, strict=True):
        alone = client.post("/predict", json={"model": "lstm-order", "inputs": text}).json()["outputs"][0]
        np.testing.assert_allclose(out["probabilities"], alone["probabilities"], atol=1e-5)
    config = json.loads((repository / "lstm-order" / "config.json").read_text())
    chars = config["preprocessing"]["tokenizer"]["chars"]
    specials = len(config["preprocessing"]["tokenizer"]["specials"])
    ids = np.array([[chars.index(c) + specials for c in texts[0]]], np.int64)
    logits = reference_session(repository, "lstm-order").run(
        None, {"tokens": ids, "lengths": np.array([ids.shape[1]], np.int64)}
    )[0]
    np.testing.assert_allclose(
        batch[0]["probabilities"], softmax(logits.astype(np.float64), axis=-1)[0], atol=1e-5
    )


def test_bert_classifier_gets_bos_and_attention_mask(client, repository) -> None:
    texts = ["the value of the attribute is returned", "teh vluae of the atbtuirte is rerunted", "a"]
    batch = client.post("/predict", json={"model": "bert-scramble", "inputs": texts}).json()["outputs"]
    config = json.loads((repository / "bert-scramble" / "config.json").read_text())
    chars = config["preprocessing"]["tokenizer"]["chars"]
    specials = len(config["preprocessing"]["tokenizer"]["specials"])
    session = reference_session(repository, "bert-scramble")
    for text, out in zip(texts, batch, strict=True):
        ids = np.array([[1] + [chars.index(c) + specials for c in text]], np.int64)  # bos = 1, as trained
        logits = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        np.testing.assert_allclose(
            out["probabilities"], softmax(logits.astype(np.float64), axis=-1)[0], atol=1e-5
        )


def test_autoencoder_and_vae_outputs(client, digits) -> None:
    images, _ = digits
    item = png_b64((images[0] / 16 * 255).astype(np.uint8))
    plain = client.post("/predict", json={"model": "autoencoder-digits", "inputs": item}).json()["outputs"][0]
    assert set(plain) == {"reconstruction"}
    assert np.asarray(plain["reconstruction"]).shape == (1, 28, 28)
    extra = client.post(
        "/predict",
        json={"model": "autoencoder-digits", "inputs": item, "return_latent": True, "format": "png"},
    ).json()["outputs"][0]
    assert len(extra["latent"]) == 16
    decoded = Image.open(io.BytesIO(base64.b64decode(extra["reconstruction"])))
    assert decoded.size == (28, 28)
    vae = client.post(
        "/predict", json={"model": "vae-digits", "inputs": [item, item], "return_reconstruction": True}
    ).json()["outputs"]
    assert len(vae) == 2 and len(vae[0]["mu"]) == 16 and len(vae[0]["logvar"]) == 16
    assert np.asarray(vae[0]["reconstruction"]).shape == (1, 28, 28)


@pytest.mark.parametrize("model", ["autoencoder-digits", "vae-digits"])
def test_format_png_and_array_and_the_old_name(client, digits, model) -> None:
    """/predict's image outputs: "array" (the default) or "png", the values /generate takes; a client
    still sending image_format is told its new name."""
    images, _ = digits
    body = {"model": model, "inputs": png_b64((images[0] / 16 * 255).astype(np.uint8))}
    if model == "vae-digits":
        body["return_reconstruction"] = True
    formats = ({}, {"format": "array"}, {"format": "png"})
    default, array, png = (client.post("/predict", json={**body, **extra}) for extra in formats)
    assert default.status_code == array.status_code == png.status_code == 200, png.text
    assert default.json() == array.json()
    assert np.asarray(array.json()["outputs"][0]["reconstruction"]).shape == (1, 28, 28)
    decoded = Image.open(io.BytesIO(base64.b64decode(png.json()["outputs"][0]["reconstruction"])))
    assert decoded.size == (28, 28)
    np.testing.assert_allclose(
        np.asarray(decoded, np.float32) / 255, array.json()["outputs"][0]["reconstruction"][0], atol=1 / 255
    )
    for old in ({"image_format": "png"}, {"image_format": "list"}):
        refused = client.post("/predict", json={**body, **old})
        assert refused.status_code == 422
        assert refused.json()["error"] == 'image_format: renamed format ("png" or "array")'
    for bad in ("list", "jpeg"):
        refused = client.post("/predict", json={**body, "format": bad})
        assert refused.status_code == 422 and "format" in refused.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "nope", "inputs": [0.0]}, 404, "unknown model 'nope'"),
        ({"model": "mlp-digits", "version": 9, "inputs": [0.0] * 64}, 404, "no version 9"),
        ({"model": "mlp-digits", "inputs": [1.0, 2.0]}, 422, "shape (2,)"),
        ({"model": "mlp-digits", "inputs": [[1.0] * 64, [1.0] * 63]}, 422, "inputs[1]"),
        ({"model": "mlp-digits", "inputs": [[["a"] * 64]]}, 422, "inputs"),
        ({"model": "mlp-digits", "inputs": []}, 422, "inputs is empty"),
        ({"model": "mlp-digits", "inputs": "!!notbase64!!"}, 400, "inputs[0]: not valid base64"),
        ({"model": "mlp-digits", "inputs": base64.b64encode(b"GIF89a....").decode()}, 400, "not a PNG"),
        ({"model": "lstm-order", "inputs": "x" * 500}, 422, "at most 40"),  # length before characters
        ({"model": "lstm-order", "inputs": "zzzz"}, 422, "inputs[0]: characters outside the model's"),
        ({"model": "lstm-order", "inputs": ""}, 422, "empty text"),
        ({"model": "lstm-order", "inputs": [[1, 2]]}, 422, "string"),
        ({"model": "gpt-corpus", "inputs": "hello"}, 422, "POST /generate"),
        ({"model": "mlp-digits", "inputs": [0.0] * 64, "top_k": 11}, 422, "top_k"),
        ({"model": "mlp-digits", "inputs": [0.0] * 64, "top_k": 0}, 422, "top_k"),
        ({"model": "autoencoder-digits", "inputs": [0.0] * 784, "top_k": 2}, 422, "top_k (for classifiers"),
        ({"model": "mlp-digits", "inputs": [0.0] * 64, "format": "png"}, 422, "a classifier"),
        ({"model": "mlp-digits", "inputs": [0.0] * 64, "surprise": 1}, 422, "surprise"),
        ({"inputs": [0.0] * 64}, 422, "model: Field required"),
    ],
)
def test_bad_requests_get_clear_4xx(client, body, status, fragment) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_nan_infinity_and_malformed_json(client) -> None:
    nan_body = '{"model": "mlp-digits", "inputs": [NaN' + ", 0.0" * 63 + "]}"
    response = client.post("/predict", content=nan_body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "NaN" in response.json()["error"]
    broken = client.post("/predict", content=b'{"model": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]


def test_json_is_parsed_only_as_json(client) -> None:
    body = b'{"model": "lstm-order", "inputs": "ABefCD"}'
    for content_type in ("application/json", "application/json; charset=utf-8", "application/x+json", None):
        headers = {"content-type": content_type} if content_type else {}
        response = client.post("/predict", content=body, headers=headers)
        assert response.status_code == 200 and response.json()["outputs"][0]["label"]
    # What a web page can make a browser send to another origin without asking first (and what
    # `curl -d` sends): never parsed.
    simple_types = ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x")
    for content_type in simple_types:
        for path in ("/predict", "/generate"):
            response = client.post(path, content=body, headers={"content-type": content_type})
            assert response.status_code == 415 and "Content-Type" in response.json()["error"]
    huge = client.post("/predict", json={"model": "mlp-digits", "inputs": [[1e39] * 64]})
    assert huge.status_code == 422 and "float32" in huge.json()["error"]


def test_oversized_body_is_413(server) -> None:
    limit = server.app.state.dataplane.settings.max_body_bytes
    with server.client() as c:
        response = c.post(
            "/predict", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_unknown_route_and_method_answer_json(client) -> None:
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405


def test_openapi_documents_predict_examples(client) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "404", "422", "429", "504"} <= set(predict["responses"])
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema["examples"][0]["model"] == "lenet5-digits"
    assert "PredictResponse" in spec["components"]["schemas"]


def test_docs_pages_work_offline(client) -> None:
    """/docs and /redoc load their scripts from this server (fastapi-offline's assets), never a CDN."""
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "http://" not in html.text and "https://" not in html.text and "cdn" not in html.text.lower()
        src = re.search(rf'src="([^"]*{re.escape(asset)})"', html.text)
        assert src, html.text[:500]
        script = client.get(src[1])
        assert script.status_code == 200 and len(script.content) > 100_000
        assert "javascript" in script.headers["content-type"]
    css = re.search(r'href="([^"]*swagger-ui\.css)"', client.get("/docs").text)
    assert css and client.get(css[1]).status_code == 200
