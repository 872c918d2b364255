"""The CLIP-style dual encoder (the committed clip-shapes) through a real server: image and text
embeddings equal to the graphs' own, zero-shot classification in the classifiers' answer shape,
text-to-image retrieval over a gallery in the request, both encoders through their batchers, and
every limit refused with a 422 naming it before any image is decoded."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from app.core.repository_format import ModelConfig
from app.core.tokenizer import CharTokenizer
from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, reference_session

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "shapes"
FILES = sorted(EXAMPLES.glob("*.png"))  # e.g. small-red-circle-left.png
SHAPES = ["circle", "square", "triangle", "cross", "ring", "star"]
PROMPTS = [f"a photo of a {shape}" for shape in SHAPES]  # a held-out template: never a training caption
IMAGES = [base64.b64encode(f.read_bytes()).decode() for f in FILES]
LIMITS = {"max_labels": 8, "max_queries": 3, "max_gallery_images": 8}
MODEL = "clip-shapes"


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    repo = copy_models(tmp_path_factory.mktemp("clip"), [MODEL])
    with LiveServer(Settings(model_repository=repo, **LIMITS)) as server:
        yield server


@pytest.fixture(scope="module")
def c(live) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture(scope="module")
def graphs(live) -> tuple[ort.InferenceSession, ort.InferenceSession, ModelConfig]:
    repo = Path(live.app.state.registry.root)
    config = ModelConfig.model_validate_json((repo / MODEL / "config.json").read_text())
    images = reference_session(repo, MODEL, config.graphs["image_encoder"].file)
    texts = reference_session(repo, MODEL, config.graphs["text_encoder"].file)
    return images, texts, config


def _pixels(config: ModelConfig) -> np.ndarray:
    """The example files as the image encoder's input, preprocessed by hand as config.json says."""
    pre = config.preprocessing
    rows = [np.asarray(Image.open(io.BytesIO(f.read_bytes())).convert("RGB"), np.float32) for f in FILES]
    chw = np.stack(rows).transpose(0, 3, 1, 2) / 255
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (pre.mean, pre.std))
    return ((chw - mean) / std).astype(np.float32)


def _texts(config: ModelConfig, texts: list[str]) -> dict[str, np.ndarray]:
    tokenizer = CharTokenizer.from_dict(config.text_preprocessing.tokenizer.model_dump())
    rows = [tokenizer.encode(t, bos=True) for t in texts]
    ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def _predict(c: httpx.Client, **body) -> httpx.Response:
    return c.post("/predict", json={"model": MODEL, **body})


def test_image_and_text_embeddings_are_the_graphs(c, graphs) -> None:
    image_graph, text_graph, config = graphs
    answer = _predict(c, inputs=IMAGES).json()
    assert answer["task"] == "embedding" and len(answer["outputs"]) == len(FILES)
    got = np.array([item["embedding"] for item in answer["outputs"]])
    want, _ = image_graph.run(None, {"images": _pixels(config)})
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in the graph
    texts = ["a red circle", "a large purple star on the right"]
    answer = _predict(c, inputs=[{"text": t} for t in texts]).json()
    got = np.array([item["embedding"] for item in answer["outputs"]])
    np.testing.assert_allclose(got, text_graph.run(None, _texts(config, texts))[0], atol=1e-5)


def test_zero_shot_answers_like_a_classifier(c, graphs) -> None:
    image_graph, text_graph, config = graphs
    answer = _predict(c, inputs=IMAGES, labels=PROMPTS).json()
    assert answer["task"] == "zero_shot_classification"
    image_embeds, scale = image_graph.run(None, {"images": _pixels(config)})
    (label_embeds,) = text_graph.run(None, _texts(config, PROMPTS))
    logits = scale[:, None] * image_embeds @ label_embeds.T
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    for file, item, probs in zip(FILES, answer["outputs"], want, strict=True):
        np.testing.assert_allclose(item["probabilities"], probs, atol=1e-5)
        assert item["index"] == int(probs.argmax()) and item["label"] == PROMPTS[item["index"]]
        assert item["label"] == f"a photo of a {file.stem.split('-')[2]}", file.name  # the trained model
    top = _predict(c, inputs=IMAGES[0], labels=PROMPTS, top_k=2, return_embedding=True).json()["outputs"][0]
    assert top["top_k"][0]["label"] == top["label"] and len(top["top_k"]) == 2
    assert "probabilities" not in top and len(top["embedding"]) == image_embeds.shape[1]


