"""Request and response bodies of the project's own JSON API (the V2 protocol has its own module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.core.diffusion import MAX_GUIDANCE_SCALE
from app.kinds import GENERATE, PREDICT, applies_to, applies_to_every_kind

# An 8x8 PNG of a handwritten 7 (scikit-learn's digits), for the OpenAPI examples.
DIGIT_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAARUlEQVR4nCXGQRVAMAAA0M9znwZE0IAGNLEGIsggAU2myUjAYaf/K9Z2"
    "GZ6+xhOv+wVbChrjJFoOujPnEfjm4p5DSZrhB4Y6EAlqM+StAAAAAElFTkSuQmCC"
)


def _documented(endpoint: str, examples: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra``: the examples, and after each field's description the kinds of model it
    applies to, generated from the one table (app/kinds.py) so that the docs cannot drift from what
    validation refuses."""

    def extra(schema: dict[str, Any]) -> None:
        schema["examples"] = examples
        for name, prop in schema["properties"].items():
            if not applies_to_every_kind(endpoint, name):
                text = prop.get("description", "")
                prop["description"] = f"{text} Applies to {applies_to(endpoint, name)}.".lstrip()

    return extra


MAP_UNKNOWN_DESCRIPTION = (
    "Map characters outside the model's vocabulary to <unk>; by default a text holding any is refused "
    "with 422 naming them."
)


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_documented(
            PREDICT,
            [
                {"model": "lenet5-digits", "inputs": DIGIT_PNG, "top_k": 3},
                {"model": "lstm-order", "inputs": ["eAfBgChD", "eBfAgDhC"]},
                {"model": "mlp-digits", "inputs": [[0.0] * 64]},
                {"model": "autoencoder-digits", "inputs": DIGIT_PNG, "return_latent": True, "format": "png"},
                {"model": "lstm-order", "inputs": "A-B-C-D", "map_unknown": True},
                {
                    "model": "cyclegan-strokes",
                    "inputs": DIGIT_PNG,
                    "direction": "thin_to_thick",
                    "format": "png",
                },
            ],
        ),
    )
    # Fields a client may still send by their old names: the 422 says what they are called now.
    renamed: ClassVar[dict[str, str]] = {"image_format": 'format ("png" or "array")'}

    model: str = Field(description="Model name (see GET /models).")
    version: int | None = Field(default=None, ge=0, description="Model version; default: the served one.")
    inputs: str | list[Any] = Field(
        description=(
            "One item or a list of items. An item is a base64 PNG/JPEG (image models), a string of text "
            "(text models) or a nested list of numbers in the graph's input shape without the batch axis."
        )
    )
    top_k: int | None = Field(default=None, ge=1, description="Return the k most likely classes.")
    return_latent: bool = Field(default=False, description="Also return the latent code.")
    return_reconstruction: bool = Field(default=False, description="Also decode the posterior mean.")
    direction: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "Which way to translate: one of the model's graphs, e.g. thin_to_thick (GET /models/{name} "
            "lists them); required."
        ),
    )
    format: Literal["png", "array"] = Field(
        default="array",
        description='Image outputs as nested lists (C, H, W) ("array", the default) or base64 PNG ("png").',
    )
    map_unknown: bool = Field(default=False, description=MAP_UNKNOWN_DESCRIPTION)
    labels: list[str] = Field(
        default=[],
        description=(
            'Zero-shot classification: candidate labels as text prompts (e.g. "a photo of a circle"); '
            "each image in inputs gets the softmax over them of the scaled cosine similarities, in the "
            "classifiers' answer shape (at most SERVE_MAX_LABELS)."
        ),
    )
    query: str | list[str] | None = Field(
        default=None,
        description=(
            "Text-to-image retrieval: one text or a list (at most SERVE_MAX_QUERIES); each gets the images "
            "in inputs (the gallery, at most SERVE_MAX_GALLERY_IMAGES) ranked by cosine similarity."
        ),
    )
    return_embedding: bool = Field(
        default=False,
        description=(
            "With labels: also each image's embedding; with query: also each query's. Without either, "
            'embeddings are the answer: of images, or of texts given as {"text": ...} items.'
        ),
    )


class ClassProbability(BaseModel):
    label: str
    index: int
    probability: float


class RankedImage(BaseModel):
    index: int = Field(description="Position of the image in inputs.")
    score: float = Field(description="Cosine similarity to the query.")


