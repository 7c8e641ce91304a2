"""Error rules read the errors store through ErrorStoreSource: issues first seen in a window,
issues that regressed in it (their activity), and event counts per issue (events table)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stackwatch.rules.wiring import ErrorStoreSource
from stackwatch.storage.meta import MetaStore
from stackwatch.storage.meta.models import ErrorIssue, ErrorIssueActivity, Project

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _issue(project_id: int, title: str, first_seen: datetime) -> ErrorIssue:
    return ErrorIssue(project_id=project_id, fingerprint=title, title=title, level="error", type="error",
                      first_seen=first_seen, last_seen=NOW, culprit="app.views")


class _Rows:
    """The executor side of the errors store: answers the count query with fixed rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows_out = rows
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.calls.append((sql, params))
        return self.rows_out


class _Store:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.ex = _Rows(rows)
        self.db = "stackwatch"


def test_new_regressed_and_counted_issues(meta_store: MetaStore) -> None:
    with meta_store.session() as s:
        p = Project(slug="shop", name="Shop")
        other = Project(slug="other", name="Other")
        s.add_all([p, other])
        s.flush()
        old = _issue(p.id, "KeyError: 'cart'", NOW - timedelta(days=3))
        new = _issue(p.id, "ZeroDivisionError", NOW - timedelta(minutes=4))
        elsewhere = _issue(other.id, "TimeoutError", NOW - timedelta(minutes=2))
        s.add_all([old, new, elsewhere])
        s.flush()
        s.add(ErrorIssueActivity(issue_id=old.id, kind="regression", at=NOW - timedelta(minutes=1)))
        s.add(ErrorIssueActivity(issue_id=new.id, kind="first_seen", at=NOW - timedelta(minutes=4)))
        ids = {"old": old.id, "new": new.id}
    store = _Store([{"issue_id": ids["old"], "c": 42}])
    source = ErrorStoreSource(store, meta_store)
    since, until = NOW - timedelta(minutes=10), NOW
    assert [i["title"] for i in source.new_issues("shop", since, until)] == ["ZeroDivisionError"]
    assert [i["title"] for i in source.regressed_issues("shop", since, until)] == ["KeyError: 'cart'"]
    [counted] = source.issue_event_counts("shop", since, until)
    assert (counted["issue_id"], counted["title"], counted["count"], counted["level"]) == (
        ids["old"], "KeyError: 'cart'", 42, "error")
    sql, params = store.ex.calls[0]
    assert "error_events" in sql and params["p"] == "shop"
    assert (params["s"], params["e"]) == (int(since.timestamp() * 1000), int(until.timestamp() * 1000))
    assert source.new_issues("missing-project", since, until) == []
    assert source.new_issues("shop", NOW - timedelta(minutes=1), until) == []


def test_ignored_issues_page_nobody(meta_store: MetaStore) -> None:
    """"Ignore" is what the on-call presses to stop a noisy error paging: an ignored issue is in
    no rule's answer, new, regressed or counted, until someone un-ignores it."""
    with meta_store.session() as s:
        p = Project(slug="shop", name="Shop")
        s.add(p)
        s.flush()
        noisy = _issue(p.id, "Payment provider slow", NOW - timedelta(minutes=4))
        noisy.status = "ignored"
        s.add(noisy)
        s.flush()
        s.add(ErrorIssueActivity(issue_id=noisy.id, kind="regression", at=NOW - timedelta(minutes=1)))
        noisy_id = noisy.id
    source = ErrorStoreSource(_Store([{"issue_id": noisy_id, "c": 250}]), meta_store)
    since, until = NOW - timedelta(minutes=10), NOW
    assert source.new_issues("shop", since, until) == []
    assert source.regressed_issues("shop", since, until) == []
    assert source.issue_event_counts("shop", since, until) == []
    with meta_store.session() as s:
        s.get(ErrorIssue, noisy_id).status = "unresolved"
    assert [i["count"] for i in source.issue_event_counts("shop", since, until)] == [250]
    assert [i["issue_id"] for i in source.new_issues("shop", since, until)] == [noisy_id]
