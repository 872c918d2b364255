"""Denoising diffusion (DDPM's training, DDIM's sampling): the noise-prediction loss, and the objective
that evaluates, exports and judges a U-Net noise predictor.

Training and serving share app/core/diffusion.py: the loss noises images with its schedule, and
both the pictures (PyTorch denoiser) and the judged samples (the exported graph in onnxruntime, as
the server runs it) come from its DDIM sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from app.core.diffusion import alphas_cumprod, ddim_sample, initial_noise, make_betas
from app.core.repository_format import (
    CONFIG_FILE,
    DiffusionSpec,
    ImagePostprocessing,
    ModelConfig,
    default_version,
)
from training import plots, trainer
from training.data import DatasetBundle
from training.judge import Judge, class_accuracy, frechet_distance, sample_scores
from training.objectives.base import Measured, RecipeObjective, Run, register_objective
from training.trainer import TrainConfig

JUDGE_SAMPLES = 1000  # as the GAN's judge
# DDIM steps of the judged samples and of a request that does not say. Measured (300 samples, guidance
# 2): Fréchet distance 1.25 at 10 steps, 1.11 at 20, 1.02 at 50.
SAMPLE_STEPS = 20
# Classifier-free guidance of a class-conditional request that does not say. Measured (300 samples, 20
# steps; requested-class accuracy, Fréchet distance): scale 1 (no guidance) 0.88, 0.86; 1.5 0.98, 0.80;
# 2 0.99, 1.11; 3 1.00, 1.58; the unconditional prediction alone: 6.29.
GUIDANCE_SCALE = 1.5
STREAM_EVERY = 5  # a streamed request gets the current image every this many steps
# The image generator judged beside the diffusion model, on the same real images.
COMPARED_GENERATOR = "dcgan-digits"


class NoisePrediction(trainer.Objective):
    """DDPM's simple loss: noise a batch of images (pixels scaled to [-1, 1]) to a uniformly drawn
    timestep in one jump, and regress the noise (MSE). A class-conditional model gets each image's
    label, dropped to the "no class" id with probability ``label_dropout``, so that one network also
    predicts unconditionally (classifier-free guidance needs both). The schedule is the model's own
    (its config's timesteps and beta_schedule), read from the model it trains."""

    def __init__(self, bundle: DatasetBundle) -> None:
        super().__init__(bundle, normalize_inputs=False)
        self._abar: torch.Tensor | None = None

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        config = getattr(model, "module", model).config  # DistributedDataParallel wraps the model
        if self._abar is None:
            self._abar = torch.from_numpy(_abar(schedule_of(config))).float()  # (T,)
        x0 = x * 2 - 1  # (B, C, H, W) in [-1, 1]
        b = x0.shape[0]
        t = torch.randint(0, config.timesteps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = self._abar[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        labels = torch.full((b,), config.null_class, dtype=torch.int64)
        if config.num_classes:
            kept = torch.rand(b, generator=generator) >= config.label_dropout
            labels = torch.where(kept, y, labels)
        loss = F.mse_loss(model(x_t, t, labels), noise)
        return loss, {"loss": loss.item()}


def schedule_of(config: Any) -> DiffusionSpec:
    """A U-Net's noise schedule and the sampling defaults, as config.json records them."""
    conditional = config.num_classes > 0
    return DiffusionSpec(
        timesteps=config.timesteps,
        beta_schedule=config.beta_schedule,
        conditional=conditional,
        null_class=config.null_class,
        steps=SAMPLE_STEPS,
        guidance_scale=GUIDANCE_SCALE if conditional else 1.0,
        num_samples=config.num_classes if conditional else DiffusionSpec().num_samples,  # one per class
        stream_every=STREAM_EVERY,
    )


def _abar(spec: DiffusionSpec) -> np.ndarray:
    return alphas_cumprod(make_betas(spec.beta_schedule, spec.timesteps, spec.beta_start, spec.beta_end))


def _torch_denoiser(model: nn.Module):
    @torch.no_grad()
    def denoise(x: np.ndarray, t: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(classes)).numpy()

    return denoise


def _onnx_denoiser(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # what the training used
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def denoise(x: np.ndarray, t: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": x, "t": t, "class": classes})[0]

    return denoise


def _to_unit(images: np.ndarray) -> np.ndarray:
    return ((images + 1) / 2).clip(0, 1)  # [-1, 1] -> [0, 1], as the judge and the plots take them


def _real_images(bundle: DatasetBundle) -> np.ndarray:
    """The real images the samples are compared with: every held-out digit (val and test; neither
    model trained on them). The 1,797 digits hold only ~540 of them."""
    return torch.cat([bundle.val.tensors[0], bundle.test.tensors[0]]).numpy()


def _gan_samples(repository: Path, name: str, count: int, seed: int) -> np.ndarray | None:
    """``count`` images of the repository's served image generator ``name``, from the latents the
    server draws for seeds seed, seed + 1, ... (None when the repository lacks it)."""
    model_dir = repository / name
    if not (model_dir / CONFIG_FILE).is_file():
        return None
    config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
    version = default_version(model_dir, config.version)  # the one the server serves
    graph = config.graphs["generator"]
    session = ort.InferenceSession(
        str(model_dir / str(version) / graph.file), providers=["CPUExecutionProvider"]
    )
    dim = config.generation.latent_dim
    z = np.stack([np.random.default_rng(seed + i).standard_normal(dim) for i in range(count)]).astype(
        np.float32
    )
    low, high = config.postprocessing.value_range
    images = session.run(None, {graph.inputs[0].name: z})[0]
    return ((images - low) / (high - low)).clip(0, 1)


@register_objective("diffusion")
class Diffusion(RecipeObjective):
    """A U-Net noise predictor; served as one denoiser graph ((x_t, t, class) -> noise) whose DDIM
    walk runs in the server; judged on JUDGE_SAMPLES samples of the exported graph by the zoo's digit
    classifier (``recipe.judge``) and by the Fréchet distance in its features, beside the GAN's.

    A smoke run (``--limit``) checks the plumbing, not the quality: it judges as many samples as it
    trained on, and walks SMOKE_STEPS steps (a full judge is ~60,000 denoiser calls)."""

    task = "diffusion"
    SMOKE_STEPS = 2

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> NoisePrediction:
        return NoisePrediction(bundle)

    def _steps(self, run: Run, spec: DiffusionSpec) -> int:
        return spec.steps if run.limit is None else min(spec.steps, self.SMOKE_STEPS)

    def _sample(self, run: Run, denoise, classes: np.ndarray, seed: int, on_step=None) -> np.ndarray:
        """Images in [0, 1] from seeds seed, seed + 1, ..., as the server draws them: rows with a
        class are guided by the model's default scale."""
        spec = schedule_of(run.model.config)
        images = ddim_sample(
            denoise,
            initial_noise(range(seed, seed + len(classes)), run.bundle.input_shape),
            _abar(spec),
            steps=self._steps(run, spec),
            classes=classes,
            null_class=spec.null_class,
            guidance_scale=spec.guidance_scale,
            clip=spec.clip_denoised,
            on_step=on_step,
        )
        return _to_unit(images)

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        """The test split's noise-prediction loss, and the pictures (the PyTorch model through the
        server's sampler): samples.png, a row per class and unconditional rows; denoising.png, x_t
        along one walk per row, pure noise on the left, the image on the right."""
        metrics, _ = super().evaluate(run)
        spec = schedule_of(run.model.config)
        null, labels = spec.null_class, run.bundle.labels
        denoise = _torch_denoiser(run.model.eval())
        steps, seed = self._steps(run, spec), run.train_cfg.seed
        guided = f", guidance {spec.guidance_scale:g}" if spec.conditional else ""
        pictures: dict[str, Path] = {}

        per_row = 10
        rows = [(f"class {label}", i) for i, label in enumerate(labels)] if spec.conditional else []
        rows += [("no class", null)] * (2 if spec.conditional else 6)
        classes = np.repeat([c for _, c in rows], per_row).astype(np.int64)
        pictures["samples.png"] = plots.image_grid(
            self._sample(run, denoise, classes, seed),
            run.out / "samples.png",
            nrow=per_row,
            title=f"{self.recipe.name}: DDIM {steps} steps{guided}",
            row_titles=[title for title, _ in rows],
        )

        walkers = np.arange(len(labels), dtype=np.int64) if spec.conditional else np.full(8, null)
        every = max(1, steps // 10)
        frames: list[np.ndarray] = []

        def keep(i: int, t: int, x_t: np.ndarray, x0: np.ndarray) -> None:
            if i % every == 0:
                frames.append(_to_unit(x_t.clip(-1, 1)))

        frames.append(self._sample(run, denoise, walkers, seed, on_step=keep))
        walks = np.stack(frames, axis=1).reshape(-1, *run.bundle.input_shape)  # a row per walk
        pictures["denoising.png"] = plots.image_grid(
            walks,
            run.out / "denoising.png",
            nrow=len(frames),
            title=f"{self.recipe.name}: x_t every {every} of {steps} DDIM steps{guided}, then the image",
            row_titles=[f"class {labels[c]}" for c in walkers] if spec.conditional else None,
        )
        return metrics, pictures

    def check_export(self, run: Run, version_dir: Path) -> dict[str, float]:
        """The judge's figures on JUDGE_SAMPLES samples of the exported graph (the server's sampler,
        seeds from the training seed + 1), and the Fréchet distances to the held-out digits.

        ``judge_*``: what a request without a class gets, the classes in turn at the default guidance
        (a conditional model; is the requested digit the one drawn?); ``judge_unconditional_*``: the
        unconditional prediction alone (guidance 0; an unconditional model has only these), the GAN's
        kind of sample. Beside them the Fréchet distance of the GAN's samples from the same seeds, and
        the training split's own (real digits against real digits: the floor)."""
        if not self.recipe.judge:
            return {}
        spec = schedule_of(run.model.config)
        judge = Judge(run.repository, self.recipe.judge, labels=run.bundle.labels)
        count = JUDGE_SAMPLES if run.limit is None else min(JUDGE_SAMPLES, run.limit)
        seed = run.train_cfg.seed + 1
        denoise = _onnx_denoiser(version_dir / "denoiser.onnx")
        real = judge(_real_images(run.bundle))[1]
        train = judge(run.bundle.train.tensors[0][:JUDGE_SAMPLES].numpy())[1]
        metrics = {"judge_frechet_distance_train_split": frechet_distance(train, real)}

        probs, features = judge(self._sample(run, denoise, np.full(count, spec.null_class), seed))
        scores = {**sample_scores(probs), "judge_frechet_distance": frechet_distance(features, real)}
        if not spec.conditional:
            metrics.update(scores)
        else:
            metrics.update({k.replace("judge_", "judge_unconditional_"): v for k, v in scores.items()})
            classes = np.arange(count, dtype=np.int64) % len(run.bundle.labels)
            probs, features = judge(self._sample(run, denoise, classes, seed))
            metrics.update(class_accuracy(probs, classes, "judge_requested_class_"))
            metrics.update(sample_scores(probs))
            metrics["judge_frechet_distance"] = frechet_distance(features, real)
        gan = _gan_samples(run.repository, COMPARED_GENERATOR, count, seed)
        if gan is not None:
            key = f"judge_frechet_distance_{COMPARED_GENERATOR.replace('-', '_')}"
            metrics[key] = frechet_distance(judge(gan)[1], real)
        return metrics

    def config_fields(self, run: Run) -> dict[str, Any]:
        spec = schedule_of(run.model.config)
        fields = {
            **super().config_fields(run),
            "postprocessing": ImagePostprocessing(value_range=(-1.0, 1.0)).model_dump(),
            "diffusion": spec.model_dump(),
        }
        if spec.conditional:
            fields["labels"] = run.bundle.labels
        return fields
