"""Message type names, error codes and AppError, the error body, the schema registry, parse() and build()."""

from __future__ import annotations

import enum
import json
import re
import uuid
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from . import resource_dir

SCHEMAS_DIR = resource_dir("schemas")
SCHEMA_BASE = "https://mcprt.dev/schemas/"
MAX_DEPTH = 32

# Client -> server message types, each with a schema `schemas/<type>.json`.
HEARTBEAT = "heartbeat"
REALTIME_EDIT = "realtime_edit"
CURSOR_UPDATE = "cursor_update"
SYNC_REQUEST = "sync_request"
AUTH_REFRESH = "auth_refresh"
INBOUND_TYPES = (HEARTBEAT, REALTIME_EDIT, CURSOR_UPDATE, SYNC_REQUEST, AUTH_REFRESH)

# Server -> client message types.
HEARTBEAT_ACK = "heartbeat_ack"
DOCUMENT_STATE = "document_state"
EDIT_ACK = "edit_ack"
SYNC_RESPONSE = "sync_response"
PRESENCE = "presence"
SESSION_CONNECTED = "session_connected"
SESSION_DISCONNECTED = "session_disconnected"
ERROR = "error"
AUTH_REFRESHED = "auth_refreshed"
PERMISSIONS = "permissions"
OUTBOUND_TYPES = (HEARTBEAT_ACK, DOCUMENT_STATE, REALTIME_EDIT, EDIT_ACK, SYNC_RESPONSE, PRESENCE,
                  SESSION_CONNECTED, SESSION_DISCONNECTED, ERROR, AUTH_REFRESHED, PERMISSIONS)

# REST request bodies, each with a schema `schemas/<name>.json`.
REST_BODIES = ("session_create", "document_create", "document_restore", "member_set")


class ErrorCode(str, enum.Enum):
    """The reference's error codes, plus NOT_FOUND, CONFLICT and (REST only) METHOD_NOT_ALLOWED."""

    INVALID_SESSION = "INVALID_SESSION"
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    SERVER_ERROR = "SERVER_ERROR"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


HTTP_STATUS = {
    ErrorCode.INVALID_SESSION: 404, ErrorCode.UNAUTHORIZED: 401, ErrorCode.RATE_LIMITED: 429,
    ErrorCode.MESSAGE_TOO_LARGE: 413, ErrorCode.INVALID_MESSAGE: 400, ErrorCode.SERVER_ERROR: 500,
    ErrorCode.NOT_FOUND: 404, ErrorCode.CONFLICT: 409, ErrorCode.METHOD_NOT_ALLOWED: 405,
}


class AppError(Exception):
    """An error with a code from the table, a human message, and machine-readable details."""

    def __init__(self, code: ErrorCode, message: str, details: dict | None = None, status: int | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details or {}
        self.status = status or HTTP_STATUS[self.code]


def error_body(code: ErrorCode | str, message: str, details: dict | None = None) -> dict:
    """The one error shape: {code, message, details}."""
    return {"code": ErrorCode(code).value, "message": message, "details": details or {}}


def new_id() -> str:
    """A fresh message id."""
    return uuid.uuid4().hex


def build(type_: str, payload: dict, timestamp: str, id_: str | None = None, **extra: Any) -> dict:
    """An outbound envelope {id, type, payload, timestamp} (+ e.g. session_info)."""
    message = {"id": id_ or new_id(), "type": type_, "payload": payload, "timestamp": timestamp}
    message.update(extra)
    return message


def build_error(error: AppError, timestamp: str, id_: str | None = None) -> dict:
    """An `error` message for the socket."""
    return build(ERROR, error_body(error.code, error.message, error.details), timestamp, id_)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # made once: json.dumps with
# these options builds an encoder per call (10.8 against 8.6 us for a realtime_edit)


def dumps(message: dict) -> str:
    """Compact JSON, non-ASCII kept (smaller frames)."""
    return _ENCODER.encode(message)


_ENCODE_STRING = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept (as dumps does)


def edit_ack_text(id_: str, revision: int, op_json: str, correction_json: str | None, length: int | None,
                  content: str | None, timestamp: str) -> str:
    """dumps(build(EDIT_ACK, ...)) written out by hand: the message every edit is answered with, where the
    op is JSON already (as stored) and a generic encoder would walk the dicts again. With `length` the lean
    form, else the reference form with `content`."""
    tail = f'"length":{length}' if length is not None else f'"content":{_ENCODE_STRING(content)}'
    quoted = _ENCODE_STRING(id_)  # (ints without a format spec: "{n:d}" parses the spec on every call)
    return (f'{{"id":{quoted},"type":"{EDIT_ACK}","payload":{{"edit_id":{quoted},"revision":{revision},'
            f'"op":{op_json},"correction":{correction_json or "null"},{tail}}},"timestamp":"{timestamp}"}}')


def _value(value: Any) -> str:
    """One JSON value as dumps writes it; the common kinds without the encoder."""
    if value is None:
        return "null"
    if value.__class__ is str:
        return _ENCODE_STRING(value)
    if value.__class__ is int:
        return str(value)
    return dumps(value)


def realtime_edit_text(id_: str, user_id: str, peer_id: str | None, cursor_position: Any, operation: Any,
                       op_json: str, revision: int, length: int | None, content: str | None,
                       delta_json: str | None, timestamp: str) -> str:
    """dumps(build(REALTIME_EDIT, ..., session_info=...)) written out by hand: the broadcast of an applied
    edit, its op JSON already (as stored). With `length` the lean form, else the reference form with
    `content` and its change_delta (`delta_json`)."""
    tail = (f'"length":{length}' if length is not None else
            f'"content":{_ENCODE_STRING(content)},"change_delta":{delta_json}')
    user, stamp = _value(user_id), f'"{timestamp}"'
    return (f'{{"id":{_ENCODE_STRING(id_)},"type":"{REALTIME_EDIT}","payload":{{"cursor_position":'
            f'{_value(cursor_position)},"user_id":{user},"operation":{_value(operation)},"op":{op_json},'
            f'"revision":{revision},"base_revision":{revision - 1},{tail}}},"timestamp":{stamp},'
            f'"session_info":{{"user_id":{user},"peer_id":{_value(peer_id)},"timestamp":{stamp}}}}}')


def _pointer(path) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path) if path else "/"


