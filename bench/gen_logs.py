"""Deterministic generator of realistic application logs for the logs benchmark.

Writes NDJSON in the format of the guides' logging standards (guide-1 "Logging Standards",
guide-2 production JSON): one object per line,

    {"timestamp": "2026-11-22T13:45:12.345Z", "level": "INFO", "service": "api",
     "trace_id": "9f2c41d07ab3", "source": "app/middleware/logging.py:42",
     "message": "GET /api/leads 200 in 45ms", "context": {...}}

Six services (api, auth, payment, web, worker, db) with a level mix of about 71% INFO,
15% DEBUG, 10% WARN, 4% ERROR; messages with ids, durations, routes, some e-mail addresses;
trace ids shared by the few lines of one request; a day-shaped traffic curve over the 24 h
before ``end``, with a short payment incident; lines nearly sorted (as shippers send them:
in order per source, slightly interleaved between sources).

The data is built so each of the benchmark's four searches has matches, and a sidecar
``<file>.meta.json`` records the expected result of each search (computed here from the
generated records), which the benchmark checks both systems against.

Run: ``python bench/gen_logs.py --events 50000 --out /tmp/logs.ndjson``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "DEFAULT_END",
    "SEARCHES",
    "SPECIAL_TRACE_ID",
    "generate",
    "main",
]

DEFAULT_END = "2026-11-20T00:00:00Z"
SPECIAL_TRACE_ID = "abc123def456"
DAY_MS = 86_400_000

#: The benchmark's four searches, by short name.
SEARCHES: dict[str, str] = {
    "failed_logins": (
        'level:ERROR AND service:auth AND message:"Failed login attempt" AND context.ip_address:*'
    ),
    "trace": 'trace_id:"abc123def456" AND NOT level:DEBUG',
    "slow_api": "service:api AND context.duration:>500 AND level:WARN",
    "payment_failures": (
        'service:payment AND level:ERROR AND message:"Payment processing failed" AND context.error_code:*'
    ),
}

Record = dict[str, Any]


def _expected(name: str, r: Record) -> bool:
    """The searches' meaning, evaluated on a generated record (the expected results)."""
    ctx = r["context"]
    if name == "failed_logins":
        return (
            r["level"] == "ERROR"
            and r["service"] == "auth"
            and "failed login attempt" in r["message"].lower()
            and "ip_address" in ctx
        )
    if name == "trace":
        return r["trace_id"] == SPECIAL_TRACE_ID and r["level"] != "DEBUG"
    if name == "slow_api":
        d = ctx.get("duration")
        return r["service"] == "api" and isinstance(d, int | float) and d > 500 and r["level"] == "WARN"
    if name == "payment_failures":
        return (
            r["service"] == "payment"
            and r["level"] == "ERROR"
            and "payment processing failed" in r["message"].lower()
            and "error_code" in ctx
        )
    raise KeyError(name)


# --- vocabulary -------------------------------------------------------------------------

