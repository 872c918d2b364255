"""Figures for training runs: loss/metric curves, gradient norms, confusion matrices, image grids.

Every function writes one PNG and returns its path. Matplotlib is driven through its object API on
the Agg backend, so nothing here needs a display and nothing touches pyplot's global figure state
(training may run in a headless container or in several processes at once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Select Agg before anything imports pyplot: the training side runs headless.
matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "image_grid",
    "plot_confusion_matrix",
    "plot_distributions",
    "plot_grad_norms",
    "plot_history",
    "plot_vanishing_gradients",
]

# Metric keys are recognised by suffix; losses are every key ending in "loss".
_METRIC_SUFFIXES = (
    "accuracy",
    "acc",
    "mse",
    "mae",
    "rmse",
    "kl",
    "bce",
    "perplexity",
    "ppl",
    "f1",
    "precision",
    "recall",
    "bleu",
    "psnr",
    "recon",
    "score",
)
_NOT_SERIES = {"epoch", "step", "time", "seconds", "lr"}
_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def _spans_decades(values: Sequence[float], decades: float = 1.5) -> bool:
    """True when the positive values span more than ``decades`` orders of magnitude."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or np.any(arr <= 0):
        # A log axis cannot show zeros or negatives (e.g. a GAN loss or an ELBO term).
        return False
    return bool(np.log10(arr.max() / arr.min()) > decades)


