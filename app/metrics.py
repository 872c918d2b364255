"""Every Prometheus metric of the server, in one place (prometheus-client, default registry).

Base units throughout (seconds). The ``model`` label only ever carries names of models in the
repository, never a raw name from a request, so a client cannot blow up the label cardinality.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets from 0.5 ms to 10 s: CPU inference of the zoo sits between 0.1 and 50 ms.
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "serve_requests_total",
    "Requests answered, by model, endpoint and HTTP status.",
    ["model", "endpoint", "status"],
)
REQUEST_LATENCY = Histogram(
    "serve_request_duration_seconds",
    "End-to-end handling time of a request, from routing to response.",
    ["model", "endpoint"],
    buckets=_LATENCY,
)
QUEUE_TIME = Histogram(
    "serve_queue_duration_seconds",
    "Time a request waited in its model's batch queue before its batch started.",
    ["model"],
    buckets=_LATENCY,
)
COMPUTE_TIME = Histogram(
    "serve_compute_duration_seconds",
    "onnxruntime time of one batch (feeds assembled to outputs split).",
    ["model"],
    buckets=_LATENCY,
)
BATCH_SIZE = Histogram(
    "serve_batch_size",
    "Rows per executed batch.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_DEPTH = Gauge("serve_queue_depth", "Requests waiting in the model's batch queue.", ["model"])
IN_FLIGHT = Gauge("serve_batches_in_flight", "Batches executing on the model's instances.", ["model"])
# Adaptive batching (max_queue_delay_ms "auto", app/batch_policy.py) only.
BATCH_HOLD = Gauge(
    "serve_batch_hold_seconds",
    "Adaptive batching: the hold last chosen, from the oldest request's arrival to the planned release.",
    ["model"],
)
BATCH_COST = Gauge(
    "serve_batch_cost_seconds",
    "Adaptive batching: the learned batch cost, fixed seconds per batch (term=batch) and per row (term=row).",
    ["model", "term"],
)
REJECTED = Counter(
    "serve_rejected_requests_total",
    "Requests refused before or instead of inference, by reason.",
    ["model", "reason"],
)
LOAD_TIME = Gauge("serve_model_load_seconds", "Time to load, verify and warm up the model.", ["model"])
MODEL_STATE = Gauge(
    "serve_model_state", "1 for the model's current state (ready or failed), 0 otherwise.", ["model", "state"]
)
PROVIDER = Gauge(
    "serve_model_provider_info",
    "1 for the onnxruntime execution provider each model actually runs on.",
    ["model", "provider"],
)

# ------------------------------------------------------------------------------------------ generation

GEN_TOKENS = Counter("serve_generated_tokens_total", "Tokens generated.", ["model"])
GEN_TTFT = Histogram(
    "serve_time_to_first_token_seconds",
    "From a generation's arrival to its first token.",
    ["model"],
    buckets=_LATENCY,
)
GEN_TIME_PER_TOKEN = Histogram(
    "serve_time_per_output_token_seconds",
    "Mean time between a generation's tokens after the first.",
    ["model"],
    buckets=_LATENCY,
)
GEN_ACTIVE = Gauge("serve_generation_active_sequences", "Sequences in the decode loop.", ["model"])
GEN_QUEUED = Gauge(
    "serve_generation_queued_sequences", "Sequences waiting to join the decode loop.", ["model"]
)
GEN_CACHED_TOKENS = Gauge("serve_generation_cached_tokens", "Tokens held in active KV caches.", ["model"])
GEN_DECODE_BATCH = Histogram(
    "serve_generation_decode_batch_size",
    "Sequences per decode step.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
GEN_STEP_TIME = Histogram(
    "serve_generation_step_seconds",
    "Time of one prefill or decode step.",
    ["model", "phase"],
    buckets=_LATENCY,
)
GEN_FINISHED = Counter(
    "serve_generation_finished_total", "Generations ended, by finish reason.", ["model", "reason"]
)

# ------------------------------------------------------------------------------------------ model control

MODEL_LOADS = Counter(
    "serve_model_loads_total",
    "Model version loads (start-up, poll, control API), by result: loaded or failed.",
    ["model", "result"],
)
MODEL_UNLOADS = Counter(
    "serve_model_unloads_total",
    "Model versions unloaded (replaced, removed or unloaded by request).",
    ["model"],
)
MODEL_VERSION_FAILED = Gauge(
    "serve_model_version_failed",
    "1 while the model's latest load attempt of a version failed (the serving version, if any, stays).",
    ["model", "version"],
)
