"""``stackwatch incidents ...`` and ``stackwatch oncall ...``: clients of the server's HTTP API.

Like every command but ``server``, these only talk HTTP (``--url``/``STACKWATCH_URL``,
``--token``/``STACKWATCH_TOKEN``): the incident store belongs to the server process.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["incidents_app", "oncall_app"]

incidents_app = typer.Typer(help="List, acknowledge and resolve incidents; incident reports.", no_args_is_help=True)
oncall_app = typer.Typer(help="Who is on call.", no_args_is_help=True)

console = Console()
err_console = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8040"
UrlOpt = Annotated[str, typer.Option("--url", envvar="STACKWATCH_URL", help="Server URL.")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="STACKWATCH_TOKEN", help="API token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="The API's JSON as it is.")]

_SEV_STYLE = {"P0": "bold red", "P1": "red", "P2": "yellow", "P3": "cyan", "P4": "dim"}
_STATUS_STYLE = {"triggered": "bold red", "acknowledged": "yellow", "resolved": "green"}


def _call(method: str, url: str, token: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=url or DEFAULT_URL, headers=headers, timeout=60) as client:
            resp = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        err_console.print(f"[red]error:[/red] cannot reach {url or DEFAULT_URL}: {exc}")
        raise typer.Exit(1) from None
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text
        err_console.print(f"[red]error:[/red] {resp.status_code}: {message}")
        raise typer.Exit(1)
    return resp.json() if resp.content else {}


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _ago(iso: str | None) -> str:
    return (iso or "")[:16].replace("T", " ")


@incidents_app.command("list")
def list_incidents(
    status: Annotated[str, typer.Option(help="open, triggered, acknowledged, resolved, or all.")] = "open",
    severity: Annotated[str, typer.Option(help="Only these severities, e.g. P0,P1.")] = "",
    service: Annotated[str, typer.Option(help="Only this service.")] = "",
    limit: Annotated[int, typer.Option(help="Most incidents to show.")] = 50,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Incidents, newest first (open ones by default)."""
    params: dict[str, Any] = {"limit": limit}
    if status != "all":
        params["status"] = status
    if severity:
        params["severity"] = severity
    if service:
        params["service"] = service
    data = _call("GET", url, token, "/api/v1/incidents", params=params)
    if as_json:
        _dump(data)
        return
    table = Table(box=None, header_style="bold")
    for col in ("#", "sev", "status", "opened (UTC)", "service", "title", "acked by"):
        table.add_column(col)
    for i in data["incidents"]:
        table.add_row(str(i["number"]), f"[{_SEV_STYLE[i['severity']]}]{i['severity']}[/]",
                      f"[{_STATUS_STYLE[i['status']]}]{i['status']}[/]", _ago(i["opened_at"]), escape(i["service"]),
                      escape(i["title"]), escape(i["acked_by"] or ""))
    console.print(table)
    if not data["incidents"]:
        err_console.print("[dim]no incidents[/dim]")


