"""A runner for Prometheus's PromQL test-script format (``promqltest``).

It executes ``load`` / ``clear`` / ``eval instant|range`` scripts (format:
``shared/testdata/promql/README.md``) against our :class:`Engine` on a
:class:`MemoryStorage` and reports one :class:`Outcome` per eval block:
``pass``, ``fail`` (with what differed) or ``skip`` (with why).

Not checked, by design: ``expect info|warn|no_info|no_warn`` (the engine emits no
annotations), and Prometheus's extra re-runs of every instant query with ``@``
appended and as a range query. Native-histogram samples (``{{...}}``) are not
loaded; evals that touch such series are skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stackwatch.query.promql import STALE_NAN, Engine, MemoryStorage, PromQLError, Result
from stackwatch.query.promql.storage import is_stale_nan

SKIP_FILES = {
    "native_histograms.test": "native histograms are not supported (float-only storage)",
    "info.test": "info() is experimental",
    "limit.test": "limitk/limit_ratio are experimental",
    "fill-modifier.test": "binop fill modifiers are Prometheus-3-only",
    "duration_expression.test": "duration expressions are Prometheus-3-only",
    "extended_vectors.test": "anchored/smoothed range selectors are Prometheus-3-only",
    "type_and_unit.test": "type-and-unit labels are Prometheus-3-only",
    "start_timestamps.test": "start timestamps are Prometheus-3-only",
}

SKIP_FUNCTIONS = {
    "info": "info() is experimental",
    "limitk": "limitk is experimental",
    "limit_ratio": "limit_ratio is experimental",
    "start_timestamp": "start timestamps are Prometheus-3-only",
    "histogram_count": "native histogram function",
    "histogram_sum": "native histogram function",
    "histogram_avg": "native histogram function",
    "histogram_stddev": "native histogram function",
    "histogram_stdvar": "native histogram function",
    "histogram_fraction": "native histogram function",
    "histogram_quantiles": "histogram_quantiles is experimental",
}

_DUR = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}


def parse_duration_ms(text: str) -> int:
    """Prometheus ``model.ParseDuration`` ("1h30m", "0", "-5m" not allowed)."""
    s = text.strip()
    if s == "0":
        return 0
    pos, total = 0, 0
    for m in _DUR.finditer(s):
        if m.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"bad duration {text!r}")
    return total


_NUM = r"[-+]?(?:[iI]nf|NaN|0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_EXPAND = re.compile(
    rf"^({_NUM})([-+](?:[iI]nf|NaN|0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))x(\d+)$"
)
_REPEAT = re.compile(rf"^({_NUM})x(\d+)$")
_BLANKS = re.compile(r"^_x(\d+)$")


def parse_number(tok: str) -> float:
    t = tok.strip()
    low = t.lower().lstrip("+-")
    if low.startswith("0x"):
        v = float(int(low, 16))
        return -v if t.startswith("-") else v
    return float(t)


Point = float | None  # None: omitted ("_")


def parse_values(text: str) -> tuple[list[Point], bool]:
    """Expand a points specification. Returns (points, has_native_histogram)."""
    out: list[Point] = []
    hist = False
    text = text.strip()
    # Native histograms contain spaces; cut them out first.
    while "{{" in text:
        a = text.index("{{")
        b = text.index("}}", a) + 2
        hist = True
        rest = text[b:]
        m = re.match(r"^x(\d+)", rest) or re.match(r"^[-+]\{\{.*?\}\}x(\d+)", rest)
        count = 1
        if m:
            count = int(m.group(1)) + 1
            rest = rest[m.end() :]
        before = text[:a]
        out.extend(parse_values(before)[0])
        out.extend([None] * count)
        text = rest
    for tok in text.split():
        if tok == "_":
            out.append(None)
        elif tok == "stale":
            out.append(STALE_NAN)
        elif m := _BLANKS.match(tok):
            out.extend([None] * int(m.group(1)))
        elif m := _EXPAND.match(tok):
            k, inc, n = parse_number(m.group(1)), parse_number(m.group(2)), int(m.group(3))
            out.append(k)
            for _ in range(n):
                k += inc
                out.append(k)
        elif m := _REPEAT.match(tok):
            k, n = parse_number(m.group(1)), int(m.group(2))
            out.extend([k] * (n + 1))
        else:
            out.append(parse_number(tok))
    return out, hist


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    q = s[i]
    j = i + 1
    buf = []
    while j < len(s) and s[j] != q:
        if s[j] == "\\" and q != "`" and j + 1 < len(s):
            nxt = s[j + 1]
            buf.append({"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}.get(nxt, "\\" + nxt))
            j += 2
            continue
        buf.append(s[j])
        j += 1
    return "".join(buf), j + 1


def parse_series(line: str) -> tuple[dict[str, str], str]:
    """Split ``metric{a="b"} 1 2 3`` into (labels, points text)."""
    s = line.strip()
    i = 0
    labels: dict[str, str] = {}
    m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:.]*", s)
    if m and not s.startswith("{"):
        labels["__name__"] = m.group(0)
        i = m.end()
    if i < len(s) and s[i] == "{":
        i += 1
        while True:
            while i < len(s) and s[i] in " \t,":
                i += 1
            if s[i] == "}":
                i += 1
                break
            if s[i] in "\"'`":
                name, i = _read_quoted(s, i)
            else:
                m2 = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*").match(s, i)
                if not m2:
                    raise ValueError(f"bad series {line!r}")
                name, i = m2.group(0), m2.end()
            while i < len(s) and s[i] == " ":
                i += 1
            if s[i] == "=":
                i += 1
                while s[i] == " ":
                    i += 1
                value, i = _read_quoted(s, i)
                labels[name] = value
            else:
                labels["__name__"] = name  # {"metric name"} form
    return labels, s[i:]


@dataclass
class Expected:
    labels: dict[str, str]
    points: list[Point]


@dataclass
class EvalBlock:
    line: int
    instant: bool
    expr: str
    at_ms: int = 0
    start_ms: int = 0
    end_ms: int = 0
    step_ms: int = 0
    fail: bool = False
    fail_msg: str | None = None
    fail_regex: str | None = None
    ordered: bool = False
    scalar: float | None = None
    string: str | None = None
    range_vector: tuple[int, int, int] | None = None
    expected: list[Expected] = field(default_factory=list)
    has_histogram: bool = False


@dataclass
class Outcome:
    file: str
    line: int
    expr: str
    status: str  # "pass" | "fail" | "skip"
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.file}:{self.line}"


_EVAL_INSTANT = re.compile(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
_EVAL_RANGE = re.compile(
    r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$"
)
_EXPECT = re.compile(r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$")
_RANGE_VEC = re.compile(r"^expect range vector\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+)$")


def _parse_eval(lines: list[str], i: int) -> tuple[int, EvalBlock]:
    head = lines[i]
    mi, mr = _EVAL_INSTANT.match(head), _EVAL_RANGE.match(head)
    if mi:
        blk = EvalBlock(i + 1, True, mi.group(3), at_ms=parse_duration_ms(mi.group(2) or "0"))
        mod = mi.group(1)
    elif mr:
        blk = EvalBlock(
            i + 1,
            False,
            mr.group(5),
            start_ms=parse_duration_ms(mr.group(2)),
            end_ms=parse_duration_ms(mr.group(3)),
            step_ms=parse_duration_ms(mr.group(4)),
        )
        mod = mr.group(1)
    else:
        raise ValueError(f"line {i + 1}: bad eval {head!r}")
    blk.fail = mod == "fail"
    blk.ordered = mod == "ordered"
    while i + 1 < len(lines):
        i += 1
        ln = lines[i]
        if ln == "":
            i -= 1
            break
        if blk.fail and ln.startswith("expected_fail_message"):
            blk.fail_msg = ln[len("expected_fail_message") :].strip()
            break
        if blk.fail and ln.startswith("expected_fail_regexp"):
            blk.fail_regex = ln[len("expected_fail_regexp") :].strip()
            break
        if m := _RANGE_VEC.match(ln):
            blk.range_vector = tuple(parse_duration_ms(x) for x in m.groups())  # type: ignore[assignment]
            continue
        if ln.startswith("expect string"):
            blk.string, _ = _read_quoted(ln[len("expect string") :].strip(), 0)
            continue
        if ln.split(" ")[0] == "expect":
            m = _EXPECT.match(ln)
            if not m:
                raise ValueError(f"line {i + 1}: bad expect {ln!r}")
            kind, mtype, text = m.groups()
            if kind == "fail":
                blk.fail = True
                if mtype == "msg":
                    blk.fail_msg = text.strip()
                elif mtype == "regex":
                    blk.fail_regex = text.strip()
            elif kind == "ordered":
                blk.ordered = True
            continue
        try:
            blk.scalar = parse_number(ln)
            break
        except ValueError:
            pass
        labels, pts = parse_series(ln)
        points, hist = parse_values(pts)
        blk.has_histogram |= hist
        blk.expected.append(Expected(labels, points))
    return i, blk


def _almost_equal(a: float, b: float, eps: float = 1e-6) -> bool:
    a_st, b_st = bool(is_stale_nan(np.array([a]))[0]), bool(is_stale_nan(np.array([b]))[0])
    if a_st or b_st:
        return a_st and b_st
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    min_normal = 2.2250738585072014e-308
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < min_normal:
        return diff < eps * min_normal
    return diff / min(abs_sum, 1.7976931348623157e308) < eps


def _fmt(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}"


def _compare(blk: EvalBlock, res: Result) -> str | None:
    """None when the result matches the block's expectation, else what differs."""
    if blk.string is not None:
        if res.type != "string" or res.string != blk.string:
            return f"expected string {blk.string!r}, got {res.type} {res.string!r}"
        return None
    if blk.scalar is not None:
        if res.type != "scalar":
            return f"expected scalar {blk.scalar}, got {res.type}"
        if not _almost_equal(blk.scalar, res.scalar):
            return f"expected scalar {blk.scalar}, got {res.scalar}"
        return None
    want = {tuple(sorted(e.labels.items())): e for e in blk.expected}
    got = {tuple(sorted(s.labels.items())): s for s in res.series}
    if res.type == "scalar":
        return f"expected a vector/matrix, got scalar {res.scalar}"
    if len(got) != len(res.series):
        return "result contains duplicate label sets"
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        return (
            f"series differ: missing {[_fmt(dict(k)) for k in missing][:5]}, "
            f"unexpected {[_fmt(dict(k)) for k in extra][:5]}"
        )
    if blk.instant and blk.range_vector is None:
        if res.type != "vector":
            return f"expected an instant vector, got {res.type}"
        for k, e in want.items():
            s = got[k]
            if len(e.points) != 1 or e.points[0] is None:
                return f"bad expectation for {_fmt(e.labels)}"
            if not _almost_equal(e.points[0], float(s.values[0])):
                return f"{_fmt(e.labels)}: expected {e.points[0]}, got {float(s.values[0])}"
        if blk.ordered:
            order_want = [tuple(sorted(e.labels.items())) for e in blk.expected]
            order_got = [tuple(sorted(s.labels.items())) for s in res.series]
            if order_want != order_got:
                return "result order differs"
        return None
    if res.type != "matrix":
        return f"expected a matrix, got {res.type}"
    if blk.range_vector is not None:
        start, end, step = blk.range_vector
    else:
        start, end, step = blk.start_ms, blk.end_ms, blk.step_ms
    for k, e in want.items():
        s = got[k]
        exp_t, exp_v = [], []
        for i, p in enumerate(e.points):
            t = start + i * step
            if t > end:
                return f"{_fmt(e.labels)}: more expected points than steps"
            if p is not None:
                exp_t.append(t)
                exp_v.append(p)
        if len(exp_t) != len(s.timestamps_ms) or any(
            int(a) != b for a, b in zip(s.timestamps_ms, exp_t, strict=False)
        ):
            return (
                f"{_fmt(e.labels)}: expected points at {exp_t[:8]}, got at "
                f"{[int(t) for t in s.timestamps_ms[:8]]}"
            )
        for t, a, b in zip(exp_t, exp_v, s.values, strict=True):
            if not _almost_equal(a, float(b)):
                return f"{_fmt(e.labels)} @{t}: expected {a}, got {float(b)}"
    return None


