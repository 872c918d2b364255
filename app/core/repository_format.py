"""The model repository format: the contract between training (writer) and serving (reader).

Layout, modelled on Triton's model repository::

    models/<name>/config.json               ModelConfig
    models/<name>/<version>/<graph>.onnx    one self-contained file per graph
    models/<name>/<version>/report.json     Report (metrics, parity, sha256, command, seed)

Torch-free on purpose: the exporter imports these models to write the files, the server to read them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32", "int64", "bool"] = "float32"
    # -1 marks a dynamic axis (always the batch axis, sometimes sequence axes too).
    shape: list[int]
    description: str = ""


class GraphSpec(_Strict):
    """One ONNX graph of a model, e.g. the whole classifier, or a VAE's encoder."""

    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.onnx$")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class ImagePreprocessing(_Strict):
    """How the server turns an uploaded image into the graph's input tensor.

    Decode -> convert to ``channels`` (1 = grayscale, 3 = RGB) -> resize to height x width ->
    scale to [0, 1] -> (x - mean) / std per channel -> NCHW float32.
    """

    kind: Literal["image"] = "image"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _per_channel(self) -> ImagePreprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class TokenizerSpec(_Strict):
    """Everything needed to rebuild the training tokenizer: special tokens first (pad = id 0)."""

    kind: Literal["char"] = "char"
    specials: list[str]
    chars: str


class TextPreprocessing(_Strict):
    """How the server turns text into token ids: the tokenizer, optional bos/eos, and a length cap."""

    kind: Literal["text"] = "text"
    tokenizer: TokenizerSpec
    max_length: int = Field(gt=0)  # longest token sequence the graph accepts (incl. bos/eos)
    add_bos: bool = False
    add_eos: bool = False


class ImagePostprocessing(_Strict):
    """How to turn an image-valued output tensor back into pixels: map ``value_range`` to 0..255."""

    kind: Literal["image"] = "image"
    value_range: tuple[float, float] = (0.0, 1.0)
    # When the output is in the normalised input space, undo (x * std + mean) first.
    denormalize: bool = False


class GenerationDefaults(_Strict):
    """Defaults for generation: from a latent vector (GAN generator, VAE decoder) or of text."""

    latent_dim: int | None = Field(default=None, gt=0)
    latent_distribution: Literal["normal"] = "normal"
    num_samples: int = Field(default=8, gt=0)
    # Text: language models sample, seq2seq models decode greedily or with beams.
    max_new_tokens: int = Field(default=64, gt=0)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    num_beams: int = Field(default=1, gt=0)


class DiffusionSpec(_Strict):
    """A denoising diffusion model's noise schedule and sampling defaults (app/core/diffusion.py): the
    graph predicts the noise in ``x_t`` at timestep ``t`` (``t`` in [0, timesteps)), and the server
    runs the DDIM walk back from pure noise."""

    timesteps: int = Field(default=1000, gt=0)
    beta_schedule: Literal["linear", "cosine"] = "cosine"
    beta_start: float = Field(default=1e-4, gt=0, lt=1)  # linear schedule only
    beta_end: float = Field(default=0.02, gt=0, lt=1)
    # Class-conditional models take a class id per row, and ``null_class`` (the number of labels)
    # means "no class": trained with the label dropped at random, so the same graph also samples
    # unconditionally, and classifier-free guidance mixes the two. An unconditional model's graph
    # takes the class input too, always ``null_class`` (0).
    conditional: bool = False
    null_class: int = Field(default=0, ge=0)
    clip_denoised: bool = True  # clip each step's predicted x_0 to [-1, 1]
    num_samples: int = Field(default=8, gt=0)  # images of a request that does not say
    steps: int = Field(default=50, gt=0)  # DDIM steps of a request that does not say
    guidance_scale: float = Field(default=1.0, ge=0)  # of a conditional request that does not say
    stream_every: int = Field(default=5, gt=0)  # a streamed request gets an intermediate image this often

    @model_validator(mode="after")
    def _steps_within_schedule(self) -> DiffusionSpec:
        if self.steps > self.timesteps:
            raise ValueError("steps must be at most timesteps")
        return self


class ChatTemplate(_Strict):
    """How the OpenAI-compatible chat endpoint turns messages into a language model's prompt: each
    message as ``message`` with ``{role}`` and ``{content}`` replaced (plain replacement, not
    ``str.format``: braces in a message stay text), joined, then ``assistant_prefix``, after which the
    model writes the answer. The defaults are the documented template for models trained without one
    (plain text, like gpt-corpus)."""

    message: str = Field(default="{role}: {content}\n", pattern=r"\{content\}")
    assistant_prefix: str = "assistant: "

    def render(self, messages: list[tuple[str, str]]) -> str:
        parts = [
            self.message.replace("{role}", role).replace("{content}", content) for role, content in messages
        ]
        return "".join(parts) + self.assistant_prefix


class Batching(_Strict):
    max_batch_size: int = Field(default=32, gt=0)
    # Counted from the oldest queued request; an idle pool dispatches a lone request at once.
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    max_queue_size: int = Field(default=256, gt=0)
    timeout_ms: float = Field(default=5000.0, gt=0)
    # A batch takes at most its instance's share of the queued rows (queued / instances), so that one
    # instance never runs a full batch while another finds nothing left to take. Pays for compute-bound
    # graphs (cost per row flat in the batch size: +20% at 32 connections for the ResNet and the ViT);
    # costs light ones, where a bigger batch is cheaper per row (-11..16% for LeNet-5 and the MLP), so
    # it is off unless a model's config.json turns it on (bench/instances_bench.py).
    split_across_instances: bool = False