@incidents_app.command("show")
def show(number: int, as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """An incident with its timeline."""
    inc = _call("GET", url, token, f"/api/v1/incidents/{number}")
    if as_json:
        _dump(inc)
        return
    console.print(f"[bold]#{inc['number']}[/bold] [{_SEV_STYLE[inc['severity']]}]{inc['severity']}[/] "
                  f"[{_STATUS_STYLE[inc['status']]}]{inc['status']}[/] {escape(inc['title'])}", highlight=False)
    for entry in inc["timeline"]:
        console.print(f"  [dim]{_ago(entry['at'])}[/dim] {entry['kind']:<16} {escape(entry['who'])}: "
                      f"{escape(entry['message'])}", highlight=False, soft_wrap=True)


@incidents_app.command("ack")
def ack(number: int, message: Annotated[str, typer.Option(help="A note for the timeline.")] = "",
        url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Acknowledge an incident: stops its escalation."""
    inc = _call("POST", url, token, f"/api/v1/incidents/{number}/acknowledge", json={"message": message})
    console.print(f"incident #{inc['number']} acknowledged by {inc['acked_by']}", highlight=False)


@incidents_app.command("resolve")
def resolve(number: int, message: Annotated[str, typer.Option(help="What fixed it (goes in the post-mortem).")] = "",
            url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Resolve an incident; a post-mortem draft is written."""
    inc = _call("POST", url, token, f"/api/v1/incidents/{number}/resolve", json={"message": message})
    console.print(f"incident #{inc['number']} resolved by {inc['resolved_by']}; "
                  f"post-mortem draft: {inc['url']}/postmortem", highlight=False)


@incidents_app.command("update")
def update(number: int, message: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Post a status update to an incident's timeline."""
    _call("POST", url, token, f"/api/v1/incidents/{number}/status-updates", json={"message": message})
    console.print(f"status update posted to incident #{number}")


@incidents_app.command("create")
def create(title: str, severity: Annotated[str, typer.Option(help="P0-P4 or critical/high/medium/low/info.")] = "P2",
           service: Annotated[str, typer.Option(help="Affected service.")] = "",
           url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Open an incident by hand."""
    inc = _call("POST", url, token, "/api/v1/incidents", json={"title": title, "severity": severity,
                                                               "service": service})
    console.print(f"incident #{inc['number']} opened ({inc['severity']})", highlight=False)


@incidents_app.command("review")
def review(days: Annotated[int, typer.Option(help="Length of the period, ending now.")] = 7,
           as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """The weekly review: noisiest alerts, alerts nobody acted on, flapping rules, MTTA/MTTR."""
    data = _call("GET", url, token, "/api/v1/reports/weekly-review", params={"days": days})
    if as_json:
        _dump(data)
        return
    console.print(f"[bold]Weekly review[/bold] {_ago(data['start'])} to {_ago(data['end'])} UTC: "
                  f"{data['alert_firings']} alert firings, {data['incidents_opened']} incidents", highlight=False)
    sections = (("Noisiest alerts", "noisiest_alerts"), ("Alerts that never led to action", "alerts_never_acted_on"),
                ("Flapping rules", "flapping_rules"))
    for title, key in sections:
        console.print(f"\n[bold]{title}[/bold]")
        for row in data[key] or [{"alertname": "(none)", "firings": ""}]:
            console.print(f"  {row['alertname']:<40} {row['firings']}", highlight=False, markup=False)
    console.print("\n[bold]Missed incidents[/bold] (resolved without acknowledgement)")
    for m in data["missed_incidents"] or [{"number": "-", "severity": "", "title": "(none)"}]:
        console.print(f"  #{m['number']} {m['severity']} {m['title']}", highlight=False, markup=False)
    notes = data.get("notifications")
    if notes:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(notes["failed_by_receiver"].items()))
        console.print(f"\nNotifications: {notes['sent']} sent, {notes['failed']} failed"
                      + (f" ({failed})" if failed else ""), highlight=False, markup=False)
    figures = data["mtta_mttr"]
    console.print(f"\nMTTA {figures['mtta']['mean_seconds']} s over {figures['mtta']['count']}, "
                  f"MTTR {figures['mttr']['mean_seconds']} s over {figures['mttr']['count']}", highlight=False)


@incidents_app.command("mtta")
def mtta(since: Annotated[str, typer.Option(help="Start of the period, e.g. -30d or a date.")] = "-30d",
         as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """MTTA and MTTR per severity and per service."""
    data = _call("GET", url, token, "/api/v1/reports/mtta-mttr", params={"start": since})
    if as_json:
        _dump(data)
        return
    table = Table(box=None, header_style="bold")
    for col in ("", "incidents", "MTTA (s)", "MTTR (s)"):
        table.add_column(col)
    rows = [("all", data["overall"])] + list(data["by_severity"].items()) + [
        (f"service {k}", v) for k, v in data["by_service"].items()]
    for name, fig in rows:
        table.add_row(name, str(fig["incidents"]), str(fig["mtta"]["mean_seconds"] or "-"),
                      str(fig["mttr"]["mean_seconds"] or "-"))
    console.print(table)


@oncall_app.command("now")
def now(schedule: Annotated[str, typer.Option(help="Only this schedule.")] = "",
        layer: Annotated[str, typer.Option(help="Only this layer (primary, secondary...).")] = "",
        at: Annotated[str, typer.Option(help="Another time than now (RFC 3339, or +8h).")] = "",
        as_json: JsonOpt = False, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Who is on call now (or at --at)."""
    params = {k: v for k, v in (("schedule", schedule), ("layer", layer), ("at", at)) if v}
    data = _call("GET", url, token, "/api/v1/oncall/who", params=params)
    if as_json:
        _dump(data)
        return
    for row in data["oncall"]:
        until = _ago(row["shift_end"])
        how = " (override)" if row["source"] == "override" else ""
        console.print(f"{escape(row['schedule'])}/{row['layer']}: [bold]{escape(row['user'] or 'nobody')}[/bold]{how}"
                      + (f" until {until} UTC" if until else ""), highlight=False)
    if not data["oncall"]:
        err_console.print("[dim]no on-call schedules[/dim]")
