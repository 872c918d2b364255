"""Compute-bound graphs against the hardware ceiling, this tree against another checkout (run by hand).

    .venv/bin/python bench/ceiling_bench.py --base /work/wt-compute-base [--seconds 8] [--rounds 2]

The question (issue 17): how close does the server come to raw onnxruntime on the cores it has, for
graphs whose cost is the graph itself? Two ways users run it, each with the default settings (the
models' own instances and threads) and ``python -m app``:

- pinned: the server on core 1 (``taskset -c 1``), wrk on core 0; the ceiling is raw onnxruntime at
  batch 32 on core 1 (bench/ort_ceiling.py, one session, one thread);
- unpinned: server and wrk share both cores; the ceiling is two single-threaded sessions running at
  once in one process, unpinned.

Models: a ResNet of ~0.7 M parameters (``resnet-bench``: training's ResNet builder, CIFAR ResNet-14 at
widths 32/64/128, untrained, exported at bench time into a temporary repository: not a zoo model, so
that a compute-bound CNN is measured, the zoo's ResNet being light), the zoo's ViT, and LeNet-5 and the
MLP (light graphs, where batching pays and nothing may regress). Bodies: one sample each, V2 with the
binary tensor extension and /predict JSON (bench/serve_bench.py's bodies). Concurrency 32 and 64.

The two candidates (``--base``: e.g. ``git worktree add --detach /work/wt-compute-base main``) serve
the same graphs, each with its own config.json for them (resnet-bench takes the batching and instance
fields of that checkout's resnet-shapes), side by side; every cell runs both, in alternating order per
round, and the ceilings are measured before and after each model's cells (figures drift 30-50% between
runs on these machines). Per cell and candidate, where the cores' time went: the server's event-loop
thread and its other threads (onnxruntime's runs and batch assembly), wrk, every other process
(from /proc/stat), idle; and onnxruntime's own run time (the server's statistics). Writes
bench/results/ceiling_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from ort_ceiling import parallel_samples_per_second
from ports import start_server
from serve_bench import Body, graph_file, measure_ceiling, progress, run_wrk, write_bodies

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCH_RESNET = "resnet-bench"
# (model, whether it is compute-bound: the figures apply to those; the others must not regress)
MODELS = {BENCH_RESNET: True, "vit-shapes": True, "lenet5-digits": False, "mlp-digits": False}
MODES = ("pinned", "unpinned")
BODIES = ("v2", "json")
CONCURRENCY = (32, 64)
SERVER_CORE, CLIENT_CORE = "1", "0"
CEILING_S = 3.0
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------- the models


def build_resnet(out: Path) -> Path:
    """A ~0.7 M-parameter CIFAR ResNet-14 (widths 32/64/128), untrained, exported as a repository entry
    (training's builder and exporter: ONNX checker, parity, sha256). ~5 s."""
    import torch

    from training.export import export_to_repository
    from training.models.resnet import ResNet, ResNetConfig

    torch.manual_seed(0)
    model = ResNet(ResNetConfig(stage_widths=(32, 64, 128), blocks_per_stage=(2, 2, 2))).eval()
    params = sum(p.numel() for p in model.parameters())
    zoo = json.loads((ROOT / "models" / "resnet-shapes" / "config.json").read_text())
    fields = {k: zoo[k] for k in ("family", "task", "preprocessing", "labels")}
    fields.update(
        name=BENCH_RESNET,
        description=f"bench only: CIFAR ResNet-14 at widths 32/64/128, {params:,} parameters",
    )
    export_to_repository(
        model.graphs(),
        repository=out,
        config_fields=fields,
        report_fields={"metrics": {"parameters": params}, "command": "bench/ceiling_bench.py", "seed": 0},
    )
    return out / BENCH_RESNET


def candidate_repository(checkout: Path, resnet: Path, out: Path) -> Path:
    """The benchmarked models as ``checkout`` ships them: its zoo entries (linked), and resnet-bench with
    the batching and instance fields of its resnet-shapes config.json."""
    out.mkdir(parents=True)
    for model in MODELS:
        if model != BENCH_RESNET:
            (out / model).symlink_to(checkout / "models" / model)
    shutil.copytree(resnet, out / BENCH_RESNET)
    config_path = out / BENCH_RESNET / "config.json"
    config = json.loads(config_path.read_text())
    zoo = json.loads((checkout / "models" / "resnet-shapes" / "config.json").read_text())
    for key in ("batching", "instances"):
        config.pop(key, None)
        if key in zoo:
            config[key] = zoo[key]
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------- accounting


def thread_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the process's main thread (the event loop) and of all its other threads."""
    main = others = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that just ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        if int(task) == pid:
            main += seconds
        else:
            others += seconds
    return main, others


def busy_s(cpu: str = "") -> float:
    """CPU seconds spent on anything but idle so far: all cores, or core ``cpu`` (/proc/stat)."""
    line = next(x for x in Path("/proc/stat").read_text().splitlines() if x.startswith(f"cpu{cpu} "))
    values = [int(v) for v in line.split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICKS  # without idle and iowait


def ort_run_s(url: str, model: str) -> float:
    """Seconds onnxruntime spent in runs of this model so far (the statistics extension's per batch size
    figures, summed over instances)."""
    stats = httpx.get(f"{url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
    return sum(b["compute_infer"]["ns"] for b in stats["batch_stats"]) / 1e9


@dataclass
class Measured:
    req_s: float
    p99_ms: float
    loop: float  # cores: CPU seconds per second of wall time
    workers: float
    client: float
    others: float
    idle: float
    ort: float  # instance-seconds of onnxruntime runs per second
    rows_per_batch: float


def measure(server: tuple[subprocess.Popen, str], model: str, body: Body, c: int, seconds: int, mode: str):
    proc, url = server
    core = CLIENT_CORE if mode == "pinned" else None
    batches0 = batch_count(url, model)
    loop0, workers0 = thread_cpu_s(proc.pid)
    # Pinned: the server's core is the one accounted for (wrk has the other); unpinned: both cores.
    cpu, cores = (SERVER_CORE, 1) if mode == "pinned" else ("", os.cpu_count() or 2)
    busy0, ort0 = busy_s(cpu), ort_run_s(url, model)
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = run_wrk(url + body.path, body, c, seconds, core=core)
    wall = time.perf_counter() - started
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    loop1, workers1 = thread_cpu_s(proc.pid)
    busy1, ort1 = busy_s(cpu), ort_run_s(url, model)
    batches1 = batch_count(url, model)
    if result.errors:
        raise RuntimeError(f"{model} {body.kind} c={c}: {result.errors} errors ({result})")
    client = (client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime) / wall
    loop, workers = (loop1 - loop0) / wall, (workers1 - workers0) / wall
    busy = (busy1 - busy0) / wall
    on_server_cores = loop + workers + (client if mode == "unpinned" else 0.0)
    return Measured(
        req_s=result.requests_per_s,
        p99_ms=result.latency_ms.get("99", float("nan")),
        loop=loop,
        workers=workers,
        client=client,
        others=max(0.0, busy - on_server_cores),
        idle=max(0.0, cores - busy),
        ort=(ort1 - ort0) / wall,
        rows_per_batch=(batches1[1] - batches0[1]) / max(1, batches1[0] - batches0[0]),
    )


def batch_count(url: str, model: str) -> tuple[int, int]:
    stats = httpx.get(f"{url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
    return stats["execution_count"], stats["inference_count"]


# ------------------------------------------------------------------------------------- the run


def ceilings(model_file: Path, mode: str) -> float:
    """Raw onnxruntime samples/s at batch 32 on the cores the server has in ``mode``."""
    if mode == "pinned":
        return measure_ceiling(model_file, int(CEILING_S), cores=SERVER_CORE)[32]
    return parallel_samples_per_second(str(model_file), batch=32, sessions=2, seconds=CEILING_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="another checkout to compare with (e.g. main's worktree)")
    parser.add_argument("--seconds", type=int, default=8, help="per cell and candidate")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--bodies", nargs="+", default=list(BODIES), choices=BODIES)
    parser.add_argument("--connections", nargs="+", type=int, default=list(CONCURRENCY))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:VAR=VALUE,VAR=VALUE: also this tree with these settings (compares settings in one run)",
    )
    parser.add_argument("--out", default="ceiling_bench", help="results file stem under bench/results")
    args = parser.parse_args()
    # name -> (checkout, extra environment)
    candidates: dict[str, tuple[Path, dict[str, str]]] = {"this": (ROOT, {})}
    if args.base:
        candidates["base"] = (args.base.resolve(), {})
    for variant in args.variant:
        name, _, settings = variant.partition(":")
        candidates[name] = (ROOT, dict(item.split("=", 1) for item in settings.split(",") if item))
    work = Path(tempfile.mkdtemp(prefix="ceiling-bench-"))
    servers: dict[tuple[str, str], tuple[subprocess.Popen, str]] = {}
    rows = []
    try:
        resnet = build_resnet(work / "built")
        repos = {
            name: candidate_repository(path, resnet, work / f"repo-{name}")
            for name, (path, _) in candidates.items()
        }
        for mode in args.modes:
            for name, (path, extra) in candidates.items():
                env = {"SERVE_MODEL_REPOSITORY": str(repos[name]), **extra}
                servers[name, mode] = start_server(
                    env,
                    pinned=mode == "pinned",
                    cwd=path,
                    as_users_run=True,
                    defaults=True,
                    log_path=work / f"{name}-{mode}.log",
                )
        bodies = {m: write_bodies(m, repos["this"] / m, work, seed=0) for m in args.models}
        for mode in args.modes:
            for model in args.models:
                model_file = graph_file(repos["this"] / model)
                tops = [ceilings(model_file, mode)]
                cells = [(kind, c) for kind in args.bodies for c in args.connections]
                for kind, c in cells:
                    got: dict[str, list[Measured]] = {name: [] for name in candidates}
                    for r in range(args.rounds):
                        names = list(candidates)
                        order = names[r % len(names) :] + names[: r % len(names)]  # each leads a round
                        for name in order:
                            server = servers[name, mode]
                            if r == 0:  # opens the connections, fills the queues; discarded
                                run_wrk(
                                    server[1] + bodies[model][kind].path,
                                    bodies[model][kind],
                                    c,
                                    2,
                                    core=None if mode == "unpinned" else CLIENT_CORE,
                                )
                            got[name].append(
                                measure(server, model, bodies[model][kind], c, args.seconds, mode)
                            )
                    row = {"mode": mode, "model": model, "compute_bound": MODELS[model], "body": kind, "c": c}
                    for name, runs in got.items():
                        row[name] = {
                            field: statistics.median(getattr(m, field) for m in runs)
                            for field in Measured.__dataclass_fields__
                        }
                        row[name]["rounds"] = [m.req_s for m in runs]
                    rows.append(row)
                    shown = ", ".join(f"{n} {row[n]['req_s']:,.0f} req/s" for n in candidates)
                    progress(f"{mode} {model} {kind} c={c}: {shown}")
                tops.append(ceilings(model_file, mode))
                for row in rows:
                    if row["mode"] == mode and row["model"] == model:
                        row["ceiling"] = statistics.mean(tops)
                        row["ceilings"] = tops
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    report(rows, list(candidates), args)


# The figures for compute-bound graphs: share of the ceiling per body.
TARGETS = {"v2": 0.80, "json": 0.60}


def report(rows: list[dict], names: list[str], args: argparse.Namespace) -> None:
    base = "base" in names
    lines = [
        f"## Compute-bound graphs vs the ceiling ({args.seconds} s x {args.rounds} rounds per cell;"
        f" load average at the end {os.getloadavg()[0]:.2f})",
        "",
        "Ceiling: raw onnxruntime at batch 32 on the server's cores (pinned: core 1; unpinned: two"
        " sessions on both cores), samples/s. Per candidate: req/s (p99 ms) and the share of the ceiling;"
        " target (compute-bound graphs only): >= 80% V2, >= 60% JSON.",
        "",
        "| mode | model | body | c | ceiling | "
        + " | ".join(f"{n}: req/s (p99 ms), share" for n in names)
        + (" | this / base |" if base else " |"),
        "|---|---|---|---|---|" + "---|" * len(names) + ("---|" if base else ""),
    ]
    for row in rows:
        cells = []
        for n in names:
            share = row[n]["req_s"] / row["ceiling"]
            mark = ""
            if row["compute_bound"] and n == "this":
                mark = " (met)" if share >= TARGETS[row["body"]] else " (not met)"
            cells.append(f"{row[n]['req_s']:,.0f} ({row[n]['p99_ms']:.0f}), **{share:.0%}**{mark}")
        ratio = f" {row['this']['req_s'] / row['base']['req_s']:.2f}x |" if base else ""
        lines.append(
            f"| {row['mode']} | {row['model']} | {row['body']} | {row['c']} | {row['ceiling']:,.0f} | "
            + " | ".join(cells)
            + " |"
            + ratio
        )
    lines += [
        "",
        "Where the cores' time went, in cores (CPU seconds per second): the server's event-loop thread,"
        " its other threads (onnxruntime runs, batch assembly), wrk, every other process (pinned: on the"
        " server's core), idle; onnxruntime's run time (instance-seconds per second, from the server's"
        " statistics) and rows per batch:",
        "",
        "| mode | model | body | c | candidate | loop | workers | wrk | others | idle | ort runs | rows/batch"
        " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for n in names:
            m = row[n]
            lines.append(
                f"| {row['mode']} | {row['model']} | {row['body']} | {row['c']} | {n} | {m['loop']:.2f} | "
                f"{m['workers']:.2f} | {m['client']:.2f} | {m['others']:.2f} | {m['idle']:.2f} | "
                f"{m['ort']:.2f} | {m['rows_per_batch']:.1f} |"
            )
    table = "\n".join(lines)
    print(table)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
