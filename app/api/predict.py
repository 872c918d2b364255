"""POST /predict: the project's own JSON inference endpoint (its handler: app/api/handlers.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api import handlers
from app.api.bodies import documented_body
from app.api.deps import RegistryDep, mark_model
from app.api.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse

router = APIRouter(tags=["inference"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=documented_body(PredictRequest),
)
async def predict(request: Request, registry: RegistryDep) -> Response:
    """Classify or reconstruct one item or a list of items; the items are batched with other callers'."""
    call = handlers.Call(request.headers, await request.body())
    try:
        return (await handlers.predict(request.app.state, call)).response()
    finally:
        mark_model(request, call.model, registry)
