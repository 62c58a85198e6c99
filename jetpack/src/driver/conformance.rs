//! The driver's conformance suite: one test body per concern of [`Driver`],
//! run on both backends (`<set>::sqlite`, `<set>::postgres`), through the
//! driver's own methods: the caller's statements on a pool, the worker's
//! through [`Pooled`] as the worker holds it. What only one backend has (its
//! plans, its connections) is tested in that backend's folder.

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use sqlx::{Connection, Executor};

use super::*;
use crate::model::{
    Cancel, Change, Delivery, Encoded, Error, Filter, History, Limit, NewTask, Notice, OnConflict,
    Outcome, Related, Retention, SignalTo, Tally, TaskState, Trace, Wakeup, Window,
};

pub(crate) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A driver under test: a fresh database's pool, and the worker's side of it.
pub(crate) struct Under<D: Driver> {
    pub(crate) pool: sqlx::Pool<D>,
    pub(crate) store: Pooled<D>,
}

/// A driver the checks run on: its pool as an executor of the caller's
/// statements (every sqlx pool is one; generic code has to be told).
pub(crate) trait Tested: Driver {
    fn on(pool: &sqlx::Pool<Self>) -> impl Executor<'_, Database = Self>;
}

impl Tested for sqlx::Postgres {
    fn on(pool: &sqlx::PgPool) -> impl Executor<'_, Database = Self> {
        pool
    }
}

impl Tested for sqlx::Sqlite {
    fn on(pool: &sqlx::SqlitePool) -> impl Executor<'_, Database = Self> {
        pool
    }
}

impl<D: Tested> Under<D> {
    /// The caller's executor.
    fn db(&self) -> impl Executor<'_, Database = D> {
        D::on(&self.pool)
    }

    /// Task `id` as `find` reads it.
    async fn task(&self, id: i64) -> TestResult<crate::model::TaskRow> {
        Ok(D::find(self.db(), id)
            .await?
            .ok_or_else(|| format!("task {id} is gone"))?)
    }
}

/// What a check returns: the problems it found.
type Checked<'a> = LocalBoxFuture<'a, TestResult<Vec<String>>>;

/// One check of a driver.
type Check<D> = for<'a> fn(&'a Under<D>) -> Checked<'a>;

/// Step `M.A` with `fields`, encoded as an enqueue encodes it.
fn step_a(fields: &str) -> Encoded {
    Encoded {
        json: format!(r#"{{"M":{{"A":{fields}}}}}"#),
        kind: ("M", "A"),
        priority: 0,
        scope: None,
    }
}

/// Whether two JSON texts are the same document (PostgreSQL's `jsonb`
/// spaces them its own way).
fn same_json(a: &str, b: &str) -> bool {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    parse(a).is_some() && parse(a) == parse(b)
}

/// Claims the one ready task of kind `kind`: `(id, fence)`.
async fn claim_one(store: &dyn Store, kind: &str) -> TestResult<(i64, i64)> {
    let claimed = store
        .claim(1, &[kind.to_string()], "w", Duration::from_secs(30))
        .await?;
    match claimed.as_slice() {
        [c] => Ok((c.id, c.fence)),
        other => Err(format!("claimed {other:?}, not one task of {kind}").into()),
    }
}

/// The outcome that moves a task to step `{"M":{"B":null}}`, due at `wakeup`.
fn to_b(wakeup: Wakeup) -> Outcome {
    Outcome::Next {
        step: r#"{"M":{"B":null}}"#.into(),
        kind: "M.B".into(),
        wakeup,
        scope: None,
    }
}

/// After an attempt recorded its outcome, its `(id, fence)` must no longer
/// touch the row: a heartbeat or release racing the completion would
/// otherwise move the next step's `wakeup_at` (a delayed step made due at
/// once, or a due step pushed back by a lease).
fn completed_attempt_is_inert<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string(), "M.B".to_string()];
        let mut problems = Vec::new();
        let claimed = store.claim(1, &kinds, "w", Duration::from_secs(30)).await?;
        let (id, fence) = (claimed[0].id, claimed[0].fence);
        let next = to_b(Wakeup::Delay(Duration::from_secs(3600)));
        assert_eq!(
            store.complete_many(&[(id, fence, &next)], None).await?,
            [true]
        );
        let due = store.next_due(&kinds).await?.ok_or("the task is gone")?;
        if !store
            .heartbeat(&[(id, fence)], Duration::from_secs(1))
            .await?
            .is_empty()
        {
            problems.push("heartbeat touched a completed attempt".to_string());
        }
        store.release(&[(id, fence)]).await?;
        let after = store.next_due(&kinds).await?.ok_or("the task is gone")?;
        if after + Duration::from_secs(5) < due {
            problems.push(format!(
                "the delayed step became due in {after:?} instead of {due:?}"
            ));
        }
        Ok(problems)
    })
}

/// A leased task is not ready, not even "due", until its lease expires;
/// then another claim takes it as a new attempt.
fn a_lease_holds_until_it_expires<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string()];
        let mut problems = Vec::new();
        let lease = Duration::from_millis(400);
        let first = store.claim(10, &kinds, "a", lease).await?;
        if first.len() != 1 {
            return Err(format!("claimed {} tasks instead of 1", first.len()).into());
        }
        if !store.claim(10, &kinds, "b", lease).await?.is_empty() {
            problems.push("a leased task was claimed again".into());
        }
        if let Some(due) = store.next_due(&kinds).await? {
            problems.push(format!("a leased task is reported due in {due:?}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let second = loop {
            let got = store.claim(10, &kinds, "b", lease).await?;
            if !got.is_empty() || std::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match second.as_slice() {
            [again] if again.id == first[0].id && again.fence == first[0].fence + 1 => {
                if again.tried != 2 {
                    problems.push(format!("tried is {} after two claims", again.tried));
                }
            }
            other => problems.push(format!("after the lease expired, claimed {other:?}")),
        }
        Ok(problems)
    })
}

