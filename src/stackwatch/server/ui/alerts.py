"""Web UI pages for alerting: current alerts, silences and maintenance windows, and the
"silence this" form the Slack, e-mail and Teams messages link to (``/alerts/silences/new``).

Server-rendered with autoescaping (alert labels and annotations come from whoever can post
alerts); actions are plain form posts checked for same origin and the editor role.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from stackwatch.alerting.config import parse_duration
from stackwatch.alerting.matchers import equality_filter, parse_matchers
from stackwatch.alerting.silences import matchers_to_json
from stackwatch.auth import role_at_least
from stackwatch.errors import BadRequest, ConfigError, Forbidden, StackwatchError
from stackwatch.server.deps import runtime
from stackwatch.server.ui.routes import _check_same_origin, _current_user, _login_redirect, _page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _dispatcher(request: Request) -> Any:
    d = getattr(runtime(request), "dispatcher", None)
    if d is None:
        raise StackwatchError("alerting is not running")
    return d


def _silence_link(labels: dict[str, str]) -> str:
    return "/alerts/silences/new?" + urlencode({"filter": equality_filter(labels)})


def _context(request: Request, who: Any, **extra: Any) -> dict[str, Any]:
    d = _dispatcher(request)
    alerts = d.list_alerts()
    for a in alerts:
        a["silence_link"] = _silence_link(a["labels"])
    return {"user": who, "active": "alerts", "alerts": alerts, "silences": d.list_silences(),
            "windows": d.list_maintenance(), "can_edit": role_at_least(who.role, "editor"), **extra}


@router.get("/alerts", response_model=None)
async def alerts_page(request: Request) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    return _page(request, "alerts.html", await run_in_threadpool(_context, request, who))


@router.get("/alerts/silences/new", response_model=None)
async def new_silence_form(request: Request) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    matchers = request.query_params.get("filter", "")
    return _page(request, "silence_new.html", {"user": who, "active": "alerts", "matchers": matchers,
                                               "duration": "2h", "comment": "", "error": None})


@router.post("/alerts/silences", response_model=None)
async def create_silence(request: Request) -> Response:
    _check_same_origin(request)
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    form = await request.form()
    matchers_text = str(form.get("matchers") or "")
    duration = str(form.get("duration") or "2h")
    comment = str(form.get("comment") or "")
    try:
        if not role_at_least(who.role, "editor"):
            raise Forbidden("creating a silence needs the editor role")
        matchers = parse_matchers(matchers_text)
        length = parse_duration(duration, "duration")
        if length <= timedelta(0):
            raise BadRequest("duration must be positive")
        d = _dispatcher(request)
        now = d.clock()
        spec = {"matchers": matchers_to_json(matchers), "startsAt": now.isoformat(),
                "endsAt": (now + length).isoformat(), "createdBy": who.email, "comment": comment}
        await run_in_threadpool(d.put_silence, spec, who.email)
    except (ValueError, ConfigError, StackwatchError) as exc:
        message = exc.message if isinstance(exc, StackwatchError) else str(exc)
        status = exc.status_code if isinstance(exc, StackwatchError) and exc.status_code < 500 else 400
        return _page(request, "silence_new.html", {"user": who, "active": "alerts", "matchers": matchers_text,
                                                   "duration": duration, "comment": comment, "error": message},
                     status_code=status)
    return RedirectResponse("/alerts", status_code=303)


@router.post("/alerts/silences/{silence_id}/expire", response_model=None)
async def expire_silence(request: Request, silence_id: str) -> Response:
    _check_same_origin(request)
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    if not role_at_least(who.role, "editor"):
        raise Forbidden("expiring a silence needs the editor role")
    await run_in_threadpool(_dispatcher(request).expire_silence, silence_id)
    return RedirectResponse("/alerts", status_code=303)
