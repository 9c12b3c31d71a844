"""Prometheus metrics in a registry of this app's own (no process-wide globals)."""

from __future__ import annotations

import bisect
import math
import platform
import time

import tornado
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import __version__
from .audit import Audit
from .hub import Hub
from .sessions import STATES, SessionService
from .storage.base import Store

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Count:
    """One counter's value as a plain number. prometheus_client's children take a lock on every inc (a
    histogram's observe takes two), and an edit made seven such calls; every write here comes from the
    event loop's thread, so the numbers are kept plainly and turned into samples when scraped."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Counts(dict):
    """A counter by one label: its children (_Count) by label value, made on first use. A dict, so that
    `counts[value]` of a child made already is a lookup in C, not a call of Python."""

    def __init__(self, name: str, documentation: str, label: str | None = None):
        super().__init__()
        self.name, self.documentation, self.label = name, documentation, label

    __hash__, __eq__ = object.__hash__, object.__eq__  # a collector: the registry keys its collectors by identity

    def __missing__(self, value: str) -> _Count:
        child = self[value] = _Count()
        return child

    def inc(self, amount: float = 1) -> None:  # an unlabelled counter
        self[""].inc(amount)

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label] if self.label else None)
        if self.label is None:
            family.add_metric([], self[""].value)  # an unlabelled counter is there from the start, at 0
        else:
            for value, count in list(self.items()):
                family.add_metric([value], count.value)
        yield family


class _Histogram:
    """A histogram as plain numbers (see _Count): a count per bucket and a sum, cumulated when scraped."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]):
        self.name, self.documentation = name, documentation
        self.bounds = [*buckets, math.inf]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: the first bound at or above it
        self.sum += value

    def collect(self):
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


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
        # What every message, edit or commit updates: plain numbers (see _Count).
        self.received = _Counts("mcprt_messages_in", "WebSocket messages received, by type", "type")
        self.sent = _Counts("mcprt_messages_out", "WebSocket messages sent, by type", "type")
        self.error_codes = _Counts("mcprt_errors", "Error replies, by code", "code")
        self.edit_latency = _Histogram("mcprt_edit_latency_seconds", "realtime_edit received to acknowledged",
                                       _LATENCY_BUCKETS)
        self.commit_latency = _Histogram("mcprt_db_commit_seconds", "One batched database commit", _LATENCY_BUCKETS)
        self.commit_rows = _Counts("mcprt_db_rows_written", "Rows written by the batched writer")
        for collector in (self.received, self.sent, self.error_codes, self.edit_latency, self.commit_latency,
                          self.commit_rows):
            r.register(collector)
        self.security_events = Counter("mcprt_security_events", "Security events, by type", ["type"], registry=r)
        cleans = Counter("mcprt_markup_cleans", "Markup edits sanitized, by what was sanitized: the top-level "
                         "span the edit touched, or the whole document", ["scope"], registry=r)
        self.cleaned_span, self.cleaned_whole = cleans.labels("span"), cleans.labels("whole")
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
