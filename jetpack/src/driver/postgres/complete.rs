//! PostgreSQL: completions ([`Completes`](crate::driver::Completes)): one statement writes a batch of outcomes.

use super::*;

/// The finished tasks (`$1` ids, `$2` fences) deleted, returning their
/// attempts; for the history also whether this was the task's first
/// transition (see [`transition!`]) and the record of its enqueue.
macro_rules! finished {
    () => {
        finished!("")
    };
    (history) => {
        finished!(
            ", t.transitions = 0 AS first, t.created_at, t.kind AS old_kind, t.step AS old_step"
        )
    };
    ($returning:literal) => {
        concat!(
            "finished AS (
    DELETE FROM jetpack_tasks t
    USING unnest($1::bigint[], $2::bigint[]) AS d(id, fence)
    WHERE t.id = d.id AND t.fence = d.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
    };
}

/// Counts a transition of the task (`t`), in the update that writes it, and
/// (in `RETURNING`) whether it was the task's first: its row was until then
/// the record of its enqueue, which the history takes in now.
macro_rules! transition {
    () => {
        "transitions = least(t.transitions, 2147483646) + 1"
    };
    (first) => {
        "t.transitions = 1 AS first"
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
        updated_at = now(), wait_for = NULL, signal = NULL, children_left = NULL, ",
            transition!(),
            ",
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
    RETURNING t.id, t.fence, ",
            transition!(first),
            $returning,
            "
)"
        )
    };
}

/// The end of a statement of outcomes: the attempts that held their tasks
/// (`$list`, the union of what the statement's parts wrote, as `id, fence`),
/// or, when every one of the `$n` attempts did, a single row of NULLs: 200
/// rows a flush were decoded, one by one, to learn that all held.
macro_rules! held {
    ($list:literal, $n:literal) => {
        concat!(
            ", held AS (",
            $list,
            ")
SELECT id, fence FROM held WHERE (SELECT count(*) FROM held) <> ",
            $n,
            "
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM held) = ",
            $n
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
    held!(
        "SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved",
        "cardinality($1::bigint[]) + cardinality($3::bigint[])"
    )
);

/// The failed attempts (`$9` ids, `$10` fences, `$11` delays in µs, `$12`
/// errors): a retry (no error) is due after its delay, a parked task (an
/// error) is due now, and either gives its lease back. A retry keeps an
/// `error` set by hand meanwhile (the row was parked by that).
macro_rules! failed {
    () => {
        failed!("")
    };
    // For the history: whether this was the task's first transition, and
    // the record of its enqueue (the step is the one it was at).
    (history) => {
        failed!(", t.transitions = 1 AS first, t.created_at, t.kind AS old_kind, t.step AS old_step")
    };
    ($returning:literal) => {
        concat!(
            "failed AS (
    UPDATE jetpack_tasks t
    SET error = coalesce(f.error, t.error),
        state = CASE WHEN f.error IS NULL THEN t.state ELSE 'parked' END,
        locked_by = NULL, lease_until = NULL, transitions = least(t.transitions, 2147483646) + 1,
        updated_at = now(), wakeup_at = now() + f.delay * interval '1 microsecond'
    FROM unnest($9::bigint[], $10::bigint[], $11::bigint[], $12::text[]) AS f(id, fence, delay, error)
    WHERE t.id = f.id AND t.fence = f.fence
    RETURNING t.id, t.fence",
            $returning,
            "
)"
        )
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
        kept!("")
    };
    // As `failed!(history)`.
    (history) => {
        kept!(", t.transitions = 1 AS first, t.created_at, t.kind AS old_kind, t.step AS old_step")
    };
    ($returning:literal) => {
        concat!(
            "awaited_before AS MATERIALIZED (
    SELECT t.id, t.parent_id FROM unnest($13::bigint[]) AS k(id) JOIN jetpack_tasks t USING (id)
    WHERE t.awaited IN ('wait', 'fail', 'error')
), kept AS (
    UPDATE jetpack_tasks t
    SET state = 'finished', finished_at = now(), locked_by = NULL, lease_until = NULL,
        updated_at = now(), result = k.result::jsonb, children_left = NULL,
        transitions = least(t.transitions, 2147483646) + 1,
        awaited = CASE WHEN t.awaited IN ('wait', 'fail', 'error') THEN 'done' ELSE t.awaited END
    FROM unnest($13::bigint[], $14::bigint[], $22::text[]) AS k(id, fence, result)
    WHERE t.id = k.id AND t.fence = k.fence
    RETURNING t.id, t.fence",
            $returning,
            "
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
        )
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
        limit_scope = w.scope, ",
            transition!(),
            ",
        locked_by = NULL, lease_until = NULL, updated_at = now(),
        wakeup_at = coalesce(now() + w.timeout * interval '1 microsecond', '9999-12-31 00:00:00+00')
    FROM unnest($15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[],
                $21::bigint[], $28::text[]) AS w(id, fence, step, kind, name, key, timeout, scope)
    WHERE t.id = w.id AND t.fence = w.fence
    RETURNING t.id, t.fence, ",
            transition!(first),
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
        wait_for = NULL, wait_key = NULL, signal = NULL, ",
            transition!(),
            ",
        locked_by = NULL, lease_until = NULL, updated_at = now(),
        wakeup_at = CASE WHEN c.n > 0 THEN '9999-12-31 00:00:00+00' ELSE now() END
    FROM unnest($23::bigint[], $24::bigint[], $25::text[], $26::text[], $29::text[])
        AS j(id, fence, step, kind, scope)
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS n FROM jetpack_tasks c
        WHERE c.parent_id = j.id AND c.awaited IN ('wait', 'fail', 'error')
    ) c
    WHERE t.id = j.id AND t.fence = j.fence
    RETURNING t.id, t.fence, ",
            transition!(first),
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
    held!(
        "SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved
         UNION ALL SELECT id, fence FROM failed UNION ALL SELECT id, fence FROM kept
         UNION ALL SELECT id, fence FROM waited UNION ALL SELECT id, fence FROM joined",
        "cardinality($1::bigint[]) + cardinality($3::bigint[]) + cardinality($9::bigint[])
         + cardinality($13::bigint[]) + cardinality($15::bigint[]) + cardinality($23::bigint[])"
    ),
    "
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM woke) < 0"
);

