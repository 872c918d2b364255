"""Overload benchmark: how the server behaves with far more clients than it can serve, and under the
worst single requests a client can send.

Run by hand on a quiet machine with two cores:

    .venv/bin/python bench/overload_bench.py [--quick] [--soak SECONDS]

It prints markdown tables and writes ``bench/results/overload_bench.md`` and ``.json``.

What it measures, and why:
- Overload. For each of three endpoints (``/predict`` on lenet5-digits with a base64 PNG, ``/generate``
  on gpt-corpus and on seq2seq-dates), 32 connections and then 1,000, each after a warm-up on the same
  connections that is not counted, back to back in one run: this VM drifts by tens of percent between
  runs, so the ratios compare cells minutes apart, never a run apart. A server that sheds load well keeps
  its goodput (200s per second) at 1,000 connections close to its goodput at 32, keeps the latency of the
  requests it admits low, refuses the rest quickly with 429 or 503 and a Retry-After header, and never
  fails with another 5xx. A 503 counts as a refusal, not as a 5xx error.
- Liveness during overload. The parent process GETs ``/health/live`` every 20 ms over its own keep-alive
  connection, as a kubelet would: an event loop blocked by parsing or a queue that swallows the probe
  shows up here before it shows up as a restart in production.
- Worst single requests. Each sent alone (60 s client timeout) while ``/health/live`` is probed every
  10 ms and the server's RSS (VmRSS, summed over its process tree) is sampled every 10 ms; the RSS rise
  is taken over the median RSS just before the request, after ~2 s of mixed traffic warmed the server.
  A request that times out, or a server that dies or passes the RSS cap (``--rss-cap-mb``; the server is
  killed there so that the machine survives), gets a fresh server for the next request.
- Soak (``--soak SECONDS``, off by default): 16 connections of the three overload bodies mixed; RSS once
  a second, after a 60 s warm-up (or half the run if shorter) against the end.

How:
- The server gets core 1 (``taskset``), one onnxruntime instance per model with one intra-op thread
  (SERVE_INSTANCES=1, SERVE_INTRA_OP_THREADS=1): more would only time-slice the same core. It is started
  as users start it, with ``python -m app`` (the launcher, app/server.py).
- The load generator is this file run with ``--loadgen`` in a child process on core 0: asyncio (uvloop
  when importable) over raw keep-alive HTTP/1.1 sockets, one closed loop per connection (send the
  pre-serialised request, read the status line, headers and Content-Length or chunked body, record
  status, latency and Retry-After, repeat at once: a refused client retries without waiting, the
  worst case for the server). Connections open staggered over the first second, and a connection the
  server resets or closes is counted and reopened. A response counts in the window in which it
  completes; the oldest request still unanswered when the window closes is reported, because a server
  that parks requests indefinitely would otherwise look fast.
- The parent (also core 0, mostly asleep) probes and samples, so the load generator's own CPU use never
  delays a probe by more than the scheduler does; the load generator's CPU share is reported, since at
  ~100% the figures describe the client, not the server.
- Probe percentiles count the probes a stall kept from being sent (a 2 s stall probed every 20 ms is
  ~100 probes of 2 s down to 20 ms, not one): otherwise one long stall would hide behind a p99 of
  hundreds of fast probes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import importlib.metadata
import io
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ports import free_port  # bench/ports.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER_CORE, CLIENT_CORE = "1", "0"
MODELS = ("lenet5-digits", "gpt-corpus", "seq2seq-dates", "resnet-shapes", "bilstm-order", "dcgan-digits")
SERVER_SETTINGS = {"SERVE_INSTANCES": "1", "SERVE_INTRA_OP_THREADS": "1"}
LOW_CONNECTIONS, HIGH_CONNECTIONS = 32, 1000
SOAK_CONNECTIONS = 16
OVERLOAD_PROBE_INTERVAL_S, WORST_PROBE_INTERVAL_S = 0.020, 0.010
RSS_INTERVAL_S = 0.010
READY_TIMEOUT_S = 180.0
WORST_TIMEOUT_S = 60.0
# Far beyond any phase: a request this old is still waiting when its window closes, and is reported as
# unfinished rather than as a client timeout.
PHASE_REQUEST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
LOADGEN_START_S = 1.0  # the child's interpreter starts before its first connection is due
RAMP_S = 1.0  # connections open staggered over this long, inside the warm-up
IDLE_TIMEOUT_S = 30.0  # at most this long waiting for the server to finish what a phase left queued
TARGETS = {
    "ratio": {"predict lenet5-digits": 0.70, "generate gpt-corpus": 0.60, "generate seq2seq-dates": 0.60},
    "admitted_p99_ms": 250.0,
    "live_p99_ms": 50.0,
    "rss_rise_mb": 100.0,
    "soak_growth_percent": 3.0,
}
# Every request here goes to 127.0.0.1: never through a proxy the environment may name.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------------- HTTP/1.1


def http_request(method: str, path: str, port: int, body: bytes = b"", content_type: str = "") -> bytes:
    """One pre-serialised keep-alive request: the load generator only writes bytes."""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if body or method == "POST":
        head += [f"Content-Type: {content_type or 'application/json'}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and body of one response (Content-Length, chunked, or until EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)  # the CRLF after each chunk
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # trailers
        body = b"".join(chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()  # no length: the body ends with the connection
    return status, headers, body


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"  # EOF before a whole response
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def close_quietly(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)


async def sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


# ---------------------------------------------------------------------------------------- load generator


@dataclass
class Window:
    """What completed in one time window of a load run."""

    statuses: Counter[int] = field(default_factory=Counter)
    ok_latencies: list[float] = field(default_factory=list)
    refused_latencies: list[float] = field(default_factory=list)
    refusals_without_retry_after: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    server_closes: int = 0  # "Connection: close" after a response: reopened, not an error

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "ok": len(self.ok_latencies),
            "ok_per_s": len(self.ok_latencies) / seconds,
            "ok_p50_ms": ms(percentile(self.ok_latencies, 50)),
            "ok_p99_ms": ms(percentile(self.ok_latencies, 99)),
            "ok_max_ms": ms(max(self.ok_latencies, default=None)),
            "refusals": len(self.refused_latencies),
            "refusals_without_retry_after": self.refusals_without_retry_after,
            "refused_p99_ms": ms(percentile(self.refused_latencies, 99)),
            "errors_5xx": sum(n for s, n in self.statuses.items() if s >= 500 and s != 503),
            "connection_errors": dict(self.errors),
            "server_closes": self.server_closes,
        }


class LoadStats:
    def __init__(self, measure_from: float, measure_until: float) -> None:
        self.measure_from, self.measure_until = measure_from, measure_until
        self.warmup, self.measured = Window(), Window()
        self.in_flight: dict[int, float] = {}  # connection index -> when its request was sent
        self.connections_opened = 0

    def window(self, at: float) -> Window | None:
        if at < self.measure_from:
            return self.warmup
        return self.measured if at < self.measure_until else None

    def response(self, status: int, headers: dict[str, str], sent: float, done: float) -> None:
        window = self.window(done)
        if window is None:
            return
        window.statuses[status] += 1
        if status == 200:
            window.ok_latencies.append(done - sent)
        elif status in (429, 503):
            window.refused_latencies.append(done - sent)
            window.refusals_without_retry_after += "retry-after" not in headers
        if headers.get("connection", "").lower() == "close":
            window.server_closes += 1

    def error(self, kind: str) -> None:
        window = self.window(time.monotonic())
        if window is not None:
            window.errors[kind] += 1


async def connection_loop(index: int, request: bytes, spec: dict[str, Any], stats: LoadStats) -> None:
    """One client: open (staggered, so 1,000 connections do not arrive in one burst), then request after
    request until the window closes, reopening whenever the server resets or closes the connection."""
    await sleep_until(spec["start_at"] + RAMP_S * index / spec["connections"])
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while time.monotonic() < stats.measure_until:
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", spec["port"]), CONNECT_TIMEOUT_S
                    )
                    stats.connections_opened += 1
                except (OSError, TimeoutError) as exc:
                    stats.error("connect " + error_kind(exc))
                    await asyncio.sleep(0.05)  # a refused connect returns at once: do not spin
                    continue
            assert reader is not None
            sent = time.monotonic()
            stats.in_flight[index] = sent
            try:
                writer.write(request)
                status, headers, _ = await asyncio.wait_for(read_response(reader), spec["request_timeout_s"])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                stats.error(error_kind(exc))
                await close_quietly(writer)
                reader = writer = None
                continue
            finally:
                stats.in_flight.pop(index, None)
            stats.response(status, headers, sent, time.monotonic())
            if headers.get("connection", "").lower() == "close":
                await close_quietly(writer)
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    requests = [Path(file).read_bytes() for file in spec["request_files"]]
    measure_from = spec["start_at"] + spec["warmup_s"]
    stats = LoadStats(measure_from, measure_from + spec["duration_s"])
    tasks = [
        asyncio.create_task(connection_loop(i, requests[i % len(requests)], spec, stats))
        for i in range(spec["connections"])
    ]
    await sleep_until(measure_from)
    cpu_before = time.process_time()
    await sleep_until(stats.measure_until)
    client_cpu_s = time.process_time() - cpu_before
    # Taken before cancelling: a cancelled request leaves in_flight on its way out.
    now = time.monotonic()
    unfinished = [now - sent for sent in stats.in_flight.values()]
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=5)
    return {
        **stats.measured.summary(spec["duration_s"]),
        "connections": spec["connections"],
        "warmup_s": spec["warmup_s"],
        "duration_s": spec["duration_s"],
        "connections_opened": stats.connections_opened,
        "warmup_statuses": {str(s): n for s, n in sorted(stats.warmup.statuses.items())},
        "warmup_connection_errors": dict(stats.warmup.errors),
        "unfinished_at_end": len(unfinished),
        "oldest_unfinished_s": max(unfinished, default=None),
        "client_cpu_percent": 100 * client_cpu_s / spec["duration_s"],
    }


def loadgen_main(spec_file: str) -> None:
    """The child process: run one load spec, print its summary as one JSON line."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    raise_fd_limit()
    print(json.dumps(asyncio.run(run_load(json.loads(Path(spec_file).read_text())))))


