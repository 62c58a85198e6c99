-- The dashboard's and the admin's lists, on a table of a million tasks:
--   parked tasks by id (the list operators open first): a partial index that
--   holds only parked rows, so it costs nothing while tasks are not parked;
--   tasks of one step by id: (kind, id).
-- Neither column is written by a claim (kind changes with the step, state at
-- an outcome), so claims stay HOT updates.
CREATE INDEX jetpack_tasks_parked ON jetpack_tasks (id) WHERE state = 'parked';
CREATE INDEX jetpack_tasks_kind ON jetpack_tasks (kind, id);
