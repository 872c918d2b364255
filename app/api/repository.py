"""Triton's model repository, statistics and configuration extensions under /v2.

The control plane (``POST /v2/repository/index``, ``/v2/repository/models/{name}/load|unload``) is off
unless SERVE_ADMIN_TOKEN is set (403), and then answers only requests that send
``Authorization: Bearer <token>`` (401 otherwise; compared in constant time). It acts on model
folders of the configured repository only, named by a strict pattern (no path, no URL: 400) and
present there (404); nothing is fetched, uploads (``parameters.file:*``) are refused. A load may carry
a config override (``parameters.config``, a JSON string, as Triton documents), validated against the
repository schema and used instead of config.json until the next load. Load and unload need
SERVE_MODEL_CONTROL_MODE=explicit (400 otherwise: the repository decides in the other modes).

The read-only views stay open, like model metadata: statistics (``GET /v2/models[/{name}[/versions/
{v}]]/stats``) and configuration (``GET /v2/models/{name}[/versions/{v}]/config``).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from app.api.bodies import check_json_size
from app.api.deps import RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, ErrorResponse
from app.core.repository_format import ModelConfig, VersionPolicy
from app.errors import BadRequest, Forbidden, InvalidInput, ModelNotFound, ModelNotReady, Unauthorized
from app.registry import MODEL_NAME, ModelVersion, Registry, check_version
from app.v2_tensors import V2_DTYPES

router = APIRouter(prefix="/v2", tags=["v2"])

_CONTROL_RESPONSES = {
    **ERROR_RESPONSES,
    401: {"model": ErrorResponse, "description": "No admin token, or a wrong one (Authorization: Bearer)."},
    403: {"model": ErrorResponse, "description": "The model control API is off (no SERVE_ADMIN_TOKEN)."},
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RepositoryIndexEntry(_Open):
    name: str
    version: str | None = None
    state: str | None = None
    reason: str | None = None


class DurationStat(BaseModel):
    count: int
    ns: int


class BatchStat(BaseModel):
    batch_size: int
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat


class InferenceStats(_Open):
    success: DurationStat
    fail: DurationStat
    queue: DurationStat
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat


class ModelStat(_Open):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferenceStats
    batch_stats: list[BatchStat]


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStat]


class ModelConfigResponse(_Open):
    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    version_policy: dict[str, Any]


def _require_admin(request: Request) -> None:
    token = request.app.state.registry.settings.admin_token
    if token is None:
        raise Forbidden("the model control API is off: the server has no SERVE_ADMIN_TOKEN")
    scheme, _, sent = (request.headers.get("authorization") or "").partition(" ")
    # Constant time: the comparison must not tell a prober how much of a guess was right.
    if not (scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())):
        raise Unauthorized("missing or wrong admin token (Authorization: Bearer)")


Admin = Annotated[None, Depends(_require_admin)]


def _repository_model(registry: Registry, name: str) -> str:
    """A name a control request may act on: the pattern, then a folder of the repository (listed,
    never opened by the given name first)."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest(f"invalid model name {name[:80]!r}: expected {MODEL_NAME.pattern}")
    if name not in registry.repository_names():
        raise ModelNotFound(f"the repository has no model {name!r}")
    return name


def _explicit(registry: Registry) -> None:
    mode = registry.settings.model_control_mode
    if mode != "explicit":
        raise BadRequest(
            f"the model control mode is {mode!r}: load and unload need SERVE_MODEL_CONTROL_MODE=explicit"
        )


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    check_json_size(raw, request.app.state.registry.settings.max_json_bytes)  # 413, as everywhere
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


_INDEX_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            }
        },
    }
}
_LOAD_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "parameters": {
                            "type": "object",
                            "properties": {"config": {"type": "string"}},
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/repository/index",
    response_model=list[RepositoryIndexEntry],
    responses=_CONTROL_RESPONSES,
    openapi_extra=_INDEX_BODY,
)
async def repository_index(_: Admin, registry: RegistryDep, request: Request) -> JSONResponse:
    """Every model folder of the repository, and each known version's state (READY, UNAVAILABLE,
    LOADING) and reason. ``{"ready": true}``: only the ready ones."""
    body = await _json_object(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("ready must be a boolean")
    return JSONResponse(registry.index(ready_only=ready))


@router.post(
    "/repository/models/{name}/load",
    response_model=dict[str, Any],
    responses=_CONTROL_RESPONSES,
    openapi_extra=_LOAD_BODY,
)
async def load_model(name: str, _: Admin, registry: RegistryDep, request: Request) -> JSONResponse:
    """Load (or reload) the model from the repository: verified, warmed up, then swapped in; the
    versions it replaces finish their requests first. 400 with the reason when it fails to load (the
    version it would have replaced serves on)."""
    _explicit(registry)
    name = _repository_model(registry, name)
    body = await _json_object(request)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    if any(key.startswith("file:") for key in parameters):
        raise BadRequest("file uploads are refused: models load only from the server's repository")
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        raise BadRequest(f"unknown load parameters {unknown[:5]}; only config is accepted")
    override = None
    if "config" in parameters:
        override = _config_override(name, parameters["config"])
    try:
        await registry.load(name, override)
    except ModelNotReady as exc:
        raise BadRequest(exc.message) from None
    mark_model(request, name, registry)
    return JSONResponse({})


def _config_override(name: str, text: Any) -> ModelConfig:
    if not isinstance(text, str):
        raise BadRequest("parameters.config must be a string holding the model config as JSON")
    try:
        config = ModelConfig.model_validate_json(text)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors()})
        raise InvalidInput(f"parameters.config is invalid: {', '.join(fields)}") from None
    if config.name != name:
        raise InvalidInput(f"parameters.config names the model {config.name!r}, not {name!r}")
    return config


