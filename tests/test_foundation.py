"""The ground: migrations, health, JSON 404s, the CLI, the serve process, masked logs, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mcprt.__main__ import main
from mcprt.app import masked_uri
from mcprt.storage.base import EventRecord, MigrationError, event_written
from mcprt.storage.migrations import discover_migrations
from mcprt.storage.sqlite import SqliteStore as Store
from support import ROOT, free_port, get_once_serving, stored_events



@pytest.mark.asyncio
async def test_migrations_apply_once_and_are_recorded(tmp_path):
    db = str(tmp_path / "m.db")
    store = Store(db)
    await store.open()
    rows = await store.applied_migrations()
    assert [r["version"] for r in rows] == [m.version for m in discover_migrations()]
    assert await store.migrate() == []  # nothing left to apply
    await store.close()
    again = await Store(db).open()
    assert len(await again.applied_migrations()) == len(rows)
    await again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "connections", "documents", "ops", "snapshots", "events", "schema_migrations"} <= tables


def _rows_in_main_file(db: str, tmp_path: Path) -> int:
    """Events in the database file alone, as if its WAL were lost: what checkpoints have copied."""
    copy = tmp_path / "main-file-only.db"
    copy.write_bytes(Path(db).read_bytes())
    with sqlite3.connect(copy) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


@pytest.mark.asyncio
async def test_commits_stay_in_the_wal_until_the_periodic_checkpoint(tmp_path):
    db = str(tmp_path / "c.db")
    store = await Store(db, checkpoint_interval=0.2).open()
    try:
        for i in range(800):
            store.enqueue(event_written(EventRecord(1767225600.0, "test", "t", details={"i": i, "pad": "x" * 5000})))
        await store.barrier()
        assert _rows_in_main_file(db, tmp_path) == 0  # a commit does not checkpoint
        await asyncio.sleep(0.6)
        assert _rows_in_main_file(db, tmp_path) == 800
        with sqlite3.connect(db) as conn:  # and every row is there through the WAL all along
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 800
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_checkpoints_between_batches_never_fail_a_commit(tmp_path, caplog):
    """A checkpoint runs on the writer thread just before the next batch; nothing it leaves open may
    make that batch's COMMIT fail ("SQL statements in progress") and fall back to row by row."""
    db = str(tmp_path / "k.db")
    store = await Store(db, checkpoint_interval=0.0005).open()
    try:
        for round_ in range(300):
            await asyncio.gather(*(store.submit(event_written(EventRecord(1767225600.0, "test", "t",
                                                                          details={"r": round_, "i": i})))
                                   for i in range(5)))
            await asyncio.sleep(0)
    finally:
        await store.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE kind = 'test'").fetchone()[0] == 1500


@pytest.mark.asyncio
async def test_database_with_unknown_migration_is_refused(tmp_path):
    db = str(tmp_path / "future.db")
    await (await Store(db).open()).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z')")
    with pytest.raises(MigrationError, match="999"):
        await Store(db).open()


@pytest.mark.asyncio
async def test_failed_migration_leaves_no_trace(tmp_path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_ok.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (migrations / "0002_broken.sql").write_text("CREATE TABLE b (x INTEGER);\nTHIS IS NOT SQL;\n")
    store = Store(str(tmp_path / "f.db"), migrations_dir=migrations)
    with pytest.raises(Exception):
        await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "f.db") as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "a" in tables and "b" not in tables


@pytest.mark.asyncio
async def test_health_reports_healthy_with_the_reference_fields(app):
    reply = await app.fetch("GET", "/health")
    assert reply.status == 200
    body = reply.json
    assert body["status"] == "healthy" and body["checks"] == {"database": "ok"}
    assert body["service"] and body["version"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])


@pytest.mark.asyncio
async def test_health_is_503_when_the_database_is_unreachable(app):
    await app.deps.store._reader.close()
    reply = await app.fetch("GET", "/health")
    assert reply.status == 503
    assert reply.json["status"] == "unhealthy"
    assert reply.json["checks"]["database"].startswith("error")
    app.deps.store._reader = await app.deps.store._connect()


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/api/nothing"), ("GET", "/api/sessions/x/y/z")])
@pytest.mark.asyncio
async def test_unknown_paths_get_a_json_404(app, method, path):
    reply = await app.fetch(method, path, body={} if method == "POST" else None)
    assert reply.status == 404
    assert reply.json["error"]["code"] == "NOT_FOUND"
    assert set(reply.json["error"]) == {"code", "message", "details"}


@pytest.mark.asyncio
async def test_wrong_method_gets_the_error_shape(app):
    reply = await app.fetch("PUT", "/health", body={})
    assert reply.status == 405
    assert set(reply.json["error"]) == {"code", "message", "details"}


