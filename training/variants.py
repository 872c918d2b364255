"""Faster variants of an exported model, published as new versions of it (``python -m training variant``).

A variant reads one version of a model (by default the trained version that answers requests), transforms
its graphs without training, measures the result against its source on the recipe's held-out data, and
is published like a trained export: staged in a dot folder, every graph's sha256 in report.json, renamed
into place, never over an existing version (training.repository_policy). config.json is shared by every
version of a model, so a transform keeps each graph's input and output names, dtypes and shapes (checked
here) and config.json stays as it is. Without a version_policy the server serves the highest trained
version together with the variants made from it, and a request names the variant's version to get it
(app/core/repository_format.policy_versions).

Kinds (``--kind``):

* ``optimized``: onnxruntime's graph optimizations up to the extended level, applied offline and saved;
  the server opens such a graph at a level that skips them (app/core/ort_options.py). The RNN family's
  graphs also lose their packing glue first (lean_recurrent_classifier). Refused unless it computes its
  source's function (max difference <= 1e-4).
* ``int8``: onnxruntime's quantization tools: dynamic int8 for MatMul/Gemm/LSTM-heavy graphs (the RNNs on
  their lean graph), static QDQ with calibration data from the training split for the convnets; then
  the same offline optimization.

report.json of a variant is its source's plus a ``variant`` section (repository_format.Variant): kind,
source version, method, the held-out metrics of source and variant measured in the same run, max
|variant - source| over the outputs on that data, and samples/s of both at batch 1 and 32 (one thread).
The held-out metrics overwrite the source's in ``metrics`` (so quality bars judge the variant); the
other figures (training curves, parity with PyTorch) are the source's and are marked so in the notes.

Extension points, so that a family adds its own variants without editing the functions here:

* :func:`register_kind` -> a new ``--kind``;
* :func:`register_transform` (kind, family, graph role) -> how one graph is transformed;
* :func:`register_evaluator` (objective) -> how a version's graphs are scored on held-out data, and
  which inputs they were fed there (the max difference and the speed are measured on those).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from app.core.ort_options import OFFLINE_EXTENDED, session_options
from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    GraphSpec,
    ModelConfig,
    QualityFigure,
    Report,
    Throughput,
    Variant,
    default_version,
    variant_sources,
    version_folders,
)
from training import trainer
from training.data import DatasetBundle
from training.export import PARITY_TOLERANCE, ExportError, ExportResult, stage_graph_files, tensor_specs
from training.objectives import RecipeObjective, objective_for
from training.recipes import Recipe, check_bars, get_recipe
from training.repository_policy import choose_version

SPEED_BATCH_SIZES = (1, 32)
SPEED_ROUND_S = 0.2  # seconds per candidate in one round of throughput()
CALIBRATION_SAMPLES = 512  # training-split examples a static quantization calibrates on
EVALUATION_BATCH = 256  # what training evaluates with (trainer.evaluate's default)
# A source whose measured held-out figures differ from its report by more than this was not trained on
# the data found here (another --dataset, or the data changed): its comparison would mean nothing.
REPRODUCE_TOLERANCE = 2e-3


class VariantError(ValueError):
    """The variant cannot be made or published; the message says why."""


# ---------------------------------------------------------------------------------------- what a run has


@dataclass
class VariantContext:
    """The source version and the recipe's data, loaded once for a variant run."""

    model_dir: Path
    source_version: int
    config: ModelConfig  # config.json, shared by every version
    report: Report  # the source's report.json
    recipe: Recipe
    objective: RecipeObjective
    bundle: DatasetBundle  # the recipe's splits, rebuilt with the source's seed
    loss: trainer.Objective  # the recipe's objective: how the held-out metrics are computed
    work: Path  # scratch folder for intermediate graphs

    @property
    def source_dir(self) -> Path:
        return self.model_dir / str(self.source_version)

    @property
    def family(self) -> str:
        return self.config.family


