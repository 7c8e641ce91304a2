"""Incidents, on-call schedules, escalation policies, incident reports, and signed ack links.

Reading needs a viewer; changing anything needs an editor. ``/ack/{token}`` needs no login:
the signed token in the link is the capability, for one incident, until it expires. Its GET
only shows a confirmation page (mail scanners and chat unfurlers follow links), the POST of
that page acknowledges.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from stackwatch.errors import BadRequest, StackwatchError
from stackwatch.incidents.directory import Conflict, parse_instant
from stackwatch.incidents.links import LinkError
from stackwatch.incidents.reports import mtta_mttr, weekly_review
from stackwatch.incidents.service import IncidentService
from stackwatch.query.timerange import parse_duration
from stackwatch.server.deps import editor, runtime, viewer

router = APIRouter(prefix="/api/v1", tags=["incidents"])
ack_router = APIRouter(tags=["incidents"])


class Unavailable(StackwatchError):
    status_code = 503


def _service(request: Request) -> IncidentService:
    service = getattr(runtime(request), "incidents", None)
    if service is None:
        raise Unavailable("incidents are not enabled on this server")
    return service  # type: ignore[no-any-return]


def _when(text: str | None, now: datetime, where: str) -> datetime | None:
    """``2025-11-20T10:00:00Z``, Unix seconds, ``now``, or relative ``-7d`` / ``+1h``."""
    if text is None or text == "":
        return None
    text = text.strip()
    if text == "now":
        return now
    if text[0] in "+-" and not text[1:].replace(".", "").isdigit():
        try:
            delta = timedelta(microseconds=parse_duration(text[1:]) / 1000)
            moved = now - delta if text[0] == "-" else now + delta
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc.message}") from None
        except OverflowError:
            raise BadRequest(f"{where}: {text!r} is too far away") from None
        return parse_instant(moved, where)  # the same bounds as absolute times
    return parse_instant(text, where)


def _csv(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncidentIn(Model):
    title: str = Field(min_length=1, max_length=500)
    severity: str = "P2"
    service: str = ""
    summary: str = ""
    assignee: str = ""
    escalation_policy: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class IncidentPatch(Model):
    title: str | None = Field(default=None, min_length=1, max_length=500)
    assignee: str | None = None
    service: str | None = None
    summary: str | None = None


class Note(Model):
    message: str = ""


class SeverityIn(Model):
    severity: str
    reason: str = ""


# -- incidents --------------------------------------------------------------------------------


@router.get("/incidents")
def list_incidents(
    request: Request,
    status: list[str] | None = Query(None, description="triggered, acknowledged, resolved or open; repeat or comma-separate"),
    severity: list[str] | None = Query(None, description="P0-P4 or an alias; repeat or comma-separate"),
    service: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    who: Any = Depends(viewer),
) -> dict[str, Any]:
    svc = _service(request)
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000")
    now = svc.clock()
    # FastAPI reads repeated ?status=a&status=b; a comma list works too.
    statuses = _csv(request.query_params.getlist("status"))
    severities = _csv(request.query_params.getlist("severity"))
    items = svc.list(status=statuses, severity=severities, service=service, since=_when(since, now, "since"),
                     until=_when(until, now, "until"), limit=limit)
    return {"incidents": items}


@router.post("/incidents", status_code=201)
def create_incident(request: Request, spec: IncidentIn, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).create(title=spec.title, severity=spec.severity, by=who.email, service=spec.service,
                                    summary=spec.summary, assignee=spec.assignee,
                                    escalation_policy=spec.escalation_policy, labels=spec.labels)


@router.get("/incidents/{number}")
def get_incident(request: Request, number: int, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _service(request).get(number)


@router.patch("/incidents/{number}")
def update_incident(request: Request, number: int, spec: IncidentPatch, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).update(number, who.email, title=spec.title, assignee=spec.assignee,
                                    service=spec.service, summary=spec.summary)


@router.post("/incidents/{number}/acknowledge")
def acknowledge(request: Request, number: int, note: Note | None = None, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).acknowledge(number, who.email, (note or Note()).message, via="api")


@router.post("/incidents/{number}/resolve")
def resolve(request: Request, number: int, note: Note | None = None, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).resolve(number, who.email, (note or Note()).message)


@router.post("/incidents/{number}/status-updates")
def status_update(request: Request, number: int, note: Note, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).status_update(number, who.email, note.message)


@router.post("/incidents/{number}/comments")
def comment(request: Request, number: int, note: Note, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).comment(number, who.email, note.message)


@router.post("/incidents/{number}/severity")
def change_severity(request: Request, number: int, spec: SeverityIn, who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).change_severity(number, spec.severity, who.email, spec.reason)


@router.get("/incidents/{number}/postmortem")
def get_postmortem(request: Request, number: int, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _service(request).postmortem(number)


@router.put("/incidents/{number}/postmortem")
async def put_postmortem(request: Request, number: int, who: Any = Depends(editor)) -> dict[str, Any]:
    """JSON ``{"markdown": "..."}``, or the Markdown itself as ``text/markdown`` / ``text/plain``."""
    from starlette.concurrency import run_in_threadpool

    raw = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the post-mortem must be UTF-8 text") from None
    if ctype in ("", "application/json"):
        import json

        try:
            data = json.loads(text)
        except ValueError:
            raise BadRequest("expected JSON {\"markdown\": \"...\"} or a text/markdown body") from None
        if not isinstance(data, dict) or not isinstance(data.get("markdown"), str):
            raise BadRequest("expected JSON {\"markdown\": \"...\"}")
        text = data["markdown"]
    return await run_in_threadpool(_service(request).set_postmortem, number, text, who.email)


@router.post("/incidents/{number}/ack-link")
def make_ack_link(request: Request, number: int, who: Any = Depends(editor)) -> dict[str, Any]:
    """A signed acknowledge link for the incident (what pages carry), e.g. to post in a chat."""
    svc = _service(request)
    engine = getattr(runtime(request), "escalation", None)
    incident_id = svc.incident_id(number)
    if engine is None or engine.signer is None:
        raise Unavailable("acknowledge links are not enabled on this server")
    url = engine.ack_url(incident_id, who.email, svc.clock())
    return {"url": url, "expires_in_seconds": engine.signer.ttl_s}


# -- on-call ----------------------------------------------------------------------------------


@router.get("/oncall/schedules")
def list_schedules(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    return {"schedules": _service(request).directory.list_schedules()}


@router.post("/oncall/schedules", status_code=201)
def create_schedule(request: Request, spec: dict[str, Any] = Body(...), who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).directory.create_schedule(spec)


@router.get("/oncall/schedules/{ref}")
def get_schedule(request: Request, ref: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _service(request).directory.get_schedule(ref)


@router.put("/oncall/schedules/{ref}")
def update_schedule(request: Request, ref: str, spec: dict[str, Any] = Body(...),
                    who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).directory.update_schedule(ref, spec)


@router.delete("/oncall/schedules/{ref}", status_code=204)
def delete_schedule(request: Request, ref: str, who: Any = Depends(editor)) -> None:
    _service(request).directory.delete_schedule(ref)


@router.post("/oncall/schedules/{ref}/overrides", status_code=201)
def add_override(request: Request, ref: str, spec: dict[str, Any] = Body(...),
                 who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).directory.add_override(ref, spec)


@router.delete("/oncall/schedules/{ref}/overrides/{override_id}", status_code=204)
def delete_override(request: Request, ref: str, override_id: int, who: Any = Depends(editor)) -> None:
    _service(request).directory.delete_override(ref, override_id)


@router.get("/oncall/who")
def who_is_on_call(request: Request, at: str | None = None, schedule: str | None = None, layer: str | None = None,
                   who: Any = Depends(viewer)) -> dict[str, Any]:
    svc = _service(request)
    now = svc.clock()
    when = _when(at, now, "at") or now
    return {"at": when.isoformat().replace("+00:00", "Z"), "oncall": svc.directory.who(when, schedule, layer)}


@router.get("/oncall/profiles")
def list_profiles(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    return {"profiles": _service(request).directory.list_profiles()}


@router.get("/oncall/profiles/{user}")
def get_profile(request: Request, user: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _service(request).directory.get_profile(user)


@router.put("/oncall/profiles/{user}")
def put_profile(request: Request, user: str, spec: dict[str, Any] = Body(...),
                who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).directory.put_profile(user, spec)


@router.delete("/oncall/profiles/{user}", status_code=204)
def delete_profile(request: Request, user: str, who: Any = Depends(editor)) -> None:
    _service(request).directory.delete_profile(user)


# -- escalation policies ----------------------------------------------------------------------


@router.get("/escalation-policies")
def list_policies(request: Request, who: Any = Depends(viewer)) -> dict[str, Any]:
    return {"escalation_policies": _service(request).directory.list_policies()}


@router.post("/escalation-policies", status_code=201)
def create_policy(request: Request, spec: dict[str, Any] = Body(...), who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).directory.create_policy(spec)


@router.get("/escalation-policies/{ref}")
def get_policy(request: Request, ref: str, who: Any = Depends(viewer)) -> dict[str, Any]:
    return _service(request).directory.get_policy(ref)


@router.put("/escalation-policies/{ref}")
def update_policy(request: Request, ref: str, spec: dict[str, Any] = Body(...),
                  who: Any = Depends(editor)) -> dict[str, Any]:
    return _service(request).directory.update_policy(ref, spec)


@router.delete("/escalation-policies/{ref}", status_code=204)
def delete_policy(request: Request, ref: str, who: Any = Depends(editor)) -> None:
    _service(request).directory.delete_policy(ref)


# -- reports ----------------------------------------------------------------------------------


@router.get("/reports/mtta-mttr")
def report_mtta_mttr(request: Request, start: str | None = None, end: str | None = None,
                     who: Any = Depends(viewer)) -> dict[str, Any]:
    svc = _service(request)
    now = svc.clock()
    end_at = _when(end, now, "end") or now
    start_at = _when(start, now, "start") or end_at - timedelta(days=30)
    if start_at >= end_at:
        raise BadRequest("start must be before end")
    return mtta_mttr(svc.meta, start_at, end_at)


@router.get("/reports/weekly-review")
def report_weekly_review(request: Request, end: str | None = None, days: int = 7,
                         who: Any = Depends(viewer)) -> dict[str, Any]:
    if not 1 <= days <= 366:
        raise BadRequest("days must be between 1 and 366")
    svc = _service(request)
    now = svc.clock()
    report = weekly_review(svc.meta, _when(end, now, "end") or now, days)
    report["notifications"] = _delivery_summary(request, report["start"], report["end"])
    return report


def _delivery_summary(request: Request, start: str, end: str) -> dict[str, Any] | None:
    """Sent and failed notifications in the period, from the dispatcher's delivery log (if any)."""
    dispatcher = getattr(runtime(request), "dispatcher", None)
    if dispatcher is None or not hasattr(dispatcher, "deliveries"):
        return None
    lo, hi = parse_instant(start, "start"), parse_instant(end, "end")
    sent = failed = 0
    failed_by_receiver: dict[str, int] = {}
    for row in dispatcher.deliveries(limit=100_000):
        try:
            at = parse_instant(row["at"], "at")
        except (BadRequest, KeyError):
            continue
        if not lo <= at < hi:
            continue
        if row.get("status") == "success":
            sent += 1
        else:
            failed += 1
            failed_by_receiver[row.get("receiver", "")] = failed_by_receiver.get(row.get("receiver", ""), 0) + 1
    return {"sent": sent, "failed": failed, "failed_by_receiver": failed_by_receiver}


