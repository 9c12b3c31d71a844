"""Prometheus metrics in a registry of this app's own (no process-wide globals)."""

from __future__ import annotations

import platform
import time

import tornado
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__
from .audit import Audit
from .hub import Hub
from .sessions import STATES, SessionService
from .storage.base import Store

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _ByLabel(dict):
    """A one-label metric's children by label value, each resolved once: labels() takes a lock and
    builds a key on every call, which the hot path would pay per message."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def __missing__(self, value: str):
        child = self[value] = self.metric.labels(value)
        return child


class Metrics:
    """Counters the server updates as it goes, and gauges read when scraped."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, store: Store, sessions: SessionService):
        self.store = store
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.connections = Gauge("mcprt_connections", "Open WebSocket connections", registry=r)
        self.open_documents = Gauge("mcprt_open_documents", "Documents held in memory", registry=r)
        started = time.monotonic()
        Gauge("mcprt_uptime_seconds", "Seconds since this process started serving",
              registry=r).set_function(lambda: time.monotonic() - started)
        Gauge("mcprt_build_info", "This build: its version, Python and Tornado", ["version", "python", "tornado"],
              registry=r).labels(__version__, platform.python_version(), tornado.version).set(1)
        self.sessions = Gauge("mcprt_sessions", "Sessions by state", ["state"], registry=r)
        self.messages_in = Counter("mcprt_messages_in", "WebSocket messages received, by type", ["type"], registry=r)
        self.messages_out = Counter("mcprt_messages_out", "WebSocket messages sent, by type", ["type"], registry=r)
        self.errors = Counter("mcprt_errors", "Error replies, by code", ["code"], registry=r)
        self.received, self.sent, self.error_codes = (_ByLabel(self.messages_in), _ByLabel(self.messages_out),
                                                      _ByLabel(self.errors))
        self.security_events = Counter("mcprt_security_events", "Security events, by type", ["type"], registry=r)
        self.edit_latency = Histogram("mcprt_edit_latency_seconds", "realtime_edit received to acknowledged",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_latency = Histogram("mcprt_db_commit_seconds", "One batched database commit",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        cleans = Counter("mcprt_markup_cleans", "Markup edits sanitized, by what was sanitized: the top-level "
                         "span the edit touched, or the whole document", ["scope"], registry=r)
        self.cleaned_span, self.cleaned_whole = cleans.labels("span"), cleans.labels("whole")
        self.commit_rows = Counter("mcprt_db_rows_written", "Rows written by the batched writer", registry=r)
        queue = Gauge("mcprt_event_queue_depth", "Writes waiting for the next database batch", registry=r)
        queue.set_function(lambda: store.queue_depth)
        store.commit_listeners.append(self._committed)

    def _committed(self, seconds: float, rows: int) -> None:
        self.commit_latency.observe(seconds)
        self.commit_rows.inc(rows)

    node: str | None = None  # cluster mode: every sample carries node="<id>"

    def watch(self, audit: Audit, hub: Hub) -> None:
        """Count security events as they are recorded, and read the hub's size when scraped."""
        audit.listeners.append(self._event)
        self.connections.set_function(lambda: hub.connection_count)

    def _event(self, kind: str, type_: str, severity: str) -> None:
        if kind == "security":
            self.security_events.labels(type_).inc()

    async def render(self, open_documents: int) -> bytes:
        """The text exposition, with the database-backed gauges refreshed first."""
        counts = await self.store.count_sessions_by_state()
        for state in STATES:
            self.sessions.labels(state).set(counts.get(state, 0))
        self.open_documents.set(open_documents)
        return generate_latest(_Labelled(self.registry, {"node": self.node}) if self.node else self.registry)


class _Labelled:
    """A registry's samples with labels added (the node's name, in cluster mode)."""

    def __init__(self, registry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self):
        for family in self.registry.collect():
            family.samples = [sample._replace(labels={**sample.labels, **self.labels}) for sample in family.samples]
            yield family
