"""One contract, both backends: every test here runs against a SQLite file and a real PostgreSQL database
(the throwaway cluster of pgcluster.py), through the storage interface the domain uses."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from conftest import BACKENDS, database_for
from mcprt import turn
from mcprt.storage import store_for
from mcprt.storage.base import (ChainBroken, ConnectionRecord, EventRecord, MigrationError, SessionRecord,
                                StoreFailed, Write, connection_closed, connection_opened, document_chain,
                                document_written, event_written, op_written, session_moved, session_written,
                                snapshot_written)
from mcprt.storage.migrations import discover_migrations

T0 = 1767225600.123456  # 2026-01-01T00:00:00.123456Z


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    return database_for(request, request.param, tmp_path)


@pytest_asyncio.fixture
async def store(url):
    opened = await store_for(url).open()
    yield opened
    await opened.close()


def event(type_: str, at: float = T0, **fields) -> Write:
    return event_written(EventRecord(at, "test", type_, **fields))


def session(n: int, state: str = "Active", created: float = T0, expires: float = T0 + 3600) -> SessionRecord:
    return SessionRecord(f"00000000-0000-4000-8000-{n:012d}", f"peer{n}", f"user{n % 3}", None, state, created,
                         expires, activated_at=created if state == "Active" else None)


async def raw(url: str, sql: str) -> None:
    """A statement run beside the store, as another program would (to plant what only an older or newer
    mcprt could have written)."""
    if url.startswith("postgresql://"):
        import asyncpg
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    else:
        import sqlite3
        with sqlite3.connect(url) as conn:
            conn.execute(sql)


# -- migrations ---------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_migrations_are_applied_once_with_their_rows(url):
    store = await store_for(url).open()
    rows = await store.applied_migrations()
    await store.close()
    dialect = "postgres" if url.startswith("postgresql://") else "sqlite"
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in discover_migrations(dialect=dialect)]
    assert [m.name for m in discover_migrations(dialect="sqlite")] == [m.name for m in discover_migrations(dialect="postgres")]
    again = await store_for(url).open()
    try:
        assert await again.migrate() == []  # nothing left
        assert await again.applied_migrations() == rows
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_a_database_from_a_newer_mcprt_is_refused(url):
    await (await store_for(url).open()).close()
    await raw(url, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', '2030-01-01T00:00:00Z')")
    with pytest.raises(MigrationError, match="999"):
        await store_for(url).open()


# -- the write path -------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_writes_land_in_order_and_read_back_as_records(store):
    for i in range(50):
        store.enqueue(event(f"e{i}", T0 + i, details={"i": i, "s": "ünï"}, session_id="s", client_addr="10.0.0.1"))
    await store.barrier()
    newest = await store.events(limit=100)
    assert [e.type for e in newest] == [f"e{i}" for i in reversed(range(50))]
    assert [e.id for e in newest] == sorted((e.id for e in newest), reverse=True)
    first = newest[-1]
    assert first.time == pytest.approx(T0, abs=1e-6) and first.details == {"i": 0, "s": "ünï"}
    assert (first.session_id, first.client_addr, first.kind) == ("s", "10.0.0.1", "test")
    tail = await store.events(after_id=newest[10].id, limit=100)  # oldest first after an id, for tailing
    assert [e.type for e in tail] == ["e40", "e41", "e42", "e43", "e44", "e45", "e46", "e47", "e48", "e49"]


@pytest.mark.asyncio
async def test_submit_resolves_after_the_commit_and_a_barrier_after_everything_before_it(store):
    pending = [store.submit(event(f"w{i}")) for i in range(20)]
    store.enqueue(event("unawaited"))
    await store.barrier()
    assert all(p.done() for p in pending)
    assert {e.type for e in await store.events(limit=100)} == {f"w{i}" for i in range(20)} | {"unawaited"}


@pytest.mark.asyncio
async def test_writes_put_while_reading_commit_as_the_read_ends_when_nothing_else_waits_in_the_turn(tmp_path):
    """A backend that commits on the loop's thread (SQLite) commits what a read put as that read ends, when
    no other callback waits in the turn; when one does (another socket's read, say), at the next turn, so
    that its writes join the same commit."""
    store = await store_for(str(tmp_path / "turn.db")).open()
    try:
        loop = asyncio.get_running_loop()
        done_at = {}
        for name, neighbour in (("alone", False), ("beside", True)):
            await asyncio.sleep(0.05)  # the store's own start-up callbacks have run
            if neighbour:
                loop.call_soon(lambda: None)  # another callback of this turn, still to run
            with turn.batch():
                future = store.submit(event(name))
            done_at[name] = future.done()
            await future
        assert done_at == {"alone": True, "beside": False}
        assert {e.type for e in await store.events(limit=10)} == {"alone", "beside"}
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_writes_submitted_together_commit_together_or_not_at_all(store):
    await store.submit(document_written("d", "text", T0))
    ok = store.submit(event("with-op"), op_written("d", 1, "[1]", "u", "p", "m1", T0))
    refused = store.submit(event("lost-with-its-op"), op_written("d", 1, "[2]", "u", "p", "m2", T0))  # revision taken
    assert await ok is None
    with pytest.raises(Exception) as failure:
        await refused
    assert not isinstance(failure.value, ChainBroken)
    assert [e.type for e in await store.events()] == ["with-op"]  # the event of the failed unit is not there
    assert [(o.revision, o.op) for o in await store.ops("d", 0)] == [(1, [1])]


@pytest.mark.asyncio
async def test_a_row_that_cannot_be_stored_fails_alone_and_the_writer_goes_on(store):
    bad = store.submit(event("\ud800"))  # a lone surrogate: no encoding can bind it
    huge = store.submit(connection_closed("c", T0, 2 ** 64, "x", 0, 0))  # beyond 64 bits
    later = [store.submit(event(f"later-{i}")) for i in range(3)]
    for failing in (bad, huge):
        with pytest.raises(Exception):
            await failing
    await asyncio.wait_for(asyncio.gather(*later), 10)
    assert store.failed is None
    assert [e.type for e in reversed(await store.events())] == ["later-0", "later-1", "later-2"]


@pytest.mark.asyncio
async def test_a_failure_stops_its_chain_until_a_reset_and_other_writes_go_on(store):
    await store.submit(document_written("d", "text", T0))
    chain = document_chain("d")
    # All queued at once: one batch, the grouped transaction fails, unit by unit runs.
    before = store.submit(event("before"))
    op1 = store.submit(op_written("d", 1, "[1]", None, None, None, T0))
    op2 = store.submit(op_written("d", 2, "[\"\udfff\"]", None, None, None, T0))
    op3 = store.submit(op_written("d", 3, "[3]", None, None, None, T0))  # behind the failed 2: not tried
    snapshot = store.submit(snapshot_written("d", 3, "abc", T0))         # the same chain
    after = store.submit(event("after"))
    store.reset_chain(chain)
    op2_again = store.submit(op_written("d", 2, "[2]", None, None, None, T0))
    results = await asyncio.wait_for(asyncio.gather(before, op1, op2, op3, snapshot, after, op2_again,
                                                    return_exceptions=True), 10)
    assert [results[i] for i in (0, 1, 5, 6)] == [None] * 4
    assert isinstance(results[2], Exception) and not isinstance(results[2], ChainBroken)
    assert isinstance(results[3], ChainBroken) and isinstance(results[4], ChainBroken)
    assert [e.type for e in reversed(await store.events())] == ["before", "after"]
    assert [o.revision for o in await store.ops("d", 0)] == [1, 2]
    assert (await store.latest_snapshot("d")) is None


@pytest.mark.asyncio
async def test_a_then_callback_runs_once_with_its_commit_or_its_failure(store):
    calls = []
    first, second = store.submit(event("first")), store.submit(event("second"))
    store.then(first, lambda f: calls.append(("first", f.done(), second.done())))
    store.then(second, lambda f: calls.append(("second", f.done(), None)))
    await second
    await asyncio.sleep(0)  # a done callback would only now have run
    # each ran as its own future resolved, in order: the first before the second was resolved
    assert calls == [("first", True, False), ("second", True, None)]
    store.failed = "refused for this test"  # a store that fails a write at once still calls back
    third = store.submit(event("third"))
    store.then(third, lambda f: calls.append(("third", type(f.exception()).__name__, None)))
    await asyncio.sleep(0)
    assert calls[-1] == ("third", "StoreFailed", None)
    store.failed = None


@pytest.mark.asyncio
async def test_a_failing_writer_loop_is_logged_restarted_and_keeps_committing(store, caplog):
    calls = []

    def hook(seconds, writes):  # the metrics hook, failing once
        calls.append(writes)
        if len(calls) == 1:
            raise RuntimeError("hook broke")

    store.commit_listeners.append(hook)
    await asyncio.wait_for(store.submit(event("first")), 5)  # acknowledged before the hook ran
    await asyncio.wait_for(store.submit(event("second")), 5)
    assert store.failed is None
    failures = [r for r in caplog.records if r.getMessage().startswith("the writer failed")]
    assert len(failures) == 1 and failures[0].exc_info is not None  # with its traceback
    assert [e.type for e in reversed(await store.events())] == ["first", "second"]


# -- sessions ------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_sessions_round_trip_and_page_by_keyset(store):
    for n in range(7):
        await store.submit(session_written(session(n, created=T0 + n)))
    one = await store.get_session(session(3).session_id)
    expected = session(3, created=T0 + 3)
    for name in ("session_id", "peer_id", "user_id", "client_info", "state", "end_reason"):
        assert getattr(one, name) == getattr(expected, name)
    assert one.created_at == pytest.approx(T0 + 3, abs=1e-6) and one.expires_at == pytest.approx(T0 + 3600, abs=1e-6)
    assert one.ended_at is None and one.id is not None
    assert await store.get_session("00000000-0000-4000-8000-999999999999") is None
    pages, cursor = [], None
    while True:
        page = await store.list_sessions(limit=3, cursor=cursor)
        pages.append([s.peer_id for s in page])
        if len(page) < 3:
            break
        cursor = page[-1].id
    assert pages == [["peer6", "peer5", "peer4"], ["peer3", "peer2", "peer1"], ["peer0"]]
    assert [s.peer_id for s in await store.list_sessions(user_id="user1")] == ["peer4", "peer1"]
    assert await store.count_sessions_by_state() == {"Active": 7}


@pytest.mark.asyncio
async def test_due_sessions_are_active_past_expiry_and_pending_past_either_deadline(store):
    await store.submit(session_written(session(1, "Active", expires=T0 + 10)),
                       session_written(session(2, "Active", expires=T0 + 100)),
                       session_written(session(3, "Pending", created=T0 - 700, expires=T0 + 100)),
                       session_written(session(4, "Pending", created=T0, expires=T0 + 100)),
                       session_written(session(5, "Expired", expires=T0 - 100)))
    due = await store.due_sessions(T0 + 50, T0 - 600)
    assert sorted(s.peer_id for s in due) == ["peer1", "peer3"]


@pytest.mark.asyncio
async def test_a_session_transition_is_a_compare_and_set_under_concurrency(store):
    from dataclasses import replace
    base = session(1, "Pending")
    await store.submit(session_written(base))
    moves = [replace(base, state="Active", activated_at=T0 + 1) if i % 2 else
             replace(base, state="Invalidated", ended_at=T0 + 1, end_reason=f"r{i}") for i in range(20)]
    results = await asyncio.gather(*(store.submit(session_moved(m, "Pending")) for m in moves))
    assert sorted(results) == [0] * 19 + [1]  # exactly one move found the row still Pending
    winner = moves[results.index(1)]
    stored = await store.get_session(base.session_id)
    assert (stored.state, stored.end_reason) == (winner.state, winner.end_reason)


# -- documents -----------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_documents_ops_and_snapshots_round_trip(store):
    await store.submit(document_written("d", "html", T0), snapshot_written("d", 0, "", T0))
    assert await store.submit(document_written("d", "text", T0 + 1)) is None  # exists: nothing changes
    doc = await store.get_document("d")
    assert (doc.document_id, doc.format) == ("d", "html") and doc.created_at == pytest.approx(T0, abs=1e-6)
    for r in range(1, 6):
        store.enqueue(op_written("d", r, f"[{r - 1}, \"x\"]", "u", "p", f"m{r}", T0 + r,
                                 "[1, \"y\"]" if r == 3 else None))
    await store.submit(snapshot_written("d", 4, "four", T0 + 4))
    await store.submit(snapshot_written("d", 4, "FOUR", T0 + 4))  # replaces its own revision
    assert await store.last_revision("d") == 5 and await store.last_revision("none") == 0
    assert [o.revision for o in await store.ops("d", 1, 4)] == [2, 3, 4]
    assert [o.revision for o in await store.ops("d", 0, limit=2)] == [1, 2]
    three = await store.op_at("d", 3)
    assert (three.op, three.correction, three.message_id, three.user_id) == ([2, "x"], [1, "y"], "m3", "u")
    assert three.time == pytest.approx(T0 + 3, abs=1e-6)
    assert await store.op_values("d", 3) == [(4, [3, "x"], len('[3, "x"]')), (5, [4, "x"], len('[4, "x"]'))]
    assert await store.message_revisions("d", "p") == {f"m{r}": r for r in range(1, 6)}
    assert (await store.latest_snapshot("d")).content == "FOUR"
    assert (await store.latest_snapshot("d", 3)).revision == 0
    assert await store.count_documents() == 1


@pytest.mark.asyncio
async def test_the_op_key_is_the_fence_a_second_writer_of_a_revision_runs_into(store):
    await store.submit(document_written("d", "text", T0))
    await store.submit(op_written("d", 1, "[\"a\"]", "u", "p1", "m", T0))
    with pytest.raises(Exception) as failure:
        await store.submit(op_written("d", 1, "[\"b\"]", "u", "p2", "m", T0))
    assert "unique" in str(failure.value).lower() or "duplicate" in str(failure.value).lower()
    assert (await store.op_at("d", 1)).op == ["a"]


@pytest.mark.asyncio
async def test_text_a_hostile_client_sends_is_stored_without_failing_the_row(store):
    """A NUL in a message id or a user agent (PostgreSQL's text cannot hold one: it is stored as U+FFFD)."""
    await store.submit(document_written("d", "text", T0), session_written(session(1)))
    await store.submit(op_written("d", 1, "[\"a\"]", "u", "p", "id\x00x", T0),
                       connection_opened(ConnectionRecord("c", session(1).session_id, "u", "p", "d", "web", None,
                                                          "agent\x00", T0)),
                       event("nul", details={"raw": "a\x00b"}, user_agent="agent\x00"))
    stored = (await store.op_at("d", 1)).message_id
    assert stored in ("id\x00x", "id\ufffdx")
    assert (await store.events(type="nul"))[0].details == {"raw": "a\x00b"}


# -- events --------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_event_filters_and_keyset_pages(store):
    for i in range(12):
        store.enqueue(event_written(EventRecord(T0 + i, "security" if i % 2 else "system", f"t{i % 3}",
                                                "high" if i % 4 == 0 else "info", session_id=f"s{i % 2}",
                                                client_addr=f"10.0.0.{i % 3}")))
    await store.barrier()
    assert len(await store.events(kind="security")) == 6
    assert {e.type for e in await store.events(type="t1")} == {"t1"}
    assert len(await store.events(severity="high")) == 3
    assert len(await store.events(client_addr="10.0.0.2")) == 4
    assert [e.time for e in await store.events(since=T0 + 9)] == pytest.approx([T0 + 11, T0 + 10, T0 + 9])
    assert len(await store.events(until=T0 + 2)) == 2
    with pytest.raises(ValueError, match="unknown event filter"):
        await store.events(nonsense="x")
    page1 = await store.events(limit=5)
    page2 = await store.events(limit=5, cursor=page1[-1].id)
    assert [e.time for e in page1 + page2] == pytest.approx([T0 + i for i in range(11, 1, -1)])


@pytest.mark.asyncio
async def test_retention_prunes_by_time_and_caps_by_count_in_chunks(store):
    for i in range(300):
        store.enqueue(event(f"e{i}", T0 + i))
    await store.barrier()
    assert await store.prune_events(T0 + 100, chunk=40, chunks=2) is True  # 80 of the 100 old ones this sweep
    assert len(await store.events(limit=1000)) == 220
    assert await store.prune_events(T0 + 100, chunk=40, chunks=5) is True
    assert len(await store.events(limit=1000)) == 200
    assert await store.prune_events(T0 + 100) is False
    newest = [e.id for e in await store.events(limit=50)]
    through = await store.cap_events(50, chunk=64)
    left = await store.events(limit=1000)
    assert [e.id for e in left] == newest and through == min(newest) - 1
    assert await store.cap_events(50) is None


# -- health ----------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_the_probe_is_a_real_write_and_a_failed_store_refuses_at_once(store):
    await store.ping()
    await store.probe()
    store._fail("a test failure", fatal=False)
    with pytest.raises(StoreFailed):
        await store.probe()
    started = time.monotonic()
    with pytest.raises(StoreFailed, match="a test failure"):
        await store.submit(event("refused"))
    assert time.monotonic() - started < 0.5


# -- the CLI ------------------------------------------------------------------------------------------

def test_migrate_lists_and_applies_on_either_backend(url):
    import subprocess
    import sys

    from support import ROOT
    dialect = "postgres" if url.startswith("postgresql://") else "sqlite"
    names = [f"{m.version:04d}_{m.name}" for m in discover_migrations(dialect=dialect)]
    done = subprocess.run([sys.executable, "-m", "mcprt", "migrate", "--db", url], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{url}: schema at version {len(names)}"
    listed = subprocess.run([sys.executable, "-m", "mcprt", "migrate", "--list", "--db", url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == names and all(" applied " in line for line in lines)


def test_a_store_that_cannot_be_reached_is_one_line_and_status_2(tmp_path):
    import subprocess
    import sys

    from support import ROOT, free_port
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/nothing"
    for command in (["serve", "--port", "0"], ["migrate"], ["events"], ["sessions"]):
        proc = subprocess.run([sys.executable, "-m", "mcprt", *command, "--db", url], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        output = proc.stderr.strip().splitlines()
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, (command, proc.stderr)
        assert "cannot open database postgresql://nobody:***@127.0.0.1" in output[-1], (command, output)
        assert "secret" not in proc.stderr + proc.stdout


# -- following the event log -----------------------------------------------------------------------------

def test_the_tail_shows_each_event_once_and_waits_for_a_missing_id_before_moving_past_it():
    from mcprt.audit import TAIL_GAP_WAIT, EventTail

    class At:
        def __init__(self):
            self.now = 100.0

        def __call__(self):
            return self.now
    clock = At()

    def rows(*ids):
        return [EventRecord(T0, "test", f"e{i}", id=i) for i in ids]
    tail = EventTail(10, clock)
    assert [e.id for e in tail.take(rows(11, 12, 14))] == [11, 12, 14]
    assert tail.after == 12  # 13 is missing: it may still commit
    assert [e.id for e in tail.take(rows(14, 15))] == [15]  # 14 is not shown twice
    assert [e.id for e in tail.take(rows(13, 14, 15))] == [13]  # 13 committed late: shown
    assert tail.after == 15
    tail.take(rows(17))
    clock.now += TAIL_GAP_WAIT + 0.1
    assert tail.take([]) == [] and tail.after == 17  # 16 never came: given up on


@pytest.mark.asyncio
async def test_events_committed_out_of_id_order_reach_a_follower(pg_cluster):
    """Two writers on one PostgreSQL: the row holding the lower id commits last, and is still followed."""
    import asyncpg

    from mcprt.audit import EventTail
    url = pg_cluster.database()
    store = await store_for(url).open()
    slow, fast = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        insert = "INSERT INTO events (time, kind, type) VALUES (now(), 'test', $1) RETURNING id"
        tail = EventTail(0)
        slow_tx = slow.transaction()
        await slow_tx.start()
        low = await slow.fetchval(insert, "slow")   # takes its id first...
        high = await fast.fetchval(insert, "fast")  # ...and commits second
        assert low < high
        assert [e.type for e in tail.take(await store.events(after_id=tail.after))] == ["fast"]
        await slow_tx.commit()
        assert [e.type for e in tail.take(await store.events(after_id=tail.after))] == ["slow"]
        assert tail.take(await store.events(after_id=tail.after)) == [] and tail.after == high
    finally:
        await slow.close()
        await fast.close()
        await store.close()


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_postgresql_outage_fails_the_edits_of_its_moment_and_the_server_heals_after_it(pg_cluster, start):
    """Its own server (this test stops it): while it is away, /health is 503 and an edit answers
    SERVER_ERROR; once it is back, the next writes connect again and nothing acknowledged is lost."""
    from mcprt import pgcluster
    cluster = await asyncio.to_thread(lambda: pgcluster.Cluster(pg_cluster.bindir).start())
    try:
        app = await start(db=await asyncio.to_thread(cluster.database))
        alice = await app.editor("alice", document_id="outage")
        await alice.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "kept"}})
        assert (await alice.recv_type("edit_ack"))["payload"]["revision"] == 1
        await asyncio.to_thread(cluster.halt)
        await asyncio.sleep(1.1)  # past the last good probe's reuse
        health = await app.fetch("GET", "/health")
        assert health.status == 503, health.json
        sent = await alice.send_msg("realtime_edit", {"change_delta": {"position": 4, "insert": "lost"}})
        error = await alice.recv_type("error", timeout=20)
        assert error["id"] == sent and error["payload"]["code"] == "SERVER_ERROR"
        await asyncio.to_thread(cluster.launch)
        deadline = time.monotonic() + 30
        while (health := await app.fetch("GET", "/health")).status != 200:
            assert time.monotonic() < deadline, health.json
            await asyncio.sleep(0.3)
        assert app.deps.store.failed is None and not app.server.fatal.is_set()
        again = await app.editor("alice", document_id="outage")
        assert again.state["payload"]["revision"] == 1 and again.state["payload"]["content"] == "kept"
        await again.send_msg("realtime_edit", {"change_delta": {"position": 4, "insert": "!"}, "base_revision": 1})
        assert (await again.recv_type("edit_ack"))["payload"]["revision"] == 2
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.asyncio
async def test_members_are_set_replaced_removed_and_a_document_is_claimed_once(store):
    from mcprt.storage.base import member_removed, member_set, owner_claimed
    await store.submit(document_written("d", "text", T0), owner_claimed("d", "user:first"))
    await store.submit(owner_claimed("d", "user:second"))  # lost the race for the id: owns nothing
    assert await store.members("d") == {"user:first": "owner"}
    await store.submit(member_set("d", "user:b", "viewer"), member_set("d", "*", "viewer"))
    await store.submit(member_set("d", "user:b", "editor"))
    assert await store.members("d") == {"user:first": "owner", "user:b": "editor", "*": "viewer"}
    assert await store.submit(member_removed("d", "*")) == 1
    assert await store.submit(member_removed("d", "*")) == 0
    assert await store.members("d") == {"user:first": "owner", "user:b": "editor"}
    with pytest.raises(Exception):
        await store.submit(member_set("d", "user:c", "admin"))  # not a role
    assert await store.members("nothing") == {}


@pytest.mark.asyncio
async def test_a_sessions_groups_round_trip(store):
    from dataclasses import replace
    record = replace(session(1), groups=("readers", "team"))
    await store.submit(session_written(record), session_written(session(2)))
    assert (await store.get_session(record.session_id)).groups == ("readers", "team")
    assert (await store.get_session(session(2).session_id)).groups == ()
