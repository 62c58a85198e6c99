-- Signals: a task waits for a named signal, addressed to its id or to a key it
-- chose (an order number, say), with a timeout.
--
--   wait_for  the name of the signal the task waits for (state 'waiting'), or the
--             one it received, until it moves on
--   wait_key  the key the wait is addressed by, besides the task's id
--   signal    the payload received, as JSON; NULL when the wait timed out
--
-- A waiting task's wakeup_at is its deadline ('9999-12-31' without one): when it
-- passes, a worker makes the task ready with no signal. A signal to a task that
-- does not wait for it (yet) is kept in jetpack_signals and consumed, oldest
-- first, by the next wait of that name (see jetpack_signal below).
--
-- HOT claims: a claim writes none of these columns, nor state.
ALTER TABLE jetpack_tasks
    ADD COLUMN wait_for text,
    ADD COLUMN wait_key text,
    ADD COLUMN signal jsonb;

CREATE INDEX jetpack_tasks_waiting ON jetpack_tasks (wakeup_at) WHERE state = 'waiting';
CREATE INDEX jetpack_tasks_wait_key ON jetpack_tasks (wait_key, wait_for)
WHERE state = 'waiting' AND wait_key IS NOT NULL;

CREATE TABLE jetpack_signals (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id bigint,
    key     text,
    name    text NOT NULL,
    payload jsonb NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jetpack_signals_addressed CHECK (task_id IS NOT NULL OR key IS NOT NULL)
);
CREATE INDEX jetpack_signals_to_task ON jetpack_signals (task_id, name) WHERE task_id IS NOT NULL;
CREATE INDEX jetpack_signals_to_key ON jetpack_signals (key, name) WHERE key IS NOT NULL;

-- A task that begins to wait takes the oldest signal kept for it, if any, and
-- is ready at once with it.
CREATE FUNCTION jetpack_wait_began() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kept record;
BEGIN
    -- A signal sent to the key while this wait begins takes the same lock
    -- (see jetpack_signal): one of them sees the other.
    IF NEW.wait_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('jetpack_signal ' || NEW.wait_key));
    END IF;
    SELECT s.id, s.payload INTO kept FROM jetpack_signals s
    WHERE s.name = NEW.wait_for
      AND (s.task_id = NEW.id OR (NEW.wait_key IS NOT NULL AND s.key = NEW.wait_key))
    ORDER BY s.id LIMIT 1
    FOR UPDATE;
    IF FOUND THEN
        DELETE FROM jetpack_signals WHERE id = kept.id;
        NEW.state := 'ready';
        NEW.signal := kept.payload;
        NEW.wakeup_at := now();
        PERFORM pg_notify('jetpack', '');
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jetpack_tasks_wait_began BEFORE UPDATE OF state ON jetpack_tasks
FOR EACH ROW WHEN (NEW.state = 'waiting' AND OLD.state <> 'waiting' AND NEW.wait_for IS NOT NULL)
EXECUTE FUNCTION jetpack_wait_began();

-- Sends signal `name` with `payload` to task `task_id` or to the tasks waiting
-- under `key` (give one of them). Returns
--   'delivered'  a task waited for it: it is ready now, with the payload
--   'kept'       none waits for it now: it is kept for the next wait of that name
--                (the task waits for something else, or has not begun to wait)
--   'not found'  task `task_id` does not exist (nothing is kept)
--   'finished' or 'cancelled'  task `task_id` has ended (nothing is kept)
-- e.g. SELECT jetpack_signal(NULL, 'order-42', 'delivered', '{"by":"DHL"}');
CREATE FUNCTION jetpack_signal(task_id bigint, key text, name text, payload jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    ended text;
BEGIN
    IF task_id IS NULL AND key IS NULL THEN
        RAISE EXCEPTION 'a signal needs a task id or a key' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Taken before looking, so that a wait beginning at the same time either
    -- is seen here or sees the kept signal: the task's row for a task id (a
    -- wait begins by updating it), a lock on the key for a key.
    IF task_id IS NOT NULL THEN
        PERFORM 1 FROM jetpack_tasks t WHERE t.id = jetpack_signal.task_id FOR UPDATE;
    END IF;
    IF key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('jetpack_signal ' || key));
    END IF;
    UPDATE jetpack_tasks t
    SET state = 'ready', signal = jetpack_signal.payload, wakeup_at = now(), updated_at = now()
    WHERE t.state = 'waiting' AND t.wait_for = jetpack_signal.name
      AND (t.id = jetpack_signal.task_id OR t.wait_key = jetpack_signal.key);
    IF FOUND THEN
        PERFORM pg_notify('jetpack', '');
        RETURN 'delivered';
    END IF;
    IF task_id IS NOT NULL THEN
        SELECT t.state INTO ended FROM jetpack_tasks t WHERE t.id = jetpack_signal.task_id;
        IF NOT FOUND THEN
            RETURN 'not found';
        ELSIF ended IN ('finished', 'cancelled') THEN
            RETURN ended;
        END IF;
    END IF;
    INSERT INTO jetpack_signals (task_id, key, name, payload)
    VALUES (jetpack_signal.task_id, jetpack_signal.key, jetpack_signal.name, jetpack_signal.payload);
    RETURN 'kept';
END
$$;
