"""Objectives on images: classification, autoencoders (plain, denoising, variational), the GANs
(unconditional and class-conditional) and unpaired image-to-image translation (CycleGAN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.core.repository_format import (
    GenerationDefaults,
    ImagePostprocessing,
    ImagePreprocessing,
)
from training import plots, trainer
from training.complexity import multiply_adds, parameter_count
from training.data import DatasetBundle, add_noise, stroke_thickness, unpaired_domains
from training.judge import Judge, class_accuracy, sample_scores
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
        # What the model costs, beside what it scores: the light and the heavy nets compared in the README.
        example = run.bundle.test.tensors[0][:2]  # (2, C, H, W): the served input size
        cost = {"parameters": parameter_count(run.model), "multiply_adds": multiply_adds(run.model, example)}
        return {**metrics, **figures, **cost}, {**pictures, **confusion}

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


def judge_probabilities(
    run: Run, judge: str, images: torch.Tensor, *, same_labels: bool = False
) -> torch.Tensor:
    """Softmax of the zoo's exported classifier ``judge`` over ``images`` (N, C, H, W) in [0, 1]
    (training.judge.Judge: onnxruntime, the version the server serves). ``same_labels``: the judge's
    classes must be the data's (its answers are compared with labels)."""
    expected = run.bundle.labels if same_labels else None
    return torch.from_numpy(Judge(run.repository, judge, labels=expected)(images)[0])  # (N, classes)


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
        """Score GAN_JUDGE_SAMPLES samples with the zoo's digits classifier (``recipe.judge``)."""
        generator = torch.Generator().manual_seed(run.train_cfg.seed + 1)
        z = torch.randn(GAN_JUDGE_SAMPLES, run.model.config.latent_dim, generator=generator)
        images = (run.model.generator(z) + 1) / 2  # (N, C, H, W) in [0, 1]
        return sample_scores(judge_probabilities(run, self.recipe.judge, images))

    def config_fields(self, run: Run) -> dict[str, Any]:
        return {  # no preprocessing: the input is a latent vector, not an image
            **super().config_fields(run),
            "postprocessing": _image_postprocessing((-1.0, 1.0)),  # the generator's tanh
            "generation": _latent_generation(run.model),
        }


@register_objective("conditional_gan")
class ConditionalGAN(GAN):
    """Class-conditional DCGAN: served as the generator ((z, class) -> image in [-1, 1]); judged by
    whether the zoo's classifier sees the class that was asked for."""

    SAMPLES_PER_CLASS = 8  # one row of samples.png per class

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        generator = torch.Generator().manual_seed(run.train_cfg.seed)
        config = run.model.config
        labels = torch.arange(config.num_classes).repeat_interleave(self.SAMPLES_PER_CLASS)
        z = torch.randn(len(labels), config.latent_dim, generator=generator)
        samples = ((run.model.generator(z, labels) + 1) / 2).clamp(0, 1).numpy()
        path = plots.image_grid(
            samples,
            run.out / "samples.png",
            nrow=self.SAMPLES_PER_CLASS,
            title=f"{self.recipe.name}: one row per requested class",
            row_titles=[f"class {label}" for label in run.bundle.labels],
        )
        metrics = self._judge(run) if self.recipe.judge else {}
        return metrics, {"samples.png": path}

    def _judge(self, run: Run) -> dict[str, float]:
        """GAN_JUDGE_SAMPLES samples, the classes asked for in turn: the judge's accuracy on the class
        asked for (the bar), on the worst class, and the unconditional GAN's scores."""
        generator = torch.Generator().manual_seed(run.train_cfg.seed + 1)
        config = run.model.config
        labels = torch.arange(GAN_JUDGE_SAMPLES) % config.num_classes
        z = torch.randn(GAN_JUDGE_SAMPLES, config.latent_dim, generator=generator)
        images = (run.model.generator(z, labels) + 1) / 2  # (N, C, H, W) in [0, 1]
        probs = judge_probabilities(run, self.recipe.judge, images, same_labels=True)
        return {**class_accuracy(probs, labels, "judge_requested_class_"), **sample_scores(probs)}

    def config_fields(self, run: Run) -> dict[str, Any]:
        fields = super().config_fields(run)
        # A default request draws one sample of each class.
        generation = GenerationDefaults(
            latent_dim=run.model.config.latent_dim, num_samples=run.model.config.num_classes
        )
        return {**fields, "labels": run.bundle.labels, "generation": generation.model_dump()}


