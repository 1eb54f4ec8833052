-- The event store. Every domain event of a project gets the next seq from
-- the project's counter row; the row lock taken by the upsert is held until
-- commit, so a project's seqs are gap-free and in commit order (a bigserial
-- would be neither). NOTIFY only rings a doorbell: instances read the rows.

CREATE TABLE IF NOT EXISTS push_project_seq (
    project_id     text PRIMARY KEY,
    seq            bigint NOT NULL,
    -- Events with seq <= pruned_through have been deleted: a resume from
    -- before it is impossible.
    pruned_through bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS push_events (
    project_id text NOT NULL,
    seq        bigint NOT NULL,
    name       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- clock_timestamp(), not now(): taken after the counter lock, so it grows
    -- with seq within a project, which pruning by age relies on.
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (project_id, seq)
);
CREATE INDEX IF NOT EXISTS push_events_created_at_idx ON push_events (created_at);

-- Ephemeral messages too big for a NOTIFY payload (8000 bytes) travel
-- through this table; the notification carries the id. Rows live a minute.
CREATE TABLE IF NOT EXISTS push_ephemeral (
    id         bigserial PRIMARY KEY,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- push_emit stores one event and returns its seq. Triggers and the
-- service's POST /api/events both go through it, so both share one seq.
-- The body uses $1..$3: named parameters would clash with column names.
-- SECURITY DEFINER: the triggers run as whoever changes Saga's tables (the
-- Saga backend's role, maybe not the one that ran these migrations); that
-- role then needs no rights on the push_ tables. The search_path is pinned
-- to the one in force now, as a definer function must not take the caller's.
CREATE OR REPLACE FUNCTION push_emit(project_id text, name text, data jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    next_seq bigint;
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

    INSERT INTO push_events (project_id, seq, name, data)
    VALUES ($1, next_seq, $2, coalesce($3, '{}'::jsonb));

    -- A tiny pointer, sent at commit; Postgres folds duplicates within one
    -- transaction, so a bulk change rings once per project.
    PERFORM pg_notify('saga_push', 'e:' || $1);
    RETURN next_seq;
END
$$;