_ROUTES = (
    ("GET", "/api/leads"),
    ("GET", "/api/leads/{id}"),
    ("POST", "/api/leads"),
    ("PATCH", "/api/leads/{id}"),
    ("GET", "/api/customers/{id}"),
    ("GET", "/api/projects"),
    ("POST", "/api/appointments"),
    ("GET", "/api/dashboard/stats"),
    ("POST", "/api/leads/{id}/claim"),
    ("GET", "/api/invoices/{id}"),
    ("GET", "/api/search"),
    ("DELETE", "/api/sessions/{id}"),
)
_PAGES = ("/", "/dashboard", "/leads", "/leads/{id}", "/login", "/pricing", "/settings", "/invoices/{id}")
_BOT_PATHS = ("/wp-login.php", "/.env", "/admin/config.php", "/xmlrpc.php", "/.git/config")
_TASKS = (
    "send_email",
    "sync_crm_contacts",
    "generate_invoice_pdf",
    "score_lead",
    "send_sms_reminder",
    "refresh_dashboard_cache",
    "process_webhook",
)
_TABLES = ("leads", "customers", "appointments", "invoices", "payments", "users", "sessions")
_FIRST = ("jane", "john", "maria", "wei", "ahmed", "olga", "sam", "priya", "lucas", "emma", "noah", "ava")
_LAST = ("smith", "garcia", "chen", "khan", "novak", "brown", "patel", "silva", "müller", "jones")
_DOMAINS = ("example.com", "gmail.com", "outlook.com", "acme-roofing.com", "yahoo.com")
_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Mobile/15E148",
    "python-requests/2.32.3",
)
_CARD_ERRORS = (
    "card_declined",
    "insufficient_funds",
    "expired_card",
    "incorrect_cvc",
    "processing_error",
    "authentication_required",
)
_EXCEPTIONS = ("ValueError", "KeyError", "IntegrityError", "TimeoutError", "ValidationError")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class _Ctx:
    """Per-line drawing helpers around one seeded RNG."""

    rng: random.Random

    def uid(self) -> int:
        return self.rng.randint(1000, 99999)

    def ip(self) -> str:
        r = self.rng
        return f"{r.choice((73, 98, 172, 203, 45, 81, 104, 185))}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def email(self) -> str:
        r = self.rng
        return f"{r.choice(_FIRST)}.{r.choice(_LAST)}@{r.choice(_DOMAINS)}"

    def oid(self, prefix: str, n: int = 10) -> str:
        return prefix + "".join(self.rng.choices(_B36, k=n))

    def route(self) -> tuple[str, str]:
        method, path = self.rng.choice(_ROUTES)
        return method, path.replace("{id}", str(self.rng.randint(1, 50000)))

    def ms(self, median: float, sigma: float = 0.8) -> float:
        return round(self.rng.lognormvariate(math.log(median), sigma), 1)


Render = Callable[[_Ctx], tuple[str, str, dict[str, Any]]]  # -> (source, message, context)


# --- templates: (weight, render) per service and level ------------------------------------


