"""One frozen Settings object, built from command-line flags and MCPRT_* environment variables."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """Seconds from '90', '30s', '10m', '24h' or '90d'."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 24h, 90d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_bool(text: str | bool) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case); anything else is refused."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def _origins(text: str | tuple) -> tuple[str, ...]:
    if isinstance(text, tuple):
        return text
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


@dataclass(frozen=True)
class Settings:
    """Everything configurable; each field is a flag --name-with-dashes and MCPRT_NAME."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=3000, metadata={"help": "port to listen on (0: any free port)"})
    db: str = field(default="mcprt.db", metadata={
        "help": "the store: a SQLite file (mcprt.db, sqlite:///path) or postgresql://user@host/db; migrated on start"})
    redis: str | None = field(default=None, metadata={
        "help": "cluster mode: redis://host:port/db shared by every node (needs a postgresql:// --db); unset: one process"})
    redis_prefix: str = field(default="mcprt", metadata={
        "help": "cluster mode: the prefix of every Redis key and channel (one Redis may serve several deployments)"})
    node_id: str | None = field(default=None, metadata={
        "help": "cluster mode: this node's name in leases, /health and /metrics (unset: host-pid-random)"})
    lease_ttl: float = field(default=5.0, metadata={
        "help": "cluster mode: how long a node owns a document without renewing (a dead owner's documents move "
                "to another node after this)", "type": parse_duration})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    log_format: str = field(default="text", metadata={
        "help": "text (one line per record) or json (one JSON object per line, for a log shipper)"})
    allowed_origins: tuple = field(default=(), metadata={
        "help": "comma-separated origins allowed to open WebSockets besides the server's own", "type": _origins})
    allowed_hosts: tuple = field(default=(), metadata={
        "help": "comma-separated Host names the server answers (name, name:port, .domain, or *); loopback names "
                "always; unset: the --host address, or any host when listening on every address", "type": _origins})
    auth: str = field(default="open", metadata={
        "help": "who may create a session for which user: open (anyone, any user_id) or jwt (a verified JWT's "
                "user, or the admin token for any user)"})
    jwt_jwks_url: str | None = field(default=None, metadata={"help": "--auth jwt: the identity provider's JWKS URL"})
    jwt_issuer: str | None = field(default=None, metadata={
        "help": "--auth jwt: the expected iss; without --jwt-jwks-url, its OIDC discovery document names the keys"})
    jwt_audience: str | None = field(default=None, metadata={"help": "--auth jwt: the expected aud"})
    jwt_secret: str | None = field(default=None, metadata={
        "help": "--auth jwt: an HS256 key for tokens the deployment's own backend signs (prefer MCPRT_JWT_SECRET)"})
    jwt_leeway: float = field(default=60.0, metadata={
        "help": "--auth jwt: clock skew allowed on exp, nbf and iat", "type": parse_duration})
    jwt_user_claim: str = field(default="sub", metadata={"help": "--auth jwt: the claim that is the user_id"})
    jwt_groups_claim: str | None = field(default=None, metadata={
        "help": "--auth jwt: the claim listing the user's groups (members group:<name>), e.g. groups"})
    jwt_roles_claim: str | None = field(default=None, metadata={
        "help": "--auth jwt: the claim granting roles directly, an object of document id, prefix* or * to "
                "owner|editor|viewer; set, a document without members is closed to tokens it does not name"})
    admin_token: str | None = field(default=None, metadata={
        "help": "bearer token for operator endpoints; unset, they answer 401"})
    session_ttl: float = field(default=86400.0, metadata={
        "help": "lifetime of an active session (e.g. 24h)", "type": parse_duration})
    pending_ttl: float = field(default=600.0, metadata={
        "help": "time a pending session has to be activated (e.g. 10m)", "type": parse_duration})
    max_message_bytes: int = field(default=10240, metadata={"help": "largest inbound WebSocket message"})
    max_body_bytes: int = field(default=16384, metadata={"help": "largest REST request body"})
    rate_limit: float = field(default=50.0, metadata={"help": "WebSocket messages per second per session"})
    rate_burst: int = field(default=100, metadata={"help": "WebSocket message burst per session"})
    session_create_limit: int = field(default=30, metadata={
        "help": "sessions one client address may create per minute"})
    max_connections_per_session: int = field(default=10, metadata={"help": "live sockets per session"})
    max_connections: int = field(default=10000, metadata={"help": "live sockets in total"})
    violation_threshold: int = field(default=5, metadata={
        "help": "medium-or-worse security events per session that trigger the violation action"})
    violation_window: float = field(default=300.0, metadata={
        "help": "window for counting violations (e.g. 5m)", "type": parse_duration})
    violation_action: str = field(default="disconnect", metadata={
        "help": "what too many violations do: disconnect, or invalidate (disconnect and end the session)"})
    sanitizer: str = field(default="bleach", metadata={"help": "HTML sanitizer engine: bleach or nh3"})
    loop: str = field(default="asyncio", metadata={
        "help": "event loop: asyncio, or uvloop (installed with mcprt[uvloop]; faster round trips)"})
    sanitize_budget: float = field(default=5.0, metadata={
        "help": "seconds one markup edit may take to sanitize (in a worker process) before it is refused",
        "type": parse_duration})
    max_document_bytes: int = field(default=1_000_000, metadata={"help": "largest document (UTF-8 bytes)"})
    max_documents: int = field(default=100_000, metadata={"help": "documents the server holds at most"})
    document_create_limit: int = field(default=100, metadata={
        "help": "documents one user, one session or one client address may create per hour"})
    document_probe_limit: int = field(default=30, metadata={
        "help": "NOT_FOUND answers about documents one session may get per minute (id guessing)"})
    history_window: int = field(default=1000, metadata={
        "help": "recent ops kept in memory per open document: edits and sync_request older than this resync"})
    snapshot_interval: int = field(default=100, metadata={"help": "a snapshot once N revisions and ops of an eighth of the document have landed since the last"})
    event_retention: float = field(default=90 * 86400.0, metadata={
        "help": "how long events are kept (e.g. 90d)", "type": parse_duration})
    sweep_interval: float = field(default=5.0, metadata={
        "help": "how often expiry and retention run (e.g. 5s)", "type": parse_duration})
    ping_interval: float = field(default=20.0, metadata={
        "help": "WebSocket ping interval; peers that miss pongs are dropped", "type": parse_duration})
    ping_timeout: float = field(default=10.0, metadata={
        "help": "drop a peer that has not answered a ping for this long", "type": parse_duration})
    trust_proxy_headers: bool = field(default=False, metadata={
        "help": "behind a TLS proxy: trust X-Forwarded-Proto / X-Real-IP (wss:// URLs, real client addresses)",
        "type": parse_bool})
    metrics_port: int | None = field(default=None, metadata={
        "help": "serve /metrics without a token on this separate port (loopback); unset: /metrics needs the admin token"})
    event_max_rows: int = field(default=1_000_000, metadata={
        "help": "events kept at most: the sweeper deletes the oldest beyond this, a bounded chunk at a time (0: no cap)"})
    output_buffer_limit: int = field(default=16 << 20, metadata={
        "help": "bytes queued for one WebSocket peer past which it is dropped at once (4009); never below twice "
                "the largest message (about 2 x --max-document-bytes)"})
    output_buffer_soft_limit: int = field(default=4 << 20, metadata={
        "help": "bytes queued for one WebSocket peer that drop it (4009) once exceeded for --output-buffer-soft-seconds"})
    output_buffer_soft_seconds: float = field(default=10.0, metadata={
        "help": "how long a peer may stay over --output-buffer-soft-limit", "type": parse_duration})
    header_timeout: float = field(default=60.0, metadata={
        "help": "time a new connection has to send its request line and headers (nginx client_header_timeout)",
        "type": parse_duration})
    keepalive_timeout: float = field(default=75.0, metadata={
        "help": "time an idle keep-alive connection is kept before its next request (nginx keepalive_timeout)",
        "type": parse_duration})
    body_timeout: float = field(default=60.0, metadata={
        "help": "time a request body has to arrive (nginx client_body_timeout)", "type": parse_duration})
    max_http_connections: int = field(default=4096, metadata={
        "help": "open connections not yet an authenticated WebSocket (REST, handshakes, partial headers), in total"})
    max_http_connections_per_address: int = field(default=256, metadata={
        "help": "the same, per client address (behind a proxy every client is the proxy's address: raise it)"})

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _env_name(f: dataclasses.Field) -> str:
    return "MCPRT_" + f.name.upper()


def _converter(f: dataclasses.Field):
    if "type" in f.metadata:
        return f.metadata["type"]
    if f.type in ("int", "int | None"):
        return int
    if f.type == "float":
        return float
    return str


class _FromEnvironment:
    """A default an MCPRT_* variable gave, converted only when the settings are built (so that a bad
    value is refused in one line naming the variable, and never breaks --help or another command)."""

    def __init__(self, name: str, raw: str):
        self.name, self.raw = name, raw

    def __repr__(self) -> str:
        return f"{self.name}={self.raw!r}"


def add_settings_arguments(parser: argparse.ArgumentParser, environ=None) -> None:
    """Add one flag per Settings field; defaults come from MCPRT_* variables when set."""
    environ = os.environ if environ is None else environ
    for f in dataclasses.fields(Settings):
        raw = environ.get(_env_name(f))
        default = _FromEnvironment(_env_name(f), raw) if raw is not None else f.default
        parser.add_argument(_flag(f), dest=f.name, type=_named(_converter(f), f), default=default,
                            help=f"{f.metadata['help']} [env {_env_name(f)}; default {f.default!r}]")


def _named(convert, f: dataclasses.Field):
    """The converter, named after what it reads, for argparse's "invalid <name> value" message."""
    def converted(text):
        return convert(text)
    converted.__name__ = {int: "integer", float: "number", str: "text"}.get(convert, f.name.replace("_", " "))
    return converted


