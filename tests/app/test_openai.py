"""The OpenAI-compatible API (/v1) with the official ``openai`` client (sync and async) against a real
server, and Triton's generate extension (/v2/.../generate[_stream]) over plain HTTP.

Ground truth for greedy text and log-probabilities is the ONNX step graph itself, decoded one
sequence at a time (app.core.kv_cache.generate, or a KVCache loop over an onnxruntime session).
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import openai
import pytest

from app.core.kv_cache import KVCache, generate
from app.core.repository_format import ChatTemplate, ModelConfig
from app.core.sampling import SamplingParams, log_softmax
from app.core.tokenizer import CharTokenizer
from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, reference_session

MODELS = ("gpt-corpus", "seq2seq-dates")
GPT = "gpt-corpus"
S2S = "seq2seq-dates"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_models(tmp_path_factory.mktemp("openai"), MODELS)


@pytest.fixture(scope="module")
def live(repo):
    with LiveServer(Settings(model_repository=repo, max_new_tokens=512)) as server:
        yield server


@pytest.fixture()
def client(live):
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def reference(repo):
    """The model's config, tokenizer and a plain onnxruntime session of its step graph."""
    config = ModelConfig.model_validate_json((repo / GPT / "config.json").read_text())
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    session = reference_session(repo, GPT, config.graphs["decoder_step"].file)
    return config, tokenizer, session


def _alone(reference, prompt: str, max_new: int, **params) -> str:
    config, tokenizer, session = reference
    out = generate(
        session,
        config.graphs["decoder_step"],
        tokenizer.encode(prompt),
        max_new_tokens=max_new,
        params=SamplingParams(temperature=0, **params),
        seed=0,
        block_size=config.preprocessing.max_length,
        eos_id=tokenizer.eos_id,
        slide=True,
    )
    return tokenizer.decode(out.token_ids)


def _greedy_logprobs(reference, prompt: str, steps: int) -> list[np.ndarray]:
    """log-softmax of the step graph's logits at each greedy step (within the context)."""
    config, tokenizer, session = reference
    cache = KVCache(config.graphs["decoder_step"])
    ids = tokenizer.encode(prompt)
    logits, *entries = session.run(cache.output_names, cache.empty_feeds(np.array([ids])))
    cache.add(entries, [len(ids)])
    out = []
    for _ in range(steps):
        row = log_softmax(logits[:, -1])[0]
        out.append(row)
        token = int(row.argmax())
        logits, *entries = session.run(cache.output_names, cache.feeds(np.array([[token]])))
        cache.append(entries)
    return out


# ------------------------------------------------------------------------------------------ models


def test_model_listing(client) -> None:
    models = client.models.list()
    assert sorted(m.id for m in models.data) == sorted(MODELS)
    assert all(m.object == "model" and m.owned_by == "deepserve" and m.created > 0 for m in models.data)
    assert client.models.retrieve(GPT).id == GPT
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


# ------------------------------------------------------------------------------------------ completions


def test_greedy_completion_is_the_graphs_and_usage_counts_the_tokens(client, reference) -> None:
    r = client.completions.create(model=GPT, prompt="The ", max_tokens=150, temperature=0)
    assert r.object == "text_completion" and r.model == GPT and r.system_fingerprint == f"{GPT}-v1"
    assert r.id.startswith("cmpl-") and r.created > 0
    (choice,) = r.choices
    assert choice.text == _alone(reference, "The ", 150)  # past the context: the window slides
    assert choice.finish_reason == "length" and choice.index == 0 and choice.logprobs is None
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 150
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_text_equals_unstreamed_for_the_same_seed(client) -> None:
    body = {"model": GPT, "prompt": "If the ", "max_tokens": 60, "temperature": 0.9, "seed": 5}
    plain = client.completions.create(**body)
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert reasons == [plain.choices[0].finish_reason] == ["length"]
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage anywhere
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)


