"""GPT's variants: the step graph fused and writing its KV cache in place (training/step_graph.py), fp32
("optimized") or with int8 MatMuls ("int8"); registered with training.variants, which imports this.

Both kinds change the ``decoder_step`` graph's contract (its keys' layout and ``present_*`` outputs), so
the transform hands its own spec back (report.json's ``variant.graphs``, which the server reads for the
version) and the family brings its own measurements of that graph:

- quality: the recipe's held-out next-token loss through the step graph itself, as the server uses it
  (teacher-forced prompts on empty cache rows, through ``app.core.kv_cache``'s caches and
  ``trainer.evaluate``: the code path that measured the trained model), ``step_val_nats_per_token``,
  beside the full-sequence graph's ``val_nats_per_token`` (the generic evaluator's);
- max |logits| difference from the source on held-out text: prefills, then one token per step;
- decode steps per second at 1 and 16 rows (greedy, the caches the server uses, one thread,
  alternating rounds).

The full-sequence ``model`` graph gets the generic transforms of its kind.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from app.core.kv_cache import InPlaceKVCache, KVCache, step_cache
from app.core.ort_options import OFFLINE_EXTENDED
from app.core.repository_format import REPORT_FILE, ModelConfig, Report, Throughput
from training import trainer
from training.step_graph import fuse_step_graph, graph_spec
from training.variants import (
    Evaluation,
    GraphJob,
    GraphResult,
    VariantContext,
    cpu_session,
    evaluate_model_graph,
    optimize_offline,
    register_comparison,
    register_evaluator,
    register_transform,
)

STEP = "decoder_step"
STEP_EVALUATION_BATCH = 32  # rows per prefill when scoring the step graph (its cache holds 2x this)
DECODE_ROWS = (1, 16)  # the decode batch sizes measured: one stream, and a busy server
DECODE_STEPS = 96  # tokens per row and round in the speed measurement
DIFFERENCE_ROWS, DIFFERENCE_PREFILL, DIFFERENCE_STEPS = 8, 16, 64


# ---------------------------------------------------------------------------------------- transforms


def _fused(job: GraphJob) -> Path:
    if job.ctx.config.attention is not None:
        # GroupQueryAttention's cache is linear (slot = position), the local model's a ring.
        raise ValueError(
            f"{job.ctx.config.name} has local attention; the fused step graph has no ring cache for it"
        )
    fused = job.target.with_suffix(".fused.onnx")
    fuse_step_graph(job.source, fused)
    return fused


@register_transform("optimized", family="gpt", role=STEP)
def fused_step_graph(job: GraphJob) -> GraphResult:
    fused = _fused(job)
    optimize_offline(fused, job.target)
    fused.unlink()
    return GraphResult(
        f"fused in-place step graph (GroupQueryAttention, packed QKV, BiasGelu; training/step_graph.py), "
        f"then onnxruntime {ort.__version__} {OFFLINE_EXTENDED} optimizations offline",
        optimized_offline=OFFLINE_EXTENDED,
        spec=graph_spec(job.target, job.spec.file),
    )


@register_transform("int8", family="gpt", role=STEP)
def fused_int8_step_graph(job: GraphJob) -> GraphResult:
    """The fused graph with its MatMuls dynamically quantized (int8 weights, activations quantized per
    run); attention and the norms stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused, quantized = _fused(job), job.target.with_suffix(".int8.onnx")
    # The quantizer's shape inference cannot type the com.microsoft outputs; they are all float.
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    quantize_dynamic(
        str(fused),
        str(quantized),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        extra_options=options,
    )
    optimize_offline(quantized, job.target)
    fused.unlink()
    quantized.unlink()
    return GraphResult(
        "fused in-place step graph (training/step_graph.py), MatMuls dynamic int8 (s8 weights, per tensor), "
        f"then onnxruntime {ort.__version__} {OFFLINE_EXTENDED} optimizations offline",
        optimized_offline=OFFLINE_EXTENDED,
        spec=graph_spec(job.target, job.spec.file),
    )


# ---------------------------------------------------------------------------------------- measuring


