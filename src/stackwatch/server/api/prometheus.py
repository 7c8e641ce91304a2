"""Metrics over HTTP: Prometheus's ingest and query APIs, and OTLP metrics.

Ingest (project ingest token; each acknowledged only once the WAL holds it):

* ``POST /api/v1/write``: Prometheus remote write 1.0 (snappy + protobuf); 204, or 400 with the
  reason. Invalid series and series over the project's limit are refused, the rest stored,
  and the answer is 400 naming what was refused, as Prometheus's own receiver answers.
* ``POST /api/v1/import/prometheus``: text exposition with explicit timestamps (classic format
  in milliseconds; ``Content-Type: application/openmetrics-text`` in seconds); 204.
* ``POST /v1/metrics``: OTLP/HTTP metrics, protobuf or JSON; 200 with ``partial_success``.

Query (an API token with the viewer role, as Bearer or basic auth, which is what Grafana
sends): ``/api/v1/query``, ``/query_range``, ``/series``, ``/labels``, ``/label/{name}/values``,
``/metadata``, ``/status/buildinfo``, with GET or POST form parameters and Prometheus's JSON
envelope and error types, so Grafana's Prometheus data source works unchanged. The project is
the ``X-Stackwatch-Project`` header or ``?project=`` (default ``default``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from stackwatch import __version__
from stackwatch.errors import NotFound, PayloadTooLarge, StackwatchError, UnsupportedMediaType
from stackwatch.ingest.otlp_metrics import decode_otlp_metrics, encode_metrics_response
from stackwatch.ingest.prom_remote import decode_to_batch, decompress
from stackwatch.ingest.prom_text import text_to_batch
from stackwatch.query.promql import Engine, Matcher, PromQLError
from stackwatch.query.promql._ast import VectorSel
from stackwatch.query.promql._ast import parse as parse_promql
from stackwatch.query.promql.clickhouse import ClickHouseQuerier
from stackwatch.server.deps import body, check_project, ingest_project, runtime, viewer
from stackwatch.server.responses import JSONResponse
from stackwatch.storage.metrics import MetricBatch, wal_entry

__all__ = ["router"]

router = APIRouter(tags=["metrics"])

#: The Prometheus API level this server answers as (Grafana reads it from buildinfo).
PROMETHEUS_API_VERSION = "2.45.0"
MAX_POINTS = 11_000
DEFAULT_MAX_SAMPLES = 50_000_000

_STATUS = {
    "bad_data": 400,
    "execution": 422,
    "timeout": 503,
    "canceled": 503,
    "unavailable": 503,
    "internal": 500,
    "not_found": 404,
}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z")
_DURATION_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
# Prometheus's own "no start"/"no end": the lowest and highest times it can represent.
_MIN_TIME_MS = -(2**63) // 1_000_000
_MAX_TIME_MS = (2**63 - 1) // 1_000_000


class ApiError(StackwatchError):
    """An error in Prometheus's vocabulary (``errorType``), answered in its envelope."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status_code = _STATUS.get(error_type, 500)


def _error(error_type: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "errorType": error_type, "error": message}, status_code=_STATUS.get(error_type, 500)
    )


def _success(data: Any, warnings: list[str] | None = None) -> JSONResponse:
    out: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        out["warnings"] = warnings
    return JSONResponse(out)


# -- parameters ---------------------------------------------------------------------------------


class _Params:
    """Query-string and form-body parameters merged, the body winning, as Go's ``FormValue``."""

    def __init__(self, query: Any, form: Any) -> None:
        self.query = query
        self.form = form

    def get(self, name: str) -> str | None:
        if self.form is not None and name in self.form:
            return str(self.form.get(name))
        value = self.query.get(name)
        return None if value is None else str(value)

    def getlist(self, name: str) -> list[str]:
        out = [str(v) for v in self.form.getlist(name)] if self.form is not None else []
        return out or [str(v) for v in self.query.getlist(name)]


async def _params(request: Request) -> _Params:
    form = None
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded") or ctype.startswith("multipart/form-data"):
            form = await request.form()
    return _Params(request.query_params, form)


#: Times are int64 milliseconds inside; ranges and offsets are added to them. 1e13 s is the
#: year 318,857, far past any data and far from int64's limit.
_MAX_TIME_S = 1e13


