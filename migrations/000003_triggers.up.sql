-- Triggers turning Saga's changes into domain events (docs/protocol.md section 6),
-- in the same transaction as the change: an event exists if and only if its
-- change committed. Update triggers carry WHEN clauses so that updates that
-- change nothing relevant never enter PL/pgSQL.

-- stories ------------------------------------------------------------------

CREATE OR REPLACE FUNCTION push_stories_inserted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM push_emit(NEW.project_id::text, 'story_uploaded', jsonb_build_object(
        'story', jsonb_build_object(
            'id', NEW.id::text,
            'projectId', NEW.project_id::text,
            'title', NEW.title,
            'status', NEW.status,
            'audioUrl', NEW.audio_url,
            'createdAt', NEW.created_at)));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION push_stories_updated() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- Transcript first: a client that sees "processed" already holds the
    -- transcript that came with it.
    IF NEW.transcript IS DISTINCT FROM OLD.transcript THEN
        PERFORM push_emit(NEW.project_id::text, 'transcript_updated', jsonb_build_object(
            'storyId', NEW.id::text,
            'transcript', NEW.transcript));
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status IS NOT NULL THEN
        PERFORM push_emit(NEW.project_id::text,
            CASE WHEN NEW.status = 'processing' THEN 'story_processing' ELSE 'story_processed' END,
            jsonb_build_object('storyId', NEW.id::text, 'status', NEW.status));
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_stories_inserted ON stories;
CREATE TRIGGER push_stories_inserted
    AFTER INSERT ON stories
    FOR EACH ROW EXECUTE FUNCTION push_stories_inserted();

DROP TRIGGER IF EXISTS push_stories_updated ON stories;
CREATE TRIGGER push_stories_updated
    AFTER UPDATE ON stories
    FOR EACH ROW
    WHEN (NEW.transcript IS DISTINCT FROM OLD.transcript OR NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION push_stories_updated();

-- interactions -------------------------------------------------------------

CREATE OR REPLACE FUNCTION push_interactions_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    pid text;
BEGIN
    -- An interaction belongs to the project of its story.
    SELECT s.project_id::text INTO pid FROM stories s WHERE s.id = NEW.story_id;
    IF pid IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM push_emit(pid,
        CASE WHEN TG_OP = 'INSERT' THEN 'interaction_added' ELSE 'interaction_updated' END,
        jsonb_build_object(
            'interaction', jsonb_build_object(
                'id', NEW.id::text,
                'storyId', NEW.story_id::text,
                'facilitatorId', NEW.facilitator_id::text,
                'type', NEW.type,
                'content', NEW.content,
                'answeredAt', NEW.answered_at,
                'createdAt', NEW.created_at),
            'storyId', NEW.story_id::text));
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_interactions_inserted ON interactions;
CREATE TRIGGER push_interactions_inserted
    AFTER INSERT ON interactions
    FOR EACH ROW EXECUTE FUNCTION push_interactions_changed();

DROP TRIGGER IF EXISTS push_interactions_updated ON interactions;
CREATE TRIGGER push_interactions_updated
    AFTER UPDATE ON interactions
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION push_interactions_changed();

-- export_requests ----------------------------------------------------------

CREATE OR REPLACE FUNCTION push_exports_inserted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM push_emit(NEW.project_id::text, 'export_started', jsonb_build_object(
        'exportId', NEW.id::text,
        'status', NEW.status));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION push_exports_updated() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- Progress first: "ready" should be the last word on an export.
    IF NEW.progress IS DISTINCT FROM OLD.progress THEN
        PERFORM push_emit(NEW.project_id::text, 'export_progress', jsonb_build_object(
            'exportId', NEW.id::text,
            'progress', NEW.progress));
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NEW.status IN ('ready', 'completed') THEN
            PERFORM push_emit(NEW.project_id::text, 'export_ready', jsonb_build_object(
                'exportId', NEW.id::text,
                'status', NEW.status,
                'downloadUrl', NEW.download_url,
                'expiresAt', NEW.expires_at));
        ELSIF NEW.status = 'failed' THEN
            PERFORM push_emit(NEW.project_id::text, 'export_failed', jsonb_build_object(
                'exportId', NEW.id::text,
                'status', NEW.status,
                'error', NEW.error));
        END IF;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_exports_inserted ON export_requests;
CREATE TRIGGER push_exports_inserted
    AFTER INSERT ON export_requests
    FOR EACH ROW EXECUTE FUNCTION push_exports_inserted();

DROP TRIGGER IF EXISTS push_exports_updated ON export_requests;
CREATE TRIGGER push_exports_updated
    AFTER UPDATE ON export_requests
    FOR EACH ROW
    WHEN (NEW.progress IS DISTINCT FROM OLD.progress OR NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION push_exports_updated();

-- access revocation ----------------------------------------------------------
-- Nothing is stored: 'r:<project>:<user>' asks every instance to re-check
-- that user's access to that project and to drop the user from the room only
-- when it is really gone (the user may still be the facilitator, say).

CREATE OR REPLACE FUNCTION push_roles_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('saga_push', 'r:' || OLD.project_id::text || ':' || OLD.user_id::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_roles_deleted ON project_roles;
CREATE TRIGGER push_roles_deleted
    AFTER DELETE ON project_roles
    FOR EACH ROW EXECUTE FUNCTION push_roles_changed();

DROP TRIGGER IF EXISTS push_roles_moved ON project_roles;
CREATE TRIGGER push_roles_moved
    AFTER UPDATE OF user_id, project_id ON project_roles
    FOR EACH ROW
    WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.project_id IS DISTINCT FROM NEW.project_id)
    EXECUTE FUNCTION push_roles_changed();

CREATE OR REPLACE FUNCTION push_projects_owners_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    lost_facilitator text;
    lost_storyteller text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        lost_facilitator := OLD.facilitator_id::text;
        lost_storyteller := OLD.storyteller_id::text;
    ELSE
        IF OLD.facilitator_id IS DISTINCT FROM NEW.facilitator_id THEN
            lost_facilitator := OLD.facilitator_id::text;
        END IF;
        IF OLD.storyteller_id IS DISTINCT FROM NEW.storyteller_id THEN
            lost_storyteller := OLD.storyteller_id::text;
        END IF;
    END IF;
    IF lost_facilitator IS NOT NULL THEN
        PERFORM pg_notify('saga_push', 'r:' || OLD.id::text || ':' || lost_facilitator);
    END IF;
    IF lost_storyteller IS NOT NULL THEN
        PERFORM pg_notify('saga_push', 'r:' || OLD.id::text || ':' || lost_storyteller);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS push_projects_owners_changed ON projects;
CREATE TRIGGER push_projects_owners_changed
    AFTER UPDATE OF facilitator_id, storyteller_id ON projects
    FOR EACH ROW
    WHEN (OLD.facilitator_id IS DISTINCT FROM NEW.facilitator_id
          OR OLD.storyteller_id IS DISTINCT FROM NEW.storyteller_id)
    EXECUTE FUNCTION push_projects_owners_changed();

DROP TRIGGER IF EXISTS push_projects_deleted ON projects;
CREATE TRIGGER push_projects_deleted
    AFTER DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION push_projects_owners_changed();
