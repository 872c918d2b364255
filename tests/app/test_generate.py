"""POST /generate against a real server: continuous batching gives each sequence exactly what it gets
alone, seeds reproduce, streaming, disconnects free their slot, limits, seq2seq and image generators;
and the decode thread itself: a failing step, and shutdown with work in flight."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from app.api.schemas import GenerateRequest
from app.core.kv_cache import FinishReason, generate
from app.core.repository_format import ModelConfig
from app.core.sampling import SamplingParams
from app.core.tokenizer import CharTokenizer
from app.decode_loop import (
    GenerationFailed,
    GenerationLimits,
    StoppingCriteria,
    TextGenerator,
)
from app.session import Session, SessionOptions
from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, reference_session

MODELS = ("gpt-corpus", "gpt-corpus-local", "seq2seq-dates", "dcgan-digits", "vae-digits")


@pytest.fixture(scope="module")
def gen_repo(tmp_path_factory):
    return copy_models(tmp_path_factory.mktemp("gen"), MODELS, variants=True)  # gpt-corpus 2 and 3 too


@pytest.fixture(scope="module")
def gen_server(gen_repo):
    with LiveServer(Settings(model_repository=gen_repo, max_new_tokens=256, max_images=8)) as live:
        yield live


def _post_all(server, bodies, workers=16):
    with server.client() as c, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: c.post("/generate", json=b), bodies))


def _alone_greedy(repo, prompt: str, max_new: int, slide: bool = False, model: str = "gpt-corpus") -> str:
    """The same graph decoded one sequence at a time (app.core.kv_cache, which the training package's
    `sample` command uses and whose greedy output is tested equal to PyTorch's). With ``slide``, past
    the context the last half of the text is prefilled again (the server's sliding window)."""
    config = ModelConfig.model_validate_json((repo / model / "config.json").read_text())
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    graph = config.graphs["decoder_step"]
    session = reference_session(repo, model, graph.file)
    out = generate(
        session,
        graph,
        tokenizer.encode(prompt),
        max_new_tokens=max_new,
        params=SamplingParams(temperature=0),
        seed=0,
        block_size=config.preprocessing.max_length,
        slide=slide,
        window=config.attention,
    )
    return tokenizer.decode(out.token_ids)


def test_local_attention_model_decodes_through_its_ring_like_its_full_sequence_graph(gen_server, gen_repo):
    """gpt-corpus-local (window 32, 4 global positions): the server's batched greedy text, decoded
    through a ring cache of 36 slots, equals each sequence alone; and up to the context that text is
    the full-sequence graph's own greedy choice at every position (no cache at all)."""
    config = ModelConfig.model_validate_json((gen_repo / "gpt-corpus-local" / "config.json").read_text())
    assert config.attention is not None and config.attention.slots == 36
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    full = reference_session(gen_repo, "gpt-corpus-local")
    prompts = ["The ", "If the value of x", "A"]
    bodies = [
        {"model": "gpt-corpus-local", "prompt": p, "max_new_tokens": 180, "temperature": 0} for p in prompts
    ]
    for prompt, response in zip(prompts, _post_all(gen_server, bodies), strict=True):
        text = response.json()["text"]
        assert text == _alone_greedy(gen_repo, prompt, 180, slide=True, model="gpt-corpus-local")
        ids = tokenizer.encode(prompt + text)[: config.preprocessing.max_length]
        (logits,) = full.run(None, {"tokens": np.array([ids], np.int64)})
        start = len(tokenizer.encode(prompt))
        assert logits[0, start - 1 : len(ids) - 1].argmax(-1).tolist() == ids[start:]


def test_sliding_window_greedy_equals_each_sequence_alone(gen_server, gen_repo) -> None:
    prompts = ["The ", "If the value of x", "A"]
    bodies = [{"model": "gpt-corpus", "prompt": p, "max_new_tokens": 180, "temperature": 0} for p in prompts]
    for prompt, response in zip(prompts, _post_all(gen_server, bodies), strict=True):
        assert response.json()["text"] == _alone_greedy(gen_repo, prompt, 180, slide=True)


def test_concurrent_greedy_equals_each_sequence_alone(gen_server, gen_repo) -> None:
    prompts = ["The ", "If the value", "A", "Return a new list of the ", "class ", "x"]
    bodies = [{"model": "gpt-corpus", "prompt": p, "max_new_tokens": 60, "temperature": 0} for p in prompts]
    responses = _post_all(gen_server, bodies * 2)
    for prompt, response in zip(prompts * 2, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 60
        assert body["text"] == _alone_greedy(gen_repo, prompt, 60)


def test_the_fused_variant_gives_the_trained_versions_text(gen_server, gen_repo) -> None:
    """Version 2 of the zoo's GPT (``optimized``: the fused step graph that writes its KV cache in place,
    training/step_graph.py) batched with other requests and sliding past the context: token for token
    the trained version's greedy text alone; seeded samples are the trained version's too, streamed or
    not. The int8 version 3 serves through the same cache."""
    prompts = ["The ", "If the value of x", "A", "Return a new list of the ", "class ", "x"]
    greedy = {"model": "gpt-corpus", "version": 2, "max_new_tokens": 150, "temperature": 0}
    responses = _post_all(gen_server, [{**greedy, "prompt": p} for p in prompts])
    for prompt, response in zip(prompts, responses, strict=True):
        assert response.json()["text"] == _alone_greedy(gen_repo, prompt, 150, slide=True)
    sampled = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 40, "temperature": 0.8, "seed": 3}
    trained, fused, int8 = _post_all(gen_server, [{**sampled, "version": v} for v in (1, 2, 3)])
    assert fused.json()["text"] == trained.json()["text"]
    assert int8.status_code == 200 and int8.json()["usage"]["completion_tokens"] == 40
    with (
        gen_server.client() as c,
        c.stream("POST", "/generate", json={**sampled, "version": 2, "stream": True}) as r,
    ):
        *tokens, summary = _events(r)
    assert "".join(t["token"] for t in tokens) == summary["text"] == trained.json()["text"]


def test_seeds_reproduce_under_load(gen_server) -> None:
    body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 40, "temperature": 0.9, "seed": 11}
    others = [{**body, "seed": s} for s in range(8)]
    first, *rest = _post_all(gen_server, [body, *others])
    again = _post_all(gen_server, [body])[0]
    assert first.json()["text"] == again.json()["text"]
    assert len({r.json()["text"] for r in rest}) > 1  # different seeds, different samples


def test_stop_strings_and_sliding_window(gen_server) -> None:
    with gen_server.client() as c:
        long = c.post(
            "/generate", json={"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 200}
        ).json()
        assert (
            long["usage"]["completion_tokens"] == 200 and long["finish_reason"] == "length"
        )  # > context 128
        greedy = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 60, "temperature": 0}
        text = c.post("/generate", json=greedy).json()["text"]
        stop = text[10:13]
        stopped = c.post("/generate", json={**greedy, "stop": [stop]}).json()
        assert stopped["finish_reason"] == "stop" and stopped["text"] == text[: text.index(stop)]


def _events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_streams_get_only_their_own_tokens(gen_server) -> None:
    bodies = [
        {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 30, "temperature": 0.8, "seed": s}
        for s in range(6)
    ]

    def stream(body):
        with gen_server.client() as c, c.stream("POST", "/generate", json={**body, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            return _events(r)

    with ThreadPoolExecutor(6) as pool:
        streamed = list(pool.map(stream, bodies))
    plain = _post_all(gen_server, bodies)
    for events, response in zip(streamed, plain, strict=True):
        *tokens, summary = events
        assert [t["index"] for t in tokens] == list(range(len(tokens)))
        assert "".join(t["token"] for t in tokens) == summary["text"] == response.json()["text"]
        assert summary["finish_reason"] == "length" and summary["usage"]["completion_tokens"] == 30


def test_disconnect_mid_stream_frees_the_slot(gen_server) -> None:
    generator = gen_server.app.state.registry.get("gpt-corpus").generator
    body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 256, "stream": True}
    with gen_server.client() as c, c.stream("POST", "/generate", json=body) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert generator.active == 1
    deadline = time.monotonic() + 10
    while generator.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert generator.active == 0
    metrics = httpx.get(f"{gen_server.url}/metrics").text
    assert 'serve_generation_active_sequences{model="gpt-corpus"} 0.0' in metrics
    assert 'serve_generation_finished_total{model="gpt-corpus",reason="cancelled"}' in metrics


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "gpt-corpus", "prompt": ""}, 422, "prompt is empty"),
        ({"model": "gpt-corpus", "prompt": "x" * 128}, 422, "context is 128"),
        ({"model": "gpt-corpus", "prompt": "a", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"model": "gpt-corpus", "prompt": "a", "max_new_tokens": 10_000}, 422, "max_new_tokens"),
        ({"model": "gpt-corpus", "prompt": "a", "temperature": -1}, 422, "temperature"),
        ({"model": "gpt-corpus", "prompt": "a", "top_p": 0}, 422, "top_p"),
        ({"model": "gpt-corpus", "prompt": "a", "top_p": 1.5}, 422, "top_p"),
        ({"model": "gpt-corpus", "prompt": "snow \u2603 man"}, 422, "outside the model's vocabulary"),
        ({"model": "gpt-corpus", "prompt": "a", "num_samples": 2}, 422, "num_samples"),
        ({"model": "gpt-corpus", "prompt": "a", "stop": [""]}, 422, "stop"),
        ({"model": "seq2seq-dates", "input": ""}, 422, "input is empty"),
        ({"model": "seq2seq-dates", "input": "1" * 200}, 422, "at most"),
        ({"model": "dcgan-digits", "num_samples": 9}, 422, "at most 8 images"),
        ({"model": "dcgan-digits", "latent": [[0.0] * 5]}, 422, "vectors of 32"),
        ({"model": "dcgan-digits", "num_samples": 2, "latent": [[0.0] * 32]}, 422, "one of"),
        ({"model": "nope", "prompt": "a"}, 404, "unknown model"),
        ({"model": "gpt-corpus", "prompt": "a", "surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_generation_requests(gen_server, body, status, fragment) -> None:
    with gen_server.client() as c:
        response = c.post("/generate", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_full_generation_queue_answers_429(tmp_path) -> None:
    root = copy_models(tmp_path, ("gpt-corpus",))
    settings = Settings(model_repository=root, max_active_sequences=1, max_queued_sequences=1)
    with LiveServer(settings) as live:
        body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 100}
        codes = [r.status_code for r in _post_all(live, [body] * 12, workers=12)]
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
        generator = live.app.state.registry.get("gpt-corpus").generator
        assert generator.active == 0


def test_seq2seq_greedy_and_beams(gen_server) -> None:
    with gen_server.client() as c:
        greedy = c.post("/generate", json={"model": "seq2seq-dates", "input": "3rd of March 2021"}).json()
        assert greedy["text"] == "2021-03-03" and greedy["beams"] is None
        beams = c.post("/generate", json={"model": "seq2seq-dates", "input": "March 3, 2021", "num_beams": 3})
        scores = [b["score"] for b in beams.json()["beams"]]
        assert beams.json()["text"] == "2021-03-03" and scores == sorted(scores, reverse=True)
    inputs = ["5 May 1999", "1999-05-05", "May 5th, 1999", "05/05/99"]
    results = _post_all(gen_server, [{"model": "seq2seq-dates", "input": i} for i in inputs])
    assert [r.json()["text"] for r in results] == ["1999-05-05"] * 4


def test_a_cancelled_search_stops_at_its_next_graph_call(gen_server) -> None:
    """A seq2seq search runs in a thread; cancelling its caller (what a client that disconnects does)
    stops it at its next encoder/decoder call instead of letting it run to the end."""
    plane, registry = gen_server.app.state.generation, gen_server.app.state.registry
    mv = registry.get("seq2seq-dates")
    decoder, loop = mv.runners["decoder"], gen_server.server._loop
    body = GenerateRequest(model="seq2seq-dates", input="Wednesday, 3rd of March 2021", num_beams=16)
    before = decoder.requests_run
    asyncio.run_coroutine_threadsafe(plane.translate(mv, body), loop).result(30)
    full = decoder.requests_run - before
    assert full >= 8  # one decoder call per output token

    before = decoder.requests_run
    search = asyncio.run_coroutine_threadsafe(plane.translate(mv, body), loop)
    deadline = time.monotonic() + 10
    while decoder.requests_run == before:
        assert time.monotonic() < deadline
        time.sleep(0.0002)
    at_cancel = decoder.requests_run - before
    search.cancel()
    time.sleep(0.5)  # the thread would finish the whole search in far less
    after = decoder.requests_run - before
    assert after <= at_cancel + 3 and after < full, (at_cancel, after, full)
    # The search pool is free again: a new search runs to the end.
    assert asyncio.run_coroutine_threadsafe(plane.translate(mv, body), loop).result(30)["text"]


def test_models_list_the_limits_that_apply(gen_server) -> None:
    with gen_server.client() as c:
        gpt = c.get("/models/gpt-corpus").json()["limits"]
        s2s = c.get("/models/seq2seq-dates").json()["limits"]
        gan = c.get("/models/dcgan-digits").json()["limits"]
    settings = gen_server.app.state.registry.settings
    assert gpt["max_new_tokens"] == 256 and gpt["max_length"] == 128 and gpt["max_stop_strings"] == 8
    assert gpt["max_in_progress"] == settings.max_active_sequences + settings.max_queued_sequences
    assert s2s["max_beams"] == 16 and s2s["max_new_tokens"] == 64  # the decoder's positions
    assert s2s["max_in_progress"] == settings.max_concurrent_searches
    assert gan["max_images"] == 8 and gan["max_in_progress"] == 256 and "max_beams" not in gan


def test_image_generators(gen_server) -> None:
    with gen_server.client() as c:
        a = c.post("/generate", json={"model": "dcgan-digits", "num_samples": 3, "seed": 5}).json()
        b = c.post("/generate", json={"model": "dcgan-digits", "num_samples": 3, "seed": 5}).json()
        assert a["images"] == b["images"] and len(a["images"]) == 3
        image = Image.open(io.BytesIO(base64.b64decode(a["images"][0])))
        assert image.size == (28, 28) and image.mode == "L"
        walk = c.post(
            "/generate",
            json={"model": "vae-digits", "interpolate": {"from": 1, "to": 2, "steps": 5}, "format": "array"},
        ).json()
        latents = np.asarray(walk["latents"])
        assert latents.shape == (5, 16) and np.asarray(walk["arrays"]).shape == (5, 1, 28, 28)
        np.testing.assert_allclose(latents[2], (latents[0] + latents[4]) / 2, atol=1e-6)


def test_generation_metrics(gen_server) -> None:
    with gen_server.client() as c:
        c.post("/generate", json={"model": "gpt-corpus", "prompt": "a", "max_new_tokens": 5})
        text = c.get("/metrics").text
    for name in (
        "serve_generated_tokens_total",
        "serve_time_to_first_token_seconds_count",
        "serve_time_per_output_token_seconds_count",
        "serve_generation_decode_batch_size_count",
        'serve_generation_step_seconds_count{model="gpt-corpus",phase="prefill"}',
        "serve_generation_cached_tokens",
        'serve_generation_finished_total{model="gpt-corpus",reason="length"}',
    ):
        assert name in text, name


def _decode_thread(repo) -> tuple[TextGenerator, CharTokenizer]:
    config = ModelConfig.model_validate_json((repo / "gpt-corpus" / "config.json").read_text())
    graph = config.graphs["decoder_step"]
    session = Session(repo / "gpt-corpus" / "1" / graph.file, graph, SessionOptions(device="cpu"))
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    block = config.preprocessing.max_length
    return TextGenerator("gpt-corpus", session, tokenizer, block, GenerationLimits()), tokenizer


async def _finish(seq) -> str | None:
    """The sequence's error, or None once it ended without one."""
    try:
        await asyncio.wait_for(seq.wait(), timeout=30)
    except GenerationFailed as exc:
        return str(exc)
    return None


def test_a_failing_step_ends_its_sequences_and_the_loop_goes_on(gen_repo) -> None:
    """A prompt id outside the embedding table makes onnxruntime's Gather fail for real."""

    async def run() -> None:
        generator, tokenizer = _decode_thread(gen_repo)
        generator.start()
        try:
            greedy = SamplingParams(temperature=0)
            bad = generator.submit([tokenizer.vocab_size + 1000], greedy, StoppingCriteria(5))
            error = await _finish(bad)
            assert bad.finish_reason is FinishReason.ERROR and error
            good = generator.submit(tokenizer.encode("The "), greedy, StoppingCriteria(5))
            assert await _finish(good) is None
            assert good.finish_reason is FinishReason.LENGTH and len(good.new) == 5 and generator.active == 0
        finally:
            await generator.stop()

    asyncio.run(run())


def test_stop_finishes_running_and_waiting_sequences(gen_repo) -> None:
    async def run() -> None:
        generator, tokenizer = _decode_thread(gen_repo)
        generator.start()
        params, prompt = SamplingParams(temperature=0.8), tokenizer.encode("The ")
        running = generator.submit(prompt, params, StoppingCriteria(100_000), seed=1)  # slides until stopped
        while not running.new:
            await asyncio.sleep(0.01)
        waiting = [generator.submit(prompt, params, StoppingCriteria(10), seed=i) for i in range(3)]
        await generator.stop()
        for seq in [running, *waiting]:
            assert await _finish(seq) is None
            assert seq.finish_reason in {FinishReason.SHUTDOWN, FinishReason.LENGTH}
        assert running.finish_reason is FinishReason.SHUTDOWN and not generator._thread.is_alive()

    asyncio.run(run())


def test_stopping_criteria() -> None:
    stopping = StoppingCriteria(max_new_tokens=3, stop=("\n\n", "END"), eos_id=2)
    assert stopping.is_eos(2) and not stopping.is_eos(3) and not StoppingCriteria(3).is_eos(2)
    assert not stopping.is_exhausted(2) and stopping.is_exhausted(3)
    # A stop string is found when it ends in the new text, also when it began in earlier pieces...
    assert stopping.stop_at("abc\n\n", 4) == 3 and stopping.stop_at("xxEN" + "D", 4) == 2
    # ...and the earliest one wins; none ending in the new part, or none at all: None.
    assert stopping.stop_at("xEN" + "D\n\n", 3) == 1
    assert stopping.stop_at("END then", 5) is None and stopping.stop_at("plain", 0) is None
    assert [r.value for r in FinishReason] == [
        "length",
        "stop",
        "eos",
        "context",
        "cancelled",
        "error",
        "shutdown",
    ]
