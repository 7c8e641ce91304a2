"""HealthRegistry: every built-in check kind against the real thing, timeouts, the cache."""

from __future__ import annotations

import http.server
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.health import DiskSpaceCheck, HealthRegistry, HttpCheck, as_check_function, interpret


def registry(**settings: object) -> HealthRegistry:
    return HealthRegistry(SDKConfig(service="crm", version="1.4.2", health_cache_seconds=0, **settings))  # type: ignore[arg-type]


def test_health_and_live_answer_without_calling_checks() -> None:
    calls: list[int] = []
    health = registry()
    health.add_check("db", lambda: calls.append(1))
    code, body = health.health()
    assert code == 200
    assert body["status"] == "healthy" and body["service"] == "crm" and body["version"] == "1.4.2"
    assert body["timestamp"].endswith("Z") and len(body["timestamp"]) == 24
    code, body = health.live()
    assert code == 200 and set(body) == {"status", "timestamp"}
    assert calls == []


def test_ready_all_pass() -> None:
    health = registry()
    health.add_check("truthy", lambda: True)
    health.add_check("message", lambda: "Database connection successful")
    health.add_check("none", lambda: None)
    code, body = health.ready()
    assert code == 200 and body["status"] == "healthy"
    assert body["checks"]["message"]["message"] == "Database connection successful"
    for check in body["checks"].values():
        assert check["status"] == "healthy"
        assert isinstance(check["latency_ms"], float) and check["latency_ms"] >= 0


def test_required_failure_is_503_unhealthy_with_the_reason() -> None:
    health = registry()
    health.add_check("ok", lambda: True)

    def broken() -> None:
        raise ConnectionError("connection to postgres://app:hunter2@db:5432/crm refused")

    health.add_check("database", broken)
    health.add_check("false", lambda: False)
    code, body = health.ready()
    assert code == 503 and body["status"] == "unhealthy"
    message = body["checks"]["database"]["message"]
    assert message.startswith("ConnectionError: connection to postgres://app:")
    assert "hunter2" not in message  # failure messages are redacted like logs
    assert body["checks"]["false"]["status"] == "unhealthy"
    assert body["checks"]["ok"]["status"] == "healthy"


def test_optional_failure_only_degrades() -> None:
    health = registry()
    health.add_check("database", lambda: True)
    health.add_check("sendgrid", lambda: {"status": "unhealthy", "message": "API key not configured",
                                          "available": False}, required=False)
    code, body = health.ready()
    assert code == 200 and body["status"] == "degraded"
    sendgrid = body["checks"]["sendgrid"]
    assert sendgrid == {"status": "unhealthy", "message": "API key not configured", "available": False,
                        "latency_ms": sendgrid["latency_ms"], "required": False}


def test_a_check_reporting_degraded_degrades() -> None:
    health = registry()
    health.add_check("queue", lambda: {"status": "degraded", "message": "backlog 5000"})
    code, body = health.ready()
    assert code == 200 and body["status"] == "degraded"


def test_slow_check_times_out_and_never_hangs_the_probe() -> None:
    release = threading.Event()
    health = registry()
    health.add_check("hung", lambda: release.wait(30), timeout=0.2)
    health.add_check("fast", lambda: True, timeout=0.2)
    try:
        started = time.monotonic()
        code, body = health.ready()
        assert time.monotonic() - started < 1.0
        assert code == 503
        assert body["checks"]["hung"]["message"] == "timed out after 0.2s"
        assert body["checks"]["fast"]["status"] == "healthy"
        threads = threading.active_count()
        # The next probe waits for the same hung run instead of starting another thread.
        code, body = health.ready()
        assert code == 503 and "still hanging" in body["checks"]["hung"]["message"]
        assert threading.active_count() <= threads
    finally:
        release.set()
    time.sleep(0.05)
    code, _ = health.ready()
    assert code == 200  # once the dependency answers again, so does the probe


def test_optional_timeout_degrades() -> None:
    release = threading.Event()
    health = registry()
    health.add_check("slow_api", lambda: release.wait(30), required=False, timeout=0.1)
    try:
        code, body = health.ready()
        assert code == 200 and body["status"] == "degraded"
    finally:
        release.set()


def test_results_are_cached_and_concurrent_probes_share_one_run() -> None:
    runs: list[float] = []
    lock = threading.Lock()

    def counted() -> bool:
        with lock:
            runs.append(time.monotonic())
        time.sleep(0.2)
        return True

    health = HealthRegistry(SDKConfig(health_cache_seconds=0.5))
    health.add_check("db", counted)
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(health.ready()[0])) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert codes == [200] * 20
    assert len(runs) == 1  # twenty simultaneous probes, one database call
    health.ready()
    assert len(runs) == 1  # still fresh
    time.sleep(0.55)
    health.ready()
    assert len(runs) == 2  # expired: run again


