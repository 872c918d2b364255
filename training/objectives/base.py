"""The objectives' common ground: what a run hands their steps, the base class, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from training import plots, trainer
from training.data import DatasetBundle
from training.recipes import Recipe
from training.registry import model_family
from training.trainer import TrainConfig, TrainResult

Measured = tuple[dict[str, float], dict[str, Path]]  # metrics, and plots (file name -> PNG)


@dataclass
class Run:
    """What a run of a recipe has built by the time it trains: what the objectives' steps read."""

    bundle: DatasetBundle
    model: nn.Module
    model_kwargs: dict[str, Any]  # rebuilds the same model (BERT's from-scratch comparison)
    loss: trainer.Objective | None  # None: the GAN trains with its own loop
    train_cfg: TrainConfig
    out: Path  # runs/<recipe>: checkpoints, curves, history
    repository: Path  # the model repository (where the GAN finds its judge)
    limit: int | None  # cap on training examples (smoke runs); pre-training data honours it too
    checkpoint_meta: dict[str, Any]  # written into every checkpoint: enough to rebuild the model
    resume_from: Path | None = None


# ---------------------------------------------------------------------------------------- registry


class UnknownObjectiveError(KeyError):
    """Raised for an objective name that no class registered."""

    def __str__(self) -> str:
        return str(self.args[0])


_OBJECTIVES: dict[str, type[RecipeObjective]] = {}
_O = TypeVar("_O", bound="RecipeObjective")


def register_objective(name: str) -> Callable[[type[_O]], type[_O]]:
    """Class decorator: register a :class:`RecipeObjective` subclass under ``name``."""

    def wrap(cls: type[_O]) -> type[_O]:
        if name in _OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return wrap


def objective_class(name: str) -> type[RecipeObjective]:
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise UnknownObjectiveError(
            f"unknown objective {name!r}; known objectives: {', '.join(sorted(_OBJECTIVES))}"
        ) from None


def objective_for(recipe: Recipe) -> RecipeObjective:
    """The objective of one run of ``recipe``."""
    return objective_class(recipe.objective)(recipe)


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


# ---------------------------------------------------------------------------------------- the base


def epoch_logger(label: str) -> Callable[[dict[str, float]], None]:
    def log_epoch(row: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        print(f"[{label}] epoch {int(row['epoch'])}: {shown}", flush=True)

    return log_epoch


class RecipeObjective:
    """One objective's steps of a run. An instance lives for one run, so a step may keep what a later
    step reports (BERT's pre-training figures)."""

    name: ClassVar[str] = ""  # set by register_objective
    task: ClassVar[str]  # config.json's task: what the server does with the model

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective | None:
        raise NotImplementedError

    def pretrain(self, run: Run) -> None:
        """Train ``run.model`` on another task before ``train`` (only BERT pre-trains)."""
        if self.recipe.pretrain is not None:
            raise ValueError(
                f"recipe {self.recipe.name!r} sets pretrain, but objective {self.name!r} has no pre-training"
            )

    def train(self, run: Run) -> TrainResult:
        return trainer.fit(
            run.model,
            run.bundle,
            run.loss,
            run.train_cfg,
            checkpoint_dir=run.out / "checkpoints",
            checkpoint_meta=run.checkpoint_meta,
            resume_from=run.resume_from,
            on_epoch=epoch_logger(self.recipe.name),
        )

    def evaluate(self, run: Run) -> Measured:
        """Held-out metrics and the pictures that show what the model learned."""
        metrics = trainer.evaluate(run.model, run.loss, run.bundle.test)
        return {f"test_{k}": v for k, v in metrics.items()}, {}

    def config_fields(self, run: Run) -> dict[str, Any]:
        """config.json's fields: how the server feeds the model and reads its outputs."""
        return {
            "name": self.recipe.name,
            "family": model_family(self.recipe.model),
            "task": self.task,
            "description": self.recipe.description,
        }

    def notes(self, run: Run) -> list[str]:
        """Lines for report.json's notes."""
        return []

    def check_export(self, run: Run, version_dir: Path) -> dict[str, float]:
        """Figures measured on the exported graphs in ``version_dir``, added to report.json."""
        return {}


# ---------------------------------------------------------------------------------------- shared


@torch.no_grad()
def classifier_figures(run: Run, title: str) -> Measured:
    """Chance accuracy and the test split's confusion matrix."""
    preds, truth = [], []
    for x, y in trainer.iterate_batches(run.bundle.test, 256, shuffle=False):
        preds.append(run.loss.logits(run.model, x).argmax(-1).numpy())
        truth.append(y.numpy())
    path = run.out / "confusion_matrix.png"
    picture = plots.plot_confusion_matrix(
        np.concatenate(truth), np.concatenate(preds), run.bundle.labels, path, title=f"{title}: test split"
    )
    return {"chance_accuracy": run.bundle.chance_accuracy}, {"confusion_matrix.png": picture}
