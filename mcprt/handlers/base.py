"""The JSON handler base: the Services by initialize(deps), one write_error, body limits, admin and editor
gating, the Host check."""

from __future__ import annotations

import hmac
import json
import logging
import math
import traceback

import tornado.httputil
import tornado.web

from ..documents import Author
from ..protocol import AppError, ErrorCode, error_body
from ..sessions import Client, mask

log = logging.getLogger("mcprt.http")


def client_of(request: tornado.httputil.HTTPServerRequest) -> Client:
    """The caller's address and (truncated) user agent, for the event log."""
    return Client(request.remote_ip, (request.headers.get("User-Agent") or "")[:256] or None)


def bearer_token(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """The token of an `Authorization: Bearer` header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def session_ids_given(request: tornado.httputil.HTTPServerRequest, *more: str | None) -> set[str]:
    """The session ids a request carries in `Authorization: Bearer` and `X-Session-ID` (and `more`)."""
    values = (bearer_token(request), request.headers.get("X-Session-ID"), *more)
    return {v.strip() for v in values if v and v.strip()}


def retry_after(details: dict) -> int:
    """A RATE_LIMITED reply's Retry-After: its details' retry_after, in whole seconds (a minute if unsaid)."""
    return max(1, math.ceil(details.get("retry_after", 60)))


OPERATOR = Author(user_id="operator", peer_id="operator")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


def split_host(host: str) -> tuple[str, str | None]:
    """A Host header as (lowercased name, port or None); IPv6 literals lose their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    name, colon, port = host.rpartition(":")
    return (name, port) if colon and port.isdigit() and ":" not in name else (host, None)


class HostCheck:
    """Which Host headers this server answers (against DNS rebinding: a page on evil.example whose name
    resolves to 127.0.0.1 sends Host: evil.example, and would pass an Origin check that compares the
    Origin with the Host).

    Loopback names pass on any port. Then the address the server was started for, or, when it listens on
    every address, any host unless --allowed-hosts names them. Entries: `name` (any port), `name:port`,
    `.example.com` (the domain and its subdomains), `*` (anything).
    """

    def __init__(self, bind_host: str, allowed: tuple[str, ...]):
        self.any = "*" in allowed or (not allowed and bind_host in WILDCARD_BINDS)
        self.entries = [split_host(entry) for entry in allowed if entry != "*"]
        if bind_host not in WILDCARD_BINDS:
            self.entries.append((split_host(bind_host)[0], None))

    def allows(self, host: str) -> bool:
        """True when a request with this Host header is for us."""
        if self.any:
            return True
        name, port = split_host(host)
        if name in LOOPBACK_NAMES:
            return True
        for allowed, allowed_port in self.entries:
            if allowed_port not in (None, port):
                continue
            if name == allowed or (allowed.startswith(".") and (name.endswith(allowed) or name == allowed[1:])):
                return True
        return False


class ApiHandler(tornado.web.RequestHandler):
    """Every REST handler: JSON in, JSON out, errors in the one shape."""

    def initialize(self, deps) -> None:
        self.deps = deps  # mcprt.services.Services: the one way a handler reaches a collaborator

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Vary", "Origin")
        if hasattr(self, "deps"):  # not yet while the handler is built: prepare() calls it again
            self._cors()

    def _cors(self) -> None:
        """CORS for the origins --allowed-origins lists (on errors too, so their page can read them)."""
        origin = self.request.headers.get("Origin")
        if origin and self._cross_origin_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", "Retry-After")

    def _cross_origin_allowed(self, origin: str) -> bool:
        return origin.rstrip("/") in self.deps.settings.allowed_origins

    def options(self, *args) -> None:
        """A CORS preflight: 204 with what may be sent, for a listed origin; 403 and no CORS header otherwise."""
        origin = self.request.headers.get("Origin")
        if not origin or not self._cross_origin_allowed(origin):
            raise AppError(ErrorCode.UNAUTHORIZED, "this origin may not call the API (see --allowed-origins)",
                           {"origin": (origin or "")[:200]}, status=403)
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Session-ID, X-Client-Type")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def prepare(self) -> None:
        self._cors()
        limit = self.deps.settings.max_body_bytes
        if len(self.request.body) > limit:
            raise AppError(ErrorCode.MESSAGE_TOO_LARGE, f"request body over {limit} bytes",
                           {"limit": limit, "size": len(self.request.body)})

    def client_info(self) -> Client:
        """The caller's address and user agent, for the event log."""
        return client_of(self.request)

    def json_body(self, schema: str) -> dict:
        """The request body, decoded and validated against schemas/<schema>.json."""
        return self.deps.registry.parse_json(self.request.body or b"", schema)

    def security(self, type_: str, severity: str | None, details: dict) -> None:
        """Record a security event about this request, with the caller's address and user agent."""
        client = self.client_info()
        self.deps.audit.security(type_, severity, details, client_addr=client.addr, user_agent=client.user_agent)

    def is_admin(self) -> bool:
        """The request carries the admin token from the settings (compared in constant time)."""
        expected = self.deps.settings.admin_token
        given = bearer_token(self.request)
        return bool(expected and given and hmac.compare_digest(given.encode(), expected.encode()))

    async def require_editor(self) -> Author:
        """Who may read and change documents: an Active session (`Authorization: Bearer <session id>`
        or `X-Session-ID`), or an operator with the admin token."""
        if self.is_admin():
            return OPERATOR
        given = session_ids_given(self.request)
        why = ("no session: pass Authorization: Bearer <session id> or X-Session-ID" if not given else
               "the session ids in Authorization and X-Session-ID disagree" if len(given) > 1 else None)
        if why:
            self.security("unauthorized", "medium", {"endpoint": self.request.path, "why": why})
            raise AppError(ErrorCode.UNAUTHORIZED, why, {"endpoint": self.request.path[:200]})
        session_id = given.pop()
        try:
            session = await self.deps.sessions.authenticate(session_id)
        except AppError as exc:
            self.security("invalid_session", None, {"endpoint": self.request.path, "why": exc.message,
                                                    "claimed_session": mask(session_id)})
            if self.deps.audit.address_blocked(self.request.remote_ip):
                raise AppError(ErrorCode.RATE_LIMITED, "too many failed attempts from this address; retry later",
                               {"retry_after": self.deps.audit.window}) from None
            raise AppError(exc.code, exc.message, {**exc.details, "session_id": mask(session_id)}, status=401) from None
        return Author(user_id=session.user_id, peer_id=session.peer_id, groups=session.groups, grants=session.grants)

    def require_admin(self) -> None:
        """Operators only: the admin token from the settings, compared in constant time."""
        expected = self.deps.settings.admin_token
        if not self.is_admin():
            self.security("unauthorized", "medium", {"endpoint": self.request.path, "why": "admin token"})
            raise AppError(ErrorCode.UNAUTHORIZED, "this endpoint needs the operator token "
                           "(Authorization: Bearer <admin token>)" if expected else
                           "operator endpoints are disabled: the server has no admin token")

    def write_json(self, value, status: int = 200) -> None:
        """Write a JSON reply."""
        self.set_status(status)
        self.finish(json.dumps(value, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, AppError):
            body = error_body(exc.code, exc.message, exc.details)
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
                    413: ErrorCode.MESSAGE_TOO_LARGE}.get(status_code, ErrorCode.INVALID_MESSAGE)
            body = error_body(code, exc.log_message or self._reason, {"status": status_code})
        else:
            body = error_body(ErrorCode.SERVER_ERROR, "internal server error", {})
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": body}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, AppError):
            if self._finished:
                return
            self.clear()
            self.set_default_headers()
            if e.code == ErrorCode.RATE_LIMITED:  # when to ask again, for clients that read no JSON bodies
                self.set_header("Retry-After", str(retry_after(e.details)))
            self.set_status(e.status)
            self.write_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        if not isinstance(e, tornado.web.HTTPError):
            log.error("unhandled error in %s %s:\n%s", self.request.method, self.request.path,
                      "".join(traceback.format_exception(e)))
        super()._handle_request_exception(e)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return  # the access log already says it; no stack trace for a client's mistake
        super().log_exception(typ, value, tb)


class HostRejectedHandler(ApiHandler):
    """Any request whose Host header is not ours: 400, recorded."""

    def prepare(self) -> None:
        self.security("host_rejected", None, {"host": self.request.host, "path": self.request.path})
        raise AppError(ErrorCode.INVALID_MESSAGE, "this server does not answer for that Host; "
                       "list it in --allowed-hosts", {"host": self.request.host[:200]})


class NotFoundHandler(ApiHandler):
    """Any path nobody serves: a JSON 404."""

    def prepare(self) -> None:
        raise AppError(ErrorCode.NOT_FOUND, f"no such endpoint: {self.request.method} {self.request.path}",
                       {"path": self.request.path})
