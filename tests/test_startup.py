"""Start-up fails fast and says why in one line: every flag and MCPRT_* value checked before anything
starts, a port in use or a database that cannot be written refused at once, exit status 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from mcprt.config import Settings
from support import ROOT, free_port


def serve(*args: str, env: dict | None = None, seconds: float = 30) -> tuple[int, list[str], float]:
    """`python -m mcprt ARGS` expected to refuse to start: (exit status, stderr lines, seconds taken)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mcprt", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=seconds, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stderr.splitlines() if "file descriptor limit" not in line
             and "applied migration" not in line]
    return proc.returncode, lines, time.monotonic() - started


@pytest.mark.parametrize("args, says", [
    (("--port", "99999"), "--port must be a port, 0 to 65535"),
    (("--port", "-1"), "--port must be a port"),
    (("--sanitizer", "foo"), "--sanitizer must be one of bleach, nh3"),
    (("--violation-action", "nuke"), "--violation-action must be one of disconnect, invalidate"),
    (("--rate-limit", "-3"), "--rate-limit must be above zero"),
    (("--max-message-bytes", "0"), "--max-message-bytes must be above zero"),
    (("--session-ttl", "0s"), "--session-ttl must be above zero"),
    (("--log-level", "loud"), "--log-level must be one of debug, info, warning, error"),
    (("--loop", "trio"), "--loop must be one of asyncio, uvloop"),
    (("--trust-proxy-headers", "banana"), "invalid trust proxy headers value: 'banana'"),
    (("--rate-burst", "many"), "argument --rate-burst: invalid integer value: 'many'"),
    (("--auth", "magic"), "--auth must be one of open, jwt"),
])
def test_a_bad_flag_is_refused_in_one_line(tmp_path, args, says):
    code, lines, _ = serve("--db", str(tmp_path / "x.db"), *args)
    assert code == 2 and len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "x.db").exists()  # refused before anything started


def test_a_bad_environment_value_names_its_variable_and_breaks_nothing_else(tmp_path):
    code, lines, _ = serve("--db", str(tmp_path / "x.db"), env={"MCPRT_RATE_LIMIT": "abc"})
    assert code == 2 and lines == ["error: MCPRT_RATE_LIMIT='abc' is not valid: could not convert string to float: "
                                   "'abc'"]
    code, lines, _ = serve("--db", str(tmp_path / "x.db"), env={"MCPRT_PORT": "70000"})
    assert code == 2 and "--port must be a port" in lines[0]
    for command in (("--help",), ("serve", "--help"), ("sessions", "--db", str(tmp_path / "none.db"))):
        proc = subprocess.run([sys.executable, "-m", "mcprt", *command], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, env={**os.environ, "MCPRT_RATE_LIMIT": "abc"})
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
        assert command[-1] != "--help" or proc.returncode == 0


