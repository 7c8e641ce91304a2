"""The errors sink and issue store against embedded ClickHouse and a SQLite meta store:
grouping into issues, exactly-once counting under WAL replay, regressions, users, scrubbing,
and the readers the issues API uses."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.errors import BadRequest, ConfigError
from stackwatch.ingest.batcher import Entry
from stackwatch.redaction import Redactor
from stackwatch.storage.errors import ErrorStore, _Walker
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.meta import MetaStore
from stackwatch.storage.meta.models import Project

NOW = time.time()


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory, meta_url: str) -> Iterator[ErrorStore]:
    """An error store on embedded ClickHouse, with its meta store on SQLite and on PostgreSQL."""
    ex = ChdbExecutor(tmp_path_factory.getbasetemp() / "chdb", database=f"t_{uuid.uuid4().hex[:8]}")
    meta = MetaStore(meta_url)
    meta.migrate()
    with meta.session() as s:
        s.add(Project(slug="default", name="Default"))
        s.add(Project(slug="other", name="Other"))
    ids = {"default": 1, "other": 2}
    es = ErrorStore(ex, meta, Redactor(), lambda: ids)
    es.ensure_schema()
    yield es
    ex.command(f"DROP DATABASE `{ex.database}`")
    ex.close()
    meta.close()


def exc_event(kind: str = "ValueError", value: str = "bad amount 17", function: str = "charge", lineno: int = 42,
              **extra: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "timestamp": NOW - 10,
        "platform": "python",
        "exception": {"values": [{"type": kind, "value": value, "stacktrace": {"frames": [
            {"module": "shop.views", "function": "checkout", "lineno": 10, "in_app": True},
            {"module": "shop.payments", "function": function, "lineno": lineno, "in_app": True,
             "context_line": "    raise ValueError(amount)", "pre_context": ["def charge(amount):"],
             "post_context": [], "vars": {"amount": "17", "card_token": "tok_live_123"}},
        ]}}]},
        **extra,
    }


_lsn = iter(range(1, 1_000_000))


def sink(store: ErrorStore, *events: dict[str, Any], project: str = "default", token: str | None = None,
         received: float = NOW) -> str:
    """Push events through the sink as the batcher would; returns the block's token."""
    records = [{"event": e, "received": received, "attachments": []} for e in events]
    entry = Entry.create("errors", project, records, time.time_ns(), None)
    n = next(_lsn)
    token = token or f"errors-{n}-{n}"
    store.store_entries([entry], token)
    return token


def issues(store: ErrorStore, **kw: Any) -> list[dict[str, Any]]:
    return store.list_issues(1, "default", **kw)["issues"]


def stored_rows(store: ErrorStore) -> int:
    return int(store.ex.rows(f"SELECT count() AS n FROM `{store.db}`.error_events")[0]["n"])


def test_identical_exceptions_share_an_issue_and_different_ones_do_not(store: ErrorStore) -> None:
    sink(store, exc_event(lineno=42), exc_event(value="bad amount 99", lineno=57))
    sink(store, exc_event(kind="TypeError", value="nope"))
    listed = issues(store, sort="count")
    assert [(i["title"], i["count"]) for i in listed] == [("ValueError: bad amount 99", 2), ("TypeError: nope", 1)]
    assert listed[0]["culprit"] == "shop.payments in charge"
    assert stored_rows(store) == 3


def test_replayed_block_is_counted_and_stored_once(store: ErrorStore) -> None:
    events = [exc_event(), exc_event()]
    token = sink(store, *events)
    sink(store, *events, token=token)  # the batcher replays the pending block after a crash
    (issue,) = issues(store)
    assert issue["count"] == 2
    assert stored_rows(store) == 2