class PredictOutput(BaseModel):
    """One per input item; which fields appear depends on the model's task."""

    label: str | None = Field(default=None, description="Classifiers: the most likely class.")
    index: int | None = None
    probability: float | None = None
    probabilities: list[float] | None = Field(default=None, description="Softmax over all labels (no top_k).")
    top_k: list[ClassProbability] | None = None
    reconstruction: list | str | None = Field(default=None, description="Autoencoders: (C, H, W) or PNG.")
    latent: list[float] | None = None
    image: list | str | None = Field(default=None, description="Image translators: (C, H, W) or PNG.")
    mu: list[float] | None = Field(default=None, description="VAE encoder: posterior mean.")
    logvar: list[float] | None = Field(default=None, description="VAE encoder: posterior log-variance.")
    embedding: list[float] | None = Field(
        default=None, description="Dual encoders: the unit-length embedding."
    )
    query: str | None = Field(default=None, description="Dual encoders, retrieval: the query text.")
    ranking: list[RankedImage] | None = Field(
        default=None, description="Dual encoders, retrieval: gallery images, most similar first."
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "lenet5-digits",
                    "version": 1,
                    "task": "classification",
                    "outputs": [
                        {
                            "label": "7",
                            "index": 7,
                            "probability": 0.97,
                            "top_k": [
                                {"label": "7", "index": 7, "probability": 0.97},
                                {"label": "1", "index": 1, "probability": 0.02},
                            ],
                        }
                    ],
                }
            ]
        }
    )

    model: str
    version: int
    task: str
    direction: str | None = Field(default=None, description="Image translators: the direction used.")
    outputs: list[PredictOutput]


class ErrorResponse(BaseModel):
    error: str = Field(examples=["unknown model 'nope'; known models: lenet5-digits, mlp-digits"])


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in (
        (400, "The body or an item cannot be decoded (JSON, base64, image, binary framing)."),
        (404, "Unknown model or version."),
        (413, "The body is larger than the server accepts."),
        (422, "The request does not fit the model (shape, dtype, length, NaN, unknown field)."),
        (408, "The body did not arrive within the body timeout."),
        (415, "The Content-Type is not JSON."),
        (429, "The model has as many requests in progress as it admits; retry after Retry-After seconds."),
        (500, "Inference failed for this request's batch (a server fault)."),
        (
            503,
            "The model failed to load (see GET /models/{name}), or the server is at its bound of requests "
            "in progress or shutting down (with Retry-After).",
        ),
        (504, "The request's deadline passed before its batch started."),
    )
}


# ------------------------------------------------------------------------------------ metadata, health


