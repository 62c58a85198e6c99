-- Rate limits: one token bucket per scope of a step with a `RATE` (the
-- step's kind, or kind/key). `tokens` is what the bucket held at
-- `refilled_at`; it refills at `rate` steps per second (the limit, or less
-- after a step reported being rate limited) up to the step's burst. A
-- `refilled_at` ahead of now pauses the scope's claims until then. Rows may be
-- deleted by hand: a scope without a row starts with a full bucket at its
-- limit.
CREATE TABLE jetpack_rates (
    scope        text PRIMARY KEY,
    tokens       float8 NOT NULL
                 CONSTRAINT jetpack_rates_tokens_finite_and_not_negative
                 CHECK (tokens >= 0 AND tokens < 'Infinity'),
    rate         float8 NOT NULL
                 CONSTRAINT jetpack_rates_rate_finite_and_positive
                 CHECK (rate > 0 AND rate < 'Infinity'),
    refilled_at  timestamptz NOT NULL DEFAULT now()
                 CONSTRAINT jetpack_rates_refilled_at_in_years_1_to_9999
                 CHECK (refilled_at >= '0001-01-01 00:00:00+00' AND refilled_at < '10000-01-01 00:00:00+00')
);
