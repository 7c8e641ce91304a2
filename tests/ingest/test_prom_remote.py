"""The hand-rolled remote-write codec: round trips, the fast path, bad input, and fuzzing."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackwatch.errors import BadRequest, PayloadTooLarge
from stackwatch.ingest import prom_remote
from stackwatch.ingest.prom_remote import (
    MetricMetadata,
    ProtoError,
    TimeSeries,
    compress,
    decode_to_batch,
    decode_write_request,
    decompress,
    encode_write_request,
    write_request_to_batch,
)
from stackwatch.query.promql import STALE_NAN, is_stale_nan

NOW = 1_767_225_600_123


def _series(name: str, *labels: tuple[str, str], samples: list[tuple[int, float]]) -> TimeSeries:
    return TimeSeries([("__name__", name), *labels], [t for t, _ in samples], [v for _, v in samples])


def _flat(batch: prom_remote.MetricBatch) -> list[tuple[str, tuple[tuple[str, str], ...], int, float]]:
    return [
        (batch.refs[s].name, batch.refs[s].labels, t, v)
        for s, t, v in zip(batch.series, batch.timestamps, batch.values, strict=True)
    ]


def test_round_trip_with_metadata_and_special_values() -> None:
    series = [
        _series("up", ("job", "api"), ("instance", "a:9100"), samples=[(NOW, 1.0), (NOW + 15_000, 0.0)]),
        _series("temp", ("room", "ünïcødé \"quoted\"\n"), samples=[(-5, -1.5), (0, math.inf), (2**62, STALE_NAN)]),
    ]
    meta = [MetricMetadata("counter", "http_requests_total", "Requests.", "")]
    req = decode_write_request(encode_write_request(series, meta))
    assert [ts.labels for ts in req.timeseries] == [sorted(s.labels) for s in series]
    assert req.timeseries[0].timestamps == [NOW, NOW + 15_000]
    assert req.timeseries[1].timestamps == [-5, 0, 2**62]
    assert req.timeseries[1].values[:2] == [-1.5, math.inf]
    assert is_stale_nan(__import__("numpy").array(req.timeseries[1].values)).tolist() == [False, False, True]
    assert req.metadata == meta


def test_snappy_round_trip_and_bomb_header() -> None:
    data = encode_write_request([_series("up", samples=[(NOW, 1.0)])])
    assert decompress(compress(data), 1 << 20) == data
    with pytest.raises(PayloadTooLarge):
        # The block format's header says 1 GiB: refused before anything is inflated.
        decompress(b"\x80\x80\x80\x80\x04" + b"\x00" * 10, 1 << 20)
    with pytest.raises(BadRequest, match="invalid snappy"):
        decompress(b"\x05garbage", 1 << 20)


def test_fast_path_matches_the_full_decoder() -> None:
    series = [
        _series("http_requests_total", ("job", "api"), ("route", f"/r{i}"), samples=[(NOW + i, float(i))])
        for i in range(50)
    ]
    series.append(_series("multi", samples=[(NOW, 1.0), (NOW + 1, 2.0)]))
    series.append(_series("bad-name", samples=[(NOW, 1.0)]))
    data = encode_write_request(series)
    prom_remote._REFS.clear()
    cold = decode_to_batch(data)  # fills the label cache
    warm = decode_to_batch(data)  # steady state: labels from the cache
    reference = write_request_to_batch(decode_write_request(data))
    assert _flat(cold) == _flat(warm) == _flat(reference)
    assert len(warm.refs) == 51
    assert warm.rejected_samples == 1 and "invalid metric name 'bad-name'" in warm.errors[0]


def _bits(batch: prom_remote.MetricBatch) -> list[tuple[int, int, int]]:
    """Samples as (fingerprint, timestamp, value bits): NaN staleness markers compare too."""
    return [
        (batch.refs[int(s)].fingerprint, int(t), struct.unpack("<Q", struct.pack("<d", float(v)))[0])
        for s, t, v in zip(batch.series, batch.timestamps, batch.values, strict=True)
    ]


def test_a_steady_request_is_decoded_in_bulk_and_alike() -> None:
    stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # Prometheus's marker
    series = [
        _series("up", ("job", "api"), ("instance", f"h{i}"), samples=[(NOW + i * 1000, float(i) - 3.5)])
        for i in range(300)
    ]
    series.append(_series("up", ("job", "api"), ("instance", "h7"), samples=[(NOW + 99, stale)]))  # h7 again
    series.append(_series("long_labels", ("k", "v" * 300), samples=[(NOW, 1e300)]))  # a 2-byte length
    data = encode_write_request(series)
    prom_remote._REFS.clear()
    assert prom_remote._decode_steady(data) is None  # series not seen yet: the general decoder
    cold = decode_to_batch(data)
    bulk = prom_remote._decode_steady(data)
    assert bulk is not None and isinstance(bulk.timestamps, np.ndarray)
    reference = write_request_to_batch(decode_write_request(data))
    assert _bits(bulk) == _bits(cold) == _bits(reference)
    assert len(bulk.refs) == 301 and bulk.sample_count == 302
    # Anything else in the request (a second sample, a new series) takes the general decoder.
    extra = encode_write_request([*series, _series("up", ("job", "new"), samples=[(NOW, 1.0)])])
    assert prom_remote._decode_steady(extra) is None
    two = encode_write_request([_series("up", ("job", "api"), ("instance", "h1"), samples=[(NOW, 1.0), (NOW + 1, 2.0)])])
    assert prom_remote._decode_steady(two) is None
    assert _bits(decode_to_batch(two)) == _bits(write_request_to_batch(decode_write_request(two)))


def test_unknown_fields_are_skipped_and_exemplars_ignored() -> None:
    label = b"\x0a\x08__name__\x12\x02up"
    sample = b"\x09" + struct.pack("<d", 2.5) + b"\x10\x05"
    exemplar = b"\x1a\x00"
    unknown = b"\x28\x07" + b"\x35\x01\x02\x03\x04"  # field 5 varint, field 6 fixed32
    ts = b"\x0a" + bytes([len(label)]) + label + b"\x12" + bytes([len(sample)]) + sample + exemplar + unknown
    req = decode_write_request(b"\x0a" + bytes([len(ts)]) + ts + b"\x2a\x03abc")
    assert req.timeseries[0].labels == [("__name__", "up")]
    assert (req.timeseries[0].timestamps, req.timeseries[0].values) == ([5], [2.5])


def test_native_histograms_are_reported_as_rejected() -> None:
    label = b"\x0a\x08__name__\x12\x01h"
    ts = b"\x0a" + bytes([len(label)]) + label + b"\x22\x00"
    batch = decode_to_batch(b"\x0a" + bytes([len(ts)]) + ts)
    assert batch.rejected_samples == 1 and "native histogram" in batch.errors[0]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0a\x05abc", "runs past the end"),
        (b"\x0a", "truncated"),
        (b"\x2b\x00", "wire type 3"),
        (b"\x08\x01", "must be messages"),
        (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint longer than 10 bytes"),
        (b"\x0a\x06\x0a\x04\x0a\x02\xff\xfe", "not valid UTF-8"),
        (b"\x0a\x05\x12\x03\x08\x01\x00", "must be a double"),
        (b"\x0a\x06\x12\x04\x09\x00\x00\x00", "truncated"),
        (b"\x00\x01", "field number 0"),
    ],
)
def test_malformed_input_is_a_clear_400(data: bytes, reason: str) -> None:
    with pytest.raises(ProtoError, match=reason):
        decode_write_request(data)
    with pytest.raises(ProtoError):
        decode_to_batch(data)
    assert ProtoError.status_code == 400


_label_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_series_strategy = st.builds(
    lambda name, labels, samples: TimeSeries(
        [("__name__", name), *sorted(labels.items())], [t for t, _ in samples], [v for _, v in samples]
    ),
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,15}", fullmatch=True),
    st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True).filter(lambda k: k != "__name__"),
                    _label_text.filter(bool), max_size=5),
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False)), max_size=5),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series_strategy, max_size=8))
def test_property_round_trip(series: list[TimeSeries]) -> None:
    data = encode_write_request(series)
    req = decode_write_request(data)
    assert [(s.labels, s.timestamps, s.values) for s in req.timeseries] == [
        (sorted(s.labels), s.timestamps, s.values) for s in series  # the encoder sorts labels
    ]
    batch = decode_to_batch(data)
    assert batch.sample_count == sum(len(s.timestamps) for s in series)
    assert _flat(batch) == _flat(write_request_to_batch(req))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_crash(data: bytes) -> None:
    for decode in (decode_write_request, decode_to_batch):
        try:
            decode(data)
        except ProtoError:
            pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series_strategy, min_size=1, max_size=4), st.data())
def test_fuzz_mutated_requests_never_crash(series: list[TimeSeries], data: st.DataObject) -> None:
    raw = bytearray(encode_write_request(series))
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for decode in (decode_write_request, decode_to_batch):
        try:
            decode(bytes(raw[:cut]))
        except ProtoError:
            pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series_strategy, min_size=1, max_size=6), st.data())
def test_fuzz_the_bulk_path_agrees_with_the_full_decoder(series: list[TimeSeries], data: st.DataObject) -> None:
    one = [TimeSeries(s.labels, [NOW + data.draw(st.integers(0, 10**9))], [data.draw(st.floats())]) for s in series]
    raw = encode_write_request(one)
    try:
        decode_to_batch(raw)  # warms the label cache
    except ProtoError:
        return
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 3))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    try:
        reference = write_request_to_batch(decode_write_request(bytes(mutated)))
    except ProtoError:
        with pytest.raises(ProtoError):
            decode_to_batch(bytes(mutated))
        return
    assert _bits(decode_to_batch(bytes(mutated))) == _bits(reference)


def test_tail_bytes_inside_a_label_do_not_fool_the_bulk_framing() -> None:
    # A label value holding the bytes of a one-sample tail (12 10 09 <8> 10 <5 bytes >= 0x80>
    # <a byte < 0x80>, spelt in UTF-8) is a stray candidate: the chain check refuses it and the
    # general decoder answers, with the same samples.
    fake = "\x12\x10\x09abcdefgh\x10\u0400\u0800" + "0"
    assert fake.encode()[12:17] == b"\xd0\x80\xe0\xa0\x80"
    series = [_series("up", ("job", "api"), ("note", fake), samples=[(NOW, 1.0)]),
              # ... and one followed by what looks like the next series' tag and length
              _series("up", ("job", "api"), ("note", "x" + fake + "\n\x05y"), samples=[(NOW + 5, 2.0)]),
              *[_series("up", ("instance", f"h{i}"), samples=[(NOW + i, float(i))]) for i in range(5)]]
    data = encode_write_request(series)
    prom_remote._REFS.clear()
    reference = write_request_to_batch(decode_write_request(data))
    assert _bits(decode_to_batch(data)) == _bits(reference)  # fills the label cache
    assert prom_remote._frame_steady(data) is None
    assert prom_remote._frame_steady(encode_write_request(series[1:])) is None
    assert _bits(decode_to_batch(data)) == _bits(reference)
    # Without the stray bytes the same request is framed in bulk.
    plain = encode_write_request(series[2:])
    decode_to_batch(plain)
    framed = prom_remote._frame_steady(plain)
    assert framed is not None and len(framed[0]) == 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"\x0a", b"\x12\x10\x09", b"\x10\x80\x80\x80\x80\x80\x01", b"\x80", b"\x16",
                                 b"\x0a\x16", b"\x0a\x90\x01", b"ab"]), max_size=40), st.binary(max_size=20))
def test_fuzz_the_bulk_framing_never_crashes(pieces: list[bytes], tail: bytes) -> None:
    data = b"".join(pieces) + tail
    framed = prom_remote._frame_steady(data)
    if framed is not None:
        labels, tails = framed
        assert tails[-1] + 18 == len(data) and (labels < tails).all()
