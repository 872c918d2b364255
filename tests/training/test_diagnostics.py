"""Vanishing gradients reproduce on a deep MLP, and the fixes (ReLU, batch norm, residual) work."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from training.diagnostics import VARIANTS, vanishing_gradients

DEPTH = 12


@pytest.fixture(scope="module")
def depth12(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("vg")
    return vanishing_gradients(depth=DEPTH, width=32, steps=0, batch_size=128, seed=0, out_dir=out), out


def test_result_shape(depth12: tuple[dict[str, Any], Path]) -> None:
    result, _ = depth12
    assert result["depth"] == DEPTH and result["width"] == 32
    assert list(result["variants"]) == list(VARIANTS)
    for v in result["variants"].values():
        assert len(v["grad_norms"]) == DEPTH
        assert all(math.isfinite(g) and g > 0 for g in v["grad_norms"])
        assert v["first_to_last_ratio"] == pytest.approx(v["grad_norms"][0] / v["grad_norms"][-1])
        # steps=0: nothing trained, so no trained figures to report.
        assert v["final_loss"] is None and v["accuracy"] is None


def test_sigmoid_gradient_vanishes_towards_the_input(depth12: tuple[dict[str, Any], Path]) -> None:
    variants = depth12[0]["variants"]
    sigmoid = variants["sigmoid"]
    fixed = variants["relu+bn+residual"]
    # sigma' <= 1/4 per layer: 11 layers of backward pass cost many orders of magnitude.
    assert sigmoid["first_to_last_ratio"] < 1e-4
    # Batch norm + residual paths keep the profile roughly flat (within a decade either way).
    assert 0.1 < fixed["first_to_last_ratio"] < 10
    assert sigmoid["first_to_last_ratio"] < 1e-3 * fixed["first_to_last_ratio"]
    # The decay is a trend through the stack, not one odd layer: every sigmoid layer gets less
    # gradient than the one above it.
    norms = sigmoid["grad_norms"]
    assert all(a < b for a, b in itertools.pairwise(norms))
    # Plain ReLU sits in between: better than sigmoid (derivative 1 on the active half).
    assert variants["relu"]["first_to_last_ratio"] > 100 * sigmoid["first_to_last_ratio"]


def test_writes_png_and_json(depth12: tuple[dict[str, Any], Path]) -> None:
    result, out = depth12
    png = out / "vanishing_gradients.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert min(mpimg.imread(png).shape[:2]) > 300
    saved = json.loads((out / "vanishing_gradients.json").read_text())
    assert saved["depth"] == DEPTH
    for name, v in result["variants"].items():
        assert saved["variants"][name]["grad_norms"] == pytest.approx(v["grad_norms"])


def test_training_shows_which_variant_learns(tmp_path: Path) -> None:
    result = vanishing_gradients(depth=DEPTH, width=32, steps=60, batch_size=128, seed=0)
    variants = result["variants"]
    for v in variants.values():
        assert math.isfinite(v["final_loss"]) and 0.0 <= v["accuracy"] <= 1.0
    # The deep sigmoid net barely moves from chance (10 classes) in 60 steps; the fixed one learns.
    assert variants["relu+bn+residual"]["accuracy"] > 0.8
    assert variants["sigmoid"]["accuracy"] < 0.5
    assert variants["relu+bn+residual"]["final_loss"] < variants["sigmoid"]["final_loss"]
