"""Stackwatch's PromQL answers equal a real Prometheus's on the same data.

The same generated fleet (:mod:`promgen`: counters with a reset, classic histograms, gauges
with a gap, a late-starting route) is backfilled into the Debian ``prometheus`` with
``promtool tsdb create-blocks-from openmetrics`` and into a real Stackwatch server through
``POST /api/v1/import/prometheus``. A few hundred dashboard and alert queries
(:mod:`promql_queries`) then run against both over HTTP, as instant queries and as
``query_range``, and must return the same series (label sets) with the same timestamps and
values within 1e-9 relative (NaN equals NaN; 1e-12 absolute for values that cancel to ~0,
where the two engines' summation orders legitimately differ in the last bits).

Prometheus 2.x and 3.x differ at window boundaries (closed vs left-open); the data keeps
every sample off whole seconds and the query times are whole seconds, so those cases never
arise and the comparison is exact in substance.
"""

from __future__ import annotations

import concurrent.futures
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from promgen import Dataset, generate
from promql_queries import queries

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess, free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

# A skip fails under CI (tests/conftest.py), so a missing install step cannot go unnoticed.
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool are not installed (scripts/system-deps.sh)",
)

REL = 1e-9
ABS = 1e-12


@pytest.fixture(scope="module")
def data() -> Dataset:
    return generate()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, data: Dataset) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prom-compare")
    om = work / "data.om"
    with om.open("w") as f:
        f.writelines(data.openmetrics())
    assert PROMTOOL is not None and PROMETHEUS is not None
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(work / "tsdb")],
                   check=True, capture_output=True, timeout=120)
    config = work / "prometheus.yml"
    # evaluation_interval is the default subquery step: 1m, as the engine's.
    config.write_text("global:\n  evaluation_interval: 1m\n")
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
         "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def stackwatch(tmp_path_factory: pytest.TempPathFactory, data: Dataset) -> Iterator[str]:
    srv = ServerProcess(tmp_path_factory.mktemp("sw-compare") / "data").start()
    try:
        chunk = 40
        bodies = [
            "".join(data.exposition(range(a, min(a + chunk, len(data.series))))).encode()
            for a in range(0, len(data.series), chunk)
        ]
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {INGEST_TOKEN}"}, timeout=120) as c:
            for body in bodies:
                r = c.post("/api/v1/import/prometheus", content=body)
                assert r.status_code == 204, r.text
        # Import is acknowledged once durable; wait until every sample is queryable.
        want = data.samples
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60) as c:
            while True:
                # (count_over_time drops the name, so one metric at a time: up and queue_depth
                # have the same labels otherwise.)
                expr = " + ".join(f"sum(count_over_time({n}[1d]))" for n in sorted({s[0] for s in data.series}))
                r = c.get("/api/v1/query", params={"query": expr, "time": data.t_end_ms / 1000})
                assert r.status_code == 200, r.text
                res = r.json()["data"]["result"]
                got = float(res[0]["value"][1]) if res else 0
                if got >= want:
                    break
                assert time.monotonic() < deadline, f"only {got} of {want} samples queryable"
                time.sleep(0.3)
        yield srv.url
    finally:
        srv.stop()


# -- comparing ----------------------------------------------------------------------------------


def _norm(data: dict[str, Any]) -> dict[Any, list[tuple[float, float]]]:
    """Result as {label set: [(t, v), ...]} whatever its type."""
    kind, result = data["resultType"], data["result"]
    if kind in ("scalar", "string"):
        return {("<scalar>",): [(float(result[0]), _num(result[1]))]}
    out = {}
    for s in result:
        key = tuple(sorted(s["metric"].items()))
        pts = [s["value"]] if "value" in s else s["values"]
        out[key] = [(float(t), _num(v)) for t, v in pts]
    return out


def _num(v: str) -> float:
    return float(v)  # Go prints NaN, +Inf, -Inf, which float() reads


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


