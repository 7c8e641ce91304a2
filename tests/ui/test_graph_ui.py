"""The graph page in a real browser against a real server: where a metric alert's link leads.

Prometheus's alerts link to ``/graph?g0.expr=...``; Stackwatch's metric rules do the same. The
page must show the expression's series over time and their values now, keep label values as
text, and say what is wrong with an expression that does not parse.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote_plus

import pytest
from uibrowser import CHROMIUM, CHROMIUM_ARGS, require_browser

from serverproc import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__xss = 1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("graph-ui") / "data").start()
    now_ms = int(time.time() * 1000)
    lines = []
    for k in range(60):  # the last 30 minutes, every 30 s
        t = now_ms - (59 - k) * 30_000
        lines.append(f'http_requests_total{{route="/checkout"}} {10 * k} {t}')
        lines.append(f'http_requests_total{{route="/login"}} {2 * k} {t}')
        lines.append(f'queue_depth{{queue="{XSS.replace(chr(34), chr(92) + chr(34))}"}} 7 {t}')
    with srv.ingest_client() as c:
        r = c.post("/api/v1/import/prometheus", content=("\n".join(lines) + "\n").encode())
        assert r.status_code == 204, r.text
    deadline = time.monotonic() + 20
    with srv.client() as c:
        while True:
            r = c.get("/api/v1/query", params={"query": "count(http_requests_total)"})
            if r.status_code == 200 and r.json()["data"]["result"]:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
    yield srv
    srv.stop()


def test_graph_page_shows_an_alerts_expression(server: ServerProcess) -> None:
    sync_playwright = require_browser()
    from playwright.sync_api import expect

    problems: list[str] = []
    base = server.url
    expr = "sum by (route) (rate(http_requests_total[5m]))"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)

            # An alert's link, followed by someone not logged in: log in, then back to the graph.
            link = f"{base}/graph?g0.expr={quote_plus(expr)}&g0.tab=1"
            page.goto(link)
            assert "/login" in page.url
            page.click("summary:has-text('API token')")
            page.fill("input[name=token]", ADMIN_TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_url("**/graph?**")
            page.wait_for_selector("body[data-ready='1']")

            expect(page.locator("#expr")).to_have_value(expr)
            rows = page.locator("#values tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.filter(has_text='{route="/checkout"}').locator("td.value")).to_contain_text("0.33333")
            expect(rows.filter(has_text='{route="/login"}').locator("td.value")).to_contain_text("0.06666")
            expect(page.locator("#chart canvas")).to_have_count(1)
            expect(page.locator("#summary")).to_contain_text("2 series")

            page.screenshot(path="/tmp/stackwatch-graph-ok.png", full_page=True)
            # Label values are text, never markup.
            page.fill("#expr", "queue_depth")
            page.click("#graph-form button[type=submit]")
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#values tbody tr")).to_have_count(1)
            expect(page.locator("#values td.series")).to_have_text(f'queue_depth{{queue="{XSS}"}}')
            assert page.evaluate("window.__xss") is None
            assert "queue_depth" in page.url  # the address follows, so it can be shared

            # An expression that does not parse says why.
            page.fill("#expr", "sum(rate(http_requests_total[5m])")
            page.click("#graph-form button[type=submit]")
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error")).to_contain_text("unclosed left parenthesis")
            page.screenshot(path="/tmp/stackwatch-graph.png", full_page=True)
        finally:
            browser.close()
    # The bad expression's two 400 answers are logged by the browser itself; nothing else may be.
    assert [p for p in problems if "status of 400" not in p] == []
    assert len(problems) <= 2