def test_retrieval_ranks_the_gallery(c, graphs) -> None:
    image_graph, text_graph, config = graphs
    queries = ["a photo of a large purple star on the right", "a photo of a small red circle on the left"]
    answer = _predict(c, inputs=IMAGES, query=queries).json()
    assert answer["task"] == "retrieval" and [o["query"] for o in answer["outputs"]] == queries
    image_embeds, _ = image_graph.run(None, {"images": _pixels(config)})
    (query_embeds,) = text_graph.run(None, _texts(config, queries))
    for item, query, embed in zip(answer["outputs"], queries, query_embeds, strict=True):
        ranking = item["ranking"]
        scores = image_embeds @ embed
        assert [r["index"] for r in ranking] == np.argsort(-scores, kind="stable").tolist()
        np.testing.assert_allclose([r["score"] for r in ranking], np.sort(scores)[::-1], atol=1e-5)
        best = FILES[ranking[0]["index"]].stem.split("-")
        assert " ".join(best[:3]) in query, (query, best)  # the trained model finds the image
    one = _predict(c, inputs=IMAGES, query=queries[0], top_k=2, return_embedding=True).json()["outputs"]
    assert len(one) == 1 and len(one[0]["ranking"]) == 2 and len(one[0]["embedding"]) == query_embeds.shape[1]


def test_both_encoders_run_through_their_batchers(c, live) -> None:
    mv = live.app.state.registry.get(MODEL)
    images, texts = mv.runners["image_encoder"].stats, mv.runners["text_encoder"].stats
    before = images.inference_count, texts.inference_count
    assert _predict(c, inputs=IMAGES[:2], labels=PROMPTS[:3]).status_code == 200
    assert (images.inference_count, texts.inference_count) > before
    assert images.inference_count > before[0] and texts.inference_count > before[1]


# A gallery of bodies that are not images at all: a limit checked before decoding answers first.
NOT_IMAGES = ["not base64!"] * 9


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": NOT_IMAGES, "query": "a star"}, 422, "inputs holds 9 gallery images; at most 8"),
        ({"inputs": NOT_IMAGES[:1], "labels": ["a"] * 9}, 422, "labels holds 9 labels; at most 8"),
        ({"inputs": NOT_IMAGES[:1], "query": ["a"] * 4}, 422, "query holds 4 queries; at most 3"),
        ({"inputs": NOT_IMAGES[:1], "labels": ["a" * 80]}, 422, "labels[0]: text is 81 tokens long"),
        ({"inputs": NOT_IMAGES[:1], "labels": ["a", "A star"]}, 422, "labels[1]: characters outside"),
        ({"inputs": NOT_IMAGES[:1], "query": ""}, 422, "query[0]: empty text"),
        ({"inputs": NOT_IMAGES[:1], "labels": ["a"], "query": "b"}, 422, "labels (zero-shot"),
        ({"inputs": NOT_IMAGES[:1], "labels": ["a"], "top_k": 2}, 422, "top_k is 2; the request has 1"),
        ({"inputs": NOT_IMAGES[:2], "query": "a", "top_k": 3}, 422, "top_k is 3; the request has 2 gallery"),
        ({"inputs": NOT_IMAGES[:1], "top_k": 1}, 422, "top_k needs labels (zero-shot) or query"),
        ({"inputs": [{"text": "a"}], "labels": ["b"]}, 422, "labels ranks images: inputs must be images"),
        ({"inputs": [{"text": "a"}, IMAGES[0]]}, 422, "inputs[1]: a text item is"),
        ({"inputs": [{"text": 3}]}, 422, "inputs[0]: a text item is"),
        ({"inputs": [{"text": "Red"}]}, 422, "inputs[0]: characters outside the model's vocabulary: 'R'"),
        ({"inputs": NOT_IMAGES[:1], "labels": ["a star"]}, 400, "inputs[0]: not valid base64"),
        ({"inputs": IMAGES[0], "return_latent": True}, 422, "return_latent (for autoencoders) does not"),
        ({"inputs": IMAGES[0], "labels": ["a"] * 100_000}, 422, "labels holds 100000 labels; at most 8"),
    ],
)
def test_limits_and_wrong_fields_are_refused_naming_them(c, body, status, message) -> None:
    response = _predict(c, **body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_unknown_characters_map_when_asked_and_the_limits_are_listed(c) -> None:
    assert _predict(c, inputs=[{"text": "A Red circle"}], map_unknown=True).status_code == 200
    details = c.get(f"/models/{MODEL}").json()
    assert details["text_preprocessing"]["vocabulary"] == " ," + "abcdefghijklmnopqrstuvwxyz"
    assert {k: details["limits"][k] for k in LIMITS} == LIMITS
    refused = c.post("/generate", json={"model": MODEL, "num_samples": 1})
    assert refused.status_code == 422
    assert refused.json()["error"] == f"model {MODEL!r} is an embedding model; use POST /predict"


def test_v2_infer_runs_the_image_encoder(c, graphs) -> None:
    image_graph, _, config = graphs
    pixels = _pixels(config)[:2]
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": list(pixels.shape),
                "datatype": "FP32",
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    outputs = {o["name"]: o for o in c.post(f"/v2/models/{MODEL}/infer", json=body).json()["outputs"]}
    embeds, scale = image_graph.run(None, {"images": pixels})
    assert outputs["image_embeds"]["shape"] == list(embeds.shape) and outputs["logit_scale"]["shape"] == [2]
    np.testing.assert_allclose(np.reshape(outputs["image_embeds"]["data"], embeds.shape), embeds, atol=1e-5)
    np.testing.assert_allclose(outputs["logit_scale"]["data"], scale, rtol=1e-6)
