"""The store under hostile conditions: rows SQLite cannot bind, a writer that fails, a locked, read-only or
removed database file, a torn WAL, a path that is not a database; each against real SQLite files."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcprt.__main__ import run_until_stopped
from mcprt.storage.base import EventRecord, StoreFailed, StoreOpenError, Write, event_written
from mcprt.storage.batch import PROBE_REUSE
from mcprt.storage.sql import EVENT_PRUNE_CHUNK
from mcprt.storage.sqlite import SqliteStore as Store
from mcprt.storage.wal import read_wal
from support import ROOT, editor_of, free_port, spawn_server



def _event(type_: str, at: float | None = None, **fields) -> Write:
    return event_written(EventRecord(time.time() if at is None else at, "test", type_, **fields))


@pytest.mark.asyncio
async def test_a_writer_that_cannot_recover_fails_the_store_and_ends_the_serving_process(start, caplog):
    app = await start()
    store = app.deps.store
    # The writer cannot run: its thread is gone (large batches) and its connection closed (small batches
    # commit on the loop's thread with it): every batch now fails.
    store._writer_thread.shutdown(wait=True)
    store._writer.close()
    pending = [store.submit(_event(f"lost-{i}")) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
    assert all(isinstance(r, StoreFailed) for r in results)
    for _ in range(3):  # each try is a loop failure until the store gives up
        if store.failed:
            break
        await asyncio.gather(store.submit(_event("again")), return_exceptions=True)
    assert store.failed and "the writer failed 3 times" in store.failed
    assert app.server.fatal.is_set()
    with pytest.raises(StoreFailed):
        await asyncio.wait_for(store.submit(_event("refused")), 1)  # at once, not a hang
    health = await app.fetch("GET", "/health")
    assert health.status == 503 and health.json["checks"]["database"].startswith("error: writes:")
    assert [r for r in caplog.records if r.levelno == logging.CRITICAL]
    status = await asyncio.wait_for(run_until_stopped(app.server, asyncio.Event()), 10)
    assert status == 1


@pytest.mark.asyncio
async def test_health_is_503_while_another_process_holds_the_write_lock(app, tmp_path):
    assert (await app.fetch("GET", "/health")).status == 200
    await asyncio.sleep(PROBE_REUSE + 0.1)  # past the time that probe answers for
    other = sqlite3.connect(tmp_path / "mcprt.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        reply = await app.fetch("GET", "/health")
        assert reply.status == 503 and reply.json["status"] == "unhealthy"
        assert reply.json["checks"]["database"] == "error: writes: a write did not commit within 2s"
        assert time.monotonic() - started < 4
        assert {"service", "timestamp", "version"} <= set(reply.json)
    finally:
        other.execute("ROLLBACK")
        other.close()
    deadline = time.monotonic() + 10  # the probe that waited for the lock ends; the next one commits
    while (reply := await app.fetch("GET", "/health")).status != 200:
        assert time.monotonic() < deadline, reply.json
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_a_health_flood_costs_at_most_one_probe_write_a_second(app, tmp_path):
    def probed_at():
        with sqlite3.connect(tmp_path / "mcprt.db") as conn:
            return conn.execute("SELECT at FROM health_probe").fetchone()[0]

    assert (await app.fetch("GET", "/health")).status == 200
    first = probed_at()
    replies = await asyncio.gather(*(app.fetch("GET", "/health") for _ in range(20)))
    assert {r.status for r in replies} == {200} and probed_at() == first
    await asyncio.sleep(1.1)
    assert (await app.fetch("GET", "/health")).status == 200 and probed_at() > first


@pytest.mark.asyncio
async def test_health_is_503_when_the_database_is_read_only(app):
    store = app.deps.store
    await store._on_writer(store._writer.execute, "PRAGMA query_only = ON")  # SQLite refuses every write
    reply = await app.fetch("GET", "/health")
    assert reply.status == 503
    assert "readonly" in reply.json["checks"]["database"], reply.json


@pytest.mark.asyncio
async def test_a_removed_database_file_stops_acknowledging_edits(start, tmp_path, caplog):
    app = await start()
    alice = await app.editor("alice", document_id="gone")
    await alice.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "a"}})
    assert (await alice.recv_type("edit_ack"))["payload"]["revision"] == 1
    os.unlink(tmp_path / "mcprt.db")
    sent = await alice.send_msg("realtime_edit", {"change_delta": {"position": 1, "insert": "b"}})
    code, got = await alice.closed()
    assert not [m for m in got if m["type"] == "edit_ack"]
    errors = [m for m in got if m["type"] == "error"]
    assert errors and errors[0]["id"] == sent and errors[0]["payload"]["code"] == "SERVER_ERROR"
    reply = await app.fetch("GET", "/health")
    assert reply.status == 503
    assert reply.json["checks"]["database"] == "error: writes: the database file was removed"
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical and "was removed" in critical[0] and "/proc/" in critical[0]
    assert not app.server.fatal.is_set()  # the process stays up: its open file is the only copy left


@pytest.mark.parametrize("kind", ["directory", "missing folder", "not sqlite"])
def test_a_database_that_cannot_be_opened_is_one_line_and_status_2(tmp_path, kind):
    path = {"directory": tmp_path, "missing folder": tmp_path / "nowhere" / "x.db",
            "not sqlite": tmp_path / "notes.db"}[kind]
    if kind == "not sqlite":
        path.write_text("these are my notes, not a database\n" * 100)
    proc = subprocess.run([sys.executable, "-m", "mcprt", "--port", "0", "--db", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot open database {path}" in lines[0]


@pytest.mark.asyncio
async def test_opening_a_directory_raises_store_open_error(tmp_path):
    with pytest.raises(StoreOpenError, match="is a directory"):
        await Store(str(tmp_path)).open()


def _unbackfilled_commits(db: str) -> list[int]:
    """Offsets of the WAL's commit frames (current generation: the header's salts) that no checkpoint has
    copied into the database file yet (the -shm file's nBackfill). A frame already copied is in the
    database file too: damaging it would mix old and new pages, which is not what a torn tail is."""
    import struct
    data = Path(db + "-wal").read_bytes()
    backfilled = struct.unpack("=I", Path(db + "-shm").read_bytes()[96:100])[0]
    page_size, salts = struct.unpack(">I", data[8:12])[0], data[16:24]
    offsets, at, index = [], 32, 1
    while at + 24 + page_size <= len(data) and data[at + 8:at + 16] == salts:
        if struct.unpack(">I", data[at + 4:at + 8])[0] and index > backfilled:
            offsets.append(at)
        at, index = at + 24 + page_size, index + 1
    return offsets


def _last_revision_of_a_copy(db: str, copy: Path) -> int:
    """The newest revision of document w in a copy of the database and its WAL, as they are now."""
    import shutil
    shutil.copyfile(db, copy)
    shutil.copyfile(db + "-wal", str(copy) + "-wal")
    with sqlite3.connect(copy) as conn:
        return conn.execute("SELECT max(revision) FROM ops WHERE document_id = 'w'").fetchone()[0]


async def _killed_mid_burst(db: str, port: int, log_file) -> list[int]:
    """A server takes pipelined edits and is killed -9 while they still arrive; the revisions it acked."""
    import json

    proc = spawn_server(db, port, "--log-level", "info", stderr=log_file, stdout=subprocess.DEVNULL)
    acked = []
    try:
        _, connection = await editor_of(port, "w", "w")
        async with connection as ws:
            for i in range(300):  # pipelined, as in the kill -9 durability test
                await ws.send(json.dumps({"id": f"e{i}", "type": "realtime_edit",
                                          "payload": {"change_delta": {"position": 0, "insert": f"<{i}>"}}}))
            while len(acked) < 100:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] == "edit_ack":
                    acked.append(message["payload"]["revision"])
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return acked


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_torn_wal_tail_is_reported_at_start_up(tmp_path):
    port = free_port()
    for attempt in range(5):  # until the kill leaves commits no checkpoint has copied yet (almost always)
        db = str(tmp_path / f"w{attempt}.db")
        with open(tmp_path / "first.log", "wb") as first:
            acked = await _killed_mid_burst(db, port, first)
        commits = _unbackfilled_commits(db)
        if commits:
            break
    assert len(acked) >= 100 and commits
    wal = Path(db + "-wal")
    before = _last_revision_of_a_copy(db, tmp_path / "before.db")
    with open(wal, "r+b") as f:  # a byte in the page of the newest commit frame goes bad
        f.seek(commits[-1] + 24 + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    expected = read_wal(str(wal))
    assert expected.lost_commits == 1 and expected.bad_checksum
    with open(tmp_path / "second.log", "wb") as second:
        proc = spawn_server(db, port, "--log-level", "info", stderr=second, stdout=subprocess.DEVNULL)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    log_text = (tmp_path / "second.log").read_text()
    warning = [line for line in log_text.splitlines() if "WARNING" in line and "WAL recovery" in line]
    assert len(warning) == 1, log_text
    assert (f"{expected.frames} frames in {expected.commits} commits are valid; "
            f"{expected.discarded_bytes} of {expected.size} bytes are discarded") in warning[0]
    assert "1 committed transactions, after a frame whose checksum is wrong" in warning[0]
    kept = Path(warning[0].split("WAL kept as ")[1].rstrip(")"))
    assert kept.exists() and kept.stat().st_size == expected.size
    revision = [line for line in log_text.splitlines() if "after recovery, the last revision" in line]
    with sqlite3.connect(db) as conn:  # what the log says is what the database kept
        kept_revision = conn.execute("SELECT max(revision) FROM ops WHERE document_id = 'w'").fetchone()[0]
    assert revision and (f" w at {kept_revision}" if kept_revision else "documents: none") in revision[0], log_text
    assert (kept_revision or 0) < before  # the discarded commit held edits that had been committed


@pytest.mark.asyncio
async def test_a_wal_left_whole_is_reported_at_info(tmp_path, caplog):
    db = str(tmp_path / "whole.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    for i in range(5):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    import shutil
    copy = tmp_path / "copy.db"  # the files as a crash leaves them: the WAL not checkpointed or removed
    shutil.copyfile(db, copy)
    shutil.copyfile(db + "-wal", str(copy) + "-wal")
    conn.close()
    caplog.set_level(logging.INFO, logger="mcprt.store")
    store = await Store(str(copy), check_wal=True).open()
    await store.close()
    lines = [r for r in caplog.records if "WAL recovery" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "6 commits are valid; 0 of" in lines[0].getMessage()
    with sqlite3.connect(copy) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 5


async def _fill_events(store: Store, n: int) -> None:
    for i in range(n):
        store.enqueue(_event(f"e{i}"))  # recent: within retention
    await store.barrier()


@pytest.mark.asyncio
async def test_the_sweeper_caps_the_event_log_and_records_it(start):
    app = await start(event_max_rows=50)
    store = app.deps.store
    await _fill_events(store, 120)
    newest = [e["id"] for e in await app.events(limit=50)]
    await app.server.sweep()
    await app.settle()
    left = await app.events(limit=1000)
    assert [e["id"] for e in left if e["type"] != "events_pruned"] == newest
    pruned = [e for e in left if e["type"] == "events_pruned"]
    assert len(pruned) == 1 and pruned[0]["details"] == {"max_rows": 50, "through_id": min(newest) - 1}
    await app.server.sweep()  # at the cap (the record of pruning is one more row): nothing more to do
    await app.settle()
    assert len([e for e in await app.events(limit=1000) if e["type"] == "events_pruned"]) <= 2


@pytest.mark.asyncio
async def test_capping_deletes_in_bounded_chunks_per_sweep(tmp_path):
    store = await Store(str(tmp_path / "cap.db")).open()
    try:
        await _fill_events(store, 1000)
        first = (await store.events(limit=1, after_id=0))[0].id
        through = await store.cap_events(100, chunk=200, chunks=3)  # 900 over the cap: 600 this round
        assert through == first + 599
        assert len(await store.events(limit=5000)) == 400
        assert await store.cap_events(100, chunk=200, chunks=3) == first + 899
        assert len(await store.events(limit=5000)) == 100
        assert await store.cap_events(100) is None
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_pruning_chunk_holds_the_writer_briefly(tmp_path):
    """One chunk of the default size, on a log of realistic rows with every index, takes well under a second."""
    store = await Store(str(tmp_path / "big.db")).open()
    try:
        for i in range(3 * EVENT_PRUNE_CHUNK):
            store.enqueue(event_written(EventRecord(1767225600.0 + i % 60, "security", "xss_attempt", "medium",
                                                    {"i": i, "pad": "x" * 200}, session_id=f"s{i % 97}", user_id="u",
                                                    client_addr="::1")))
        await store.barrier()
        started = time.perf_counter()
        await store.cap_events(EVENT_PRUNE_CHUNK, chunks=1)
        assert time.perf_counter() - started < 1.0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_the_commit_that_starts_the_wal_over_runs_on_the_writer_thread(tmp_path):
    """After a checkpoint that copied every frame, the next commit resets the WAL (and truncates one past
    journal_size_limit, milliseconds here): the writer thread takes it, never the event loop's."""
    store = await Store(str(tmp_path / "wal.db"), checkpoint_interval=3600).open()
    threads = []
    inner = store._commit_waiting

    def on_thread(groups):
        threads.append(groups)
        return inner(groups)
    store._commit_waiting = on_thread
    try:
        for i in range(5):
            await store.submit(event_written(EventRecord(time=1.0 + i, kind="t", type=f"e{i}", severity="low")))
        assert threads == []  # small commits on the loop's thread
        await store._checkpoint_pass()  # as the checkpoint loop's maintenance pass runs it
        await store.submit(event_written(EventRecord(time=9.0, kind="t", type="after", severity="low")))
        assert len(threads) == 1  # the one that starts the WAL over
        await store.submit(event_written(EventRecord(time=10.0, kind="t", type="next", severity="low")))
        assert len(threads) == 1 and [e.type for e in await store.events(limit=2)] == ["next", "after"]
    finally:
        await store.close()