/// A limited task's share: one attempt at a time under a limit of 1; the
/// heartbeat does not revive an expired lease of a limited task (its
/// share may have passed to another attempt), and the share comes back
/// to the claims once the lease expired.
fn a_limited_lease_is_not_revived<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let limits = [Limit {
            kind: "M.A".to_string(),
            concurrency: Some(1),
            rate: None,
        }];
        // Rows written without a scope: give them theirs.
        for task in store
            .claim(10, &["M.A".to_string()], "w", Duration::from_secs(30))
            .await?
        {
            store
                .rescope(task.id, task.fence, "M.A", &task.step, "M.A")
                .await?;
        }
        let lease = Duration::from_millis(300);
        let first = store.claim_limited(10, &limits, "a", lease).await?;
        let [held] = first.as_slice() else {
            return Err(format!("claimed {} tasks under a limit of 1", first.len()).into());
        };
        if !store
            .claim_limited(10, &limits, "b", lease)
            .await?
            .is_empty()
        {
            problems.push("a second task was claimed while the share was held".into());
        }
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        if !store
            .heartbeat(&[(held.id, held.fence)], lease)
            .await?
            .is_empty()
        {
            problems.push("the heartbeat renewed an expired lease of a limited task".into());
        }
        let next = store.claim_limited(10, &limits, "b", lease).await?;
        if next.len() != 1 {
            problems.push(format!("after the lease expired, claimed {next:?}"));
        }
        Ok(problems)
    })
}

/// A next step due now is due at once, also after the heartbeat moved the
/// row's `wakeup_at` to a lease expiry in the future (a next step keeps a
/// passed `wakeup_at`, so that its update can be HOT).
fn a_next_step_due_now_is_claimable_at_once<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string(), "M.B".to_string()];
        let mut problems = Vec::new();
        let hour = Duration::from_secs(3600);
        for heartbeat in [false, true] {
            let claimed = store.claim(1, &kinds, "w", hour).await?;
            let (id, fence) = match claimed.as_slice() {
                [c] => (c.id, c.fence),
                other => return Err(format!("claimed {other:?}").into()),
            };
            if heartbeat {
                store.heartbeat(&[(id, fence)], hour).await?;
            }
            let next = to_b(Wakeup::Now);
            store.complete_many(&[(id, fence, &next)], None).await?;
            let again = store.claim(1, &["M.B".to_string()], "w", hour).await?;
            if again.len() != 1 || again[0].id != id {
                problems.push(format!(
                    "the next step was not claimable at once (heartbeat: {heartbeat})"
                ));
            }
            store
                .complete_many(&[(id, fence + 1, &Outcome::Finish)], None)
                .await?;
        }
        Ok(problems)
    })
}

/// A flush of many outcomes answers, for each, whether its attempt still
/// held the task, and writes only those: an attempt that lost its lease
/// changes nothing, and the others are written all the same (SQLite first
/// writes a batch assuming every attempt held its task, and rolls back when
/// one did not).
fn a_batch_writes_only_what_attempts_held<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string(), "M.B".to_string()];
        let mut problems = Vec::new();
        let hour = Duration::from_secs(3600);
        let claimed = store.claim(3, &kinds, "w", hour).await?;
        let [a, b, c] = claimed.as_slice() else {
            return Err(format!("claimed {claimed:?}").into());
        };
        let next = to_b(Wakeup::Now);
        let held = store
            .complete_many(
                &[
                    (a.id, a.fence, &Outcome::Finish),
                    (b.id, b.fence - 1, &Outcome::Finish),
                    (c.id, c.fence, &next),
                ],
                None,
            )
            .await?;
        if held != [true, false, true] {
            problems.push(format!("held {held:?}, not [true, false, true]"));
        }
        let again = store.claim(3, &kinds, "w", hour).await?;
        match again.as_slice() {
            [t] if t.id == c.id && t.step.replace(' ', "") == r#"{"M":{"B":null}}"# => {}
            other => problems.push(format!(
                "after the flush, claimed {other:?} instead of only task {}'s next step",
                c.id
            )),
        }
        // The attempt that lost nothing still finishes its task.
        let held = store
            .complete_many(&[(b.id, b.fence, &Outcome::Finish)], None)
            .await?;
        if held != [true] {
            problems.push(format!("the live attempt's finish reported {held:?}"));
        }
        Ok(problems)
    })
}

/// A stale attempt and the live attempt of one task in the same flush: only
/// the live one writes (SQLite's check that all attempts hold their tasks
/// counts each task once).
fn a_stale_and_a_live_attempt_in_one_flush<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string(), "M.B".to_string()];
        let mut problems = Vec::new();
        // A lease of zero has expired at once: the second claim takes the
        // task as a new attempt.
        let stale = store.claim(1, &kinds, "w", Duration::ZERO).await?;
        let live = store.claim(1, &kinds, "w", Duration::from_secs(60)).await?;
        let ([stale], [live]) = (stale.as_slice(), live.as_slice()) else {
            return Err(format!("claimed {stale:?}, then {live:?}").into());
        };
        let next = to_b(Wakeup::Now);
        let held = store
            .complete_many(
                &[
                    (stale.id, stale.fence, &Outcome::Finish),
                    (live.id, live.fence, &next),
                ],
                None,
            )
            .await?;
        if held != [false, true] {
            problems.push(format!("held {held:?}, not [false, true]"));
        }
        let again = store.claim(1, &kinds, "w", Duration::from_secs(60)).await?;
        match again.as_slice() {
            [t] if t.id == live.id && t.step.replace(' ', "") == r#"{"M":{"B":null}}"# => {}
            other => problems.push(format!(
                "after the flush, claimed {other:?} instead of the live attempt's next step"
            )),
        }
        Ok(problems)
    })
}

/// A claim hands the step over exactly as stored, whatever characters it
/// holds (SQLite returns a batch as one JSON value with the steps inside).
fn a_claim_returns_the_step_as_stored<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let claimed = store
            .claim(1, &["M.A".to_string()], "w", Duration::from_secs(60))
            .await?;
        let [task] = claimed.as_slice() else {
            return Err(format!("claimed {claimed:?}").into());
        };
        let stored: serde_json::Value = serde_json::from_str(&task.step)?;
        if stored != serde_json::from_str::<serde_json::Value>(STEP_A)? {
            problems.push(format!("claimed step {:?}, stored {STEP_A:?}", task.step));
        }
        Ok(problems)
    })
}

