"""Alertmanager's v2 API, plus maintenance windows and the notification delivery log.

* ``POST /api/v2/alerts``: what Prometheus (``alerting.alertmanagers``) and other senders post;
  an editor API token or a project ingest token (Prometheus's ``authorization`` or
  ``basic_auth`` settings send either).
* ``GET /api/v2/alerts``, ``GET /api/v2/alerts/groups``, ``GET /api/v2/silences``,
  ``GET /api/v2/silence/{id}``, ``GET /api/v2/status``, ``GET /api/v2/receivers``: viewer.
* ``POST /api/v2/silences``, ``DELETE /api/v2/silence/{id}``: editor. amtool and Grafana's
  Alertmanager data source use these unchanged.
* ``/api/v1/maintenance`` (CRUD) and ``GET /api/v1/notifications`` (delivery results): ours.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from stackwatch import __version__
from stackwatch.alerting.config import redacted
from stackwatch.alerting.dispatcher import Dispatcher, parse_time
from stackwatch.alerting.matchers import Matcher, parse_matchers
from stackwatch.errors import BadRequest, StackwatchError, Unauthorized
from stackwatch.model.alerts import Alert
from stackwatch.server.deps import body, credential, editor, runtime, viewer

__all__ = ["router"]

router = APIRouter(tags=["alerting"])

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_ALERTS_PER_POST = 10_000


def _dispatcher(request: Request) -> Dispatcher:
    d = getattr(runtime(request), "dispatcher", None)
    if d is None:
        raise StackwatchError("alerting is not running")
    return d  # type: ignore[no-any-return]


def _who(principal: Any) -> str:
    return str(getattr(principal, "email", "") or "")


def _alert_sender(request: Request) -> str:
    """Only an API token with the editor role may post alerts.

    Not a project's ingest token: that is also the key of its Sentry DSN, which browser apps
    ship to every visitor, and a posted alert can page the on-call with any text and links.
    """
    rt = runtime(request)
    token = credential(request)
    if not token:
        raise Unauthorized("missing token: send 'Authorization: Bearer <API token with the editor role>' "
                           "(Prometheus: alertmanagers[].authorization.credentials)")
    try:
        who = rt.auth.verify_api_token(token)
    except Unauthorized:
        if _is_ingest_token(rt, token):
            raise Unauthorized("an ingest token cannot post alerts (it is also the public key of the "
                               "project's Sentry DSN): use an API token with the editor role") from None
        raise
    rt.auth.require(who, "editor")
    return _who(who)


def _is_ingest_token(rt: Any, token: str) -> bool:
    try:
        rt.auth.verify_ingest_token(token)
    except Unauthorized:
        return False
    return True


def _filters(request: Request) -> list[Matcher]:
    out: list[Matcher] = []
    for text in request.query_params.getlist("filter"):
        try:
            out.extend(parse_matchers(text))
        except ValueError as exc:
            raise BadRequest(f"filter: {exc}") from None
    return out


def _flag(request: Request, name: str, default: bool = True) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequest(f"{name}: expected true or false, got {value!r}")


def _postable(i: int, raw: Any) -> Alert:
    where = f"alert {i}"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: expected an object with labels")
    labels = raw.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise BadRequest(f"{where}: labels must be a non-empty object")
    for k, v in labels.items():
        if not _LABEL_NAME.match(k):
            raise BadRequest(f"{where}: invalid label name {k!r}")
        if not isinstance(v, str):
            raise BadRequest(f"{where}: label {k!r} must be a string")
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise BadRequest(f"{where}: annotations must be an object of strings")
    try:
        starts = parse_time(raw["startsAt"], "startsAt") if raw.get("startsAt") else None
        ends = parse_time(raw["endsAt"], "endsAt") if raw.get("endsAt") else None
    except ValueError as exc:
        raise BadRequest(f"{where}: {exc}") from None
    if starts is not None and starts.year <= 1:
        starts = None
    if ends is not None and ends.year <= 1:
        ends = None
    if starts and ends and ends < starts:
        raise BadRequest(f"{where}: endsAt is before startsAt")
    value = raw.get("value")
    alert = Alert(labels={k: v for k, v in labels.items() if v != ""}, annotations=dict(annotations),
                  ends_at=ends, generator_url=str(raw.get("generatorURL") or ""),
                  value=float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None)
    if starts is not None:
        alert.starts_at = starts
    return alert


@router.post("/api/v2/alerts")
async def post_alerts(request: Request, raw: bytes = Depends(body)) -> Response:
    _alert_sender(request)
    try:
        items = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise BadRequest("expected a JSON array of alerts")
    if len(items) > _MAX_ALERTS_PER_POST:
        raise BadRequest(f"at most {_MAX_ALERTS_PER_POST} alerts per request")
    alerts = [_postable(i, item) for i, item in enumerate(items)]
    _dispatcher(request).put_alerts(alerts)
    return Response(status_code=200)


@router.get("/api/v2/alerts")
def get_alerts(request: Request, who: Any = Depends(viewer)) -> list[dict[str, Any]]:
    return _dispatcher(request).list_alerts(
        _filters(request), active=_flag(request, "active"), silenced=_flag(request, "silenced"),
        inhibited=_flag(request, "inhibited"), muted=_flag(request, "muted"),
        receiver=request.query_params.get("receiver") or None,
        include_resolved=_flag(request, "resolved", False))


@router.get("/api/v2/alerts/groups")
def get_groups(request: Request, who: Any = Depends(viewer)) -> list[dict[str, Any]]:
    return _dispatcher(request).list_groups(_filters(request))


@router.get("/api/v2/silences")
def get_silences(request: Request, who: Any = Depends(viewer)) -> list[dict[str, Any]]:
    return _dispatcher(request).list_silences(_filters(request))


@router.post("/api/v2/silences")
async def post_silence(request: Request, who: Any = Depends(editor)) -> dict[str, Any]:
    try:
        spec = orjson.loads(await request.body() or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    sid = await run_in_threadpool(_dispatcher(request).put_silence, spec, _who(who))
    return {"silenceID": sid}


@router.get("/api/v2/silence/{silence_id}")
def get_silence(request: Request, silence_id: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _dispatcher(request).get_silence(silence_id)


@router.delete("/api/v2/silence/{silence_id}")
def delete_silence(request: Request, silence_id: str, who: Any = Depends(editor)) -> Response:
    _dispatcher(request).expire_silence(silence_id)
    return Response(status_code=200)


@router.get("/api/v2/receivers")
def get_receivers(request: Request, who: Any = Depends(viewer)) -> list[dict[str, Any]]:
    return [{"name": name} for name in _dispatcher(request).config.receivers]


@router.get("/api/v2/status")
def get_status(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    d = _dispatcher(request)
    rt = runtime(request)
    return {
        "cluster": {"name": "", "status": "disabled", "peers": []},
        "versionInfo": {"version": __version__, "branch": "", "revision": "", "buildUser": "", "buildDate": "",
                        "goVersion": "stackwatch"},
        "config": {"original": yaml.safe_dump(redacted(d.config.original), sort_keys=False)},
        "uptime": _iso_uptime(rt.started_at),
    }


def _iso_uptime(started: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(started, dt.UTC).isoformat().replace("+00:00", "Z")


@router.get("/api/v1/alerting/routes/test")
def test_routes(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    """Which receivers a label set goes to: ``?labels=severity="critical",team="db"``."""
    text = request.query_params.get("labels", "")
    try:
        matchers = parse_matchers(text) if text else []
    except ValueError as exc:
        raise BadRequest(f"labels: {exc}") from None
    if any(m.op != "=" for m in matchers):
        raise BadRequest("labels: use name=\"value\" pairs only")
    labels = {m.name: m.value for m in matchers}
    return {"labels": labels, "receivers": _dispatcher(request).routes_for(labels)}


@router.get("/api/v1/alerting/severities")
def list_severities(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    """The severity levels with their aliases and response SLAs (seconds; null when none)."""
    from stackwatch.alerting.severity import SEVERITIES

    return {"severities": [
        {"code": s.code, "name": s.name, "aliases": list(s.aliases), "pages": s.pages,
         "ack_within_s": s.ack_within.total_seconds() if s.ack_within else None,
         "respond_within_s": s.respond_within.total_seconds(), "description": s.description}
        for s in SEVERITIES]}


# -- maintenance windows ------------------------------------------------------------------------

async def _json_object(request: Request) -> dict[str, Any]:
    try:
        spec = orjson.loads(await request.body() or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise BadRequest("expected a JSON object")
    return spec


@router.get("/api/v1/maintenance")
def list_maintenance(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    return {"windows": _dispatcher(request).list_maintenance()}


@router.post("/api/v1/maintenance", status_code=201)
async def create_maintenance(request: Request, who: Any = Depends(editor)) -> dict[str, Any]:
    spec = await _json_object(request)
    return await run_in_threadpool(_dispatcher(request).put_maintenance, spec, _who(who))


@router.get("/api/v1/maintenance/{window_id}")
def get_maintenance(request: Request, window_id: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _dispatcher(request).get_maintenance(window_id)


@router.put("/api/v1/maintenance/{window_id}")
async def update_maintenance(request: Request, window_id: str, who: Any = Depends(editor)) -> dict[str, Any]:
    spec = await _json_object(request)
    return await run_in_threadpool(_dispatcher(request).put_maintenance, spec, _who(who), window_id)


@router.delete("/api/v1/maintenance/{window_id}", status_code=204)
def delete_maintenance(request: Request, window_id: str, who: Any = Depends(editor)) -> Response:
    _dispatcher(request).delete_maintenance(window_id)
    return Response(status_code=204)


# -- delivery log -------------------------------------------------------------------------------

@router.get("/api/v1/notifications")
def list_notifications(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    raw_limit = request.query_params.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise BadRequest("limit: expected an integer between 1 and 1000")
    status = request.query_params.get("status") or None
    if status not in (None, "success", "failed"):
        raise BadRequest("status: expected success or failed")
    return {"notifications": _dispatcher(request).deliveries(int(raw_limit), request.query_params.get("receiver"),
                                                            status)}
