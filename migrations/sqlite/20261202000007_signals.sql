-- Signals (see the PostgreSQL migration of the same name). SQLite has one
-- writer at a time, so a signal and a wait beginning never interleave.
ALTER TABLE jetpack_tasks ADD COLUMN wait_for TEXT;
ALTER TABLE jetpack_tasks ADD COLUMN wait_key TEXT;
ALTER TABLE jetpack_tasks ADD COLUMN signal TEXT;

CREATE INDEX jetpack_tasks_waiting ON jetpack_tasks (wakeup_at) WHERE state = 'waiting';
CREATE INDEX jetpack_tasks_wait_key ON jetpack_tasks (wait_key, wait_for)
WHERE state = 'waiting' AND wait_key IS NOT NULL;

-- `verdict` is what sending the signal found (see jetpack_signals_sent): only
-- kept signals stay in the table.
CREATE TABLE jetpack_signals (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER,
    key     TEXT,
    name    TEXT NOT NULL,
    payload TEXT NOT NULL CHECK (json_valid(payload)),
    sent_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    verdict TEXT NOT NULL DEFAULT 'kept',
    CHECK (task_id IS NOT NULL OR key IS NOT NULL)
);
CREATE INDEX jetpack_signals_to_task ON jetpack_signals (task_id, name) WHERE task_id IS NOT NULL;
CREATE INDEX jetpack_signals_to_key ON jetpack_signals (key, name) WHERE key IS NOT NULL;

-- A task that begins to wait takes the oldest signal kept for it, if any.
CREATE TRIGGER jetpack_tasks_wait_began AFTER UPDATE OF state ON jetpack_tasks
WHEN NEW.state = 'waiting' AND OLD.state <> 'waiting' AND NEW.wait_for IS NOT NULL
BEGIN
    UPDATE jetpack_tasks
    SET state = 'ready', wakeup_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
        signal = (SELECT s.payload FROM jetpack_signals s
                  WHERE s.name = NEW.wait_for
                    AND (s.task_id = NEW.id OR (NEW.wait_key IS NOT NULL AND s.key = NEW.wait_key))
                  ORDER BY s.id LIMIT 1)
    WHERE id = NEW.id AND EXISTS (
        SELECT 1 FROM jetpack_signals s
        WHERE s.name = NEW.wait_for
          AND (s.task_id = NEW.id OR (NEW.wait_key IS NOT NULL AND s.key = NEW.wait_key)));
    DELETE FROM jetpack_signals WHERE id = (
        SELECT s.id FROM jetpack_signals s
        WHERE s.name = NEW.wait_for
          AND (s.task_id = NEW.id OR (NEW.wait_key IS NOT NULL AND s.key = NEW.wait_key))
        ORDER BY s.id LIMIT 1);
END;

-- A signal inserted with the verdict 'delivered' wakes the tasks waiting for it;
-- one for a task that does not exist or has ended is not kept.
CREATE TRIGGER jetpack_signals_sent AFTER INSERT ON jetpack_signals
WHEN NEW.verdict <> 'kept'
BEGIN
    UPDATE jetpack_tasks
    SET state = 'ready', signal = NEW.payload,
        wakeup_at = strftime('%Y-%m-%d %H:%M:%f', 'now'),
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE NEW.verdict = 'delivered' AND state = 'waiting' AND wait_for = NEW.name
      AND (id = NEW.task_id OR wait_key = NEW.key);
    DELETE FROM jetpack_signals WHERE id = NEW.id;
END;
