"""Error tracking end to end: the real ``sentry_sdk`` sends to a real server process.

Each test gets a project of its own (created through the admin API), so its issues are its
own; the SDK is initialised with that project's DSN exactly as an application would.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import httpx
import orjson
import pytest
import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("sentry") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def project(server: ServerProcess) -> dict[str, Any]:
    """A fresh project: ``slug``, ``id``, ``dsn`` and ``ingest_token``."""
    slug = "p-" + uuid.uuid4().hex[:10]
    with server.client() as c:
        r = c.post("/api/v1/projects", json={"slug": slug, "name": slug})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def sdk(project: dict[str, Any]) -> Iterator[Callable[..., None]]:
    """``sdk(**options)`` initialises sentry_sdk with the project's DSN; closed after the test."""

    def init(**options: Any) -> None:
        # Scopes outlive a client: start each test without the previous one's breadcrumbs/tags.
        for scope in (sentry_sdk.get_global_scope(), sentry_sdk.get_isolation_scope(), sentry_sdk.get_current_scope()):
            scope.clear()
        sentry_sdk.init(dsn=project["dsn"], default_integrations=False, **options)

    yield init
    sentry_sdk.flush()
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # back to a disabled client


def wait_issues(server: ServerProcess, slug: str, expected_events: int, timeout: float = 20.0,
                **params: Any) -> list[dict[str, Any]]:
    """Issues of the project once ``expected_events`` events are counted (ingest is asynchronous)."""
    sentry_sdk.flush()
    deadline = time.monotonic() + timeout
    issues: list[dict[str, Any]] = []
    with server.client() as c:
        while time.monotonic() < deadline:
            r = c.get("/api/v1/issues", params={"project": slug, "status": "", **params})
            assert r.status_code == 200, r.text
            issues = r.json()["issues"]
            if sum(i["count"] for i in issues) >= expected_events:
                return issues
            time.sleep(0.1)
    return issues


