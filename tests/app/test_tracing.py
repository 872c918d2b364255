"""OpenTelemetry traces (app/tracing.py) from a real server: one trace per inference request (a root
span with parse, queue, serialize and response children), a span per executed batch linked to every
request it served, the client's traceparent honoured, spans exported over real OTLP/HTTP when
SERVE_OTEL_ENDPOINT is set, and with tracing off no OpenTelemetry SDK in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models, set_batching

ROOT = Path(__file__).resolve().parents[2]
MLP = {"model": "mlp-digits", "inputs": np.zeros((2, 64)).tolist()}
CONCURRENT = 8


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory) -> Iterator[LiveServer]:
    root = copy_models(tmp_path_factory.mktemp("models"), ("mlp-digits",))
    # One instance: while one batch runs, the requests behind it queue and leave together.
    set_batching(root, "mlp-digits", count=1, max_batch_size=64)
    with LiveServer(Settings(model_repository=root)) as live:
        yield live


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.configure(None)
        provider.shutdown()


def finished(exporter: InMemorySpanExporter, ids: set[str], timeout_s: float = 10.0) -> list:
    """The finished spans once the root span of every request in ``ids`` has ended (a root ends just
    after its answer is sent, so the client can be a moment ahead)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = exporter.get_finished_spans()
        seen = {s.attributes.get("serve.request_id") for s in done}  # root spans only carry it
        if ids <= seen or time.monotonic() > deadline:
            return list(done)
        time.sleep(0.02)


def burst(url: str, ids: list[str]) -> None:
    """The requests at once (a barrier releases them together), each with its X-Request-Id."""
    barrier = threading.Barrier(len(ids))

    def one(request_id: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            c.get("/health/live")  # connect first, so the barrier releases requests, not handshakes
            barrier.wait()
            response = c.post("/predict", json=MLP, headers={"x-request-id": request_id})
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == request_id

    with ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(one, ids))


def test_a_trace_per_request_and_batch_spans_linked_to_the_requests_they_served(traced_server, spans):
    # Up to five bursts until one batch served more than one request (on a loaded machine the first
    # request of a burst may run alone; the ones behind it then share the next batch).
    for attempt in range(5):
        spans.clear()
        ids = [f"burst{attempt}-{i}" for i in range(CONCURRENT)]
        burst(traced_server.url, ids)
        done = finished(spans, set(ids))
        batches = [s for s in done if s.name == "batch"]
        if any(len(b.links) > 1 for b in batches):
            break
    else:
        pytest.fail(f"no batch served more than one request: {[len(b.links) for b in batches]}")

    roots = {s.attributes["serve.request_id"]: s for s in done if s.name == "POST /predict"}
    assert sorted(roots) == sorted(ids)  # one root span per request
    by_id = {s.context.span_id: s for s in done}
    for request_id, root in roots.items():
        assert root.parent is None
        assert dict(root.attributes) == {
            "http.request.method": "POST",
            "http.route": "/predict",
            "url.path": "/predict",
            "serve.request_id": request_id,
            "http.response.status_code": 200,
            "serve.model": "mlp-digits",
            "serve.model.version": "1",
        }
        children = [s for s in done if s.parent is not None and s.parent.span_id == root.context.span_id]
        assert sorted(s.name for s in children) == ["parse", "queue", "response", "serialize"], request_id
        for child in children:
            assert child.context.trace_id == root.context.trace_id
            assert root.start_time <= child.start_time <= child.end_time <= root.end_time, child.name
    # Every request's batch links to it; the queue span ends where that batch starts.
    root_ids = {root.context.span_id for root in roots.values()}
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(root_ids)  # each request served by exactly one batch
    for batch in batches:
        assert batch.parent is None  # a batch has its own trace: it serves several
        assert batch.attributes["serve.model"] == "mlp-digits"
        assert batch.attributes["serve.graph"] == "model.onnx"
        assert batch.attributes["serve.session"] == "model.onnx#0"
        assert batch.attributes["serve.batch.requests"] == len(batch.links)
        assert batch.attributes["serve.batch.rows"] == 2 * len(batch.links)
        for link in batch.links:
            root = by_id[link.context.span_id]
            assert link.context.trace_id == root.context.trace_id
            (queue,) = [s for s in done if s.name == "queue" and s.parent.span_id == root.context.span_id]
            assert queue.end_time == batch.start_time
            assert root.start_time <= queue.start_time <= queue.end_time


