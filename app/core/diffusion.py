"""Denoising diffusion in numpy only (no torch, no onnxruntime): the noise schedule and the DDIM sampler.

Training (the DDPM loss, Ho et al. 2020) and serving share this module, so the model is trained on
the very schedule the server samples with, and training's evaluation runs the very sampler the server
runs. The model is one callable, which the server backs with its batched onnxruntime session and
training with the PyTorch module or the exported graph:

* ``denoise(x_t, t, classes)``: ``x_t`` (B, C, H, W) float32, ``t`` (B,) int64 timesteps in
  [0, T), ``classes`` (B,) int64 (``null_class`` = no class) -> the predicted noise (B, C, H, W).

The forward process noises a clean image ``x_0`` (pixels in [-1, 1]) in one jump:
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``abar_t`` the cumulative product of
``1 - beta``. DDIM (Song et al. 2021) walks back along any decreasing subsequence of the T
timesteps: at each one it predicts ``x_0`` from the model's noise, then moves to the next timestep
along that prediction; ``eta`` = 0 is deterministic given the starting noise, ``eta`` = 1 with all T
steps is DDPM's ancestral sampler. Classifier-free guidance (Ho & Salimans 2022) mixes the
conditional and the unconditional noise: ``eps_u + w (eps_c - eps_u)``; both rows go in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

DenoiseFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# After each step: (step index, timestep, that step's input x_t, its prediction of x_0 in [-1, 1]),
# both (B, C, H, W) float32.
StepFn = Callable[[int, int, np.ndarray, np.ndarray], None]

BetaSchedule = Literal["linear", "cosine"]

# The largest classifier-free guidance a request may ask for: far past the useful range (a few units;
# larger scales push every pixel to the ends of the range), still a bound on what the mix may produce.
MAX_GUIDANCE_SCALE = 20.0


def make_betas(
    schedule: BetaSchedule, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Per-step noise variances (T,) float64. ``linear``: DDPM's, from ``beta_start`` to ``beta_end``.
    ``cosine`` (Nichol & Dhariwal 2021): ``abar`` follows cos^2, so small images are not already pure
    noise a third of the way in, as they are under the linear schedule."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1; got {timesteps}")
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    if schedule == "cosine":
        s = 0.008  # the paper's offset: keeps beta_0 from being vanishingly small

        def abar(t: np.ndarray) -> np.ndarray:
            return np.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

        steps = np.arange(timesteps + 1, dtype=np.float64)
        # Capped as in the paper: the last steps would otherwise have beta = 1 (a division by zero
        # when x_0 is predicted from the noise).
        return np.clip(1 - abar(steps[1:]) / abar(steps[:-1]), 0.0, 0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}; known: linear, cosine")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """``abar_t`` (T,) float64: how much of the clean image is left at timestep t."""
    return np.cumprod(1.0 - np.asarray(betas, np.float64))


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """The ``steps`` timesteps a DDIM walk visits (int64, descending from T - 1 to 0, evenly spaced):
    starting at the last timestep means starting from pure noise, the distribution the walk's first
    input is drawn from (Lin et al. 2024: schedules that start earlier leave a gap there)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}]; got {steps}")
    return np.round(np.linspace(timesteps - 1, 0, steps)).astype(np.int64)


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """x_T (N, *shape) float32: row i is drawn from ``seeds[i]`` alone, so an image depends on its own
    seed (and class, steps, guidance), never on what else its request or its batch holds."""
    return np.stack([np.random.default_rng(seed).standard_normal(tuple(shape)) for seed in seeds]).astype(
        np.float32
    )


def ddim_sample(
    denoise: DenoiseFn,
    noise: np.ndarray,
    abar: np.ndarray,
    *,
    steps: int,
    classes: np.ndarray,
    null_class: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seeds: Sequence[int] | None = None,
    clip: bool = True,
    on_step: StepFn | None = None,
) -> np.ndarray:
    """Images (N, C, H, W) float32 in [-1, 1] from the starting noise ``noise`` (N, C, H, W).

    ``classes`` (N,) int64: each row's class, or ``null_class`` for none. With ``guidance_scale`` !=
    1, rows that have a class are guided: each step also runs them without it (same call, so the
    batcher sees one batch); 0 leaves only the unconditional prediction, so no row runs twice.
    ``clip``: the predicted x_0 is clipped to the pixel range and the noise re-derived from it, the
    DDPM paper's clipping; without it the first steps' x_0 (divided by sqrt(abar) ~ 1e-4) are far
    outside the range, and diffusion-digits' Fréchet distance was 34 instead of 6 (measured).
    ``eta`` > 0 adds fresh noise at every step, drawn per row from a generator seeded by
    ``seeds[i] + 1`` (so a row stays reproducible from its seed). ``on_step`` sees every step's input
    and x_0 prediction.
    """
    x = np.asarray(noise, np.float64)
    n = x.shape[0]
    classes = np.asarray(classes, np.int64)
    if classes.shape != (n,):
        raise ValueError(f"classes must hold one id per row ({n}); got shape {classes.shape}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    rngs = None
    if eta > 0:
        if seeds is None or len(seeds) != n:
            raise ValueError("eta > 0 needs one seed per row")
        rngs = [np.random.default_rng(seed + 1) for seed in seeds]
    if guidance_scale == 0:  # eps_u + 0 * (eps_c - eps_u): the unconditional prediction alone
        classes = np.full(n, null_class, np.int64)
    guided = np.flatnonzero(classes != null_class) if guidance_scale != 1.0 else np.zeros(0, np.int64)
    timesteps = ddim_timesteps(len(abar), steps)
    for i, t in enumerate(timesteps):
        t_feed = np.full(n + len(guided), t, np.int64)
        rows = np.concatenate([x, x[guided]]).astype(np.float32)
        ids = np.concatenate([classes, np.full(len(guided), null_class, np.int64)])
        out = np.asarray(denoise(rows, t_feed, ids), np.float64)
        eps = out[:n].copy()
        if len(guided):
            eps_uncond = out[n:]
            eps[guided] = eps_uncond + guidance_scale * (eps[guided] - eps_uncond)
        a_t = abar[t]
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip:
            x0 = np.clip(x0, -1.0, 1.0)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        if on_step is not None:
            on_step(i, int(t), rows[:n], x0.astype(np.float32))
        if i == len(timesteps) - 1:
            x = x0  # the last step lands on x_0 itself
            break
        a_prev = abar[timesteps[i + 1]]
        # DDIM's sigma: eta = 1 gives the DDPM posterior's variance for this jump.
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if rngs is not None and sigma > 0:
            x = x + sigma * np.stack([rng.standard_normal(x.shape[1:]) for rng in rngs])
    return x.astype(np.float32)
