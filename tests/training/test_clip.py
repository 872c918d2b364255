"""The CLIP-style dual encoder: captions from attributes (held-out templates never train), the loss's
positives, the learned temperature, the text encoder's padding invariance, the similarity code the
server shares. The recipe's run (both graphs exported with parity, the figures measured again on
them) is in tests/training/test_cli.py's tiny build of the whole zoo."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.core.embeddings import cosine_ranking, recall_at_k, zero_shot_logits
from training.captions import (
    CAPTION_CHARACTERS,
    HELD_OUT_WORDS,
    RETRIEVAL_TEMPLATES,
    TRAIN_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    caption,
    caption_batch,
    caption_matches,
    caption_tokenizer,
    captioned_shapes_bundle,
    encode_texts,
    longest_caption,
    minimal_pairs,
    prompts,
    template_fields,
)
from training.data import DataError
from training.objectives.contrastive import ContrastiveCaptions, symmetric_info_nce
from training.registry import build_model

TINY = {"image_dim": 16, "image_depth": 1, "text_dim": 16, "text_depth": 1, "embed_dim": 8, "heads": 2}
TOL = 1e-4


def test_captions_say_the_attributes() -> None:
    row = np.array([2, 0, 1, 0])  # triangle, red, large, left
    assert caption(TRAIN_TEMPLATES[0], row) == "a large red triangle on the left"
    assert caption("the {shape} is {colour}", row) == "the triangle is red"
    assert template_fields("a {size} {shape}") == ("size", "shape")
    assert prompts(ZERO_SHOT_TEMPLATES["shape"][0], "shape")[:2] == [
        "a photo of a circle",
        "a photo of a square",
    ]
    assert prompts("an image with something {where}", "position")[2] == "an image with something on the right"


def test_held_out_templates_never_train_and_every_text_fits() -> None:
    held_out = {t for ts in ZERO_SHOT_TEMPLATES.values() for t in ts} | set(RETRIEVAL_TEMPLATES)
    assert not held_out & set(TRAIN_TEMPLATES)
    # Not even as a training caption's wording: no held-out template's filled text is a training one.
    rows = np.array([[s, c, z, p] for s in range(6) for c in range(8) for z in range(2) for p in range(3)])
    training = {caption(t, row) for t in TRAIN_TEMPLATES for row in rows}
    assert not {caption(t, row) for t in held_out for row in rows} & training
    assert set("".join(training)) <= set(CAPTION_CHARACTERS) == set(" ," + string.ascii_lowercase)
    assert longest_caption() + 1 <= build_model("clip").config.max_len
    with pytest.raises(DataError, match="captions need up to"):
        captioned_shapes_bundle(seed=0, limit=16, context_length=20)


def test_filler_is_made_up_words_and_never_a_held_out_one() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.from_numpy(np.array([[2, 0, 1, 0]] * 400))
    texts = caption_batch(rows, generator).texts
    plain = {caption(t, rows[0].numpy()) for t in TRAIN_TEMPLATES}
    with_filler = [t for t in texts if t not in plain]
    assert 0.4 < len(with_filler) / len(texts) < 0.8  # a prefix half the time, a suffix a quarter
    words = {w for t in texts for w in t.replace(",", "").split()}
    assert not words & HELD_OUT_WORDS and {"photo", "of", "an"} <= HELD_OUT_WORDS
    assert all(any(p in t for p in plain) for t in texts)  # the caption itself is always whole
    assert max(map(len, texts)) <= longest_caption()
    assert caption_batch(rows[:3], generator, filler=False).texts[0] in plain


def test_minimal_pairs_differ_in_exactly_one_attribute() -> None:
    pairs = minimal_pairs(2000, seed=0)
    differ = (pairs[:, 0] != pairs[:, 1]).sum(1)
    assert (differ == 1).all()
    per_attribute = (pairs[:, 0] != pairs[:, 1]).mean(0)
    assert np.allclose(per_attribute, 0.25, atol=0.04)  # each attribute a quarter of the pairs
    bundle = captioned_shapes_bundle(seed=0, limit=64, context_length=80)
    assert bundle.train.tensors[0].shape[1:] == (2, 3, 32, 32) and bundle.input_shape == (3, 32, 32)
    assert bundle.test.tensors[0].shape[1:] == (3, 32, 32)  # zero-shot and retrieval: single images


def test_a_caption_matches_every_image_it_is_true_of() -> None:
    images = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 2], [3, 0, 1, 0]])  # two circles, one cross
    mentioned = torch.tensor(
        [[True, False, False, False], [True, True, True, True], [False, True, False, False]]
    )  # "a circle", a full caption of image 1, "something red" (image 2's colour, red)
    matches = caption_matches(images, images, mentioned)
    assert matches.tolist() == [[True, False, True], [True, True, False], [False, False, True]]
    batch = caption_batch(images, torch.Generator().manual_seed(0))
    assert caption_matches(images, images, batch.mentioned).diagonal().all()


def test_loss_is_clips_on_distinct_pairs_and_trains_the_temperature() -> None:
    torch.manual_seed(0)
    model = build_model("clip", **TINY)
    bundle = captioned_shapes_bundle(seed=0, limit=64, context_length=80)
    x, y = bundle.train.tensors[0][:8], bundle.train.tensors[1][:8]  # 8 minimal pairs: 16 images
    loss, metrics = ContrastiveCaptions(bundle, True).loss(model, x, y, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and set(metrics) == {"loss", "match_accuracy", "logit_scale"}
    assert metrics["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    # With every pair distinct the targets are the diagonal: CLIP's cross-entropy both ways.
    logits = torch.randn(5, 5) * 5
    target = torch.arange(5)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.allclose(symmetric_info_nce(logits, torch.eye(5)), clip)
    # A second true caption of image 0 takes half of its target.
    matches = torch.eye(5)
    matches[0, 1] = 1
    row = -(logits[0].log_softmax(0)[:2].mean())
    rest = -torch.stack([logits[i].log_softmax(0)[i] for i in range(1, 5)])
    columns = F.cross_entropy(logits.T, target, reduction="none")
    columns[1] = -(logits[:, 1].log_softmax(0)[:2].mean())  # caption 1 is true of images 0 and 1
    expected = (torch.cat([row[None], rest]).mean() + columns.mean()) / 2
    assert torch.allclose(symmetric_info_nce(logits, matches), expected)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)  # CLIP's clamp


def test_text_embeddings_ignore_padding_and_are_unit_vectors() -> None:
    torch.manual_seed(0)
    model = build_model("clip", **TINY).eval()
    with torch.no_grad():
        for p in model.text_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # larger weights: differences show at 1e-4
    tokenizer = caption_tokenizer()
    texts = ["a red circle", "the large star on the left is blue", "a square"]
    ids, mask = encode_texts(tokenizer, texts)
    with torch.no_grad():
        batched = model.text_encoder(ids, mask)
        for i, text in enumerate(texts):
            alone = model.text_encoder(*encode_texts(tokenizer, [text]))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=TOL, rtol=0)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_similarity_code_the_server_shares() -> None:
    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[0.0, 0.9, 0.1, 0.0], [0.6, 0.0, 0.0, 0.8]], np.float32)
    order, scores = cosine_ranking(queries, gallery, top_k=2)
    assert order.tolist() == [[1, 2], [3, 0]] and np.allclose(scores, [[0.9, 0.1], [0.8, 0.6]])
    relevant = np.array([[False, True, False, False], [True, False, False, False]])
    assert recall_at_k(queries, gallery, relevant, (1, 2)) == {1: 0.5, 2: 1.0}
    logits = zero_shot_logits(gallery[:2], gallery, np.array([10.0, 20.0], np.float32))
    assert logits.tolist() == [[10, 0, 0, 0], [0, 20, 0, 0]]
