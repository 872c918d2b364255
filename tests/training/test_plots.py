"""Every plot helper writes a real, readable PNG of a sensible size."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from training.plots import (
    image_grid,
    plot_confusion_matrix,
    plot_grad_norms,
    plot_history,
    plot_vanishing_gradients,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path, min_side: int = 200) -> np.ndarray:
    """Check signature and decode; return the pixel array (H, W, channels)."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3
    assert min(pixels.shape[:2]) >= min_side, pixels.shape
    # A blank canvas would also decode; require actual drawing (several distinct colours).
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 4
    return pixels


def _history(epochs: int = 6) -> list[dict[str, float]]:
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "epoch": e,
                "train_loss": 2.3 / e**2,
                "val_loss": 2.4 / e**1.5,
                "train_accuracy": 1 - 0.9 / e,
                "val_accuracy": 1 - 0.95 / e,
                "val_kl": 0.1 * e,
                "d_loss": 0.7,
                "g_loss": 1.2 / e,
                "lr": 1e-3 * 0.5 ** (e - 1),
                "epoch_time": 1.5,
            }
        )
    return rows


def test_plot_history(tmp_path: Path) -> None:
    out = plot_history(_history(), tmp_path / "sub" / "history.png", title="demo run")
    assert out == tmp_path / "sub" / "history.png"
    read_png(out, min_side=400)


def test_plot_history_without_lr_or_metrics(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 4)]
    read_png(plot_history(history, tmp_path / "h.png"))


def test_plot_history_epochs_missing_keys(tmp_path: Path) -> None:
    # Validation may run only every few epochs; gaps must not crash or misalign the curves.
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6}]
    read_png(plot_history(history, tmp_path / "h.png"))


def test_plot_grad_norms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    steps = 50
    norms = {
        f"blocks.{i}.linear": list(10.0 ** (-6 + 0.5 * i) * (1 + 0.1 * rng.random(steps))) for i in range(12)
    }
    norms["head"] = [0.0] + [1.0] * (steps - 1)  # a zero norm must not break the log axis
    read_png(plot_grad_norms(norms, tmp_path / "grads.png", title="grad norms"), min_side=300)


def test_plot_confusion_matrix_with_class_absent_from_predictions(tmp_path: Path) -> None:
    y_true = np.array([0, 1, 2, 2, 1, 0, 2])
    y_pred = np.array([0, 1, 1, 1, 1, 0, 0])  # class 2 never predicted
    labels = ["cat", "dog", "bird"]
    read_png(plot_confusion_matrix(y_true, y_pred, labels, tmp_path / "cm.png", title="pets"))


def test_plot_confusion_matrix_accepts_tensors_and_unseen_class(tmp_path: Path) -> None:
    # Class 3 appears in neither array; it still gets its (empty) row and column.
    y_true = torch.tensor([0, 1, 2, 0])
    y_pred = torch.tensor([0, 2, 2, 1])
    read_png(plot_confusion_matrix(y_true, y_pred, ["0", "1", "2", "3"], tmp_path / "cm.png"))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_image_grid(tmp_path: Path, channels: int, as_tensor: bool) -> None:
    rng = np.random.default_rng(channels)
    images = rng.random((20, channels, 16, 16)).astype(np.float32)
    data = torch.from_numpy(images) if as_tensor else images
    out = image_grid(data, tmp_path / "grid.png", nrow=8, title=f"C={channels}")
    pixels = read_png(out, min_side=150)
    # 20 images at 8 per row -> 3 rows: the grid is wider than tall.
    assert pixels.shape[1] > pixels.shape[0]


def test_image_grid_with_row_titles(tmp_path: Path) -> None:
    clean = torch.rand(6, 1, 8, 8)
    noisy = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
    rows = torch.cat([clean, noisy, clean * 0.9])
    out = image_grid(
        rows, tmp_path / "recon.png", nrow=6, row_titles=["input", "noisy input", "reconstruction"]
    )
    read_png(out, min_side=150)


def test_image_grid_rejects_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="C in"):
        image_grid(np.zeros((2, 4, 8, 8)), tmp_path / "bad.png")


def test_plot_vanishing_gradients(tmp_path: Path) -> None:
    depth = 12
    results = {
        "sigmoid": [0.25 ** (depth - i) for i in range(depth)],
        "relu": [0.8 ** (depth - i) for i in range(depth)],
        "relu+bn+residual": [1.0] * depth,
    }
    read_png(plot_vanishing_gradients(results, tmp_path / "vg.png", title="depth 12"), min_side=300)
