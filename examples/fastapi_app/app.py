"""PlumberLeads on FastAPI: the lead marketplace's smaller async sibling, instrumented in one call.

Run it::

    STACKWATCH_URL=http://127.0.0.1:8040 STACKWATCH_INGEST_TOKEN=swi_... \\
        uvicorn app:app --app-dir examples/fastapi_app --port 5001 --workers 2

or ``stackwatch demo --app fastapi``. The same deliberate trouble as the Flask example: a slow
endpoint, a slow query, failed logins, declined payments and an unhandled exception.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import create_engine, event, text

import stackwatch.sdk
from stackwatch.sdk.integrations.sqlalchemy import instrument_engine

SERVICE = os.environ.get("STACKWATCH_SERVICE", "plumberleads-fastapi")
DATABASE_URL = os.environ.get(
    "EXAMPLE_DATABASE_URL", f"sqlite:///{Path(tempfile.gettempdir()) / 'plumberleads-fastapi.db'}"
)
DECLINED_CARDS = {"0002": "card_declined", "9995": "insufficient_funds"}

auth_log = logging.getLogger("plumberleads.auth")
payment_log = logging.getLogger("plumberleads.payments")

engine = create_engine(DATABASE_URL, connect_args={"timeout": 15, "check_same_thread": False})


@event.listens_for(engine, "connect")
def sqlite_functions(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function("pg_sleep", 1, lambda seconds: time.sleep(seconds) or 1)


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"plumberleads", 10_000).hex()


def seed() -> None:
    """One worker creates the tables; the others wait on the lock and find them."""
    lock_path = Path(tempfile.gettempdir()) / f"plumberleads-fa-{hashlib.sha1(DATABASE_URL.encode()).hexdigest()[:8]}.lock"
    with lock_path.open("w") as lock, engine.begin() as conn:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn.execute(text("CREATE TABLE IF NOT EXISTS leads (id INTEGER PRIMARY KEY, city TEXT, "
                          "description TEXT, price_cents INTEGER, status TEXT)"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS users (email TEXT PRIMARY KEY, password_hash TEXT)"))
        if conn.execute(text("SELECT count(*) FROM leads")).scalar():
            return
        rng = random.Random(11)
        for i in range(1, 101):
            conn.execute(text("INSERT INTO leads VALUES (:id, :city, :d, :p, 'open')"),
                         {"id": i, "city": rng.choice(["Austin", "Dallas", "Denver"]), "d": "Burst pipe",
                          "p": rng.choice([1500, 2500])})
        conn.execute(text("INSERT INTO users VALUES ('owner@example.com', :h)"), {"h": hash_password("letmein")})


seed()

app = FastAPI(title="PlumberLeads")
app = stackwatch.sdk.init(app, service=SERVICE, version="1.4.2")
instrument_engine(engine)
stackwatch.sdk.add_check("database", engine)


class Login(BaseModel):
    email: str
    password: str


class Payment(BaseModel):
    lead_id: int
    plumber_id: int
    card_number: str


@app.get("/api/leads")
def list_leads(limit: int = 20) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, city, description, price_cents FROM leads WHERE status = 'open' "
                                 "ORDER BY id DESC LIMIT :n"), {"n": min(limit, 100)}).mappings().all()
    return {"leads": [dict(row) for row in rows]}


@app.get("/api/leads/{lead_id}")
def get_lead(lead_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM leads WHERE id = :id"), {"id": lead_id}).mappings().first()
    if row is None:
        raise HTTPException(404, "lead not found")
    return dict(row)


@app.post("/api/auth/login")
def login(body: Login, request: Request) -> Any:
    ip_address = request.headers.get("x-forwarded-for", request.client.host if request.client else "")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users WHERE email = :e"), {"e": body.email}).scalar()
    if stored is None or stored != hash_password(body.password):
        auth_log.error("Failed login attempt", extra={"ip_address": ip_address, "email": body.email})
        return JSONResponse({"error": "invalid credentials"}, status_code=401)
    return {"status": "ok"}


@app.post("/api/payments")
def pay(body: Payment) -> Any:
    card = "".join(ch for ch in body.card_number if ch.isdigit())
    error_code = DECLINED_CARDS.get(card[-4:]) or ("gateway_timeout" if random.random() < 0.03 else None)
    if error_code:
        payment_log.error("Payment processing failed", extra={"error_code": error_code, "lead_id": body.lead_id,
                                                              "plumber_id": body.plumber_id, "card_number": card})
        return JSONResponse({"error": "payment failed", "error_code": error_code},
                            status_code=504 if error_code == "gateway_timeout" else 402)
    with engine.begin() as conn:
        conn.execute(text("UPDATE leads SET status = 'sold' WHERE id = :id"), {"id": body.lead_id})
    stackwatch.sdk.business_event("lead_purchased", lead_id=body.lead_id, plumber_id=body.plumber_id)
    return {"status": "paid"}


@app.get("/api/reports/daily")
async def daily_report() -> dict[str, str]:
    """Deliberately slow endpoint (async: the event loop stays free while it waits)."""
    await asyncio.sleep(1.2)
    return {"status": "generated"}


@app.get("/api/reports/revenue")
def revenue_report() -> dict[str, Any]:
    """Deliberately slow query."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT city, sum(price_cents), pg_sleep(0.6) FROM leads "
                                 "GROUP BY city LIMIT 1")).all()
    return {"revenue": [{"city": r[0], "cents": r[1]} for r in rows]}


@app.get("/api/debug/crash")
def crash() -> None:
    raise RuntimeError("Lead matching service returned malformed response")
