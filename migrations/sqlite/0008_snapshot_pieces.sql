-- A large document's snapshot as its pieces, each stored once per document. A snapshot of 1 MB wrote 1 MB
-- (and the checkpoint copied it again) however little had changed since the last one; now its row lists
-- the pieces' digests in order, and only pieces no earlier snapshot of the document stored are written:
-- after edits in one place, the one or two pieces they touched. A smaller snapshot keeps its content in
-- its row (pieces NULL), as every snapshot did before.
CREATE TABLE snapshot_pieces (
    document_id TEXT NOT NULL REFERENCES documents (document_id),
    piece       TEXT NOT NULL,   -- BLAKE2b-128 of the piece's UTF-8, in hex
    content     TEXT NOT NULL,
    PRIMARY KEY (document_id, piece)
) WITHOUT ROWID;

ALTER TABLE snapshots ADD COLUMN pieces TEXT;  -- a JSON array of piece digests; NULL: content is the whole
