"""The Prometheus HTTP API and metrics ingest against a real server process.

Data arrives through the import endpoint (explicit timestamps) and remote write (our encoder);
queries are checked for Prometheus's JSON shapes, GET and POST forms, errors and auth.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess
from stackwatch.ingest.prom_remote import MetricMetadata, TimeSeries, compress, encode_write_request

NOW_S = int(time.time()) // 60 * 60
T0_S = NOW_S - 3600  # one hour of data, 30 s apart


def _import_body() -> str:
    lines = ["# TYPE http_requests_total counter", "# HELP http_requests_total Requests served."]
    for i in range(121):
        t = (T0_S + i * 30) * 1000
        lines.append(f'http_requests_total{{route="/api/leads",code="200",instance="web-1"}} {i * 30} {t}')
        lines.append(f'http_requests_total{{route="/api/leads",code="500",instance="web-1"}} {i} {t}')
        lines.append(f'http_requests_total{{route="/health",code="200",instance="web-2"}} {i * 3} {t}')
        lines.append(f'node_memory_bytes{{instance="web-1"}} {1e9 + i} {t}')
    return "\n".join(lines) + "\n"


def wait_for_series(c: httpx.Client, match: str, n: int, timeout: float = 20.0, **params: Any) -> list[Any]:
    deadline = time.monotonic() + timeout
    data: list[Any] = []
    while time.monotonic() < deadline:
        r = c.get("/api/v1/series", params={"match[]": match, **params})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if len(data) >= n:
            return data
        time.sleep(0.2)
    raise AssertionError(f"{match}: {len(data)} series after {timeout}s, wanted {n}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("prom") / "data").start()
    with srv.ingest_client() as c:
        r = c.post("/api/v1/import/prometheus", content=_import_body())
        assert r.status_code == 204, r.text
    with srv.client() as c:
        wait_for_series(c, '{__name__=~"http_requests_total|node_memory_bytes"}', 4)
    yield srv
    srv.stop()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def test_instant_query_shape(api: httpx.Client) -> None:
    r = api.get("/api/v1/query", params={"query": "sum by (route) (rate(http_requests_total[5m]))",
                                         "time": NOW_S})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "vector"
    result = {s["metric"]["route"]: s["value"] for s in body["data"]["result"]}
    assert result["/api/leads"][0] == NOW_S
    assert float(result["/api/leads"][1]) == pytest.approx(31 / 30)
    assert float(result["/health"][1]) == pytest.approx(0.1)


def test_range_query_get_and_post_agree(api: httpx.Client) -> None:
    params = {"query": 'http_requests_total{code="500"}', "start": T0_S, "end": T0_S + 300, "step": "1m"}
    r = api.get("/api/v1/query_range", params=params)
    assert r.status_code == 200
    (series,) = r.json()["data"]["result"]
    assert series["metric"] == {"__name__": "http_requests_total", "code": "500", "instance": "web-1",
                                "route": "/api/leads"}
    assert series["values"] == [[T0_S + 60 * k, str(2 * k)] for k in range(6)]
    posted = api.post("/api/v1/query_range", data={**params, "step": "60"})
    assert posted.json() == r.json()
    rfc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0_S))
    r3 = api.get("/api/v1/query_range", params={**params, "start": rfc})
    assert r3.json() == r.json()
    # 11,000 whole steps and half a step more: Prometheus counts whole steps, and accepts it.
    edge = api.get("/api/v1/query_range", params={"query": "vector(1)", "start": 0, "end": 11_000.5, "step": 1})
    assert edge.status_code == 200 and len(edge.json()["data"]["result"][0]["values"]) == 11_001


def test_large_steps_read_rollups_unless_raw_is_asked(api: httpx.Client) -> None:
    """At a 5 min step a plain selector reads the 5 min rollup: the last sample of each bucket,
    which at bucket ends is what the samples give; ``max_source_resolution=raw`` reads samples."""
    start = -(-T0_S // 300) * 300  # the first bucket end in the data, as Grafana aligns a 5 min step
    params = {"query": 'http_requests_total{code="500"}', "start": start, "end": start + 1200, "step": "5m"}
    rolled = api.get("/api/v1/query_range", params=params)
    raw = api.get("/api/v1/query_range", params={**params, "max_source_resolution": "raw"})
    assert rolled.status_code == raw.status_code == 200
    assert rolled.json()["data"]["result"] == raw.json()["data"]["result"]
    values = [float(v) for _, v in raw.json()["data"]["result"][0]["values"]]
    assert len(values) == 5 and values == sorted(values) and values[-1] > values[0]


def test_scalar_and_string_results(api: httpx.Client) -> None:
    r = api.post("/api/v1/query", data={"query": "1 + 1", "time": "100.5"})
    assert r.json()["data"] == {"resultType": "scalar", "result": [100.5, "2"]}
    r = api.get("/api/v1/query", params={"query": 'count(node_memory_bytes) > bool 0', "time": NOW_S})
    assert r.json()["data"]["result"][0]["value"][1] == "1"


def test_series_labels_values_metadata_buildinfo(api: httpx.Client) -> None:
    r = api.get("/api/v1/series", params={"match[]": 'http_requests_total{code="200"}'})
    assert sorted(s["route"] for s in r.json()["data"]) == ["/api/leads", "/health"]
    r = api.post("/api/v1/series", data={"match[]": ["node_memory_bytes", '{route="/health"}']})
    assert len(r.json()["data"]) == 2
    assert api.get("/api/v1/labels").json()["data"] == ["__name__", "code", "instance", "route"]
    r = api.get("/api/v1/labels", params={"match[]": "node_memory_bytes"})
    assert r.json()["data"] == ["__name__", "instance"]
    r = api.get("/api/v1/label/__name__/values")
    assert r.json()["data"] == ["http_requests_total", "node_memory_bytes"]
    r = api.get("/api/v1/label/route/values", params={"match[]": 'http_requests_total{instance="web-2"}'})
    assert r.json()["data"] == ["/health"]
    r = api.get("/api/v1/metadata")
    assert r.json()["data"]["http_requests_total"] == [{"type": "counter", "help": "Requests served.", "unit": ""}]
    r = api.get("/api/v1/metadata", params={"metric": "nope"})
    assert r.json()["data"] == {}
    formatted = api.get("/api/v1/format_query", params={"query": "sum(rate(a[5m]))/sum(rate(b[5m]))"}).json()
    assert formatted == {"status": "success", "data": "sum(rate(a[5m])) / sum(rate(b[5m]))"}
    long = ('sum by (route) (rate(http_requests_total{code=~"5.."}[5m])) / '
            "sum by (route) (rate(http_requests_total[5m]))")
    lines = api.post("/api/v1/format_query", data={"query": long}).json()["data"].splitlines()
    assert lines == ['  sum by (route) (rate(http_requests_total{code=~"5.."}[5m]))', "/",
                     "  sum by (route) (rate(http_requests_total[5m]))"]
    info = api.get("/api/v1/status/buildinfo").json()["data"]
    assert info["version"].startswith("2.") and "stackwatch" in info["revision"]


@pytest.mark.parametrize(
    ("path", "params", "status", "error_type", "fragment"),
    [
        ("/api/v1/query", {"query": "sum("}, 400, "bad_data", 'invalid parameter "query"'),
        ("/api/v1/query", {"query": "rate(up[5m]) +"}, 400, "bad_data", "1:15: parse error: unexpected end of input"),
        ("/api/v1/query", {"query": "up", "time": "yesterday"}, 400, "bad_data", 'invalid parameter "time"'),
        ("/api/v1/query", {"query": "up", "time": "1e16"}, 400, "bad_data", "out of range"),
        ("/api/v1/query", {"query": "up @ 1e20"}, 400, "bad_data", "timestamp out of bounds for @ modifier"),
        ("/api/v1/format_query", {"query": "sum(x) by"}, 400, "bad_data", "1:10: parse error"),
        ("/api/v1/query_range", {"query": "up", "start": "1e20", "end": "1e20", "step": "60"}, 400, "bad_data",
         'invalid parameter "start"'),
        ("/api/v1/query_range", {"query": "up", "start": 0, "end": 10}, 400, "bad_data", '"step"'),
        ("/api/v1/query_range", {"query": "up", "start": 0, "end": 10, "step": "0"}, 400, "bad_data",
         "zero or negative"),
        ("/api/v1/query_range", {"query": "up", "start": 0, "end": 86400, "step": "1"}, 400, "bad_data",
         "11,000 points"),
        ("/api/v1/query_range", {"query": "up", "start": 10, "end": 0, "step": "1"}, 400, "bad_data",
         "end timestamp must not be before start time"),
        ("/api/v1/query_range", {"query": "up[5m]", "start": 0, "end": 10, "step": "1"}, 400, "bad_data",
         "range vector"),
        ("/api/v1/query_range", {"query": "up", "start": 0, "end": 600, "step": "60",
                                 "max_source_resolution": "fine"}, 400, "bad_data", "max_source_resolution"),
        ("/api/v1/series", {}, 400, "bad_data", "no match[] parameter provided"),
        ("/api/v1/series", {"match[]": '{a=""}'}, 400, "bad_data", "non-empty matcher"),
        ("/api/v1/label/1bad/values", {}, 400, "bad_data", "invalid label name"),
        ("/api/v1/query", {"query": 'label_replace(up, "x", "$1", "y", "(")'}, 422, "execution", ""),
        ("/api/v1/query", {"query": "limitk(1, up)"}, 400, "bad_data", "limitk() is experimental"),
        ("/api/v1/query", {"query": "up", "project": "nope"}, 404, "not_found", "no project 'nope'"),
        ("/api/v1/query_exemplars", {"query": "up{", "start": 0, "end": 10}, 400, "bad_data",
         'invalid parameter "query"'),
    ],
)
def test_errors_use_prometheus_envelope(
    api: httpx.Client, path: str, params: dict[str, Any], status: int, error_type: str, fragment: str
) -> None:
    r = api.get(path, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and body["errorType"] == error_type
    assert fragment in body["error"]


def test_auth_bearer_basic_and_refusals(server: ServerProcess) -> None:
    q = {"query": "count(node_memory_bytes)", "time": NOW_S}  # the data sits around NOW_S
    assert httpx.get(server.url + "/api/v1/query", params=q).status_code == 401
    basic = base64.b64encode(f"grafana:{ADMIN_TOKEN}".encode()).decode()
    r = httpx.get(server.url + "/api/v1/query", params=q, headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200 and r.json()["data"]["result"][0]["value"][1] == "1"
    # An ingest token writes but cannot read; a reading token cannot write.
    r = httpx.get(server.url + "/api/v1/query", params=q, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 401
    r = httpx.post(server.url + "/api/v1/import/prometheus", content="x 1\n",
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 401


def _write(server: ServerProcess, payload: bytes, **headers: str) -> httpx.Response:
    base = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0", "Authorization": f"Bearer {INGEST_TOKEN}"}
    return httpx.post(server.url + "/api/v1/write", content=payload, headers={**base, **headers})


def test_remote_write_then_query(server: ServerProcess, api: httpx.Client) -> None:
    t_ms = NOW_S * 1000
    series = [
        TimeSeries([("__name__", "rw_temperature"), ("room", r)], [t_ms - 30_000, t_ms], [20.0 + i, 21.0 + i])
        for i, r in enumerate(("kitchen", "office"))
    ]
    r = _write(server, compress(encode_write_request(series, [MetricMetadata("gauge", "rw_temperature", "Temp.")])))
    assert r.status_code == 204, r.text
    wait_for_series(api, "rw_temperature", 2)
    r = api.get("/api/v1/query", params={"query": "max(rw_temperature)", "time": NOW_S})
    assert r.json()["data"]["result"][0]["value"] == [NOW_S, "22"]


def test_remote_write_partial_and_bad_input(server: ServerProcess, api: httpx.Client) -> None:
    t_ms = NOW_S * 1000
    good = TimeSeries([("__name__", "rw_partial_ok")], [t_ms], [1.0])
    bad = TimeSeries([("__name__", "rw bad")], [t_ms], [1.0])
    r = _write(server, compress(encode_write_request([good, bad])))
    assert r.status_code == 400
    assert r.json()["error"].startswith("1 samples rejected, 1 accepted: invalid metric name 'rw bad'")
    wait_for_series(api, "rw_partial_ok", 1)  # the valid series was stored all the same
    r = _write(server, b"\x05not snappy")
    assert r.status_code == 400 and "snappy" in r.json()["error"]
    r = _write(server, compress(b"\x0a\x05abc"))
    assert r.status_code == 400 and "invalid protobuf" in r.json()["error"]
    r = _write(server, compress(b""), **{"Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"})
    assert r.status_code == 415
    r = _write(server, compress(b""), Authorization="Bearer nope")
    assert r.status_code == 401


def test_projects_are_selected_by_header_or_parameter(server: ServerProcess, api: httpx.Client) -> None:
    assert api.post("/api/v1/projects", json={"slug": "other", "name": "Other"}).status_code in (201, 409)
    q = {"query": "count(node_memory_bytes)", "time": NOW_S}
    assert api.get("/api/v1/query", params={**q, "project": "other"}).json()["data"]["result"] == []
    r = api.get("/api/v1/query", params=q, headers={"X-Stackwatch-Project": "other"})
    assert r.json()["data"]["result"] == []
    assert api.get("/api/v1/query", params={**q, "project": "default"}).json()["data"]["result"]


def test_import_openmetrics_seconds_and_stale_marker(server: ServerProcess, api: httpx.Client) -> None:
    body = f"# TYPE om_gauge gauge\nom_gauge 7 {NOW_S - 60}.5\n# EOF\n"
    with server.ingest_client() as c:
        r = c.post("/api/v1/import/prometheus", content=body,
                   headers={"Content-Type": "application/openmetrics-text; version=1.0.0"})
        assert r.status_code == 204, r.text
        r = c.post("/api/v1/import/prometheus", content="bad{ 1\n")
        assert r.status_code == 400 and "line 1" in r.json()["error"]
    wait_for_series(api, "om_gauge", 1)
    r = api.get("/api/v1/query", params={"query": "om_gauge[2m]", "time": NOW_S})
    assert r.json()["data"]["result"][0]["values"] == [[NOW_S - 59.5, "7"]]
    # A staleness marker written by remote write ends the series for instant queries.
    stale = struct_nan()
    r = _write(server, compress(encode_write_request([TimeSeries([("__name__", "om_gauge")], [NOW_S * 1000 - 30_000],
                                                                 [stale])])))
    assert r.status_code == 204
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = api.get("/api/v1/query", params={"query": "om_gauge", "time": NOW_S}).json()["data"]["result"]
        if not result:
            break
        time.sleep(0.2)
    assert result == []


def struct_nan() -> float:
    import struct

    value = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
    assert math.isnan(value)
    return float(value)
