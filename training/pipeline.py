"""Run a recipe end to end: data -> model -> train -> test metrics -> plots -> repository entry."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from app.core.kv_cache import KVCache
from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    GenerationDefaults,
    ImagePostprocessing,
    ImagePreprocessing,
    ModelConfig,
    Report,
    TextPreprocessing,
)
from app.core.sampling import SamplingParams, select_next_tokens
from training import plots
from training.bert_data import mlm_bundle
from training.data import DatasetBundle, add_noise, load_dataset, normalize
from training.export import export_to_repository
from training.recipes import Recipe
from training.registry import build_model, model_config_class, model_family
from training.sequence_data import SEQUENCE_DATASETS, load_sequence_dataset
from training.trainer import (
    Classification,
    LanguageModeling,
    MaskedLanguageModeling,
    MaskedSequenceClassification,
    Objective,
    Reconstruction,
    SequenceClassification,
    SequenceToSequence,
    TrainConfig,
    TrainResult,
    VariationalELBO,
    evaluate,
    fit,
    fit_gan,
    init_distributed,
    iterate_batches,
    load_checkpoint,
    seed_everything,
    write_json,
)

GAN_JUDGE_SAMPLES = 1000


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
    version: int = 1
    resume: Path | None = None


@dataclass
class RunSummary:
    recipe: str
    metrics: dict[str, float]
    parity: float | None
    seconds: float
    epochs_run: int
    path: Path | None
    failed_bars: list[str]


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


def _objective(recipe: Recipe, bundle: DatasetBundle, cfg: TrainConfig) -> Objective | None:
    if recipe.objective == "classification":
        return Classification(bundle, recipe.normalize_inputs, cfg.label_smoothing)
    if recipe.objective == "reconstruction":
        return Reconstruction(bundle)
    if recipe.objective == "denoising":
        return Reconstruction(bundle, noise_std=recipe.noise_std)
    if recipe.objective == "vae":
        return VariationalELBO(bundle)
    if recipe.objective == "sequence_classification":
        return SequenceClassification(label_smoothing=cfg.label_smoothing)
    if recipe.objective == "masked_sequence_classification":
        return MaskedSequenceClassification(label_smoothing=cfg.label_smoothing)
    if recipe.objective == "language_model":
        return LanguageModeling()
    if recipe.objective == "seq2seq":
        return SequenceToSequence(label_smoothing=cfg.label_smoothing)
    return None  # GAN: its own loop


def _command_line() -> str:
    return "python -m training " + shlex.join(sys.argv[1:])


# ---------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _classifier_outputs(model, objective: Objective, bundle: DatasetBundle) -> tuple[np.ndarray, np.ndarray]:
    preds, truth = [], []
    for x, y in iterate_batches(bundle.test, 256, shuffle=False):
        preds.append(objective.logits(model, x).argmax(-1).numpy())
        truth.append(y.numpy())
    return np.concatenate(truth), np.concatenate(preds)


def _image_grid_rows(*rows: torch.Tensor) -> np.ndarray:
    return torch.cat(rows).clamp(0, 1).numpy()


def _judge_gan(model, recipe: Recipe, repository: Path, seed: int) -> dict[str, float]:
    """Score GAN samples with the zoo's exported digits classifier, run in onnxruntime.

    Mean max-probability says how digit-like the samples are; the number of distinct predicted
    classes exposes mode collapse.
    """
    judge_dir = repository / recipe.judge
    if not (judge_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"GAN judge {recipe.judge!r} not found in {repository}; build it first "
            f"(python -m training train {recipe.judge})"
        )
    config = ModelConfig.model_validate_json((judge_dir / CONFIG_FILE).read_text())
    version = config.version or max(int(p.name) for p in judge_dir.iterdir() if p.name.isdigit())
    graph = config.graphs["model"]
    session = ort.InferenceSession(
        str(judge_dir / str(version) / graph.file), providers=["CPUExecutionProvider"]
    )
    pre = config.preprocessing
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        z = torch.randn(GAN_JUDGE_SAMPLES, model.config.latent_dim, generator=generator)
        images = (model.generator(z) + 1) / 2  # (N, C, H, W) in [0, 1]
    if tuple(images.shape[1:]) != (pre.channels, pre.height, pre.width):
        raise ValueError(f"judge {recipe.judge!r} expects {pre.channels}x{pre.height}x{pre.width} images")
    feed = normalize(images, pre.mean, pre.std).numpy().astype(np.float32)
    logits = session.run(None, {graph.inputs[0].name: feed})[0]
    probs = torch.softmax(torch.from_numpy(logits), -1)
    counts = np.bincount(probs.argmax(-1).numpy(), minlength=probs.shape[1])
    return {
        "judge_mean_max_prob": float(probs.max(-1).values.mean()),
        "judge_classes_present": float((counts > 0).sum()),
        "judge_min_class_share": float(counts.min() / GAN_JUDGE_SAMPLES),
    }


@torch.no_grad()
def _padding_difference(model, objective: Objective, bundle: DatasetBundle, rows: int = 32) -> float:
    """max |logits of a row in a padded batch - logits of the same row run alone|."""
    x = bundle.test.tensors[0][:rows]
    lengths = (x != 0).sum(1)
    batched = objective.logits(model, x)
    worst = 0.0
    for i in range(len(x)):
        alone = objective.logits(model, x[i : i + 1, : lengths[i]])
        worst = max(worst, float((alone - batched[i : i + 1]).abs().max()))
    return worst


def _unigram_cross_entropy(bundle: DatasetBundle) -> float:
    """Nats per token of the best context-free model: train-split token frequencies scored on the
    held-out windows (add-one smoothing for tokens unseen in training)."""
    vocab = bundle.tokenizer.vocab_size
    train = torch.bincount(bundle.train.tensors[0][:, 1:].flatten(), minlength=vocab).double() + 1
    log_p = (train / train.sum()).log()
    held_out = bundle.test.tensors[0][:, 1:].flatten()
    return float(-log_p[held_out].mean())


@torch.no_grad()
def _sample_text(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """A few samples for the report (full-sequence forward, the app's sampling rules)."""
    params = SamplingParams(temperature=0.8, top_k=20)
    rng = np.random.default_rng(seed)
    block = model.config.block_size
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids[-block:]]))[:, -1].numpy()
            ids.append(int(select_next_tokens(logits, params, rng)[0]))
        out.append(tokenizer.decode(ids))
    return out


