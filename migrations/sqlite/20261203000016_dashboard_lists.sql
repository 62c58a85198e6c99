-- Parked tasks by id, the list operators open first (see the PostgreSQL
-- migration): only parked rows are in it.
CREATE INDEX jetpack_tasks_parked ON jetpack_tasks (id) WHERE state = 'parked';
