"""The stackwatch command against a real server: import, search, tail, and clear failures."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("cli") / "data").start()
    yield srv
    srv.stop()


def sw(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackwatch.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, **kw)  # type: ignore[call-overload]


def test_import_then_search(server: ServerProcess, tmp_path: Path) -> None:
    app_log = tmp_path / "app.log"
    app_log.write_text("".join(json.dumps({"level": "ERROR" if i % 10 == 0 else "INFO", "message": f"job {i}",
                                           "context": {"n": i}}) + "\n" for i in range(2000)))
    access = tmp_path / "access.log"
    access.write_text('203.0.113.7 - - [01/Jan/2026:10:00:00 +0000] "GET /api/leads/17 HTTP/1.1" 503 12 "-" '
                      '"curl/8.0"\n' * 3)
    r = sw("logs", "import", str(app_log), str(access), "--service", "importer", "--url", server.url,
           env={"STACKWATCH_INGEST_TOKEN": INGEST_TOKEN})
    assert r.returncode == 0, r.stderr
    assert "imported 2003 lines" in r.stderr
    assert server.wait_for_count("service:importer", 2003, start="2025-12-01T00:00:00Z") == 2003
    env = {"STACKWATCH_URL": server.url, "STACKWATCH_TOKEN": ADMIN_TOKEN}
    r = sw("logs", "search", "service:importer AND level:ERROR", "--since", "1h", "--json", env=env)
    assert r.returncode == 0, r.stderr
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(hits) == 100  # the default limit; newest first
    assert all(h["level"] == "ERROR" for h in hits)
    r = sw("logs", "search", "service:importer AND level:ERROR", "--since", "1h", "--limit", "5", env=env)
    assert r.returncode == 0
    assert "5 of 200 matching lines" in r.stderr
    assert r.stdout.count("job ") == 5
    # Access log lines were parsed as web logs, with the status as a number.
    r = sw("logs", "search", "http.status_code:>=500", "--since", "3000d", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3


def test_import_reads_rotated_gzip_json_arrays_and_mixed_files(server: ServerProcess, tmp_path: Path) -> None:
    """A rotated access.log.1.gz was stored as one line of binary; a JSON array export as its
    lines of text; JSON lines with a stray traceback line imported nothing (a 400)."""
    import gzip

    rotated = tmp_path / "access.log.1.gz"
    rotated.write_bytes(gzip.compress(b'203.0.113.9 - - [01/Jan/2026:10:00:00 +0000] "GET /gz HTTP/1.1" 502 1 "-" "x"\n'
                                      * 4))
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"message": f"exported {i}", "marker": "arr"} for i in range(5)], indent=2))
    mixed = tmp_path / "app-mixed.log"
    mixed.write_text('{"message": "before", "marker": "mix"}\nTraceback (most recent call last):\n'
                     '{"message": "after", "marker": "mix"}\n')
    r = sw("logs", "import", str(rotated), str(export), str(mixed), "--service", "imports2", "--url", server.url,
           env={"STACKWATCH_INGEST_TOKEN": INGEST_TOKEN})
    assert r.returncode == 0, r.stderr
    assert "imported 12 lines" in r.stderr
    assert server.wait_for_count("service:imports2 AND http.status_code:502", 4, start="2025-12-01T00:00:00Z") == 4
    assert server.wait_for_count("marker:arr", 5) == 5
    assert server.wait_for_count("marker:mix", 2) == 2  # the JSON lines still read as JSON
    assert server.wait_for_count('service:imports2 AND message:"Traceback (most recent call last):"', 1) == 1


def test_errors_exit_non_zero_with_a_message(server: ServerProcess) -> None:
    env = {"STACKWATCH_URL": server.url, "STACKWATCH_TOKEN": ADMIN_TOKEN}
    r = sw("logs", "search", "level:(ERROR", env=env)
    assert r.returncode == 1
    assert "400" in r.stderr and "position" in r.stderr
    r = sw("logs", "search", "*", env={"STACKWATCH_URL": server.url, "STACKWATCH_TOKEN": "bad-token-000000000"})
    assert r.returncode == 1
    assert "401" in r.stderr
    r = sw("logs", "import", "/nonexistent.log", "--url", server.url)
    assert r.returncode != 0
    # A server that is not there: one line that says so, for every command that calls it.
    gone = f"http://127.0.0.1:{free_port()}"
    for args in (["logs", "search", "*"], ["logs", "tail"], ["projects"]):
        r = sw(*args, "--url", gone, env={"STACKWATCH_TOKEN": ADMIN_TOKEN})
        assert r.returncode == 1, (args, r.stderr)
        assert f"error: cannot reach {gone}" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_log_text_is_printed_as_it_is(server: ServerProcess) -> None:
    """Brackets in a line are text, not console markup: "[/api/leads]" once crashed the
    printer and "[error]" vanished from nginx's lines."""
    lines = ['{"service": "bracketcli", "level": "ERROR", "message": "GET [/api/leads] failed"}',
             '{"service": "bracketcli", "message": "2026/11/24 05:48:00 [error] 1234#0: connect() failed"}',
             '{"service": "bracketcli", "message": "see [bold]this[/bold] and [link=http://x.example]y[/link]",'
             ' "note": "[/]", "trace_id": "0af7651916cd43dd8448eb211c80319c"}']
    with server.ingest_client() as c:
        c.post("/api/v1/logs", content=("\n".join(lines) + "\n").encode())
    assert server.wait_for_count("service:bracketcli", 3) == 3
    r = sw("logs", "search", "service:bracketcli", "--since", "1h",
           env={"STACKWATCH_URL": server.url, "STACKWATCH_TOKEN": ADMIN_TOKEN, "COLUMNS": "300"})
    assert r.returncode == 0, r.stderr
    assert "GET [/api/leads] failed" in r.stdout
    assert "[error] 1234#0" in r.stdout
    assert "see [bold]this[/bold] and [link=http://x.example]y[/link]" in r.stdout and "note=[/]" in r.stdout
    assert "trace_id=0af7651916cd43dd8448eb211c80319c" in r.stdout  # the way from a line to its trace


