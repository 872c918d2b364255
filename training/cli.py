"""``python -m training``: list, train, export, build the default zoo, verify it, diagnose gradients."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    ModelConfig,
    Report,
    default_version,
    version_folders,
)

if TYPE_CHECKING:
    from training.pipeline import RunSummary

EXIT_USAGE = 2


def _parse_value(text: str) -> Any:
    """``--set`` values are JSON when they parse as JSON (numbers, lists, booleans), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        value = _parse_value(value)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


# flag -> (type, help). Defaults come from the recipe, so argparse's default stays None.
_TRAIN_FLAGS: dict[str, tuple[type, str]] = {
    "epochs": (int, "passes over the training split"),
    "batch_size": (int, "examples per optimiser step (>= 2)"),
    "lr": (float, "peak learning rate"),
    "optimizer": (str, "sgd (with momentum), adam or adamw"),
    "schedule": (str, "after warm-up: cosine, step or constant"),
    "warmup_epochs": (float, "linear learning-rate warm-up, in epochs"),
    "weight_decay": (float, "L2 penalty on weights (decoupled for adamw; never on biases or norms)"),
    "grad_clip": (float, "max global gradient L2 norm; 0 turns clipping off"),
    "label_smoothing": (float, "classification: spread this much target mass over all classes"),
    "early_stopping_patience": (
        int,
        "stop after this many epochs without a better validation metric; 0 = off",
    ),
    "augment": (str, "none, shift (digits) or shift-flip (colour images)"),
    "max_steps": (int, "stop after this many optimiser steps (smoke runs); 0 = no cap"),
    "ema_decay": (float, "validate and export a moving average of the weights (e.g. 0.995); 0 = off"),
    "seed": (int, "seeds weights, data order, splits and noise"),
}


def _add_run_flags(p: argparse.ArgumentParser, *, experiment: bool = True) -> None:
    g = p.add_argument_group("training (default: the recipe's own values)")
    for flag, (kind, text) in _TRAIN_FLAGS.items():
        g.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None, help=text)
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", help="train on another dataset (names: python -m training list)")
    d.add_argument(
        "--data-root", help="folder of user data (mnist IDX files, cifar-10 batches, an image folder)"
    )
    d.add_argument("--limit", type=int, help="cap the number of training examples (smoke runs)")
    o = p.add_argument_group("output (existing versions and config.json are kept unless --overwrite)")
    o.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        help="model repository (default: models, which the server serves); experiments: --out runs/models",
    )
    o.add_argument(
        "--runs", type=Path, default=Path("runs"), help="checkpoints, curves, logs (default: runs)"
    )
    o.add_argument(
        "--version",
        type=int,
        default=None,
        help="version folder to write (default: the next one, highest + 1); an existing one needs "
        "--overwrite",
    )
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="allow replacing that version folder and a config.json that differs; a model that misses "
        "its quality bar still never replaces a served one that meets it",
    )
    if experiment:
        o.add_argument(
            "--experiment",
            action="store_true",
            help="a run that may miss its quality bar: exit 0 (default: exit 1); it still never "
            "replaces a served model that meets its bar",
        )


def _run_options(args: argparse.Namespace):
    from training.pipeline import RunOptions

    overrides = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    if args.limit is not None and args.limit < 2:
        raise ValueError("--limit must be >= 2")
    return RunOptions(
        train_overrides=overrides,
        model_overrides=_key_values(getattr(args, "set", None) or []),
        dataset=args.dataset,
        data_root=args.data_root,
        limit=args.limit,
        repository=args.out,
        runs_dir=args.runs,
        version=args.version,
        overwrite=args.overwrite,
        resume=getattr(args, "resume", None),
    )


def cmd_list(args: argparse.Namespace) -> int:
    from training.recipes import list_recipes
    from training.registry import list_models, model_family
    from training.sequence_data import all_datasets

    print("recipes (python -m training train NAME):")
    for r in list_recipes():
        bars = "; ".join(str(b) for b in r.quality) or "-"
        print(f"  {r.name:20s} model={r.model:22s} data={r.dataset:9s} {r.objective:14s} bar: {bars}")
    print("\nmodels (python -m training train RECIPE --set field=value overrides their config):")
    for name in list_models():
        print(f"  {name:22s} family={model_family(name)}")
    print("\ndatasets (--dataset NAME):")
    for name, summary in all_datasets().items():
        print(f"  {name:16s} {summary}")
    return 0