/// Finishes, next steps, retries and parkings in one flush: each written,
/// the failed attempts' leases given back, a retry due after its delay, a
/// parked task not claimable (and its error storable: no NUL).
fn every_kind_of_outcome_in_one_flush<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string(), "M.B".to_string()];
        let mut problems = Vec::new();
        let claimed = store.claim(4, &kinds, "w", Duration::from_secs(60)).await?;
        let [finish, next, retry, park] = claimed.as_slice() else {
            return Err(format!("claimed {claimed:?}").into());
        };
        let outcomes = [
            Outcome::Finish,
            to_b(Wakeup::Now),
            Outcome::Retry {
                delay: Duration::from_secs(3600),
                error: "once more".into(),
            },
            Outcome::park("a NUL \0 here".into()),
        ];
        let done: Vec<(i64, i64, &Outcome)> = [finish, next, retry, park]
            .iter()
            .zip(&outcomes)
            .map(|(t, o)| (t.id, t.fence, o))
            .collect();
        let held = store.complete_many(&done, None).await?;
        if held != [true; 4] {
            problems.push(format!("held {held:?}"));
        }
        let again = store.claim(4, &kinds, "w", Duration::from_secs(60)).await?;
        match again.as_slice() {
            [t] if t.id == next.id => {}
            other => problems.push(format!(
                "after the flush, claimed {other:?} instead of the next step alone"
            )),
        }
        let due = store.next_due(&kinds).await?;
        if due.is_none_or(|d| d <= Duration::from_secs(3000)) {
            problems.push(format!("the retry is due in {due:?}, not in an hour"));
        }
        Ok(problems)
    })
}

/// A finished task kept (`Outcome::Keep`) is `finished` in `states`, and
/// `clean` deletes it once its period has passed, not before (and at once
/// when finished tasks are no longer kept); tasks that are not finished it
/// leaves alone.
fn kept_tasks_are_cleaned_after_their_period<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let kinds = vec!["M.A".to_string()];
        let mut problems = Vec::new();
        let claimed = store.claim(2, &kinds, "w", Duration::from_secs(30)).await?;
        let [a, b] = claimed.as_slice() else {
            return Err(format!("claimed {} tasks instead of 2", claimed.len()).into());
        };
        let done = store
            .complete_many(&[(a.id, a.fence, &Outcome::Keep { result: None })], None)
            .await?;
        if done != [true] {
            problems.push(format!("keeping a finished task: {done:?}"));
        }
        let mut states = store.states(&[a.id, b.id]).await?;
        states.sort();
        let want = vec![(a.id, "finished".to_string()), (b.id, "ready".to_string())];
        if states != want {
            problems.push(format!("states {states:?}, not {want:?}"));
        }
        let hour = Duration::from_secs(3600);
        let long = Retention {
            finished: Some(hour),
            cancelled: hour,
            signals: hour,
            history: hour,
        };
        if store.clean(&long, 10).await? != 0 {
            problems.push("deleted a task kept for an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A worker that keeps no finished tasks deletes those kept before.
        let short = Retention {
            finished: None,
            cancelled: hour,
            signals: hour,
            history: hour,
        };
        let deleted = store.clean(&short, 10).await?;
        if deleted != 1 {
            problems.push(format!("deleted {deleted} tasks, not the one kept"));
        }
        let left = store.states(&[a.id, b.id]).await?;
        if left != [(b.id, "ready".to_string())] {
            problems.push(format!("left {left:?}"));
        }
        Ok(problems)
    })
}

