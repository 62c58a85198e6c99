-- A row inserted by hand has no `kind` until `jetpack_tasks_kind_insert` fills
-- it in, and SQLite ran this trigger first: its `enqueued` history had no
-- `to_kind`, so "how many tasks were at each step" missed it. The kind is
-- now read from the step document here too, as that trigger reads it.
DROP TRIGGER jetpack_history_enqueued;

CREATE TRIGGER jetpack_history_enqueued AFTER INSERT ON jetpack_tasks
WHEN coalesce((SELECT history FROM jetpack_config), 1)
BEGIN
    INSERT INTO jetpack_history (task_id, event, to_kind, step, error)
    VALUES (NEW.id, CASE WHEN NEW.state = 'parked' OR NEW.error IS NOT NULL THEN 'parked' ELSE 'enqueued' END,
            nullif(CASE WHEN NEW.kind <> '' THEN NEW.kind ELSE (
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
                END) END, ''),
            NEW.step, NEW.error);
END;
