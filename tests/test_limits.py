"""Token buckets, sliding windows and the Limits owner, on a clock the test moves; and the server's message
limit on that same clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcprt.config import Settings
from mcprt.limits import Limits, Notices
from mcprt.protocol import AppError
from mcprt.ratelimit import Buckets, KeyedWindows, TokenBucket, WindowCounter

from conftest import FakeClock


def test_a_bucket_spends_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.4) is False  # 0.8 of a token
    assert bucket.take(0.5) is True
    assert bucket.take(100.0) and bucket.tokens == 2.0  # never above the burst


def test_a_bucket_ignores_a_clock_that_steps_back():
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) and not bucket.take(5.0) and not bucket.take(10.5)


@given(st.lists(st.floats(0, 5, allow_nan=False), max_size=50))
def test_a_bucket_never_grants_more_than_burst_plus_rate_times_time(gaps):
    bucket, now, granted = TokenBucket(rate=3.0, burst=4, now=0.0), 0.0, 0
    for gap in gaps:
        now += gap
        granted += bucket.take(now)
    assert granted <= 4 + 3.0 * now + 1e-9


def test_a_window_forgets_hits_older_than_it():
    window = WindowCounter(10.0)
    assert [window.hit(t) for t in (0, 1, 9.5)] == [1, 2, 3]
    assert window.count(10.5) == 2 and window.count(11) == 1 and window.count(100) == 0


def test_keyed_windows_allow_up_to_the_limit_per_key_and_prune_idle_keys():
    windows = KeyedWindows(60.0, 2)
    assert [windows.allow("a", 0) for _ in range(3)] == [True, True, False]
    assert windows.allow("b", 0) and windows.count("a", 30) == 2
    assert not windows.allow_all(["a", "c"], 30) and windows.count("c", 30) == 0  # all or nothing
    assert windows.allow("a", 61)
    windows.prune(200)
    assert windows.count("a", 200) == 0 and windows._counters == {}


def test_buckets_outlive_connections_until_they_have_refilled():
    buckets = Buckets(rate=1.0, burst=2)
    bucket = buckets.get("s", 0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert buckets.get("s", 0.5) is bucket
    buckets.prune(1.0)
    assert len(buckets) == 1  # one token short
    buckets.prune(2.0, keep={"s"})
    assert len(buckets) == 1  # full, but a live session keeps its own
    buckets.prune(2.0)
    assert len(buckets) == 0


def test_notices_coalesce_refusals_per_window():
    notices = Notices(1.0)
    assert notices.refused(0.0) == 1
    assert [notices.refused(t) for t in (0.1, 0.2, 0.9)] == [None, None, None]
    assert notices.refused(1.0) == 4


def test_limits_run_on_the_injected_clock():
    clock = FakeClock(1000.0)
    limits = Limits(Settings(rate_limit=1.0, rate_burst=1, session_create_limit=2, document_probe_limit=2,
                             max_connections_per_session=1, max_connections=5), clock)
    bucket = limits.bucket("s")
    assert limits.message(bucket) and not limits.message(bucket)
    clock.advance(1.0)
    assert limits.message(bucket)
    limits.create_session("1.2.3.4")
    limits.create_session("1.2.3.4")
    with pytest.raises(AppError) as refused:
        limits.create_session("1.2.3.4")
    assert refused.value.details["retry_after"] == 60
    clock.advance(60)
    limits.create_session("1.2.3.4")
    assert not limits.probed("p") and limits.probed("p") and limits.probing("p")
    with pytest.raises(AppError):
        limits.check_connection(1, 0)
    with pytest.raises(AppError):
        limits.check_connection(0, 5)
    limits.check_connection(0, 4)


@pytest.mark.asyncio
async def test_the_message_limit_follows_the_servers_clock(start, clock):
    app = await start(clock=clock, rate_limit=1.0, rate_burst=2)
    ws = await app.editor()
    for i in range(2):
        await ws.send_msg("heartbeat", {}, f"h{i}")
        await ws.recv_type("heartbeat_ack")
    await ws.send_msg("heartbeat", {}, "over")
    assert (await ws.recv_type("error"))["payload"]["code"] == "RATE_LIMITED"
    clock.advance(1.0)
    await ws.send_msg("heartbeat", {}, "again")
    assert (await ws.recv_type("heartbeat_ack", "error"))["type"] == "heartbeat_ack"
