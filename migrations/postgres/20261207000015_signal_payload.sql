-- A signal sent from SQL with a NULL payload (`jetpack_signal(42, NULL,
-- 'approved', NULL)`) was reported 'delivered', and the waiting step read it
-- as a timeout (a NULL `signal` is what a wait that timed out finds). It is
-- refused now, as a kept signal already was (jetpack_signals.payload is NOT
-- NULL): a signal without data sends the JSON value null, 'null'::jsonb.
CREATE OR REPLACE FUNCTION jetpack_signal(task_id bigint, key text, name text, payload jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    ended text;
BEGIN
    IF task_id IS NULL AND key IS NULL THEN
        RAISE EXCEPTION 'a signal needs a task id or a key' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'signal % has a NULL payload: send ''null''::jsonb for a signal without data (a NULL signal is what a wait that timed out reads)', name
            USING ERRCODE = 'null_value_not_allowed';
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
