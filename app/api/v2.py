"""KServe V2 / Open Inference Protocol routes under /v2 (what tritonclient and KServe speak)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from app import __version__
from app.api import handlers
from app.api.bodies import documented_body
from app.api.deps import RegistryDep, mark_model
from app.api.openai_schemas import V2GenerateRequest, V2GenerateResponse
from app.api.responses import JSONResponse
from app.api.schemas import (
    ERROR_RESPONSES,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)
from app.registry import Registry, check_version
from app.v2_tensors import V2_DTYPES

router = APIRouter(prefix="/v2", tags=["v2"])

# The body is read raw (it may be binary), so its schema is documented by hand.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT64", "INT32", "BOOL"]},
        "data": {"type": "array", "items": {}},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
    },
}
INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON, or with the binary tensor extension a JSON header of Inference-Header-Content-Length "
            "bytes followed by the raw little-endian tensor bytes."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                },
                "example": {
                    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
                    "outputs": [{"name": "logits"}],
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _tensor_metadata(specs) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": V2_DTYPES[s.dtype], "shape": s.shape} for s in specs]


def _model_metadata(registry: Registry, name: str, version: str | None) -> dict[str, Any]:
    mv = registry.find(name, check_version(version))
    body: dict[str, Any] = {
        "name": mv.name,
        # The versions that serve (all known ones while none does, so a failed model still answers).
        "versions": [str(v) for v in (registry.served_versions(name) or sorted(registry.versions(name)))],
        "platform": "onnxruntime_onnx",
        "variants": {str(v): kind for v, kind in registry.variant_kinds(name).items()},
    }
    if mv.config is not None:
        graph = mv.config.graphs[mv.primary_role]
        body["inputs"] = _tensor_metadata(graph.inputs)
        body["outputs"] = _tensor_metadata(graph.outputs)
    return body


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "deepserve",
        "version": __version__,
        "extensions": [
            "binary_tensor_data",
            "model_repository",
            "statistics",
            "model_configuration",
        ],
    }


@router.get("/health/live", response_model=V2Live)
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready", response_model=V2Ready, responses={400: {"model": V2Ready, "description": "Not ready."}}
)
async def server_ready(registry: RegistryDep, request: Request) -> JSONResponse:
    ready = registry.ready and not request.app.state.draining
    return JSONResponse({"ready": ready}, status_code=200 if ready else 400)


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=ERROR_RESPONSES)
@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=ERROR_RESPONSES)
async def model_metadata(name: str, registry: RegistryDep, request: Request, version: str | None = None):
    mark_model(request, name, registry)
    return JSONResponse(_model_metadata(registry, name, version))


_NOT_READY = {**ERROR_RESPONSES, 400: {"model": V2ModelReady, "description": "Not ready."}}


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses=_NOT_READY)
@router.get("/models/{name}/versions/{version}/ready", response_model=V2ModelReady, responses=_NOT_READY)
async def model_ready(name: str, registry: RegistryDep, request: Request, version: str | None = None):
    """200 when the model version is ready, 400 (the protocol's "false") when it failed to load."""
    mark_model(request, name, registry)
    mv = registry.find(name, check_version(version))
    return JSONResponse({"name": name, "ready": mv.ready}, status_code=200 if mv.ready else 400)


_INFER_RESPONSES = {
    **ERROR_RESPONSES,
    200: {
        "model": V2InferResponse,
        "description": "JSON, or with binary outputs a JSON header followed by the tensor bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.post("/models/{name}/infer", responses=_INFER_RESPONSES, openapi_extra=INFER_OPENAPI)
@router.post(
    "/models/{name}/versions/{version}/infer", responses=_INFER_RESPONSES, openapi_extra=INFER_OPENAPI
)
async def infer(
    name: str,
    request: Request,
    # Documented here; the handler reads it from the headers (the front door's path has no FastAPI).
    inference_header_content_length: Annotated[int | None, Header(ge=0)] = None,
    version: str | None = None,
) -> Response:
    """Run the model's graph on V2 tensors (JSON data or the binary extension)."""
    call = handlers.Call(request.headers, await request.body())
    return (await handlers.infer_v2(request.app.state, call, name, version)).response()


_GENERATE_RESPONSES = {
    **ERROR_RESPONSES,
    200: {
        "model": V2GenerateResponse,
        "description": (
            "generate: one JSON object. generate_stream: text/event-stream, one `data: {model_name, "
            "model_version, text_output}` event per piece of text, the last with finish_reason; an error "
            'after the first event is an event `data: {"error": ...}`.'
        ),
        "content": {
            "text/event-stream": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
            }
        },
    },
}
_GENERATE_BODY = documented_body(V2GenerateRequest)


async def _generate(request: Request, registry: Registry, name: str, version: str | None, stream: bool):
    call = handlers.Call(request.headers, await request.body())
    try:
        return (await handlers.generate_v2(request.app.state, call, name, version, stream)).response()
    finally:
        mark_model(request, call.model, registry)


@router.post("/models/{name}/generate", responses=_GENERATE_RESPONSES, openapi_extra=_GENERATE_BODY)
@router.post(
    "/models/{name}/versions/{version}/generate", responses=_GENERATE_RESPONSES, openapi_extra=_GENERATE_BODY
)
async def generate(
    name: str, request: Request, registry: RegistryDep, version: str | None = None
) -> Response:
    """Triton's generate extension: text_input and parameters in, text_output out."""
    return await _generate(request, registry, name, version, False)


@router.post("/models/{name}/generate_stream", responses=_GENERATE_RESPONSES, openapi_extra=_GENERATE_BODY)
@router.post(
    "/models/{name}/versions/{version}/generate_stream",
    responses=_GENERATE_RESPONSES,
    openapi_extra=_GENERATE_BODY,
)
async def generate_stream(
    name: str, request: Request, registry: RegistryDep, version: str | None = None
) -> Response:
    """The same as generate, as Server-Sent Events."""
    return await _generate(request, registry, name, version, True)
