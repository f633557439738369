"""The dashboard's web server (aiohttp): the pages, a JSON API over the
state API, logs, the timeline, `shoal doctor`, and Prometheus ``/metrics``.

It is a driver of the cluster like any other program (it calls only
shoal's public API, from a thread pool: those calls block). Every request
but the login page proves the cluster token: a cookie set by logging in
once (an HMAC of the token, HttpOnly, SameSite=Strict), or an
``Authorization: Bearer <token>`` header (for Prometheus and curl). The
token itself is never logged or sent back.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from shoal.util import doctor, state
from shoal.util.timeline import trace_events

from . import prometheus

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "shoal_session"
LIST_KINDS = {"nodes", "jobs", "tasks", "actors", "objects", "workers", "placement_groups"}
MAX_ROWS = 5000


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"shoal-dashboard-session", hashlib.sha256).hexdigest()


class Dashboard:
    def __init__(self, token: str, login_code: str | None = None):
        self.session = session_value(token)
        self.bearer = "Bearer " + token
        self.login_code = login_code        # a local cluster's one-time link, until used
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="shoal-dashboard")

    async def call(self, fn, *args, **kwargs):
        """A blocking shoal call, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------- auth
    def authorized(self, request: web.Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        header = request.headers.get("Authorization", "")
        return hmac.compare_digest(cookie, self.session) or \
            hmac.compare_digest(header, self.bearer)

    @web.middleware
    async def guard(self, request: web.Request, handler):
        if request.path in ("/login", "/static/style.css") or self.authorized(request):
            return await handler(request)
        if request.path.startswith("/api/") or request.path == "/metrics":
            return web.json_response({"error": "log in with the cluster token first"},
                                     status=401)
        raise web.HTTPFound("/login")

    async def login_page(self, request: web.Request) -> web.Response:
        code = request.query.get("code")
        if code is not None and self.login_code is not None and \
                hmac.compare_digest(code, self.login_code):
            self.login_code = None          # the printed link works once
            return self._logged_in()
        return web.FileResponse(STATIC / "login.html")

    def _logged_in(self):
        response = web.HTTPFound("/")
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="Strict")
        raise response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", "")).strip()
        if not hmac.compare_digest(session_value(given), self.session):
            return web.Response(status=403, content_type="text/html",
                                text=(STATIC / "login.html").read_text().replace(
                                    "<!--error-->", '<p class="error">That is not the '
                                    'cluster token.</p>'))
        return self._logged_in()

    # -------------------------------------------------------------- API
    async def index(self, request: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "index.html")

    async def api_list(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in LIST_KINDS:
            return _error(404, f"no such list {kind!r}; one of {', '.join(sorted(LIST_KINDS))}")
        filters = [(k, "=", v) for k, v in request.query.items()
                   if k not in ("limit", "detail")]
        try:
            limit = min(int(request.query.get("limit", 1000)), MAX_ROWS)
        except ValueError:
            return _error(400, "limit must be a number")
        try:
            rows = await self.call(getattr(state, f"list_{kind}"), filters=filters, limit=limit,
                                   detail=request.query.get("detail") == "1",
                                   raise_on_missing_output=False)
        except ValueError as e:
            return _error(400, str(e))
        return _json(rows)

    async def api_task(self, request: web.Request) -> web.Response:
        row = await self.call(state.get_task, request.match_info["task_id"])
        if row is None:
            return _error(404, "no such task")
        return _json(row)

    async def api_summary(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in ("tasks", "actors", "objects"):
            return _error(404, "summaries: tasks, actors, objects")
        return _json(await self.call(getattr(state, f"summarize_{kind}")))

    async def api_doctor(self, request: web.Request) -> web.Response:
        return _json(await self.call(doctor.diagnose))

    async def api_logs(self, request: web.Request) -> web.Response:
        q = request.query
        source = {}
        try:
            if "pid" in q:
                source = {"pid": int(q["pid"]), "node_id": q.get("node_id") or None}
            elif "task_id" in q:
                source = {"task_id": q["task_id"]}
            elif "actor_id" in q:
                source = {"actor_id": q["actor_id"]}
            tail = int(q["tail"]) if "tail" in q else 1000
        except ValueError:
            return _error(400, "pid and tail are numbers")
        try:
            text = await self.call(lambda: "".join(state.get_log(
                **source, err=q.get("err") == "1", tail=tail)))
        except ValueError as e:
            return _error(400, str(e))
        return web.Response(text=text, content_type="text/plain")

    async def api_timeline(self, request: web.Request) -> web.Response:
        tasks = await self.call(state.list_tasks, limit=None, detail=True,
                                raise_on_missing_output=False)
        return web.Response(body=json.dumps(trace_events(tasks)),
                            content_type="application/json",
                            headers={"Content-Disposition": "attachment; filename=timeline.json"})

    async def metrics(self, request: web.Request) -> web.Response:
        nodes = await self.call(state.list_nodes, limit=None)
        return web.Response(body=prometheus.render(nodes),
                            headers={"Content-Type": prometheus.CONTENT_TYPE})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        app.add_routes([
            web.get("/login", self.login_page), web.post("/login", self.login),
            web.get("/", self.index),
            web.get("/api/summary/{kind}", self.api_summary),
            web.get("/api/tasks/{task_id}", self.api_task),
            web.get("/api/doctor", self.api_doctor),
            web.get("/api/logs", self.api_logs),
            web.get("/api/timeline", self.api_timeline),
            web.get("/api/{kind}", self.api_list),
            web.get("/metrics", self.metrics),
            web.static("/static", STATIC),
        ])
        return app


def _json(value) -> web.Response:
    return web.Response(text=json.dumps(value, default=str), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(token: str, sock, ready=None, login_code: str | None = None) -> None:
    """Serve on the listening socket ``sock`` until cancelled."""
    runner = web.AppRunner(Dashboard(token, login_code).app(), access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    if ready is not None:
        ready()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def url(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


__all__ = ["serve", "url", "session_value"]