# ---------------------------------------------------------------------------------------- server


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the server): 1,000 connections need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_tree(pid: int) -> list[int]:
    """The pid and its descendants (a launcher may run workers), from /proc/<pid>/task/*/children."""
    pids, index = [pid], 0
    while index < len(pids):
        for children in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += [int(child) for child in children.read_text().split()]
        index += 1
    return pids


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            # Fields after the parenthesised command name; utime and stime are the 14th and 15th.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class ManagedServer:
    """The server under test on the server core; restarted (with the reason kept) when a measurement
    leaves it dead or busy."""

    def __init__(self, repository: Path, log_dir: Path) -> None:
        self.repository, self.log_dir = repository, log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.restarts: list[str] = []
        self.command: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.starts}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
        settings = {"SERVE_MODEL_REPOSITORY": str(self.repository), "SERVE_HOST": "127.0.0.1"}
        return {**env, **settings, "SERVE_PORT": str(self.port), **SERVER_SETTINGS}

    def start(self) -> None:
        self.starts += 1
        self.port = free_port()
        self.command = [
            "taskset",
            "-c",
            SERVER_CORE,
            sys.executable,
            "-m",
            "app",
        ]  # reads SERVE_HOST/SERVE_PORT (env below)
        with self.log_path.open("wb") as log:
            # Own session: a Ctrl-C in the terminal reaches only this script, which then stops the server.
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env(), stdout=log, stderr=log, start_new_session=True
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            # Not listening yet, or 503 while the models load.
            url = f"http://127.0.0.1:{self.port}/health/ready"
            with (
                contextlib.suppress(OSError, ValueError, http.client.HTTPException),
                HTTP.open(url, timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; descendants still alive after that are killed by pid."""
        if self.process is None:
            return
        descendants = process_tree(self.pid)[1:] if self.alive else []
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart(self, reason: str) -> None:
        progress(f"restarting the server: {reason}")
        self.restarts.append(reason)
        self.stop()
        self.start()

    def rss_mb(self) -> float:
        return rss_bytes(process_tree(self.pid)) / 2**20

    def cpu_s(self) -> float:
        return cpu_seconds(process_tree(self.pid))

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def wait_idle(server: ManagedServer, timeout_s: float = IDLE_TIMEOUT_S) -> float:
    """Waits until the server uses under 5% of its core for two 0.25 s spans in a row (it finished what
    the last phase left queued); returns how long that took, at most ``timeout_s``."""
    started = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - started < timeout_s and server.alive:
        before = server.cpu_s()
        await asyncio.sleep(0.25)
        quiet = quiet + 1 if server.cpu_s() - before < 0.05 * 0.25 else 0
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------- probes


class LivenessProbe:
    """GET /health/live every ``interval_s`` over one keep-alive connection; the probe's own schedule,
    so a slow answer delays the next probe instead of piling probes up."""

    def __init__(self, port: int, interval_s: float, record_from: float = 0.0) -> None:
        self.port, self.interval_s, self.record_from = port, interval_s, record_from
        self.latencies: list[float] = []
        self.failures = 0
        self._pending_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        request = http_request("GET", "/health/live", self.port)
        reader = writer = None
        next_at = time.monotonic()
        try:
            while True:
                await sleep_until(next_at)
                next_at = max(next_at + self.interval_s, time.monotonic())
                if writer is None:
                    try:
                        reader, writer = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", self.port), CONNECT_TIMEOUT_S
                        )
                    except (OSError, TimeoutError):
                        self._fail()
                        continue
                assert reader is not None
                # No timeout: the probe waits as long as the server makes it; stop() counts a pending one.
                self._pending_since = sent = time.monotonic()
                try:
                    writer.write(request)
                    status, _, _ = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    self._fail()
                    await close_quietly(writer)
                    reader = writer = None
                    continue
                finally:
                    self._pending_since = None
                if sent >= self.record_from:
                    self.latencies.append(time.monotonic() - sent)
                    self.failures += status != 200
        finally:
            if writer is not None:
                writer.close()

    def _fail(self) -> None:
        if time.monotonic() >= self.record_from:
            self.failures += 1

    async def stop(self) -> dict[str, Any]:
        pending = self._pending_since
        if pending is not None and pending >= self.record_from:
            self.latencies.append(time.monotonic() - pending)  # still unanswered: at least this long
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.summary(pending is not None)

    def summary(self, pending_at_end: bool) -> dict[str, Any]:
        # The probes a stall kept from being sent, as a prober on a fixed schedule would have seen them.
        corrected = []
        for latency in self.latencies:
            missed = latency
            while missed > 0:
                corrected.append(missed)
                missed -= self.interval_s
        return {
            "probes": len(self.latencies),
            "failures": self.failures,
            "pending_at_end": pending_at_end,
            "p50_ms": ms(percentile(corrected, 50)),
            "p99_ms": ms(percentile(corrected, 99)),
            "max_ms": ms(max(self.latencies, default=None)),
        }


class RssSampler:
    """The server tree's RSS every ``interval_s``; kills the server past ``cap_mb`` so the machine lives."""

    def __init__(self, server: ManagedServer, interval_s: float, cap_mb: float) -> None:
        self.server, self.interval_s, self.cap_mb = server, interval_s, cap_mb
        self.samples_mb: list[float] = []
        self.capped = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.server.alive:
            rss = self.server.rss_mb()
            self.samples_mb.append(rss)
            if rss > self.cap_mb:
                self.capped = True
                self.server.process.kill()
                return
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.samples_mb


async def rss_median(server: ManagedServer, seconds: float = 0.5) -> float:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.alive:
        samples.append(server.rss_mb())
        await asyncio.sleep(RSS_INTERVAL_S)
    return statistics.median(samples) if samples else 0.0


# ---------------------------------------------------------------------------------------- bodies


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes


def png_base64(pixels: Any, compress_level: int = 6) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=compress_level)
    return base64.b64encode(buffer.getvalue()).decode()


def post_json(name: str, path: str, payload: dict[str, Any]) -> Case:
    return Case(name, "POST", path, json.dumps(payload, separators=(",", ":")).encode())


def overload_cases() -> list[Case]:
    import numpy as np

    digit = png_base64(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    return [
        post_json("predict lenet5-digits", "/predict", {"model": "lenet5-digits", "inputs": digit}),
        post_json(
            "generate gpt-corpus",
            "/generate",
            {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 16, "temperature": 0},
        ),
        post_json(
            "generate seq2seq-dates",
            "/generate",
            {"model": "seq2seq-dates", "input": "3rd of March 2021", "num_beams": 4},
        ),
    ]


def bilstm_token_ids(repository: Path, count: int) -> list[int]:
    """Valid ids (the tokenizer's characters, after its specials) cycled to ``count``."""
    tokenizer = json.loads((repository / "bilstm-order" / "config.json").read_text())["preprocessing"]
    first = len(tokenizer["tokenizer"]["specials"])
    ids = range(first, first + len(tokenizer["tokenizer"]["chars"]))
    return [ids[i % len(ids)] for i in range(count)]


def worst_cases(repository: Path) -> list[Case]:
    import numpy as np

    side, tokens = 4096, 1_800_000
    constant = png_base64(np.full((side, side), 200, np.uint8), compress_level=9)
    # Noise does not compress: the largest PNG of the largest image the server decodes.
    noise = png_base64(np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8), 1)
    shapes = np.round(np.random.default_rng(2).random((256, 3, 32, 32)), 4).tolist()
    v2 = {
        "inputs": [
            {"name": "tokens", "shape": [1, tokens], "datatype": "INT64", "data": None},
            {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [tokens]},
        ]
    }
    v2["inputs"][0]["data"] = bilstm_token_ids(repository, tokens)
    # The largest requests the limits admit: one image of the most pixels, one body of nearly the
    # most JSON bytes (a 2400² noise PNG is ~5.8 MB, ~7.7 MB as base64), 256 V2 rows as JSON.
    largest_image = png_base64(np.full((side, side), 200, np.uint8), compress_level=9)
    largest_body = png_base64(np.random.default_rng(3).integers(0, 256, (2400, 2400), dtype=np.uint8), 1)
    v2_rows = {
        "inputs": [
            {
                "name": "input",
                "shape": [256, 3, 32, 32],
                "datatype": "FP32",
                "data": np.ravel(shapes).tolist(),
            }
        ]
    }
    gpt = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 1024, "temperature": 0}
    return [
        post_json(
            "predict lenet5: 256 x 4096² constant PNG",
            "/predict",
            {"model": "lenet5-digits", "inputs": [constant] * 256},
        ),
        post_json(
            "predict lenet5: one 4096² noise PNG", "/predict", {"model": "lenet5-digits", "inputs": noise}
        ),
        post_json(
            "predict lenet5: one 4096² constant PNG (admitted)",
            "/predict",
            {"model": "lenet5-digits", "inputs": largest_image},
        ),
        post_json(
            "predict lenet5: one 2400² noise PNG (admitted)",
            "/predict",
            {"model": "lenet5-digits", "inputs": largest_body},
        ),
        post_json(
            "predict resnet: 256 items as JSON", "/predict", {"model": "resnet-shapes", "inputs": shapes}
        ),
        post_json("V2 infer resnet: 256 rows as JSON", "/v2/models/resnet-shapes/infer", v2_rows),
        post_json("V2 infer bilstm: 1.8M token ids", "/v2/models/bilstm-order/infer", v2),
        post_json(
            "generate dcgan: 1,000,000 samples",
            "/generate",
            {"model": "dcgan-digits", "num_samples": 1_000_000},
        ),
        post_json("generate dcgan: 64 samples", "/generate", {"model": "dcgan-digits", "num_samples": 64}),
        post_json("generate gpt: 1024 new tokens", "/generate", gpt),
        post_json(
            "generate seq2seq: 16 beams",
            "/generate",
            {"model": "seq2seq-dates", "input": "3rd of March 2021", "num_beams": 16},
        ),
    ]


