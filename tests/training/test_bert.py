"""BERT: shapes, padding invariance (PyTorch and onnxruntime), MLM masking statistics and determinism,
the scrambled-words task, the objectives, export with parity, and config validation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.core.repository_format import ModelConfig, Report
from training.bert_data import IGNORE_INDEX, mask_tokens, scramble_word, scrambled_words_bundle
from training.export import export_to_repository
from training.models.bert import BERT, BERTConfig
from training.registry import build_model, model_family
from training.text import CharTokenizer, builtin_corpus
from training.trainer import MaskedLanguageModeling, MaskedSequenceClassification

TOKENIZER = CharTokenizer(chars=list("abcdefghijklmnop"))  # 21 ids with the specials
TINY = {"vocab_size": TOKENIZER.vocab_size, "max_len": 24, "dim": 32, "heads": 4, "layers": 2}
TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> BERT:
    torch.manual_seed(0)
    model = build_model("bert", **TINY, dropout=0.0).eval()
    # Larger weights than the N(0, 0.02) init, so that logits differ by whole units and the 1e-4
    # tolerances are a real test rather than a comparison of near-constant outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (batch, length), generator=generator)
    ids[:, 0] = TOKENIZER.bos_id
    return ids


def _padded(rows: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids, (ids != 0).long()


def test_registered_and_shapes(model: BERT) -> None:
    assert model_family("bert") == "bert"
    ids = _ids(3, 10)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert model(ids, mask).shape == (3, 2)
        assert model.mlm_logits(ids, mask).shape == (3, 10, TINY["vocab_size"])
    assert model.mlm_head.decoder.weight is model.token_embedding.weight  # tied


@pytest.mark.parametrize("pre_norm", [True, False])
def test_padded_row_equals_alone(model: BERT, pre_norm: bool) -> None:
    net = model if pre_norm else build_model("bert", **TINY, dropout=0.0, pre_norm=False).eval()
    rows = [_ids(1, n, seed=n)[0] for n in (5, 12, 20)]
    ids, mask = _padded(rows, 24)
    with torch.no_grad():
        batched = net(ids, mask)
        batched_mlm = net.mlm_logits(ids, mask)
        for i, row in enumerate(rows):
            alone = net(row[None], torch.ones(1, len(row), dtype=torch.long))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=TOL, rtol=0)
            alone_mlm = net.mlm_logits(row[None], torch.ones(1, len(row), dtype=torch.long))
            torch.testing.assert_close(batched_mlm[i : i + 1, : len(row)], alone_mlm, atol=TOL, rtol=0)
        # An all-padding row stays finite (finite additive mask, not -inf).
        assert torch.isfinite(net(ids, torch.zeros_like(mask))).all()


def test_masking_statistics_and_determinism() -> None:
    vocab, mask_id = 108, 3
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (64, 256), generator=generator)
    ids[:, 0] = 1  # bos
    ids[:, 200:] = 0  # padding
    inputs, labels = mask_tokens(
        ids, generator=torch.Generator().manual_seed(7), mask_id=mask_id, vocab_size=vocab
    )
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, 200:].any()  # never bos or padding
    assert (inputs[~chosen] == ids[~chosen]).all()  # unchosen positions untouched
    assert (labels[chosen] == ids[chosen]).all()
    n = chosen.sum().item()
    assert abs(n / (64 * 199) - 0.15) < 0.01
    masked = (inputs[chosen] == mask_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()  # includes random draws of itself
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - (0.1 + 0.1 / (vocab - 5))) < 0.02
    assert (inputs[chosen] >= 5).logical_or(inputs[chosen] == mask_id).all()  # random ids are ordinary
    again = mask_tokens(ids, generator=torch.Generator().manual_seed(7), mask_id=mask_id, vocab_size=vocab)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    other = mask_tokens(ids, generator=torch.Generator().manual_seed(8), mask_id=mask_id, vocab_size=vocab)
    assert not torch.equal(other[1], labels)


def test_scramble_word_keeps_ends_and_letters() -> None:
    rng = random.Random(0)
    for word in ("function", "returns", "attribute", "list"):
        scrambled = scramble_word(word, rng)
        assert scrambled != word and sorted(scrambled) == sorted(word)
        assert scrambled[0] == word[0] and scrambled[-1] == word[-1]
    assert scramble_word("book", rng) is None  # "oo": no other order exists


def test_scrambled_words_task() -> None:
    bundle = scrambled_words_bundle(n_train=200, n_val=50, n_test=100, max_len=48)
    tokenizer = bundle.tokenizer
    x, y = bundle.train.tensors
    assert x.shape == (200, 48) and bundle.chance_accuracy == 0.5
    assert (x[:, 0] == tokenizer.bos_id).all()
    assert y.float().mean().item() == 0.5
    # Right-padded: no real token after the first pad.
    real = x != tokenizer.pad_id
    assert (real.cumprod(1) == real).all()
    corpus_words = set(builtin_corpus().split())
    for row in x[y == 0][:20]:  # scrambled rows hold words the corpus never spells
        words = tokenizer.decode(row).split()
        assert len(words) >= 5 and any(w not in corpus_words for w in words)
    again = scrambled_words_bundle(n_train=200, n_val=50, n_test=100, max_len=48)
    assert torch.equal(again.train.tensors[0], x)
    train_texts = {tokenizer.decode(r) for r in x}
    assert not train_texts & {tokenizer.decode(r) for r in bundle.test.tensors[0]}


def test_objectives_run_and_backpropagate(model: BERT) -> None:
    ids, _ = _padded([_ids(1, n, seed=n)[0] for n in (8, 16, 24, 12)], 24)
    generator = torch.Generator().manual_seed(0)
    loss, metrics = MaskedLanguageModeling(TINY["vocab_size"]).loss(model, ids, None, generator)
    assert torch.isfinite(loss) and set(metrics) == {"loss", "masked_accuracy"}
    loss, metrics = MaskedSequenceClassification().loss(model, ids, torch.tensor([0, 1, 0, 1]), generator)
    loss.backward()
    assert model.classifier.weight.grad is not None and 0 <= metrics["accuracy"] <= 1
    model.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def exported(model: BERT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    export_to_repository(
        model.graphs(),
        repository=repository,
        config_fields={
            "name": "tiny-bert",
            "family": "bert",
            "task": "classification",
            "labels": ["shuffled", "real"],
            "preprocessing": {
                "kind": "text",
                "tokenizer": TOKENIZER.to_dict(),
                "max_length": TINY["max_len"],
            },
        },
        report_fields={"metrics": {}, "command": "pytest", "seed": 0},
        batch_sizes=(1, 7),
    )
    return repository / "tiny-bert"


def test_export_parity_and_padding_in_onnxruntime(model: BERT, exported: Path) -> None:
    config = ModelConfig.model_validate_json((exported / "config.json").read_text())
    report = Report.model_validate_json((exported / "1" / "report.json").read_text())
    assert report.parity.max_abs_diff <= TOL
    spec = config.graphs["model"]
    assert [(s.name, s.dtype, s.shape) for s in spec.inputs] == [
        ("input_ids", "int64", [-1, -1]),
        ("attention_mask", "int64", [-1, -1]),
    ]
    assert [(s.name, s.shape) for s in spec.outputs] == [("logits", [-1, 2])]

    session = ort.InferenceSession(str(exported / "1" / spec.file), providers=["CPUExecutionProvider"])
    rows = [_ids(1, n, seed=n)[0] for n in (3, 9, 17)]
    ids, mask = _padded(rows, 20)
    (batched,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    for i, row in enumerate(rows):
        alone_ids = row[None].numpy()
        (alone,) = session.run(
            ["logits"], {"input_ids": alone_ids, "attention_mask": np.ones_like(alone_ids)}
        )
        np.testing.assert_allclose(batched[i : i + 1], alone, atol=TOL, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(batched, model(ids, mask).numpy(), atol=TOL, rtol=0)
    (empty,) = session.run(
        ["logits"], {"input_ids": ids.numpy(), "attention_mask": np.zeros_like(mask.numpy())}
    )
    assert np.isfinite(empty).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dim", 30),  # not divisible by heads
        ("heads", 0),
        ("max_len", 1),
        ("num_classes", 1),
        ("num_segments", 0),
        ("mlp_ratio", -1.0),
        ("dropout", 1.5),
        ("activation", "swish"),
        ("pre_norm", "yes"),
        ("vocab_size", 0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        BERTConfig(**{**TINY, field: value})
    with pytest.raises(ValueError, match=field):
        build_model("bert", **{**TINY, field: value})
