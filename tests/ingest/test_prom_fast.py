"""The import readers (numpy, and the embedded engine's SQL) must agree with the line parser
on every body they accept."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.ingest._prom_fast import FastLines
from stackwatch.ingest._prom_sql import SqlLineReader
from stackwatch.ingest.prom_text import TextParseError, _classic_fast, _classic_to_batch, text_to_batch
from stackwatch.storage.executor import ChdbExecutor

_names = st.sampled_from(["up", "http_requests_total", "a:b_c", "bad-name", "9x", "x y"])
_label_names = st.sampled_from(["job", "route", "le", "__name__", "1bad", "code"])
_label_values = st.sampled_from(["api", "/v1/x y", 'q"uo\\"te', "", "0.5", "+Inf", "a}b", "ü"])
_values = st.one_of(
    st.integers(-(10**17), 10**17).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(allow_nan=False, allow_infinity=False, places=6).map(str),
    st.sampled_from(["NaN", "nan", "+Inf", "-Inf", "inf", "-nan", "1e3", "1E-7", ".5", "5.", "-0", "+1", "1_0",
                     "0x10", "1.2.3", "", "-", "e5", "12345678901234567", "0.0000000000000001", "Infinity",
                     "infinity", "+nan", "INF", "1e400", "-1e-400", "00.5"]),
)
_timestamps = st.one_of(
    st.integers(-(10**13), 10**15).map(str),
    st.sampled_from(["", "1e3", "+5", "-", "99999999999999999999", "12.5", "0", "-0", "007", "1_000",
                     "-9223372036854775808", "9223372036854775808"]),
)


@st.composite
def _line(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["# HELP up The up metric", "# TYPE up gauge", "# TYPE x untyped",
                                     "# TYPE bad-name counter", "# TYPE up nonsense", "# just a comment", "",
                                     " up 1 2", "up 1 2 ", "up\t1 2", "up 1\r"]))
    name = draw(_names)
    labels = draw(st.lists(st.tuples(_label_names, _label_values), max_size=3))
    series = name
    if labels or draw(st.booleans()):
        series += "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"
    value = draw(_values)
    ts = draw(_timestamps)
    return f"{series} {value} {ts}" if ts else f"{series} {value}"


def _same(fast: object, slow: object) -> None:
    rf, cf, tf, vf = fast.grouped()  # type: ignore[attr-defined]
    rs, cs, ts_, vs = slow.grouped()  # type: ignore[attr-defined]
    assert rf == rs
    assert cf.tolist() == cs.tolist() and tf.tolist() == ts_.tolist()
    assert vf.view(np.uint64).tolist() == vs.view(np.uint64).tolist()  # bit for bit, NaN payloads included
    assert fast.metadata == slow.metadata  # type: ignore[attr-defined]
    assert fast.rejected_samples == slow.rejected_samples  # type: ignore[attr-defined]


def test_fast_reader_takes_a_backfill_body_and_rounds_like_float() -> None:
    values = ["0.1", "-2.675", "123456789012345", "0.000123", "-0", "1e-3", "NaN", "+Inf", "7.", ".25",
              "3.141592653589793", "999999999999999.9"]
    body = "# TYPE m gauge\n# HELP m A gauge.\n" + "".join(
        f'm{{i="{i}",path="/a b"}} {v} {1_700_000_000_000 + i}\n' for i, v in enumerate(values))
    fast = _classic_fast(body.encode())
    assert fast is not None
    refs, counts, _ts, vals = fast.grouped()
    assert len(refs) == len(values) and counts.tolist() == [1] * len(values)
    got = {dict(r.labels)["i"]: v for r, v in zip(refs, vals.tolist(), strict=True)}
    for i, v in enumerate(values):
        want = float(v)
        assert (math.isnan(got[str(i)]) and math.isnan(want)) or got[str(i)] == want
        assert math.copysign(1, got[str(i)]) == math.copysign(1, want)
    assert fast.metadata == {"m": ("gauge", "A gauge.", "")}
    slow = _classic_to_batch(body, 0)
    _same(fast, slow)


@pytest.mark.parametrize("body", [
    b"up 1\n",  # no timestamp: the line parser stamps it with the arrival time
    b"up 1 1000\nup{a=\"b\"} 2\n",
    b"up\t1 1000\n",
    b"up 1 1e3\n",
])
def test_bodies_outside_the_common_shape_take_the_line_parser(body: bytes) -> None:
    assert _classic_fast(body) is None
    if b"1e3" in body:
        with pytest.raises(TextParseError, match="line 1"):
            text_to_batch(body, "text/plain", 5)
    else:
        batch = text_to_batch(body, "text/plain", 5)
        assert batch.sample_count == body.count(b"\n")


def test_a_series_the_store_refuses_rejects_its_samples_only() -> None:
    body = b'ok{a="1"} 1 1000\nbad{__name__="x"} 2 1000\nbad{__name__="x"} 3 2000\n'
    fast = _classic_fast(body)
    assert fast is not None
    assert fast.sample_count == 1 and fast.rejected_samples == 2
    assert "duplicate label name" in fast.errors[0] and fast.refs[0].name == "ok"


class _Recording:
    """The SQL reader, noting whether it answered (so a test knows which road a body took)."""

    def __init__(self, reader: SqlLineReader) -> None:
        self.reader = reader
        self.answered = False

    def __call__(self, body: bytes) -> FastLines | None:
        out = self.reader(body)
        self.answered = out is not None
        return out


@pytest.fixture(scope="module")
def sql_reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlLineReader]:
    ex = ChdbExecutor(tmp_path_factory.getbasetemp() / "chdb")
    yield SqlLineReader(ex, min_bytes=0)  # small bodies too (the server leaves those to numpy)
    ex.close()


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(_line(), min_size=1, max_size=12), trailing_newline=st.booleans())
def test_fast_readers_agree_with_the_line_parser(
    sql_reader: SqlLineReader, lines: list[str], trailing_newline: bool
) -> None:
    """The numpy reader alone, then the engine's SQL reader first (the server's order)."""
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    body = text.encode()
    numpy_read = _classic_fast(body)
    sql_read = _classic_fast(body, sql_reader)
    try:
        slow = _classic_to_batch(text, 0)
    except TextParseError:
        assert numpy_read is None and sql_read is None, "a body the line parser refuses was read"
        return
    for fast in (numpy_read, sql_read):
        if fast is not None:
            _same(fast, slow)


def test_sql_reader_takes_a_backfill_body_bit_for_bit(sql_reader: SqlLineReader) -> None:
    values = ["0.1", "-2.675", "123456789012345", "0.000123", "-0", "1e-3", "NaN", "+Inf", "-inf", "7.", ".25",
              "3.141592653589793", "999999999999999.9", "1.7976931348623157e308", "4.9e-324", "0.30000000000000004"]
    body = "# TYPE m gauge\n# HELP m A gauge.\n\n" + "".join(
        f'm{{i="{i}",path="/a b"}} {v} {1_700_000_000_000 + i}\n' for i, v in enumerate(values))
    reader = _Recording(sql_reader)
    fast = _classic_fast(body.encode(), reader)
    assert reader.answered and fast is not None
    assert fast.metadata == {"m": ("gauge", "A gauge.", "")}
    _same(fast, _classic_to_batch(body, 0))


def test_sql_reader_keeps_the_last_of_equal_timestamps(sql_reader: SqlLineReader) -> None:
    # Interleaved series with repeated timestamps: within a series the body's order is kept.
    lines = [f'r{{k="{i % 3}"}} {i} {1000 * (i // 6)}' for i in range(60)]
    body = ("\n".join(lines)).encode()  # no final newline
    reader = _Recording(sql_reader)
    fast = _classic_fast(body, reader)
    assert reader.answered and fast is not None
    _same(fast, _classic_to_batch(body.decode(), 0))
    _refs, counts, _ts, vals = fast.grouped()
    assert counts.tolist() == [20, 20, 20]
    assert vals[:4].tolist() == [0.0, 3.0, 6.0, 9.0]  # series k="0": lines 0, 3, 6, 9 in order


@pytest.mark.parametrize("body", [
    b"up 1\n",  # no timestamp
    b"up 1 +5\n",  # a timestamp the engine would read but not in its canonical spelling
    b"up infinity 5\n",  # the engine reads it, Prometheus's grammar does not
    b"up 1e400 5\n",  # overflows to +Inf: valid, but left to the other readers
    b"up 1 5\r\n",
])
def test_sql_reader_declines_what_it_cannot_vouch_for(sql_reader: SqlLineReader, body: bytes) -> None:
    assert sql_reader(body) is None


def test_sql_reader_on_comments_only(sql_reader: SqlLineReader) -> None:
    lines = sql_reader(b"# TYPE up gauge\n\n# HELP up Up.\n")
    assert lines is not None and lines.keys == [] and lines.series.size == 0
    assert lines.comments == [b"# TYPE up gauge", b"# HELP up Up."]


def test_sql_reader_leaves_small_bodies_to_numpy(sql_reader: SqlLineReader) -> None:
    body = b"".join(b'm{i="%d"} %d %d\n' % (i % 7, i, 1000 + i) for i in range(50))
    assert SqlLineReader(sql_reader.ex, min_bytes=len(body) + 1)(body) is None
    lines = SqlLineReader(sql_reader.ex, min_bytes=len(body))(body)
    assert lines is not None and len(lines.keys) == 7 and lines.series.size == 50
