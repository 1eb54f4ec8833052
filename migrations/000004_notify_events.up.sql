-- Notifications carry the event itself when it fits, so that instances fan
-- it out without reading it back: one round trip to the database less on
-- every event's way to the clients, and no read per event at all. The
-- payload is
--   v:<seq>:<created_at, µs since the epoch>:<name>:<bytes of project id>:<project id><data>
-- with data exactly as push_events returns it (jsonb's text form). Events
-- that do not fit in a NOTIFY payload (under 8000 bytes) still send the
-- e:<project id> pointer, and instances read the rows. A notification is a
-- hint either way: an instance that sees a hole in the seqs reads the rows.
CREATE OR REPLACE FUNCTION push_emit(project_id text, name text, data jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    next_seq bigint;
    created  timestamptz;
    body     text;
    msg      text;
BEGIN
    IF $1 IS NULL OR $1 = '' THEN
        -- A row without a project has nobody to tell; never make the
        -- change itself fail for it.
        RETURN NULL;
    END IF;
    INSERT INTO push_project_seq AS c (project_id, seq)
    VALUES ($1, 1)
    ON CONFLICT ON CONSTRAINT push_project_seq_pkey DO UPDATE SET seq = c.seq + 1
    RETURNING c.seq INTO next_seq;

    INSERT INTO push_events AS e (project_id, seq, name, data)
    VALUES ($1, next_seq, $2, coalesce($3, '{}'::jsonb))
    RETURNING e.created_at, e.data::text INTO created, body;

    msg := 'v:' || next_seq || ':' || floor(extract(epoch FROM created) * 1000000)::bigint
        || ':' || $2 || ':' || octet_length($1) || ':' || $1 || body;
    IF octet_length(msg) >= 7900 THEN
        msg := 'e:' || $1; -- too big: a pointer, folded per transaction
    END IF;
    PERFORM pg_notify('saga_push', msg);
    RETURN next_seq;
END
$$;
