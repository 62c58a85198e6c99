//! Workflows: a step's children (inserted in its transaction, detached, read
//! by its join), signals and the waits they end, the states of tasks.

use async_trait::async_trait;
use sqlx::{Encode, Executor, FromRow, IntoArguments, Type};

use super::Base;
use crate::model::{BoxFuture, Delivery, Encoded, Error, SignalTo};

/// A child's row as a join step reads it: id, state, result, error.
pub(crate) type ChildRow = (i64, String, Option<String>, Option<String>);

/// The statements of workflows.
#[async_trait]
pub trait Workflows: Base {
    /// Inserts children of task `parent` in the step's transaction `tx`,
    /// awaited by the parent's join as `awaited` says (`None`: detached);
    /// their ids, in order.
    async fn insert_children(
        tx: &mut Self::Connection,
        parent: i64,
        awaited: Option<&str>,
        steps: Vec<Encoded>,
    ) -> Result<Vec<i64>, Error>;

    /// Detaches the awaited children of `parent` (its step did not join them).
    async fn detach_children(tx: &mut Self::Connection, parent: i64) -> Result<(), Error>;

    /// The children of `parent` its join counted, of `machine` (all when
    /// `None`) or only `child`.
    async fn child_results(
        db: &Self::Handle,
        parent: i64,
        machine: Option<&str>,
        child: Option<i64>,
    ) -> Result<Vec<ChildRow>, Error>;

    /// Delivers signal `name` with `payload` to a task.
    fn signal<'e, E>(
        db: E,
        to: SignalTo,
        name: &'static str,
        payload: String,
    ) -> BoxFuture<'e, Result<Delivery, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Makes up to `limit` waiting tasks whose deadline passed ready, without
    /// a signal; how many.
    async fn expire_waits(db: &Self::Handle, limit: usize) -> Result<u64, Error>;

    /// The `state` of each of the tasks `ids` that exists.
    async fn states(db: &Self::Handle, ids: &[i64]) -> Result<Vec<(i64, String)>, Error>;
}

/// [`Workflows::detach_children`] by statement `sql` (`$1` the parent).
pub(crate) async fn detach_children<D>(
    tx: &mut D::Connection,
    sql: &'static str,
    parent: i64,
) -> Result<(), Error>
where
    D: sqlx::Database,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
{
    sqlx::query(sql).bind(parent).execute(&mut *tx).await?;
    Ok(())
}

/// [`Workflows::child_results`] by statement `sql` (`$1` the parent, `$2`
/// the machine or NULL, `$3` the child or NULL).
pub(crate) async fn child_results<D>(
    pool: &sqlx::Pool<D>,
    sql: &'static str,
    parent: i64,
    machine: Option<&str>,
    child: Option<i64>,
) -> Result<Vec<ChildRow>, Error>
where
    D: sqlx::Database,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D> + Type<D>,
    for<'q> Option<String>: Encode<'q, D> + Type<D>,
    for<'r> ChildRow: FromRow<'r, D::Row>,
{
    Ok(sqlx::query_as(sql)
        .bind(parent)
        .bind(machine.map(str::to_owned))
        .bind(child)
        .fetch_all(pool)
        .await?)
}
