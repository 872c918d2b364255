"""Local vs full attention (run by hand): cost per token against context length, the O(n^2) vs O(n*w) curve.

    taskset -c 1 .venv/bin/python bench/local_attention_bench.py [--quick]

Two GPTs of the zoo's size (dim 128, 4 heads, 4 layers, 108 ids) whose position tables reach 4,096, one
with full attention and one with gpt-corpus-local's window (32 positions + 4 global), random weights
(the cost of a graph does not depend on its values), exported to ONNX by the training package and run on
onnxruntime with one intra-op thread, as the server runs them:

1. the full-sequence graph over n tokens (what a prompt's prefill and BERT's forward cost): CPU time per
   token;
2. one decode step at context n through the KV-cache step graph: the full model reads an n-slot cache,
   the local model its ring of 36 slots; CPU time per generated token, and the cache's bytes per
   sequence.

CPU time of the calling thread (one thread per session), so other processes on a shared core inflate
nothing measured; each figure is the median of the rounds, the two models alternating within a round.
The trained models' losses come from their report.json (models/gpt-corpus, models/gpt-corpus-local,
and the BERT pair's accuracy). Writes bench/results/local_attention.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.export import export_graph
from training.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONTEXTS = (128, 256, 512, 1024, 2048, 4096)
ZOO = {"vocab_size": 108, "dim": 128, "heads": 4, "layers": 4, "dropout": 0.0}
LOCAL = {"attention_window": 32, "global_tokens": 4}
PAIRS = {"gpt": ("gpt-corpus", "gpt-corpus-local"), "bert": ("bert-scramble", "bert-scramble-local")}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(kind: str, block_size: int, work: Path) -> dict[str, ort.InferenceSession]:
    torch.manual_seed(0)
    model = build_model("gpt", **ZOO, block_size=block_size, **(LOCAL if kind == "local" else {})).eval()
    sessions = {}
    for graph in model.graphs():
        path = work / f"{kind}-{graph.role}.onnx"
        export_graph(graph, path, {"role": graph.role})
        sessions[graph.role] = _session(path)
    return sessions


def _cpu_seconds(run, repeats: int) -> float:
    run()  # warm: the first run of a shape pays onnxruntime's allocations
    start = time.thread_time()
    for _ in range(repeats):
        run()
    return (time.thread_time() - start) / repeats


def _step_feeds(n: int, local: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One new token after n - 1 cached positions: the full cache holds n - 1 slots, the ring 36."""
    slots = LOCAL["attention_window"] + LOCAL["global_tokens"] if local else n - 1
    heads, head_dim = ZOO["heads"], ZOO["dim"] // ZOO["heads"]
    feeds = {"tokens": np.ones((1, 1), np.int64), "past_lengths": np.array([n - 1], np.int64)}
    for layer in range(ZOO["layers"]):
        feeds[f"past_key_{layer}"] = rng.standard_normal((1, heads, head_dim, slots), dtype=np.float32)
        feeds[f"past_value_{layer}"] = rng.standard_normal((1, heads, slots, head_dim), dtype=np.float32)
    return feeds


def measure(contexts: tuple[int, ...], rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        models = {kind: _export(kind, max(contexts), Path(work)) for kind in ("full", "local")}
        rows = []
        for n in contexts:
            tokens = rng.integers(0, ZOO["vocab_size"], (1, n), dtype=np.int64)
            samples: dict[str, list[float]] = {}
            for _ in range(rounds):
                for kind, sessions in models.items():
                    prefill = {"tokens": tokens}
                    forward = _cpu_seconds(lambda s=sessions, f=prefill: s["model"].run(None, f), 2)
                    feeds = _step_feeds(n, kind == "local", rng)
                    step = _cpu_seconds(lambda s=sessions, f=feeds: s["decoder_step"].run(None, f), 200)
                    samples.setdefault(f"{kind}_forward_us_per_token", []).append(forward / n * 1e6)
                    samples.setdefault(f"{kind}_step_us", []).append(step * 1e6)
            row = {"context": n, **{key: statistics.median(values) for key, values in samples.items()}}
            slots = {"full": n, "local": LOCAL["attention_window"] + LOCAL["global_tokens"]}
            for kind, count in slots.items():  # keys and values, every layer, float32
                row[f"{kind}_cache_kib"] = 2 * ZOO["layers"] * count * ZOO["dim"] * 4 / 1024
            rows.append(row)
            print(
                f"n={n}: " + ", ".join(f"{k}={v:.1f}" for k, v in row.items() if k != "context"), flush=True
            )
        return rows


def trained_quality() -> dict[str, dict[str, float]]:
    """The trained pairs' held-out figures (report.json), when they are built."""
    out = {}
    for family, names in PAIRS.items():
        for name in names:
            report = ROOT / "models" / name / "1" / "report.json"
            if report.is_file():
                metrics = json.loads(report.read_text())["metrics"]
                key = "val_nats_per_token" if family == "gpt" else "test_accuracy"
                out[name] = {key: metrics[key]}
    return out


def plot(rows: list[dict], quality: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["context"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    loss = {name: q.get("val_nats_per_token") for name, q in quality.items()}
    labels = {
        "full": "full attention"
        + (f" (gpt-corpus {loss['gpt-corpus']:.3f} nats/char)" if loss.get("gpt-corpus") else ""),
        "local": "local, w=32 + 4 global"
        + (
            f" (gpt-corpus-local {loss['gpt-corpus-local']:.3f} nats/char)"
            if loss.get("gpt-corpus-local")
            else ""
        ),
    }
    for ax, key, title in (
        (axes[0], "forward_us_per_token", "full-sequence graph (prefill): CPU us per token"),
        (axes[1], "step_us", "decode step at context n: CPU us per new token"),
    ):
        for kind, marker in (("full", "o"), ("local", "s")):
            ax.plot(n, [r[f"{kind}_{key}"] for r in rows], marker=marker, label=labels[kind])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length n (tokens)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("GPT (dim 128, 4 layers) on onnxruntime, one core: O(n^2) vs O(n*w) attention", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict], quality: dict) -> str:
    lines = [
        "| context n | prefill us/token full | local | ratio | decode step us full | local | ratio "
        "| cache KiB/seq full | local |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['context']} | {r['full_forward_us_per_token']:.1f} "
            f"| {r['local_forward_us_per_token']:.1f} | "
            f"{r['full_forward_us_per_token'] / r['local_forward_us_per_token']:.2f}x "
            f"| {r['full_step_us']:.0f} | "
            f"{r['local_step_us']:.0f} | {r['full_step_us'] / r['local_step_us']:.2f}x | "
            f"{r['full_cache_kib']:.0f} | {r['local_cache_kib']:.0f} |"
        )
    if quality:
        lines += ["", "| trained model | held-out figure |", "|---|---|"]
        lines += [
            f"| `{name}` | {', '.join(f'{k} {v:.4f}' for k, v in q.items())} |" for name, q in quality.items()
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="contexts up to 1,024, one round")
    args = parser.parse_args()
    contexts = CONTEXTS[:4] if args.quick else CONTEXTS
    rows = measure(contexts, rounds=1 if args.quick else 5)
    quality = trained_quality()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local_attention.json").write_text(
        json.dumps({"rows": rows, "quality": quality}, indent=2) + "\n"
    )
    markdown = table(rows, quality)
    (RESULTS / "local_attention.md").write_text(markdown)
    plot(rows, quality, RESULTS / "local_attention.png")
    print(markdown)


if __name__ == "__main__":
    main()