def test_the_clients_traceparent_is_the_parent_and_v2_infer_is_traced(traced_server, spans):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    with traced_server.client() as c:
        response = c.post(
            "/v2/models/mlp-digits/versions/1/infer",
            json=body,
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "x-request-id": "v2-traced"},
        )
        assert response.status_code == 200, response.text
        assert c.post("/predict", json={"model": "mlp-digits", "inputs": [1.0]}).status_code == 422
        assert c.get("/v2/models/mlp-digits").status_code == 200  # metadata: not an inference request
    done = finished(spans, {"v2-traced"})
    (root,) = [s for s in done if s.attributes.get("serve.request_id") == "v2-traced"]
    assert root.name == "POST /v2/models/{name}/versions/{version}/infer"
    assert f"{root.context.trace_id:032x}" == trace_id
    assert root.parent is not None and f"{root.parent.span_id:016x}" == parent_id and root.parent.is_remote
    assert root.attributes["serve.model"] == "mlp-digits" and root.attributes["serve.model.version"] == "1"
    children = sorted(
        s.name for s in done if s.parent is not None and s.parent.span_id == root.context.span_id
    )
    assert children == ["parse", "queue", "response", "serialize"]
    # The refused /predict is traced too, with its status; the metadata GET is not.
    deadline = time.monotonic() + 10
    while not any(s.name == "POST /predict" for s in spans.get_finished_spans()):
        assert time.monotonic() < deadline, "the refused request's root span never ended"
        time.sleep(0.02)
    roots = [s for s in spans.get_finished_spans() if "http.route" in s.attributes]
    refused = [s for s in roots if s.name == "POST /predict"]
    assert [s.attributes["http.response.status_code"] for s in refused] == [422]
    assert len(roots) == 2  # the V2 infer and the refused /predict


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps every POST's path, content type and body."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set(tmp_path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    root = copy_models(tmp_path / "models", ("mlp-digits",))
    endpoint = f"http://127.0.0.1:{collector.server_port}"
    settings = Settings(model_repository=root, otel_endpoint=endpoint, otel_service_name="deepserve-test")
    try:
        with LiveServer(settings) as live, live.client() as c:
            assert tracing.enabled()
            response = c.post("/predict", json=MLP, headers={"x-request-id": "exported"})
            assert response.status_code == 200
        assert not tracing.enabled()  # the app's shut-down flushed and stopped its provider
    finally:
        collector.shutdown()
    names, services = set(), set()
    for path, content_type, body in Collector.received:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                names.update(span.name for span in scope_spans.spans)
    assert services == {"deepserve-test"}
    assert {"POST /predict", "parse", "queue", "batch", "serialize", "response"} <= names


OFF = """
import json, sys
import httpx
from app import tracing
from app.settings import Settings
from tests.app.conftest import LiveServer
with LiveServer(Settings(model_repository=sys.argv[1])) as live, live.client() as c:
    assert c.post("/predict", json={"model": "mlp-digits", "inputs": [[0.0] * 64]}).status_code == 200
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
print(json.dumps({"enabled": tracing.enabled(), "loaded": loaded}))
"""


def test_with_tracing_off_no_opentelemetry_sdk_is_imported(tmp_path) -> None:
    """FastAPI itself imports opentelemetry's API (its native telemetry), so the API is in every server
    process; app/tracing.py adds nothing of OpenTelemetry until tracing is on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("SERVE_")}
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, app.tracing; print([m for m in sys.modules if 'opentelemetry' in m])",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert alone.returncode == 0 and alone.stdout.strip() == "[]", alone.stdout + alone.stderr
    root = copy_models(tmp_path / "models", ("mlp-digits",))
    served = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OFF), str(root)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert json.loads(served.stdout.strip().splitlines()[-1]) == {"enabled": False, "loaded": []}


BLOCKED = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
import runpy
runpy.run_module("app", run_name="__main__")
"""


def test_tracing_on_without_the_extra_fails_at_start_up_naming_the_install(tmp_path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SERVE_MODEL_REPOSITORY": str(tmp_path),
        "SERVE_OTEL_ENDPOINT": "http://127.0.0.1:4318",
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: SERVE_OTEL_ENDPOINT is set but OpenTelemetry is not installed "
        "(opentelemetry.sdk is missing): pip install -e '.[otel]'"
    )
    assert "Traceback" not in result.stderr


def test_the_sampler_keeps_a_batch_that_serves_a_sampled_request() -> None:
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    never = tracing.sampler(0.0)  # new traces: none recorded
    sampled = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(3, 4, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    assert never.should_sample(None, 5, "POST /predict").decision == Decision.DROP
    assert never.should_sample(None, 5, "batch", links=[Link(unsampled)]).decision == Decision.DROP
    linked = never.should_sample(None, 5, "batch", links=[Link(unsampled), Link(sampled)])
    assert linked.decision == Decision.RECORD_AND_SAMPLE
    assert tracing.sampler(1.0).should_sample(None, 5, "POST /predict").decision == Decision.RECORD_AND_SAMPLE
