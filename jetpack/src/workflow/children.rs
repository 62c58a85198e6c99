//! Child tasks: spawned by a step in its own transaction, joined by the step
//! that follows, their typed results read there.

use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::model::BoxFuture;
use crate::model::Error;
use crate::model::{Encoded, TaskState};
use crate::workflow::context::{lock, Context};
use crate::workflow::machine::to_json;
use crate::workflow::machine::{Machine, TaskOf};
use crate::workflow::policy::StepError;

/// A child task of machine `M`, as [`Context::spawn`] returns it. Keep it in
/// the join step's fields (it is stored as the child's id): the join step
/// reads the child's result, typed `M::Output`, with [`Context::result`].
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Child<M> {
    id: i64,
    #[serde(skip)]
    _machine: PhantomData<fn() -> M>,
}

impl<M> Child<M> {
    fn new(id: i64) -> Self {
        Child {
            id,
            _machine: PhantomData,
        }
    }

    /// The child task's id.
    pub fn id(&self) -> i64 {
        self.id
    }
}

impl<M> Clone for Child<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Child<M> {}

impl<M> PartialEq for Child<M> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<M> Eq for Child<M> {}

impl<M> std::hash::Hash for Child<M> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<M> fmt::Debug for Child<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Child<{}>({})", std::any::type_name::<M>(), self.id)
    }
}

/// What an awaited child that parks does to its parent's join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OnPark {
    /// The parent keeps waiting: fix the child (and clear its `error`), and
    /// the family goes on. The default.
    #[default]
    Wait,
    /// The parent parks too, its `error` naming the child. Clearing the
    /// parent's error puts it back to waiting for the children left.
    Fail,
    /// The park ends the child for the join: the join step reads its error as
    /// its result (`Err(ChildError)`).
    Result,
}

impl OnPark {
    /// The `awaited` column's value.
    fn column(self) -> &'static str {
        match self {
            OnPark::Wait => "wait",
            OnPark::Fail => "fail",
            OnPark::Result => "error",
        }
    }
}

/// An awaited child that did not finish: cancelled, or parked under
/// [`OnPark::Result`]. The join step reads it in place of the child's result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildError {
    /// The child's id.
    pub id: i64,
    /// Its state: [`TaskState::Cancelled`] or [`TaskState::Parked`].
    pub state: TaskState,
    /// Its `error`: why it parked, or the reason it was cancelled.
    pub error: String,
}

impl fmt::Display for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.state {
            TaskState::Cancelled => "was cancelled",
            TaskState::Parked => "parked",
            _ => "did not finish",
        };
        write!(f, "child task {} {how}: {}", self.id, self.error)
    }
}

impl std::error::Error for ChildError {}

/// A child about to be spawned: [`Context::spawn`]. `.await` it.
#[must_use = "a child is spawned when the `Spawn` is awaited"]
pub struct Spawn<'c, M> {
    inner: SpawnAll<'c, M>,
}

/// Children about to be spawned: [`Context::spawn_all`]. `.await` it.
#[must_use = "children are spawned when the `SpawnAll` is awaited"]
pub struct SpawnAll<'c, M> {
    cx: &'c Context<'c>,
    tasks: Result<Vec<Encoded>, Error>,
    awaited: Option<OnPark>,
    _machine: PhantomData<fn() -> M>,
}

impl<M> SpawnAll<'_, M> {
    /// What a child that parks does to the join (the default:
    /// [`OnPark::Wait`]).
    pub fn on_park(mut self, on_park: OnPark) -> Self {
        if self.awaited.is_some() {
            self.awaited = Some(on_park);
        }
        self
    }

    /// Not awaited: the children run on their own, and no join waits for them
    /// (their rows still name their parent, and a cancel of the parent with
    /// its descendants reaches them).
    pub fn detached(mut self) -> Self {
        self.awaited = None;
        self
    }
}

impl<M> Spawn<'_, M> {
    /// What the child does to the join if it parks (the default:
    /// [`OnPark::Wait`]).
    pub fn on_park(self, on_park: OnPark) -> Self {
        Spawn {
            inner: self.inner.on_park(on_park),
        }
    }

    /// Not awaited: see [`SpawnAll::detached`].
    pub fn detached(self) -> Self {
        Spawn {
            inner: self.inner.detached(),
        }
    }
}

impl<'c, M: Machine> IntoFuture for SpawnAll<'c, M> {
    type Output = Result<Vec<Child<M>>, Error>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let tasks = self.tasks?;
            if tasks.is_empty() {
                return Ok(Vec::new());
            }
            let awaited = self.awaited.map(OnPark::column);
            let ids = self.cx.insert_children(tasks, awaited).await?;
            Ok(ids.into_iter().map(Child::new).collect())
        })
    }
}

impl<'c, M: Machine> IntoFuture for Spawn<'c, M> {
    type Output = Result<Child<M>, Error>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let children = self.inner.await?;
            children.into_iter().next().ok_or_else(|| {
                Error::Completion("the database returned no id for the child task".into())
            })
        })
    }
}

/// A child's result, as the join step reads it.
type ChildResult<M> = Result<<M as Machine>::Output, ChildError>;

/// The results of a join's children of one machine, by id.
type ChildResults<M> = Vec<(Child<M>, ChildResult<M>)>;

