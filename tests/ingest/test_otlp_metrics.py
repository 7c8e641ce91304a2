"""OTLP metrics to Prometheus series: the compatibility-spec mapping, and the real OTel SDK exporter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess
from stackwatch.errors import BadRequest, UnsupportedMediaType
from stackwatch.ingest.otlp_metrics import decode_otlp_metrics, metric_name, unit_suffix
from stackwatch.query.promql import is_stale_nan

T_NS = 1_767_225_600_000_000_000
T_MS = T_NS // 1_000_000


def _request(metrics: list[dict[str, Any]], resource: dict[str, str] | None = None) -> bytes:
    body = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": k, "value": {"stringValue": v}} for k, v in
                                            (resource or {"service.name": "checkout"}).items()]},
                "scopeMetrics": [{"scope": {"name": "shop", "version": "1.0"}, "metrics": metrics}],
            }
        ]
    }
    req = ExportMetricsServiceRequest()
    json_format.ParseDict(body, req)
    return req.SerializeToString()


def _samples(batch: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (batch.refs[s].name, batch.refs[s].labels): v
        for s, v in zip(batch.series, batch.values, strict=True)
    }


def _attrs(**kv: Any) -> list[dict[str, Any]]:
    out = []
    for k, v in kv.items():
        value = {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}
        out.append({"key": k.replace("__", "."), "value": value})
    return out


def test_names_and_units_follow_the_compatibility_spec() -> None:
    assert metric_name("http.server.request.duration", "s") == "http_server_request_duration_seconds"
    assert metric_name("http.server.requests", "{request}", counter=True) == "http_server_requests_total"
    assert metric_name("cpu.utilization", "1", gauge=True) == "cpu_utilization_ratio"
    assert metric_name("net.io", "By/s", counter=True) == "net_io_bytes_per_second_total"
    assert metric_name("latency", "ms") == "latency_milliseconds"
    assert metric_name("queue.size_bytes", "By") == "queue_size_bytes"
    assert metric_name("1st", "") == "_1st"
    assert unit_suffix("{packets}") == "" and unit_suffix("Cel") == "celsius"


def test_gauge_sum_histogram_summary_and_resource() -> None:
    point = {"timeUnixNano": str(T_NS), "attributes": _attrs(route="/cart", **{"http__method": "GET"})}
    metrics = [
        {"name": "queue.depth", "unit": "{items}", "description": "Depth.",
         "gauge": {"dataPoints": [{**point, "asInt": "7"}]}},
        {"name": "http.requests", "sum": {"aggregationTemporality": 2, "isMonotonic": True,
                                          "dataPoints": [{**point, "asDouble": 12}]}},
        {"name": "connections", "sum": {"aggregationTemporality": 2, "isMonotonic": False,
                                        "dataPoints": [{**point, "asInt": "4"}]}},
        {"name": "http.duration", "unit": "ms", "histogram": {"aggregationTemporality": 2, "dataPoints": [
            {**point, "count": "6", "sum": 420.0, "bucketCounts": ["1", "2", "3"], "explicitBounds": [10, 100]}]}},
        {"name": "rpc.latency", "unit": "s", "summary": {"dataPoints": [
            {**point, "count": "3", "sum": 1.5, "quantileValues": [{"quantile": 0.5, "value": 0.4},
                                                                   {"quantile": 0.99, "value": 0.9}]}]}},
    ]
    resource = {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-1",
                "host.name": "node-a"}
    batch, rejected, reason = decode_otlp_metrics(_request(metrics, resource), "application/x-protobuf", 0)
    assert (rejected, reason) == (0, "")
    base = (("http_method", "GET"), ("instance", "pod-1"), ("job", "shop/checkout"), ("route", "/cart"))
    got = _samples(batch)
    assert got[("queue_depth", base)] == 7
    assert got[("http_requests_total", base)] == 12
    assert got[("connections", base)] == 4
    le = lambda v: tuple(sorted((*base, ("le", v))))  # noqa: E731
    assert [got[("http_duration_milliseconds_bucket", le(v))] for v in ("10", "100", "+Inf")] == [1, 3, 6]
    assert got[("http_duration_milliseconds_count", base)] == 6
    assert got[("http_duration_milliseconds_sum", base)] == 420
    q = lambda v: tuple(sorted((*base, ("quantile", v))))  # noqa: E731
    assert got[("rpc_latency_seconds", q("0.5"))] == 0.4 and got[("rpc_latency_seconds", q("0.99"))] == 0.9
    assert got[("rpc_latency_seconds_count", base)] == 3
    assert got[("target_info", (("host_name", "node-a"), ("instance", "pod-1"), ("job", "shop/checkout")))] == 1
    assert set(batch.timestamps) == {T_MS}
    assert batch.metadata["http_requests"][0] == "counter"
    assert batch.metadata["http_duration_milliseconds"] == ("histogram", "", "milliseconds")
    assert batch.metadata["queue_depth"] == ("gauge", "Depth.", "")


def test_delta_is_rejected_with_partial_success_and_no_value_is_stale() -> None:
    metrics = [
        {"name": "jobs", "sum": {"aggregationTemporality": 1, "isMonotonic": True,
                                 "dataPoints": [{"timeUnixNano": str(T_NS), "asInt": "1"}] * 2}},
        {"name": "temp", "gauge": {"dataPoints": [{"timeUnixNano": str(T_NS), "flags": 1}]}},
    ]
    batch, rejected, reason = decode_otlp_metrics(_request(metrics), "application/x-protobuf", 0)
    assert rejected == 2 and "delta temporality is not supported (jobs)" in reason
    assert [r.name for r in batch.refs] == ["temp"]
    assert is_stale_nan(np.array(batch.values)).tolist() == [True]


def test_exponential_histogram_becomes_classic_buckets() -> None:
    # scale 0: base 2; positive buckets offset 0 -> (1,2], (2,4], (4,8]
    point = {"timeUnixNano": str(T_NS), "count": "7", "sum": 20.0, "scale": 0, "zeroCount": "1",
             "positive": {"offset": 0, "bucketCounts": ["2", "0", "4"]}}
    metrics = [{"name": "size", "unit": "By", "exponentialHistogram": {"aggregationTemporality": 2,
                                                                       "dataPoints": [point]}}]
    batch, _, _ = decode_otlp_metrics(_request(metrics), "application/x-protobuf", 0)
    got = {dict(k[1]).get("le"): v for k, v in _samples(batch).items() if k[0] == "size_bytes_bucket"}
    assert got == {"0": 1, "2": 3, "4": 3, "8": 7, "+Inf": 7}
    # A fine scale is reduced: scale 5 -> EXP_MAX_SCALE 3 merges 4 neighbours into one bucket.
    point = {"timeUnixNano": str(T_NS), "count": "4", "scale": 5,
             "positive": {"offset": 0, "bucketCounts": ["1", "1", "1", "1"]}}
    metrics = [{"name": "fine", "exponentialHistogram": {"aggregationTemporality": 2, "dataPoints": [point]}}]
    batch, _, _ = decode_otlp_metrics(_request(metrics), "application/x-protobuf", 0)
    got = {dict(k[1]).get("le"): v for k, v in _samples(batch).items() if k[0] == "fine_bucket"}
    assert got["+Inf"] == 4 and got[repr(2 ** (1 / 8))] == 4


def test_json_and_errors() -> None:
    body = (b'{"resource_metrics": [{"scope_metrics": [{"metrics": [{"name": "g", "gauge": {"data_points": '
            b'[{"time_unix_nano": 1767225600000000000, "as_double": 2.5}]}}]}]}]}')
    batch, _, _ = decode_otlp_metrics(body, "application/json", 0)
    assert (batch.refs[0].name, batch.values, batch.timestamps) == ("g", [2.5], [T_MS])
    with pytest.raises(BadRequest, match="invalid OTLP metrics request"):
        decode_otlp_metrics(b"\xff\x00", "application/x-protobuf", 0)
    with pytest.raises(BadRequest):
        decode_otlp_metrics(b"{not json", "application/json", 0)
    with pytest.raises(UnsupportedMediaType):
        decode_otlp_metrics(b"", "text/plain", 0)


# -- the real OpenTelemetry SDK exporter against a real server ------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("otlpm") / "data").start()
    yield srv
    srv.stop()


def _wait(server: ServerProcess, query: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    result: list[dict[str, Any]] = []
    with server.client(ADMIN_TOKEN) as c:
        while time.monotonic() < deadline:
            result = c.get("/api/v1/query", params={"query": query}).json()["data"]["result"]
            if len(result) >= n:
                return result
            time.sleep(0.2)
    raise AssertionError(f"{query}: {result}")


def test_opentelemetry_sdk_exporter(server: ServerProcess) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    exporter = OTLPMetricExporter(endpoint=server.url + "/v1/metrics",
                                  headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "checkout", "service.instance.id": "w1"}),
                             metric_readers=[reader])
    meter = provider.get_meter("shop")
    orders = meter.create_counter("orders", unit="{order}", description="Orders placed.")
    latency = meter.create_histogram("checkout.duration", unit="ms")
    queue = meter.create_up_down_counter("queue.size")
    meter.create_observable_gauge("cpu.utilization", unit="1",
                                  callbacks=[lambda _opts: [Observation(0.25, {"core": "0"})]])
    orders.add(3, {"plan": "pro"})
    orders.add(2, {"plan": "free"})
    for ms in (5, 40, 300):
        latency.record(ms, {"route": "/pay"})
    queue.add(5)
    queue.add(-2)
    try:
        assert provider.force_flush(timeout_millis=10_000)
    finally:
        provider.shutdown()
    got = {r["metric"]["plan"]: r["value"][1] for r in _wait(server, 'orders_total{job="checkout"}', 2)}
    assert got == {"pro": "3", "free": "2"}
    (count,) = _wait(server, 'checkout_duration_milliseconds_count{route="/pay", instance="w1"}')
    assert count["value"][1] == "3"
    (p50,) = _wait(server, "histogram_quantile(0.5, checkout_duration_milliseconds_bucket)")
    assert 25 <= float(p50["value"][1]) <= 50
    assert _wait(server, "queue_size")[0]["value"][1] == "3"
    assert _wait(server, "cpu_utilization_ratio")[0]["metric"]["core"] == "0"
    with server.client(ADMIN_TOKEN) as c:
        meta = c.get("/api/v1/metadata", params={"metric": "orders"}).json()["data"]
    assert meta == {"orders": [{"type": "counter", "help": "Orders placed.", "unit": ""}]}


def test_partial_success_answer_over_http(server: ServerProcess) -> None:
    body = _request([{"name": "jobs", "sum": {"aggregationTemporality": 1, "isMonotonic": True,
                                              "dataPoints": [{"timeUnixNano": str(T_NS), "asInt": "1"}]}}])
    r = httpx.post(server.url + "/v1/metrics", content=body,
                   headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 200
    resp = ExportMetricsServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_data_points == 1
    assert "delta temporality" in resp.partial_success.error_message
    r = httpx.post(server.url + "/v1/metrics", content=b"{}",
                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 200 and r.json() == {}
