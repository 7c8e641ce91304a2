"""Rules over HTTP: Prometheus's ``/api/v1/rules`` and ``/api/v1/alerts``, rule groups kept in the
database, and reloading rule files.

* ``GET /api/v1/rules`` (``type=alert|record``, ``rule_name[]``, ``rule_group[]``, ``file[]``) and
  ``GET /api/v1/alerts``: Prometheus's JSON shapes, so Grafana's alert list and rule views work.
  The project is ``X-Stackwatch-Project`` or ``?project=`` (default ``default``), as for queries.
* ``/api/v1/rules/groups`` (``GET``, ``POST``) and ``/api/v1/rules/groups/{name}`` (``GET``,
  ``PUT``, ``DELETE``): groups in the same shape as in a rule file, as JSON or YAML; validated
  like ``rules check``. A file group of the same project and name wins: creating such a group is
  refused, and one created before the file appeared is listed as ``shadowed``.
* ``POST /-/reload``: re-read the rule files (as SIGHUP does); 400 with every error if a file
  does not load (its previous version keeps running).
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from stackwatch.errors import BadRequest, NotFound, StackwatchError
from stackwatch.rules._duration import parse_duration
from stackwatch.rules.evaluator import FIRING, PENDING, ActiveAlert, GroupState, RuleState
from stackwatch.rules.loader import RuleFileError, parse_group_mapping
from stackwatch.server.deps import body, editor, runtime, viewer
from stackwatch.server.responses import JSONResponse

__all__ = ["router"]

router = APIRouter(tags=["rules"])


class Conflict(StackwatchError):
    status_code = 409


def _project(request: Request) -> str:
    return request.headers.get("x-stackwatch-project") or request.query_params.get("project") or "default"


def _manager(request: Request) -> Any:
    rules = getattr(runtime(request), "rules", None)
    if rules is None:
        raise StackwatchError("the rule manager is not running")
    return rules


def _success(data: Any) -> JSONResponse:
    return JSONResponse({"status": "success", "data": data})


def _rfc3339(ms: int | None) -> str:
    from stackwatch.rules.evaluator import _rfc3339 as fmt

    return fmt(ms)


def _rule_json(rs: RuleState, gs: GroupState) -> dict[str, Any]:
    r = rs.rule
    out: dict[str, Any] = {
        "name": r.name,
        "query": r.query,
        "labels": dict(r.labels),
        "health": rs.health,
        "lastError": rs.last_error,
        "evaluationTime": rs.eval_seconds,
        "lastEvaluation": _rfc3339(rs.last_eval_ms),
    }
    if r.kind == "alert":
        out.update({
            "state": rs.state,
            "duration": r.for_ms / 1000,
            "keepFiringFor": r.keep_firing_for_ms / 1000,
            "annotations": dict(r.annotations),
            "alerts": [a.to_json() for a in rs.active.values() if a.state in (PENDING, FIRING)],
            "type": "alerting",
        })
        if r.source != "promql":
            out["kind"] = r.source
    else:
        out["type"] = "recording"
    return out


@router.get("/api/v1/rules")
def list_rules(request: Request, _: Any = Depends(viewer)) -> JSONResponse:
    """Prometheus's rules endpoint: groups with their rules, health and active alerts."""
    q = request.query_params
    kind = q.get("type")
    if kind not in (None, "", "alert", "record"):
        return JSONResponse({"status": "error", "errorType": "bad_data",
                             "error": f'unsupported type "{kind}": must be "alert" or "record"'}, status_code=400)
    names, groups_f, files_f = set(q.getlist("rule_name[]")), set(q.getlist("rule_group[]")), set(q.getlist("file[]"))
    project = _project(request)
    out = []
    for gs in _manager(request).snapshot():
        g = gs.group
        if g.project != project or (groups_f and g.name not in groups_f) or (files_f and g.file not in files_f):
            continue
        rules = [
            _rule_json(rs, gs) for rs in gs.rules
            if (not kind or rs.rule.kind == kind) and (not names or rs.rule.name in names)
        ]
        if (kind or names) and not rules:
            continue
        out.append({
            "name": g.name,
            "file": g.file,
            "rules": rules,
            "interval": gs.interval_ms / 1000,
            "limit": g.limit,
            "evaluationTime": gs.eval_seconds,
            "lastEvaluation": _rfc3339(gs.last_eval_ms),
        })
    return _success({"groups": out})


@router.get("/api/v1/alerts")
def list_alerts(request: Request, _: Any = Depends(viewer)) -> JSONResponse:
    """Every pending and firing alert of the project's rules."""
    alerts: list[ActiveAlert] = _manager(request).active_alerts(_project(request))
    return _success({"alerts": [a.to_json() for a in alerts]})


# -- groups kept in the database ----------------------------------------------------------------


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw.strip():
        raise BadRequest("empty body: send a rule group (name, interval, rules) as JSON or YAML")
    try:
        if "json" in content_type:
            return orjson.loads(raw)
        return yaml.safe_load(raw)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise BadRequest(f"invalid body: {str(exc).splitlines()[0]}") from None


