"""Recurrent classifiers (training/models/rnn.py) and the order task (training/sequence_tasks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.export import ExportResult, export_to_repository
from training.models.rnn import RNNClassifier
from training.registry import build_model, list_models, model_family
from training.sequence_tasks import (
    MARKERS,
    ORDER_LABELS,
    bag_of_tokens_baseline,
    make_order_task,
    order_task_tokenizer,
)

BUILDERS = ["bigru", "bilstm", "gru", "lstm", "rnn"]
TINY = {"embed_dim": 6, "hidden_size": 8}  # small enough to keep the file fast on a loaded 2-core CPU


def _tiny(name: str, **overrides) -> RNNClassifier:
    torch.manual_seed(0)
    return build_model(name, **{**TINY, **overrides}).eval()


def _padded_batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random symbol ids (5..14) right-padded with 0 to ``width``; lengths in the given (unsorted) order."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 15, (len(lengths), width), generator=generator)
    for row, length in enumerate(lengths):
        tokens[row, length:] = 0
    return tokens, torch.tensor(lengths)


# ----------------------------------------------------------------------------------------- model


def test_builders_are_registered_in_the_rnn_family() -> None:
    assert list_models("rnn") == BUILDERS
    assert all(model_family(name) == "rnn" for name in BUILDERS)
    cells = {name: (_tiny(name).config.cell, _tiny(name).config.bidirectional) for name in BUILDERS}
    assert cells == {
        "rnn": ("rnn", False),
        "lstm": ("lstm", False),
        "gru": ("gru", False),
        "bilstm": ("lstm", True),
        "bigru": ("gru", True),
    }
    # Overrides win over a builder's defaults.
    assert build_model("lstm", bidirectional=True, **TINY).config.bidirectional is True


@pytest.mark.parametrize("name", BUILDERS)
def test_forward_shape_and_gradients(name: str) -> None:
    model = _tiny(name, num_classes=3, dropout=0.1).train()
    tokens, lengths = _padded_batch([3, 7, 1, 5, 7], width=7)
    logits = model(tokens, lengths)
    assert logits.shape == (5, 3) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not model.embedding.weight.grad[0].any()  # the pad row never trains


@pytest.mark.parametrize("name", ["rnn", "lstm", "bigru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_padded_row_equals_the_sequence_alone(name: str, layers: int) -> None:
    model = _tiny(name, num_layers=layers)
    lengths = [4, 11, 1, 7, 11, 2]  # unsorted, the full width included, a single token included
    tokens, lengths_t = _padded_batch(lengths, width=11)
    # Whatever sits beyond a row's length must not matter either (not only the pad id).
    garbage = tokens.clone()
    for row, length in enumerate(lengths):
        garbage[row, length:] = 9
    with torch.no_grad():
        batch = model(tokens, lengths_t)
        batch_garbage = model(garbage, lengths_t)
        alone = torch.cat([model(tokens[i : i + 1, :n], torch.tensor([n])) for i, n in enumerate(lengths)])
    assert (batch - alone).abs().max() <= 1e-5
    assert (batch_garbage - alone).abs().max() <= 1e-5


def test_lengths_are_clamped_to_the_sequence_width() -> None:
    # ONNX callers may send 0 or a length past the padded width; both mean "clamp", not "crash".
    model = _tiny("bilstm")
    tokens, _ = _padded_batch([6, 6, 6], width=6)
    with torch.no_grad():
        clamped = model(tokens, torch.tensor([0, 9, 6]))
        expected = model(tokens, torch.tensor([1, 6, 6]))
    assert torch.equal(clamped, expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),
        ("num_classes", -1),
        ("embed_dim", 2.5),
        ("hidden_size", True),
        ("num_layers", 0),
        ("cell", "transformer"),
        ("bidirectional", 1),
        ("dropout", 1.0),
        ("pad_id", 15),
        ("pad_id", -1),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        build_model("lstm", **{field: value})


# ----------------------------------------------------------------------------------------- ONNX


def _export(tmp_path: Path, model: RNNClassifier) -> ExportResult:
    return export_to_repository(
        model.graphs(),
        repository=tmp_path,
        config_fields={
            "name": "order-rnn",
            "family": "rnn",
            "task": "classification",
            "labels": ORDER_LABELS,
        },
        report_fields={"metrics": {}, "command": "pytest", "seed": 0},
    )


@pytest.mark.parametrize("name", ["lstm", "bigru"])
def test_onnx_export_parity_and_padding(tmp_path: Path, name: str) -> None:
    model = _tiny(name)
    result = _export(tmp_path, model)
    # Parity covers batch 1/7/32 and sequence widths 5 and 20 (the example is 12), with random
    # lengths up to 12, i.e. also 0 and past the width: the graph must clamp as PyTorch does.
    assert result.report.parity.max_abs_diff <= 1e-4
    spec = result.config.graphs["model"]
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [
        ("tokens", "int64", [-1, -1]),
        ("lengths", "int64", [-1]),
    ]
    assert [(t.name, t.shape) for t in spec.outputs] == [("logits", [-1, 4])]

    session = ort.InferenceSession(str(result.path / spec.file), providers=["CPUExecutionProvider"])
    lengths = [3, 17, 1, 9, 17, 6, 12]
    tokens, lengths_t = _padded_batch(lengths, width=17, seed=1)
    (batch,) = session.run(["logits"], {"tokens": tokens.numpy(), "lengths": lengths_t.numpy()})
    alone = np.concatenate(
        [
            session.run(["logits"], {"tokens": tokens[i : i + 1, :n].numpy(), "lengths": np.array([n])})[0]
            for i, n in enumerate(lengths)
        ]
    )
    assert np.abs(batch - alone).max() <= 1e-5
    with torch.no_grad():
        expected = model(tokens, lengths_t).numpy()
    assert np.abs(batch - expected).max() <= 1e-4


# ----------------------------------------------------------------------------------------- task


def test_order_task_is_deterministic_balanced_and_well_formed() -> None:
    task = make_order_task(400, seed=3)
    again = make_order_task(400, seed=3)
    other = make_order_task(400, seed=4)
    for a, b in zip(task[:3], again[:3], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(task.tokens, other.tokens)

    tokens, lengths, labels, vocab, label_names = task
    assert tokens.shape == (400, 40) and tokens.dtype == lengths.dtype == labels.dtype == torch.int64
    assert label_names == ORDER_LABELS
    assert torch.bincount(labels, minlength=4).tolist() == [100] * 4
    assert int(lengths.min()) >= 8 and int(lengths.max()) <= 40
    positions = torch.arange(40)
    inside = positions < lengths[:, None]  # (N, T)
    assert (tokens[~inside] == 0).all() and (tokens[inside] >= 5).all() and (tokens < len(vocab)).all()

    tokenizer = order_task_tokenizer()
    assert vocab[: tokenizer.vocab_size] == [*tokenizer.specials, *tokenizer.chars]
    ids = {m: tokenizer.token_id(m) for m in MARKERS}
    for row, label in zip(tokens.tolist(), labels.tolist(), strict=True):
        counts = {m: row.count(i) for m, i in ids.items()}
        assert len(set(counts.values())) == 1  # every marker equally often: counts say nothing
        first = {m: row.index(i) for m, i in ids.items()}
        assert label == 2 * (first["B"] < first["A"]) + (first["D"] < first["C"])


def test_order_task_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="min_len"):
        make_order_task(10, seed=0, min_len=3)
    with pytest.raises(ValueError, match="n must"):
        make_order_task(0, seed=0)


def test_bag_of_tokens_baseline_is_near_chance() -> None:
    accuracy = bag_of_tokens_baseline(make_order_task(3000, seed=0), make_order_task(1000, seed=1))
    assert accuracy < 0.25 + 0.15
