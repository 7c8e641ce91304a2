"""Web UI pages for errors: the issues list and one issue (stack trace, breadcrumbs, tags,
sparkline, triage actions).

Rendered on the server with autoescaping: every string on these pages (exception messages,
frame variables, breadcrumbs) was written by whoever holds a DSN, which for a browser app is
anyone, so it must only ever be text. Sparklines are inline SVG built from numbers. Actions
are plain form posts (htmx-boosted), checked for same origin and the editor role.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from stackwatch.auth import role_at_least
from stackwatch.errors import BadRequest, NotFound, StackwatchError
from stackwatch.server.deps import runtime
from stackwatch.server.ui.routes import _check_same_origin, _current_user, _env, _login_redirect, _page
from stackwatch.storage.errors import issue_json
from stackwatch.storage.meta.models import ISSUE_STATUSES

__all__ = ["router", "sparkline_points"]

router = APIRouter(include_in_schema=False)

_ACTIONS: Final = {
    "resolve": "resolved",
    "resolve-in-next-release": "resolved_in_next_release",
    "ignore": "ignored",
    "unresolve": "unresolved",
}
_STATUS_LABELS: Final = {
    "unresolved": "Unresolved",
    "resolved": "Resolved",
    "resolved_in_next_release": "Resolved in next release",
    "ignored": "Ignored",
}


def sparkline_points(counts: list[int], width: int = 120, height: int = 24) -> str:
    """SVG polyline points for a sparkline of ``counts`` (highest count touches the top)."""
    if not counts:
        return ""
    peak = max(counts) or 1
    step = width / max(1, len(counts) - 1)
    return " ".join(
        f"{i * step:.1f},{height - 1 - (c / peak) * (height - 2):.1f}" for i, c in enumerate(counts)
    )


_env.globals["sparkline_points"] = sparkline_points
_env.globals["status_labels"] = _STATUS_LABELS


def _projects(request: Request) -> list[Any]:
    return list(runtime(request).auth.list_projects())


@router.get("/issues", response_model=None)
async def issues_page(request: Request) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    store = runtime(request).errors
    q = request.query_params
    filters = {
        "project": q.get("project") or "default",
        "status": q.get("status", "unresolved"),
        "level": q.get("level", ""),
        "query": q.get("query", ""),
        "release": q.get("release", ""),
        "environment": q.get("environment", ""),
        "sort": q.get("sort", "last_seen"),
    }
    try:
        offset = max(0, int(q.get("offset", "0")))
    except ValueError:
        offset = 0
    context: dict[str, Any] = {"user": who, "active": "issues", "filters": filters, "error": None,
                               "issues": [], "total": 0, "next_url": None, "prev_url": None, "sparks": {},
                               "projects": [], "statuses": ISSUE_STATUSES}

    def load() -> None:
        projects = _projects(request)
        context["projects"] = [p.slug for p in projects]
        project = next((p for p in projects if p.slug == filters["project"]), None)
        if project is None:
            raise NotFound(f"no project {filters['project']!r}")
        if store is None:
            raise BadRequest("error tracking is not enabled on this server")
        page = store.list_issues(
            project.id, project.slug, status=filters["status"] or None, level=filters["level"] or None,
            release=filters["release"] or None, environment=filters["environment"] or None,
            query=filters["query"] or None, sort=filters["sort"], limit=50, offset=offset,
        )
        context["issues"] = page["issues"]
        context["total"] = page["total"]
        ids = [i["id"] for i in page["issues"]]
        context["sparks"] = store.hourly_counts_many(project.slug, ids, 24) if ids else {}
        base = {k: v for k, v in filters.items() if v}
        if page["next_offset"] is not None:
            context["next_url"] = "/issues?" + urlencode({**base, "offset": page["next_offset"]})
        if offset > 0:
            context["prev_url"] = "/issues?" + urlencode({**base, "offset": max(0, offset - 50)})

    try:
        await run_in_threadpool(load)
    except StackwatchError as exc:
        context["error"] = exc.message
        return _page(request, "issues.html", context, status_code=exc.status_code)
    return _page(request, "issues.html", context)


@router.get("/issues/{issue_id}", response_model=None)
async def issue_page(request: Request, issue_id: int) -> Response:
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    store = runtime(request).errors
    if store is None:
        return _page(request, "issue.html", {"user": who, "active": "issues", "error": "error tracking is off",
                                             "issue": None}, status_code=503)

    def load() -> dict[str, Any]:
        issue = store.get_issue(issue_id)
        slug = runtime(request).auth.get_project(issue.project_id).slug
        return {
            "issue": issue_json(issue, slug),
            "event": store.event(slug, issue.id),
            "stats": store.hourly_counts(slug, issue.id, 24),
            "tags": store.tag_values(slug, issue.id),
            "events": store.events(slug, issue.id, limit=20),
            "activity": store.activity(issue.id),
        }

    try:
        data = await run_in_threadpool(load)
    except StackwatchError as exc:
        return _page(request, "issue.html", {"user": who, "active": "issues", "error": exc.message, "issue": None},
                     status_code=exc.status_code)
    can_edit = role_at_least(who.role, "editor")
    return _page(request, "issue.html", {"user": who, "active": "issues", "error": None, "can_edit": can_edit,
                                         **data})


@router.post("/issues/{issue_id}/actions", response_model=None)
async def issue_action(request: Request, issue_id: int) -> Response:
    """Resolve, resolve in next release, ignore, unresolve or assign, then back to the issue."""
    _check_same_origin(request)
    who = await _current_user(request)
    if who is None:
        return _login_redirect(request)
    runtime(request).auth.require(who, "editor")
    store = runtime(request).errors
    if store is None:
        raise BadRequest("error tracking is not enabled on this server")
    form = await request.form()
    action = str(form.get("action") or "")
    if action == "assign":
        kwargs: dict[str, Any] = {"assignee": str(form.get("assignee") or "").strip() or None}
    elif action in _ACTIONS:
        kwargs = {"status": _ACTIONS[action]}
    else:
        raise BadRequest(f"unknown action {action!r}")
    await run_in_threadpool(lambda: store.update_issue(issue_id, actor=who.email, **kwargs))
    return RedirectResponse(f"/issues/{issue_id}", status_code=303)
