"""The issues API: errors grouped into issues, their events, triage (resolve, ignore, assign).

``?project=<slug>`` selects the project of the list (default ``default``); an issue id is
unique across projects, so the per-issue routes need no project.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from stackwatch.errors import BadRequest, NotFound, StackwatchError
from stackwatch.server.deps import editor, runtime, viewer
from stackwatch.storage.errors import ErrorStore, issue_json

router = APIRouter(prefix="/api/v1", tags=["issues"])


class Unavailable(StackwatchError):
    status_code = 503


def _store(request: Request) -> ErrorStore:
    store = runtime(request).errors
    if store is None:
        raise Unavailable("error tracking is not enabled on this server")
    return store


def _project(request: Request, slug: str | None) -> tuple[int, str]:
    slug = slug or "default"
    for project in runtime(request).auth.list_projects():
        if project.slug == slug:
            return project.id, project.slug
    raise NotFound(f"no project {slug!r}")


def _slug(request: Request, project_id: int) -> str:
    return str(runtime(request).auth.get_project(project_id).slug)


Sort = Literal["last_seen", "count", "first_seen"]


@router.get("/issues")
def list_issues(
    request: Request,
    project: str | None = None,
    status: str | None = Query(None, description="unresolved, resolved, resolved_in_next_release or ignored"),
    level: str | None = Query(None, description="fatal, error, warning, info or debug"),
    release: str | None = Query(None, description="issues with an event in this release"),
    environment: str | None = Query(None, description="issues with an event in this environment"),
    query: str | None = Query(None, description="text in the title or culprit"),
    assignee: str | None = None,
    sort: Sort = "last_seen",
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    who: Any = Depends(viewer),
) -> dict[str, Any]:
    """A project's issues, newest activity first by default; ``next_offset`` pages on."""
    project_id, slug = _project(request, project)
    return _store(request).list_issues(
        project_id, slug, status=status or None, level=level or None, release=release or None,
        environment=environment or None, query=query or None, assignee=assignee or None, sort=sort,
        limit=limit, offset=offset,
    )


def issue_detail(store: ErrorStore, request: Request, issue_id: int, hours: int = 24) -> dict[str, Any]:
    issue = store.get_issue(issue_id)
    slug = _slug(request, issue.project_id)
    return {
        **issue_json(issue, slug),
        "latest_event": store.event(slug, issue.id),
        "stats": store.hourly_counts(slug, issue.id, hours),
        "tags": store.tag_values(slug, issue.id),
        "activity": store.activity(issue.id),
    }


@router.get("/issues/{issue_id}")
def get_issue(request: Request, issue_id: int, who: Any = Depends(viewer)) -> dict[str, Any]:
    """An issue with its latest event in full (stack trace, breadcrumbs, tags, contexts, request,
    user), its hourly counts over the last day, its tag summary and activity."""
    return issue_detail(_store(request), request, issue_id)


@router.get("/issues/{issue_id}/events")
def issue_events(
    request: Request,
    issue_id: int,
    limit: int = Query(50, ge=1, le=1000),
    before: int | None = Query(None, description="only events before this time (ms since the epoch)"),
    who: Any = Depends(viewer),
) -> dict[str, Any]:
    """An issue's events, newest first."""
    store = _store(request)
    issue = store.get_issue(issue_id)
    events = store.events(_slug(request, issue.project_id), issue.id, limit=limit, before_ms=before)
    return {"events": events}


@router.get("/issues/{issue_id}/events/{event_id}")
def issue_event(request: Request, issue_id: int, event_id: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    """One event of the issue in full (``latest`` for the newest)."""
    store = _store(request)
    issue = store.get_issue(issue_id)
    found = store.event(_slug(request, issue.project_id), issue.id, None if event_id == "latest" else event_id)
    if found is None:
        raise NotFound(f"event {event_id} not found in issue {issue_id}")
    return found


@router.get("/issues/{issue_id}/events/{event_id}/attachments/{index}")
def issue_attachment(request: Request, issue_id: int, event_id: str, index: int, who: Any = Depends(viewer)) -> Response:
    """An attachment sent with an event, as a download (never rendered inline)."""
    import base64

    store = _store(request)
    issue = store.get_issue(issue_id)
    item = store.attachment(_slug(request, issue.project_id), issue.id, event_id, index)
    from urllib.parse import quote

    name = str(item.get("filename") or "attachment")
    # The name is the sender's: an ASCII fallback without quotes or control characters, and the
    # exact name RFC 5987-encoded for browsers that read it.
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)[:200] or "attachment"
    disposition = f'attachment; filename="{fallback}"'
    if fallback != name:
        disposition += f"; filename*=UTF-8''{quote(name[:200], safe='')}"
    return Response(
        base64.b64decode(item.get("data") or ""),
        media_type="application/octet-stream",
        headers={"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"},
    )


