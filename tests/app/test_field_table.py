"""The one table of which request field applies to which kind of model (app/kinds.py): it covers both
request bodies, validation follows it on a real server (every field of another kind is refused on
every kind, and accepted on the kinds it applies to), the OpenAPI descriptions say it, and the README
shows it as :func:`app.kinds.markdown_table` renders it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.schemas import GenerateRequest, PredictRequest
from app.kinds import (
    ENDPOINT_KINDS,
    FIELD_KINDS,
    GENERATE,
    PREDICT,
    Kind,
    applies_to,
    applies_to_every_kind,
    generate_kind,
    markdown_table,
    predict_kind,
)
from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models

README = Path(__file__).resolve().parents[2] / "README.md"
SCHEMAS = {PREDICT: PredictRequest, GENERATE: GenerateRequest}

# A request each kind of model answers with 200, on the endpoint that serves that kind.
BASES: dict[Kind, dict] = {
    Kind.CLASSIFIER: {"model": "mlp-digits", "inputs": [[0.0] * 64]},
    Kind.TEXT_CLASSIFIER: {"model": "lstm-order", "inputs": ["eAfBgChD"]},
    Kind.AUTOENCODER: {"model": "autoencoder-digits", "inputs": [[[[0.0] * 28] * 28]]},
    Kind.VAE: {"model": "vae-digits", "inputs": [[[[0.0] * 28] * 28]]},
    Kind.LANGUAGE_MODEL: {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 2},
    Kind.SEQ2SEQ: {"model": "seq2seq-dates", "input": "3 May 2020", "max_new_tokens": 12},
    Kind.IMAGE_GENERATOR: {"model": "dcgan-digits", "num_samples": 1},
    Kind.CONDITIONAL_IMAGE_GENERATOR: {"model": "cgan-digits", "num_samples": 1},
    Kind.IMAGE_TRANSLATOR: {
        "model": "cyclegan-strokes",
        "inputs": [[[[0.0] * 28] * 28]],
        "direction": "thick_to_thin",
    },
    Kind.DUAL_ENCODER: {"model": "clip-shapes", "inputs": [[[[0.0] * 32] * 32] * 3]},
    # With a class: guidance_scale applies to requests that have one.
    Kind.DIFFUSION: {"model": "diffusion-digits", "num_samples": 1, "class": 1, "steps": 2},
}
# A value of each field that asks for something (not its default, null, false or []), valid by the
# schema and for the kinds the field applies to (starting from their BASES request).
VALUES: dict[str, dict] = {
    PREDICT: {
        "top_k": 1,
        "return_latent": True,
        "return_reconstruction": True,
        "direction": "thin_to_thick",
        "format": "png",
        "map_unknown": True,
        "labels": ["a photo of a circle", "a photo of a star"],
        "query": "a photo of a circle",
        "return_embedding": True,
    },
    GENERATE: {
        "prompt": "If ",
        "max_new_tokens": 3,
        "temperature": 0.5,
        "top_k": 3,
        "top_p": 0.9,
        "repetition_penalty": 1.2,
        "seed": 3,
        "stop": ["\n\n"],
        "stream": True,
        "input": "5 May 1999",
        "num_beams": 2,
        "num_samples": 2,
        "latent": [[0.0] * 32],
        "interpolate": {"from": 1, "to": 2, "steps": 2},
        "class": 3,
        "steps": 3,
        "guidance_scale": 1.5,
        "format": "array",
        "map_unknown": True,
    },
}


def _cases(applies: bool) -> list:
    """(endpoint, kind, field) for every field of the table that does (not) apply to each kind."""
    return [
        pytest.param(endpoint, kind, field, id=f"{endpoint[1:]}-{kind.value.replace(' ', '_')}-{field}")
        for endpoint, fields in FIELD_KINDS.items()
        for kind in ENDPOINT_KINDS[endpoint]
        for field, kinds in fields.items()
        if (kind in kinds) is applies and not applies_to_every_kind(endpoint, field)
    ]


@pytest.fixture(scope="module")
def kinds_server(tmp_path_factory) -> Iterator[LiveServer]:
    names = sorted({body["model"] for body in BASES.values()})
    repo = copy_models(tmp_path_factory.mktemp("kinds"), names)
    with LiveServer(Settings(model_repository=repo)) as live:
        yield live


@pytest.fixture(scope="module")
def kc(kinds_server) -> Iterator[httpx.Client]:
    with kinds_server.client() as c:
        yield c


def _endpoint_of(kind: Kind) -> str:
    return next(endpoint for endpoint, kinds in ENDPOINT_KINDS.items() if kind in kinds)


def test_the_table_lists_every_field_of_both_bodies() -> None:
    for endpoint, schema in SCHEMAS.items():
        # By the names clients write (``class``, held by the attribute ``class_``).
        written = [info.alias or name for name, info in schema.model_fields.items()]
        assert list(FIELD_KINDS[endpoint]) == written, endpoint
        for kinds in FIELD_KINDS[endpoint].values():
            assert kinds and set(kinds) <= set(ENDPOINT_KINDS[endpoint])
        # Every field that some kind refuses has a value to try it with here.
        specific = {f for f in FIELD_KINDS[endpoint] if not applies_to_every_kind(endpoint, f)}
        assert specific == set(VALUES[endpoint]), endpoint


def test_the_bases_are_of_their_kind(kinds_server) -> None:
    registry = kinds_server.app.state.registry
    for kind, body in BASES.items():
        which = predict_kind if _endpoint_of(kind) == PREDICT else generate_kind
        assert which(registry.get(body["model"])) is kind


@pytest.mark.parametrize(("endpoint", "kind", "field"), _cases(applies=False))
def test_a_field_of_another_kind_is_refused(kc, endpoint, kind, field) -> None:
    assert _endpoint_of(kind) == endpoint
    body = {**BASES[kind], field: VALUES[endpoint][field]}
    response = kc.post(endpoint, json=body)
    assert response.status_code == 422, response.text
    expected = (
        f"{field} (for {applies_to(endpoint, field)}) does not apply to model {body['model']!r}, "
        f"{kind.with_article}"
    )
    assert response.json()["error"] == expected


@pytest.mark.parametrize(("endpoint", "kind", "field"), _cases(applies=True))
def test_a_field_is_accepted_by_the_kinds_it_applies_to(kc, endpoint, kind, field) -> None:
    base = BASES[kind]
    if field in ("latent", "interpolate"):
        base = {k: v for k, v in base.items() if k != "num_samples"}  # one of the three
    if kind is Kind.DUAL_ENCODER and field == "top_k":
        base = {**base, "labels": VALUES[PREDICT]["labels"]}  # top_k ranks the zero-shot labels
    response = kc.post(endpoint, json={**base, field: VALUES[endpoint][field]})
    assert response.status_code == 200, response.text


def test_every_refused_field_is_named_at_once(kc) -> None:
    body = {**BASES[Kind.LANGUAGE_MODEL], "num_beams": 2, "num_samples": 2}
    response = kc.post(GENERATE, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "num_beams (for seq2seq models), num_samples (for image generators, class-conditional image "
        "generators, diffusion models) do not apply to model 'gpt-corpus', a language model"
    )


def test_defaults_null_false_and_empty_lists_ask_for_nothing(kc) -> None:
    quiet = {
        GENERATE: {
            "prompt": None,
            "stream": False,
            "stop": [],
            "repetition_penalty": 1.0,
            "format": "png",
            "map_unknown": False,
            "num_beams": None,
        },
        PREDICT: {
            "top_k": None,
            "return_latent": False,
            "format": "array",
            "map_unknown": False,
            "labels": [],
            "query": None,
            "return_embedding": False,
        },
    }
    for kind, base in BASES.items():
        endpoint = _endpoint_of(kind)
        fields = {f: v for f, v in quiet[endpoint].items() if f not in base}
        response = kc.post(endpoint, json={**base, **fields})
        assert response.status_code == 200, (kind, response.text)


def test_openapi_descriptions_say_whom_each_field_applies_to(kc) -> None:
    spec = kc.get("/openapi.json").json()
    for endpoint, fields in FIELD_KINDS.items():
        schema = spec["paths"][endpoint]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for field in fields:
            description = schema["properties"][field].get("description", "")
            if applies_to_every_kind(endpoint, field):
                assert "Applies to" not in description, (endpoint, field)
            else:
                assert description.endswith(f"Applies to {applies_to(endpoint, field)}."), (endpoint, field)
    # The image format's default is said on both endpoints (arrays on /predict, PNG on /generate).
    predict = spec["paths"][PREDICT]["post"]["requestBody"]["content"]["application/json"]["schema"]
    generate = spec["paths"][GENERATE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert predict["properties"]["format"]["default"] == "array"
    assert '("array", the default)' in predict["properties"]["format"]["description"]
    assert generate["properties"]["format"]["default"] == "png"
    assert '("png", the default)' in generate["properties"]["format"]["description"]


def test_the_readme_shows_the_table() -> None:
    """The README carries the table exactly as rendered (paste ``python -c "from app.kinds import
    markdown_table; print(markdown_table(), end='')"``)."""
    assert markdown_table() in README.read_text()