def _outcome(summary: RunSummary, args: argparse.Namespace, checkpoint: Path) -> int:
    """Where the model went, and one line on a missed quality bar: exit 1 for it unless --experiment."""
    if summary.path is not None:
        print(f"exported to {summary.path} (served by a server started from now on: {_served(summary.path)})")
    if not summary.failed_bars:
        return 0
    missed = "; ".join(summary.failed_bars)
    if summary.path is None:
        where = (
            f"not exported: {args.out / summary.recipe / str(summary.kept_version)} meets its bars and "
            f"stays served; this run stays in {args.runs / summary.recipe} (checkpoint, curves); to "
            f"export it elsewhere: python -m training export {checkpoint} --out {args.runs / 'models'}"
        )
    else:
        where = f"exported all the same: no served version of {summary.recipe} meets its bars"
    kind = "note (--experiment)" if args.experiment else "error"
    print(f"{kind}: {summary.recipe} misses its quality bar: {missed}; {where}", file=sys.stderr)
    return 0 if args.experiment else 1


def _served(version_dir: Path) -> str:
    """Which version the server picks after this export (a pin in config.json may keep an older one)."""
    pinned = json.loads((version_dir.parent / CONFIG_FILE).read_text()).get("version")
    version = default_version(version_dir.parent, pinned)
    return f"version {version}" + (" (pinned in config.json)" if pinned == version else "")


def cmd_train(args: argparse.Namespace) -> int:
    from training.pipeline import run_recipe, summary_table
    from training.recipes import get_recipe

    summary = run_recipe(get_recipe(args.recipe), _run_options(args))
    if summary.parity is None:  # another rank of a distributed run: the main one reports
        return 0
    print(summary_table([summary]))
    return _outcome(summary, args, args.runs / summary.recipe / "checkpoints" / "last.pt")


def cmd_export(args: argparse.Namespace) -> int:
    from training.pipeline import run_recipe
    from training.recipes import get_recipe
    from training.trainer import load_checkpoint

    state = load_checkpoint(args.checkpoint)
    recipe_name = state.get("recipe") if isinstance(state, dict) else None
    if not recipe_name:
        raise ValueError(f"{args.checkpoint} carries no recipe name; was it written by this package?")
    opts = _run_options(args)
    opts.dataset = opts.dataset or state.get("dataset")
    summary = run_recipe(get_recipe(recipe_name), opts, checkpoint=args.checkpoint)
    if summary.parity is None:  # another rank of a distributed run: the main one reports
        return 0
    print(f"{recipe_name}: ONNX parity {summary.parity:.1e}")
    return _outcome(summary, args, args.checkpoint)


