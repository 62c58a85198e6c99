-- A row inserted by hand with an error is parked. `jetpack_tasks_kind_insert`
-- parks those inserted without `kind`; one inserted with its `kind` too (a copy
-- of another database's rows) stayed 'ready': claims skipped it, and neither the
-- counts nor the lists of parked tasks showed it. PostgreSQL parks both.
CREATE TRIGGER jetpack_tasks_inserted_parked AFTER INSERT ON jetpack_tasks
WHEN NEW.error IS NOT NULL AND NEW.kind <> '' AND NEW.state IN ('ready', 'waiting')
BEGIN
    UPDATE jetpack_tasks SET state = 'parked' WHERE id = NEW.id;
END;
