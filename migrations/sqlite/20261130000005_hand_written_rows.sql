-- Every row a person can write by hand is input: the database refuses the values
-- that would stop or disturb other tasks, and what it cannot refuse the workers
-- handle (see the README's Guarantees).
--
--   wakeup_at  UTC text shaped 'YYYY-MM-DD HH:MM:SS.SSS' (Jetpack's form) or
--              'YYYY-MM-DD HH:MM:SS' (what datetime() returns): times are compared
--              as text, and other text ('tomorrow', ISO's '2026-01-01T10:00:00Z')
--              sorted wrongly against them. The check looks at the shape (the
--              space between date and time, the range), not at each digit:
--              parsing every time (strftime, GLOB) cost 0.3-0.5 µs on every
--              write of a next step, and even this check costs an enqueue_many
--              of 10,000 rows about 5%.
--   tried      from 0 to 2^31 - 1: at the maximum, the claim's `tried + 1` did
--              not fit and every claim failed; text failed it too. The claim
--              saturates, and casts (a real number would not decode).
--   fence      from 0 to 2^53 - 1, so that the sum of a batch's fences (the
--              flush's check) cannot overflow. The claim saturates and casts.
--   id         below 2^53: at the largest rowid, AUTOINCREMENT could give no
--              new id and every enqueue failed.
--
-- lease_until is not checked: a claim writes it, and the check would cost every
-- claim. A lease written by hand holds (the task is left alone) until it passes
-- as text; NULL gives it back.
--
-- HOT claims (PostgreSQL) and cheap claims here: no index covers a column a claim
-- writes (tried, fence, locked_by, lease_until, updated_at), and the checks on
-- tried and fence are a type test and a range.
--
-- Rows that break the rules already are parked with an error saying what was
-- wrong and get a valid value, so that no row is lost.
--
-- The resume trigger no longer releases a lease (a person may set and clear
-- `error` while the step runs; the task must not become claimable meanwhile), and
-- the trigger that derives `kind` for hand edits of `step` refuses the edit of a
-- running task's step. (An edit that also sets `kind` itself is not checked.)
--
-- SQLite cannot add constraints to a table: it is rebuilt as in migration 0004,
-- keeping every row, the id sequence, the index and the triggers.
CREATE TABLE jetpack_tasks_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT
                CONSTRAINT "id must be below 2^53" CHECK (id < 9007199254740992),
    step        TEXT NOT NULL,
    wakeup_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
                CONSTRAINT "wakeup_at must be UTC text 'YYYY-MM-DD HH:MM:SS.SSS' or 'YYYY-MM-DD HH:MM:SS'"
                CHECK (substr(wakeup_at, 11, 1) = ' '
                       AND wakeup_at BETWEEN '0000-01-01 00:00:00' AND '9999-12-31 23:59:59.999'),
    tried       INTEGER NOT NULL DEFAULT 0
                CONSTRAINT "tried must be from 0 to 2147483647"
                CHECK (tried BETWEEN 0 AND 2147483647),
    error       TEXT,
    locked_by   TEXT,
    fence       INTEGER NOT NULL DEFAULT 0
                CONSTRAINT "fence must be from 0 to 2^53 - 1"
                CHECK (fence BETWEEN 0 AND 9007199254740991),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    kind        TEXT NOT NULL DEFAULT '',
    lease_until TEXT,
    CHECK (kind <> '' OR json_valid(step))
);

-- What was wrong with each row (NULL: nothing), then the copy.
CREATE TEMP TABLE jetpack_repairs AS
SELECT id,
       nullif(
           CASE WHEN substr(wakeup_at, 11, 1) = ' '
                     AND wakeup_at BETWEEN '0000-01-01 00:00:00' AND '9999-12-31 23:59:59.999'
                THEN '' ELSE 'wakeup_at was ' || quote(wakeup_at) || ', not a time in the form ''YYYY-MM-DD HH:MM:SS.SSS''; ' END
        || CASE WHEN tried BETWEEN 0 AND 2147483647
                THEN '' ELSE 'tried was ' || quote(tried) || '; ' END
        || CASE WHEN fence BETWEEN 0 AND 9007199254740991
                THEN '' ELSE 'fence was ' || quote(fence) || '; ' END,
           '') AS problem
FROM jetpack_tasks;

INSERT INTO jetpack_tasks_new
    (id, step, wakeup_at, tried, error, locked_by, fence, created_at, updated_at, kind, lease_until)
SELECT t.id, t.step,
       CASE WHEN r.problem IS NULL OR r.problem NOT LIKE 'wakeup_at%' THEN t.wakeup_at
            WHEN strftime('%Y-%m-%d %H:%M:%f', t.wakeup_at) BETWEEN '0000-01-01' AND '9999-12-31 24'
                THEN strftime('%Y-%m-%d %H:%M:%f', t.wakeup_at)
            ELSE strftime('%Y-%m-%d %H:%M:%f', 'now') END,
       CASE WHEN t.tried BETWEEN 0 AND 2147483647 THEN t.tried
            ELSE 0 END,
       CASE WHEN r.problem IS NULL THEN t.error
            ELSE coalesce(t.error || '; ', '') || r.problem || 'set by hand? The values were replaced when Jetpack migrated the table' END,
       t.locked_by,
       CASE WHEN t.fence BETWEEN 0 AND 9007199254740991 THEN t.fence
            WHEN typeof(t.fence) IN ('integer', 'real') AND t.fence > 0 THEN 9007199254740991
            ELSE 0 END,
       t.created_at, t.updated_at, t.kind, t.lease_until
FROM jetpack_tasks t JOIN jetpack_repairs r ON r.id = t.id;

DROP TABLE jetpack_repairs;

-- The sequence goes on from the highest id ever given.
DELETE FROM sqlite_sequence WHERE name = 'jetpack_tasks_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'jetpack_tasks_new', seq FROM sqlite_sequence WHERE name = 'jetpack_tasks';

DROP TABLE jetpack_tasks;
ALTER TABLE jetpack_tasks_new RENAME TO jetpack_tasks;

CREATE INDEX jetpack_tasks_ready ON jetpack_tasks (wakeup_at) WHERE error IS NULL;

CREATE TRIGGER jetpack_tasks_kind_insert AFTER INSERT ON jetpack_tasks
WHEN NEW.kind = ''
BEGIN
    UPDATE jetpack_tasks SET kind = (
        SELECT CASE
            WHEN json_type(NEW.step) <> 'object'
              OR (SELECT count(*) FROM json_each(NEW.step)) <> 1 THEN ''
            ELSE (
                SELECT m.key || '.' || CASE
                    WHEN m.type = 'text' THEN m.value
                    WHEN m.type = 'object' AND (SELECT count(*) FROM json_each(m.value)) = 1
                        THEN (SELECT s.key FROM json_each(m.value) s)
                    ELSE ''
                END
                FROM json_each(NEW.step) m
            )
        END
    ) WHERE id = NEW.id;
END;

-- An edit of `step` by hand leaves `kind` as it was (Jetpack writes `kind` with
-- every step): this trigger derives it, and refuses the edit of a running task's
-- step, which the running attempt's outcome would overwrite. Jetpack's own moves
-- release the lease in the same statement, so they never meet the check; an
-- expired lease does not count. (In a trigger of its own, the check cost
-- Jetpack's every move to a next step 0.9 µs for SQLite to evaluate its WHEN.)
CREATE TRIGGER jetpack_tasks_kind_update AFTER UPDATE OF step ON jetpack_tasks
WHEN NEW.kind = OLD.kind
BEGIN
    SELECT RAISE(ABORT, 'the task is running (locked_by and lease_until are set): its step cannot be edited now; edit it once the step has moved on or the task is parked')
    WHERE NEW.locked_by IS NOT NULL AND NEW.lease_until > strftime('%Y-%m-%d %H:%M:%f', 'now')
      AND NEW.step IS NOT OLD.step;
    UPDATE jetpack_tasks SET kind = (
        SELECT CASE
            WHEN json_type(NEW.step) <> 'object'
              OR (SELECT count(*) FROM json_each(NEW.step)) <> 1 THEN ''
            ELSE (
                SELECT m.key || '.' || CASE
                    WHEN m.type = 'text' THEN m.value
                    WHEN m.type = 'object' AND (SELECT count(*) FROM json_each(m.value)) = 1
                        THEN (SELECT s.key FROM json_each(m.value) s)
                    ELSE ''
                END
                FROM json_each(NEW.step) m
            )
        END
    ) WHERE id = NEW.id;
END;

-- Clearing `error` resumes the task: a full retry budget again, due now (unless
-- the same UPDATE sets wakeup_at). A live lease stays: see above.
CREATE TRIGGER jetpack_tasks_resumed AFTER UPDATE OF error ON jetpack_tasks
WHEN OLD.error IS NOT NULL AND NEW.error IS NULL
BEGIN
    UPDATE jetpack_tasks
    SET tried = 0,
        wakeup_at = CASE WHEN NEW.wakeup_at IS OLD.wakeup_at
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE NEW.wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;