_NAME_IN_EXPR = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _skip_reason(fname: str, blk: EvalBlock, hist_names: set[str]) -> str | None:
    if fname in SKIP_FILES:
        return SKIP_FILES[fname]
    if blk.has_histogram:
        return "expects native histogram samples"
    idents = set(_NAME_IN_EXPR.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', blk.expr)))
    for fn, why in SKIP_FUNCTIONS.items():
        if re.search(rf"\b{fn}\s*\(", blk.expr):
            return why
    touched = idents & hist_names
    if touched:
        return f"touches native-histogram series {sorted(touched)[0]}"
    if hist_names and re.search(r"\{\s*__name__\s*=~", blk.expr):
        return "regex name matcher over data with native histograms"
    return None


def _histogram_base(name: str) -> set[str]:
    out = {name}
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            out.add(name[: -len(suffix)])
    return out


def run_script(path: Path, delayed_name_removal: bool = True) -> list[Outcome]:
    """Run one ``.test`` file; one Outcome per eval block."""
    fname = path.name
    raw = path.read_text(encoding="utf-8").split("\n")
    lines = ["" if ln.strip().startswith("#") else ln.strip() for ln in raw]
    storage = MemoryStorage()
    engine = Engine(
        storage,
        lookback_delta_ms=300_000,
        max_samples=10_000_000,
        timeout_s=60,
        delayed_name_removal=delayed_name_removal,
    )
    hist_names: set[str] = set()
    outcomes: list[Outcome] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln:
            i += 1
            continue
        cmd = ln.split()[0].lower()
        if cmd == "clear":
            storage.clear()
            hist_names.clear()
            i += 1
            continue
        if cmd.startswith("load"):
            nhcb = cmd == "load_with_nhcb"
            interval = parse_duration_ms(ln.split(None, 1)[1])
            i += 1
            while i < len(lines) and lines[i]:
                if fname in SKIP_FILES:  # may use syntax we do not parse; nothing runs anyway
                    i += 1
                    continue
                labels, pts = parse_series(lines[i])
                points, hist = parse_values(pts)
                name = labels.get("__name__", "")
                if hist:
                    hist_names.add(name)
                if nhcb:
                    hist_names |= _histogram_base(name) - {name}
                ts = [k * interval for k, p in enumerate(points) if p is not None]
                vals = [p for p in points if p is not None]
                storage.add_many(labels, ts, vals)
                i += 1
            continue
        if cmd.startswith("eval"):
            i, blk = _parse_eval(lines, i)
            i += 1
            outcomes.append(_run_block(engine, fname, blk, hist_names))
            continue
        raise ValueError(f"{fname}:{i + 1}: unknown command {ln!r}")
    return outcomes


def _run_block(engine: Engine, fname: str, blk: EvalBlock, hist_names: set[str]) -> Outcome:
    why = _skip_reason(fname, blk, hist_names)
    if why:
        return Outcome(fname, blk.line, blk.expr, "skip", why)
    try:
        if blk.instant:
            if blk.range_vector is not None:
                res = engine.instant(blk.expr, blk.range_vector[1])
            else:
                res = engine.instant(blk.expr, blk.at_ms)
        else:
            res = engine.range(blk.expr, blk.start_ms, blk.end_ms, blk.step_ms)
    except PromQLError as exc:
        msg = str(exc)
        if not blk.fail:
            if type(exc).__name__ == "ParseError" and not msg.startswith(("unsupported", "could not")):
                return Outcome(fname, blk.line, blk.expr, "skip", f"promql-parser rejects it: {msg[:120]}")
            return Outcome(fname, blk.line, blk.expr, "fail", f"unexpected error: {msg[:300]}")
        if blk.fail_msg is not None and msg != blk.fail_msg.strip('"'):
            return Outcome(fname, blk.line, blk.expr, "fail", f"error {msg!r} != expected {blk.fail_msg!r}")
        if blk.fail_regex is not None and not re.search(blk.fail_regex.strip('"'), msg):
            return Outcome(fname, blk.line, blk.expr, "fail", f"error {msg!r} !~ {blk.fail_regex!r}")
        return Outcome(fname, blk.line, blk.expr, "pass")
    if blk.fail:
        return Outcome(fname, blk.line, blk.expr, "fail", "expected an error, query succeeded")
    diff = _compare(blk, res)
    if diff:
        return Outcome(fname, blk.line, blk.expr, "fail", diff)
    return Outcome(fname, blk.line, blk.expr, "pass")


SHARED = Path(__file__).resolve().parents[4] / "shared" / "testdata" / "promql"
OWN = Path(__file__).resolve().parent


def corpus_files() -> list[tuple[str, Path, bool]]:
    """(name, path, delayed_name_removal) for Prometheus's files, the v2.42.0 ones, and ours."""
    out: list[tuple[str, Path, bool]] = []
    # Prometheus 3's own test engine enables delayed __name__ removal; v2.42 predates it.
    out += [(p.name, p, True) for p in sorted(SHARED.glob("*.test"))]
    out += [(f"v2.42.0/{p.name}", p, False) for p in sorted((SHARED / "v2.42.0").glob("*.test"))]
    out += [(f"own/{p.name}", p, False) for p in sorted(OWN.glob("*.test"))]
    return out


def main() -> None:  # pragma: no cover - a developer tool
    """Print pass/fail/skip per file (``python tests/query/promql/promql_script.py [-v]``)."""
    import sys
    from collections import Counter

    verbose = "-v" in sys.argv
    for name, path, delayed in corpus_files():
        outs = run_script(path, delayed_name_removal=delayed)
        c = Counter(o.status for o in outs)
        print(f"{name:36s} pass={c['pass']:4d} fail={c['fail']:4d} skip={c['skip']:4d}")
        if verbose:
            for o in outs:
                if o.status == "fail":
                    print(f"    {name}:{o.line}: {o.expr[:80]} -> {o.reason[:200]}")


if __name__ == "__main__":
    main()
