"""The web UI's routes: runs, one run's history, schedules, and the actions on them.

Pages are rendered on the server (Jinja2, autoescaped: ids, names and payloads are
user data) and work without JavaScript. Reads go through the store's inspection
calls; actions go through the App's client calls, as a user's program makes them.
Actions are POSTed forms answered with a redirect; a POST that a browser marks as
cross-site (``Sec-Fetch-Site``/``Origin``) is refused, so another site open in the same
browser cannot signal or terminate runs through a UI listening on localhost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from perdure._app import App
from perdure._client import WorkflowStatus
from perdure._converter import to_jsonable
from perdure._errors import (
    PerdureError,
    ScheduleNotFoundError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    failure_to_dict,
)
from perdure._present import attribute_filter, fmt_time, message_of, seconds_text, spec_text
from perdure._schedules import describe_record
from perdure._store._base import ListFilter
from perdure._ui import _views

HERE = Path(__file__).parent
log = logging.getLogger("perdure.ui")
MAX_FORM_BYTES = 1_000_000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
UPDATE_WAIT_SECONDS = 60.0  # an update's handler may wait on activities; the page waits this long
STATUSES = [s.value for s in WorkflowStatus]
# What a redirect after an action says on the page it lands on (a fixed set: the
# notice in the URL is a key, never text a link could make the page say).
NOTICES = {
    "started": "Workflow started.",
    "signaled": "Signal sent.",
    "canceled": "Cancellation requested.",
    "terminated": "Run terminated.",
    "paused": "Schedule paused.",
    "unpaused": "Schedule unpaused.",
    "triggered": "Schedule triggered: a run was started.",
}

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The request itself is wrong: shown to the user with its message, nothing changed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        fmt_time=fmt_time,
        spec_text=spec_text,
        seconds_text=seconds_text,
        pretty=_views.pretty,
        error_lines=_views.error_lines,
        url=_url,
        statuses=STATUSES,
    )
    return env


def _url(path: str, **params: Any) -> str:
    """``path?a=1&b=2`` without the parameters that are None or empty."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def parse_args(text: str) -> list[Any]:
    """The arguments field: a JSON array of the arguments (empty: none)."""
    text = text.strip()
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"arguments are not valid JSON: {exc}") from exc
    if not isinstance(value, list):
        raise BadRequest('arguments must be a JSON array of the arguments, e.g. ["Ada", 3]')
    return value


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last value of each), size-bounded."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest(f"the form is over {MAX_FORM_BYTES:,} bytes", status=413)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8") from None
    return {k: v[-1] for k, v in fields.items()}


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise BadRequest(f"{name.replace('_', ' ')} is required")
    return value


