"""JSON log formatting, records/s: ``stackwatch.sdk.logging.JsonFormatter`` (redaction on and off)
against python-json-logger's ``JsonFormatter`` (and its ``OrjsonFormatter``) on the same records.

    .venv/bin/python bench/run.py sdk_logging [--records 20000] [--rounds 15] [--seed 42]
    .venv/bin/python bench/sdk_logging_bench.py --help

The records are what the guides' apps log, made with ``Logger.makeRecord`` as ``logger.info(...,
extra=...)`` makes them: a request id and 3-6 ``extra=`` context fields each (ids, methods,
paths, durations, status codes, e-mail addresses, IPs, a JWT under a credential-named key,
SQL), some messages with %-arguments, and one record in 20 an ERROR carrying a real traceback
(a second table leaves those out, to show what the tracebacks cost).
Values vary from record to record and from round to round (seeded), so no formatter gets to
format one record over and over: the Redactor's cache of clean strings sees what it sees in a
real app (repeated paths and messages, fresh ids and addresses). No OpenTelemetry span is active (none is imported), so the
Stackwatch lines have null trace ids.

python-json-logger is configured for the same content: timestamp (ISO 8601, UTC), level,
service (a static field), logger, function, path and line, message, the ``extra=`` fields (at
the top level, its layout) and the exception text.

Each formatter formats the same records, each from its own fresh ``LogRecord`` copies (both
formatters write to the record; Stackwatch caches its event on it), built before the timed loop.
The formatters alternate over ``--rounds`` rounds and each one's best round counts, timed in CPU
time of the process (other load on a shared machine does not count).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.logging import EventBuilder
from stackwatch.sdk.logging import JsonFormatter as StackwatchJsonFormatter

_clock = time.process_time
SERVICE = "crm"

#: (level, logger name, function, message, args, extra factory)
Template = tuple[int, str, str, str, tuple[Any, ...], Callable[[random.Random], dict[str, Any]]]


def _email(rng: random.Random) -> str:
    first = rng.choice(["jane", "bob", "maria", "li", "ahmed", "olga", "sam", "priya", "tom", "ines"])
    last = rng.choice(["doe", "smith", "garcia", "chen", "khan", "ivanova", "lee", "patel", "nowak"])
    return f"{first}.{last}{rng.randrange(1000)}@{rng.choice(['example.com', 'mail.example.org', 'corp.test'])}"


def _ip(rng: random.Random) -> str:
    return f"{rng.choice([10, 172, 192, 203])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _jwt(rng: random.Random) -> str:
    part = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(43))
    return f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.{part}"


TEMPLATES: list[Template] = [
    (logging.INFO, "app.routes.leads", "create_lead", "Lead created successfully", (),
     lambda r: {"lead_id": r.randrange(100_000), "method": "POST", "path": "/api/leads",
                "user_id": r.randrange(5_000), "duration_ms": round(r.uniform(5, 120), 2)}),
    (logging.INFO, "app.middleware", "log_request", "Request processed", (),
     lambda r: {"method": r.choice(["GET", "GET", "GET", "POST", "PUT"]),
                "path": f"/api/{r.choice(['leads', 'plumbers', 'payments'])}/{r.randrange(100_000)}",
                "status_code": r.choice([200, 200, 200, 201, 404]), "duration_ms": r.randrange(2, 400)}),
    (logging.WARNING, "app.auth", "login", "Failed login attempt", (),
     lambda r: {"ip_address": _ip(r), "username": _email(r), "attempts": r.randrange(1, 6)}),
    (logging.ERROR, "app.payments", "charge", "Payment processing failed: %s", ("card declined",),
     lambda r: {"payment_id": f"pay_{r.getrandbits(64):016x}", "amount": round(r.uniform(10, 900), 2),
                "currency": "USD", "error_code": r.choice(["card_declined", "insufficient_funds", "expired_card"]),
                "customer_email": _email(r)}),
    (logging.INFO, "app.integrations", "call_stripe", "External service call to %s", ("stripe",),
     lambda r: {"external_service": "stripe", "url": "https://api.stripe.com/v1/charges",
                "status_code": r.choice([200, 200, 402]), "duration_ms": round(r.uniform(80, 900), 1)}),
    (logging.DEBUG, "app.db", "log_database_query", "Database query executed", (),
     lambda r: {"query": "SELECT id, name, zip FROM leads WHERE plumber_id = %s AND status = %s",
                "duration_ms": round(r.uniform(0.5, 40), 2), "rows": r.randrange(0, 50)}),
    (logging.WARNING, "app.middleware", "log_request", "Slow request detected: %s took %.2fs",
     ("/api/leads/{id}", 1.73),
     lambda r: {"route": "/api/leads/{id}", "method": "GET", "status_code": 200,
                "duration_ms": round(r.uniform(1000, 4000), 2)}),
    (logging.INFO, "app.auth", "login", "User logged in", (),
     lambda r: {"user_id": r.randrange(5_000), "auth_token": _jwt(r), "ip_address": _ip(r)}),
    (logging.INFO, "app.business", "purchase_lead", "Business event: lead_purchased", (),
     lambda r: {"event": "lead_purchased", "plumber_id": r.randrange(900), "lead_id": r.randrange(100_000),
                "price": round(r.uniform(15, 80), 2), "zip": f"{r.randrange(10_000, 99_999)}"}),
]
EXCEPTION_TEMPLATE: Template = (
    logging.ERROR, "app.routes.payments", "create_payment", "Unhandled exception in %s", ("POST /api/payments",),
    lambda r: {"method": "POST", "path": "/api/payments", "status_code": 500},
)


def _exc_info() -> Any:
    def charge(amount: float) -> None:
        raise ValueError(f"amount {amount} exceeds the card limit")

    try:
        try:
            charge(1250.0)
        except ValueError as exc:
            raise RuntimeError("payment provider rejected the charge") from exc
    except RuntimeError:
        return sys.exc_info()


def make_specs(count: int, seed: int, exceptions: bool = True) -> list[tuple[Template, dict[str, Any], Any]]:
    """The record contents: (template, extra, exc_info) for ``count`` records; with ``exceptions``
    one in 20 is the ERROR with a traceback."""
    rng = random.Random(seed)
    exc_info = _exc_info()
    specs = []
    for i in range(count):
        template = EXCEPTION_TEMPLATE if exceptions and i % 20 == 19 else TEMPLATES[i % 20 % len(TEMPLATES)]
        extra = {"request_id": f"req-{rng.getrandbits(64):016x}", **template[5](rng)}
        specs.append((template, extra, exc_info if template is EXCEPTION_TEMPLATE else None))
    return specs


def make_records(specs: list[tuple[Template, dict[str, Any], Any]]) -> list[logging.LogRecord]:
    """Fresh LogRecords, as ``logger.log(level, msg, *args, extra=extra, exc_info=...)`` makes them."""
    records = []
    for (level, name, func, msg, args, _factory), extra, exc_info in specs:
        logger = logging.getLogger(name)
        records.append(logger.makeRecord(name, level, f"/srv/app/{name.replace('.', '/')}.py", 42, msg, args,
                                         exc_info, func, extra))
    return records


def formatters() -> dict[str, logging.Formatter]:
    from pythonjsonlogger.json import JsonFormatter as PjlJsonFormatter
    from pythonjsonlogger.orjson import OrjsonFormatter as PjlOrjsonFormatter

    pjl_args: dict[str, Any] = {
        "fmt": ["levelname", "name", "funcName", "pathname", "lineno", "message"],
        "rename_fields": {"levelname": "level", "name": "logger", "funcName": "function"},
        "static_fields": {"service": SERVICE},
        "timestamp": True,
    }
    return {
        "stackwatch JsonFormatter, redaction on": StackwatchJsonFormatter(
            EventBuilder(SDKConfig(service=SERVICE, redact=True))),
        "stackwatch JsonFormatter, redaction off": StackwatchJsonFormatter(
            EventBuilder(SDKConfig(service=SERVICE, redact=False))),
        "python-json-logger JsonFormatter": PjlJsonFormatter(**pjl_args),
        "python-json-logger OrjsonFormatter": PjlOrjsonFormatter(**pjl_args),
    }


def check(fmts: dict[str, logging.Formatter], specs: list[tuple[Template, dict[str, Any], Any]]) -> dict[str, str]:
    """Every formatter writes valid JSON holding the record's context; return one sample line each."""
    samples = {}
    for name, formatter in fmts.items():
        for i, record in enumerate(make_records(specs[:40])):
            line = formatter.format(record)
            event = json.loads(line)
            extra = specs[i][1]
            context = event.get("context", event)
            fields = {**context, "request_id": event["request_id"]}
            if set(extra) - set(fields):
                raise SystemExit(f"{name}: fields missing from {line}")
            if specs[i][2] is not None and "payment provider rejected" not in line:
                raise SystemExit(f"{name}: exception missing from {line}")
            if i == 3:
                samples[name] = line
    redacted = samples["stackwatch JsonFormatter, redaction on"]
    if specs[3][1]["customer_email"] in redacted:
        raise SystemExit(f"redaction on, yet the e-mail address is in {redacted}")
    return samples


