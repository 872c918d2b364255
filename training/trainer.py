"""One model-agnostic training loop, plus the adversarial loop the GAN needs.

What a model learns is decided by an :class:`Objective` (cross-entropy, MSE reconstruction, denoising,
VAE ELBO); the loop owns everything else: optimiser, learning-rate schedule with warm-up, gradient
clipping, weight decay, augmentation, early stopping, checkpoints that can rebuild and resume the
model, seeds, a progress bar, per-epoch metrics, per-layer gradient norms, and multi-process training
under ``torchrun`` (DistributedDataParallel; gloo on CPU).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from training.data import DatasetBundle, add_noise, make_augment, normalize

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"  # decoupled weight decay: the sane default for every family here
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only (Nesterov off; plain heavy-ball momentum as in the textbooks)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW; GANs want (0.5, 0.999)
    weight_decay: float = 1e-4  # L2 regularisation (decoupled for AdamW); not applied to norms/biases
    schedule: str = "cosine"  # cosine decay to 0, step decay, or constant
    warmup_epochs: float = 0.5  # linear warm-up keeps the first large-gradient steps from diverging
    step_size: int = 10  # step schedule: multiply the lr by gamma every step_size epochs
    gamma: float = 0.1
    grad_clip: float = 1.0  # max global L2 norm of the gradient; 0 turns clipping off
    label_smoothing: float = 0.0  # classification only
    early_stopping_patience: int = 0  # epochs without improvement of the monitored metric; 0 = off
    augment: str | None = None  # name understood by training.data.make_augment
    max_steps: int = 0  # stop after this many optimiser steps in total (tiny smoke runs); 0 = no cap
    # Keep an exponential moving average of the weights, updated after every step, and validate, keep
    # and export it instead of the raw weights (the diffusion models' standard); 0 = off.
    ema_decay: float = 0.0
    grad_norm_every: int = 10  # record per-layer gradient norms every N steps
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch norm needs two examples)"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.step_size >= 1 and 0 < self.gamma <= 1, "step_size >= 1 and 0 < gamma <= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 turns clipping off)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.early_stopping_patience >= 0, "early_stopping_patience must be >= 0"),
            (self.max_steps >= 0 and self.grad_norm_every >= 1, "max_steps >= 0, grad_norm_every >= 1"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0 turns it off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")


# --------------------------------------------------------------------------------------------- objectives


class Objective:
    """Turns a batch into a loss and detached metrics. ``monitor`` picks the early-stopping metric."""

    monitor = "val_loss"
    higher_is_better = False

    def __init__(self, bundle: DatasetBundle, normalize_inputs: bool) -> None:
        channels = bundle.input_shape[0] if len(bundle.input_shape) == 3 else 1
        self.mean = bundle.mean if normalize_inputs else (0.0,) * channels
        self.std = bundle.std if normalize_inputs else (1.0,) * channels

    def prepare(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std)

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


def _classification_loss(
    logits: Tensor, y: Tensor, label_smoothing: float
) -> tuple[Tensor, dict[str, float]]:
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    accuracy = (logits.argmax(-1) == y).float().mean()
    return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


class Classification(Objective):
    monitor = "val_accuracy"
    higher_is_better = True

    def __init__(self, bundle: DatasetBundle, normalize_inputs: bool, label_smoothing: float = 0.0):
        super().__init__(bundle, normalize_inputs)
        self.label_smoothing = label_smoothing

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        return model(self.prepare(x))  # (B, num_classes)

    def loss(self, model, x, y, generator):
        return _classification_loss(self.logits(model, x), y, self.label_smoothing)


class Reconstruction(Objective):
    """MSE between the reconstruction and the clean input; with ``noise_std`` it is a denoising AE."""

    def __init__(self, bundle: DatasetBundle, noise_std: float = 0.0):
        super().__init__(bundle, normalize_inputs=False)
        self.noise_std = noise_std

    def loss(self, model, x, y, generator):
        source = add_noise(x, self.noise_std, generator) if self.noise_std > 0 else x
        reconstruction, _latent = model(source)  # (B, C, H, W), (B, Z)
        loss = F.mse_loss(reconstruction, x)
        return loss, {"loss": loss.item(), "mse": loss.item()}


class VariationalELBO(Objective):
    """Negative ELBO per example: Bernoulli reconstruction term (BCE, nats) + beta * KL(q(z|x) || N(0, I))."""

    def __init__(self, bundle: DatasetBundle, beta: float = 1.0):
        super().__init__(bundle, normalize_inputs=False)
        self.beta = beta

    def loss(self, model, x, y, generator):
        reconstruction, mu, logvar = model(x)
        batch = x.shape[0]
        recon = F.binary_cross_entropy(reconstruction, x, reduction="sum") / batch
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
        loss = recon + self.beta * kl
        mse = F.mse_loss(reconstruction, x)
        return loss, {
            "loss": loss.item(),
            "recon_nats": recon.item(),
            "kl_nats": kl.item(),
            "mse": mse.item(),
        }


class _TokenObjective(Objective):
    """Base for token-id inputs: nothing to normalise; ``pad_id`` marks padding (always id 0 here)."""

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0) -> None:
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def prepare(self, x: Tensor) -> Tensor:
        return x


class SequenceClassification(_TokenObjective):
    """Right-padded token ids (B, T) -> label. The model also gets each row's true length, so that
    padding can never change a row's answer."""

    monitor = "val_accuracy"
    higher_is_better = True

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        lengths = (x != self.pad_id).sum(1)  # (B,)
        return model(x, lengths)  # (B, num_classes)

    def loss(self, model, x, y, generator):
        return _classification_loss(self.logits(model, x), y, self.label_smoothing)


