"""OpenAI-compatible API benchmark (run by hand): 16 concurrent streams through ``/v1/completions``
against the same load through ``/generate``, on one server.

    .venv/bin/python bench/openai_bench.py [--quick]

One server pinned to core 1 (``taskset -c 1``, one onnxruntime thread), this process, the load
generator, on core 0. Each wave is 16 concurrent streamed requests of 128 new tokens of
``gpt-corpus`` (prompt "The ", temperature 0.8, seed i for stream i: both endpoints generate the same
texts); the candidates alternate wave by wave over the rounds, since this VM's speed drifts by tens of
percent within seconds. Aggregate tokens/s is the tokens the server reports (its usage) over the
wave's wall time, median over the rounds; the ratio is the median of the rounds' own ratios. TTFT is
measured by the client: from sending the request to the first event (the first token's text on both
endpoints), p50/p99 over every stream of every round. Writes bench/results/openai_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from ports import start_server  # bench/ports.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
STREAMS = 16


def candidates(tokens: int) -> dict[str, tuple[str, dict]]:
    """Endpoint and body of each candidate; stream i adds seed i."""
    common = {"model": "gpt-corpus", "prompt": "The ", "temperature": 0.8, "stream": True}
    return {
        "/generate": ("/generate", {**common, "max_new_tokens": tokens}),
        "/v1/completions": (
            "/v1/completions",
            {**common, "max_tokens": tokens, "stream_options": {"include_usage": True}},
        ),
    }


def _last_json(raw: bytes) -> dict:
    """The stream's last JSON event (the summary of /generate, the usage chunk of /v1)."""
    events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: ") and e != b"data: [DONE]"]
    return json.loads(events[-1][6:])


def wave(client: httpx.Client, url: str, path: str, body: dict, pool: ThreadPoolExecutor):
    def one(i: int) -> tuple[int, float]:
        sent = time.perf_counter()
        first = None
        chunks = []
        with client.stream("POST", f"{url}{path}", json={**body, "seed": i}) as r:
            r.raise_for_status()
            for chunk in r.iter_raw():  # no parsing per event: the client must not be the bottleneck
                if first is None:
                    first = time.perf_counter() - sent
                chunks.append(chunk)
        return _last_json(b"".join(chunks))["usage"]["completion_tokens"], first

    started = time.perf_counter()
    results = list(pool.map(one, range(STREAMS)))
    elapsed = time.perf_counter() - started
    return sum(t for t, _ in results) / elapsed, [f for _, f in results]


def run(tokens: int, rounds: int) -> dict:
    proc, url = start_server()
    runs = candidates(tokens)
    waves: dict[str, list] = {name: [] for name in runs}
    try:
        client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=32))
        with ThreadPoolExecutor(STREAMS) as pool:
            for path, body in runs.values():
                wave(client, url, path, body, pool)  # warm-up: connections open, caches allocated
            for r in range(rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))  # alternate who goes first
                for name in order:
                    waves[name].append(wave(client, url, *runs[name], pool))
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = {}
    for name, measured in waves.items():
        ttft = sorted(t for _, times in measured for t in times)
        rows[name] = {
            "tokens_per_s": statistics.median(rate for rate, _ in measured),
            "ttft_p50_ms": 1000 * statistics.median(ttft),
            "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
            "per_round_tokens_per_s": [round(rate) for rate, _ in measured],
        }
    ratio = statistics.median(
        v1[0] / gen[0] for v1, gen in zip(waves["/v1/completions"], waves["/generate"], strict=True)
    )
    return {"tokens": tokens, "streams": STREAMS, "rounds": rounds, "rows": rows, "v1_vs_generate": ratio}


def markdown(result: dict) -> str:
    lines = [
        f"## OpenAI-compatible API benchmark ({result['streams']} streams x {result['tokens']} tokens, "
        f"{result['rounds']} alternating rounds)\n",
        "Server on core 1 (one onnxruntime thread), client on core 0, gpt-corpus, streamed.\n",
        "| endpoint | aggregate tokens/s (median) | TTFT p50 ms | TTFT p99 ms |",
        "|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| `{name}` | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} |"
        )
    lines.append(
        f"\n`/v1/completions` / `/generate`: **{result['v1_vs_generate']:.2f}** (median of the rounds' "
        "ratios; the bar is 0.90)\n"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 32 tokens instead of 10 of 128")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # this process is the client: core 0
    result = run(32, 3) if args.quick else run(128, 10)
    text = markdown(result)
    print(text)
    if not args.quick:
        results = ROOT / "bench" / "results"
        (results / "openai_bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (results / "openai_bench.md").write_text(text)


if __name__ == "__main__":
    main()