def run(records: int, rounds: int, seed: int, exceptions: bool = True) -> dict[str, float]:
    """Best records/s per formatter."""
    fmts = formatters()
    samples = check(fmts, make_specs(40, seed))
    if exceptions:
        for name, line in samples.items():
            print(f"sample, {name}:\n  {line}")
    best = {name: float("inf") for name in fmts}
    for round_number in range(rounds):
        # New values every round (the same for every formatter): a round must not find the
        # previous round's strings in the Redactor's clean-text cache.
        specs = make_specs(records, seed + 1 + round_number, exceptions)
        for name, formatter in fmts.items():
            batch = make_records(specs)
            fmt = formatter.format
            started = _clock()
            for record in batch:
                fmt(record)
            best[name] = min(best[name], _clock() - started)
    return {name: records / seconds for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    for exceptions, title in ((True, "all records (1 in 20 with a traceback)"),
                              (False, "the same mix without the traceback records")):
        rates = run(args.records, args.rounds, args.seed, exceptions)
        reference = rates["python-json-logger JsonFormatter"]
        print(f"\nJSON formatting, {title}: {args.records:,} records per round, best of {args.rounds} rounds "
              "(CPU time)")
        print(f"{'formatter':<42}{'records/s':>12}{'us/record':>11}{'vs pjl Json':>13}")
        for name, rate in rates.items():
            print(f"{name:<42}{rate:>12,.0f}{1e6 / rate:>11.2f}{rate / reference:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