def _api_request(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    method, path = c.route()
    d = c.ms(48)
    status = c.rng.choices((200, 201, 204, 304, 400, 401, 404, 422), (70, 8, 3, 5, 4, 3, 5, 2))[0]
    return (
        "app/middleware/logging.py:42",
        f"{method} {path} {status} in {d:.0f}ms",
        {"method": method, "path": path, "status": status, "duration": d, "user_id": c.uid()},
    )


def _api_lead_created(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    lead = c.rng.randint(10000, 99999)
    return (
        "app/routes/leads.py:45",
        f"Lead created successfully: lead_id={lead}",
        {"lead_id": lead, "source": c.rng.choice(("website", "google_ads", "referral", "callrail"))},
    )


def _api_cache(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    key = f"{c.rng.choice(('lead', 'customer', 'stats', 'project'))}:{c.rng.randint(1, 50000)}"
    hit = c.rng.random() < 0.8
    return (
        "app/services/cache.py:88",
        f"Cache {'hit' if hit else 'miss'} for key {key}",
        {"key": key, "ttl_s": c.rng.choice((60, 300, 900))},
    )


def _api_validated(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    method, path = c.route()
    return (
        "app/schemas/validation.py:131",
        f"Request payload validated for {method} {path}",
        {"fields": c.rng.randint(2, 18), "path": path},
    )


def _api_slow(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    method, path = c.route()
    d = round(500 + c.rng.expovariate(1 / 600), 1)
    return (
        "app/middleware/logging.py:57",
        f"Slow request: {method} {path} took {d:.0f}ms",
        {"method": method, "path": path, "status": 200, "duration": d, "threshold_ms": 500},
    )


def _api_rate_limit(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    client = c.oid("cl_", 8)
    pct = c.rng.randint(80, 99)
    return (
        "app/middleware/ratelimit.py:73",
        f"Rate limit approaching for client {client} ({pct}% of quota)",
        {"client_id": client, "usage_pct": pct},
    )


def _api_deprecated(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    return (
        "app/routes/v1.py:20",
        "Deprecated endpoint /api/v1/leads called; migrate to /api/leads",
        {"user_agent": c.rng.choice(_UAS), "duration": c.ms(30)},
    )


def _api_unhandled(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    method, path = c.route()
    exc = c.rng.choice(_EXCEPTIONS)
    return (
        "app/errors/handlers.py:28",
        f"Unhandled exception in {method} {path}: {exc}",
        {"method": method, "path": path, "status": 500, "exception": exc, "duration": c.ms(120)},
    )


def _auth_login(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    uid = c.uid()
    return (
        "app/auth/login.py:64",
        f"User {uid} logged in",
        {"user_id": uid, "ip_address": c.ip(), "method": c.rng.choice(("password", "google", "magic_link"))},
    )


def _auth_refresh(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    uid = c.uid()
    return (
        "app/auth/tokens.py:118",
        f"Access token refreshed for user {uid}",
        {"user_id": uid, "expires_in": 3600},
    )


def _auth_session(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    sid = c.oid("sess_", 16)
    return ("app/auth/session.py:51", f"Session {sid} validated", {"session_id": sid, "user_id": c.uid()})


def _auth_failed_warn(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    attempt = c.rng.randint(1, 4)
    return (
        "app/auth/login.py:79",
        f"Failed login attempt for {c.email()} (attempt {attempt} of 5)",
        {"ip_address": c.ip(), "attempt": attempt},
    )


def _auth_reset(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    return (
        "app/auth/password.py:33",
        f"Password reset requested for {c.email()}",
        {"ip_address": c.ip(), "user_id": c.uid()},
    )


def _auth_failed_locked(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    uid = c.uid()
    return (
        "app/auth/login.py:92",
        f"Failed login attempt for user {uid}: account locked after 5 attempts",
        {"user_id": uid, "ip_address": c.ip(), "attempts": 5, "lock_minutes": 15},
    )


def _auth_failed_token(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    # A failed login without an ip_address (internal SSO callback): not a search match.
    return (
        "app/auth/sso.py:140",
        "Failed login attempt via SSO callback: invalid token signature",
        {"provider": c.rng.choice(("google", "okta")), "reason": "bad_signature"},
    )


def _pay_ok(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    order = c.oid("ord_")
    amount = round(c.rng.choice((49.0, 99.0, 149.0, 249.0)) * c.rng.choice((1, 1, 1, 2, 3)), 2)
    return (
        "app/payments/charge.py:77",
        f"Payment processed for order {order}: {amount:.2f} USD",
        {"order_id": order, "amount": amount, "currency": "USD", "provider": "stripe"},
    )


def _pay_refund(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    order = c.oid("ord_")
    return (
        "app/payments/refund.py:40",
        f"Refund issued for order {order}",
        {"order_id": order, "amount": round(c.rng.uniform(10, 300), 2), "currency": "USD"},
    )


def _pay_webhook(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    event = c.rng.choice(("charge.succeeded", "invoice.paid", "customer.updated", "payment_intent.created"))
    return (
        "app/payments/webhooks.py:22",
        f"Stripe webhook received: {event}",
        {"event_id": c.oid("evt_", 14), "event_type": event},
    )


def _pay_retry(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    order = c.oid("ord_")
    wait = c.rng.choice((30, 60, 300))
    return (
        "app/payments/retry.py:58",
        f"Payment retry scheduled for order {order} in {wait}s",
        {"order_id": order, "retry_in_s": wait, "attempt": c.rng.randint(1, 3)},
    )


def _pay_failed(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    order = c.oid("ord_")
    code = c.rng.choice(_CARD_ERRORS)
    return (
        "app/payments/charge.py:103",
        f"Payment processing failed for order {order}: {code}",
        {
            "order_id": order,
            "amount": round(c.rng.uniform(20, 500), 2),
            "currency": "USD",
            "provider": "stripe",
            "error_code": code,
        },
    )


def _pay_failed_timeout(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    # Failed without an error code (the provider never answered): not a search match.
    order = c.oid("ord_")
    return (
        "app/payments/charge.py:118",
        f"Payment processing failed for order {order}: provider timeout after 30s",
        {"order_id": order, "provider": "stripe", "timeout_s": 30},
    )


def _pay_webhook_sig(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    return (
        "app/payments/webhooks.py:31",
        "Webhook signature verification failed",
        {"provider": "stripe", "ip_address": c.ip()},
    )


def _web_access(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    path = c.rng.choice(_PAGES).replace("{id}", str(c.rng.randint(1, 50000)))
    status = c.rng.choices((200, 304, 302), (85, 10, 5))[0]
    size = c.rng.randint(400, 48000)
    d = c.ms(22)
    return (
        "nginx/access.log:1",
        f"GET {path} {status} {size}B {d:.0f}ms",
        {
            "method": "GET",
            "path": path,
            "status": status,
            "bytes": size,
            "duration": d,
            "remote_addr": c.ip(),
        },
    )


def _web_render(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    tpl = c.rng.choice(("leads/list.html", "dashboard.html", "leads/detail.html", "settings.html"))
    return ("app/views/render.py:19", f"Template rendered: {tpl}", {"template": tpl, "duration": c.ms(6)})


def _web_404(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    path = c.rng.choice(_BOT_PATHS)
    return (
        "nginx/access.log:1",
        f"404 Not Found: {path}",
        {"path": path, "status": 404, "remote_addr": c.ip(), "user_agent": c.rng.choice(_UAS)},
    )


def _web_502(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    return (
        "nginx/error.log:1",
        "502 Bad Gateway from upstream api:8000",
        {"upstream": "api:8000", "status": 502, "duration": c.ms(3000, 0.3)},
    )


def _worker_ok(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    task = c.rng.choice(_TASKS)
    tid = c.oid("", 12)
    rt = round(c.rng.lognormvariate(math.log(0.4), 0.9), 3)
    return (
        "app/tasks/base.py:66",
        f"Task {task}[{tid}] succeeded in {rt}s",
        {"task": task, "task_id": tid, "runtime_s": rt, "queue": "default"},
    )


def _worker_received(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    task = c.rng.choice(_TASKS)
    tid = c.oid("", 12)
    return ("app/tasks/base.py:41", f"Task {task}[{tid}] received", {"task": task, "task_id": tid})


def _worker_email(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    return (
        "app/tasks/email.py:27",
        f"Appointment reminder sent to {c.email()}",
        {"template": "appointment_reminder", "provider": "sendgrid"},
    )


def _worker_retry(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    task = c.rng.choice(_TASKS)
    n = c.rng.randint(1, 3)
    return (
        "app/tasks/base.py:88",
        f"Task {task} retry {n}/3 in 60s: upstream returned 503",
        {"task": task, "retries": n, "countdown_s": 60},
    )


def _worker_failed(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    task = c.rng.choice(_TASKS)
    exc = c.rng.choice(_EXCEPTIONS)
    return (
        "app/tasks/base.py:95",
        f"Task {task} failed after 3 retries: {exc}",
        {"task": task, "task_id": c.oid("", 12), "exception": exc},
    )


def _db_pool(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    active = c.rng.randint(1, 20)
    idle = c.rng.randint(0, 10)
    return (
        "app/db/pool.py:54",
        f"Connection pool stats: {active} active, {idle} idle",
        {"active": active, "idle": idle, "pool": "primary"},
    )


def _db_query(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    table = c.rng.choice(_TABLES)
    d = c.ms(3, 0.9)
    rows = c.rng.randint(0, 500)
    return (
        "app/db/session.py:112",
        f"SELECT on {table} returned {rows} rows in {d}ms",
        {"table": table, "rows": rows, "duration": d},
    )


def _db_slow(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    table = c.rng.choice(_TABLES)
    d = round(500 + c.rng.expovariate(1 / 900), 1)
    return (
        "app/db/session.py:120",
        f"Slow query ({d:.0f}ms): SELECT * FROM {table} WHERE status = $1 ORDER BY created_at DESC",
        {"table": table, "duration": d, "rows": c.rng.randint(100, 20000)},
    )


def _db_deadlock(c: _Ctx) -> tuple[str, str, dict[str, Any]]:
    table = c.rng.choice(_TABLES)
    return (
        "app/db/session.py:141",
        f"Deadlock detected on table {table}; transaction rolled back",
        {"table": table, "pid": c.rng.randint(1000, 60000)},
    )


_LEVELS = ("INFO", "DEBUG", "WARN", "ERROR")
_LEVEL_WEIGHTS = (71, 15, 10, 4)
_SERVICES = ("api", "web", "db", "worker", "auth", "payment")
_SERVICE_WEIGHTS = (30, 20, 15, 13, 12, 10)

_TEMPLATES: dict[tuple[str, str], tuple[tuple[Render, ...], tuple[float, ...]]] = {
    ("api", "INFO"): ((_api_request, _api_lead_created), (9, 1)),
    ("api", "DEBUG"): ((_api_cache, _api_validated), (3, 2)),
    ("api", "WARN"): ((_api_slow, _api_rate_limit, _api_deprecated), (6, 3, 1)),
    ("api", "ERROR"): ((_api_unhandled,), (1,)),
    ("auth", "INFO"): ((_auth_login, _auth_refresh), (1, 1)),
    ("auth", "DEBUG"): ((_auth_session,), (1,)),
    ("auth", "WARN"): ((_auth_failed_warn, _auth_reset), (3, 1)),
    ("auth", "ERROR"): ((_auth_failed_locked, _auth_failed_token), (6, 1)),
    ("payment", "INFO"): ((_pay_ok, _pay_refund), (9, 1)),
    ("payment", "DEBUG"): ((_pay_webhook,), (1,)),
    ("payment", "WARN"): ((_pay_retry,), (1,)),
    ("payment", "ERROR"): ((_pay_failed, _pay_failed_timeout, _pay_webhook_sig), (7, 1, 1)),
    ("web", "INFO"): ((_web_access,), (1,)),
    ("web", "DEBUG"): ((_web_render,), (1,)),
    ("web", "WARN"): ((_web_404,), (1,)),
    ("web", "ERROR"): ((_web_502,), (1,)),
    ("worker", "INFO"): ((_worker_ok, _worker_email), (4, 1)),
    ("worker", "DEBUG"): ((_worker_received,), (1,)),
    ("worker", "WARN"): ((_worker_retry,), (1,)),
    ("worker", "ERROR"): ((_worker_failed,), (1,)),
    ("db", "INFO"): ((_db_pool,), (1,)),
    ("db", "DEBUG"): ((_db_query,), (1,)),
    ("db", "WARN"): ((_db_slow,), (1,)),
    ("db", "ERROR"): ((_db_deadlock,), (1,)),
}

#: The trace the benchmark looks up: one checkout request across services, 10 lines.
_SPECIAL_TRACE: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    (
        "web",
        "INFO",
        "nginx/access.log:1",
        "POST /checkout 200 18204B 2411ms",
        {"method": "POST", "path": "/checkout", "status": 200, "duration": 2411.0},
    ),
    (
        "api",
        "DEBUG",
        "app/schemas/validation.py:131",
        "Request payload validated for POST /api/payments",
        {"fields": 7, "path": "/api/payments"},
    ),
    (
        "auth",
        "DEBUG",
        "app/auth/session.py:51",
        "Session sess_q8d2k1m4z7x0c3v5 validated",
        {"session_id": "sess_q8d2k1m4z7x0c3v5", "user_id": 48213},
    ),
    (
        "api",
        "INFO",
        "app/routes/payments.py:31",
        "Checkout started for customer 48213",
        {"customer_id": 48213, "cart_items": 3},
    ),
    (
        "payment",
        "DEBUG",
        "app/payments/charge.py:70",
        "Creating payment intent for order ord_7hk2m9p4qa",
        {"order_id": "ord_7hk2m9p4qa", "amount": 249.0},
    ),
    (
        "payment",
        "WARN",
        "app/payments/charge.py:96",
        "Stripe API slow to respond (1830ms), retrying once",
        {"order_id": "ord_7hk2m9p4qa", "duration": 1830.0},
    ),
    (
        "payment",
        "ERROR",
        "app/payments/charge.py:103",
        "Payment processing failed for order ord_7hk2m9p4qa: card_declined",
        {
            "order_id": "ord_7hk2m9p4qa",
            "amount": 249.0,
            "currency": "USD",
            "provider": "stripe",
            "error_code": "card_declined",
        },
    ),
    (
        "api",
        "WARN",
        "app/middleware/logging.py:57",
        "Slow request: POST /api/payments took 2398ms",
        {"method": "POST", "path": "/api/payments", "status": 402, "duration": 2398.0, "threshold_ms": 500},
    ),
    (
        "worker",
        "INFO",
        "app/tasks/email.py:27",
        "Payment failure notice queued for customer 48213",
        {"template": "payment_failed", "provider": "sendgrid"},
    ),
    (
        "api",
        "INFO",
        "app/middleware/logging.py:42",
        "POST /api/payments 402 in 2398ms",
        {"method": "POST", "path": "/api/payments", "status": 402, "duration": 2398.0, "user_id": 48213},
    ),
)


def _parse_end(end: str) -> int:
    parsed = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _minute_counts(rng: random.Random, events: int) -> list[int]:
    """Events per minute over the day: a daytime peak, night trough, some noise."""
    weights = []
    for m in range(1440):
        day = 1.0 + 0.65 * math.sin(2 * math.pi * (m / 1440 - 0.3))
        weights.append(max(0.05, day * rng.uniform(0.85, 1.15)))
    total = sum(weights)
    raw = [w / total * events for w in weights]
    counts = [int(x) for x in raw]
    # Largest remainders get the rest, so the counts sum to exactly ``events``.
    rest = events - sum(counts)
    for i in sorted(range(1440), key=lambda i: raw[i] - counts[i], reverse=True)[:rest]:
        counts[i] += 1
    return counts


def _format_ts(ms: int, cache: dict[int, str]) -> str:
    sec, milli = divmod(ms, 1000)
    base = cache.get(sec)
    if base is None:
        base = dt.datetime.fromtimestamp(sec, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cache[sec] = base
    return f"{base}.{milli:03d}Z"


def generate(path: str | Path, events: int, *, seed: int = 42, end: str = DEFAULT_END) -> dict[str, Any]:
    """Write ``events`` lines to ``path`` and the expected search results next to it.

    The output depends only on ``events``, ``seed`` and ``end``. Returns the metadata that is
    also written to ``<path>.meta.json``: the time range, counts per level and service,
    bytes, and for each search in :data:`SEARCHES` the expected number of matches.
    """
    if events < len(_SPECIAL_TRACE) * 10:
        raise ValueError(f"need at least {len(_SPECIAL_TRACE) * 10} events")
    rng = random.Random(seed)
    c = _Ctx(rng)
    end_ms = _parse_end(end)
    start_ms = end_ms - DAY_MS

    # Timestamps: per-minute counts, uniform within the minute.
    stamps: list[int] = []
    for minute, n in enumerate(_minute_counts(rng, events)):
        base = start_ms + minute * 60_000
        stamps.extend(base + rng.randrange(60_000) for _ in range(n))
    stamps.sort()

    # A 12-minute payment incident in the afternoon: payment errors are far more likely.
    incident = (start_ms + 15 * 3_600_000, start_ms + 15 * 3_600_000 + 12 * 60_000)
    special_at = events * 2 // 3
    records: list[tuple[int, Record]] = []
    recent_traces: list[str] = []
    i = 0
    while i < events:
        ts = stamps[i]
        if i == special_at:
            for k, (service, level, source, message, ctx) in enumerate(_SPECIAL_TRACE):
                t = min(ts + k * 240, end_ms - 1)
                records.append((t, _record(service, level, SPECIAL_TRACE_ID, source, message, dict(ctx))))
            i += len(_SPECIAL_TRACE)
            continue
        service = rng.choices(_SERVICES, _SERVICE_WEIGHTS)[0]
        if incident[0] <= ts < incident[1] and service == "payment" and rng.random() < 0.5:
            level = "ERROR"
        else:
            level = rng.choices(_LEVELS, _LEVEL_WEIGHTS)[0]
        renders, weights = _TEMPLATES[(service, level)]
        render = renders[0] if len(renders) == 1 else rng.choices(renders, weights)[0]
        source, message, ctx = render(c)
        # Lines of one request share its trace id: most lines continue a recent request.
        if recent_traces and rng.random() < 0.6:
            trace = rng.choice(recent_traces)
        else:
            trace = "".join(rng.choices("0123456789abcdef", k=12))
            recent_traces.append(trace)
            if len(recent_traces) > 40:
                recent_traces.pop(0)
        records.append((ts, _record(service, level, trace, source, message, ctx)))
        i += 1
    del records[events:]

    # Nearly sorted, as shippers send: each source is in order, sources interleave within ~1.5 s.
    jitter = {s: rng.uniform(0, 1500) for s in _SERVICES}
    records.sort(key=lambda tr: tr[0] + jitter[tr[1]["service"]])

    meta: dict[str, Any] = {
        "events": events,
        "seed": seed,
        "start": _format_ts(start_ms, {}),
        "end": _format_ts(end_ms, {}),
        "levels": {},
        "services": {},
        "expected": {name: 0 for name in SEARCHES},
        "errors": 0,
    }
    ts_cache: dict[int, str] = {}
    dumps = orjson.dumps
    size = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as out:
        buf: list[bytes] = []
        for ts, rec in records:
            rec["timestamp"] = _format_ts(ts, ts_cache)
            line = dumps(rec) + b"\n"
            size += len(line)
            buf.append(line)
            if len(buf) >= 10_000:
                out.write(b"".join(buf))
                buf.clear()
            meta["levels"][rec["level"]] = meta["levels"].get(rec["level"], 0) + 1
            meta["services"][rec["service"]] = meta["services"].get(rec["service"], 0) + 1
            for name in SEARCHES:
                if _expected(name, rec):
                    meta["expected"][name] += 1
        out.write(b"".join(buf))
    tmp.replace(path)
    meta["errors"] = meta["levels"].get("ERROR", 0)
    meta["bytes"] = size
    meta["bytes_per_line"] = round(size / events, 1)
    Path(str(path) + ".meta.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return meta


def _record(service: str, level: str, trace: str, source: str, message: str, ctx: dict[str, Any]) -> Record:
    # Key order is the guide's: timestamp, level, service, trace_id, source, message, context.
    return {
        "timestamp": "",
        "level": level,
        "service": service,
        "trace_id": trace,
        "source": source,
        "message": message,
        "context": ctx,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--end", default=DEFAULT_END, help="end of the 24 h window (RFC 3339)")
    parser.add_argument("--out", required=True, help="NDJSON file to write")
    args = parser.parse_args(argv)
    meta = generate(args.out, args.events, seed=args.seed, end=args.end)
    sys.stdout.write(orjson.dumps(meta, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
