"""NDJSON push: one JSON object per line, a JSON array of objects, or plain-text lines.

The decoders return *raw events* (see :mod:`stackwatch.model.logs`): the parsed objects exactly
as sent. Mapping ``msg``/``message``, ``lvl``/``level``, ``@timestamp`` and flattening nested
objects is the pipeline's job, done once per batch, so here a line costs one ``orjson.loads``.

Which decoder applies is chosen by :func:`decode_ndjson` from the request's ``Content-Type``:

==============================================================  =============================
``application/x-ndjson``, ``application/jsonlines``, none ...   one object per line
``application/json``                                            an array of objects, one
                                                                object, or (as many shippers
                                                                label NDJSON so) lines
``text/plain``                                                  each line -> ``{"message": line}``
==============================================================  =============================
"""

from __future__ import annotations

from typing import Any

import orjson

from stackwatch.errors import BadRequest, UnsupportedMediaType
from stackwatch.ingest._body import gc_paused, parse_content_type

__all__ = ["decode_json", "decode_ndjson", "decode_text_lines"]

_NDJSON_TYPES = frozenset(
    {
        "",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonlines",
        "application/x-jsonlines",
        "application/json-seq",
        "application/stream+json",
        "application/x-json-stream",
    }
)
_JSON_TYPES = frozenset({"application/json", "text/json"})
_TEXT_TYPES = frozenset({"text/plain"})


_UTF8_BOM = b"\xef\xbb\xbf"


def decode_ndjson(body: bytes, content_type: str | None = None) -> list[dict[str, Any]]:
    """Decode a log push body into raw events, choosing the format from ``content_type``.

    Without a content type the body is read as NDJSON: one JSON object per line, blank lines
    skipped, ``\\r\\n`` line ends accepted. A line that is not valid JSON, or valid JSON that is
    not an object, raises :class:`BadRequest` naming its 1-based line number, so the client
    learns which line to fix. An unknown content type raises :class:`UnsupportedMediaType`.
    """
    media_type, params = parse_content_type(content_type)
    if body[:3] == _UTF8_BOM:  # what Windows editors and PowerShell write first: not content
        body = body[3:]
    if media_type in _NDJSON_TYPES:
        return _decode_lines(body)
    if media_type in _JSON_TYPES:
        return decode_json(body)
    if media_type in _TEXT_TYPES:
        return decode_text_lines(body, params.get("charset"))
    raise UnsupportedMediaType(
        f"unsupported Content-Type {media_type!r} for log push; use application/x-ndjson, "
        "application/json or text/plain"
    )


def _decode_lines(body: bytes) -> list[dict[str, Any]]:
    lines = body.split(b"\n")
    loads = orjson.loads
    try:
        with gc_paused():
            # orjson treats a trailing "\r" as whitespace, so CRLF needs no extra work.
            events = [loads(line) for line in lines if line and not line.isspace()]
    except orjson.JSONDecodeError:
        _raise_for_bad_line(lines)
        raise  # pragma: no cover - _raise_for_bad_line always raises here
    # One C-level pass instead of an isinstance() per event; only a failure walks the lines.
    if events and set(map(type, events)) != {dict}:
        _raise_for_non_object(lines)
    return events


def _raise_for_bad_line(lines: list[bytes]) -> None:
    for number, line in enumerate(lines, 1):
        if not line or line.isspace():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"line {number}: invalid JSON: {exc}") from None


def _raise_for_non_object(lines: list[bytes]) -> None:
    for number, line in enumerate(lines, 1):
        if not line or line.isspace():
            continue
        value = orjson.loads(line)
        if type(value) is not dict:
            raise BadRequest(f"line {number}: expected a JSON object, got {_json_type(value)}")


def decode_json(body: bytes) -> list[dict[str, Any]]:
    """Decode an ``application/json`` body: an array of objects or a single object.

    Many shippers send NDJSON labelled ``application/json``; a body that is not one JSON
    document is therefore retried as NDJSON, and its errors name the offending line.
    An array element that is not an object raises :class:`BadRequest` naming its index.
    """
    if not body.strip():
        return []
    try:
        with gc_paused():
            value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _decode_lines(body)
    if type(value) is dict:
        return [value]
    if type(value) is not list:
        raise BadRequest(f"expected a JSON object or an array of objects, got {_json_type(value)}")
    if value and set(map(type, value)) != {dict}:
        for index, item in enumerate(value):
            if type(item) is not dict:
                raise BadRequest(f"array element {index}: expected a JSON object, got {_json_type(item)}")
    return value


def decode_text_lines(body: bytes, charset: str | None = None) -> list[dict[str, Any]]:
    """Turn each non-blank line of a ``text/plain`` body into ``{"message": line}``.

    The pipeline parses access-log and other formats out of ``message`` later. Bytes that are
    not valid in ``charset`` (UTF-8 by default) become U+FFFD rather than failing the request:
    a log line with one bad byte is still worth keeping. An unknown charset raises
    :class:`UnsupportedMediaType`.
    """
    encoding = charset or "utf-8"
    try:
        # bytes.decode() rejects non-text codecs (base64, rot13) with LookupError and codecs
        # that cannot replace (idna) with UnicodeError; to the client both are a bad charset.
        text = body.decode(encoding, errors="replace")
    except (LookupError, UnicodeError):
        raise UnsupportedMediaType(f"unsupported charset {encoding!r}") from None
    with gc_paused():
        return [
            {"message": line.removesuffix("\r")} for line in text.split("\n") if line and not line.isspace()
        ]


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