def _diff(expr: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    if ours["resultType"] != theirs["resultType"]:
        return f"{expr}: result type {ours['resultType']} != prometheus {theirs['resultType']}"
    a, b = _norm(ours), _norm(theirs)
    problem = _diff_series(expr, a, b)
    if problem and expr.split("] ", 1)[-1].startswith(("topk", "bottomk")):
        return _diff_ignoring_ties(expr, a, b)
    return problem


def _diff_series(expr: str, a: dict[Any, Any], b: dict[Any, Any]) -> str | None:
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        return f"{expr}: series differ; only ours: {only_a}; only prometheus: {only_b}"
    for key in a:
        pa, pb = a[key], b[key]
        ta, tb = [t for t, _ in pa], [t for t, _ in pb]
        if ta != tb:
            missing = sorted(set(tb) - set(ta))[:3]
            extra = sorted(set(ta) - set(tb))[:3]
            return f"{expr} {dict(key)}: timestamps differ; missing {missing}, extra {extra}"
        for (t, va), (_, vb) in zip(pa, pb, strict=True):
            if not _close(va, vb):
                return f"{expr} {dict(key)} @ {t}: ours {va!r} != prometheus {vb!r}"
    return None


def _diff_ignoring_ties(expr: str, a: dict[Any, Any], b: dict[Any, Any]) -> str | None:
    """topk/bottomk: the same values at every step, whichever of tied series was kept.

    Which of equal values survive is an artefact of the heap: Prometheus 2.x popped the
    root and pushed, 3.x (which the engine follows, see tests/query/promql) replaces the
    root and sifts down, and the two keep different series among ties.
    """

    def by_step(m: dict[Any, Any]) -> dict[float, list[float]]:
        out: dict[float, list[float]] = {}
        for pts in m.values():
            for t, v in pts:
                out.setdefault(t, []).append(v)
        return {t: sorted(vs) for t, vs in out.items()}

    sa, sb = by_step(a), by_step(b)
    if set(sa) != set(sb):
        return f"{expr}: steps differ: {sorted(set(sa) ^ set(sb))[:3]}"
    for t in sa:
        if len(sa[t]) != len(sb[t]) or not all(_close(x, y) for x, y in zip(sa[t], sb[t], strict=True)):
            return f"{expr} @ {t}: values ours {sa[t]} != prometheus {sb[t]}"
    return None


def _get(client: httpx.Client, path: str, params: dict[str, Any]) -> dict[str, Any]:
    r = client.get(path, params=params)
    body = r.json()
    assert r.status_code == 200 and body.get("status") == "success", f"{path} {params}: {r.status_code} {r.text[:500]}"
    return body["data"]  # type: ignore[no-any-return]


def _compare_all(stackwatch: str, prometheus: str, jobs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    ours_c = httpx.Client(base_url=stackwatch, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    theirs_c = httpx.Client(base_url=prometheus, timeout=60)

    def one(job: tuple[str, str, dict[str, Any]]) -> str | None:
        expr, path, params = job
        theirs = _get(theirs_c, path, params)
        ours = _get(ours_c, path, params)
        return _diff(f"[{path.rsplit('/', 1)[-1]}] {expr}", ours, theirs)

    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            return [d for d in pool.map(one, jobs) if d]
    finally:
        ours_c.close()
        theirs_c.close()


def _times(data: Dataset) -> tuple[list[int], int, int]:
    """Whole-second evaluation times: near the incidents, the restart, the gap, the late start."""
    t0 = data.t0_ms // 1000
    span = (data.t_end_ms - data.t0_ms) // 1000
    instants = [t0 + int(span * f) // 60 * 60 + 7 for f in (0.12, 0.36, 0.5, 0.62, 0.83, 0.99)]
    return instants, t0 + 600 + 7, data.t_end_ms // 1000 - 53


def test_instant_queries_match_prometheus(data: Dataset, prometheus: str, stackwatch: str) -> None:
    instants, start, _ = _times(data)
    exprs = queries(start + 3000)
    jobs = [(e, "/api/v1/query", {"query": e, "time": instants[i % len(instants)]}) for i, e in enumerate(exprs)]
    problems = _compare_all(stackwatch, prometheus, jobs)
    assert not problems, f"{len(problems)} of {len(jobs)} differ:\n" + "\n".join(problems)


def test_range_queries_match_prometheus(data: Dataset, prometheus: str, stackwatch: str) -> None:
    _, start, end = _times(data)
    # Every other template (each shape still runs over each metric kind), to keep the test short;
    # range vectors are for instant queries only.
    exprs = [e for e in queries(start + 3000) if not e.endswith("]")][::2]
    jobs = [(e, "/api/v1/query_range", {"query": e, "start": start, "end": end, "step": 60}) for e in exprs]
    # A few other steps: finer than the scrape interval, and one not dividing a minute.
    for e in exprs[::15]:
        jobs.append((e, "/api/v1/query_range", {"query": e, "start": start, "end": start + 1800, "step": 10}))
        jobs.append((e, "/api/v1/query_range", {"query": e, "start": start, "end": end, "step": 97}))
    problems = _compare_all(stackwatch, prometheus, jobs)
    assert not problems, f"{len(problems)} of {len(jobs)} differ:\n" + "\n".join(problems)


def test_the_comparison_can_fail(data: Dataset, prometheus: str, stackwatch: str) -> None:
    """The checker itself: a different query on one side is reported, with the first difference."""
    instants, _, _ = _times(data)
    with httpx.Client(base_url=prometheus, timeout=30) as c:
        theirs = _get(c, "/api/v1/query", {"query": "sum by (job) (rate(http_requests_total[5m]))",
                                           "time": instants[1]})
        other = _get(c, "/api/v1/query", {"query": "sum by (job) (rate(http_requests_total[4m]))",
                                          "time": instants[1]})
    assert _diff("q", theirs, theirs) is None
    problem = _diff("q", other, theirs)
    assert problem is not None and "ours" in problem
