"""Celery instrumentation with a real Redis (redis-server on a free port) and a real worker.

The worker runs the prefork pool with two children and embedded beat (``-B``); metrics are
read back from its PROMETHEUS_MULTIPROC_DIR exactly as a /metrics endpoint would aggregate
them; spans go to a stand-in OTLP receiver (the server has no /v1/traces yet).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("celery")
redis = pytest.importorskip("redis")

from telemetry_receiver import TelemetryReceiver  # noqa: E402

from serverproc import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install -y redis-server; see scripts/system-deps.sh)"
        pytest.skip(reason)  # fails under CI (tests/conftest.py)
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--logfile", str(data / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:
        try:
            if client.ping():
                break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


TASKS = """
import os
import time
from celery import Celery
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk import tracing
from stackwatch.sdk.integrations.celery import instrument_celery

app = Celery("tasks", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.update(task_default_queue="celery", worker_hijack_root_logger=False,
                beat_schedule={"heartbeat": {"task": "tasks.heartbeat", "schedule": 1.0}},
                broker_connection_retry_on_startup=True)
config = SDKConfig(service=os.environ.get("SERVICE", "worker"), server_url=os.environ["RECEIVER_URL"], token="t")
tracing.setup_tracing(config)
instrument_celery(app, config, queues=["celery", "reports"], queue_depth_interval=0.3)


@app.task(name="tasks.add")
def add(x, y):
    time.sleep(0.05)
    return x + y


@app.task(name="tasks.fail")
def fail():
    raise ValueError("card declined")


@app.task(name="tasks.flaky", bind=True, max_retries=3)
def flaky(self):
    if self.request.retries < 2:
        raise self.retry(countdown=0)
    return "ok"


@app.task(name="tasks.heartbeat")
def heartbeat():
    return "alive"


@app.task(name="tasks.report")
def report():
    return "never run: nobody consumes the reports queue"
"""

PRODUCER = """
import json
from opentelemetry import trace
from stackwatch.sdk import tracing
import tasks

with trace.get_tracer("web").start_as_current_span("POST /api/leads") as span:
    trace_id = format(span.get_span_context().trace_id, "032x")
    result = tasks.add.delay(2, 3)
assert result.get(timeout=30) == 5
failed = tasks.fail.delay()
failed.get(timeout=30, propagate=False)
assert tasks.flaky.delay().get(timeout=30) == "ok"
for _ in range(3):
    tasks.report.apply_async(queue="reports")
tracing.force_flush(5000)
print(json.dumps({"trace_id": trace_id, "failed_state": failed.state}))
"""


def read_metrics(directory: Path) -> object:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def test_worker_metrics_beat_heartbeat_queue_depth_and_trace_continuation(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    started = time.time()
    with TelemetryReceiver() as receiver:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{tmp_path}", "BROKER": redis_url,
               "RECEIVER_URL": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        worker_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-B", "-s", str(tmp_path / "beat-schedule"),
             "--pool=prefork", "-c", "2", "-Q", "celery", "--loglevel=INFO", "--without-gossip",
             "--without-mingle"],
            cwd=tmp_path, env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            producer = subprocess.run([sys.executable, "-c", textwrap.dedent(PRODUCER)], cwd=tmp_path,
                                      env={**env, "SERVICE": "web"}, capture_output=True, text=True,
                                      timeout=90, check=False)
            assert producer.returncode == 0, producer.stderr + (tmp_path / "worker.log").read_text()
            out = json.loads(producer.stdout.strip().splitlines()[-1])
            assert out["failed_state"] == "FAILURE"

            def value(name: str, labels: dict[str, str]) -> float:
                return read_metrics(mp_dir).get_sample_value(name, labels) or 0.0  # type: ignore[attr-defined]

            def settled() -> bool:
                return (value("celery_tasks_total", {"task": "tasks.flaky", "state": "success"}) == 1
                        and value("celery_queue_length", {"queue": "reports"}) == 3
                        and value("celery_beat_last_run_timestamp_seconds", {"task": "tasks.heartbeat"}) > started)

            deadline = time.monotonic() + 30
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert receiver.wait_for(
                lambda: any(s["name"].startswith("run/") and s["trace_id"] == out["trace_id"]
                            for s in receiver.spans()), timeout=15)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            log.close()
        spans = receiver.spans()
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")

    assert value("celery_tasks_total", {"task": "tasks.add", "state": "success"}) == 1, worker_log
    assert value("celery_tasks_total", {"task": "tasks.fail", "state": "failure"}) == 1
    assert value("celery_task_failures_total", {"task": "tasks.fail", "exception": "ValueError"}) == 1
    assert value("celery_tasks_total", {"task": "tasks.flaky", "state": "retry"}) == 2
    assert value("celery_task_retries_total", {"task": "tasks.flaky"}) == 2
    assert value("celery_tasks_total", {"task": "tasks.flaky", "state": "success"}) == 1
    assert value("celery_task_duration_seconds_count", {"task": "tasks.add"}) == 1
    assert value("celery_task_duration_seconds_sum", {"task": "tasks.add"}) >= 0.05
    wait_count = value("celery_task_queue_wait_seconds_count", {"task": "tasks.add"})
    assert wait_count == 1
    assert 0 <= value("celery_task_queue_wait_seconds_sum", {"task": "tasks.add"}) < 30
    # Nobody consumes "reports": its three messages wait in Redis, and the sampler sees them.
    assert value("celery_queue_length", {"queue": "reports"}) == 3
    assert value("celery_queue_length", {"queue": "celery"}) == 0
    # Beat heartbeats: sent by the embedded beat, completed by the worker.
    assert value("celery_beat_last_sent_timestamp_seconds", {"task": "tasks.heartbeat"}) > started
    assert value("celery_beat_last_run_timestamp_seconds", {"task": "tasks.heartbeat"}) > started
    assert "Periodic task completed: tasks.heartbeat" in worker_log
    # Trace continuation: the worker's run span is a child of the producer's publish span.
    trace_spans = [s for s in spans if s["trace_id"] == out["trace_id"]]
    names = {s["name"] for s in trace_spans}
    assert "POST /api/leads" in names and "run/tasks.add" in names, names
    publish = next(s for s in trace_spans if s["name"] == "apply_async/tasks.add")
    run = next(s for s in trace_spans if s["name"] == "run/tasks.add")
    assert run["parent_span_id"] == publish["span_id"]
    assert run["resource"]["service.name"] == "worker"
    assert publish["resource"]["service.name"] == "web"
    assert "stackwatch" not in worker_log.lower().replace("stackwatch.sdk.celery", ""), worker_log


def test_queue_lengths_reads_priority_lists(redis_url: str) -> None:
    from celery import Celery

    from stackwatch.sdk.integrations.celery import queue_lengths

    client = redis.Redis.from_url(redis_url)
    client.delete("emails", "emails\x06\x163", "emails\x06\x169")
    client.rpush("emails", "a", "b")
    client.rpush("emails\x06\x163", "c")
    client.rpush("emails\x06\x169", "d")
    app = Celery("q", broker=redis_url)
    assert queue_lengths(app, client, ["emails", "empty"]) == {"emails": 4, "empty": 0}
    app.conf.broker_transport_options = {"global_keyprefix": "pfx:"}
    client.rpush("pfx:emails", "x")
    assert queue_lengths(app, client, ["emails"]) == {"emails": 1}
    client.delete("emails", "emails\x06\x163", "emails\x06\x169", "pfx:emails")
