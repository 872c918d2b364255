"""Run a recipe end to end: data -> model -> (pre-training) -> training -> test metrics and plots ->
repository entry -> checks on the exported graphs. What an objective adds lives in training.objectives."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.core.repository_format import REPORT_FILE, ModelConfig, Report
from training import plots
from training.data import DataError, DatasetBundle, load_dataset
from training.export import config_json, stage_export
from training.objectives import Measured, Run, objective_for
from training.recipes import Recipe, check_bars
from training.registry import build_model, model_config_class
from training.repository_policy import check_config, choose_version, served_model
from training.sequence_data import SEQUENCE_DATASETS, all_datasets, load_sequence_dataset
from training.trainer import (
    TrainConfig,
    TrainResult,
    init_distributed,
    load_checkpoint,
    seed_everything,
    write_json,
)

# Text windows for a model without a context length of its own (an RNN reads any length).
DEFAULT_CONTEXT_LENGTH = 128


@dataclass
class RunOptions:
    """What a user may change on top of a recipe (CLI flags)."""

    train_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str | None = None  # train the recipe's model on another dataset (e.g. mnist)
    data_root: str | None = None
    limit: int | None = None
    repository: Path = Path("models")
    runs_dir: Path = Path("runs")
    version: int | None = None  # None: the next version (training.repository_policy.choose_version)
    overwrite: bool = False  # replace an existing version folder / a config.json that differs
    resume: Path | None = None


@dataclass
class RunSummary:
    recipe: str
    metrics: dict[str, float]
    parity: float | None
    seconds: float
    path: Path | None  # the version folder written; None when nothing was exported
    failed_bars: list[str]  # the bars missed, with the values: "test_accuracy=0.91 (>= 0.97)"
    # Set when a missed bar kept the model out of the repository: the served version that meets its bars.
    kept_version: int | None = None


def _model_kwargs(recipe: Recipe, bundle: DatasetBundle, overrides: dict[str, Any]) -> dict[str, Any]:
    """Fit the model's input/output fields to the data, so any recipe runs on user-supplied data."""
    fields = {f.name for f in dataclasses.fields(model_config_class(recipe.model))}
    shape = bundle.input_shape
    derived: dict[str, Any] = {}
    if "vocab_size" in fields and bundle.tokenizer is not None:
        derived["vocab_size"] = bundle.tokenizer.vocab_size
    if "num_classes" in fields and bundle.labels:
        derived["num_classes"] = len(bundle.labels)
    if "in_features" in fields and bundle.tokenizer is None:
        derived["in_features"] = int(np.prod(shape))
    if len(shape) == 3:
        for key in ("in_channels", "out_channels"):
            if key in fields:
                derived[key] = shape[0]
        if "image_size" in fields:
            if shape[1] != shape[2]:
                raise ValueError(f"model {recipe.model!r} needs square images; data has {shape[1:]}")
            derived["image_size"] = shape[1]
    return {**derived, **recipe.model_overrides, **overrides}


def _context_length(recipe: Recipe, overrides: dict[str, Any]) -> int:
    """The context length of the model this run builds, to cut text data to. The data comes before the
    model (it sizes the vocabulary), so this reads a config built from the overrides alone."""
    config_class = model_config_class(recipe.model)
    fields = {f.name for f in dataclasses.fields(config_class)}
    config = config_class(**{k: v for k, v in overrides.items() if k in fields})  # unknown ones: build_model
    return getattr(config, "context_length", None) or DEFAULT_CONTEXT_LENGTH


def load_run_data(recipe: Recipe, opts: RunOptions, seed: int) -> tuple[str, DatasetBundle]:
    """The recipe's dataset, or the one ``opts`` asks for; returns its name and its splits."""
    dataset = opts.dataset or recipe.dataset
    if dataset not in all_datasets():
        raise DataError(f"unknown dataset {dataset!r}; known datasets: {', '.join(all_datasets())}")
    if dataset in SEQUENCE_DATASETS:
        overrides = {**recipe.model_overrides, **opts.model_overrides}
        context = _context_length(recipe, overrides)
        bundle = load_sequence_dataset(
            dataset, seed=seed, limit=opts.limit, root=opts.data_root, context_length=context
        )
        return dataset, bundle
    options = dict(recipe.dataset_options) if dataset == recipe.dataset else {}
    return dataset, load_dataset(dataset, seed=seed, root=opts.data_root, limit=opts.limit, **options)