def _series(history: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """x (epoch, or index+1 when absent) and y for one key, skipping epochs that lack it."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value):
            continue
        xs.append(float(row.get("epoch", i + 1)))
        ys.append(value)
    return np.asarray(xs), np.asarray(ys)


def _style(key: str) -> dict[str, Any]:
    # Validation dashed so train/val pairs of the same quantity read as a pair.
    return {"linestyle": "--" if key.startswith(("val", "test")) else "-", "marker": "o", "markersize": 3}


def _is_metric(key: str) -> bool:
    k = key.lower()
    return not k.endswith("loss") and k not in _NOT_SERIES and k.endswith(_METRIC_SUFFIXES)


def plot_history(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss curves (top), metric curves (middle) and learning rate (small, bottom) per epoch.

    Keys ending in ``loss`` are losses; keys ending in a known metric suffix (accuracy, mse, kl, ...)
    are metrics; ``lr`` gets its own panel when present. Any other numeric key is drawn with the
    metrics so nothing the trainer recorded is silently dropped.
    """
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    loss_keys = [k for k in keys if k.lower().endswith("loss")]
    metric_keys = [k for k in keys if _is_metric(k)]
    other_keys = [
        k
        for k in keys
        if k not in loss_keys
        and k not in metric_keys
        and k not in _NOT_SERIES
        # Wall-clock bookkeeping is not a learning curve.
        and "time" not in k.lower()
        and all(isinstance(r.get(k, 0.0), int | float) for r in history)
    ]
    metric_keys += other_keys
    has_lr = any("lr" in r for r in history)

    panels: list[str] = ["loss"]
    if metric_keys:
        panels.append("metric")
    if has_lr:
        panels.append("lr")
    ratios = [3 if p != "lr" else 1.3 for p in panels]
    fig = Figure(figsize=(8, sum(ratios) * 1.35 + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, gridspec_kw={"height_ratios": ratios}, squeeze=False)[
        :, 0
    ]
    by_panel = dict(zip(panels, axes, strict=True))

    ax = by_panel["loss"]
    all_losses: list[float] = []
    for k in loss_keys:
        x, y = _series(history, k)
        if y.size:
            ax.plot(x, y, label=k, **_style(k))
            all_losses.extend(y.tolist())
    if _spans_decades(all_losses):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title("Losses")
    if loss_keys:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)

    if "metric" in by_panel:
        ax = by_panel["metric"]
        all_metrics: list[float] = []
        for k in metric_keys:
            x, y = _series(history, k)
            if y.size:
                ax.plot(x, y, label=k, **_style(k))
                all_metrics.extend(y.tolist())
        # Accuracy (0..1) next to an MSE of 1e-3 is unreadable on a linear axis.
        if _spans_decades(all_metrics):
            ax.set_yscale("log")
        ax.set_ylabel("metric")
        ax.set_title("Metrics")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)

    if "lr" in by_panel:
        ax = by_panel["lr"]
        x, y = _series(history, "lr")
        ax.plot(x, y, color="tab:gray", marker=".", markersize=3)
        if _spans_decades(y.tolist(), decades=1.0):
            ax.set_yscale("log")
        ax.set_ylabel("lr")
        ax.set_title("Learning rate", fontsize=9)
        ax.grid(True, alpha=0.3)

    axes[-1].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_grad_norms(
    grad_norms: dict[str, list[float]], path: Path, title: str = "", steps: list[int] | None = None
) -> Path:
    """Per-layer gradient L2 norm over training steps (log y) and mean norm per layer.

    ``grad_norms`` maps layer name -> norm per recorded step, in network order (input side first);
    the bar panel keeps that order so a vanishing (or exploding) gradient shows as a slope.
    ``steps`` are the optimiser steps the norms were recorded at (default 1, 2, ...).
    """
    names = list(grad_norms)
    fig = Figure(figsize=(12, 4.8))
    ax_lines, ax_bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    # A perceptual colour ramp in network order: input-side layers dark, output-side light.
    cmap = matplotlib.colormaps["viridis"]
    means: list[float] = []
    for i, name in enumerate(names):
        y = np.asarray(grad_norms[name], dtype=float)
        colour = cmap(i / max(len(names) - 1, 1))
        # Zero norms (no gradient that step) cannot sit on a log axis; leave a gap rather than clip
        # to an arbitrary floor that would stretch the axis over empty decades.
        x = np.asarray(steps, dtype=float) if steps is not None else np.arange(1, y.size + 1)
        ax_lines.plot(x, np.where(y > 0, y, np.nan), color=colour, label=name, lw=1.2)
        finite = y[np.isfinite(y)]
        means.append(float(finite.mean()) if finite.size else float("nan"))
    ax_lines.set_yscale("log")
    ax_lines.set_xlabel("step")
    ax_lines.set_ylabel("gradient L2 norm")
    ax_lines.set_title("Gradient norm per layer over training")
    ax_lines.grid(True, which="major", alpha=0.3)
    if 0 < len(names) <= 12:
        ax_lines.legend(fontsize=7)
    elif names:
        # Past a dozen layers a legend buries the curves; the bar panel, drawn in the same colours
        # and labelled, is the key.
        ax_lines.text(
            0.01,
            0.01,
            "colour: input side (dark) → output side (light); key on the right",
            transform=ax_lines.transAxes,
            fontsize=7,
            va="bottom",
        )

    pos = np.arange(len(names))
    mean_arr = np.asarray(means, dtype=float)
    mean_arr = np.where(mean_arr > 0, mean_arr, np.nan)  # no bar for a layer that never had gradient
    ax_bars.barh(pos, mean_arr, color=[cmap(i / max(len(names) - 1, 1)) for i in range(len(names))])
    ax_bars.set_yticks(pos, labels=names, fontsize=7)
    ax_bars.invert_yaxis()  # input-side layer at the top, reading down towards the output
    ax_bars.set_xscale("log")
    ax_bars.set_xlabel("mean gradient L2 norm (log)")
    ax_bars.set_title("Mean norm per layer (input → output)")
    ax_bars.grid(True, axis="x", which="major", alpha=0.3)

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: list[str],
    path: Path,
    title: str = "",
) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts in every cell.

    ``labels[i]`` names class index ``i``; classes absent from both arrays still get a row and a
    column, because the matrix is built over ``range(len(labels))``.
    """
    from sklearn.metrics import confusion_matrix

    y_true = _as_numpy(y_true).reshape(-1).astype(int)
    y_pred = _as_numpy(y_pred).reshape(-1).astype(int)
    n = len(labels)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")

    side = max(4.5, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="count")
    cbar.locator = MaxNLocator(integer=True)  # counts are whole numbers
    cbar.update_ticks()
    ax.set_xticks(range(n), labels=labels, rotation=45 if max(map(len, labels), default=0) > 3 else 0)
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Text colour flips on dark cells so every count stays legible.
    threshold = cm.max() / 2.0 if cm.size else 0
    fontsize = 9 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if cm[i, j] > threshold else "black",
            )
    heading = f"{title}  " if title else ""
    ax.set_title(f"{heading}(accuracy {accuracy:.3f}, n={int(cm.sum())})")
    fig.tight_layout()
    return _save(fig, path)


def _as_numpy(x: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here (plots stay usable without it).
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def image_grid(
    images: Any,
    path: Path,
    nrow: int = 8,
    title: str = "",
    row_titles: list[str] | None = None,
) -> Path:
    """Tile ``images`` (N, C, H, W) with values in [0, 1] and C in {1, 3} into one PNG.

    ``nrow`` is the number of images per grid row (as in torchvision's ``make_grid``). With
    ``row_titles``, row ``r`` is labelled ``row_titles[r]`` — e.g. ``["input", "noisy input",
    "reconstruction"]`` with ``nrow`` equal to the number of examples per row. A 3-D array is read as
    (N, H, W) greyscale.
    """
    arr = _as_numpy(images).astype(np.float32)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, C, H, W) with C in (1, 3); got shape {arr.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1; got {nrow}")
    n, c, h, w = arr.shape
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    # Clip rather than rescale: values are documented as [0, 1], and per-image min/max scaling
    # would hide exactly the washed-out or saturated outputs one looks at these grids to spot.
    arr = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    pad = max(1, min(h, w) // 14)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for idx in range(n):
        r, col = divmod(idx, cols)
        img = arr[idx].transpose(1, 2, 0)
        if c == 1:
            img = np.repeat(img, 3, axis=2)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = img

    # Size the figure so each image gets ~0.9 inch, bounded so a big batch stays a sane file.
    cell = float(np.clip(12.0 / cols, 0.45, 1.1))
    label_w = 1.4 if row_titles else 0.0
    fig = Figure(figsize=(cols * cell + label_w + 0.2, rows * cell * h / w + (0.5 if title else 0.1)))
    ax = fig.subplots()
    ax.imshow(grid, interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    if row_titles:
        centres = [pad + r * (h + pad) + h / 2 for r in range(rows)]
        ax.set_yticks(centres[: len(row_titles)], labels=row_titles[:rows], fontsize=9)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    fig.tight_layout(pad=0.3)
    return _save(fig, path)


def plot_distributions(
    series: dict[str, Any], path: Path, title: str = "", xlabel: str = "", bins: int = 30
) -> Path:
    """Overlaid histograms (one per named 1-D array, shared bins) with each mean marked: whether one
    set of values (say, translated images' stroke widths) moved to another's distribution."""
    arrays = {name: _as_numpy(values).reshape(-1).astype(float) for name, values in series.items()}
    arrays = {name: a[np.isfinite(a)] for name, a in arrays.items()}
    if not arrays or not any(a.size for a in arrays.values()):
        raise ValueError("plot_distributions needs at least one finite value")
    every = np.concatenate([a for a in arrays.values() if a.size])
    edges = np.histogram_bin_edges(every, bins=bins)
    fig = Figure(figsize=(7.5, 4))
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    for i, (name, values) in enumerate(arrays.items()):
        if not values.size:
            continue
        colour = colours(i % 10)
        ax.hist(
            values,
            bins=edges,
            histtype="step",
            linewidth=1.6,
            color=colour,
            label=f"{name} (mean {values.mean():.2f})",
        )
        ax.axvline(values.mean(), color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_vanishing_gradients(results: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Gradient L2 norm per layer (layer 1 = input side ... output layer) for each variant.

    Left: all variants overlaid on a log axis, so the decay of one against the flatness of another
    is read directly. Right: each variant's norms divided by its own last layer's, which removes the
    overall scale and leaves only the first-to-last attenuation.
    """
    fig = Figure(figsize=(12, 4.6))
    ax_abs, ax_rel = fig.subplots(1, 2)
    markers = "osD^v<>ph"
    for i, (name, norms) in enumerate(results.items()):
        y = np.clip(np.asarray(norms, dtype=float), 1e-30, None)
        x = np.arange(1, y.size + 1)
        style = {"marker": markers[i % len(markers)], "markersize": 4, "lw": 1.5}
        ratio = y[0] / y[-1] if y.size else float("nan")
        ax_abs.plot(x, y, label=f"{name} (first/last {ratio:.1e})", **style)
        ax_rel.plot(x, y / y[-1], label=name, **style)
    for ax in (ax_abs, ax_rel):
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input side)")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    ax_abs.set_ylabel("gradient L2 norm of weight")
    ax_abs.set_title("Gradient norm per layer")
    ax_rel.set_ylabel("norm / last layer's norm")
    ax_rel.axhline(1.0, color="black", lw=0.8, alpha=0.6)
    ax_rel.set_title("Relative to the last layer")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
