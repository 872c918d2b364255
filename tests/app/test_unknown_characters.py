"""One policy for text the model's vocabulary cannot represent, on every path that takes text (/predict
on text classifiers, seq2seq input and the language-model prompt on /generate), through the front
door's direct dispatch and behind FastAPI alike: refused with 422 naming the characters, unless the
request sends ``"map_unknown": true`` (then they become <unk>). V2 takes token ids, never strings."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.api.schemas import GenerateRequest, PredictRequest
from app.core.repository_format import ModelConfig, TextPreprocessing
from app.core.tokenizer import CharTokenizer
from app.settings import Settings
from tests.app.conftest import ZOO, LiveServer, copy_models

MODELS = ("lstm-order", "bert-scramble", "gpt-corpus", "seq2seq-dates")
OPT_IN = '(send "map_unknown": true to map them to <unk>)'


def refusal(where: str, shown: str) -> str:
    return f"{where}: characters outside the model's vocabulary: {shown} {OPT_IN}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_models(tmp_path_factory.mktemp("vocab"), MODELS)


@pytest.fixture(scope="module", params=["direct", "fastapi"])
def live(request, repo) -> Iterator[LiveServer]:
    settings = Settings(model_repository=repo, direct_dispatch=request.param == "direct")
    with LiveServer(settings) as server:
        yield server


@pytest.fixture()
def c(live) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


# (path, body, where the text is, the offending characters as the message shows them)
PATHS = [
    pytest.param("/predict", {"model": "lstm-order", "inputs": "zzzz"}, "inputs[0]", "'z'", id="predict"),
    pytest.param(
        "/predict",
        {"model": "lstm-order", "inputs": ["eAfBgChD", "dcba"]},
        "inputs[1]",
        "'d', 'c', 'b', 'a'",
        id="predict-second-item",
    ),
    pytest.param(
        "/predict", {"model": "bert-scramble", "inputs": ["snow \u2603"]}, "inputs[0]", "'\u2603'", id="bert"
    ),
    pytest.param("/generate", {"model": "seq2seq-dates", "input": "3 März 2021"}, "input", "'ä'", id="s2s"),
    pytest.param(
        "/generate",
        {"model": "gpt-corpus", "prompt": "snow \u2603 man", "max_new_tokens": 4},
        "prompt",
        "'\u2603'",
        id="lm",
    ),
    pytest.param(
        "/generate",
        {"model": "gpt-corpus", "prompt": "snow \u2603 man", "max_new_tokens": 4, "stream": True},
        "prompt",
        "'\u2603'",
        id="lm-stream",
    ),
]


@pytest.mark.parametrize(("path", "body", "where", "shown"), PATHS)
def test_refused_by_default_and_mapped_on_request(c, path, body, where, shown) -> None:
    refused = c.post(path, json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json() == {"error": refusal(where, shown)}
    assert c.post(path, json={**body, "map_unknown": False}).json() == refused.json()
    mapped = c.post(path, json={**body, "map_unknown": True})
    assert mapped.status_code == 200, mapped.text


def test_dcba_and_zzzz_are_both_refused_since_mapped_they_are_one_input(c) -> None:
    """lstm-order's vocabulary is ABCD (the markers) and e-j (the filler): "dcba" and "zzzz" hold no
    character of it, so mapped to <unk> they are the same input and get the same answer; in the
    vocabulary, different orders get different answers."""
    for text in ("dcba", "zzzz"):
        assert c.post("/predict", json={"model": "lstm-order", "inputs": text}).status_code == 422
    mapped = c.post("/predict", json={"model": "lstm-order", "inputs": ["dcba", "zzzz"], "map_unknown": True})
    first, second = mapped.json()["outputs"]
    assert first == second
    known = c.post("/predict", json={"model": "lstm-order", "inputs": ["eAfBgChD", "eBfAgDhC"]}).json()
    assert [o["label"] for o in known["outputs"]] == ["A<B,C<D", "B<A,D<C"]


def test_characters_are_named_once_in_order_visibly_and_capped(c) -> None:
    body = {"model": "gpt-corpus", "prompt": "a\tb\x00c\u200bd\t\x00e", "max_new_tokens": 2}
    message = c.post("/generate", json=body).json()["error"]
    assert message == refusal("prompt", r"'\t', '\x00', '\u200b'")
    greek = "".join(chr(0x3B1 + i) for i in range(25))
    message = c.post("/generate", json={**body, "prompt": f"The {greek} {greek}"}).json()["error"]
    assert message == refusal("prompt", ", ".join(repr(ch) for ch in greek[:20]) + " and 5 more")


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/predict", {"model": "lstm-order", "inputs": "z" * 41}, "inputs[0]: text is 41 tokens long"),
        ("/generate", {"model": "gpt-corpus", "prompt": "\u2603" * 128}, "the model's context is 128"),
        ("/generate", {"model": "seq2seq-dates", "input": "ä" * 100}, "input is 100 characters"),
    ],
)
def test_length_is_checked_before_characters(c, path, body, fragment) -> None:
    response = c.post(path, json=body)
    assert response.status_code == 422 and fragment in response.json()["error"]


def test_v2_takes_token_ids_not_strings(c) -> None:
    """No V2 path tokenizes: a text model's inputs are INT64 ids (range-checked), strings are refused."""
    for model, name in (("lstm-order", "tokens"), ("bert-scramble", "input_ids")):
        tensor = {"name": name, "shape": [1, 1], "datatype": "BYTES", "data": ["dcba"]}
        response = c.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})
        assert response.status_code == 422
        assert response.json()["error"] == f"input {name!r}: datatype 'BYTES'; the model takes INT64"


# ------------------------------------------------------------------------------------- the tokenizer


def _config(model: str) -> ModelConfig:
    return ModelConfig.model_validate_json((ZOO / model / "config.json").read_text())


def _tokenizer(config: ModelConfig) -> CharTokenizer:
    return CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())


def test_unknown_characters_and_training_encode_unchanged() -> None:
    tokenizer = CharTokenizer(chars=list("ab"))
    assert tokenizer.unknown_characters("xaybx\t") == ["x", "y", "\t"]
    assert tokenizer.unknown_characters("abba") == []
    # Training's encode still maps to <unk> (its data may rely on that); only serving refuses.
    assert tokenizer.encode("axb") == [5, tokenizer.unk_id, 6]


def test_the_documented_texts_are_in_their_models_vocabularies() -> None:
    """The README's prompts and every OpenAPI example that does not opt in need no <unk>."""
    gpt = _tokenizer(_config("gpt-corpus"))
    for prompt in ("The ", "If ", "If the "):
        assert gpt.unknown_characters(prompt) == []
    examples = [
        *PredictRequest.model_json_schema()["examples"],
        *GenerateRequest.model_json_schema()["examples"],
    ]
    checked = 0
    for example in examples:
        config = _config(example["model"])
        if example.get("map_unknown") or not isinstance(config.preprocessing, TextPreprocessing):
            continue
        inputs = example.get("inputs", [])
        texts = [example[key] for key in ("prompt", "input") if key in example]
        texts += [inputs] if isinstance(inputs, str) else inputs
        for text in texts:
            assert _tokenizer(config).unknown_characters(text) == [], example
        checked += len(texts)
    assert checked == 5  # lstm-order's two texts, two prompts, one seq2seq input