def _seq2seq_exact_match(version_dir: Path, bundle: DatasetBundle) -> dict[str, float]:
    """Held-out exact match, decoded greedily and with beam 4 over the exported ONNX graphs."""
    from training.dates import exact_match, translate
    from training.models.seq2seq import onnx_callables

    tokenizer = bundle.tokenizer
    src, tgt = bundle.test.tensors
    sources = [tokenizer.decode(row) for row in src.tolist()]
    targets = [tokenizer.decode(row[1:]) for row in tgt.tolist()]
    encode, decode = onnx_callables(version_dir)
    greedy = translate(encode, decode, sources, tokenizer)
    beam = translate(encode, decode, sources, tokenizer, beam_size=4)
    return {
        "test_exact_match_greedy_onnx": exact_match(greedy, targets),
        "test_exact_match_beam4_onnx": exact_match(beam, targets),
    }


@torch.no_grad()
def _kv_cache_difference(
    model, version_dir: Path, bundle: DatasetBundle, steps: int = 64, prefill: int = 16
) -> float:
    """max |logits of the ONNX decoder_step graph fed one token at a time with its own KV cache -
    logits of the PyTorch full-sequence forward|, from an empty cache and after a prefill."""
    config = ModelConfig.model_validate_json((version_dir.parent / CONFIG_FILE).read_text())
    graph = config.graphs["decoder_step"]
    session = ort.InferenceSession(str(version_dir / graph.file), providers=["CPUExecutionProvider"])
    tokens = bundle.test.tensors[0][0, : prefill + steps].numpy()  # (prefill + steps,) held-out text
    full = model(torch.from_numpy(tokens)[None]).numpy()[0]  # (T, V)
    worst = 0.0
    for start in (1, prefill):  # empty cache (prompt of one token), then a prefill of `prefill`
        cache = KVCache(graph)
        logits, *entries = session.run(cache.output_names, cache.empty_feeds(tokens[None, :start]))
        cache.add(entries, [start])
        worst = max(worst, float(np.abs(logits[0] - full[:start]).max()))
        for pos in range(start, start + steps):
            logits, *entries = session.run(cache.output_names, cache.feeds(tokens[None, pos : pos + 1]))
            cache.append(entries)
            worst = max(worst, float(np.abs(logits[0, 0] - full[pos]).max()))
    return worst