/// Enqueues: `insert` at each kind of wakeup and `insert_many` store the
/// steps as given, due as asked; `find` reads them back, and nothing for an
/// id that is not there.
fn inserts_read_back_as_stored<D: Tested>(t: &Under<D>) -> Checked<'_> {
    Box::pin(async move {
        let mut problems = Vec::new();
        let now = D::insert(t.db(), step_a(r#"{"n":1}"#), Wakeup::Now).await?;
        let hour = Wakeup::Delay(Duration::from_secs(3600));
        let later = D::insert(t.db(), step_a(r#"{"n":2}"#), hour).await?;
        let at = chrono::Utc::now() + chrono::Duration::days(1);
        let dated = D::insert(t.db(), step_a(r#"{"n":3}"#), Wakeup::At(at)).await?;
        D::enqueued();
        for (id, n, state) in [
            (now, 1, TaskState::Ready),
            (later, 2, TaskState::Scheduled),
            (dated, 3, TaskState::Scheduled),
        ] {
            let task = t.task(id).await?;
            if !same_json(&task.step, &format!(r#"{{"M":{{"A":{{"n":{n}}}}}}}"#)) {
                problems.push(format!("task {id} reads back as {}", task.step));
            }
            if task.state != state || task.tried != 0 || task.error.is_some() {
                problems.push(format!("task {id} is {task:?}, not a fresh {state:?} task"));
            }
        }
        let off = (t.task(dated).await?.wakeup_at - at)
            .num_milliseconds()
            .abs();
        if off > 1 {
            problems.push(format!("a task due at {at} is due {off} ms off"));
        }
        let steps = (10..13)
            .map(|n| step_a(&format!(r#"{{"n":{n}}}"#)))
            .collect();
        let ids = D::insert_many(t.db(), steps).await?;
        for (n, &id) in (10..).zip(&ids) {
            let task = t.task(id).await?;
            if !same_json(&task.step, &format!(r#"{{"M":{{"A":{{"n":{n}}}}}}}"#)) {
                problems.push(format!("insert_many's {n} is {}", task.step));
            }
        }
        if ids.len() != 3 || ids.windows(2).any(|w| w[0] >= w[1]) || ids[0] <= dated {
            problems.push(format!("insert_many returned ids {ids:?}"));
        }
        if D::find(t.db(), ids[2] + 1000).await?.is_some() {
            problems.push("found a task that was never stored".into());
        }
        Ok(problems)
    })
}

/// A new task of `key` (`None`: no unique key), due now.
fn keyed(step: Encoded, key: Option<&str>) -> NewTask {
    NewTask {
        step,
        delay: 0,
        at: None,
        unique_key: key.map(str::to_string),
        on_conflict: OnConflict::Ignore,
        throttle: None,
    }
}

/// The keyed statements, in one transaction: a unique key is held by one
/// live task until it is detached; a holder's step is replaced in place; a
/// throttle's window is taken once, and tells which task took it.
fn keys_and_windows<D: Tested>(t: &Under<D>) -> Checked<'_> {
    Box::pin(async move {
        let mut problems = Vec::new();
        let mut tx = t.pool.begin().await?;
        let db = D::keyed(&mut tx);
        let first = db
            .insert_unless_held(&keyed(step_a("1"), Some("k")))
            .await?;
        let Some(first) = first else {
            return Err("a free key was refused".into());
        };
        if let Some(second) = db
            .insert_unless_held(&keyed(step_a("2"), Some("k")))
            .await?
        {
            problems.push(format!("key k held by {first} was given to {second} too"));
        }
        match db.holder("k").await? {
            Some((id, true)) if id == first => {}
            other => problems.push(format!("the holder of k is {other:?}, not {first}")),
        }
        db.replace(first, &keyed(step_a("3"), Some("k"))).await?;
        db.detach(first).await?;
        if let Some(holder) = db.holder("k").await? {
            problems.push(format!("a detached key is held by {holder:?}"));
        }
        let hour = 3_600_000_000;
        if !matches!(db.take_window("w", hour).await?, Window::Taken) {
            problems.push("a free window was not taken".into());
        }
        match db.take_window("w", hour).await? {
            Window::Held(None) => {}
            _ => problems.push("a window taken by no task yet is not held by none".into()),
        }
        db.set_window_task("w", first).await?;
        match db.take_window("w", hour).await? {
            Window::Held(Some(id)) if id == first => {}
            _ => problems.push(format!("the window is not held by {first}")),
        }
        tx.commit().await?;
        let task = t.task(first).await?;
        if !same_json(&task.step, r#"{"M":{"A":3}}"#) || task.unique_key.is_some() {
            problems.push(format!("after replace and detach: {task:?}"));
        }
        Ok(problems)
    })
}

/// The admin API's statements: counts (exact, sampled, by index), lists by
/// filter and page, edits, and resume, cancel and purge by filter.
fn admin_reads_and_changes<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let ids = D::insert_many(t.db(), (0..3).map(|n| step_a(&n.to_string())).collect()).await?;
        let (id, fence) = claim_one(store, "M.A").await?;
        let park = Outcome::Park {
            error: "broken: disk full".into(),
        };
        store.complete_many(&[(id, fence, &park)], None).await?;
        let counts = D::admin_counts(t.db()).await?;
        let of = |state: TaskState| {
            (counts.iter())
                .filter(|c| c.kind == "M.A" && c.state == state)
                .map(|c| c.count)
                .sum::<i64>()
        };
        if (of(TaskState::Ready), of(TaskState::Parked)) != (2, 1) {
            problems.push(format!("counts {counts:?}, not 2 ready and 1 parked"));
        }
        let span = D::admin_id_span(t.db()).await?;
        if span != Some((ids[0], ids[2])) {
            problems.push(format!("id span {span:?}, not {}..{}", ids[0], ids[2]));
        }
        let sample = Tally::Sample {
            first: ids[0],
            stride: 20,
            strata: 1,
        };
        let sampled: i64 = (D::admin_tally(t.db(), sample).await?.iter())
            .map(|r| r.2)
            .sum();
        let indexed = D::admin_tally(t.db(), Tally::Indexed { limit: 10 }).await?;
        if sampled != 3 || indexed != [("M.A".to_string(), "parked".to_string(), 1)] {
            problems.push(format!("sampled {sampled} tasks; by index {indexed:?}"));
        }
        let parked = D::admin_list(t.db(), Filter::new().parked()).await?;
        let found = Filter::new().error_contains("disk").step("M.A");
        let by_error = D::admin_list(t.db(), found).await?;
        let page = D::admin_list(t.db(), Filter::new().after_id(ids[0]).limit(1)).await?;
        let listed = |rows: &[crate::model::TaskRow]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        if listed(&parked) != [id] || listed(&by_error) != [id] || listed(&page) != [ids[1]] {
            problems.push(format!(
                "parked {:?}, with the error {:?}, the page after {} {:?}",
                listed(&parked),
                listed(&by_error),
                ids[0],
                listed(&page)
            ));
        }
        if D::admin_edit(t.db(), id, r#"{"M":{"A":"edited"}}"#.into()).await? != 1 {
            problems.push("the edit changed no row".into());
        }
        if !same_json(&t.task(id).await?.step, r#"{"M":{"A":"edited"}}"#) {
            problems.push("the edit did not stick".into());
        }
        if D::resume(t.db(), ids[1]).await? {
            problems.push("resumed a task that was not parked".into());
        }
        let resumed = D::admin_change(t.db(), Filter::new().parked(), Change::Resume).await?;
        if resumed != 1 || t.task(id).await?.state != TaskState::Ready {
            problems.push(format!("resumed {resumed} by filter"));
        }
        let why = Change::Cancel("not wanted".into());
        let cancelled = D::admin_change(t.db(), Filter::new().step("M.A"), why).await?;
        let state = t.task(ids[2]).await?.state;
        if cancelled != 3 || state != TaskState::Cancelled {
            problems.push(format!("cancelled {cancelled} by filter; one is {state:?}"));
        }
        let gone = Filter::new().state("cancelled");
        let purged = D::admin_change(t.db(), gone, Change::Purge).await?;
        if purged != 3 || D::find(t.db(), ids[0]).await?.is_some() {
            problems.push(format!("purged {purged}"));
        }
        Ok(problems)
    })
}

/// Resuming and cancelling one task, and what an admin may find of it: the
/// tasks of a unique key, and a redrive to another step.
fn one_task_resumed_cancelled_and_redriven<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let mut tx = t.pool.begin().await?;
        let id = (D::keyed(&mut tx).insert_unless_held(&keyed(step_a("1"), Some("key"))))
            .await?
            .ok_or("a free key was refused")?;
        tx.commit().await?;
        let of_key = D::admin_tasks(t.db(), Related::Key("key".into())).await?;
        if of_key.iter().map(|r| r.id).collect::<Vec<_>>() != [id] {
            problems.push(format!("the tasks of the key are {of_key:?}"));
        }
        let (_, fence) = claim_one(store, "M.A").await?;
        let park = Outcome::Park {
            error: "broken".into(),
        };
        store.complete_many(&[(id, fence, &park)], None).await?;
        let moves = D::admin_redrivable(t.db(), Filter::new().parked().step("M.A")).await?;
        if moves.iter().map(|m| m.0).collect::<Vec<_>>() != [id] {
            problems.push(format!("redrivable: {moves:?}"));
        }
        let moves = moves
            .into_iter()
            .map(|(id, fence, _)| (id, fence, r#"{"M":{"B":1}}"#.to_string()))
            .collect();
        let moved = D::admin_redrive(t.db(), moves, "M.B".into()).await?;
        let task = t.task(id).await?;
        if moved != 1 || !same_json(&task.step, r#"{"M":{"B":1}}"#) {
            problems.push(format!("redrove {moved}: {task:?}"));
        }
        if task.state == TaskState::Parked && !D::resume(t.db(), id).await? {
            problems.push("a parked task was not resumed".into());
        }
        let cancel = D::cancel(t.db(), id, "done with it".into(), false).await?;
        let again = D::cancel(t.db(), id + 1000, "no such".into(), true).await?;
        if cancel != Cancel::Cancelled || again != Cancel::NotFound {
            problems.push(format!("cancel: {cancel:?}, of a missing task {again:?}"));
        }
        if t.task(id).await?.state != TaskState::Cancelled {
            problems.push("the cancelled task is not cancelled".into());
        }
        Ok(problems)
    })
}

/// A step's children: inserted in its transaction (nothing seen before it
/// commits, nothing left when it rolls back), listed under their parent,
/// detached, and read by the join once they end.
fn children_live_and_die_with_the_step<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let parent = D::insert(t.db(), step_a("0"), Wakeup::Now).await?;
        let (_, fence) = claim_one(store, "M.A").await?;
        // A stale attempt's children are rolled back with its transaction.
        let mut tx = store.begin().await?;
        let lost = store
            .insert_children(&mut *tx, parent, Some("wait"), vec![step_b()])
            .await?;
        let finish = Outcome::Finish;
        if store
            .complete_in_tx(tx, parent, fence + 1, &finish, None)
            .await?
        {
            problems.push("a stale attempt's transaction held its task".into());
        }
        if D::find(t.db(), lost[0]).await?.is_some() {
            problems.push("a rolled-back child is there".into());
        }
        let mut tx = store.begin().await?;
        let kids = vec![step_b(), step_b(), step_b()];
        let ids = store
            .insert_children(&mut *tx, parent, Some("wait"), kids)
            .await?;
        if D::find(t.db(), ids[0]).await?.is_some() {
            problems.push("a child is seen before its step commits".into());
        }
        store.detach_children(&mut *tx, parent).await?;
        let join = Outcome::Join {
            step: r#"{"M":{"C":null}}"#.into(),
            kind: "M.C".into(),
            scope: None,
        };
        if !store.complete_in_tx(tx, parent, fence, &join, None).await? {
            problems.push("the live attempt's transaction lost its task".into());
        }
        let listed = D::admin_tasks(t.db(), Related::Children(parent)).await?;
        if listed.iter().map(|r| r.id).collect::<Vec<_>>() != ids {
            problems.push(format!("the children are {listed:?}, not {ids:?}"));
        }
        if listed.iter().any(|r| r.parent_id != Some(parent)) {
            problems.push("a child does not name its parent".into());
        }
        // Detached children are not the join's.
        let counted = store.child_results(parent, None, None).await?;
        if !counted.is_empty() {
            problems.push(format!("the join counts detached children: {counted:?}"));
        }
        Ok(problems)
    })
}

/// Step `M.B`, as a child.
fn step_b() -> Encoded {
    Encoded {
        json: r#"{"M":{"B":null}}"#.into(),
        kind: ("M", "B"),
        priority: 0,
        scope: None,
    }
}

/// A child awaited by its parent's join is counted there once it finished,
/// with its state; the join of one machine or one child reads only those.
fn a_join_reads_its_ended_children<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let parent = D::insert(t.db(), step_a("0"), Wakeup::Now).await?;
        let (_, fence) = claim_one(store, "M.A").await?;
        let mut tx = store.begin().await?;
        let ids = store
            .insert_children(&mut *tx, parent, Some("wait"), vec![step_b()])
            .await?;
        let join = Outcome::Join {
            step: r#"{"M":{"C":null}}"#.into(),
            kind: "M.C".into(),
            scope: None,
        };
        store.complete_in_tx(tx, parent, fence, &join, None).await?;
        let (child, child_fence) = claim_one(store, "M.B").await?;
        let kept = Outcome::Keep {
            result: Some(r#"{"total":3}"#.into()),
        };
        store
            .complete_many(&[(child, child_fence, &kept)], None)
            .await?;
        let counted = store.child_results(parent, None, None).await?;
        match counted.as_slice() {
            [(id, state, Some(result), None)]
                if *id == ids[0] && state == "finished" && same_json(result, r#"{"total":3}"#) => {}
            other => problems.push(format!(
                "the join read {other:?}; the children {:?}; the parent {:?}",
                D::admin_tasks(t.db(), Related::Children(parent)).await?,
                t.task(parent).await?
            )),
        }
        let of_machine = store.child_results(parent, Some("M"), None).await?;
        let of_other = store.child_results(parent, Some("N"), None).await?;
        let of_child = store.child_results(parent, None, Some(child + 1)).await?;
        if of_machine.len() != 1 || !of_other.is_empty() || !of_child.is_empty() {
            problems.push(format!(
                "of machine M {of_machine:?}, of N {of_other:?}, of another child {of_child:?}"
            ));
        }
        Ok(problems)
    })
}

/// Signals: a waiting task is woken by its signal, which its next claim
/// reads; a wait past its deadline ends without one; a signal to no task
/// says so.
fn signals_end_waits<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let waiting = D::insert(t.db(), step_a("1"), Wakeup::Now).await?;
        let timing_out = D::insert(t.db(), step_a("2"), Wakeup::Now).await?;
        let claimed = store
            .claim(2, &["M.A".to_string()], "w", Duration::from_secs(30))
            .await?;
        let wait = |timeout: Duration| Outcome::Wait {
            step: r#"{"M":{"B":null}}"#.into(),
            kind: "M.B".into(),
            name: "go",
            key: Some("order-7".into()),
            timeout: Some(timeout),
            scope: None,
        };
        let (long, short) = (wait(Duration::from_secs(3600)), wait(Duration::ZERO));
        let done: Vec<(i64, i64, &Outcome)> = claimed
            .iter()
            .map(|c| (c.id, c.fence, if c.id == waiting { &long } else { &short }))
            .collect();
        store.complete_many(&done, None).await?;
        let states = store.states(&[waiting, timing_out]).await?;
        if states.iter().any(|(_, s)| s != "waiting") {
            problems.push(format!("after the waits: {states:?}"));
        }
        let expired = store.expire_waits(10).await?;
        let states = store.states(&[waiting, timing_out]).await?;
        let want = [
            (waiting, "waiting".to_string()),
            (timing_out, "ready".into()),
        ];
        if expired != 1 || states != want {
            problems.push(format!("expired {expired}: {states:?}"));
        }
        let to = SignalTo::Key("order-7".into());
        let sent = D::signal(t.db(), to, "go", r#"{"ok":true}"#.into()).await?;
        let lost = D::signal(t.db(), SignalTo::Task(waiting + 1000), "go", "1".into()).await?;
        if sent != Delivery::Delivered || lost != Delivery::NotFound {
            problems.push(format!("delivered {sent:?}; to no task {lost:?}"));
        }
        let claimed = store
            .claim(2, &["M.B".to_string()], "w", Duration::from_secs(30))
            .await?;
        let signal = claimed.iter().find(|c| c.id == waiting).map(|c| &c.signal);
        let timed_out = claimed
            .iter()
            .find(|c| c.id == timing_out)
            .map(|c| &c.signal);
        match (signal, timed_out) {
            (Some(Some(payload)), Some(None)) if same_json(payload, r#"{"ok":true}"#) => {}
            other => problems.push(format!("claimed after the signal: {other:?}")),
        }
        Ok(problems)
    })
}

