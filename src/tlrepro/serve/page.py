"""The web page (static/: index.html, app.js, style.css) and the project's rendered reports.

/reports/ serves only the rendered HTML reports at the top of reports/ (index.html and <study>.html): not
the executed notebooks, metrics, plots or anything in a subfolder, and no listings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tlrepro.serve.registry import REPORT_NAME
from tlrepro.serve.schemas import ApiError

STATIC = Path(__file__).resolve().parent / "static"


def add_page(app: FastAPI, reports_dir: Path, check_query: Callable[[Request], object]) -> None:
    """Routes for the page, its static files and the rendered reports."""

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> FileResponse:
        check_query(request)
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/reports/{name}", include_in_schema=False)
    async def report(name: str) -> FileResponse:
        path = reports_dir / name
        if not (REPORT_NAME.fullmatch(name) and path.is_file() and path.resolve().parent == reports_dir.resolve()):
            raise ApiError(404, f"no report `{name[:100]}`: /reports/ serves the rendered reports (index.html and "
                                f"<study>.html, once `dvc repro` has built them), nothing else.")
        return FileResponse(path, media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
