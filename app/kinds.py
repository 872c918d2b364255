"""The kinds of model the JSON endpoints serve, and the one table of which request field applies to
which kind.

Both request bodies are shared by every kind of model an endpoint serves, so a field of another kind
could be silently ignored; instead the data plane refuses it (:func:`refuse_other_kinds_fields`),
and the OpenAPI descriptions (app/api/schemas.py) and the README's field table
(:func:`markdown_table`) are generated from the same table, so the three cannot drift apart.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel

from app.core.repository_format import TextPreprocessing
from app.errors import InvalidInput

if TYPE_CHECKING:
    from app.registry import ModelVersion

# The input of a class-conditional generator's graph that takes the class ids (int64, one per row).
CLASS_INPUT = "class"


class Kind(StrEnum):
    """What a model is at an endpoint (a VAE is a VAE at /predict and an image generator at /generate)."""

    CLASSIFIER = "classifier"
    TEXT_CLASSIFIER = "text classifier"
    AUTOENCODER = "autoencoder"
    VAE = "VAE"
    LANGUAGE_MODEL = "language model"
    SEQ2SEQ = "seq2seq model"
    IMAGE_GENERATOR = "image generator"
    CONDITIONAL_IMAGE_GENERATOR = "class-conditional image generator"  # a conditional GAN's generator
    IMAGE_TRANSLATOR = "image translator"  # image in, image out, one graph per direction (CycleGAN)
    DUAL_ENCODER = "dual encoder"  # CLIP: image and text embeddings, zero-shot, retrieval
    DIFFUSION = "diffusion model"  # a denoiser graph; the server runs the sampling walk

    @property
    def plural(self) -> str:
        return f"{self.value}s"

    @property
    def with_article(self) -> str:
        return f"{'an' if self.value[0] in 'aeiou' else 'a'} {self.value}"


PREDICT, GENERATE = "/predict", "/generate"

ENDPOINT_KINDS: dict[str, tuple[Kind, ...]] = {
    PREDICT: (
        Kind.CLASSIFIER,
        Kind.TEXT_CLASSIFIER,
        Kind.AUTOENCODER,
        Kind.VAE,
        Kind.IMAGE_TRANSLATOR,
        Kind.DUAL_ENCODER,
    ),
    GENERATE: (
        Kind.LANGUAGE_MODEL,
        Kind.SEQ2SEQ,
        Kind.IMAGE_GENERATOR,
        Kind.CONDITIONAL_IMAGE_GENERATOR,
        Kind.DIFFUSION,
    ),
}

_CLASSIFIERS = (Kind.CLASSIFIER, Kind.TEXT_CLASSIFIER)
_IMAGES = (Kind.IMAGE_GENERATOR, Kind.CONDITIONAL_IMAGE_GENERATOR)
_TEXT = (Kind.LANGUAGE_MODEL, Kind.SEQ2SEQ)

# endpoint -> request field (as clients write it: ``class``, not its attribute ``class_``) -> the kinds
# of model it applies to. Every field of the endpoint's request body is listed
# (tests/app/test_field_table.py checks both ways), each as the code uses it: the search of a seq2seq
# model honours max_new_tokens, and image generators draw their latents from seed.
FIELD_KINDS: dict[str, dict[str, tuple[Kind, ...]]] = {
    PREDICT: {
        "model": ENDPOINT_KINDS[PREDICT],
        "version": ENDPOINT_KINDS[PREDICT],
        "inputs": ENDPOINT_KINDS[PREDICT],
        "top_k": (*_CLASSIFIERS, Kind.DUAL_ENCODER),  # a dual encoder's zero-shot labels or ranking
        "return_latent": (Kind.AUTOENCODER,),
        "return_reconstruction": (Kind.VAE,),
        "direction": (Kind.IMAGE_TRANSLATOR,),
        "format": (Kind.AUTOENCODER, Kind.VAE, Kind.IMAGE_TRANSLATOR),  # the kinds with image outputs
        "map_unknown": (Kind.TEXT_CLASSIFIER, Kind.DUAL_ENCODER),
        "labels": (Kind.DUAL_ENCODER,),
        "query": (Kind.DUAL_ENCODER,),
        "return_embedding": (Kind.DUAL_ENCODER,),
    },
    GENERATE: {
        "model": ENDPOINT_KINDS[GENERATE],
        "version": ENDPOINT_KINDS[GENERATE],
        "prompt": (Kind.LANGUAGE_MODEL,),
        "max_new_tokens": _TEXT,
        "temperature": (Kind.LANGUAGE_MODEL,),
        "top_k": (Kind.LANGUAGE_MODEL,),
        "top_p": (Kind.LANGUAGE_MODEL,),
        "repetition_penalty": (Kind.LANGUAGE_MODEL,),
        "seed": (Kind.LANGUAGE_MODEL, *_IMAGES, Kind.DIFFUSION),
        "stop": (Kind.LANGUAGE_MODEL,),
        "stream": (Kind.LANGUAGE_MODEL, Kind.DIFFUSION),
        "input": (Kind.SEQ2SEQ,),
        "num_beams": (Kind.SEQ2SEQ,),
        "num_samples": (*_IMAGES, Kind.DIFFUSION),
        "latent": _IMAGES,
        "interpolate": _IMAGES,
        "class": (Kind.CONDITIONAL_IMAGE_GENERATOR, Kind.DIFFUSION),
        "steps": (Kind.DIFFUSION,),
        "guidance_scale": (Kind.DIFFUSION,),
        "format": (*_IMAGES, Kind.DIFFUSION),
        "map_unknown": _TEXT,
    },
}


def applies_to_every_kind(endpoint: str, field: str) -> bool:
    return set(FIELD_KINDS[endpoint][field]) == set(ENDPOINT_KINDS[endpoint])


def applies_to(endpoint: str, field: str) -> str:
    """Whom ``field`` of ``endpoint``'s body applies to, in words: "every model" or the kinds."""
    if applies_to_every_kind(endpoint, field):
        return "every model"
    return ", ".join(kind.plural for kind in FIELD_KINDS[endpoint][field])


