"""The model repository format: the contract between training (writer) and serving (reader).

Layout, modelled on Triton's model repository::

    models/<name>/config.json               ModelConfig
    models/<name>/<version>/<graph>.onnx    one self-contained file per graph
    models/<name>/<version>/report.json     Report (metrics, parity, sha256, command, seed)

Torch-free on purpose: the exporter imports these models to write the files, the server to read them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

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


class AttentionWindow(_Strict):
    """Local (sliding-window) attention of a language model, which its ``decoder_step`` cache follows:
    each position sees the last ``window`` positions and the first ``global_tokens``, so a sequence
    needs only ``global_tokens + window`` cache slots however long it grows. Global positions keep
    their own slot; the others take turns in a ring of ``window`` slots after them (:meth:`slot_of`),
    and the graph works out from each row's length which position a slot holds."""

    window: int = Field(gt=0)
    global_tokens: int = Field(default=0, ge=0)

    @property
    def slots(self) -> int:
        return self.global_tokens + self.window

    def slot_of(self, positions):
        """The cache slot of each position: numpy or torch integers, any shape (arithmetic only, so
        that the trainer's tests and the server's cache share it)."""
        g, w = self.global_tokens, self.window
        return positions * (positions < g) + (g + (positions - g) % w) * (positions >= g)


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
    # Counted from the oldest queued request; an idle pool dispatches a lone request at once. "auto":
    # the batcher chooses each hold from the batch cost it measures, the arrival rate and
    # latency_target_ms (app/batch_policy.py).
    max_queue_delay_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | Literal["auto"] = 2.0
    # With "auto" only: the p99 (ms) of queue wait + batch run to stay under while maximising throughput.
    latency_target_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_queue_size: int = Field(default=256, gt=0)
    timeout_ms: float = Field(default=5000.0, gt=0)
    # A batch takes at most its instance's share of the queued rows (queued / instances), so that one
    # instance never runs a full batch while another finds nothing left to take, and starts without
    # waiting for company once more rows would not make it cheaper per row. Pays for compute-bound
    # graphs (+20% at 32 connections for the ResNet and the ViT); costs light ones, whose requests cost
    # the HTTP layer more than their rows cost onnxruntime (-11..16% for LeNet-5 and the MLP). Unset:
    # decided per graph by its run time measured at load (app/runner.py, COMPUTE_BOUND_ROW_S).
    split_across_instances: bool | None = None

    @model_validator(mode="after")
    def _target_with_auto(self) -> Batching:
        if self.max_queue_delay_ms == "auto":
            if self.latency_target_ms is None:
                raise ValueError('max_queue_delay_ms "auto" needs latency_target_ms (the p99 to stay under)')
            if self.latency_target_ms > self.timeout_ms:
                raise ValueError("latency_target_ms must not exceed timeout_ms (requests would expire first)")
        elif self.latency_target_ms is not None:
            raise ValueError('latency_target_ms applies only with max_queue_delay_ms "auto"')
        return self


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
    (the highest ``num_versions``), ``all``, ``specific``. Without one: the highest trained version
    and its variants (policy_versions)."""

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
        "embedding",
        "diffusion",
    ]
    description: str = ""
    # Pin the version that answers requests naming none; by default the highest trained version (not a
    # variant, see Report.variant) answers them.
    version: int | None = None
    # Which version folders are loaded and served (Triton's version_policy); None: the highest trained
    # version and the variants made from it.
    version_policy: VersionPolicy | None = None
    # Role -> graph, e.g. {"model": ...} or {"encoder": ..., "decoder": ...} or {"generator": ...};
    # an image translator has one graph per direction ({"thin_to_thick": ..., "thick_to_thin": ...}).
    graphs: dict[str, GraphSpec]
    preprocessing: ImagePreprocessing | TextPreprocessing | None = Field(default=None, discriminator="kind")
    # A model with a text side beside its image side (a dual encoder, task "embedding"): how texts
    # become the text encoder's ids, while ``preprocessing`` says how images become its image input.
    text_preprocessing: TextPreprocessing | None = None
    postprocessing: ImagePostprocessing | None = None
    labels: list[str] | None = None
    generation: GenerationDefaults | None = None
    diffusion: DiffusionSpec | None = None  # diffusion models: the schedule the graph was trained on
    attention: AttentionWindow | None = None  # language models with local attention (their cache's ring)
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
        # An embedding model's graphs (image_encoder, text_encoder) are checked at load.
        if self.task == "embedding" and (
            not isinstance(self.preprocessing, ImagePreprocessing) or self.text_preprocessing is None
        ):
            raise ValueError("an embedding model needs image preprocessing and text_preprocessing")
        return self

    @property
    def text_input(self) -> TextPreprocessing | None:
        """How this model's texts become token ids, whichever field holds it: a text model's
        ``preprocessing`` or a dual encoder's ``text_preprocessing``; None for a model without text."""
        if isinstance(self.preprocessing, TextPreprocessing):
            return self.preprocessing
        return self.text_preprocessing


