"""The issues pages in a real browser against a real server, fed by the real sentry_sdk.

Two identical exceptions and a message (whose text carries markup) arrive through sentry_sdk;
Debian's chromium, driven by Playwright, logs in with a token, filters the issues list, opens
an issue (stack trace with source context, scrubbed local variables, breadcrumbs, tags,
sparkline), resolves and assigns it, and checks that event text never runs as markup. A
screenshot is left in /tmp to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk
from uibrowser import CHROMIUM, CHROMIUM_ARGS, require_browser

from serverproc import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/stackwatch-issue.png")
XSS = '<img src=x onerror="window.__xss = 1">'


def refund(order: int) -> None:
    api_secret = "-".join(["rk", "live", "hidden"])  # noqa: F841  (scrubbed: a credential-named local)
    raise RuntimeError(f"refund of order {order} failed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("issues-ui") / "data").start()
    with srv.client() as c:
        dsn = next(p for p in c.get("/api/v1/projects").json()["projects"] if p["slug"] == "default")["dsn"]
    sentry_sdk.init(dsn=dsn, default_integrations=False, release="shop@2.0", environment="production")
    try:
        sentry_sdk.add_breadcrumb(category="payment", message="refund requested")
        sentry_sdk.set_tag("tenant", "acme")
        for order in (1, 2):
            try:
                refund(order)
            except RuntimeError as exc:
                sentry_sdk.capture_exception(exc)
        sentry_sdk.capture_message(f"template {XSS} warning", level="warning")
        sentry_sdk.flush()
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()
    deadline = time.monotonic() + 20
    with srv.client() as c:
        while sum(i["count"] for i in c.get("/api/v1/issues").json()["issues"]) < 3:
            assert time.monotonic() < deadline, "events did not arrive"
            time.sleep(0.1)
    yield srv
    srv.stop()


def test_issues_list_and_issue_page(server: ServerProcess) -> None:
    sync_playwright = require_browser()
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)

            page.goto(f"{server.url}/issues")
            assert "/login" in page.url
            page.click("summary:has-text('API token')")
            page.fill("input[name=token]", ADMIN_TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_url(lambda url: "/issues" in url and "/login" not in url)

            # The list: both issues, newest activity first, sparkline drawn, markup stays text.
            assert page.locator("#issue-total").inner_text() == "2"
            rows = page.locator("tr.issue-row")
            assert rows.count() == 2
            titles = [rows.nth(i).locator(".issue-title").inner_text() for i in range(2)]
            assert titles == [f"template {XSS} warning", "RuntimeError: refund of order 2 failed"]
            assert page.evaluate("window.__xss") is None
            assert rows.nth(1).locator(".issue-count").inner_text() == "2"
            points = rows.nth(1).locator("svg.spark polyline").get_attribute("points") or ""
            assert len(points.split()) == 24

            # Filters: level and free text.
            page.select_option("select[name=level]", "warning")
            page.click("button:has-text('Filter')")
            page.wait_for_url(lambda url: "level=warning" in url)
            assert page.locator("tr.issue-row").count() == 1
            page.fill("#issue-query", "refund")
            page.select_option("select[name=level]", "")
            page.click("button:has-text('Filter')")
            page.wait_for_url(lambda url: "query=refund" in url)
            assert page.locator("tr.issue-row").count() == 1

            # The issue page.
            page.click("a.issue-title")
            page.wait_for_url(lambda url: "/issues/" in url)
            assert page.locator("#issue-title").inner_text().endswith("RuntimeError: refund of order 2 failed")
            assert page.locator("#issue-count").inner_text() == "2"
            top = page.locator("li.frame").first
            assert "refund" in top.locator(".frame-head").inner_text()
            assert "raise RuntimeError" in top.locator("pre.source .current").inner_text()
            top.locator("summary:has-text('Local variables')").click()
            assert "[REDACTED]" in top.locator("table.fields").inner_text()
            assert "rk-live-hidden" not in page.content()
            assert "refund requested" in page.locator("#breadcrumbs").inner_text()
            assert "tenant=acme" in page.locator("#event-tags").inner_text()
            assert page.locator("#event-list tbody tr").count() == 2
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Triage: resolve, then assign.
            page.click("#action-resolve")
            page.wait_for_load_state()
            assert page.locator("#issue-status").inner_text() == "Resolved"
            page.fill("#assignee", "ana@example.com")
            page.click("#action-assign")
            page.wait_for_load_state()
            assert "assigned to ana@example.com" in page.locator(".issue-badges").inner_text()
            activity = page.locator("#activity").inner_text()
            assert "resolved by" in activity and "assigned by" in activity
            assert page.locator("#action-unresolve").count() == 1
        finally:
            browser.close()
    assert problems == []
