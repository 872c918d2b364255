"""GPT: shapes, causality, the KV-cache step against the full forward (PyTorch and onnxruntime),
batches of rows with different cache lengths, and export of both graphs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.core.kv_cache import KVCache
from app.core.repository_format import ModelConfig, Report
from training.export import export_to_repository
from training.models.gpt import GPT, GPTDecoderStep
from training.registry import build_model, model_family
from training.text import CharTokenizer

TOKENIZER = CharTokenizer(chars=list("abcdefghijklmnop"))  # 21 ids with the specials
TINY = {"vocab_size": TOKENIZER.vocab_size, "block_size": 96, "dim": 32, "heads": 4, "layers": 2}
STEPS = 64
TOL = 1e-4


def _tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    model = build_model("gpt", **{**TINY, "dropout": 0.0, **overrides}).eval()
    # Larger weights than GPT-2's N(0, 0.02) init, so that logits differ by whole units and the
    # 1e-4 tolerances below are a real test rather than a comparison of near-constant outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module")
def model() -> GPT:
    return _tiny()


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)


def _step(step: GPTDecoderStep, tokens, past_lengths, past) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.no_grad():
        logits, *new = step(tokens, past_lengths, *past)
    return logits, new


def _grow(model: GPT, past: list[torch.Tensor], new: list[torch.Tensor]) -> list[torch.Tensor]:
    """The cache of unpadded rows after a step: each tensor gains the new positions on its slot axis."""
    names = model.cache_names("past")
    return [
        torch.cat([p, n], dim=model.cache_axis(name)) for name, p, n in zip(names, past, new, strict=True)
    ]


def _decode_with_cache(model: GPT, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits (B, T, V): the first ``prefill`` tokens in one call on an empty cache, then one at a time."""
    B, T = tokens.shape
    step = model.step_module()
    past = model.empty_cache(B)
    chunks = []
    start = 0
    for end in [prefill] * (prefill > 0) + list(range(prefill + 1, T + 1)):
        logits, new = _step(step, tokens[:, start:end], torch.full((B,), start), past)
        past = _grow(model, past, new)
        chunks.append(logits)
        start = end
    names = model.cache_names("past")
    assert all(p.shape == model.cache_shape(name, B, T) for name, p in zip(names, past, strict=True))
    return torch.cat(chunks, dim=1)


# ------------------------------------------------------------------------------------------ model


def test_forward_shapes_and_every_parameter_trains() -> None:
    model = build_model("gpt", **TINY)  # train mode, dropout on
    logits = model(_tokens(3, 10))
    assert logits.shape == (3, 10, TINY["vocab_size"]) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model_family("gpt") == "gpt"


def test_head_is_tied_to_the_token_embedding_unless_configured_otherwise() -> None:
    tied, untied = build_model("gpt", **TINY), build_model("gpt", **TINY, tie_weights=False)
    assert tied.head.weight is tied.token_embedding.weight
    assert untied.head.weight is not untied.token_embedding.weight
    n = TINY["vocab_size"] * TINY["dim"]
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == n


