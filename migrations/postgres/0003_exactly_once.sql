-- Exactly once: an edit is known by its sender's peer and message id, so a resent edit is recognized and
-- answered with its original ack (SQLite's 0003 also clears duplicates older databases could hold; a
-- PostgreSQL database never held any).
CREATE UNIQUE INDEX ops_message ON ops (document_id, peer_id, message_id);

-- What sanitizing changed after the sender's op, so the original ack can be given again.
ALTER TABLE ops ADD COLUMN correction text;
