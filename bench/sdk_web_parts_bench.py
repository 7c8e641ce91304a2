"""Where the SDK's per-request time goes: its middleware around a WSGI app that does nothing.

    .venv/bin/python bench/run.py sdk_web_parts [--requests 10000] [--rounds 8]

``bench/sdk_web_overhead.py`` measures the overhead inside Flask and FastAPI, where the app's own
work shares the caches with ours and a figure moves by a few microseconds between runs. This one
leaves nothing else on the request: the same middleware (``StackwatchWSGIMiddleware``) around a
WSGI app that answers at once, without tracing ("middleware") and with the full stack's tracing
("full stack", after ``stackwatch.sdk.init()`` and a no-op span exporter, as in
``sdk_web_overhead``). Then each part of the full stack is replaced by a no-op in turn, and what
the request stops costing is that part's cost (the two alternate round by round, so a drift of
the machine cancels out): the request metrics, the response headers' ``X-Response-Time``
value, the whole ``start_response`` wrapper, the server span.

CPU time of the process, best of ``--rounds`` rounds of ``--requests`` requests, in
microseconds per request; the do-nothing app's own time is subtracted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sdk_web_overhead as web

from stackwatch.sdk.integrations import wsgi
from stackwatch.sdk.integrations._web import WebInstrumentation
from stackwatch.sdk.integrations.wsgi import StackwatchWSGIMiddleware

#: On top of ``sdk_web_overhead.time_wsgi``'s request: a user agent (a span attribute) and the
#: route template a framework hook would have set, as Flask's matched rule does.
EXTRA_ENVIRON = {"HTTP_USER_AGENT": "bench/1.0", wsgi.ROUTE_KEY: "/api/leads/<int:id>"}


def do_nothing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "9")])
    return [b'{"id":42}']


def serve(app: Callable[..., Iterable[bytes]], n: int) -> float:
    """CPU microseconds per request for ``n`` requests (see ``sdk_web_overhead.time_wsgi``)."""
    return float(web.time_wsgi(app, n, EXTRA_ENVIRON))


def best(app: Callable[..., Iterable[bytes]], n: int, rounds: int) -> float:
    return min(serve(app, n) for _ in range(rounds))


def part_cost(app: Callable[..., Iterable[bytes]], n: int, rounds: int, owner: Any, name: str, value: Any) -> float:
    """What ``app`` stops costing when ``owner.name`` is ``value``: the two alternate round by
    round and each keeps its best, so a drift of the machine during the run cancels out."""
    with_part = without = float("inf")
    for _ in range(rounds):
        with_part = min(with_part, serve(app, n))
        with replaced(owner, name, value):
            without = min(without, serve(app, n))
    return with_part - without


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block (a class attribute or an instance's)."""
    had_own = isinstance(owner, type) or name in getattr(owner, "__dict__", {})
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    n, rounds = args.requests, args.rounds

    (flask_full,), _exporter, _client = web.init_full_stack([web.flask_app()])
    traced = flask_full.extensions["stackwatch"]  # the WebInstrumentation init() made
    untraced = WebInstrumentation(*web.sdk_deps())
    apps = {
        "middleware": StackwatchWSGIMiddleware(do_nothing, instrumentation=untraced),
        "full stack": StackwatchWSGIMiddleware(do_nothing, instrumentation=traced),
    }

    def plain_start_response(self: Any, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        return self.start_response(status, headers)

    parts: dict[str, tuple[Any, str, Any]] = {
        "request metrics": (traced, "_record", lambda *a: None),
        "X-Response-Time value": (WebInstrumentation, "response_time", staticmethod(lambda state: "1.00ms")),
        "start_response wrapper (both headers)": (wsgi._Request, "_start_response", plain_start_response),
        "server span (start, end, context)": (WebInstrumentation, "trace", lambda *a: None),
    }

    with web.stdout_to_devnull():
        for app in (do_nothing, *apps.values()):
            serve(app, 2_000)  # warm up
        bare = best(do_nothing, n, rounds)
        totals = {name: best(app, n, rounds) - bare for name, app in apps.items()}
        full = apps["full stack"]
        costs = {part: part_cost(full, n, rounds, *how) for part, how in parts.items()}

    print(f"do-nothing app alone: {bare:.2f} us/request (subtracted below)")
    for name, value in totals.items():
        print(f"{name:<40}{value:>8.2f} us/request")
    print("\nparts of the full stack (its time minus its time with the part replaced by a no-op, the two")
    print("measured in alternating rounds):")
    for part, value in costs.items():
        print(f"{part:<40}{value:>8.2f} us/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
