"""Log shipping under a real pre-fork server: gunicorn --preload, init() in the master, 2 workers.

The master logs once before forking; each worker must ship its own lines from its own thread,
and the master's buffered line must reach the server exactly once (not once per child).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serverproc import INGEST_TOKEN, ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)

APP = textwrap.dedent(
    """
    import logging, os, time
    import stackwatch.sdk

    log = logging.getLogger("prefork")

    def app(environ, start_response):
        time.sleep(0.2)
        log.warning("handled by %d", os.getpid(), extra={"worker_pid": os.getpid()})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]

    app = stackwatch.sdk.init(app)
    log.warning("loaded in %d", os.getpid())
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("prefork-logs") / "data").start()
    yield srv
    srv.stop()


def test_gunicorn_preload_workers_ship_their_own_logs(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "prefork_app.py").write_text(APP)
    service = f"prefork-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "STACKWATCH_URL": server.url,
        "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN,
        "STACKWATCH_SERVICE": service,
        "STACKWATCH_ENVIRONMENT": "production",
        "STACKWATCH_TRACING": "false",
        "STACKWATCH_ERRORS": "false",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "--preload", "-w", "2", "-b", f"127.0.0.1:{port}", "prefork_app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(8) as pool, httpx.Client(timeout=10) as client:
            pids = list(pool.map(lambda _: client.get(f"http://127.0.0.1:{port}/work").text, range(12)))
        workers = set(pids)
        assert len(workers) == 2, pids  # both workers answered
        assert server.wait_for_count(f'service:{service} AND message:"handled by"', 12, timeout=20) == 12
        assert server.wait_for_count(f'service:{service} AND message:"loaded in"', 1) == 1
        with server.client() as c:
            hits = c.get(
                "/api/v1/logs/search",
                params={"q": f'service:{service} AND message:"handled by"', "start": "-1h", "limit": 50},
            ).json()["hits"]
        shipped_by = {h["resource"]["process.pid"] for h in hits}
        assert shipped_by == workers  # each worker's own shipper thread sent its lines
        assert all(str(h["attributes"]["context.worker_pid"]) == h["resource"]["process.pid"] for h in hits)
        time.sleep(1.5)  # a child re-sending the master's buffer would show up by now
        with server.client() as c:
            loaded = c.get(
                "/api/v1/logs/search",
                params={"q": f'service:{service} AND message:"loaded in"', "start": "-1h"},
            ).json()
        assert loaded["total"] == 1
        assert loaded["hits"][0]["resource"]["process.pid"] not in workers  # the master's
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert b"Traceback" not in err, err.decode(errors="replace")[-2000:]
