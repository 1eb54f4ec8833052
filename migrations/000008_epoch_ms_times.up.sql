-- Times inside event data as epoch milliseconds (docs/protocol.md sections
-- 1 and 6: every `ts`, `expiresAt` and `...At` in messages is epoch ms), as
-- `ts` already is. 000003 wrote Postgres's ISO strings; the trigger functions are
-- replaced, their triggers stay. Events stored before this migration keep
-- their strings.

CREATE OR REPLACE FUNCTION push_ms(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE
AS $$ SELECT floor(extract(epoch FROM t) * 1000)::bigint $$;

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
            'createdAt', push_ms(NEW.created_at))));
    RETURN NULL;
END
$$;

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
                'answeredAt', push_ms(NEW.answered_at),
                'createdAt', push_ms(NEW.created_at)),
            'storyId', NEW.story_id::text));
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
                'expiresAt', push_ms(NEW.expires_at)));
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