def test_tail_prints_new_lines(server: ServerProcess) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stackwatch.cli", "logs", "tail", "service:tailcli", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "STACKWATCH_URL": server.url, "STACKWATCH_TOKEN": ADMIN_TOKEN})
    try:
        time.sleep(1.5)
        with server.ingest_client() as c:
            c.post("/api/v1/logs", content=b'{"message": "live!", "service": "tailcli"}\n')
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no line from stackwatch logs tail within 20 s"
        line = proc.stdout.readline()
        assert json.loads(line)["message"] == "live!"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_server_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    r = sw("server", "--data-dir", str(tmp_path), "--port", str(free_port()), env={"STACKWATCH_WAL_FSYNC": "perhaps"})
    assert r.returncode == 2
    assert "wal_fsync" in r.stderr and "perhaps" in r.stderr


def test_server_prints_url_and_how_to_log_in(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("STACKWATCH_ADMIN_TOKEN", "STACKWATCH_INGEST_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-m", "stackwatch.cli", "server", "--data-dir", str(tmp_path / "d"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**{k: v for k, v in env.items() if k != "COLUMNS"},
                                 "STACKWATCH_PUBLIC_URL": "https://mon.example.com"})
    try:
        assert proc.stdout is not None
        out = ""
        for _ in range(30):
            out += proc.stdout.readline()
            if "not be shown again" in out:
                break
        # Where it listens, and where users reach it when that differs.
        assert f"listening on http://127.0.0.1:{port} (public URL https://mon.example.com)" in out, out
        # Each secret on the line that says what it is, even at rich's 80 columns for a pipe.
        assert re.search(r"admin@localhost with password: \S{12,}\n", out), out
        assert re.search(r"admin API token \(shown once\): swa_\S+\n", out), out
        assert re.search(r"ingest token of project 'default' \(shown once\): swi_\S+\n", out), out
    finally:
        proc.terminate()
        proc.wait(timeout=20)
