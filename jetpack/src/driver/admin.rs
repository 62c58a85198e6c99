//! The admin API's statements: finding, listing, counting and changing tasks.
//! What both backends do alike (binding a filter, reading rows) is written
//! once here, over each backend's statements ([`AdminStatements`]).

use sqlx::{Encode, Executor, FromRow, IntoArguments, Type};

use super::Base;
use crate::model::{
    counted, BoxFuture, Cancel, Change, Count, Error, Filter, Related, Tallies, Tally, TaskRow,
};

/// A backend's statements of the admin API and what tells its rows apart;
/// [`Admin`] runs them.
pub trait AdminStatements: Base {
    /// Task `$1`.
    const FIND: &'static str;
    /// The graph machine `$1` has recorded.
    const RECORDED_GRAPH: &'static str;
    /// Every recorded graph, by machine name.
    const RECORDED_GRAPHS: &'static str;
    /// The children of task `$1`.
    const ADMIN_CHILDREN: &'static str;
    /// The tasks of unique key `$1`.
    const ADMIN_BY_KEY: &'static str;
    /// Sets the step of task `$1` to `$2`.
    const ADMIN_EDIT: &'static str;
    /// `(kind, state, count)` of every task.
    const ADMIN_COUNTS: &'static str;
    /// The least and greatest task id.
    const ADMIN_ID_SPAN: &'static str;
    /// `(kind, state, count)` of a systematic sample (see [`Tally::Sample`]).
    const ADMIN_SAMPLE: &'static str;
    /// `(kind, state, count)` of parked and waiting tasks, by their indexes.
    const ADMIN_INDEXED: &'static str;
    /// The tasks of a filter (`$1`…`$5`) after id `$6`, at most `$7`.
    const ADMIN_LIST: &'static str;
    /// [`ADMIN_LIST`](Self::ADMIN_LIST) of parked tasks, by their index.
    const ADMIN_LIST_PARKED: &'static str;
    /// Resumes the parked tasks of a filter.
    const ADMIN_RESUME: &'static str;
    /// Cancels the tasks of a filter, with reason `$6`.
    const ADMIN_CANCEL: &'static str;
    /// Deletes the tasks of a filter.
    const ADMIN_PURGE: &'static str;
    /// `(id, parent, step)` of the tasks of a filter a redrive may move.
    const ADMIN_REDRIVABLE: &'static str;

    /// A task's row as the backend reads it.
    type Found: for<'r> FromRow<'r, Self::Row> + Send + Unpin;

    /// The row as the admin API returns it.
    fn task_row(row: Self::Found) -> Result<TaskRow, Error>;

    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// After a change by hand: wakes this process's workers (SQLite; on
    /// PostgreSQL the triggers notify every worker).
    fn changed() {}

    /// Makes parked task `id` ready again; whether it was parked.
    fn resume<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<bool, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Cancels task `id` (and, with `descendants`, its descendants).
    fn cancel<'e, E>(
        db: E,
        id: i64,
        reason: String,
        descendants: bool,
    ) -> BoxFuture<'e, Result<Cancel, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Moves each `(id, parent, step)` of `moves` to `step` of `kind`.
    fn admin_redrive<'e, E>(
        db: E,
        moves: Vec<(i64, i64, String)>,
        kind: String,
    ) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;
}

/// The admin API's reads and changes, the same on every backend.
pub trait Admin: AdminStatements {
    /// Task `id`.
    fn find<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Option<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The graph machine `machine` recorded.
    fn recorded_graph<'e, E>(
        db: E,
        machine: String,
    ) -> BoxFuture<'e, Result<Option<String>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Every recorded graph.
    fn recorded_graphs<'e, E>(db: E) -> BoxFuture<'e, Result<Vec<String>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The children of a task, or the tasks of a unique key.
    fn admin_tasks<'e, E>(db: E, which: Related) -> BoxFuture<'e, Result<Vec<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Sets the step of task `id`; how many rows changed.
    fn admin_edit<'e, E>(db: E, id: i64, step: String) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// Resumes, cancels or purges the tasks of `filter`; how many.
    fn admin_change<'e, E>(
        db: E,
        filter: Filter,
        change: Change,
    ) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The exact counts per step and state.
    fn admin_counts<'e, E>(db: E) -> BoxFuture<'e, Result<Vec<Count>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The least and greatest task id.
    fn admin_id_span<'e, E>(db: E) -> BoxFuture<'e, Result<Option<(i64, i64)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The rows of `(kind, state, count)` an estimate reads.
    fn admin_tally<'e, E>(db: E, which: Tally) -> BoxFuture<'e, Result<Tallies, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// The tasks of `filter`, a page.
    fn admin_list<'e, E>(db: E, filter: Filter) -> BoxFuture<'e, Result<Vec<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;

    /// `(id, parent, step)` of the tasks of `filter` a redrive may move.
    #[allow(clippy::type_complexity)]
    fn admin_redrivable<'e, E>(
        db: E,
        filter: Filter,
    ) -> BoxFuture<'e, Result<Vec<(i64, i64, String)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e;
}

