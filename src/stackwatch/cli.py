"""The ``stackwatch`` command: the server, and clients of its HTTP API.

Only ``server`` opens the stores; every other command talks to a running server over HTTP
(``--url`` / ``STACKWATCH_URL``) with a token (``--token`` / ``STACKWATCH_TOKEN``), because the
embedded stores are in-process and belong to the server.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

from stackwatch.errors import ConfigError

app = typer.Typer(help="Stackwatch: monitoring and observability for Python web apps.", no_args_is_help=True)
logs_app = typer.Typer(help="Search, tail and import logs.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration reference.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
app.add_typer(config_app, name="config")

from stackwatch.rules.cli import rules_app  # noqa: E402 - typer only; the rules load lazily

app.add_typer(rules_app, name="rules")

from stackwatch.incidents.cli import incidents_app, oncall_app  # noqa: E402 - typer only, HTTP clients

app.add_typer(incidents_app, name="incidents")
app.add_typer(oncall_app, name="oncall")

console = Console()
err_console = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="STACKWATCH_URL", help="Server URL.")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="STACKWATCH_TOKEN", help="API token.")]

DEFAULT_URL = "http://127.0.0.1:8040"


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def server(
    data_dir: Annotated[str | None, typer.Option(help="Data directory (default ./data).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default 8040).")] = None,
    config: Annotated[str | None, typer.Option(help="YAML configuration file.")] = None,
) -> None:
    """Run the Stackwatch server."""
    import logging

    import uvicorn

    from stackwatch.config import load_settings
    from stackwatch.server.app import create_app
    from stackwatch.server.runtime import Runtime

    try:
        settings = load_settings(config, data_dir=data_dir, host=host, port=port)
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        from stackwatch.collectors.scrape import configs_from_settings

        configs_from_settings(settings)  # checked here too, so a bad job is a message, not a traceback
        rt = Runtime.open(settings)
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    listen = f"http://{settings.host}:{settings.port}"
    # soft_wrap: an address or a path split over two lines cannot be copied (see below).
    console.print(f"[bold green]Stackwatch[/bold green] is listening on [bold]{listen}[/bold]"
                  + (f" (public URL {settings.url})" if settings.url != listen else ""), soft_wrap=True)
    console.print(f"  data directory: {settings.data_path}", soft_wrap=True)
    for line in bootstrap_lines(rt.bootstrap, settings):
        # soft_wrap: never break a secret onto its own line (rich wraps at 80 columns when
        # stdout is not a terminal, e.g. under systemd or `make run | tee`).
        console.print("  " + line, highlight=False, soft_wrap=True)
    app_ = create_app(settings, runtime=rt, close_runtime=True)
    freeze_startup_heap()
    try:
        uvicorn.run(app_, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    finally:
        rt.close()  # a no-op when the app's shutdown closed it


@app.command()
def agent(
    server_url: Annotated[str | None, typer.Option("--server", envvar="STACKWATCH_URL", help="Server URL.")] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="STACKWATCH_INGEST_TOKEN", help="The project's ingest token.")
    ] = None,
    config: Annotated[str | None, typer.Option(help="Agent YAML (interval, labels, scrape_configs...).")] = None,
    interval: Annotated[str | None, typer.Option(help="Collection interval, e.g. 15s.")] = None,
    buffer_dir: Annotated[str | None, typer.Option(help="Disk buffer directory (default ./agent-buffer).")] = None,
    job: Annotated[str | None, typer.Option(help="The job label of host metrics (default node).")] = None,
    instance: Annotated[str | None, typer.Option(help="The instance label (default the host name).")] = None,
) -> None:
    """Run the host agent: host metrics and local exporters, remote-written through a disk buffer."""
    import asyncio
    import logging
    import signal

    from stackwatch.collectors.agent import Agent, load_agent_config

    try:
        cfg = load_agent_config(
            Path(config) if config else None, server_url=server_url, token=token, interval=interval,
            buffer_dir=buffer_dir, job=job, instance=instance,
        )
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Agent(cfg)
    console.print(f"[bold green]Stackwatch agent[/bold green] sending to [bold]{cfg.server_url}[/bold] every "
                  f"{cfg.interval_s:g}s as instance {cfg.instance!r} (buffer {cfg.buffer_dir})")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop)
        await runner.run()

    asyncio.run(main())


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's sight.

    The modules, the app, the schema and the caches built at start-up live as long as the
    server, yet every full collection walked all of them again: under a million-line load
    the server's five full collections took 88 ms each, 0.44 s of its 11.6 s of CPU. Frozen,
    a full collection only walks what was made since (``gc.freeze``, as the documentation
    recommends for long-running servers)."""
    import gc

    gc.collect()
    gc.freeze()


