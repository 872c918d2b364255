"""Server settings: environment variables with the ``SERVE_`` prefix (pydantic-settings).

Per-model batching and instance settings come from each model's config.json; the ``SERVE_*`` values
below, when set, override them for every model (handy for benchmarks: ``SERVE_MAX_BATCH_SIZE=1``
turns batching off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="ignore")

    model_repository: Path = Path("models")
    # Refuse a model whose graphs do not match the sha256 recorded in its report.json.
    verify_sha256: bool = True
    # Run one batch through every graph at load, so the first request does not pay for lazy init.
    warmup: bool = True

    # Model control (app/registry.py): "none" loads the repository once at start-up; "poll" re-scans it
    # every poll_interval_s and loads new or changed versions, unloads removed ones; "explicit" changes
    # nothing on its own: POST /v2/repository/models/{name}/load|unload does (admin token required).
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    poll_interval_s: float = Field(default=5.0, gt=0)
    # Explicit mode: the models loaded at start-up, comma-separated; "*" every model, "" none.
    startup_models: str = "*"
    # A replaced or removed version stops once its requests in flight have finished, or after this.
    unload_timeout_s: float = Field(default=30.0, gt=0)
    # The model control API (repository index, load, unload) answers only requests that send
    # "Authorization: Bearer <admin_token>"; without a token configured it is off (403).
    admin_token: str | None = Field(default=None, min_length=16)

    # Overrides of every model's config.json (None = use the model's own value).
    device: Literal["auto", "cpu", "cuda"] | None = None
    instances: int | None = Field(default=None, gt=0)
    intra_op_threads: int | None = Field(default=None, gt=0)
    max_batch_size: int | None = Field(default=None, gt=0)
    max_queue_delay_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | Literal["auto"] | None = None
    latency_target_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # with "auto"
    split_across_instances: bool | None = None
    max_queue_size: int | None = Field(default=None, gt=0)
    timeout_ms: float | None = Field(default=None, gt=0)

    # POST /predict and /v2/.../infer skip FastAPI's layers (app/frontend.py); false routes them through
    # FastAPI like every other endpoint (same handlers, ~2x slower per request on one core).
    direct_dispatch: bool = True

    # Text generation (the continuous-batching decode loop of each language model).
    max_active_sequences: int = Field(default=32, gt=0)  # sequences advanced together per step
    max_queued_sequences: int = Field(default=64, gt=0)  # waiting to join; beyond this, 429
    max_cached_tokens: int = Field(default=32 * 128, gt=0)  # KV-cache tokens over all active sequences
    max_new_tokens: int = Field(default=1024, gt=0)  # the most a request may ask for
    max_stop_strings: int = Field(default=8, gt=0)
    max_stop_length: int = Field(default=64, gt=0)  # characters per stop string
    # Image generators: samples, latent rows or interpolation steps per request.
    max_images: int = Field(default=64, gt=0)
    max_beams: int = Field(default=16, gt=0)  # seq2seq beam width
    # Diffusion models: DDIM steps per request (each step is one denoiser call per image, two with
    # classifier-free guidance); also bounded by the model's own timesteps.
    max_diffusion_steps: int = Field(default=250, gt=0)
    # ... and denoiser rows per request in all (images x steps, guided images twice): the steps and the
    # images are bounded one by one, but 64 guided images x 250 steps would be 32,000 rows, ~10 minutes
    # of one core here (~55 rows/s) holding the model's batcher. 4,096: ~75 s; the defaults are 400.
    max_diffusion_rows: int = Field(default=4096, gt=0)
    # Seq2seq searches running at once (each holds a worker thread between its batched graph calls);
    # also the model's admission bound, so a search never waits for a thread.
    max_concurrent_searches: int = Field(default=16, gt=0)
    # The OpenAI-compatible API (/v1): choices per request (n times the prompts of a list), prompts
    # per request, and when set, the key every /v1 request must send as "Authorization: Bearer <key>".
    max_choices: int = Field(default=16, gt=0)
    max_prompts: int = Field(default=16, gt=0)
    max_messages: int = Field(default=256, gt=0)
    # Log-probabilities one /v1 request may return: choices x max tokens x (alternatives + 1).
    max_logprob_values: int = Field(default=32768, gt=0)
    api_key: str | None = None

    # Admission. Every request is admitted or refused before its body is parsed: per model, at most
    # batching.max_queue_size requests in progress (language models: max_active_sequences +
    # max_queued_sequences; seq2seq: max_concurrent_searches), beyond that 429; and at most this many
    # requests in progress over the whole server, beyond that 503. Both answer with Retry-After.
    max_concurrent_requests: int = Field(default=2048, gt=0)
    retry_after_s: int = Field(default=1, gt=0)
    # A request that finds its model at the bound waits (unparsed, FIFO) this long for a slot; it
    # counts towards its latency. Without one it is refused, and its 429 is sent admission_hold_s
    # after it arrived, so that clients that retry at once cannot flood the event loop with refusals
    # (app/admission.py). 0 and 0: refuse at once.
    admission_wait_s: float = Field(default=0.1, ge=0)
    admission_hold_s: float = Field(default=1.0, ge=0)
    max_waiting_per_model: int = Field(default=1024, ge=0)
    max_waiting_bytes: int = Field(default=64 * 1024 * 1024, ge=0)  # bodies held by waiters, all models

    # Request limits, each checked before the work it bounds.
    max_items_per_request: int = Field(default=256, gt=0)  # /predict items, V2 rows
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)  # any body (V2 binary tensors)
    # JSON is parsed in one call that holds the interpreter (~3 ms per MiB here): this bound keeps the
    # longest such pause, and the memory a parsed body takes, small. Large tensors: V2 binary.
    max_json_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_tensor_elements: int = Field(default=1 << 20, gt=0)  # per input tensor, V2 and /predict
    # Dual encoders at /predict: zero-shot label prompts, retrieval queries, and gallery images per
    # request (each label and query is a text encoder row; every gallery image an image encoder row).
    max_labels: int = Field(default=64, gt=0)
    max_queries: int = Field(default=16, gt=0)
    max_gallery_images: int = Field(default=128, gt=0)
    max_image_pixels: int = Field(default=4096 * 4096, gt=0)  # per decoded image (decompression bombs)
    max_request_pixels: int = Field(default=4096 * 4096, gt=0)  # decoded pixels summed over a request

    # Slow and broken clients (applied by ``python -m app``, app/server.py).
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body must arrive within this: else 408
    header_timeout_s: float = Field(default=10.0, gt=0)  # request line + headers, once begun
    max_header_bytes: int = Field(default=16 * 1024, gt=0)  # request line + headers: else 431
    keep_alive_s: float = Field(default=5.0, gt=0)  # an idle connection is closed after this
    # On SIGTERM: readiness turns false and new inference requests get 503 at once; after drain_s the
    # listener closes, in-flight requests get up to shutdown_grace_s to finish, then the rest are cut.
    drain_s: float = Field(default=0.0, ge=0)
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    # How long a Python thread (a decode loop, a search, a decoder) may hold the interpreter while
    # the event loop waits for it (Python's default: 5 ms, paid again after every socket call).
    switch_interval_s: float = Field(default=0.001, gt=0)
    # "json": every log line a JSON object, and one access line per request (app/logs.py).
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces (app/tracing.py; the ``otel`` extra): the collector's OTLP/HTTP URL, e.g.
    # http://otel-collector:4318 (/v1/traces is appended unless given). Unset: no tracing, no cost.
    otel_endpoint: str | None = Field(default=None, pattern=r"^https?://[^/\s]+")
    otel_service_name: str = Field(default="deepserve", min_length=1)
    # The share of new traces recorded (a client's sampled traceparent is always followed): each
    # recorded request costs ~0.3 ms of one core here (six spans, their OTLP encoding).
    otel_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
