-- Flow control: priorities, unique keys, throttles, concurrency limits and schedules.
--
--   priority    0 to 10, higher first: a task of priority p is claimed as if it
--               had become due p minutes earlier (a head start), so a task waits
--               behind higher-priority work that arrived at most 10 minutes
--               after it, and the claim stays one index scan. Kept from step to
--               step; set at enqueue, or by the first step's `Step::PRIORITY`.
--   unique_key  at most one live task (ready, running, waiting or parked) per
--               key: a second enqueue with the key finds the first (or replaces
--               its step, for a debounce). A finished or cancelled task frees it.
--   limit_scope the step's concurrency limit (`Step::CONCURRENCY`), when it has
--               one: its kind, or "kind/key" for a limit per key. Written by
--               Jetpack with the step; a row written by hand without it is given
--               it by the first worker that claims it. Such tasks are claimed
--               apart (the index `jetpack_tasks_limited`), and at most the limit
--               of them hold live leases at once: see `jetpack_holders`.
--
-- HOT claims: a claim writes none of these columns, nor any column the indexes
-- below read (wakeup_at, priority, state, unique_key, limit_scope); a move to a
-- step of no limit writes limit_scope NULL over NULL.
ALTER TABLE jetpack_tasks
    ADD COLUMN priority smallint NOT NULL DEFAULT 0
        CONSTRAINT jetpack_tasks_priority_0_to_10 CHECK (priority BETWEEN 0 AND 10),
    ADD COLUMN unique_key text
        CONSTRAINT jetpack_tasks_unique_key_1_to_1024_bytes
        CHECK (octet_length(unique_key) BETWEEN 1 AND 1024),
    ADD COLUMN limit_scope text
        CONSTRAINT jetpack_tasks_limit_scope_of_its_kind
        CHECK (limit_scope = kind OR starts_with(limit_scope, kind || '/'));

-- The claim's predicate and order: ready tasks by wakeup_at less the head
-- start. (`timezone` twice: the arithmetic on UTC timestamps is immutable, as
-- an index needs, and gives the same instant as wakeup_at - priority minutes.)
DROP INDEX jetpack_tasks_ready;
CREATE INDEX jetpack_tasks_ready
ON jetpack_tasks ((timezone('UTC', timezone('UTC', wakeup_at) - priority * interval '1 minute')))
WHERE state = 'ready' AND limit_scope IS NULL;

-- Ready tasks of limited steps, by scope and then in claim order.
CREATE INDEX jetpack_tasks_limited
ON jetpack_tasks (limit_scope, (timezone('UTC', timezone('UTC', wakeup_at) - priority * interval '1 minute')))
WHERE state = 'ready' AND limit_scope IS NOT NULL;

-- The attempts of limited steps, as their claims took them: an attempt holds
-- its scope's share while its task still has that fence and a live lease.
-- Claims of limited steps take turns (an advisory lock), drop the attempts
-- that no longer hold, and count the rest; so a crashed worker's share comes
-- back when its lease expires, and nothing needs to free it.
CREATE TABLE jetpack_holders (
    task_id  bigint PRIMARY KEY,
    fence    bigint NOT NULL,
    scope    text NOT NULL
);
CREATE INDEX jetpack_holders_scope ON jetpack_holders (scope);

CREATE UNIQUE INDEX jetpack_tasks_unique_key ON jetpack_tasks (unique_key)
WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked');

-- Throttles: at most one task per key and window. An enqueue that takes the
-- window (a new row, or one whose window has passed) creates its task and
-- records its id; one within the window is answered with that id.
CREATE TABLE jetpack_throttles (
    key      text PRIMARY KEY CONSTRAINT jetpack_throttles_key_1_to_1024_bytes
             CHECK (octet_length(key) BETWEEN 1 AND 1024),
    task_id  bigint,
    until    timestamptz NOT NULL
);

-- Enqueue from SQL with a priority and a unique key: returns the new task's
-- id, or the id of the live task that holds the key.
--   SELECT jetpack_enqueue('{"Mail":{"Digest":{"user":7}}}', now(), 5, 'digest-7');
DROP FUNCTION jetpack_enqueue(jsonb, timestamptz);
CREATE FUNCTION jetpack_enqueue(
    step jsonb, run_at timestamptz DEFAULT now(), priority integer DEFAULT 0,
    unique_key text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    found bigint;
BEGIN
    LOOP
        INSERT INTO jetpack_tasks (step, wakeup_at, priority, unique_key) VALUES ($1, $2, $3, $4)
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked')
        DO NOTHING
        RETURNING id INTO found;
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
        -- The task that holds the key; should it have ended in between, try again.
        SELECT t.id INTO found FROM jetpack_tasks t
        WHERE t.unique_key = $4 AND t.state IN ('ready', 'waiting', 'parked');
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
END
$$;

-- Schedules (cron): one row per schedule the workers run. The worker whose
-- `UPDATE … SET last_tick = <tick> WHERE last_tick = <the one it read>`
-- changes the row enqueues the tick's task in the same transaction, so each
-- tick runs once however many workers run the schedule. Set last_tick back by
-- hand to run past ticks again (as the schedule's policy for missed ticks
-- allows); delete the row to start the schedule afresh.
CREATE TABLE jetpack_schedules (
    name       text PRIMARY KEY CONSTRAINT jetpack_schedules_name_1_to_200_bytes
               CHECK (octet_length(name) BETWEEN 1 AND 200),
    last_tick  timestamptz NOT NULL
               CONSTRAINT jetpack_schedules_last_tick_in_years_1_to_9999
               CHECK (last_tick >= '0001-01-01 00:00:00+00' AND last_tick < '10000-01-01 00:00:00+00'),
    fired_at   timestamptz
);
