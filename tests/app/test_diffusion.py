"""POST /generate with a diffusion model against a real server: the DDIM walk runs in the server,
every denoiser call through the model's batcher; the answer is what app/core/diffusion.py's sampler
gives over a plain onnxruntime session, seeds reproduce image by image, concurrent requests share
batches, streams send the walk's progress, a cancelled walk stops, and the limits are refused first."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from app.api.schemas import GenerateRequest
from app.core.diffusion import alphas_cumprod, ddim_sample, initial_noise, make_betas
from app.core.repository_format import ModelConfig
from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, reference_session

MODEL = "diffusion-digits"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_models(tmp_path_factory.mktemp("diffusion"), (MODEL,))


@pytest.fixture(scope="module")
def live(repo):
    settings = Settings(model_repository=repo, max_images=8, max_diffusion_steps=40, max_diffusion_rows=600)
    with LiveServer(settings) as server:
        yield server


def _post(live, body: dict) -> dict:
    with live.client() as c:
        response = c.post("/generate", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _events(live, body: dict) -> list[dict]:
    with live.client() as c, c.stream("POST", "/generate", json={"model": MODEL, **body}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_the_server_runs_the_core_sampler_and_seeds_reproduce(live, repo) -> None:
    body = _post(live, {"num_samples": 3, "seed": 5, "steps": 4, "class": [1, 7, 7], "format": "array"})
    images = np.asarray(body["arrays"], np.float32)
    assert images.shape == (3, 1, 28, 28) and body["seeds"] == [5, 6, 7] and body["classes"] == [1, 7, 7]
    assert np.abs(images).max() <= 1.0  # the denoised image is clipped to the graph's pixel range
    assert body["timings"]["total_s"] > 0

    # The same walk over a plain onnxruntime session of the same graph.
    config = ModelConfig.model_validate_json((repo / MODEL / "config.json").read_text())
    spec, session = config.diffusion, reference_session(repo, MODEL, "denoiser.onnx")
    abar = alphas_cumprod(make_betas(spec.beta_schedule, spec.timesteps))
    reference = ddim_sample(
        lambda x, t, c: session.run(None, {"x": x, "t": t, "class": c})[0],
        initial_noise([5, 6, 7], (1, 28, 28)),
        abar,
        steps=4,
        classes=np.array([1, 7, 7]),
        null_class=spec.null_class,
        guidance_scale=spec.guidance_scale,
    )
    np.testing.assert_allclose(images, reference, atol=1e-4)

    # An image depends on its own seed and class only, not on the rest of its request.
    alone = _post(live, {"num_samples": 1, "seed": 6, "steps": 4, "class": 7, "format": "array"})
    np.testing.assert_allclose(np.asarray(alone["arrays"])[0], images[1], atol=1e-4)
    again = _post(live, {"num_samples": 2, "seed": 9, "steps": 3})
    assert again == {**_post(live, {"num_samples": 2, "seed": 9, "steps": 3}), "timings": again["timings"]}
    png = Image.open(io.BytesIO(base64.b64decode(again["images"][0])))
    assert png.size == (28, 28) and png.mode == "L" and again["classes"] == [0, 1]  # the classes in turn
    # Guidance 0 is the unconditional prediction alone: no class, whatever was asked for.
    unconditional = _post(live, {"num_samples": 2, "seed": 9, "steps": 3, "guidance_scale": 0})
    assert "classes" not in unconditional and unconditional["images"] != again["images"]
    ignored = _post(live, {"num_samples": 2, "seed": 9, "steps": 3, "guidance_scale": 0, "class": 4})
    assert ignored["images"] == unconditional["images"]


def test_concurrent_requests_share_batches(live) -> None:
    runner = live.app.state.registry.get(MODEL).runners["denoiser"]
    requests_before, executions_before = runner.requests_run, runner.stats.execution_count
    bodies = [{"model": MODEL, "num_samples": 1, "seed": s, "steps": 10} for s in range(8)]
    with live.client() as c, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: c.post("/generate", json=b), bodies))
    assert all(r.status_code == 200 for r in responses)
    requests = runner.requests_run - requests_before
    executions = runner.stats.execution_count - executions_before
    assert requests == 8 * 10  # one denoiser call per step and request
    assert executions < requests  # calls of different requests ran as one batch


def test_a_stream_sends_the_walk_then_the_answer(live) -> None:
    every = ModelConfig.model_validate_json(
        (live.app.state.registry.settings.model_repository / MODEL / "config.json").read_text()
    ).diffusion.stream_every
    steps = 2 * every + 1
    *progress, final = _events(live, {"num_samples": 2, "seed": 3, "steps": steps, "stream": True})
    assert [e["step"] for e in progress] == [every, 2 * every] and progress[0]["steps"] == steps
    assert all(len(e["images"]) == 2 for e in progress) and final["seeds"] == [3, 4]
    assert final["images"] == _post(live, {"num_samples": 2, "seed": 3, "steps": steps})["images"]
    assert final["model"] == MODEL and final["task"] == "diffusion"


def test_a_cancelled_walk_stops_at_its_next_denoiser_call(live) -> None:
    plane, mv = live.app.state.generation, live.app.state.registry.get(MODEL)
    runner, loop = mv.runners["denoiser"], live.server._loop
    request = GenerateRequest(model=MODEL, num_samples=1, steps=40)
    plan = plane.diffusion_plan(mv, request)
    before = runner.requests_run
    walk = asyncio.run_coroutine_threadsafe(plane._diffuse(mv, plan), loop)
    deadline = time.monotonic() + 10
    while runner.requests_run == before:
        assert time.monotonic() < deadline
        time.sleep(0.0002)
    at_cancel = runner.requests_run - before
    walk.cancel()
    time.sleep(0.5)  # the thread would walk all 40 steps in about that
    after = runner.requests_run - before
    assert after <= at_cancel + 2 and after < 40, (at_cancel, after)


def test_limits_and_defaults_are_listed(live) -> None:
    with live.client() as c:
        details = c.get(f"/models/{MODEL}").json()
    limits, defaults = details["limits"], details["diffusion"]
    assert defaults["conditional"] and defaults["steps"] == 20 and defaults["timesteps"] == 1000
    settings = live.app.state.registry.settings
    assert limits["max_images"] == 8 and limits["max_steps"] == 40 and limits["max_guidance_scale"] == 20
    assert limits["max_denoiser_rows"] == 600
    assert limits["max_in_progress"] == settings.max_concurrent_searches


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"num_samples": 9}, "num_samples is 9; at most 8"),
        ({"class": [1] * 9}, "class holds 9 classes; at most 8"),
        ({"num_samples": 1, "steps": 41}, "steps is 41; at most 40"),  # 10 by default: one per class
        # 8 guided images x 40 steps: 640 denoiser rows, over the 600 of this server (unguided: 320).
        (
            {"num_samples": 8, "class": 1, "steps": 40},
            "8 images (8 guided, two rows each) x 40 steps are 640",
        ),
        ({"steps": 0}, "steps"),
        ({"class": 1, "guidance_scale": 21}, "guidance_scale"),
        ({"class": 10}, "class 10 is not an id of the model's classes"),
        ({"class": [1, 2], "num_samples": 3}, "give one per image"),
        ({"class": "7"}, "class"),
        ({"latent": [[0.0] * 4]}, "latent (for image generators, class-conditional image generators)"),
        ({"prompt": "a"}, "does not apply to model 'diffusion-digits', a diffusion model"),
    ],
)
def test_bad_diffusion_requests_are_refused_before_any_work(live, body, fragment) -> None:
    runner = live.app.state.registry.get(MODEL).runners["denoiser"]
    before = runner.requests_run
    with live.client() as c:
        response = c.post("/generate", json={"model": MODEL, **body})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert runner.requests_run == before


def test_an_unconditional_model_refuses_class(tmp_path) -> None:
    root = copy_models(tmp_path, (MODEL,))
    path = root / MODEL / "config.json"
    config = json.loads(path.read_text())
    config["diffusion"]["conditional"] = False
    config["diffusion"]["null_class"] = 10  # the graph's "no class" row stays the one it has
    path.write_text(json.dumps(config))
    with LiveServer(Settings(model_repository=root, warmup=False)) as server, server.client() as c:
        for field, value in (("class", 1), ("guidance_scale", 2.0)):
            response = c.post("/generate", json={"model": MODEL, field: value})
            assert response.status_code == 422, response.text
            assert f"trained without classes; {field} does not apply" in response.json()["error"]
        assert c.post("/generate", json={"model": MODEL, "num_samples": 1, "steps": 2}).status_code == 200
