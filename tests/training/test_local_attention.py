"""Local (sliding-window) attention: the chunked O(T * w) computation against a dense T x T mask, the
window's reach in the GPT and the BERT, and the exported GPT decoding through the server's ring cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.core.kv_cache import KVCache, step_cache
from app.core.repository_format import AttentionWindow, ModelConfig, Report
from training.export import export_to_repository
from training.local_attention import MASK_VALUE, SlidingWindow, sliding_window_attention, visible
from training.registry import build_model
from training.text import CharTokenizer

TOKENIZER = CharTokenizer(chars=list("abcdefghijklmnop"))
GPT_TINY = {"vocab_size": TOKENIZER.vocab_size, "block_size": 96, "dim": 32, "heads": 4, "layers": 2}
BERT_TINY = {"vocab_size": TOKENIZER.vocab_size, "max_len": 40, "dim": 32, "heads": 4, "layers": 2}
TOL = 1e-4


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Weights larger than the N(0, 0.02) init, so that outputs differ by whole units."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _gpt(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturbed(build_model("gpt", **{**GPT_TINY, "dropout": 0.0, **overrides}))


def _bert(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturbed(build_model("bert", **{**BERT_TINY, "dropout": 0.0, **overrides}))


def _dense(q, k, v, spec, scale, key_bias=None, slopes=None):
    """The same attention as one T x T masked softmax: the O(T^2) oracle."""
    pos = torch.arange(q.shape[2])
    mask = torch.where(visible(pos[:, None], pos[None, :], spec), 0.0, MASK_VALUE)  # (T, T)
    if slopes is not None:
        mask = mask - slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()  # (H, T, T)
    if key_bias is not None:
        mask = mask + key_bias[:, None, None, :]  # (B, H, T, T)
    return torch.softmax((q @ k.transpose(-2, -1)) * scale + mask, dim=-1) @ v


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_attention_equals_the_dense_masked_attention(causal: bool) -> None:
    """Lengths shorter than, equal to and many times the window, with and without global positions,
    right-padding and the distance bias; padded queries are not compared (nothing reads them)."""
    torch.manual_seed(0)
    slopes = torch.tensor([0.5, 0.25, 0.125])
    for T, w, g, padded, biased in itertools.product(
        [1, 3, 8, 17, 33], [1, 2, 4, 8], [0, 1, 3], *[[0, 1]] * 2
    ):
        spec = SlidingWindow(w, g, causal)
        q, k, v = (torch.randn(2, 3, T, 5) for _ in range(3))
        lengths = torch.tensor([T, max(1, T // 2)] if padded else [T, T])
        key_bias = torch.where(torch.arange(T)[None] >= lengths[:, None], MASK_VALUE, 0.0) if padded else None
        chunked = sliding_window_attention(q, k, v, spec, 0.4, key_bias, slopes if biased else None)
        dense = _dense(q, k, v, spec, 0.4, key_bias, slopes if biased else None)
        real = (torch.arange(T)[None] < lengths[:, None])[:, None, :, None]  # (B, 1, T, 1)
        assert float(((chunked - dense).abs() * real).max()) <= 1e-5, (T, w, g, padded, biased)


def test_configs_check_the_window_fields() -> None:
    with pytest.raises(ValueError, match="global_tokens needs attention_window"):
        build_model("gpt", **GPT_TINY, global_tokens=2)
    with pytest.raises(ValueError, match="attention_window must be an integer >= 1"):
        build_model("bert", **BERT_TINY, attention_window=0)
    with pytest.raises(ValueError, match="global_tokens must be an integer >= 0"):
        build_model("gpt", **GPT_TINY, attention_window=4, global_tokens=-1)
    with pytest.raises(ValueError, match=r"attention_window \(40\) must be smaller than the context \(40\)"):
        build_model("bert", **BERT_TINY, attention_window=40)


def test_a_gpt_position_sees_its_window_and_the_global_positions_only() -> None:
    """One layer, window 4, 2 global positions: the logits at position 20 move when a global token or
    one of the last 4 tokens changes, and stay put (exactly) when any other earlier token does."""
    model = _gpt(layers=1, attention_window=4, global_tokens=2)
    tokens = torch.randint(0, GPT_TINY["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(tokens)[0, 20]
        for pos in range(21):
            changed = tokens.clone()
            changed[0, pos] = (changed[0, pos] + 1) % GPT_TINY["vocab_size"]
            moved = float((model(changed)[0, 20] - base).abs().max())
            if pos < 2 or pos > 16:
                assert moved > 1e-3, pos
            else:
                assert moved == 0.0, pos


def test_bert_window_over_the_whole_row_is_full_attention_and_padding_is_invisible() -> None:
    full = _bert()
    ids = torch.randint(1, BERT_TINY["vocab_size"], (2, 37), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    ids = ids * mask
    with torch.no_grad():
        wide = build_model("bert", **BERT_TINY, dropout=0.0, attention_window=37).eval()  # T = 37
        wide.load_state_dict(full.state_dict())
        assert float((wide.encode(ids, mask) - full.encode(ids, mask)).abs().max()) <= 1e-5
        local = build_model("bert", **BERT_TINY, dropout=0.0, attention_window=4, global_tokens=1).eval()
        local.load_state_dict(full.state_dict())
        assert float((local.encode(ids, mask) - full.encode(ids, mask)).abs().max()) > 0.1
        alone = local(ids[1:, :20], mask[1:, :20])
        assert float((local(ids, mask)[1] - alone[0]).abs().max()) <= 1e-5


def test_bert_with_local_attention_exports_with_parity(tmp_path: Path) -> None:
    model = _bert(attention_window=4, global_tokens=1)
    export_to_repository(
        model.graphs(),
        repository=tmp_path,
        config_fields={"name": "tiny-bert", "family": "bert", "task": "classification", "labels": ["a", "b"]},
        report_fields={"metrics": {}, "command": "pytest", "seed": 0},
    )
    report = Report.model_validate_json((tmp_path / "tiny-bert" / "1" / "report.json").read_text())
    assert report.parity.max_abs_diff <= TOL
    session = ort.InferenceSession(str(tmp_path / "tiny-bert" / "1" / "model.onnx"))
    ids = torch.randint(1, BERT_TINY["vocab_size"], (3, 29), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        assert np.abs(logits - model(ids, mask).numpy()).max() <= TOL


@pytest.fixture(scope="module")
def local_gpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = _gpt(attention_window=8, global_tokens=2)
    repository = tmp_path_factory.mktemp("repository")
    export_to_repository(
        model.graphs(),
        repository=repository,
        config_fields={
            "name": "tiny-local-gpt",
            "family": "gpt",
            "task": "text_generation",
            "attention": model.config.window.as_format().model_dump(),
            "preprocessing": {"kind": "text", "tokenizer": TOKENIZER.to_dict(), "max_length": 96},
        },
        report_fields={"metrics": {}, "command": "pytest", "seed": 0},
    )
    return model, repository / "tiny-local-gpt"


def test_exported_local_gpt_decodes_through_the_ring_like_the_full_forward(local_gpt) -> None:
    """Two rows of different lengths, a prefill longer than the window, then 60 steps: 80 and 73
    positions through a cache of 2 + 8 slots, each step's logits equal to the full-sequence graph's."""
    model, folder = local_gpt
    config = ModelConfig.model_validate_json((folder / "config.json").read_text())
    report = Report.model_validate_json((folder / "1" / "report.json").read_text())
    assert report.parity.max_abs_diff <= TOL
    assert config.attention == AttentionWindow(window=8, global_tokens=2)
    session = ort.InferenceSession(str(folder / "1" / "decoder_step.onnx"))
    full_graph = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    ids = torch.randint(
        0, GPT_TINY["vocab_size"], (2, 90), generator=torch.Generator().manual_seed(4)
    ).numpy()
    (full,) = full_graph.run(None, {"tokens": ids})
    with torch.no_grad():
        assert np.abs(full - model(torch.from_numpy(ids)).numpy()).max() <= TOL
    cache = step_cache(config.graphs["decoder_step"], session, 96, window=config.attention)
    assert isinstance(cache, KVCache)
    logits = cache.prefill(ids[:, :20] * (np.arange(20) < [[20], [13]]), [20, 13], every_position=True)
    worst = max(np.abs(logits[0] - full[0, :20]).max(), np.abs(logits[1, :13] - full[1, :13]).max())
    positions = np.array([20, 13])
    for _ in range(60):
        step = cache.decode(ids[[0, 1], positions][:, None])
        worst = max(worst, np.abs(step - full[[0, 1], positions]).max())
        positions += 1
    assert worst <= TOL
    assert list(cache.lengths) == [80, 73] and cache.width == 10  # the ring, never the sequence


def test_a_ring_slot_holds_the_newest_position_of_its_turn() -> None:
    window = AttentionWindow(window=4, global_tokens=2)
    positions = np.arange(12)
    assert window.slot_of(positions).tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3]
    assert window.slot_of(torch.arange(12)).tolist() == window.slot_of(positions).tolist()