@dataclass
class GraphJob:
    """One graph to transform: read ``source``, write ``target`` (same inputs and outputs)."""

    ctx: VariantContext
    role: str
    spec: GraphSpec
    source: Path
    target: Path

    def calibration(self, samples: int = CALIBRATION_SAMPLES) -> list[dict[str, np.ndarray]]:
        """Inputs of this graph on ``samples`` examples of the training split (never the held-out
        data), as the recipe's objective feeds them (normalised pixels, token ids and lengths)."""
        return calibration_feeds(self.ctx, self.role, samples)


@dataclass
class GraphResult:
    method: str  # how the graph was made, for report.json
    optimized_offline: str | None = None  # the onnxruntime level the saved graph is optimized at
    # The graph's own inputs and outputs when the transform changes them (report.json's Variant.graphs,
    # which the server reads for this version); None: config.json's, checked.
    spec: GraphSpec | None = None


@dataclass
class Evaluation:
    """A version's held-out metrics (named as in report.json) and, per graph role, the inputs it was fed
    there (batches with the batch on axis 0 of every input)."""

    metrics: dict[str, float]
    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)


Transform = Callable[[GraphJob], GraphResult]
Evaluator = Callable[[VariantContext, Path], Evaluation]
# (ctx, source version folder, candidate folder, speed rounds) -> max |difference| per graph role and
# speed figures, for graphs an evaluator's recorded feeds cannot drive on both sides (a changed contract).
Comparison = Callable[[VariantContext, Path, Path, int], tuple[dict[str, float], list[Throughput]]]

# ---------------------------------------------------------------------------------------- registries

ANY = "*"
_TRANSFORMS: dict[tuple[str, str, str], Transform] = {}
_KINDS: dict[str, str] = {}  # kind -> one line of what it does
# kind -> the largest max |variant - source| it may publish with: a kind that claims to compute the same
# function (optimized) is refused when it does not.
_KIND_TOLERANCE: dict[str, float] = {}
_EVALUATORS: dict[str, Evaluator] = {}
_COMPARISONS: dict[str, Comparison] = {}  # family -> its own comparison


