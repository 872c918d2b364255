"""The fused GPT step graph that writes its KV cache in place (training/step_graph.py) and GPT's variants
(training/gpt_variants.py): the same greedy text as the exported graph, its contract, the variant
command publishing it with its own spec and measurements, and the committed variants' reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.core.kv_cache import InPlaceKVCache, generate, step_cache, writes_in_place
from app.core.repository_format import REPORT_FILE, GraphSpec, ModelConfig, Report
from app.core.sampling import SamplingParams
from app.core.tokenizer import CharTokenizer
from training.gpt_variants import STEP
from training.step_graph import StepGraphError, fuse_step_graph, graph_spec, read_step_weights
from training.variants import make_variant

ZOO = Path(__file__).resolve().parents[2] / "models"
MODEL = "gpt-corpus"
CONFIG = ModelConfig.model_validate_json((ZOO / MODEL / "config.json").read_text())
TOKENIZER = CharTokenizer.from_dict(CONFIG.preprocessing.tokenizer.model_dump())
BLOCK = CONFIG.preprocessing.max_length


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> tuple[ort.InferenceSession, GraphSpec]:
    """The committed trained step graph, fused; its session and spec."""
    path = tmp_path_factory.mktemp("fused") / "decoder_step.onnx"
    fuse_step_graph(ZOO / MODEL / "1" / "decoder_step.onnx", path)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    exported = onnx.load(str(ZOO / MODEL / "1" / "decoder_step.onnx")).graph.node
    assert ops.count("GroupQueryAttention") == 4 and len(ops) < len(exported) / 2
    return _session(path), graph_spec(path, "decoder_step.onnx")


def test_the_fused_graph_writes_its_cache_in_place(fused) -> None:
    session, spec = fused
    assert writes_in_place(spec) and isinstance(step_cache(spec, session, BLOCK), InPlaceKVCache)
    shapes = {s.name: s.shape for s in spec.inputs + spec.outputs}
    assert shapes["past_key_0"] == shapes["past_value_0"] == shapes["present_key_0"] == [-1, 4, -1, 32]
    assert [s.name for s in spec.inputs][:2] == ["tokens", "past_lengths"]


@pytest.mark.parametrize("prompt", ["The ", "If the value of x", "def f(x):\n    return", "Q"])
def test_greedy_text_is_token_for_token_the_exported_graphs(fused, prompt: str) -> None:
    """200 tokens from one prompt, past the 128-token context (the window slides: a new prefill)."""
    exported = _session(ZOO / MODEL / "1" / "decoder_step.onnx")
    options = dict(
        max_new_tokens=200, params=SamplingParams(temperature=0), seed=0, block_size=BLOCK, slide=True
    )
    want = generate(exported, CONFIG.graphs[STEP], TOKENIZER.encode(prompt), **options)
    got = generate(fused[0], fused[1], TOKENIZER.encode(prompt), **options)
    assert got.token_ids == want.token_ids and len(got.token_ids) == 200


def test_the_in_place_cache_refuses_what_would_write_past_its_slots(fused) -> None:
    cache = step_cache(fused[1], fused[0], 8)
    with pytest.raises(ValueError, match="does not fit"):
        cache.prefill(np.ones((1, 9), np.int64), [9])
    cache.prefill(np.ones((1, 8), np.int64), [8])
    with pytest.raises(ValueError, match="holds all 8 slots"):
        cache.decode(np.ones((1, 1), np.int64))


def test_a_graph_that_is_not_a_gpt_step_graph_is_refused() -> None:
    with pytest.raises(StepGraphError, match="past_key"):
        read_step_weights(onnx.load(str(ZOO / "mlp-digits" / "1" / "model.onnx")))


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """``make_variant`` (what ``python -m training variant gpt-corpus --kind optimized`` runs) on a copy
    of the trained version alone."""
    repo = tmp_path_factory.mktemp("gpt-variant") / "models"
    (repo / MODEL).mkdir(parents=True)
    shutil.copyfile(ZOO / MODEL / "config.json", repo / MODEL / "config.json")
    shutil.copytree(ZOO / MODEL / "1", repo / MODEL / "1")
    make_variant(repo / MODEL, "optimized", speed_rounds=1, command="pytest")
    return repo / MODEL


def test_the_optimized_variant_carries_its_step_graphs_spec_and_measurements(published: Path) -> None:
    report = Report.model_validate_json((published / "2" / REPORT_FILE).read_text())
    variant = report.variant
    assert variant.kind == "optimized" and variant.optimized_offline == "extended"
    spec = report.graphs(CONFIG)[STEP]  # this version's, not config.json's
    assert writes_in_place(spec) and not writes_in_place(CONFIG.graphs[STEP])
    assert report.graphs(CONFIG)["model"] == CONFIG.graphs["model"]
    # The same function: the same held-out loss through the step graph, logits within float rounding.
    step = variant.quality["step_val_nats_per_token"]
    assert step.variant == pytest.approx(step.fp32, abs=1e-5)
    assert step.fp32 == pytest.approx(report.metrics["val_nats_per_token"], abs=1e-4)
    assert 0 < variant.per_graph[STEP] < 1e-4
    assert {(t.graph, t.batch_size) for t in variant.speed} >= {(STEP, 1), (STEP, 16)}
    # Opened as the server opens it, its greedy text is the trained version's.
    session = ort.InferenceSession(str(published / "2" / spec.file), providers=["CPUExecutionProvider"])
    options = dict(max_new_tokens=64, params=SamplingParams(temperature=0), seed=0, block_size=BLOCK)
    want = generate(_session(published / "1" / "decoder_step.onnx"), CONFIG.graphs[STEP], [30, 31], **options)
    assert generate(session, spec, [30, 31], **options).token_ids == want.token_ids


def test_the_committed_int8_variant_is_within_two_hundredths_of_a_nat() -> None:
    """The issue's bar for int8 GPT: within 0.02 nats per character of fp32, through both graphs."""
    report = Report.model_validate_json((ZOO / MODEL / "3" / REPORT_FILE).read_text())
    assert report.variant.kind == "int8" and writes_in_place(report.graphs(CONFIG)[STEP])
    for name in ("val_nats_per_token", "step_val_nats_per_token"):
        figure = report.variant.quality[name]
        assert 0 <= figure.variant - figure.fp32 <= 0.02, name
