"""Next-token selection from language-model logits: greedy, temperature, top-k, top-p, repetition,
presence and frequency penalties; and the log-probabilities a response reports.

NumPy only (the serving image has no torch). The order of operations is the one of Hugging Face's
``generate``, with OpenAI's additive penalties after the repetition penalty (as vLLM applies them):
repetition penalty -> presence/frequency penalties -> temperature -> top-k -> top-p -> draw.
Temperature 0 means greedy (argmax after the penalties; top-k and top-p cannot change an argmax).

Determinism: every row draws exactly one uniform number from its generator per call, so the same
seed gives the same text. Give one ``np.random.Generator`` per row (a request's own, seeded from
the request) and a row's text also stays the same whichever other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy; < 1 sharpens the distribution, > 1 flattens it
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches p; 1 = off
    # CTRL (Keskar et al., 2019): divide positive logits of already-seen tokens by it, multiply
    # negative ones; 1 = off, ~1.1-1.3 discourages loops.
    repetition_penalty: float = 1.0
    # OpenAI's additive penalties, over the tokens generated so far (not the prompt):
    # logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0); 0 = off.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def counts_generated(self) -> bool:
        """Whether selection needs each row's generated tokens."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0; got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int | np.integer) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off); got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p!r}")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be a number > 0; got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number; got {getattr(self, name)!r}")


def apply_repetition_penalty(
    logits: np.ndarray, previous_tokens: Sequence[Sequence[int]], penalty: float
) -> np.ndarray:
    """(B, V) logits with each row's already-seen tokens penalised (each token once, however often)."""
    out = np.array(logits, dtype=np.float64)  # a copy: the caller's logits stay as they were
    if penalty == 1.0:
        return out
    for row, seen in zip(out, previous_tokens, strict=True):
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        if ids.size:
            values = row[ids]
            row[ids] = np.where(values > 0, values / penalty, values * penalty)
    return out