def register_kind(kind: str, description: str, max_abs_diff: float | None = None) -> None:
    """A kind of variant (``--kind``); ``max_abs_diff``: refuse to publish one that differs more from
    its source on the held-out data (None: no bound, the quality bars still apply)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", kind):
        raise ValueError(f"variant kind {kind!r} must be lowercase letters, digits, - and _")
    _KINDS[kind] = description
    if max_abs_diff is not None:
        _KIND_TOLERANCE[kind] = max_abs_diff


def register_transform(kind: str, *, family: str = ANY, role: str = ANY) -> Callable[[Transform], Transform]:
    """Decorator: ``fn(job) -> GraphResult`` makes ``kind`` of the graphs of role ``role`` of models of
    ``family`` (ANY: every one). The most specific registration wins: family and role, then family,
    then role, then neither."""
    if kind not in _KINDS:
        raise ValueError(f"register the variant kind {kind!r} first (register_kind)")

    def wrap(fn: Transform) -> Transform:
        key = (kind, family, role)
        if key in _TRANSFORMS:
            raise ValueError(f"a {kind} transform for family {family!r}, role {role!r} is registered twice")
        _TRANSFORMS[key] = fn
        return fn

    return wrap


def transform_for(kind: str, family: str, role: str) -> Transform:
    for key in ((kind, family, role), (kind, family, ANY), (kind, ANY, role), (kind, ANY, ANY)):
        if key in _TRANSFORMS:
            return _TRANSFORMS[key]
    raise VariantError(f"no {kind} transform for graph {role!r} of the {family} family")


def register_evaluator(objective: str) -> Callable[[Evaluator], Evaluator]:
    """Decorator: ``fn(ctx, version_dir) -> Evaluation`` scores the graphs of models trained with
    ``objective`` (a recipe objective name) on their held-out data."""

    def wrap(fn: Evaluator) -> Evaluator:
        _EVALUATORS[objective] = fn
        return fn

    return wrap


def register_comparison(family: str) -> Callable[[Comparison], Comparison]:
    """Decorator: ``fn(ctx, source_dir, candidate_dir, speed_rounds) -> (per_graph, speed)`` adds the
    family's own measurements of source and candidate to a variant's (max difference and speed of
    graphs whose inputs changed, which the evaluator's recorded feeds cannot drive on both sides)."""

    def wrap(fn: Comparison) -> Comparison:
        _COMPARISONS[family] = fn
        return fn

    return wrap


def variant_kinds() -> dict[str, str]:
    return dict(_KINDS)


# ---------------------------------------------------------------------------------------- graphs as modules


def cpu_session(path: Path, optimized_offline: str | None = None) -> ort.InferenceSession:
    """A session as the server opens this graph on the CPU (one thread, app/core/ort_options.py)."""
    return ort.InferenceSession(
        str(path), session_options(1, optimized_offline), providers=["CPUExecutionProvider"]
    )


class OnnxModule:
    """An exported graph called like the ``nn.Module`` it was exported from (positional tensors in the
    graph's input order; a tensor, or a tuple for several outputs), so that the recipe's own objective
    and ``trainer.evaluate`` score it. With ``record`` it keeps every feed it was given."""

    training = False

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, record: bool = False) -> None:
        self.session = session
        self.input_names = [t.name for t in spec.inputs]
        self.input_shapes = [t.shape for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        self.recorded: list[dict[str, np.ndarray]] | None = [] if record else None

    def eval(self) -> OnnxModule:
        return self

    def train(self, mode: bool = True) -> OnnxModule:
        return self

    def __call__(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(args) != len(self.input_names):
            raise VariantError(f"graph takes {self.input_names}, called with {len(args)} tensors")
        feeds = {
            name: _as_declared(arg.detach().numpy(), shape)
            for name, shape, arg in zip(self.input_names, self.input_shapes, args, strict=True)
        }
        if self.recorded is not None:
            self.recorded.append(feeds)
        outputs = [torch.from_numpy(o) for o in self.session.run(self.output_names, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _as_declared(value: np.ndarray, shape: list[int]) -> np.ndarray:
    """An input in the graph's declared shape: a module that flattens its input itself (the MLP takes
    images, its graph 64 pixels) was exported with the flattened shape, as the server feeds it."""
    if value.ndim == len(shape) or any(d < 0 for d in shape[1:]):
        return value
    return value.reshape(len(value), *shape[1:])


# How an objective's evaluate() renames trainer.evaluate's metrics in report.json (training.objectives).
_METRIC_NAMES: dict[str, dict[str, str | None]] = {
    "denoising": {"test_mse": "test_mse_noisy", "test_loss": None},
    "language_model": {"test_loss": "val_nats_per_token"},
}


def _report_names(objective: str, metrics: dict[str, float]) -> dict[str, float]:
    renames = _METRIC_NAMES.get(objective, {})
    named = {}
    for key, value in metrics.items():
        name = renames.get(f"test_{key}", f"test_{key}")
        if name is not None:
            named[name] = value
    return named


def evaluate_model_graph(ctx: VariantContext, version_dir: Path) -> Evaluation:
    """The recipes whose one graph ("model") is the module's forward: the objective's loss and metrics
    over the held-out split (trainer.evaluate, as training measured the source), on the graph."""
    if "model" not in ctx.config.graphs:
        raise VariantError(f"{ctx.config.name} has no 'model' graph; its objective needs an evaluator")
    spec = ctx.config.graphs["model"]
    module = OnnxModule(_version_session(ctx, version_dir, spec), spec, record=True)
    metrics = trainer.evaluate(module, ctx.loss, ctx.bundle.test, batch_size=EVALUATION_BATCH)
    return Evaluation(_report_names(ctx.recipe.objective, metrics), {"model": module.recorded or []})


for _objective in (
    "classification",
    "sequence_classification",
    "masked_sequence_classification",
    "reconstruction",
    "denoising",
    "language_model",
):
    register_evaluator(_objective)(evaluate_model_graph)


def _version_session(ctx: VariantContext, version_dir: Path, spec: GraphSpec) -> ort.InferenceSession:
    """The graph ``spec`` of ``version_dir`` opened as the server opens that version."""
    report = Report.model_validate_json((version_dir / REPORT_FILE).read_text())
    offline = report.variant.optimized_offline if report.variant is not None else None
    return cpu_session(version_dir / spec.file, offline)


def calibration_feeds(ctx: VariantContext, role: str, samples: int) -> list[dict[str, np.ndarray]]:
    """The source graph's inputs on ``samples`` training examples (a seeded random subset), recorded
    while the recipe's objective runs over them, so they are prepared exactly as at training time."""
    if role != "model":
        raise VariantError(
            f"no calibration data for graph {role!r}: register a transform that brings its own"
        )
    x, y = ctx.bundle.train.tensors
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.report.seed))[:samples]
    subset = torch.utils.data.TensorDataset(x[order], y[order])
    spec = ctx.config.graphs[role]
    module = OnnxModule(cpu_session(ctx.source_dir / spec.file), spec, record=True)
    trainer.evaluate(module, ctx.loss, subset, batch_size=EVALUATION_BATCH)
    return module.recorded or []


# ---------------------------------------------------------------------------------------- the transforms

register_kind(
    "optimized",
    "fp32, onnxruntime's extended graph optimizations applied offline and saved",
    max_abs_diff=PARITY_TOLERANCE,  # the same function: as close to its source as an export to PyTorch
)
register_kind("int8", "quantized to int8 with onnxruntime's quantization tools")


def optimize_offline(source: Path, target: Path) -> None:
    """onnxruntime's basic and extended graph optimizations (fusions, constant folding) for the CPU
    provider, saved to ``target`` (SessionOptions.optimized_model_filepath)."""
    so = session_options(1)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])