def settings_from_namespace(ns: argparse.Namespace) -> Settings:
    """Settings from parsed arguments (extra attributes ignored), checked: ValueError in one sentence
    for a value that cannot work, naming its flag or environment variable."""
    values = {}
    for f in dataclasses.fields(Settings):
        if f.name not in vars(ns):
            continue
        value = getattr(ns, f.name)
        if isinstance(value, _FromEnvironment):
            try:
                value = _converter(f)(value.raw)
            except ValueError as exc:
                raise ValueError(f"{value.name}={value.raw!r} is not valid: {exc}") from None
        values[f.name] = value
    settings = Settings(**values)
    check_settings(settings)
    return settings


CHOICES = {"log_level": ("debug", "info", "warning", "error"), "log_format": ("text", "json"), "auth": ("open", "jwt"),
           "violation_action": ("disconnect", "invalidate"), "sanitizer": ("bleach", "nh3"),
           "loop": ("asyncio", "uvloop")}
# Numbers that must be above zero; those that may be zero (and what zero means) are listed apart.
_ZERO_ALLOWED = {"port": "any free port", "jwt_leeway": "no clock skew", "event_max_rows": "no cap",
                 "metrics_port": "any free port"}


def check_settings(settings: Settings) -> None:
    """ValueError naming the flag, for a choice not offered, a number out of range, a port past 65535."""
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        flag = _flag(f)
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise ValueError(f"{flag} must be one of {', '.join(CHOICES[f.name])}, not {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{flag} must be a finite number, not {value!r}")
        if f.name in ("port", "metrics_port") and not 0 <= value <= 65535:
            raise ValueError(f"{flag} must be a port, 0 to 65535 (0: any free port), not {value}")
        if f.name in _ZERO_ALLOWED:
            if value < 0:
                raise ValueError(f"{flag} must not be negative (0: {_ZERO_ALLOWED[f.name]}), not {value}")
        elif value <= 0:
            raise ValueError(f"{flag} must be above zero, not {value}")
