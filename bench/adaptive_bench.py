"""Adaptive batching (``max_queue_delay_ms: "auto"``) against a sweep of fixed delays and no batching,
under open-loop Poisson load at 30%, 60% and 90% of capacity (issue 17, part 3). Run by hand:

    .venv/bin/python bench/adaptive_bench.py --quick   # a check, ~3 min (results in the temp dir)
    .venv/bin/python bench/adaptive_bench.py   # the README's figures, ~15 min

How it measures, and why:
- The model is the MLP (mlp-digits) with its own instances (two single-threaded sessions), bodies are
  ``POST /predict`` JSON with one preprocessed sample (the API most clients use). Every server runs on
  core 1 (``taskset``), this script and its load generator on core 0, so capacity is one core's. The
  delay only acts while another batch is running, so one instance would make every fixed delay the
  same policy; two instances on the one core is where the choice matters.
- Capacity: the best closed-loop throughput (64 connections, each sending its next request when the
  last is answered) of any batching candidate, measured with the same client code as the open loop
  so that both see the same client costs. Then each candidate gets open-loop load at 30/60/90% of
  it, candidates side by side (idle servers cost nothing), in rounds whose order rotates.
- Open loop: arrival times are drawn up front (exponential gaps, seeded) and each request is sent at
  its time whatever the server is doing, over a pool of 64 keep-alive connections (like a proxy's to
  its backend; a request that finds all busy waits for one); latency runs from the *scheduled* time
  to the last byte of the answer, so a server (or a generator) that falls behind shows as latency
  instead of hiding it (coordinated omission). The generator is raw asyncio protocols on uvloop with
  one pre-encoded request; the table reports the rate it really sent, its send lag (sent - scheduled,
  waits for a free connection included) and its CPU.
- On a machine shared with other work, run it in a session of its own with a raised autogroup
  priority (Linux shares the CPU between sessions first, so ``nice`` alone does not help):
  ``setsid sh -c 'echo -20 > /proc/self/autogroup; exec .venv/bin/python
  bench/adaptive_bench.py'``.
- Per 10-second window (after a warm-up): p99 of the requests scheduled in it (a failed or missing
  answer counts as infinitely late) and goodput (200s completed in it). The table gives the share of
  windows with p99 <= target, the mean goodput, and the ratios the issue asks for: auto against the
  best fixed delay at the same load, and against no batching.

Writes bench/results/adaptive_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ports import start_server  # bench/ports.py, beside this script
from serve_bench import write_bodies

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mlp-digits"
CLIENT_CORE = 0  # ports.start_server pins every server to core 1
LOADS = (0.3, 0.6, 0.9)
AUTO, NO_BATCHING = "auto", "no batching"


def fixed(delay_ms: float) -> str:
    return f"fixed {delay_ms:g} ms"


# ---------------------------------------------------------------------------------------- generator


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; parses just enough of each answer
    (status, Content-Length) to know where it ends."""

    def __init__(self, generator: OpenLoop) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current = -1  # index of the request in flight, -1 when idle
        self.expected = -1  # bytes of the answer in flight (head + body), -1 until its head is read
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, index: int) -> None:
        self.current = index
        self.transport.write(self.generator.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.expected < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"content-length:")
                length = 0
                if at >= 0:
                    stop = head.find(b"\r\n", at)
                    length = int(head[at + 15 : stop if stop >= 0 else len(head)])
                self.expected = end + 4 + length
            if len(buffer) < self.expected:
                return
            del buffer[: self.expected]
            self.expected = -1
            self.generator.answered(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.generator.lost(self)


class OpenLoop:
    """Sends ``request`` at each time of ``schedule`` (perf_counter seconds) and records, per request,
    when it was sent, when its answer ended and its status (-1: the connection failed)."""

    def __init__(
        self, host: str, port: int, request: bytes, schedule: list[float], max_connections: int
    ) -> None:
        self.host, self.port, self.request = host, port, request
        self.schedule = schedule
        self.max_connections = max_connections
        n = len(schedule)
        self.sent_at = [math.nan] * n
        self.done_at = [math.nan] * n
        self.status = [0] * n
        self._idle: collections.deque[_Connection] = collections.deque()
        self._backlog: collections.deque[int] = collections.deque()  # due, no free connection
        self.connections = 0  # open or opening
        self.peak_connections = 0
        self.peak_backlog = 0
        self._pending = 0  # sent or due, not answered
        self._draining = False  # every request is due: the last answer ends the run
        self._all_done: asyncio.Event | None = None

    async def run(self, warm_connections: int, drain_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._all_done = asyncio.Event()
        for _ in range(warm_connections):
            self._count_connection()
        opened = await asyncio.gather(*(self._connect() for _ in range(warm_connections)))
        self._idle.extend(c for c in opened if c is not None)
        schedule, n, i = self.schedule, len(self.schedule), 0
        clock = time.perf_counter
        while i < n:
            now = clock()
            while i < n and schedule[i] <= now:
                self._due(i, now, loop)
                i += 1
            if i < n:
                # At least a millisecond: the loop's timers have that resolution, and shorter sleeps
                # return at once (a busy loop that took three times the CPU per request). What is
                # sent late by this counts in its latency (measured from the schedule) and send lag.
                await asyncio.sleep(max(schedule[i] - clock(), 0.001))
        self._draining = True
        if self._pending:
            with contextlib.suppress(TimeoutError):  # what is still missing counts as failed
                await asyncio.wait_for(self._all_done.wait(), drain_s)
        for connection in list(self._idle):
            connection.transport.close()

    def _send(self, connection: _Connection, index: int, now: float) -> None:
        self.sent_at[index] = now
        connection.send(index)

    def _due(self, index: int, now: float, loop: asyncio.AbstractEventLoop) -> None:
        self._pending += 1
        if self._idle:
            self._send(self._idle.popleft(), index, now)  # FIFO: all stay warm (keep-alive timeout)
            return
        self._backlog.append(index)
        self.peak_backlog = max(self.peak_backlog, len(self._backlog))
        if self.connections < self.max_connections:
            self._count_connection()  # now, not when the task runs: a burst must not open hundreds
            loop.create_task(self._open())

    def _count_connection(self) -> None:
        self.connections += 1
        self.peak_connections = max(self.peak_connections, self.connections)

    async def _connect(self) -> _Connection | None:
        """A new connection, already counted in ``connections``."""
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self.connections -= 1
            return None
        return connection

    async def _open(self) -> None:
        connection = await self._connect()
        if connection is not None:
            self._next(connection)

    def _next(self, connection: _Connection) -> None:
        if self._backlog:
            self._send(connection, self._backlog.popleft(), time.perf_counter())
        else:
            self._idle.append(connection)

    def _finish(self, index: int, status: int) -> None:
        self.done_at[index] = time.perf_counter()
        self.status[index] = status
        self._pending -= 1
        if self._pending == 0 and self._draining:
            self._all_done.set()

    def answered(self, connection: _Connection, status: int) -> None:
        index, connection.current = connection.current, -1
        self._finish(index, status)
        self._next(connection)

    def lost(self, connection: _Connection) -> None:
        self.connections -= 1
        if connection.current >= 0:
            self._finish(connection.current, -1)
        elif connection in self._idle:
            self._idle.remove(connection)


class ClosedLoop:
    """Capacity: ``connections`` connections, each sending its next request as soon as the answer to
    the last one arrives (the same client code as the open loop, so the same client costs)."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.measuring = False
        self.stopping = False
        self.answered_ok = 0
        self.failed = 0
        self._sent: dict[_Connection, float] = {}
        self.latencies: list[float] = []

    async def run(self, connections: int, warmup_s: float, seconds: float) -> float:
        """Answers per second over ``seconds`` after ``warmup_s``."""
        loop = asyncio.get_running_loop()
        factory = lambda: _Connection(self)  # noqa: E731
        opened = await asyncio.gather(
            *(loop.create_connection(factory, self.host, self.port) for _ in range(connections))
        )
        for _, connection in opened:
            self._next(connection)
        await asyncio.sleep(warmup_s)
        self.measuring, started = True, time.perf_counter()
        await asyncio.sleep(seconds)
        self.measuring, elapsed = False, time.perf_counter() - started
        self.stopping = True
        for _, connection in opened:
            connection.transport.close()
        return self.answered_ok / elapsed

    def _next(self, connection: _Connection) -> None:
        if not self.stopping:
            self._sent[connection] = time.perf_counter()
            connection.send(0)

    def answered(self, connection: _Connection, status: int) -> None:
        if self.measuring:
            if status == 200:
                self.answered_ok += 1
                self.latencies.append(time.perf_counter() - self._sent[connection])
            else:
                self.failed += 1
        self._next(connection)

    def lost(self, connection: _Connection) -> None:
        if self.measuring:
            self.failed += 1


def closed_loop_capacity(url: str, request: bytes, args: argparse.Namespace) -> dict:
    host, port = url.removeprefix("http://").split(":")
    generator = ClosedLoop(host, int(port), request)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        rate = runner.run(generator.run(args.capacity_connections, 1.0, args.capacity_seconds))
    if generator.failed:
        raise RuntimeError(f"{url}: {generator.failed} failed requests in the capacity run")
    return {"requests_per_s": rate, "p99_ms": percentile_ms(np.asarray(generator.latencies), 99)}


def poisson_schedule(rate: float, seconds: float, start: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.2) + 100)
    times = np.cumsum(gaps)
    return (start + times[times < seconds]).tolist()


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # uvicorn[standard] installs it
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    """A sample's q-th percentile in ms, one of its own values (no interpolation: inf stays inf)."""
    if not len(seconds):
        return math.nan
    return float(np.percentile(seconds, q, method="inverted_cdf") * 1e3)


def open_loop_cell(
    url: str, pid: int, request: bytes, rate: float, windows: int, args: argparse.Namespace, seed: int
) -> dict:
    """One candidate at one rate: warm-up, then ``windows`` windows; per-window figures."""
    seconds = args.warmup + windows * args.window
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter() + 1.0  # after the warm connections are open
    schedule = poisson_schedule(rate, seconds, start, seed)
    generator = OpenLoop(host, int(port), request, schedule, args.max_connections)
    before = scrape(url)
    server_cpu, own_cpu, wall = cpu_seconds(pid), time.process_time(), time.perf_counter()
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(generator.run(args.warm_connections, drain_s=5.0))
    wall = time.perf_counter() - wall
    server_cpu, own_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - own_cpu
    after = scrape(url)
    scheduled = np.asarray(schedule) - start
    sent = np.asarray(generator.sent_at) - start
    done = np.asarray(generator.done_at) - start
    status = np.asarray(generator.status)
    ok = status == 200
    latency = np.where(ok & np.isfinite(done), done - scheduled, np.inf)
    per_window = []
    for k in range(windows):
        lo = args.warmup + k * args.window
        hi = lo + args.window
        mine = (scheduled >= lo) & (scheduled < hi)
        lag = (sent - scheduled)[mine & np.isfinite(sent)]
        per_window.append(
            {
                "offered_per_s": float(mine.sum() / args.window),
                "sent_per_s": float(((sent >= lo) & (sent < hi)).sum() / args.window),
                "goodput_per_s": float((ok & (done >= lo) & (done < hi)).sum() / args.window),
                "p50_ms": percentile_ms(latency[mine], 50),
                "p99_ms": percentile_ms(latency[mine], 99),
                "send_lag_p99_ms": percentile_ms(lag, 99),
                "failed": int((mine & ~ok).sum()),
                # status -> count: 429/503 refusals, -1 a lost connection, 0 no answer before the end
                "failed_by_status": {
                    str(code): int(n)
                    for code, n in zip(*np.unique(status[mine & ~ok], return_counts=True), strict=True)
                },
            }
        )
    return {
        "rate_per_s": rate,
        "windows": per_window,
        **{k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("rows", "batches", "queue_s", "queued")},
        "peak_connections": generator.peak_connections,
        "peak_backlog": generator.peak_backlog,
        "server_cpu_s": server_cpu,
        "generator_cpu_s": own_cpu,
        "wall_s": wall,
    }


def merge(parts: list[dict]) -> dict:
    """One candidate's cells at one load (one per round) as one."""
    merged = {"rate_per_s": parts[0]["rate_per_s"], "windows": [w for p in parts for w in p["windows"]]}
    for key in ("rows", "batches", "queue_s", "queued", "server_cpu_s", "generator_cpu_s", "wall_s"):
        merged[key] = sum(p[key] for p in parts)
    for key in ("peak_connections", "peak_backlog"):
        merged[key] = max(p[key] for p in parts)
    return merged


# ---------------------------------------------------------------------------------------- server side


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (and its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# What /metrics says about the MLP: (name, labels beyond model) -> key.
SCRAPED = {
    ("serve_batch_size_sum", ""): "rows",
    ("serve_batch_size_count", ""): "batches",
    ("serve_queue_duration_seconds_sum", ""): "queue_s",
    ("serve_queue_duration_seconds_count", ""): "queued",
    ("serve_batch_hold_seconds", ""): "hold_s",
    ("serve_batch_cost_seconds", ',term="batch"'): "cost_batch_s",
    ("serve_batch_cost_seconds", ',term="row"'): "cost_row_s",
}


def scrape(url: str) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    found = {}
    for (name, labels), key in SCRAPED.items():
        match = re.search(rf'^{name}{{model="{MODEL}"{labels}}} (\S+)$', text, re.MULTILINE)
        if match:
            found[key] = float(match.group(1))
    return found


def candidates(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    out = {AUTO: {"SERVE_MAX_QUEUE_DELAY_MS": "auto", "SERVE_LATENCY_TARGET_MS": f"{args.target_ms:g}"}}
    for delay in args.delays:
        out[fixed(delay)] = {"SERVE_MAX_QUEUE_DELAY_MS": f"{delay:g}"}
    out[NO_BATCHING] = {"SERVE_MAX_BATCH_SIZE": "1"}
    return out


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------------------- report


def summarise(cell: dict, target_ms: float) -> dict:
    windows = cell["windows"]
    good = [w["p99_ms"] <= target_ms for w in windows]
    return {
        "rate_per_s": cell["rate_per_s"],
        "sent_per_s": float(np.mean([w["sent_per_s"] for w in windows])),
        "goodput_per_s": float(np.mean([w["goodput_per_s"] for w in windows])),
        "p50_ms": float(np.median([w["p50_ms"] for w in windows])),
        "p99_ms_median": float(np.median([w["p99_ms"] for w in windows])),
        "p99_ms_worst": float(max(w["p99_ms"] for w in windows)),
        "windows_within_target": sum(good) / len(good),
        "window_count": len(good),
        "send_lag_p99_ms": float(max(w["send_lag_p99_ms"] for w in windows)),
        "failed": sum(w["failed"] for w in windows),
        "failed_by_status": dict(
            sum((collections.Counter(w["failed_by_status"]) for w in windows), collections.Counter())
        ),
        "mean_batch_rows": cell["rows"] / cell["batches"] if cell["batches"] else math.nan,
        "mean_queue_ms": cell["queue_s"] / cell["queued"] * 1e3 if cell["queued"] else math.nan,
        "peak_connections": cell["peak_connections"],
        "peak_backlog": cell["peak_backlog"],
        # Shares of a core: the generator near 1.0 would make it the limit.
        "server_cpu": cell["server_cpu_s"] / cell["wall_s"],
        "generator_cpu": cell["generator_cpu_s"] / cell["wall_s"],
    }


def verdicts(summary: dict[str, dict[str, dict]], names: list[str], target_ms: float) -> list[dict]:
    out = []
    fixed_names = [n for n in names if n.startswith("fixed")]
    for load, cells in summary.items():
        auto = cells[AUTO]
        best = max(fixed_names, key=lambda n: cells[n]["goodput_per_s"])
        out.append(
            {
                "load": load,
                "auto_windows_within_target": auto["windows_within_target"],
                "best_fixed": best,
                "auto_vs_best_fixed": auto["goodput_per_s"] / cells[best]["goodput_per_s"],
                "auto_vs_no_batching": auto["goodput_per_s"] / cells[NO_BATCHING]["goodput_per_s"],
                "slo_met": auto["windows_within_target"] >= 0.99,
                "throughput_met": auto["goodput_per_s"] >= 0.95 * cells[best]["goodput_per_s"],
            }
        )
    return out


def markdown(result: dict) -> str:
    args, target = result["args"], result["args"]["target_ms"]
    lines = [
        f"# Adaptive batching, open-loop Poisson load ({'quick' if args['quick'] else 'full'}, commit "
        f"{result['commit']}, load average before {result['load_average']:.2f})",
        "",
        f"MLP (mlp-digits), POST /predict JSON, one sample per request; server on core 1 with "
        f"{args['instances']} single-threaded instances, generator on core 0. Target p99 {target:g} ms; "
        f"{args['window']:g} s windows after a {args['warmup']:g} s warm-up.",
        "",
        f"Closed-loop capacity ({args['capacity_connections']} connections):",
        "",
        "| candidate | req/s | p99 ms |",
        "|---|---|---|",
    ]
    for name, cap in result["capacity"].items():
        lines.append(f"| {name} | {cap['requests_per_s']:.0f} | {cap['p99_ms']:.2f} |")
    lines += [
        "",
        f"Capacity = {result['capacity_per_s']:.0f} req/s ({result['capacity_from']}).",
        "",
        "| load | candidate | offered/s | sent/s | goodput/s | p50 ms | p99 ms (median, worst window) "
        "| windows p99 <= target | rows/batch | batcher queue ms | send lag p99 ms | cpu server, generator "
        "| failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load, cells in result["summary"].items():
        for name, s in cells.items():
            lines.append(
                f"| {load} | {name} | {s['rate_per_s']:.0f} | {s['sent_per_s']:.0f} | "
                f"{s['goodput_per_s']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms_median']:.2f}, "
                f"{s['p99_ms_worst']:.2f} | {s['windows_within_target'] * s['window_count']:.0f}/"
                f"{s['window_count']} | {s['mean_batch_rows']:.1f} | {s['mean_queue_ms']:.2f} | "
                f"{s['send_lag_p99_ms']:.2f} | "
                f"{s['server_cpu']:.2f}, {s['generator_cpu']:.2f} | {s['failed']} |"
            )
    lines += [
        "",
        "| load | auto: windows p99 <= target | best fixed (goodput) | auto / best fixed | "
        "auto / no batching | p99 target met | >= 95% of best fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in result["verdicts"]:
        lines.append(
            f"| {v['load']} | {v['auto_windows_within_target']:.0%} | {v['best_fixed']} | "
            f"{v['auto_vs_best_fixed']:.3f} | {v['auto_vs_no_batching']:.2f}x | "
            f"{'yes' if v['slo_met'] else 'NO'} | {'yes' if v['throughput_met'] else 'NO'} |"
        )
    rounds = result["args"]["rounds"]
    lines += [
        "",
        "p99 (ms) of every window, by round (the candidates of a round ran one after the other, so a "
        "disturbance from other work on the machine shows in all of them):",
        "",
        "| load | candidate | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " |",
        "|---|---|" + "---|" * rounds,
    ]
    for load, by_name in result["cells"].items():
        for name, parts in by_name.items():
            per_round = [" ".join(f"{w['p99_ms']:.1f}" for w in part["windows"]) for part in parts]
            lines.append(f"| {load} | {name} | " + " | ".join(per_round) + " |")
    if result.get("auto_gauges"):
        g = result["auto_gauges"]
        lines += [
            "",
            f"auto's learned cost at the end: {g.get('cost_batch_s', math.nan) * 1e6:.0f} us per batch + "
            f"{g.get('cost_row_s', math.nan) * 1e6:.2f} us per row; last hold "
            f"{g.get('hold_s', math.nan) * 1e3:.2f} ms.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, fewer delays: a check")
    parser.add_argument("--target-ms", type=float, default=20.0, help="auto's latency target (p99)")
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 1, 2, 5, 10])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every candidate per load")
    parser.add_argument("--windows", type=int, default=1, help="windows per fixed / no-batching cell")
    parser.add_argument("--auto-windows", type=int, default=2, help="windows per auto cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before a cell's first window")
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--capacity-connections", type=int, default=64)
    # A pool of 64 keep-alive connections, like a proxy's to its backend: the capacity run shows 64
    # carry the server's whole capacity, and the server's cost per request grows with its open
    # connections (64 answered ~7,000 req/s closed-loop here, 320 ~5,000), so letting a burst open
    # hundreds turned a Poisson burst at 90% load into a lasting overload. Requests that find every
    # connection busy wait in the generator, and that wait counts in their latency.
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--warm-connections", type=int, default=64, help="opened before each cell")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adaptive_bench.json")
    args = parser.parse_args()
    if args.quick:
        args.delays, args.window, args.rounds, args.capacity_seconds = [0, 2, 10], 3.0, 1, 3
        if args.out == parser.get_default("out"):  # a check: bench/results keeps the real figures
            args.out = Path(tempfile.gettempdir()) / "adaptive_bench_quick.json"
    os.sched_setaffinity(0, {CLIENT_CORE})
    load_average = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="adaptive-bench-"))
    repository = work / "models"
    repository.mkdir()
    (repository / MODEL).symlink_to(ROOT / "models" / MODEL)
    body = write_bodies(MODEL, ROOT / "models" / MODEL, work, seed=0)["json"]
    request = http_request(body.path, body.file.read_bytes(), body.headers)
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    # Every candidate admits 1,024 requests at a time (the default 256, beyond which refusals are held
    # for a second, turned a stall of the machine into seconds of refusals that blocked the
    # generator's connections): transients show up as queueing, which is what is measured here.
    base = {
        "SERVE_MODEL_REPOSITORY": str(repository),
        "SERVE_INSTANCES": str(args.instances),
        "SERVE_MAX_QUEUE_SIZE": "1024",
    }
    try:
        for name, env in candidates(args).items():
            servers[name] = start_server({**base, **env})
        names = list(servers)
        capacity = {}
        for name in names:
            capacity[name] = closed_loop_capacity(servers[name][1], request, args)
            print(f"capacity {name}: {capacity[name]['requests_per_s']:.0f} req/s", flush=True)
        batching_names = [n for n in names if n != NO_BATCHING]
        capacity_from = max(batching_names, key=lambda n: capacity[n]["requests_per_s"])
        capacity_per_s = capacity[capacity_from]["requests_per_s"]
        cells: dict[str, dict[str, list[dict]]] = {}
        for k, load in enumerate(LOADS):
            rate = load * capacity_per_s
            cells[f"{load:.0%}"] = {name: [] for name in names}
            # Rounds of one cell per candidate, the order rotating: the machine's drift (other work
            # shares it) falls on every candidate alike.
            for r in range(args.rounds):
                shift = (k + r) % len(names)
                for j, name in enumerate(names[shift:] + names[:shift]):
                    windows = args.auto_windows if name == AUTO else args.windows
                    process, url = servers[name]
                    seed = 1000 * k + 100 * r + j
                    cell = open_loop_cell(url, process.pid, request, rate, windows, args, seed)
                    cells[f"{load:.0%}"][name].append(cell)
                    s = summarise(cell, args.target_ms)
                    print(
                        f"{load:.0%} r{r} {name}: offered {rate:.0f}/s sent {s['sent_per_s']:.0f}/s "
                        f"goodput {s['goodput_per_s']:.0f}/s p99 {s['p99_ms_median']:.2f} ms (worst "
                        f"{s['p99_ms_worst']:.2f}) rows/batch {s['mean_batch_rows']:.1f} lag p99 "
                        f"{s['send_lag_p99_ms']:.2f} ms cpu server {s['server_cpu']:.2f} generator "
                        f"{s['generator_cpu']:.2f} conns {s['peak_connections']} queue "
                        f"{s['mean_queue_ms']:.2f} ms failed {s['failed_by_status']}",
                        flush=True,
                    )
        summary = {
            load: {name: summarise(merge(by_name[name]), args.target_ms) for name in names}
            for load, by_name in cells.items()
        }
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        result = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "commit": commit,
            "load_average": load_average,
            "capacity": capacity,
            "capacity_from": capacity_from,
            "capacity_per_s": capacity_per_s,
            "cells": cells,
            "summary": summary,
            "verdicts": verdicts(summary, names, args.target_ms),
            "auto_gauges": scrape(servers[AUTO][1]),
        }
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
