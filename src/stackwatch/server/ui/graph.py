"""The graph page: a PromQL expression over time, where a metric alert's link leads.

Prometheus's alerts link to ``/graph?g0.expr=...`` (``generatorURL``, and the ``graphLink`` and
``tableLink`` template functions), so Stackwatch answers the same address: the on-call who
follows the link sees the expression's series over the last hour and their current values. The
page is a shell; its script (``static/graph.js``) reads the Prometheus API with the session
cookie and builds the view from text nodes only (label values are written by whoever can push
metrics).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stackwatch.server.ui.routes import _current_user, _login_redirect, _page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/graph", response_model=None)
async def graph_page(request: Request) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    return _page(request, "graph.html", {"user": who, "active": "graph"})
