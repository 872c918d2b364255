"""fp32 vs optimized vs int8, per model of the zoo that has variants (``python -m training variant``):
samples/s at batch 1 and 32 of every served version, one onnxruntime thread, this process pinned to one
core, all versions of a model measured in the same run (alternating rounds, median per version), on
rows of the recipe's held-out split; quality and max difference from fp32 come from each report.json.
Then the whole zoo's start-up to ready with every variant loaded, alternating with the same zoo
without its variants (serve_bench's server start, as serve_bench measures start-up).

    .venv/bin/python bench/variants_bench.py [--models a,b] [--rounds 15]

Writes bench/results/variants_bench.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnx import helper
from serve_bench import start_server, stop_server, wait_ready  # a sibling: the script's folder is on sys.path

from app.core.ort_options import session_options
from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    ModelConfig,
    Report,
    policy_versions,
    variant_sources,
    version_folders,
)
from training.variants import (
    SPEED_BATCH_SIZES,
    cpu_session,
    evaluate_model_graph,
    load_context,
    rows,
    throughput,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def zoo_with_variants(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / CONFIG_FILE).is_file() and variant_sources(p))


def quality_of(report: Report, names: set[str]) -> dict[str, float]:
    """The held-out metrics the variants re-measured (``names``), as this version reports them."""
    return {k: v for k, v in report.metrics.items() if k in names and not k.endswith("_loss")}


def trained_only(repository: Path, target: Path) -> Path:
    """A copy of ``repository`` without its variants: what start-up loaded before them."""
    for model_dir in repository.iterdir():
        if (model_dir / CONFIG_FILE).is_file():
            made = {str(v) for v in variant_sources(model_dir)}
            shutil.copytree(
                model_dir, target / model_dir.name, ignore=lambda _d, names, m=made: m & set(names)
            )
    return target


def measure_startups(repository: Path, runs: int, logs: Path) -> dict[str, Any]:
    """Spawn to first 200 on /health/ready (default settings, unpinned), the zoo with and without its
    variants in alternation, so load from elsewhere on the machine hits both alike."""
    bare = trained_only(repository, logs / "trained-only")
    seconds: dict[str, list[float]] = {"with_variants": [], "without_variants": []}
    for index in range(runs):
        for key, repo in (("with_variants", repository), ("without_variants", bare)):
            started = time.perf_counter()
            server = start_server(
                f"{key}-{index}", "app.main:app", {"SERVE_MODEL_REPOSITORY": str(repo)}, logs, None
            )
            try:
                seconds[key].append(wait_ready(server) - started)
            finally:
                stop_server(server)
    return {key: {"runs_s": runs_s, "median_s": statistics.median(runs_s)} for key, runs_s in seconds.items()}


def call_floor_session(feeds: dict[str, Any]) -> ort.InferenceSession:
    """A graph that only passes its inputs through (one Identity per input), on the same feeds: what a
    session run costs with no arithmetic, the bound no variant gets below at batch 1."""
    inputs, outputs, nodes = [], [], []
    for name, array in feeds.items():
        dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        shape = ["batch", *array.shape[1:]]
        inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", dtype, shape))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    graph = helper.make_graph(nodes, "call_floor", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    model_bytes = model.SerializeToString()
    return ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])


def bench_model(model_dir: Path, rounds: int, seconds: float) -> list[dict[str, Any]]:
    config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
    served = policy_versions(
        version_folders(model_dir), config.version_policy, config.version, variant_sources(model_dir)
    )
    reports = {v: Report.model_validate_json((model_dir / str(v) / REPORT_FILE).read_text()) for v in served}
    measured = {name for r in reports.values() if r.variant for name in r.variant.quality}
    trained = [v for v, r in reports.items() if r.variant is None]
    source = trained[0]
    with tempfile.TemporaryDirectory() as work:
        ctx = load_context(model_dir, source, Path(work))
        feeds = evaluate_model_graph(ctx, ctx.source_dir).feeds["model"]  # held-out rows, as trained
    spec = config.graphs["model"]
    order = [source, *(v for v in served if v != source)]
    sessions = []
    for version in order:
        variant = reports[version].variant
        offline = variant.optimized_offline if variant is not None else None
        sessions.append(cpu_session(model_dir / str(version) / spec.file, offline))
    sessions.append(call_floor_session(rows(feeds, 1)))  # last: the versions keep their indices
    speed = {
        b: throughput(sessions, rows(feeds, b), rounds=rounds, seconds=seconds) for b in SPEED_BATCH_SIZES
    }
    out = []
    for index, version in enumerate(order):
        report = reports[version]
        out.append(
            {
                "model": model_dir.name,
                "version": version,
                "kind": report.variant_kind,
                "method": report.variant.method if report.variant else "trained export",
                "quality": quality_of(report, measured),
                "max_abs_diff": report.variant.max_abs_diff if report.variant else 0.0,
                "samples_per_s": {str(b): speed[b][index] for b in SPEED_BATCH_SIZES},
                "speedup": {str(b): speed[b][index] / speed[b][0] for b in SPEED_BATCH_SIZES},
                # samples/s of the pass-through graph over this version's: the speed-up a faster
                # variant could reach if its arithmetic cost nothing
                "call_floor_bound": {str(b): speed[b][-1] / speed[b][0] for b in SPEED_BATCH_SIZES},
            }
        )
    return out


def table(rows_: list[dict[str, Any]]) -> str:
    lines = [
        "| model | version | kind | held-out quality | max abs diff vs fp32 | b1 samples/s | b1 vs fp32 "
        "| b32 samples/s | b32 vs fp32 | b1 bound (call floor) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_:
        quality = ", ".join(f"{k}={v:.4f}" for k, v in r["quality"].items())
        lines.append(
            f"| {r['model']} | {r['version']} | {r['kind']} | {quality} | {r['max_abs_diff']:.2g} "
            f"| {r['samples_per_s']['1']:,.0f} | {r['speedup']['1']:.2f}x "
            f"| {r['samples_per_s']['32']:,.0f} | {r['speedup']['32']:.2f}x "
            f"| {r['call_floor_bound']['1']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated model names (default: every one with variants)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per batch size")
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per version and round")
    parser.add_argument("--core", type=int, default=1, help="the core this process is pinned to")
    parser.add_argument("--startup-runs", type=int, default=3, help="whole-zoo start-ups to ready (0: skip)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    repository = ROOT / "models"
    names = args.models.split(",") if args.models else zoo_with_variants(repository)
    results = []
    for name in names:
        print(f"[{name}]", flush=True)
        results.extend(bench_model(repository / name, args.rounds, args.seconds))
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the server starts as a user starts it
    with tempfile.TemporaryDirectory() as logs:
        startup = measure_startups(repository, args.startup_runs, Path(logs)) if args.startup_runs else None
    model_dirs = [p for p in repository.iterdir() if (p / CONFIG_FILE).is_file()]
    versions = sum(len(version_folders(p)) for p in model_dirs)
    text = table(results)
    if startup is not None:
        shown = {k: ", ".join(f"{s:.2f}" for s in v["runs_s"]) for k, v in startup.items()}
        text += (
            f"\n\nStart to ready, whole zoo ({len(model_dirs)} models, default settings, unpinned), in "
            f"alternation: {versions} versions (every variant loaded): median "
            f"{startup['with_variants']['median_s']:.2f} s ({shown['with_variants']}); without the variants: "
            f"median {startup['without_variants']['median_s']:.2f} s ({shown['without_variants']})"
        )
    text += (
        f"\n\nOne onnxruntime thread, pinned to core {args.core}, {args.rounds} alternating rounds of "
        f"{args.seconds} s per version and batch size (median); onnxruntime {ort.__version__}; "
        f"{datetime.now(UTC):%Y-%m-%d}. Quality and max difference: each version's report.json. "
        "b1 bound: samples/s at batch 1 of a graph that only passes the same inputs through (one "
        "Identity per input) over fp32's, the speed-up a variant could reach if its arithmetic cost nothing."
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "variants_bench.md").write_text(text + "\n")
    meta = {"rounds": args.rounds, "seconds": args.seconds, "core": args.core, "onnxruntime": ort.__version__}
    payload = {"meta": meta, "models": results, "startup": startup, "versions": versions}
    (RESULTS / "variants_bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
