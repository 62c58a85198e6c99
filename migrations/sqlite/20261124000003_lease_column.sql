-- Leases get a column of their own (see migrations/postgres for the reasons).
--
--   lease_until  while a worker holds the task (locked_by is set), when its lease
--                expires; NULL otherwise. A task is ready when it is not parked,
--                wakeup_at has passed and it is not leased (or the lease expired).
--
-- A claim no longer rewrites the indexed wakeup_at, so it no longer moves the
-- row's entry in jetpack_tasks_ready.
ALTER TABLE jetpack_tasks ADD COLUMN lease_until TEXT;

DROP TRIGGER jetpack_tasks_resumed;

-- Clearing `error` by hand resumes the task: a full retry budget again, due now
-- (unless the same UPDATE sets wakeup_at).
CREATE TRIGGER jetpack_tasks_resumed AFTER UPDATE OF error ON jetpack_tasks
WHEN OLD.error IS NOT NULL AND NEW.error IS NULL
BEGIN
    UPDATE jetpack_tasks
    SET tried = 0,
        locked_by = NULL,
        lease_until = NULL,
        wakeup_at = CASE WHEN NEW.wakeup_at IS OLD.wakeup_at
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE NEW.wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;
