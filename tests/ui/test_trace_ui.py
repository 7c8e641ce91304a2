"""The trace pages in a real browser against a real server.

A two-service trace arrives over OTLP/JSON and a log line with its trace id over NDJSON; then
Debian's chromium, driven by Playwright, follows the path an on-call engineer takes: the log
line's "Open trace" link, the waterfall (collapse, expand, span details), the slow-dependency
table, the related logs, and the trace search page. Span names with markup stay text.
A screenshot is left in /tmp to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from uibrowser import CHROMIUM, CHROMIUM_ARGS, require_browser

from serverproc import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/stackwatch-trace.png")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
MS = 1_000_000
XSS_NAME = '<img src=x onerror="window.__xss = 1">'


def otlp_span(service: str, span_id: str, parent: str, name: str, start_ms: int, end_ms: int, t0: int,
              **extra: Any) -> dict[str, Any]:
    return {
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [{
            "traceId": TRACE_ID, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": 2,
            "startTimeUnixNano": str(t0 + start_ms * MS), "endTimeUnixNano": str(t0 + end_ms * MS), **extra,
        }]}],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("trace-ui") / "data").start()
    t0 = time.time_ns() - 60_000 * MS
    doc = {"resourceSpans": [
        otlp_span("frontend", "a000000000000001", "", "GET /checkout", 0, 400, t0,
                  attributes=[{"key": "http.route", "value": {"stringValue": "/checkout"}}]),
        otlp_span("frontend", "a000000000000002", "a000000000000001", XSS_NAME, 5, 8, t0),
        otlp_span("checkout", "b000000000000001", "a000000000000001", "POST /pay", 10, 390, t0),
        otlp_span("checkout", "b000000000000002", "b000000000000001", "stripe charge", 20, 370, t0,
                  status={"code": 2, "message": "card declined"},
                  attributes=[{"key": "peer.service", "value": {"stringValue": "stripe"}}]),
        otlp_span("checkout", "b000000000000003", "b000000000000001", "SELECT orders", 372, 380, t0),
    ]}
    line = {"timestamp": (t0 + 100 * MS) / 1e9, "level": "ERROR", "service": "checkout", "trace_id": TRACE_ID,
            "message": "card declined for order 1234"}
    with srv.ingest_client() as c:
        assert c.post("/v1/traces", content=orjson.dumps(doc), headers={"Content-Type": "application/json"}).status_code == 200
        assert c.post("/api/v1/logs", content=orjson.dumps(line), headers={"Content-Type": "application/x-ndjson"}).status_code == 200
    deadline = time.monotonic() + 20
    with srv.client() as c:
        while True:
            r = c.get(f"/api/v1/traces/{TRACE_ID}")
            if r.status_code == 200 and len(r.json()["spans"]) == 5 and r.json()["logs"]:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
    yield srv
    srv.stop()


def test_trace_page_end_to_end(server: ServerProcess) -> None:
    sync_playwright = require_browser()
    from playwright.sync_api import expect

    problems: list[str] = []
    base = server.url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)

            # Not logged in: the trace page sends the browser to log in, and back afterwards.
            page.goto(f"{base}/traces/{TRACE_ID}")
            assert "/login" in page.url
            page.click("summary:has-text('API token')")
            page.fill("input[name=token]", ADMIN_TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_url(f"{base}/traces/{TRACE_ID}")

            # From the log explorer: the line's trace id opens the trace.
            page.goto(f"{base}/?q=trace_id:{TRACE_ID}")
            row = page.locator("#rows tr", has_text="card declined for order 1234")
            row.first.click()
            page.click("a.trace-link")
            page.wait_for_url(f"{base}/traces/{TRACE_ID}")
            page.wait_for_selector("body[data-ready='1']")

            expect(page.locator("#trace-title")).to_have_text("frontend: GET /checkout")
            rows = page.locator(".span-row")
            expect(rows).to_have_count(5)
            # Markup in a span name is text: shown literally, never run.
            expect(rows.nth(1).locator(".op")).to_have_text(XSS_NAME)
            assert page.evaluate("window.__xss") is None

            # Slow dependency: stripe holds 350 of the 400 ms by itself.
            expect(page.locator("#dominant")).to_contain_text("checkout: stripe charge takes 88% of the request")
            expect(page.locator("#breakdown tbody tr").first).to_contain_text("stripe charge")

            # Collapsing POST /pay hides its two children; expanding shows them again.
            pay = page.locator(".span-row", has_text="POST /pay")
            pay.locator("button.toggle").click()
            expect(page.locator(".span-row:visible")).to_have_count(3)
            page.click("#collapse-all")
            expect(page.locator(".span-row:visible")).to_have_count(1)
            page.click("#expand-all")
            expect(page.locator(".span-row:visible")).to_have_count(5)

            # Span details.
            page.locator(".span-row", has_text="stripe charge").click()
            details = page.locator("#details")
            expect(details).to_be_visible()
            expect(details).to_contain_text("error: card declined")
            expect(details).to_contain_text("peer.service")
            expect(details).to_contain_text("350 ms")

            # Related logs and (no) errors.
            expect(page.locator("#logs tbody tr")).to_have_count(1)
            expect(page.locator("#logs tbody tr").first).to_contain_text("card declined for order 1234")
            expect(page.locator("#errors-empty")).to_be_visible()
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # The search page lists the trace and links to it.
            page.goto(f"{base}/traces?service=checkout&status=error")
            link = page.locator("#trace-results a", has_text="frontend: GET /checkout")
            expect(link).to_have_count(1)
            link.click()
            page.wait_for_url(f"{base}/traces/{TRACE_ID}")

            # A trace whose spans are not stored says so instead of failing silently, and
            # leads to the log lines that carry its id (logs outlive spans).
            orphan = "0" * 31 + "1"
            with server.ingest_client() as c:
                line = {"message": "line of a trace without spans", "service": "checkout", "trace_id": orphan}
                assert c.post("/api/v1/logs", content=orjson.dumps(line)).status_code == 200
            assert server.wait_for_count(f'trace_id:"{orphan}"', 1) == 1
            page.goto(f"{base}/traces/{orphan}")
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#error")).to_contain_text("not found")
            problems[:] = [p for p in problems if "404" not in p]  # the expected failed fetch
            page.click("#trace-logs-search")
            page.wait_for_url("**/?q=*")
            expect(page.locator("#rows tr", has_text="line of a trace without spans")).to_have_count(1)
        finally:
            browser.close()
    assert problems == []


def test_a_long_trace_links_to_all_its_log_lines(server: ServerProcess) -> None:
    """The trace page shows the newest lines of a trace; when there are more, it says how many
    and links to the explorer, which has them all."""
    from stackwatch.server.api.traces import MAX_TRACE_LOGS

    sync_playwright = require_browser()
    from playwright.sync_api import expect

    trace_id = "5c0ffee0000000000000000000000042"
    t0 = time.time_ns() - 30_000 * MS
    span = otlp_span("batch", "c000000000000001", "", "nightly import", 0, 2_000, t0)
    span["scopeSpans"][0]["spans"][0]["traceId"] = trace_id
    n = MAX_TRACE_LOGS + 2
    lines = b"".join(orjson.dumps({"timestamp": (t0 + i * MS) / 1e9, "service": "batch", "trace_id": trace_id,
                                   "message": f"row {i} imported"}) + b"\n" for i in range(n))
    with server.ingest_client() as c:
        assert c.post("/v1/traces", content=orjson.dumps({"resourceSpans": [span]}),
                      headers={"Content-Type": "application/json"}).status_code == 200
        assert c.post("/api/v1/logs", content=lines).status_code == 200
    deadline = time.monotonic() + 20
    with server.client() as c:
        while c.get(f"/api/v1/traces/{trace_id}").json().get("logs_total") != n:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            page.set_default_timeout(15_000)
            page.goto(f"{server.url}/login")
            page.click("summary:has-text('API token')")
            page.fill("input[name=token]", ADMIN_TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_load_state()
            page.goto(f"{server.url}/traces/{trace_id}")
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#logs-count")).to_contain_text(f"newest {MAX_TRACE_LOGS} of {n}")
            expect(page.locator("#logs tbody tr")).to_have_count(MAX_TRACE_LOGS)
            page.click("#logs-all")
            page.wait_for_url("**/?q=*")
            expect(page.locator("#total")).to_contain_text(f"{n:,}")
        finally:
            browser.close()