/// The history: switched on and off; an attempt's outcome recorded with it
/// reads back as the task's transition, counted at a moment and by minute.
fn history_records_outcomes<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let since = chrono::Utc::now() - chrono::Duration::minutes(1);
        D::set_history(t.db(), true).await?;
        if !store.history_on().await? {
            problems.push("the history is off after switching it on".into());
        }
        let id = D::insert(t.db(), step_a("1"), Wakeup::Now).await?;
        let (_, fence) = claim_one(store, "M.A").await?;
        let trace = Trace {
            kind: Some("M.A".into()),
            attempt: 1,
            duration_us: 1500,
            labels: None,
        };
        let history = History {
            worker: "w",
            traces: &[&trace],
        };
        let next = to_b(Wakeup::Now);
        store
            .complete_many(&[(id, fence, &next)], Some(&history))
            .await?;
        let transitions = D::history(t.db(), id).await?;
        let moved = transitions.iter().find(|h| h.event == "next");
        match moved {
            Some(h)
                if h.from_kind.as_deref() == Some("M.A") && h.to_kind.as_deref() == Some("M.B") => {
            }
            _ => problems.push(format!("the history of the task: {transitions:?}")),
        }
        let at = D::counts_at(t.db(), chrono::Utc::now()).await?;
        if !at.contains(&("M.B".to_string(), 1)) {
            problems.push(format!("counts now: {at:?}"));
        }
        let activity = D::activity(t.db(), since).await?;
        let edge = ("M.A".to_string(), "M.B".to_string(), 1);
        if activity.minutes.is_empty() || !activity.moves.contains(&edge) {
            problems.push(format!("the activity: {activity:?}"));
        }
        D::set_history(t.db(), false).await?;
        if store.history_on().await? {
            problems.push("the history is on after switching it off".into());
        }
        Ok(problems)
    })
}