class StepGraph:
    """A version's step graph opened as the server opens it, with the cache its contract asks for."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        report = Report.model_validate_json((version_dir / REPORT_FILE).read_text())
        self.spec = report.graphs(config)[STEP]
        self.optimized_offline = report.variant.optimized_offline if report.variant is not None else None
        self.session = cpu_session(version_dir / self.spec.file, self.optimized_offline)
        self.slots = config.preprocessing.max_length

    def cache(self) -> KVCache | InPlaceKVCache:
        return step_cache(self.spec, self.session, self.slots)


class _PrefillModule:
    """The step graph called like the PyTorch model (tokens (B, T) -> logits (B, T, V)): every row a
    prompt on an empty cache, so ``trainer.evaluate`` scores it with the recipe's own loss."""

    training = False

    def __init__(self, graph: StepGraph) -> None:
        self.graph = graph

    def eval(self) -> _PrefillModule:
        return self

    def train(self, mode: bool = True) -> _PrefillModule:
        return self

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.numpy()
        logits = self.graph.cache().prefill(ids, [ids.shape[1]] * len(ids), every_position=True)
        return torch.from_numpy(logits)


@register_evaluator("language_model")
def evaluate_language_model(ctx: VariantContext, version_dir: Path) -> Evaluation:
    """The generic evaluation of the full-sequence graph, plus the held-out loss of the step graph."""
    evaluation = evaluate_model_graph(ctx, version_dir)
    module = _PrefillModule(StepGraph(ctx.config, version_dir))
    step = trainer.evaluate(module, ctx.loss, ctx.bundle.test, batch_size=STEP_EVALUATION_BATCH)
    evaluation.metrics["step_val_nats_per_token"] = step["loss"]
    return evaluation


def step_logits_difference(a: StepGraph, b: StepGraph, tokens: np.ndarray, prefill: int) -> float:
    """max |logits of a - logits of b| over a prefill of ``prefill`` tokens of every row of ``tokens``
    (B, T), then one token per step through the rest."""
    caches = a.cache(), b.cache()
    worst, lengths = 0.0, [prefill] * len(tokens)
    pairs = [cache.prefill(tokens[:, :prefill], lengths, every_position=True) for cache in caches]
    worst = float(np.abs(pairs[0] - pairs[1]).max())
    for position in range(prefill, tokens.shape[1]):
        x, y = (cache.decode(tokens[:, position : position + 1]) for cache in caches)
        worst = max(worst, float(np.abs(x - y).max()))
    return worst


def decode_rates(
    graphs: list[StepGraph], prompt: np.ndarray, rows: int, steps: int, rounds: int = 5
) -> list[float]:
    """Greedy decode steps per second (tokens/s over ``rows`` rows) of each graph, through its cache
    after a prefill of ``prompt``: alternating rounds, the median per graph (load from elsewhere on
    the machine hits every candidate alike)."""

    def one(graph: StepGraph) -> float:
        cache = graph.cache()
        logits = cache.prefill(np.repeat(prompt[None], rows, axis=0), [len(prompt)] * rows)
        started = time.perf_counter()
        for _ in range(steps):
            logits = cache.decode(logits.argmax(-1)[:, None])
        return rows * steps / (time.perf_counter() - started)

    for graph in graphs:
        one(graph)  # warm-up
    measured: list[list[float]] = [[] for _ in graphs]
    for _ in range(rounds):
        for i, graph in enumerate(graphs):
            measured[i].append(one(graph))
    return [statistics.median(m) for m in measured]


@register_comparison("gpt")
def compare_step_graphs(
    ctx: VariantContext, source_dir: Path, candidate_dir: Path, speed_rounds: int
) -> tuple[dict[str, float], list[Throughput]]:
    source, candidate = StepGraph(ctx.config, source_dir), StepGraph(ctx.config, candidate_dir)
    held_out = ctx.bundle.test.tensors[0].numpy()
    tokens = held_out[:DIFFERENCE_ROWS, : DIFFERENCE_PREFILL + DIFFERENCE_STEPS]
    difference = step_logits_difference(source, candidate, tokens, DIFFERENCE_PREFILL)
    prompt = held_out[0, :4]  # a few characters of held-out text, as a short prompt
    steps = min(DECODE_STEPS, source.slots - len(prompt))
    speed = []
    for rows in DECODE_ROWS:
        fp32, variant = decode_rates([source, candidate], prompt, rows, steps, speed_rounds)
        speed.append(Throughput(graph=STEP, batch_size=rows, fp32=fp32, variant=variant))
    return {STEP: difference}, speed
