"""The families of issue 19 on a real server: the class-conditional GAN at /generate (``class``), the
CycleGAN's two directions at /predict (``direction``), each answer checked against onnxruntime on the
same graph, and every malformed ``class`` or ``direction`` refused with a 422 that names it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, reference_session

MODELS = ("cgan-digits", "cyclegan-strokes", "dcgan-digits", "lenet5-digits", "mobilenet-shapes")
MAX_IMAGES = 8


@pytest.fixture(scope="module")
def families_repo(tmp_path_factory):
    return copy_models(tmp_path_factory.mktemp("families"), MODELS)


@pytest.fixture(scope="module")
def fc(families_repo) -> Iterator[httpx.Client]:
    with (
        LiveServer(Settings(model_repository=families_repo, max_images=MAX_IMAGES)) as live,
        live.client() as c,
    ):
        yield c


def _png_pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))), dtype=np.float32) / 255.0


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------ conditional GAN


def test_class_picks_each_images_class_and_matches_onnxruntime(fc, families_repo) -> None:
    body = {"model": "cgan-digits", "class": [3, 3, 8], "seed": 4, "format": "array"}
    answer = fc.post("/generate", json=body).json()
    assert answer["classes"] == [3, 3, 8] and len(answer["arrays"]) == 3
    # The server's images are the graph's output for the latents and classes it reports.
    session = reference_session(families_repo, "cgan-digits", "generator.onnx")
    z = np.asarray(answer["latents"], np.float32)
    expected = session.run(None, {"latent": z, "class": np.asarray(answer["classes"], np.int64)})[0]
    np.testing.assert_allclose(np.asarray(answer["arrays"]), expected, atol=1e-5)
    # The same latents asked for another class give other images.
    other = session.run(None, {"latent": z, "class": np.asarray([5, 5, 5], np.int64)})[0]
    assert np.abs(other - expected).max() > 0.1


def test_one_class_for_every_image_and_the_default_classes_in_turn(fc) -> None:
    sevens = fc.post(
        "/generate", json={"model": "cgan-digits", "num_samples": 4, "class": 7, "seed": 1}
    ).json()
    assert sevens["classes"] == [7, 7, 7, 7] and len(sevens["images"]) == 4
    # The zoo's digit classifier reads the class that was asked for.
    judged = fc.post("/predict", json={"model": "lenet5-digits", "inputs": sevens["images"]}).json()
    assert [o["label"] for o in judged["outputs"]].count("7") >= 3
    default = fc.post("/generate", json={"model": "cgan-digits", "num_samples": 3}).json()
    assert default["classes"] == [0, 1, 2]
    walk = {"model": "cgan-digits", "interpolate": {"from": 1, "to": 2, "steps": 3}, "class": 4}
    assert fc.post("/generate", json=walk).json()["classes"] == [4, 4, 4]
    explicit = fc.post(
        "/generate", json={"model": "cgan-digits", "latent": [[0.0] * 32] * 2, "class": [1, 9]}
    )
    assert explicit.json()["classes"] == [1, 9]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"class": 10}, "class 10 is not an id of the model's classes: 0 (0), 1 (1)"),
        ({"class": -1}, "class -1 is not an id"),
        ({"class": [1, 2, 99]}, "class 99 is not an id"),
        ({"class": 10**30}, "class.int: Input should be a valid integer"),  # beyond 64 bits
        ({"class": [], "num_samples": 2}, "class must list 1 to 8 ids"),
        ({"class": [1, 2], "num_samples": 3}, "class lists 2 ids for 3 images"),
        ({"class": [1, 2], "latent": [[0.0] * 32]}, "class lists 2 ids for 1 images"),
        ({"class": list(range(10)) * 2}, "class holds 20 classes; at most 8 images per request"),
        ({"class": 1.5}, "class"),
        ({"class": True}, "class"),
        ({"class": "7"}, "class"),
        ({"class": [[1]]}, "class"),
        ({"class_": 1}, "class_"),
    ],
)
def test_bad_classes_are_refused_naming_the_field(fc, changes, fragment) -> None:
    response = fc.post("/generate", json={"model": "cgan-digits", **changes})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]


def test_a_million_classes_are_refused_before_validation(fc) -> None:
    response = fc.post("/generate", json={"model": "cgan-digits", "class": [0] * 1_000_000})
    assert response.status_code == 422
    assert response.json()["error"] == "class holds 1000000 classes; at most 8 images per request"


def test_class_is_refused_by_an_unconditional_generator(fc) -> None:
    response = fc.post("/generate", json={"model": "dcgan-digits", "class": 3})
    assert response.status_code == 422
    assert response.json()["error"] == (
        "class (for class-conditional image generators, diffusion models) does not apply to model "
        "'dcgan-digits', an image generator"
    )


# ------------------------------------------------------------------------------------------ CycleGAN


def _thin_digit() -> np.ndarray:
    """A thin-stroke 28x28 seven: a bar and a diagonal one pixel wide, softened by its neighbours."""
    pixels = np.zeros((28, 28), np.float32)
    pixels[6, 8:21] = 1.0
    for row in range(7, 23):
        pixels[row, 20 - (row - 7) * 8 // 15] = 1.0
    return pixels


@pytest.mark.parametrize("direction", ["thin_to_thick", "thick_to_thin"])
def test_each_direction_answers_with_its_graphs_image(fc, families_repo, direction) -> None:
    pixels = _thin_digit()
    body = {"model": "cyclegan-strokes", "inputs": [_png(pixels)] * 2, "direction": direction}
    answer = fc.post("/predict", json={**body, "format": "array"}).json()
    assert answer["task"] == "image_translation" and answer["direction"] == direction
    session = reference_session(families_repo, "cyclegan-strokes", f"{direction}.onnx")
    expected = session.run(None, {"input": np.stack([pixels[None]] * 2)})[0]
    np.testing.assert_allclose(np.asarray([o["image"] for o in answer["outputs"]]), expected, atol=1e-5)
    png = fc.post("/predict", json={**body, "format": "png"}).json()["outputs"][0]["image"]
    image = Image.open(io.BytesIO(base64.b64decode(png)))
    assert image.size == (28, 28) and image.mode == "L"


def test_thin_to_thick_thickens_and_the_round_trip_gives_the_digit_back(fc) -> None:
    pixels = _thin_digit()
    thick = fc.post(
        "/predict", json={"model": "cyclegan-strokes", "inputs": _png(pixels), "direction": "thin_to_thick"}
    ).json()["outputs"][0]["image"]
    thick = np.asarray(thick)[0]
    assert (thick > 0.5).sum() > 1.5 * (pixels > 0.5).sum()  # more ink: wider strokes
    back = fc.post(
        "/predict",
        json={"model": "cyclegan-strokes", "inputs": [[thick.tolist()]], "direction": "thick_to_thin"},
    ).json()["outputs"][0]["image"]
    assert np.abs(np.asarray(back)[0] - pixels).mean() < np.abs(thick - pixels).mean()


@pytest.mark.parametrize(
    ("changes", "status", "fragment"),
    [
        (
            {"direction": ...},
            422,
            "direction is required for model 'cyclegan-strokes', an image translator: one of thin_to_thick, "
            "thick_to_thin",
        ),
        ({"direction": "sideways"}, 422, "direction 'sideways' is not one of model 'cyclegan-strokes''s"),
        ({"direction": "x" * 65}, 422, "direction"),
        ({"direction": 3}, 422, "direction"),
        ({"top_k": 1}, 422, "top_k (for classifiers, text classifiers, dual encoders) does not apply"),
        ({"inputs": [[[[0.0] * 27] * 28]]}, 422, "does not match the model's input"),
    ],
)
def test_bad_translation_requests(fc, changes, status, fragment) -> None:
    body = {
        "model": "cyclegan-strokes",
        "inputs": [[[[0.0] * 28] * 28]],
        "direction": "thin_to_thick",
        **changes,
    }
    response = fc.post("/predict", json={k: v for k, v in body.items() if v is not ...})
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_direction_is_refused_by_other_kinds(fc) -> None:
    body = {"model": "mobilenet-shapes", "inputs": [[[[0.0] * 32] * 32] * 3], "direction": "thin_to_thick"}
    response = fc.post("/predict", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "direction (for image translators) does not apply to model 'mobilenet-shapes', a classifier"
    )
    assert fc.post("/predict", json={k: v for k, v in body.items() if k != "direction"}).status_code == 200