class LiveResponse(BaseModel):
    status: Literal["live"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    models: dict[str, Literal["ready", "failed"]] = Field(description="Every model's state.")
    providers: dict[str, str | None] = Field(description="The execution provider each model runs on.")


class ModelSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: int
    versions: list[int]
    state: Literal["ready", "failed"]
    ready: bool
    reason: str | None = Field(description="Why the model failed to load (null when ready).")
    provider: str | None = Field(
        description="onnxruntime execution provider in use, e.g. CPUExecutionProvider."
    )
    load_seconds: float
    variant: str | None = Field(
        default=None,
        description="What this version is: fp32 (a trained export) or the kind of variant made from one "
        "(optimized, int8); null before its report.json is read.",
    )
    variants: dict[str, str] = Field(
        default_factory=dict,
        description="Each served version's kind (version -> fp32, optimized, int8); pick one with the "
        "request's version.",
    )
    family: str | None = None
    task: str | None = None
    description: str | None = None
    kinds: dict[str, str] | None = Field(
        default=None,
        description='What the model is at each endpoint that serves it, e.g. {"/predict": "VAE", '
        '"/generate": "image generator"}.',
    )


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDetails(ModelSummary):
    """The summary plus graphs, labels, pre-processing, batching, instances and report figures."""

    graphs: dict[str, Any] | None = None
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    text_preprocessing: dict[str, Any] | None = Field(
        default=None, description="Dual encoders: how texts become the text encoder's ids."
    )
    generation: dict[str, Any] | None = None
    diffusion: dict[str, Any] | None = Field(
        default=None, description="Diffusion models: the noise schedule and the request defaults."
    )
    batching: dict[str, Any] | None = None
    instances: dict[str, Any] | None = None
    queue_depth: dict[str, int] | None = None
    limits: dict[str, Any] | None = Field(
        default=None, description="The request limits that apply to this model."
    )
    metrics: dict[str, float] | None = None
    parity: dict[str, Any] | None = None
    trained_by: str | None = None
    architecture: dict[str, Any] | None = Field(
        default=None, description="The network's configuration when it was trained (report.json)."
    )
    plots: list[str] | None = Field(
        default=None, description="The report's pictures, served at GET /models/{name}/plots/{file}."
    )
    variant_report: dict[str, Any] | None = Field(
        default=None,
        description="A variant's report: its source version, method, held-out quality next to the "
        "source's, max difference from it, and measured speed (null for a trained export).",
    )


# ------------------------------------------------------------------------------------------- KServe V2


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    # An extension of the V2 metadata: each served version's kind (fp32, optimized, int8).
    variants: dict[str, str] = {}
    inputs: list[V2TensorMetadata] = []
    outputs: list[V2TensorMetadata] = []


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


# ------------------------------------------------------------------------------------------- generation


class Interpolation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_seed: int = Field(alias="from", ge=0, description="Seed of the first latent.")
    to_seed: int = Field(alias="to", ge=0, description="Seed of the last latent.")
    steps: int = Field(
        ge=2, description="Images along the straight line between them (at most SERVE_MAX_IMAGES)."
    )


class GenerateRequest(BaseModel):
    """One body for every generating model; the fields that apply depend on the model's task."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_documented(
            GENERATE,
            [
                {
                    "model": "gpt-corpus",
                    "prompt": "The ",
                    "max_new_tokens": 64,
                    "temperature": 0.8,
                    "seed": 1,
                },
                {"model": "gpt-corpus", "prompt": "If the ", "max_new_tokens": 32, "stream": True},
                {"model": "seq2seq-dates", "input": "3rd of March 2021", "num_beams": 4},
                {"model": "dcgan-digits", "num_samples": 4, "seed": 7},
                {"model": "vae-digits", "interpolate": {"from": 1, "to": 2, "steps": 8}},
                {"model": "cgan-digits", "num_samples": 4, "class": 7, "seed": 1},
                {"model": "diffusion-digits", "num_samples": 4, "class": [1, 2, 3, 4], "steps": 20},
            ],
        ),
    )

    # Which kinds of model each field applies to: app/kinds.py (FIELD_KINDS), appended to the
    # descriptions below in the OpenAPI schema.
    model: str
    version: int | None = Field(default=None, ge=0)
    prompt: str | None = Field(default=None, description="The text to continue.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Default: the model's config; at most SERVE_MAX_NEW_TOKENS."
    )
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="0 = greedy.")
    top_k: int | None = Field(default=None, ge=0, description="0 = off; at most the vocabulary size.")
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, description="Same seed, same output.")
    stop: list[str] = Field(
        default=[],
        description="Generation ends before any of these (at most SERVE_MAX_STOP_STRINGS strings).",
    )
    stream: bool = Field(
        default=False,
        description=(
            "Server-Sent Events: one event per token, then a summary; a diffusion model sends the current "
            "images every diffusion.stream_every steps (GET /models/{name}), then the final ones."
        ),
    )
    input: str | None = Field(default=None, description="The text to translate.")
    num_beams: int | None = Field(default=None, ge=1, description="1 = greedy; at most SERVE_MAX_BEAMS.")
    num_samples: int | None = Field(
        default=None, ge=1, description="Images from seeds seed, seed+1, ... (at most SERVE_MAX_IMAGES)."
    )
    latent: list[list[float]] | None = Field(default=None, description="Explicit latent vectors instead.")
    interpolate: Interpolation | None = Field(default=None, description="A walk between two seeds' latents.")
    class_: StrictInt | list[StrictInt] | None = Field(
        default=None,
        alias="class",
        description=(
            "The class of every image (one id), or one id per image; an id indexes the model's labels "
            "(GET /models/{name}). Default: the classes in turn (0, 1, 2, ...)."
        ),
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        description=(
            "DDIM steps, one denoiser call each (two with guidance). Default: the model's config; at most "
            "SERVE_MAX_DIFFUSION_STEPS and the model's timesteps."
        ),
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=MAX_GUIDANCE_SCALE,
        allow_inf_nan=False,
        description=(
            "Classifier-free guidance: noise = uncond + scale * (cond - uncond); 1 = the conditional "
            "prediction alone, 0 = the unconditional one (no class). Default: the model's config."
        ),
    )
    format: Literal["png", "array"] = Field(
        default="png",
        description='Images as base64 PNG ("png", the default) or nested lists (C, H, W) ("array").',
    )
    map_unknown: bool = Field(default=False, description=MAP_UNKNOWN_DESCRIPTION)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model: str
    version: int
    task: str
    text: str | None = None
    finish_reason: str | None = Field(default=None, description="length, stop, eos (language models).")
    usage: Usage | None = None
    timings: dict[str, float] | None = None
    beams: list[dict[str, Any]] | None = Field(default=None, description="Seq2seq: every beam and its score.")
    images: list[str] | None = Field(default=None, description="Base64 PNGs.")
    arrays: list[list] | None = None
    latents: list[list[float]] | None = None
    classes: list[int] | None = Field(
        default=None, description="Class-conditional generators: each image's class."
    )
    seeds: list[int] | None = Field(
        default=None, description="Diffusion models: each image's seed (its starting noise)."
    )
