//! The conformance checks of the caller's statements: enqueues and keys, the
//! admin API, children and joins, signals, the history, the registry,
//! schedules, limits, migrations.

use super::*;

/// Enqueues: `insert` at each kind of wakeup and `insert_many` store the
/// steps as given, due as asked; `find` reads them back, and nothing for an
/// id that is not there.
pub(super) fn inserts_read_back_as_stored<D: Tested>(t: &Under<D>) -> Checked<'_> {
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

/// The keyed statements, in one transaction: a unique key is held by one
/// live task until it is detached; a holder's step is replaced in place; a
/// throttle's window is taken once, and tells which task took it.
pub(super) fn keys_and_windows<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn admin_reads_and_changes<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn one_task_resumed_cancelled_and_redriven<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn children_live_and_die_with_the_step<D: Tested>(t: &Under<D>) -> Checked<'_> {
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

/// A child awaited by its parent's join is counted there once it finished,
/// with its state; the join of one machine or one child reads only those.
pub(super) fn a_join_reads_its_ended_children<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn signals_end_waits<D: Tested>(t: &Under<D>) -> Checked<'_> {
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

/// The history: switched on and off; a task's row is the record of its
/// enqueue until its first transition, which takes that record in with it;
/// an attempt's outcome recorded with it reads back as the task's
/// transition, counted at a moment and by minute.
pub(super) fn history_records_outcomes<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        let since = chrono::Utc::now() - chrono::Duration::minutes(1);
        D::set_history(t.db(), true).await?;
        if !store.history_on().await? {
            problems.push("the history is off after switching it on".into());
        }
        let id = D::insert(t.db(), step_a("1"), Wakeup::Now).await?;
        let finished = D::insert(t.db(), step_a("2"), Wakeup::Now).await?;
        let events = |h: &[crate::model::Transition]| -> Vec<String> {
            h.iter().map(|h| h.event.clone()).collect()
        };
        let before = D::history(t.db(), id).await?;
        if events(&before) != ["enqueued"] || before[0].to_kind.as_deref() != Some("M.A") {
            problems.push(format!("the history of a task not yet run: {before:?}"));
        }
        let claimed = store
            .claim(2, &["M.A".to_string()], "w", Duration::from_secs(30))
            .await?;
        let traces = traces_of(&claimed);
        if traces.iter().any(|t| t.enqueued.is_none()) || claimed.len() != 2 {
            problems.push(format!("the claims read no record of enqueue: {claimed:?}"));
        }
        let (next, finish) = (to_b(Wakeup::Now), Outcome::Finish);
        let done: Vec<(i64, i64, &Outcome)> = (claimed.iter())
            .map(|c| (c.id, c.fence, if c.id == id { &next } else { &finish }))
            .collect();
        let history = History {
            worker: "w",
            traces: &traces.iter().collect::<Vec<_>>(),
        };
        store.complete_many(&done, Some(&history)).await?;
        for (task, step, then) in [(id, "1", "next"), (finished, "2", "finished")] {
            let transitions = D::history(t.db(), task).await?;
            let first = transitions.first();
            let step = format!(r#"{{"M":{{"A":{step}}}}}"#);
            let enqueued_as_stored = first.is_some_and(|h| {
                h.event == "enqueued"
                    && h.to_kind.as_deref() == Some("M.A")
                    && h.step.as_deref().is_some_and(|s| same_json(s, &step))
                    && h.worker.is_none()
                    && (task != id || h.at == before[0].at)
            });
            let moved = transitions.get(1).is_some_and(|h| {
                h.event == then
                    && h.from_kind.as_deref() == Some("M.A")
                    && h.worker.as_deref() == Some("w")
                    && h.attempt == Some(1)
            });
            if transitions.len() != 2 || !enqueued_as_stored || !moved {
                problems.push(format!("the history of task {task}: {transitions:?}"));
            }
        }
        // Two tasks at their first steps: their rows are their records.
        D::insert(t.db(), step_a("3"), Wakeup::Now).await?;
        D::insert(t.db(), step_a("4"), Wakeup::Now).await?;
        let at = D::counts_at(t.db(), chrono::Utc::now()).await?;
        if at != [("M.A".to_string(), 2), ("M.B".to_string(), 1)] {
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

/// The history of a flush stays exact when rows moved since their claims: a
/// task parked by hand while its step ran has its enqueue recorded with the
/// park, not again with its outcome; an attempt whose task was cancelled
/// meanwhile records nothing.
pub(super) fn history_of_tasks_moved_meanwhile<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        D::set_history(t.db(), true).await?;
        let mut ids = Vec::new();
        for i in 1..=3 {
            ids.push(D::insert(t.db(), step_a(&i.to_string()), Wakeup::Now).await?);
        }
        let (parked, finished, cancelled) = (ids[0], ids[1], ids[2]);
        // (With what earlier checks left at M.A: all are finished.)
        let claimed = store
            .claim(100, &["M.A".to_string()], "w", Duration::from_secs(60))
            .await?;
        for sql in [
            format!("UPDATE jetpack_tasks SET error = 'by hand' WHERE id = {parked}"),
            format!(
                "UPDATE jetpack_tasks SET state = 'cancelled', error = 'gone' WHERE id = {cancelled}"
            ),
        ] {
            D::on(&t.pool).execute(sqlx::AssertSqlSafe(sql)).await?;
        }
        let traces = traces_of(&claimed);
        let next = to_b(Wakeup::Now);
        let done: Vec<(i64, i64, &Outcome)> = (claimed.iter())
            .map(|c| {
                (
                    c.id,
                    c.fence,
                    if c.id == parked {
                        &next
                    } else {
                        &Outcome::Finish
                    },
                )
            })
            .collect();
        let history = History {
            worker: "w",
            traces: &traces.iter().collect::<Vec<_>>(),
        };
        let held = store.complete_many(&done, Some(&history)).await?;
        let held: Vec<(i64, bool)> = done.iter().map(|d| d.0).zip(held).collect();
        if !held.contains(&(cancelled, false)) || held.iter().filter(|h| !h.1).count() != 1 {
            problems.push(format!("held: {held:?}"));
        }
        for (task, expected) in [
            (parked, ["enqueued", "parked", "next"].as_slice()),
            (finished, &["enqueued", "finished"]),
            (cancelled, &["enqueued", "cancelled"]),
        ] {
            let events: Vec<String> = (D::history(t.db(), task).await?.into_iter())
                .map(|h| h.event)
                .collect();
            if events != expected {
                problems.push(format!("the history of task {task}: {events:?}"));
            }
        }
        Ok(problems)
    })
}