def _checkpoint_meta(recipe: Recipe, model, dataset: str) -> dict[str, Any]:
    """What every checkpoint carries beside the weights: enough to rebuild the model and the command."""
    return {
        "recipe": recipe.name,
        "model_name": recipe.model,
        "model_config": dataclasses.asdict(model.config),
        "dataset": dataset,
        "command": "python -m training " + shlex.join(sys.argv[1:]),
    }


def _load_trained(checkpoint: Path, recipe: Recipe) -> dict[str, Any]:
    state = load_checkpoint(checkpoint)
    if state.get("model_name") != recipe.model:
        raise ValueError(
            f"checkpoint {checkpoint} holds model {state.get('model_name')!r}, recipe {recipe.name!r} "
            f"builds {recipe.model!r}"
        )
    return state


def _restore(model, state: dict[str, Any], checkpoint: Path) -> TrainResult:
    """Load a trained checkpoint's weights instead of training; its history stands for the training."""
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"checkpoint {checkpoint} does not match its model config: {first}") from None
    model.eval()
    history = state.get("history", [])
    return TrainResult(history=history, grad_norms={}, epochs_run=len(history), seconds=0.0, best_epoch=0)


def _training_record(result: TrainResult, out: Path, title: str) -> Measured:
    """The last epoch's train_/val_ metrics, the curves and gradient norms; history.json beside them."""
    metrics: dict[str, float] = {}
    pictures: dict[str, Path] = {}
    if result.history:
        last = result.history[-1]
        metrics.update({k: v for k, v in last.items() if k.startswith("train_") or k.startswith("val_")})
        pictures["curves.png"] = plots.plot_history(result.history, out / "curves.png", title=title)
    if result.grad_norms.get("steps"):
        pictures["grad_norms.png"] = plots.plot_grad_norms(
            result.grad_norms["norms"],
            out / "grad_norms.png",
            title=f"{title}: per-layer gradient L2 norm",
            steps=result.grad_norms["steps"],
        )
        write_json(out / "grad_norms.json", result.grad_norms)
    write_json(out / "history.json", result.history)
    return metrics, pictures


def _report_fields(
    recipe: Recipe,
    meta: dict[str, Any],
    train_cfg: TrainConfig,
    result: TrainResult,
    metrics: dict[str, float],
    notes: list[str],
) -> dict[str, Any]:
    return {
        "metrics": metrics,
        "command": meta["command"],
        "seed": train_cfg.seed,
        "recipe": recipe.name,
        "model": recipe.model,
        "model_config": meta["model_config"],
        "train_config": dataclasses.asdict(train_cfg),
        "training_seconds": round(result.seconds, 2),
        "epochs_run": result.epochs_run,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "notes": notes,
    }


def _add_metrics(version_dir: Path, metrics: dict[str, float]) -> None:
    """Add figures measured on the exported graphs to report.json (graphs and hashes unchanged)."""
    path = version_dir / REPORT_FILE
    report = Report.model_validate_json(path.read_text())
    report.metrics.update(metrics)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(report.model_dump_json(indent=2, by_alias=True) + "\n")
    tmp.replace(path)


def _config_preview(fields: dict[str, Any]) -> dict[str, Any]:
    """config.json as the exporter will write it, less the graphs (known only once exported)."""
    preview = config_json(ModelConfig(**fields, graphs={}))
    del preview["graphs"]
    return preview


# ---------------------------------------------------------------------------------------- the run


