"""Diffusion: the numpy schedule and DDIM sampler the server runs (app/core/diffusion.py) against
references written the textbook way in PyTorch, the U-Net's export, and the judge's Fréchet distance.
The tiny build of every recipe (tests/training/test_cli.py) trains, exports and judges the recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.core.diffusion import alphas_cumprod, ddim_sample, ddim_timesteps, initial_noise, make_betas
from training.export import _parity, export_graph
from training.judge import frechet_distance
from training.registry import build_model

TINY = {"base_channels": 8, "channel_mults": (1, 2), "groups": 2, "time_dim": 16, "timesteps": 50}


@pytest.fixture(scope="module")
def unet():
    """A tiny conditional U-Net whose output layer is not zero (as it is at initialisation)."""
    torch.manual_seed(0)
    model = build_model("unet", **TINY).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    return model


def test_schedules() -> None:
    linear = make_betas("linear", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)  # DDPM's
    abar = alphas_cumprod(make_betas("cosine", 1000))
    assert abar[0] > 0.9999 and abar[-1] < 1e-4 and (np.diff(abar) < 0).all()
    # Nichol & Dhariwal's abar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2).
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499] == pytest.approx(f(500) / f(0), rel=1e-9)
    steps = ddim_timesteps(1000, 20)
    assert steps[0] == 999 and steps[-1] == 0 and len(set(steps)) == 20 and (np.diff(steps) < 0).all()
    with pytest.raises(ValueError, match="steps must be in"):
        ddim_timesteps(50, 51)


def test_noise_depends_on_its_own_seed_only() -> None:
    both = initial_noise([3, 4], (1, 4, 4))
    assert np.array_equal(both[1], initial_noise([4], (1, 4, 4))[0]) and both.dtype == np.float32


def _torch_ddim(model, x, abar, steps, classes, null, scale):
    """DDIM (Song et al. 2021, eq. 12 with sigma = 0) and classifier-free guidance (Ho & Salimans
    2022), in float64, the conditional and unconditional predictions from separate calls."""
    abar = torch.as_tensor(abar)
    x = torch.as_tensor(x, dtype=torch.float64)
    times = torch.linspace(len(abar) - 1, 0, steps).round().long()
    for i, t in enumerate(times):
        batch_t, labels = t.repeat(len(x)), torch.as_tensor(classes)
        eps = model(x.float(), batch_t, labels).double()
        eps_uncond = model(x.float(), batch_t, torch.full_like(labels, null)).double()
        has_class = torch.as_tensor(classes != null)[:, None, None, None]
        eps = torch.where(has_class, eps_uncond + scale * (eps - eps_uncond), eps)
        a = abar[t]
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        a_prev = abar[times[i + 1]] if i + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.numpy()


@torch.no_grad()
def test_ddim_with_guidance_matches_a_torch_reference(unet) -> None:
    abar = alphas_cumprod(make_betas("cosine", TINY["timesteps"]))
    null = unet.config.null_class
    classes = np.array([0, 3, null, 7, null], np.int64)  # guided rows and unconditional ones
    noise = initial_noise(range(5), (1, 28, 28))
    calls = []

    def denoise(x, t, c):
        calls.append(len(x))
        return unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(c)).numpy()

    ours = ddim_sample(denoise, noise, abar, steps=6, classes=classes, null_class=null, guidance_scale=2.5)
    reference = _torch_ddim(unet, noise, abar, 6, classes, null, 2.5)
    assert np.abs(ours - reference).max() < 1e-5
    assert calls == [5 + 3] * 6  # one call per step: every row, plus the guided rows without class
    assert np.abs(ours).max() <= 1.0


def test_eta_one_over_every_timestep_is_the_ddpm_sampler() -> None:
    """With eta = 1 and all T steps, each DDIM step is DDPM's ancestral step: the posterior
    q(x_{t-1} | x_t, x_0) mean plus its variance's noise (Ho et al. 2020, eqs. 6-7)."""
    T = 8
    betas = make_betas("linear", T, 1e-3, 0.2)
    abar = alphas_cumprod(betas)
    noise = initial_noise([5], (1, 2, 2))

    def denoise(x, t, c):  # any fixed function of (x, t) will do
        return np.tanh(x * 0.3 + t[:, None, None, None] * 0.05).astype(np.float32)

    ours = ddim_sample(
        denoise,
        noise,
        abar,
        steps=T,
        classes=np.zeros(1, np.int64),
        null_class=0,
        eta=1.0,
        seeds=[5],
        clip=False,
    )
    rng = np.random.default_rng(5 + 1)  # the sampler's per-row noise stream
    x = noise.astype(np.float64)
    for t in range(T - 1, -1, -1):
        eps = denoise(x.astype(np.float32), np.array([t]), None).astype(np.float64)
        x0 = (x - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t])
        if t == 0:
            x = x0
            break
        a_prev = abar[t - 1]
        mean = math.sqrt(a_prev) * betas[t] * x0 + math.sqrt(1 - betas[t]) * (1 - a_prev) * x
        mean /= 1 - abar[t]
        variance = (1 - a_prev) / (1 - abar[t]) * betas[t]
        x = mean + math.sqrt(variance) * rng.standard_normal(x.shape[1:])
    assert np.abs(ours - x).max() < 1e-5


def test_unet_exports_with_parity(unet, tmp_path) -> None:
    (graph,) = unet.graphs()
    inputs, outputs = export_graph(graph, tmp_path / "denoiser.onnx", {})
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [
        ("x", "float32", [-1, 1, 28, 28]),
        ("t", "int64", [-1]),
        ("class", "int64", [-1]),
    ]
    assert outputs[0].name == "noise" and outputs[0].shape == [-1, 1, 28, 28]
    assert _parity(graph, tmp_path / "denoiser.onnx", (1, 7, 32)) <= 1e-4


def test_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Two Gaussians: |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa Sb)^1/2) = 4 + 3 (1 + 4 - 2 * 2) = 7.
    b = 2 * rng.standard_normal((4000, 3)) + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(7.0, rel=0.1)