def _same_origin(request: Request) -> bool:
    """False for a POST a browser says came from another site (CSRF). Clients that
    send neither header (curl, scripts) are not browsers acting for another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


class UI:
    """The pages and actions over one App (its database and namespace)."""

    def __init__(self, app: App, *, read_only: bool = False) -> None:
        self.app = app
        self.read_only = read_only
        self.env = _environment()

    # -- rendering -----------------------------------------------------------
    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        html = self.env.get_template(template).render(
            request=request,
            read_only=self.read_only,
            namespace=self.app.namespace,
            notice=NOTICES.get(request.query_params.get("done", "")),
            workflow_types=sorted(self.app._registry.workflows),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def guarded(self, handler: Handler, *, acts: bool = False) -> Handler:
        """``handler`` with bad input and missing runs shown as an error page."""

        async def endpoint(request: Request) -> Response:
            if acts and self.read_only:
                return self.error(request, "this UI was started with --read-only", 403)
            if acts and not _same_origin(request):
                return self.error(request, "cross-site request refused", 403)
            try:
                return await handler(request)
            except BadRequest as exc:
                return self.error(request, str(exc), exc.status)
            except (WorkflowNotFoundError, ScheduleNotFoundError) as exc:
                return self.error(request, str(exc), 404)
            except (PerdureError, ValueError, TypeError) as exc:
                return self.error(request, message_of(exc), 400)
            except Exception:  # the database is down, say: the page says so, the log says why
                log.exception("perdure ui: %s %s failed", request.method, request.url.path)
                return self.error(
                    request, "unexpected error (the server's log has the details)", 500
                )

        return endpoint

    def error(self, request: Request, message: str, status: int) -> Response:
        return self.page(request, "error.html", status=status, message=message)

    # -- runs ----------------------------------------------------------------
    async def runs(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise BadRequest(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")
        workflow_type = request.query_params.get("type") or None
        prefix = request.query_params.get("prefix") or None
        attr = request.query_params.get("attr", "").strip()
        try:
            attributes = dict([attribute_filter(attr)]) if attr else {}
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        runs = [
            d
            async for d in self.app.list_workflows(
                status=status,
                workflow_type=workflow_type,
                workflow_id_prefix=prefix,
                search_attributes=attributes,
                limit=limit + 1,
            )
        ]
        return self.page(
            request,
            "runs.html",
            runs=runs[:limit],
            more=len(runs) > limit,
            limit=limit,
            status_filter=status or "",
            workflow_type=workflow_type or "",
            prefix=prefix or "",
            attr=attr,
        )

    async def run(self, request: Request) -> Response:
        workflow_id = request.query_params.get("id", "")
        if not workflow_id:
            raise BadRequest("which workflow? (the id parameter is missing)")
        run_id = request.query_params.get("run") or None
        name = request.query_params.get("query", "").strip()
        query = None
        if name:  # a query asked from the page: a GET, since queries change nothing
            handle = self.app.get_handle(workflow_id, run_id=run_id)
            query = await _answered(name, request.query_params.get("qargs", ""), handle.query)
        return await self._run_page(request, workflow_id, run_id, query=query)

    async def _run_page(
        self, request: Request, workflow_id: str, run_id: str | None, **answers: Any
    ) -> Response:
        """A run's page; ``answers``: a query's or an update's, shown on it."""
        store = await self.app._get_store()
        rec = await store.get_run(self.app.namespace, workflow_id, run_id)
        if rec is None:
            suffix = f" and run id {run_id!r}" if run_id else ""
            raise WorkflowNotFoundError(f"no workflow with id {workflow_id!r}{suffix}")
        events = await store.load_history(rec.run_id)
        rows, page, pages = _views.page_of(
            _views.event_rows(events), _int_param(request, "page", 1, 1, 1_000_000)
        )
        runs = await store.list_runs(
            ListFilter(namespace=self.app.namespace, workflow_id=workflow_id, limit=50)
        )
        refresh = _int_param(request, "refresh", 0, 0, 3600)
        return self.page(
            request,
            "run.html",
            rec=rec,
            latest=not runs or runs[0].run_id == rec.run_id,
            runs=runs,
            rows=rows,
            page=page,
            pages=pages,
            per_page=_views.EVENTS_PER_PAGE,
            event_count=len(events),
            pending=_views.pending(events) if rec.status == "running" else _views.Pending(),
            query=answers.get("query"),
            update=answers.get("update"),
            refresh=refresh if rec.status == "running" else 0,
        )

    async def start(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page(request, "start.html", form={}, message=None)
        form = await _form(request)
        try:
            workflow_type = _required(form, "workflow_type")
            handle = await self.app.start_workflow(
                workflow_type,
                *parse_args(form.get("args", "")),
                workflow_id=form.get("workflow_id", "").strip() or None,
                task_queue=form.get("task_queue", "").strip() or None,
            )
        except (BadRequest, PerdureError, ValueError, TypeError) as exc:
            return self.page(request, "start.html", status=400, form=form, message=message_of(exc))
        return _to_run(handle.workflow_id, handle.run_id, "started")

    async def act(self, request: Request) -> Response:
        """Signal, update, cancel or terminate a run (the form's ``action``)."""
        form = await _form(request)
        workflow_id = _required(form, "id")
        run_id = form.get("run") or None
        handle = self.app.get_handle(workflow_id, run_id=run_id)
        action = form.get("action", "")
        if action == "signal":
            await handle.signal(_required(form, "name"), *parse_args(form.get("args", "")))
            done = "signaled"
        elif action == "update":
            # The page shows the update's return (or its rejection) at once, so it is
            # rendered here rather than redirected to.
            call = partial(handle.update, timeout=UPDATE_WAIT_SECONDS)
            update = await _answered(_required(form, "name"), form.get("args", ""), call)
            return await self._run_page(request, workflow_id, run_id, update=update)
        elif action == "cancel":
            await handle.cancel(form.get("reason", "").strip() or None)
            done = "canceled"
        elif action == "terminate":
            await handle.terminate(form.get("reason", "").strip() or "terminated from the UI")
            done = "terminated"
        else:
            raise BadRequest(f"unknown action {action!r}")
        return _to_run(workflow_id, run_id, done)

    async def result(self, request: Request) -> Response:
        """The run's outcome as JSON (for scripts; the page shows it too)."""
        workflow_id = request.query_params.get("id", "")
        if not workflow_id:
            raise BadRequest("which workflow? (the id parameter is missing)")
        handle = self.app.get_handle(workflow_id, run_id=request.query_params.get("run") or None)
        try:
            value = await handle.result(timeout=0)
        except TimeoutError:
            return _json({"status": "running"})
        except WorkflowFailedError as exc:
            error = failure_to_dict(exc.cause if exc.cause is not None else exc)
            return _json({"status": exc.status, "error": error})
        return _json({"status": "completed", "result": to_jsonable(value)})

    # -- schedules -----------------------------------------------------------
    async def schedules(self, request: Request) -> Response:
        store = await self.app._get_store()
        items = [
            await describe_record(self.app, r)
            for r in await store.list_schedules(self.app.namespace)
        ]
        return self.page(request, "schedules.html", schedules=items)

    async def schedule(self, request: Request) -> Response:
        schedule_id = request.query_params.get("id", "")
        if not schedule_id:
            raise BadRequest("which schedule? (the id parameter is missing)")
        described = await self.app.get_schedule(schedule_id).describe(count=10)
        return self.page(request, "schedule.html", s=described)

    async def act_on_schedule(self, request: Request) -> Response:
        form = await _form(request)
        handle = self.app.get_schedule(_required(form, "id"))
        action = form.get("action", "")
        if action == "pause":
            await handle.pause()
        elif action == "unpause":
            await handle.unpause()
        elif action == "trigger":
            await handle.trigger()
        else:
            raise BadRequest(f"unknown action {action!r}")
        done = {"pause": "paused", "unpause": "unpaused", "trigger": "triggered"}[action]
        return RedirectResponse(_url("/schedule", id=handle.schedule_id, done=done), 303)


async def _answered(
    name: str, args_text: str, ask: Callable[..., Awaitable[Any]]
) -> dict[str, Any]:
    """What ``ask(name, *args)`` (a query or an update) returned, or why it did not."""
    answer: dict[str, Any] = {"name": name, "args": args_text}
    try:
        answer["answer"] = _views.pretty(to_jsonable(await ask(name, *parse_args(args_text))))
    except (BadRequest, PerdureError, ValueError, TypeError) as exc:
        answer["error"] = message_of(exc)
    return answer


def _to_run(workflow_id: str, run_id: str | None, done: str) -> Response:
    return RedirectResponse(_url("/workflow", id=workflow_id, run=run_id, done=done), 303)


def _json(value: Any) -> Response:
    return Response(json.dumps(value), media_type="application/json")


def create_app(
    app: App, *, read_only: bool = False, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The UI as an ASGI application over ``app`` (closed when the server stops);
    ``allowed_hosts``: the Host names it answers to (None: any)."""
    ui = UI(app, read_only=read_only)

    async def home(request: Request) -> Response:
        return RedirectResponse("/workflows", 307)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.close()

    routes = [
        Route("/", home),
        Route("/workflows", ui.guarded(ui.runs)),
        Route("/workflow", ui.guarded(ui.run)),
        Route("/workflow/result", ui.guarded(ui.result)),
        Route("/workflow/act", ui.guarded(ui.act, acts=True), methods=["POST"]),
        Route("/start", ui.guarded(ui.start), methods=["GET"]),
        Route("/start", ui.guarded(ui.start, acts=True), methods=["POST"]),
        Route("/schedules", ui.guarded(ui.schedules)),
        Route("/schedule", ui.guarded(ui.schedule)),
        Route("/schedule/act", ui.guarded(ui.act_on_schedule, acts=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = []
    if allowed_hosts is not None:
        # A page of another site whose name was made to point at 127.0.0.1 (DNS
        # rebinding) reaches this server with its own name in Host: refused.
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
