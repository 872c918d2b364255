"""Raw onnxruntime throughput of one graph, in process: the ceiling a server can approach on one core.

bench/serve_bench.py runs it as ``taskset -c 1 python bench/ort_ceiling.py MODEL.onnx --batch 1 32``
(the core its servers get) and reads one JSON object per batch size from stdout. Random normal data
of the graph's input shape; session settings are the best measured here (docs/ARCHITECTURE.md):
ORT_ENABLE_ALL, one intra-op thread, no spinning.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import onnxruntime as ort

WARMUP_RUNS = 5  # pays lazy initialisation and lets the allocator settle before timing


def make_session(path: str, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def samples_per_second(session: ort.InferenceSession, batch: int, seconds: float) -> tuple[float, int]:
    """Runs back to back for ``seconds``; returns (samples/s, runs)."""
    spec = session.get_inputs()[0]
    item_shape = [int(d) for d in spec.shape[1:]]  # the graphs benchmarked have static item shapes
    x = np.random.default_rng(0).standard_normal([batch, *item_shape]).astype(np.float32)
    feeds = {spec.name: x}
    for _ in range(WARMUP_RUNS):
        session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, feeds)
        runs += 1
    return batch * runs / elapsed, runs


def parallel_samples_per_second(path: str, batch: int, sessions: int, seconds: float) -> float:
    """Samples/s of ``sessions`` single-threaded sessions, each running back to back in its own thread
    (onnxruntime releases the GIL): the ceiling of as many instances on as many cores."""
    workers = [make_session(path) for _ in range(sessions)]
    spec = workers[0].get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch, *map(int, spec.shape[1:])]).astype(np.float32)
    counts = [0] * sessions

    def run(index: int, until: float) -> None:
        while time.perf_counter() < until:
            workers[index].run(None, {spec.name: x})
            counts[index] += batch

    for session in workers:
        for _ in range(WARMUP_RUNS):
            session.run(None, {spec.name: x})
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i, started + seconds)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="path of the .onnx graph")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per batch size")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (2 for the two-core ceiling)"
    )
    args = parser.parse_args()
    session = make_session(args.model, args.threads)
    for batch in args.batch:
        rate, runs = samples_per_second(session, batch, args.seconds)
        print(json.dumps({"batch": batch, "samples_per_s": rate, "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