@register_transform("optimized")
def optimized_graph(job: GraphJob) -> GraphResult:
    optimize_offline(job.source, job.target)
    return GraphResult(
        f"onnxruntime {ort.__version__} {OFFLINE_EXTENDED} graph optimizations, applied offline "
        "(CPU provider)",
        optimized_offline=OFFLINE_EXTENDED,
    )


def _quantization():
    """onnxruntime.quantization, imported on first use (it is slow to import and only this needs it)."""
    import onnxruntime.quantization as quantization

    return quantization


def quantize_dynamic_int8(
    job: GraphJob, op_types: tuple[str, ...], *, per_channel: bool = False, optimize: bool = True
) -> GraphResult:
    """Weights of ``op_types`` to int8, activations quantized on the fly per run (no calibration)."""
    q = _quantization()
    q.quantize_dynamic(
        str(job.source),
        str(job.target),
        op_types_to_quantize=list(op_types),
        weight_type=q.QuantType.QInt8,
        per_channel=per_channel,
    )
    method = f"dynamic int8 ({', '.join(op_types)}{'; per-channel' if per_channel else ''})"
    return _optimized(job, method) if optimize else GraphResult(method)


def quantize_static_qdq(job: GraphJob, *, per_channel: bool = True, optimize: bool = True) -> GraphResult:
    """Weights and activations to int8 in QDQ form, activation ranges calibrated (min/max) on
    CALIBRATION_SAMPLES examples of the training split."""
    q = _quantization()
    batches = job.calibration()

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    prepared = job.target.with_suffix(".pre.onnx")
    q.quant_pre_process(str(job.source), str(prepared), skip_symbolic_shape=True)
    q.quantize_static(
        str(prepared),
        str(job.target),
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
    )
    prepared.unlink()
    count = sum(len(next(iter(b.values()))) for b in batches)
    method = (
        f"static QDQ int8 (u8 activations, s8 weights{', per-channel' if per_channel else ''}), "
        f"min/max calibration on {count} samples from the training split"
    )
    return _optimized(job, method) if optimize else GraphResult(method)


def _optimized(job: GraphJob, method: str) -> GraphResult:
    """Apply the offline optimization to a transform's output in place (quantized graphs too: the
    fusions into MatMulIntegerToFloat, QLinearConv and friends then need not run at start-up)."""
    unoptimized = job.target.with_suffix(".unoptimized.onnx")
    job.target.replace(unoptimized)
    optimize_offline(unoptimized, job.target)
    unoptimized.unlink()
    return GraphResult(f"{method}, then {OFFLINE_EXTENDED} optimizations offline", OFFLINE_EXTENDED)


