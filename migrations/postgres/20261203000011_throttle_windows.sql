-- Workers delete throttle windows that have passed, oldest first: an index on
-- their end (written by enqueues only, never by a claim).
CREATE INDEX jetpack_throttles_until ON jetpack_throttles (until);