/// The registry: graphs are recorded and read back; live tasks of kinds a
/// worker does not know are counted.
fn the_registry_keeps_graphs<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let graph = r#"{"name":"M","steps":["A","B"]}"#;
        let machines = [("M".to_string(), graph.to_string())];
        store.register(&machines).await?;
        store.register(&machines).await?;
        let recorded = D::recorded_graph(t.db(), "M".into()).await?;
        let all = D::recorded_graphs(t.db()).await?;
        let missing = D::recorded_graph(t.db(), "N".into()).await?;
        if !recorded.is_some_and(|g| same_json(&g, graph)) || all.len() != 1 || missing.is_some() {
            problems.push(format!("recorded {all:?}; of N {missing:?}"));
        }
        D::insert(t.db(), step_a("1"), Wakeup::Now).await?;
        let others = store.other_kinds(&["M.B".to_string()]).await?;
        let none = store.other_kinds(&["M.A".to_string()]).await?;
        if others != [("M.A".to_string(), 1)] || !none.is_empty() {
            problems.push(format!("other kinds {others:?}, then {none:?}"));
        }
        Ok(problems)
    })
}

/// Schedules: the first tick is recorded as given; a tick is fired, with its
/// tasks, by one caller only.
fn a_tick_fires_once<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).ok_or("a time")?;
        let next = start + chrono::Duration::minutes(1);
        let first = store.last_tick("nightly", start).await?;
        let again = store.last_tick("nightly", next).await?;
        if first != start || again != start {
            problems.push(format!("last ticks {first}, {again}, not {start}"));
        }
        let fired = store
            .fire("nightly", start, next, vec![step_a("1")])
            .await?;
        let twice = store
            .fire("nightly", start, next, vec![step_a("2")])
            .await?;
        let after = store.last_tick("nightly", start).await?;
        if !fired || twice || after != next {
            problems.push(format!("fired {fired}, then {twice}; last tick {after}"));
        }
        let tasks = D::admin_list(t.db(), Filter::new().step("M.A")).await?;
        if tasks.len() != 1 {
            problems.push(format!("the tick enqueued {tasks:?}"));
        }
        Ok(problems)
    })
}

/// Limits: throttle windows that passed are deleted, others kept.
fn passed_windows_are_cleaned<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let mut tx = t.pool.begin().await?;
        let db = D::keyed(&mut tx);
        db.take_window("passed", 1).await?;
        db.take_window("open", 3_600_000_000).await?;
        tx.commit().await?;
        // The one-microsecond window has passed once the clock moved on.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cleaned = store.clean_limits(10).await?;
        let mut tx = t.pool.begin().await?;
        let db = D::keyed(&mut tx);
        let passed = matches!(
            db.take_window("passed", 3_600_000_000).await?,
            Window::Taken
        );
        let open = matches!(
            db.take_window("open", 3_600_000_000).await?,
            Window::Held(_)
        );
        tx.commit().await?;
        if cleaned != 1 || !passed || !open {
            problems.push(format!(
                "cleaned {cleaned}; passed free {passed}, open held {open}"
            ));
        }
        Ok(problems)
    })
}