def test_stop_is_honoured_and_never_returned_streamed_or_not(client) -> None:
    greedy = {"model": GPT, "prompt": "The ", "max_tokens": 80, "temperature": 0}
    text = client.completions.create(**greedy).choices[0].text
    stop = text[20:24]  # four characters: a stream must hold back what could begin them
    stopped = client.completions.create(**greedy, stop=stop).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == text[: text.index(stop)]
    chunks = list(client.completions.create(**greedy, stop=[stop, "\x7f"], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == stopped.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_n_choices_use_seed_plus_index(client) -> None:
    body = {"model": GPT, "prompt": "The ", "max_tokens": 40, "temperature": 1.0, "seed": 3}
    three = client.completions.create(**body, n=3)
    texts = [c.text for c in sorted(three.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3
    for j, text in enumerate(texts):  # choice j is what seed + j gives alone
        assert client.completions.create(**{**body, "seed": 3 + j}).choices[0].text == text
    assert three.usage.completion_tokens == 120 and three.usage.prompt_tokens == 4
    greedy = client.completions.create(**{**body, "temperature": 0}, n=3)
    assert len({c.text for c in greedy.choices}) == 1
    # a list of prompts: n choices each, prompt i's at indices i*n .. i*n+n-1
    listed = client.completions.create(**{**body, "temperature": 0, "prompt": ["The ", "A "]}, n=2)
    assert [c.index for c in listed.choices] == [0, 1, 2, 3]
    assert listed.choices[0].text == listed.choices[1].text == greedy.choices[0].text
    assert listed.usage.prompt_tokens == 4 + 2


def test_include_usage_adds_exactly_one_chunk(client) -> None:
    body = {"model": GPT, "prompt": "The ", "max_tokens": 20, "temperature": 0.8, "seed": 1, "n": 2}
    chunks = list(client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    last, rest = chunks[-1], chunks[:-1]
    assert last.choices == [] and last.usage.completion_tokens == 40
    assert last.usage.total_tokens == last.usage.prompt_tokens + 40
    assert all(c.choices and c.usage is None for c in rest)
    for index in (0, 1):
        mine = [c.choices[0] for c in rest if c.choices[0].index == index]
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
        assert len("".join(c.text for c in mine)) == 20  # every token is one character


def test_echo_returns_the_prompt_first(client) -> None:
    body = {"model": GPT, "prompt": "The ", "max_tokens": 10, "temperature": 0}
    plain = client.completions.create(**body).choices[0].text
    assert client.completions.create(**body, echo=True).choices[0].text == "The " + plain
    streamed = list(client.completions.create(**body, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "The " + plain


def test_completion_logprobs_are_the_models_log_softmax(client, reference) -> None:
    steps = 12
    r = client.completions.create(model=GPT, prompt="The ", max_tokens=steps, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    expected = _greedy_logprobs(reference, "The ", steps)
    _, tokenizer, _ = reference
    strings = [*tokenizer.specials, *tokenizer.chars]
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == list(range(steps))
    for position, row in enumerate(expected):
        token = int(row.argmax())
        assert lp.tokens[position] == strings[token]
        assert lp.token_logprobs[position] == pytest.approx(row[token], abs=1e-4)
        top = np.argsort(-row)[:3]
        assert list(lp.top_logprobs[position]) == [strings[i] for i in top]
        assert list(lp.top_logprobs[position].values()) == pytest.approx(row[top].tolist(), abs=1e-4)
    streamed = list(
        client.completions.create(
            model=GPT, prompt="The ", max_tokens=steps, temperature=0, logprobs=3, stream=True
        )
    )
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_penalties_are_openais_additive_ones(client, reference) -> None:
    body = {"model": GPT, "prompt": "The ", "max_tokens": 60, "temperature": 0}
    plain = client.completions.create(**body).choices[0].text
    penalised = client.completions.create(**body, frequency_penalty=1.5, presence_penalty=0.5).choices[0].text
    assert penalised != plain
    assert penalised == _alone(reference, "The ", 60, frequency_penalty=1.5, presence_penalty=0.5)


# ------------------------------------------------------------------------------------------ chat


def test_chat_renders_the_default_template(client) -> None:
    messages = [{"role": "system", "content": "Be short."}, {"role": "user", "content": "What is a list?"}]
    prompt = ChatTemplate().render([(m["role"], m["content"]) for m in messages])
    assert prompt == "system: Be short.\nuser: What is a list?\nassistant: "
    chat = client.chat.completions.create(model=GPT, messages=messages, max_tokens=40, temperature=0)
    plain = client.completions.create(model=GPT, prompt=prompt, max_tokens=40, temperature=0)
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    (choice,) = chat.choices
    assert choice.message.role == "assistant" and choice.message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == len(prompt) and chat.usage.completion_tokens == 40
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "a list?"}],
        }
    ]
    same = client.chat.completions.create(
        model=GPT, messages=[messages[0], *parts], max_tokens=40, temperature=0
    )
    assert same.choices[0].message.content == choice.message.content


def test_chat_stream_role_first_finish_once_and_usage(client) -> None:
    body = {"model": GPT, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 30}
    body |= {"temperature": 0.7, "seed": 9, "n": 3}
    plain = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c for c in chunks if not c.choices] == [chunks[-1]]
    for choice in plain.choices:
        mine = [c.choices[0] for c in chunks[:-1] if c.choices[0].index == choice.index]
        assert mine[0].delta.role == "assistant" and all(c.delta.role is None for c in mine[1:])
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert [c.finish_reason for c in mine if c.finish_reason] == [choice.finish_reason]
    assert len({c.message.content for c in plain.choices}) == 3


def test_chat_logprobs(client, reference) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    prompt = ChatTemplate().render([("user", "Hi")])
    r = client.chat.completions.create(
        model=GPT, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    expected = _greedy_logprobs(reference, prompt, 8)
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for item, row in zip(content, expected, strict=True):
        assert item.logprob == pytest.approx(row.max(), abs=1e-4)
        assert item.bytes == list(item.token.encode())
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(
            np.sort(row)[::-1][:2].tolist(), abs=1e-4
        )


def test_async_client_concurrent_streams_equal_plain(live) -> None:
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0) as c:

            async def one(seed: int) -> tuple[str, str]:
                body = {"model": GPT, "prompt": "The ", "max_tokens": 50, "temperature": 0.9, "seed": seed}
                plain = (await c.completions.create(**body)).choices[0].text
                streamed = "".join(
                    [ch.choices[0].text async for ch in await c.completions.create(**body, stream=True)]
                )
                return plain, streamed

            results = await asyncio.gather(*(one(s) for s in range(6)))
            assert all(plain == streamed for plain, streamed in results)
            assert len({plain for plain, _ in results}) > 1

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ seq2seq


def test_ignore_eos_generates_past_the_end_of_text(repo) -> None:
    """Seed 0 from "The " samples the end-of-text token after ~3,700 characters (found by sampling
    this model); ignore_eos goes on to max_tokens. A seq2seq model refuses it (it would not apply)."""
    with LiveServer(Settings(model_repository=repo, max_new_tokens=6000)) as server:
        c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        body = {"model": GPT, "prompt": "The ", "max_tokens": 6000, "seed": 0}
        ended = c.completions.create(**body).choices[0]
        assert ended.finish_reason == "stop" and len(ended.text) < 6000
        past = c.completions.create(**body, extra_body={"ignore_eos": True})
        assert past.choices[0].finish_reason == "length" and past.usage.completion_tokens == 6000
        assert past.choices[0].text.startswith(ended.text)  # the same walk, on past the token
        with pytest.raises(openai.BadRequestError, match="ignore_eos"):
            c.completions.create(model=S2S, prompt="3rd of March 2021", extra_body={"ignore_eos": True})


def test_seq2seq_completions_beams_are_choices(client, live) -> None:
    with live.client() as http:
        beams = http.post(
            "/generate", json={"model": S2S, "input": "3rd of March 2021", "num_beams": 3}
        ).json()
        greedy = http.post("/generate", json={"model": S2S, "input": "3rd of March 2021"}).json()
    three = client.completions.create(model=S2S, prompt="3rd of March 2021", n=3)
    assert [c.text for c in three.choices] == [b["text"] for b in beams["beams"]]
    assert all(c.finish_reason == "stop" for c in three.choices)
    one = client.completions.create(model=S2S, prompt=["3rd of March 2021", "May 5, 1999"])
    assert one.choices[0].text == greedy["text"] and len(one.choices) == 2
    assert one.usage.total_tokens == one.usage.prompt_tokens + one.usage.completion_tokens
    chunks = list(client.completions.create(model=S2S, prompt="3rd of March 2021", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == greedy["text"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=S2S, prompt="3rd of March 2021", temperature=0.7)
    with pytest.raises(openai.BadRequestError, match="language model"):
        client.chat.completions.create(model=S2S, messages=[{"role": "user", "content": "x"}])


# ------------------------------------------------------------------------------------------ errors


def test_errors_in_openais_shape(client, live) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model=GPT, prompt="x", logit_bias={"5": 1})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=GPT, prompt="x", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model=GPT, prompt="snow \u2603")
    # 16 choices x 512 tokens x 21 log-probabilities would be ~0.25 s of formatting on the event loop.
    with pytest.raises(openai.BadRequestError, match="log-probabilities") as refused:
        client.chat.completions.create(
            model=GPT,
            messages=[{"role": "user", "content": "x"}],
            n=16,
            max_tokens=512,
            logprobs=True,
            top_logprobs=20,
        )
    assert refused.value.param == "logprobs"
    with live.client() as http:
        r = http.post("/v1/chat/completions", json={"model": GPT, "messages": []})
        assert r.status_code == 400
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == "messages"
        r = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert http.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"


def test_request_id_on_every_answer(live) -> None:
    with live.client() as http:
        for method, path in (("GET", "/health/live"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
            r = http.request(method, path, headers={"X-Request-Id": "abc-123"}, json={})
            assert r.headers["x-request-id"] == "abc-123"
            fresh = http.request(method, path, headers={"X-Request-Id": "x" * 300}, json={})
            other = http.request(method, path, json={})
            assert fresh.headers["x-request-id"] not in ("x" * 300, other.headers["x-request-id"])
        r = http.post("/generate", json={"model": GPT, "prompt": "The ", "max_new_tokens": 2, "stream": True})
        assert len(r.headers["x-request-id"]) > 8 and len(r.headers.get_list("x-request-id")) == 1


def test_disconnect_cancels_the_choices(live, client) -> None:
    generator = live.app.state.registry.get(GPT).generator
    stream = client.completions.create(model=GPT, prompt="The ", max_tokens=500, n=3, stream=True)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    deadline = time.monotonic() + 5
    while generator.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert generator.active == 0


def test_overload_raises_rate_limit_after_retries_and_api_key(repo) -> None:
    settings = Settings(
        model_repository=repo,
        max_active_sequences=1,
        max_queued_sequences=1,
        admission_wait_s=0,
        admission_hold_s=0,
        api_key="sekret",
        max_new_tokens=100_000,  # the held streams outlast the test (closing them cancels them)
    )
    with LiveServer(settings) as server:
        url = f"{server.url}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        c = openai.OpenAI(base_url=url, api_key="sekret", max_retries=1)
        # ignore_eos: the model ends a text at its end-of-text token now and then (within 1-2 s of sampling
        # here), which would free a held slot before the test is done with it.
        body = {
            "model": GPT,
            "prompt": "The ",
            "max_tokens": 100_000,
            "stream": True,
            "extra_body": {"ignore_eos": True},
        }
        held = [c.completions.create(**body) for _ in range(2)]  # the gate's 2 slots
        gate, generator = server.app.state.registry.gate(GPT), server.app.state.registry.get(GPT).generator

        def state() -> str:
            loop = f"{generator.active} active, {generator.queued} queued"
            return f"gate: {gate.held} held; decode loop: {loop}"

        try:
            deadline = time.monotonic() + 10
            while (generator.active, generator.queued) != (1, 1) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert gate.held == 2 and (generator.active, generator.queued) == (1, 1), state()
            started = time.monotonic()
            try:
                c.completions.create(model=GPT, prompt="x", max_tokens=1)
            except openai.RateLimitError as exc:
                refused = exc
            else:
                pytest.fail(f"the retry was admitted: {state()}")
            assert refused.response.headers["retry-after"] == "1"
            assert time.monotonic() - started >= 0.9  # the client waited Retry-After, then retried
            assert refused.body["code"] == "rate_limit_exceeded"
        finally:
            for stream in held:
                stream.close()


# ------------------------------------------------------------------------------------------ V2 generate


def test_v2_generate_and_stream(live, reference) -> None:
    body = {"text_input": "The ", "parameters": {"max_tokens": 30, "temperature": 0}}
    with live.client() as http:
        r = http.post(f"/v2/models/{GPT}/generate", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out == {
            "model_name": GPT,
            "model_version": "1",
            "text_output": _alone(reference, "The ", 30),
            "finish_reason": "length",
        }
        assert http.post(f"/v2/models/{GPT}/versions/1/generate", json=body).json() == out
        with http.stream("POST", f"/v2/models/{GPT}/generate_stream", json=body) as s:
            assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
        assert "".join(e["text_output"] for e in events) == out["text_output"]
        assert [e.get("finish_reason") for e in events if e.get("finish_reason")] == ["length"]
        s2s = http.post(f"/v2/models/{S2S}/generate", json={"text_input": "3rd of March 2021"}).json()
        assert s2s["text_output"] == "2021-03-03"
        for path, payload, status, word in (
            ("/v2/models/nope/generate", body, 404, "nope"),
            (f"/v2/models/{GPT}/generate", {"parameters": {}}, 422, "text_input"),
            (f"/v2/models/{GPT}/generate", {"text_input": "x", "parameters": {"beam": 2}}, 422, "beam"),
            (f"/v2/models/{GPT}/versions/7/generate_stream", body, 404, "version"),
        ):
            r = http.post(path, json=payload)
            assert r.status_code == status and word in r.json()["error"], r.text


def test_fastapi_path_and_a_models_own_chat_template(tmp_path) -> None:
    """SERVE_DIRECT_DISPATCH=false: the same handlers behind FastAPI's routes; and a chat_template in
    config.json (the optional repository field) replaces the default."""
    repo = copy_models(tmp_path / "models", (GPT,))
    config_path = repo / GPT / "config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = {"message": "<{role}> {content}\n", "assistant_prefix": "> "}
    config_path.write_text(json.dumps(config))
    with LiveServer(Settings(model_repository=repo, direct_dispatch=False)) as server:
        c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        body = {
            "model": GPT,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 20,
            "temperature": 0,
        }
        chat = c.chat.completions.create(**body)
        same = c.completions.create(model=GPT, prompt="<user> Hi\n> ", max_tokens=20, temperature=0)
        assert chat.choices[0].message.content == same.choices[0].text
        assert chat.usage.prompt_tokens == len("<user> Hi\n> ")
        streamed = "".join(
            ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**body, stream=True)
        )
        assert streamed == same.choices[0].text
        with pytest.raises(openai.BadRequestError, match="n="):
            c.completions.create(model=GPT, prompt="x", n=99)
        with server.client() as http:
            r = http.post(
                f"/v2/models/{GPT}/generate", json={"text_input": "The ", "parameters": {"max_tokens": 5}}
            )
            assert r.status_code == 200 and r.headers["x-request-id"]
            r = http.post("/v1/completions", json={"model": GPT, "prompt": "x", "tools": []})
            assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