/// The history of the attempts the statement wrote, one row of
/// `jetpack_history_blocks` per block of task ids: for each attempt (its
/// task in `$a`, with its event `$b`, the kind it ran `$c`, the kind it went
/// to `$d`, its attempt `$e`, duration in µs `$f`, error `$g`, the step it
/// went to `$st`) an entry by worker `$w`, with the record of the task's
/// enqueue if the transition was its first (when and at which kind and step
/// its claim found it enqueued: `$qa`, `$qk`, `$s`). The entries are bound in
/// block order, block `$blocks[i]` from `$los[i]` to `$his[i]`; `$n` of them
/// came with a record of enqueue.
///
/// When every attempt held its task and every task so claimed was still at
/// its first step (`$written` returns `id, step, first, created_at, old_kind,
/// old_step` of what the statement wrote), the rows are the bound arrays cut
/// at the blocks' bounds (`history`): nothing to take apart or put together.
/// Else (a lease lost, a task moved by hand since its claim) the entries of
/// the attempts that held are put together by block (`history_some`), with
/// the records of enqueue of the tasks whose transitions were their first,
/// from the rows where the statement still had them. In the statement that
/// writes the outcomes: the history never disagrees with the rows.
macro_rules! history {
    ($written:literal, $a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $f:literal,
     $g:literal, $w:literal, $s:literal, $st:literal, $qa:literal, $qk:literal, $blocks:literal,
     $los:literal, $his:literal, $n:literal) => {
        concat!(
            "written AS (",
            $written,
            "), exact AS (
    SELECT count(*) = cardinality(",
            $a,
            "::bigint[]) AND count(*) FILTER (WHERE first) = ",
            $n,
            "::integer AS all_held FROM written
), history AS (
    INSERT INTO jetpack_history_blocks (block, worker, task_ids, events, from_kinds, to_kinds,
                                        steps, attempts, durations, errors, enqueued_ats,
                                        enqueued_kinds, enqueued_steps, enqueued_errors)
    SELECT b.block, ",
            $w,
            ", (",
            $a,
            "::bigint[])[b.lo:b.hi], (",
            $b,
            "::text[])[b.lo:b.hi], (",
            $c,
            "::text[])[b.lo:b.hi],
           (",
            $d,
            "::text[])[b.lo:b.hi], (",
            $st,
            "::text[])[b.lo:b.hi]::json[], (",
            $e,
            "::integer[])[b.lo:b.hi],
           (",
            $f,
            "::bigint[])[b.lo:b.hi], (",
            $g,
            "::text[])[b.lo:b.hi], (",
            $qa,
            "::timestamptz[])[b.lo:b.hi],
           (",
            $qk,
            "::text[])[b.lo:b.hi], (",
            $s,
            "::text[])[b.lo:b.hi]::json[], array_fill(NULL::text, ARRAY[b.hi - b.lo + 1])
    FROM unnest(",
            $blocks,
            "::bigint[], ",
            $los,
            "::integer[], ",
            $his,
            "::integer[]) AS b(block, lo, hi)
    WHERE (SELECT all_held FROM exact)
), history_some AS (
    INSERT INTO jetpack_history_blocks (block, worker, task_ids, events, from_kinds, to_kinds,
                                        steps, attempts, durations, errors, enqueued_ats,
                                        enqueued_kinds, enqueued_steps, enqueued_errors)
    SELECT h.id >> 10, ",
            $w,
            ", array_agg(h.id), array_agg(h.event), array_agg(h.from_kind), array_agg(h.to_kind),
           array_agg(w.step::json), array_agg(h.attempt), array_agg(h.duration), array_agg(h.error),
           array_agg(CASE WHEN w.first THEN w.created_at END),
           array_agg(CASE WHEN w.first THEN nullif(coalesce(w.old_kind, h.from_kind), '') END),
           array_agg(CASE WHEN w.first THEN coalesce(w.old_step::json, h.enqueued_step::json) END),
           array_agg(NULL::text)
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
            "::text[], ",
            $s,
            "::text[]) AS h(id, event, from_kind, to_kind, attempt, duration, error, enqueued_step)
    JOIN written w ON w.id = h.id
    WHERE NOT (SELECT all_held FROM exact)
    GROUP BY h.id >> 10
)"
        )
    };
}

/// [`FINISH_AND_NEXT`], recording the history (`$9`…`$25`).
const FINISH_AND_NEXT_HISTORY: &str = concat!(
    "WITH ",
    finished!(history),
    ", ",
    moved!("NULL::text", "", "", ", t.step, t.created_at"),
    ", ",
    history!(
        "SELECT id, NULL::jsonb AS step, first, created_at, old_kind, old_step FROM finished
         UNION ALL SELECT id, step, first, created_at, NULL, NULL FROM moved",
        "$9",
        "$10",
        "$11",
        "$12",
        "$13",
        "$14",
        "$15",
        "$16",
        "$17",
        "$18",
        "$19",
        "$20",
        "$21",
        "$22",
        "$23",
        "$24"
    ),
    held!(
        "SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved",
        "cardinality($1::bigint[]) + cardinality($3::bigint[])"
    )
);

/// [`EVERY_OUTCOME`], recording the history (`$30`…`$45`).
const EVERY_OUTCOME_HISTORY: &str = concat!(
    "WITH ",
    finished!(history),
    ", ",
    moved!(
        "u.scope",
        ", $27::text[]",
        ", scope",
        ", t.step, t.created_at"
    ),
    ", ",
    failed!(history),
    ", ",
    kept!(history),
    ", ",
    waited!(", t.step, t.created_at"),
    ", ",
    joined!(", t.step, t.created_at"),
    ", ",
    history!(
        "SELECT id, NULL::jsonb AS step, first, created_at, old_kind, old_step FROM finished
         UNION ALL SELECT id, step, first, created_at, NULL, NULL FROM moved
         UNION ALL SELECT id, NULL, first, created_at, old_kind, old_step FROM failed
         UNION ALL SELECT id, NULL, first, created_at, old_kind, old_step FROM kept
         UNION ALL SELECT id, step, first, created_at, NULL, NULL FROM waited
         UNION ALL SELECT id, step, first, created_at, NULL, NULL FROM joined",
        "$30",
        "$31",
        "$32",
        "$33",
        "$34",
        "$35",
        "$36",
        "$37",
        "$38",
        "$39",
        "$40",
        "$41",
        "$42",
        "$43",
        "$44",
        "$45"
    ),
    held!(
        "SELECT id, fence FROM finished UNION ALL SELECT id, fence FROM moved
         UNION ALL SELECT id, fence FROM failed UNION ALL SELECT id, fence FROM kept
         UNION ALL SELECT id, fence FROM waited UNION ALL SELECT id, fence FROM joined",
        "cardinality($1::bigint[]) + cardinality($3::bigint[]) + cardinality($9::bigint[])
         + cardinality($13::bigint[]) + cardinality($15::bigint[]) + cardinality($23::bigint[])"
    ),
    "
UNION ALL SELECT NULL, NULL WHERE (SELECT count(*) FROM woke) < 0"
);

/// The flush's statements and how many parameters each takes (for the
/// tests of their plans).
#[cfg(all(test, feature = "sqlite"))]
pub(super) const STATEMENTS: [(&str, usize); 4] = [
    (FINISH_AND_NEXT, 8),
    (FINISH_AND_NEXT_HISTORY, 24),
    (EVERY_OUTCOME, 29),
    (EVERY_OUTCOME_HISTORY, 45),
];

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

/// The history of a batch, as the statements bind it ([`history!`]): per
/// outcome, in the order of their tasks' blocks, its task, event, kind run,
/// kind gone to, step gone to, attempt, duration and error, and the record
/// of its task's enqueue if its claim found the task at its first step; the
/// blocks and their bounds in those arrays (1-based, inclusive).
#[derive(Default)]
struct HistoryRows<'a> {
    ids: Vec<i64>,
    events: Vec<&'static str>,
    from_kinds: Vec<Option<&'a str>>,
    to_kinds: Vec<Option<&'a str>>,
    steps: Vec<Option<&'a str>>,
    attempts: Vec<i32>,
    durations: Vec<i64>,
    errors: Vec<Option<&'a str>>,
    enqueued_ats: Vec<Option<DateTime<Utc>>>,
    enqueued_kinds: Vec<Option<&'a str>>,
    enqueued_steps: Vec<Option<&'a str>>,
    blocks: (Vec<i64>, Vec<i32>, Vec<i32>),
    enqueued: i32,
}

impl<'a> HistoryRows<'a> {
    fn of(done: &[(i64, i64, &'a Outcome)], traces: &[&'a Trace]) -> Result<Self, Error> {
        let mut rows = HistoryRows::default();
        let mut order: Vec<usize> = (0..done.len()).collect();
        order.sort_by_key(|&i| done[i].0 >> 10);
        for i in order {
            let ((id, _, outcome), trace) = (done[i], traces[i]);
            let (event, to, error) = outcome.event();
            let block = id >> 10;
            let at = i32::try_from(rows.ids.len() + 1).map_err(|_| {
                Error::Completion("more outcomes in one flush than an array holds".into())
            })?;
            if rows.blocks.0.last() == Some(&block) {
                if let Some(hi) = rows.blocks.2.last_mut() {
                    *hi = at;
                }
            } else {
                rows.blocks.0.push(block);
                rows.blocks.1.push(at);
                rows.blocks.2.push(at);
            }
            rows.ids.push(id);
            rows.events.push(event);
            rows.from_kinds.push(trace.kind.as_deref());
            rows.to_kinds.push(to.or(match outcome {
                Outcome::Retry { .. } | Outcome::Park { .. } => trace.kind.as_deref(),
                _ => None,
            }));
            rows.steps.push(match outcome {
                Outcome::Next { step, .. }
                | Outcome::Wait { step, .. }
                | Outcome::Join { step, .. } => Some(step.as_str()),
                _ => None,
            });
            rows.attempts.push(trace.attempt);
            rows.durations.push(trace.duration_us);
            rows.errors.push(error);
            let enqueued = trace.enqueued.as_ref();
            rows.enqueued_ats.push(enqueued.map(|e| e.at));
            rows.enqueued_kinds
                .push(enqueued.map(|e| e.kind.as_str()).filter(|k| !k.is_empty()));
            rows.enqueued_steps.push(enqueued.map(|e| e.step.as_str()));
            rows.enqueued += i32::from(enqueued.is_some());
        }
        Ok(rows)
    }
}

impl<'a> Batch<'a> {
    fn of(
        done: &[(i64, i64, &'a Outcome)],
        history: Option<&'a History<'a>>,
    ) -> Result<Self, Error> {
        let mut batch = Batch::default();
        if let Some(h) = history {
            batch.history = Some((h.worker, HistoryRows::of(done, h.traces)?));
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

    /// Writes the batch in one statement; which attempts still held their
    /// tasks.
    async fn write(&self, db: &mut PgConnection) -> Result<Held, Error> {
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
                .bind(&h.ids)
                .bind(&h.events)
                .bind(&h.from_kinds)
                .bind(&h.to_kinds)
                .bind(&h.attempts)
                .bind(&h.durations)
                .bind(&h.errors)
                .bind(*worker)
                .bind(&h.enqueued_steps)
                .bind(&h.steps)
                .bind(&h.enqueued_ats)
                .bind(&h.enqueued_kinds)
                .bind(&h.blocks.0)
                .bind(&h.blocks.1)
                .bind(&h.blocks.2)
                .bind(h.enqueued);
        }
        let rows: Vec<(Option<i64>, Option<i64>)> = query.fetch_all(db).await?;
        Ok(match rows.as_slice() {
            [(None, None)] => Held::All,
            _ => Held::These(
                rows.into_iter()
                    .filter_map(|(id, fence)| Some((id?, fence?)))
                    .collect(),
            ),
        })
    }
}

/// Which attempts of a write held their tasks ([`held!`]).
pub(super) enum Held {
    All,
    /// The attempts (id, fence) that did.
    These(Vec<(i64, i64)>),
}

impl Held {
    /// Whether each attempt of `done` held its task.
    fn of(self, done: &[(i64, i64, &Outcome)]) -> Vec<bool> {
        match self {
            Held::All => vec![true; done.len()],
            Held::These(held) => crate::driver::which_held(done, held),
        }
    }
}

/// Records outcomes, and their history when it is on; the attempts that
/// still held their tasks.
pub(super) async fn record(
    db: &mut PgConnection,
    done: &[(i64, i64, &Outcome)],
    history: Option<&History<'_>>,
) -> Result<Vec<bool>, Error> {
    Ok(Batch::of(done, history)?.write(db).await?.of(done))
}

#[async_trait]
impl crate::driver::Completes for Postgres {
    async fn complete_many(
        db: &PgHandle,
        done: &[(i64, i64, &Outcome)],
        history: Option<&History<'_>>,
    ) -> Result<Vec<bool>, Error> {
        // One statement, which commits on its own.
        let mut own = db.outcomes.take(db.connect()).await?;
        let written = record(&mut own.db, done, history).await;
        own.done(written)
    }

    async fn complete_in_tx(
        tx: &mut PgConnection,
        id: i64,
        fence: i64,
        outcome: &Outcome,
        history: Option<&History<'_>>,
    ) -> Result<bool, Error> {
        let held = record(tx, &[(id, fence, outcome)], history).await?;
        Ok(held.first().copied().unwrap_or(false))
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
