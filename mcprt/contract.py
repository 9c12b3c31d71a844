"""The published contract: an OpenAPI 3.1 document for the REST API and an AsyncAPI 3.0 document for the
WebSocket, built from the JSON Schemas the server validates with (referenced by their URL under
/schemas/, where the server serves them) and from the operation table below. tests/test_contract.py
holds the table to the route table and to the handlers' methods, so the documents cannot drift from
the code.
"""

from __future__ import annotations

import re

from . import __version__
from . import protocol as P

# (path, method) -> (summary, request body schema or None, {status: description}). Paths as OpenAPI writes them.
OPERATIONS: dict[tuple[str, str], tuple[str, str | None, dict[int, str]]] = {
    ("/health", "get"): ("Health: the database (a probe write) and, in cluster mode, Redis", None,
                         {200: "healthy", 503: "unhealthy, with the reason in checks"}),
    ("/api/sessions", "post"): ("Create a session (with a JWT or the admin token under --auth jwt)", "session_create",
                                {201: "the session", 400: "invalid body", 401: "no acceptable credential",
                                 429: "too many sessions from this address"}),
    ("/api/sessions", "get"): ("Operators: list sessions, newest first, keyset-paginated", None,
                               {200: "a page of sessions", 401: "no admin token"}),
    ("/api/sessions/{session_id}", "get"): ("A session as it stands now", None,
                                            {200: "the session", 404: "unknown session"}),
    ("/api/sessions/{session_id}", "delete"): ("Invalidate a session; its sockets close (4010)", None,
                                               {200: "the session, Invalidated", 404: "unknown session",
                                                409: "already final"}),
    ("/api/sessions/{session_id}/activate", "post"): ("Pending to Active", None,
                                                      {200: "the session", 404: "unknown session",
                                                       409: "final state"}),
    ("/api/documents", "post"): ("Create a document (html or text)", "document_create",
                                 {201: "the document's state", 409: "it exists", 429: "quota"}),
    ("/api/documents", "get"): ("The documents the caller may read, with its role, by id", None,
                                {200: "a page of documents", 401: "no session"}),
    ("/api/documents/{document_id}", "get"): ("A document now, or at ?revision=N; ?format=text or html for "
                                              "its content alone", None,
                                              {200: "the document", 404: "no such document or revision",
                                               429: "too many unknown documents asked for"}),
    ("/api/documents/{document_id}", "delete"): ("Delete a document, its history and members (owner or admin)",
                                                 None, {200: "deleted", 403: "not the owner",
                                                        404: "no such document"}),
    ("/api/documents/{document_id}/history", "get"): ("Stored ops after ?since=N", None,
                                                      {200: "ops, oldest first", 404: "no such document",
                                                       429: "too many unknown documents asked for"}),
    ("/api/documents/{document_id}/restore", "post"): ("Write an old revision's content as a new revision",
                                                       "document_restore",
                                                       {200: "the document's state", 403: "not an editor",
                                                        404: "no such revision"}),
    ("/api/documents/{document_id}/members", "get"): ("The members and their roles (owner or admin)", None,
                                                      {200: "the members", 400: "not --auth jwt"}),
    ("/api/documents/{document_id}/members", "put"): ("Give a member a role", "member_set",
                                                      {200: "the members", 409: "the last owner stays"}),
    ("/api/documents/{document_id}/members", "delete"): ("Take a member's role away (?member=)", None,
                                                         {200: "the members", 409: "the last owner stays"}),
    ("/api/events", "get"): ("Operators: the event log, filtered, newest first", None,
                             {200: "a page of events", 400: "an unknown filter", 401: "no admin token"}),
    ("/metrics", "get"): ("Prometheus text (admin token; without one on --metrics-port)", None,
                          {200: "metrics", 401: "no admin token"}),
    ("/api/openapi.json", "get"): ("This document", None, {200: "OpenAPI 3.1"}),
    ("/api/asyncapi.json", "get"): ("The WebSocket's messages", None, {200: "AsyncAPI 3.0"}),
    ("/schemas/{name}.json", "get"): ("A JSON Schema the server validates with", None,
                                      {200: "the schema", 404: "no such schema"}),
}

# Outbound WebSocket messages: what each carries (their payloads are documented in the README).
OUTBOUND = {P.HEARTBEAT_ACK: "the answer to a heartbeat", P.DOCUMENT_STATE: "the document on joining (or a "
            "sync_request too old to answer with ops)", P.REALTIME_EDIT: "another editor's committed edit",
            P.EDIT_ACK: "this editor's edit, committed", P.SYNC_RESPONSE: "the ops since a revision",
            P.PRESENCE: "a cursor moved", P.SESSION_CONNECTED: "someone joined",
            P.SESSION_DISCONNECTED: "someone left", P.ERROR: "a message refused (its id when it could be read)",
            P.AUTH_REFRESHED: "the session's new deadline", P.PERMISSIONS: "this socket's role changed"}


def _error_schema() -> dict:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "details"], "properties": {
            "code": {"enum": [c.value for c in P.ErrorCode]}, "message": {"type": "string"},
            "details": {"type": "object"}}}}}


def _response(status: int, text: str) -> dict:
    """One documented reply: errors in the one error shape, a 429 with its Retry-After."""
    if status < 400:
        return {"description": text}
    response = {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if status == 429:
        response["headers"] = {"Retry-After": {"description": "seconds until a retry can succeed",
                                               "schema": {"type": "integer", "minimum": 1}}}
    return response


def openapi() -> dict:
    paths: dict[str, dict] = {}
    for (path, method), (summary, body, responses) in OPERATIONS.items():
        operation = {"summary": summary, "responses": {str(status): _response(status, text)
                                                       for status, text in responses.items()}}
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in _path_names(path)]
        if parameters:
            operation["parameters"] = parameters
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": P.SCHEMA_BASE + body + ".json"}}}}
        paths.setdefault(path, {})[method] = operation
    return {"openapi": "3.1.0", "info": {"title": "mcprt REST API", "version": __version__},
            "paths": paths, "components": {
                "schemas": {"Error": _error_schema()},
                "securitySchemes": {"session": {"type": "http", "scheme": "bearer",
                                                "description": "a session id (or X-Session-ID)"},
                                    "admin": {"type": "http", "scheme": "bearer",
                                              "description": "the --admin-token"}}}}


def asyncapi() -> dict:
    messages = {name: {"name": name, "payload": {"$ref": P.SCHEMA_BASE + name + ".json"}}
                for name in P.INBOUND_TYPES}
    messages.update({f"{name}_out": {"name": name, "summary": summary} for name, summary in OUTBOUND.items()})
    return {"asyncapi": "3.0.0", "info": {"title": "mcprt WebSocket", "version": __version__},
            "channels": {"editor": {"address": "/ws?session_id={session_id}&document_id={document_id}",
                                    "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages}}},
            "operations": {
                "send": {"action": "receive", "channel": {"$ref": "#/channels/editor"},
                         "messages": [{"$ref": f"#/channels/editor/messages/{name}"} for name in P.INBOUND_TYPES]},
                "receive": {"action": "send", "channel": {"$ref": "#/channels/editor"},
                            "messages": [{"$ref": f"#/channels/editor/messages/{name}_out"} for name in OUTBOUND]}},
            "components": {"messages": messages, "schemas": {"envelope": {"$ref": P.SCHEMA_BASE + "envelope.json"}}}}


def _path_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def route_pattern(path: str) -> str:
    """An OpenAPI path as the route table writes it."""
    return re.sub(r"{\w+}", "([^/]+)", path)
