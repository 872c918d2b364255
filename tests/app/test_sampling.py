"""Next-token selection: greedy, seeded sampling, top-k, top-p, repetition penalty (NumPy only)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from app.core.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    next_token_distribution,
    select_next_tokens,
    softmax,
    top_p_filter,
)

V = 50


def _logits(batch: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=(batch, V)).astype(np.float32)


def test_greedy_is_argmax_and_needs_no_generator() -> None:
    logits = _logits()
    picks = select_next_tokens(logits, SamplingParams(temperature=0.0, top_k=3, top_p=0.5))
    assert picks.dtype == np.int64 and picks.shape == (4,)
    np.testing.assert_array_equal(picks, logits.argmax(-1))


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    logits = _logits(batch=8)
    params = SamplingParams(temperature=1.0)

    def run(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(t) for _ in range(20) for t in select_next_tokens(logits, params, rng)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_per_row_generators_make_a_row_independent_of_its_batch() -> None:
    logits = _logits(batch=3)
    params = SamplingParams(temperature=2.0, top_p=0.95)
    alone_rng, batch_rngs = np.random.default_rng(5), [np.random.default_rng(s) for s in (1, 5, 9)]
    alone = [int(select_next_tokens(logits[1:2], params, [alone_rng])[0]) for _ in range(30)]
    batched = [int(select_next_tokens(logits, params, batch_rngs)[1]) for _ in range(30)]
    assert batched == alone and len(set(alone)) > 3
    with pytest.raises(ValueError, match="generators"):
        select_next_tokens(logits, params, [np.random.default_rng(0)])


def test_top_k_never_picks_outside_the_k_best() -> None:
    logits = _logits(batch=16)
    best = np.argsort(-logits, axis=-1)[:, :5]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        picks = select_next_tokens(logits, SamplingParams(temperature=5.0, top_k=5), rng)
        assert all(p in row for p, row in zip(picks, best, strict=True))
        seen.update(zip(range(16), picks.tolist(), strict=True))
    assert len(seen) > 16 * 3  # a high temperature really spreads over the k tokens


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = np.array([[0.5, 0.05, 0.3, 0.15]])
    logits = np.log(probs)
    kept = lambda p: set(np.flatnonzero(np.isfinite(top_p_filter(logits, p))[0]).tolist())  # noqa: E731
    assert kept(0.5) == {0}  # 0.5 alone reaches 0.5
    assert kept(0.51) == {0, 2}
    assert kept(0.79) == {0, 2}  # (exactly 0.8 would test float rounding, not the rule)
    assert kept(0.81) == {0, 2, 3}
    assert kept(0.96) == {0, 1, 2, 3}
    assert kept(1e-9) == {0}  # never empty
    # The distribution sampled from is the kept set, renormalised.
    dist = next_token_distribution(logits, SamplingParams(temperature=1.0, top_p=0.81))
    np.testing.assert_allclose(dist[0], [0.5 / 0.95, 0.0, 0.3 / 0.95, 0.15 / 0.95], atol=1e-12)
    rng = np.random.default_rng(0)
    picks = {int(select_next_tokens(logits, SamplingParams(top_p=0.51), rng)[0]) for _ in range(300)}
    assert picks == {0, 2}


def test_temperature_sharpens_and_flattens() -> None:
    logits = _logits(batch=1)
    entropy = lambda p: float(-(p * np.log(p + 1e-300)).sum())  # noqa: E731
    cold, warm, hot = (
        next_token_distribution(logits, SamplingParams(temperature=t)) for t in (0.3, 1.0, 3.0)
    )
    assert entropy(cold) < entropy(warm) < entropy(hot)
    np.testing.assert_allclose(warm, softmax(logits), atol=1e-12)


def test_samples_follow_the_distribution() -> None:
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    rng = np.random.default_rng(0)
    picks = np.array([select_next_tokens(logits, SamplingParams(), rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(picks, minlength=3) / 4000, [0.6, 0.3, 0.1], atol=0.03)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.8, top_k=20), SamplingParams(temperature=1.3), SamplingParams(top_k=1)],
)
def test_each_row_draws_one_uniform_through_the_inverse_cdf_of_its_distribution(params) -> None:
    """The sampler's shortcut (no normalisation, no top-p sort) picks exactly the token that the
    inverse CDF of next_token_distribution gives for the row's one uniform number."""
    logits = np.random.default_rng(3).normal(scale=3.0, size=(400, 108)).astype(np.float32)
    logits[::7, ::5] = -np.inf  # masked tokens: probability 0
    rngs = [np.random.default_rng(i) for i in range(len(logits))]
    uniforms = np.array([np.random.default_rng(i).random() for i in range(len(logits))])
    cdf = np.cumsum(next_token_distribution(logits, params), axis=-1)
    expected = [np.searchsorted(row, u * row[-1], side="right") for row, u in zip(cdf, uniforms, strict=True)]
    np.testing.assert_array_equal(select_next_tokens(logits, params, rngs), expected)


def test_repetition_penalty_discourages_seen_tokens() -> None:
    logits = np.array([[2.0, -1.0, 1.9, 0.5]], dtype=np.float32)
    penalised = apply_repetition_penalty(logits, [[0, 1, 1]], 2.0)
    np.testing.assert_allclose(penalised, [[1.0, -2.0, 1.9, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(logits, np.float32([[2.0, -1.0, 1.9, 0.5]]))  # the input is left alone
    greedy = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert select_next_tokens(logits, greedy, previous_tokens=[[0]])[0] == 2
    assert select_next_tokens(logits, greedy, previous_tokens=[[]])[0] == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_invalid_params_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_sampling_needs_a_generator_and_2d_logits() -> None:
    with pytest.raises(ValueError, match="Generator"):
        select_next_tokens(_logits(), SamplingParams(temperature=1.0))
    with pytest.raises(ValueError, match="batch, vocab"):
        select_next_tokens(np.zeros(5), SamplingParams(temperature=0.0))


def test_module_does_not_import_torch() -> None:
    code = "import sys, app.core.sampling; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
