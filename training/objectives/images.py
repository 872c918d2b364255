"""Objectives on images: classification, autoencoders (plain, denoising, variational) and the GAN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from app.core.repository_format import (
    CONFIG_FILE,
    GenerationDefaults,
    ImagePostprocessing,
    ImagePreprocessing,
    ModelConfig,
    default_version,
)
from training import plots, trainer
from training.data import DatasetBundle, add_noise, normalize
from training.objectives.base import (
    Measured,
    RecipeObjective,
    Run,
    classifier_figures,
    epoch_logger,
    register_objective,
)
from training.trainer import TrainConfig, TrainResult

GAN_JUDGE_SAMPLES = 1000


def _image_preprocessing(run: Run) -> dict[str, Any]:
    """How the server turns an upload into the input: the size and the normalisation the loss used."""
    shape = run.bundle.input_shape
    channels, height, width = shape if len(shape) == 3 else (1, 1, int(np.prod(shape)))
    mean, std = list(run.loss.mean), list(run.loss.std)
    return ImagePreprocessing(height=height, width=width, channels=channels, mean=mean, std=std).model_dump()


def _image_postprocessing(value_range: tuple[float, float]) -> dict[str, Any]:
    return ImagePostprocessing(value_range=value_range).model_dump()


def _latent_generation(model: nn.Module) -> dict[str, Any]:
    return GenerationDefaults(latent_dim=model.config.latent_dim).model_dump()


def _image_grid_rows(*rows: torch.Tensor) -> np.ndarray:
    return torch.cat(rows).clamp(0, 1).numpy()


@register_objective("classification")
class Classification(RecipeObjective):
    """Images -> class: cross-entropy on the (optionally normalised) pixels."""

    task = "classification"

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.Classification(bundle, self.recipe.normalize_inputs, cfg.label_smoothing)

    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        figures, confusion = classifier_figures(run, self.recipe.name)
        return {**metrics, **figures}, {**pictures, **confusion}

    def config_fields(self, run: Run) -> dict[str, Any]:
        return {
            **super().config_fields(run),
            "preprocessing": _image_preprocessing(run),
            "labels": run.bundle.labels,
        }


class _Autoencoder(RecipeObjective):
    """Image in, image in [0, 1] out: served as a reconstruction."""

    task = "reconstruction"

    def _grid(self, run: Run, rows: list[torch.Tensor], titles: list[str]) -> Path:
        """reconstructions.png: one row of test images per entry of ``rows``."""
        path = run.out / "reconstructions.png"
        return plots.image_grid(
            _image_grid_rows(*rows), path, nrow=8, title=self.recipe.name, row_titles=titles
        )

    def config_fields(self, run: Run) -> dict[str, Any]:
        return {
            **super().config_fields(run),
            "preprocessing": _image_preprocessing(run),
            "postprocessing": _image_postprocessing((0.0, 1.0)),
        }


@register_objective("reconstruction")
class Reconstruction(_Autoencoder):
    """Autoencoder: MSE between the reconstruction and the input."""

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.Reconstruction(bundle)

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        x = run.bundle.test.tensors[0][:8]
        pictures["reconstructions.png"] = self._grid(run, [x, run.model(x)[0]], ["input", "reconstruction"])
        return metrics, pictures


@register_objective("denoising")
class Denoising(_Autoencoder):
    """Denoising autoencoder: Gaussian noise (``recipe.noise_std``) in, the clean image out."""

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.Reconstruction(bundle, noise_std=self.recipe.noise_std)

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        generator = torch.Generator().manual_seed(run.train_cfg.seed)
        std, test = self.recipe.noise_std, run.bundle.test.tensors[0]
        x = test[:8]
        noisy = add_noise(x, std, generator)
        pictures["reconstructions.png"] = self._grid(
            run, [x, noisy, run.model(noisy)[0]], ["input", "noisy input", "reconstruction"]
        )
        # The same model on clean inputs, and the noisy input's own error as a baseline.
        clean = trainer.evaluate(run.model, trainer.Reconstruction(run.bundle), run.bundle.test)
        metrics["test_mse_noisy"] = metrics.pop("test_mse")
        metrics["test_mse_clean"] = clean["mse"]
        metrics["noisy_input_mse"] = float(((add_noise(test, std, generator) - test) ** 2).mean())
        metrics.pop("test_loss", None)
        return metrics, pictures


@register_objective("vae")
class VAE(_Autoencoder):
    """Variational autoencoder: negative ELBO; served as an encoder and a decoder (from z ~ N(0, I))."""

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.VariationalELBO(bundle)

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        metrics["test_elbo_nats"] = -(metrics["test_recon_nats"] + metrics["test_kl_nats"])
        generator = torch.Generator().manual_seed(run.train_cfg.seed)
        model, x = run.model, run.bundle.test.tensors[0][:8]
        mu, _ = model.encoder(x)
        z = torch.randn(32, model.config.latent_dim, generator=generator)
        title = f"{self.recipe.name}: z ~ N(0, I)"
        path = run.out / "samples.png"
        pictures["samples.png"] = plots.image_grid(model.decoder(z).numpy(), path, nrow=8, title=title)
        pictures["reconstructions.png"] = self._grid(
            run, [x, model.decoder(mu)], ["input", "reconstruction (mu)"]
        )
        return metrics, pictures

    def config_fields(self, run: Run) -> dict[str, Any]:
        return {**super().config_fields(run), "generation": _latent_generation(run.model)}


@register_objective("gan")
class GAN(RecipeObjective):
    """DCGAN: its own adversarial loop; served as the generator (z -> image in [-1, 1])."""

    task = "generation"

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> None:
        return None  # the adversarial loop has two losses of its own

    def train(self, run: Run) -> TrainResult:
        if run.resume_from is not None:
            raise ValueError("--resume is not supported for GAN recipes; train them again")
        return trainer.fit_gan(
            run.model,
            run.bundle,
            run.train_cfg,
            checkpoint_dir=run.out / "checkpoints",
            checkpoint_meta=run.checkpoint_meta,
            on_epoch=epoch_logger(self.recipe.name),
        )

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        generator = torch.Generator().manual_seed(run.train_cfg.seed)
        z = torch.randn(32, run.model.config.latent_dim, generator=generator)
        samples = ((run.model.generator(z) + 1) / 2).clamp(0, 1).numpy()
        path = plots.image_grid(samples, run.out / "samples.png", nrow=8, title=self.recipe.name)
        metrics = self._judge(run) if self.recipe.judge else {}
        return metrics, {"samples.png": path}

    def _judge(self, run: Run) -> dict[str, float]:
        """Score samples with the zoo's exported digits classifier (``recipe.judge``) in onnxruntime.

        Mean max-probability says how digit-like the samples are; the number of distinct predicted
        classes exposes mode collapse.
        """
        judge = self.recipe.judge
        judge_dir = run.repository / judge
        if not (judge_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"GAN judge {judge!r} not found in {run.repository}; build it first "
                f"(python -m training train {judge})"
            )
        config = ModelConfig.model_validate_json((judge_dir / CONFIG_FILE).read_text())
        version = default_version(judge_dir, config.version)  # the one the server serves
        graph = config.graphs["model"]
        session = ort.InferenceSession(
            str(judge_dir / str(version) / graph.file), providers=["CPUExecutionProvider"]
        )
        pre = config.preprocessing
        generator = torch.Generator().manual_seed(run.train_cfg.seed + 1)
        z = torch.randn(GAN_JUDGE_SAMPLES, run.model.config.latent_dim, generator=generator)
        images = (run.model.generator(z) + 1) / 2  # (N, C, H, W) in [0, 1]
        if tuple(images.shape[1:]) != (pre.channels, pre.height, pre.width):
            raise ValueError(f"judge {judge!r} expects {pre.channels}x{pre.height}x{pre.width} images")
        feed = normalize(images, pre.mean, pre.std).numpy().astype(np.float32)
        logits = session.run(None, {graph.inputs[0].name: feed})[0]
        probs = torch.softmax(torch.from_numpy(logits), -1)
        counts = np.bincount(probs.argmax(-1).numpy(), minlength=probs.shape[1])
        return {
            "judge_mean_max_prob": float(probs.max(-1).values.mean()),
            "judge_classes_present": float((counts > 0).sum()),
            "judge_min_class_share": float(counts.min() / GAN_JUDGE_SAMPLES),
        }

    def config_fields(self, run: Run) -> dict[str, Any]:
        return {  # no preprocessing: the input is a latent vector, not an image
            **super().config_fields(run),
            "postprocessing": _image_postprocessing((-1.0, 1.0)),  # the generator's tanh
            "generation": _latent_generation(run.model),
        }
