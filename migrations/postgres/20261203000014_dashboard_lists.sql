-- The list operators open first, parked tasks by id, on a table of a million
-- tasks: a partial index that holds only parked rows, so that it costs
-- nothing while tasks are not parked. `state` is not written by a claim, so
-- claims stay HOT updates. (An index on (kind, id), for lists by step, cost
-- 13% of enqueue_many and 16% of three-step chains: not taken.)
CREATE INDEX jetpack_tasks_parked ON jetpack_tasks (id) WHERE state = 'parked';
