-- The Saga tables (docs/protocol.md section 10). The Saga backend may have created
-- them already, so every object is created only when missing and nothing of
-- theirs is altered.

CREATE TABLE IF NOT EXISTS users (
    id         varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
    email      varchar(255) UNIQUE,
    name       varchar(255) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS projects (
    id             varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
    name           varchar(255) NOT NULL,
    facilitator_id varchar(36) REFERENCES users (id) ON DELETE SET NULL,
    storyteller_id varchar(36) REFERENCES users (id) ON DELETE SET NULL,
    status         varchar(20) NOT NULL DEFAULT 'active',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS projects_facilitator_id_idx ON projects (facilitator_id);
CREATE INDEX IF NOT EXISTS projects_storyteller_id_idx ON projects (storyteller_id);

CREATE TABLE IF NOT EXISTS project_roles (
    id         varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
    project_id varchar(36) NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    varchar(36) NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       varchar(20) NOT NULL CHECK (role IN ('facilitator', 'storyteller')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, user_id, role)
);
CREATE INDEX IF NOT EXISTS project_roles_user_id_idx ON project_roles (user_id);

CREATE TABLE IF NOT EXISTS stories (
    id             varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
    project_id     varchar(36) NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title          varchar(255),
    audio_url      text,
    audio_duration integer,
    transcript     text,
    photo_url      text,
    status         varchar(20) NOT NULL DEFAULT 'processing',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stories_project_id_idx ON stories (project_id);

CREATE TABLE IF NOT EXISTS interactions (
    id             varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
    story_id       varchar(36) NOT NULL REFERENCES stories (id) ON DELETE CASCADE,
    facilitator_id varchar(36) REFERENCES users (id) ON DELETE SET NULL,
    type           varchar(20) NOT NULL CHECK (type IN ('comment', 'followup')),
    content        text NOT NULL,
    answered_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS interactions_story_id_idx ON interactions (story_id);

CREATE TABLE IF NOT EXISTS export_requests (
    id             varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
    project_id     varchar(36) NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    facilitator_id varchar(36) REFERENCES users (id) ON DELETE SET NULL,
    status         varchar(20) NOT NULL DEFAULT 'pending',
    progress       integer NOT NULL DEFAULT 0,
    download_url   text,
    error          text,
    expires_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS export_requests_project_id_idx ON export_requests (project_id);
