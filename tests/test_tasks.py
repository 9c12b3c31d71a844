"""Background tasks are kept, their failures logged, and the server waits for them before it stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mcprt.tasks import Tasks

pytestmark = pytest.mark.asyncio


async def test_a_failing_task_is_logged_with_what_it_was(caplog):
    tasks = Tasks()

    async def boom():
        raise RuntimeError("broken on purpose")

    tasks.spawn(boom(), "the boom")
    await tasks.drain()
    assert len(tasks) == 0
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "the boom" in record.getMessage() and record.exc_info[1].args == ("broken on purpose",)


async def test_drain_waits_for_tasks_spawned_while_draining():
    tasks, done = Tasks(), []

    async def second():
        await asyncio.sleep(0.01)
        done.append("second")

    async def first():
        await asyncio.sleep(0.01)
        tasks.spawn(second(), "second")
        done.append("first")

    tasks.spawn(first(), "first")
    await tasks.drain()
    assert done == ["first", "second"]


async def test_stopping_the_server_finishes_the_session_it_was_ending(start):
    app = await start(violation_threshold=1, violation_action="invalidate")
    ws = await app.editor()
    await ws.send("{not json")
    assert (await ws.closed())[0] == 1008
    await app.server.stop()  # the invalidation was spawned when the socket closed
    from mcprt.storage import store_for
    store = await store_for(app.server.settings.db).open()
    try:
        row = await store.get_session(ws.session["session_id"])
        assert row.state == "Invalidated"
    finally:
        await store.close()


async def test_what_a_batch_is_handed_runs_in_order_as_the_outermost_batch_ends(caplog):
    from mcprt import turn
    ran = []
    assert not turn.at_end(lambda: ran.append("outside"))  # no batch open: the caller does it another way
    with turn.batch():
        assert turn.at_end(lambda: ran.append("first"))
        with turn.batch():
            turn.at_end(lambda: ran.append("inner"))
            turn.at_end(lambda: 1 / 0)  # logged; the others still run
        assert ran == []  # an inner batch ends with the outer one
        turn.at_end(lambda: turn.at_end(lambda: ran.append("added by an end")))
        turn.at_end(lambda: ran.append("last"))
    assert ran == ["first", "inner", "last", "added by an end"]
    assert any(r.exc_info and isinstance(r.exc_info[1], ZeroDivisionError) for r in caplog.records)
    assert not turn.at_end(lambda: None)  # closed again