/// Claims given back: a rate-limited attempt is ready later and not counted
/// as tried; a task claimed without its scope is given one and its step's
/// current name; steps with no limit lose their scopes.
fn attempts_given_back_and_rescoped<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let kinds = ["M.A".to_string()];
        let a = D::insert(t.db(), step_a("1"), Wakeup::Now).await?;
        let (_, fence) = claim_one(store, "M.A").await?;
        store
            .back(a, fence, Duration::from_secs(3600), None)
            .await?;
        let task = t.task(a).await?;
        let due = store.next_due(&kinds).await?;
        if task.tried != 0
            || task.state != TaskState::Scheduled
            || due < Some(Duration::from_secs(3000))
        {
            problems.push(format!("given back: {task:?}, due in {due:?}"));
        }
        let b = D::insert(t.db(), step_a("2"), Wakeup::Now).await?;
        let (_, fence) = claim_one(store, "M.A").await?;
        store
            .rescope(b, fence, "M.B", r#"{"M":{"B":2}}"#, "M.B")
            .await?;
        let task = t.task(b).await?;
        if task.tried != 0
            || task.state != TaskState::Ready
            || !same_json(&task.step, r#"{"M":{"B":2}}"#)
        {
            problems.push(format!("rescoped: {task:?}"));
        }
        let unscoped = store.unscope(&["M.B".to_string()]).await?;
        let again = store.unscope(&["M.B".to_string()]).await?;
        if unscoped != 1 || again != 0 {
            problems.push(format!("unscoped {unscoped}, then {again}"));
        }
        Ok(problems)
    })
}

/// The worker's wakeups: a new task wakes it, a cancel of a task it holds
/// tells it which.
fn listeners_hear_enqueues_and_cancels<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let mut listener = store.listen().await?;
        let deadline = Duration::from_secs(10);
        // The listener waits before the enqueue (SQLite wakes only those
        // waiting), and both run on this one thread.
        let (woken, id) = tokio::join!(tokio::time::timeout(deadline, listener.recv()), async {
            let id = D::insert(t.db(), step_a("1"), Wakeup::Now).await;
            D::enqueued();
            id
        });
        let id = id?;
        if !matches!(woken, Ok(Ok(Notice::Wake))) {
            problems.push(format!("after an enqueue the listener heard {woken:?}"));
        }
        claim_one(store, "M.A").await?;
        let (heard, cancelled) = tokio::join!(
            tokio::time::timeout(deadline, async {
                loop {
                    match listener.recv().await? {
                        Notice::Cancel(id) => return Ok::<_, Error>(id),
                        Notice::Wake | Notice::Stop => continue,
                    }
                }
            }),
            D::cancel(t.db(), id, "stop it".into(), false)
        );
        if cancelled? != Cancel::Cancelled || !matches!(heard, Ok(Ok(heard)) if heard == id) {
            problems.push(format!(
                "after cancelling {id} the listener heard {heard:?}"
            ));
        }
        store
            .notify_errors(&[r#"{"task_id":1}"#.to_string()])
            .await?;
        Ok(problems)
    })
}

/// Migrations apply once: migrating again changes nothing, loses nothing.
fn migrating_again_changes_nothing<D: Tested>(t: &Under<D>) -> Checked<'_> {
    Box::pin(async move {
        let id = D::insert(t.db(), step_a("1"), Wakeup::Now).await?;
        D::migrate(&t.pool).await?;
        let task = t.task(id).await?;
        Ok(if same_json(&task.step, r#"{"M":{"A":1}}"#) {
            Vec::new()
        } else {
            vec![format!("after migrating again: {task:?}")]
        })
    })
}

/// Runs `checks` in turn on `under`; the problems of all of them.
async fn run_checks<D: Tested>(under: &Under<D>, checks: &[Check<D>]) -> TestResult<Vec<String>> {
    let mut problems = Vec::new();
    for check in checks {
        problems.extend(check(under).await?);
    }
    Ok(problems)
}

/// The step of every task the checks start with.
const STEP_A: &str = r#"{"M": {"A": {"text": "a \"quote\", a \\, a ✓ and a\nline"}}}"#;

/// Inserts `tasks` tasks of step [`STEP_A`].
async fn insert_tasks<D: Tested>(pool: &sqlx::Pool<D>, tasks: usize) -> TestResult {
    if tasks > 0 {
        let rows = vec![format!("('{STEP_A}')"); tasks].join(", ");
        let sql = format!("INSERT INTO jetpack_tasks (step) VALUES {rows}");
        D::on(pool).execute(sqlx::AssertSqlSafe(sql)).await?;
    }
    Ok(())
}

/// A fresh SQLite file's directory and URL.
pub(crate) fn sqlite_file(what: &str) -> TestResult<(std::path::PathBuf, String)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "jetpack_unit_{what}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("unit.db").display());
    Ok((dir, url))
}

/// Runs `checks` on a fresh SQLite file holding `tasks` ready tasks of step
/// [`STEP_A`], once on the worker's statements for a few tasks and once on
/// those for batches; fails with every problem they found.
async fn on_sqlite(tasks: usize, checks: &[Check<sqlx::Sqlite>]) -> TestResult {
    let mut problems = Vec::new();
    for (paths, few) in [("few-task statements", usize::MAX), ("batch statements", 0)] {
        let (dir, url) = sqlite_file("conformance")?;
        let pool = sqlite::connect(&url).await?;
        let found = async {
            <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
            insert_tasks(&pool, tasks).await?;
            let under = Under {
                store: Pooled::with(
                    pool.clone(),
                    sqlite::SqliteHandle::with_few(pool.clone(), few),
                ),
                pool: pool.clone(),
            };
            run_checks(&under, checks).await
        }
        .await;
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        problems.extend(found?.into_iter().map(|p| format!("({paths}) {p}")));
    }
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}