class LanguageModeling(_TokenObjective):
    """Next-token cross-entropy on (B, T + 1) windows; the loss is in nats per token."""

    def loss(self, model, x, y, generator):
        logits = model(x[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        return loss, {"loss": loss.item()}


class SequenceToSequence(_TokenObjective):
    """Teacher forcing: source (B, S) and target (B, T) = bos ... eos pad; predict target[1:]."""

    def loss(self, model, x, y, generator):
        logits = model(x, y[:, :-1])  # (B, T - 1, V)
        target = y[:, 1:]
        loss = F.cross_entropy(
            logits.flatten(0, 1),
            target.flatten(),
            ignore_index=self.pad_id,
            label_smoothing=self.label_smoothing,
        )
        real = target != self.pad_id
        accuracy = ((logits.argmax(-1) == target) & real).sum() / real.sum()
        return loss, {"loss": loss.item(), "token_accuracy": accuracy.item()}


class MaskedSequenceClassification(SequenceClassification):
    """Right-padded token ids (B, T) -> label, for models called as ``model(input_ids, attention_mask)``
    (BERT): the mask is 1 at every non-pad position."""

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        return model(x, (x != self.pad_id).long())  # (B, num_classes)


class MaskedLanguageModeling(_TokenObjective):
    """BERT pre-training: 15% of the ordinary tokens are chosen per batch (80% <mask>, 10% random, 10%
    kept) from ``generator`` and predicted by ``model.mlm_logits``; the loss is nats per chosen token.
    Evaluation uses the trainer's fixed generator, so validation masks are the same every epoch.
    Calls the model's ``mlm_logits`` directly, so under DistributedDataParallel it trains the local
    module without gradient averaging: use it single-process."""

    def __init__(self, vocab_size: int, mask_id: int = 3, pad_id: int = 0, mask_prob: float = 0.15) -> None:
        super().__init__(pad_id)
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.mask_prob = mask_prob

    def loss(self, model, x, y, generator):
        from training.bert_data import IGNORE_INDEX, mask_tokens  # local: bert_data imports data, not us

        inputs, labels = mask_tokens(
            x, generator=generator, mask_id=self.mask_id, vocab_size=self.vocab_size, prob=self.mask_prob
        )  # (B, T) each
        module = model.module if isinstance(model, DistributedDataParallel) else model
        logits = module.mlm_logits(inputs, (x != self.pad_id).long())  # (B, T, V)
        chosen = labels != IGNORE_INDEX  # (B, T)
        count = chosen.sum().clamp(min=1)  # a batch with nothing chosen gives 0, not NaN
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / count
        accuracy = ((logits.argmax(-1) == labels) & chosen).sum() / count
        return loss, {"loss": loss.item(), "masked_accuracy": accuracy.item()}


# --------------------------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed() -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (gloo works on CPU); otherwise single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        # Leave the group before the interpreter tears down: a gloo group still alive at exit can
        # abort the process ("terminate called without an active exception") after a good run.
        atexit.register(_leave_process_group)
    # One intra-op thread per process: the processes already use the cores.
    torch.set_num_threads(1)
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def iterate_batches(
    dataset: torch.utils.data.TensorDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    ctx: DistributedContext | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches straight from the in-memory tensors (far faster than a per-item DataLoader).

    Under DDP each rank takes a strided shard of one shared permutation, as DistributedSampler does;
    the shard is truncated to equal length so every rank runs the same number of steps.
    """
    x, y = dataset.tensors
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if ctx is not None and ctx.enabled:
        per_rank = n // ctx.world_size
        order = order[ctx.rank :: ctx.world_size][:per_rank]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if shuffle and len(idx) < 2:
            break  # a lone example breaks batch norm and adds nothing
        yield x[idx], y[idx]


def count_batches(n: int, batch_size: int, ctx: DistributedContext | None = None) -> int:
    """How many batches ``iterate_batches(shuffle=True)`` yields per epoch (it drops a lone last example)."""
    if ctx is not None and ctx.enabled:
        n //= ctx.world_size
    full, rest = divmod(n, batch_size)
    return max(full + (rest >= 2), 1)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on weights of linear/conv layers only; decaying norms and biases only hurts.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        # Adam's weight_decay is coupled L2 (added to the gradient); AdamW decouples it.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier: linear warm-up, then cosine to zero, step decay or constant."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    total = max(cfg.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "step":
            return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GradNormRecorder:
    """Per-layer gradient L2 norms over training: the vanishing/exploding-gradient diagnostic."""

    def __init__(self, model: nn.Module) -> None:
        # One entry per layer that owns a weight matrix/kernel, in network order.
        self.layers = {
            name: module.weight
            for name, module in model.named_modules()
            if isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.ndim >= 2
        }
        self.steps: list[int] = []
        self.norms: dict[str, list[float]] = {name: [] for name in self.layers}

    def record(self, step: int) -> None:
        self.steps.append(step)
        for name, weight in self.layers.items():
            norm = weight.grad.norm().item() if weight.grad is not None else 0.0
            self.norms[name].append(norm)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "norms": self.norms}


@torch.no_grad()
def evaluate(
    model: nn.Module, objective: Objective, dataset: torch.utils.data.TensorDataset, batch_size: int = 256
) -> dict[str, float]:
    """Example-weighted mean of every metric over a split, in eval mode."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    generator = torch.Generator().manual_seed(1234)  # fixed noise for the denoising AE's val metrics
    for x, y in iterate_batches(dataset, batch_size, shuffle=False):
        _, metrics = objective.loss(model, x, y, generator)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value * len(x)
        count += len(x)
    model.train(was_training)
    return {key: value / max(count, 1) for key, value in totals.items()}


# --------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, **state: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors have unhelpful types; name the file instead
        raise ValueError(f"checkpoint {path} is not a readable checkpoint: {exc}") from None


# --------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    grad_norms: dict[str, Any]
    epochs_run: int
    seconds: float
    best_epoch: int
    stopped_early: bool = False


# The skeleton both loops share: one pass over the data per epoch behind a progress bar, and one
# optimiser update per loss. Only what a step computes differs between them.


def _epoch_batches(
    bundle: DatasetBundle,
    cfg: TrainConfig,
    epoch: int,
    generator: torch.Generator,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None,
    steps_per_epoch: int,
    ctx: DistributedContext,
) -> tqdm:
    """One shuffled (and augmented) pass over the training split, behind a progress bar."""
    batches = iterate_batches(bundle.train, cfg.batch_size, shuffle=True, generator=generator, ctx=ctx)
    if augment is not None:
        batches = ((augment(x, generator), y) for x, y in batches)
    return tqdm(
        batches,
        total=steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (cfg.progress and ctx.is_main),
        leave=False,
        dynamic_ncols=True,
    )


def _update(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    module: nn.Module,
    cfg: TrainConfig,
    recorder: GradNormRecorder | None = None,
    step: int = 0,
) -> None:
    """One optimiser step on ``module``: clear its gradients, backpropagate ``loss``, record per-layer
    gradient norms every ``cfg.grad_norm_every`` steps (before clipping, so they show what the loss
    asked for), clip the global norm, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recorder is not None and step % cfg.grad_norm_every == 0:
        recorder.record(step)
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
    optimizer.step()


def _save_last(
    checkpoint_dir: Path,
    meta: dict[str, Any] | None,
    cfg: TrainConfig,
    model: nn.Module,
    history: list[dict[str, float]],
    epoch: int,
    step: int,
    **state: Any,
) -> None:
    """``last.pt``: the run's metadata (enough to rebuild the model), its weights and its history."""
    save_checkpoint(
        checkpoint_dir / "last.pt",
        **(meta or {}),
        train_config=dataclasses.asdict(cfg),
        state_dict=model.state_dict(),
        history=history,
        epoch=epoch,
        step=step,
        **state,
    )


def fit(
    model: nn.Module,
    bundle: DatasetBundle,
    objective: Objective,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    resume_from: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; it ends holding the weights of its best validation epoch."""
    ctx = init_distributed()
    generator = seed_everything(cfg.seed)
    augment = make_augment(cfg.augment)
    steps_per_epoch = count_batches(len(bundle.train), cfg.batch_size, ctx)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    history: list[dict[str, float]] = []
    start_epoch, step = 0, 0
    best_metric, best_epoch, best_state = None, 0, None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay else None
    judged = ema.module if ema is not None else model  # the weights validated, kept and exported

    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history, start_epoch, step = state["history"], state["epoch"], state["step"]
        best_metric, best_epoch, best_state = state["best_metric"], state["best_epoch"], state["best_state"]
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])

    wrapped: nn.Module = DistributedDataParallel(model) if ctx.enabled else model
    recorder = GradNormRecorder(model)
    started = time.perf_counter()
    stale_epochs = 0
    stopped_early = False

    for epoch in range(start_epoch, cfg.epochs):
        wrapped.train()
        totals: dict[str, float] = {}
        seen = 0
        bar = _epoch_batches(bundle, cfg, epoch, generator, augment, steps_per_epoch, ctx)
        for x, y in bar:
            loss, metrics = objective.loss(wrapped, x, y, generator)
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(
                    f"loss became {metrics['loss']} at step {step}; "
                    "lower the learning rate or enable grad_clip"
                )
            _update(loss, optimizer, model, cfg, recorder, step)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break

        train_metrics = {f"train_{k}": v / max(seen, 1) for k, v in totals.items()}
        if ctx.enabled:  # average the training metrics over the ranks
            values = torch.tensor(list(train_metrics.values()), dtype=torch.float64)
            dist.all_reduce(values)
            train_metrics = dict(zip(train_metrics, (values / ctx.world_size).tolist(), strict=True))
        val_metrics = {f"val_{k}": v for k, v in evaluate(judged, objective, bundle.val).items()}
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_metrics, **val_metrics}
        history.append(row)
        if on_epoch is not None and ctx.is_main:
            on_epoch(row)

        metric = row[objective.monitor]
        improved = best_metric is None or (
            metric > best_metric if objective.higher_is_better else metric < best_metric
        )
        if improved:
            best_metric, best_epoch, stale_epochs = metric, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        else:
            stale_epochs += 1

        if checkpoint_dir is not None and ctx.is_main:
            _save_last(
                checkpoint_dir,
                checkpoint_meta,
                cfg,
                model,
                history,
                epoch + 1,
                step,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                generator=generator.get_state(),
                best_metric=best_metric,
                best_epoch=best_epoch,
                best_state=best_state,
                ema=ema.state_dict() if ema is not None else None,
            )
        if cfg.early_stopping_patience and stale_epochs >= cfg.early_stopping_patience:
            stopped_early = True
            break
        if cfg.max_steps and step >= cfg.max_steps:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        history=history,
        grad_norms=recorder.to_dict(),
        epochs_run=len(history),
        seconds=time.perf_counter() - started,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
    )


# --------------------------------------------------------------------------------------------- GAN


def _adversarial_epoch_end(
    totals: dict[str, float],
    batches: int,
    opt_g: torch.optim.Optimizer,
    history: list[dict[str, float]],
    epoch: int,
    step: int,
    cfg: TrainConfig,
    model: nn.Module,
    on_epoch: Callable[[dict[str, float]], None] | None,
    checkpoint_dir: Path | None,
    checkpoint_meta: dict[str, Any] | None,
) -> None:
    """A GAN-style epoch's row (each loss's mean over its batches): recorded, reported, checkpointed."""
    row = {"epoch": epoch + 1, "lr": opt_g.param_groups[0]["lr"]}
    row.update({k: v / max(batches, 1) for k, v in totals.items()})
    history.append(row)
    if on_epoch is not None:
        on_epoch(row)
    if checkpoint_dir is not None:
        _save_last(checkpoint_dir, checkpoint_meta, cfg, model, history, epoch + 1, step)


def _adversarial_result(
    history: list[dict[str, float]], recorder: GradNormRecorder, started: float
) -> TrainResult:
    """A GAN-style run has no validation loss to pick a best epoch by: the last one is the result."""
    return TrainResult(
        history=history,
        grad_norms=recorder.to_dict(),
        epochs_run=len(history),
        seconds=time.perf_counter() - started,
        best_epoch=len(history),
    )


def fit_gan(
    model: nn.Module,
    bundle: DatasetBundle,
    cfg: TrainConfig,
    *,
    real_label: float = 0.9,
    checkpoint_dir: Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """DCGAN training: the discriminator learns real vs generated, the generator learns to fool it.

    Non-saturating generator loss (maximise log D(G(z))) and one-sided label smoothing (real
    targets of ``real_label``) are the two standard tricks that keep small GANs from collapsing.
    Images are scaled to [-1, 1] to match the generator's tanh. A conditional GAN (``model.conditional``)
    sees each real image with its label and asks for uniformly drawn classes, so every class is
    asked for equally whatever the batch holds.
    """
    ctx = init_distributed()
    if ctx.enabled:
        raise ValueError("GAN training runs in a single process")
    generator = seed_everything(cfg.seed)
    augment = make_augment(cfg.augment)
    g_net, d_net = model.generator, model.discriminator
    latent_dim = model.config.latent_dim
    conditional = getattr(model, "conditional", False)
    num_classes = model.config.num_classes if conditional else 0
    opt_g = make_optimizer(g_net, cfg)
    opt_d = make_optimizer(d_net, cfg)
    steps_per_epoch = count_batches(len(bundle.train), cfg.batch_size)
    sched_g = make_scheduler(opt_g, cfg, steps_per_epoch)
    sched_d = make_scheduler(opt_d, cfg, steps_per_epoch)
    recorder = GradNormRecorder(model)
    history: list[dict[str, float]] = []
    step = 0
    started = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        totals = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        batches = 0
        bar = _epoch_batches(bundle, cfg, epoch, generator, augment, steps_per_epoch, ctx)
        for x, y in bar:
            real = x * 2 - 1  # (B, C, H, W) in [-1, 1]
            b = real.shape[0]
            z = torch.randn(b, latent_dim, generator=generator)
            # A conditional GAN's nets also take the class: the real images' own, the fakes' drawn.
            real_cond = (y,) if conditional else ()
            fake_cond = (torch.randint(0, num_classes, (b,), generator=generator),) if conditional else ()
            fake = g_net(z, *fake_cond)

            # Discriminator: real -> real_label, fake -> 0. The fake is detached: only D learns here.
            d_real = d_net(real, *real_cond)
            d_fake = d_net(fake.detach(), *fake_cond)
            d_loss = F.binary_cross_entropy_with_logits(
                d_real, torch.full_like(d_real, real_label)
            ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            _update(d_loss, opt_d, d_net, cfg)

            # Generator: non-saturating loss, gradients flow through D into G.
            d_on_fake = d_net(fake, *fake_cond)
            g_loss = F.binary_cross_entropy_with_logits(d_on_fake, torch.ones_like(d_on_fake))
            _update(g_loss, opt_g, g_net, cfg, recorder, step)
            sched_g.step()
            sched_d.step()
            step += 1

            totals["d_loss"] += d_loss.item()
            totals["g_loss"] += g_loss.item()
            totals["d_real"] += torch.sigmoid(d_real).mean().item()
            totals["d_fake"] += torch.sigmoid(d_fake).mean().item()
            batches += 1
            bar.set_postfix(d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        _adversarial_epoch_end(
            totals,
            batches,
            opt_g,
            history,
            epoch,
            step,
            cfg,
            model,
            on_epoch,
            checkpoint_dir,
            checkpoint_meta,
        )
        if cfg.max_steps and step >= cfg.max_steps:
            break
    model.eval()
    return _adversarial_result(history, recorder, started)


def _least_squares(scores: Tensor, target: float) -> Tensor:
    """LSGAN's loss (Mao et al., 2017): mean squared distance of the scores from the target label."""
    return F.mse_loss(scores, torch.full_like(scores, target))


def fit_cycle_gan(
    model: nn.Module,
    domain_a: TensorDataset,
    domain_b: TensorDataset,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """CycleGAN training on two unpaired sets of images in [0, 1]: each step takes a batch of each.

    The generators learn to fool the other domain's discriminator (least squares, target 1), to give
    the input back after a round trip (L1, ``model.config.cycle_weight``) and to leave an image of
    their target domain as it is (L1, ``identity_weight``); then the discriminators learn real (1)
    from generated (0), their loss halved as in the paper so that they learn slower than the
    generators. An epoch is one pass over the smaller domain.
    """
    ctx = init_distributed()
    if ctx.enabled:
        raise ValueError("GAN training runs in a single process")
    generator = seed_everything(cfg.seed)
    augment = make_augment(cfg.augment)
    config = model.config
    g_ab, g_ba, d_a, d_b = model.a_to_b, model.b_to_a, model.discriminator_a, model.discriminator_b
    generators, discriminators = model.generators, model.discriminators
    opt_g = make_optimizer(generators, cfg)
    opt_d = make_optimizer(discriminators, cfg)
    steps_per_epoch = min(
        count_batches(len(domain_a), cfg.batch_size), count_batches(len(domain_b), cfg.batch_size)
    )
    sched_g = make_scheduler(opt_g, cfg, steps_per_epoch)
    sched_d = make_scheduler(opt_d, cfg, steps_per_epoch)
    recorder = GradNormRecorder(generators)
    history: list[dict[str, float]] = []
    step = 0
    started = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        totals = dict.fromkeys(("d_loss", "g_adversarial_loss", "cycle_loss", "identity_loss"), 0.0)
        batches = 0
        # The larger domain's last batches are left for its next shuffle.
        pairs = zip(
            iterate_batches(domain_a, cfg.batch_size, shuffle=True, generator=generator),
            iterate_batches(domain_b, cfg.batch_size, shuffle=True, generator=generator),
            strict=False,
        )
        bar = tqdm(
            pairs,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for (a, _), (b, _) in bar:  # (B, C, H, W) each, in [0, 1]; never the same images
            if augment is not None:
                a, b = augment(a, generator), augment(b, generator)

            # Generators: fool the discriminators, survive the round trip, leave their own domain alone.
            # The discriminators are frozen meanwhile: the gradients they would collect are discarded.
            discriminators.requires_grad_(False)
            fake_b, fake_a = g_ab(a), g_ba(b)
            adversarial = _least_squares(d_b(fake_b), 1.0) + _least_squares(d_a(fake_a), 1.0)
            cycle = F.l1_loss(g_ba(fake_b), a) + F.l1_loss(g_ab(fake_a), b)
            identity = (
                F.l1_loss(g_ab(b), b) + F.l1_loss(g_ba(a), a)
                if config.identity_weight > 0
                else torch.zeros(())
            )
            g_loss = adversarial + config.cycle_weight * cycle + config.identity_weight * identity
            _update(g_loss, opt_g, generators, cfg, recorder, step)
            discriminators.requires_grad_(True)

            # Discriminators: real -> 1, generated -> 0 (detached: only the discriminators learn here).
            d_loss = 0.5 * (
                _least_squares(d_a(a), 1.0)
                + _least_squares(d_a(fake_a.detach()), 0.0)
                + _least_squares(d_b(b), 1.0)
                + _least_squares(d_b(fake_b.detach()), 0.0)
            )
            _update(d_loss, opt_d, discriminators, cfg)
            sched_g.step()
            sched_d.step()
            step += 1

            for key, value in zip(totals, (d_loss, adversarial, cycle, identity), strict=True):
                totals[key] += value.item()
            batches += 1
            bar.set_postfix(d=f"{d_loss.item():.3f}", cycle=f"{cycle.item():.3f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        _adversarial_epoch_end(
            totals,
            batches,
            opt_g,
            history,
            epoch,
            step,
            cfg,
            model,
            on_epoch,
            checkpoint_dir,
            checkpoint_meta,
        )
        if cfg.max_steps and step >= cfg.max_steps:
            break
    model.eval()
    return _adversarial_result(history, recorder, started)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