@register_transform("int8")
def int8_dynamic(job: GraphJob) -> GraphResult:
    return quantize_dynamic_int8(job, ("MatMul", "Gemm", "LSTM"))


# ---------------------------------------------------------------------------------------- the RNN family

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def lean_recurrent_classifier(source: Path, target: Path) -> None:
    """The RNN classifier's graph without its packing glue: embedding -> the recurrent op with the
    rows' own lengths (``sequence_lens``, clamped to [1, T] as the module does) -> its last hidden
    state -> head. The TorchScript export of pack_padded_sequence sorts the rows by length, runs the
    op, unsorts and gathers each row's last output: ~40 small nodes that cost more than the op itself
    at batch 1. The ONNX op's final state is each row's state at its own last step, the same numbers.
    One forward layer only (a bidirectional head also reads the reverse pass at position 0)."""
    model = onnx.load(str(source))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    cells = [n for n in graph.node if n.op_type in RECURRENT_OPS]
    heads = [n for n in graph.node if n.op_type == "Gemm"]
    embeddings = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in weights]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in cells[0].attribute} if cells else {}
    direction = attributes.get("direction", b"forward")
    if len(cells) != 1 or len(heads) != 1 or len(embeddings) != 1 or direction not in (b"forward", "forward"):
        raise VariantError("the lean RNN graph needs one forward recurrent layer, one embedding, one head")
    cell, head, embedding = cells[0], heads[0], embeddings[0]
    tokens, lengths = (i.name for i in graph.input)
    helper = onnx.helper
    one = helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Gather", [embedding.input[0], tokens], ["embedded"]),  # (B, T, E)
        helper.make_node("Transpose", ["embedded"], ["time_major"], perm=[1, 0, 2]),  # (T, B, E)
        helper.make_node("Shape", [tokens], ["steps"], start=1, end=2),  # [T]
        helper.make_node("Min", [lengths, "steps"], ["at_most_steps"]),
        helper.make_node("Max", ["at_most_steps", "one"], ["clamped"]),  # (B,) in [1, T]
        helper.make_node("Cast", ["clamped"], ["sequence_lens"], to=onnx.TensorProto.INT32),
        helper.make_node(
            cell.op_type,
            ["time_major", *cell.input[1:4], "sequence_lens"],
            ["", "final"],  # Y unused; Y_h: (1, B, H), each row's state at its last step
            name=cell.name,
            **attributes,
        ),
        helper.make_node("Squeeze", ["final", "zero"], ["features"]),  # (B, H)
        helper.make_node(
            "Gemm",
            ["features", *head.input[1:]],
            list(head.output),
            name=head.name,
            **{a.name: helper.get_attribute_value(a) for a in head.attribute},
        ),
    ]
    zero = helper.make_tensor("zero", onnx.TensorProto.INT64, [1], [0])
    used = {embedding.input[0], *cell.input[1:4], *head.input[1:]} - {""}
    lean = helper.make_graph(
        nodes,
        graph.name,
        list(graph.input),
        list(graph.output),
        initializer=[weights[name] for name in sorted(used)] + [one, zero],
    )
    out = helper.make_model(lean, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(out, full_check=True)
    onnx.save_model(out, str(target))


def _lean_first(job: GraphJob) -> GraphJob:
    """The job with the lean graph (in the scratch folder) as its source."""
    lean = job.target.with_suffix(".lean.onnx")
    lean_recurrent_classifier(job.source, lean)
    return dataclasses.replace(job, source=lean)


LEAN_RNN = "packing glue replaced by the recurrent op's own sequence_lens"


@register_transform("optimized", family="rnn")
def optimized_rnn(job: GraphJob) -> GraphResult:
    made = optimized_graph(_lean_first(job))
    return dataclasses.replace(made, method=f"{LEAN_RNN}; {made.method}")


@register_transform("int8", family="rnn")
def int8_rnn(job: GraphJob) -> GraphResult:
    made = quantize_dynamic_int8(_lean_first(job), ("LSTM", "Gemm"))  # GRU and RNN have no int8 kernel
    return dataclasses.replace(made, method=f"{LEAN_RNN}; {made.method}")


@register_transform("int8", family="cnn")
@register_transform("int8", family="resnet")
def int8_static(job: GraphJob) -> GraphResult:
    return quantize_static_qdq(job)


# ---------------------------------------------------------------------------------------- measuring


def max_difference(
    a: ort.InferenceSession, b: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]
) -> float:
    """max |a - b| over every output on every feed."""
    worst = 0.0
    for feed in feeds:
        for x, y in zip(a.run(None, feed), b.run(None, feed), strict=True):
            if x.size:
                worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def rows(feeds: list[dict[str, np.ndarray]], count: int) -> dict[str, np.ndarray]:
    """The first ``count`` rows of the recorded batches, as one feed."""
    names = list(feeds[0])
    joined = {name: np.concatenate([f[name] for f in feeds]) for name in names}
    available = len(next(iter(joined.values())))
    if available < count:
        raise VariantError(f"only {available} held-out rows to measure batch {count} on")
    return {name: value[:count] for name, value in joined.items()}