def _epoch_logger(label: str):
    def log_epoch(row: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        print(f"[{label}] epoch {int(row['epoch'])}: {shown}", flush=True)

    return log_epoch


def _pretrain(
    recipe: Recipe,
    model,
    bundle: DatasetBundle,
    train_cfg: TrainConfig,
    limit: int | None,
    out: Path,
) -> tuple[dict[str, float], dict[str, Path]]:
    """Masked-LM pre-training of ``model`` in place on the corpus windows (BERT), before fine-tuning.
    The run's seed, progress and step cap apply to it too; returns its figures and its curves."""
    cfg = dataclasses.replace(
        recipe.pretrain, seed=train_cfg.seed, progress=train_cfg.progress, max_steps=train_cfg.max_steps
    )
    tokenizer = bundle.tokenizer
    windows = mlm_bundle(max_len=model.config.max_len, seed=train_cfg.seed, limit=limit, tokenizer=tokenizer)
    objective = MaskedLanguageModeling(
        tokenizer.vocab_size, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id
    )
    result = fit(model, windows, objective, cfg, on_epoch=_epoch_logger(f"{recipe.name} pre-training"))
    last = result.history[-1]
    metrics = {
        "pretrain_mlm_val_nats": last["val_loss"],
        "pretrain_mlm_val_masked_accuracy": last["val_masked_accuracy"],
        "pretrain_seconds": round(result.seconds, 2),
    }
    curves = plots.plot_history(
        result.history, out / "pretrain_curves.png", title=f"{recipe.name}: masked-LM pre-training"
    )
    return metrics, {"pretrain_curves.png": curves}


def _accuracy_without_pretraining(
    recipe: Recipe,
    model_kwargs: dict[str, Any],
    bundle: DatasetBundle,
    objective: Objective,
    cfg: TrainConfig,
) -> float:
    """Test accuracy of the same model fine-tuned from random weights with the same settings."""
    seed_everything(cfg.seed)
    scratch = build_model(recipe.model, **model_kwargs)
    fit(scratch, bundle, objective, dataclasses.replace(cfg, progress=False))
    return evaluate(scratch, objective, bundle.test)["accuracy"]


def _add_metrics(version_dir: Path, metrics: dict[str, float]) -> None:
    """Add figures measured on the exported graphs to report.json (graphs and hashes unchanged)."""
    path = version_dir / REPORT_FILE
    report = Report.model_validate_json(path.read_text())
    report.metrics.update(metrics)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(report.model_dump_json(indent=2, by_alias=True) + "\n")
    tmp.replace(path)


def _evaluate_and_plot(
    recipe: Recipe,
    model,
    objective: Objective | None,
    bundle: DatasetBundle,
    out: Path,
    opts: RunOptions,
    seed: int,
) -> tuple[dict[str, float], dict[str, Path]]:
    """Held-out metrics and the pictures that show what the model learned."""
    metrics: dict[str, float] = {}
    pictures: dict[str, Path] = {}
    generator = torch.Generator().manual_seed(seed)
    if objective is not None:
        metrics.update({f"test_{k}": v for k, v in evaluate(model, objective, bundle.test).items()})
    with torch.no_grad():
        if recipe.objective in (
            "classification",
            "sequence_classification",
            "masked_sequence_classification",
        ):
            truth, preds = _classifier_outputs(model, objective, bundle)
            metrics["chance_accuracy"] = bundle.chance_accuracy
            pictures["confusion_matrix.png"] = plots.plot_confusion_matrix(
                truth, preds, bundle.labels, out / "confusion_matrix.png", title=f"{recipe.name}: test split"
            )
            if recipe.objective != "classification":
                metrics["padding_max_abs_diff"] = _padding_difference(model, objective, bundle)
            return metrics, pictures
        if recipe.objective == "language_model":
            metrics["val_nats_per_token"] = metrics.pop("test_loss")
            metrics["unigram_nats_per_token"] = _unigram_cross_entropy(bundle)
            return metrics, pictures
        if recipe.objective == "seq2seq":
            return metrics, pictures  # exact match is measured on the exported graphs
        x_test = bundle.test.tensors[0][:8]
        if recipe.objective in ("reconstruction", "denoising"):
            rows, titles = [x_test], ["input"]
            if recipe.objective == "denoising":
                noisy = add_noise(x_test, recipe.noise_std, generator)
                rows += [noisy, model(noisy)[0]]
                titles += ["noisy input", "reconstruction"]
                # The same model on clean inputs, and the noisy input's own error as a baseline.
                clean = evaluate(model, Reconstruction(bundle), bundle.test)
                metrics["test_mse_noisy"] = metrics.pop("test_mse")
                metrics["test_mse_clean"] = clean["mse"]
                noisy_all = add_noise(bundle.test.tensors[0], recipe.noise_std, generator)
                metrics["noisy_input_mse"] = float(((noisy_all - bundle.test.tensors[0]) ** 2).mean())
                metrics.pop("test_loss", None)
            else:
                rows.append(model(x_test)[0])
                titles.append("reconstruction")
            pictures["reconstructions.png"] = plots.image_grid(
                _image_grid_rows(*rows),
                out / "reconstructions.png",
                nrow=8,
                title=recipe.name,
                row_titles=titles,
            )
        elif recipe.objective == "vae":
            metrics["test_elbo_nats"] = -(metrics["test_recon_nats"] + metrics["test_kl_nats"])
            mu, _ = model.encoder(x_test)
            z = torch.randn(32, model.config.latent_dim, generator=generator)
            pictures["samples.png"] = plots.image_grid(
                model.decoder(z).numpy(), out / "samples.png", nrow=8, title=f"{recipe.name}: z ~ N(0, I)"
            )
            pictures["reconstructions.png"] = plots.image_grid(
                _image_grid_rows(x_test, model.decoder(mu)),
                out / "reconstructions.png",
                nrow=8,
                title=recipe.name,
                row_titles=["input", "reconstruction (mu)"],
            )
        elif recipe.objective == "gan":
            z = torch.randn(32, model.config.latent_dim, generator=generator)
            samples = ((model.generator(z) + 1) / 2).clamp(0, 1).numpy()
            pictures["samples.png"] = plots.image_grid(
                samples, out / "samples.png", nrow=8, title=recipe.name
            )
            if recipe.judge:
                metrics.update(_judge_gan(model, recipe, opts.repository, seed))
    return metrics, pictures


# ---------------------------------------------------------------------------------------- the run


def _config_fields(
    recipe: Recipe, model, bundle: DatasetBundle, objective: Objective | None
) -> dict[str, Any]:
    shape = bundle.input_shape
    channels, height, width = shape if len(shape) == 3 else (1, 1, int(np.prod(shape)))
    fields: dict[str, Any] = {
        "name": recipe.name,
        "family": model_family(recipe.model),
        "task": recipe.task,
        "description": recipe.description,
    }
    if bundle.tokenizer is not None:
        return _text_config_fields(recipe, model, bundle, fields)
    if recipe.objective != "gan":
        fields["preprocessing"] = ImagePreprocessing(
            height=height, width=width, channels=channels, mean=list(objective.mean), std=list(objective.std)
        ).model_dump()
    if recipe.objective == "classification":
        fields["labels"] = bundle.labels
    else:
        value_range = (-1.0, 1.0) if recipe.objective == "gan" else (0.0, 1.0)
        fields["postprocessing"] = ImagePostprocessing(value_range=value_range).model_dump()
    if recipe.objective in ("vae", "gan"):
        fields["generation"] = GenerationDefaults(latent_dim=model.config.latent_dim).model_dump()
        if recipe.objective == "gan":
            fields["task"] = "generation"
    return fields


def _text_config_fields(
    recipe: Recipe, model, bundle: DatasetBundle, fields: dict[str, Any]
) -> dict[str, Any]:
    config = model.config
    max_length = (
        getattr(config, "block_size", None) or getattr(config, "max_len", None) or bundle.input_shape[0]
    )
    fields["preprocessing"] = TextPreprocessing(
        tokenizer=bundle.tokenizer.to_dict(),
        max_length=max_length,
        add_bos=recipe.objective == "masked_sequence_classification",  # BERT classifies from its bos/[CLS]
        add_eos=recipe.objective == "seq2seq",
    ).model_dump()
    if recipe.task == "classification":
        fields["labels"] = bundle.labels
    elif recipe.objective == "language_model":
        fields["generation"] = GenerationDefaults(max_new_tokens=200, temperature=0.8, top_k=20).model_dump()
    elif recipe.objective == "seq2seq":
        fields["generation"] = GenerationDefaults(
            max_new_tokens=16, temperature=0.0, num_beams=1
        ).model_dump()
    return fields


def run_recipe(recipe: Recipe, opts: RunOptions, *, checkpoint: Path | None = None) -> RunSummary:
    """Train (or load ``checkpoint``), evaluate, plot and export one recipe."""
    ctx = init_distributed()
    train_cfg = TrainConfig(**{**dataclasses.asdict(recipe.train), **opts.train_overrides})
    dataset = opts.dataset or recipe.dataset
    options = dict(recipe.dataset_options) if dataset == recipe.dataset else {}
    if dataset in SEQUENCE_DATASETS:
        overrides = {**recipe.model_overrides, **opts.model_overrides}
        block_size = overrides.get("block_size") or overrides.get("max_len") or 128
        bundle = load_sequence_dataset(
            dataset, seed=train_cfg.seed, limit=opts.limit, root=opts.data_root, block_size=block_size
        )
    else:
        bundle = load_dataset(dataset, seed=train_cfg.seed, root=opts.data_root, limit=opts.limit, **options)
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None:
        if state.get("model_name") != recipe.model:
            raise ValueError(
                f"checkpoint {checkpoint} holds model {state.get('model_name')!r}, recipe {recipe.name!r} "
                f"builds {recipe.model!r}"
            )
        model_kwargs = state["model_config"]
    else:
        model_kwargs = _model_kwargs(recipe, bundle, opts.model_overrides)
    seed_everything(train_cfg.seed)
    model = build_model(recipe.model, **model_kwargs)
    objective = _objective(recipe, bundle, train_cfg)
    out = opts.runs_dir / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "recipe": recipe.name,
        "model_name": recipe.model,
        "model_config": dataclasses.asdict(model.config),
        "dataset": dataset,
        "command": _command_line(),
    }

    pretrained: tuple[dict[str, float], dict[str, Path]] | None = None
    log_epoch = _epoch_logger(recipe.name)

    if state is not None:
        try:
            model.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"checkpoint {checkpoint} does not match its model config: {first}") from None
        model.eval()
        history = state.get("history", [])
        result = TrainResult(
            history=history, grad_norms={}, epochs_run=len(history), seconds=0.0, best_epoch=0
        )
    elif recipe.objective == "gan":
        if opts.resume is not None:
            raise ValueError("--resume is not supported for GAN recipes; train them again")
        result = fit_gan(
            model,
            bundle,
            train_cfg,
            checkpoint_dir=out / "checkpoints",
            checkpoint_meta=meta,
            on_epoch=log_epoch,
        )
    else:
        if recipe.pretrain is not None and opts.resume is None:
            pretrained = _pretrain(recipe, model, bundle, train_cfg, opts.limit, out)
        result = fit(
            model,
            bundle,
            objective,
            train_cfg,
            checkpoint_dir=out / "checkpoints",
            checkpoint_meta=meta,
            resume_from=opts.resume,
            on_epoch=log_epoch,
        )
    if not ctx.is_main:
        return RunSummary(recipe.name, {}, None, result.seconds, result.epochs_run, None, [])

    metrics, pictures = _evaluate_and_plot(recipe, model, objective, bundle, out, opts, train_cfg.seed)
    if pretrained is not None:
        metrics.update(pretrained[0])
        pictures.update(pretrained[1])
        scratch = _accuracy_without_pretraining(recipe, model_kwargs, bundle, objective, train_cfg)
        metrics["test_accuracy_without_pretraining"] = scratch
        metrics["pretraining_gain"] = metrics["test_accuracy"] - scratch
    if result.history:
        last = result.history[-1]
        metrics.update({k: v for k, v in last.items() if k.startswith("train_") or k.startswith("val_")})
        pictures["curves.png"] = plots.plot_history(result.history, out / "curves.png", title=recipe.name)
    if result.grad_norms.get("steps"):
        pictures["grad_norms.png"] = plots.plot_grad_norms(
            result.grad_norms["norms"],
            out / "grad_norms.png",
            title=f"{recipe.name}: per-layer gradient L2 norm",
            steps=result.grad_norms["steps"],
        )
        write_json(out / "grad_norms.json", result.grad_norms)
    write_json(out / "history.json", result.history)
    notes = [f"dataset: {dataset}: {bundle.description}"]
    if result.stopped_early:
        notes.append("early stopping ended training")
    if recipe.objective == "language_model":
        samples = _sample_text(model, bundle.tokenizer, ["The ", "If the ", "A list "], 120, train_cfg.seed)
        notes += [f"sample (temperature 0.8, top-k 20): {text!r}" for text in samples]

    export = export_to_repository(
        model.graphs(),
        repository=opts.repository,
        version=opts.version,
        config_fields=_config_fields(recipe, model, bundle, objective),
        report_fields={
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
        },
        plots=pictures,
    )
    extra: dict[str, float] = {}
    if recipe.objective == "seq2seq":
        extra = _seq2seq_exact_match(export.path, bundle)
    if recipe.objective == "language_model":
        extra = {"kv_cache_max_abs_diff": _kv_cache_difference(model, export.path, bundle)}
    if extra:
        _add_metrics(export.path, extra)
        metrics.update(extra)
    failed = [
        str(bar) for bar in recipe.quality if bar.metric in metrics and not bar.passes(metrics[bar.metric])
    ]
    return RunSummary(
        recipe=recipe.name,
        metrics=metrics,
        parity=export.report.parity.max_abs_diff,
        seconds=result.seconds,
        epochs_run=result.epochs_run,
        path=export.path,
        failed_bars=failed,
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
        )
        keys = [k for k in s.metrics if k.startswith(prefixes)]
        shown = ", ".join(f"{k}={s.metrics[k]:.4g}" for k in keys if not k.endswith("_loss"))
        parity = f"{s.parity:.1e}" if s.parity is not None else "-"
        bars = "FAIL: " + "; ".join(s.failed_bars) if s.failed_bars else "ok"
        lines.append(f"| {s.recipe} | {shown} | {parity} | {s.seconds:.0f} | {bars} |")
    if total_seconds is not None:
        lines.append(f"\nwhole build: {total_seconds:.0f} s")
    return "\n".join(lines)
