-- One row that /health rewrites: a real write through the batched writer proves the write path.

CREATE TABLE health_probe (
    id integer PRIMARY KEY CHECK (id = 1),
    at timestamptz NOT NULL
);