def apply_presence_frequency_penalties(
    logits: np.ndarray, generated: Sequence[Sequence[int]], presence: float, frequency: float
) -> np.ndarray:
    """(B, V) logits minus OpenAI's penalties: ``frequency * count + presence * (count > 0)`` per
    token, counted over each row's generated tokens."""
    out = np.array(logits, dtype=np.float64)
    vocab = out.shape[1]
    for row, tokens in zip(out, generated, strict=True):
        if len(tokens):
            counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab)[:vocab]
            row -= frequency * counts + presence * (counts > 0)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (finite logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# One token's log-probability and the ``top`` most likely (token, log-probability) pairs.
TokenLogprob = tuple[int, float, tuple[tuple[int, float], ...]]


def token_logprobs(logits: np.ndarray, tokens: Sequence[int], top: Sequence[int]) -> list[TokenLogprob]:
    """For each row: the chosen token's log-probability under the model (the log-softmax of its raw
    logits, before penalties and temperature: what the model says, as OpenAI and vLLM report it),
    and the row's ``top[i]`` most likely tokens, most likely first."""
    logp = log_softmax(logits)  # (B, V)
    out = []
    for row, token, n in zip(logp, tokens, top, strict=True):
        best: tuple[tuple[int, float], ...] = ()
        if n > 0:
            ids = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
            ids = ids[np.argsort(-row[ids], kind="stable")]
            best = tuple((int(i), float(row[i])) for i in ids)
        out.append((int(token), float(row[token]), best))
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Set all but the k largest logits of each row to -inf (ties at the k-th value are all kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k, None]  # (B, 1) the k-th largest value
    return np.where(logits >= kth, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter (Holtzman et al., 2019): per row keep the smallest set of most likely tokens
    whose probability reaches ``p`` (always at least the most likely token); the rest get -inf."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")  # (B, V) most likely first
    sorted_probs = np.take_along_axis(softmax(logits), order, axis=-1)  # (B, V)
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # probability of the tokens ahead
    drop_sorted = mass_before >= p  # the tokens ahead already reach p
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for any logits a row can hold: -inf logits get probability
    exactly 0, and in a row with +inf logits those share the probability (a classifier whose logits
    overflowed still ranks). A row needs one logit above -inf."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=-1, keepdims=True)
    infinite = np.isposinf(top)
    if infinite.any():
        z = np.where(infinite, np.where(np.isposinf(z), 0.0, -np.inf), z)
        top = np.where(infinite, 0.0, top)
    e = np.exp(z - top)
    return e / e.sum(axis=-1, keepdims=True)


def next_token_distribution(
    logits: np.ndarray,
    params: SamplingParams,
    previous_tokens: Sequence[Sequence[int]] | None = None,
    generated_tokens: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """(B, V) probabilities that :func:`select_next_tokens` samples from (temperature > 0)."""
    return _filtered_softmax(_tempered(logits, params, previous_tokens, generated_tokens), params)


def select_next_tokens(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
    previous_tokens: Sequence[Sequence[int]] | None = None,
    generated_tokens: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Next token id per row, (B,) int64, from ``logits`` (B, V).

    ``rng``: one generator for the whole batch (rows draw in order) or one per row; not needed for
    greedy. ``previous_tokens``: per row, the ids seen so far (prompt and output), for the repetition
    penalty; ``generated_tokens``: per row, the output so far, for the presence/frequency penalties.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (batch, vocab) with vocab >= 1; got {logits.shape}")
    if params.temperature == 0:
        if params.repetition_penalty == 1.0 and not params.counts_generated:
            return np.argmax(logits, axis=-1).astype(np.int64)  # the float64 copy changes no argmax
        penalised = _penalised(logits, params, previous_tokens, generated_tokens)
        return np.argmax(penalised, axis=-1).astype(np.int64)
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs a np.random.Generator")
    weights = _unnormalised_distribution(_tempered(logits, params, previous_tokens, generated_tokens), params)
    batch, vocab = weights.shape  # (B, V)
    if isinstance(rng, np.random.Generator):
        uniforms = rng.random(batch)  # (B,)
    else:
        if len(rng) != batch:
            raise ValueError(f"got {len(rng)} generators for {batch} rows")
        uniforms = np.array([g.random() for g in rng])
    # Inverse CDF: the first token whose cumulative weight exceeds u times the row's total. Tokens of
    # weight 0 never qualify (their cumulative value equals their predecessor's).
    cdf = np.cumsum(weights, axis=-1)  # (B, V)
    uniforms *= cdf[:, -1]
    picks = (cdf <= uniforms[:, None]).sum(axis=-1)  # = searchsorted(side="right") per row, vectorised
    return np.minimum(picks, vocab - 1, out=picks)


def _unnormalised_distribution(z: np.ndarray, params: SamplingParams) -> np.ndarray:
    """(B, V) weights proportional to :func:`next_token_distribution`'s probabilities, from the
    penalised, tempered logits ``z`` (float64). The common case (finite logits, no top-p) skips the
    normalisation and top-p's sort: a decode step samples every row every token (with the decode
    loop's kept sampling groups, it took 11% of the instructions off a sampled one-row step of the
    optimized GPT step graph; callgrind, whole decode loop)."""
    vocab = z.shape[1]
    top = z.max(axis=-1, keepdims=True)  # (B, 1)
    if params.top_p < 1.0 or not np.isfinite(top).all():
        return _filtered_softmax(z, params)
    weights = np.exp(z - top)  # in [0, 1]; -inf logits get 0
    if 0 < params.top_k < vocab:  # as top_k_filter: ties at the k-th largest value are all kept
        kth = np.partition(z, vocab - params.top_k, axis=-1)[:, vocab - params.top_k, None]  # (B, 1)
        weights *= z >= kth
    return weights


def _filtered_softmax(z: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The general path: top-k, then top-p, then a softmax that copes with any logits."""
    return softmax(top_p_filter(top_k_filter(z, params.top_k), params.top_p))


def _tempered(
    logits: np.ndarray,
    params: SamplingParams,
    previous_tokens: Sequence[Sequence[int]] | None,
    generated_tokens: Sequence[Sequence[int]] | None,
) -> np.ndarray:
    """(B, V) float64 logits after the penalties, divided by the temperature (> 0)."""
    return _penalised(logits, params, previous_tokens, generated_tokens) / params.temperature


def _penalised(
    logits: np.ndarray,
    params: SamplingParams,
    previous_tokens: Sequence[Sequence[int]] | None,
    generated_tokens: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    out = np.asarray(logits, dtype=np.float64)
    if previous_tokens is not None and params.repetition_penalty != 1.0:
        out = apply_repetition_penalty(out, previous_tokens, params.repetition_penalty)
    if generated_tokens is not None and params.counts_generated:
        out = apply_presence_frequency_penalties(
            out, generated_tokens, params.presence_penalty, params.frequency_penalty
        )
    return out