def copy_models(repository: Path) -> Path:
    """A repository of only the models used here, so the pinned server starts in seconds."""
    for model in MODELS:
        shutil.copytree(ROOT / "models" / model, repository / model)
    return repository


# ---------------------------------------------------------------------------------------- measurements


async def send_one(port: int, case: Case, timeout_s: float) -> tuple[int, bytes]:
    """One request on a fresh connection; the whole body is queued at once and the response read while
    it drains, so a server that answers (413) before reading it all is still heard."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_S)
    try:
        writer.write(http_request(case.method, case.path, port, case.body))
        status, _, body = await asyncio.wait_for(read_response(reader), timeout_s)
        return status, body
    finally:
        await close_quietly(writer)


async def check_cases(server: ManagedServer, cases: list[Case]) -> None:
    """Each overload body answers 200 once alone: a body the server rejects would look like fast refusals."""
    for case in cases:
        status, body = await send_one(server.port, case, 30)
        if status != 200:
            raise RuntimeError(f"{case.name}: {status} {body[:300]!r}")


async def run_loadgen(
    server: ManagedServer,
    request_files: list[Path],
    connections: int,
    warmup_s: float,
    duration_s: float,
    work: Path,
    probe_interval_s: float | None = None,
    rss_every_s: float | None = None,
) -> dict[str, Any]:
    """The load generator in a child on the client core; this process probes /health/live meanwhile
    (from the end of the warm-up) and, for the soak, samples RSS."""
    start_at = time.monotonic() + LOADGEN_START_S
    measure_from = start_at + warmup_s
    spec = {
        "port": server.port,
        "request_files": [str(f) for f in request_files],
        "connections": connections,
        "start_at": start_at,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "request_timeout_s": PHASE_REQUEST_TIMEOUT_S,
    }
    spec_file = work / "loadgen-spec.json"
    spec_file.write_text(json.dumps(spec))
    command = ["taskset", "-c", CLIENT_CORE, sys.executable, str(Path(__file__).resolve()), "--loadgen"]
    child = await asyncio.create_subprocess_exec(
        *command, str(spec_file), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    probe = None
    if probe_interval_s is not None:
        # Connected before the load arrives, so the probe never queues behind 1,000 connects.
        probe = LivenessProbe(server.port, probe_interval_s, record_from=measure_from)
        probe.start()
    rss: list[tuple[float, float]] = []
    try:
        while rss_every_s is not None and time.monotonic() < measure_from + duration_s and server.alive:
            rss.append((time.monotonic() - measure_from, server.rss_mb()))
            await asyncio.sleep(rss_every_s)
        out, err = await asyncio.wait_for(child.communicate(), warmup_s + duration_s + 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        probe_summary = await probe.stop() if probe is not None else None
    if child.returncode != 0:
        raise RuntimeError(f"load generator failed ({child.returncode}): {err.decode()[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    if probe_summary is not None:
        result["live"] = probe_summary
    if rss_every_s is not None:
        result["rss_mb"] = rss
    return result


def write_requests(server: ManagedServer, cases: list[Case], work: Path) -> list[Path]:
    files = []
    for index, case in enumerate(cases):
        file = work / f"request-{server.starts}-{index}.http"
        file.write_bytes(http_request(case.method, case.path, server.port, case.body))
        files.append(file)
    return files


async def measure_overload(
    server: ManagedServer, cases: list[Case], warmup_s: float, duration_s: float, work: Path
) -> list[dict[str, Any]]:
    phases = []
    for case in cases:
        for connections in (LOW_CONNECTIONS, HIGH_CONNECTIONS):
            if not server.alive:
                server.restart(f"exited ({server.process.returncode}) before {case.name} c={connections}")
            files = write_requests(server, [case], work)  # the Host header carries the port
            result = await run_loadgen(
                server, files, connections, warmup_s, duration_s, work, OVERLOAD_PROBE_INTERVAL_S
            )
            result["server_alive_after"] = server.alive
            result["drain_s"] = await wait_idle(server)
            phases.append({"endpoint": case.name, **result})
            live = result["live"]
            progress(
                f"{case.name} c={connections}: {result['ok_per_s']:.1f} ok/s, admitted p99 "
                f"{fmt(result['ok_p99_ms'], '.1f')} ms, statuses {result['statuses']}, "
                f"errors {result['connection_errors']}, live p99 {fmt(live['p99_ms'], '.1f')} ms, "
                f"client CPU {result['client_cpu_percent']:.0f}%"
            )
    for phase in phases:
        if phase["connections"] == HIGH_CONNECTIONS:
            low = next(p for p in phases if p["endpoint"] == phase["endpoint"] and p is not phase)
            phase["ratio_vs_low"] = phase["ok_per_s"] / low["ok_per_s"] if low["ok_per_s"] else None
    return phases


async def warm(server: ManagedServer, cases: list[Case], work: Path) -> None:
    """~2 s of the overload bodies mixed, so RSS reaches its steady state (arenas, caches, batches)."""
    await run_loadgen(server, write_requests(server, cases, work), 6, 0, 2, work)
    await wait_idle(server)


async def measure_worst(
    server: ManagedServer, cases: list[Case], mixed: list[Case], rss_cap_mb: float, work: Path
) -> list[dict[str, Any]]:
    rows = []
    await warm(server, mixed, work)
    for case in cases:
        if not server.alive:
            server.restart(f"exited ({server.process.returncode}) before {case.name}")
            await warm(server, mixed, work)
        rss_before = await rss_median(server)
        probe = LivenessProbe(server.port, WORST_PROBE_INTERVAL_S)
        sampler = RssSampler(server, RSS_INTERVAL_S, rss_cap_mb)
        probe.start()
        sampler.start()
        await asyncio.sleep(0.1)  # the probe is connected and has a few quiet samples
        sent = time.monotonic()
        status: int | None = None
        note, answer = "", b""
        try:
            status, answer = await send_one(server.port, case, WORST_TIMEOUT_S)
        except TimeoutError:
            note = f"no answer in {WORST_TIMEOUT_S:.0f} s"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            note = f"connection {error_kind(exc)}"
        elapsed = time.monotonic() - sent
        await asyncio.sleep(0.3)  # the probe's recovery and the RSS right after the answer
        live = await probe.stop()
        samples = await sampler.stop()
        if sampler.capped:
            note = f"killed at RSS cap {rss_cap_mb:.0f} MB" + (f"; {note}" if note else "")
        rss_after = None
        if server.alive and not note:  # after a timeout the server is still busy: it gets restarted below
            await wait_idle(server)
            rss_after = await rss_median(server)
        row = {
            "request": case.name,
            "body_bytes": len(case.body),
            "status": status,
            "seconds": elapsed,
            "answer": answer_summary(status, answer),
            "answer_head": answer[:200].decode(errors="replace"),
            "live": live,
            "rss_before_mb": rss_before,
            "rss_peak_rise_mb": max(samples, default=rss_before) - rss_before,
            "rss_retained_mb": None if rss_after is None else rss_after - rss_before,
            "note": note,
        }
        rows.append(row)
        progress(
            f"{case.name}: {status} in {elapsed:.2f} s, live p99 {fmt(live['p99_ms'], '.1f')} ms, "
            f"RSS +{row['rss_peak_rise_mb']:.0f} MB {note}"
        )
        if not server.alive:
            server.restart(f"{note or 'exited'} after {case.name}")
            await warm(server, mixed, work)
        elif note:  # still busy with the request it did not answer: the next one needs a quiet server
            server.restart(f"{note} on {case.name}")
            await warm(server, mixed, work)
    return rows


async def measure_soak(
    server: ManagedServer, cases: list[Case], seconds: float, work: Path
) -> dict[str, Any]:
    if not server.alive:
        server.restart("exited before the soak")
    warmup = min(60.0, seconds / 2)
    files = write_requests(server, cases, work)
    result = await run_loadgen(server, files, SOAK_CONNECTIONS, 0, seconds, work, rss_every_s=1.0)
    samples = result["rss_mb"]
    after_warmup = next((rss for t, rss in samples if t >= warmup), None)
    at_end = samples[-1][1] if samples else None
    growth = 100 * (at_end - after_warmup) / after_warmup if after_warmup and at_end else None
    return {
        **result,
        "seconds": seconds,
        "warmup_s": warmup,
        "rss_after_warmup_mb": after_warmup,
        "rss_at_end_mb": at_end,
        "rss_growth_percent": growth,
    }


# ---------------------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def counts(by_kind: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in by_kind.items()) or "0"


def render_overload(phases: list[dict[str, Any]]) -> str:
    header = ["endpoint", "conns", "200/s", "vs 32", "admitted p50 ms", "admitted p99 ms", "responses"]
    header += ["5xx (not 503)", "refusals w/o Retry-After", "connection errors", "oldest unanswered s"]
    header += ["client CPU %", "live p50 / p99 / max ms"]
    rows = []
    for p in phases:
        live = p["live"]
        rows.append(
            [
                p["endpoint"],
                str(p["connections"]),
                f"{p['ok_per_s']:.1f}",
                fmt(p.get("ratio_vs_low"), ".2f"),
                fmt(p["ok_p50_ms"], ".1f"),
                fmt(p["ok_p99_ms"], ".1f"),
                counts(p["statuses"]),
                str(p["errors_5xx"]),
                f"{p['refusals_without_retry_after']} of {p['refusals']}",
                counts(p["connection_errors"]),
                fmt(p["oldest_unfinished_s"], ".1f"),
                f"{p['client_cpu_percent']:.0f}",
                f"{fmt(live['p50_ms'], '.1f')} / {fmt(live['p99_ms'], '.1f')} / {fmt(live['max_ms'], '.1f')}",
            ]
        )
    return markdown_table(header, rows)


def overload_targets(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per endpoint: each target's figure and whether it is met."""
    rows = []
    for endpoint, ratio_target in TARGETS["ratio"].items():
        mine = [p for p in phases if p["endpoint"] == endpoint]
        high = next((p for p in mine if p["connections"] == HIGH_CONNECTIONS), None)
        if high is None:
            continue
        ratio, p99 = high.get("ratio_vs_low"), high["ok_p99_ms"]
        live_p99 = max((p["live"]["p99_ms"] or 0.0 for p in mine), default=None)
        rows.append(
            {
                "endpoint": endpoint,
                "ratio": ratio,
                "ratio_target": ratio_target,
                "ratio_ok": ratio is not None and ratio >= ratio_target,
                "admitted_p99_ms": p99,
                "admitted_p99_ok": p99 is not None and p99 <= TARGETS["admitted_p99_ms"],
                "errors_5xx": sum(p["errors_5xx"] for p in mine),
                "refusals_without_retry_after": sum(p["refusals_without_retry_after"] for p in mine),
                "live_p99_ms": live_p99,
                "live_p99_ok": live_p99 is not None and live_p99 <= TARGETS["live_p99_ms"],
            }
        )
    return rows


