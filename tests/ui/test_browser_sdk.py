"""The real Sentry browser SDK (``@sentry/browser`` from npm, a dev dependency in package.json)
reports an error from a page on another origin to a real server: the key travels as the
``sentry_key`` query parameter and the request is cross-origin, as in production.

The page loads the SDK's ES modules through an import map from a static server on another
port; Debian's chromium runs it, driven by Playwright.
"""

from __future__ import annotations

import functools
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serverproc import ServerProcess, free_port

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "node_modules"
# Bare module names the SDK imports -> their ES module entry points under node_modules.
IMPORTS = {
    "@sentry/browser": "@sentry/browser/build/npm/esm/prod/index.js",
    "@sentry/core": "@sentry/core/build/esm/index.js",
    "@sentry-internal/browser-utils": "@sentry-internal/browser-utils/build/esm/index.js",
    "@sentry-internal/feedback": "@sentry-internal/feedback/build/npm/esm/index.js",
    "@sentry-internal/replay": "@sentry-internal/replay/build/npm/esm/index.js",
    "@sentry-internal/replay-canvas": "@sentry-internal/replay-canvas/build/npm/esm/index.js",
}


def _require() -> Any:
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} not installed (apt-get install -y chromium)"
    if not (NODE_MODULES / IMPORTS["@sentry/browser"]).exists():
        missing = "@sentry/browser not installed (npm ci)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright not installed (pip install -e '.[dev]')"
    if missing:
        pytest.skip(missing)  # fails under CI (tests/conftest.py)
    return sync_playwright


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("browser-sdk") / "data").start()
    yield srv
    srv.stop()


def test_browser_sdk_error_becomes_an_issue(server: ServerProcess, tmp_path: Path) -> None:
    sync_playwright = _require()
    with server.client() as c:
        dsn = next(p for p in c.get("/api/v1/projects").json()["projects"] if p["slug"] == "default")["dsn"]
    site = tmp_path / "site"
    site.mkdir()
    (site / "node_modules").symlink_to(NODE_MODULES)
    importmap = json.dumps({"imports": {k: f"/node_modules/{v}" for k, v in IMPORTS.items()}})
    (site / "index.html").write_text(f"""<!doctype html>
<title>shop</title>
<script type="importmap">{importmap}</script>
<script type="module">
import * as Sentry from "@sentry/browser";
Sentry.init({{dsn: {json.dumps(dsn)}, release: "web@1.0", environment: "browser"}});
Sentry.setTag("page", "cart");
function renderCart(cart) {{ return cart.items.length; }}
try {{ renderCart(undefined); }} catch (e) {{ Sentry.captureException(e); }}
window.__flushed = await Sentry.flush(10000);
</script>
""")
    port = free_port()
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            try:
                page = browser.new_page()
                cors_failures: list[str] = []
                page.on("console", lambda m: cors_failures.append(m.text) if "CORS" in m.text else None)
                page.goto(f"http://127.0.0.1:{port}/index.html")
                page.wait_for_function("window.__flushed !== undefined", timeout=30_000)
                assert page.evaluate("window.__flushed") is True
                assert cors_failures == []
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    deadline = time.monotonic() + 20
    issues: list[dict[str, Any]] = []
    with server.client() as c:
        while not issues and time.monotonic() < deadline:
            issues = c.get("/api/v1/issues").json()["issues"]
            time.sleep(0.1)
        (issue,) = issues
        assert issue["title"].startswith("TypeError: Cannot read properties of undefined")
        assert (issue["culprit"], issue["release"], issue["environments"]) == (
            "index.html in renderCart", "web@1.0", ["browser"])
        event = c.get(f"/api/v1/issues/{issue['id']}").json()["latest_event"]
        outcomes = c.get("/api/v1/errors/outcomes").json()["outcomes"]
    assert event["sdk"]["name"] == "sentry.javascript.browser"
    assert event["tags"] == {"page": "cart"}
    assert event["exception"][0]["frames"][0]["function"] == "renderCart"
    assert event["request"]["url"] == f"http://127.0.0.1:{port}/index.html"
    sessions = {(o["category"], o["reason"]): o["quantity"] for o in outcomes}.get(("session", "accepted"), 0)
    assert sessions >= 1  # the SDK's session (and its update after the error) was accepted
