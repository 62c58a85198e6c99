-- The history in blocks: a row per statement and block of task ids, instead of
-- a row per transition (see the PostgreSQL migration of the same name). The
-- entries of a row are one JSON array, each entry
--   [task_id, event, from_kind, to_kind, step, attempt, duration_us, error, enqueued]
-- with `step` the step document it went to, and `enqueued` null or, for the
-- task's first transition, the record of its enqueue:
--   [at, kind, step, error]

-- How many transitions of the task there have been; 0 while it is at the
-- step it was enqueued with, and its row is the record of its enqueue.
ALTER TABLE jetpack_tasks ADD COLUMN transitions INTEGER NOT NULL DEFAULT 0
    CONSTRAINT jetpack_tasks_transitions_not_negative
    CHECK (typeof(transitions) = 'integer' AND transitions >= 0);
-- The tasks of before have their enqueue in the history already.
UPDATE jetpack_tasks SET transitions = 1;

CREATE TABLE jetpack_history_blocks (
    id       INTEGER PRIMARY KEY,
    block    INTEGER NOT NULL,
    at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    worker   TEXT,
    -- Not checked as it is written (that read every flush's entries once
    -- more): the view reads entries that are not a JSON array as none.
    entries  TEXT NOT NULL
);
CREATE INDEX jetpack_history_blocks_block ON jetpack_history_blocks (block, id);

-- The history of before, a block row each, in its order.
INSERT INTO jetpack_history_blocks (block, at, worker, entries)
SELECT task_id >> 10, at, worker,
       json_array(json_array(task_id, event, from_kind, to_kind,
                             CASE WHEN step IS NULL THEN NULL
                                  WHEN json_valid(step) THEN json(step)
                                  ELSE json_quote(step) END,
                             attempt, duration_us, error, NULL))
FROM jetpack_history ORDER BY id;

DROP TRIGGER jetpack_history_enqueued;
DROP TRIGGER jetpack_history_changed;
DROP TRIGGER jetpack_history_deleted;
DROP TABLE jetpack_history;

-- Every transition, a row each, as the table of before had them (and the
-- block of its task): an entry is one transition, or two with the record of
-- the task's enqueue (id: the block row's id * 4096 + 2 * the entry's place,
-- plus 1 for its transition); and the enqueue of each task still at its
-- first step, read from its row (id 0). A filter on `block` as well as on
-- `task_id` finds a task's history through the index:
-- `WHERE block = 42 >> 10 AND task_id = 42`. Entries written by hand are read
-- as far as they go: a field of another type reads as that column's type
-- would take it (CAST), a missing one as NULL; an entry that is not an array
-- (null: deleted) is no transition, one without an event only a record of
-- enqueue (the step stored again under its step's new name before it ran);
-- entries that are not JSON are none.
CREATE VIEW jetpack_history AS
SELECT b.id * 4096 + 2 * e.key AS id, CAST(e.value ->> 0 AS INTEGER) AS task_id,
       CAST(e.value ->> '$[8][0]' AS TEXT) AS at,
       CASE WHEN e.value ->> '$[8][3]' IS NULL THEN 'enqueued' ELSE 'parked' END AS event,
       NULL AS from_kind, CAST(e.value ->> '$[8][1]' AS TEXT) AS to_kind,
       CASE WHEN e.value ->> '$[8][2]' IS NOT NULL THEN e.value -> '$[8][2]' END AS step,
       NULL AS attempt, NULL AS worker, NULL AS duration_us,
       CAST(e.value ->> '$[8][3]' AS TEXT) AS error, b.block AS block
FROM jetpack_history_blocks b,
     json_each(CASE WHEN json_valid(b.entries) THEN b.entries ELSE '[]' END) e
WHERE e.type = 'array' AND json_type(e.value, '$[8]') = 'array'
UNION ALL
SELECT b.id * 4096 + 2 * e.key + 1, CAST(e.value ->> 0 AS INTEGER), b.at,
       CAST(e.value ->> 1 AS TEXT), CAST(e.value ->> 2 AS TEXT),
       CAST(e.value ->> 3 AS TEXT),
       CASE WHEN e.value ->> 4 IS NOT NULL THEN e.value -> 4 END,
       CAST(e.value ->> 5 AS INTEGER), b.worker, CAST(e.value ->> 6 AS INTEGER),
       CAST(e.value ->> 7 AS TEXT), b.block
FROM jetpack_history_blocks b,
     json_each(CASE WHEN json_valid(b.entries) THEN b.entries ELSE '[]' END) e
WHERE e.type = 'array' AND e.value ->> 1 IS NOT NULL
UNION ALL
SELECT 0, id, created_at, CASE WHEN state = 'parked' THEN 'parked' ELSE 'enqueued' END, NULL,
       nullif(kind, ''), step, NULL, NULL, NULL, error, id >> 10
FROM jetpack_tasks WHERE transitions = 0;

-- The view takes inserts and deletes as the table did: an insert is a block
-- row of one entry; a delete blanks the entry (null), with the record of
-- enqueue it holds, and deletes a block row left with none. The enqueue of a
-- task still at its first step is its row, and is not deleted here.
CREATE TRIGGER jetpack_history_inserted INSTEAD OF INSERT ON jetpack_history
BEGIN
    SELECT RAISE(ABORT, 'a transition needs a task_id and an event')
    WHERE NEW.task_id IS NULL OR NEW.event IS NULL;
    INSERT INTO jetpack_history_blocks (block, at, worker, entries)
    VALUES (NEW.task_id >> 10, coalesce(NEW.at, strftime('%Y-%m-%d %H:%M:%f', 'now')), NEW.worker,
            json_array(json_array(NEW.task_id, NEW.event, NEW.from_kind, NEW.to_kind,
                                  CASE WHEN NEW.step IS NULL THEN NULL
                                       WHEN json_valid(NEW.step) THEN json(NEW.step)
                                       ELSE json_quote(NEW.step) END,
                                  NEW.attempt, NEW.duration_us, NEW.error, NULL)));
END;

CREATE TRIGGER jetpack_history_deleted_by_hand INSTEAD OF DELETE ON jetpack_history
WHEN OLD.id <> 0
BEGIN
    UPDATE jetpack_history_blocks
    SET entries = json_replace(entries, '$[' || ((OLD.id % 4096) / 2) || ']', NULL)
    WHERE id = OLD.id / 4096;
    DELETE FROM jetpack_history_blocks
    WHERE id = OLD.id / 4096
      AND NOT EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(entries) THEN entries ELSE '[]' END)
                      WHERE type <> 'null');
