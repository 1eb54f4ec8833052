-- A deleted user is disconnected at once (docs/protocol.md section 3): every
-- instance hears 'd:<user id>' on the service's channel, at commit, and
-- closes that user's connections with 4401. Instances also check their
-- connected users' rows after a LISTEN reconnect and every half minute, for
-- the deletions they did not hear.
CREATE OR REPLACE FUNCTION push_users_deleted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('saga_push', 'd:' || OLD.id::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_users_deleted ON users;
CREATE TRIGGER push_users_deleted AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION push_users_deleted();
