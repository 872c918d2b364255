"""The objective registry: every recipe's objective is registered, an unknown one is one clear error."""

from __future__ import annotations

import dataclasses

import pytest

from training.objectives import (
    RecipeObjective,
    UnknownObjectiveError,
    list_objectives,
    objective_class,
    objective_for,
    register_objective,
)
from training.pipeline import RunOptions, run_recipe
from training.recipes import get_recipe, list_recipes
from training.registry import build_model
from training.trainer import TrainConfig

# What the server does with each objective's model (config.json's task), as recipes served it before
# objectives were classes.
SERVED_TASKS = {
    "classification": "classification",
    "sequence_classification": "classification",
    "masked_sequence_classification": "classification",
    "reconstruction": "reconstruction",
    "denoising": "reconstruction",
    "vae": "reconstruction",
    "gan": "generation",
    "conditional_gan": "generation",
    "cycle_gan": "image_translation",
    "language_model": "text_generation",
    "seq2seq": "seq2seq",
    "contrastive": "embedding",
    "diffusion": "diffusion",
}


def test_every_recipe_objective_is_registered() -> None:
    used = {recipe.objective for recipe in list_recipes()}
    assert used <= set(list_objectives())
    assert set(list_objectives()) == set(SERVED_TASKS)  # and no objective is left without a recipe
    for recipe in list_recipes():
        objective = objective_for(recipe)
        assert objective.name == recipe.objective and objective.recipe is recipe


@pytest.mark.parametrize("name, task", sorted(SERVED_TASKS.items()))
def test_served_task(name: str, task: str) -> None:
    assert objective_class(name).task == task


def test_unknown_objective_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(UnknownObjectiveError) as info:
        objective_class("regression")
    message = str(info.value)
    assert "unknown objective 'regression'" in message and "classification" in message and "gan" in message

    recipe = dataclasses.replace(get_recipe("mlp-digits"), objective="regression")
    opts = RunOptions(repository=tmp_path / "models", runs_dir=tmp_path / "runs", limit=64)
    with pytest.raises(UnknownObjectiveError, match="regression"):
        run_recipe(recipe, opts)
    assert not any(tmp_path.iterdir())  # it fails before anything is loaded or written


def test_an_objective_name_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @register_objective("classification")
        class Again(RecipeObjective):
            task = "classification"


def test_pretraining_is_refused_where_the_objective_has_none() -> None:
    recipe = dataclasses.replace(get_recipe("mlp-digits"), pretrain=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="no pre-training"):
        objective_for(recipe).pretrain(run=None)


@pytest.mark.parametrize(
    "model, overrides, expected",
    [
        ("gpt", {"block_size": 48}, 48),
        ("bert", {"max_len": 40}, 40),
        ("seq2seq", {"max_len": 24}, 24),
        ("lstm", {}, None),  # no position table: any length
    ],
)
def test_context_length_is_one_name_for_every_text_model(model: str, overrides: dict, expected) -> None:
    config = build_model(model, **overrides).config
    assert config.context_length == expected
    # A property, not a field: checkpoints and config.json keep the fields they had.
    assert "context_length" not in dataclasses.asdict(config)


@pytest.mark.parametrize(
    "recipe, overrides, expected",
    [
        ("gpt-corpus", {}, 128),  # the recipe's block_size
        ("gpt-corpus", {"block_size": 64}, 64),  # --set block_size=64
        ("bert-scramble", {}, 64),  # the recipe's max_len
        ("lstm-order", {}, 128),  # no context length of its own: the default window
    ],
)
def test_text_data_is_cut_to_the_models_context(recipe: str, overrides: dict, expected: int) -> None:
    from training.pipeline import _context_length

    r = get_recipe(recipe)
    assert _context_length(r, {**r.model_overrides, **overrides}) == expected
