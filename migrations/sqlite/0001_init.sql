-- Sessions, connections, documents with their edit history, and the append-only event log.
-- Times are RFC 3339 UTC strings with microseconds ("2025-11-07T10:00:00.000000Z"): they sort as text.

CREATE TABLE sessions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,   -- keyset pagination cursor
    session_id   TEXT NOT NULL UNIQUE,                -- bearer secret (uuid4)
    peer_id      TEXT NOT NULL UNIQUE,                -- public, stable name of the session
    user_id      TEXT NOT NULL,
    client_info  TEXT,
    state        TEXT NOT NULL CHECK (state IN ('Pending', 'Active', 'Expired', 'Invalidated')),
    created_at   TEXT NOT NULL,
    activated_at TEXT,
    expires_at   TEXT NOT NULL,
    ended_at     TEXT,
    end_reason   TEXT,
    last_seen    TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, id);
CREATE INDEX sessions_state_expiry ON sessions (state, expires_at);

CREATE TABLE connections (
    connection_id TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES sessions (session_id),
    user_id       TEXT NOT NULL,
    peer_id       TEXT NOT NULL,
    document_id   TEXT NOT NULL,
    client_type   TEXT NOT NULL,
    client_addr   TEXT,
    user_agent    TEXT,
    opened_at     TEXT NOT NULL,
    closed_at     TEXT,
    close_code    INTEGER,
    close_reason  TEXT,
    messages_in   INTEGER NOT NULL DEFAULT 0,
    messages_out  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX connections_session ON connections (session_id);

CREATE TABLE documents (
    document_id TEXT PRIMARY KEY,
    format      TEXT NOT NULL CHECK (format IN ('html', 'text')),
    created_at  TEXT NOT NULL
);

-- One row per applied edit: the transformed operation (ot.js JSON form) that took
-- the document from revision - 1 to revision.
CREATE TABLE ops (
    document_id TEXT NOT NULL REFERENCES documents (document_id),
    revision    INTEGER NOT NULL,
    op          TEXT NOT NULL,
    user_id     TEXT,
    peer_id     TEXT,
    message_id  TEXT,
    time        TEXT NOT NULL,
    PRIMARY KEY (document_id, revision)
) WITHOUT ROWID;

-- Full content at some revisions, so a past version is read without replaying from zero.
CREATE TABLE snapshots (
    document_id TEXT NOT NULL REFERENCES documents (document_id),
    revision    INTEGER NOT NULL,
    content     TEXT NOT NULL,
    time        TEXT NOT NULL,
    PRIMARY KEY (document_id, revision)
) WITHOUT ROWID;

CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          TEXT NOT NULL,
    kind          TEXT NOT NULL,      -- session, connection, document, security, system
    type          TEXT NOT NULL,      -- e.g. session_created, xss_attempt
    severity      TEXT NOT NULL DEFAULT 'info'
                  CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
    session_id    TEXT,
    user_id       TEXT,
    document_id   TEXT,
    connection_id TEXT,
    client_addr   TEXT,
    user_agent    TEXT,
    details       TEXT NOT NULL DEFAULT '{}'   -- JSON object
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_session ON events (session_id, id);
CREATE INDEX events_kind_severity ON events (kind, severity, id);
