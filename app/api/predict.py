"""POST /predict: the project's own JSON inference endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from app.api.deps import DataPlaneDep, RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from app.dataplane import DataPlane
from app.errors import BadRequest, InvalidInput

router = APIRouter(tags=["inference"])

# The body is parsed here rather than by FastAPI: pydantic validates straight from the bytes (one pass,
# no intermediate dicts) and any Content-Type is accepted, so `curl -d '{...}'` works as typed.
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


def parse_predict(raw: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise BadRequest(f"request body is not valid JSON: {errors[0]['msg']}") from None
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors]
        raise InvalidInput("; ".join(parts)) from None


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
    body = parse_predict(await request.body())
    mark_model(request, body.model, registry)
    # Built from plain dicts and lists: skipping response-model validation saves time per request.
    return JSONResponse(await run_predict(dataplane, body))
