//! [`Enqueue`]: one task with its options (when, priority, unique key, what a
//! conflict does, throttle), and [`enqueue_all`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{to_json, Backend, Encoded};
use crate::driver::Enqueues;
use crate::driver::KeyedStatements;
use crate::model::Error;
use crate::model::Window;
pub use crate::model::{Enqueued, NewTask, OnConflict, MAX_PRIORITY};
use crate::workflow::IntoTask;
use crate::workflow::Wakeup;

/// The longest unique or throttle key, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// One task to enqueue, with its options; run it with [`Enqueue::run`], or
/// many at once with [`enqueue_all`].
///
/// ```no_run
/// use std::time::Duration;
/// use jetpack::{Enqueue, Enqueued, OnConflict};
/// # async fn f(pool: sqlx::PgPool, step: impl jetpack::IntoTask) -> Result<(), jetpack::Error> {
/// let sent = Enqueue::new(step)
///     .delay(Duration::from_secs(30))
///     .priority(5)
///     .unique_key("digest-user-7")
///     .on_conflict(OnConflict::Replace)
///     .run(&pool)
///     .await?;
/// if let Enqueued::Replaced(id) = sent {
///     println!("task {id} now runs the newest digest, 30 s from now");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "an Enqueue does nothing until it is run"]
pub struct Enqueue {
    step: Result<Encoded, Error>,
    wakeup: Wakeup,
    priority: Option<u8>,
    unique_key: Option<String>,
    on_conflict: OnConflict,
    throttle: Option<(String, Duration)>,
}

impl Enqueue {
    /// A task starting at `task` (a step, a machine value or a scheduler
    /// value), due now, at its step's priority, with no key.
    pub fn new(task: impl IntoTask) -> Self {
        Enqueue {
            step: to_json(task),
            wakeup: Wakeup::Now,
            priority: None,
            unique_key: None,
            on_conflict: OnConflict::Ignore,
            throttle: None,
        }
    }

    /// Due at `at` (at once if that has passed).
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.wakeup = Wakeup::At(at);
        self
    }

    /// Due after `delay`, on the database clock.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.wakeup = Wakeup::Delay(delay);
        self
    }

    /// The task's priority, 0 to [`MAX_PRIORITY`], higher first; instead of
    /// its step's [`Step::PRIORITY`](crate::Step::PRIORITY). A value above
    /// the maximum is refused when the enqueue runs.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// At most one live task per key: an enqueue while a task holds the key
    /// does what [`on_conflict`](Self::on_conflict) says. The key is held
    /// from enqueue until the task finishes or is cancelled, on every worker
    /// and connection. 1 to 1024 bytes, without NUL.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// What to do when a live task holds the [unique key](Self::unique_key):
    /// [`OnConflict::Ignore`] (the default) or [`OnConflict::Replace`].
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self
    }

    /// A debounce under the [unique key](Self::unique_key): due after
    /// `quiet`, and each enqueue with the key while the task waits to start
    /// replaces its step and pushes its start back by `quiet`, so the last
    /// of a burst runs once, `quiet` after the burst. The same as
    /// `.delay(quiet).on_conflict(OnConflict::Replace)`.
    pub fn debounce(self, quiet: Duration) -> Self {
        self.delay(quiet).on_conflict(OnConflict::Replace)
    }

    /// At most one task per `window` under `key`: the first enqueue with
    /// the key takes the window and stores its task; those after it, until
    /// `window` has passed since, store nothing and answer
    /// [`Enqueued::Throttled`] with that task's id. Independent of the
    /// unique key (a throttled task may also have one).
    pub fn throttle(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.throttle = Some((key.into(), window));
        self
    }

    /// Stores the task, in one transaction on `db` (a pool, a connection,
    /// or your transaction: then it is part of it).
    pub async fn run<'a, A>(self, db: A) -> Result<Enqueued, Error>
    where
        A: sqlx::Acquire<'a>,
        A::Database: Backend,
    {
        let mut done = enqueue_all(db, [self]).await?;
        done.pop()
            .ok_or_else(|| Error::InvalidEnqueue("the database answered nothing".into()))
    }

    /// The task, checked and ready to store.
    fn check(self) -> Result<NewTask, Error> {
        let mut step = self.step?;
        if let Some(priority) = self.priority {
            step.priority = priority;
        }
        if step.priority > MAX_PRIORITY {
            return Err(Error::InvalidEnqueue(format!(
                "priority {} is outside 0 to {MAX_PRIORITY}",
                step.priority
            )));
        }
        let (delay, at) = crate::model::wakeup_binds(&self.wakeup)?;
        if let Some(key) = &self.unique_key {
            check_key("unique key", key)?;
        }
        let throttle = match self.throttle {
            None => None,
            Some((key, window)) => {
                check_key("throttle key", &key)?;
                if window.is_zero() {
                    return Err(Error::InvalidEnqueue(format!(
                        "the throttle window of {key:?} is zero"
                    )));
                }
                Some((key, crate::model::micros(window)?))
            }
        };
        Ok(NewTask {
            step,
            delay,
            at,
            unique_key: self.unique_key,
            on_conflict: self.on_conflict,
            throttle,
        })
    }
}

