-- Who may do what to a document: a member is user:<id>, group:<name> or * (everyone), with a role.
CREATE TABLE members (
    document_id TEXT NOT NULL REFERENCES documents (document_id),
    member      TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    PRIMARY KEY (document_id, member)
) WITHOUT ROWID;
