"""Serving benchmark: this server (batching on and off) against a minimal FastAPI app and raw onnxruntime.

Run by hand on a quiet machine: ``.venv/bin/python bench/serve_bench.py [--quick]``. It prints a markdown
table and writes ``bench/results/serve_bench.json``. ``--models`` and ``--candidates`` choose what runs:
``--models resnet-shapes,alexnet-shapes,mobilenet-shapes --candidates batching`` puts the shapes
classifiers side by side, with a table of what each costs (report.json: accuracy, parameters,
multiply-adds) beside what it serves.

How it measures, and why:
- Every server gets core 1 and wrk gets core 0 (``taskset``), so client and server never share a core.
  One core means one onnxruntime instance per model with one intra-op thread (SERVE_INSTANCES=1,
  SERVE_INTRA_OP_THREADS=1); more would only time-slice the same core.
- The three HTTP candidates run side by side (an idle one uses no CPU: uvicorn waits in epoll, the
  batchers on events, and single-threaded onnxruntime has no spinning pool), and the cells are
  interleaved per (model, concurrency): absolute numbers drift 30-50% between runs on these
  machines (docs/ARCHITECTURE.md), so every comparison is taken minutes apart at most, never a run apart.
- Bodies carry one sample each, already preprocessed: JSON nested lists for ``/predict``, and the V2
  binary tensor extension for ``/v2/models/{name}/infer`` (the baseline has no V2 route, so V2 rows
  are compared with the same server's JSON rows).
- The ceiling is onnxruntime alone at batch 1 and 32 in a process on core 1 (bench/ort_ceiling.py).
- Start-up is timed separately on the full zoo with default settings and no pinning, as a user
  would start the server.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from ports import free_port  # bench/ports.py, beside this script

from app.core.repository_format import default_version

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA_SCRIPT = BENCH / "post.lua"
DEFAULT_OUT = BENCH / "results" / "serve_bench.json"
MODELS = ("lenet5-digits", "resnet-shapes", "mlp-digits")
SERVER_CORE, CLIENT_CORE = "1", "0"
CONCURRENCY, QUICK_CONCURRENCY = (1, 8, 32, 64), (1, 32)
CEILING_BATCHES = (1, 32)
# wrk drops requests slower than its timeout from the latency statistics; well above any latency
# expected here (the server's own request deadline is 5 s), so a slow tail shows up as latency.
WRK_TIMEOUT_S = 10
READY_TIMEOUT_S = 180.0
# Every request here goes to 127.0.0.1: never through a proxy the environment may name.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LABELS = {
    "batching": "server, batching",
    "no-batching": "server, no batching",
    "baseline": "baseline FastAPI",
}


@dataclass(frozen=True)
class Candidate:
    key: str  # a key of LABELS
    app: str  # uvicorn's APP argument
    env: dict[str, str]
    bodies: tuple[str, ...]
    app_dir: str | None = None

    @property
    def label(self) -> str:
        return LABELS[self.key]


@dataclass(frozen=True)
class Body:
    kind: str  # json | v2
    path: str  # URL path
    file: Path
    headers: dict[str, str]
    size: int


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class WrkResult:
    requests_per_s: float
    requests: int
    latency_ms: dict[str, float]  # percentile ("50", "75", "90", "99") -> ms
    non_2xx: int  # wrk counts statuses >= 400 here
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


@dataclass
class Cell:
    model: str
    body: str
    candidate: str
    connections: int
    result: WrkResult


def candidates(repository: Path) -> list[Candidate]:
    pinned = {
        "SERVE_MODEL_REPOSITORY": str(repository),
        "SERVE_INSTANCES": "1",
        "SERVE_INTRA_OP_THREADS": "1",
    }
    return [
        Candidate("batching", "app.main:app", pinned, ("json", "v2")),
        Candidate("no-batching", "app.main:app", {**pinned, "SERVE_MAX_BATCH_SIZE": "1"}, ("json", "v2")),
        Candidate(
            "baseline",
            "baseline_app:app",
            {"BASELINE_MODEL_REPOSITORY": str(repository)},
            ("json",),
            app_dir=str(BENCH),
        ),
    ]


# ---------------------------------------------------------------------------------------- processes


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without SERVE_/BASELINE_ settings, so only ``extra`` configures a server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVE_", "BASELINE_"))}
    return {**env, **extra}


def start_server(
    name: str, app: str, env: dict[str, str], log_dir: Path, core: str | None, app_dir: str | None = None
) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--log-level", "warning", "--no-access-log"]
    if app_dir is not None:
        command += ["--app-dir", app_dir]
    if core is not None:
        command = ["taskset", "-c", core, *command]
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        # Own session: a Ctrl-C in the terminal reaches only this script, which then stops the servers.
        process = subprocess.Popen(
            command, cwd=ROOT, env=clean_env(env), stdout=log, stderr=log, start_new_session=True
        )
    return Server(name, port, process, log_path)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def log_tail(server: Server, lines: int = 30) -> str:
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Polls /health/ready until 200; returns the perf_counter time it first answered 200."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{log_tail(server)}")
        try:
            with HTTP.open(f"{server.url}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass  # not listening yet, or 400 while models load
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s:\n{log_tail(server)}")


@contextlib.contextmanager
def running_servers(cands: list[Candidate], log_dir: Path) -> Iterator[dict[str, Server]]:
    """All candidates started at once on the server core (they load in parallel), stopped on exit."""
    servers: dict[str, Server] = {}
    try:
        for cand in cands:
            servers[cand.key] = start_server(cand.key, cand.app, cand.env, log_dir, SERVER_CORE, cand.app_dir)
        for server in servers.values():
            wait_ready(server)
        yield servers
    finally:
        for server in servers.values():
            stop_server(server)


# ---------------------------------------------------------------------------------------- bodies


def item_shape(model_dir: Path) -> tuple[int, ...]:
    """The primary graph's input shape without the batch axis, from config.json."""
    config = json.loads((model_dir / "config.json").read_text())
    graph = next(iter(config["graphs"].values()))
    shape = tuple(graph["inputs"][0]["shape"][1:])
    if any(d < 0 for d in shape):
        raise ValueError(f"{model_dir.name}: dynamic item shape {shape} cannot be benchmarked with one body")
    return shape


