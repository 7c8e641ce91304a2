"""Content-Encoding and Content-Type handling shared by the ingest decoders."""

from __future__ import annotations

import gc
import gzip
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from stackwatch.ingest._body import gc_paused, parse_content_type, read_body

try:  # the standard library has zstd from Python 3.14; before that, the backport
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    zstd = pytest.importorskip("backports.zstd")

PAYLOAD = b'{"message":"hello","level":"info"}\n' * 200


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("encoding", [None, "", "identity", "IDENTITY"])
def test_identity_returns_the_body_untouched(encoding: str | None) -> None:
    assert read_body(PAYLOAD, encoding, 1 << 20) is PAYLOAD


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),
        ("zstd", lambda data: zstd.compress(data)),
    ],
)
def test_each_encoding_round_trips(encoding: str, encode: object) -> None:
    assert read_body(encode(PAYLOAD), encoding, 1 << 20) == PAYLOAD  # type: ignore[operator]


def test_concatenated_gzip_members_and_nul_padding_are_read_like_gunzip() -> None:
    body = gzip.compress(b"first\n") + gzip.compress(b"second\n") + b"\x00" * 8
    assert read_body(body, "gzip", 1024) == b"first\nsecond\n"


def test_concatenated_zstd_frames() -> None:
    body = zstd.compress(b"first\n") + zstd.compress(b"second\n")
    assert read_body(body, "zstd", 1024) == b"first\nsecond\n"


def test_stacked_encodings_are_undone_in_reverse_order() -> None:
    # "Content-Encoding: deflate, gzip" means deflate was applied first, then gzip.
    body = gzip.compress(zlib.compress(PAYLOAD))
    assert read_body(body, "deflate, gzip", 1 << 20) == PAYLOAD
    assert read_body(gzip.compress(PAYLOAD), "identity, gzip", 1 << 20) == PAYLOAD


def test_empty_body_with_an_encoding_is_empty() -> None:
    assert read_body(b"", "gzip", 10) == b""


def test_oversized_wire_body_is_refused_before_decompressing() -> None:
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        read_body(b"x" * 101, "gzip", 100)


def test_exactly_the_limit_is_accepted() -> None:
    assert read_body(gzip.compress(b"a" * 1000), "gzip", 1000) == b"a" * 1000
    with pytest.raises(PayloadTooLarge):
        read_body(gzip.compress(b"a" * 1001), "gzip", 1000)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("zstd", lambda data: zstd.compress(data))],
)
def test_a_decompression_bomb_is_stopped_without_inflating_it(encoding: str, encode: object) -> None:
    bomb = encode(b"\x00" * (200 << 20))  # type: ignore[operator]  # 200 MiB of zeros
    assert len(bomb) < 1 << 20
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="decompressed request body exceeds"):
        read_body(bomb, encoding, 1 << 20)
    # Inflating all 200 MiB would take far longer; we stop right after the first MiB.
    assert time.perf_counter() - started < 0.5


def test_a_bomb_split_over_gzip_members_is_counted_in_total() -> None:
    member = gzip.compress(b"a" * 600)
    with pytest.raises(PayloadTooLarge):
        read_body(member + member, "gzip", 1000)


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (gzip.compress(PAYLOAD)[:-10], "gzip", "invalid gzip body"),
        (b"definitely not gzip", "gzip", "invalid gzip body"),
        (gzip.compress(b"ok") + b"trailing junk", "gzip", "invalid gzip body"),
        (b"\xff\xfe not deflate", "deflate", "invalid deflate body"),
        (zlib.compress(PAYLOAD)[:-3], "deflate", "invalid deflate body"),
        (b"not zstd at all", "zstd", "invalid zstd body"),
        (zstd.compress(PAYLOAD)[:-4], "zstd", "invalid zstd body"),
    ],
)
def test_corrupt_streams_are_bad_requests(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        read_body(body, encoding, 1 << 20)


@pytest.mark.parametrize("encoding", ["br", "snappy", "compress", "gzip, lz4"])
def test_unknown_encodings_are_unsupported_media(encoding: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Encoding"):
        read_body(gzip.compress(b"x"), encoding, 1 << 20)


@given(body=st.binary(max_size=2048), encoding=st.sampled_from(["gzip", "deflate", "zstd", "identity"]))
@settings(max_examples=200, deadline=None)
def test_fuzz_arbitrary_bytes_decode_or_fail_cleanly(body: bytes, encoding: str) -> None:
    try:
        result = read_body(body, encoding, 4096)
    except (BadRequest, PayloadTooLarge, UnsupportedMediaType) as exc:
        assert exc.message
    else:
        assert isinstance(result, bytes)
        assert len(result) <= 4096


@given(data=st.binary(max_size=4096), encoding=st.sampled_from(["gzip", "deflate", "zstd"]))
@settings(max_examples=200, deadline=None)
def test_fuzz_round_trip_and_mutations(data: bytes, encoding: str) -> None:
    encode = {"gzip": gzip.compress, "deflate": zlib.compress, "zstd": zstd.compress}[encoding]
    compressed = encode(data)
    assert read_body(compressed, encoding, 4096) == data
    mutated = bytearray(compressed)
    mutated[len(mutated) // 2] ^= 0x55
    try:
        read_body(bytes(mutated), encoding, 4096)
    except (BadRequest, PayloadTooLarge) as exc:
        assert exc.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ("", {})),
        ("", ("", {})),
        ("application/json", ("application/json", {})),
        ("Application/JSON; charset=UTF-8", ("application/json", {"charset": "UTF-8"})),
        (
            'text/plain; charset="latin-1" ; format=flowed',
            ("text/plain", {"charset": "latin-1", "format": "flowed"}),
        ),
        ("application/x-protobuf;", ("application/x-protobuf", {})),
    ],
)
def test_parse_content_type(header: str | None, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(header) == expected


def test_gc_paused_restores_the_collector_state() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "an application that disabled the GC keeps it disabled"
    finally:
        gc.enable()
