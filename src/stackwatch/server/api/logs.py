"""Log search, histogram and live tail."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from stackwatch.errors import BadRequest
from stackwatch.query.logql import compile_query
from stackwatch.query.timerange import parse_duration, time_range
from stackwatch.server.deps import check_project, runtime, viewer
from stackwatch.server.responses import JSONResponse

router = APIRouter(prefix="/api/v1/logs", tags=["logs"])

MAX_LIMIT = 10_000


def project_slug(request: Request, who: Any) -> str:
    """The project searched: ``?project=slug`` or the default one; an unknown one is a 404.

    Not an empty answer: at 3 a.m. "0 results" for a mistyped project reads as "no errors".
    """
    slug = request.query_params.get("project") or "default"
    if slug != "default":
        check_project(request, slug)
    return slug



@router.get("/search")
def search(
    request: Request,
    q: str = "",
    start: str | None = None,
    end: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    who: Any = Depends(viewer),
) -> JSONResponse:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    compiled = compile_query(q)
    start_ns, end_ns = time_range(start, end)
    rt = runtime(request)
    page = rt.logs.search(
        project_slug(request, who), compiled.where, compiled.params, start_ns, end_ns, limit=limit, cursor=cursor
    )
    return JSONResponse({"total": page.total, "hits": page.hits, "next_cursor": page.next_cursor})


def auto_interval(span_ns: int, buckets: int = 120) -> int:
    """A round interval giving about ``buckets`` bars, as Kibana picks one."""
    steps = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    target = span_ns / 1e9 / buckets
    for step in steps:
        if step >= target:
            return step
    return 86400 * max(1, round(target / 86400))


@router.get("/histogram")
async def histogram(
    request: Request,
    q: str = "",
    start: str | None = None,
    end: str | None = None,
    interval: str | None = None,
    by: str | None = None,
    who: Any = Depends(viewer),
) -> JSONResponse:
    compiled = compile_query(q)
    start_ns, end_ns = time_range(start, end)
    interval_s = parse_duration(interval) // 1_000_000_000 if interval else auto_interval(end_ns - start_ns)
    if interval_s < 1:
        raise BadRequest("interval must be at least 1s")
    if (end_ns - start_ns) / 1e9 / interval_s > 20_000:
        raise BadRequest("too many buckets: use a larger interval or a shorter range")
    if by not in (None, "", "level"):
        raise BadRequest("by must be 'level' or empty")
    rt = runtime(request)
    args = (project_slug(request, who), compiled.where, compiled.params, start_ns, end_ns, interval_s)
    options = {"by_level": by == "level", "columns": compiled.columns}
    # From the in-memory counts on the event loop when they answer alone; else a worker thread.
    buckets = rt.logs.histogram_from_memory(*args, **options)
    if buckets is None:
        buckets = await run_in_threadpool(functools.partial(rt.logs.histogram, *args, **options))
    return JSONResponse({"interval": interval_s, "buckets": buckets})


#: Lines per read of the live tail; a burst of more is read in several.
TAIL_PAGE = 1000


@router.get("/tail")
async def tail(request: Request, q: str = "", who: Any = Depends(viewer)) -> StreamingResponse:
    """Server-sent events: each new matching line as one ``data:`` JSON message."""
    compiled = compile_query(q)
    rt = runtime(request)
    project = project_slug(request, who)
    poll_s = float(request.query_params.get("poll", "0.5"))

    async def events() -> AsyncIterator[bytes]:
        watermark = rt.batcher.stored_watermark_ns()
        yield b": connected\n\n"
        last_ping = time.monotonic()
        while not await request.is_disconnected():
            await asyncio.sleep(poll_s)
            new_mark = rt.batcher.stored_watermark_ns()
            if new_mark <= watermark:
                continue
            # Every line that arrived up to new_mark, in pages: a burst of more lines than a
            # page between two polls is streamed whole (a single read of 1,000 dropped the rest).
            after_line: tuple[int, int] | None = None
            while True:
                hits = await run_in_threadpool(
                    rt.logs.newer_than, project, compiled.where, compiled.params, watermark, TAIL_PAGE, new_mark,
                    after_line,
                )
                for hit in hits:
                    yield b"data: " + orjson.dumps(hit) + b"\n\n"
                if len(hits) < TAIL_PAGE:
                    break
                after_line = (hits[-1]["observed_timestamp_ns"], hits[-1]["timestamp_ns"])
            watermark = new_mark
            if time.monotonic() - last_ping > 15:
                last_ping = time.monotonic()
                yield b": ping\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
