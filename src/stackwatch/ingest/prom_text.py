"""The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text, parsed.

Two parsers, because the formats differ in how strict they are and in their units:

* :func:`parse_openmetrics` is strict, as the OpenMetrics spec is: one space between tokens,
  ``# EOF`` last, metadata before a family's samples and at most once, families and metric
  points contiguous, type rules (a counter's ``_total`` is a non-negative number, histogram
  buckets ascend and end at ``+Inf``, ``_count`` equals the ``+Inf`` bucket...), exemplars only
  where allowed. Timestamps are **seconds** (floats). It passes the OpenMetrics conformance
  cases (``tests/ingest/test_prom_text.py`` runs them).
* :func:`parse_prometheus_text` is the classic format as Prometheus reads it: any whitespace
  between tokens, free comments, ``untyped``, an optional trailing comma in label sets, no
  ``# EOF``; timestamps are integer **milliseconds**.

:func:`text_to_batch` is what ``POST /api/v1/import/prometheus`` uses. For the classic format it
takes a faster road than building families: a series' text before its value
(``name{labels}``) is the same on every line of that series, so it is parsed once per request
and looked up after that; a backfill of a day of data per series parses each label set once.

Errors are :class:`TextParseError` (a :class:`~stackwatch.errors.BadRequest`) naming the line.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from stackwatch.errors import BadRequest
from stackwatch.ingest._prom_fast import FastLines, read_classic
from stackwatch.storage.metrics import MetricBatch, SeriesRef, series_ref

__all__ = [
    "Family",
    "Sample",
    "TextParseError",
    "parse_openmetrics",
    "parse_prometheus_text",
    "text_to_batch",
]

OPENMETRICS_TYPES = ("counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown")
PROMETHEUS_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_LOOSE_SPECIAL = {"+inf": math.inf, "inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_STRICT_SPECIAL = {"+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
_SPACES = re.compile(r"[ \t]+")

#: Reads a classic body's sample lines as columns, or declines with None (see :mod:`._prom_sql`).
LineReader = Callable[[bytes], FastLines | None]

#: Sample-name suffixes each OpenMetrics type owns.
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


class TextParseError(BadRequest):
    """The exposition text is malformed; the message names the line."""


@dataclass
class Sample:
    name: str
    labels: list[tuple[str, str]]
    value: float
    timestamp: float | None = None  # OpenMetrics: seconds; classic text: milliseconds


@dataclass
class Family:
    name: str
    type: str = "unknown"
    help: str | None = None
    unit: str | None = None
    samples: list[Sample] = field(default_factory=list)
    typed: bool = False


# -- shared lexing -----------------------------------------------------------------------------


def _number(text: str, strict: bool, what: str = "value") -> float:
    special = _STRICT_SPECIAL if strict else _LOOSE_SPECIAL
    key = text if strict else text.lower()
    if key in special:
        return special[key]
    if not _NUMBER.match(text):
        raise ValueError(f"invalid {what} {text!r}")
    return float(text)


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _labels(line: str, pos: int, strict: bool) -> tuple[list[tuple[str, str]], int]:
    """Parse ``{a="1",b="2"}`` starting at ``line[pos] == "{"``; returns (labels, position after)."""
    pos += 1
    labels: list[tuple[str, str]] = []
    seen: set[str] = set()
    n = len(line)
    while True:
        if not strict:
            while pos < n and line[pos] in " \t":
                pos += 1
        if pos < n and line[pos] == "}":
            if strict and labels and line[pos - 1] == ",":
                raise ValueError("trailing comma in label set")
            return labels, pos + 1
        m = _LABEL.match(line, pos)
        if not m:
            raise ValueError(f"invalid label name at column {pos + 1}")
        name = m.group()
        pos = m.end()
        if not strict:
            while pos < n and line[pos] in " \t":
                pos += 1
        if pos >= n or line[pos] != "=":
            raise ValueError(f"expected '=' after label name {name!r}")
        pos += 1
        if not strict:
            while pos < n and line[pos] in " \t":
                pos += 1
        if pos >= n or line[pos] != '"':
            raise ValueError(f"label value of {name!r} must be in double quotes")
        start = pos + 1
        pos = start
        while True:
            q = line.find('"', pos)
            if q < 0:
                raise ValueError(f"unterminated label value of {name!r}")
            backslashes = 0
            k = q - 1
            while k >= start and line[k] == "\\":
                backslashes += 1
                k -= 1
            if backslashes % 2 == 0:
                break
            pos = q + 1
        value = _unescape(line[start:q])
        pos = q + 1
        if name in seen:
            raise ValueError(f"duplicate label name {name!r}")
        seen.add(name)
        labels.append((name, value))
        if not strict:
            while pos < n and line[pos] in " \t":
                pos += 1
        if pos < n and line[pos] == ",":
            pos += 1
            if strict and pos < n and line[pos] == "}":
                raise ValueError("trailing comma in label set")
            continue
        if pos < n and line[pos] == "}":
            return labels, pos + 1
        raise ValueError(f"expected ',' or '}}' at column {pos + 1}")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    yield from enumerate(text.split("\n"), 1)


# -- OpenMetrics ---------------------------------------------------------------------------------


@dataclass
class _Point:
    """One metric point of a histogram/summary family (the samples sharing labels but le/quantile)."""

    buckets: list[tuple[float, float]] = field(default_factory=list)
    count: float | None = None
    total: float | None = None  # _sum / _gsum
    after_buckets: bool = False


class _OpenMetricsParser:
    def __init__(self) -> None:
        self.families: list[Family] = []
        self.by_name: dict[str, Family] = {}
        self.owner: dict[str, Family] = {}  # sample name -> family
        self.current: Family | None = None
        self.closed: set[str] = set()
        self.points: dict[tuple[tuple[str, str], ...], _Point] = {}
        self.group: tuple[tuple[str, str], ...] | None = None
        self.done_groups: set[tuple[tuple[str, str], ...]] = set()
        self.last_ts: dict[tuple[str, tuple[tuple[str, str], ...]], float | None] = {}

    # families ------------------------------------------------------------------------------

    def _family(self, name: str) -> Family:
        fam = self.by_name.get(name)
        if fam is None:
            if name in self.owner:
                raise ValueError(f"metric family {name!r} clashes with samples of family {self.owner[name].name!r}")
            fam = Family(name)
            self.by_name[name] = fam
            self.families.append(fam)
            self._own(fam)
        return fam

    def _own(self, fam: Family) -> None:
        for name, owner in list(self.owner.items()):
            if owner is fam:
                del self.owner[name]
        for suffix in _SUFFIXES[fam.type]:
            sample_name = fam.name + suffix
            other = self.owner.get(sample_name) or self.by_name.get(sample_name)
            if other is not None and other is not fam:
                raise ValueError(f"metric family {fam.name!r} clashes with family {other.name!r}")
            self.owner[sample_name] = fam

    def _switch(self, fam: Family) -> None:
        if fam is self.current:
            return
        if fam.name in self.closed:
            raise ValueError(f"metric family {fam.name!r} is not contiguous")
        self._close()
        self.current = fam

    def _close(self) -> None:
        fam = self.current
        if fam is None:
            return
        self.closed.add(fam.name)
        for point in self.points.values():
            self._check_point(fam, point)
        if fam.unit and fam.type in ("info", "stateset"):
            raise ValueError(f"{fam.type} family {fam.name!r} cannot have a unit")
        self.points = {}
        self.group = None
        self.done_groups = set()

    # lines -----------------------------------------------------------------------------------

    def metadata(self, line: str) -> None:
        for kind in ("HELP", "TYPE", "UNIT"):
            prefix = f"# {kind} "
            if line.startswith(prefix):
                break
        else:
            raise ValueError("comments other than # HELP, # TYPE, # UNIT and # EOF are not allowed")
        rest = line[len(prefix) :]
        name, sep, text = rest.partition(" ")
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r} in # {kind}")
        if not sep:
            raise ValueError(f"# {kind} {name} needs a value")
        fam = self._family(name)
        self._switch(fam)
        if fam.samples:
            raise ValueError(f"# {kind} for {name!r} after its samples")
        if kind == "HELP":
            if fam.help is not None:
                raise ValueError(f"repeated # HELP for {name!r}")
            fam.help = _unescape(text)
        elif kind == "TYPE":
            if fam.typed:
                raise ValueError(f"repeated # TYPE for {name!r}")
            if text not in OPENMETRICS_TYPES:
                raise ValueError(f"invalid metric type {text!r}")
            fam.type = text
            fam.typed = True
            self._own(fam)
        else:
            if fam.unit is not None:
                raise ValueError(f"repeated # UNIT for {name!r}")
            if text and not name.endswith("_" + text):
                raise ValueError(f"metric name {name!r} must end with its unit _{text}")
            fam.unit = text

    def sample(self, line: str) -> None:
        m = _NAME.match(line)
        if not m:
            raise ValueError("invalid metric name")
        name = m.group()
        pos = m.end()
        labels: list[tuple[str, str]] = []
        if pos < len(line) and line[pos] == "{":
            labels, pos = _labels(line, pos, strict=True)
        rest = line[pos:]
        if not rest.startswith(" "):
            raise ValueError("expected a space before the value")
        value_part, hash_sep, exemplar = rest[1:].partition(" # ")
        if not hash_sep and rest.endswith(" #"):
            raise ValueError("empty exemplar")
        tokens = value_part.split(" ")
        if len(tokens) > 2 or any(t == "" for t in tokens):
            raise ValueError("expected 'value [timestamp]' separated by single spaces")
        value = _number(tokens[0], strict=True)
        ts = None
        if len(tokens) == 2:
            ts = _number(tokens[1], strict=True, what="timestamp")
            if not math.isfinite(ts):
                raise ValueError(f"invalid timestamp {tokens[1]!r}")
        fam = self.owner.get(name) or self._family(name)
        if fam.type not in ("gauge", "unknown", "summary", "stateset") and name == fam.name:
            raise ValueError(f"sample {name!r} does not fit its family's type {fam.type}")
        self._switch(fam)
        suffix = name[len(fam.name) :]
        if hash_sep:
            self._exemplar(exemplar)
            if not ((fam.type == "counter" and suffix == "_total") or (
                fam.type in ("histogram", "gaugehistogram") and suffix == "_bucket"
            )):
                raise ValueError(f"exemplars are not allowed on {name!r}")
        self._check_order(name, labels, ts)
        self._typed_sample(fam, suffix, labels, value)
        fam.samples.append(Sample(name, labels, value, ts))

    def _exemplar(self, text: str) -> None:
        if not text.startswith("{"):
            raise ValueError("exemplar must start with a label set")
        labels, pos = _labels(text, 0, strict=True)
        if sum(len(k) + len(v) for k, v in labels) > 128:
            raise ValueError("exemplar labels longer than 128 characters")
        rest = text[pos:]
        if not rest.startswith(" "):
            raise ValueError("expected a space after the exemplar's labels")
        tokens = rest[1:].split(" ")
        if len(tokens) > 2 or any(t == "" for t in tokens):
            raise ValueError("malformed exemplar")
        _number(tokens[0], strict=True, what="exemplar value")
        if len(tokens) == 2:
            ts = _number(tokens[1], strict=True, what="exemplar timestamp")
            if not math.isfinite(ts):
                raise ValueError("invalid exemplar timestamp")

    def _check_order(self, name: str, labels: list[tuple[str, str]], ts: float | None) -> None:
        key = (name, tuple(labels))
        if key in self.last_ts:
            prev = self.last_ts[key]
            if prev is None or ts is None:
                raise ValueError(f"series {name} repeated without increasing timestamps")
            if ts < prev:
                raise ValueError(f"timestamps of {name} go backwards")
        self.last_ts[key] = ts

    def _typed_sample(self, fam: Family, suffix: str, labels: list[tuple[str, str]], value: float) -> None:
        t = fam.type
        special = {"histogram": "le", "gaugehistogram": "le", "summary": "quantile", "stateset": fam.name}.get(t)
        group = tuple(kv for kv in labels if kv[0] != special)
        if group != self.group:
            if group in self.done_groups:
                raise ValueError(f"metric points of {fam.name!r} are not contiguous")
            if self.group is not None:
                self.done_groups.add(self.group)
            self.group = group
        label_map = dict(labels)
        if t == "counter" and suffix == "_total" and (math.isnan(value) or value < 0):
            raise ValueError("counter values must be non-negative numbers")
        if t == "info" and value != 1:
            raise ValueError("info values must be 1")
        if t == "stateset":
            if fam.name not in label_map:
                raise ValueError(f"stateset sample needs a {fam.name!r} label")
            if value not in (0, 1):
                raise ValueError("stateset values must be 0 or 1")
        if t in ("histogram", "gaugehistogram"):
            point = self.points.setdefault(group, _Point())
            if suffix == "_bucket":
                if "le" not in label_map:
                    raise ValueError("histogram bucket without le label")
                if point.after_buckets:
                    raise ValueError("histogram buckets must come before _count and _sum")
                le = _number(label_map["le"], strict=True, what="le")
                if math.isnan(le):
                    raise ValueError("le must not be NaN")
                if math.isnan(value) or value < 0:
                    raise ValueError("bucket values must be non-negative numbers")
                point.buckets.append((le, value))
            elif suffix in ("_count", "_gcount"):
                if math.isnan(value) or value < 0:
                    raise ValueError("count must be a non-negative number")
                point.count = value
                point.after_buckets = True
            elif suffix in ("_sum", "_gsum"):
                if math.isnan(value):
                    raise ValueError("sum must not be NaN")
                point.total = value
                point.after_buckets = True
        if t == "summary":
            if suffix == "":
                if "quantile" not in label_map:
                    raise ValueError("summary sample without quantile label")
                q = _number(label_map["quantile"], strict=True, what="quantile")
                if math.isnan(q) or not 0 <= q <= 1:
                    raise ValueError("quantile must be between 0 and 1")
                if value < 0:
                    raise ValueError("quantile values must not be negative")
            elif suffix in ("_count", "_sum") and (math.isnan(value) or value < 0):
                raise ValueError(f"summary {suffix} must be a non-negative number")

    def _check_point(self, fam: Family, p: _Point) -> None:
        les = [le for le, _ in p.buckets]
        if not les or les[-1] != math.inf:
            raise ValueError(f"histogram {fam.name!r} needs a +Inf bucket")
        if any(b <= a for a, b in itertools.pairwise(les)):
            raise ValueError(f"histogram {fam.name!r} buckets are not in increasing le order")
        counts = [c for _, c in p.buckets]
        if any(b < a for a, b in itertools.pairwise(counts)):
            raise ValueError(f"histogram {fam.name!r} bucket counts decrease")
        if (p.count is None) != (p.total is None):
            raise ValueError(f"histogram {fam.name!r} needs both count and sum, or neither")
        if p.count is not None and p.count != counts[-1]:
            raise ValueError(f"histogram {fam.name!r} count differs from its +Inf bucket")
        negative = les[0] < 0
        if p.total is not None:
            if fam.type == "histogram" and negative:
                raise ValueError(f"histogram {fam.name!r} with negative buckets cannot have a sum")
            if p.total < 0 and not negative:
                raise ValueError(f"histogram {fam.name!r} sum is negative")

    def finish(self) -> list[Family]:
        self._close()
        return self.families


def parse_openmetrics(text: str | bytes) -> list[Family]:
    """Parse OpenMetrics text strictly; raises :class:`TextParseError` naming the first bad line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise TextParseError("OpenMetrics text must be UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[-1] != "# EOF":
        raise TextParseError("OpenMetrics text must end with '# EOF'")
    parser = _OpenMetricsParser()
    for number, line in enumerate(lines[:-1], 1):
        try:
            if line == "":
                raise ValueError("empty line")
            if line == "# EOF":
                raise ValueError("text after '# EOF'")
            if line.startswith("#"):
                parser.metadata(line)
            else:
                parser.sample(line)
        except ValueError as exc:
            raise TextParseError(f"line {number}: {exc}") from None
    try:
        return parser.finish()
    except ValueError as exc:
        raise TextParseError(str(exc)) from None


# -- the classic text format ---------------------------------------------------------------------


def _split_value(rest: str, strict: bool = False) -> tuple[float, int | None]:
    tokens = rest.split()
    if not tokens or len(tokens) > 2:
        raise ValueError("expected 'value [timestamp]' after the series")
    value = _number(tokens[0], strict)
    ts = None
    if len(tokens) == 2:
        try:
            ts = int(tokens[1])
        except ValueError:
            raise ValueError(f"invalid timestamp {tokens[1]!r}: milliseconds as an integer") from None
        _check_ms(ts, tokens[1])
    return value, ts


def _check_ms(ts: int, text: str) -> None:
    if not -(2**63) <= ts < 2**63:
        raise ValueError(f"timestamp {text} is out of range (int64 milliseconds)")


def _series_text(line: str) -> tuple[str, str]:
    """Split a sample line into the series part (``name{...}``) and the rest."""
    brace = line.find("{")
    if brace >= 0:
        close = line.rfind("}")
        if close < brace:
            raise ValueError("unterminated label set")
        return line[: close + 1], line[close + 1 :]
    m = _SPACES.search(line)
    if not m:
        raise ValueError("expected a value after the metric name")
    return line[: m.start()], line[m.start() :]


def _parse_series(series: str) -> tuple[str, list[tuple[str, str]]]:
    m = _NAME.match(series)
    if not m:
        raise ValueError("invalid metric name")
    pos = m.end()
    while pos < len(series) and series[pos] in " \t":
        pos += 1
    labels: list[tuple[str, str]] = []
    if pos < len(series):
        if series[pos] != "{":
            raise ValueError(f"unexpected {series[pos]!r} after the metric name")
        labels, end = _labels(series, pos, strict=False)
        if series[end:].strip():
            raise ValueError("unexpected text after the label set")
    return m.group(), labels


def _classic_lines(text: str) -> Iterator[tuple[int, str, str, str]]:
    """(line number, kind, a, b): kind "sample" (series text, rest), "HELP"/"TYPE" (name, text)."""
    for number, raw in _lines(text):
        line = raw.strip() if raw[:1] in (" ", "\t") or raw[-1:] in (" ", "\t", "\r") else raw
        if not line:
            continue
        if line[0] == "#":
            parts = line[1:].split(None, 2)
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                yield number, parts[0], parts[1], parts[2] if len(parts) > 2 else ""
            continue
        try:
            series, rest = _series_text(line)
        except ValueError as exc:
            raise TextParseError(f"line {number}: {exc}") from None
        yield number, "sample", series, rest


def parse_prometheus_text(text: str | bytes) -> list[Family]:
    """Parse the classic Prometheus text format (timestamps in milliseconds)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    families: dict[str, Family] = {}
    order: list[Family] = []
    for number, kind, a, b in _classic_lines(text):
        try:
            if kind == "sample":
                name, labels = _parse_series(a)
                value, ts = _split_value(b)
                fam = families.get(name) or families.get(_base_name(name, families))
                if fam is None:
                    fam = families[name] = Family(name)
                    order.append(fam)
                fam.samples.append(Sample(name, labels, value, ts))
            else:
                if not _NAME.fullmatch(a):
                    raise ValueError(f"invalid metric name {a!r} in # {kind}")
                fam = families.get(a)
                if fam is None:
                    fam = families[a] = Family(a)
                    order.append(fam)
                if kind == "HELP":
                    fam.help = b.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
                else:
                    if b not in PROMETHEUS_TYPES:
                        raise ValueError(f"invalid metric type {b!r}")
                    fam.type = "unknown" if b == "untyped" else b
        except ValueError as exc:
            raise TextParseError(f"line {number}: {exc}") from None
    return order


def _base_name(name: str, families: dict[str, Family]) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return name


# -- into storage --------------------------------------------------------------------------------


def text_to_batch(body: bytes, content_type: str, now_ms: int, reader: LineReader | None = None) -> MetricBatch:
    """The samples of an exposition body, for import.

    ``application/openmetrics-text`` is parsed strictly and its timestamps are seconds; anything
    else is the classic format with millisecond timestamps. Samples without a timestamp get
    ``now_ms``. A malformed body raises :class:`TextParseError` and nothing is stored; series
    with invalid names are recorded as the batch's errors. ``reader`` is tried first on a
    classic body (the server passes the embedded engine's, :mod:`._prom_sql`); the numpy reader
    and then the line parser take what it declines.
    """
    if "openmetrics" in content_type.lower():
        batch = MetricBatch()
        for fam in parse_openmetrics(body):
            if fam.typed or fam.help is not None or fam.unit:
                batch.add_metadata(fam.name, fam.type, fam.help or "", fam.unit or "")
            for s in fam.samples:
                ts = now_ms if s.timestamp is None else _seconds_to_ms(s.timestamp)
                if ts is None:
                    batch.reject(f"timestamp {s.timestamp} of {s.name} is out of range")
                    continue
                batch.add([("__name__", s.name), *s.labels], ts, s.value)
        return batch
    fast = _classic_fast(body, reader)
    if fast is not None:
        return fast
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise TextParseError("exposition text must be UTF-8") from None
    return _classic_to_batch(text, now_ms)


def _classic_fast(body: bytes, reader: LineReader | None = None) -> MetricBatch | None:
    """The batch of a body in the common backfill shape, read column-wise (see :mod:`._prom_fast`).

    None when the body is not in that shape or anything in it is wrong: the line parser then
    reads it again and names the line at fault, so the two roads never disagree on what is valid.
    """
    lines = reader(body) if reader is not None else None
    if lines is None:
        lines = read_classic(body, lambda text: _number(text, False))
    if lines is None:
        return None
    try:
        types: dict[str, str] = {}
        helps: dict[str, str] = {}
        for raw in lines.comments:
            parts = raw.decode("utf-8")[1:].split(None, 2)
            if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
                continue
            kind, name, rest = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
            if not _NAME.fullmatch(name):
                return None
            if kind == "TYPE":
                if rest not in PROMETHEUS_TYPES:
                    return None
                types[name] = "unknown" if rest == "untyped" else rest
            else:
                helps[name] = rest.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
        refs: list[SeriesRef | str] = []
        for key in lines.keys:
            name, labels = _parse_series(key.decode("utf-8"))
            try:
                refs.append(series_ref([("__name__", name), *labels]))
            except ValueError as exc:
                refs.append(str(exc))
    except (ValueError, UnicodeDecodeError):
        return None
    batch = MetricBatch()
    # Series the store refuses (an invalid label name...) are rejected with their samples, as
    # the line parser does; their indexes are remapped out of the batch's series numbering.
    remap = np.full(len(refs), -1, dtype=np.int64)
    for i, ref in enumerate(refs):
        if isinstance(ref, str):
            continue
        remap[i] = batch.index(ref)
    series = remap[lines.series]
    bad = series < 0
    if bad.any():
        counts = np.bincount(lines.series[bad], minlength=len(refs))
        for i, ref in enumerate(refs):
            if isinstance(ref, str) and counts[i]:
                batch.reject(ref, int(counts[i]))
        keep = ~bad
        series, ts, vals = series[keep], lines.timestamps[keep], lines.values[keep]
    else:
        ts, vals = lines.timestamps, lines.values
    batch.set_columns(series, ts, vals)
    for name in {**types, **helps}:
        batch.add_metadata(name, types.get(name, "unknown"), helps.get(name, ""))
    return batch


def _seconds_to_ms(seconds: float) -> int | None:
    ms = round(seconds * 1000)
    return ms if -(2**63) <= ms < 2**63 else None


def _classic_to_batch(text: str, now_ms: int) -> MetricBatch:
    batch = MetricBatch()
    refs: dict[str, SeriesRef | str] = {}
    add_series, add_ts, add_value = batch.series.append, batch.timestamps.append, batch.values.append
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for number, kind, a, b in _classic_lines(text):
        try:
            if kind == "sample":
                ref = refs.get(a)
                if ref is None:
                    name, labels = _parse_series(a)
                    try:
                        ref = series_ref([("__name__", name), *labels])
                    except ValueError as exc:
                        ref = str(exc)
                    refs[a] = ref
                tokens = b.split()
                if len(tokens) == 2:
                    value = _number(tokens[0], False)
                    try:
                        ts = int(tokens[1])
                    except ValueError:
                        raise ValueError(f"invalid timestamp {tokens[1]!r}: milliseconds as an integer") from None
                    _check_ms(ts, tokens[1])
                else:
                    value, ts_opt = _split_value(b)
                    ts = now_ms if ts_opt is None else ts_opt
                if isinstance(ref, str):
                    batch.reject(ref)
                    continue
                add_series(batch.index(ref))
                add_ts(ts)
                add_value(value)
            elif not _NAME.fullmatch(a):
                raise ValueError(f"invalid metric name {a!r} in # {kind}")
            elif kind == "TYPE":
                if b not in PROMETHEUS_TYPES:
                    raise ValueError(f"invalid metric type {b!r}")
                types[a] = "unknown" if b == "untyped" else b
            else:
                helps[a] = b.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
        except ValueError as exc:
            raise TextParseError(f"line {number}: {exc}") from None
    for name in {**types, **helps}:
        batch.add_metadata(name, types.get(name, "unknown"), helps.get(name, ""))
    return batch
