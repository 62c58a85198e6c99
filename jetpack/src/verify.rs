//! Before a deploy: does every live row still decode with the new binary's
//! types? [`verify`] reads every ready, waiting and parked task and lists the
//! rows of machines or steps the program does not know and the rows that do
//! not decode, with counts and examples, so that a CI job can stop a deploy
//! that would strand them.
//!
//! A feature: imports `model`, `driver`, `admin` and `workflow` (docs/design.md, layers).

use std::collections::BTreeMap;
use std::fmt;

use sqlx::{Acquire, Executor};

use crate::admin::{self, Filter};
use crate::driver::Backend;
use crate::model::{Error, TaskState};
use crate::workflow::Scheduler;

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// How many live tasks it read.
    pub checked: u64,
    /// Live tasks at steps the program does not have: per kind
    /// (`Machine.Step`), how many, and up to 5 ids.
    pub unknown: BTreeMap<String, (u64, Vec<i64>)>,
    /// How many live tasks at known steps do not decode.
    pub undecodable: u64,
    /// Up to 20 of them: id, kind, and the decoding error.
    pub undecodable_examples: Vec<(i64, String, String)>,
}

impl VerifyReport {
    /// Whether every live task is at a known step and decodes.
    pub fn is_ok(&self) -> bool {
        self.unknown.is_empty() && self.undecodable == 0
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} live tasks checked", self.checked)?;
        for (kind, (n, ids)) in &self.unknown {
            writeln!(f, "unknown step {kind}: {n} tasks (e.g. {ids:?})")?;
        }
        if self.undecodable > 0 {
            writeln!(f, "{} tasks do not decode:", self.undecodable)?;
            for (id, kind, error) in &self.undecodable_examples {
                writeln!(f, "  task {id} ({kind}): {error}")?;
            }
        }
        if self.is_ok() {
            writeln!(f, "every live task decodes")?;
        }
        Ok(())
    }
}

/// Reads every live task (ready, waiting, parked) and decodes it as `T`: a
/// deploy of a program whose `VerifyReport` is not [`is_ok`](VerifyReport::is_ok) would
/// leave the tasks it lists without a worker (unknown steps) or park them
/// (rows that do not decode). To rename a step or a field without that, keep
/// the old name readable: `#[serde(alias = "Old")]` on the step's variant
/// (the claim takes rows of that name too) or on the field.
///
/// ```no_run
/// # jetpack::task!(Mail { Send });
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Send { to: String }
/// # #[jetpack::async_trait] impl jetpack::Step<Mail> for Send { async fn step(self, _: &jetpack::Context<'_>) -> jetpack::StepResult<Self> { jetpack::NextStep::none() } }
/// # jetpack::scheduler!(Tasks { Mail });
/// # async fn f(pool: sqlx::PgPool) -> Result<(), jetpack::Error> {
/// let report = jetpack::verify::<Tasks, _>(&pool).await?;
/// print!("{report}");
/// if !report.is_ok() {
///     std::process::exit(1); // fail the deploy
/// }
/// # Ok(()) }
/// ```
pub async fn verify<'a, T, A>(db: A) -> Result<VerifyReport, Error>
where
    T: Scheduler,
    A: Acquire<'a>,
    A::Database: Backend,
    for<'c> &'c mut <A::Database as sqlx::Database>::Connection:
        Executor<'c, Database = A::Database>,
{
    let known: Vec<String> = (T::graphs().iter())
        .flat_map(|g| {
            (g.steps.iter())
                .flat_map(|s| std::iter::once(&s.name).chain(&s.aliases))
                .map(|name| crate::workflow::kind(g.machine, name))
        })
        .collect();
    let mut conn = db.acquire().await?;
    let mut report = VerifyReport::default();
    let mut after = 0;
    loop {
        let page = Filter::new().after_id(after).limit(1000);
        let tasks = admin::list(&mut *conn, &page).await?;
        let Some(last) = tasks.last() else {
            break;
        };
        after = last.id;
        for task in tasks {
            if matches!(task.state, TaskState::Finished | TaskState::Cancelled) {
                continue;
            }
            report.checked += 1;
            let kind = kind_of(&task.step);
            if !known.contains(&kind) {
                let entry = report.unknown.entry(kind).or_default();
                entry.0 += 1;
                if entry.1.len() < 5 {
                    entry.1.push(task.id);
                }
                continue;
            }
            if let Err(e) = serde_json::from_str::<T>(&task.step) {
                report.undecodable += 1;
                if report.undecodable_examples.len() < 20 {
                    report
                        .undecodable_examples
                        .push((task.id, kind, e.to_string()));
                }
            }
        }
    }
    Ok(report)
}

/// `Machine.Step` of a step document, or what of it reads (`""` when nothing).
fn kind_of(step: &str) -> String {
    let Ok(serde_json::Value::Object(outer)) = serde_json::from_str::<serde_json::Value>(step)
    else {
        return String::new();
    };
    let Some((machine, inner)) = outer.iter().next() else {
        return String::new();
    };
    let step = match inner {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    format!("{machine}.{step}")
}
