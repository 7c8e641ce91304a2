"""PlumberLeads: a lead-marketplace API (leads, plumbers, login, payments), instrumented with
Stackwatch in one call.

Run it::

    STACKWATCH_URL=http://127.0.0.1:8040 STACKWATCH_INGEST_TOKEN=swi_... \\
        gunicorn -w 2 -b 127.0.0.1:5000 --chdir examples/flask_app app:app

or ``stackwatch demo --app flask`` to run it with a load generator. Without ``STACKWATCH_URL``
it still serves ``/health``, ``/health/ready``, ``/metrics`` and JSON logs on stdout.

Some endpoints misbehave on purpose, so the monitoring has something to show:

=====================================  ==============================================
``GET /api/reports/daily``             slow endpoint (about 1.2 s): slow-request warning
``GET /api/reports/revenue``           slow query (about 0.6 s inside SQLite)
``GET /api/plumbers/leaderboard``      N+1: one query per plumber
``POST /api/auth/login``               wrong password: ERROR "Failed login attempt"
``POST /api/payments``                 cards ending 0002/9995 are declined; 3% gateway
                                       timeouts: ERROR "Payment processing failed"
``GET /api/debug/crash``               an unhandled exception (500, stack in the log)
=====================================  ==============================================
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, request
from sqlalchemy import ForeignKey, String, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import stackwatch.sdk
from stackwatch.sdk import metrics
from stackwatch.sdk.integrations.sqlalchemy import instrument_engine

SERVICE = os.environ.get("STACKWATCH_SERVICE", "plumberleads-api")
DATABASE_URL = os.environ.get(
    "EXAMPLE_DATABASE_URL", f"sqlite:///{Path(tempfile.gettempdir()) / 'plumberleads.db'}"
)
DECLINED_CARDS = {"0002": "card_declined", "9995": "insufficient_funds"}

log = logging.getLogger("plumberleads")
auth_log = logging.getLogger("plumberleads.auth")
payment_log = logging.getLogger("plumberleads.payments")


# -- data -------------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Plumber(Base):
    __tablename__ = "plumbers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200), unique=True)
    city: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(200))
    balance_cents: Mapped[int] = mapped_column(default=0)


class Lead(Base):
    __tablename__ = "leads"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_name: Mapped[str] = mapped_column(String(100))
    customer_phone: Mapped[str] = mapped_column(String(40))
    city: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(500))
    price_cents: Mapped[int] = mapped_column(default=2500)
    status: Mapped[str] = mapped_column(String(20), default="open")
    plumber_id: Mapped[int | None] = mapped_column(ForeignKey("plumbers.id"), nullable=True)


CITIES = ["Austin", "Dallas", "Houston", "Denver", "Phoenix", "Seattle"]
JOBS = ["Leaking kitchen faucet", "Burst pipe in basement", "Water heater replacement",
        "Clogged main drain", "Toilet running constantly", "Low water pressure"]


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"plumberleads", 10_000).hex()


def make_engine() -> Any:
    engine = create_engine(DATABASE_URL, connect_args={"timeout": 15} if DATABASE_URL.startswith("sqlite") else {})

    if DATABASE_URL.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def sqlite_functions(dbapi_connection: Any, _record: Any) -> None:
            # pg_sleep stand-in, so the "slow query" is slow inside the database.
            dbapi_connection.create_function("pg_sleep", 1, lambda seconds: time.sleep(seconds) or 1)

    return engine


def seed(engine: Any) -> None:
    """Create and fill the tables once (workers start together: a file lock serializes them)."""
    lock_path = Path(tempfile.gettempdir()) / f"plumberleads-{hashlib.sha1(DATABASE_URL.encode()).hexdigest()[:8]}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            if session.scalar(select(func.count()).select_from(Plumber)):
                return
            rng = random.Random(7)
            for i in range(1, 21):
                session.add(Plumber(id=i, name=f"Plumber {i}", email=f"plumber{i}@example.com",
                                    city=rng.choice(CITIES), password_hash=hash_password(f"secret-{i}")))
            for i in range(1, 201):
                session.add(Lead(id=i, customer_name=f"Customer {i}", customer_phone=f"+1512555{i:04d}",
                                 city=rng.choice(CITIES), description=rng.choice(JOBS),
                                 price_cents=rng.choice([1500, 2500, 4000]),
                                 plumber_id=rng.randint(1, 20) if i % 3 == 0 else None,
                                 status="sold" if i % 3 == 0 else "open"))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()


engine = make_engine()
seed(engine)


# -- app --------------------------------------------------------------------------------------------

app = Flask(__name__)
# The one call: logs, probes, /metrics, tracing, errors; settings from STACKWATCH_* variables.
app = stackwatch.sdk.init(app, service=SERVICE, version="1.4.2")
instrument_engine(engine)
stackwatch.sdk.add_check("database", engine)
stackwatch.sdk.add_check("payment-gateway", lambda: random.random() > 0.02, required=False, timeout=2.0)

leads_purchased = metrics.counter("leads_purchased_total", "Leads bought by plumbers.", ["city"])
revenue = metrics.counter("lead_revenue_cents_total", "Revenue from lead sales, in cents.")


def lead_json(lead: Lead) -> dict[str, Any]:
    return {"id": lead.id, "customer_name": lead.customer_name, "city": lead.city,
            "description": lead.description, "price_cents": lead.price_cents, "status": lead.status,
            "plumber_id": lead.plumber_id}


@app.get("/")
def index() -> Any:
    return {"service": SERVICE, "endpoints": sorted(str(rule) for rule in app.url_map.iter_rules())}


@app.get("/api/leads")
def list_leads() -> Any:
    city = request.args.get("city")
    limit = min(int(request.args.get("limit", 20)), 100)
    query = select(Lead).where(Lead.status == "open").order_by(Lead.id.desc()).limit(limit)
    if city:
        query = query.where(Lead.city == city)
    with Session(engine) as session:
        return {"leads": [lead_json(lead) for lead in session.scalars(query)]}


@app.get("/api/leads/<int:lead_id>")
def get_lead(lead_id: int) -> Any:
    with Session(engine) as session:
        lead = session.get(Lead, lead_id)
        if lead is None:
            return {"error": "lead not found"}, 404
        return lead_json(lead)


@app.post("/api/leads")
def create_lead() -> Any:
    data = request.get_json(silent=True) or {}
    missing = [k for k in ("customer_name", "customer_phone", "city", "description") if not data.get(k)]
    if missing:
        log.info("Lead rejected: missing fields", extra={"missing": ",".join(missing)})
        return {"error": f"missing fields: {', '.join(missing)}"}, 400
    with Session(engine) as session:
        lead = Lead(customer_name=data["customer_name"], customer_phone=data["customer_phone"], city=data["city"],
                    description=data["description"], price_cents=int(data.get("price_cents", 2500)))
        session.add(lead)
        session.commit()
        stackwatch.sdk.business_event("lead_created", lead_id=lead.id, city=lead.city, price_cents=lead.price_cents)
        return lead_json(lead), 201


@app.get("/api/plumbers")
def list_plumbers() -> Any:
    with Session(engine) as session:
        plumbers = session.scalars(select(Plumber).order_by(Plumber.id)).all()
        return {"plumbers": [{"id": p.id, "name": p.name, "city": p.city} for p in plumbers]}


@app.get("/api/plumbers/<int:plumber_id>")
def get_plumber(plumber_id: int) -> Any:
    with Session(engine) as session:
        plumber = session.get(Plumber, plumber_id)
        if plumber is None:
            return {"error": "plumber not found"}, 404
        return {"id": plumber.id, "name": plumber.name, "city": plumber.city}


@app.get("/api/plumbers/leaderboard")
def leaderboard() -> Any:
    """Deliberate N+1: one COUNT query per plumber instead of one GROUP BY."""
    with Session(engine) as session:
        board = []
        for plumber in session.scalars(select(Plumber)).all():
            bought = session.scalar(select(func.count()).select_from(Lead).where(Lead.plumber_id == plumber.id))
            board.append({"plumber_id": plumber.id, "name": plumber.name, "leads": bought})
    board.sort(key=lambda row: -int(row["leads"] or 0))
    return {"leaderboard": board[:10]}


@app.post("/api/auth/login")
def login() -> Any:
    data = request.get_json(silent=True) or {}
    email, password = str(data.get("email", "")), str(data.get("password", ""))
    ip_address = request.headers.get("X-Forwarded-For", request.remote_addr or "")
    with Session(engine) as session:
        plumber = session.scalar(select(Plumber).where(Plumber.email == email))
        if plumber is None or plumber.password_hash != hash_password(password):
            auth_log.error("Failed login attempt", extra={"ip_address": ip_address, "email": email,
                                                          "reason": "unknown user" if plumber is None else "bad password"})
            return {"error": "invalid credentials"}, 401
        auth_log.info("User logged in", extra={"user_id": plumber.id, "ip_address": ip_address})
        return {"token": hashlib.sha256(f"{plumber.id}{time.time()}".encode()).hexdigest(), "plumber_id": plumber.id}


@app.post("/api/payments")
def pay_for_lead() -> Any:
    data = request.get_json(silent=True) or {}
    card = "".join(ch for ch in str(data.get("card_number", "")) if ch.isdigit())
    lead_id, plumber_id = data.get("lead_id"), data.get("plumber_id")
    with Session(engine) as session:
        lead = session.get(Lead, lead_id) if lead_id else None
        if lead is None or plumber_id is None:
            return {"error": "lead_id and plumber_id are required"}, 400
        error_code = DECLINED_CARDS.get(card[-4:])
        if error_code is None and random.random() < 0.03:
            error_code = "gateway_timeout"
        if error_code is not None:
            payment_log.error("Payment processing failed", extra={
                "error_code": error_code, "lead_id": lead.id, "plumber_id": plumber_id,
                "amount_cents": lead.price_cents, "card_number": card,
            })
            status = 504 if error_code == "gateway_timeout" else 402
            return {"error": "payment failed", "error_code": error_code}, status
        lead.status, lead.plumber_id = "sold", int(plumber_id)
        try:
            session.commit()
        except OperationalError:
            session.rollback()
            raise
        leads_purchased.labels(lead.city).inc()
        revenue.inc(lead.price_cents)
        stackwatch.sdk.business_event("lead_purchased", lead_id=lead.id, plumber_id=plumber_id,
                                      amount_cents=lead.price_cents)
        return {"status": "paid", "lead_id": lead.id, "amount_cents": lead.price_cents}


@app.get("/api/reports/daily")
def daily_report() -> Any:
    """Deliberately slow endpoint: over the 1 s slow-request threshold."""
    time.sleep(1.2)
    return {"date": datetime.now(UTC).date().isoformat(), "status": "generated"}


@app.get("/api/reports/revenue")
def revenue_report() -> Any:
    """Deliberately slow query: over the 500 ms slow-query threshold."""
    with Session(engine) as session:
        rows = session.execute(
            select(Lead.city, func.sum(Lead.price_cents), func.pg_sleep(0.6)).where(Lead.status == "sold")
            .group_by(Lead.city).limit(1)
        ).all()
    return {"revenue": [{"city": city, "cents": cents} for city, cents, _ in rows]}


@app.get("/api/debug/crash")
def crash() -> Any:
    """An unhandled exception: 500, logged with its stack, captured as an error."""
    raise RuntimeError("Lead matching service returned malformed response")


if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "5000")))
