"""The log explorer in a real browser against a real server.

Starts ``stackwatch server`` as a subprocess on a free loopback port, pushes a few NDJSON lines
through the real ingest path, then drives Debian's chromium with Playwright: token login,
search, expanding a line, click-to-filter, the histogram, a syntax error, live tail, and that
log text containing markup stays text. A screenshot of the page is left in /tmp to look at.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from uibrowser import CHROMIUM, require_browser

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_TOKEN = "ui-test-admin-token-0123456789"
INGEST_TOKEN = "ui-test-ingest-token-0123456789"
SCREENSHOT = Path("/tmp/stackwatch-explorer.png")
STACKWATCH = Path(sys.executable).with_name("stackwatch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rfc3339(seconds_ago: float) -> str:
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a freshly started server with an empty data directory."""
    data_dir = tmp_path_factory.mktemp("stackwatch-data")
    port = _free_port()
    env = {**os.environ, "STACKWATCH_ADMIN_TOKEN": ADMIN_TOKEN, "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN}
    log_path = data_dir.parent / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(STACKWATCH), "server", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health in 90 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ingest(base: str, lines: list[dict[str, Any]]) -> None:
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    response = httpx.post(
        f"{base}/api/v1/logs",
        content=body,
        headers={"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert response.status_code < 300, response.text


def wait_for_total(base: str, query: str, expected: int, timeout: float = 30) -> None:
    """Ingest is acknowledged once durable, and searchable a batch delay later: wait for it."""
    deadline = time.monotonic() + timeout
    total = None
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{base}/api/v1/logs/search",
            params={"q": query, "start": "-1h", "end": "now"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        total = response.json()["total"]
        if total >= expected:
            return
        time.sleep(0.2)
    pytest.fail(f"{query!r}: {total} lines searchable after {timeout} s, expected {expected}")


SEED = [
    {
        "timestamp": _rfc3339(600),
        "level": "ERROR",
        "service": "auth",
        "message": "Failed login attempt for user alice",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "context": {"ip_address": "203.0.113.7", "user": "alice"},
    },
    {"timestamp": _rfc3339(540), "level": "INFO", "service": "auth", "message": "User bob logged in"},
    {
        "timestamp": _rfc3339(300),
        "level": "ERROR",
        "service": "billing",
        "message": "Payment gateway timeout",
    },
    {
        "timestamp": _rfc3339(120),
        "level": "WARN",
        "service": "api",
        "message": "Slow request GET /orders",
        "context": {"duration": 812},
    },
    {
        "timestamp": _rfc3339(60),
        "level": "INFO",
        "service": "web",
        "message": '<img src=x onerror="window.__xss = 1"> rendered as text',
    },
]


def test_explorer_end_to_end(server: str) -> None:
    sync_playwright = require_browser()
    ingest(server, SEED)
    wait_for_total(server, "", len(SEED))

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # bypass_csp: Playwright polls wait_for_function() with eval, which the page's strict CSP refuses.
            page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
                ),
            )

            # Not logged in: the explorer sends the browser to the login page.
            page.goto(f"{server}/")
            assert page.url == f"{server}/login"

            # Log in with the admin API token.
            page.click("summary:has-text('API token')")
            page.fill("input[name=token]", ADMIN_TOKEN)
            page.click("#token-form button[type=submit]")
            page.wait_for_url(lambda url: "/login" not in url)
            total = page.locator("#total")
            _expect_text(total, f"{len(SEED)} hits")

            # Markup in a log line is shown as text and never runs.
            xss_row = page.locator("tr.log-row", has_text="rendered as text")
            assert '<img src=x onerror="window.__xss = 1">' in xss_row.inner_text()
            assert page.evaluate("window.__xss") is None

            # Search: only the matching line remains; the query goes into the URL.
            page.fill("#q", "level:ERROR AND service:auth")
            page.press("#q", "Enter")
            _expect_text(total, "1 hit")
            rows = page.locator("tr.log-row")
            assert rows.count() == 1
            assert "Failed login attempt for user alice" in rows.first.inner_text()
            body_text = page.locator("#rows").inner_text()
            assert "Payment gateway timeout" not in body_text
            assert "User bob logged in" not in body_text
            assert "q=level%3AERROR+AND+service%3Aauth" in page.url

            # The histogram rendered a chart.
            canvas = page.locator("#histogram canvas").first
            canvas.wait_for()
            box = canvas.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 50
            assert "ERROR" in page.locator("#histogram .u-legend").inner_text()

            # Expanding the line shows its structured fields.
            rows.first.click()
            detail = page.locator("tr.log-detail")
            detail.wait_for()
            detail_text = detail.inner_text()
            assert "context.ip_address" in detail_text and "203.0.113.7" in detail_text
            assert "4bf92f3577b34da6a3ce929d0e0e4736" in detail_text
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Clicking a field value adds it to the query and runs it.
            detail.locator("tr", has_text="context.user").locator("button.field-value").click()
            page.wait_for_function(
                "document.getElementById('q').value.endsWith('AND context.user:\"alice\"')"
            )
            _expect_text(total, "1 hit")
            assert "context.user" in page.url

            # A shared link restores the view.
            page.goto(f"{server}/?q=service%3Abilling&start=-1h&end=now")
            _expect_text(total, "1 hit")
            assert page.input_value("#q") == "service:billing"
            assert "Payment gateway timeout" in page.locator("#rows").inner_text()

            # A syntax error is shown inline, with its position.
            page.fill("#q", "level:(ERROR")
            page.press("#q", "Enter")
            error = page.locator("#error")
            error.wait_for(state="visible")
            assert re.search(r"position \d+", error.inner_text()), error.inner_text()
            assert page.locator("tr.log-row").count() == 0

            # Live tail prepends new matching lines.
            page.fill("#q", "service:tail")
            page.press("#q", "Enter")
            _expect_text(total, "0 hits")
            page.check("#live")
            page.wait_for_function("document.getElementById('live-status').textContent.includes('live')")
            ingest(server, [{"level": "ERROR", "service": "tail", "message": "streamed while watching"}])
            page.locator("tr.log-row", has_text="streamed while watching").wait_for(timeout=20_000)
            _expect_text(total, "0 hits (+1 live)")
            page.uncheck("#live")

            # Live tail over a past window first extends the window to now (new lines are not
            # part of a range that ended an hour ago).
            page.goto(f"{server}/?q=service:tail&start=-2h&end=-1h")
            _expect_text(total, "0 hits")
            page.check("#live")
            page.wait_for_function("new URLSearchParams(location.search).get('end') === 'now'")
            _expect_text(total, "1 hit")
            page.uncheck("#live")

            # Logging out ends the session.
            page.click("button:has-text('Log out')")
            page.wait_for_url(f"{server}/login")
            page.goto(f"{server}/")
            assert page.url == f"{server}/login"
        finally:
            browser.close()

    # Chromium logs every failed fetch as a console error; the 400s of the syntax error are
    # expected. Anything else (a script error, a CSP violation) is a bug.
    unexpected = [p for p in problems if "status of 400" not in p]
    assert not unexpected, unexpected


def _expect_text(locator: Any, text: str) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_text(text)