@register_objective("cycle_gan")
class CycleGAN(RecipeObjective):
    """Unpaired image-to-image translation between two stroke domains made from the recipe's images
    (training.data.unpaired_domains: disjoint halves of every split, one eroded, one dilated). Served
    as two graphs, one per direction, each image in [0, 1] -> image in [0, 1]; judged on the held-out
    split by the zoo's classifier (is it still the same digit?) and by the stroke-thickness measure
    (did it move to the target domain?)."""

    task = "image_translation"

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> None:
        return None  # the cycle loop has losses of its own

    def _domains(self, run: Run, split: torch.utils.data.TensorDataset):
        config = run.model.config
        return unpaired_domains(split, (config.domain_a, config.domain_b), run.train_cfg.seed)

    def train(self, run: Run) -> TrainResult:
        if run.resume_from is not None:
            raise ValueError("--resume is not supported for GAN recipes; train them again")
        domain_a, domain_b = self._domains(run, run.bundle.train)
        return trainer.fit_cycle_gan(
            run.model,
            domain_a,
            domain_b,
            run.train_cfg,
            checkpoint_dir=run.out / "checkpoints",
            checkpoint_meta=run.checkpoint_meta,
            on_epoch=epoch_logger(self.recipe.name),
        )

    @torch.no_grad()
    def evaluate(self, run: Run) -> Measured:
        model, config = run.model, run.model.config
        (xa, ya), (xb, yb) = (d.tensors for d in self._domains(run, run.bundle.test))
        a, b = config.domain_a, config.domain_b
        a_to_b, b_to_a = config.directions
        translated = {a_to_b: model.a_to_b(xa), b_to_a: model.b_to_a(xb)}  # (N, C, H, W) in [0, 1]
        round_trip = {a_to_b: model.b_to_a(translated[a_to_b]), b_to_a: model.a_to_b(translated[b_to_a])}
        thickness = {name: stroke_thickness(x) for name, x in ((a, xa), (b, xb), *translated.items())}
        metrics = {f"stroke_{name}": float(t.mean()) for name, t in thickness.items()}
        for direction, source, target in ((a_to_b, a, b), (b_to_a, b, a)):
            # 0: the strokes did not change; 1: they reached the target domain's mean.
            gap = metrics[f"stroke_{target}"] - metrics[f"stroke_{source}"]
            if gap:  # domains of equal thickness (a handful of images in a smoke run) leave it undefined
                moved = metrics[f"stroke_{direction}"] - metrics[f"stroke_{source}"]
                metrics[f"stroke_shift_{direction}"] = moved / gap
        metrics["test_cycle_l1"] = float(
            ((round_trip[a_to_b] - xa).abs().mean() + (round_trip[b_to_a] - xb).abs().mean()) / 2
        )
        if self.recipe.judge:
            judged = (
                (a, xa, ya),
                (b, xb, yb),
                (a_to_b, translated[a_to_b], ya),
                (b_to_a, translated[b_to_a], yb),
            )
            for name, images, labels in judged:
                probs = judge_probabilities(run, self.recipe.judge, images, same_labels=True)
                metrics[f"judge_accuracy_{name}"] = float((probs.argmax(-1) == labels).float().mean())
        n = 8
        rows = [
            xa[:n],
            translated[a_to_b][:n],
            round_trip[a_to_b][:n],
            xb[:n],
            translated[b_to_a][:n],
            round_trip[b_to_a][:n],
        ]
        titles = [a, a_to_b, f"... back to {a}", b, b_to_a, f"... back to {b}"]
        pictures = {
            "translations.png": plots.image_grid(
                _image_grid_rows(*rows),
                run.out / "translations.png",
                nrow=n,
                title=self.recipe.name,
                row_titles=titles,
            ),
            "stroke_thickness.png": plots.plot_distributions(
                {name: t.numpy() for name, t in thickness.items()},
                run.out / "stroke_thickness.png",
                title=f"{self.recipe.name}: held-out images by stroke thickness",
                xlabel="mean distance from ink to background (px)",
            ),
        }
        return metrics, pictures

    def config_fields(self, run: Run) -> dict[str, Any]:
        channels, height, width = run.bundle.input_shape
        # Pixels in [0, 1] as they are (no normalisation), as the autoencoders take them.
        pre = ImagePreprocessing(
            height=height, width=width, channels=channels, mean=[0.0] * channels, std=[1.0] * channels
        )
        return {
            **super().config_fields(run),
            "preprocessing": pre.model_dump(),
            "postprocessing": _image_postprocessing((0.0, 1.0)),
        }

    def notes(self, run: Run) -> list[str]:
        config = run.model.config
        return [
            f"domains: {config.domain_a} and {config.domain_b} images are made from disjoint halves of "
            "each split (training.data.unpaired_domains: 3x3 grey erosion and dilation), so no image is "
            f"seen in both; graphs {config.directions[0]} and {config.directions[1]}"
        ]