def test_config_round_trips_and_validates() -> None:
    model = build_model("gpt", **TINY)
    rebuilt = build_model("gpt", **json.loads(json.dumps(dataclasses.asdict(model.config))))
    rebuilt.load_state_dict(model.state_dict())
    for overrides, field in [
        ({"dim": 30}, "heads"),
        ({"block_size": 1}, "block_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "swish"}, "activation"),
        ({"tie_weights": 1}, "tie_weights"),
    ]:
        with pytest.raises(ValueError, match=field):
            build_model("gpt", **overrides)


def test_later_tokens_do_not_change_earlier_logits(model: GPT) -> None:
    tokens = _tokens(2, 20)
    changed = tokens.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-2


# ------------------------------------------------------------------------------------- kv cache


@pytest.mark.parametrize("prefill", [0, 8], ids=["empty-cache", "after-prefill"])
def test_cached_decoding_matches_the_full_forward(model: GPT, prefill: int) -> None:
    tokens = _tokens(2, prefill + STEPS)
    with torch.no_grad():
        full = model(tokens)  # (B, T, V)
    cached = _decode_with_cache(model, tokens, prefill)
    assert (cached - full).abs().max().item() <= TOL


def test_rows_of_different_lengths_in_one_batch_match_each_prompt_alone(model: GPT) -> None:
    """The server's batch: prompts prefilled right-padded on empty caches, stored in one cache whose
    unused slots hold garbage, then decoded together with each row's own length."""
    short, long = _tokens(1, 5, seed=2)[0], _tokens(1, 9, seed=3)[0]
    step = model.step_module()
    lengths = torch.tensor([len(short), len(long)])
    tokens = torch.stack([torch.cat([short, torch.zeros(len(long) - len(short), dtype=torch.long)]), long])
    logits, new = _step(step, tokens, torch.zeros(2, dtype=torch.long), model.empty_cache(2))
    width = 16
    names = model.cache_names("past")
    cache = [torch.randn(model.cache_shape(name, 2, width)) * 100 for name in names]  # garbage
    for buffer, entries, name in zip(cache, new, names, strict=True):
        view, fresh = buffer.movedim(model.cache_axis(name), 0), entries.movedim(model.cache_axis(name), 0)
        for row, n in enumerate(lengths.tolist()):
            view[:n, row] = fresh[:n, row]
    batched = [logits[torch.arange(2), lengths - 1]]  # (B, V): each prompt's last real position
    for _ in range(5):
        next_ids = batched[-1].argmax(-1, keepdim=True)  # (B, 1)
        logits, new = _step(step, next_ids, lengths, cache)
        for buffer, entries, name in zip(cache, new, names, strict=True):
            view, fresh = (
                buffer.movedim(model.cache_axis(name), 0),
                entries.movedim(model.cache_axis(name), 0),
            )
            view[lengths, torch.arange(2)] = fresh[0]
        lengths = lengths + 1
        batched.append(logits[:, -1])
    batched = torch.stack(batched, dim=1)  # (B, 6, V)

    for row, prompt in enumerate((short, long)):
        sequence = torch.cat([prompt, batched[row, :-1].argmax(-1)])[None]  # prompt + greedy tokens
        with torch.no_grad():
            alone = model(sequence)[0, len(prompt) - 1 :]  # (6, V)
        assert (batched[row] - alone).abs().max().item() <= TOL


def test_step_ignores_unused_slots_and_clamps_positions(model: GPT) -> None:
    step = model.step_module()
    tokens = _tokens(2, 3)
    _, held = _step(step, tokens, torch.zeros(2, dtype=torch.long), model.empty_cache(2))
    # The same 3 positions with 4 unused slots after them: zeros or garbage, the result is the same.
    names = model.cache_names("past")
    for fill in (torch.zeros, torch.randn):
        cache = [
            torch.cat([h, fill(model.cache_shape(name, 2, 4)) * 100], dim=model.cache_axis(name))
            for name, h in zip(names, held, strict=True)
        ]
        logits, _ = _step(step, tokens[:, -1:], torch.full((2,), 3), cache)
        if fill is torch.zeros:
            reference = logits
        torch.testing.assert_close(logits, reference, rtol=0, atol=0)
    # Positions past the table repeat its last position, so no length can index outside it.
    empty = model.empty_cache(2)
    beyond, _ = _step(step, tokens[:, :1], torch.full((2,), 10_000), empty)
    last, _ = _step(step, tokens[:, :1], torch.full((2,), TINY["block_size"] - 1), empty)
    torch.testing.assert_close(beyond, last, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- onnx


@pytest.fixture(scope="module")
def exported(model: GPT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    export_to_repository(
        model.graphs(),
        repository=repository,
        config_fields={
            "name": "tiny-gpt",
            "family": "gpt",
            "task": "text_generation",
            "preprocessing": {
                "kind": "text",
                "tokenizer": TOKENIZER.to_dict(),
                "max_length": TINY["block_size"],
            },
        },
        report_fields={"metrics": {}, "command": "pytest", "seed": 0},
    )
    return repository / "tiny-gpt"


def test_export_writes_both_graphs_with_parity(exported: Path) -> None:
    config = ModelConfig.model_validate_json((exported / "config.json").read_text())
    report = Report.model_validate_json((exported / "1" / "report.json").read_text())
    assert set(report.parity.per_graph) == {"model", "decoder_step"}
    assert report.parity.max_abs_diff <= TOL
    V, H, D = TINY["vocab_size"], TINY["heads"], TINY["dim"] // TINY["heads"]
    model, step = config.graphs["model"], config.graphs["decoder_step"]
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("tokens", "int64", [-1, -1])]
    assert [(s.name, s.shape) for s in model.outputs] == [("logits", [-1, -1, V])]
    cache = [f"{kind}_{i}" for i in range(TINY["layers"]) for kind in ("key", "value")]
    layout = {"key": [-1, H, D, -1], "value": [-1, H, -1, D]}  # keys stored transposed
    assert [(s.name, s.dtype, s.shape) for s in step.inputs] == [
        ("tokens", "int64", [-1, -1]),
        ("past_lengths", "int64", [-1]),
        *[(f"past_{name}", "float32", layout[name.split("_")[0]]) for name in cache],
    ]
    assert [(s.name, s.shape) for s in step.outputs] == [
        ("logits", [-1, -1, V]),
        *[(f"new_{name}", layout[name.split("_")[0]]) for name in cache],
    ]


def test_onnx_cached_decoding_matches_the_full_forward(model: GPT, exported: Path) -> None:
    """The exported graph driven by the server's in-place cache (app.core.kv_cache.KVCache)."""
    config = ModelConfig.model_validate_json((exported / "config.json").read_text())
    session = ort.InferenceSession(
        str(exported / "1" / "decoder_step.onnx"), providers=["CPUExecutionProvider"]
    )
    tokens = _tokens(2, 4 + STEPS, seed=4)
    with torch.no_grad():
        full = model(tokens).numpy()  # (B, T, V)
    ids = tokens.numpy()
    cache = KVCache(config.graphs["decoder_step"])
    logits, *entries = session.run(cache.output_names, cache.empty_feeds(ids[:, :4]))  # 4-token prefill
    cache.add(entries, [4, 4])
    worst = float(np.abs(logits - full[:, :4]).max())
    for pos in range(4, ids.shape[1]):  # then 64 steps
        logits, *entries = session.run(cache.output_names, cache.feeds(ids[:, pos : pos + 1]))
        cache.append(entries)
        worst = max(worst, float(np.abs(logits[:, 0] - full[:, pos]).max()))
    assert cache.width >= ids.shape[1] and list(cache.lengths) == [ids.shape[1]] * 2
    assert worst <= TOL


def test_fused_in_place_graph_decodes_like_the_exported_one(exported: Path, tmp_path: Path) -> None:
    """training/step_graph.py's graph of the tiny export, driven by InPlaceKVCache, against the exported
    graph driven by KVCache: rows of different lengths prefilled together, decoding, leaving in any
    order and joining again; logits that differ by whole units agree to float rounding throughout."""
    from app.core.kv_cache import InPlaceKVCache, step_cache
    from training.step_graph import fuse_step_graph, graph_spec

    config = ModelConfig.model_validate_json((exported / "config.json").read_text())
    fused_path = tmp_path / "decoder_step.onnx"
    fuse_step_graph(exported / "1" / "decoder_step.onnx", fused_path)
    caches = []
    for path, spec in (
        (exported / "1" / "decoder_step.onnx", config.graphs["decoder_step"]),
        (fused_path, graph_spec(fused_path, "decoder_step.onnx")),
    ):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        caches.append(step_cache(spec, session, TINY["block_size"]))
    reference, in_place = caches
    assert isinstance(in_place, InPlaceKVCache) and isinstance(reference, KVCache)
    ids = _tokens(6, 80, seed=7).numpy()
    worst = 0.0

    def prefill(rows: list[int], lengths: list[int]) -> None:
        nonlocal worst
        tokens = np.zeros((len(rows), max(lengths)), np.int64)  # right-padded
        for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            tokens[i, :n] = ids[row, :n]
        a, b = (cache.prefill(tokens, lengths) for cache in caches)
        worst = max(worst, float(np.abs(a - b).max()))

    def decode(steps: int) -> None:
        nonlocal worst
        for _ in range(steps):
            tokens = _tokens(
                reference.rows, 1, seed=len(reference.lengths) + int(reference.lengths.sum())
            ).numpy()
            a, b = (cache.decode(tokens) for cache in caches)
            worst = max(worst, float(np.abs(a - b).max()))

    prefill([0, 1, 2], [5, 1, 12])
    decode(20)
    for cache in caches:
        cache.keep([2, 0])  # row 1 leaves, the others swap
    decode(5)
    prefill([3, 4, 5], [30, 2, 7])  # the batch grows past its capacity
    decode(40)
    for cache in caches:
        cache.keep([4])
    decode(3)
    assert list(in_place.lengths) == list(reference.lengths) == [50]
    assert worst <= TOL
