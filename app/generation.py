"""Text generation over an exported GPT ``decoder_step`` graph with its KV cache (no torch).

One prompt is prefilled in a single step call, then every new token is one step call that feeds
the cache back in. The continuous-batching loop of the server will batch these same calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from app.sampling import SamplingParams, select_next_tokens
from app.schema import GraphSpec


@dataclass
class GeneratedText:
    token_ids: list[int]  # the new tokens only
    finish_reason: str  # "length", "eos" or "context" (the model's block size was reached)


def empty_cache(graph: GraphSpec, batch: int = 1) -> dict[str, np.ndarray]:
    """T = 0 past key/value inputs, shaped from the graph's own spec (B, heads, 0, head_dim)."""
    return {
        spec.name: np.zeros((batch, spec.shape[1], 0, spec.shape[3]), np.float32)
        for spec in graph.inputs
        if spec.name.startswith("past_")
    }


def step_feeds(tokens: np.ndarray, cached: int, past: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs of one ``decoder_step`` call for unpadded rows: ``tokens`` (B, S) follow ``cached``
    tokens already in ``past``."""
    batch, new = tokens.shape
    positions = np.arange(cached, cached + new, dtype=np.int64)
    return {
        "tokens": tokens.astype(np.int64, copy=False),
        "attention_mask": np.ones((batch, cached + new), dtype=np.int64),
        "position_ids": np.tile(positions, (batch, 1)),
        **past,
    }


def present_names(past: dict[str, np.ndarray]) -> list[str]:
    return [name.replace("past_", "present_") for name in past]


def generate(
    session: ort.InferenceSession,
    graph: GraphSpec,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int,
    block_size: int,
    eos_id: int | None = None,
) -> GeneratedText:
    """Sample up to ``max_new_tokens`` after ``prompt_ids`` (greedy when temperature is 0)."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    if len(prompt_ids) >= block_size:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {block_size}")
    rng = np.random.default_rng(seed)
    past = empty_cache(graph)
    outputs = ["logits", *present_names(past)]
    step = np.array([prompt_ids], dtype=np.int64)  # (1, S): the whole prompt on the first call
    seen = list(prompt_ids)
    new: list[int] = []
    while True:
        cached = len(seen) - step.shape[1]  # tokens already in the cache
        logits, *presents = session.run(outputs, step_feeds(step, cached, past))
        token = int(select_next_tokens(logits[:, -1], params, rng, [seen])[0])
        new.append(token)
        seen.append(token)
        if eos_id is not None and token == eos_id:
            return GeneratedText(new, "eos")
        if len(new) >= max_new_tokens:
            return GeneratedText(new, "length")
        if len(seen) >= block_size:
            return GeneratedText(new, "context")
        past = dict(zip(past, presents, strict=True))
        step = np.array([[token]], dtype=np.int64)
