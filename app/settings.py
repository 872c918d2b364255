"""Server settings: environment variables with the ``SERVE_`` prefix (pydantic-settings).

Per-model batching and instance settings come from each model's config.json; the ``SERVE_*`` values
below, when set, override them for every model (handy for benchmarks: ``SERVE_MAX_BATCH_SIZE=1``
turns batching off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="ignore")

    model_repository: Path = Path("models")
    # Refuse a model whose graphs do not match the sha256 recorded in its report.json.
    verify_sha256: bool = True
    # Run one batch through every graph at load, so the first request does not pay for lazy init.
    warmup: bool = True

    # Overrides of every model's config.json (None = use the model's own value).
    device: Literal["auto", "cpu", "cuda"] | None = None
    instances: int | None = Field(default=None, gt=0)
    intra_op_threads: int | None = Field(default=None, gt=0)
    max_batch_size: int | None = Field(default=None, gt=0)
    max_queue_delay_ms: float | None = Field(default=None, ge=0)
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
    max_images: int = Field(default=64, gt=0)  # image generators: samples per request

    # Request limits: bodies are parsed into memory, so cap them before they are.
    max_items_per_request: int = Field(default=256, gt=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=4096 * 4096, gt=0)  # decoded size; guards decompression bombs
