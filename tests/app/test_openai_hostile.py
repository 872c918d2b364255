"""Hostile input against the OpenAI-compatible routes and the V2 generate extension, one row per case
(in the style of test_hostile.py): the exact 4xx, the error in the route's shape (OpenAI's
``{"error": {"message", "type", "param", "code"}}`` under /v1, ``{"error": message}`` under /v2)
naming what was wrong, nothing internal leaked, answered fast; afterwards the server still serves."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models

GPT, S2S = "gpt-corpus", "seq2seq-dates"
MAX_CACHED = 512  # small, so that n * max_tokens can exceed the KV-cache budget
LEAKS = re.compile(r"0x[0-9a-f]{6,}|Traceback|/tmp/|/work/|File \"|onnx::")


@dataclass
class Case:
    name: str
    path: str
    body: Any
    status: int
    words: tuple[str, ...]
    param: str | None = None
    raw: bool = False


def _chat(**fields) -> dict:
    return {"model": GPT, "messages": [{"role": "user", "content": "Hi"}], **fields}


def _cmpl(**fields) -> dict:
    return {"model": GPT, "prompt": "The ", **fields}


CASES = [
    Case("huge n", "/v1/completions", _cmpl(n=10**6), 400, ("n=1000000", "at most 16"), "n"),
    Case("n times prompts", "/v1/completions", _cmpl(prompt=["a"] * 9, n=2), 400, ("18 choices",), "n"),
    Case(
        "huge prompt list", "/v1/completions", _cmpl(prompt=["a"] * 10_000), 400, ("10000 prompts",), "prompt"
    ),
    Case("empty prompt list", "/v1/completions", _cmpl(prompt=[]), 400, ("empty",), "prompt"),
    # Counted on the parsed JSON before pydantic validates each item (200,000 messages took 550 ms).
    Case(
        "huge message list",
        "/v1/chat/completions",
        {"model": GPT, "messages": [{"role": "user", "content": "a"}] * 100_000},
        400,
        ("100000 messages", "at most 256"),
        "messages",
    ),
    Case(  # the count comes first: no item is validated (each of these would be refused)
        "too many invalid messages",
        "/v1/chat/completions",
        {"model": GPT, "messages": [{"role": "tool"}] * 300},
        400,
        ("300 messages",),
        "messages",
    ),
    Case("huge stop list", "/v1/completions", _cmpl(stop=["s"] * 100_000), 400, ("100000 strings",), "stop"),
    Case("empty prompt", "/v1/completions", _cmpl(prompt=""), 400, ("prompt is empty",), "prompt"),
    Case(
        "long prompt", "/v1/completions", _cmpl(prompt="a" * 100_000), 400, ("100000 characters",), "prompt"
    ),
    Case("token prompt", "/v1/completions", _cmpl(prompt=[1, 2, 3]), 400, ("prompt",), "prompt"),
    Case("prompt number", "/v1/completions", _cmpl(prompt=123), 400, ("prompt",)),
    Case("n as text", "/v1/completions", _cmpl(n="many"), 400, ("n:",), "n"),
    Case("n zero", "/v1/completions", _cmpl(n=0), 400, ("n:", "greater than or equal to 1"), "n"),
    Case("kv budget", "/v1/completions", _cmpl(n=8, max_tokens=100), 400, ("cached tokens", "512"), "n"),
    Case("max_tokens 0", "/v1/completions", _cmpl(max_tokens=0), 400, ("max_tokens",), "max_tokens"),
    Case("max_tokens huge", "/v1/completions", _cmpl(max_tokens=10**9), 400, ("max_tokens must be in",)),
    Case(
        "both budgets", "/v1/chat/completions", _chat(max_tokens=5, max_completion_tokens=6), 400, ("differ",)
    ),
    Case("temperature", "/v1/completions", _cmpl(temperature=3), 400, ("temperature",), "temperature"),
    Case(
        "temperature NaN",
        "/v1/completions",
        '{"model":"gpt-corpus","prompt":"x","temperature":NaN}',
        400,
        ("temperature",),
        raw=True,
    ),
    Case("top_p 0", "/v1/completions", _cmpl(top_p=0), 400, ("top_p",), "top_p"),
    Case("penalty", "/v1/completions", _cmpl(presence_penalty=5), 400, ("presence_penalty",)),
    Case("seed negative", "/v1/completions", _cmpl(seed=-1), 400, ("seed",), "seed"),
    Case("too many stops", "/v1/completions", _cmpl(stop=["a"] * 9), 400, ("stop has 9",), "stop"),
    Case("empty stop", "/v1/completions", _cmpl(stop=""), 400, ("must not be empty",), "stop"),
    Case("long stop", "/v1/completions", _cmpl(stop="x" * 65), 400, ("64 characters",), "stop"),
    Case("logprobs 6", "/v1/completions", _cmpl(logprobs=6), 400, ("logprobs",), "logprobs"),
    Case("echo logprobs", "/v1/completions", _cmpl(echo=True, logprobs=1), 400, ("echo",), "echo"),
    Case(
        "top_logprobs 21",
        "/v1/chat/completions",
        _chat(logprobs=True, top_logprobs=21),
        400,
        ("top_logprobs",),
    ),
    Case("top_logprobs alone", "/v1/chat/completions", _chat(top_logprobs=2), 400, ("needs logprobs",)),
    Case(
        "unknown field",
        "/v1/completions",
        _cmpl(logit_bias={"1": 5}),
        400,
        ("logit_bias", "not supported"),
        "logit_bias",
    ),
    Case("best_of", "/v1/completions", _cmpl(best_of=3), 400, ("best_of", "not supported")),
    Case("tools", "/v1/chat/completions", _chat(tools=[]), 400, ("tools", "not supported")),
    Case(
        "stream_options alone",
        "/v1/completions",
        _cmpl(stream_options={"include_usage": True}),
        400,
        ("stream: true",),
    ),
    Case(
        "stream_options unknown",
        "/v1/completions",
        _cmpl(stream=True, stream_options={"x": 1}),
        400,
        ("stream_options.x",),
    ),
    Case(
        "no messages", "/v1/chat/completions", {"model": GPT, "messages": []}, 400, ("messages",), "messages"
    ),
    Case(
        "tool role",
        "/v1/chat/completions",
        _chat(messages=[{"role": "tool", "content": "x"}]),
        400,
        ("role",),
        "messages[0].role",
    ),
    Case(
        "image part",
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        ("image_url", "text only"),
    ),
    Case(
        "unknown characters",
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "content": "\u2603"}]),
        400,
        ("vocabulary", "'\u2603'"),
    ),
    Case(
        "chat too long",
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "content": "a" * 500}]),
        400,
        ("context",),
    ),
    Case("no model", "/v1/completions", {"prompt": "x"}, 400, ("model",), "model"),
    Case("unknown model", "/v1/completions", {"model": "nope", "prompt": "x"}, 404, ("nope",)),
    Case(
        "not a text model",
        "/v1/completions",
        {"model": "mlp-digits", "prompt": "x"},
        400,
        ("classification",),
        "model",
    ),
    Case("not JSON", "/v1/completions", "{nope", 400, ("not valid JSON",), raw=True),
    Case("JSON list", "/v1/chat/completions", "[1, 2]", 400, ("JSON object",), raw=True),
    Case(
        "seq2seq sampling",
        "/v1/completions",
        {"model": S2S, "prompt": "May 5, 1999", "top_p": 0.5},
        400,
        ("top_p", "seq2seq"),
        "top_p",
    ),
    Case("seq2seq n", "/v1/completions", {"model": S2S, "prompt": "May 5, 1999", "n": 17}, 400, ("at most",)),
    Case("seq2seq chat", "/v1/chat/completions", {**_chat(), "model": S2S}, 400, ("language model",)),
    Case("v2 no text", f"/v2/models/{GPT}/generate", {"parameters": {}}, 422, ("text_input",)),
    Case(
        "v2 bad parameter",
        f"/v2/models/{GPT}/generate_stream",
        {"text_input": "x", "parameters": {"beam": 2}},
        422,
        ("parameters.beam", "not supported"),
    ),
    Case("v2 bad type", f"/v2/models/{GPT}/generate", {"text_input": ["x"]}, 422, ("text_input",)),
    Case(
        "v2 huge stop list",
        f"/v2/models/{GPT}/generate",
        {"text_input": "x", "parameters": {"stop": ["s"] * 100_000}},
        422,
        ("parameters.stop has 100000 strings", "at most 8"),
    ),
    Case(
        "v2 max_tokens",
        f"/v2/models/{GPT}/generate",
        {"text_input": "x", "parameters": {"max_tokens": 10**9}},
        422,
        ("parameters.max_tokens",),
    ),
    Case("v2 unknown model", "/v2/models/nope/generate", {"text_input": "x"}, 404, ("nope",)),
    Case("v2 bad version", f"/v2/models/{GPT}/versions/x/generate", {"text_input": "x"}, 422, ("version",)),
    Case(
        "v2 beams for a LM",
        f"/v2/models/{GPT}/generate",
        {"text_input": "x", "parameters": {"num_beams": 3}},
        422,
        ("num_beams",),
    ),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    repo = copy_models(tmp_path_factory.mktemp("hostile-openai"), (GPT, S2S, "mlp-digits"))
    with LiveServer(Settings(model_repository=repo, max_cached_tokens=MAX_CACHED)) as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_clearly(live, case: Case) -> None:
    with live.client() as http:
        started = time.perf_counter()
        if case.raw:
            r = http.post(case.path, content=case.body, headers={"content-type": "application/json"})
        else:
            r = http.post(case.path, json=case.body)
        assert time.perf_counter() - started < 2
        assert r.status_code == case.status, r.text
        assert r.headers["x-request-id"]
        error = r.json()["error"]
        if case.path.startswith("/v1/"):
            assert set(error) == {"message", "type", "param", "code"}
            message = error["message"]
            if case.param is not None:
                assert error["param"] == case.param, error
        else:
            assert isinstance(error, str)
            message = error
        for word in case.words:
            assert word in message, message
        assert not LEAKS.search(message), message
        assert http.get("/health/live", timeout=1).status_code == 200


def test_limits_exactly_at_the_bounds_are_served(live) -> None:
    with live.client() as http:
        edge = {
            "model": GPT,
            "prompt": ["a"] * 4,
            "n": 4,
            "max_tokens": 4,
            "stop": ["x" * 64] * 8,
            "logprobs": 5,
        }
        r = http.post("/v1/completions", json=edge)
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 16
        chat = {**_chat(logprobs=True, top_logprobs=20), "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=chat).status_code == 200


def test_unknown_characters_pass_with_map_unknown(live) -> None:
    body = _chat(messages=[{"role": "user", "content": "\u2603"}], map_unknown=True, max_tokens=2)
    with httpx.Client(base_url=live.url) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
