"""Projects, saved searches and retention settings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from stackwatch.errors import NotFound
from stackwatch.server.deps import admin, editor, runtime, viewer

router = APIRouter(prefix="/api/v1", tags=["admin"])


def _project_id(request: Request, slug: str | None = None) -> int:
    slug = slug or request.query_params.get("project") or "default"
    for project in runtime(request).auth.list_projects():
        if project.slug == slug:
            return project.id
    raise NotFound(f"no project {slug!r}")


def _project_json(request: Request, project: Any) -> dict[str, Any]:
    rt = runtime(request)
    base = rt.settings.url.rstrip("/")
    if not rt.settings.public_url and rt.settings.host in ("0.0.0.0", "::", ""):
        # Listening on every address says nothing about the one clients use: take the one this
        # request came to (set public_url when a proxy sits in front).
        base = str(request.base_url).rstrip("/")
    key = rt.auth.dsn_public_key(project.id)
    scheme, _, hostport = base.partition("://")
    dsn = f"{scheme}://{key}@{hostport}/{project.id}" if key else None
    return {
        "id": project.id,
        "slug": project.slug,
        "name": project.name,
        "created_at": project.created_at.isoformat(),
        "dsn": dsn,
        "ingest": {
            "ndjson": f"{base}/api/v1/logs",
            "otlp_logs": f"{base}/v1/logs",
            "elasticsearch_bulk": f"{base}/_bulk",
            "sentry_envelope": f"{base}/api/{project.id}/envelope/",
            "sentry_store": f"{base}/api/{project.id}/store/",
        },
    }


@router.get("/projects")
def list_projects(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    return {"projects": [_project_json(request, p) for p in runtime(request).auth.list_projects()]}


class NewProject(BaseModel):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str = ""


@router.post("/projects", status_code=201)
def create_project(request: Request, spec: NewProject, who: Any = Depends(admin)) -> dict[str, Any]:
    project, token = runtime(request).auth.create_project(spec.slug, spec.name or spec.slug)
    return {**_project_json(request, project), "ingest_token": token}


def _retention_json(rt: Any, project_id: int, merged: dict[str, Any]) -> dict[str, Any]:
    """Log tiers per log type, and ``metrics.days`` (the project's or the server's default)."""
    days = rt.auth.metrics_retention_days(project_id, rt.settings.metrics_retention_days)
    return {"retention": {**merged, "metrics": {"days": days}}}


@router.get("/projects/{slug}/retention")
def get_retention(request: Request, slug: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    rt = runtime(request)
    project_id = _project_id(request, slug)
    return _retention_json(rt, project_id, rt.auth.get_retention(project_id))


@router.put("/projects/{slug}/retention")
async def set_retention(request: Request, slug: str, who: Any = Depends(admin)) -> dict[str, Any]:
    overrides = await request.json()
    rt = runtime(request)
    project_id = _project_id(request, slug)
    merged = await run_in_threadpool(rt.auth.set_retention, project_id, overrides)
    return await run_in_threadpool(_retention_json, rt, project_id, merged)


def _search_json(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "query": s.query,
        "time_range": s.time_range,
        "owner_id": s.owner_id,
        "created_at": s.created_at.isoformat(),
        "updated_at": s.updated_at.isoformat(),
    }


class SavedSearchIn(BaseModel):
    name: str
    query: str = ""
    time_range: str = "1h"


class SavedSearchPatch(BaseModel):
    name: str | None = None
    query: str | None = None
    time_range: str | None = None


@router.get("/saved-searches")
def list_saved_searches(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    items = runtime(request).auth.list_saved_searches(_project_id(request))
    return {"saved_searches": [_search_json(s) for s in items]}


@router.post("/saved-searches", status_code=201)
def create_saved_search(request: Request, spec: SavedSearchIn, who: Any = Depends(editor)) -> dict[str, Any]:
    from stackwatch.query.logql import compile_query

    compile_query(spec.query)  # a saved search that cannot run is refused now, not at 3 a.m.
    s = runtime(request).auth.create_saved_search(
        _project_id(request), who.user_id, spec.name, spec.query, spec.time_range
    )
    return _search_json(s)


@router.get("/saved-searches/{search_id}")
def get_saved_search(request: Request, search_id: int, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _search_json(runtime(request).auth.get_saved_search(_project_id(request), search_id))


@router.put("/saved-searches/{search_id}")
@router.patch("/saved-searches/{search_id}")
def update_saved_search(
    request: Request, search_id: int, spec: SavedSearchPatch, who: Any = Depends(editor)
) -> dict[str, Any]:
    if spec.query is not None:
        from stackwatch.query.logql import compile_query

        compile_query(spec.query)
    s = runtime(request).auth.update_saved_search(
        _project_id(request), search_id, name=spec.name, query=spec.query, time_range=spec.time_range
    )
    return _search_json(s)


@router.delete("/saved-searches/{search_id}", status_code=204)
def delete_saved_search(request: Request, search_id: int, who: Any = Depends(editor)) -> None:
    runtime(request).auth.delete_saved_search(_project_id(request), search_id)