def test_async_callable_check() -> None:
    async def check() -> str:
        return "async ok"

    health = registry()
    health.add_check("async", check)
    code, body = health.ready()
    assert code == 200 and body["checks"]["async"]["message"] == "async ok"


def test_sqlalchemy_engine_check(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    assert as_check_function(engine, 1.0)[0] == "sqlalchemy"
    health = registry()
    health.add_check("database", engine)
    code, body = health.ready()
    assert code == 200 and body["checks"]["database"]["message"] == "Database connection successful"
    broken = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    health.add_check("database", broken)
    code, body = health.ready()
    assert code == 503 and "OperationalError" in body["checks"]["database"]["message"]


def test_dbapi_connection_check() -> None:
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    assert as_check_function(connection, 1.0)[0] == "dbapi"
    health = registry()
    health.add_check("database", connection)
    assert health.ready()[0] == 200
    connection.close()
    code, body = health.ready()
    assert code == 503 and "ProgrammingError" in body["checks"]["database"]["message"]


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = int(self.path.strip("/") or 200)
            if code == 999:
                time.sleep(2)
                code = 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            if code == 301:
                self.send_header("Location", "/200")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_dependency_checks(http_server: str) -> None:
    health = registry()
    health.add_check("string_url", f"{http_server}/200")
    health.add_check("expected_204", HttpCheck(f"{http_server}/204", expected_status=204))
    health.add_check("redirect_is_not_followed", HttpCheck(f"{http_server}/301", expected_status=301))
    code, body = health.ready()
    assert code == 200, body
    health.add_check("payments", f"{http_server}/502", required=False)
    code, body = health.ready()
    assert code == 200 and body["status"] == "degraded"
    assert body["checks"]["payments"]["message"] == "HTTP 502, expected 200"
    health.add_check("slow", f"{http_server}/999", timeout=0.3)
    code, body = health.ready()
    assert code == 503 and body["checks"]["slow"]["status"] == "unhealthy"


def test_http_check_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    health = registry()
    health.add_check("down", f"http://127.0.0.1:{port}/")
    code, body = health.ready()
    assert code == 503 and "URLError" in body["checks"]["down"]["message"]


def test_disk_space_check(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    free = usage.free / usage.total * 100
    health = registry()
    health.add_check("disk", DiskSpaceCheck(str(tmp_path), min_free_percent=0.0))
    code, body = health.ready()
    assert code == 200 and abs(body["checks"]["disk"]["free_percent"] - free) < 1
    health.add_check("disk", DiskSpaceCheck(str(tmp_path), min_free_percent=0.0, warn_free_percent=100.1))
    assert health.ready()[1]["status"] == "degraded"
    health.add_check("disk", DiskSpaceCheck(str(tmp_path), min_free_percent=100.1))
    code, body = health.ready()
    assert code == 503 and "minimum" in body["checks"]["disk"]["message"]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_client_check(redis_url: str) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    assert as_check_function(client, 1.0)[0] == "ping"
    health = registry()
    health.add_check("cache", client)
    code, body = health.ready()
    assert code == 200 and body["checks"]["cache"]["message"] == "PING ok"
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    health.add_check("cache", dead)
    code, body = health.ready()
    assert code == 503 and "ConnectionError" in body["checks"]["cache"]["message"]


def test_listeners_get_fresh_results_only() -> None:
    seen: list[dict[str, dict[str, object]]] = []
    health = HealthRegistry(SDKConfig(health_cache_seconds=60))
    health.add_check("db", lambda: True)
    health.add_listener(seen.append)
    health.add_listener(lambda results: 1 / 0)  # a broken listener changes nothing
    assert health.ready()[0] == 200
    assert health.ready()[0] == 200
    assert len(seen) == 1 and seen[0]["db"]["status"] == "healthy"


def test_bad_checks_are_programming_errors() -> None:
    health = registry()
    with pytest.raises(TypeError):
        health.add_check("x", "not a url")
    with pytest.raises(TypeError):
        health.add_check("x", 42)
    with pytest.raises(ValueError):
        health.add_check("x", lambda: True, timeout=0)


def test_interpret_shapes() -> None:
    assert interpret({"ok": False})[0] == "unhealthy"
    assert interpret({"healthy": True, "detail": 1}) == ("healthy", "ok", {"healthy": True, "detail": 1})
    assert interpret(3) == ("healthy", "3", {})


def test_answer_routes_configured_paths() -> None:
    health = HealthRegistry(SDKConfig(health_path="/healthz", live_path="/livez", ready_path="/readyz"))
    assert health.answer("/healthz")[0] == 200  # type: ignore[index]
    assert health.answer("/readyz")[1]["checks"] == {}  # type: ignore[index]
    assert health.answer("/health") is None
