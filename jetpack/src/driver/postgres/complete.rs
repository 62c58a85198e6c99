//! PostgreSQL: completions ([`Completes`](crate::driver::Completes)): one statement writes a batch of outcomes.

use super::*;

/// The finished tasks (`$1` ids, `$2` fences) deleted, returning their attempts.
macro_rules! finished {
    () => {
        "finished AS (
    DELETE FROM jetpack_tasks t
    USING unnest($1::bigint[], $2::bigint[]) AS d(id, fence)
    WHERE t.id = d.id AND t.fence = d.fence
    RETURNING t.id, t.fence
)"
    };
}

/// The tasks moved to next steps (`$3`…`$8`, and the scopes of their
/// concurrency limits in `$scopes`, or none), returning their attempts.
///
/// A next step due now keeps the row's `wakeup_at` when that has passed: it is
/// due either way, a workflow under way keeps its place ahead of newer tasks,
/// and with no indexed column changed the update can be HOT (a step of no
/// limit writes `limit_scope` NULL over NULL).
macro_rules! moved {
    () => {
        moved!("NULL::text", "", "", "")
    };
    ($scope:literal, $scopes:literal, $alias:literal, $returning:literal) => {
        concat!(
            "moved AS (
    UPDATE jetpack_tasks t
    SET step = u.step::jsonb, kind = u.kind, tried = 0, locked_by = NULL, lease_until = NULL,
        updated_at = now(), wait_for = NULL, signal = NULL, children_left = NULL,
        limit_scope = ",
            $scope,
            ",
        wakeup_at = CASE WHEN u.at IS NULL AND u.delay = 0 AND t.wakeup_at <= now() THEN t.wakeup_at
                         ELSE coalesce(u.at, now() + u.delay * interval '1 microsecond') END
    FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::text[]",
            $scopes,
            ")
        AS u(id, fence, step, delay, at, kind",
            $alias,
            ")
    WHERE t.id = u.id AND t.fence = u.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// Records finished tasks (deleted) and moves to next steps in one statement,
/// so that a flush of the completer is one round trip and one commit. Either
/// list may be empty; a single outcome goes the same way.
const FINISH_AND_NEXT: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!(),
    " SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved"
);

/// The failed attempts (`$9` ids, `$10` fences, `$11` delays in µs, `$12`
/// errors): a retry (no error) is due after its delay, a parked task (an
/// error) is due now, and either gives its lease back. A retry keeps an
/// `error` set by hand meanwhile (the row was parked by that).
macro_rules! failed {
    () => {
        "failed AS (
    UPDATE jetpack_tasks t
    SET error = coalesce(f.error, t.error),
        state = CASE WHEN f.error IS NULL THEN t.state ELSE 'parked' END,
        locked_by = NULL, lease_until = NULL,
        updated_at = now(), wakeup_at = now() + f.delay * interval '1 microsecond'
    FROM unnest($9::bigint[], $10::bigint[], $11::bigint[], $12::text[]) AS f(id, fence, delay, error)
    WHERE t.id = f.id AND t.fence = f.fence
    RETURNING t.id, t.fence
)"
    };
}

/// The finished tasks that are kept (`$13` ids, `$14` fences, `$22`
/// results), when the worker keeps finished tasks for a while or a parent's
/// join waits for them.
///
/// Children a join waits for are counted here, a parent at a time however
/// many of its children the flush finishes: `awaited` (read as the statement
/// began) becomes 'done', and each parent's `children_left` drops by their
/// number; the last one makes it ready and wakes the workers. (One update of
/// the parent per child, by a trigger, made fan-outs a sixth of the drain's
/// speed.) A child that ends any other way is counted by the table's trigger.
macro_rules! kept {
    () => {
        "awaited_before AS MATERIALIZED (
    SELECT t.id, t.parent_id FROM unnest($13::bigint[]) AS k(id) JOIN jetpack_tasks t USING (id)
    WHERE t.awaited IN ('wait', 'fail', 'error')
), kept AS (
    UPDATE jetpack_tasks t
    SET state = 'finished', finished_at = now(), locked_by = NULL, lease_until = NULL,
        updated_at = now(), result = k.result::jsonb, children_left = NULL,
        awaited = CASE WHEN t.awaited IN ('wait', 'fail', 'error') THEN 'done' ELSE t.awaited END
    FROM unnest($13::bigint[], $14::bigint[], $22::text[]) AS k(id, fence, result)
    WHERE t.id = k.id AND t.fence = k.fence
    RETURNING t.id, t.fence
), counted AS (
    UPDATE jetpack_tasks p
    SET children_left = greatest(p.children_left - c.n, 0),
        state = CASE WHEN p.children_left <= c.n AND p.state = 'waiting' THEN 'ready' ELSE p.state END,
        wakeup_at = CASE WHEN p.children_left <= c.n AND p.state = 'waiting' THEN now() ELSE p.wakeup_at END,
        updated_at = now()
    FROM (SELECT b.parent_id, count(*)::integer AS n FROM kept JOIN awaited_before b USING (id)
          GROUP BY b.parent_id) c
    WHERE p.id = c.parent_id AND p.children_left > 0
    RETURNING p.state
), woke AS (
    SELECT pg_notify('jetpack', '') FROM counted WHERE state = 'ready' LIMIT 1
)"
    };
}

/// The tasks that begin to wait (`$15` ids, `$16` fences, `$17` steps, `$18`
/// kinds, `$19` signal names, `$20` keys, `$21` timeouts in µs or NULL): due
/// at the deadline, or never. A task parked by hand meanwhile stays parked.
/// The table's trigger hands a kept signal over at once.
macro_rules! waited {
    () => {
        waited!("")
    };
    ($returning:literal) => {
        concat!(
            "waited AS (
    UPDATE jetpack_tasks t
    SET step = w.step::jsonb, kind = w.kind,
        state = CASE WHEN t.state = 'parked' THEN 'parked' ELSE 'waiting' END,
        wait_for = w.name, wait_key = w.key, signal = NULL, tried = 0, children_left = NULL,
        limit_scope = w.scope,
        locked_by = NULL, lease_until = NULL, updated_at = now(),
        wakeup_at = coalesce(now() + w.timeout * interval '1 microsecond', '9999-12-31 00:00:00+00')
    FROM unnest($15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[],
                $21::bigint[], $28::text[]) AS w(id, fence, step, kind, name, key, timeout, scope)
    WHERE t.id = w.id AND t.fence = w.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// The tasks that begin to wait for their children (`$23` ids, `$24` fences,
/// `$25` steps, `$26` kinds): `children_left` counts the awaited children
/// not ended yet, which the step inserted in this same transaction; with
/// none, the join step is due at once. A task parked by hand meanwhile stays
/// parked (and goes back to waiting when resumed). The table's triggers count
/// the children down as they end, and make the task ready after the last.
macro_rules! joined {
    () => {
        joined!("")
    };
    ($returning:literal) => {
        concat!(
            "joined AS (
    UPDATE jetpack_tasks t
    SET step = j.step::jsonb, kind = j.kind, tried = 0, children_left = c.n, limit_scope = j.scope,
        state = CASE WHEN t.state = 'parked' THEN 'parked' WHEN c.n > 0 THEN 'waiting' ELSE 'ready' END,
        wait_for = NULL, wait_key = NULL, signal = NULL,
        locked_by = NULL, lease_until = NULL, updated_at = now(),
        wakeup_at = CASE WHEN c.n > 0 THEN '9999-12-31 00:00:00+00' ELSE now() END
    FROM unnest($23::bigint[], $24::bigint[], $25::text[], $26::text[], $29::text[])
        AS j(id, fence, step, kind, scope)
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS n FROM jetpack_tasks c
        WHERE c.parent_id = j.id AND c.awaited IN ('wait', 'fail', 'error')
    ) c
    WHERE t.id = j.id AND t.fence = j.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// [`FINISH_AND_NEXT`] with failed attempts, waits and kept finished tasks too. In an
/// outage every step fails: their outcomes are written like any others, many
/// per statement. The common statement above stays as it is.
const EVERY_OUTCOME: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!("u.scope", ", $27::text[]", ", scope", ""),
    ", ",
    failed!(),
    ", ",
    kept!(),
    ", ",
    waited!(),
    ", ",
    joined!(),
    "
SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved
UNION ALL SELECT id, fence FROM failed UNION ALL SELECT id, fence FROM kept
UNION ALL SELECT id, fence FROM waited UNION ALL SELECT id, fence FROM joined
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM woke) < 0"
);

/// The history of the attempts the statement wrote: for each of the ids in
/// `$a` (with the events `$b`, the kinds they ran `$c`, the kinds they went
/// to `$d`, their attempts `$e`, durations in µs `$f` and errors `$g`) that
/// `$written` returns (as `id, step`), a row with the step it moved to, by
/// worker `$w`. In the statement that writes the outcomes: the history never
/// disagrees with the rows.
macro_rules! history {
    ($written:literal, $a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $f:literal, $g:literal, $w:literal) => {
        concat!(
            "history AS (
    INSERT INTO jetpack_history (task_id, event, from_kind, to_kind, step, attempt, worker, duration_us, error)
    SELECT h.id, h.event, h.from_kind, h.to_kind, w.step, h.attempt, ",
            $w,
            ", h.duration, h.error
    FROM unnest(",
            $a,
            "::bigint[], ",
            $b,
            "::text[], ",
            $c,
            "::text[], ",
            $d,
            "::text[], ",
            $e,
            "::integer[], ",
            $f,
            "::bigint[], ",
            $g,
            "::text[]) AS h(id, event, from_kind, to_kind, attempt, duration, error)
    JOIN (",
            $written,
            ") w ON w.id = h.id
)"
        )
    };
}

/// [`FINISH_AND_NEXT`], recording the history (`$9`…`$16`).
const FINISH_AND_NEXT_HISTORY: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!("NULL::text", "", "", ", t.step"),
    ", ",
    history!(
        "SELECT id, NULL::jsonb AS step FROM finished UNION ALL SELECT id, step FROM moved",
        "$9",
        "$10",
        "$11",
        "$12",
        "$13",
        "$14",
        "$15",
        "$16"
    ),
    " SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved"
);

/// [`EVERY_OUTCOME`], recording the history (`$30`…`$37`).
const EVERY_OUTCOME_HISTORY: &str = concat!(
    "WITH ",
    finished!(),
    ", ",
    moved!("u.scope", ", $27::text[]", ", scope", ", t.step"),
    ", ",
    failed!(),
    ", ",
    kept!(),
    ", ",
    waited!(", t.step"),
    ", ",
    joined!(", t.step"),
    ", ",
    history!(
        "SELECT id, NULL::jsonb AS step FROM finished UNION ALL SELECT id, step FROM moved
         UNION ALL SELECT id, NULL FROM failed UNION ALL SELECT id, NULL FROM kept
         UNION ALL SELECT id, step FROM waited UNION ALL SELECT id, step FROM joined",
        "$30",
        "$31",
        "$32",
        "$33",
        "$34",
        "$35",
        "$36",
        "$37"
    ),
    "
SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved
UNION ALL SELECT id, fence FROM failed UNION ALL SELECT id, fence FROM kept
UNION ALL SELECT id, fence FROM waited UNION ALL SELECT id, fence FROM joined
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM woke) < 0"
);

/// Outcomes sorted for writing, as the bind arrays of [`FINISH_AND_NEXT`] or,
/// when any attempt failed or a finished task is kept, [`EVERY_OUTCOME`].
#[derive(Default)]
struct Batch<'a> {
    finish: (Vec<i64>, Vec<i64>),
    #[allow(clippy::type_complexity)]
    next: (
        Vec<i64>,
        Vec<i64>,
        Vec<&'a str>,
        Vec<i64>,
        Vec<Option<DateTime<Utc>>>,
        Vec<&'a str>,
    ),
    #[allow(clippy::type_complexity)]
    /// The concurrency scopes of the next steps, and whether any has one.
    next_scopes: (Vec<Option<&'a str>>, bool),
    #[allow(clippy::type_complexity)]
    failed: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<Option<&'a str>>),
    kept: (Vec<i64>, Vec<i64>, Vec<Option<&'a str>>),
    #[allow(clippy::type_complexity)]
    joined: (
        Vec<i64>,
        Vec<i64>,
        Vec<&'a str>,
        Vec<&'a str>,
        Vec<Option<&'a str>>,
    ),
    #[allow(clippy::type_complexity)]
    waited: (
        Vec<i64>,
        Vec<i64>,
        Vec<&'a str>,
        Vec<&'a str>,
        Vec<&'a str>,
        Vec<Option<&'a str>>,
        Vec<Option<i64>>,
        Vec<Option<&'a str>>,
    ),
    /// The worker and the history's arrays, when it is on.
    history: Option<(&'a str, HistoryRows<'a>)>,
}

/// The history of a batch, as the statements bind it: ids, events, kinds
/// run, kinds gone to, attempts, durations, errors.
#[derive(Default)]
#[allow(clippy::type_complexity)]
struct HistoryRows<'a>(
    Vec<i64>,
    Vec<&'static str>,
    Vec<Option<&'a str>>,
    Vec<Option<&'a str>>,
    Vec<i32>,
    Vec<i64>,
    Vec<Option<&'a str>>,
);

impl<'a> Batch<'a> {
    fn of(
        done: &[(i64, i64, &'a Outcome)],
        history: Option<&'a History<'a>>,
    ) -> Result<Self, Error> {
        let mut batch = Batch::default();
        if let Some(h) = history {
            let mut rows = HistoryRows::default();
            for (&(id, _, outcome), trace) in done.iter().zip(h.traces) {
                let (event, to, error) = outcome.event();
                rows.0.push(id);
                rows.1.push(event);
                rows.2.push(trace.kind.as_deref());
                rows.3.push(to.or(match outcome {
                    Outcome::Retry { .. } | Outcome::Park { .. } => trace.kind.as_deref(),
                    _ => None,
                }));
                rows.4.push(trace.attempt);
                rows.5.push(trace.duration_us);
                rows.6.push(error);
            }
            batch.history = Some((h.worker, rows));
        }
        for &(id, fence, outcome) in done {
            match outcome {
                Outcome::Finish => {
                    batch.finish.0.push(id);
                    batch.finish.1.push(fence);
                }
                Outcome::Keep { result } => {
                    batch.kept.0.push(id);
                    batch.kept.1.push(fence);
                    batch.kept.2.push(result.as_deref());
                }
                Outcome::Join { step, kind, scope } => {
                    let j = &mut batch.joined;
                    j.0.push(id);
                    j.1.push(fence);
                    j.2.push(step);
                    j.3.push(kind);
                    j.4.push(scope.as_deref());
                }
                Outcome::Wait {
                    step,
                    kind,
                    name,
                    key,
                    timeout,
                    scope,
                } => {
                    let w = &mut batch.waited;
                    w.0.push(id);
                    w.1.push(fence);
                    w.2.push(step);
                    w.3.push(kind);
                    w.4.push(name);
                    w.5.push(key.as_deref());
                    w.6.push(timeout.map(micros).transpose()?);
                    w.7.push(scope.as_deref());
                }
                Outcome::Next {
                    step,
                    kind,
                    wakeup,
                    scope,
                } => {
                    let (delay, at) = wakeup_binds(wakeup)?;
                    let next = &mut batch.next;
                    next.0.push(id);
                    next.1.push(fence);
                    next.2.push(step);
                    next.3.push(delay);
                    next.4.push(at);
                    next.5.push(kind);
                    batch.next_scopes.0.push(scope.as_deref());
                    batch.next_scopes.1 |= scope.is_some();
                }
                Outcome::Retry { delay, .. } => batch.fail(id, fence, micros(*delay)?, None),
                Outcome::Park { error } => batch.fail(id, fence, 0, Some(error)),
            }
        }
        Ok(batch)
    }

    fn fail(&mut self, id: i64, fence: i64, delay: i64, error: Option<&'a str>) {
        let failed = &mut self.failed;
        failed.0.push(id);
        failed.1.push(fence);
        failed.2.push(delay);
        failed.3.push(error);
    }

    /// Writes the batch in one statement; the attempts (id, fence) that still
    /// held their tasks.
    async fn write(&self, db: &mut PgConnection) -> Result<Vec<(i64, i64)>, Error> {
        let (finish, next, failed, kept) = (&self.finish, &self.next, &self.failed, &self.kept);
        let (waited, joined) = (&self.waited, &self.joined);
        // The common statement writes no concurrency scope (NULL): the
        // others carry them.
        let common = failed.0.is_empty()
            && kept.0.is_empty()
            && waited.0.is_empty()
            && joined.0.is_empty()
            && !self.next_scopes.1;
        let sql = match (common, &self.history) {
            (true, None) => FINISH_AND_NEXT,
            (false, None) => EVERY_OUTCOME,
            (true, Some(_)) => FINISH_AND_NEXT_HISTORY,
            (false, Some(_)) => EVERY_OUTCOME_HISTORY,
        };
        let mut query = sqlx::query_as(sql)
            .bind(&finish.0)
            .bind(&finish.1)
            .bind(&next.0)
            .bind(&next.1)
            .bind(&next.2)
            .bind(&next.3)
            .bind(&next.4)
            .bind(&next.5);
        if !common {
            query = query
                .bind(&failed.0)
                .bind(&failed.1)
                .bind(&failed.2)
                .bind(&failed.3)
                .bind(&kept.0)
                .bind(&kept.1)
                .bind(&waited.0)
                .bind(&waited.1)
                .bind(&waited.2)
                .bind(&waited.3)
                .bind(&waited.4)
                .bind(&waited.5)
                .bind(&waited.6)
                .bind(&kept.2)
                .bind(&joined.0)
                .bind(&joined.1)
                .bind(&joined.2)
                .bind(&joined.3)
                .bind(&self.next_scopes.0)
                .bind(&waited.7)
                .bind(&joined.4);
        }
        if let Some((worker, h)) = &self.history {
            query = query
                .bind(&h.0)
                .bind(&h.1)
                .bind(&h.2)
                .bind(&h.3)
                .bind(&h.4)
                .bind(&h.5)
                .bind(&h.6)
                .bind(*worker);
        }
        Ok(query.fetch_all(db).await?)
    }
}

/// Records outcomes, and their history when it is on; the attempts that
/// still held their tasks.
pub(super) async fn record(
    db: &mut PgConnection,
    done: &[(i64, i64, &Outcome)],
    history: Option<&History<'_>>,
) -> Result<Vec<(i64, i64)>, Error> {
    Batch::of(done, history)?.write(db).await
}

#[async_trait]
impl crate::driver::Completes for Postgres {
    async fn complete_many(
        db: &PgHandle,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        // One statement, which commits on its own.
        let held = record(&mut *db.pool.acquire().await?, done, history).await?;
        Ok(crate::driver::which_held(done, held))
    }

    async fn complete_in_tx(
        tx: &mut PgConnection,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error> {
        let held = record(tx, &[(id, fence, outcome)], history).await?;
        Ok(!held.is_empty())
    }

    async fn notify_errors(db: &PgHandle, payloads: &[String]) -> Result<(), Error> {
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(crate::model::ERRORS_CHANNEL)
            .bind(payloads)
            .execute(&db.pool)
            .await?;
        Ok(())
    }
}
