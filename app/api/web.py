"""The pages for people: the viewer (`GET /`, assets under `/static`) and the offline API docs."""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles

# The page ships inside the package (pyproject's package data), so an installed wheel serves it.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# Swagger UI and ReDoc as the fastapi-offline package ships them (kept up to date there, never
# copied into this repository). Served under /static/, which stays open when an API key is set.
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/static/docs"

# The browser refuses anything from another origin, so a page can never call out. The viewer
# needs nothing more than its own files. The docs run inline scripts and styles, compile schemas
# with `new Function` (ReDoc's ajv) and start a worker from a blob: URL; without the policy ReDoc
# would fetch its logo from its CDN (Redocly/redoc#2108), and Swagger UI would ask
# validator.swagger.io for a badge whenever the host is not localhost.
VIEWER_POLICY = "default-src 'self'; img-src 'self' data:"
DOCS_POLICY = "default-src 'self' data: blob: 'unsafe-inline' 'unsafe-eval'"
# ReDoc's side menu shows Redocly's logo from its CDN (Redocly/redoc#2108; no option hides it).
# The policy would refuse the request, but the page should not even try: the script is served
# with that address replaced by an empty data: image, which fails to decode, so ReDoc's own
# error handler leaves the logo out (the "API docs by Redocly" link stays).
REDOC_SCRIPT = "redoc.standalone.js"
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def offline_redoc_script() -> bytes:
    """fastapi-offline's ReDoc bundle without its one remote address (read once)."""
    script = (DOCS_ASSETS_DIR / REDOC_SCRIPT).read_text(encoding="utf-8")
    return script.replace(REDOC_LOGO_URL, "data:,").encode()


def install_viewer(app: FastAPI) -> None:
    """Mount the static assets and the page itself; neither belongs in the OpenAPI document."""

    async def redoc_script() -> Response:
        return Response(offline_redoc_script(), media_type="text/javascript")

    # Routes and mounts match in order: ReDoc's script before the mount that holds the
    # original, and the docs' assets before /static, which would otherwise answer them too.
    app.add_api_route(
        f"{DOCS_ASSETS_URL}/{REDOC_SCRIPT}", redoc_script, methods=["GET"], include_in_schema=False
    )
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    async def viewer() -> FileResponse:
        # no-cache: the browser revalidates (cheap 304s) so an upgraded server is seen at once.
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": VIEWER_POLICY}
        return FileResponse(WEB_DIR / "index.html", headers=headers)

    app.add_api_route("/", viewer, methods=["GET", "HEAD"], include_in_schema=False)


def install_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` with every asset served from here: they work offline.

    The app must be built with `docs_url=None, redoc_url=None`, so FastAPI's own pages (whose
    assets come from a CDN) are not there first."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def offline(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return offline(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} · Swagger UI",
                swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
                oauth2_redirect_url=f"{root}{redirect_url}",
                swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
            )
        )

    async def swagger_ui_redirect() -> HTMLResponse:
        return offline(get_swagger_ui_oauth2_redirect_html())

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return offline(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} · ReDoc",
                redoc_js_url=f"{root}{DOCS_ASSETS_URL}/{REDOC_SCRIPT}",
                redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )

    for path, endpoint in (
        ("/docs", swagger_ui),
        (redirect_url, swagger_ui_redirect),
        ("/redoc", redoc),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