def test_replay_after_a_crash_between_insert_and_counting_counts_once(store: ErrorStore) -> None:
    # The crash comes after the rows are inserted and before the issue counters commit.
    events = [exc_event(), exc_event()]

    def crash(evs: Any, token: str) -> None:
        raise RuntimeError("power cut")

    original = store._count_block
    store._count_block = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        token = "errors-900-900"
        sink(store, *events, token=token)
    store._count_block = original  # type: ignore[method-assign]
    assert stored_rows(store) == 2 and issues(store) == []  # stored, not yet counted: not listed
    sink(store, *events, token="errors-900-900")  # the batcher replays the same block
    (issue,) = issues(store)
    assert issue["count"] == 2
    assert stored_rows(store) == 2


def test_an_event_id_sent_twice_is_counted_once(store: ErrorStore) -> None:
    event = exc_event()
    sink(store, event)
    sink(store, dict(event))  # an SDK retrying a send whose answer it lost
    assert issues(store)[0]["count"] == 1
    assert {"category": "error", "reason": "duplicate", "quantity": 1} in store.outcomes.snapshot()


def test_resolved_issue_that_recurs_is_regressed(store: ErrorStore) -> None:
    sink(store, exc_event())
    issue_id = issues(store)[0]["id"]
    store.update_issue(issue_id, status="resolved", actor="ana@example.com")
    assert issues(store, status="unresolved") == []
    sink(store, exc_event())
    (issue,) = issues(store, status="unresolved")
    assert (issue["regressed"], issue["times_regressed"], issue["count"]) == (True, 1, 2)
    kinds = [a["kind"] for a in store.activity(issue_id)]
    assert kinds[:2] == ["regression", "resolved"] and kinds[-1] == "first_seen"


def test_resolved_in_next_release_regresses_only_in_a_newer_release(store: ErrorStore) -> None:
    sink(store, exc_event(release="1.0"), received=NOW - 300)
    issue_id = issues(store)[0]["id"]
    sink(store, exc_event(release="1.1"), received=NOW - 200)
    store.update_issue(issue_id, status="resolved_in_next_release")
    assert store.get_issue(issue_id).resolved_in_release == "1.1"
    sink(store, exc_event(release="1.1"), exc_event(release="1.0"), received=NOW - 100)  # old servers still running
    assert store.get_issue(issue_id).status == "resolved_in_next_release"
    sink(store, exc_event(release="1.2"))
    issue = store.get_issue(issue_id)
    assert (issue.status, issue.regressed, issue.count, issue.last_release) == ("unresolved", True, 5, "1.2")


def test_ignored_issue_keeps_counting_without_regressing(store: ErrorStore) -> None:
    sink(store, exc_event())
    issue_id = issues(store)[0]["id"]
    store.update_issue(issue_id, status="ignored")
    sink(store, exc_event())
    issue = store.get_issue(issue_id)
    assert (issue.status, issue.regressed, issue.count) == ("ignored", False, 2)


def test_user_count_counts_distinct_users_across_blocks(store: ErrorStore) -> None:
    sink(store, exc_event(user={"id": "u1"}), exc_event(user={"id": "u2"}), exc_event(user={"id": "u1"}))
    sink(store, exc_event(user={"id": "u2"}), exc_event(user={"email": "c@example.com"}), exc_event())
    assert issues(store)[0]["user_count"] == 3


def test_assign_and_unassign(store: ErrorStore) -> None:
    sink(store, exc_event())
    issue_id = issues(store)[0]["id"]
    assert store.update_issue(issue_id, assignee="ana@example.com").assignee == "ana@example.com"
    assert issues(store, assignee="ana@example.com")[0]["id"] == issue_id
    assert store.update_issue(issue_id, assignee=None).assignee is None
    with pytest.raises(BadRequest):
        store.update_issue(issue_id, status="fixed")