def parse_time_param(text: str | None, name: str, default_ms: int) -> int:
    """Unix seconds (float) or RFC 3339 -> milliseconds, as Prometheus's ``parseTime``."""
    if text is None or text == "":
        return default_ms
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):
            raise ApiError("bad_data", f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')
        if abs(seconds) > _MAX_TIME_S:
            raise ApiError("bad_data", f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp: '
                           f"out of range (at most {_MAX_TIME_S:.0e} seconds from 1970)")
        return round(seconds * 1000)
    try:
        when = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ApiError("bad_data", f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp') from None
    if when.tzinfo is None:
        raise ApiError("bad_data", f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')
    return round(when.timestamp() * 1000)


def parse_duration_param(text: str, name: str) -> int:
    """Seconds (float) or a Prometheus duration (``1h30m``, ``15s``, ``100ms``) -> milliseconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or abs(seconds) * 1e9 >= 2**63:
            raise ApiError("bad_data", f'invalid parameter "{name}": cannot parse "{text}" to a valid duration. '
                           "It overflows int64")
        return round(seconds * 1000)
    m = _DURATION.match(text)
    if not text or not m:
        raise ApiError("bad_data", f'invalid parameter "{name}": cannot parse "{text}" to a valid duration')
    return sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_MS, strict=True) if g)


def _matcher_sets(values: list[str]) -> list[list[Matcher]]:
    sets = []
    for text in values:
        try:
            node = parse_promql(text)
        except PromQLError as exc:
            raise ApiError("bad_data", f'invalid parameter "match[]": {exc}') from None
        if not isinstance(node, VectorSel):
            raise ApiError("bad_data", f'invalid parameter "match[]": {text!r} is not a series selector')
        groups = node.or_matchers or [node.matchers]
        for group in groups:
            if all(m.matches("") for m in group):
                raise ApiError("bad_data", 'invalid parameter "match[]": match[] must contain at least one '
                               "non-empty matcher")
            sets.append(list(group))
    return sets


def _project(request: Request) -> str:
    slug = request.headers.get("x-stackwatch-project") or request.query_params.get("project") or "default"
    if slug != "default":
        try:
            check_project(request, slug)
        except NotFound as exc:
            raise ApiError("not_found", str(exc)) from None
    return slug


def _engine(request: Request, params: _Params) -> Engine:
    rt = runtime(request)
    settings = rt.settings
    timeout_s = float(getattr(settings, "query_timeout_s", 30.0))
    asked = params.get("timeout")
    if asked:
        timeout_s = min(timeout_s, parse_duration_param(asked, "timeout") / 1000)
    max_samples = int(getattr(settings, "query_max_samples", DEFAULT_MAX_SAMPLES))
    querier = ClickHouseQuerier(rt.metrics, _project(request), max_samples=max_samples)
    return Engine(querier, max_samples=max_samples, timeout_s=timeout_s)


def _run(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except PromQLError as exc:
        message = str(exc)
        if exc.error_type == "bad_data":
            message = f'invalid parameter "query": {message}'
        raise ApiError(exc.error_type, message) from None


# -- query endpoints ----------------------------------------------------------------------------


@router.api_route("/api/v1/query", methods=["GET", "POST"])
async def query(request: Request, who: Any = Depends(viewer)) -> Response:
    try:
        params = await _params(request)
        expr = params.get("query") or ""
        t_ms = parse_time_param(params.get("time"), "time", int(time.time() * 1000))
        engine = _engine(request, params)
        result = await run_in_threadpool(_run, engine.instant, expr, t_ms)
        return _success(result.to_prometheus_json())
    except ApiError as exc:
        return _error(exc.error_type, exc.message)


@router.api_route("/api/v1/query_range", methods=["GET", "POST"])
async def query_range(request: Request, who: Any = Depends(viewer)) -> Response:
    try:
        params = await _params(request)
        expr = params.get("query") or ""
        for name in ("start", "end", "step"):
            if not params.get(name):
                raise ApiError("bad_data", f'invalid parameter "{name}": missing')
        start = parse_time_param(params.get("start"), "start", 0)
        end = parse_time_param(params.get("end"), "end", 0)
        if end < start:
            raise ApiError("bad_data", 'invalid parameter "end": end timestamp must not be before start time')
        step = parse_duration_param(params.get("step") or "", "step")
        if step <= 0:
            raise ApiError("bad_data", 'invalid parameter "step": zero or negative query resolution step widths '
                           "are not accepted. Try a positive integer")
        if (end - start) // step > MAX_POINTS:  # whole steps, as Prometheus counts them
            raise ApiError("bad_data", "exceeded maximum resolution of 11,000 points per timeseries. "
                           "Try decreasing the query resolution (?step=XX)")
        max_res = _max_source_resolution(params.get("max_source_resolution"))
        engine = _engine(request, params)
        result = await run_in_threadpool(
            _run, lambda: engine.range(expr, start, end, step, max_resolution_ms=max_res)
        )
        return _success(result.to_prometheus_json())
    except ApiError as exc:
        return _error(exc.error_type, exc.message)


def _max_source_resolution(text: str | None) -> int | None:
    """Thanos's ``max_source_resolution``: ``raw``/``0s`` (samples only), ``5m``, ``1h``, or ``auto``."""
    if not text or text == "auto":
        return None
    if text == "raw":
        return 0
    try:
        return parse_duration_param(text, "max_source_resolution")
    except ApiError:
        raise ApiError("bad_data", 'invalid parameter "max_source_resolution": expected raw, 5m, 1h or auto') from None


@router.api_route("/api/v1/series", methods=["GET", "POST"])
async def series(request: Request, who: Any = Depends(viewer)) -> Response:
    try:
        params = await _params(request)
        matches = params.getlist("match[]")
        if not matches:
            raise ApiError("bad_data", "no match[] parameter provided")
        sets = _matcher_sets(matches)
        start = parse_time_param(params.get("start"), "start", _MIN_TIME_MS)
        end = parse_time_param(params.get("end"), "end", _MAX_TIME_MS)
        limit = _limit(params)
        store = runtime(request).metrics
        project = _project(request)

        def find() -> list[dict[str, str]]:
            seen: dict[int, dict[str, str]] = {}
            for ms in sets:
                for fp, labels in store.find_series(project, ms, start, end):
                    seen.setdefault(fp, labels)
            return sorted(seen.values(), key=lambda lb: sorted(lb.items()))

        found = await run_in_threadpool(find)
        warnings = None
        if limit and len(found) > limit:
            found = found[:limit]
            warnings = ["results truncated due to limit"]
        return _success(found, warnings)
    except ApiError as exc:
        return _error(exc.error_type, exc.message)


def _limit(params: _Params) -> int:
    text = params.get("limit")
    if not text:
        return 0
    try:
        limit = int(text)
    except ValueError:
        raise ApiError("bad_data", f'invalid parameter "limit": cannot parse "{text}" to a valid limit') from None
    return max(limit, 0)


@router.api_route("/api/v1/labels", methods=["GET", "POST"])
async def labels(request: Request, who: Any = Depends(viewer)) -> Response:
    try:
        params = await _params(request)
        sets = _matcher_sets(params.getlist("match[]"))
        start = parse_time_param(params.get("start"), "start", _MIN_TIME_MS)
        end = parse_time_param(params.get("end"), "end", _MAX_TIME_MS)
        store = runtime(request).metrics
        names = await run_in_threadpool(
            store.label_names, _project(request), sets, _none_if(start, _MIN_TIME_MS), _none_if(end, _MAX_TIME_MS)
        )
        limit = _limit(params)
        return _success(names[:limit] if limit else names)
    except ApiError as exc:
        return _error(exc.error_type, exc.message)


def _none_if(value: int, sentinel: int) -> int | None:
    return None if value == sentinel else value


@router.get("/api/v1/label/{name}/values")
async def label_values(name: str, request: Request, who: Any = Depends(viewer)) -> Response:
    try:
        if not _LABEL_NAME.match(name):
            raise ApiError("bad_data", f'invalid label name: "{name}"')
        params = await _params(request)
        sets = _matcher_sets(params.getlist("match[]"))
        start = parse_time_param(params.get("start"), "start", _MIN_TIME_MS)
        end = parse_time_param(params.get("end"), "end", _MAX_TIME_MS)
        store = runtime(request).metrics
        values = await run_in_threadpool(
            store.label_values,
            _project(request),
            name,
            sets,
            _none_if(start, _MIN_TIME_MS),
            _none_if(end, _MAX_TIME_MS),
            _limit(params),
        )
        return _success(values)
    except ApiError as exc:
        return _error(exc.error_type, exc.message)


@router.get("/api/v1/metadata")
async def metadata(request: Request, who: Any = Depends(viewer)) -> Response:
    try:
        params = await _params(request)
        data = await run_in_threadpool(
            runtime(request).metrics.metadata, _project(request), params.get("metric") or "", _limit(params)
        )
        return _success(data)
    except ApiError as exc:
        return _error(exc.error_type, exc.message)


@router.get("/api/v1/targets")
async def targets(request: Request, who: Any = Depends(viewer)) -> Response:
    """Scrape targets with their health, as Prometheus's ``/api/v1/targets`` (``state=active|dropped|any``)."""
    state = request.query_params.get("state", "any")
    if state not in ("any", "active", "dropped"):
        return _error("bad_data", f"invalid state {state!r}: use active, dropped or any")
    scraper = getattr(request.app.state, "scraper", None)
    if scraper is None:
        return _success({"activeTargets": [], "droppedTargets": []})
    return _success(scraper.targets_json(state))


@router.get("/api/v1/status/buildinfo")
async def buildinfo(who: Any = Depends(viewer)) -> Response:
    """Grafana reads the version to pick which Prometheus API features to use."""
    return _success(
        {
            "version": PROMETHEUS_API_VERSION,
            "revision": f"stackwatch-{__version__}",
            "branch": "stackwatch",
            "buildUser": "stackwatch",
            "buildDate": "",
            "goVersion": "",
        }
    )


@router.api_route("/api/v1/query_exemplars", methods=["GET", "POST"])
async def query_exemplars(request: Request, who: Any = Depends(viewer)) -> Response:
    """Exemplars are not stored; Grafana asks anyway, and an empty answer is the honest one.
    A query that does not parse is still refused, so a typo is not shown as "no exemplars"."""
    params = await _params(request)
    try:
        if params.get("query"):
            parse_promql(params.get("query") or "")
    except PromQLError as exc:
        return _error("bad_data", f'invalid parameter "query": {exc}')
    return _success([])


@router.api_route("/api/v1/format_query", methods=["GET", "POST"])
async def format_query(request: Request, who: Any = Depends(viewer)) -> Response:
    """The query pretty-printed, as Prometheus's ``promtool promql format`` and Grafana's
    "Format query" button show it; a query that does not parse says where."""
    params = await _params(request)
    text = params.get("query") or ""
    try:
        parse_promql(text)
        import promql_parser

        return _success(promql_parser.parse(text).prettify())
    except PromQLError as exc:
        return _error("bad_data", f'invalid parameter "query": {exc}')
    except Exception as exc:  # the printer's own failure: the query itself was fine
        return _error("execution", f"could not format the query: {exc}")


# -- ingest -------------------------------------------------------------------------------------


async def _raw_body(request: Request) -> bytes:
    limit = runtime(request).settings.max_body_bytes
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _store(request: Request, project: str, batch: MetricBatch) -> int:
    """Apply the series limit and make the batch durable; returns the samples accepted."""
    return await store_batch(runtime(request), project, batch)


async def store_batch(rt: Any, project: str, batch: MetricBatch) -> int:
    """What every metrics source ends with (push endpoints and the scraper alike)."""
    if batch.refs:
        await run_in_threadpool(rt.metrics.admit, project, batch)
    events = batch.events()
    if events:
        await rt.batcher.submit_entry(wal_entry(project, events))
    return batch.sample_count


def _partial(batch: MetricBatch, accepted: int) -> JSONResponse:
    reasons = "; ".join(batch.errors[:5])
    return JSONResponse(
        {
            "status": "error",
            "errorType": "bad_data",
            "error": f"{batch.rejected_samples} samples rejected, {accepted} accepted: {reasons}",
        },
        status_code=400,
    )


@router.post("/api/v1/write", tags=["ingest"])
async def remote_write(request: Request, project: Any = Depends(ingest_project)) -> Response:
    """Prometheus remote write 1.0."""
    ctype = request.headers.get("content-type", "")
    if "proto=io.prometheus.write.v2" in ctype:
        raise UnsupportedMediaType("remote write 2.0 is not supported; send remote write 1.0 (prometheus.WriteRequest)")
    encoding = request.headers.get("content-encoding", "snappy").strip().lower()
    if encoding not in ("snappy", ""):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}: remote write uses snappy")
    raw = await _raw_body(request)
    data = decompress(raw, runtime(request).settings.max_body_bytes)
    batch = decode_to_batch(data)
    accepted = await _store(request, project.slug, batch)
    if batch.errors:
        return _partial(batch, accepted)
    return Response(status_code=204)


@router.post("/api/v1/import/prometheus", tags=["ingest"])
async def import_prometheus(request: Request, project: Any = Depends(ingest_project)) -> Response:
    """Text exposition with timestamps (backfill); samples without one get the arrival time."""
    data = await body(request)
    ctype = request.headers.get("content-type", "")
    reader = runtime(request).import_reader
    batch = await run_in_threadpool(text_to_batch, data, ctype, int(time.time() * 1000), reader)
    accepted = await _store(request, project.slug, batch)
    if batch.errors:
        return _partial(batch, accepted)
    return Response(status_code=204)


@router.post("/v1/metrics", tags=["ingest"])
async def otlp_metrics(request: Request, project: Any = Depends(ingest_project)) -> Response:
    """OTLP/HTTP metrics, protobuf or JSON."""
    ctype = request.headers.get("content-type", "")
    data = await body(request)
    batch, rejected, reason = decode_otlp_metrics(data, ctype, int(time.time() * 1000))
    await _store(request, project.slug, batch)
    rejected += batch.rejected_samples
    reasons = [r for r in (reason, "; ".join(batch.errors[:5])) if r]
    out, media = encode_metrics_response(ctype, rejected, "; ".join(reasons))
    return Response(out, media_type=media)