@router.get("/issues/{issue_id}/stats")
def issue_stats(
    request: Request, issue_id: int, hours: int = Query(24, ge=1, le=2160), who: Any = Depends(viewer)
) -> dict[str, Any]:
    """Events per hour over the last ``hours`` hours, zeros included: the sparkline."""
    store = _store(request)
    issue = store.get_issue(issue_id)
    return {"hours": hours, "counts": store.hourly_counts(_slug(request, issue.project_id), issue.id, hours)}


class IssueUpdate(BaseModel):
    status: Literal["unresolved", "resolved", "resolved_in_next_release", "ignored"] | None = None
    #: An e-mail or name; "" or null unassigns. Leave the key out to keep the assignee.
    assignee: str | None = None


@router.put("/issues/{issue_id}")
@router.patch("/issues/{issue_id}")
async def update_issue(request: Request, issue_id: int, who: Any = Depends(editor)) -> dict[str, Any]:
    """Change status and/or assignee: ``{"status": "resolved"}``, ``{"assignee": "ana@example.com"}``."""
    try:
        raw = await request.json()
    except ValueError:
        raise BadRequest("body must be a JSON object like {\"status\": \"resolved\"}") from None
    if not isinstance(raw, dict):
        raise BadRequest("body must be a JSON object like {\"status\": \"resolved\"}")
    unknown = sorted(set(raw) - {"status", "assignee"})
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; expected status and/or assignee")
    try:
        spec = IssueUpdate(**raw)
    except ValueError as exc:
        raise BadRequest(f"invalid issue update: {exc}") from None
    store = _store(request)
    kwargs: dict[str, Any] = {"status": spec.status, "actor": who.email}
    if "assignee" in raw:
        kwargs["assignee"] = spec.assignee
    issue = await run_in_threadpool(lambda: store.update_issue(issue_id, **kwargs))
    return issue_json(issue, _slug(request, issue.project_id))


_ACTIONS = {
    "resolve": {"status": "resolved"},
    "resolve-in-next-release": {"status": "resolved_in_next_release"},
    "ignore": {"status": "ignored"},
    "unresolve": {"status": "unresolved"},
}


@router.post("/issues/{issue_id}/{action}")
async def issue_action(request: Request, issue_id: int, action: str, who: Any = Depends(editor)) -> dict[str, Any]:
    """``resolve``, ``resolve-in-next-release``, ``ignore``, ``unresolve``, or ``assign`` with
    ``{"assignee": "..."}`` (empty to unassign)."""
    store = _store(request)
    if action == "assign":
        try:
            raw = await request.json()
        except ValueError:
            raw = None
        if not isinstance(raw, dict) or "assignee" not in raw or not isinstance(raw["assignee"], str | None):
            raise BadRequest('assign needs a JSON body {"assignee": "<e-mail or name>"}')
        kwargs: dict[str, Any] = {"assignee": raw["assignee"], "actor": who.email}
    elif action in _ACTIONS:
        kwargs = {**_ACTIONS[action], "actor": who.email}
    else:
        raise NotFound(f"unknown issue action {action!r}; use one of {', '.join([*_ACTIONS, 'assign'])}")
    issue = await run_in_threadpool(lambda: store.update_issue(issue_id, **kwargs))
    return issue_json(issue, _slug(request, issue.project_id))


@router.get("/errors/outcomes")
def outcomes(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    """What Sentry ingest accepted and dropped since the server started, by category and reason
    (including what SDKs reported dropping themselves, as ``client:<reason>``)."""
    return {"outcomes": _store(request).outcomes.snapshot()}