/// A flush of one kind of outcome writes its history with it, whether every
/// attempt held its task or one had lost it.
pub(super) fn history_of_a_flush_of_finishes<D: Tested>(t: &Under<D>) -> Checked<'_> {
    let store = &t.store;
    Box::pin(async move {
        let mut problems = Vec::new();
        D::set_history(t.db(), true).await?;
        for lost in [false, true] {
            let mut ids = Vec::new();
            for i in 0..3 {
                ids.push(D::insert(t.db(), step_a(&i.to_string()), Wakeup::Now).await?);
            }
            let claimed = store
                .claim(100, &["M.A".to_string()], "w", Duration::from_secs(60))
                .await?;
            if lost {
                let sql = format!(
                    "UPDATE jetpack_tasks SET state = 'cancelled', error = 'gone' WHERE id = {}",
                    ids[0]
                );
                D::on(&t.pool).execute(sqlx::AssertSqlSafe(sql)).await?;
            }
            let traces = traces_of(&claimed);
            let done: Vec<(i64, i64, &Outcome)> = (claimed.iter())
                .map(|c| (c.id, c.fence, &Outcome::Finish))
                .collect();
            let history = History {
                worker: "w",
                traces: &traces.iter().collect::<Vec<_>>(),
            };
            store.complete_many(&done, Some(&history)).await?;
            for (i, &id) in ids.iter().enumerate() {
                let events: Vec<String> = (D::history(t.db(), id).await?.into_iter())
                    .map(|h| h.event)
                    .collect();
                let expected = if lost && i == 0 {
                    ["enqueued", "cancelled"]
                } else {
                    ["enqueued", "finished"]
                };
                if events != expected {
                    problems.push(format!(
                        "(lost: {lost}) the history of task {id}: {events:?}"
                    ));
                }
            }
        }
        Ok(problems)
    })
}

/// The registry: graphs are recorded and read back; live tasks of kinds a
/// worker does not know are counted.
pub(super) fn the_registry_keeps_graphs<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn a_tick_fires_once<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
pub(super) fn passed_windows_are_cleaned<D: Tested>(t: &Under<D>) -> Checked<'_> {
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

/// Migrations apply once: migrating again changes nothing, loses nothing.
pub(super) fn migrating_again_changes_nothing<D: Tested>(t: &Under<D>) -> Checked<'_> {
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
