"""Decode-step benchmark (run by hand): where a generated token's time goes, and the faster step graphs.

    .venv/bin/python bench/decode_bench.py [--quick] [--baseline-ref main]

The versions of ``gpt-corpus`` compared: 1 (the trained export), 2 (``optimized``: the fused step graph
that writes its KV cache in place, training/step_graph.py) and 3 (``int8``: the same with int8
MatMuls); python -m training variant made 2 and 3 from 1.

1. In process, one core (``taskset -c 1``), for each version, decoding from "The " of 1 and of 16
   rows: (a) the step graph alone: only the onnxruntime calls, greedy, on the feeds the server's
   cache builds (``app.core.kv_cache``); (b) the server's decode loop (``TextGenerator``: feeds,
   cache, sampling, detokenising, stop checks, events to the event loop) generating the same, greedy
   and sampled. CPU time per step (the machine is shared: other processes inflate wall time, not
   this process's CPU time); overhead = (b) / (a) - 1. Versions alternate within every round; each
   figure is the median of the rounds.
2. Over HTTP, servers pinned to core 1, client threads on core 0: today's server (the code of
   ``--baseline-ref``, checked out into a temporary git worktree, serving version 1) and this server
   serving versions 1, 2 and 3, all running, in alternating rounds: one stream, then 16 concurrent
   streams of 128 new tokens (temperature 0.8, top-k 20: the model's defaults). Aggregate tokens/s
   (median wave), the server's CPU time per token (all its threads, /proc schedstat), and the
   medians of each round's ratios to today's server.
3. Greedy text of version 2 (and 3) against version 1 through this server, token for token.
4. Start-up of this server with the whole zoo, variants included (unpinned, to ready).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from ports import start_server  # bench/ports.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-corpus"
VERSIONS = {1: "exported fp32", 2: "optimized (fused, in place)", 3: "int8 (fused, in place)"}
ROWS = (1, 16)
CONTEXT = 128  # gpt-corpus's block size, in characters
PROMPT = "The "
GREEDY_PROMPTS = ("The ", "If the ", "A list ", "def f(x):\n    return", "x", "Q", "class ", "import os\n")


# ---------------------------------------------------------------------------------------- 1. in process


class TimedSession:
    """An onnxruntime session that adds up the CPU time of its runs (and nothing else). One thread per
    session, so a run's work is the calling thread's CPU time: what other processes on the core take
    is not counted, unlike wall time, which this shared machine makes drift by tens of percent."""

    def __init__(self, session) -> None:
        self.session, self.seconds = session, 0.0

    def run(self, *args, **kwargs):
        started = time.thread_time()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.thread_time() - started

    def run_with_iobinding(self, *args, **kwargs):
        started = time.thread_time()
        try:
            return self.session.run_with_iobinding(*args, **kwargs)
        finally:
            self.seconds += time.thread_time() - started

    def __getattr__(self, name):
        return getattr(self.session, name)


def in_process(tokens: int, rounds: int) -> dict:
    """Runs itself pinned to core 1 and returns the in-process figures."""
    code = f"import sys, json; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'bench')!r}]; "
    code += f"import decode_bench as d; print(json.dumps(d._in_process({tokens}, {rounds})))"
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _in_process(tokens: int, rounds: int) -> dict:
    from app.core.kv_cache import step_cache
    from app.core.repository_format import CONFIG_FILE, ModelConfig
    from app.core.sampling import SamplingParams
    from app.core.tokenizer import CharTokenizer
    from app.decode_loop import GenerationLimits, StoppingCriteria, TextGenerator
    from app.session import Session, SessionOptions
    from training.gpt_variants import StepGraph

    model_dir = ROOT / "models" / MODEL
    config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    block = config.preprocessing.max_length
    prompt = tokenizer.encode(PROMPT)
    graphs = {v: StepGraph(config, model_dir / str(v)) for v in VERSIONS}

    def raw(version: int, rows: int) -> float:
        """CPU seconds per decode step inside onnxruntime, greedy from the prompt, the server's cache."""
        graph = graphs[version]
        timed = TimedSession(graph.session)
        names = ["logits", *(o.name for o in graph.spec.outputs[1:])]
        cache = step_cache(graph.spec, timed, block, run=lambda feeds: timed.run(names, feeds))
        logits = cache.prefill(np.array([prompt] * rows), [len(prompt)] * rows)
        timed.seconds = 0.0
        for _ in range(tokens - 1):
            logits = cache.decode(logits.argmax(-1)[:, None])
        return timed.seconds / (tokens - 1)

    # The server's loop, one per version, each on a session opened as the server opens it.
    generators, timers = {}, {}
    for version, graph in graphs.items():
        options = SessionOptions("cpu", 1, optimized_offline=graph.optimized_offline)
        session = Session(model_dir / str(version) / graph.spec.file, graph.spec, options)
        timers[version] = session.session = TimedSession(session.session)
        generators[version] = TextGenerator(MODEL, session, tokenizer, block, GenerationLimits())

    async def loop(
        version: int, rows: int, params: SamplingParams
    ) -> tuple[float, float, float, list[list[int]]]:
        """CPU seconds per step of the server's loop (this process's: the decode thread with its
        onnxruntime runs, and the event loop), of its onnxruntime runs, and wall seconds per step."""
        generator, timer = generators[version], timers[version]
        timer.seconds = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        seqs = [generator.submit(prompt, params, StoppingCriteria(tokens), seed=i) for i in range(rows)]
        for seq in seqs:
            await seq.wait()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - started
        return cpu / tokens, timer.seconds / tokens, wall / tokens, [seq.new for seq in seqs]

    async def measure() -> dict:
        for generator in generators.values():
            generator.warmup()
            generator.start()
        greedy, sampled = SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_k=20)
        runs: dict = {}
        try:
            for version in VERSIONS:  # warm-up
                raw(version, 16)
                await loop(version, 16, greedy)
            for _ in range(rounds):
                for rows in ROWS:
                    for version in VERSIONS:
                        entry = runs.setdefault(f"{version}/{rows}", {"raw": [], "greedy": [], "sampled": []})
                        entry["raw"].append(raw(version, rows))
                        *figures, texts = await loop(version, rows, greedy)
                        entry["greedy"].append(figures)
                        entry.setdefault("texts", texts)
                        entry["sampled"].append((await loop(version, rows, sampled))[:3])
        finally:
            for generator in generators.values():
                await generator.stop()
        return runs

    runs = asyncio.run(measure())
    result = {}
    for key, entry in runs.items():
        raw_s = statistics.median(entry["raw"])
        row = {"raw_step_us": 1e6 * raw_s}
        for mode in ("greedy", "sampled"):
            row[f"{mode}_step_us"] = 1e6 * statistics.median(cpu for cpu, _, _ in entry[mode])
            row[f"{mode}_ort_step_us"] = 1e6 * statistics.median(ort for _, ort, _ in entry[mode])
            row[f"{mode}_wall_step_us"] = 1e6 * statistics.median(wall for _, _, wall in entry[mode])
            ratios = [cpu / r for (cpu, _, _), r in zip(entry[mode], entry["raw"], strict=True)]
            row[f"{mode}_overhead"] = statistics.median(ratios) - 1
        row["greedy_same_as_v1"] = entry["texts"] == runs[f"1/{key.split('/')[1]}"]["texts"]
        result[key] = row
    return result


