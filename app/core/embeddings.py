"""Similarities in a dual encoder's shared embedding space (CLIP): zero-shot logits, rankings and
recall@k. Shared by the server (app/dataplane.py) and by training's evaluation of the exported graphs,
so that the figures in report.json come from exactly the code that answers requests. Torch-free.

Both encoders of a dual encoder return unit vectors (the graphs L2-normalise them), so a dot product
is the cosine similarity.
"""

from __future__ import annotations

import numpy as np


def zero_shot_logits(
    image_embeds: np.ndarray, label_embeds: np.ndarray, logit_scale: np.ndarray
) -> np.ndarray:
    """(I, D) images, (L, D) label prompts, the learned scale per image (I,) -> (I, L) logits:
    ``logit_scale * cosine``, as in training; their softmax over the labels is the zero-shot answer."""
    return (image_embeds @ label_embeds.T) * np.asarray(logit_scale, image_embeds.dtype).reshape(-1, 1)


def cosine_ranking(
    query_embeds: np.ndarray, gallery_embeds: np.ndarray, top_k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) queries against (G, D) gallery items -> each query's gallery indices, most similar first,
    and their cosine similarities, both (Q, k) with k = ``top_k`` or G. Ties keep gallery order."""
    scores = query_embeds @ gallery_embeds.T  # (Q, G)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]  # (Q, k)
    return order, np.take_along_axis(scores, order, axis=1)


def recall_at_k(
    query_embeds: np.ndarray, gallery_embeds: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]
) -> dict[int, float]:
    """Share of queries with a relevant gallery item among their ``k`` most similar, for each k.
    ``relevant``: (Q, G) bool, which gallery items answer which query."""
    order, _ = cosine_ranking(query_embeds, gallery_embeds, max(ks))
    hits = np.take_along_axis(relevant, order, axis=1)  # (Q, max k): is the j-th answer relevant?
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
