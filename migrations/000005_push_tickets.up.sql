-- One-time connect tickets (POST /api/tickets). A ticket opens one
-- connection, on any instance: the instance that takes it deletes the row in
-- the statement that checks it (DELETE ... RETURNING), so two instances
-- cannot both accept it. The key is the ticket's SHA-256: the ticket itself
-- is never stored, and a row (or a dump) opens nothing. claims are those of
-- the token the ticket was minted for: user id, name, role, projects and
-- the token's expiry, no secret. Expired rows are deleted by the service.
CREATE TABLE IF NOT EXISTS push_tickets (
    hash       bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
    claims     jsonb NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS push_tickets_expires_at_idx ON push_tickets (expires_at);
