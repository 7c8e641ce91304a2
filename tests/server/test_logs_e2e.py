"""Logs end to end against the real server process: push, search, errors, back-pressure, crashes."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serverproc import INGEST_TOKEN, ServerProcess

NOW = time.time()


def iso(offset_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW + offset_s)) + ".123Z"


GUIDE_LINES = [
    # The four searches of the guides must find exactly the lines marked "hit-N".
    {"timestamp": iso(-60), "level": "ERROR", "service": "auth", "trace_id": "t1", "source": "auth/login.py:88",
     "message": "Failed login attempt for user", "context": {"ip_address": "203.0.113.9", "mark": "hit-1"}},
    {"timestamp": iso(-59), "level": "ERROR", "service": "auth", "trace_id": "t2", "source": "auth/login.py:88",
     "message": "Failed login attempt for user", "context": {"mark": "no-ip"}},
    {"timestamp": iso(-58), "level": "WARN", "service": "auth", "trace_id": "t3", "source": "auth/login.py:88",
     "message": "Failed login attempt for user", "context": {"ip_address": "203.0.113.9", "mark": "warn"}},
    {"timestamp": iso(-50), "level": "INFO", "service": "api", "trace_id": "abc123def456", "source": "api/leads.py:12",
     "message": "Lead created", "context": {"mark": "hit-2"}},
    {"timestamp": iso(-49), "level": "DEBUG", "service": "api", "trace_id": "abc123def456", "source": "api/leads.py:13",
     "message": "Lead payload", "context": {"mark": "debug"}},
    {"timestamp": iso(-40), "level": "WARNING", "service": "api", "trace_id": "t4", "source": "api/mw.py:40",
     "message": "Slow request", "context": {"duration": 730, "route": "/api/leads/{id}", "mark": "hit-3"}},
    {"timestamp": iso(-39), "level": "WARN", "service": "api", "trace_id": "t5", "source": "api/mw.py:40",
     "message": "Slow request", "context": {"duration": 420, "mark": "fast"}},
    {"timestamp": iso(-30), "level": "ERROR", "service": "payment", "trace_id": "t6", "source": "pay/stripe.py:77",
     "message": "Payment processing failed: card declined", "context": {"error_code": "card_declined", "mark": "hit-4"}},
    {"timestamp": iso(-29), "level": "ERROR", "service": "payment", "trace_id": "t7", "source": "pay/stripe.py:77",
     "message": "Payment processing failed", "context": {"mark": "no-code"}},
]

GUIDE_QUERIES = {
    'level:ERROR AND service:auth AND message:"Failed login attempt" AND context.ip_address:*': ["hit-1"],
    'trace_id:"abc123def456" AND NOT level:DEBUG': ["hit-2"],
    "service:api AND context.duration:>500 AND level:WARN": ["hit-3"],
    'service:payment AND level:ERROR AND message:"Payment processing failed" AND context.error_code:*': ["hit-4"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("e2e") / "data").start()
    yield srv
    srv.stop()


def ndjson(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def push(server: ServerProcess, body: bytes, **headers: str) -> httpx.Response:
    with server.ingest_client() as c:
        return c.post("/api/v1/logs", content=body, headers={"Content-Type": "application/x-ndjson", **headers})


def test_guide_queries_find_exactly_their_lines(server: ServerProcess) -> None:
    r = push(server, ndjson(GUIDE_LINES))
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": len(GUIDE_LINES)}
    assert server.wait_for_count("context.mark:*", len(GUIDE_LINES)) == len(GUIDE_LINES)
    with server.client() as c:
        for q, marks in GUIDE_QUERIES.items():
            r = c.get("/api/v1/logs/search", params={"q": q, "start": "-1h"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [h["attributes"]["context.mark"] for h in body["hits"]] == marks, q
            assert body["total"] == len(marks)
        # WARN and WARNING are one level.
        r = c.get("/api/v1/logs/search", params={"q": "level:WARNING AND service:api", "start": "-1h"})
        assert r.json()["total"] == 2
        hit = c.get("/api/v1/logs/search", params={"q": "context.mark:hit-3", "start": "-1h"}).json()["hits"][0]
        assert hit["level"] == "WARN"
        assert hit["service"] == "api"
        assert hit["source"] == "api/mw.py:40"
        assert hit["attributes"]["context.duration"] == 730
        assert hit["timestamp"].endswith(".123000000Z")


def test_histogram_counts_per_bucket(server: ServerProcess) -> None:
    server.wait_for_count("context.mark:*", len(GUIDE_LINES))
    with server.client() as c:
        r = c.get("/api/v1/logs/histogram", params={"q": "level:ERROR", "start": "-10m", "end": "now",
                                                    "interval": "1m"})
        assert r.status_code == 200, r.text
        buckets = r.json()["buckets"]
        assert len(buckets) in (10, 11)
        assert sum(b["count"] for b in buckets) == 4


def test_gzip_body_and_defaults_from_query(server: ServerProcess) -> None:
    body = gzip.compress(b'{"msg": "compressed line", "lvl": "error", "marker": "gz-1"}\n')
    with server.ingest_client() as c:
        r = c.post("/api/v1/logs?service=billing&log_type=security", content=body,
                   headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert server.wait_for_count("marker:gz-1", 1) == 1
    with server.client() as c:
        hit = c.get("/api/v1/logs/search", params={"q": "marker:gz-1", "start": "-1h"}).json()["hits"][0]
    assert (hit["service"], hit["level"], hit["message"], hit["log_type"]) == (
        "billing", "ERROR", "compressed line", "security")


def test_a_line_from_the_year_9999_does_not_stop_ingestion(server: ServerProcess) -> None:
    """A typo'd year once failed its block's insert at every retry (and WAL replay), and every
    line sent after it waited behind it: acknowledged, never searchable."""
    with server.ingest_client() as c:
        assert c.post("/api/v1/logs", content=b'{"message": "from far away", "timestamp": "9999-12-31T23:59:59Z",'
                                              b' "marker": "y9999"}\n').status_code == 200
        assert c.post("/api/v1/logs", content=b'{"message": "right after", "marker": "after-y9999"}\n').status_code == 200
    assert server.wait_for_count("marker:after-y9999", 1) == 1
    assert server.wait_for_count("marker:y9999", 1) == 1
    with server.client() as c:
        hit = c.get("/api/v1/logs/search", params={"q": "marker:y9999", "start": "-1h"}).json()["hits"][0]
    assert hit["attributes"]["timestamp_raw"] == "9999-12-31T23:59:59Z"  # kept, at its arrival time


def test_bad_input_gets_clear_4xx(server: ServerProcess) -> None:
    r = push(server, b'{"message": "fine"}\n{"message": broken}\n')
    assert r.status_code == 400
    assert "line 2" in r.json()["error"]
    r = push(server, b'{"message": "x"}\n', **{"Content-Type": "application/xml"})
    assert r.status_code == 415
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/api/v1/logs", content=b'{"message": "x"}\n')
        assert r.status_code == 401
        assert "missing" in r.json()["error"]
        r = c.post("/api/v1/logs", content=b'{"message": "x"}\n', headers={"Authorization": "Bearer nope-nope-nope"})
        assert r.status_code == 401
        r = c.get("/api/v1/logs/search", params={"q": "*"})
        assert r.status_code == 401
        # An ingest token cannot read.
        r = c.get("/api/v1/logs/search", headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert r.status_code == 401
    r = push(server, b"{" + b'"m": "' + b"x" * (33 * 1024 * 1024) + b'"}')
    assert r.status_code == 413
    with server.client() as c:
        r = c.get("/api/v1/logs/search", params={"q": 'level:ERROR AND (service:auth'})
        assert r.status_code == 400
        assert "position" in r.json()["error"]
        r = c.get("/api/v1/logs/search", params={"q": "*", "start": "yesterday-ish"})
        assert r.status_code == 400
        assert "invalid time" in r.json()["error"]
        r = c.get("/api/v1/logs/search", params={"q": "*", "limit": 0})
        assert r.status_code == 400
        # A mistyped project is a 404, not "0 results" (which reads as "no errors").
        for path in ("/api/v1/logs/search", "/api/v1/logs/histogram"):
            r = c.get(path, params={"q": "*", "project": "Default"})
            assert r.status_code == 404 and "no project 'Default'" in r.json()["error"], r.text


def test_saved_searches_roundtrip(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/api/v1/saved-searches", json={"name": "failed logins", "query": GUIDE_LINES and
                   'level:ERROR AND service:auth', "time_range": "24h"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert any(s["id"] == sid for s in c.get("/api/v1/saved-searches").json()["saved_searches"])
        r = c.patch(f"/api/v1/saved-searches/{sid}", json={"query": "level:FATAL"})
        assert r.json()["query"] == "level:FATAL"
        r = c.post("/api/v1/saved-searches", json={"name": "broken", "query": "level:("})
        assert r.status_code == 400
        assert c.delete(f"/api/v1/saved-searches/{sid}").status_code == 204
        assert c.get(f"/api/v1/saved-searches/{sid}").status_code == 404


def test_live_tail_streams_new_lines(server: ServerProcess) -> None:
    got: list[dict[str, object]] = []

    def reader() -> None:
        with server.client() as c, c.stream("GET", "/api/v1/logs/tail", params={"q": "service:tailtest"},
                                            timeout=20) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    if len(got) >= 2:
                        return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(1.0)
    push(server, ndjson([{"message": "tail one", "service": "tailtest"},
                         {"message": "other", "service": "quiet"},
                         {"message": "tail two", "service": "tailtest"}]))
    t.join(timeout=15)
    assert [g["message"] for g in got] == ["tail one", "tail two"]


def test_live_tail_streams_a_whole_burst(server: ServerProcess) -> None:
    """2,500 lines in one request, more than one read of the tail takes (1,000): every one is
    streamed, in order (the rest were skipped)."""
    n = 2_500
    got: list[str] = []

    def reader() -> None:
        with server.client() as c, c.stream("GET", "/api/v1/logs/tail", params={"q": "service:bursttail"},
                                            timeout=30) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:])["message"])
                    if len(got) >= n + 1:
                        return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(1.0)
    push(server, ndjson([{"message": f"burst {i:04d}", "service": "bursttail"} for i in range(n)]))
    push(server, ndjson([{"message": "after the burst", "service": "bursttail"}]))
    t.join(timeout=25)
    assert got[:n] == [f"burst {i:04d}" for i in range(n)] and got[n:] == ["after the burst"]


def test_buffer_full_answers_429_with_retry_after(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", env={"STACKWATCH_INGEST_BUFFER_BYTES": "2000",
                                                "STACKWATCH_INGEST_WAIT_S": "0",
                                                "STACKWATCH_BATCH_MAX_DELAY_MS": "3000"}).start()
    try:
        line = ndjson([{"message": "x" * 1500}])
        assert push(srv, line).status_code == 200
        r = push(srv, line)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        # Once the batcher has stored the first block, the same request is accepted.
        deadline = time.monotonic() + 15
        while (r := push(srv, line)).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200
        assert srv.wait_for_count("*", 2) == 2
    finally:
        srv.stop()


def test_a_full_buffer_holds_the_request_until_storage_makes_room(tmp_path: Path) -> None:
    """Backpressure by a slower answer: within ingest_wait_s the request waits and succeeds."""
    srv = ServerProcess(tmp_path / "data", env={"STACKWATCH_INGEST_BUFFER_BYTES": "2000",
                                                "STACKWATCH_INGEST_WAIT_S": "20",
                                                "STACKWATCH_BATCH_MAX_DELAY_MS": "3000"}).start()
    try:
        line = ndjson([{"message": "x" * 1500}])
        assert push(srv, line).status_code == 200
        with srv.client() as c:
            assert c.get("/health").json()["ingest"]["stored_events"] == 0  # the first waits its 3 s batch delay
        r = push(srv, line)
        assert r.status_code == 200
        with srv.client() as c:
            # Admitted only once the first block was stored and its room given back.
            assert c.get("/health").json()["ingest"]["stored_events"] >= 1
        assert srv.wait_for_count("*", 2) == 2
    finally:
        srv.stop()


def test_sigkill_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Every acknowledged event is searchable exactly once after a SIGKILL and restart."""
    srv = ServerProcess(tmp_path / "data").start()
    acked: list[int] = []
    attempted: list[int] = []
    stop = threading.Event()

    def sender(worker: int) -> None:
        n = 0
        with srv.ingest_client() as c:
            while not stop.is_set():
                batch_id = worker * 1_000_000 + n
                n += 1
                lines = [{"message": f"event {batch_id}-{i}", "batch": batch_id, "i": i} for i in range(50)]
                attempted.append(batch_id)
                try:
                    r = c.post("/api/v1/logs", content=ndjson(lines),
                               headers={"Content-Type": "application/x-ndjson"})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(batch_id)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) > 20, "the stream should have been running when the server died"

    srv2 = ServerProcess(tmp_path / "data")
    srv2.port, srv2.url = srv.port, srv.url
    srv2.start()
    try:
        expected = len(acked) * 50
        total = srv2.wait_for_count("batch:*", expected, timeout=30)
        with srv2.client() as c:
            rows = []
            cursor = None
            while True:
                params = {"q": "batch:*", "start": "-1h", "end": "+1h", "limit": 10000}
                if cursor:
                    params["cursor"] = cursor
                page = c.get("/api/v1/logs/search", params=params).json()
                rows.extend((h["attributes"]["batch"], h["attributes"]["i"]) for h in page["hits"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
        assert len(rows) == total
        assert len(set(rows)) == len(rows), "an event was stored twice"
        stored_batches = {b for b, _ in rows}
        assert set(acked) <= stored_batches, "an acknowledged event was lost"
        assert stored_batches <= set(attempted)
        # Each stored request is whole: the WAL holds requests, not parts of them.
        per_batch: dict[int, int] = {}
        for b, _ in rows:
            per_batch[b] = per_batch.get(b, 0) + 1
        assert set(per_batch.values()) == {50}
    finally:
        srv2.stop()


def test_retention_is_configurable_per_project(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.get("/api/v1/projects/default/retention")
        assert r.status_code == 200
        assert r.json()["retention"]["web"] == {"hot_days": 3, "warm_days": 15, "cold_days": 90}
        assert r.json()["retention"]["security"] == {"hot_days": 30, "warm_days": 90, "cold_days": 730}
        r = c.put("/api/v1/projects/default/retention", json={"web": {"hot_days": 1, "warm_days": 7, "cold_days": 30}})
        assert r.status_code == 200, r.text
        assert r.json()["retention"]["web"] == {"hot_days": 1, "warm_days": 7, "cold_days": 30}
        r = c.put("/api/v1/projects/default/retention", json={"web": {"hot_days": 10, "warm_days": 7}})
        assert r.status_code == 400
        assert "web" in r.json()["error"]
        assert c.get("/api/v1/projects/default/retention").json()["retention"]["metrics"] == {"days": 15}
        r = c.put("/api/v1/projects/default/retention", json={"metrics": {"days": 90}})
        assert r.status_code == 200, r.text
        assert r.json()["retention"]["metrics"] == {"days": 90}
        assert c.put("/api/v1/projects/default/retention", json={"metrics": {"days": -1}}).status_code == 400
        projects = c.get("/api/v1/projects").json()["projects"]
        default = next(p for p in projects if p["slug"] == "default")
        assert default["dsn"] == f"http://{INGEST_TOKEN}@127.0.0.1:{server.port}/{default['id']}"
