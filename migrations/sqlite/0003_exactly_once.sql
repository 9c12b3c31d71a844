-- Exactly once: an edit is known by its sender's peer and message id, so a resent edit is recognized and
-- answered with its original ack. Before this key existed a resent edit could be applied twice; the later
-- copies keep their row (the history stays whole) but lose the message id they shared with the first.
UPDATE ops SET message_id = NULL
WHERE message_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM ops AS first
              WHERE first.document_id = ops.document_id AND first.peer_id = ops.peer_id
                AND first.message_id = ops.message_id AND first.revision < ops.revision);
CREATE UNIQUE INDEX ops_message ON ops (document_id, peer_id, message_id);

-- What sanitizing changed after the sender's op, so the original ack can be given again.
ALTER TABLE ops ADD COLUMN correction TEXT;
