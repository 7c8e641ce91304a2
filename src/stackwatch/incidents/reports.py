"""Figures over a period: MTTA and MTTR by severity and service, and the weekly alert review.

MTTA (mean time to acknowledge) is measured from opening to the first acknowledgement, over
the incidents opened in the period that were acknowledged; MTTR (mean time to resolve) from
opening to resolution, over those resolved. Medians and 90th percentiles come along, because
one 3-hour incident hides a week of 5-minute ones in a mean.

The weekly review is the first guide's checklist, made of the alert occurrences the incident
listener records for every notified alert group (whether or not it opened an incident):

* noisiest alerts: the alert names that fired most often;
* alerts that never led to action: names none of whose firings belonged to an incident a
  person acknowledged, updated or resolved (they woke nobody up usefully: tune or delete them);
* flapping rules: a label set firing again and again, mostly briefly;
* missed incidents: incidents resolved without anyone acknowledging them.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from stackwatch.incidents.directory import iso
from stackwatch.incidents.severity import SEVERITIES, SLA, without_level
from stackwatch.storage.meta.db import MetaStore
from stackwatch.storage.meta.models import AlertOccurrence, Incident, TimelineEntry

__all__ = ["mtta_mttr", "weekly_review"]

_HUMAN_KINDS = ("acknowledged", "status_update", "severity_changed", "comment", "resolved")


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean_seconds": None, "median_seconds": None, "p90_seconds": None}
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {
        "count": len(values),
        "mean_seconds": round(statistics.fmean(values), 3),
        "median_seconds": round(statistics.median(values), 3),
        "p90_seconds": round(p90, 3),
    }


def mtta_mttr(meta: MetaStore, start: datetime, end: datetime) -> dict[str, Any]:
    """MTTA and MTTR of incidents opened in ``[start, end)``: overall, per severity, per service."""
    with meta.session() as s:
        rows = s.execute(sa.select(Incident.severity, Incident.service, Incident.opened_at, Incident.acked_at,
                                   Incident.resolved_at)
                         .where(Incident.opened_at >= start, Incident.opened_at < end)).all()

    def figures(selected: list[Any]) -> dict[str, Any]:
        tta = [(r.acked_at - r.opened_at).total_seconds() for r in selected if r.acked_at]
        ttr = [(r.resolved_at - r.opened_at).total_seconds() for r in selected if r.resolved_at]
        # Share of acknowledged / resolved incidents that met their severity's SLA (guide 3's table).
        ack_ok = sum(1 for r in selected if r.acked_at and
                     (r.acked_at - r.opened_at).total_seconds() <= SLA[r.severity]["acknowledge_minutes"] * 60)
        res_ok = sum(1 for r in selected if r.resolved_at and
                     (r.resolved_at - r.opened_at).total_seconds() <= SLA[r.severity]["resolve_minutes"] * 60)
        return {
            "incidents": len(selected),
            "mtta": _stats(tta),
            "mttr": _stats(ttr),
            "sla_met": {"acknowledge": round(ack_ok / len(tta), 4) if tta else None,
                        "resolve": round(res_ok / len(ttr), 4) if ttr else None},
        }

    by_severity = {sev: figures([r for r in rows if r.severity == sev]) for sev in SEVERITIES}
    services = sorted({r.service for r in rows})
    return {
        "start": iso(start),
        "end": iso(end),
        "overall": figures(list(rows)),
        "by_severity": {k: v for k, v in by_severity.items() if v["incidents"]},
        "by_service": {svc or "(none)": figures([r for r in rows if r.service == svc]) for svc in services},
    }


def _firings(occurrences: Sequence[AlertOccurrence]) -> list[AlertOccurrence]:
    """One occurrence per firing: an alert that changes level while it fires (a threshold
    rule's warning turning critical) is a new occurrence, as its severity label changes, but it
    is the same alert firing once. Occurrences of the same labels but the level that overlap in
    time are counted as the first of them."""
    out: list[AlertOccurrence] = []
    by_identity: dict[Any, list[AlertOccurrence]] = defaultdict(list)
    for o in occurrences:
        by_identity[o.alertname, without_level(o.labels or {})].append(o)
    for group in by_identity.values():
        group.sort(key=lambda o: o.starts_at)
        out.append(group[0])
        until = group[0].ends_at  # the end of the firing so far; None while it fires
        for o in group[1:]:
            if until is None or o.starts_at <= until:  # the same firing, at another level
                if until is not None:
                    until = None if o.ends_at is None else max(until, o.ends_at)
                continue
            out.append(o)
            until = o.ends_at
    return out


def weekly_review(meta: MetaStore, end: datetime, days: int = 7, *, top: int = 10, flap_min_firings: int = 3,
                  flap_short: timedelta = timedelta(minutes=15)) -> dict[str, Any]:
    """The review of ``[end - days, end)``; see the module docs for what each list means."""
    start = end - timedelta(days=days)
    with meta.session() as s:
        occurrences = s.scalars(sa.select(AlertOccurrence).where(AlertOccurrence.starts_at >= start,
                                                                 AlertOccurrence.starts_at < end)).all()
        incident_ids = {o.incident_id for o in occurrences if o.incident_id is not None}
        acted: set[int] = set()
        if incident_ids:
            acted = set(s.scalars(
                sa.select(TimelineEntry.incident_id).where(TimelineEntry.incident_id.in_(sorted(incident_ids)),
                                                           TimelineEntry.kind.in_(_HUMAN_KINDS),
                                                           TimelineEntry.who != "stackwatch")
            ))
        incidents = s.scalars(sa.select(Incident).where(Incident.opened_at >= start, Incident.opened_at < end)
                              .order_by(Incident.number)).all()
        missed = [
            {"number": i.number, "title": i.title, "severity": i.severity, "opened_at": iso(i.opened_at),
             "resolved_at": iso(i.resolved_at), "resolved_by": i.resolved_by}
            for i in incidents if i.status == "resolved" and i.acked_at is None
        ]
        summary = mtta_mttr(meta, start, end)

    firings = _firings(occurrences)
    counts = Counter(o.alertname for o in firings)
    by_name: dict[str, list[AlertOccurrence]] = defaultdict(list)
    for o in firings:
        by_name[o.alertname].append(o)

    noisiest = []
    for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
        group = by_name[name]
        noisiest.append({
            "alertname": name,
            "firings": count,
            "label_sets": len({o.fingerprint for o in group}),
            "severity": min((o.severity for o in group), default="P4"),
            "incidents": len({o.incident_id for o in group if o.incident_id}),
        })

    never_acted = []
    for name, group in sorted(by_name.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if not any(o.incident_id in acted for o in group):
            never_acted.append({
                "alertname": name,
                "firings": len(group),
                "opened_incidents": len({o.incident_id for o in group if o.incident_id}),
                "severity": min((o.severity for o in group), default="P4"),
            })

    by_fingerprint: dict[str, list[AlertOccurrence]] = defaultdict(list)
    for o in occurrences:
        by_fingerprint[o.fingerprint].append(o)
    flapping = []
    for fingerprint, group in by_fingerprint.items():
        if len(group) < flap_min_firings:
            continue
        durations = [(o.ends_at - o.starts_at) for o in group if o.ends_at is not None]
        short = [d for d in durations if d < flap_short]
        if len(short) * 2 >= len(group):
            flapping.append({
                "alertname": group[0].alertname,
                "labels": group[0].labels,
                "fingerprint": fingerprint,
                "firings": len(group),
                "short_firings": len(short),
                "median_firing_seconds": statistics.median(d.total_seconds() for d in durations) if durations else None,
            })
    flapping.sort(key=lambda f: (-f["firings"], f["alertname"]))

    return {
        "start": iso(start),
        "end": iso(end),
        "alert_firings": len(firings),
        "incidents_opened": len(incidents),
        "noisiest_alerts": noisiest,
        "alerts_never_acted_on": never_acted,
        "flapping_rules": flapping,
        "missed_incidents": missed,
        "mtta_mttr": summary["overall"],
        "checklist": [
            "Tune or delete the noisiest alerts and those that never led to action",
            "Add 'for:' or 'keep_firing_for:' to flapping rules",
            "Review missed incidents: why was nobody paged, or why did nobody acknowledge?",
            "Verify alert thresholds are appropriate",
        ],
    }
