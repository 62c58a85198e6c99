-- The history in blocks: a row per statement and block of task ids, instead of
-- a row per transition.
--
-- A row per transition, indexed by task, cost about what the task's own write
-- cost (30-36% of a drain, 23-36% of enqueue_many; docs/performance.md). Now
-- each statement that moves tasks writes one row per block of 1,024 task ids
-- it touched (`block` = task_id >> 10), holding its entries as arrays side by
-- side; a task's history is found through the index on `block` and read out of
-- the rows of its block, and `jetpack_history` is a view with a row per
-- transition, as the table had.
--
-- An enqueue writes nothing: until a task's first transition its row is the
-- record of its enqueue (`transitions = 0`, with `created_at`, `step`, `kind`
-- and, for a row inserted parked, `error`), and the view reads it from there.
-- The statement of its first transition writes that record into the history
-- with the transition, in the same entry.

-- How many transitions of the task there have been (outcomes of attempts,
-- wakes, cancels, resumes, hand edits); 0 while it is at the step it was
-- enqueued with. Not written by claims, in no index: claims stay HOT.
ALTER TABLE jetpack_tasks ADD COLUMN transitions integer NOT NULL DEFAULT 0;
-- The tasks of before have their enqueue in the history already.
UPDATE jetpack_tasks SET transitions = 1;
ALTER TABLE jetpack_tasks ADD CONSTRAINT jetpack_tasks_transitions_not_negative
    CHECK (transitions >= 0);

-- One row per statement and block. Each entry is the i-th element of the
-- arrays: the task, the event, the kinds it went from and to, the step it went
-- to, the attempt, its duration and error; for the task's first transition
-- also the record of its enqueue: when, at which kind and step, and the error
-- of a row inserted parked (NULL when this was not its first). `worker` ran
-- the attempts of the entries that are outcomes of attempts. No primary key:
-- rows are only appended, read by block (the index) or by time (BRIN), and
-- deleted by time.
--
-- Steps are `json`, checked as they are written and kept as text: building
-- `jsonb` took 2.5 µs a small step (the view reads them as `jsonb`). No
-- check constraint either: PostgreSQL reads a check's expression anew for
-- every statement, and the view reads what it can of a row written by hand
-- (arrays of other lengths: what is missing reads as NULL, an entry without a
-- task id is no entry).
CREATE TABLE jetpack_history_blocks (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    block            bigint NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    worker           text,
    task_ids         bigint[] NOT NULL,
    events           text[] NOT NULL,
    from_kinds       text[] NOT NULL,
    to_kinds         text[] NOT NULL,
    steps            json[] NOT NULL,
    attempts         integer[] NOT NULL,
    durations        bigint[] NOT NULL,
    errors           text[] NOT NULL,
    enqueued_ats     timestamptz[] NOT NULL,
    enqueued_kinds   text[] NOT NULL,
    enqueued_steps   json[] NOT NULL,
    enqueued_errors  text[] NOT NULL
);
CREATE INDEX jetpack_history_blocks_block ON jetpack_history_blocks (block, id);
-- Rows arrive in time order: a BRIN index answers "since 10:15" for a few pages.
CREATE INDEX jetpack_history_blocks_at ON jetpack_history_blocks USING brin (at);
-- A flush's row is a few kB: kept in the table's page as it is up to 8 kB
-- (compressing its arrays and moving them to the TOAST table cost more than
-- the entries themselves), compressed with lz4 beyond that where the server
-- has it.
ALTER TABLE jetpack_history_blocks SET (toast_tuple_target = 8160);
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE jetpack_history_blocks
            ALTER task_ids SET COMPRESSION lz4, ALTER events SET COMPRESSION lz4,
            ALTER from_kinds SET COMPRESSION lz4, ALTER to_kinds SET COMPRESSION lz4,
            ALTER steps SET COMPRESSION lz4, ALTER attempts SET COMPRESSION lz4,
            ALTER durations SET COMPRESSION lz4, ALTER errors SET COMPRESSION lz4,
            ALTER enqueued_ats SET COMPRESSION lz4, ALTER enqueued_kinds SET COMPRESSION lz4,
            ALTER enqueued_steps SET COMPRESSION lz4, ALTER enqueued_errors SET COMPRESSION lz4;
    END IF;
END
$$;