def test_a_port_in_use_exits_at_once(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines, seconds = serve("--db", str(tmp_path / "x.db"), "--port", str(port))
    assert code == 2 and seconds < 15
    assert lines[-1].endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use"), lines


@pytest.mark.asyncio
async def test_a_database_that_cannot_be_written_is_refused_at_start_up(pg_cluster):
    import asyncpg

    from mcprt.app import Server
    from mcprt.storage.base import StoreOpenError
    url = pg_cluster.database()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET default_transaction_read_only = on")
    finally:
        await connection.close()
    with pytest.raises(StoreOpenError, match="read-only transaction"):
        await Server(Settings(port=0, db=url)).start()
    code, lines, seconds = serve("--db", url, "--port", str(free_port()))
    assert code == 2 and "read-only transaction" in lines[-1] and seconds < 15, lines


@pytest.mark.asyncio
async def test_a_sqlite_file_that_takes_no_write_is_refused_before_serving(tmp_path):
    """Opening reads (a read-only file opens); the write probe at start-up is what refuses it."""
    from mcprt.app import Server
    from mcprt.storage import store_for
    from mcprt.storage.base import StoreOpenError
    store = await store_for(str(tmp_path / "ro.db")).open()
    try:
        await store._on_writer(store._writer.execute, "PRAGMA query_only = ON")  # SQLite refuses every write
        with pytest.raises(StoreOpenError, match="cannot write to the database .*readonly"):
            await Server(Settings(port=0, db=str(tmp_path / "ro.db")))._check_writable(store)
    finally:
        await store.close()


def test_a_closed_pipe_ends_a_listing_quietly(tmp_path):
    import asyncio

    from mcprt.storage import store_for
    from mcprt.storage.base import EventRecord, event_written

    async def fill() -> None:
        store = await store_for(str(tmp_path / "e.db")).open()
        for i in range(2000):
            store.enqueue(event_written(EventRecord(1e9 + i, "system", "filler", "info", {"i": i})))
        await store.barrier()
        await store.close()
    asyncio.run(fill())
    proc = subprocess.Popen([sys.executable, "-m", "mcprt", "events", "--db", str(tmp_path / "e.db"), "--limit",
                             "2000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    assert proc.wait(30) == 0
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()


def test_every_flag_is_in_the_readme():
    import dataclasses
    readme = (ROOT / "README.md").read_text()
    missing = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(Settings)
               if f"`--{f.name.replace('_', '-')}`" not in readme]
    assert missing == [], f"flags the README does not name: {missing}"


def test_security_events_reach_the_server_log_as_json_at_their_severity(tmp_path):
    import json
    import urllib.error
    import urllib.request

    from support import spawn_server
    port = free_port()
    proc = spawn_server(str(tmp_path / "log.db"), port, "--log-format", "json", stderr=subprocess.PIPE, text=True)
    claimed = "0123abcd-1111-2222-3333-444455556666"
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/documents/x", headers={"X-Session-ID": claimed})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    security = [r for r in records if r["logger"] == "mcprt.security"]
    assert len(security) == 1 and security[0]["level"] == "warning", security
    assert security[0]["message"].startswith("security invalid_session (medium)")
    assert "0123abcd" in security[0]["message"] and claimed not in err  # the id masked, here as everywhere


def test_events_cli_says_how_many_more_exist_and_takes_what_it_prints(tmp_path, capsys):
    import asyncio

    from mcprt.__main__ import main
    from mcprt.storage import store_for
    from mcprt.storage.base import EventRecord, event_written
    db = str(tmp_path / "cli.db")
    session = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

    async def seed() -> None:
        store = await store_for(db).open()
        for i in range(120):
            store.enqueue(event_written(EventRecord(1.7e9 + i, "security", "invalid_message", "medium", {"i": i},
                                                    session_id=session if i % 2 else None)))
        await store.barrier()
        await store.close()
    asyncio.run(seed())
    assert main(["events", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "showing the newest 50 of 120 (use --limit), oldest first" and len(out) == 51
    assert main(["events", "--db", db, "--session", session[:8], "--limit", "1000"]) == 0  # as the table prints it
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "60 event(s), oldest first" and all(f"session={session[:8]}" in line for line in out[1:])
    assert main(["events", "--db", db, "--since", "2023-11-14", "--limit", "1000"]) == 0  # a date: midnight UTC
    assert capsys.readouterr().out.splitlines()[0].startswith("120 event(s)")
    with pytest.raises(SystemExit) as refused:
        main(["events", "--db", db, "--kind", "securty"])
    assert refused.value.code == 2 and "invalid choice: 'securty'" in capsys.readouterr().err
    long_details = max((line for line in out[1:]), key=len)
    assert not long_details.endswith("…")  # not a terminal: nothing cut


def test_the_python_client_example_edits_a_document(tmp_path):
    from support import spawn_server
    port = free_port()
    proc = spawn_server(str(tmp_path / "ex.db"), port, "--log-level", "warning")
    try:
        for user, text in (("alice", "hello "), ("bob", "world")):
            done = subprocess.run([sys.executable, "-c", f"import asyncio, client; print(repr(asyncio.run(client.run("
                                   f"'http://127.0.0.1:{port}', 'notes', {user!r}, {text!r}, listen=0))))"],
                                  cwd=ROOT / "examples", capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "joined notes at revision 1: 'hello '" and lines[-1] == "'hello world'"
    finally:
        proc.terminate()
        proc.wait(20)
