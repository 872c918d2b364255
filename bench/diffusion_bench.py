"""Diffusion benchmark (run by hand): served images/s of ``diffusion-digits`` at 20 DDIM steps, for 1
and 8 concurrent requests, beside the raw denoiser's ceiling.

    .venv/bin/python bench/diffusion_bench.py [--quick]

The server is pinned to core 1 (one single-threaded session), the client's threads to core 0. Each
round measures, in turn:

1. the ceiling: the denoiser graph alone in a single-threaded onnxruntime session in this process,
   moved to core 1 for the measurement (the server idles meanwhile), at batch 1 and 8; its rows/s
   divided by the steps is the most images/s any server could give on that core (an image costs
   one row per step, two with guidance);
2. over HTTP, a wave of 1 request and a wave of 8 concurrent requests, one unconditional image each
   at 20 steps: images/s, and from the runner's statistics (``/v2/models/diffusion-digits/stats``)
   how many denoiser rows it put in each batch (the calls of concurrent requests share batches) and
   the session's own compute time, i.e. the images/s had the graph run back to back in the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from ports import start_server  # bench/ports.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MODEL = "diffusion-digits"
MODEL_DIR = ROOT / "models" / MODEL
STEPS = 20


class Denoiser:
    """The denoiser graph alone in the server's own session (app/session.py: one thread, no
    spinning): rows/s at a batch size, measured on core 1, the server's core, while the server idles."""

    def __init__(self) -> None:
        from app.core.repository_format import ModelConfig
        from app.session import Session, SessionOptions

        config = ModelConfig.model_validate_json((MODEL_DIR / "config.json").read_text())
        graph = config.graphs["denoiser"]
        self.session = Session(MODEL_DIR / "1" / graph.file, graph, SessionOptions(device="cpu"))
        self.rng = np.random.default_rng(0)

    def rows_per_s(self, batch: int) -> float:
        feeds = {
            "x": self.rng.standard_normal((batch, 1, 28, 28)).astype(np.float32),
            "t": np.full(batch, 500, np.int64),
            "class": np.full(batch, 10, np.int64),
        }
        calls = max(4, 64 // batch)
        os.sched_setaffinity(0, {1})
        try:
            self.session.run(feeds)  # warm-up
            started = time.perf_counter()
            for _ in range(calls):
                self.session.run(feeds)
            return batch * calls / (time.perf_counter() - started)
        finally:
            os.sched_setaffinity(0, {0})


def measure(url: str, rounds: int) -> dict:
    """Round after round, alternating: the raw denoiser at batch 1 and 8, then a wave of 1 request and
    a wave of 8 (this VM's speed drifts by tens of percent within seconds, so each ratio is the
    median of the rounds' own ratios)."""
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=16))
    # guidance_scale 0: the unconditional prediction, one denoiser row per step (a request without it
    # gets the model's default guidance, two rows per step).
    body = {"model": MODEL, "num_samples": 1, "steps": STEPS, "guidance_scale": 0}
    denoiser = Denoiser()

    def stats() -> tuple[int, int, int]:
        """Rows and batches the runner executed, and the session's own time for them (ns)."""
        model = client.get(f"{url}/v2/models/{MODEL}/stats").json()["model_stats"][0]
        infer_ns = sum(batch["compute_infer"]["ns"] for batch in model["batch_stats"])  # per execution
        return model["inference_count"], model["execution_count"], infer_ns

    def post(seed: int) -> httpx.Response:
        return client.post(f"{url}/generate", json={**body, "seed": seed})

    def wave(concurrent: int, pool: ThreadPoolExecutor, seed: int) -> tuple[float, float, float]:
        """Images/s, rows per batch, and images/s had the session run back to back (its compute
        time only: what the server's overhead leaves of the graph's own speed)."""
        before = stats()
        started = time.perf_counter()
        responses = list(pool.map(post, range(seed, seed + concurrent)))
        elapsed = time.perf_counter() - started
        for response in responses:
            response.raise_for_status()
        rows, executions, infer_ns = (after - b for after, b in zip(stats(), before, strict=True))
        return concurrent / elapsed, rows / executions, rows / STEPS / (infer_ns / 1e9)

    keys = ("raw1", "raw8", "http1", "http8", "batch1", "batch8", "session1", "session8")
    measured: dict[str, list[float]] = {k: [] for k in keys}
    with ThreadPoolExecutor(8) as pool:
        wave(8, pool, 0)  # warm-up
        for r in range(rounds):
            measured["raw1"].append(denoiser.rows_per_s(1) / STEPS)
            measured["raw8"].append(denoiser.rows_per_s(8) / STEPS)
            for concurrent in (1, 8):
                rate, batch, session = wave(concurrent, pool, 100 * r)
                measured[f"http{concurrent}"].append(rate)
                measured[f"batch{concurrent}"].append(batch)
                measured[f"session{concurrent}"].append(session)
    client.close()

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(measured[a], measured[b], strict=True))

    return {
        "medians": {key: statistics.median(values) for key, values in measured.items()},
        "ratios": {
            "http8_vs_http1": ratio("http8", "http1"),
            "http1_vs_raw1": ratio("http1", "raw1"),
            "http8_vs_raw8": ratio("http8", "raw8"),
            "http1_vs_session1": ratio("http1", "session1"),
            "http8_vs_session8": ratio("http8", "session8"),
        },
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    os.sched_setaffinity(0, {0})  # this process is the client: core 0

    with tempfile.TemporaryDirectory() as repository:
        shutil.copytree(MODEL_DIR, Path(repository) / MODEL)
        proc, url = start_server({"SERVE_MODEL_REPOSITORY": repository})
        try:
            result = measure(url, rounds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    m, ratios = result["medians"], result["ratios"]
    print(f"## Diffusion benchmark ({'quick' if args.quick else 'full'})\n")
    print(
        f"`{MODEL}`, {STEPS} DDIM steps per image (one denoiser row per step; unconditional), one image "
        f"per request, core 1, {rounds} alternating rounds (medians):\n"
    )
    print("| | images/s | denoiser rows per batch | the server's session alone, images/s |")
    print("|---|---|---|---|")
    print(f"| denoiser alone in process, batch 1 | {m['raw1']:.1f} | 1 | |")
    print(f"| denoiser alone in process, batch 8 | {m['raw8']:.1f} | 8 | |")
    print(f"| served, 1 request at a time | {m['http1']:.1f} | {m['batch1']:.1f} | {m['session1']:.1f} |")
    print(f"| served, 8 concurrent requests | {m['http8']:.1f} | {m['batch8']:.1f} | {m['session8']:.1f} |")
    print(
        f"\n8 concurrent vs 1: **{ratios['http8_vs_http1']:.2f}x**; served / the denoiser alone: "
        f"{ratios['http1_vs_raw1']:.2f} (1 request), {ratios['http8_vs_raw8']:.2f} (8); served / its "
        f"session's compute time: {ratios['http1_vs_session1']:.2f}, {ratios['http8_vs_session8']:.2f} "
        "(medians of the rounds' ratios)"
    )
    out = ROOT / "bench" / "results" / "diffusion_bench.json"
    out.write_text(json.dumps({"quick": args.quick, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