def cmd_build(args: argparse.Namespace) -> int:
    from training.pipeline import run_recipe, summary_table
    from training.recipes import get_recipe, list_recipes
    from training.repository_policy import choose_version

    recipes = [get_recipe(n) for n in args.only.split(",")] if args.only else list_recipes()
    opts = _run_options(args)
    skipped = {
        r.name for r in recipes if args.skip_existing and (opts.repository / r.name / CONFIG_FILE).is_file()
    }
    # Every model's version folder is settled before the first one trains (run_recipe settles each
    # again): a build that cannot write one of them fails now, not an hour in.
    for recipe in recipes:
        if recipe.name not in skipped:
            choose_version(opts.repository / recipe.name, opts.version, overwrite=opts.overwrite)
    summaries = []
    started = time.perf_counter()
    for recipe in recipes:
        if recipe.name in skipped:
            print(f"[{recipe.name}] already in {opts.repository}, skipped")
            continue
        print(f"[{recipe.name}] training ({recipe.model} on {recipe.dataset})", flush=True)
        summary = run_recipe(recipe, opts)
        summaries.append(summary)
        if summary.kept_version is not None:
            kept = opts.repository / recipe.name / str(summary.kept_version)
            print(
                f"[{recipe.name}] misses its quality bar ({'; '.join(summary.failed_bars)}): not exported, "
                f"{kept} meets its bars and stays served",
                flush=True,
            )
        elif summary.failed_bars:
            print(f"[{recipe.name}] misses its quality bar ({'; '.join(summary.failed_bars)})", flush=True)
    total = time.perf_counter() - started
    if summaries:
        table = summary_table(summaries, total)
        print(table)
        (opts.runs_dir / "build_summary.md").write_text(table + "\n")
    failed = [s.recipe for s in summaries if s.failed_bars]
    if failed and args.strict:
        print(f"error: quality bars not reached by {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every model in the repository: each served version's files match sha256, the trained
    versions' parity and every served version's quality bars hold (a variant's metrics are its own)."""
    from app.core.repository_format import policy_versions, sha256_of, variant_sources
    from training.export import PARITY_TOLERANCE
    from training.recipes import UnknownRecipeError, check_bars, get_recipe

    repo: Path = args.repository
    if not repo.is_dir():
        raise FileNotFoundError(f"model repository {repo} does not exist")
    problems = 0
    print(f"{'model':22s} {'parity':>9s}  quality")
    for model_dir in sorted(p for p in repo.iterdir() if (p / CONFIG_FILE).is_file()):
        config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
        variants = variant_sources(model_dir)
        default = default_version(model_dir, config.version)
        if default is None:
            print(f"{config.name:22s} no version folder")
            problems += 1
            continue
        try:
            bars = get_recipe(config.name).quality
        except UnknownRecipeError:
            bars = ()
        served = policy_versions(version_folders(model_dir), config.version_policy, config.version, variants)
        # The version answering unversioned requests first, under the model's name; the others by number.
        for version in [default, *(v for v in served if v != default)]:
            version_dir = model_dir / str(version)
            report = Report.model_validate_json((version_dir / REPORT_FILE).read_text())
            issues = [
                f"sha256 mismatch: {file}"
                for file, digest in report.sha256.items()
                if not (version_dir / file).is_file() or sha256_of(version_dir / file) != digest
            ]
            if report.parity.max_abs_diff > PARITY_TOLERANCE:
                issues.append(f"parity {report.parity.max_abs_diff:.1e} > {PARITY_TOLERANCE:.0e}")
            results = check_bars(bars, report.metrics)
            issues += [f"{result.bar} not reached" for result in results if not result.ok]
            shown = "; ".join(f"{result} {'ok' if result.ok else 'FAIL'}" for result in results)
            label = config.name if version == default else f"  /{version} {report.variant_kind}"
            print(f"{label:22s} {report.parity.max_abs_diff:9.1e}  {shown or '-'}")
            for issue in issues:
                print(f"{'':22s} ! {issue}")
            problems += len(issues)
    if problems:
        print(f"error: {problems} problem(s) found", file=sys.stderr)
        return 1
    print("all models verified")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate text with an exported language model, through its ONNX KV-cache step graph."""
    import onnxruntime as ort

    from app.core.kv_cache import generate
    from app.core.sampling import SamplingParams
    from training.text import CharTokenizer

    model_dir: Path = args.model
    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no {CONFIG_FILE})")
    config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
    if config.task != "text_generation" or "decoder_step" not in config.graphs:
        raise ValueError(
            f"{config.name} is a {config.task} model, not a language model with a decoder_step graph"
        )
    version = default_version(model_dir, config.version)
    report = Report.model_validate_json((model_dir / str(version) / REPORT_FILE).read_text())
    graph = report.graphs(config)["decoder_step"]  # a variant's step graph may have its own contract
    session = ort.InferenceSession(
        str(model_dir / str(version) / graph.file), providers=["CPUExecutionProvider"]
    )
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    for i in range(args.num_samples):
        result = generate(
            session,
            graph,
            tokenizer.encode(args.prompt),
            max_new_tokens=args.max_new_tokens,
            params=params,
            seed=args.seed + i,
            block_size=config.preprocessing.max_length,
            window=config.attention,
        )
        print(f"--- sample {i + 1} (finish: {result.finish_reason})")
        print(args.prompt + tokenizer.decode(result.token_ids, stop_at_eos=False))
    return 0


def cmd_variant(args: argparse.Namespace) -> int:
    """Make a faster variant of a model's version and publish it as the next version."""
    from training.variants import make_variant, variant_table

    summary = make_variant(
        args.out / args.model,
        args.kind,
        source_version=args.source_version,
        version=args.version,
        overwrite=args.overwrite,
        speed_rounds=args.speed_rounds,
    )
    print(variant_table(args.model, summary.result.path.name, summary.variant))
    print(f"published {summary.result.path} (requests pick it with version {summary.result.path.name})")
    return 0


def cmd_vanishing(args: argparse.Namespace) -> int:
    from training.diagnostics import vanishing_gradients

    result = vanishing_gradients(
        depth=args.depth, width=args.width, steps=args.steps, seed=args.seed, out_dir=args.out
    )
    for name, variant in result["variants"].items():
        extra = f", accuracy after {args.steps} steps {variant['accuracy']:.3f}" if args.steps else ""
        print(f"{name:18s} first/last layer gradient ratio {variant['first_to_last_ratio']:.2e}{extra}")
    print(f"plot: {args.out / 'vanishing_gradients.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the classic deep-learning families and export them to the ONNX model repository.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="recipes, registered models and datasets").set_defaults(fn=cmd_list)

    p = sub.add_parser("train", help="train one recipe and export it into the repository")
    p.add_argument("recipe", help="recipe name (see `list`), e.g. lenet5-digits")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="model config override, repeatable")
    p.add_argument(
        "--resume", type=Path, help="continue from a checkpoint (runs/<recipe>/checkpoints/last.pt)"
    )
    _add_run_flags(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="export a checkpoint (evaluated again on its dataset)")
    p.add_argument("checkpoint", type=Path)
    _add_run_flags(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("build", help="train and export the whole default zoo into models/")
    p.add_argument("--only", help="comma-separated recipe names")
    p.add_argument(
        "--skip-existing", action="store_true", help="leave models already in the repository alone"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a quality bar is not reached")
    _add_run_flags(p, experiment=False)
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("verify", help="check sha256, parity and quality bars of every model in a repository")
    p.add_argument("repository", type=Path, nargs="?", default=Path("models"))
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("sample", help="generate text with an exported language model (ONNX, KV cache)")
    p.add_argument("model", type=Path, nargs="?", default=Path("models/gpt-corpus"), help="model folder")
    p.add_argument("--prompt", default="The ", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=20, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("variant", help="make a faster variant of a version and publish it as the next one")
    p.add_argument("model", help="model name in the repository, e.g. mlp-digits")
    p.add_argument(
        "--kind",
        required=True,
        help="optimized (fp32, graph optimizations applied offline) or int8 (quantized); the kinds are "
        "registered in training/variants.py",
    )
    p.add_argument(
        "--from",
        dest="source_version",
        type=int,
        default=None,
        metavar="VERSION",
        help="the trained version to start from (default: the one answering requests that name none)",
    )
    p.add_argument("--out", type=Path, default=Path("models"), help="model repository (default: models)")
    p.add_argument(
        "--version", type=int, default=None, help="version folder to write (default: the next one)"
    )
    p.add_argument("--overwrite", action="store_true", help="allow replacing that version folder")
    p.add_argument(
        "--speed-rounds",
        type=int,
        default=7,
        help="alternating rounds of 0.2 s per candidate and batch size for the speed figures (median)",
    )
    p.set_defaults(fn=cmd_variant)

    p = sub.add_parser(
        "vanishing-gradients", help="deep MLP: sigmoid vs ReLU vs ReLU + batch norm + residual"
    )
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=64)
    p.add_argument(
        "--steps", type=int, default=200, help="Adam steps to train each variant (0: gradients only)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/diagnostics"))
    p.set_defaults(fn=cmd_vanishing)
    return parser


# What the training extra brings (pyproject.toml); without it every command would end in a traceback.
TRAINING_MODULES = ("torch", "onnx", "onnxscript", "sklearn", "matplotlib")
INSTALL_HINT = "make train-setup  (or: .venv/bin/pip install -e '.[train,serve]'; README: Training CLI)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [name for name in TRAINING_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: the training extra is not installed ({', '.join(missing)} missing): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # Every expected failure is one line and a non-zero exit; a traceback means a bug.
    from training.data import DataError
    from training.export import ExportError
    from training.recipes import UnknownRecipeError
    from training.registry import UnknownModelError
    from training.variants import VariantError

    try:
        return args.fn(args)
    except (
        DataError,
        ExportError,
        UnknownRecipeError,
        UnknownModelError,
        VariantError,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