def render_targets(rows: list[dict[str, Any]]) -> str:
    header = [
        "endpoint",
        "200/s at 1000 ÷ at 32",
        f"admitted p99 at 1000 (≤ {TARGETS['admitted_p99_ms']:.0f} ms)",
    ]
    header += [
        "5xx (0)",
        "refusals w/o Retry-After (0)",
        f"worst live p99 (≤ {TARGETS['live_p99_ms']:.0f} ms)",
    ]
    table = [
        [
            r["endpoint"],
            f"{fmt(r['ratio'], '.2f')} (≥ {r['ratio_target']:.2f}){mark(r['ratio_ok'])}",
            fmt(r["admitted_p99_ms"], ".1f") + mark(r["admitted_p99_ok"]),
            f"{r['errors_5xx']}{mark(r['errors_5xx'] == 0)}",
            f"{r['refusals_without_retry_after']}{mark(r['refusals_without_retry_after'] == 0)}",
            fmt(r["live_p99_ms"], ".1f") + mark(r["live_p99_ok"]),
        ]
        for r in rows
    ]
    return markdown_table(header, table)


def answer_summary(status: int | None, answer: bytes) -> str:
    """What the server said, in a few words: a refusal's error message, a generation's token count."""
    try:
        body = json.loads(answer)
    except ValueError:
        return answer[:80].decode(errors="replace")
    if not isinstance(body, dict):
        return ""
    if status != 200:
        return str(body.get("error", ""))[:100]
    usage = body.get("usage") or {}
    if "completion_tokens" in usage:
        return f"{usage['completion_tokens']} tokens, {body.get('finish_reason', '?')}"
    return ""