def run_recipe(recipe: Recipe, opts: RunOptions, *, checkpoint: Path | None = None) -> RunSummary:
    """Train (or load ``checkpoint``), evaluate, plot and export one recipe.

    Where the model may go (training.repository_policy) is settled before any training: the version
    folder, then config.json (all but the graphs, which are compared at export). A model that misses a
    quality bar is exported only where no served version meets the bars; else ``path`` is None.
    """
    ctx = init_distributed()
    objective = objective_for(recipe)
    train_cfg = TrainConfig(**{**dataclasses.asdict(recipe.train), **opts.train_overrides})
    model_dir = opts.repository / recipe.name
    version = choose_version(model_dir, opts.version, overwrite=opts.overwrite)

    # Data, then the model it sizes (or the one a checkpoint describes).
    dataset, bundle = load_run_data(recipe, opts, train_cfg.seed)
    state = _load_trained(checkpoint, recipe) if checkpoint is not None else None
    if state is not None:
        model_kwargs = state["model_config"]
    else:
        model_kwargs = _model_kwargs(recipe, bundle, opts.model_overrides)
    seed_everything(train_cfg.seed)
    model = build_model(recipe.model, **model_kwargs)
    out = opts.runs_dir / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    meta = _checkpoint_meta(recipe, model, dataset)
    run = Run(
        bundle=bundle,
        model=model,
        model_kwargs=model_kwargs,
        loss=objective.build_loss(bundle, train_cfg),
        train_cfg=train_cfg,
        out=out,
        repository=opts.repository,
        limit=opts.limit,
        checkpoint_meta=meta,
        resume_from=opts.resume,
    )
    # config.json depends on the data and the model's config, not on its weights: refuse a change to
    # it now rather than after a long training.
    check_config(
        model_dir, _config_preview(objective.config_fields(run)), overwrite=opts.overwrite, ignore=("graphs",)
    )

    # (Pre-)training: a resumed run continues from weights that were already pre-trained.
    if state is not None:
        result = _restore(model, state, checkpoint)
    else:
        if opts.resume is None:
            objective.pretrain(run)
        result = objective.train(run)
    if not ctx.is_main:
        return RunSummary(recipe.name, {}, None, result.seconds, None, [])

    # Held-out metrics and plots, the repository entry (staged), then what only the exported graphs
    # can show (some bars are measured there), then the quality gate, then the swap into place.
    metrics, pictures = objective.evaluate(run)
    recorded, curves = _training_record(result, out, recipe.name)
    metrics.update(recorded)
    pictures.update(curves)
    notes = [f"dataset: {dataset}: {bundle.description}"]
    if result.stopped_early:
        notes.append("early stopping ended training")
    notes += objective.notes(run)
    staged = stage_export(
        model.graphs(),
        repository=opts.repository,
        version=version,
        overwrite=opts.overwrite,
        config_fields=objective.config_fields(run),
        report_fields=_report_fields(recipe, meta, train_cfg, result, metrics, notes),
        plots=pictures,
    )
    try:
        checked = objective.check_export(run, staged.path)
        if checked:
            _add_metrics(staged.path, checked)
            metrics.update(checked)
        missed = [str(r) for r in check_bars(recipe.quality, metrics) if not r.ok]
        # A model that misses a bar never takes the place of a served one that meets them all.
        served = served_model(model_dir, recipe.quality) if missed else None
        kept = served.version if served is not None and served.passes else None
        path = staged.commit().path if kept is None else None
    finally:
        staged.discard()
    return RunSummary(
        recipe=recipe.name,
        metrics=metrics,
        parity=staged.parity,
        seconds=result.seconds,
        path=path,
        failed_bars=missed,
        kept_version=kept,
    )


def summary_table(summaries: list[RunSummary], total_seconds: float | None = None) -> str:
    """A markdown table of what a build measured (pasted into the README's model zoo)."""
    lines = [
        "| model | key metrics (test split) | parity max abs diff | train s | bars |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        prefixes = (
            "test_",
            "judge_",
            "chance_",
            "noisy_",
            "val_nats",
            "unigram_",
            "padding_",
            "kv_cache",
            "pretrain",
            "parameters",
            "multiply_adds",
        )
        keys = [k for k in s.metrics if k.startswith(prefixes)]
        shown = ", ".join(f"{k}={s.metrics[k]:.4g}" for k in keys if not k.endswith("_loss"))
        parity = f"{s.parity:.1e}" if s.parity is not None else "-"
        bars = "FAIL: " + "; ".join(s.failed_bars) if s.failed_bars else "ok"
        if s.kept_version is not None:
            bars += f"; not exported (version {s.kept_version} meets the bars)"
        lines.append(f"| {s.recipe} | {shown} | {parity} | {s.seconds:.0f} | {bars} |")
    if total_seconds is not None:
        lines.append(f"\nwhole build: {total_seconds:.0f} s")
    return "\n".join(lines)
