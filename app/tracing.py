"""OpenTelemetry traces of the inference requests, optional (the ``otel`` extra) and off by default.

With ``SERVE_OTEL_ENDPOINT`` unset nothing here imports OpenTelemetry and every call is a no-op:
:func:`span` returns one shared ``nullcontext``, :func:`enabled` is false, :func:`current_span` is
``None``. Set, :func:`setup` (the app's start-up) installs a tracer provider that exports over OTLP/HTTP
(``BatchSpanProcessor`` + ``OTLPSpanExporter``); tests install their own with :func:`configure`.

One trace per inference request: the front door's root span (``POST /predict``: method, route,
status, model, version, request id; a client's W3C ``traceparent`` is its parent) with the children
``parse`` (the body), ``queue`` (per batcher call: from enqueue to its batch's start, recorded with
explicit times), ``serialize`` (the JSON answer) and ``response`` (sending it). Each batch the runner
executes is a span of its own trace (``batch``: model, graph, rows, requests, session) with a link to
every request span it served: a batch serves many requests, so it cannot be the child of one.

The provider is this module's own, not OpenTelemetry's global one: FastAPI's native telemetry, which
reads the global provider, stays inert.
"""

from __future__ import annotations

import importlib
import time
from contextlib import nullcontext
from typing import Any

INSTALL_HINT = "pip install -e '.[otel]'"
TRACES_PATH = "/v1/traces"

_NULL = nullcontext()
_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_owned: Any = None  # the provider setup() made (shut down by shutdown()); a configure()d one is not ours
_trace: Any = None  # the opentelemetry.trace module, imported once tracing is on
_propagator: Any = None
_context: Any = None  # opentelemetry.context


class TracingUnavailable(RuntimeError):
    """``SERVE_OTEL_ENDPOINT`` is set but the OpenTelemetry packages are not installed."""


def enabled() -> bool:
    return _tracer is not None


def span(name: str, attributes: dict[str, Any] | None = None):
    """A child span of the current one as a context manager; the shared no-op when tracing is off or
    the current request is not sampled (or there is none)."""
    if _tracer is None or not _trace.get_current_span().is_recording():
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def current_span() -> Any:
    """The current span when tracing is on and one is recording (what a batcher call links to)."""
    if _tracer is None:
        return None
    current = _trace.get_current_span()
    return current if current.is_recording() else None


# ------------------------------------------------------------------------------------------ set-up


def exporter_endpoint(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (``http://collector:4318``)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def require(settings: Any) -> None:
    """Fail early, with the fix, when tracing is asked for and its packages are missing."""
    if settings.otel_endpoint is None:
        return
    try:
        for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
            importlib.import_module(module)
    except ImportError as exc:
        raise TracingUnavailable(
            f"SERVE_OTEL_ENDPOINT is set but OpenTelemetry is not installed ({exc.name} is missing): "
            f"{INSTALL_HINT}"
        ) from None


def setup(settings: Any) -> None:
    """Start-up: export to ``settings.otel_endpoint`` when it is set; otherwise leave things as they
    are (off, or a provider a test configured)."""
    global _owned
    if settings.otel_endpoint is None or _owned is not None:
        return
    require(settings)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        sampler=sampler(settings.otel_sample_ratio),
        resource=Resource.create({"service.name": settings.otel_service_name}),
        shutdown_on_exit=False,
    )
    exporter = OTLPSpanExporter(endpoint=exporter_endpoint(settings.otel_endpoint))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    configure(provider)
    _owned = provider


def sampler(ratio: float) -> Any:
    """A client's sampled ``traceparent`` is followed; a new trace is sampled with probability
    ``ratio``; a batch span is sampled when a request it serves is (it links only to sampled ones)."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    class LinkedOrRatio(Sampler):
        def __init__(self) -> None:
            self.ratio = TraceIdRatioBased(ratio)

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, **kw):
            if links and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, **kw)

        def get_description(self) -> str:
            return f"LinkedOrRatio({ratio})"

    return ParentBased(root=LinkedOrRatio())


def configure(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``), or stop tracing (``None``). The test hook;
    a provider given here is not shut down by :func:`shutdown`."""
    global _tracer, _trace, _propagator, _context
    if provider is None:
        _tracer = None
        return
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from app import __version__

    _trace, _context, _propagator = trace, context, TraceContextTextMapPropagator()
    _tracer = provider.get_tracer("deepserve", __version__)


def shutdown() -> None:
    """Shut-down: flush and stop the provider :func:`setup` made."""
    global _owned, _tracer
    if _owned is None:
        return
    provider, _owned, _tracer = _owned, None, None
    provider.shutdown()


# ------------------------------------------------------------------------------------------ requests


def start_request(method: str, route: str, path: str, request_id: str, headers: list[tuple[bytes, bytes]]):
    """The root span of an inference request, made current until :func:`end_request`. Its parent is
    the client's ``traceparent``, when it sent a valid one."""
    carrier = {}
    for key, value in headers:
        if key in (b"traceparent", b"tracestate"):
            carrier[key.decode()] = value.decode("latin-1")
    parent = _propagator.extract(carrier) if carrier else None
    root = _tracer.start_span(
        f"{method} {route}",
        context=parent,
        kind=_trace.SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "http.route": route,
            "url.path": path[:256],
            "serve.request_id": request_id,
        },
    )
    token = _context.attach(_trace.set_span_in_context(root, parent))
    return root, token


def end_request(handle: Any, status: int, model: str, version: Any) -> None:
    root, token = handle
    root.set_attribute("http.response.status_code", status)
    if model:
        root.set_attribute("serve.model", model)
        if version is not None:
            root.set_attribute("serve.model.version", str(version))
    if status >= 500:
        root.set_status(_trace.StatusCode.ERROR)
    root.end()
    _context.detach(token)


# ------------------------------------------------------------------------------------------ batches


def start_batch(
    model: str,
    graph: str,
    session: str,
    provider: str,
    requests: list[tuple[Any, float]],
    rows: int,
    started: float,
) -> Any:
    """The span of one batch, linked to the span of every traced request it serves, and each such
    request's ``queue`` span (from its enqueue to ``started``; ``perf_counter`` times). ``requests``:
    (the request's span or None, its enqueue time). None when no request is traced."""
    traced = [(owner, enqueued) for owner, enqueued in requests if owner is not None]
    if _tracer is None or not traced:
        return None
    offset = time.time_ns() - time.perf_counter_ns()
    started_ns = int(started * 1e9) + offset
    for owner, enqueued in traced:
        queue = _tracer.start_span(
            "queue",
            context=_trace.set_span_in_context(owner),
            start_time=int(enqueued * 1e9) + offset,
            attributes={"serve.model": model, "serve.graph": graph},
        )
        queue.end(end_time=started_ns)
    links = [_trace.Link(owner.get_span_context()) for owner, _ in traced]
    return _tracer.start_span(
        "batch",
        context=_trace.set_span_in_context(_trace.INVALID_SPAN),  # a root: its own trace
        links=links,
        start_time=started_ns,
        attributes={
            "serve.model": model,
            "serve.graph": graph,
            "serve.batch.rows": rows,
            "serve.batch.requests": len(requests),
            "serve.session": session,
            "serve.session.provider": provider,
        },
    )


def end_batch(batch: Any, failed: bool) -> None:
    if failed:
        batch.set_status(_trace.StatusCode.ERROR)
    batch.end()
