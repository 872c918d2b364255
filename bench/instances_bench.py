"""Compute-bound graphs on every core: queued rows split across instances, or not (run by hand).

    .venv/bin/python bench/instances_bench.py [--seconds 8] [--rounds 2]

The question (issue: performance): with two single-threaded instances on two cores, does a batch take
its instance's share of the queue (``split_across_instances``, the default) or everything queued, which
left one instance idle while the other ran one full batch? The server runs unpinned with the default
settings (two instances per graph, one thread each), as users run it, once with
``SERVE_SPLIT_ACROSS_INSTANCES=true`` and once with ``false``, both running, cells alternating;
``wrk`` (one thread) shares the cores, like any client on the same host. The ceiling is raw
onnxruntime at batch 32: one thread, and two threads each running its own session at once.
Writes bench/results/instances_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ort_ceiling import parallel_samples_per_second
from ports import start_server
from serve_bench import run_wrk, write_bodies

ROOT = Path(__file__).resolve().parents[1]
# Two compute-bound graphs, and two light ones that must not lose by the split (batching pays there).
MODELS = ("resnet-shapes", "vit-shapes", "lenet5-digits", "mlp-digits")
CONCURRENCY = (32, 64)


def ceiling(model: str, seconds: float) -> dict[str, float]:
    """Samples/s of raw onnxruntime at batch 32: one session on one thread, and two at once."""
    config = json.loads((ROOT / "models" / model / "config.json").read_text())
    path = str(ROOT / "models" / model / "1" / config["graphs"]["model"]["file"])
    return {
        f"{n}_core": parallel_samples_per_second(path, batch=32, sessions=n, seconds=seconds) for n in (1, 2)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="per cell")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="instances-bench-"))
    servers = {}
    try:
        for split in ("true", "false"):
            servers[split] = start_server(
                {"SERVE_SPLIT_ACROSS_INSTANCES": split, "SERVE_INSTANCES": "2"}, pinned=False
            )
        rows = []
        for model in MODELS:
            bodies = write_bodies(model, ROOT / "models" / model, work, seed=0)
            top = ceiling(model, seconds=3)
            for kind in ("v2", "json"):
                for c in CONCURRENCY:
                    rates: dict[str, list[float]] = {"true": [], "false": []}
                    p99: dict[str, list[float]] = {"true": [], "false": []}
                    for r in range(args.rounds):
                        order = ("true", "false") if r % 2 == 0 else ("false", "true")
                        for split in order:
                            result = run_wrk(
                                servers[split][1] + bodies[kind].path,
                                bodies[kind],
                                c,
                                args.seconds,
                                core=None,
                            )
                            assert result.non_2xx == 0, (model, kind, c, split, result)
                            rates[split].append(result.requests_per_s)
                            p99[split].append(result.latency_ms.get("99", float("nan")))
                    on, off = statistics.median(rates["true"]), statistics.median(rates["false"])
                    rows.append(
                        {
                            "model": model,
                            "body": kind,
                            "c": c,
                            "split_req_s": on,
                            "no_split_req_s": off,
                            "split_p99_ms": statistics.median(p99["true"]),
                            "no_split_p99_ms": statistics.median(p99["false"]),
                            "ratio": on / off,
                            "ceiling_1_core": top["1_core"],
                            "ceiling_2_cores": top["2_core"],
                            "share_of_2_core_ceiling": on / top["2_core"],
                        }
                    )
                    print(rows[-1], flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    lines = [
        "## Queued rows split across instances (server unpinned, 2 instances x 1 thread, wrk on the same"
        " cores)",
        "",
        "| model | body | c | split req/s (p99 ms) | no split req/s (p99 ms) | split / no split | "
        "raw ort batch 32, 1 core / 2 cores | split vs 2-core ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['body']} | {r['c']} | {r['split_req_s']:,.0f} ({r['split_p99_ms']:.1f}) | "
            f"{r['no_split_req_s']:,.0f} ({r['no_split_p99_ms']:.1f}) | **{r['ratio']:.2f}x** | "
            f"{r['ceiling_1_core']:,.0f} / {r['ceiling_2_cores']:,.0f} | {r['share_of_2_core_ceiling']:.0%} |"
        )
    table = "\n".join(lines)
    print(table)
    results = ROOT / "bench" / "results"
    (results / "instances_bench.json").write_text(
        json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n"
    )
    (results / "instances_bench.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