def throughput(
    sessions: list[ort.InferenceSession],
    feed: dict[str, np.ndarray],
    rounds: int = 7,
    seconds: float = SPEED_ROUND_S,
) -> list[float]:
    """Samples/s of each session on ``feed``: alternating rounds of ``seconds`` each, the median per
    session, so that load from elsewhere on the machine hits every candidate alike."""
    batch = len(next(iter(feed.values())))
    for session in sessions:
        session.run(None, feed)
    rates: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            runs, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds:
                session.run(None, feed)
                runs += 1
            rates[i].append(runs * batch / elapsed)
    return [float(np.median(r)) for r in rates]


# ---------------------------------------------------------------------------------------- a run


def _dataset_name(report: Report, recipe: Recipe) -> str:
    """The dataset the source was trained on, from its notes ("dataset: NAME: ..."); else the recipe's."""
    for note in report.notes:
        match = re.match(r"dataset: ([A-Za-z0-9_.-]+):", note)
        if match:
            return match.group(1)
    return recipe.dataset


def load_context(model_dir: Path, source_version: int | None, work: Path) -> VariantContext:
    """The source version (default: the one answering unversioned requests) and its recipe's data."""
    from training.pipeline import RunOptions, load_run_data  # the pipeline imports much; only runs need it

    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no {CONFIG_FILE})")
    config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
    version = source_version if source_version is not None else default_version(model_dir, config.version)
    if version is None or version not in version_folders(model_dir):
        raise VariantError(f"{model_dir} has no version {version}; versions: {version_folders(model_dir)}")
    if version in variant_sources(model_dir):
        raise VariantError(
            f"{model_dir.name} version {version} is itself a variant; make variants from a trained version"
        )
    report = Report.model_validate_json((model_dir / str(version) / REPORT_FILE).read_text())
    recipe = get_recipe(report.recipe or config.name)
    objective = objective_for(recipe)
    options = RunOptions(dataset=_dataset_name(report, recipe), model_overrides=dict(report.model_config_))
    _, bundle = load_run_data(recipe, options, report.seed)
    # The loss only reads label smoothing from the training config; the rest is the recipe's own.
    smoothing = report.train_config.get("label_smoothing", recipe.train.label_smoothing)
    train_cfg = dataclasses.replace(recipe.train, label_smoothing=smoothing)
    return VariantContext(
        model_dir=model_dir,
        source_version=version,
        config=config,
        report=report,
        recipe=recipe,
        objective=objective,
        bundle=bundle,
        loss=objective.build_loss(bundle, train_cfg),
        work=work,
    )


def _check_signature(role: str, spec: GraphSpec, path: Path) -> None:
    """A variant's graph must take and give what config.json declares (shared by all versions)."""
    inputs, outputs = tensor_specs(onnx.load(str(path), load_external_data=False))
    for kind, declared, actual in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        want = [(t.name, t.dtype, t.shape) for t in declared]
        have = [(t.name, t.dtype, t.shape) for t in actual if t.name in {n for n, _, _ in want}]
        if sorted(want) != sorted(have):
            raise ExportError(f"graph {role!r}: the variant's {kind} {have} differ from config.json's {want}")


