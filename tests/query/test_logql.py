"""Tests of the log query language, run against a real embedded ClickHouse (chDB).

Most behaviour is tested as data, Prometheus style: every ``tests/query/logql/*.test`` file
is a script in this format:

    # a comment (only on its own line)
    load
    {"id": 1, "service": "auth", "severity_text": "ERROR", "message": "Failed login"}
    {"id": 2, "timestamp": "2024-05-01T12:00:00Z", "attributes": {"context": {"duration": 730}}}
                                        <- a blank line ends the rows
    query: level:ERROR AND service:auth
    ids: 1                              <- the ids the query selects, in any order
    query: level:nonsense
    ids:                                <- nothing
    error: message:"unclosed
    at: 8                               <- compile_query raises QuerySyntaxError at position 8

``load`` rows are NDJSON in the logs table's column model plus an ``id``; omitted columns
take their defaults, times are RFC 3339 strings. For convenience a row may give
``attributes`` as (nested) JSON: it is flattened with dots and split by value type the way
the pipeline stores it (strings and booleans -> ``attributes_string``, booleans as
"true"/"false"; numbers -> ``attributes_number``). Each file gets its own table and all of a
file's rows are loaded before its queries run. The text after ``query: `` / ``error: `` is
the query verbatim (only the line break is dropped).

Each query becomes one pytest case named ``file.test:line``; the runner compiles it, runs
``SELECT id FROM <table> WHERE <where> ORDER BY id`` with the parameters and compares ids.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chdb import session as chdb_session
from clickhouse_connect.driver.binding import format_bind_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackwatch.errors import QuerySyntaxError
from stackwatch.query import logql
from stackwatch.query.logql import CompiledQuery, compile_query

DATA_DIR = Path(__file__).parent / "logql"

COLUMNS = """
    id UInt32,
    timestamp DateTime64(9, 'UTC'),
    observed_timestamp DateTime64(9, 'UTC'),
    project LowCardinality(String),
    service LowCardinality(String),
    severity_text LowCardinality(String),
    severity_number UInt8,
    message String,
    trace_id String,
    span_id String,
    source String,
    logger LowCardinality(String),
    function LowCardinality(String),
    host LowCardinality(String),
    log_type LowCardinality(String),
    attributes_string Map(String, String),
    attributes_number Map(String, Float64),
    resource Map(String, String)
