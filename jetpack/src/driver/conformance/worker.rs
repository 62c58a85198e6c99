//! The conformance checks of the worker's statements: claims, leases,
//! completions, retention, given-back attempts, wakeups.

use super::*;

/// After an attempt recorded its outcome, its `(id, fence)` must no longer
/// touch the row: a heartbeat or release racing the completion would
/// otherwise move the next step's `wakeup_at` (a delayed step made due at
/// once, or a due step pushed back by a lease).
pub(super) fn completed_attempt_is_inert<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn a_lease_holds_until_it_expires<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn a_limited_lease_is_not_revived<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
                .rescope(task.id, task.fence, "M.A", &task.step, "M.A", None)
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
pub(super) fn a_next_step_due_now_is_claimable_at_once<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn a_batch_writes_only_what_attempts_held<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn a_stale_and_a_live_attempt_in_one_flush<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn a_claim_returns_the_step_as_stored<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn every_kind_of_outcome_in_one_flush<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn kept_tasks_are_cleaned_after_their_period<D: Tested>(t: &Under<D>) -> Checked<'_> {
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

/// Claims given back: a rate-limited attempt is ready later and not counted
/// as tried; a task claimed without its scope is given one and its step's
/// current name; steps with no limit lose their scopes.
pub(super) fn attempts_given_back_and_rescoped<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
        let claimed = store.claim(1, &kinds, "w", Duration::from_secs(30)).await?;
        let [c] = claimed.as_slice() else {
            return Err(format!("claimed {claimed:?}").into());
        };
        // The history takes in the record of its enqueue, as it was stored.
        let enqueued = c.enqueued_at.map(|at| crate::model::EnqueueRecord {
            at,
            kind: c.kind.clone(),
            step: c.step.clone(),
        });
        store
            .rescope(
                b,
                c.fence,
                "M.B",
                r#"{"M":{"B":2}}"#,
                "M.B",
                enqueued.as_ref(),
            )
            .await?;
        let task = t.task(b).await?;
        if task.tried != 0
            || task.state != TaskState::Ready
            || !same_json(&task.step, r#"{"M":{"B":2}}"#)
        {
            problems.push(format!("rescoped: {task:?}"));
        }
        let history = D::history(t.db(), b).await?;
        let recorded = history.first().is_some_and(|h| {
            h.event == "enqueued"
                && h.to_kind.as_deref() == Some("M.A")
                && h.step
                    .as_deref()
                    .is_some_and(|s| same_json(s, r#"{"M":{"A":2}}"#))
        });
        if history.len() != 1 || !recorded {
            problems.push(format!("the history of the rescoped task: {history:?}"));
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
pub(super) fn listeners_hear_enqueues_and_cancels<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
