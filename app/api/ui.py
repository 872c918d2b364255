"""The playground: ``GET /`` (and ``/ui``) serves a small framework-free page from ``app/ui/`` that
lists the models and shows each through the public API only (``/models``, ``/predict``,
``/generate``), so the page is also a live example of it.

The assets ship in the package (pyproject's package-data), are read once at import and served from
memory: a fixed set of names, so no path from a request ever reaches the file system. Every answer
carries a Content-Security-Policy that allows nothing but this server (and the ``data:``/``blob:``
images the page makes itself): the page cannot make a request anywhere else.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from app.errors import with_status

router = APIRouter(include_in_schema=False)  # pages, not API: /docs documents the API they call

MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
# The page's own scripts, styles and API calls come from this origin; images may also be data: URLs
# (the API's base64 PNGs) and blob: (the uploaded file). No inline script or style, no frames, no forms
# posted elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new server version's page must not mix with old assets
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    folder = files("app") / "ui"
    return {
        entry.name: (entry.read_bytes(), MEDIA_TYPES[suffix])
        for entry in folder.iterdir()
        if (suffix := entry.name[entry.name.rfind(".") :]) in MEDIA_TYPES
    }


ASSETS = _load_assets()
PAGE = "index.html"


def _asset(name: str) -> Response:
    body, media_type = ASSETS[name]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
@router.get("/ui")
async def page() -> Response:
    return _asset(PAGE)


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise with_status(f"no playground asset {name!r}; assets: {', '.join(sorted(ASSETS))}", 404)
    return _asset(name)