def detail(server: ServerProcess, issue_id: int) -> dict[str, Any]:
    with server.client() as c:
        r = c.get(f"/api/v1/issues/{issue_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def checkout(order: int) -> None:
    db_password = "-".join(["s3cret", "value"])  # noqa: F841  (a local the scrubber must mask; built so the
    # source context line the SDK sends does not hold the value itself)
    connection = "postgres://shop:pgsecret99@db.internal/shop"  # noqa: F841
    raise ValueError(f"payment for order {order} declined")


def test_projects_api_and_cli_show_the_dsn(server: ServerProcess) -> None:
    with server.client() as c:
        projects = c.get("/api/v1/projects").json()["projects"]
    default = next(p for p in projects if p["slug"] == "default")
    assert default["dsn"] == f"http://{INGEST_TOKEN}@127.0.0.1:{server.port}/{default['id']}"
    assert default["ingest"]["sentry_envelope"] == f"{server.url}/api/{default['id']}/envelope/"
    out = subprocess.run(
        [sys.executable, "-m", "stackwatch.cli", "projects", "--url", server.url, "--token", ADMIN_TOKEN],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )
    assert out.returncode == 0, out.stderr
    assert f"dsn: {default['dsn']}" in out.stdout
    assert f"sentry_envelope: {server.url}/api/{default['id']}/envelope/" in out.stdout


def test_identical_exceptions_from_two_requests_are_one_issue(
    server: ServerProcess, project: dict[str, Any], sdk: Callable[..., None]
) -> None:
    sdk(integrations=[FlaskIntegration()], send_default_pii=True, release="shop@1.0.0", environment="production")
    app = flask.Flask("shop")

    @app.route("/checkout/<int:order>")
    def checkout_view(order: int) -> str:
        checkout(order)
        return "ok"

    @app.route("/cart")
    def cart_view() -> str:
        return {"items": []}["total"]  # a different error: KeyError

    client = app.test_client()
    headers = {"Authorization": "Bearer sk_live_0123456789abcdefghij", "X-Upstream-Token": "up-secret-1234",
               "Cookie": "sessionid=cookie-secret-42; theme=dark"}
    assert client.get("/checkout/17?token=query-secret-7&page=2", headers=headers).status_code == 500
    assert client.get("/checkout/99", headers=headers).status_code == 500
    assert client.get("/cart").status_code == 500
    issues = wait_issues(server, project["slug"], 3)
    by_title = {i["title"]: i for i in issues}
    assert sorted((i["title"], i["count"]) for i in issues) == [
        ("KeyError: 'total'", 1), ("ValueError: payment for order 99 declined", 2)]
    issue = by_title["ValueError: payment for order 99 declined"]
    assert issue["culprit"] == "checkout_view"  # the transaction, named by endpoint as FlaskIntegration does
    assert (issue["level"], issue["status"], issue["release"]) == ("error", "unresolved", "shop@1.0.0")
    assert issue["environments"] == ["production"]
    event = detail(server, issue["id"])["latest_event"]
    frames = event["exception"][0]["frames"]
    top = frames[0]
    assert top["function"] == "checkout" and top["in_app"] is True
    assert "raise ValueError" in top["context_line"]  # source context as the SDK sent it
    assert top["vars"]["db_password"] == "[REDACTED]"
    assert "pgsecret99" not in top["vars"]["connection"]
    request = event["request"]
    assert request["method"] == "GET" and request["url"].endswith("/checkout/99")
    raw = orjson.dumps(detail(server, issue["id"])).decode() + orjson.dumps(
        httpx.get(f"{server.url}/api/v1/issues/{issue['id']}/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    ).decode()
    for secret in ("sk_live_0123456789abcdefghij", "up-secret-1234", "cookie-secret-42", "s3cret-value", "pgsecret99"):
        assert secret not in raw, secret
    with server.client() as c:
        events = c.get(f"/api/v1/issues/{issue['id']}/events").json()["events"]
        first = c.get(f"/api/v1/issues/{issue['id']}/events/{events[-1]['event_id']}").json()
        latest = c.get(f"/api/v1/issues/{issue['id']}/events/latest")
        assert latest.status_code == 200, latest.text
        assert latest.json()["event_id"] == events[0]["event_id"]
    assert len(events) == 2
    assert "query-secret-7" not in orjson.dumps(first).decode()
    assert "page=2" in first["request"]["query_string"]


def test_messages_levels_scopes_breadcrumbs_release_environment(
    server: ServerProcess, project: dict[str, Any], sdk: Callable[..., None]
) -> None:
    sdk(release="api@2.1.0", environment="staging")
    sentry_sdk.add_breadcrumb(category="auth", message="user logged in", level="info")
    sentry_sdk.add_breadcrumb(category="http", message="GET /orders", data={"status_code": 200})
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("tenant", "acme")
        scope.set_user({"id": "user-7", "email": "ann@example.com"})
        scope.set_context("order", {"id": 17, "total": 99.5})
        sentry_sdk.capture_message("cache is nearly full", level="warning")
    sentry_sdk.capture_message("nightly job finished", level="info")
    sentry_sdk.capture_message("database unreachable", level="fatal")
    issues = wait_issues(server, project["slug"], 3)
    levels = {i["title"]: i["level"] for i in issues}
    assert levels == {"cache is nearly full": "warning", "nightly job finished": "info", "database unreachable": "fatal"}
    warning = next(i for i in issues if i["level"] == "warning")
    assert warning["user_count"] == 1 and warning["release"] == "api@2.1.0"
    event = detail(server, warning["id"])["latest_event"]
    assert event["tags"]["tenant"] == "acme"
    assert event["user"]["id"] == "user-7" and "ann@example.com" not in orjson.dumps(event).decode()
    assert event["contexts"]["order"] == {"id": 17, "total": 99.5}
    assert [(b.get("category"), b.get("message")) for b in event["breadcrumbs"]] == [
        ("auth", "user logged in"), ("http", "GET /orders")]
    assert (event["release"], event["environment"]) == ("api@2.1.0", "staging")
    with server.client() as c:
        for params, titles in (({"level": "fatal"}, ["database unreachable"]),
                               ({"release": "api@2.1.0", "query": "cache"}, ["cache is nearly full"]),
                               ({"environment": "production"}, [])):
            got = c.get("/api/v1/issues", params={"project": project["slug"], **params}).json()["issues"]
            assert [i["title"] for i in got] == titles, params


def test_before_send_and_sampling(server: ServerProcess, project: dict[str, Any], sdk: Callable[..., None]) -> None:
    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        if "drop-me" in str(event.get("message") or event.get("logentry", {}).get("message")):
            return None
        event.setdefault("tags", {})["checked"] = "yes"
        return event

    sdk(before_send=before_send)
    sentry_sdk.capture_message("keep-me please")
    sentry_sdk.capture_message("drop-me please")
    sentry_sdk.flush()
    sentry_sdk.get_client().close()
    sentry_sdk.init(dsn=project["dsn"], default_integrations=False, sample_rate=0.0)
    for _ in range(5):
        sentry_sdk.capture_message("sampled-out")
    sentry_sdk.flush()
    sentry_sdk.get_client().close()  # sends the client report of what sampling dropped
    issues = wait_issues(server, project["slug"], 1)
    assert [i["title"] for i in issues] == ["keep-me please"]
    assert detail(server, issues[0]["id"])["latest_event"]["tags"] == {"checked": "yes"}
    deadline = time.monotonic() + 10
    reasons: dict[tuple[str, str], int] = {}
    with server.client() as c:
        while time.monotonic() < deadline:
            reasons = {(o["category"], o["reason"]): o["quantity"] for o in c.get("/api/v1/errors/outcomes").json()["outcomes"]}
            if reasons.get(("error", "client:sample_rate"), 0) >= 5:
                break
            time.sleep(0.2)
    assert reasons.get(("error", "client:sample_rate"), 0) >= 5
    assert reasons.get(("error", "client:before_send"), 0) >= 1


def test_resolved_issue_that_recurs_is_regressed_and_triage_actions(
    server: ServerProcess, project: dict[str, Any], sdk: Callable[..., None]
) -> None:
    sdk(release="1.0")
    try:
        checkout(1)
    except ValueError as exc:
        sentry_sdk.capture_exception(exc)
    (issue,) = wait_issues(server, project["slug"], 1)
    with server.client() as c:
        r = c.post(f"/api/v1/issues/{issue['id']}/resolve")
        assert r.status_code == 200 and r.json()["status"] == "resolved"
        r = c.post(f"/api/v1/issues/{issue['id']}/assign", json={"assignee": "ana@example.com"})
        assert r.json()["assignee"] == "ana@example.com"
        assert c.get("/api/v1/issues", params={"project": project["slug"], "status": "unresolved"}).json()["issues"] == []
        assert c.post(f"/api/v1/issues/{issue['id']}/explode").status_code == 404
        assert c.put(f"/api/v1/issues/{issue['id']}", json={"status": "fixed"}).status_code == 400
        assert c.put(f"/api/v1/issues/{issue['id']}", content=b"[").status_code == 400
    try:
        checkout(2)
    except ValueError as exc:
        sentry_sdk.capture_exception(exc)
    (again,) = wait_issues(server, project["slug"], 2)
    assert (again["id"], again["status"], again["regressed"], again["count"]) == (issue["id"], "unresolved", True, 2)
    full = detail(server, issue["id"])
    assert [a["kind"] for a in full["activity"]][:3] == ["regression", "assigned", "resolved"]
    assert sum(s["count"] for s in full["stats"]) == 2 and len(full["stats"]) == 24
    with server.client() as c:
        r = c.put(f"/api/v1/issues/{issue['id']}", json={"status": "ignored", "assignee": None})
        assert (r.json()["status"], r.json()["assignee"]) == ("ignored", None)
        stats = c.get(f"/api/v1/issues/{issue['id']}/stats", params={"hours": 6}).json()
        assert len(stats["counts"]) == 6 and stats["counts"][-1]["count"] == 2
        viewer = c.post("/api/v1/issues/999999/resolve")
        assert viewer.status_code == 404
        for path in ("/api/v1/issues/99999999999999999999", "/api/v1/issues/99999999999999999999/events"):
            r = c.get(path)  # past 64 bits: no such issue, not a database error
            assert r.status_code == 404 and "not found" in r.text, (path, r.text)
        assert c.post("/api/v1/issues/99999999999999999999/resolve").status_code == 404


def test_transactions_become_a_trace_joined_with_its_errors(
    server: ServerProcess, project: dict[str, Any], sdk: Callable[..., None]
) -> None:
    sdk(traces_sample_rate=1.0, release="orders@3.0")
    with sentry_sdk.start_transaction(name="POST /orders", op="http.server") as txn:
        with sentry_sdk.start_span(op="db", description="INSERT INTO orders"):
            pass
        try:
            checkout(5)
        except ValueError as exc:
            sentry_sdk.capture_exception(exc)
        trace_id = txn.trace_id
    wait_issues(server, project["slug"], 1)
    deadline = time.monotonic() + 15
    body: dict[str, Any] = {}
    with server.client() as c:
        while time.monotonic() < deadline:
            r = c.get(f"/api/v1/traces/{trace_id}", params={"project": project["slug"]})
            if r.status_code == 200:
                body = r.json()
                if body["spans"] and body["errors"]:
                    break
            time.sleep(0.2)
    assert [s["name"] for s in body["spans"]] == ["POST /orders", "INSERT INTO orders"]
    assert body["spans"][0]["service"] == "orders"
    (error,) = body["errors"]
    assert error["title"] == "ValueError: payment for order 5 declined"


def test_attachments_are_kept_and_downloadable(
    server: ServerProcess, project: dict[str, Any], sdk: Callable[..., None]
) -> None:
    sdk()
    with sentry_sdk.new_scope() as scope:
        scope.add_attachment(bytes=b"line 1\nline 2\n", filename="debug.log", content_type="text/plain")
        scope.add_attachment(bytes=b"\x00\x01", filename='rapport "été".bin')
        sentry_sdk.capture_message("with attachment")
    (issue,) = wait_issues(server, project["slug"], 1)
    event = detail(server, issue["id"])["latest_event"]
    assert event["attachments"] == [
        {"index": 0, "filename": "debug.log", "content_type": "text/plain", "size": 14},
        {"index": 1, "filename": 'rapport "été".bin', "content_type": "application/octet-stream", "size": 2},
    ]
    with server.client() as c:
        r = c.get(f"/api/v1/issues/{issue['id']}/events/{event['event_id']}/attachments/0")
        odd = c.get(f"/api/v1/issues/{issue['id']}/events/{event['event_id']}/attachments/1")
        missing = c.get(f"/api/v1/issues/{issue['id']}/events/{event['event_id']}/attachments/2")
    assert r.content == b"line 1\nline 2\n"
    assert r.headers["content-disposition"] == 'attachment; filename="debug.log"'
    assert odd.content == b"\x00\x01"
    assert odd.headers["content-disposition"] == (
        "attachment; filename=\"rapport __t__.bin\"; filename*=UTF-8''rapport%20%22%C3%A9t%C3%A9%22.bin")
    assert missing.status_code == 404


def envelope(event: dict[str, Any]) -> bytes:
    body = orjson.dumps(event)
    return b"{}\n" + orjson.dumps({"type": "event", "length": len(body)}) + b"\n" + body


def test_protocol_errors_and_auth_forms(server: ServerProcess, project: dict[str, Any]) -> None:
    pid, key = project["id"], project["ingest_token"]
    url = f"{server.url}/api/{pid}/envelope/"
    good = envelope({"message": "raw envelope", "event_id": "a" * 32})
    auth = {"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7"}
    r = httpx.post(url, content=gzip.compress(good), headers={**auth, "Content-Encoding": "gzip"})
    assert (r.status_code, r.json()) == (200, {"id": "a" * 32})
    assert r.headers["access-control-allow-origin"] == "*"
    r = httpx.post(url + f"?sentry_key={key}&sentry_version=7", content=envelope({"message": "browser form"}))
    assert r.status_code == 200 and len(r.json()["id"]) == 32
    dsn_header = b'{"dsn":"' + project["dsn"].encode() + b'"}\n{"type":"event"}\n{"message":"dsn in header"}\n'
    assert httpx.post(url, content=dsn_header).status_code == 200
    r = httpx.post(f"{server.url}/api/{pid}/store/", json={"message": "legacy store", "level": "error"}, headers=auth)
    assert r.status_code == 200 and len(r.json()["id"]) == 32
    assert httpx.options(url, headers={"Origin": "https://app.example.com"}).status_code == 200
    # Refusals: no key, unknown key, another project's key, malformed, too large, bad encoding.
    assert httpx.post(url, content=good).status_code == 401
    assert httpx.post(url, content=good, headers={"X-Sentry-Auth": "Sentry sentry_key=nope-nope-nope"}).status_code == 401
    r = httpx.post(f"{server.url}/api/1/envelope/", content=good, headers=auth)
    assert r.status_code == 403 and "check the DSN" in r.json()["error"]
    r = httpx.post(url, content=b'{}\n{"type":"event","length":999}\n{}', headers=auth)
    assert r.status_code == 400 and "length" in r.json()["error"]
    r = httpx.post(url, content=envelope({"message": "x" * (2 << 20)}), headers=auth)
    assert r.status_code == 413
    assert httpx.post(url, content=b"garbage", headers={**auth, "Content-Encoding": "gzip"}).status_code == 400
    assert httpx.post(f"{server.url}/api/{pid}/store/", content=b"[1]", headers=auth).status_code == 400
    titles = {i["title"] for i in wait_issues(server, project["slug"], 4)}
    assert titles == {"raw envelope", "browser form", "dsn in header", "legacy store"}


def test_issue_api_needs_a_reader_and_an_editor_to_change(server: ServerProcess, project: dict[str, Any]) -> None:
    assert httpx.get(f"{server.url}/api/v1/issues").status_code == 401
    with server.client() as c:
        r = c.get("/api/v1/issues", params={"project": "no-such-project"})
        assert r.status_code == 404
        assert c.get("/api/v1/issues", params={"sort": "title"}).status_code == 400
        assert c.get("/api/v1/issues/abc").status_code == 400


def test_docs_example_dsn_snippet_runs(server: ServerProcess, project: dict[str, Any]) -> None:
    """The Python snippet of docs/errors.md, run as written with the DSN of a real project."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    start = doc.index("```python\n") + len("```python\n")
    snippet = doc[start:doc.index("```", start)]
    env = {**os.environ, "SENTRY_DSN": project["dsn"]}
    out = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    issues = wait_issues(server, project["slug"], 1)
    assert any(i["title"].startswith("ZeroDivisionError") for i in issues), issues


def test_acknowledged_events_survive_a_crash_and_are_counted_once(tmp_path: Path) -> None:
    """SIGKILL after the SDK's events are acknowledged but before the batcher stored them (it
    waits 5 s): the restarted server replays its WAL and counts every event exactly once, and
    a second restart changes nothing."""
    env = {"STACKWATCH_BATCH_MAX_DELAY_MS": "5000"}
    srv = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with srv.client() as c:
            dsn = next(p for p in c.get("/api/v1/projects").json()["projects"] if p["slug"] == "default")["dsn"]
        sentry_sdk.init(dsn=dsn, default_integrations=False)
        for order in range(6):
            try:
                checkout(order)
            except ValueError as exc:
                sentry_sdk.capture_exception(exc)
        sentry_sdk.capture_message("crash test message")
        assert sentry_sdk.flush(timeout=10) is None
        sentry_sdk.get_client().close()
        sentry_sdk.init()
        with srv.client() as c:
            assert c.get("/api/v1/issues", params={"status": ""}).json()["issues"] == []  # not stored yet
        srv.kill()
        for _ in range(2):
            srv = ServerProcess(tmp_path / "data", env=env)
            srv.start()
            issues = wait_issues(srv, "default", 7)
            assert sorted(i["count"] for i in issues) == [1, 6]
            time.sleep(0.5)  # anything counted twice would show by now
            assert sorted(i["count"] for i in wait_issues(srv, "default", 7)) == [1, 6]
            srv.stop()
    finally:
        srv.stop()
