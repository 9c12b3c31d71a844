-- SQLite's migration of this number moves the exactly-once index off the commit path (op_messages, filled
-- once a second by the one writer). PostgreSQL keeps the unique index: several nodes write its ops, and
-- the index is what refuses a second copy of an edit whichever node commits it.
COMMENT ON INDEX ops_message IS 'exactly once: an edit is known by its document, sender peer and message id';
