"""The evaluator's in-flight values: every node is evaluated for all steps at once.

A range query with ``S`` steps evaluates each instant-vector node to an ``(N, S)``
array of values plus an ``(N, S)`` presence mask, so operators and functions are
numpy operations over whole matrices instead of Python loops over steps. An
instant query is simply ``S == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Labels = tuple[tuple[str, str], ...]
"""A label set: (name, value) pairs sorted by name, never an empty value."""

NAME = "__name__"


def make_labels(d: dict[str, str]) -> Labels:
    """Canonical label set from a dict (drops empty values, as Prometheus does)."""
    return tuple(sorted((k, v) for k, v in d.items() if v != ""))


def lget(labels: Labels, name: str) -> str:
    """A label's value, ``""`` when absent."""
    for k, v in labels:
        if k == name:
            return v
    return ""


def without_name(labels: Labels) -> Labels:
    """The label set minus ``__name__``."""
    return tuple(p for p in labels if p[0] != NAME)


def labels_str(labels: Labels) -> str:
    """Prometheus's ``labels.String()`` rendering: ``{a="b", c="d"}``."""
    return "{" + ", ".join(f"{k}={_go_quote(v)}" for k, v in labels) + "}"


def _go_quote(v: str) -> str:
    out = ['"']
    for ch in v:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@dataclass
class Vec:
    """An instant vector over all steps."""

    labels: list[Labels]
    values: np.ndarray  # (N, S) float64
    present: np.ndarray  # (N, S) bool
    drop_name: np.ndarray  # (N,) bool: __name__ to be removed at the end (delayed removal)
    sample_ts: np.ndarray | None = None  # (N, S) int64, set by selectors for timestamp()

    @staticmethod
    def empty(steps: int) -> Vec:
        return Vec([], np.zeros((0, steps)), np.zeros((0, steps), dtype=bool), np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | list[int]) -> Vec:
        """The sub-vector made of the given series rows."""
        idx = np.asarray(rows, dtype=np.intp)
        ts = None if self.sample_ts is None else self.sample_ts[idx]
        return Vec(
            [self.labels[i] for i in idx], self.values[idx], self.present[idx], self.drop_name[idx], ts
        )

    def compact(self) -> Vec:
        """Drop series that have no value at any step."""
        keep = self.present.any(axis=1)
        if keep.all():
            return self
        return self.take(np.nonzero(keep)[0])


@dataclass
class Scalar:
    """A scalar over all steps."""

    values: np.ndarray  # (S,) float64


@dataclass
class String:
    """A string literal (the same at every step)."""

    value: str


@dataclass
class RangeVec:
    """A range vector: raw samples per series plus the window each step looks at.

    At step ``s`` the window is ``(ends[s] - range_ms, ends[s]]``. Samples of all
    series live in ``flat_t`` / ``flat_v``, series ``i`` at ``[starts[i], stops[i])``, so
    that range functions can work on every (series, step) window in one numpy pass. The
    flat arrays may hold samples of no listed series (a storage read shared by several
    selectors); nothing reads outside the listed spans.
    """

    labels: list[Labels]
    drop_name: np.ndarray  # (N,) bool
    flat_t: np.ndarray  # int64
    flat_v: np.ndarray  # float64
    starts: np.ndarray  # (N,) first index of each series in the flat arrays
    stops: np.ndarray  # (N,) one past its last index
    range_ms: int
    ends: np.ndarray  # (S,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat-array index bounds ``[lo, hi)`` of every (series, step) window, each (N, S)."""
        n, s = len(self.labels), self.ends.shape[0]
        lo = np.empty((n, s), dtype=np.intp)
        hi = np.empty((n, s), dtype=np.intp)
        starts = self.ends - self.range_ms
        # When the range is a whole number of steps (rate(x[5m]) at a 1 m step), the window
        # of step k starts where the window of step k - shift ended: only the first ``shift``
        # starts need a search, which halves the searching.
        shift = self._range_in_steps()
        head = starts[:shift] if shift else starts
        for i, (a, b) in enumerate(zip(self.starts.tolist(), self.stops.tolist(), strict=True)):
            t = self.flat_t[a:b]
            np.add(t.searchsorted(self.ends, side="right"), a, out=hi[i])
            np.add(t.searchsorted(head, side="right"), a, out=lo[i, : head.shape[0]])
        if shift:
            lo[:, shift:] = hi[:, :-shift]
        return lo, hi

    def _range_in_steps(self) -> int:
        """``range / step`` when the ends are evenly spaced and the range is a multiple of the step (else 0)."""
        ends = self.ends
        if ends.shape[0] < 2:
            return 0
        step = int(ends[1] - ends[0])
        if step <= 0 or self.range_ms % step or self.range_ms // step >= ends.shape[0]:
            return 0
        if not (np.diff(ends) == step).all():
            return 0
        return self.range_ms // step
