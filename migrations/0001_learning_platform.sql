-- The learning platform's schema, applied to every shard by `usher migrate`.
--
-- Family-owned tables (families, children, user_progress) are split across the shards by the
-- family id (see [databases.app.sharding] in config/usher.toml): a family and everything it
-- owns lives on one shard, so foreign keys between them hold on that shard. lessons is a global
-- table: the same catalogue on every shard, so progress rows can reference it locally.
-- Ids are UUIDs: a per-shard sequence would hand out the same id on every shard.

CREATE TABLE families (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE children (
    id          uuid PRIMARY KEY,
    family_id   uuid NOT NULL REFERENCES families (id) ON DELETE CASCADE,
    name        text NOT NULL,
    grade       smallint CHECK (grade BETWEEN 0 AND 12),
    birth_date  date,
    deleted_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A family's current children (soft-deleted ones excluded).
CREATE INDEX children_family_active_idx ON children (family_id) WHERE deleted_at IS NULL;

CREATE TABLE lessons (
    id          bigint PRIMARY KEY,
    title       text NOT NULL,
    subject     text NOT NULL,
    grade       smallint NOT NULL CHECK (grade BETWEEN 0 AND 12),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The lessons offered for a grade.
CREATE INDEX lessons_active_grade_idx ON lessons (grade) WHERE active;

CREATE TABLE user_progress (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    family_id     uuid NOT NULL REFERENCES families (id) ON DELETE CASCADE,
    child_id      uuid NOT NULL REFERENCES children (id) ON DELETE CASCADE,
    lesson_id     bigint NOT NULL REFERENCES lessons (id),
    status        text NOT NULL DEFAULT 'not_started'
                  CHECK (status IN ('not_started', 'in_progress', 'completed')),
    score         numeric(5, 2) CHECK (score BETWEEN 0 AND 100),
    completed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);

-- A child's progress on a lesson, by status.
CREATE INDEX user_progress_child_lesson_status_idx ON user_progress (child_id, lesson_id, status);
-- A child's completed lessons, newest first.
CREATE INDEX user_progress_child_completed_idx ON user_progress (child_id, completed_at DESC)
    WHERE status = 'completed';
-- Everything of one family (deletes, exports).
CREATE INDEX user_progress_family_idx ON user_progress (family_id);
