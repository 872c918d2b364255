"""POST /predict: the project's own JSON inference endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.bodies import admitted, check_json_size, documented_body, require_json
from app.api.deps import DataPlaneDep, RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from app.dataplane import DataPlane

router = APIRouter(tags=["inference"])

_BODY = documented_body(PredictRequest)


async def run_predict(dataplane: DataPlane, body: PredictRequest) -> dict[str, Any]:
    """The endpoint minus HTTP, shared by the route below and the front door's direct dispatch
    (app/frontend.py)."""
    return await dataplane.predict(
        body.model,
        body.version,
        body.inputs,
        top_k=body.top_k,
        return_latent=body.return_latent,
        return_reconstruction=body.return_reconstruction,
        image_format=body.image_format,
    )


@router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=_BODY)
async def predict(request: Request, dataplane: DataPlaneDep, registry: RegistryDep) -> JSONResponse:
    """Classify or reconstruct one item or a list of items; the items are batched with other callers'."""
    require_json(request.headers.get("content-type"))
    raw = await request.body()
    check_json_size(raw, dataplane.settings.max_json_bytes)
    async with admitted(registry, PredictRequest, raw) as (body, _):
        mark_model(request, body.model, registry)
        result = await run_predict(dataplane, body)
    # Built from plain dicts and lists: skipping response-model validation saves time per request.
    return JSONResponse(result)