# -- signed acknowledge links -----------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
.sev{{font-weight:bold}} button{{font-size:1.2rem;padding:.6rem 1.4rem;cursor:pointer}}
.muted{{color:#666}}</style></head><body>
<h1>{title}</h1>
{body}
</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _claim(request: Request, token: str) -> Any:
    engine = getattr(runtime(request), "escalation", None)
    if engine is None or engine.signer is None:
        raise LinkError("acknowledge links are not enabled on this server")
    return engine.signer.verify(token, _service(request).clock().timestamp())


@ack_router.get("/ack/{token}", response_class=HTMLResponse)
def ack_page(request: Request, token: str) -> HTMLResponse:
    try:
        claim = _claim(request, token)
        incident = _service(request).get_by_id(claim.incident_id)
    except (LinkError, StackwatchError) as exc:
        return _page("Link not valid", f"<p>{html.escape(str(exc))}</p>", 400 if isinstance(exc, LinkError) else 404)
    e = html.escape
    head = (f"<p><span class=sev>{e(incident['severity'])}</span> &middot; incident #{incident['number']}: "
            f"{e(incident['title'])}</p><p class=muted>Status: {e(incident['status'])}"
            + (f" &middot; service {e(incident['service'])}" if incident["service"] else "") + "</p>")
    if incident["status"] != "triggered":
        by = incident["acked_by"] or incident["resolved_by"] or ""
        return _page(f"Incident #{incident['number']}", head + f"<p>Already {e(incident['status'])}"
                     + (f" by {e(by)}" if by else "") + ". Nothing to do.</p>")
    form = (f'<form method="post" action="/ack/{e(token)}"><button type="submit">Acknowledge</button></form>'
            "<p class=muted>Acknowledging stops the escalation: nobody else will be paged for this incident.</p>")
    return _page(f"Acknowledge incident #{incident['number']}?", head + form)


@ack_router.post("/ack/{token}", response_class=HTMLResponse)
def ack_confirm(request: Request, token: str) -> HTMLResponse:
    try:
        claim = _claim(request, token)
        svc = _service(request)
        number = svc.get_by_id(claim.incident_id)["number"]
    except (LinkError, StackwatchError) as exc:
        return _page("Link not valid", f"<p>{html.escape(str(exc))}</p>", 400 if isinstance(exc, LinkError) else 404)
    try:
        incident = svc.acknowledge(number, claim.user or "acknowledge link", via="signed link")
    except Conflict as exc:
        return _page(f"Incident #{number}", f"<p>{html.escape(exc.message)}</p>", 409)
    return _page(f"Incident #{number} acknowledged",
                 f"<p>Acknowledged by {html.escape(incident['acked_by'] or '')}. Escalation stopped.</p>")
