-- The groups a verified token put the session's user in (a JSON list; NULL: none): members may be group:<name>.
ALTER TABLE sessions ADD COLUMN member_groups text;
