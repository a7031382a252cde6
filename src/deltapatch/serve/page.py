"""The web page at ``/`` (issue 26, item 2): try every patch on an image and see its Λ.

Three static files shipped in the package (``static/``: HTML, CSS, JavaScript; no build step,
nothing fetched from elsewhere) that talk to the server's own ``/v1`` API. The HTML carries the
backbone's name and stages as ``data-`` attributes (escaped), so the page needs no extra endpoint.
Every file is answered with a strict Content-Security-Policy: scripts, styles and requests from
this origin only, images from this origin or ``blob:`` (the chosen photo's preview), no frames.
The admin key is typed into the page and sent as ``Authorization: Bearer`` by the page's own
requests; it is kept in memory only, and the admin endpoints check it exactly as before.
"""

from __future__ import annotations

import html
from importlib import resources

from fastapi import FastAPI
from starlette.responses import Response

from ..model import PatchedModel
from .inputs import HTTPFail

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Cache-Control": "no-cache"}
ASSETS = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def index_html(model: PatchedModel) -> bytes:
    """The page with the backbone's name, stages, classes and input size filled in."""
    values = {"backbone": model.backbone_name, "stages": ",".join(model.stage_names),
              "classes": str(model.base_classes), "size": str(model.preprocess.size)}
    text = _read("index.html").decode()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return text.encode()


def mount_page(app: FastAPI, model: PatchedModel) -> None:
    """``GET /`` and ``GET /static/{page.css,page.js}`` on ``app``."""
    page = index_html(model)
    assets = {name: _read(name) for name in ASSETS}

    @app.get("/", include_in_schema=False)
    async def index():
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in assets:
            raise HTTPFail(404, f"no file /static/{name}")
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)