def _evaluator(ctx: VariantContext) -> Evaluator:
    try:
        return _EVALUATORS[ctx.recipe.objective]
    except KeyError:
        raise VariantError(
            f"no evaluator for objective {ctx.recipe.objective!r} ({ctx.config.name}); register one "
            "(training.variants.register_evaluator)"
        ) from None


def _check_reproduced(ctx: VariantContext, measured: dict[str, float]) -> None:
    for name, value in measured.items():
        reported = ctx.report.metrics.get(name)
        if reported is not None and abs(value - reported) > REPRODUCE_TOLERANCE * max(1.0, abs(reported)):
            raise VariantError(
                f"{name} of version {ctx.source_version} measured {value:.6g} on the held-out data here, "
                f"its report says {reported:.6g}: it was not trained on this data, so no comparison"
            )


@dataclass
class VariantSummary:
    result: ExportResult
    variant: Variant


def make_variant(
    model_dir: Path,
    kind: str,
    *,
    source_version: int | None = None,
    version: int | None = None,
    overwrite: bool = False,
    command: str | None = None,
    speed_rounds: int = 7,
) -> VariantSummary:
    """Make ``kind`` of a version of the model in ``model_dir`` and publish it as a new version.
    ``speed_rounds``: alternating rounds of 0.2 s per candidate and batch size (see throughput).
    Refuses (VariantError, nothing written) when the variant misses a quality bar of its recipe."""
    if kind not in _KINDS:
        raise VariantError(f"unknown variant kind {kind!r}; kinds: {', '.join(_KINDS)}")
    target_version = choose_version(model_dir, version, overwrite=overwrite)  # refuse before the work
    with tempfile.TemporaryDirectory(prefix="variant-") as scratch:
        work = Path(scratch)
        ctx = load_context(model_dir, source_version, work)
        files, methods, levels, changed = {}, {}, set(), {}
        for role, spec in ctx.config.graphs.items():
            target = work / spec.file
            job = GraphJob(ctx, role, spec, ctx.source_dir / spec.file, target)
            made = transform_for(kind, ctx.family, role)(job)
            _check_signature(role, made.spec or spec, target)
            files[spec.file], methods[role] = target, made.method
            levels.add(made.optimized_offline)
            if made.spec is not None:
                changed[role] = made.spec
        if len(levels) > 1:
            raise VariantError(f"the graphs of one variant must share one offline level, got {levels}")
        offline = levels.pop()
        variant, metrics = _compare(ctx, kind, files, methods, offline, speed_rounds, changed)
        bound = _KIND_TOLERANCE.get(kind)
        if bound is not None and variant.max_abs_diff > bound:
            raise VariantError(
                f"the {kind} variant differs from version {ctx.source_version} by {variant.max_abs_diff:.2e} "
                f"(> {bound:.0e}) on the held-out data; not published"
            )
        missed = [str(r) for r in check_bars(ctx.recipe.quality, metrics) if not r.ok]
        if missed:
            raise VariantError(
                f"the {kind} variant misses its quality bar ({'; '.join(missed)}); not published"
            )
        report = ctx.report.model_copy(
            update={
                "metrics": metrics,
                "command": command or "python -m training " + shlex.join(sys.argv[1:]),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "versions": {**ctx.report.versions, "onnxruntime": ort.__version__, "onnx": onnx.__version__},
                "plots": [],  # the source's pictures show the source
                "notes": [
                    *ctx.report.notes,
                    f"{kind} variant of version {ctx.source_version}: {', '.join(variant.quality)} measured "
                    "on the variant; the other metrics and the parity are the source's",
                ],
                "variant": variant,
            }
        )
        staged = stage_graph_files(
            files,
            repository=model_dir.parent,
            config=ctx.config,
            report=report,
            version=target_version,
            overwrite=overwrite,
        )
        try:
            result = staged.commit()
        finally:
            staged.discard()
    return VariantSummary(result=result, variant=variant)