def render_worst(rows: list[dict[str, Any]]) -> str:
    header = ["request", "body MB", "status", "time s", f"live p99 ms (≤ {TARGETS['live_p99_ms']:.0f})"]
    header += ["live max ms", "RSS before MB", f"RSS peak rise MB (≤ {TARGETS['rss_rise_mb']:.0f})"]
    header += ["RSS retained MB", "answer", "note"]
    table = []
    for r in rows:
        live = r["live"]
        live_ok = None if live["p99_ms"] is None else live["p99_ms"] <= TARGETS["live_p99_ms"]
        table.append(
            [
                r["request"],
                f"{r['body_bytes'] / 1e6:.2f}",
                str(r["status"] or "—"),
                f"{r['seconds']:.2f}",
                fmt(live["p99_ms"], ".1f") + mark(live_ok),
                fmt(live["max_ms"], ".1f"),
                f"{r['rss_before_mb']:.0f}",
                f"{r['rss_peak_rise_mb']:.0f}" + mark(r["rss_peak_rise_mb"] <= TARGETS["rss_rise_mb"]),
                fmt(r["rss_retained_mb"], ".0f"),
                r["answer"].replace("|", "/"),
                r["note"],
            ]
        )
    return markdown_table(header, table)


def render_soak(soak: dict[str, Any]) -> str:
    growth = soak["rss_growth_percent"]
    header = ["seconds", "conns", "200/s", "responses", "5xx (not 503)", "connection errors"]
    header += ["RSS after warm-up MB", "RSS at end MB", f"growth % (< {TARGETS['soak_growth_percent']:.0f})"]
    row = [
        f"{soak['seconds']:.0f} (warm-up {soak['warmup_s']:.0f})",
        str(soak["connections"]),
        f"{soak['ok_per_s']:.1f}",
        counts(soak["statuses"]),
        str(soak["errors_5xx"]),
        counts(soak["connection_errors"]),
        fmt(soak["rss_after_warmup_mb"], ".0f"),
        fmt(soak["rss_at_end_mb"], ".0f"),
        fmt(growth, ".2f") + mark(None if growth is None else growth < TARGETS["soak_growth_percent"]),
    ]
    return markdown_table(header, [row])


