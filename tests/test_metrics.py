"""/metrics: Prometheus text for operators, or tokenless on its own port."""

from __future__ import annotations

import pytest
import tornado
from tornado.httpclient import AsyncHTTPClient
from support import free_port

pytestmark = pytest.mark.asyncio


@pytest.fixture
def database(both_databases) -> str:
    """Every server in this module runs on SQLite and on PostgreSQL."""
    return both_databases


async def test_metrics_need_the_admin_token(app):
    reply = await app.fetch("GET", "/metrics")
    assert reply.status == 401


async def test_metrics_count_what_happened(app):
    ws = await app.editor()
    await ws.send_msg("heartbeat", {})
    await ws.recv_type("heartbeat_ack")
    await ws.send_msg("realtime_edit", {"content": "<b>x</b><script>1</script>"})
    await ws.recv_type("edit_ack")
    await ws.send("nonsense")
    await ws.recv_type("error")
    reply = await app.fetch("GET", "/metrics", admin=True)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    for line in ('mcprt_connections 1.0', 'mcprt_sessions{state="Active"} 1.0',
                 'mcprt_messages_in_total{type="heartbeat"} 1.0', 'mcprt_messages_out_total{type="edit_ack"} 1.0',
                 'mcprt_errors_total{code="INVALID_MESSAGE"} 1.0', 'mcprt_security_events_total{type="xss_attempt"} 1.0',
                 'mcprt_edit_latency_seconds_count 1.0', 'mcprt_open_documents 1.0'):
        assert line in text, line
    assert "mcprt_event_queue_depth" in text and "mcprt_db_commit_seconds_count" in text
    import platform

    from mcprt import __version__
    assert (f'mcprt_build_info{{python="{platform.python_version()}",tornado="{tornado.version}",'
            f'version="{__version__}"}} 1.0') in text
    uptime = float(next(line for line in text.splitlines() if line.startswith("mcprt_uptime_seconds ")).split()[1])
    assert 0 < uptime < 600


async def test_metrics_on_a_separate_port_need_no_token(start):
    port = free_port()
    app = await start(metrics_port=port)
    assert (await app.fetch("GET", "/metrics")).status == 401  # on the public port, still for the token only
    with_token = await app.fetch("GET", "/metrics", admin=True)
    assert with_token.status == 200 and "mcprt_uptime_seconds" in with_token.body.decode()
    http = AsyncHTTPClient(force_instance=True)
    try:
        reply = await http.fetch(f"http://127.0.0.1:{app.server.metrics_port}/metrics")
    finally:
        http.close()
    assert reply.code == 200 and b"mcprt_connections" in reply.body


@pytest.mark.parametrize("values", [(), (0.0005,), (0.0005, 0.001, 0.002, 0.01, 0.5, 0.1, 2.0, float("inf"))])
async def test_the_plain_counters_and_histograms_expose_what_prometheus_client_would(values):
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from mcprt.metrics import _Counts, _Histogram
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ours.register(histogram := _Histogram("x_seconds", "a histogram", (0.001, 0.01, 0.1)))
    ours.register(by_type := _Counts("y", "a counter by type", "type"))
    ours.register(plain := _Counts("z", "a counter"))
    their_histogram = Histogram("x_seconds", "a histogram", buckets=(0.001, 0.01, 0.1), registry=theirs)
    their_by_type = Counter("y", "a counter by type", ["type"], registry=theirs)
    their_plain = Counter("z", "a counter", registry=theirs)
    for i, value in enumerate(values):
        histogram.observe(value), their_histogram.observe(value)
        by_type[f"t{i % 2}"].inc(i), their_by_type.labels(f"t{i % 2}").inc(i)
        plain.inc(2), their_plain.inc(2)

    def text(registry) -> list[str]:  # prometheus_client adds *_created timestamps, which are optional
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
    assert text(ours) == text(theirs)