def test_secrets_are_scrubbed_before_storage(store: ErrorStore) -> None:
    event = exc_event(
        request={
            "url": "https://shop.example.com/pay?token=abc123secret&page=2",
            "method": "POST",
            "headers": {"Authorization": "Bearer sk_live_abcdefghijklmnop", "X-Api-Key": "key-12345678",
                        "User-Agent": "curl/8"},
            "cookies": {"sessionid": "s3cr3tcookie", "theme": "dark"},
            "query_string": "token=abc123secret&page=2",
            "data": {"password": "hunter2hunter2", "card": "4242 4242 4242 4242", "item": "book"},
        },
        extra={"api_key": "extra-secret-value", "note": "mail bob@example.com"},
        contexts={"db": {"dsn": "postgres://app:pgpassw0rd@db/shop"}},
        breadcrumbs={"values": [{"message": "login with password=crumbsecret", "category": "auth"}]},
        user={"id": "42", "email": "bob@example.com", "ip_address": "203.0.113.9"},
    )
    sink(store, event)
    raw = store.ex.rows(f"SELECT payload, user_email_hash, user_id FROM `{store.db}`.error_events")[0]
    for secret in ("abc123secret", "sk_live_abcdefghijklmnop", "key-12345678", "s3cr3tcookie", "hunter2hunter2",
                   "4242 4242 4242 4242", "extra-secret-value", "pgpassw0rd", "crumbsecret", "tok_live_123",
                   "bob@example.com"):
        assert secret not in raw["payload"], secret
    payload = orjson.loads(raw["payload"])
    assert payload["request"]["headers"]["User-Agent"] == "curl/8"
    assert payload["request"]["cookies"] == {"sessionid": "[REDACTED]", "theme": "[REDACTED]"}
    assert "page=2" in payload["request"]["query_string"]
    assert payload["request"]["data"]["item"] == "book"
    assert payload["exception"]["values"][0]["stacktrace"]["frames"][1]["vars"]["amount"] == "17"
    assert raw["user_id"] == "42" and len(raw["user_email_hash"]) == 32
    detail = store.event("default", issues(store)[0]["id"])
    assert detail is not None
    assert detail["exception"][0]["frames"][0]["context_line"] == "    raise ValueError(amount)"
    assert detail["breadcrumbs"][0]["category"] == "auth"
    assert detail["user"]["ip_address"] == "203.0.113.9"


def test_filters_sorting_and_paging(store: ErrorStore) -> None:
    sink(store, exc_event(kind="A", release="r1", environment="prod", level="warning"))
    sink(store, exc_event(kind="B", release="r2", environment="staging"), exc_event(kind="B", release="r2"))
    sink(store, {"message": "cache full", "level": "info", "timestamp": NOW - 5, "environment": "prod"})
    sink(store, exc_event(kind="Other"), project="other")
    assert {i["title"].split(":")[0] for i in issues(store)} == {"A", "B", "cache full"}
    assert [i["title"][:1] for i in issues(store, release="r2")] == ["B"]
    assert sorted(i["title"][:1] for i in issues(store, environment="prod")) == ["A", "c"]
    assert [i["title"] for i in issues(store, level="info")] == ["cache full"]
    assert [i["title"][:1] for i in issues(store, query="bad AMOUNT")] == ["B", "A"]
    assert [i["title"][:1] for i in issues(store, query="100%")] == []
    assert issues(store, sort="count")[0]["title"][:1] == "B"
    page = store.list_issues(1, "default", limit=2)
    assert (page["total"], len(page["issues"]), page["next_offset"]) == (3, 2, 2)
    assert store.list_issues(1, "default", limit=2, offset=2)["next_offset"] is None
    with pytest.raises(BadRequest, match="sort must be one of"):
        store.list_issues(1, "default", sort="title")


