"""The public engine: parse, evaluate against a Querier, shape the result.

Like Prometheus's ``promql.Engine`` it is a plain library: the HTTP API and the
rule evaluator both call :meth:`Engine.instant` / :meth:`Engine.range` and map
:class:`~stackwatch.query.promql.errors.PromQLError` subclasses to responses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._ast import Call, MatrixSel, Node, Subquery, VectorSel, parse
from ._eval import EvalContext, Evaluator, finish_names
from ._format import format_sample_value, format_timestamp, format_timestamps
from ._values import Labels, RangeVec, Scalar, String, Vec, without_name
from .errors import EvaluationError, ParseError, PromQLError
from .storage import Querier

__all__ = ["Engine", "Result", "SeriesResult"]

_DOC_TYPES = {"vector": "instant vector", "matrix": "range vector", "scalar": "scalar", "string": "string"}


@dataclass
class SeriesResult:
    """One series of a result: labels, and its points (one point for a vector)."""

    labels: dict[str, str]
    timestamps_ms: np.ndarray
    values: np.ndarray


@dataclass
class Result:
    """A query result.

    ``type`` is ``"vector"``, ``"matrix"``, ``"scalar"`` or ``"string"``. Vectors and
    matrices fill ``series`` (a vector has exactly one point per series); scalars
    and strings fill ``scalar`` / ``string`` at ``timestamp_ms``.
    """

    type: str
    series: list[SeriesResult] = field(default_factory=list)
    scalar: float = float("nan")
    string: str = ""
    timestamp_ms: int = 0

    def to_prometheus_json(self) -> dict[str, Any]:
        """The ``data`` object of Prometheus's ``/api/v1/query[_range]`` response."""
        if self.type == "scalar":
            result: Any = [format_timestamp(self.timestamp_ms), format_sample_value(self.scalar)]
        elif self.type == "string":
            result = [format_timestamp(self.timestamp_ms), self.string]
        elif self.type == "vector":
            result = [
                {
                    "metric": s.labels,
                    "value": [
                        format_timestamp(int(s.timestamps_ms[0])),
                        format_sample_value(float(s.values[0])),
                    ],
                }
                for s in self.series
            ]
        else:
            result = [
                {
                    "metric": s.labels,
                    "values": [
                        [t, format_sample_value(v)]
                        for t, v in zip(format_timestamps(s.timestamps_ms), s.values.tolist(), strict=True)
                    ],
                }
                for s in self.series
            ]
        return {"resultType": self.type, "result": result}