def describe(error: ValidationError) -> tuple[str, dict]:
    """A message naming what is wrong and where (JSON pointer), and details for the error body."""
    pointer = _pointer(error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return f"{message} (at {pointer})", {"pointer": pointer, "schema_rule": error.validator}


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


class Registry:
    """Every schema in schemas/, checked once, with one compiled validator per name.

    fastjsonschema (code generated from the same files) accepts valid input about ten times faster;
    jsonschema, the reference implementation, explains a rejection with its JSON pointer and has the
    last word if the two ever disagree. A property test holds them to the same verdicts.
    """

    def __init__(self, directory: Path = SCHEMAS_DIR):
        self.schemas: dict[str, dict] = {}
        for path in sorted(directory.glob("*.json")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
            if schema.get("$id") != SCHEMA_BASE + path.name:
                raise ValueError(f"{path.name}: $id must be {SCHEMA_BASE + path.name}")
            self.schemas[path.stem] = schema
        self._validators = {name: Draft202012Validator(s) for name, s in self.schemas.items()}
        self._fast = {name: fastjsonschema.compile(s) for name, s in self.schemas.items()}

    def validate(self, name: str, instance: Any) -> None:
        """Raise AppError(INVALID_MESSAGE) naming the first problem, if any."""
        try:
            self._fast[name](instance)
            return
        except fastjsonschema.JsonSchemaException:
            pass
        if not _depth_ok(instance):  # before jsonschema walks it to explain
            raise AppError(ErrorCode.INVALID_MESSAGE, f"JSON nested deeper than {MAX_DEPTH} levels", {"pointer": ""})
        error = next(iter(sorted(self._validators[name].iter_errors(instance),
                                 key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            message, details = describe(error)
            raise AppError(ErrorCode.INVALID_MESSAGE, message, details)

    def parse_json(self, raw: str | bytes, name: str) -> Any:
        """Decode a JSON body and validate it against schema `name`."""
        value = loads(raw)
        self.validate(name, value)
        return value

    def parse(self, raw: str) -> dict:
        """Decode and validate an inbound socket message: the envelope, then its payload's schema."""
        message = loads(raw)
        if plain_edit(message):  # the commonest message, in its commonest shape: certainly valid
            return message
        self.validate("envelope", message)
        if message["type"] not in INBOUND_TYPES:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"unknown message type {message['type']!r}",
                           {"pointer": "/type", "known_types": list(INBOUND_TYPES)})
        try:
            self.validate(message["type"], message["payload"])
        except AppError as exc:
            pointer = "/payload" + exc.details["pointer"].rstrip("/") if exc.details["pointer"] != "/" else "/payload"
            raise AppError(exc.code, exc.message.replace(f"(at {exc.details['pointer']})", f"(at {pointer})"),
                           {**exc.details, "pointer": pointer}) from None
        return message


_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII)
_ENVELOPE_KEYS = frozenset(("id", "type", "payload", "timestamp"))
_EDIT_KEYS = frozenset(("content", "cursor_position", "user_id", "operation", "base_revision", "change_delta"))
_DELTA_KEYS = frozenset(("position", "insert", "delete"))


def _count(value: Any, least: int) -> bool:
    """An integer of the schemas (not a bool) from `least` to MAX_INTEGER."""
    return type(value) is int and least <= value <= MAX_INTEGER


def _text(value: Any, least: int, most: int) -> bool:
    return type(value) is str and least <= len(value) <= most


def plain_edit(message: Any) -> bool:
    """True only for a realtime_edit the envelope and realtime_edit schemas certainly accept, with one
    delta or content: the shape nearly every edit has, checked by hand in a fraction of the compiled
    validators' time. False says nothing: the schemas decide (a property test holds every True to them)."""
    if type(message) is not dict or message.get("type") != REALTIME_EDIT or not message.keys() <= _ENVELOPE_KEYS:
        return False
    payload = message.get("payload")
    if not _text(message.get("id"), 1, 128) or type(payload) is not dict or not payload.keys() <= _EDIT_KEYS:
        return False
    if "timestamp" in message and not (_text(message["timestamp"], 0, 64) and _STAMP.match(message["timestamp"])):
        return False
    if "change_delta" not in payload:
        if "content" not in payload:
            return False
    elif (type(delta := payload["change_delta"]) is not dict or not delta.keys() <= _DELTA_KEYS
          or not _count(delta.get("position"), 0) or ("insert" not in delta and "delete" not in delta)
          or ("insert" in delta and not _text(delta["insert"], 0, 10240))
          or ("delete" in delta and not _count(delta["delete"], 1))):
        return False
    return (("content" not in payload or type(payload["content"]) is str)
            and ("cursor_position" not in payload or _count(payload["cursor_position"], 0))
            and ("base_revision" not in payload or _count(payload["base_revision"], 0))
            and ("user_id" not in payload or _text(payload["user_id"], 1, 128))
            and ("operation" not in payload or _text(payload["operation"], 1, 32)))


# Every number in this protocol is an integer: 1.0, 1e3, NaN and Infinity are refused, and integers
# are bounded by the schemas (at most 2**53 - 1, what a JavaScript client holds exactly).
MAX_INTEGER = 2**53 - 1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_float(text: str):
    raise AppError(ErrorCode.INVALID_MESSAGE, f"not an integer: {text[:40]} (every number here is an integer)",
                   {"pointer": ""})


def _no_constant(text: str):
    raise AppError(ErrorCode.INVALID_MESSAGE, f"not valid JSON: {text}", {"pointer": ""})


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_constant)  # json.loads with these
# arguments builds a decoder per call


def loads(raw: str | bytes) -> Any:
    """json.loads with the errors this server reports (INVALID_MESSAGE with line and column).

    Bytes must be UTF-8 (RFC 8259), strictly: json.loads would decode them with surrogatepass. A lone
    surrogate (a `\\ud800` escape without its pair) is refused in every string and key: no UTF-8 can
    carry it, so SQLite, the log and every client would choke on it later.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        if text[:1] == "{" and text[-1:] == "}":  # an object with no whitespace around it, as clients send
            value, end = _DECODER.raw_decode(text)  # it: decode's two whitespace matches are skipped
            if end != len(text):
                value = _DECODER.decode(text)  # raises "Extra data" at the right place
        else:
            value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise AppError(ErrorCode.INVALID_MESSAGE, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       {"pointer": "", "line": exc.lineno, "column": exc.colno}) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise AppError(ErrorCode.INVALID_MESSAGE, f"not valid JSON: {type(exc).__name__}", {"pointer": ""}) from None
    except ValueError:  # an integer past Python's digit limit (sys.get_int_max_str_digits)
        raise AppError(ErrorCode.INVALID_MESSAGE, "not valid JSON: an integer with too many digits",
                       {"pointer": ""}) from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # (`in` first: a search costs ten times more)
        pointer = _surrogate_at(value)
        if pointer is not None:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"lone surrogate in a string (at {pointer})",
                           {"pointer": pointer})
    return value


def _surrogate_at(value: Any) -> str | None:
    """The JSON pointer of the first string or key holding a lone surrogate, or None."""
    stack = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return _pointer(path)
        elif isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return _pointer(path)
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
    return None
