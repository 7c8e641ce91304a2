"""Deterministic metric data of a web service fleet, for comparing Stackwatch with real TSDBs.

One generator serves the PromQL comparison test (a few hundred series over a few hours) and
the metrics benchmark (about 10,000 series over a day): the same shapes at two sizes.

Series, per ``job`` x ``instance`` (a "target", all of whose series share one scrape time):

* ``http_requests_total{route, method, code}``: counters whose rate follows a daily-ish wave;
  ``code="500"`` bursts during two incidents;
* ``http_request_duration_seconds_bucket{route, le}`` with ``_sum`` and ``_count``: a classic
  histogram whose latency shifts up during incidents;
* ``process_resident_memory_bytes``, ``node_cpu_utilization{mode}``, ``queue_depth`` and
  ``up``: gauges.

Irregularities that queries must handle the way Prometheus does:

* counters start high (the processes ran before the data begins); one instance restarts
  mid-way: every counter of it resets to zero and counts again;
* ``queue_depth`` of one instance stops reporting for 12 minutes (longer than the 5 min
  lookback), so instant queries see it go away and come back;
* one route's series appear only after the first third of the time range (a deployment),
  its counters starting at exactly 0.

Timestamps: a target scrapes every 15 s at a fixed, non-whole-second phase (``x.123 s``).
That keeps samples off every whole-second evaluation time and window boundary, where
Prometheus 2.x (closed windows) and 3.x (left-open windows, which we follow) legitimately
disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

STEP_MS = 15_000
BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")


@dataclass
class Dataset:
    """Series (metric name, sorted label pairs) and their samples, one row per series."""

    series: list[tuple[str, tuple[tuple[str, str], ...]]]
    timestamps: list[np.ndarray]  # int64 ms per series (series may be shorter: gaps, late starts)
    values: list[np.ndarray]
    t0_ms: int
    t_end_ms: int

    @property
    def samples(self) -> int:
        return sum(int(t.size) for t in self.timestamps)

    def add_to(self, batch: Any) -> None:
        """Every sample into ``batch`` (a :class:`~stackwatch.storage.metrics.MetricBatch`)."""
        for (name, labels), ts, vals in zip(self.series, self.timestamps, self.values, strict=True):
            pairs = [("__name__", name), *labels]
            for t, v in zip(ts.tolist(), vals.tolist(), strict=True):
                batch.add(pairs, t, v)

    def series_text(self, i: int) -> str:
        name, labels = self.series[i]
        inner = ",".join(f'{k}="{v}"' for k, v in labels)
        return f"{name}{{{inner}}}"

    def exposition(self, indexes: list[int] | range | None = None, seconds: bool = False) -> Iterator[str]:
        """Text lines ``name{labels} value timestamp`` (ms, or seconds for OpenMetrics)."""
        for i in indexes if indexes is not None else range(len(self.series)):
            prefix = self.series_text(i) + " "
            vals = self.values[i].tolist()
            if seconds:
                ts = [f"{t // 1000}.{t % 1000:03d}" for t in self.timestamps[i].tolist()]
            else:
                ts = [str(t) for t in self.timestamps[i].tolist()]
            for t, v in zip(ts, vals, strict=True):
                yield f"{prefix}{fmt(v)} {t}\n"

    def openmetrics(self) -> Iterator[str]:
        """The whole set as OpenMetrics for ``promtool tsdb create-blocks-from openmetrics``.

        Samples of one metric family must be contiguous there, so series go by name.
        """
        order = sorted(range(len(self.series)), key=lambda i: self.series[i][0])
        yield from self.exposition(order, seconds=True)
        yield "# EOF\n"


def fmt(v: float) -> str:
    """Shortest exact text of a float (integers without the ``.0``), as both parsers read it."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def generate(
    *, jobs: int = 2, instances: int = 3, routes: int = 4, hours: float = 2.5, t0_ms: int = 1_767_225_600_000,
    seed: int = 7,
) -> Dataset:
    """The fleet: ``jobs`` x ``instances`` targets, each serving ``routes`` routes.

    Series count: per target ``routes * 6`` request counters (2 methods x 3 codes),
    ``routes * 9`` histogram series, 5 gauges (memory, queue, up, cpu user/system).
    """
    rng = np.random.default_rng(seed)
    steps = int(hours * 3600 * 1000 // STEP_MS)
    t_end = t0_ms + steps * STEP_MS
    k = np.arange(steps)
    wave = 1.0 + 0.5 * np.sin(2 * np.pi * k / max(steps, 1) * 1.5)
    # Two incidents: 10-minute windows where errors and latency go up.
    incident = np.zeros(steps)
    for frac in (0.35, 0.8):
        a = int(steps * frac)
        incident[a : a + 40] = 1.0
    series: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    tss: list[np.ndarray] = []
    vals: list[np.ndarray] = []

    def add(name: str, labels: dict[str, str], t: np.ndarray, v: np.ndarray) -> None:
        series.append((name, tuple(sorted(labels.items()))))
        tss.append(t)
        vals.append(v.astype(np.float64))

    restart_at = steps // 2
    late_route = f"/api/v1/r{routes - 1}" if routes > 1 else None
    late_from = steps // 3
    for j in range(jobs):
        job = ("api", "web", "worker", "billing", "search")[j % 5] + ("" if j < 5 else str(j))
        for i in range(instances):
            inst = f"10.0.{j}.{i + 1}:9100"
            phase_ms = 1_000 * ((3 * j + 7 * i) % 15) + 123  # x.123 s, never a whole second
            t = t0_ms + phase_ms + k.astype(np.int64) * STEP_MS
            restarts = j == 0 and i == 0

            def counter(incr: np.ndarray, late: bool = False, restarts: bool = restarts) -> np.ndarray:
                incr = incr.copy()
                if late:  # a new route: its counters are born at exactly 0
                    incr[: late_from + 1] = 0
                # Processes ran long before the data starts: counters begin high (floor keeps
                # histogram buckets cumulative), as rate's extrapolation sees in real life.
                c = np.cumsum(incr) + (0.0 if late else np.floor(incr.mean() * 5000))
                if restarts:
                    c[restart_at:] = np.cumsum(incr[restart_at:]) - incr[restart_at]
                return c[late_from:] if late else c

            base = {"job": job, "instance": inst}
            for r in range(routes):
                route = f"/api/v1/r{r}"
                late = route == late_route
                sel = slice(late_from, None) if late else slice(None)
                scale = rng.uniform(0.3, 3.0)
                for method in ("GET", "POST"):
                    for code in ("200", "404", "500"):
                        lam = scale * wave * {"200": 20.0, "404": 1.0, "500": 0.2}[code]
                        if code == "500":
                            lam = lam + incident * scale * 6
                        if method == "POST":
                            lam = lam * 0.3
                        c = counter(rng.poisson(lam * 15).astype(np.float64), late)
                        add("http_requests_total", {**base, "route": route, "method": method, "code": code},
                            t[sel], c)
                # Histogram: per-step observation counts per bucket from a latency distribution.
                n_obs = rng.poisson(scale * wave * 15 * 10)
                mean_lat = 0.12 * scale * (1 + 4 * incident)
                edges = np.array([0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                p_le = 1 - np.exp(-edges[None, :] / mean_lat[:, None])  # exponential latencies
                cum = np.floor(n_obs[:, None] * p_le)
                cum = np.maximum.accumulate(cum, axis=1)
                bucket_incr = np.concatenate([cum, n_obs[:, None]], axis=1).astype(np.float64)
                for b, le in enumerate(BUCKETS):
                    c = counter(bucket_incr[:, b], late)
                    add("http_request_duration_seconds_bucket", {**base, "route": route, "le": le}, t[sel], c)
                c = counter(bucket_incr[:, -1], late)
                add("http_request_duration_seconds_count", {**base, "route": route}, t[sel], c)
                lat_sum = np.round(n_obs * mean_lat * rng.uniform(0.9, 1.1, steps), 3)
                c = np.round(counter(lat_sum, late), 3)
                add("http_request_duration_seconds_sum", {**base, "route": route}, t[sel], c)
            mem = 2.0e8 + (j * 1e7) + np.cumsum(rng.integers(-20, 24, steps)) * 4096.0
            if restarts:
                mem[restart_at:] -= mem[restart_at] - 1.5e8
            add("process_resident_memory_bytes", base, t, mem)
            q = np.maximum(0, np.round(5 + 3 * wave + 40 * incident + rng.normal(0, 2, steps)))
            if j == 0 and i == instances - 1:
                gap = slice(int(steps * 0.6), int(steps * 0.6) + 48)  # 12 minutes of silence
                keep = np.ones(steps, dtype=bool)
                keep[gap] = False
                add("queue_depth", base, t[keep], q[keep])
            else:
                add("queue_depth", base, t, q)
            add("up", base, t, np.ones(steps))
            for mode, level in (("user", 0.35), ("system", 0.1)):
                u = np.clip(level * wave + 0.2 * incident + rng.normal(0, 0.03, steps), 0, 1)
                add("node_cpu_utilization", {**base, "mode": mode}, t, np.round(u, 4))
    return Dataset(series, tss, vals, t0_ms, t_end)
