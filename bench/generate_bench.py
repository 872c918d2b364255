"""Text-generation benchmark (run by hand): KV cache vs recomputation, and continuous batching.

    .venv/bin/python bench/generate_bench.py [--quick]

1. In process, one core (``taskset -c 1``): 256 new tokens of ``gpt-corpus`` from a one-character
   prompt, (a) through the KV-cache ``decoder_step`` graph (one token per step; past the 128-token
   context the window slides: its last half is prefilled again, as the server does) and (b) by
   recomputing the full-sequence ``model`` graph over the last 128 tokens at every step. Also the
   step graph's own batch scaling, the ceiling for continuous batching: greedy decoding of 1 and of 16
   rows together through ``KVCache`` (no server, no sampling), tokens/s of each; and the same steps
   on an empty cache, which bounds what any attention kernel could add to that scaling.
2. Over HTTP, servers pinned to core 1, client threads on core 0: one stream alone, then 16
   concurrent streams of 128 new tokens, against (i) this server (continuous batching) and (ii) the
   same server with ``SERVE_MAX_ACTIVE_SEQUENCES=1`` (each request's generation runs on its own, no
   cross-request batching), both running, in alternating rounds. Aggregate tokens/s (median wave),
   p50/p99 time to first token (server-side).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from ports import start_server  # bench/ports.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "gpt-corpus"


def in_process(new_tokens: int, stream_tokens: int) -> dict[str, float]:
    """Runs itself pinned to one core and returns tokens/s of each in-process measurement."""
    # The child imports this file as a module; its sibling bench/ports.py must be on its path too.
    code = f"import sys, json; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'bench')!r}]; "
    code += "from bench import generate_bench as g; "
    code += f"print(json.dumps({{**g._kv_vs_recompute({new_tokens}), **g._graph_scaling({stream_tokens})}}))"
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _one_core_sessions(*roles: str):
    """The model's config and one single-threaded, non-spinning onnxruntime session per graph role."""
    import onnxruntime as ort

    from app.core.repository_format import ModelConfig

    config = ModelConfig.model_validate_json((MODEL_DIR / "config.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    files = [str(MODEL_DIR / "1" / config.graphs[role].file) for role in roles]
    return config, *(ort.InferenceSession(file, options) for file in files)


def _kv_vs_recompute(new_tokens: int) -> dict[str, float]:
    from app.core.kv_cache import generate
    from app.core.sampling import SamplingParams

    config, step, full = _one_core_sessions("decoder_step", "model")
    block = config.preprocessing.max_length
    prompt = [5]

    def kv() -> list[int]:
        out = generate(
            step,
            config.graphs["decoder_step"],
            prompt,
            max_new_tokens=new_tokens,
            params=SamplingParams(temperature=0),
            seed=0,
            block_size=block,
            slide=True,
        )
        return prompt + out.token_ids

    def recompute() -> list[int]:
        seen = list(prompt)
        while len(seen) < len(prompt) + new_tokens:
            window = np.array([seen[-block:]], np.int64)
            seen.append(int(full.run(["logits"], {"tokens": window})[0][0, -1].argmax()))
        return seen

    def rate(fn) -> float:
        started = time.perf_counter()
        fn()
        return new_tokens / (time.perf_counter() - started)

    kv(), recompute()  # warm-up
    rounds = [(rate(kv), rate(recompute)) for _ in range(5)]  # alternating: the machine drifts
    return {
        "kv_cache_tokens_per_s": statistics.median(k for k, _ in rounds),
        "recompute_tokens_per_s": statistics.median(r for _, r in rounds),
        "kv_cache_vs_recompute": statistics.median(k / r for k, r in rounds),
    }


def _graph_scaling(new_tokens: int) -> dict[str, float]:
    """Greedy decode steps of 1 and 16 rows through the step graph and KVCache alone: how much
    batching the graph itself allows on this core (prompt "The ", as the HTTP load)."""
    from app.core.kv_cache import KVCache
    from app.core.tokenizer import CharTokenizer

    config, step = _one_core_sessions("decoder_step")
    graph = config.graphs["decoder_step"]
    prompt = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump()).encode("The ")
    steps = min(new_tokens, config.preprocessing.max_length - len(prompt))  # within the context

    def decode(rows: int) -> float:
        cache = KVCache(graph)
        logits, *entries = step.run(cache.output_names, cache.empty_feeds(np.array([prompt] * rows)))
        cache.add(entries, [len(prompt)] * rows)
        started = time.perf_counter()
        for _ in range(steps):
            tokens = logits[:, -1].argmax(-1)[:, None]  # (B, 1)
            logits, *entries = step.run(cache.output_names, cache.feeds(tokens))
            cache.append(entries)
        return rows * steps / (time.perf_counter() - started)

    def no_cache(rows: int) -> float:
        """One-token steps on an empty cache: everything but attention to the past (an upper bound
        for the batch scaling that a perfect attention kernel could reach)."""
        cache, tokens = KVCache(graph), np.array([prompt[:1]] * rows)
        started = time.perf_counter()
        for _ in range(steps):
            step.run(cache.output_names, cache.empty_feeds(tokens))
        return rows * steps / (time.perf_counter() - started)

    decode(16)  # warm-up
    result = {}
    for key, fn in (("graph", decode), ("graph_no_cache", no_cache)):
        rounds = [(fn(1), fn(16)) for _ in range(5)]  # alternating: the machine drifts
        result[f"{key}_batch1_tokens_per_s"] = statistics.median(one for one, _ in rounds)
        result[f"{key}_batch16_tokens_per_s"] = statistics.median(sixteen for _, sixteen in rounds)
        result[f"{key}_scaling"] = statistics.median(sixteen / one for one, sixteen in rounds)
    return result


def load(urls: dict[str, str], new_tokens: int, rounds: int) -> dict:
    """For each server, one stream and then 16 concurrent streams, round after round: this VM's speed
    drifts by tens of percent within seconds, so both servers and both loads alternate, each figure is
    the median over its waves, and each ratio is the median of the rounds' own ratios (waves of one
    round see the same machine)."""
    body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": new_tokens, "temperature": 0.8}
    # One client for all threads: building an httpx.Client (SSL context) costs milliseconds.
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=32))

    def wave(url: str, streams: int, pool: ThreadPoolExecutor) -> tuple[float, list[float]]:
        def one(i: int) -> dict:
            r = client.post(f"{url}/generate", json={**body, "seed": i})
            r.raise_for_status()
            return r.json()

        started = time.perf_counter()
        results = list(pool.map(one, range(streams)))
        elapsed = time.perf_counter() - started
        tokens = sum(r["usage"]["completion_tokens"] for r in results)
        return tokens / elapsed, [r["timings"]["time_to_first_token_s"] for r in results]

    waves = {(name, streams): [] for name in urls for streams in (1, 16)}  # (tokens/s, TTFTs) per wave
    with ThreadPoolExecutor(16) as pool:
        for url in urls.values():
            wave(url, 16, pool)  # warm-up: connections open, caches allocated
        for _ in range(rounds):
            for name, streams in waves:
                waves[name, streams].append(wave(urls[name], streams, pool))
    client.close()
    rows: dict = {name: {} for name in urls}
    for (name, streams), measured in waves.items():
        ttft = sorted(t for _, times in measured for t in times)
        rows[name]["single" if streams == 1 else "sixteen"] = {
            "streams": streams,
            "tokens_per_s": statistics.median(rate for rate, _ in measured),
            "ttft_p50_ms": 1000 * statistics.median(ttft),
            "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
        }

    def ratio(a: tuple[str, int], b: tuple[str, int]) -> float:
        return statistics.median(x[0] / y[0] for x, y in zip(waves[a], waves[b], strict=True))

    batching, solo = urls
    ratios = {
        "sixteen_vs_single": ratio((batching, 16), (batching, 1)),
        "vs_solo": ratio((batching, 16), (solo, 16)),
    }
    return {"rows": rows, "ratios": ratios, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64/32 tokens instead of 256/128")
    args = parser.parse_args()
    long_tokens, stream_tokens = (64, 32) if args.quick else (256, 128)
    os.sched_setaffinity(0, {0})  # this process is the client: core 0

    kv = in_process(long_tokens, stream_tokens)
    servers = {
        "continuous batching": {},
        "no cross-request batching": {"SERVE_MAX_ACTIVE_SEQUENCES": "1"},
    }
    started: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for name, env in servers.items():
            started[name] = start_server(env)
        http = load({name: url for name, (_, url) in started.items()}, stream_tokens, 3 if args.quick else 10)
    finally:
        for proc, _ in started.values():
            proc.terminate()
            proc.wait(timeout=30)

    print(f"## Generation benchmark ({'quick' if args.quick else 'full'})\n")
    print(f"{long_tokens} new tokens, one stream, in process on one core (greedy, medians):\n")
    print("| method | tokens/s |\n|---|---|")
    print(f"| KV cache (decoder_step) | {kv['kv_cache_tokens_per_s']:.0f} |")
    print(f"| recompute full sequence (model) | {kv['recompute_tokens_per_s']:.0f} |")
    print(f"\nKV cache / recompute: **{kv['kv_cache_vs_recompute']:.1f}x** (median of 5 rounds)\n")
    print("The step graph's own batch scaling (greedy, KVCache, no server), one core, medians of 5 rounds:\n")
    print("| steps | 1 row tokens/s | 16 rows tokens/s | 16 rows / 1 row |\n|---|---|---|---|")
    graph_rows = (("decode (cache grows from 4)", "graph"), ("empty cache (no attention)", "graph_no_cache"))
    for label, key in graph_rows:
        one, sixteen = kv[f"{key}_batch1_tokens_per_s"], kv[f"{key}_batch16_tokens_per_s"]
        print(f"| {label} | {one:.0f} | {sixteen:.0f} | **{kv[f'{key}_scaling']:.1f}x** |")
    print()
    rounds = http["rounds"]
    print(f"HTTP, {stream_tokens} new tokens per stream, servers on core 1, {rounds} alternating rounds:\n")
    print("| server | streams | aggregate tokens/s | TTFT p50 ms | TTFT p99 ms |\n|---|---|---|---|---|")
    for name, by_load in http["rows"].items():
        for r in by_load.values():
            cells = [name, str(r["streams"]), f"{r['tokens_per_s']:.0f}"]
            cells += [f"{r['ttft_p50_ms']:.1f}", f"{r['ttft_p99_ms']:.1f}"]
            print("| " + " | ".join(cells) + " |")
    ratios = http["ratios"]
    print(
        f"\n16 streams vs one stream: **{ratios['sixteen_vs_single']:.1f}x**; "
        f"vs no cross-request batching at 16 streams: **{ratios['vs_solo']:.1f}x** "
        "(medians of the rounds' ratios)"
    )
    out = ROOT / "bench" / "results" / "generate_bench.json"
    out.write_text(json.dumps({"quick": args.quick, "in_process": kv, "http": http}, indent=2) + "\n")


if __name__ == "__main__":
    main()