# ---------------------------------------------------------------------------------------- 2. over HTTP


def baseline_checkout(ref: str, target: Path) -> Path:
    """Today's code: a detached git worktree of ``ref`` (removed by :func:`remove_checkout`)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), ref],
        check=True,
        capture_output=True,
    )
    return target


def remove_checkout(target: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(target)], capture_output=True
    )


def one_model_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source / MODEL, target / MODEL)
    return target


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process ``pid`` so far (/proc schedstat: nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):  # a thread that just ended
            continue
    return total / 1e9


def load(candidates: dict[str, tuple[str, int, int]], new_tokens: int, rounds: int) -> dict:
    """One stream, then 16 concurrent streams, for each candidate (url, version, server pid), round
    after round: tokens/s, and the server's CPU time per token (which the other processes sharing
    the core do not inflate as they do wall time). Each ratio is the median of the rounds' own ratios
    (waves of one round see the same machine)."""
    body = {"model": MODEL, "prompt": PROMPT, "max_new_tokens": new_tokens, "temperature": 0.8, "top_k": 20}
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=32))

    def wave(url: str, version: int, pid: int, streams: int, pool: ThreadPoolExecutor) -> tuple[float, float]:
        def one(i: int) -> int:
            r = client.post(f"{url}/generate", json={**body, "seed": i, "version": version})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        started, cpu = time.perf_counter(), cpu_seconds(pid)
        produced = sum(pool.map(one, range(streams)))
        return produced / (time.perf_counter() - started), (cpu_seconds(pid) - cpu) / produced

    waves: dict[tuple[str, int], list[tuple[float, float]]] = {
        (name, s): [] for name in candidates for s in (1, 16)
    }
    with ThreadPoolExecutor(16) as pool:
        for url, version, pid in candidates.values():
            wave(url, version, pid, 16, pool)  # warm-up: connections open, caches allocated
        for _ in range(rounds):
            for name, streams in waves:
                waves[name, streams].append(wave(*candidates[name], streams, pool))
    client.close()
    today = next(iter(candidates))
    rows = {}
    for (name, streams), measured in waves.items():
        pairs = list(zip(measured, waves[today, streams], strict=True))
        rows[f"{name}/{streams}"] = {
            "tokens_per_s": statistics.median(rate for rate, _ in measured),
            "vs_today": statistics.median(rate / base for (rate, _), (base, _) in pairs),
            "cpu_us_per_token": 1e6 * statistics.median(cpu for _, cpu in measured),
            "cpu_vs_today": statistics.median(base / cpu for (_, cpu), (_, base) in pairs),
        }
    return rows


def greedy_texts(url: str, version: int, max_new_tokens: int) -> list[str]:
    body = {"model": MODEL, "max_new_tokens": max_new_tokens, "temperature": 0, "version": version}
    with httpx.Client(timeout=120) as client:
        return [
            client.post(f"{url}/generate", json={**body, "prompt": p}).json()["text"] for p in GREEDY_PROMPTS
        ]


def startup(runs: int) -> list[float]:
    """Start to ready of this server with the whole zoo (models/, variants included), unpinned."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        proc, _ = start_server({}, pinned=False)
        seconds.append(time.perf_counter() - started)
        proc.terminate()
        proc.wait(timeout=30)
    return seconds


