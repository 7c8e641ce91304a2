"""OTLP/HTTP metrics (``POST /v1/metrics``): ``ExportMetricsServiceRequest`` to Prometheus series.

The mapping follows the OpenTelemetry "Prometheus and OpenMetrics compatibility" spec, the
way Prometheus's own OTLP receiver applies it, so a dashboard written against Prometheus works
on the same data sent here:

==========================  ======================================================================
metric name                 invalid characters -> ``_`` (runs collapsed), then the unit as a
                            suffix unless the name already has it (``ms`` -> ``_milliseconds``,
                            ``By`` -> ``_bytes``, ``1`` -> ``_ratio`` for gauges, ``{packets}``
                            dropped, ``By/s`` -> ``_bytes_per_second``), then ``_total`` for
                            monotonic sums
``job`` / ``instance``      ``service.namespace/service.name`` / ``service.instance.id``
other resource attributes   one ``target_info`` series (value 1) per job/instance
point attributes            labels; invalid characters -> ``_``; colliding keys joined with ``;``
gauge                       gauge
sum, cumulative             counter ``name_total`` if monotonic, else gauge
histogram, cumulative       ``name_bucket{le}`` (cumulative counts, last ``+Inf``), ``name_count``,
                            ``name_sum`` (left out when buckets go below zero, as the spec says)
exponential histogram       converted to classic buckets (Stackwatch stores no native
                            histograms): upper bounds ``base**(i+1)`` with the scale reduced to at
                            most :data:`EXP_MAX_SCALE` (2**(1/8): 9% wide buckets), so bucket
                            series stay few and stable while the SDK rescales
summary                     ``name{quantile}``, ``name_count``, ``name_sum``
no-recorded-value flag      the staleness marker
==========================  ======================================================================

Delta temporality (sums, histograms, exponential histograms) is **rejected**, not accumulated:
accumulating needs per-series state that survives restarts and agrees across server processes,
and a wrong running total is worse than a clear refusal. Rejected points are counted in the
response's ``partial_success`` with the reason, as Prometheus's receiver does; SDKs default to
cumulative (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative``). Scope name and
version are not added as labels (Prometheus's receiver does not by default either); exemplars
are dropped.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from stackwatch.errors import BadRequest, UnsupportedMediaType
from stackwatch.ingest._body import gc_paused, parse_content_type
from stackwatch.storage.metrics import MetricBatch, series_ref

__all__ = ["EXP_MAX_SCALE", "decode_otlp_metrics", "encode_metrics_response", "metric_name", "unit_suffix"]

EXP_MAX_SCALE = 3
_PROTOBUF = frozenset({"application/x-protobuf", "application/protobuf"})
_DELTA = 1
_NO_RECORDED_VALUE = 1

_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
    "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
    "TBy": "terabytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts",
    "g": "grams", "Cel": "celsius", "Hz": "hertz", "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
_MULTI_UNDERSCORE = re.compile(r"__+")


#: Prometheus's staleness marker: what a point flagged "no recorded value" becomes.
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def unit_suffix(unit: str, *, gauge: bool = False) -> str:
    """The Prometheus unit word for an OTel (UCUM) unit: ``ms`` -> ``milliseconds``; "" for none."""
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if gauge else ""
    main, _, per = unit.partition("/")
    words = []
    if main:
        words.append(_UNITS.get(main, main))
    if per:
        words.append("per_" + _PER_UNITS.get(per, _UNITS.get(per, per)))
    return _INVALID_LABEL.sub("_", "_".join(words)).strip("_")


def metric_name(name: str, unit: str, *, counter: bool = False, gauge: bool = False) -> str:
    """The Prometheus name of an OTel metric (see the module docstring)."""
    out = _MULTI_UNDERSCORE.sub("_", _INVALID_NAME.sub("_", name))
    if out and out[0].isdigit():
        out = "_" + out
    suffix = unit_suffix(unit, gauge=gauge)
    if suffix and not out.endswith("_" + suffix) and f"_{suffix}_" not in out + "_":
        out = f"{out}_{suffix}"
    if counter and not out.endswith("_total"):
        out += "_total"
    return out or "_"


def _label_name(key: str) -> str:
    out = _MULTI_UNDERSCORE.sub("_", _INVALID_LABEL.sub("_", key))
    if not out:
        return "_"
    if out[0].isdigit():
        out = "key_" + out
    return out


def _value_text(v: AnyValue) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "int_value":
        return str(v.int_value)
    if kind == "double_value":
        return repr(v.double_value)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if kind == "array_value":
        return orjson.dumps([_native(x) for x in v.array_value.values]).decode()
    if kind == "kvlist_value":
        return orjson.dumps({kv.key: _native(kv.value) for kv in v.kvlist_value.values}).decode()
    return ""


def _native(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    return _value_text(v)


def _labels(attributes: Any) -> dict[str, str]:
    """Point attributes as labels; keys that sanitize alike are joined with ';' in key order."""
    out: dict[str, str] = {}
    originals: dict[str, list[tuple[str, str]]] = {}
    for kv in attributes:
        name = _label_name(kv.key)
        originals.setdefault(name, []).append((kv.key, _value_text(kv.value)))
    for name, pairs in originals.items():
        pairs.sort()
        out[name] = ";".join(v for _, v in pairs)
    return out


def _fmt(x: float) -> str:
    """A bound as Prometheus writes ``le``/``quantile`` values from OTLP (Go's %g-like shortest form)."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


class _Converter:
    def __init__(self, now_ms: int) -> None:
        self.batch = MetricBatch()
        self.now_ms = now_ms
        self.rejected = 0
        self.reasons: list[str] = []

    def reject(self, n: int, reason: str) -> None:
        self.rejected += n
        if reason not in self.reasons:
            self.reasons.append(reason)

    def sample(self, name: str, labels: dict[str, str], time_ns: int, value: float) -> None:
        ts = time_ns // 1_000_000 if time_ns else self.now_ms
        pairs = [("__name__", name), *labels.items()]
        try:
            ref = series_ref(pairs)
        except ValueError as exc:
            self.reject(1, str(exc))
            return
        b = self.batch
        b.series.append(b.index(ref))
        b.timestamps.append(ts)
        b.values.append(value)

    def resource(self, resource: Any) -> tuple[dict[str, str], dict[str, str]]:
        attrs = {kv.key: _value_text(kv.value) for kv in resource.attributes}
        base: dict[str, str] = {}
        service = attrs.get("service.name", "")
        namespace = attrs.get("service.namespace", "")
        job = f"{namespace}/{service}" if namespace and service else service
        if job:
            base["job"] = job
        if attrs.get("service.instance.id"):
            base["instance"] = attrs["service.instance.id"]
        info = {
            _label_name(k): v
            for k, v in attrs.items()
            if k not in ("service.name", "service.namespace", "service.instance.id")
        }
        return base, info

    def metric(self, m: Any, base: dict[str, str]) -> int:
        """Convert one metric; returns the latest point time (ns) seen, for target_info."""
        kind = m.WhichOneof("data")
        latest = 0
        help_ = m.description
        if kind == "gauge":
            name = metric_name(m.name, m.unit, gauge=True)
            self.batch.add_metadata(name, "gauge", help_, unit_suffix(m.unit, gauge=True))
            for p in m.gauge.data_points:
                latest = max(latest, p.time_unix_nano)
                self.sample(name, {**base, **_labels(p.attributes)}, p.time_unix_nano, _number(p))
        elif kind == "sum":
            if m.sum.aggregation_temporality == _DELTA:
                self.reject(len(m.sum.data_points), f"delta temporality is not supported ({m.name}): "
                            "configure the exporter for cumulative temporality")
                return 0
            monotonic = m.sum.is_monotonic
            name = metric_name(m.name, m.unit, counter=monotonic, gauge=not monotonic)
            family = name[: -len("_total")] if monotonic else name
            self.batch.add_metadata(family, "counter" if monotonic else "gauge", help_,
                                    unit_suffix(m.unit, gauge=not monotonic))
            for p in m.sum.data_points:
                latest = max(latest, p.time_unix_nano)
                self.sample(name, {**base, **_labels(p.attributes)}, p.time_unix_nano, _number(p))
        elif kind == "histogram":
            if m.histogram.aggregation_temporality == _DELTA:
                self.reject(len(m.histogram.data_points), f"delta temporality is not supported ({m.name}): "
                            "configure the exporter for cumulative temporality")
                return 0
            name = metric_name(m.name, m.unit)
            self.batch.add_metadata(name, "histogram", help_, unit_suffix(m.unit))
            for p in m.histogram.data_points:
                latest = max(latest, p.time_unix_nano)
                self.histogram(name, {**base, **_labels(p.attributes)}, p)
        elif kind == "exponential_histogram":
            if m.exponential_histogram.aggregation_temporality == _DELTA:
                self.reject(len(m.exponential_histogram.data_points),
                            f"delta temporality is not supported ({m.name}): "
                            "configure the exporter for cumulative temporality")
                return 0
            name = metric_name(m.name, m.unit)
            self.batch.add_metadata(name, "histogram", help_, unit_suffix(m.unit))
            for p in m.exponential_histogram.data_points:
                latest = max(latest, p.time_unix_nano)
                self.exponential(name, {**base, **_labels(p.attributes)}, p)
        elif kind == "summary":
            name = metric_name(m.name, m.unit)
            self.batch.add_metadata(name, "summary", help_, unit_suffix(m.unit))
            for p in m.summary.data_points:
                latest = max(latest, p.time_unix_nano)
                labels = {**base, **_labels(p.attributes)}
                stale = bool(p.flags & _NO_RECORDED_VALUE)
                t = p.time_unix_nano
                for q in p.quantile_values:
                    self.sample(name, {**labels, "quantile": _fmt(q.quantile)}, t, STALE_NAN if stale else q.value)
                self.sample(name + "_count", labels, t, STALE_NAN if stale else float(p.count))
                self.sample(name + "_sum", labels, t, STALE_NAN if stale else p.sum)
        return latest

    def histogram(self, name: str, labels: dict[str, str], p: Any) -> None:
        t = p.time_unix_nano
        stale = bool(p.flags & _NO_RECORDED_VALUE)
        bounds = list(p.explicit_bounds)
        counts = list(p.bucket_counts)
        if counts and len(counts) != len(bounds) + 1:
            self.reject(1, f"histogram {name}: {len(counts)} bucket counts for {len(bounds)} bounds")
            return
        cumulative = 0
        for i, bound in enumerate(bounds):
            cumulative += counts[i] if counts else 0
            self.sample(name + "_bucket", {**labels, "le": _fmt(bound)}, t, STALE_NAN if stale else float(cumulative))
        self.sample(name + "_bucket", {**labels, "le": "+Inf"}, t, STALE_NAN if stale else float(p.count))
        self.sample(name + "_count", labels, t, STALE_NAN if stale else float(p.count))
        if p.HasField("sum") and not (bounds and bounds[0] < 0):
            self.sample(name + "_sum", labels, t, STALE_NAN if stale else p.sum)

    def exponential(self, name: str, labels: dict[str, str], p: Any) -> None:
        t = p.time_unix_nano
        stale = bool(p.flags & _NO_RECORDED_VALUE)
        scale = p.scale
        shift = max(0, scale - EXP_MAX_SCALE)
        scale -= shift
        base = 2.0 ** (2.0**-scale)

        def merged(buckets: Any) -> dict[int, int]:
            out: dict[int, int] = {}
            for k, c in enumerate(buckets.bucket_counts):
                idx = (buckets.offset + k) >> shift
                out[idx] = out.get(idx, 0) + c
            return out

        neg = merged(p.negative)
        pos = merged(p.positive)
        points: list[tuple[float, int]] = []
        cumulative = 0
        # Negative bucket i holds values in [-base**(i+1), -base**i): its upper bound is -base**i.
        for idx in sorted(neg, reverse=True):
            cumulative += neg[idx]
            points.append((-(base**idx), cumulative))
        cumulative += p.zero_count
        if p.zero_count or neg or pos:
            points.append((p.zero_threshold, cumulative))
        if pos:
            for idx in range(min(pos), max(pos) + 1):
                cumulative += pos.get(idx, 0)
                points.append((base ** (idx + 1), cumulative))
        seen: set[str] = set()
        for bound, count in points:
            le = _fmt(bound)
            if le in seen:
                continue
            seen.add(le)
            self.sample(name + "_bucket", {**labels, "le": le}, t, STALE_NAN if stale else float(count))
        self.sample(name + "_bucket", {**labels, "le": "+Inf"}, t, STALE_NAN if stale else float(p.count))
        self.sample(name + "_count", labels, t, STALE_NAN if stale else float(p.count))
        if p.HasField("sum") and not neg:
            self.sample(name + "_sum", labels, t, STALE_NAN if stale else p.sum)


def _number(p: Any) -> float:
    if p.flags & _NO_RECORDED_VALUE:
        return STALE_NAN
    if p.WhichOneof("value") == "as_int":
        return float(p.as_int)
    return float(p.as_double)


def decode_otlp_metrics(body: bytes, content_type: str, now_ms: int) -> tuple[MetricBatch, int, str]:
    """Decode an OTLP/HTTP metrics body: (batch, rejected data points, why they were rejected).

    ``content_type`` selects protobuf (``application/x-protobuf``) or OTLP/JSON
    (``application/json``: camelCase or snake_case keys, 64-bit integers as strings or numbers,
    enums by name or number, as the OTLP spec asks of receivers). A body that does not decode
    raises :class:`BadRequest`; an unknown content type :class:`UnsupportedMediaType`.
    """
    media, _ = parse_content_type(content_type)
    req = ExportMetricsServiceRequest()
    try:
        with gc_paused():
            if media in _PROTOBUF:
                req.ParseFromString(body)
            elif media == "application/json":
                json_format.Parse(body or b"{}", req, ignore_unknown_fields=True)
            else:
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {media!r} for OTLP metrics; use application/x-protobuf or application/json"
                )
    except (DecodeError, json_format.ParseError, ValueError, RecursionError) as exc:
        raise BadRequest(f"invalid OTLP metrics request: {str(exc)[:300]}") from None
    conv = _Converter(now_ms)
    for rm in req.resource_metrics:
        base, info = conv.resource(rm.resource)
        latest = 0
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                latest = max(latest, conv.metric(m, base))
        if info and latest:
            conv.sample("target_info", {**info, **base}, latest, 1.0)
    if conv.batch.refs and any(r.name == "target_info" for r in conv.batch.refs):
        conv.batch.add_metadata("target", "info", "Target metadata")
    return conv.batch, conv.rejected, "; ".join(conv.reasons)


def encode_metrics_response(content_type: str, rejected: int = 0, message: str = "") -> tuple[bytes, str]:
    """The ``ExportMetricsServiceResponse`` in the request's encoding, and its media type."""
    media, _ = parse_content_type(content_type)
    if media == "application/json":
        if not rejected and not message:
            return b"{}", "application/json"
        partial: dict[str, Any] = {"rejectedDataPoints": str(rejected)}
        if message:
            partial["errorMessage"] = message
        return orjson.dumps({"partialSuccess": partial}), "application/json"
    resp = ExportMetricsServiceResponse()
    if rejected or message:
        resp.partial_success.CopyFrom(ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=message))
    return resp.SerializeToString(), "application/x-protobuf"
