-- Workers delete throttle windows that have passed, oldest first (see the
-- PostgreSQL migration of the same name).
CREATE INDEX jetpack_throttles_until ON jetpack_throttles (until);
