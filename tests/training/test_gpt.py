"""GPT: shapes, causality, the KV-cache step against the full forward (PyTorch and onnxruntime),
left-padded batches, and export of both graphs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.schema import ModelConfig, Report
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


def _step(step: GPTDecoderStep, tokens, mask, positions, past) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.no_grad():
        logits, *present = step(tokens, mask, positions, *past)
    return logits, present


def _decode_with_cache(model: GPT, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits (B, T, V): the first ``prefill`` tokens in one call on an empty cache, then one at a time."""
    B, T = tokens.shape
    step = model.step_module()
    past = model.empty_cache(B)
    chunks = []
    start = 0
    for end in [prefill] * (prefill > 0) + list(range(prefill + 1, T + 1)):
        mask = torch.ones(B, end, dtype=torch.long)  # (B, T + S)
        positions = torch.arange(start, end).expand(B, -1)  # (B, S)
        logits, past = _step(step, tokens[:, start:end], mask, positions, past)
        chunks.append(logits)
        start = end
    assert all(p.shape == (B, TINY["heads"], T, TINY["dim"] // TINY["heads"]) for p in past)
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


def test_left_padded_batch_matches_each_prompt_alone(model: GPT) -> None:
    short, long = _tokens(1, 5, seed=2)[0], _tokens(1, 9, seed=3)[0]
    step = model.step_module()
    width = len(long)
    tokens = torch.stack([torch.cat([torch.zeros(width - len(short), dtype=torch.long), short]), long])
    mask = torch.stack(
        [torch.arange(width) >= width - len(short), torch.ones(width, dtype=torch.bool)]
    ).long()
    positions = mask.cumsum(1) - 1  # -1 on padding: the graph clamps it
    logits, past = _step(step, tokens, mask, positions, model.empty_cache(2))
    # Then greedy-decode a few tokens, so that padding also has to stay hidden inside the cache.
    batched = [logits[:, -1]]
    for _ in range(5):
        next_ids = batched[-1].argmax(-1, keepdim=True)  # (B, 1)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        positions = positions[:, -1:] + 1
        logits, past = _step(step, next_ids, mask, positions, past)
        batched.append(logits[:, -1])
    batched = torch.stack(batched, dim=1)  # (B, 6, V)

    for row, prompt in enumerate((short, long)):
        sequence = torch.cat([prompt, batched[row, :-1].argmax(-1)])[None]  # prompt + greedy tokens
        with torch.no_grad():
            alone = model(sequence)[0, len(prompt) - 1 :]  # (6, V)
        assert (batched[row] - alone).abs().max().item() <= TOL


def test_step_graph_is_defined_for_out_of_range_positions_and_any_mask_length(model: GPT) -> None:
    step = model.step_module()
    tokens = _tokens(2, 3)
    past = model.empty_cache(2)
    positions = torch.tensor([[0, 1, 2]]).expand(2, -1)
    ones = torch.ones(2, 3, dtype=torch.long)
    reference, _ = _step(step, tokens, ones, positions, past)
    # Positions are clamped to the table: -1 acts as 0 and past-the-end as block_size - 1.
    clamped, _ = _step(step, tokens, ones, positions + torch.tensor([-1, 0, 0]), past)
    torch.testing.assert_close(clamped, reference, rtol=0, atol=0)
    beyond, _ = _step(step, tokens, ones, torch.full((2, 3), 10_000), past)
    last, _ = _step(step, tokens, ones, torch.full((2, 3), TINY["block_size"] - 1), past)
    torch.testing.assert_close(beyond, last, rtol=0, atol=0)
    # The mask is right-aligned with the keys: extra leading columns are ignored.
    longer, _ = _step(
        step, tokens, torch.cat([torch.zeros(2, 4, dtype=torch.long), ones], 1), positions, past
    )
    torch.testing.assert_close(longer, reference, rtol=0, atol=0)


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
    assert [(s.name, s.dtype, s.shape) for s in step.inputs] == [
        ("tokens", "int64", [-1, -1]),
        ("attention_mask", "int64", [-1, -1]),
        ("position_ids", "int64", [-1, -1]),
        *[(f"past_{name}", "float32", [-1, H, -1, D]) for name in cache],
    ]
    assert [(s.name, s.shape) for s in step.outputs] == [
        ("logits", [-1, -1, V]),
        *[(f"present_{name}", [-1, H, -1, D]) for name in cache],
    ]


def test_onnx_cached_decoding_matches_the_full_forward(model: GPT, exported: Path) -> None:
    session = ort.InferenceSession(
        str(exported / "1" / "decoder_step.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()][3:]
    tokens = _tokens(2, 4 + STEPS, seed=4)
    with torch.no_grad():
        full = model(tokens).numpy()  # (B, T, V)
    B = tokens.shape[0]
    cache = {
        name: np.zeros((B, TINY["heads"], 0, TINY["dim"] // TINY["heads"]), np.float32) for name in names
    }
    ids = tokens.numpy()
    start, worst = 0, 0.0
    for end in [4, *range(5, ids.shape[1] + 1)]:  # a 4-token prefill on the empty cache, then 64 steps
        logits, *present = session.run(
            None,
            {
                "tokens": ids[:, start:end],
                "attention_mask": np.ones((B, end), np.int64),
                "position_ids": np.broadcast_to(np.arange(start, end), (B, end - start)).copy(),
                **cache,
            },
        )
        worst = max(worst, float(np.abs(logits - full[:, start:end]).max()))
        cache = dict(zip(names, present, strict=True))
        start = end
    assert worst <= TOL