@pytest.mark.asyncio
async def test_clean_shutdown_writes_every_queued_event(tmp_path, start):
    harness = await start()
    for i in range(500):
        harness.deps.audit.event("system", "test_event", "info", {"i": i})
    await harness.server.stop()
    db = harness.server.settings.db
    assert len(await stored_events(db, type="test_event")) == 500
    assert len(await stored_events(db, type="server_stopped")) == 1
    started, = await stored_events(db, type="server_started")
    assert started.details["loop"] == "asyncio"


def test_masked_uri_keeps_only_a_prefix_of_session_ids():
    sid = "3f2b9c1e-8a7d-4e6f-9b0a-1c2d3e4f5a6b"
    assert sid not in masked_uri(f"/ws?session_id={sid}&document_id=x")
    assert "session_id=3f2b9c1e…" in masked_uri(f"/ws?session_id={sid}&document_id=x")
    assert masked_uri(f"/api/sessions/{sid}/activate") == "/api/sessions/3f2b9c1e…/activate"


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--db", "--log-level", "--allowed-origins", "--admin-token", "--session-ttl",
                 "--pending-ttl", "--max-message-bytes", "--rate-limit", "--rate-burst", "--sanitizer",
                 "--event-retention"):
        assert flag in out
    assert "MCPRT_PORT" in out


def test_migrate_list_and_apply(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["migrate", "--list", "--db", db]) == 0
    assert "pending" in capsys.readouterr().out
    assert main(["migrate", "--db", db]) == 0
    assert main(["migrate", "--list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "0001_init" in out and "applied" in out and "pending" not in out


def test_serve_subprocess_answers_masks_ids_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {**os.environ, "MCPRT_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcprt", "--db", str(tmp_path / "s.db")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import urllib.request
        assert json.loads(get_once_serving(proc, port, "/health"))["status"] == "healthy"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions", method="POST",
                                         data=json.dumps({"user_id": "smoke"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as r:
            sid = json.load(r)["session_id"]
        for path in (f"/api/sessions/{sid}", f"/ws?session_id={sid}", f"/api/sessions/{sid}/nothing"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
            except OSError:
                pass
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert f"/api/sessions/{sid[:8]}" in output  # requests are logged...
    assert sid not in output                     # ...but never a whole session id
    assert len(asyncio.run(stored_events(str(tmp_path / "s.db"), type="server_stopped"))) == 1


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/static/demo.js"])
@pytest.mark.asyncio
async def test_demo_files_are_served_with_a_content_security_policy(app, path):
    reply = await app.fetch("GET", path)
    assert reply.status == 200
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_iso_matches_datetime_formatting():
    import random
    from datetime import datetime, timezone

    from mcprt.clock import iso, parse_iso
    rng = random.Random(1)
    for _ in range(2000):
        ts = rng.uniform(0, 4e9)
        text = iso(ts)
        assert text[:19] == datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        assert abs(parse_iso(text) - ts) < 2e-6


@pytest.mark.timeout(180)
def test_an_installed_mcprt_serves_without_the_checkout(tmp_path):
    """`pip install .` carries schemas/, migrations/ and static/; the server runs from site-packages alone."""
    import shutil
    source, site, work = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "*.db", "*.db-*", "__pycache__", "build",
                                                                "*.egg-info", ".pytest_cache", "artifacts"))
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                            str(source)], capture_output=True, text=True, timeout=170)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert (site / "bin" / "mcprt").exists()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    where = subprocess.run([sys.executable, "-c", "import mcprt; print(mcprt.resource_dir('static'))"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(site / "mcprt" / "_data" / "static")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mcprt", "--port", str(port)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import urllib.request
        assert "<title>" in get_once_serving(proc, port, "/")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions", method="POST",
                                         data=json.dumps({"user_id": "installed"}).encode())
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert (work / "mcprt.db").exists()


@pytest.mark.asyncio
async def test_serve_runs_on_uvloop_when_asked(tmp_path):
    from support import editor_of, spawn_server
    port, db = free_port(), str(tmp_path / "s.db")
    proc = spawn_server(db, port, "--loop", "uvloop", "--log-level", "warning", stderr=subprocess.PIPE, text=True)
    try:
        _, ws = await editor_of(port, "alice", "doc")
        await ws.send(json.dumps({"id": "e1", "type": "realtime_edit", "payload": {
            "base_revision": 0, "change_delta": {"position": 0, "insert": "hi"}}}))
        while (reply := json.loads(await ws.recv()))["type"] != "edit_ack":
            pass
        assert reply["id"] == "e1" and reply["payload"]["revision"] == 1
        await ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    # the sockets run on uvloop's transports: nothing of theirs may fail in a callback, logged and lost
    with proc.stderr:
        assert "Traceback" not in proc.stderr.read()
    started, = await stored_events(db, type="server_started")
    assert started.details["loop"] == "uvloop"


def test_an_unknown_loop_is_refused_with_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mcprt", "--db", str(tmp_path / "s.db"), "--port", str(free_port()),
                           "--loop", "twisted"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--loop must be one of asyncio, uvloop, not 'twisted'" in done.stderr