def _validated(spec: Any, project: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise BadRequest("a rule group must be a mapping with 'name' and 'rules'")
    spec = dict(spec)
    spec.pop("project", None)
    try:
        parse_group_mapping(spec, "db", default_project=project)
    except RuleFileError as exc:
        raise BadRequest("invalid rule group: " + "; ".join(e.message for e in exc.errors)) from None
    if spec.get("interval") is not None:
        parse_duration(spec["interval"])
    return spec


def _file_group_names(request: Request, project: str) -> dict[str, str]:
    return {gs.group.name: gs.group.file for gs in _manager(request).snapshot()
            if gs.group.origin == "file" and gs.group.project == project}


def _record_json(r: Any, shadowed: set[str]) -> dict[str, Any]:
    return {
        "id": r.id,
        "project": r.project,
        "name": r.name,
        "spec": r.spec,
        "shadowed": f"{r.project}/{r.name}" in shadowed,
        "created_at": r.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": r.updated_at.isoformat().replace("+00:00", "Z"),
    }


@router.get("/api/v1/rules/groups")
def list_groups(request: Request, _: Any = Depends(viewer)) -> dict[str, Any]:
    """Rule groups kept in the database for the project."""
    from stackwatch.storage.meta.models import RuleGroupRecord

    rt = runtime(request)
    project = _project(request)
    with rt.meta.session() as s:
        rows = s.scalars(select(RuleGroupRecord).where(RuleGroupRecord.project == project)
                         .order_by(RuleGroupRecord.name)).all()
    shadowed = set(_manager(request).shadowed)
    return {"groups": [_record_json(r, shadowed) for r in rows]}


def _get_record(s: Any, project: str, name: str) -> Any:
    from stackwatch.storage.meta.models import RuleGroupRecord

    row = s.scalars(select(RuleGroupRecord).where(RuleGroupRecord.project == project,
                                                  RuleGroupRecord.name == name)).first()
    if row is None:
        raise NotFound(f"no rule group {name!r} in project {project!r}")
    return row


@router.get("/api/v1/rules/groups/{name}")
def get_group(name: str, request: Request, _: Any = Depends(viewer)) -> dict[str, Any]:
    rt = runtime(request)
    with rt.meta.session() as s:
        row = _get_record(s, _project(request), name)
    return _record_json(row, set(_manager(request).shadowed))


async def _reload(request: Request) -> list[str]:
    manager = _manager(request)
    errors = await run_in_threadpool(manager.reload)
    return [str(e) for e in errors]


@router.post("/api/v1/rules/groups", status_code=201)
async def create_group(request: Request, _: Any = Depends(editor), raw: bytes = Depends(body)) -> JSONResponse:
    """Create a group (same shape as in a rule file); 409 if the name is taken or a file defines it."""
    from stackwatch.storage.meta.models import RuleGroupRecord, utcnow

    project = _project(request)
    spec = _validated(_parse_body(raw, request.headers.get("content-type", "")), project)
    files = _file_group_names(request, project)
    if spec["name"] in files:
        raise Conflict(f"rule group {spec['name']!r} is defined in {files[spec['name']]}; files win on names")
    rt = runtime(request)

    def create() -> dict[str, Any]:
        with rt.meta.session() as s:
            exists = s.scalars(select(RuleGroupRecord).where(RuleGroupRecord.project == project,
                                                             RuleGroupRecord.name == spec["name"])).first()
            if exists is not None:
                raise Conflict(f"rule group {spec['name']!r} already exists in project {project!r}")
            row = RuleGroupRecord(project=project, name=spec["name"], spec=spec, created_at=utcnow(),
                                  updated_at=utcnow())
            s.add(row)
            s.flush()
            return _record_json(row, set())

    out = await run_in_threadpool(create)
    await _reload(request)
    return JSONResponse(out, status_code=201)


@router.put("/api/v1/rules/groups/{name}")
async def replace_group(name: str, request: Request, _: Any = Depends(editor),
                        raw: bytes = Depends(body)) -> dict[str, Any]:
    """Replace a group's rules (its alerts carry over for rules that keep their position and name)."""
    from stackwatch.storage.meta.models import utcnow

    project = _project(request)
    spec = _validated(_parse_body(raw, request.headers.get("content-type", "")), project)
    if spec["name"] != name:
        raise BadRequest(f"the body names group {spec['name']!r}, the URL {name!r}; renaming is not supported")
    rt = runtime(request)

    def update() -> dict[str, Any]:
        with rt.meta.session() as s:
            row = _get_record(s, project, name)
            row.spec = spec
            row.updated_at = utcnow()
            return _record_json(row, set())

    out = await run_in_threadpool(update)
    await _reload(request)
    return out


@router.delete("/api/v1/rules/groups/{name}", status_code=204)
async def delete_group(name: str, request: Request, _: Any = Depends(editor)) -> Response:
    rt = runtime(request)
    project = _project(request)

    def remove() -> None:
        with rt.meta.session() as s:
            s.delete(_get_record(s, project, name))

    await run_in_threadpool(remove)
    await _reload(request)
    return Response(status_code=204)


@router.post("/-/reload")
async def reload(request: Request, _: Any = Depends(editor)) -> JSONResponse:
    """Re-read rule files now (SIGHUP does the same); 400 listing the errors of files that fail."""
    errors = await _reload(request)
    rt = runtime(request)
    dispatcher = getattr(rt, "dispatcher", None)
    if dispatcher is not None and callable(getattr(dispatcher, "reload", None)):
        try:
            await run_in_threadpool(dispatcher.reload)
        except StackwatchError as exc:
            errors.append(str(exc))
    if errors:
        return JSONResponse({"status": "error", "error": "reload failed:\n" + "\n".join(errors)}, status_code=400)
    groups = _manager(request).snapshot()
    return JSONResponse({"status": "success", "groups": len(groups),
                         "rules": sum(len(g.rules) for g in groups)})


