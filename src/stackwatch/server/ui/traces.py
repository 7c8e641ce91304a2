"""Web UI pages for traces: trace search and one trace's waterfall.

The pages are shells: their script (``static/trace.js``) reads the JSON API with the session
cookie and builds the view from text nodes only, since span names, attributes and log lines are
written by whoever holds an ingest token. The trace id reaches the script through a
``data-`` attribute, as the Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stackwatch.model.spans import normalize_trace_id
from stackwatch.server.ui.routes import _current_user, _login_redirect, _page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/traces", response_model=None)
async def traces_page(request: Request) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    return _page(request, "traces.html", {"user": who, "active": "traces"})


@router.get("/traces/{trace_id}", response_model=None)
async def trace_page(request: Request, trace_id: str) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    try:
        tid = normalize_trace_id(trace_id)
    except ValueError as exc:
        return _page(request, "trace.html", {"user": who, "active": "traces", "trace_id": "", "error": str(exc)},
                     status_code=400)
    return _page(request, "trace.html", {"user": who, "active": "traces", "trace_id": tid, "error": None})
