"""The interpretability viewer: `GET /` serves app/web/index.html, `/static` its assets."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

# The page ships inside the package (pyproject's package data), so an installed wheel serves it.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def install_viewer(app: FastAPI) -> None:
    """Mount the static assets and the page itself; neither belongs in the OpenAPI document."""
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    async def viewer() -> FileResponse:
        # no-cache: the browser revalidates (cheap 304s) so an upgraded server is seen at once.
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", viewer, methods=["GET", "HEAD"], include_in_schema=False)