def bootstrap_lines(boot: Any, settings: Any) -> list[str]:
    """How to log in and send data, with any secret generated on this start (shown only now)."""
    lines = []
    if boot.admin_password:
        lines.append(f"log in at {settings.url}/login as {boot.admin_email} with password: {boot.admin_password}")
    else:
        lines.append(
            f"log in at {settings.url}/login as {boot.admin_email} (password shown at first start) "
            "or with an API token"
        )
    if boot.admin_token:
        lines.append(f"admin API token (shown once): {boot.admin_token}")
    elif settings.admin_token:
        lines.append("admin API token: the value of STACKWATCH_ADMIN_TOKEN")
    if boot.ingest_token:
        lines.append(f"ingest token of project 'default' (shown once): {boot.ingest_token}")
    elif settings.ingest_token:
        lines.append("ingest token of project 'default': the value of STACKWATCH_INGEST_TOKEN")
    if boot.admin_password or boot.admin_token or boot.ingest_token:
        lines.append("these secrets are stored hashed and will not be shown again: keep them now")
    for warning in boot.warnings:
        lines.append(f"[yellow]warning:[/yellow] {warning}")
    return lines


class _Client(httpx.Client):
    """A client whose unreachable server is one line of error, not a traceback."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            return super().send(request, **kwargs)
        except httpx.TransportError as exc:
            fail(f"cannot reach {self.base_url}: {exc or type(exc).__name__}")
            raise  # not reached: fail() exits


def _client(url: str, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return _Client(base_url=url or DEFAULT_URL, headers=headers, timeout=60)


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text
        fail(f"{resp.status_code}: {message}")
    return resp.json()


@logs_app.command("search")
def logs_search(
    query: Annotated[str, typer.Argument(help='Query, e.g. \'level:ERROR AND service:auth\'.')] = "",
    since: Annotated[str, typer.Option(help="How far back: 15m, 1h, 7d.")] = "1h",
    until: Annotated[str, typer.Option(help="End of the range (default now).")] = "now",
    limit: Annotated[int, typer.Option(help="Most lines to show.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Search logs, newest first."""
    with _client(url, token) as client:
        data = _check(
            client.get(
                "/api/v1/logs/search", params={"q": query, "start": f"-{since}", "end": until, "limit": limit}
            )
        )
    if as_json:
        for hit in data["hits"]:
            sys.stdout.write(json.dumps(hit) + "\n")
        return
    for hit in reversed(data["hits"]):
        _print_hit(hit)
    err_console.print(f"[dim]{len(data['hits'])} of {data['total']} matching lines[/dim]")


_LEVEL_STYLE = {"ERROR": "red", "FATAL": "bold red", "WARN": "yellow", "INFO": "green", "DEBUG": "blue"}


def _print_hit(hit: dict[str, Any]) -> None:
    style = _LEVEL_STYLE.get(hit["level"], "white")
    # The trace id is what leads from a line to its request (`stackwatch` trace view, search).
    ids = {k: hit[k] for k in ("trace_id", "span_id") if hit.get(k)}
    attrs = " ".join(f"{k}={v}" for k, v in [*sorted(hit["attributes"].items()), *ids.items()])
    # Log text is printed as it is: "[error]" or "[/api/leads]" in a line is not Rich markup.
    console.print(
        f"[dim]{hit['timestamp'][:23]}Z[/dim] [{style}]{escape(hit['level']):<5}[/{style}] "
        f"[cyan]{escape(hit['service'])}[/cyan] {escape(hit['message'])}"
        + (f" [dim]{escape(attrs)}[/dim]" if attrs else ""),
        markup=True,
        highlight=False,
        soft_wrap=True,
    )