def render_report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = [
        f"# Overload benchmark ({'quick' if meta['quick'] else 'full'}, commit {meta['commit']}"
        f"{' dirty' if meta['dirty'] else ''}, {meta['date']})",
        "",
        f"{meta['cpu_count']} cores, Python {meta['python']}, onnxruntime {meta['onnxruntime']}, "
        f"load generator on uvloop {meta['uvloop'] or 'no (asyncio)'}, RLIMIT_NOFILE {meta['nofile']}, "
        f"load average before {meta['loadavg_before'][0]:.2f}. Server: `{' '.join(meta['server_command'])}` "
        f"with {' '.join(f'{k}={v}' for k, v in meta['server_settings'].items())}; load generator and "
        f"probes on core {CLIENT_CORE}.",
    ]
    if "overload" in results:
        parts += [
            "",
            f"## Overload ({meta['warmup_s']:g} s warm-up + {meta['duration_s']:g} s per phase, "
            f"/health/live every {1000 * OVERLOAD_PROBE_INTERVAL_S:.0f} ms)",
            "",
            render_overload(results["overload"]),
            "",
            render_targets(results["overload_targets"]),
        ]
    if "worst" in results:
        parts += [
            "",
            f"## Worst single requests (alone; /health/live and RSS every "
            f"{1000 * WORST_PROBE_INTERVAL_S:.0f} ms; {WORST_TIMEOUT_S:.0f} s client timeout)",
            "",
            render_worst(results["worst"]),
        ]
    if "soak" in results:
        parts += ["", f"## Soak ({SOAK_CONNECTIONS} connections, the three bodies mixed)", ""]
        parts.append(render_soak(results["soak"]))
    if results.get("server_restarts"):
        parts += ["", "Server restarts: " + "; ".join(results["server_restarts"])]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------- main


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or done.stderr).strip()


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(args: argparse.Namespace, server: ManagedServer, nofile: int) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
        "dirty": bool(command_output(["git", "status", "--porcelain"])),
        "quick": args.quick,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "connections": [LOW_CONNECTIONS, HIGH_CONNECTIONS],
        "soak_s": args.soak,
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "server_command": server.command,
        "server_settings": SERVER_SETTINGS,
        "rss_cap_mb": args.rss_cap_mb,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "onnxruntime": version_of("onnxruntime"),
        "uvloop": version_of("uvloop"),
        "nofile": nofile,
        "loadavg_before": list(os.getloadavg()),
    }


