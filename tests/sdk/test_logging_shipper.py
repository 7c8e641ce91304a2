"""The log shipper against a real Stackwatch server, an unreachable port, and a scripted stub."""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverproc import INGEST_TOKEN, ServerProcess, free_port
from stackwatch.sdk._config import SDKConfig, resolve_config
from stackwatch.sdk._shipper import LogShipper
from stackwatch.sdk.logging import (
    EventBuilder,
    LogContext,
    configure_logging,
    current_setup,
    unconfigure_logging,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("ship") / "data").start()
    yield srv
    srv.stop()


def search(server: ServerProcess, q: str, limit: int = 100) -> dict[str, Any]:
    with server.client() as c:
        r = c.get("/api/v1/logs/search", params={"q": q, "start": "-1h", "end": "+1h", "limit": limit})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]


def record(message: str, *args: Any, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("app.ship", level, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def make_shipper(url: str, **kw: Any) -> LogShipper:
    builder = EventBuilder(SDKConfig(service=kw.pop("service", "shiptest")))
    return LogShipper(url, INGEST_TOKEN, build_event=builder.build, **kw)


# --------------------------------------------------------------------------- real server


def test_logs_reach_a_real_server_with_their_fields(server: ServerProcess) -> None:
    service = f"ship-{uuid.uuid4().hex[:8]}"
    config = resolve_config(
        env={},
        service=service,
        environment="production",
        version="2.0.1",
        server_url=server.url,
        token=INGEST_TOKEN,
    )
    setup = configure_logging(config)
    try:
        assert setup.shipper is not None
        log = logging.getLogger("app.routes.leads")
        with LogContext(request_id="req-ship-1"):
            for i in range(25):
                log.info(
                    "shipped line %d for %s",
                    i,
                    "ann@example.com",
                    extra={"lead_id": i, "source_channel": "web"},
                )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("shipped failure")
        from stackwatch.sdk.logging import log_database_query

        log_database_query("SELECT 1", 800.0, 1)
        assert setup.flush(timeout=10)
        assert server.wait_for_count(f'service:{service} AND message:"shipped line"', 25) == 25
        hits = search(server, f'service:{service} AND message:"shipped line 7"')["hits"]
        assert len(hits) == 1
        hit = hits[0]
        assert hit["message"] == "shipped line 7 for a***@example.com"
        assert hit["level"] == "INFO"
        assert hit["logger"] == "app.routes.leads"
        assert hit["function"] == "test_logs_reach_a_real_server_with_their_fields"
        assert hit["source"].startswith(f"{__file__}:")
        assert hit["attributes"]["context.lead_id"] == 7
        assert hit["attributes"]["context.source_channel"] == "web"
        assert "req-ship-1" in (hit["trace_id"], hit["attributes"].get("request_id"))
        assert hit["resource"]["service.version"] == "2.0.1"
        assert hit["resource"]["deployment.environment"] == "production"
        assert (
            server.wait_for_count(f'service:{service} AND level:ERROR AND message:"shipped failure"', 1) == 1
        )
        failure = search(server, f'service:{service} AND message:"shipped failure"')["hits"][0]
        assert failure["attributes"]["exception.type"] == "RuntimeError"
        assert "Traceback" in failure["attributes"]["exception.stack"]
        assert server.wait_for_count(f"service:{service} AND log_type:database", 1) == 1
        assert setup.shipper.stats()["sent"] >= 27  # (plus the test client's own httpx lines)
    finally:
        unconfigure_logging()


# --------------------------------------------------------------------------- unreachable, then back


def test_unreachable_server_never_blocks_drops_oldest_and_recovers(tmp_path: Path, capfd) -> None:
    port = free_port()
    shipper = make_shipper(
        f"http://127.0.0.1:{port}",
        service="outage",
        buffer_size=200,
        batch_size=50,
        flush_interval=0.05,
        max_backoff=0.3,
    )
    try:
        slowest = 0.0
        started = time.perf_counter()
        for i in range(1000):
            t = time.perf_counter()
            shipper.handle(record("outage line %04d", i))
            slowest = max(slowest, time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        # No network wait on the app thread (bounds loose enough for a loaded CI machine; a
        # blocking send would take the whole backoff, seconds in all).
        assert elapsed < 4.0 and slowest < 0.5, (elapsed, slowest)
        deadline = time.monotonic() + 10
        while shipper.stats()["failures"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the shipper thread's first failed attempts
        stats = shipper.stats()
        assert stats["buffered"] <= 201
        assert stats["dropped"] >= 800 - 1
        assert stats["failures"] >= 1 and stats["sent"] == 0
        t = time.perf_counter()
        assert shipper.flush(timeout=2) is False  # refused at once: no long wait
        assert time.perf_counter() - t < 1.5
        err = capfd.readouterr().err
        assert err.count("log buffer full") == 1, err  # one warning per episode
        assert err.count("cannot ship logs") == 1, err

        srv = ServerProcess(tmp_path / "data")
        srv.port, srv.url = port, f"http://127.0.0.1:{port}"
        srv.start()
        try:
            deadline = time.monotonic() + 20
            while shipper.stats()["buffered"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert shipper.flush(timeout=5)
            kept = shipper.stats()["sent"]
            assert 190 <= kept <= 201
            assert srv.wait_for_count('service:outage AND message:"outage line"', kept) == kept
            # The newest survived, the older ones were dropped. (The first batch may have been
            # in flight when the outage began; it is retried, not dropped, so probe a line
            # from the middle of the burst rather than line 0000.)
            with srv.client() as c:
                newest = c.get(
                    "/api/v1/logs/search", params={"q": 'message:"outage line 0999"', "start": "-1h"}
                )
                oldest = c.get(
                    "/api/v1/logs/search", params={"q": 'message:"outage line 0400"', "start": "-1h"}
                )
            assert newest.json()["total"] == 1 and oldest.json()["total"] == 0
            err = capfd.readouterr().err
            assert "recovered" in err and "records were dropped" in err
            shipper.handle(record("after recovery"))
            assert shipper.flush(timeout=5)
            assert srv.wait_for_count('message:"after recovery"', 1) == 1
        finally:
            srv.stop()
    finally:
        shipper.close(timeout=0.5)


def test_close_and_flush_are_bounded_when_the_server_is_gone() -> None:
    shipper = make_shipper(f"http://127.0.0.1:{free_port()}", flush_interval=0.05)
    shipper.handle(record("lost"))
    t = time.perf_counter()
    shipper.close(timeout=1.0)
    assert time.perf_counter() - t < 3.0
    shipper.close()  # twice is fine
    shipper.handle(record("after close"))  # ignored, never raises


# --------------------------------------------------------------------------- scripted stub


class Stub:
    """A tiny HTTP server answering /api/v1/logs with scripted statuses; records what it got."""

    def __init__(self, statuses: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[float, dict[str, str], list[dict[str, Any]]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                events = [json.loads(line) for line in body.splitlines() if line.strip()]
                stub.requests.append((time.monotonic(), dict(self.headers), events))
                status, headers = stub.statuses.pop(0) if stub.statuses else (200, {})
                payload = b'{"accepted": 1}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def messages(self) -> list[str]:
        return [e["message"] for _, _, events in self.requests for e in events]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


def test_ndjson_body_headers_and_retry_after(stub: Stub) -> None:
    stub.statuses = [(429, {"Retry-After": "1"}), (503, {}), (200, {})]
    shipper = make_shipper(stub.url, flush_interval=0.05, max_backoff=0.2)
    try:
        with LogContext(request_id="r-1"):
            shipper.handle(record("first %s", "x", lead_id=1))
        deadline = time.monotonic() + 10
        while len(stub.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(stub.requests) == 3
        (t429, headers, events), (t503, _, _), (_, _, again) = stub.requests
        assert t503 - t429 >= 0.9  # Retry-After honoured
        assert headers["Authorization"] == f"Bearer {INGEST_TOKEN}"
        assert headers["Content-Type"] == "application/x-ndjson"
        assert events == again  # the same batch, retried
        [event] = events
        assert event["message"] == "first x" and event["request_id"] == "r-1"
        assert event["context"] == {"lead_id": 1}
        assert "trace_id" not in event  # None fields are not sent
        assert event["host"] and event["resource"]["process.pid"] == str(os.getpid())
        # The stub answers before the shipper has read the answer: wait for it to count it.
        while shipper.stats()["sent"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shipper.stats()["sent"] == 1 and shipper.stats()["failures"] == 2
    finally:
        shipper.close(timeout=1)


def test_client_errors_are_not_retried(stub: Stub, capfd) -> None:
    stub.statuses = [(401, {})]
    shipper = make_shipper(stub.url, flush_interval=0.05)
    try:
        shipper.handle(record("refused"))
        assert shipper.flush(timeout=5)
        shipper.handle(record("accepted"))
        assert shipper.flush(timeout=5)
        assert stub.messages() == ["refused", "accepted"]
        assert shipper.stats()["rejected"] == 1 and shipper.stats()["sent"] == 1
        assert "HTTP 401" in capfd.readouterr().err
    finally:
        shipper.close(timeout=1)


def test_batches_are_bounded_and_large_ones_gzipped(stub: Stub) -> None:
    shipper = make_shipper(stub.url, batch_size=100, flush_interval=10)
    try:
        for i in range(250):
            shipper.handle(record("batch line %d %s", i, "y" * 200))
        assert shipper.flush(timeout=10)
        sizes = [len(events) for _, _, events in stub.requests]
        assert sum(sizes) == 250 and max(sizes) <= 100
        assert any(h.get("Content-Encoding") == "gzip" for _, h, _ in stub.requests)
        assert stub.messages() == [f"batch line {i} {'y' * 200}" for i in range(250)]
    finally:
        shipper.close(timeout=1)


def test_the_shipper_ignores_records_from_its_own_thread(stub: Stub) -> None:
    shipper = make_shipper(stub.url, flush_interval=0.05)
    try:
        shipper.handle(record("start"))
        assert shipper.flush(timeout=5)
        assert shipper._worker_ident is not None
        # Pretend a library logs from inside the worker thread: emit must drop it, not loop.
        shipper._worker_ident, real = threading.get_ident(), shipper._worker_ident
        shipper.handle(record("from worker"))
        shipper._worker_ident = real
        assert shipper.stats()["buffered"] == 0
    finally:
        shipper.close(timeout=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_gives_the_child_a_fresh_thread_and_buffer(stub: Stub) -> None:
    shipper = make_shipper(stub.url, flush_interval=60)
    try:
        shipper.handle(record("parent before fork"))  # buffered, not yet sent
        assert shipper._thread is not None and shipper._thread.is_alive()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                ok_fresh = shipper.stats()["buffered"] == 0 and shipper._thread is None
                shipper.handle(record("child after fork"))
                ok_sent = shipper.flush(timeout=5)
                code = 0 if (ok_fresh and ok_sent) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert stub.messages() == ["child after fork"]
        child_pid = stub.requests[0][2][0]["resource"]["process.pid"]
        assert child_pid == str(pid)
        assert shipper.flush(timeout=5)
        assert stub.messages() == ["child after fork", "parent before fork"]
    finally:
        shipper.close(timeout=1)


def test_shutdown_flushes_what_is_buffered(stub: Stub) -> None:
    config = resolve_config(env={}, service="flushing", environment="production", server_url=stub.url)
    configure_logging(config)
    setup = current_setup()
    assert setup is not None and setup.shipper is not None
    logging.getLogger("app").warning("last words")
    unconfigure_logging(timeout=5)
    assert stub.messages() == ["last words"]


def test_invalid_server_url_is_refused() -> None:
    with pytest.raises(ValueError):
        make_shipper("ftp://nope")


def test_a_real_server_rejects_a_bad_token(server: ServerProcess, capfd) -> None:
    builder = EventBuilder(SDKConfig(service="badtoken"))
    shipper = LogShipper(server.url, "swi_wrong", build_event=builder.build, flush_interval=0.05)
    try:
        shipper.handle(record("nope"))
        assert shipper.flush(timeout=10)
        assert shipper.stats()["rejected"] == 1
        assert "HTTP 401" in capfd.readouterr().err or "HTTP 403" in capfd.readouterr().err
    finally:
        shipper.close(timeout=1)
    with httpx.Client() as c:  # (the server is still healthy)
        assert c.get(server.url + "/health").status_code == 200