-- The transitions of one block row, a row each: an entry is one transition,
-- or two when it holds the record of the task's enqueue too. `id` orders the
-- transitions of a task: the block row's id, then the entry's place, the
-- enqueue before the transition (the i-th entry of block row b is
-- b * 4096 + 2 * (i - 1), plus 1 for its transition). An entry whose task id
-- is NULL was deleted; one without an event holds only a record of enqueue
-- (the step stored again under its step's new name before it ran).
CREATE FUNCTION jetpack_history_entries(b jetpack_history_blocks)
RETURNS TABLE (id bigint, task_id bigint, at timestamptz, event text, from_kind text,
               to_kind text, step jsonb, attempt integer, worker text, duration_us bigint,
               error text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT b.id * 4096 + 2 * (u.n - 1) + v.k, u.task_id, v.at, v.event, v.from_kind, v.to_kind,
           v.step::jsonb, v.attempt, v.worker, v.duration_us, v.error
    FROM unnest(b.task_ids, b.events, b.from_kinds, b.to_kinds, b.steps, b.attempts, b.durations,
                b.errors, b.enqueued_ats, b.enqueued_kinds, b.enqueued_steps, b.enqueued_errors)
         WITH ORDINALITY AS u(task_id, event, from_kind, to_kind, step, attempt, duration_us,
                              error, enqueued_at, enqueued_kind, enqueued_step, enqueued_error, n)
    CROSS JOIN LATERAL (VALUES
        (0, u.enqueued_at,
         CASE WHEN u.enqueued_error IS NULL THEN 'enqueued' ELSE 'parked' END,
         NULL::text, u.enqueued_kind, u.enqueued_step, NULL::integer, NULL::text,
         NULL::bigint, u.enqueued_error),
        (1, b.at, u.event, u.from_kind, u.to_kind, u.step, u.attempt, b.worker, u.duration_us,
         u.error)
    ) AS v(k, at, event, from_kind, to_kind, step, attempt, worker, duration_us, error)
    WHERE u.task_id IS NOT NULL
      AND (v.k = 1 AND u.event IS NOT NULL OR v.k = 0 AND u.enqueued_at IS NOT NULL)
$$;

-- Every transition, a row each, as the table of before had them (and the
-- block of its task), and the enqueue of each task still at its first step,
-- read from its row (id 0: it has no place in the history yet, and it is the
-- task's only transition). A filter on `block` as well as on `task_id` finds a
-- task's history through the index: `WHERE block = 42 >> 10 AND task_id = 42`,
-- or `jetpack_history_of(42)`.
ALTER TABLE jetpack_history RENAME TO jetpack_history_rows;
CREATE VIEW jetpack_history AS
SELECT e.*, b.block FROM jetpack_history_blocks b CROSS JOIN LATERAL jetpack_history_entries(b) e
UNION ALL
SELECT 0::bigint, t.id, t.created_at, CASE WHEN t.state = 'parked' THEN 'parked' ELSE 'enqueued' END,
       NULL::text, nullif(t.kind, ''), t.step, NULL::integer, NULL::text, NULL::bigint, t.error,
       t.id >> 10
FROM jetpack_tasks t WHERE t.transitions = 0;

-- The view takes inserts and deletes as the table did: an insert is a block
-- row of one entry; a delete blanks the entry (its task id becomes NULL), with
-- the record of enqueue it holds, and deletes a block row left with none. The
-- enqueue of a task still at its first step is its row, and is not deleted
-- here.
CREATE FUNCTION jetpack_history_written() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.task_id IS NULL OR NEW.event IS NULL THEN
            RAISE EXCEPTION 'a transition needs a task_id and an event'
                USING ERRCODE = 'not_null_violation';
        END IF;
        INSERT INTO jetpack_history_blocks (block, at, worker, task_ids, events, from_kinds,
                                            to_kinds, steps, attempts, durations, errors,
                                            enqueued_ats, enqueued_kinds, enqueued_steps,
                                            enqueued_errors)
        VALUES (NEW.task_id >> 10, coalesce(NEW.at, now()), NEW.worker, ARRAY[NEW.task_id],
                ARRAY[NEW.event], ARRAY[NEW.from_kind], ARRAY[NEW.to_kind], ARRAY[NEW.step::json],
                ARRAY[NEW.attempt], ARRAY[NEW.duration_us], ARRAY[NEW.error],
                ARRAY[NULL::timestamptz], ARRAY[NULL::text], ARRAY[NULL::json],
                ARRAY[NULL::text]);
        RETURN NEW;
    END IF;
    IF OLD.id = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE jetpack_history_blocks SET task_ids[(OLD.id % 4096) / 2 + 1] = NULL
    WHERE id = OLD.id / 4096;
    DELETE FROM jetpack_history_blocks
    WHERE id = OLD.id / 4096 AND NOT EXISTS (SELECT 1 FROM unnest(task_ids) t WHERE t IS NOT NULL);
    RETURN OLD;
END
$$;

CREATE TRIGGER jetpack_history_written INSTEAD OF INSERT OR DELETE ON jetpack_history
FOR EACH ROW EXECUTE FUNCTION jetpack_history_written();

-- The transitions of task `task_id`, oldest first.
CREATE FUNCTION jetpack_history_of(task_id bigint) RETURNS SETOF jetpack_history
LANGUAGE sql STABLE AS $$
    SELECT * FROM jetpack_history h
    WHERE h.block = jetpack_history_of.task_id >> 10 AND h.task_id = jetpack_history_of.task_id
    ORDER BY h.id
$$;

-- The history of before, a block row each, in its order.
INSERT INTO jetpack_history_blocks (block, at, worker, task_ids, events, from_kinds, to_kinds,
                                    steps, attempts, durations, errors, enqueued_ats,
                                    enqueued_kinds, enqueued_steps, enqueued_errors)
SELECT task_id >> 10, at, worker, ARRAY[task_id], ARRAY[event], ARRAY[from_kind],
       ARRAY[to_kind], ARRAY[step::json], ARRAY[attempt], ARRAY[duration_us], ARRAY[error],
       ARRAY[NULL::timestamptz], ARRAY[NULL::text], ARRAY[NULL::json], ARRAY[NULL::text]
FROM jetpack_history_rows ORDER BY id;
DROP TABLE jetpack_history_rows;

-- Whether history is on (on when the settings row was deleted). PL/pgSQL, so
-- that its query is planned once per session, not at each call.
CREATE OR REPLACE FUNCTION jetpack_history_on() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    RETURN coalesce((SELECT history FROM jetpack_config), true);
END
$$;

-- Enqueues are records in their rows: no trigger on insert.
DROP TRIGGER jetpack_history_enqueued ON jetpack_tasks;
DROP FUNCTION jetpack_history_enqueued();

-- A change not made by an attempt's outcome (whose writes move `locked_by`,
-- and count their transitions themselves) is a transition; so is a cancel,
-- which takes the lease of a running step (`locked_by`) with it, and which no
-- outcome writes. (Before, the cancel of a running task was not recorded.)
CREATE FUNCTION jetpack_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.transitions := least(OLD.transitions, 2147483646) + 1;
    RETURN NEW;
END
$$;

CREATE TRIGGER jetpack_tasks_transition BEFORE UPDATE OF state, error, step ON jetpack_tasks
FOR EACH ROW
WHEN (OLD.locked_by IS NOT DISTINCT FROM NEW.locked_by
      AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.error IS DISTINCT FROM NEW.error
           OR OLD.step IS DISTINCT FROM NEW.step)
      OR NEW.state = 'cancelled' AND OLD.state <> 'cancelled')
EXECUTE FUNCTION jetpack_transition();

-- Records a transition of task `task` (its row before) not made by an
-- attempt's outcome: `event`, to `to_kind`, to `step` if it changed, with
-- `error`; and the record of the task's enqueue when it is its first. The
-- settings are read in the insert itself: a call of jetpack_history_on() (a
-- function that runs as its owner) is planned at each call, 40-50 µs.
CREATE FUNCTION jetpack_history_record(task jetpack_tasks, event text, to_kind text, step json,
                                       error text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first boolean := task.transitions = 0;
BEGIN
    INSERT INTO jetpack_history_blocks (block, task_ids, events, from_kinds, to_kinds, steps,
                                        attempts, durations, errors, enqueued_ats,
                                        enqueued_kinds, enqueued_steps, enqueued_errors)
    SELECT task.id >> 10, ARRAY[task.id], ARRAY[event], ARRAY[task.kind], ARRAY[to_kind],
           ARRAY[step], ARRAY[NULL::integer], ARRAY[NULL::bigint], ARRAY[error],
           ARRAY[CASE WHEN first THEN task.created_at END],
           ARRAY[CASE WHEN first THEN nullif(task.kind, '') END],
           ARRAY[CASE WHEN first THEN task.step::json END],
           ARRAY[CASE WHEN first AND task.state = 'parked' THEN task.error END]
    WHERE coalesce((SELECT history FROM jetpack_config), true);
END
$$;

-- Records such a change.
CREATE OR REPLACE FUNCTION jetpack_history_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM jetpack_history_record(
        OLD,
        CASE WHEN NEW.state = 'cancelled' AND OLD.state <> 'cancelled' THEN 'cancelled'
             WHEN NEW.state = 'finished' AND OLD.state <> 'finished' THEN 'finished'
             WHEN OLD.error IS NOT NULL AND NEW.error IS NULL THEN 'resumed'
             WHEN NEW.error IS NOT NULL AND OLD.error IS NULL THEN 'parked'
             WHEN OLD.state = 'waiting' AND NEW.state = 'ready' THEN 'woken'
             ELSE 'edited' END,
        NEW.kind,
        CASE WHEN NEW.step IS DISTINCT FROM OLD.step THEN NEW.step::json END,
        NEW.error);
    RETURN NULL;
END
$$;

DROP TRIGGER jetpack_history_changed ON jetpack_tasks;
CREATE TRIGGER jetpack_history_changed AFTER UPDATE OF state, error, step ON jetpack_tasks
FOR EACH ROW
WHEN (OLD.locked_by IS NOT DISTINCT FROM NEW.locked_by
      AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.error IS DISTINCT FROM NEW.error
           OR OLD.step IS DISTINCT FROM NEW.step)
      OR NEW.state = 'cancelled' AND OLD.state <> 'cancelled')
EXECUTE FUNCTION jetpack_history_changed();

-- A row deleted by hand (workers delete rows they hold, and finished or
-- cancelled ones), with the record of its enqueue if it never moved.
CREATE OR REPLACE FUNCTION jetpack_history_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM jetpack_history_record(OLD, 'deleted', NULL, OLD.step::json, NULL);
    RETURN NULL;
END
$$;
