"""What each recipe objective adds to a run: one class per objective name, registered under that name.

A recipe names its objective (``Recipe.objective``: "classification", "gan", ...). The pipeline looks
the class up (:func:`objective_for`) and calls its steps in order: ``build_loss`` (the trainer's
:class:`~training.trainer.Objective`), ``pretrain``, ``train``, ``evaluate`` (held-out metrics and the
plots), ``config_fields`` (config.json), ``notes`` (report.json) and ``check_export`` (figures measured
on the exported graphs). :class:`RecipeObjective` (in ``base``) holds what the objectives share;
``images``, ``sequences`` and ``contrastive`` hold the objectives, registered when this package is imported.
"""

from training.objectives import (  # noqa: F401  (importing them registers the objectives)
    contrastive,
    diffusion,
    images,
    sequences,
)
from training.objectives.base import (
    Measured,
    RecipeObjective,
    Run,
    UnknownObjectiveError,
    list_objectives,
    objective_class,
    objective_for,
    register_objective,
)

__all__ = [
    "Measured",
    "RecipeObjective",
    "Run",
    "UnknownObjectiveError",
    "list_objectives",
    "objective_class",
    "objective_for",
    "register_objective",
]
