-- The dashboard's and the admin's lists (see the PostgreSQL migration):
-- parked tasks by id, and the tasks of one step by id.
CREATE INDEX jetpack_tasks_parked ON jetpack_tasks (id) WHERE state = 'parked';
CREATE INDEX jetpack_tasks_kind ON jetpack_tasks (kind, id);