class Instances(_Strict):
    # Measured on the 2-core CPU: one single-threaded session per core beats one 2-thread session.
    count: int = Field(default=2, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=1, gt=0)


class LatestVersions(_Strict):
    num_versions: int = Field(default=1, gt=0)


class SpecificVersions(_Strict):
    versions: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _non_negative(self) -> SpecificVersions:
        if any(v < 0 for v in self.versions):
            raise ValueError("versions must be >= 0")
        return self


class VersionPolicy(_Strict):
    """Which version folders a model serves, in Triton's shape: exactly one of ``latest``
    (the highest ``num_versions``), ``all``, ``specific``. Without one: the highest version."""

    latest: LatestVersions | None = None
    all: dict | None = None
    specific: SpecificVersions | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("version_policy needs exactly one of latest, all, specific")
        if self.all:
            raise ValueError("version_policy.all takes no fields")
        return self

    def as_triton(self) -> dict:
        return self.model_dump(exclude_none=True)


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    family: str
    task: Literal[
        "classification",
        "reconstruction",
        "generation",
        "text_generation",
        "seq2seq",
        "image_translation",
        "diffusion",
    ]
    description: str = ""
    # Pin a version; by default the highest integer version folder is served.
    version: int | None = None
    # Which version folders are loaded and served (Triton's version_policy); None: the latest one.
    version_policy: VersionPolicy | None = None
    # Role -> graph, e.g. {"model": ...} or {"encoder": ..., "decoder": ...} or {"generator": ...};
    # an image translator has one graph per direction ({"thin_to_thick": ..., "thick_to_thin": ...}).
    graphs: dict[str, GraphSpec]
    preprocessing: ImagePreprocessing | TextPreprocessing | None = Field(default=None, discriminator="kind")
    postprocessing: ImagePostprocessing | None = None
    labels: list[str] | None = None
    generation: GenerationDefaults | None = None
    diffusion: DiffusionSpec | None = None  # diffusion models: the schedule the graph was trained on
    # Optional: models without one get ChatTemplate()'s defaults at /v1/chat/completions.
    chat_template: ChatTemplate | None = None
    batching: Batching = Batching()
    instances: Instances = Instances()

    @model_validator(mode="after")
    def _task_needs(self) -> ModelConfig:
        if self.task == "classification" and not self.labels:
            raise ValueError("a classification model needs labels")
        if self.task == "generation" and (self.generation is None or self.generation.latent_dim is None):
            raise ValueError("a generation model needs generation defaults with latent_dim")
        if self.task == "image_translation" and not isinstance(self.preprocessing, ImagePreprocessing):
            raise ValueError("an image_translation model needs image preprocessing (it takes images)")
        if self.task == "diffusion" and (self.diffusion is None or self.postprocessing is None):
            raise ValueError("a diffusion model needs its diffusion schedule and image postprocessing")
        if self.task in ("text_generation", "seq2seq") and not isinstance(
            self.preprocessing, TextPreprocessing
        ):
            raise ValueError(f"a {self.task} model needs text preprocessing (its tokenizer)")
        return self


class Parity(_Strict):
    """max |onnxruntime - PyTorch eval| over every output of every graph."""

    max_abs_diff: float
    batch_sizes: list[int]
    per_graph: dict[str, float] = {}
    provider: str = "CPUExecutionProvider"


class Report(_Strict):
    metrics: dict[str, float]
    parity: Parity
    sha256: dict[str, str]
    command: str
    seed: int
    recipe: str = ""
    model: str = ""
    model_config_: dict = Field(default_factory=dict, alias="model_config")
    train_config: dict = {}
    training_seconds: float = 0.0
    epochs_run: int = 0
    created: str = ""
    versions: dict[str, str] = {}
    plots: list[str] = []
    notes: list[str] = []

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def sha256_of(path: Path) -> str:
    """The digest report.json records for a graph and the server checks at load."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_folders(model_dir: Path) -> list[int]:
    """The model's version numbers (its integer-named folders), ascending."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def served_version(versions: list[int], pinned: int | None) -> int | None:
    """The version a model serves: the one its config pins when that folder exists, else the
    highest; None when it has none. The server, the CLI and the benchmarks all pick it this way."""
    if pinned is not None and pinned in versions:
        return pinned
    return max(versions, default=None)


def policy_versions(versions: list[int], policy: VersionPolicy | None, pinned: int | None) -> list[int]:
    """The versions a model serves out of its version folders ``versions``: the policy's choice
    (default: the highest), plus the pinned version when its folder exists; ascending."""
    policy = policy or VersionPolicy(latest=LatestVersions())
    if policy.all is not None:
        chosen = set(versions)
    elif policy.specific is not None:
        chosen = set(versions) & set(policy.specific.versions)
    else:
        chosen = set(sorted(versions)[-policy.latest.num_versions :]) if versions else set()
    if pinned is not None and pinned in versions:
        chosen.add(pinned)
    return sorted(chosen)
