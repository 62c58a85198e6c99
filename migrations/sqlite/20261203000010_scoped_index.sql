-- Every task with a concurrency scope, whatever its state: a worker clears the
-- scopes of steps that lost their limit without reading the whole table.
CREATE INDEX jetpack_tasks_scoped ON jetpack_tasks (limit_scope) WHERE limit_scope IS NOT NULL;
