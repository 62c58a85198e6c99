//! What the operator's calls take and give: filters, counts, bulk changes.

use std::time::Duration;

use super::{micros, Error, TaskState};

/// Which tasks an operation takes: all that match every condition given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    /// Tasks at this step (`Machine.Step`).
    pub step: Option<String>,
    /// Tasks of this machine.
    pub machine: Option<String>,
    /// Tasks in this `state` (the column: ready, waiting, parked, cancelled,
    /// finished).
    pub state: Option<String>,
    /// Tasks whose `error` contains this text.
    pub error_contains: Option<String>,
    /// Tasks not updated for at least this long.
    pub older_than: Option<Duration>,
    /// Tasks with an id above this (to page through a list).
    pub after_id: Option<i64>,
    /// At most this many (lists only; 100 by default).
    pub limit: Option<u32>,
}

impl Filter {
    /// Every task.
    pub fn new() -> Self {
        Filter::default()
    }

    /// Tasks at step `kind` (`Machine.Step`).
    pub fn step(mut self, kind: impl Into<String>) -> Self {
        self.step = Some(kind.into());
        self
    }

    /// Tasks of machine `name`.
    pub fn machine(mut self, name: impl Into<String>) -> Self {
        self.machine = Some(name.into());
        self
    }

    /// Parked tasks.
    pub fn parked(self) -> Self {
        self.state("parked")
    }

    /// Tasks in `state` (ready, waiting, parked, cancelled, finished).
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Tasks whose error contains `text`.
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Tasks not updated for `age`.
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Tasks with an id above `id`.
    pub fn after_id(mut self, id: i64) -> Self {
        self.after_id = Some(id);
        self
    }

    /// At most `n` tasks in a list.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// Refuses a state that no task can be in.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(state) = &self.state {
            if !["ready", "waiting", "parked", "cancelled", "finished"].contains(&state.as_str()) {
                return Err(Error::Admin(format!(
                    "unknown state {state:?}: use ready, waiting, parked, cancelled or finished"
                )));
            }
        }
        micros(self.older_than.unwrap_or_default())?;
        Ok(())
    }

    /// The age in µs, as the statements bind it.
    pub(crate) fn older_than_us(&self) -> Option<i64> {
        self.older_than
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    /// What it says, for an error that nothing matched.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.step {
            parts.push(format!("step {s}"));
        }
        if let Some(m) = &self.machine {
            parts.push(format!("machine {m}"));
        }
        if let Some(s) = &self.state {
            parts.push(format!("state {s}"));
        }
        if let Some(e) = &self.error_contains {
            parts.push(format!("error containing {e:?}"));
        }
        if let Some(a) = &self.older_than {
            parts.push(format!("older than {a:?}"));
        }
        if parts.is_empty() {
            "any task".into()
        } else {
            parts.join(", ")
        }
    }
}

/// How many tasks are at one step in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Count {
    /// The step, `Machine.Step`.
    pub kind: String,
    /// The state, with running and scheduled told apart from ready.
    pub state: TaskState,
    /// How many.
    pub count: i64,
    /// Whether `count` is an estimate ([`estimated_counts`](crate::admin::estimated_counts) on a big
    /// table)
    /// rather than a count of every row.
    pub estimated: bool,
}

impl Count {
    pub(crate) fn read(
        kind: String,
        state: &str,
        count: i64,
        estimated: bool,
    ) -> Result<Self, Error> {
        Ok(Count {
            kind,
            state: TaskState::parse(state)?,
            count,
            estimated,
        })
    }
}

/// What a bulk change does to the tasks it takes.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Clear the error of parked tasks.
    Resume,
    /// Cancel live tasks with this reason.
    Cancel(String),
    /// Delete finished and cancelled tasks.
    Purge,
}

/// Counts from rows `(kind, state, count)`.
pub(crate) fn counted(rows: Tallies) -> Result<Vec<Count>, Error> {
    rows.into_iter()
        .map(|(kind, state, count)| Count::read(kind, &state, count, false))
        .collect()
}

/// Rows of counts as the backends read them: step, state, count.
#[doc(hidden)]
pub type Tallies = Vec<(String, String, i64)>;

/// Which rows of `(kind, state, count)` a backend reads for
/// [`estimated_counts`](crate::admin::estimated_counts).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Tally {
    /// The tasks with ids in `[first + i * stride, first + i * stride + 20)`
    /// for `i` in `0..strata`, per step and state.
    Sample {
        first: i64,
        stride: i64,
        strata: i64,
    },
    /// Parked and waiting tasks through their partial indexes, at most
    /// `limit` rows of each.
    Indexed { limit: i64 },
}

/// Tasks related to others, for [`children`](crate::admin::children) and
/// [`by_key`](crate::admin::by_key).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Related {
    /// The children of a task.
    Children(i64),
    /// The tasks holding a key.
    Key(String),
}