async def run_all(args: argparse.Namespace, server: ManagedServer, work: Path, nofile: int) -> dict[str, Any]:
    mixed = overload_cases()
    await check_cases(server, mixed)
    results: dict[str, Any] = {"meta": metadata(args, server, nofile)}
    if "overload" in args.sections:
        flooded = [case for case in mixed if args.only in case.name]
        results["overload"] = await measure_overload(server, flooded, args.warmup, args.duration, work)
        results["overload_targets"] = overload_targets(results["overload"])
    if "worst" in args.sections:
        progress("building the worst requests' bodies")
        worst = worst_cases(server.repository)
        results["worst"] = await measure_worst(server, worst, mixed, args.rss_cap_mb, work)
    if args.soak:
        results["soak"] = await measure_soak(server, mixed, args.soak, work)
    results["meta"]["loadavg_after"] = list(os.getloadavg())
    results["server_restarts"] = server.restarts
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s warm-up + 3 s phases (a smoke run)")
    parser.add_argument(
        "--duration", type=float, help="seconds per measured phase (default 10; 3 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up per phase (default 2; 1 with --quick)"
    )
    parser.add_argument(
        "--soak", type=float, default=0, metavar="SECONDS", help="also soak this long (0: no)"
    )
    parser.add_argument(
        "--sections",
        nargs="*",
        choices=("overload", "worst"),
        default=["overload", "worst"],
        help="which sections run (default both; none with --soak: only the soak)",
    )
    parser.add_argument("--rss-cap-mb", type=float, default=6144, help="kill the server past this RSS")
    parser.add_argument("--only", default="", help="flood only the endpoints whose name contains this")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SERVE_X=V",
        help="a server setting for this run (repeatable), e.g. for an A/B of one setting",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where overload_bench.md/.json go")
    parser.add_argument("--loadgen", metavar="SPEC", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if args.warmup < RAMP_S:
        parser.error(f"--warmup must be at least {RAMP_S:g} s (the connections open during it)")
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("SERVE_"):
            parser.error(f"--set takes SERVE_NAME=VALUE; got {item!r}")
        SERVER_SETTINGS[name] = value
    return args


def main() -> None:
    args = parse_args()
    if args.loadgen:
        loadgen_main(args.loadgen)
        return
    if shutil.which("taskset") is None or not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("overload_bench: needs taskset and cores 0 (client) and 1 (server)")
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this process probes: the client's core
    nofile = raise_fd_limit()
    # SIGTERM unwinds like Ctrl-C, so the finally block stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as tmp:
        work = Path(tmp)
        server = ManagedServer(copy_models(work / "models"), work)
        try:
            server.start()
            results = asyncio.run(run_all(args, server, work, nofile))
        except BaseException:
            if server.process is not None:
                progress(f"server log tail:\n{server.log_tail()}")
            raise
        finally:
            server.stop()
    report = render_report(results)
    print(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "overload_bench.md").write_text(report)
    (args.out_dir / "overload_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    progress(f"wrote {args.out_dir / 'overload_bench.md'} and .json")


if __name__ == "__main__":
    main()
