-- History: one row per transition of a task. The workers write the outcomes of
-- attempts in the statements that write them (see the store); the triggers
-- below record everything else done to a row: enqueues, cancels, resumes,
-- signals and timeouts that wake a wait, joins whose children ended, and hand
-- edits of step, state or error.
--
-- event: enqueued | next | wait | join | finished | retry | parked | cancelled
--        | resumed | woken | edited | deleted
-- No primary key: rows are only appended, read by task (the index below) or
-- by time (the BRIN index), and deleted by time; a btree on `id` would cost
-- every step's write another index entry. `id` orders a task's transitions.
CREATE TABLE jetpack_history (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    task_id      bigint NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    event        text NOT NULL,
    from_kind    text,
    to_kind      text,
    step         jsonb,
    attempt      integer,
    worker       text,
    duration_us  bigint,
    error        text
);
CREATE INDEX jetpack_history_task ON jetpack_history (task_id, id);
-- Rows arrive in time order: a BRIN index answers "at 10:15" for a few pages.
CREATE INDEX jetpack_history_at ON jetpack_history USING brin (at);

-- One row of settings. `history`: whether anything is recorded (workers read
-- it at start and every few seconds).
CREATE TABLE jetpack_config (
    singleton  boolean PRIMARY KEY DEFAULT true CONSTRAINT jetpack_config_one_row CHECK (singleton),
    history    boolean NOT NULL DEFAULT true
);
INSERT INTO jetpack_config DEFAULT VALUES;

-- Whether history is on (on when the settings row was deleted).
-- The functions run as the owner (who migrated), so that roles that enqueue,
-- cancel or edit rows need no grant on the history, and a worker only needs to
-- insert into it and delete from it.
CREATE FUNCTION jetpack_history_on() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT coalesce((SELECT history FROM jetpack_config), true)
$$;

CREATE FUNCTION jetpack_history_enqueued() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF jetpack_history_on() THEN
        INSERT INTO jetpack_history (task_id, event, to_kind, step, error)
        SELECT id, CASE WHEN state = 'parked' THEN 'parked' ELSE 'enqueued' END, kind, step, error
        FROM inserted;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jetpack_history_enqueued AFTER INSERT ON jetpack_tasks
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION jetpack_history_enqueued();

-- A change not made by an attempt's outcome (whose writes move `locked_by`).
CREATE FUNCTION jetpack_history_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF jetpack_history_on() THEN
        INSERT INTO jetpack_history (task_id, event, from_kind, to_kind, step, error)
        VALUES (NEW.id,
                CASE WHEN NEW.state = 'cancelled' AND OLD.state <> 'cancelled' THEN 'cancelled'
                     WHEN NEW.state = 'finished' AND OLD.state <> 'finished' THEN 'finished'
                     WHEN OLD.error IS NOT NULL AND NEW.error IS NULL THEN 'resumed'
                     WHEN NEW.error IS NOT NULL AND OLD.error IS NULL THEN 'parked'
                     WHEN OLD.state = 'waiting' AND NEW.state = 'ready' THEN 'woken'
                     ELSE 'edited' END,
                OLD.kind, NEW.kind,
                CASE WHEN NEW.step IS DISTINCT FROM OLD.step THEN NEW.step END,
                NEW.error);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jetpack_history_changed AFTER UPDATE ON jetpack_tasks
FOR EACH ROW
WHEN (OLD.locked_by IS NOT DISTINCT FROM NEW.locked_by
      AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.error IS DISTINCT FROM NEW.error
           OR OLD.step IS DISTINCT FROM NEW.step))
EXECUTE FUNCTION jetpack_history_changed();

-- A row deleted by hand (workers delete rows they hold, and finished or
-- cancelled ones).
CREATE FUNCTION jetpack_history_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF jetpack_history_on() THEN
        INSERT INTO jetpack_history (task_id, event, from_kind, step)
        VALUES (OLD.id, 'deleted', OLD.kind, OLD.step);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jetpack_history_deleted AFTER DELETE ON jetpack_tasks
FOR EACH ROW WHEN (OLD.locked_by IS NULL AND OLD.state NOT IN ('finished', 'cancelled'))
EXECUTE FUNCTION jetpack_history_deleted();
