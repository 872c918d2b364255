"""The JSON response class of every route: orjson, with numpy arrays serialised directly. It derives
from Starlette's JSONResponse so that FastAPI documents routes' response models as JSON."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