def _compare(
    ctx: VariantContext,
    kind: str,
    files: dict[str, Path],
    methods: dict[str, str],
    offline: str | None,
    speed_rounds: int,
    graphs: dict[str, GraphSpec] | None = None,
) -> tuple[Variant, dict[str, float]]:
    """Score source and variant on the held-out data, their max difference and speed, in one run."""
    evaluate = _evaluator(ctx)
    source = evaluate(ctx, ctx.source_dir)
    _check_reproduced(ctx, source.metrics)
    # The variant is evaluated from a folder laid out like a version (graphs + report.json), so the
    # evaluator opens it as the server will.
    candidate_dir = ctx.work / "candidate"
    candidate_dir.mkdir()
    for file_name, path in files.items():
        shutil.copyfile(path, candidate_dir / file_name)
    stub = Variant(
        kind=kind,
        source_version=ctx.source_version,
        method="",
        onnxruntime=ort.__version__,
        optimized_offline=offline,
        max_abs_diff=0.0,
        graphs=graphs or {},
    )
    (candidate_dir / REPORT_FILE).write_text(
        ctx.report.model_copy(update={"variant": stub}).model_dump_json(by_alias=True)
    )
    made = evaluate(ctx, candidate_dir)
    per_graph, speed = {}, []
    for role, feeds in source.feeds.items():
        spec = ctx.config.graphs[role]
        fp32 = cpu_session(ctx.source_dir / spec.file)
        variant = cpu_session(candidate_dir / spec.file, offline)
        per_graph[role] = max_difference(fp32, variant, feeds)
        for batch in SPEED_BATCH_SIZES:
            fp32_rate, variant_rate = throughput([fp32, variant], rows(feeds, batch), rounds=speed_rounds)
            speed.append(Throughput(graph=role, batch_size=batch, fp32=fp32_rate, variant=variant_rate))
    if ctx.family in _COMPARISONS:
        family_diffs, family_speed = _COMPARISONS[ctx.family](
            ctx, ctx.source_dir, candidate_dir, speed_rounds
        )
        per_graph.update(family_diffs)
        speed += family_speed
    method = (
        next(iter(methods.values()))
        if len(set(methods.values())) == 1
        else "; ".join(f"{role}: {m}" for role, m in methods.items())
    )
    variant = Variant(
        kind=kind,
        source_version=ctx.source_version,
        method=method,
        onnxruntime=ort.__version__,
        optimized_offline=offline,
        data=f"{ctx.bundle.name} held-out split ({len(ctx.bundle.test)} examples)",
        quality={
            name: QualityFigure(fp32=value, variant=made.metrics[name])
            for name, value in source.metrics.items()
        },
        max_abs_diff=max(per_graph.values(), default=0.0),
        per_graph=per_graph,
        speed=speed,
        graphs=graphs or {},
        speed_conditions=(
            f"one onnxruntime thread, the process on {len(os.sched_getaffinity(0))} of {os.cpu_count()} "
            f"cores, {speed_rounds} alternating rounds of {SPEED_ROUND_S} s per graph and batch size, median"
        ),
    )
    return variant, {**ctx.report.metrics, **made.metrics}


def variant_table(model: str, version: str, variant: Variant) -> str:
    """What a variant run measured, as markdown: quality next to the source's, difference, speed."""
    quality = ", ".join(f"{k} {q.fp32:.4g} -> {q.variant:.4g}" for k, q in variant.quality.items())
    speed = ", ".join(
        f"{'' if t.graph == 'model' else t.graph + ' '}b{t.batch_size} {t.fp32:,.0f} -> {t.variant:,.0f}/s "
        f"({t.variant / t.fp32:.2f}x)"
        for t in variant.speed
    )
    return "\n".join(
        [
            "| model | version | kind | from | quality (fp32 -> variant) | max abs diff "
            "| samples/s, 1 thread |",
            "|---|---|---|---|---|---|---|",
            f"| {model} | {version} | {variant.kind} | {variant.source_version} | {quality} | "
            f"{variant.max_abs_diff:.2e} | {speed} |",
            "",
            f"method: {variant.method}",
        ]
    )


# Families' own variants register themselves on import (their transforms, evaluators, comparisons).
from training import gpt_variants  # noqa: E402, F401