"""


# --- the .test script format ---------------------------------------------------------------


@dataclass
class Case:
    file: str
    line: int
    query: str
    ids: list[int] | None = None  # expected ids; None for an error case
    error_at: int | None = None


@dataclass
class Script:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)


def _value_after(line: str, directive: str) -> str:
    """The text after ``directive:``, with the one separating space dropped."""
    rest = line[len(directive) + 1 :]
    return rest[1:] if rest.startswith(" ") else rest


def parse_script(path: Path) -> Script:
    script = Script(path.name)
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    pending: Case | None = None

    def fail(message: str) -> None:
        raise ValueError(f"{path.name}:{i + 1}: {message}")

    while i < len(lines):
        line = lines[i]
        if pending is not None:
            expect = "at" if pending.ids is None and pending.error_at == -1 else "ids"
            if not line.startswith(expect + ":"):
                fail(f"expected '{expect}:' after line {pending.line}")
            value = _value_after(line, expect).strip()
            if expect == "at":
                pending.error_at = int(value)
            else:
                pending.ids = [int(x) for x in value.split()]
            script.cases.append(pending)
            pending = None
        elif not line.strip() or line.startswith("#"):
            pass
        elif line.strip() == "load":
            i += 1
            while i < len(lines) and lines[i].strip():
                if not lines[i].startswith("#"):
                    script.rows.append(json.loads(lines[i]))
                i += 1
            continue
        elif line.startswith("query:"):
            pending = Case(path.name, i + 1, _value_after(line, "query"))
        elif line.startswith("error:"):
            pending = Case(path.name, i + 1, _value_after(line, "error"), error_at=-1)
        else:
            fail(f"cannot read {line!r}")
        i += 1
    if pending is not None:
        fail("a query without its expectation at the end of the file")
    return script


SCRIPTS = {path.name: parse_script(path) for path in sorted(DATA_DIR.glob("*.test"))}
CASES = [case for script in SCRIPTS.values() for case in script.cases]


def _flatten(prefix: str, value: Any, out_s: dict[str, str], out_n: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, sub, out_s, out_n)
    elif isinstance(value, bool):
        out_s[prefix] = "true" if value else "false"
    elif isinstance(value, (int, float)):
        out_n[prefix] = float(value)
    else:
        out_s[prefix] = str(value)


def _to_columns(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    attributes = row.pop("attributes", None)
    if attributes is not None:
        strings: dict[str, str] = dict(row.get("attributes_string", {}))
        numbers: dict[str, float] = dict(row.get("attributes_number", {}))
        _flatten("", attributes, strings, numbers)
        row["attributes_string"], row["attributes_number"] = strings, numbers
    return row


# --- chDB -----------------------------------------------------------------------------------


class Store:
    """One chDB session for the module (a session is process-wide) and a table per script."""

    def __init__(self, path: Path) -> None:
        self.session = chdb_session.Session(str(path))
        self.session.query("CREATE DATABASE IF NOT EXISTS logql")

    def create(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.session.query(f"DROP TABLE IF EXISTS logql.{table}")
        self.session.query(f"CREATE TABLE logql.{table} ({COLUMNS}) ENGINE = MergeTree ORDER BY id")
        if rows:
            data = "\n".join(json.dumps(_to_columns(row), ensure_ascii=False) for row in rows)
            self.session.query(
                f"INSERT INTO logql.{table} SETTINGS date_time_input_format = 'best_effort' "
                f"FORMAT JSONEachRow\n{data}"
            )

    def select_ids(self, table: str, compiled: CompiledQuery) -> list[int]:
        # ClickHouse parses parameter text in the escaped TSV format; format_bind_value is
        # what clickhouse-connect sends for server-side binding, so chDB gets the same.
        params = {name: format_bind_value(value) for name, value in compiled.params.items()}
        sql = f"SELECT id FROM logql.{table} WHERE {compiled.where} ORDER BY id"
        result = self.session.query(sql, "JSONEachRow", params=params)
        text = result.bytes().decode()
        return [json.loads(line)["id"] for line in text.splitlines() if line]

    def close(self) -> None:
        self.session.close()


def _table_name(script_name: str) -> str:
    return "t_" + re.sub(r"\W", "_", script_name.removesuffix(".test"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(tmp_path_factory.mktemp("chdb"))
    for name, script in SCRIPTS.items():
        store.create(_table_name(name), script.rows)
    store.create("fuzz", [row for script in SCRIPTS.values() for row in script.rows])
    yield store
    store.close()


# --- the data-driven cases ------------------------------------------------------------------


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 5 and len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.line}" for c in CASES])
def test_script_case(case: Case, store: Store) -> None:
    if case.ids is None:
        with pytest.raises(QuerySyntaxError) as info:
            compile_query(case.query)
        assert info.value.position == case.error_at, str(info.value)
        return
    compiled = compile_query(case.query)
    got = store.select_ids(_table_name(case.file), compiled)
    assert got == sorted(case.ids), f"{case.query!r} -> {compiled.where} {compiled.params}"


@pytest.mark.parametrize("case", [c for c in CASES if c.ids is not None], ids=lambda c: f"{c.file}:{c.line}")
def test_columns_name_everything_the_sql_reads(case: Case, store: Store) -> None:
    # Run the SQL over a subquery holding only the columns the query says it reads: a column
    # missing from ``columns`` is an unknown identifier there, a wrong answer shows as wrong ids.
    compiled = compile_query(case.query)
    params = {name: format_bind_value(value) for name, value in compiled.params.items()}
    cols = "".join(f", {c}" for c in sorted(compiled.columns))
    sql = (
        f"SELECT id FROM (SELECT id{cols} FROM logql.{_table_name(case.file)}) "
        f"WHERE {compiled.where} ORDER BY id"
    )
    text = store.session.query(sql, "JSONEachRow", params=params).bytes().decode()
    assert [json.loads(line)["id"] for line in text.splitlines() if line] == sorted(case.ids)


def test_columns_of_the_guide_queries_and_histogram_filters() -> None:
    assert compile_query("level:ERROR").columns == {"severity_number", "severity_text"}
    assert compile_query("service:api AND NOT type:security").columns == {"service", "log_type"}
    assert compile_query("*").columns == frozenset()
    assert compile_query('service:api AND context.duration:>500 AND level:WARN').columns == {
        "service", "attributes_string", "attributes_number", "severity_number", "severity_text"
    }
    assert compile_query('"Failed login"').columns == {"message"}


def test_a_cached_compilation_hands_out_its_own_params() -> None:
    first = compile_query("service:api AND level:WARN")
    first.params["q0"] = "tampered"
    second = compile_query("service:api AND level:WARN")
    assert second.params["q0"] == "api"
    assert second == CompiledQuery(first.where, {**first.params, "q0": "api"}, first.columns)


# --- the API --------------------------------------------------------------------------------


def test_public_surface() -> None:
    assert sorted(logql.__all__) == ["CompiledQuery", "QuerySyntaxError", "compile_query"]


def test_match_all() -> None:
    for q in ["", "   ", "*", "\t\n", "(*)", "* AND *"]:
        assert compile_query(q) == CompiledQuery(where="1", params={})


def test_params_use_the_prefix_and_are_reused() -> None:
    compiled = compile_query("context.duration:[100 TO 500]", param_prefix="lq_")
    assert compiled.params == {"lq_0": "context.duration", "lq_1": 100.0, "lq_2": 500.0}
    assert compiled.where.count("{lq_0:String}") == 3


def test_param_prefix_must_be_an_identifier() -> None:
    with pytest.raises(ValueError):
        compile_query("a", param_prefix="x}; DROP")


def test_the_guide_queries_compile_to_parameters_only() -> None:
    compiled = compile_query(
        'level:ERROR AND service:auth AND message:"Failed login attempt" AND context.ip_address:*'
    )
    assert set(compiled.params.values()) == {
        17,  # the ERROR band of severity numbers, 17..20
        20,
        "auth",
        "%failed login attempt%",
        "context.ip_address",
    }
    for text in ("ERROR", "auth", "Failed", "ip_address"):
        assert text not in compiled.where


def test_where_is_safe_to_and_into_a_larger_clause() -> None:
    assert compile_query("a OR b").where.startswith("(")
    assert compile_query("a OR b").where.endswith(")")


def test_error_carries_position_and_says_what() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        compile_query('service:api AND message:"unclosed')
    assert info.value.position == 24
    assert "quote" in str(info.value)
    assert info.value.status_code == 400


def test_lone_surrogate_is_a_syntax_error() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        compile_query("ab\ud800")
    assert info.value.position == 2


def test_overlong_and_overdeep_queries_are_refused() -> None:
    with pytest.raises(QuerySyntaxError):
        compile_query("a " * 5000)
    with pytest.raises(QuerySyntaxError):
        compile_query("(" * 40 + "a" + ")" * 40)
    with pytest.raises(QuerySyntaxError):
        compile_query("NOT " * 40 + "a")
    with pytest.raises(QuerySyntaxError):
        compile_query(" OR ".join(["x"] * 600))


def test_compiling_is_thread_safe() -> None:
    queries = [f"service:s{i} AND ctx.n:>{i} OR msg:w{i}*" for i in range(40)]
    expected = [compile_query(q) for q in queries]
    results: dict[int, CompiledQuery] = {}

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = compile_query(queries[i])
            assert results[i] == expected[i]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(queries))] == expected


# --- fuzzing --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{q\d+:(?:String|Float64|Int64)\}")
# What the compiler itself writes: identifiers, operators, parentheses and two literals.
_SQL_SHAPE = re.compile(r"(?:[A-Za-z0-9_ ()\[\],=!<>%]|''|'UTC')*")


def _check_compiles_and_runs(store: Store, q: str) -> None:
    try:
        compiled = compile_query(q)
    except QuerySyntaxError as exc:
        assert exc.position is not None and 0 <= exc.position <= len(q)
        return
    # No user text can be in the SQL: all that is left without placeholders is our own.
    assert _SQL_SHAPE.fullmatch(_PLACEHOLDER.sub("", compiled.where)), compiled.where
    store.select_ids("fuzz", compiled)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=60))
def test_any_text_compiles_to_runnable_sql_or_a_syntax_error(store: Store, q: str) -> None:
    _check_compiles_and_runs(store, q)


# fmt: off
_FRAGMENTS = [
    "level", "service", "message", "msg", "trace_id", "timestamp", "severity_number",
    "context.duration", "ctx.ip", "@x", "_exists_", "type", ":", ":*", ":>", ":>=", ":<",
    ":<=", " AND ", " OR ", " NOT ", " and ", " or ", " not ", "-", "+", "(", ")", "[", "]",
    "{", "}", " TO ", " to ", "*", "?", '"', '"a b"', '\\"', "\\", "/", "/a.*b/", "/(?=x)/",
    "'", "%", "_", "WARN", "warning", "500", "-5", "1e999", "0", "2024-05-01T00:00:00Z",
    "é", "日本", "\u0000", "\n", "^2", "~", "fail*", "a?c", "');DROP TABLE t;--", " ",
]
# fmt: on


@FUZZ
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join))
def test_query_shaped_text_compiles_to_runnable_sql_or_a_syntax_error(store: Store, q: str) -> None:
    _check_compiles_and_runs(store, q)


_NASTY = st.text(alphabet=st.sampled_from("aZ9 %_\\*?\"'():;[]{}<>/-+!~^&|éÉß日\t\n"), max_size=12)


def _lucene_escape(text: str) -> str:
    escaped = re.sub(r"""([\\'+\-!():^\[\]"{}~*?|&/\s<>=])""", r"\\\1", text)
    # and/or/not/to are operators in any case; escaping a letter keeps the word a word.
    return "\\" + escaped if escaped.upper() in ("AND", "OR", "NOT", "TO") else escaped


@FUZZ
@given(st.lists(_NASTY, min_size=1, max_size=4, unique=True), st.data())
def test_escaped_user_text_finds_exactly_itself(store: Store, values: list[str], data: st.DataObject) -> None:
    """Any text stored, searched for with Lucene escaping or quoting, finds exactly its rows.

    This is the injection and escaping property: quotes, backslashes, LIKE wildcards, SQL
    fragments and unicode in a value reach ClickHouse as data, never as syntax.
    """
    rows = [
        {"id": i, "service": v, "message": f"<{v}>", "attributes": {"k": {"v": v}}}
        for i, v in enumerate(values)
    ]
    store.create("prop", rows)
    target = data.draw(st.sampled_from(values))
    expected_exact = [i for i, v in enumerate(values) if v == target]
    phrase = '"' + target.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for q in (f"service:{phrase}", f"k.v:{phrase}"):
        assert store.select_ids("prop", compile_query(q)) == expected_exact, q
    # A term cannot hold a line break, even escaped (luqum's lexer); phrases can.
    if target and "\n" not in target:
        word = _lucene_escape(target)
        for q in (f"service:{word}", f"k.v:{word}"):
            assert store.select_ids("prop", compile_query(q)) == expected_exact, q
        # a prefix wildcard and a message substring search, checked against Python
        prefix = [i for i, v in enumerate(values) if v.startswith(target)]
        assert store.select_ids("prop", compile_query(f"service:{word}*")) == prefix
        if target.isascii():
            found = [i for i, v in enumerate(values) if target.lower() in f"<{v}>".lower()]
            assert store.select_ids("prop", compile_query(phrase)) == found, phrase