@router.post(
    "/repository/models/{name}/unload",
    response_model=dict[str, Any],
    responses=_CONTROL_RESPONSES,
    openapi_extra=_INDEX_BODY,
)
async def unload_model(name: str, _: Admin, registry: RegistryDep, request: Request) -> JSONResponse:
    """Stop serving the model: new requests get 404 at once, those in flight finish first."""
    _explicit(registry)
    name = _repository_model(registry, name)
    await _json_object(request)
    await registry.unload(name)
    return JSONResponse({})


# ------------------------------------------------------------------------------------------ read-only


@router.get("/models/stats", response_model=StatisticsResponse, responses=ERROR_RESPONSES)
async def all_statistics(registry: RegistryDep) -> JSONResponse:
    """Triton's statistics of every ready version of every model."""
    return JSONResponse({"model_stats": registry.statistics()})


@router.get("/models/{name}/stats", response_model=StatisticsResponse, responses=ERROR_RESPONSES)
@router.get(
    "/models/{name}/versions/{version}/stats", response_model=StatisticsResponse, responses=ERROR_RESPONSES
)
async def model_statistics(
    name: str, registry: RegistryDep, request: Request, version: str | None = None
) -> JSONResponse:
    """Per version: requests (success, fail), queue and compute counts and nanoseconds, and the
    same per executed batch size."""
    mark_model(request, name, registry)
    return JSONResponse({"model_stats": registry.statistics(name, check_version(version))})


_TRITON_TYPES = {dtype: f"TYPE_{name}" for dtype, name in V2_DTYPES.items()}


def _tensors(specs) -> list[dict[str, Any]]:
    # Triton's dims leave out the batch axis (max_batch_size > 0).
    return [{"name": s.name, "data_type": _TRITON_TYPES[s.dtype], "dims": s.shape[1:]} for s in specs]


def triton_config(mv: ModelVersion) -> dict[str, Any]:
    config = mv.config
    if config is None:
        raise ModelNotReady(f"model {mv.name!r} version {mv.version} has no valid config: {mv.reason}")
    graph = config.graphs[mv.primary_role]
    batching, instances = config.batching, config.instances
    policy = config.version_policy or VersionPolicy(latest={"num_versions": 1})
    parameters = {"task": {"string_value": config.task}, "family": {"string_value": config.family}}
    delay_ms = batching.max_queue_delay_ms
    if delay_ms == "auto":  # Triton has no adaptive delay: its bound (a hold never outlasts the target)
        delay_ms = batching.latency_target_ms
        parameters["max_queue_delay_ms"] = {"string_value": "auto"}
        parameters["latency_target_ms"] = {"string_value": f"{batching.latency_target_ms:g}"}
    return {
        "name": config.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": policy.as_triton(),
        "max_batch_size": batching.max_batch_size,
        "input": _tensors(graph.inputs),
        "output": _tensors(graph.outputs),
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(delay_ms * 1000),
            "default_queue_policy": {
                "default_timeout_microseconds": round(batching.timeout_ms * 1000),
                "max_queue_size": batching.max_queue_size,
            },
        },
        "instance_group": [
            {
                "name": f"{config.name}_0",
                "count": instances.count,
                "kind": "KIND_GPU" if mv.provider == "CUDAExecutionProvider" else "KIND_CPU",
            }
        ],
        "parameters": parameters,
    }


@router.get("/models/{name}/config", response_model=ModelConfigResponse, responses=ERROR_RESPONSES)
@router.get(
    "/models/{name}/versions/{version}/config", response_model=ModelConfigResponse, responses=ERROR_RESPONSES
)
async def model_config(
    name: str, registry: RegistryDep, request: Request, version: str | None = None
) -> JSONResponse:
    """The version's configuration in Triton's JSON shape (the one served by default without a
    version), with the SERVE_* overrides applied."""
    mark_model(request, name, registry)
    return JSONResponse(triton_config(registry.find(name, check_version(version))))
