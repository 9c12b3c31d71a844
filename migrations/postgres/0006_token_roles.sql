-- The roles a verified token granted directly (a JSON object: document id, id prefix ending in *, or *, to a
-- role; NULL: the token carried no roles claim): --jwt-roles-claim.
ALTER TABLE sessions ADD COLUMN token_roles text;