def test_hourly_counts_tags_events_and_trace_join(store: ErrorStore) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    sink(store, exc_event(tags={"browser": "firefox"}, contexts={"trace": {"trace_id": trace, "span_id": "00f067aa0ba902b7"}}),
         exc_event(tags=[["browser", "chrome"]], timestamp=NOW - 3 * 3600))
    issue_id = issues(store)[0]["id"]
    counts = store.hourly_counts("default", issue_id, 24, now=NOW)
    # The newer event (NOW - 10 s) is in the last hour, or in the one before when NOW is in
    # the first 10 s of an hour.
    newest = -1 if int(NOW) // 3600 == int(NOW - 10) // 3600 else -2
    assert len(counts) == 24 and sum(c["count"] for c in counts) == 2 and counts[newest]["count"] == 1
    assert store.hourly_counts_many("default", [issue_id], 24, now=NOW)[issue_id] == [c["count"] for c in counts]
    assert {v["value"] for v in store.tag_values("default", issue_id)["browser"]} == {"firefox", "chrome"}
    events = store.events("default", issue_id)
    assert [e["tags"]["browser"] for e in events] == ["firefox", "chrome"]  # newest first
    (joined,) = store.events_for_trace("default", trace)
    assert joined["issue_id"] == issue_id and joined["title"] == "ValueError: bad amount 17"
    assert {"event_id", "issue_id", "title", "level", "timestamp", "message", "culprit"} <= set(joined)
    # The event's own time (NOW - 10 s, fixed when the module was imported), not the test's.
    assert abs(datetime.fromisoformat(joined["timestamp"]) - datetime.fromtimestamp(NOW - 10, UTC)) < timedelta(
        seconds=1)


_KEYS = st.sampled_from(["password", "db_password", "user_id", "aws_access_key_id", "session_id", "note", "token_count",
                         "Authorization", "vars", "message", "id", "api_key", "cookie"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(
        ["plain", "Bearer abcdefghijklmnop", "mail bob@example.com", "4242 4242 4242 4242", "postgres://u:pw@h/d"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_event_walker_decides_exactly_as_the_redactor(data: dict[str, Any]) -> None:
    redactor = Redactor()
    assert _Walker(redactor).mapping(data) == redactor.redact_mapping(data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
_EVENT_KEYS = st.sampled_from(["exception", "message", "logentry", "threads", "request", "user", "contexts", "tags",
                               "breadcrumbs", "fingerprint", "timestamp", "level", "release", "environment",
                               "transaction", "culprit", "extra", "event_id"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_EVENT_KEYS, _JSON | st.builds(lambda v: {"values": v}, st.lists(_JSON, max_size=3)), max_size=8))
def test_any_event_shape_is_processed_and_its_page_renders(event: dict[str, Any]) -> None:
    """Whatever a sender puts in an event, processing it and rendering its issue page work."""
    import stackwatch.server.ui.issues  # noqa: F401  (registers the template helpers)
    from stackwatch.server.ui.routes import _env
    from stackwatch.storage.errors import event_detail, process_event

    processed = process_event("default", event, NOW, Redactor())
    summary = {"event_id": processed.event_id, "issue_id": 1, "timestamp": "2026-01-01T00:00:00Z",
               "level": processed.level, "title": processed.title, "culprit": processed.culprit,
               "message": processed.message, "release": processed.release, "environment": processed.environment,
               "user_id": processed.user_id, "trace_id": processed.trace_id, "span_id": processed.span_id,
               "tags": processed.tags}
    payload = orjson.loads(orjson.dumps(processed.payload, default=str))
    detail = event_detail(summary, payload, [])
    issue = {"id": 1, "title": processed.title, "culprit": processed.culprit, "level": processed.level,
             "status": "unresolved", "regressed": False, "assignee": None, "count": 1, "user_count": 0,
             "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "first_release": None,
             "last_release": None, "environments": []}
    html = _env.get_template("issue.html").render(
        request=None, user={"email": "a@b", "role": "admin"}, active="issues", error=None, can_edit=True,
        issue=issue, event=detail, stats=[{"time": "t", "count": 0}], tags={}, events=[], activity=[],
    )
    assert "Latest event" in html and processed.event_id in html


def test_retention_is_the_table_ttl_and_follows_the_setting(store: ErrorStore) -> None:
    def engine() -> str:
        rows = store.ex.rows("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'error_events'",
                             {"db": store.db})
        return str(rows[0]["engine_full"])

    assert "TTL toDateTime(timestamp) + toIntervalDay(90)" in engine()
    ErrorStore(store.ex, store.meta, Redactor(), lambda: {}, retention_days=30).ensure_schema()
    assert "toIntervalDay(30)" in engine()
    with pytest.raises(ConfigError, match="errors_retention_days"):
        ErrorStore(store.ex, store.meta, Redactor(), lambda: {}, retention_days=0)