class Engine:
    """Evaluates PromQL against a :class:`~stackwatch.query.promql.storage.Querier`.

    ``delayed_name_removal`` mirrors Prometheus's feature flag of that name (off by
    default in Prometheus, on in its own test suite): ``__name__`` is then removed
    at the end of evaluation rather than by each function, so ``label_replace``
    can still read it. ``subquery_step_ms`` is the step of ``x[5m:]`` subqueries
    (Prometheus uses the global evaluation interval, 1m by default).
    """

    def __init__(
        self,
        querier: Querier,
        lookback_delta_ms: int = 300_000,
        max_samples: int = 50_000_000,
        timeout_s: float = 120,
        *,
        delayed_name_removal: bool = False,
        subquery_step_ms: int = 60_000,
    ) -> None:
        self.querier = querier
        self.lookback_delta_ms = lookback_delta_ms
        self.max_samples = max_samples
        self.timeout_s = timeout_s
        self.delayed_name_removal = delayed_name_removal
        self.subquery_step_ms = subquery_step_ms

    def _context(self, start_ms: int, end_ms: int, step_ms: int = 0, lookback_ms: int | None = None) -> EvalContext:
        return EvalContext(
            querier=self.querier,
            start_ms=start_ms,
            end_ms=end_ms,
            lookback_ms=self.lookback_delta_ms if lookback_ms is None else lookback_ms,
            max_samples=self.max_samples,
            deadline=time.monotonic() + self.timeout_s,
            delayed_name_removal=self.delayed_name_removal,
            subquery_step_ms=self.subquery_step_ms,
            step_ms=step_ms,
        )

    @staticmethod
    def parse(expr: str) -> Node:
        """Parse (and type-check) ``expr``; raises :class:`ParseError`."""
        return parse(expr)

    def instant(self, expr: str, t_ms: int) -> Result:
        """Evaluate ``expr`` at one time (milliseconds since the epoch)."""
        node = parse(expr)
        t_ms = int(t_ms)
        ts = np.array([t_ms], dtype=np.int64)
        value = self._run(node, ts, t_ms, t_ms)
        if isinstance(value, Scalar):
            return Result("scalar", scalar=float(value.values[0]), timestamp_ms=t_ms)
        if isinstance(value, String):
            return Result("string", string=value.value, timestamp_ms=t_ms)
        if isinstance(value, RangeVec):
            return Result("matrix", series=_range_vec_series(value))
        vec = finish_names(value)
        series = [
            SeriesResult(dict(vec.labels[i]), np.array([t_ms], dtype=np.int64), vec.values[i, :1].copy())
            for i in range(len(vec))
            if vec.present[i, 0]
        ]
        return Result("vector", series=series)

    def range(
        self, expr: str, start_ms: int, end_ms: int, step_ms: int, *, max_resolution_ms: int | None = None
    ) -> Result:
        """Evaluate ``expr`` at ``start_ms, start_ms + step_ms, ... <= end_ms``.

        ``max_resolution_ms`` caps the rollup the query may read (0: raw samples only; None:
        chosen from the step, see :func:`choose_resolution`).
        """
        start_ms, end_ms, step_ms = int(start_ms), int(end_ms), int(step_ms)
        if step_ms <= 0:
            raise ParseError(
                "zero or negative query resolution step widths are not accepted. Try a positive integer"
            )
        if end_ms < start_ms:
            raise ParseError("end timestamp must not be before start time")
        node = parse(expr)
        if node.type not in ("vector", "scalar"):
            raise ParseError(
                f'invalid expression type "{_DOC_TYPES[node.type]}" for range query, must be Scalar or instant Vector'
            )
        ts = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
        resolution = choose_resolution(
            node, step_ms, getattr(self.querier, "rollup_resolutions", ()), max_resolution_ms,
            start_ms=start_ms, end_ms=end_ms,
        )
        if resolution:
            # Exact by default: the lookback applies to the rollup rows' real timestamps. Asked
            # for downsampled data, a selector looks back a whole bucket to find its last
            # sample, as VictoriaMetrics's -search.setLookbackToStep does.
            lookback = self.lookback_delta_ms if max_resolution_ms is None else max(self.lookback_delta_ms, resolution)
            self.querier.resolution_ms = resolution  # type: ignore[attr-defined]
            try:
                value = self._run(node, ts, start_ms, end_ms, step_ms, lookback)
            finally:
                self.querier.resolution_ms = 0  # type: ignore[attr-defined]
        else:
            value = self._run(node, ts, start_ms, end_ms, step_ms)
        if isinstance(value, Scalar):
            return Result("matrix", series=[SeriesResult({}, ts.copy(), value.values.copy())])
        assert isinstance(value, Vec)
        vec = finish_names(value)
        out = []
        for i in sorted(range(len(vec)), key=lambda i: vec.labels[i]):
            p = vec.present[i]
            if p.any():
                out.append(SeriesResult(dict(vec.labels[i]), ts[p], vec.values[i][p]))
        return Result("matrix", series=out)

    def _run(
        self, node: Node, ts: np.ndarray, start_ms: int, end_ms: int, step_ms: int = 0, lookback_ms: int | None = None
    ) -> Vec | Scalar | String | RangeVec:
        ev = Evaluator(self._context(start_ms, end_ms, step_ms, lookback_ms))
        try:
            with np.errstate(all="ignore"):
                return ev.eval(node, ts)
        except PromQLError:
            raise
        except RecursionError:
            raise EvaluationError("query is too deeply nested") from None
        except Exception as exc:  # a bug in the engine must not look like a crash to callers
            raise EvaluationError(f"unexpected error: {type(exc).__name__}: {exc}") from exc


#: Range functions whose answer over the last sample of each bucket stays close to the answer
#: over all samples when the range spans several buckets, read from rollups only when a query
#: asks for downsampled data (``max_source_resolution=5m`` or ``1h``): close is not equal, and
#: on a noisy gauge not even close (an ``avg_over_time`` of a few bucket ends, a ``deriv`` with
#: the wrong sign). Others count samples (count_over_time, changes, resets), need every sample
#: (sum_over_time, quantiles) or the extremes (min/max_over_time): they always read samples.
ROLLUP_APPROXIMATE_FUNCTIONS = frozenset(
    {"rate", "increase", "delta", "deriv", "predict_linear", "avg_over_time", "last_over_time",
     "present_over_time", "absent_over_time"}
)


