"""The storage interface the PromQL engine reads from, and an in-memory implementation.

The engine only ever asks one question of storage — "which series match these
matchers, and what are their samples between two times" — the way Prometheus's
``storage.Querier.Select`` does. Keeping the interface this narrow is what lets the
ClickHouse-backed querier (and, later, pushdown of whole sub-expressions) slot in
without the evaluator knowing.

Stale markers travel as the exact NaN bit pattern Prometheus uses
(``0x7ff0000000000002``); the engine, not storage, decides what they mean.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import re2

__all__ = [
    "STALE_NAN",
    "STALE_NAN_BITS",
    "Matcher",
    "MemoryStorage",
    "Querier",
    "Series",
    "SeriesSet",
    "is_stale_nan",
]

STALE_NAN_BITS = 0x7FF0000000000002
"""Bit pattern of Prometheus's staleness marker (a NaN no arithmetic produces)."""

STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def is_stale_nan(values: np.ndarray) -> np.ndarray:
    """Element-wise: is this value the staleness marker (and not an ordinary NaN)?"""
    arr = np.ascontiguousarray(values, dtype=np.float64)
    return arr.view(np.uint64) == np.uint64(STALE_NAN_BITS)


MATCH_OPS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True)
class Matcher:
    """One label matcher. Regex matchers are fully anchored, as in Prometheus.

    A missing label matches as the empty string, so ``{foo=""}`` selects series
    without ``foo`` and ``{foo!=""}`` selects series that have it.
    """

    name: str
    op: str
    value: str
    _regex: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in MATCH_OPS:
            raise ValueError(f"unknown match operator {self.op!r}")
        if self.op in ("=~", "!~"):
            # (?s: ...) because Prometheus lets '.' match newlines in label matchers.
            object.__setattr__(self, "_regex", compile_anchored(self.value))

    def matches(self, value: str) -> bool:
        """Does a label value (``""`` when the label is absent) satisfy this matcher?"""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self._regex.fullmatch(value) is not None  # type: ignore[attr-defined]
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{_quote(self.value)}"


def compile_anchored(pattern: str) -> object:
    """Compile a PromQL regex with RE2 (Go's syntax) so that ``fullmatch`` anchors it."""
    return re2.compile(f"(?s:{pattern})")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Series(NamedTuple):
    """One selected series: its labels (with ``__name__``) and its samples in time order."""

    labels: dict[str, str]
    timestamps_ms: np.ndarray  # int64, ascending
    values: np.ndarray  # float64; stale markers included
    #: A querier that read many series into one pair of flat arrays may say so: ``block`` is
    #: that (timestamps, values) pair and ``start`` this series' first index in it. Range
    #: functions then window the block in place instead of concatenating the series again.
    block: tuple[np.ndarray, np.ndarray] | None = None
    start: int = 0


SeriesSet = list[Series]


class Querier(Protocol):
    """What the engine needs from storage.

    ``select`` returns every series matching all ``matchers`` that has at least one
    sample with ``start_ms <= t <= end_ms``, with exactly those samples (stale
    markers included), series sorted by their label sets.
    """

    def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> SeriesSet: ...


class _Buffer:
    __slots__ = ("dirty", "t", "ts", "v", "vs")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.vs: list[float] = []
        self.t = np.empty(0, dtype=np.int64)
        self.v = np.empty(0, dtype=np.float64)
        self.dirty = False

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.dirty:
            t = np.concatenate([self.t, np.asarray(self.ts, dtype=np.int64)])
            v = np.concatenate([self.v, np.asarray(self.vs, dtype=np.float64)])
            # Stable sort, then keep the last write of a duplicated timestamp.
            order = np.argsort(t, kind="stable")
            t, v = t[order], v[order]
            if t.size > 1:
                keep = np.append(t[1:] != t[:-1], True)
                t, v = t[keep], v[keep]
            self.t, self.v = t, v
            self.ts, self.vs = [], []
            self.dirty = False
        return self.t, self.v


class MemoryStorage:
    """An in-memory ``Querier``: tests, the test-script runner, and small tools use it."""

    def __init__(self) -> None:
        self._series: dict[tuple[tuple[str, str], ...], _Buffer] = {}

    @staticmethod
    def _key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        # Prometheus treats an empty label value as an absent label.
        return tuple(sorted((k, v) for k, v in labels.items() if v != ""))

    def add(self, labels: Mapping[str, str], ts_ms: int, value: float) -> None:
        """Append one sample (a later write to the same timestamp replaces it)."""
        buf = self._series.setdefault(self._key(labels), _Buffer())
        buf.ts.append(int(ts_ms))
        buf.vs.append(float(value))
        buf.dirty = True

    def add_many(
        self,
        labels: Mapping[str, str],
        ts_ms: Sequence[int] | np.ndarray,
        values: Sequence[float] | np.ndarray,
    ) -> None:
        """Append many samples of one series at once."""
        buf = self._series.setdefault(self._key(labels), _Buffer())
        buf.ts.extend(int(t) for t in ts_ms)
        buf.vs.extend(float(v) for v in values)
        buf.dirty = True

    def clear(self) -> None:
        """Forget every series."""
        self._series.clear()

    def series_count(self) -> int:
        """How many distinct series are stored."""
        return len(self._series)

    def label_sets(self) -> Iterable[dict[str, str]]:
        """Every stored series' labels (for label/series APIs and tests)."""
        return (dict(k) for k in self._series)

    def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> SeriesSet:
        """See :class:`Querier`."""
        out: SeriesSet = []
        for key in sorted(self._series):
            labels = dict(key)
            if not all(m.matches(labels.get(m.name, "")) for m in matchers):
                continue
            t, v = self._series[key].arrays()
            lo = int(np.searchsorted(t, start_ms, side="left"))
            hi = int(np.searchsorted(t, end_ms, side="right"))
            if hi > lo:
                out.append(Series(labels, t[lo:hi], v[lo:hi]))
        return out
