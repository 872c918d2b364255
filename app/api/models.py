"""Model metadata and health: GET /models, GET /models/{name}, /health/live, /health/ready."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, LiveResponse, ModelDetails, ModelList, ReadyResponse
from app.registry import ModelVersion, Registry, check_version

router = APIRouter()


def describe(mv: ModelVersion, registry: Registry, full: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": mv.name,
        "version": mv.version,
        "versions": sorted(registry.versions(mv.name)),
        "state": mv.state,
        "ready": mv.ready,
        "reason": mv.reason,
        "provider": mv.provider,
        "load_seconds": round(mv.load_seconds, 4),
    }
    config = mv.config
    if config is None:
        return info
    info.update(family=config.family, task=config.task, description=config.description)
    if not full:
        return info
    info["graphs"] = {role: graph.model_dump() for role, graph in config.graphs.items()}
    info["labels"] = config.labels
    info["preprocessing"] = (
        config.preprocessing.model_dump(exclude={"tokenizer"}) if config.preprocessing is not None else None
    )
    info["generation"] = config.generation.model_dump() if config.generation else None
    info["batching"] = config.batching.model_dump()
    info["instances"] = config.instances.model_dump()
    if mv.runners:
        info["queue_depth"] = {role: runner.queue_depth for role, runner in mv.runners.items()}
    if mv.report is not None:
        info["metrics"] = mv.report.metrics
        info["parity"] = mv.report.parity.model_dump()
        info["trained_by"] = mv.report.command
    return info


@router.get("/models", tags=["models"], response_model=ModelList)
async def list_models(registry: RegistryDep) -> JSONResponse:
    """Every model in the repository with its served version, state and provider."""
    models = [describe(registry.find(name), registry, full=False) for name in registry.names()]
    return JSONResponse({"models": models})


@router.get("/models/{name}", tags=["models"], response_model=ModelDetails, responses=ERROR_RESPONSES)
async def model_metadata(
    name: str, registry: RegistryDep, request: Request, version: int | None = None
) -> JSONResponse:
    """Task, graphs (inputs/outputs), labels, batching, provider, and quality and parity figures."""
    mark_model(request, name, registry)
    return JSONResponse(describe(registry.find(name, check_version(version)), registry, full=True))


@router.get("/health/live", tags=["health"], response_model=LiveResponse)
async def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "live"}


@router.get(
    "/health/ready",
    tags=["health"],
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready yet."}},
)
async def ready(registry: RegistryDep) -> JSONResponse:
    """Loading finished and at least one model is ready; lists every model's state and provider."""
    served = [registry.find(n) for n in registry.names()] if registry.loaded else []
    body = {
        "status": "ready" if registry.ready else "not ready",
        "models": {mv.name: mv.state for mv in served},
        "providers": {mv.name: mv.provider for mv in served},
    }
    return JSONResponse(body, status_code=200 if registry.ready else 503)
