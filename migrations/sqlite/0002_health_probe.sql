-- One row that /health rewrites: a real write through the batched writer proves the write path
-- (the writer is running, the lock can be taken, the file is writable and still the one opened).

CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at TEXT NOT NULL
);
