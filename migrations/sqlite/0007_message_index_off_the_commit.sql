-- Exactly once, without a second b-tree in every edit's commit. The unique index ops_message made each
-- commit write two pages (the op's and the index's) and took about a seventh of an edit's CPU. Which
-- message became which revision is in the op's own row; op_messages is its index, filled once a second
-- from the ops past each document's messages_through (on the writer, between two batches). A lookup
-- reads op_messages and the few ops past messages_through (the ops key, a range): a resent edit is
-- still recognized however long ago it was first sent. (PostgreSQL keeps its unique index.)
CREATE TABLE op_messages (
    document_id TEXT NOT NULL,
    peer_id     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    PRIMARY KEY (document_id, peer_id, message_id)
) WITHOUT ROWID;

ALTER TABLE documents ADD COLUMN messages_through INTEGER NOT NULL DEFAULT 0;

INSERT INTO op_messages (document_id, peer_id, message_id, revision)
SELECT document_id, peer_id, message_id, revision FROM ops
WHERE peer_id IS NOT NULL AND message_id IS NOT NULL;

UPDATE documents SET messages_through = coalesce(
    (SELECT max(revision) FROM ops WHERE ops.document_id = documents.document_id), 0);

DROP INDEX ops_message;

-- A document's index entries go with it (its ops are deleted in the same transaction).
CREATE TRIGGER documents_deleted_messages AFTER DELETE ON documents
BEGIN
    DELETE FROM op_messages WHERE document_id = OLD.document_id;
END;
