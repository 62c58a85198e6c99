-- Every row a person can write by hand is input: the database refuses the values
-- that would stop or disturb other tasks, and what it cannot refuse the workers
-- handle (see the README's Guarantees).
--
--   wakeup_at    a time in the years 1 to 9999, as Jetpack itself writes. `infinity`
--                made the workers' "when is the next task due" fail (an interval out
--                of range) ten times a second, and chrono cannot read it.
--   lease_until  the same, or NULL.
--   tried        0 or more. At the integer's maximum the claim's `tried + 1`
--                overflowed and every claim failed; the claim now saturates instead
--                (and a worker parks a task with a `tried` beyond its attempts).
--   fence        the claim saturates it too, so that no value stops a claim.
--
-- Rows that already break these rules are parked with an error saying what was
-- wrong, and the value is replaced, so that the constraints can be added.
--
-- HOT claims: no index may cover a column a claim writes (tried, fence, locked_by,
-- lease_until, updated_at). A CHECK constraint is not an index: it costs a few
-- comparisons per written row and keeps claims HOT.
UPDATE jetpack_tasks
SET error = coalesce(error || '; ', '')
        || format('wakeup_at was %s, outside the years 1 to 9999 (set by hand?); it is now the time this was found', wakeup_at),
    wakeup_at = now()
WHERE NOT (wakeup_at >= '0001-01-01 00:00:00+00' AND wakeup_at < '10000-01-01 00:00:00+00');

UPDATE jetpack_tasks SET lease_until = NULL, locked_by = NULL
WHERE NOT (lease_until >= '0001-01-01 00:00:00+00' AND lease_until < '10000-01-01 00:00:00+00');

UPDATE jetpack_tasks
SET error = coalesce(error || '; ', '') || format('tried was %s (set by hand?); it is now 0', tried),
    tried = 0
WHERE tried < 0;

ALTER TABLE jetpack_tasks
    ADD CONSTRAINT jetpack_tasks_wakeup_at_in_years_1_to_9999
        CHECK (wakeup_at >= '0001-01-01 00:00:00+00' AND wakeup_at < '10000-01-01 00:00:00+00'),
    ADD CONSTRAINT jetpack_tasks_lease_until_in_years_1_to_9999
        CHECK (lease_until >= '0001-01-01 00:00:00+00' AND lease_until < '10000-01-01 00:00:00+00'),
    ADD CONSTRAINT jetpack_tasks_tried_not_negative CHECK (tried >= 0);

-- Clearing `error` resumes the task, but never releases a live lease: a person may
-- set `error` on a task whose step is running and clear it again, and releasing the
-- lease then made the task claimable while its first attempt still ran. A parked
-- task holds no lease (parking clears it), so there is nothing else to release.
CREATE OR REPLACE FUNCTION jetpack_resume() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.tried := 0;
    IF NEW.wakeup_at IS NOT DISTINCT FROM OLD.wakeup_at THEN
        NEW.wakeup_at := now();
    END IF;
    NEW.updated_at := now();
    PERFORM pg_notify('jetpack', '');
    RETURN NEW;
END
$$;

-- A hand edit of `step` while the step runs is refused: the running attempt's
-- outcome would overwrite it. A hand edit leaves `kind` as it was (Jetpack writes
-- `kind` with every step), so the trigger that derives `kind` for such edits
-- checks it: Jetpack's own moves to a next step never fire it (and they release
-- the lease in the same statement anyway). An expired lease (a dead worker) does
-- not count as running. Edit the step once the attempt has moved on or parked.
CREATE FUNCTION jetpack_step_edited() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.locked_by IS NOT NULL AND NEW.lease_until > now()
       AND NEW.step IS DISTINCT FROM OLD.step THEN
        RAISE EXCEPTION 'task % is running (leased to % until %): its step cannot be edited now',
            OLD.id, OLD.locked_by, OLD.lease_until
            USING ERRCODE = 'object_in_use',
                  HINT = 'edit it once the step has moved on or the task is parked';
    END IF;
    NEW.kind := jetpack_step_kind(NEW.step);
    RETURN NEW;
END
$$;

DROP TRIGGER jetpack_tasks_kind_update ON jetpack_tasks;
CREATE TRIGGER jetpack_tasks_kind_update BEFORE UPDATE OF step ON jetpack_tasks
FOR EACH ROW WHEN (NEW.kind = OLD.kind) EXECUTE FUNCTION jetpack_step_edited();