def input_name(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    return next(iter(config["graphs"].values()))["inputs"][0]["name"]


def write_bodies(model: str, model_dir: Path, out_dir: Path, seed: int) -> dict[str, Body]:
    """One random normal sample, as a /predict JSON body and as a V2 binary body."""
    item = np.random.default_rng(seed).standard_normal(item_shape(model_dir)).astype("<f4")
    json_bytes = json.dumps({"model": model, "inputs": item.tolist()}).encode()
    tensor = {
        "name": input_name(model_dir),
        "shape": [1, *item.shape],
        "datatype": "FP32",
        "parameters": {"binary_data_size": item.nbytes},
    }
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    v2_bytes = head + item.tobytes()
    bodies = {}
    for kind, data, path, headers in (
        ("json", json_bytes, "/predict", {"Content-Type": "application/json"}),
        (
            "v2",
            v2_bytes,
            f"/v2/models/{model}/infer",
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
        ),
    ):
        file = out_dir / f"{model}.{kind}.body"
        file.write_bytes(data)
        bodies[kind] = Body(kind, path, file, headers, len(data))
    return bodies


def check_once(url: str, body: Body) -> None:
    """One request before load: a body the server rejects would otherwise show up as a fast error rate."""
    request = urllib.request.Request(url, body.file.read_bytes(), body.headers, method="POST")
    try:
        with HTTP.open(request, timeout=30) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url} -> {exc.code}: {exc.read()[:500]!r}") from None
    if body.kind == "json" and not json.loads(payload).get("outputs"):
        raise RuntimeError(f"POST {url}: no outputs in {payload[:500]!r}")


# ---------------------------------------------------------------------------------------- wrk