END;

-- A change not made by an attempt's outcome (whose writes move `locked_by`,
-- and count their transitions themselves) is a transition: counted, and
-- recorded when the history is on, with the record of the task's enqueue
-- when it is its first. The state that other triggers set after an edit of
-- `error` (parked with an error, ready again without one) is part of that
-- edit, counted and recorded once.
CREATE TRIGGER jetpack_history_changed AFTER UPDATE OF state, error, step ON jetpack_tasks
WHEN OLD.locked_by IS NEW.locked_by
     AND (OLD.error IS NOT NEW.error OR OLD.step IS NOT NEW.step
          OR (OLD.state IS NOT NEW.state
              AND NOT (NEW.state = 'parked' AND NEW.error IS NOT NULL)
              AND NOT (OLD.state = 'parked' AND NEW.error IS NULL)))
BEGIN
    INSERT INTO jetpack_history_blocks (block, entries)
    SELECT NEW.id >> 10, json_array(json_array(
               NEW.id,
               CASE WHEN NEW.state = 'cancelled' AND OLD.state <> 'cancelled' THEN 'cancelled'
                    WHEN NEW.state = 'finished' AND OLD.state <> 'finished' THEN 'finished'
                    WHEN OLD.error IS NOT NULL AND NEW.error IS NULL THEN 'resumed'
                    WHEN NEW.error IS NOT NULL AND OLD.error IS NULL THEN 'parked'
                    WHEN OLD.state = 'waiting' AND NEW.state = 'ready' THEN 'woken'
                    ELSE 'edited' END,
               OLD.kind, NEW.kind,
               CASE WHEN NEW.step IS OLD.step THEN NULL
                    WHEN json_valid(NEW.step) THEN json(NEW.step) ELSE json_quote(NEW.step) END,
               NULL, NULL, NEW.error,
               CASE WHEN OLD.transitions = 0
                    THEN json_array(OLD.created_at, nullif(OLD.kind, ''),
                                    CASE WHEN json_valid(OLD.step) THEN json(OLD.step)
                                         ELSE json_quote(OLD.step) END,
                                    CASE WHEN OLD.state = 'parked' THEN OLD.error END) END))
    WHERE coalesce((SELECT history FROM jetpack_config), 1);
    UPDATE jetpack_tasks SET transitions = min(transitions, 2147483646) + 1 WHERE id = NEW.id;
END;

-- A row deleted by hand (workers delete rows they hold, and finished or
-- cancelled ones), with the record of its enqueue if it never moved.
CREATE TRIGGER jetpack_history_deleted AFTER DELETE ON jetpack_tasks
WHEN OLD.locked_by IS NULL AND OLD.state NOT IN ('finished', 'cancelled')
     AND coalesce((SELECT history FROM jetpack_config), 1)
BEGIN
    INSERT INTO jetpack_history_blocks (block, entries)
    SELECT OLD.id >> 10, json_array(json_array(
               OLD.id, 'deleted', OLD.kind, NULL,
               CASE WHEN json_valid(OLD.step) THEN json(OLD.step) ELSE json_quote(OLD.step) END,
               NULL, NULL, NULL,
               CASE WHEN OLD.transitions = 0
                    THEN json_array(OLD.created_at, nullif(OLD.kind, ''),
                                    CASE WHEN json_valid(OLD.step) THEN json(OLD.step)
                                         ELSE json_quote(OLD.step) END,
                                    CASE WHEN OLD.state = 'parked' THEN OLD.error END) END));
END;
