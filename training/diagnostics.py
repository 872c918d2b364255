"""Training diagnostics: reproduce vanishing gradients on a deep MLP.

A deep stack of sigmoid layers multiplies the backward signal by sigma'(z) <= 1/4 (times a weight
matrix of norm ~1 under default init) per layer, so the gradient reaching the input-side layers
shrinks geometrically with depth. ReLU's derivative is 1 on the active half, which removes most of
that attenuation; batch norm keeps pre-activations in range and residual connections give the
gradient an identity path around every block, which flattens the profile. ``vanishing_gradients``
measures this on the registry's MLP on scikit-learn's bundled digits (no download).

Measured at depth 20, width 64, seed 0 (first/last hidden layer's weight-gradient norm; test
accuracy after 200 Adam steps): sigmoid 9e-17 (0.10, chance), relu with PyTorch's default
``nn.Linear`` init 2e-6 (0.10), relu with He init 0.98 (0.92), relu + batch norm + residual 6.6
(0.97). PyTorch's default init draws weights with variance 1/(3 fan_in), a sixth of what ReLU needs
(He: 2/fan_in), so even a ReLU stack loses its gradient at depth 20; the ``relu+he-init`` variant
shows that the initialisation, not only the activation, decides whether a deep plain stack trains.

Run it from the command line with ``python -m training vanishing-gradients``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["VARIANTS", "layer_grad_norms", "vanishing_gradients"]

# name -> MLP config overrides. Dropout is off everywhere so that it cannot mask or add to the
# effect being measured.
VARIANTS: dict[str, dict[str, Any]] = {
    "sigmoid": {"activation": "sigmoid", "batch_norm": False, "residual": False},
    "relu": {"activation": "relu", "batch_norm": False, "residual": False},
    "relu+he-init": {"activation": "relu", "batch_norm": False, "residual": False, "init": "he"},
    "relu+bn+residual": {"activation": "relu", "batch_norm": True, "residual": True},
}


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened digits in [0, 1]: train split to train on, test split to score."""
    from training.data import load_dataset

    bundle = load_dataset("digits", seed=seed)
    (x_train, y_train), (x_test, y_test) = bundle.train.tensors, bundle.test.tensors
    return x_train.flatten(1), y_train, x_test.flatten(1), y_test


def layer_grad_norms(model: nn.Module) -> list[float]:
    """L2 norm of ``.grad`` of every hidden block's ``linear.weight``, input side first."""
    norms = []
    for block in model.blocks:  # type: ignore[union-attr]
        grad = block.linear.weight.grad
        norms.append(float(grad.norm()) if grad is not None else 0.0)
    return norms


def _build(variant: str, depth: int, width: int, seed: int) -> nn.Module:
    from training.registry import build_model

    # Same seed per variant, so the variants differ only in their architecture choices.
    torch.manual_seed(seed)
    return build_model(
        "mlp",
        in_features=64,
        num_classes=10,
        hidden_sizes=(width,) * depth,
        dropout=0.0,
        **VARIANTS[variant],
    )


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def vanishing_gradients(
    depth: int = 20,
    width: int = 64,
    steps: int = 0,
    batch_size: int = 256,
    seed: int = 0,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure per-layer gradient norms of a ``depth``-layer MLP for each variant in ``VARIANTS``.

    For each variant: build the model with ``seed``, compute the cross-entropy on one training batch
    of ``batch_size`` digits, backpropagate once, and record the gradient L2 norm of each hidden
    layer's weight (layer 1 = input side). ``first_to_last_ratio`` is layer 1's norm over the last
    hidden layer's: ~1 means the gradient reaches the input side intact, << 1 means it vanishes.

    With ``steps > 0`` each variant is then trained ``steps`` Adam steps (lr 1e-3) on shuffled
    mini-batches; ``final_loss`` is the cross-entropy on the training split and ``accuracy`` the
    accuracy on the held-out 20 % split. With ``steps == 0`` both are ``None``.

    Returns ``{"variants": {name: {...}}, "depth", "width", "steps", "batch_size", "seed"}``; with
    ``out_dir``, also writes ``vanishing_gradients.png`` and ``vanishing_gradients.json`` there.
    """
    if depth < 1 or width < 1:
        raise ValueError(f"depth and width must be >= 1; got depth={depth}, width={width}")
    x_train, y_train, x_test, y_test = _digits(seed)
    batch_size = min(batch_size, len(x_train))
    x_batch, y_batch = x_train[:batch_size], y_train[:batch_size]

    variants: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        model = _build(name, depth, width, seed)
        # Train mode: batch norm normalises with batch statistics, as it does during training.
        model.train()
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_batch), y_batch)
        loss.backward()
        norms = layer_grad_norms(model)
        head_grad = model.head.weight.grad  # type: ignore[union-attr]
        ratio = norms[0] / norms[-1] if norms[-1] > 0 else float("nan")
        entry: dict[str, Any] = {
            "grad_norms": norms,
            "first_to_last_ratio": ratio,
            "log10_ratio": math.log10(ratio) if ratio > 0 else float("-inf"),
            "head_grad_norm": float(head_grad.norm()) if head_grad is not None else None,
            "initial_loss": loss.item(),
            "final_loss": None,
            "accuracy": None,
        }
        if steps > 0:
            entry.update(_train(model, x_train, y_train, x_test, y_test, steps, batch_size, seed))
        variants[name] = entry

    result: dict[str, Any] = {
        "variants": variants,
        "depth": depth,
        "width": width,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
    }
    if out_dir is not None:
        _write(result, Path(out_dir))
    return result


def _train(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    steps: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(len(x_train), generator=gen)
    pos = 0
    model.train()
    for _ in range(steps):
        if pos + batch_size > len(x_train):
            perm, pos = torch.randperm(len(x_train), generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
    train_loss, train_acc = _evaluate(model, x_train, y_train)
    _, test_acc = _evaluate(model, x_test, y_test)
    return {"final_loss": train_loss, "train_accuracy": train_acc, "accuracy": test_acc}


def _write(result: dict[str, Any], out_dir: Path) -> None:
    from training.plots import plot_vanishing_gradients

    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Vanishing gradients: {result['depth']}-layer MLP, width {result['width']}, digits"
    if result["steps"]:
        accs = ", ".join(f"{n} {v['accuracy']:.2f}" for n, v in result["variants"].items())
        title += f"\ntest accuracy after {result['steps']} Adam steps: {accs}"
    plot_vanishing_gradients(
        {n: v["grad_norms"] for n, v in result["variants"].items()},
        out_dir / "vanishing_gradients.png",
        title=title,
    )
    (out_dir / "vanishing_gradients.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")


def _jsonable(obj: Any) -> Any:
    # JSON has no inf/nan; write null rather than emit the non-standard tokens json.dumps allows.
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj
