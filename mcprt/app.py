"""make_app(settings, *, store, clock): the route table over build_services(), the Host check, the access log;
Server runs it (store, listeners, sweeper, shutdown)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from typing import Callable
from urllib.parse import unquote

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import allocator, resource_dir, transport
from .clock import iso, system_clock
from .config import Settings, check_settings
from .services import Services, build_services
from .sessions import mask
from .cluster import TEST_HOOKS, Cluster, SharedDocuments, SharedLimits, SharedSessions, check_cluster
from .identity import check_auth
from .storage import store_for
from .storage.base import Store, StoreOpenError
from .handlers import rest, ws
from .handlers.base import HostCheck, HostRejectedHandler, NotFoundHandler
from .handlers.static import StaticHandler

log = logging.getLogger("mcprt")
access_log = logging.getLogger("mcprt.access")
STATIC_DIR = resource_dir("static")

_SECRET_IN_QUERY = re.compile(r"(session_id=)([^&]{8})[^&]*")
_UUID_IN_PATH = re.compile(r"([0-9a-fA-F]{8})-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def masked_uri(uri: str) -> str:
    """A request URI with every session id cut to its first 8 characters (decoded first: Tornado reads
    `session%5Fid=%61…` as a session id too)."""
    return _UUID_IN_PATH.sub(r"\1…", _SECRET_IN_QUERY.sub(r"\1\2…", unquote(uri)))


class MaskingFilter(logging.Filter):
    """Masks session ids in every log record, whoever logs it (Tornado's own errors print URIs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = masked_uri(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One access-log line per request, session ids masked (Tornado's default prints query strings)."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    request = handler.request
    access_log.log(level, "%d %s %s (%s) %.1fms", status, request.method, masked_uri(request.uri),
                   request.remote_ip, 1000.0 * request.request_time())


def make_app(settings: Settings, *, store: Store, clock: Callable[[], float] = system_clock) -> tornado.web.Application:
    """The Tornado application with every route; `app.deps` holds the collaborators."""
    deps = build_services(settings, store, clock)
    hosts = HostCheck(settings.host, settings.allowed_hosts)
    common = {"deps": deps}
    routes = [
        (r"/health", rest.HealthHandler, common),
        (r"/api/sessions", rest.SessionsHandler, common),
        (r"/api/sessions/([^/]+)", rest.SessionHandler, common),
        (r"/api/sessions/([^/]+)/activate", rest.ActivateHandler, common),
        (r"/api/documents", rest.DocumentsHandler, common),
        (r"/api/documents/([^/]+)", rest.DocumentHandler, common),
        (r"/api/documents/([^/]+)/history", rest.HistoryHandler, common),
        (r"/api/documents/([^/]+)/restore", rest.RestoreHandler, common),
        (r"/api/documents/([^/]+)/members", rest.MembersHandler, common),
        (r"/api/events", rest.EventsHandler, common),
        (r"/api/openapi.json", rest.ContractHandler, {**common, "which": "openapi"}),
        (r"/api/asyncapi.json", rest.ContractHandler, {**common, "which": "asyncapi"}),
        (r"/schemas/([^/]+).json", rest.SchemaHandler, common),
        (r"/ws", ws.EditorSocket, common),
        (r"/()", StaticHandler, {"path": str(STATIC_DIR)}),
        (r"/p/()[A-Za-z0-9._-]{1,128}", StaticHandler, {"path": str(STATIC_DIR)}),  # a pad: the same page
    ]
    routes.append((r"/metrics", rest.MetricsHandler, common))  # with the admin token (without: --metrics-port)
    app = _Application(
        routes, static_path=str(STATIC_DIR), static_handler_class=StaticHandler, default_handler_class=NotFoundHandler,
        default_handler_args=common, log_function=log_request,
        # The frame cap bounds what a peer stuck mid-frame makes us buffer; messages between max_message_bytes
        # and it get MESSAGE_TOO_LARGE and keep the connection, past it Tornado closes with 1009.
        websocket_max_message_size=max(64 << 10, 4 * settings.max_message_bytes),
        websocket_ping_interval=settings.ping_interval, websocket_ping_timeout=settings.ping_timeout)
    app.deps, app.hosts = deps, hosts
    return app


class _Application(tornado.web.Application):
    """Tornado's Application, except that a request for a Host that is not ours meets no handler but
    HostRejectedHandler, whatever its path (REST, WebSocket, the demo's files)."""

    def find_handler(self, request, **kwargs):
        if not self.hosts.allows(request.host):
            return self.get_handler_delegate(request, HostRejectedHandler, {"deps": self.deps})
        return super().find_handler(request, **kwargs)


def make_metrics_app(deps: Services) -> tornado.web.Application:
    """/metrics alone, for a separate (loopback) port."""
    app = tornado.web.Application([(r"/metrics", rest.MetricsHandler, {"deps": deps, "open_metrics": True})],
                                  log_function=log_request)
    app.deps = deps
    return app


class Server:
    """A running mcprt: the store, the HTTP server, and the periodic sweeper."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = system_clock):
        self.settings, self.clock = settings, clock
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._servers: list[tornado.httpserver.HTTPServer] = []
        self._sweeper: asyncio.Task | None = None
        self.app: tornado.web.Application | None = None
        self._stopped = False
        self.fatal = asyncio.Event()  # set when the store cannot write any more: the process should exit 1
        self.fatal_reason: str | None = None

    @property
    def deps(self) -> Services:
        return self.app.deps

    async def start(self) -> "Server":
        """Open and migrate the database, listen, and start sweeping."""
        allocator.keep_large_blocks()
        check_settings(self.settings)  # before the store opens: a setting that cannot work is refused first
        check_auth(self.settings)
        check_cluster(self.settings)
        store = store_for(self.settings.db, check_wal=True)
        self._lock = store.lock_exclusive() if hasattr(store, "lock_exclusive") else None
        opened = None
        try:
            opened = await store.open()
            await self._check_writable(opened)
            opened.on_fatal = self._store_failed
            self.app = make_app(self.settings, store=opened, clock=self.clock)
            self.port = self._listen(self.app, self.settings.host, self.settings.port)
            if self.settings.metrics_port is not None:
                self.metrics_port = self._listen(make_metrics_app(self.deps), "127.0.0.1", self.settings.metrics_port)
            self.deps.sessions.on_end.append(self._session_ended)
            if self.settings.redis:
                await self._join_cluster()
        except BaseException:  # nothing half-started stays behind (a writer thread would keep the process)
            for server in self._servers:
                server.stop()
            if self.app is not None and self.deps.cluster is not None:
                await self.deps.cluster.stop()
            if opened is not None:
                await opened.close()
            self._unlock()
            raise
        self.deps.access.on_change.append(
            lambda document_id: self.deps.tasks.spawn(ws.refresh_roles(self.deps, document_id), "refresh roles"))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.deps.audit.event("system", "server_started", "info",
                              {"port": self.port, "version": _version(), "sanitizer": self.settings.sanitizer,
                               "loop": type(asyncio.get_running_loop()).__module__.partition(".")[0]})
        return self

    async def _check_writable(self, store) -> None:
        """A database that cannot take a write (read-only file or folder, a read-only role) is refused
        at start-up, not discovered by the first edit."""
        try:
            await store.probe(reuse=False)
        except Exception as exc:  # StoreFailed, or the engine's own error (sqlite3's readonly, say)
            raise StoreOpenError(f"cannot write to the database {store.describe()}: {exc}") from None

    async def _join_cluster(self) -> None:
        deps = self.deps
        deps.cluster = await Cluster(self.settings.redis, self.settings.redis_prefix, self.settings.node_id).start()
        SharedSessions(deps.cluster, deps.sessions, lambda session_id, reason: ws.close_session_sockets(
            deps, session_id, reason))
        deps.shared = SharedDocuments(deps.cluster, deps, self.settings.lease_ttl, os.environ.get(TEST_HOOKS, ""))
        deps.shared_limits = SharedLimits(deps.cluster, deps.limits, self.clock)
        deps.metrics.node = deps.cluster.node_id
        # Members changed here reach the sockets on every node; the others read them again.
        deps.access.on_change.append(lambda document_id: deps.cluster.publish(
            deps.cluster.control, {"t": "members", "d": document_id}))

        def members_changed(body: dict) -> None:
            deps.access.forget(body["d"])
            deps.tasks.spawn(ws.refresh_roles(deps, body["d"]), "refresh roles")
        deps.cluster.handlers["members"] = members_changed

        def deleted(body: dict) -> None:
            document = deps.documents.get_open(body["d"])
            deps.access.forget(body["d"])
            if document is not None and deps.documents.discard(document):
                deps.hub.close_document(document, ws.CLOSE_DOCUMENT_DELETED, "document_deleted")
        deps.cluster.handlers["deleted"] = deleted

    def _unlock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    def _listen(self, app: tornado.web.Application, host: str, port: int) -> int:
        settings = self.settings
        if not self._servers:
            soft, hard = transport.raise_nofile_limit()
            log.info("file descriptor limit %s (hard %s)", soft, hard)
        limits = transport.EdgeLimits(settings.header_timeout, settings.keepalive_timeout,
                                      settings.max_http_connections, settings.max_http_connections_per_address)
        # EdgeStream times heads out itself (nginx's header and keep-alive timeouts); Tornado's one header
        # timeout (3600 s unless set) is only a backstop behind them.
        server = transport.EdgeServer(
            app, max_body_size=max(1 << 20, 4 * settings.max_body_bytes), xheaders=settings.trust_proxy_headers,
            limits=limits, on_refused=self._connection_refused, body_timeout=settings.body_timeout,
            idle_connection_timeout=max(settings.header_timeout, settings.keepalive_timeout) + 1.0)
        sockets = tornado.netutil.bind_sockets(port, host, family=socket.AF_INET if ":" not in host else socket.AF_UNSPEC)
        server.add_sockets(sockets)
        self._servers.append(server)
        return sockets[0].getsockname()[1]

    def _store_failed(self, reason: str) -> None:
        self.fatal_reason = reason
        self.fatal.set()

    def _connection_refused(self, address: str, scope: str, limit: int) -> None:
        self.deps.audit.security("connection_limit", None, {"scope": scope, "limit": limit, "stage": "accept"},
                                 client_addr=address)

    def _session_ended(self, session, reason: str) -> None:
        self.deps.audit.forget(session.session_id)
        ws.close_session_sockets(self.deps, session.session_id, reason)

    async def sweep(self) -> None:
        """Expire sessions past their deadline, prune events past retention or beyond the row cap, drop idle counters."""
        deps = self.deps
        await deps.sessions.sweep()
        deps.sessions.write_last_seen()
        now = self.clock()
        deps.audit.prune()
        deps.limits.prune(deps.hub.by_session.keys())
        cutoff = now - self.settings.event_retention
        if await deps.store.prune_events(cutoff):
            deps.audit.event("system", "events_pruned", "info", {"before": iso(cutoff)})
        through = await deps.store.cap_events(self.settings.event_max_rows)
        if through is not None:
            deps.audit.event("system", "events_pruned", "info",
                             {"max_rows": self.settings.event_max_rows, "through_id": through})

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # the sweeper must outlive one bad round
                log.exception("sweep failed")

    async def stop(self) -> None:
        """Stop accepting, close sockets with 1001, flush the event log, close the database."""
        if self._stopped:
            return
        self._stopped = True
        for server in self._servers:
            server.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.app is None:
            return
        await ws.close_all(self.deps, 1001, "server_shutdown")
        for server in self._servers:
            await server.close_all_connections()
        await self.deps.tasks.drain()
        self.deps.edits.cleaner.close()
        self.deps.audit.event("system", "server_stopped", "info", {})
        await self.deps.documents.flush()
        if self.deps.shared is not None:
            await self.deps.shared.stop()
            await self.deps.shared_limits.stop()
        if self.deps.cluster is not None:
            await self.deps.cluster.stop()
        await self.deps.store.close()
        self._unlock()
        log.info("stopped; event log flushed")


def _version() -> str:
    from . import __version__
    return __version__


__all__ = ["make_app", "Server", "masked_uri", "mask"]
