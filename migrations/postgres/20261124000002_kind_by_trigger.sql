-- `kind` was a STORED generated column, and PostgreSQL recomputes those on every
-- UPDATE of the row: each claim, heartbeat and release paid for parsing the step
-- JSON. Jetpack now writes `kind` itself with every step it stores; triggers fill
-- it in only for rows written by hand (an INSERT without kind, an UPDATE of step
-- that leaves kind as it was).
ALTER TABLE jetpack_tasks DROP COLUMN kind;
ALTER TABLE jetpack_tasks ADD COLUMN kind text NOT NULL DEFAULT '';
UPDATE jetpack_tasks SET kind = jetpack_step_kind(step);

CREATE FUNCTION jetpack_set_kind() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.kind := jetpack_step_kind(NEW.step);
    RETURN NEW;
END
$$;

CREATE TRIGGER jetpack_tasks_kind_insert BEFORE INSERT ON jetpack_tasks
FOR EACH ROW WHEN (NEW.kind = '') EXECUTE FUNCTION jetpack_set_kind();

CREATE TRIGGER jetpack_tasks_kind_update BEFORE UPDATE OF step ON jetpack_tasks
FOR EACH ROW WHEN (NEW.kind = OLD.kind) EXECUTE FUNCTION jetpack_set_kind();