def choose_resolution(
    node: Node,
    step_ms: int,
    available: Sequence[int],
    max_resolution_ms: int | None = None,
    *,
    start_ms: int = 0,
    end_ms: int | None = None,
) -> int:
    """The coarsest rollup a range query may read instead of samples (0: samples).

    By default (``max_resolution_ms`` None) only where the answer is exactly the samples':
    a query whose selectors are all instant selectors (no range vectors, no subqueries),
    evaluated at bucket ends. A rollup row is its bucket's last sample with its own timestamp,
    so at a bucket end the latest sample at or before that time is always a rollup row, and
    the lookback applies to its real timestamp: a 30-day memory panel at a 1 h step reads 720
    rows a series instead of 172,800 samples, with the same answer. Every time a selector is
    read at must be a bucket end: start and step multiples of the resolution (how Grafana
    aligns a dashboard's step), and every ``offset`` and ``@`` time too.

    A query that names a resolution (Thanos's ``max_source_resolution``: ``5m``, ``1h``) asks
    for downsampled data and accepts approximate answers: it may also read rollups for the
    range functions of :data:`ROLLUP_APPROXIMATE_FUNCTIONS` when every range spans at least
    two buckets. ``0`` asks for raw data.
    """
    if not available or max_resolution_ms == 0:
        return 0
    exact = max_resolution_ms is None
    smallest: int | None = None
    shifts: list[int] = []  # offsets and @ times a selector is read at
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Subquery):
            return 0
        if isinstance(n, MatrixSel):
            if exact:
                return 0
            smallest = n.range_ms if smallest is None else min(smallest, n.range_ms)
        if isinstance(n, VectorSel):
            shifts.append(n.offset_ms)
            if n.at is not None:
                if n.at.kind == "at":
                    shifts.append(n.at.ms)
                elif n.at.kind == "end":
                    shifts.append(start_ms if end_ms is None else end_ms)
        if (
            isinstance(n, Call)
            and any(isinstance(a, MatrixSel) for a in n.args)
            and n.func not in ROLLUP_APPROXIMATE_FUNCTIONS
        ):
            return 0
        if dataclasses.is_dataclass(n):
            for f in dataclasses.fields(n):
                v = getattr(n, f.name)
                if isinstance(v, Node):
                    stack.append(v)
                elif isinstance(v, list):
                    stack.extend(x for x in v if isinstance(x, Node))
    for res in sorted(available, reverse=True):
        if max_resolution_ms is not None and res > max_resolution_ms:
            continue
        aligned = start_ms % res == 0 and step_ms % res == 0 and all(t % res == 0 for t in shifts)
        if aligned and (smallest is None or smallest >= 2 * res):
            return res
    return 0


def _range_vec_series(rv: RangeVec) -> list[SeriesResult]:
    """An instant query's range-vector result: each series' samples in its window."""
    lo, hi = rv.windows()
    labels: list[Labels] = []
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for i, lb in enumerate(rv.labels):
        a, b = int(lo[i, 0]), int(hi[i, 0])
        if b <= a:
            continue
        labels.append(without_name(lb) if rv.drop_name[i] else lb)
        out.append((rv.flat_t[a:b], rv.flat_v[a:b]))
    if len(set(labels)) != len(labels):
        # Same label set after dropping names: merge unless timestamps collide.
        merged: dict[Labels, tuple[np.ndarray, np.ndarray]] = {}
        for lb, (t, v) in zip(labels, out, strict=True):
            if lb in merged:
                t0, v0 = merged[lb]
                t = np.concatenate([t0, t])
                v = np.concatenate([v0, v])
                order = np.argsort(t, kind="stable")
                t, v = t[order], v[order]
                if (np.diff(t) == 0).any():
                    raise EvaluationError("vector cannot contain metrics with the same labelset")
            merged[lb] = (t, v)
        labels, out = list(merged), list(merged.values())
    return [SeriesResult(dict(lb), t, v) for lb, (t, v) in zip(labels, out, strict=True)]