impl<'a> Context<'a> {
    /// Starts `task` (a step or a value of machine `M`) as a child of this
    /// task, in the step's transaction ([`Context::tx`]): it exists once this
    /// step's outcome is written, and never if the step fails. Awaited by
    /// default: a step that returns [`NextStep::join`](crate::NextStep::join)
    /// waits for it; one that returns anything else leaves it detached.
    ///
    /// The child's row has `parent_id` set to this task's id. Spawning opens
    /// the step's transaction, so the step's outcome is written with it, not
    /// in the worker's batches. Under a [`TestContext`](crate::TestContext)
    /// without a pool, children are recorded instead
    /// ([`TestContext::spawned`](crate::TestContext::spawned)).
    pub fn spawn<T: TaskOf>(&self, task: T) -> Spawn<'_, T::Machine> {
        Spawn {
            inner: self.spawn_all([task]),
        }
    }

    /// Starts many children at once (one statement): see [`spawn`](Self::spawn).
    pub fn spawn_all<T: TaskOf>(
        &self,
        tasks: impl IntoIterator<Item = T>,
    ) -> SpawnAll<'_, T::Machine> {
        SpawnAll {
            cx: self,
            tasks: tasks.into_iter().map(to_json).collect(),
            awaited: Some(OnPark::Wait),
            _machine: PhantomData,
        }
    }

    /// The result of `child`, in a join step: `Ok(output)` when it finished,
    /// `Err(ChildError)` when it was cancelled or parked under
    /// [`OnPark::Result`]. Fails the step for good when `child` is not one
    /// of this task's awaited children that ended, or its result does not
    /// decode as `M::Output`.
    pub fn result<'c, M: Machine>(
        &'c self,
        child: &Child<M>,
    ) -> BoxFuture<'c, Result<ChildResult<M>, StepError>> {
        let id = child.id;
        Box::pin(async move {
            let rows = self.child_rows(None, Some(id)).await?;
            match rows.into_iter().next() {
                Some(row) => self.decode_child::<M>(row),
                None => Err(StepError::permanent(format!(
                    "task {id} is not a child of task {} that its join counted: a join step \
                     reads the children spawned by the step that joined them, once they ended",
                    self.task_id
                ))),
            }
        })
    }

    /// The results of every child of machine `M` this task's join waited
    /// for, by id: see [`result`](Self::result).
    pub fn results<M: Machine>(&self) -> BoxFuture<'_, Result<ChildResults<M>, StepError>> {
        Box::pin(async move {
            let rows = self.child_rows(Some(M::NAME), None).await?;
            rows.into_iter()
                .map(|row| {
                    let child = Child::new(row.0);
                    Ok((child, self.decode_child::<M>(row)?))
                })
                .collect()
        })
    }

    async fn child_rows(
        &self,
        machine: Option<&str>,
        child: Option<i64>,
    ) -> Result<Vec<crate::driver::ChildRow>, StepError> {
        Ok(self
            .shared
            .store()?
            .child_results(self.task_id, machine, child)
            .await?)
    }

    fn decode_child<M: Machine>(
        &self,
        (id, state, result, error): crate::driver::ChildRow,
    ) -> Result<ChildResult<M>, StepError> {
        let state = TaskState::parse(&state)?;
        if state != TaskState::Finished {
            let error = error.unwrap_or_else(|| {
                format!("it is {state:?}: it was resumed after the join counted it")
            });
            return Ok(Err(ChildError { id, state, error }));
        }
        let json = result.as_deref().unwrap_or("null");
        serde_json::from_str(json).map(Ok).map_err(|e| {
            StepError::permanent(format!(
                "the result of child task {id} of task {} does not decode as {}: {e} (result: {json})",
                self.task_id,
                std::any::type_name::<M::Output>()
            ))
        })
    }

    /// Inserts children in the step's transaction, opening it if needed.
    async fn insert_children(
        &self,
        tasks: Vec<Encoded>,
        awaited: Option<&'static str>,
    ) -> Result<Vec<i64>, Error> {
        if let Some(spawned) = &self.shared.spawned {
            // A TestContext without a pool: recorded, not inserted.
            let mut spawned = lock(spawned);
            let first = 1001 + i64::try_from(spawned.len()).unwrap_or(0);
            let ids: Vec<i64> = (first..).take(tasks.len()).collect();
            for (&id, task) in ids.iter().zip(&tasks) {
                spawned.push(super::Spawned {
                    id,
                    kind: task.kind(),
                    step: task.json.clone(),
                    awaited: awaited.is_some(),
                });
            }
            return Ok(ids);
        }
        let mut slot = self.tx.lock().await;
        let tx = match &mut *slot {
            Some(tx) => tx,
            None => slot.insert(self.shared.store()?.begin().await?),
        };
        let ids = (self.shared.store()?)
            .insert_children(&mut **tx, self.task_id, awaited, tasks)
            .await?;
        if awaited.is_some() {
            self.awaits_children.store(true, Ordering::Relaxed);
        }
        Ok(ids)
    }

    /// After the step returned: children it spawned awaited are detached
    /// unless it joins them.
    pub(crate) async fn settle_children(&self, joins: bool) -> Result<(), Error> {
        if joins || !self.awaits_children.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut slot = self.tx.lock().await;
        match &mut *slot {
            Some(tx) => {
                (self.shared.store()?)
                    .detach_children(&mut **tx, self.task_id)
                    .await
            }
            None => Ok(()),
        }
    }
}
