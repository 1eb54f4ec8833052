-- Presence (docs/protocol.md section 12): who is online in a project, on every
-- instance. Each instance holds a lease (push_instances), renewed while it
-- lives and judged by the database's clock, and one row per (project, user)
-- it counts online. Rows are written when a user comes or goes on that
-- instance, and counts at most once a second: a connection that joins and
-- leaves without changing who is online writes nothing. An instance that
-- stops renewing is swept by the others; its rows go with it.
--
-- UNLOGGED: presence is what is true now. After a crash of the database the
-- tables come back empty and every instance, finding its lease gone, writes
-- its rows again.
CREATE UNLOGGED TABLE IF NOT EXISTS push_instances (
    id         text PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNLOGGED TABLE IF NOT EXISTS push_presence (
    project_id  text NOT NULL,
    user_id     text NOT NULL,
    instance_id text NOT NULL REFERENCES push_instances (id) ON DELETE CASCADE,
    user_name   text NOT NULL DEFAULT '',
    connections integer NOT NULL CHECK (connections >= 0),
    PRIMARY KEY (project_id, user_id, instance_id)
);
CREATE INDEX IF NOT EXISTS push_presence_instance_idx ON push_presence (instance_id);

-- A row that comes or goes (a sweep's cascade included) tells every
-- instance 'o:<project id>' at commit; a project's notifications within one
-- transaction are one (Postgres folds equal payloads). Count updates say
-- nothing: only the API reads counts, and it reads them fresh.
CREATE OR REPLACE FUNCTION push_presence_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('saga_push', 'o:' || OLD.project_id);
    ELSE
        PERFORM pg_notify('saga_push', 'o:' || NEW.project_id);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_presence_changed ON push_presence;
CREATE TRIGGER push_presence_changed AFTER INSERT OR DELETE ON push_presence
    FOR EACH ROW EXECUTE FUNCTION push_presence_changed();