# ---------------------------------------------------------------------------------------- report


def report(
    quick: bool,
    tokens: int,
    stream_tokens: tuple[int, ...],
    inproc: dict,
    http: dict[int, dict],
    same: dict,
    start: list[float],
    rounds: tuple[int, int],
    baseline_ref: str,
) -> str:
    lines = [f"## Decode-step benchmark ({'quick' if quick else 'full'})", ""]
    lines += [
        f"In process, one core, from {PROMPT!r}, {tokens} tokens per row, medians of {rounds[0]} "
        "alternating rounds, CPU time per step (what other processes on the core take is not counted). "
        "raw: the step graph's onnxruntime calls alone (greedy), on the feeds the server's cache builds; "
        "server: the decode loop doing the same (feeds, cache, sampling, text, stop checks, events to "
        "the event loop), greedy and sampled; overhead = server / raw - 1; wall: the server's wall "
        "clock per step.",
        "",
        "| version | rows | raw step us | server step us (greedy) | of which onnxruntime | overhead "
        "| sampled (T=0.8, top-k 20) | overhead | wall us (greedy) | greedy text = v1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows in ROWS:
        for version, label in VERSIONS.items():
            r = inproc[f"{version}/{rows}"]
            lines.append(
                f"| {version}: {label} | {rows} | {r['raw_step_us']:.0f} | {r['greedy_step_us']:.0f} | "
                f"{r['greedy_ort_step_us']:.0f} | {100 * r['greedy_overhead']:+.0f}% | "
                f"{r['sampled_step_us']:.0f} | "
                f"{100 * r['sampled_overhead']:+.0f}% | {r['greedy_wall_step_us']:.0f} | "
                f"{'yes' if r['greedy_same_as_v1'] else 'no'} |"
            )
    for new_tokens, rows in http.items():
        after_slide = new_tokens + len(PROMPT) - CONTEXT - 1  # tokens made after the window slid
        lines += [
            "",
            f"HTTP, {new_tokens} new tokens per stream (temperature 0.8, top-k 20), servers on core 1, "
            f"client on core 0, {rounds[1]} alternating rounds; today = the server of `{baseline_ref}` "
            "serving version 1"
            + (
                f"; past the {CONTEXT}-token context, so each stream's window slides once (its last "
                f"{CONTEXT // 2} tokens prefilled again) for its last {after_slide} tokens:"
                if after_slide > 0
                else f"; prompt and output fit the {CONTEXT}-token context:"
            ),
            "",
            "| server | version | streams | aggregate tokens/s | vs today | server CPU us per token | "
            "vs today (CPU) |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, r in rows.items():
            name, streams = key.rsplit("/", 1)
            server, version = name.split(" v")
            lines.append(
                f"| {server} | {version} | {streams} | {r['tokens_per_s']:.0f} | **{r['vs_today']:.2f}x** | "
                f"{r['cpu_us_per_token']:.0f} | **{r['cpu_vs_today']:.2f}x** |"
            )
    lines += ["", f"Greedy text through this server, {len(GREEDY_PROMPTS)} prompts of 200 tokens:", ""]
    for version, matches in same.items():
        lines.append(
            f"- version {version} ({VERSIONS[version]}): {matches} of {len(GREEDY_PROMPTS)} "
            "identical to version 1"
        )
    if start:
        runs = ", ".join(f"{s:.2f}" for s in start)
        lines += [
            "",
            f"Start to ready, whole zoo with its variants, unpinned: median {statistics.median(start):.2f} s "
            f"({runs})",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds")
    parser.add_argument("--baseline-ref", default="main", help="git ref of today's server (default: main)")
    args = parser.parse_args()
    # Over HTTP, 124 new tokens after the 4-token prompt fill the 128-token context exactly; at 128 the
    # last 3 come after the window slides (its last 64 tokens prefilled again, ~25 decode steps of work).
    tokens, stream_tokens = (64, (64,)) if args.quick else (120, (124, 128))
    rounds = (3, 3) if args.quick else (7, 8)
    os.sched_setaffinity(0, {0})  # this process is the client: core 0

    inproc = in_process(tokens, rounds[0])
    started: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as scratch:
        scratch_dir = Path(scratch)
        base = baseline_checkout(args.baseline_ref, scratch_dir / "baseline")
        try:
            base_models = one_model_repository(base / "models", scratch_dir / "base-models")
            our_models = one_model_repository(ROOT / "models", scratch_dir / "models")
            base_env = {"SERVE_MODEL_REPOSITORY": str(base_models), "PYTHONPATH": str(base)}
            base_proc, base_url = start_server(base_env, cwd=base)
            started.append(base_proc)
            proc, url = start_server({"SERVE_MODEL_REPOSITORY": str(our_models), "PYTHONPATH": str(ROOT)})
            started.append(proc)
            candidates = {
                "today v1": (base_url, 1, base_proc.pid),
                **{f"this v{v}": (url, v, proc.pid) for v in VERSIONS},
            }
            http = {n: load(candidates, n, rounds[1]) for n in stream_tokens}
            reference = greedy_texts(url, 1, 200)
            same = {
                v: sum(a == b for a, b in zip(reference, greedy_texts(url, v, 200), strict=True))
                for v in VERSIONS
                if v != 1
            }
        finally:
            for p in started:
                p.terminate()
                p.wait(timeout=30)
            remove_checkout(base)
    start = startup(1 if args.quick else 3)
    text = report(args.quick, tokens, stream_tokens, inproc, http, same, start, rounds, args.baseline_ref)
    print(text)
    results = ROOT / "bench" / "results"
    (results / "decode_bench.md").write_text(text)
    payload = {
        "quick": args.quick,
        "in_process": inproc,
        "http": {str(n): rows for n, rows in http.items()},
        "greedy_same": same,
        "startup_s": start,
    }
    (results / "decode_bench.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