PERCENTILE_RE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def parse_wrk(text: str) -> WrkResult:
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", text, re.MULTILINE)
    if rate is None or total is None:
        raise RuntimeError(f"cannot parse wrk's output:\n{text}")
    latency = {p: float(value) * UNIT_MS[unit] for p, value, unit in PERCENTILE_RE.findall(text)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    kinds = ("connect", "read", "write", "timeout")
    socket_errors = dict(zip(kinds, map(int, sockets.groups()), strict=True)) if sockets else {}
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        requests=int(total.group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(
    url: str, body: Body, connections: int, seconds: int, core: str | None = CLIENT_CORE
) -> WrkResult:
    """wrk on ``core`` (None: wherever the scheduler puts it, sharing the server's cores)."""
    # -t1: one client thread holds every connection, so the client stays on its one core.
    command = ["taskset", "-c", core] if core is not None else []
    command += ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    command += ["--latency", "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(LUA_SCRIPT), url]
    headers = "\n".join(f"{name}: {value}" for name, value in body.headers.items())
    env = {**os.environ, "BENCH_BODY_FILE": str(body.file), "BENCH_HEADERS": headers}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# ---------------------------------------------------------------------------------------- measurements


def copy_models(repository: Path, models: tuple[str, ...] = MODELS) -> Path:
    """A repository of only the benchmarked models, so the pinned servers start in seconds."""
    for model in models:
        shutil.copytree(ROOT / "models" / model, repository / model)
    return repository


def graph_file(model_dir: Path) -> Path:
    config = json.loads((model_dir / "config.json").read_text())
    version = default_version(model_dir, config.get("version"))
    return model_dir / str(version) / next(iter(config["graphs"].values()))["file"]


def measure_startup(log_dir: Path, runs: int) -> dict[str, Any]:
    """Spawn to first 200 on /health/ready, full zoo, default settings, unpinned (as a user starts it)."""
    seconds = []
    for index in range(runs):
        started = time.perf_counter()
        server = start_server(f"startup-{index}", "app.main:app", {}, log_dir, core=None)
        try:
            seconds.append(wait_ready(server) - started)
        finally:
            stop_server(server)
        progress(f"start-up run {index + 1}/{runs}: {seconds[-1]:.2f} s")
    zoo = sorted(p.name for p in (ROOT / "models").iterdir() if p.is_dir() and not p.name.startswith("."))
    median = statistics.median(seconds) if seconds else None
    return {"models": len(zoo), "runs_s": seconds, "median_s": median}


def measure_ceiling(
    model_file: Path, seconds: int, cores: str = SERVER_CORE, threads: int = 1
) -> dict[int, float]:
    """Raw onnxruntime samples/s per batch size, in a fresh process on ``cores`` (default: the server's)."""
    command = ["taskset", "-c", cores, sys.executable, str(BENCH / "ort_ceiling.py"), str(model_file)]
    command += ["--batch", *map(str, CEILING_BATCHES), "--seconds", str(seconds), "--threads", str(threads)]
    timeout = len(CEILING_BATCHES) * seconds + 120
    done = subprocess.run(command, env=clean_env({}), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ort_ceiling.py failed on {model_file}:\n{done.stderr}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["batch"]: row["samples_per_s"] for row in rows}


def measure_ceilings(
    repository: Path, models: tuple[str, ...], seconds: int, rounds: int
) -> dict[str, dict[int, float]]:
    """Each model's ceiling, the models alternating over ``rounds``; the median per batch size."""
    runs: dict[str, list[dict[int, float]]] = {m: [] for m in models}
    for _ in range(rounds):
        for model in models:
            runs[model].append(measure_ceiling(graph_file(repository / model), seconds))
    return {
        model: {b: statistics.median(r[b] for r in rates) for b in rates[0]} for model, rates in runs.items()
    }


def check_servers(
    servers: dict[str, Server], cands: list[Candidate], bodies: dict[str, dict[str, Body]]
) -> None:
    for cand in cands:
        for model in bodies:
            for kind in cand.bodies:
                check_once(servers[cand.key].url + bodies[model][kind].path, bodies[model][kind])


def measure_cells(
    servers: dict[str, Server],
    cands: list[Candidate],
    bodies: dict[str, dict[str, Body]],
    concurrency: tuple[int, ...],
    seconds: int,
    warmup_s: int,
    rounds: int = 1,
) -> list[Cell]:
    """Every cell ``rounds`` times (the whole plan once per round, so drift reaches every cell alike),
    reported as the median over rounds."""
    # Candidates innermost: the cells compared with each other run back to back.
    plan = [(m, c, cand, k) for m in bodies for c in concurrency for cand in cands for k in cand.bodies]
    runs: dict[tuple[str, int, str, str], list[WrkResult]] = {}
    for index, (round_, (model, connections, cand, kind)) in enumerate(
        ((r, cell) for r in range(rounds) for cell in plan), 1
    ):
        server, body = servers[cand.key], bodies[model][kind]
        url = server.url + body.path
        run_wrk(url, body, connections, warmup_s)  # opens the connections, fills the queues; discarded
        result = run_wrk(url, body, connections, seconds)
        if server.process.poll() is not None:
            code = server.process.returncode
            raise RuntimeError(f"{server.name} exited with {code} during the run:\n{log_tail(server)}")
        runs.setdefault((model, connections, cand.key, kind), []).append(result)
        progress(
            f"[{index}/{len(plan) * rounds}] round {round_ + 1}: {model} {kind} {cand.label} "
            f"c={connections}: "
            f"{result.requests_per_s:.1f} req/s, p50 {result.latency_ms.get('50', float('nan')):.2f} ms, "
            f"p99 {result.latency_ms.get('99', float('nan')):.2f} ms, errors {result.errors}"
        )
    return [Cell(m, k, cand, c, median_result(results)) for (m, c, cand, k), results in runs.items()]


def median_result(results: list[WrkResult]) -> WrkResult:
    """Rounds of one cell: median rate and latencies, every request and error counted."""
    percentiles = set().union(*(r.latency_ms for r in results))
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r.socket_errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return WrkResult(
        requests_per_s=statistics.median(r.requests_per_s for r in results),
        requests=sum(r.requests for r in results),
        latency_ms={
            p: statistics.median(r.latency_ms[p] for r in results if p in r.latency_ms) for p in percentiles
        },
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=errors,
    )


# ---------------------------------------------------------------------------------------- report


def ratio(numerator: float, denominator: float | None) -> float | None:
    return numerator / denominator if denominator else None


def cell_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """Cells in table order with their ratios: JSON rows vs the baseline, V2 rows vs the same server's
    JSON rows (the baseline has no V2 route), each at the same model and concurrency."""
    rate = {(c.model, c.body, c.candidate, c.connections): c.result.requests_per_s for c in cells}
    order = list(LABELS)
    models = list(dict.fromkeys(c.model for c in cells))  # in the order they ran
    rows = []
    for cell in sorted(
        cells, key=lambda c: (models.index(c.model), c.body, order.index(c.candidate), c.connections)
    ):
        result = cell.result
        baseline = rate.get((cell.model, "json", "baseline", cell.connections))
        same_json = rate.get((cell.model, "json", cell.candidate, cell.connections))
        rows.append(
            {
                "model": cell.model,
                "body": cell.body,
                "candidate": cell.candidate,
                "connections": cell.connections,
                **asdict(result),
                "errors": result.errors,
                "vs_baseline": ratio(result.requests_per_s, baseline) if cell.body == "json" else None,
                "vs_json": ratio(result.requests_per_s, same_json) if cell.body == "v2" else None,
            }
        )
    return rows


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_cells(rows: list[dict[str, Any]]) -> str:
    header = ["model", "body", "candidate", "c", "req/s", "p50 ms", "p99 ms", "errors", "vs baseline"]
    header.append("v2 vs json")
    table = []
    for row in rows:
        latency = row["latency_ms"]
        table.append(
            [
                row["model"],
                row["body"],
                LABELS[row["candidate"]],
                str(row["connections"]),
                f"{row['requests_per_s']:.1f}",
                fmt(latency.get("50"), ".2f"),
                fmt(latency.get("99"), ".2f"),
                str(row["errors"]),
                fmt(row["vs_baseline"], ".2f", "x"),
                fmt(row["vs_json"], ".2f", "x"),
            ]
        )
    return markdown_table(header, table)


def render_ceilings(ceilings: dict[str, dict[int, float]]) -> str:
    rows = [
        [model, str(batch), f"{rate:.1f}"]
        for model, by_batch in ceilings.items()
        for batch, rate in by_batch.items()
    ]
    return markdown_table(["model", "batch", "samples/s (raw onnxruntime, core 1)"], rows)


def resnet_share(rows: list[dict[str, Any]], ceilings: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """The batching server's samples/s on ResNet at c=32 (one sample per request) against the batch-32
    ceiling: how much of what onnxruntime can do on that core the HTTP path leaves."""
    ceiling = ceilings.get("resnet-shapes", {}).get(32)
    shares = []
    for row in rows:
        if (row["model"], row["candidate"], row["connections"]) == ("resnet-shapes", "batching", 32):
            percent = 100 * ratio(row["requests_per_s"], ceiling) if ceiling else None
            shares.append({"body": row["body"], "samples_per_s": row["requests_per_s"], "percent": percent})
    return shares


# report.json metrics shown beside what a model serves: what it scores and what it costs.
COST_METRICS = ("test_accuracy", "parameters", "multiply_adds")


def model_costs(model_dir: Path) -> dict[str, float]:
    """The served version's report.json figures of COST_METRICS that it records."""
    config = json.loads((model_dir / "config.json").read_text())
    version = default_version(model_dir, config.get("version"))
    metrics = json.loads((model_dir / str(version) / "report.json").read_text())["metrics"]
    return {k: metrics[k] for k in COST_METRICS if k in metrics}


def render_costs(results: dict[str, Any]) -> str:
    """One row per model: accuracy, parameters and multiply-adds (report.json), the raw onnxruntime
    ceilings, and per candidate and body the p50 at the lowest concurrency and the rate at the highest."""
    cells = results["cells"]
    low = min((c["connections"] for c in cells), default=1)
    high = max((c["connections"] for c in cells), default=1)
    pairs = list(dict.fromkeys((c["candidate"], c["body"]) for c in cells))
    header = ["model", "test accuracy", "parameters", "MACs / image", "ort b=1 /s", "ort b=32 /s"]
    for cand, body in pairs:
        header += [f"{LABELS[cand]}, {body}: c={low} p50 ms", f"c={high} req/s"]
    rows = []
    for model, cost in results.get("costs", {}).items():
        ceiling = results["ceilings"].get(model, {})
        row = [
            model,
            fmt(cost.get("test_accuracy"), ".4f"),
            fmt(cost.get("parameters"), ",.0f"),
            fmt(cost["multiply_adds"] / 1e6 if "multiply_adds" in cost else None, ".2f", "M"),
            fmt(ceiling.get("1"), ",.0f"),
            fmt(ceiling.get("32"), ",.0f"),
        ]
        for cand, body in pairs:
            at = {
                c["connections"]: c
                for c in cells
                if (c["model"], c["candidate"], c["body"]) == (model, cand, body)
            }
            row += [
                fmt(at.get(low, {}).get("latency_ms", {}).get("50"), ".2f"),
                fmt(at.get(high, {}).get("requests_per_s"), ",.0f"),
            ]
        rows.append(row)
    return markdown_table(header, rows)


def render_report(results: dict[str, Any]) -> str:
    meta, startup = results["meta"], results["startup"]
    parts = [
        f"# Serving benchmark ({'quick' if meta['quick'] else 'full'}, {meta['duration_s']} s per cell, "
        f"{meta.get('rounds', 1)} round(s), medians; commit {meta['commit']}"
        f"{' dirty' if meta['dirty'] else ''}, load average before {meta['loadavg_before'][0]:.2f}, "
        f"after {meta['loadavg_after'][0]:.2f})",
        "",
        render_cells(results["cells"]),
        "",
        render_ceilings({m: {int(b): r for b, r in c.items()} for m, c in results["ceilings"].items()}),
        "",
        render_costs(results),
        "",
    ]
    ceiling = results["ceilings"].get("resnet-shapes", {}).get("32")
    both = results.get("resnet_ceiling_two_cores", {}).get("32")
    for share in results["resnet_c32_vs_ceiling"]:
        of_both = 100 * ratio(share["samples_per_s"], both) if both else None
        parts.append(
            f"ResNet, c=32, server with batching, {share['body']} bodies: {share['samples_per_s']:.1f} "
            f"samples/s = {fmt(share['percent'], '.1f', '%')} of the one-core batch-32 ceiling "
            f"({fmt(ceiling, '.1f')}), {fmt(of_both, '.1f', '%')} "
            f"of the two-core one ({fmt(both, '.1f')}; the server itself has one core)"
        )
    if startup["median_s"] is not None:
        runs = ", ".join(f"{s:.2f}" for s in startup["runs_s"])
        parts.append(
            f"Server start to ready, full zoo ({startup['models']} models, default settings, unpinned): "
            f"median {startup['median_s']:.2f} s over {len(startup['runs_s'])} runs ({runs} s)"
        )
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- main


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return (done.stdout or done.stderr).strip()


def check_machine() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"serve_bench: {', '.join(missing)} not found")
    if not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("serve_bench: needs cores 0 (wrk) and 1 (servers)")


def metadata(args: argparse.Namespace, concurrency: tuple[int, ...], warmup_s: int) -> dict[str, Any]:
    wrk_version = command_output(["wrk", "-v"]) or ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
        "dirty": bool(command_output(["git", "status", "--porcelain"])),
        "quick": args.quick,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": warmup_s,
        "concurrency": list(concurrency),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "wrk": wrk_version.splitlines()[0] if wrk_version else None,
        "python": sys.version.split()[0],
        "loadavg_before": list(os.getloadavg()),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per cell, c=1 and 32 only")
    parser.add_argument("--duration", type=int, help="seconds per measured cell (default 10; 3 with --quick)")
    parser.add_argument("--startup-runs", type=int, default=3, help="full-zoo start-up repetitions (0: skip)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file (.md beside it)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every cell and ceiling this many times; report medians"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated zoo models (default {','.join(MODELS)})"
    )
    parser.add_argument(
        "--candidates",
        default=",".join(LABELS),
        help=f"comma-separated, of {', '.join(LABELS)} (default: all)",
    )
    args = parser.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)
    args.models = tuple(m for m in args.models.split(",") if m)
    args.candidates = tuple(c for c in args.candidates.split(",") if c)
    missing = [m for m in args.models if not (ROOT / "models" / m / "config.json").is_file()]
    unknown = [c for c in args.candidates if c not in LABELS]
    if missing or unknown or not args.models or not args.candidates:
        parser.error(f"unknown models {missing} or candidates {unknown} (models/ and {', '.join(LABELS)})")
    return args


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    concurrency = QUICK_CONCURRENCY if args.quick else CONCURRENCY
    warmup_s = 1 if args.quick else 2
    meta = metadata(args, concurrency, warmup_s)
    models = args.models
    repository = copy_models(work / "models", models)
    bodies = {m: write_bodies(m, repository / m, work, seed) for seed, m in enumerate(models)}
    cands = [c for c in candidates(repository) if c.key in args.candidates]
    cells_count = len(models) * len(concurrency) * sum(len(c.bodies) for c in cands)
    minutes = (
        args.rounds
        * (cells_count * (warmup_s + args.duration) + len(models) * len(CEILING_BATCHES) * args.duration)
        / 60
    )
    progress(
        f"{cells_count} cells of {warmup_s} + {args.duration} s, plus start-up and ceilings: "
        f"about {minutes:.0f} min"
    )
    startup = measure_startup(work, args.startup_runs)
    ceilings = measure_ceilings(repository, models, args.duration, args.rounds)
    # The issue's ceiling: the best session settings on both cores (one session, two threads).
    two_cores = {}
    if "resnet-shapes" in models:
        two_cores = measure_ceiling(
            graph_file(repository / "resnet-shapes"), args.duration, cores="0,1", threads=2
        )
    progress(f"ceilings: {ceilings}; resnet on two cores: {two_cores}")
    with running_servers(cands, work) as servers:
        check_servers(servers, cands, bodies)
        cells = measure_cells(servers, cands, bodies, concurrency, args.duration, warmup_s, args.rounds)
    meta["loadavg_after"] = list(os.getloadavg())
    rows = cell_rows(cells)
    return {
        "meta": meta,
        "bodies_bytes": {m: {k: b.size for k, b in by_kind.items()} for m, by_kind in bodies.items()},
        "startup": startup,
        "ceilings": {m: {str(b): r for b, r in c.items()} for m, c in ceilings.items()},
        "cells": rows,
        "resnet_c32_vs_ceiling": resnet_share(rows, ceilings),
        "resnet_ceiling_two_cores": {str(b): r for b, r in two_cores.items()},
        "costs": {m: model_costs(repository / m) for m in models},
    }


def main() -> None:
    args = parse_args()
    check_machine()
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server this script started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        results = run(args, Path(tmp))
    report = render_report(results)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report + "\n")
    progress(f"wrote {args.out} and {args.out.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