class Parity(_Strict):
    """max |onnxruntime - PyTorch eval| over every output of every graph."""

    max_abs_diff: float
    batch_sizes: list[int]
    per_graph: dict[str, float] = {}
    provider: str = "CPUExecutionProvider"


class QualityFigure(_Strict):
    """One held-out metric of a variant next to its source's, measured in the same run on the same data."""

    fp32: float
    variant: float


class Throughput(_Strict):
    """Samples/s of the source's and the variant's primary graph at one batch size: one onnxruntime
    session each, one thread, alternating rounds in one process (so the ratio holds on a busy machine)."""

    graph: str = "model"  # the graph role measured
    batch_size: int = Field(gt=0)
    fp32: float
    variant: float


TRAINED_KIND = "fp32"  # what a trained export is called next to the variants made from it


class Variant(_Strict):
    """A version made from another version of the same model by transforming its graphs, without
    training (training/variants.py): what was done, and how it compares with its source."""

    # "optimized" (fp32, graph optimizations applied offline) or "int8" (quantized); other kinds may be
    # registered by training.variants.
    kind: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    source_version: int = Field(ge=0)
    method: str  # e.g. "dynamic int8 (MatMul, Gemm; per-channel)"; per graph role when they differ
    onnxruntime: str  # the version that made it (quantization and offline optimization change with it)
    # Set when the saved graphs are already optimized at this onnxruntime level (app/session.py).
    optimized_offline: Literal["extended"] | None = None
    data: str = ""  # the held-out data the figures below were measured on
    quality: dict[str, QualityFigure] = {}
    # max |variant - source| over every output of every graph on that data.
    max_abs_diff: float
    per_graph: dict[str, float] = {}
    speed: list[Throughput] = []
    # Graphs (by role) whose inputs and outputs differ from config.json's, with their own: a transform
    # that changes a graph's contract (GPT's step graph that writes its KV cache in place,
    # training/step_graph.py). This version is served with these specs; the others are config.json's.
    graphs: dict[str, GraphSpec] = {}
    speed_conditions: str = ""  # threads, cores, rounds: what the speed figures were measured under


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
    # Set on a version made from another one by training/variants.py (None: a trained export).
    variant: Variant | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def graphs(self, config: ModelConfig) -> dict[str, GraphSpec]:
        """This version's graphs: config.json's, with the ones a variant changed (Variant.graphs)."""
        changed = self.variant.graphs if self.variant is not None else {}
        return {role: changed.get(role, spec) for role, spec in config.graphs.items()}

    @property
    def variant_kind(self) -> str:
        """What /models and V2 metadata call this version: the variant's kind, "fp32" for an export."""
        return self.variant.kind if self.variant is not None else TRAINED_KIND


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


def variant_sources(model_dir: Path) -> dict[int, int]:
    """Which of the model's versions are variants: version -> the version it was made from, read off
    each report.json's ``variant`` section. A version whose report is missing or unreadable counts as a
    trained export (its load then fails for its own reason)."""
    sources = {}
    for version in version_folders(model_dir):
        try:
            variant = json.loads((model_dir / str(version) / REPORT_FILE).read_text()).get("variant")
            sources[version] = int(variant["source_version"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
    return sources


def _highest_trained(versions: list[int], variants: dict[int, int]) -> int | None:
    """The highest version that is no variant; the highest of all when every one is a variant."""
    trained = [v for v in versions if v not in variants]
    return max(trained or versions, default=None)


def served_version(
    versions: list[int], pinned: int | None, variants: dict[int, int] | None = None
) -> int | None:
    """The version that answers a request naming none: the one the config pins when that folder
    exists, else the highest trained export (``variants``: version -> source, see variant_sources;
    a variant answers by default only when pinned); None when there is none. The server, the CLI and
    the benchmarks all pick it this way."""
    if pinned is not None and pinned in versions:
        return pinned
    return _highest_trained(versions, variants or {})


def default_version(model_dir: Path, pinned: int | None) -> int | None:
    """:func:`served_version` of a model folder, read from the files."""
    return served_version(version_folders(model_dir), pinned, variant_sources(model_dir))


def policy_versions(
    versions: list[int],
    policy: VersionPolicy | None,
    pinned: int | None,
    variants: dict[int, int] | None = None,
) -> list[int]:
    """The versions a model serves out of its version folders ``versions``: the policy's choice, plus
    the pinned version when its folder exists; ascending. Without a policy: the highest trained export
    and the variants made from it (``variants``: version -> source), so making a variant adds a served
    version without touching config.json, and training a new version retires the old one's variants."""
    variants = variants or {}
    if policy is None:
        base = _highest_trained(versions, variants)
        chosen = {v for v in versions if v == base or variants.get(v) == base} if versions else set()
        if pinned is not None and pinned in versions:
            chosen.add(pinned)
        return sorted(chosen)
    if policy.all is not None:
        chosen = set(versions)
    elif policy.specific is not None:
        chosen = set(versions) & set(policy.specific.versions)
    else:
        chosen = set(sorted(versions)[-policy.latest.num_versions :]) if versions else set()
    if pinned is not None and pinned in versions:
        chosen.add(pinned)
    return sorted(chosen)