fn check_key(what: &str, key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
        return Err(Error::InvalidEnqueue(format!(
            "a {what} must be 1 to {MAX_KEY_BYTES} bytes without NUL, not {} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Enqueues every task of `items` in one transaction on `db`, each with its
/// options; answers in order. Tasks with keys are stored in the order of
/// their keys (so that two such calls cannot deadlock), the rest in order;
/// two items with one unique key meet as any two enqueues do (the second
/// finds the first). Every item is checked before anything is stored.
///
/// ```no_run
/// # use jetpack::{Enqueue, Enqueued};
/// # async fn f(pool: sqlx::SqlitePool, steps: Vec<(u32, impl jetpack::IntoTask)>) -> Result<(), jetpack::Error> {
/// let items = steps.into_iter().map(|(user, step)| Enqueue::new(step).unique_key(format!("sync-{user}")));
/// let done = jetpack::enqueue_all(&pool, items).await?;
/// let new = done.iter().filter(|e| e.is_created()).count();
/// # Ok(()) }
/// ```
pub async fn enqueue_all<'a, A, I>(db: A, items: I) -> Result<Vec<Enqueued>, Error>
where
    A: sqlx::Acquire<'a>,
    A::Database: Backend,
    I: IntoIterator<Item = Enqueue>,
{
    let tasks = items
        .into_iter()
        .map(Enqueue::check)
        .collect::<Result<Vec<_>, _>>()?;
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = db.begin().await?;
    let done = store_all(<A::Database>::keyed(&mut *tx), tasks).await?;
    tx.commit().await?;
    <A::Database>::enqueued();
    Ok(done)
}

/// How often a keyed insert is tried when the task holding the key ends
/// between the insert and the look at it, before giving up.
const ATTEMPTS: usize = 100;

/// Stores `tasks` with `db`, inside the caller's transaction: throttled and
/// keyed ones in the order of their keys, the others in order.
async fn store_all<C: KeyedStatements + ?Sized>(
    db: &mut C,
    tasks: Vec<NewTask>,
) -> Result<Vec<Enqueued>, Error> {
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |t: &NewTask| {
            (
                t.throttle.as_ref().map(|(k, _)| k.clone()),
                t.unique_key.clone(),
            )
        };
        key(&tasks[a]).cmp(&key(&tasks[b]))
    });
    let mut done = vec![Enqueued::Created(0); tasks.len()];
    for i in order {
        done[i] = store(db, &tasks[i]).await?;
    }
    Ok(done)
}

async fn store<C: KeyedStatements + ?Sized>(db: &mut C, task: &NewTask) -> Result<Enqueued, Error> {
    if let Some((key, window)) = &task.throttle {
        if let Window::Held(id) = db.take_window(key, *window).await? {
            return Ok(Enqueued::Throttled(id.unwrap_or(0)));
        }
    }
    let stored = store_keyed(db, task).await?;
    if let Some((key, _)) = &task.throttle {
        db.set_window_task(key, stored.id()).await?;
    }
    Ok(stored)
}

async fn store_keyed<C: KeyedStatements + ?Sized>(
    db: &mut C,
    task: &NewTask,
) -> Result<Enqueued, Error> {
    for _ in 0..ATTEMPTS {
        if let Some(id) = db.insert_unless_held(task).await? {
            return Ok(Enqueued::Created(id));
        }
        let Some(key) = &task.unique_key else {
            return Err(Error::InvalidEnqueue(
                "the database stored no task and named no conflict".into(),
            ));
        };
        // The holder may have ended between the insert and now: try again.
        let Some((id, not_started)) = db.holder(key).await? else {
            continue;
        };
        match task.on_conflict {
            OnConflict::Ignore => return Ok(Enqueued::Existing(id)),
            OnConflict::Replace if not_started => {
                db.replace(id, task).await?;
                return Ok(Enqueued::Replaced(id));
            }
            OnConflict::Replace => db.detach(id).await?,
        }
    }
    Err(Error::InvalidEnqueue(format!(
        "the task holding unique key {:?} kept ending and reappearing: gave up after {ATTEMPTS} tries",
        task.unique_key.as_deref().unwrap_or_default()
    )))
}