/// [`on_sqlite`] on a fresh PostgreSQL database.
async fn on_postgres(tasks: usize, checks: &[Check<sqlx::Postgres>]) -> TestResult {
    let (admin, name, pool) = pg_database().await?;
    let problems = async {
        insert_tasks(&pool, tasks).await?;
        let under = Under {
            store: Pooled::new(pool.clone()),
            pool: pool.clone(),
        };
        run_checks(&under, checks).await
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    let problems = problems?;
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}

/// Runs each set of checks on both backends, as the tests `<set>::sqlite`
/// and `<set>::postgres`, on a fresh database holding `tasks` ready tasks.
macro_rules! on_both {
    ($($(#[$meta:meta])* $set:ident($tasks:expr) = [$($check:ident),+ $(,)?];)+) => {$(
        $(#[$meta])*
        mod $set {
            use super::*;

            #[tokio::test]
            async fn sqlite() -> TestResult {
                on_sqlite($tasks, &[$($check::<sqlx::Sqlite>),+]).await
            }

            #[tokio::test]
            async fn postgres() -> TestResult {
                on_postgres($tasks, &[$($check::<sqlx::Postgres>),+]).await
            }
        }
    )+};
}

on_both! {
    /// Claims and completions, by the worker's statements.
    claims_and_batches(4) = [
        a_claim_returns_the_step_as_stored,
        a_batch_writes_only_what_attempts_held,
    ];
    completed_attempt(1) = [completed_attempt_is_inert];
    retention(2) = [kept_tasks_are_cleaned_after_their_period];
    failures_in_one_flush(4) = [every_kind_of_outcome_in_one_flush];
    stale_and_live_attempts(1) = [a_stale_and_a_live_attempt_in_one_flush];
    /// Two tasks for the next-step check (which finishes them), one for the lease.
    leases_and_next_steps(3) = [
        a_next_step_due_now_is_claimable_at_once,
        a_lease_holds_until_it_expires,
    ];
    limited_leases(2) = [a_limited_lease_is_not_revived];
    given_back(0) = [attempts_given_back_and_rescoped];
    wakeups(0) = [listeners_hear_enqueues_and_cancels];
    /// The caller's statements, from an empty table.
    enqueues(0) = [inserts_read_back_as_stored, keys_and_windows];
    admin(0) = [admin_reads_and_changes, one_task_resumed_cancelled_and_redriven];
    children(0) = [children_live_and_die_with_the_step];
    joins(0) = [a_join_reads_its_ended_children];
    signals(0) = [signals_end_waits];
    history(0) = [history_records_outcomes];
    registry(0) = [the_registry_keeps_graphs];
    schedules(0) = [a_tick_fires_once];
    limits(0) = [passed_windows_are_cleaned];
    migrations(0) = [migrating_again_changes_nothing];
}

/// The first migration of the explicit lifecycle.
const LIFECYCLE: i64 = 20261202000000;

/// Only the migrations before the lifecycle.
fn before_lifecycle(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let before: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < LIFECYCLE)
        .cloned()
        .collect();
    migrator.migrations = before.into();
    migrator
}

/// Two tasks written before the lifecycle, one of them parked.
const OLD_ROWS: &str = r#"INSERT INTO jetpack_tasks (step, kind, error)
    VALUES ('{"M":{"A":null}}', 'M.A', NULL), ('{"M":{"A":null}}', 'M.A', 'broken')"#;

/// After the lifecycle migration the parked row is 'parked', the other
/// 'ready' and claimed as before.
async fn lifecycle_states_after_migrating(store: &dyn Store) -> TestResult {
    let states = store.states(&[1, 2]).await?;
    let mut states: Vec<(i64, &str)> = states.iter().map(|(i, s)| (*i, s.as_str())).collect();
    states.sort();
    assert_eq!(states, [(1, "ready"), (2, "parked")]);
    let claimed = store
        .claim(10, &["M.A".to_string()], "w", Duration::from_secs(30))
        .await?;
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, [1], "only the ready task is claimed");
    Ok(())
}

/// A database migrated before the lifecycle migrates in place, with no
/// task lost or changed in meaning.
#[tokio::test]
async fn postgres_migrates_to_the_lifecycle_in_place() -> TestResult {
    let (admin, name, pool) = pg_empty_database().await?;
    let result = async {
        let mut old = sqlx::migrate!("../migrations/postgres");
        old.dangerous_set_table_name("_jetpack_migrations");
        before_lifecycle(old).run(&pool).await?;
        sqlx::query(OLD_ROWS).execute(&pool).await?;
        <sqlx::Postgres as Migrations>::migrate(&pool).await?;
        lifecycle_states_after_migrating(&Pooled::<sqlx::Postgres>::new(pool.clone())).await
    }
    .await;
    drop_pg(admin, &name, pool).await?;
    result
}

/// [`postgres_migrates_to_the_lifecycle_in_place`] on SQLite.
#[tokio::test]
async fn sqlite_migrates_to_the_lifecycle_in_place() -> TestResult {
    let dir = std::env::temp_dir().join(format!("jetpack_unit_life_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("unit.db").display());
    let pool = sqlite::connect(&url).await?;
    let result = async {
        before_lifecycle(sqlite::migrator()).run(&pool).await?;
        sqlx::query(OLD_ROWS).execute(&pool).await?;
        <sqlx::Sqlite as Migrations>::migrate(&pool).await?;
        lifecycle_states_after_migrating(&Pooled::<sqlx::Sqlite>::new(pool.clone())).await
    }
    .await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A fresh PostgreSQL database with Jetpack's tables, dropped by `drop_pg`.
pub(crate) async fn pg_database() -> TestResult<(sqlx::PgConnection, String, sqlx::PgPool)> {
    let (admin, name, pool) = pg_empty_database().await?;
    <sqlx::Postgres as Migrations>::migrate(&pool).await?;
    Ok((admin, name, pool))
}

/// A fresh, empty PostgreSQL database, dropped by `drop_pg`.
pub(crate) async fn pg_empty_database() -> TestResult<(sqlx::PgConnection, String, sqlx::PgPool)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let admin_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {admin_url}: {e}; start it or set DATABASE_URL")
        });
    let name = format!(
        "jetpack_unit_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let create = format!("CREATE DATABASE {name}");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await?;
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("DATABASE_URL has no database part"),
    };
    let pool = sqlx::PgPool::connect(&url).await?;
    Ok((admin, name, pool))
}

pub(crate) async fn drop_pg(
    mut admin: sqlx::PgConnection,
    name: &str,
    pool: sqlx::PgPool,
) -> TestResult {
    pool.close().await;
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&mut admin)
        .await?;
    Ok(())
}