def markdown_table() -> str:
    """The table as markdown (endpoint | field | applies to), as the README shows it."""
    lines = ["| endpoint | field | applies to |", "|---|---|---|"]
    for endpoint, fields in FIELD_KINDS.items():
        lines += [f"| `{endpoint}` | `{field}` | {applies_to(endpoint, field)} |" for field in fields]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ kinds


def predict_kind(mv: ModelVersion) -> Kind:
    """The model's kind at POST /predict; 422 for a model that only generates."""
    config = mv.config
    if config.task == "classification":
        text = isinstance(config.preprocessing, TextPreprocessing)
        return Kind.TEXT_CLASSIFIER if text else Kind.CLASSIFIER
    if config.task == "reconstruction":
        outputs = {spec.name for spec in config.graphs[mv.primary_role].outputs}
        return Kind.VAE if "mu" in outputs else Kind.AUTOENCODER  # a VAE's encoder gives the posterior
    if config.task == "image_translation":
        return Kind.IMAGE_TRANSLATOR
    if config.task == "embedding":
        return Kind.DUAL_ENCODER
    raise InvalidInput(f"model {mv.name!r} is a {config.task} model; use POST /generate")


def generate_kind(mv: ModelVersion) -> Kind:
    """The model's kind at POST /generate; 422 for a model that does not generate."""
    config = mv.config
    if config.task == "text_generation" and mv.generator is not None:
        return Kind.LANGUAGE_MODEL
    if config.task == "seq2seq":
        return Kind.SEQ2SEQ
    if config.task == "diffusion":
        return Kind.DIFFUSION
    if config.generation is not None and config.generation.latent_dim is not None:
        generator = config.graphs.get("generator")
        if generator is not None and any(spec.name == CLASS_INPUT for spec in generator.inputs):
            return Kind.CONDITIONAL_IMAGE_GENERATOR  # the generator takes a class beside the latent
        return Kind.IMAGE_GENERATOR  # a GAN's generator or a VAE's decoder
    article = "an" if config.task[0] in "aeiou" else "a"  # an embedding model
    raise InvalidInput(f"model {mv.name!r} is {article} {config.task} model; use POST /predict")


# ------------------------------------------------------------------------------------------ validation


def _attribute(request: BaseModel, field: str) -> str:
    """The attribute that holds ``field`` as clients write it (``class`` is held by ``class_``)."""
    fields = type(request).model_fields
    return next((name for name, info in fields.items() if info.alias == field), field)


def _says_something(request: BaseModel, attribute: str) -> bool:
    """A field left at its default, or sent as null, false or [], asks for nothing."""
    value = getattr(request, attribute)
    default = type(request).model_fields[attribute].get_default(call_default_factory=True)
    return value != default and value is not None and value is not False and value != []


def refuse_other_kinds_fields(endpoint: str, request: BaseModel, kind: Kind, model: str) -> None:
    """422 naming every field of ``request`` that asks for something and does not apply to ``kind``,
    and whom each applies to (rather than silently ignoring it)."""
    table = FIELD_KINDS[endpoint]
    given = [
        field
        for field in table
        if (attribute := _attribute(request, field)) in request.model_fields_set
        and kind not in table[field]
        and _says_something(request, attribute)
    ]
    if given:
        named = ", ".join(f"{field} (for {applies_to(endpoint, field)})" for field in given)
        verb = "does" if len(given) == 1 else "do"
        raise InvalidInput(f"{named} {verb} not apply to model {model!r}, {kind.with_article}")
