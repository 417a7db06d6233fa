"""The web dashboard the monitor serves: static assets shipped in this package (no CDN, works
offline) that poll ``GET /api/status`` once a second and redraw.

Zones carry ``data-zone`` and ``data-status`` attributes so a browser test (or a person with the
inspector) can read the state without parsing text.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"


def add_dashboard_routes(app: web.Application) -> None:
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html",
                                headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_get("/dashboard", index)
    app.router.add_static("/static", STATIC_DIR, show_index=False)