@logs_app.command("tail")
def logs_tail(
    query: Annotated[str, typer.Argument(help="Query to filter the live stream.")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Stream new matching lines as they arrive (Ctrl-C to stop)."""
    with _client(url, token) as client, client.stream(
        "GET", "/api/v1/logs/tail", params={"q": query}, timeout=None
    ) as resp:
        if resp.status_code >= 400:
            resp.read()
            _check(resp)
        try:
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                hit = json.loads(line[6:])
                if as_json:
                    sys.stdout.write(line[6:] + "\n")
                    sys.stdout.flush()
                else:
                    _print_hit(hit)
        except KeyboardInterrupt:
            return
        except httpx.TransportError as exc:
            fail(f"the connection to {client.base_url} was lost: {exc or type(exc).__name__}")


def _open_log(path: Path) -> Any:
    """The file's bytes, decompressed when it is gzip (``access.log.1.gz`` of logrotate)."""
    with path.open("rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        import gzip

        return gzip.open(path, "rb")
    return path.open("rb")


def _batches(path: Path, max_bytes: int = 4 << 20) -> Any:
    with _open_log(path) as f:
        buf: list[bytes] = []
        size = 0
        for line in f:
            buf.append(line)
            size += len(line)
            if size >= max_bytes:
                yield b"".join(buf), size
                buf, size = [], 0
        if buf:
            yield b"".join(buf), size


def _post_logs(client: httpx.Client, body: bytes, params: dict[str, str], content_type: str) -> httpx.Response:
    """One push, waiting out 429s as the server asks (it is storing what came before)."""
    for attempt in range(10):
        resp = client.post("/api/v1/logs", content=body, params=params, headers={"Content-Type": content_type})
        if resp.status_code != 429:
            return resp
        time.sleep(float(resp.headers.get("Retry-After", "1")) * (attempt + 1))
    return resp


@logs_app.command("import")
def logs_import(
    files: Annotated[list[Path], typer.Argument(help="NDJSON files, or plain/access log files.")],
    service: Annotated[str, typer.Option(help="Service for lines that do not name one.")] = "",
    log_type: Annotated[str, typer.Option(help="application, web, database, security or system.")] = "",
    url: UrlOpt = DEFAULT_URL,
    token: Annotated[str, typer.Option("--token", envvar="STACKWATCH_INGEST_TOKEN", help="Ingest token.")] = "",
) -> None:
    """Send log files to the server (JSON lines as they are; other lines as text to be parsed)."""
    params = {k: v for k, v in (("service", service), ("log_type", log_type)) if v}
    total = 0
    with _client(url, token) as client, Progress(
        TextColumn("{task.description}"), BarColumn(), TransferSpeedColumn(), console=err_console
    ) as progress:
        for path in files:
            if not path.is_file():
                fail(f"{path}: no such file")
            task = progress.add_task(path.name, total=path.stat().st_size)
            with _open_log(path) as f:
                head = f.read(4096).lstrip()
            if head.startswith(b"["):
                # A JSON array of events (an export): the whole document in one request.
                with _open_log(path) as f:
                    body = f.read()
                total += _check(_post_logs(client, body, params, "application/json"))["accepted"]
                progress.advance(task, path.stat().st_size)
                continue
            content_type = "application/x-ndjson" if head.startswith(b"{") else "text/plain"
            for chunk, size in _batches(path):
                resp = _post_logs(client, chunk, params, content_type)
                if resp.status_code == 400 and content_type == "application/x-ndjson":
                    # JSON lines with a stray text line (a traceback on stderr): as text lines,
                    # each is still read as JSON by the pipeline, and the odd one kept as text.
                    resp = _post_logs(client, chunk, params, "text/plain")
                total += _check(resp)["accepted"]
                progress.advance(task, size)
    err_console.print(f"imported {total} lines")


@app.command()
def demo(
    app_name: Annotated[str, typer.Option("--app", help="Example app: flask (gunicorn) or fastapi (uvicorn).")] = "flask",
    server: Annotated[str | None, typer.Option("--server", envvar="STACKWATCH_URL",
                                               help="Stackwatch server the app reports to.")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="STACKWATCH_INGEST_TOKEN", help="Ingest token.")] = None,
    duration: Annotated[float, typer.Option(help="Seconds of traffic.")] = 30.0,
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 5.0,
    workers: Annotated[int, typer.Option(help="App worker processes.")] = 2,
    service: Annotated[str | None, typer.Option(help="Service name (default: the example's).")] = None,
) -> None:
    """Run an example app with realistic traffic (slow requests, failed logins, errors...)."""
    from stackwatch.demo import DemoError, run_demo

    try:
        run_demo(app_name, server_url=server, token=token, duration=duration, rate=rate, workers=workers,
                 service=service,
                 echo=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    except DemoError as exc:
        fail(str(exc))


@app.command()
def projects(
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON as it is.")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """List projects with their ingest endpoints and Sentry DSN."""
    with _client(url, token) as client:
        data = _check(client.get("/api/v1/projects"))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for project in data["projects"]:
        console.print(f"[bold]{project['slug']}[/bold] (id {project['id']}) {project['name']}", highlight=False)
        console.print(f"  dsn: {project.get('dsn') or '(no DSN key: create an ingest token with dsn=true)'}",
                      highlight=False, soft_wrap=True)
        for name, endpoint in sorted(project.get("ingest", {}).items()):
            console.print(f"  {name}: {endpoint}", highlight=False, soft_wrap=True)


@config_app.command("docs")
def config_docs() -> None:
    """Print the settings reference (Markdown)."""
    from stackwatch.config import settings_markdown

    sys.stdout.write(settings_markdown())


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
