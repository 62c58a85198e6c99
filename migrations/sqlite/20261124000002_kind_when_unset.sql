-- Jetpack now writes `kind` itself with every step it stores; the triggers only
-- fill it in for rows written by hand (an INSERT without kind, an UPDATE of step
-- that leaves kind as it was), instead of an extra UPDATE for every row.
DROP TRIGGER jetpack_tasks_kind_insert;
DROP TRIGGER jetpack_tasks_kind_update;

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

CREATE TRIGGER jetpack_tasks_kind_update AFTER UPDATE OF step ON jetpack_tasks
WHEN NEW.kind = OLD.kind
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
