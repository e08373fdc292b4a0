"""The web viewer's FastAPI app: server-rendered pages (runs, run, kernel, leaderboard) and a
JSON API with the same data, over an archive opened read-only for each request. Errors are
pages with one sentence (404 for what does not exist), never a traceback; `serve` binds it.
"""
from __future__ import annotations

import logging
import socket
import sqlite3
import time
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException

from agents.viewer import pages
from agents.viewer.access import Gate, is_loopback, new_token
from agents.viewer.data import ArchiveReader, NotFound
from agents.viewer.timeline import DEFAULT_CACHE, TimelineError, TimelineStore

log = logging.getLogger("cubepilot.viewer")
TEMPLATES = Path(__file__).parent / "templates"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["f"] = lambda v, spec=".2f": "-" if v is None else format(v, spec)
    env.filters["us"] = lambda ns: "-" if ns is None or ns == float("inf") else f"{ns / 1e3:,.2f} us"
    env.filters["duration"] = lambda s: "-" if s is None else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"
                                                             if s < 7200 else f"{s / 3600:.1f} h")
    env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
    env.globals["kernel_url"] = pages.kernel_url
    env.globals["pygments_css"] = pages.PYGMENTS_CSS
    return env


def create_app(archive: str | Path, token: str | None = None, timeline_cache: Path = DEFAULT_CACHE) -> FastAPI:
    """The viewer over `archive`. With `token`, every request must present it (see access.Gate)."""
    reader = ArchiveReader(Path(archive))
    timelines = TimelineStore(timeline_cache)
    env = _env()
    app = FastAPI(title="cubepilot viewer", debug=False, docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(Gate(token))

    def render(name: str, http_status: int = 200, **context) -> HTMLResponse:
        html = env.get_template(name).render(archive=str(reader.path), **context)
        return HTMLResponse(html, http_status)

    def refuse(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status)
        try:
            return render("error.html", status, code=status, message=message)
        except Exception:           # a template that fails must not turn into a traceback page
            log.exception("error page failed")
            return PlainTextResponse(message + "\n", status)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return refuse(request, 404, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"There is no page at {request.url.path[:120]}. The viewer has the runs list (/), "
                        "run pages, kernel pages and the leaderboard.",
                   405: "This viewer is read-only: it answers GET requests only."}.get(exc.status_code, str(exc.detail))
        return refuse(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        return refuse(request, 400, f"Bad request parameter ({where}): check the link you followed.")

    @app.exception_handler(sqlite3.DatabaseError)
    async def unreadable(request: Request, exc: sqlite3.DatabaseError) -> Response:
        return refuse(request, 500, f"The archive at {reader.path} cannot be read ({exc}). "
                      "Is it a cubepilot archive (an SQLite file written by `cubepilot run`)?")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("error while serving %s", request.url.path)
        return refuse(request, 500, "The viewer failed while building this page; the server's log says why.")

    # ------------------------------------------------------------- pages
    @app.get("/", response_class=HTMLResponse)
    def runs_page():
        return render("runs.html", runs=reader.runs())

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str):
        run = reader.run(pages.check_run_id(run_id))
        return render("run.html", **pages.run_page(run, reader.spend(run.id)))

    @app.get("/runs/{run_id}/kernels/{strategy_id}", response_class=HTMLResponse)
    def kernel_page(run_id: str, strategy_id: str, core: int = Query(0, ge=0, le=4095)):
        run = reader.run(pages.check_run_id(run_id))
        row = run.latest(pages.check_strategy_id(strategy_id))
        cached = parents = None
        if row is not None and row.result.ok:
            cached = cached_timeline(run, row, core)
            parents = {pid: t for pid in row.strategy.parents
                       if (prow := run.latest(pid)) is not None and prow.result.ok
                       and (t := cached_timeline(run, prow, core)) is not None}
        return render("kernel.html", core=core, **pages.kernel_page(reader, run, strategy_id, cached, "", parents))

    def cached_timeline(run, row, core: int):
        return timelines.cached(reader.source(row.kernel_hash), run.config.task, run.config.machine,
                                run.config.shape, core)

    @app.get("/runs/{run_id}/kernels/{strategy_id}/timeline")
    def timeline_page(run_id: str, strategy_id: str, core: int = Query(0, ge=0, le=4095),
                      parents: bool = Query(False)):
        """Compute the timeline (re-recorded in the sandbox), with `parents` also the ok parents' for
        comparison, then show it on the kernel page."""
        run = reader.run(pages.check_run_id(run_id))
        row = run.latest(pages.check_strategy_id(strategy_id))
        if row is None:
            raise NotFound(f"Run {run.id} evaluated no strategy {strategy_id}.")
        rows = [row] + ([p for pid in row.strategy.parents if (p := run.latest(pid)) is not None and p.result.ok]
                        if parents else [])
        try:
            for r in rows:
                timelines.get(reader.source(r.kernel_hash), run.config.task, run.config.machine, run.config.shape, core)
        except TimelineError as exc:
            return render("kernel.html", 422, core=core,
                          **pages.kernel_page(reader, run, strategy_id, None, f"No timeline: {exc}"))
        return RedirectResponse(f"{pages.kernel_url(run.id, strategy_id)}?core={core}#timeline", 303)

    @app.get("/leaderboard", response_class=HTMLResponse)
    def leaderboard_page(task: str | None = Query(None, max_length=80), machine: str | None = Query(None, max_length=200)):
        return render("leaderboard.html", task=task, machine=machine,
                      groups=pages.leaderboard_groups(reader.leaderboard(task or None, machine or None)))

    # ------------------------------------------------------------- JSON API
    @app.get("/api/runs")
    def api_runs():
        return {"archive": str(reader.path), "runs": reader.runs()}

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: str):      # plain JSONResponse: already JSON types, no encoder pass over 1,000 points
        run = reader.run(pages.check_run_id(run_id))
        return JSONResponse(pages.run_json(run, reader.spend(run.id)))

    @app.get("/api/runs/{run_id}/calls")
    def api_calls(run_id: str, step: int | None = Query(None, ge=0), full: bool = Query(False)):
        """The run's model calls in order (only step `step`'s when given); `full` adds each prompt and answer."""
        run = reader.run(pages.check_run_id(run_id))
        return JSONResponse(dict(run=run.id, spend=pages.spend_json(reader.spend(run.id)),
                                 calls=[pages.call_json(c, full) for c in reader.calls(run.id, step, full)]))

    @app.get("/api/runs/{run_id}/kernels/{strategy_id}")
    def api_kernel(run_id: str, strategy_id: str):
        return pages.kernel_json(reader, reader.run(pages.check_run_id(run_id)), strategy_id)

    @app.get("/api/leaderboard")
    def api_leaderboard(task: str | None = Query(None, max_length=80), machine: str | None = Query(None, max_length=200)):
        rows = reader.leaderboard(task or None, machine or None)
        return {"groups": [dict(g, rows=[{k: v for k, v in r.items() if k != "config"} for r in g["rows"]])
                           for g in pages.leaderboard_groups(rows)]}

    return app


def serve(archive: Path, host: str, port: int, token: str | None, say=print) -> None:
    """Run the viewer until Ctrl-C. A host other than loopback gets a token (generated if not given)."""
    import uvicorn

    if not is_loopback(host) and not token:
        token = new_token()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:          # a taken port is a one-line error, before the URL is printed
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    if not archive.exists():
        say(f"note: there is no archive at {archive} yet; pages say so until a run creates it")
    shown = f"[{host}]" if ":" in host else host
    say(f"cubepilot viewer of {archive} at http://{shown}:{port}/" + (f"?token={token}" if token else "")
        + "  (Ctrl-C stops it)")
    uvicorn.run(create_app(archive, token), host=host, port=port, log_level="warning", access_log=False,
                server_header=False, date_header=False)