/// Binds an admin filter's five conditions (`$1`…`$5`) to `query`.
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {{
        let older = $filter.older_than_us();
        $query
            .bind($filter.step)
            .bind($filter.machine)
            .bind($filter.state)
            .bind($filter.error_contains)
            .bind(older)
    }};
}

impl<D> Admin for D
where
    D: AdminStatements,
    D::Arguments: IntoArguments<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> Option<String>: Encode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D> + Type<D>,
    for<'r> (String,): FromRow<'r, D::Row>,
    for<'r> (String, String, i64): FromRow<'r, D::Row>,
    for<'r> (Option<i64>, Option<i64>): FromRow<'r, D::Row>,
    for<'r> (i64, i64, String): FromRow<'r, D::Row>,
{
    fn find<'e, E>(db: E, id: i64) -> BoxFuture<'e, Result<Option<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let row: Option<D::Found> = sqlx::query_as(D::FIND).bind(id).fetch_optional(db).await?;
            row.map(D::task_row).transpose()
        })
    }

    fn recorded_graph<'e, E>(db: E, machine: String) -> BoxFuture<'e, Result<Option<String>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let query = sqlx::query_scalar(D::RECORDED_GRAPH).bind(machine);
            Ok(query.fetch_optional(db).await?)
        })
    }

    fn recorded_graphs<'e, E>(db: E) -> BoxFuture<'e, Result<Vec<String>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move { Ok(sqlx::query_scalar(D::RECORDED_GRAPHS).fetch_all(db).await?) })
    }

    fn admin_tasks<'e, E>(db: E, which: Related) -> BoxFuture<'e, Result<Vec<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let rows: Vec<D::Found> = match which {
                Related::Children(id) => {
                    sqlx::query_as(D::ADMIN_CHILDREN)
                        .bind(id)
                        .fetch_all(db)
                        .await?
                }
                Related::Key(key) => {
                    sqlx::query_as(D::ADMIN_BY_KEY)
                        .bind(key)
                        .fetch_all(db)
                        .await?
                }
            };
            rows.into_iter().map(D::task_row).collect()
        })
    }

    fn admin_edit<'e, E>(db: E, id: i64, step: String) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let query = sqlx::query(D::ADMIN_EDIT).bind(id).bind(step);
            Ok(D::rows_affected(&query.execute(db).await?))
        })
    }

    fn admin_change<'e, E>(
        db: E,
        filter: Filter,
        change: Change,
    ) -> BoxFuture<'e, Result<u64, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let sql = match change {
                Change::Resume => D::ADMIN_RESUME,
                Change::Cancel(_) => D::ADMIN_CANCEL,
                Change::Purge => D::ADMIN_PURGE,
            };
            let mut query = bind_filter!(sqlx::query(sql), filter);
            if let Change::Cancel(reason) = change {
                query = query.bind(reason);
            }
            let done = query.execute(db).await?;
            D::changed();
            Ok(D::rows_affected(&done))
        })
    }

    fn admin_counts<'e, E>(db: E) -> BoxFuture<'e, Result<Vec<Count>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let rows: Tallies = sqlx::query_as(D::ADMIN_COUNTS).fetch_all(db).await?;
            counted(rows)
        })
    }

    fn admin_id_span<'e, E>(db: E) -> BoxFuture<'e, Result<Option<(i64, i64)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (lo, hi): (Option<i64>, Option<i64>) =
                sqlx::query_as(D::ADMIN_ID_SPAN).fetch_one(db).await?;
            Ok(lo.zip(hi))
        })
    }

    fn admin_tally<'e, E>(db: E, which: Tally) -> BoxFuture<'e, Result<Tallies, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let query = match which {
                Tally::Sample {
                    first,
                    stride,
                    strata,
                } => sqlx::query_as(D::ADMIN_SAMPLE)
                    .bind(first)
                    .bind(stride)
                    .bind(strata),
                Tally::Indexed { limit } => sqlx::query_as(D::ADMIN_INDEXED).bind(limit),
            };
            Ok(query.fetch_all(db).await?)
        })
    }

    fn admin_list<'e, E>(db: E, filter: Filter) -> BoxFuture<'e, Result<Vec<TaskRow>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let (after, limit) = (filter.after_id, i64::from(filter.limit.unwrap_or(100)));
            let sql = match filter.state.as_deref() {
                Some("parked") => D::ADMIN_LIST_PARKED,
                _ => D::ADMIN_LIST,
            };
            let rows: Vec<D::Found> = bind_filter!(sqlx::query_as(sql), filter)
                .bind(after)
                .bind(limit)
                .fetch_all(db)
                .await?;
            rows.into_iter().map(D::task_row).collect()
        })
    }

    fn admin_redrivable<'e, E>(
        db: E,
        filter: Filter,
    ) -> BoxFuture<'e, Result<Vec<(i64, i64, String)>, Error>>
    where
        E: Executor<'e, Database = Self> + 'e,
    {
        Box::pin(async move {
            let query = bind_filter!(sqlx::query_as(D::ADMIN_REDRIVABLE), filter);
            Ok(query.fetch_all(db).await?)
        })
    }
}
