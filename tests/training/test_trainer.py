import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import ROOT
from training.data import load_dataset
from training.registry import build_model
from training.trainer import (
    Classification,
    GradNormRecorder,
    TrainConfig,
    count_batches,
    fit,
    make_optimizer,
    make_scheduler,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, limit=400)


def _mlp(bundle):
    torch.manual_seed(0)  # same initial weights every time
    return build_model("mlp", in_features=64, num_classes=10, hidden_sizes=(32,), dropout=0.0)


@pytest.mark.parametrize(
    "field, value",
    [("lr", -1.0), ("optimizer", "rmsprop"), ("schedule", "linear"), ("batch_size", 1), ("epochs", 0)],
)
def test_invalid_train_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_fit_learns_digits_and_restores_best_epoch(digits):
    model = _mlp(digits)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, progress=False)
    result = fit(model, digits, Classification(digits, True), cfg)
    assert result.epochs_run == 4
    accuracies = [row["val_accuracy"] for row in result.history]
    assert max(accuracies) > 0.7  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # The model ends holding its best epoch's weights.
    best = accuracies[result.best_epoch - 1]
    from training.trainer import evaluate

    assert evaluate(model, Classification(digits, True), digits.val)["accuracy"] == pytest.approx(best)


def test_same_seed_same_history(digits):
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(99)  # fit must not depend on the global RNG state it inherits
        runs.append(fit(_mlp(digits), digits, Classification(digits, True), cfg).history)
    assert runs[0] == runs[1]


def test_resume_continues_where_the_checkpoint_stopped(digits, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, progress=False)
    steps_per_epoch = count_batches(len(digits.train), cfg.batch_size)
    # An "interrupted" run: the same schedule, stopped after two epochs.
    interrupted = dataclasses.replace(cfg, max_steps=2 * steps_per_epoch)
    first = fit(_mlp(digits), digits, Classification(digits, True), interrupted, checkpoint_dir=tmp_path)
    assert len(first.history) == 2
    resumed = fit(_mlp(digits), digits, Classification(digits, True), cfg, resume_from=tmp_path / "last.pt")
    straight = fit(_mlp(digits), digits, Classification(digits, True), cfg)
    assert resumed.history[:2] == first.history
    for got, want in zip(resumed.history, straight.history, strict=True):
        assert got == pytest.approx(want, rel=1e-5)


def test_early_stopping_stops_when_nothing_improves(digits):
    cfg = TrainConfig(epochs=10, lr=1e-12, early_stopping_patience=2, progress=False, warmup_epochs=0)
    result = fit(_mlp(digits), digits, Classification(digits, True), cfg)
    assert result.stopped_early and result.epochs_run == 3


def test_warmup_then_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    cfg = TrainConfig(epochs=10, lr=1.0, warmup_epochs=1, weight_decay=0.0)
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1)  # warm-up starts at 1/warmup_steps
    assert lrs[9] == pytest.approx(1.0)  # peak at the end of warm-up
    assert lrs[-1] < 0.01  # cosine decays to ~0
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


def test_weight_decay_spares_biases_and_norms():
    model = build_model("mlp", hidden_sizes=(8,), batch_norm=True)
    groups = make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in decayed) == (param.ndim >= 2), name
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


def test_grad_norm_recorder_tracks_every_weight_layer(digits):
    model = _mlp(digits)
    recorder = GradNormRecorder(model)
    assert list(recorder.layers) == ["blocks.0.linear", "head"]
    x, y = digits.train.tensors
    torch.nn.functional.cross_entropy(model(x[:16]), y[:16]).backward()
    recorder.record(0)
    assert all(series[0] > 0 for series in recorder.norms.values())


def test_gradient_clipping_bounds_the_update(digits):
    """With clipping at 1e-3 and SGD lr 1, no parameter can move further than 1e-3 in one step."""
    model = _mlp(digits)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(
        epochs=1,
        max_steps=1,
        optimizer="sgd",
        momentum=0.0,
        lr=1.0,
        weight_decay=0.0,
        warmup_epochs=0,
        grad_clip=1e-3,
        progress=False,
    )
    fit(model, digits, Classification(digits, True), cfg)
    moved = torch.sqrt(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    assert 0 < moved <= 1e-3 + 1e-7


def test_ddp_two_processes_keep_weights_in_sync(tmp_path):
    script = tmp_path / "ddp_job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, torch
            sys.path.insert(0, {str(ROOT)!r})
            from training.data import load_dataset
            from training.registry import build_model
            from training.trainer import Classification, TrainConfig, fit
            bundle = load_dataset("digits", seed=0, limit=256)
            model = build_model("mlp", hidden_sizes=(16,), dropout=0.0)
            # Different initial weights per rank: DDP must broadcast rank 0's.
            torch.manual_seed(int(os.environ["RANK"]))
            for p in model.parameters():
                p.data.normal_()
            cfg = TrainConfig(epochs=2, batch_size=32, progress=False)
            result = fit(model, bundle, Classification(bundle, True), cfg)
            torch.save({{"state": model.state_dict(), "history": result.history}},
                       {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    # Both ranks report the same (all-reduced) training loss.
    assert rank0["history"][-1]["train_loss"] == pytest.approx(rank1["history"][-1]["train_loss"])
