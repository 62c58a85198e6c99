//! The pages, as HTML (maud escapes every value: step JSON and errors are
//! text a person or a program wrote).

use axum::http::StatusCode;
use jetpack::admin::Filter;
use jetpack::{Activity, RecordedGraph, TaskRow, TaskState, Transition};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::diagram::{self, num};
use crate::{state_name, Counts};

/// What every page needs to know of its dashboard.
pub struct Page<'a> {
    pub base: &'a str,
    pub token: &'a str,
    pub actions: bool,
    pub typed: bool,
}

/// The states in the order the pages show them.
const STATES: [&str; 7] = [
    "ready",
    "scheduled",
    "running",
    "waiting",
    "parked",
    "finished",
    "cancelled",
];

fn layout(page: &Page, title: &str, body: Markup) -> Markup {
    let base = page.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Jetpack" }
                link rel="stylesheet" href=(format!("{base}/assets/dashboard.css"));
                script defer src=(format!("{base}/assets/dashboard.js")) {}
            }
            body data-base=(base) {
                header {
                    a.brand href=(format!("{base}/")) { "Jetpack" }
                    nav {
                        a href=(format!("{base}/")) { "Overview" }
                        a href=(format!("{base}/tasks?state=parked")) { "Parked" }
                        a href=(format!("{base}/tasks")) { "Tasks" }
                    }
                    form.search method="get" action=(format!("{base}/search")) {
                        input type="search" name="q" placeholder="Task id or key" aria-label="Task id or key";
                        button type="submit" { "Find" }
                    }
                    @if !page.actions {
                        span.mode title="Actions are off: the operator turns them on" { "read-only" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page: what went wrong and what to do.
pub fn failure(status: StatusCode, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · Jetpack" } }
            body {
                h1 { (status.canonical_reason().unwrap_or("Error")) }
                p #failure { (text) }
                p { "Go back to the page you came from and reload it." }
            }
        }
    }
}

/// The notice after an action, by its `done` code.
pub fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "resumed" => "Resumed: the task runs again with a full retry budget.",
        "cancelled" => "Cancelled.",
        "edited" => "The step is saved. The task is still parked: resume it to run the new step.",
        "edited-resumed" => "The step is saved and the task resumed.",
        _ => return None,
    })
}

/// A count, `None` while the first count runs.
fn count(counts: Option<&Counts>, kind: &str, state: &str) -> Option<i64> {
    counts.map(|c| c.get(kind).and_then(|s| s.get(state)).copied().unwrap_or(0))
}

fn machine_total(counts: Option<&Counts>, machine: &str, state: &str) -> Option<i64> {
    counts.map(|c| {
        (c.iter())
            .filter(|(k, _)| k.split_once('.').is_some_and(|(m, _)| m == machine))
            .map(|(_, s)| s.get(state).copied().unwrap_or(0))
            .sum()
    })
}

/// A count of tasks in `state`, marked `≈` when it is an estimate.
fn counted(counts: Option<&Counts>, state: &str, n: Option<i64>) -> String {
    let about = counts.map_or("", |c| c.about(state));
    format!("{about}{}", num(n))
}

/// What the page says when some of its counts are estimates.
fn estimates(counts: Option<&Counts>) -> Markup {
    html! {
        @if counts.is_some_and(|c| !c.estimated.is_empty()) {
            p.note { "≈ The table is big: these counts are estimated from a sample of it. Parked and waiting tasks are counted one by one." }
        }
    }
}

/// Bars per minute over the last hour: moved or finished, and failed.
fn chart(activity: Option<&Activity>) -> Markup {
    let now = jetpack::chrono::Utc::now().timestamp() / 60;
    let mut bars = [(0i64, 0i64); 60];
    for m in activity.iter().flat_map(|a| &a.minutes) {
        let ago = now - m.at.timestamp() / 60;
        if let Ok(i) = usize::try_from(59 - ago) {
            if let Some(bar) = bars.get_mut(i) {
                *bar = (m.moved + m.finished, m.failed);
            }
        }
    }
    let most = bars
        .iter()
        .map(|(ok, failed)| ok + failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let height = |n: i64| n * 100 / most;
    let (done, failed): (i64, i64) = (
        bars.iter().map(|b| b.0).sum(),
        bars.iter().map(|b| b.1).sum(),
    );
    html! {
        figure.activity {
            svg #activity viewBox="0 0 600 110" preserveAspectRatio="none" role="img"
                aria-label="Steps per minute over the last hour" {
                @for (i, (ok, bad)) in bars.iter().enumerate() {
                    @let x = i * 10;
                    rect.ok x=(x) y=(105 - height(*ok) - height(*bad)) width="8" height=(height(*ok)) {}
                    rect.failed x=(x) y=(105 - height(*bad)) width="8" height=(height(*bad)) {}
                }
            }
            figcaption {
                "Last hour: " span #done-hour { (num(activity.map(|_| done))) } " steps done, "
                span #failed-hour.failed-text { (num(activity.map(|_| failed))) } " failed attempts"
            }
        }
    }
}

pub fn overview(
    page: &Page,
    machines: &[String],
    counts: Option<&Counts>,
    activity: Option<&Activity>,
) -> Markup {
    let base = page.base;
    let body = html! {
        h1 { "Overview" }
        (chart(activity))
        @if machines.is_empty() {
            p.empty { "No machines yet: a worker records its machines when it starts, and tasks show here once enqueued." }
        } @else {
            (estimates(counts))
            table.counts {
                thead { tr { th { "Machine" } @for s in STATES { th.num { (s) } } } }
                tbody {
                    @for m in machines {
                        tr {
                            td { a href=(format!("{base}/machines/{m}")) { (m) } }
                            @for s in STATES {
                                @let n = machine_total(counts, m, s);
                                @let hot = s == "parked" && n.unwrap_or(0) > 0;
                                td.num.parked[hot] data-total=(format!("{m}|{s}")) {
                                    @if s == "parked" {
                                        a href=(format!("{base}/tasks?machine={m}&state=parked")) { (counted(counts, s, n)) }
                                    } @else { (counted(counts, s, n)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(page, "Overview", body)
}

pub fn machine(
    page: &Page,
    name: &str,
    graph: Option<&RecordedGraph>,
    counts: Option<&Counts>,
    activity: Option<&Activity>,
) -> Markup {
    let base = page.base;
    // Its steps: those of the graph, then any other its tasks are at (a step
    // renamed or removed, rows from a newer deploy).
    let mut steps: Vec<String> = graph
        .map(|g| {
            g.steps
                .iter()
                .map(|s| format!("{name}.{}", s.name))
                .collect()
        })
        .unwrap_or_default();
    for kind in counts.iter().flat_map(|c| c.keys()) {
        if kind.split_once('.').is_some_and(|(m, _)| m == name) && !steps.contains(kind) {
            steps.push(kind.clone());
        }
    }
    let moved = |from: &str, to: &str| {
        activity.map(|a| {
            (a.moves.iter())
                .find(|(f, t, _)| f == from && t == to)
                .map_or(0, |m| m.2)
        })
    };
    let body = html! {
        h1 { "Machine " (name) }
        @match graph {
            Some(g) => { div.diagram-frame { (diagram::svg(base, g, |k, s| count(counts, k, s), |s| counts.map_or("", |c| c.about(s)), moved)) } }
            None => p.empty { "No worker has recorded this machine's graph: one does when it starts." }
        }
        (estimates(counts))
        table.counts {
            thead { tr { th { "Step" } @for s in &STATES[..5] { th.num { (s) } } } }
            tbody {
                @for kind in &steps {
                    tr {
                        td { a href=(format!("{base}/tasks?step={kind}")) { (kind) } }
                        @for s in &STATES[..5] {
                            @let n = count(counts, kind, s);
                            td.num.parked[*s == "parked" && n.unwrap_or(0) > 0] data-count=(format!("{kind}|{s}")) { (counted(counts, s, n)) }
                        }
                    }
                }
            }
        }
        @if page.actions {
            @if let Some(g) = graph {
                details.confirm #redrive {
                    summary { "Redrive tasks…" }
                    form method="post" action=(format!("{base}/redrive")) {
                        input type="hidden" name="csrf" value=(page.token);
                        label { "From " select name="from" { @for k in &steps { option value=(k) { (k) } } } }
                        label { " to " select name="to" { @for s in &g.steps { @let k = format!("{name}.{}", s.name); option value=(k) { (k) } } } }
                        label { " tasks that are " select name="state" {
                            option value="parked" { "parked" }
                            option value="ready" { "ready" }
                            option value="" { "ready or parked" }
                        } }
                        p.hint {
                            @if page.typed { "Each task's fields must decode as the step it goes to." }
                            @else { "Checked against the recorded graph; fields that do not fit park the task when it runs." }
                        }
                        button.danger type="submit" { "Confirm: move them" }
                    }
                }
            }
        }
    };
    layout(page, name, body)
}

/// `Machine.Step` of a step document, or `?`.
fn kind_of(step: &str) -> String {
    serde_json::from_str::<serde_json::Value>(step)
        .ok()
        .and_then(|v| {
            let (m, inner) = v.as_object()?.iter().next()?;
            let s = match inner {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o.keys().next()?.clone(),
                _ => return None,
            };
            Some(format!("{m}.{s}"))
        })
        .unwrap_or_else(|| "?".into())
}

fn short(text: &str, most: usize) -> String {
    if text.chars().count() <= most {
        return text.to_string();
    }
    let mut s: String = text.chars().take(most).collect();
    s.push('…');
    s
}

fn task_table(page: &Page, list: &[TaskRow]) -> Markup {
    let base = page.base;
    html! {
        table.tasks {
            thead { tr { th.num { "Id" } th { "State" } th { "Step" } th.num { "Tried" } th { "Due" } th { "Error" } } }
            tbody {
                @for t in list {
                    @let state = state_name(t.state);
                    tr {
                        td.num { a href=(format!("{base}/tasks/{}", t.id)) { (t.id) } }
                        td { span class=(format!("state {state}")) { (state) } }
                        td { (kind_of(&t.step)) }
                        td.num { (t.tried) }
                        td { (t.wakeup_at.format("%Y-%m-%d %H:%M:%S")) }
                        td.error { (short(t.error.as_deref().unwrap_or(""), 120)) }
                    }
                }
            }
        }
    }
}

/// A list of tasks; `None` when finding them took too long.
pub fn tasks(page: &Page, q: &ListQuery, list: Option<&[TaskRow]>, size: u32) -> Markup {
    let base = page.base;
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let title = match q.state.as_deref() {
        Some("parked") => "Parked tasks",
        _ => "Tasks",
    };
    let more = list.filter(|l| l.len() == size as usize).map(|list| {
        let mut next = format!(
            "{base}/tasks?state={}&step={}&machine={}&error={}",
            encode(&value(&q.state)),
            encode(&value(&q.step)),
            encode(&value(&q.machine)),
            encode(&value(&q.error)),
        );
        if let Some(last) = list.last() {
            next.push_str(&format!("&after={}", last.id));
        }
        next
    });
    let body = html! {
        h1 { (title) }
        form.filter method="get" action=(format!("{base}/tasks")) {
            label { "State " select name="state" {
                option value="" selected[q.state.is_none()] { "any" }
                @for s in ["ready", "waiting", "parked", "cancelled", "finished"] {
                    option value=(s) selected[q.state.as_deref() == Some(s)] { (s) }
                }
            } }
            label { " Step " input name="step" value=(value(&q.step)) placeholder="Machine.Step"; }
            label { " Machine " input name="machine" value=(value(&q.machine)); }
            label { " Error contains " input name="error" value=(value(&q.error)); }
            button type="submit" { "Filter" }
        }
        @match list {
            None => p.empty #slow {
                "Finding these tasks took too long and was stopped: outside the parked ones, a \
                 filter reads the table in id order until it has a page. Choose the parked state \
                 (indexed), or start after a later id."
            }
            Some([]) => p.empty { "No task matches." }
            Some(list) => (task_table(page, list))
        }
        @if let Some(next) = more { p { a href=(next) { "Next page" } } }
    };
    layout(page, title, body)
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_string())
}

pub fn task(
    page: &Page,
    id: i64,
    row: Option<&TaskRow>,
    history: &[Transition],
    children: &[TaskRow],
    notice: Option<&str>,
) -> Markup {
    let base = page.base;
    let state = match row {
        Some(t) => state_name(t.state),
        None => "ended".into(),
    };
    let body = html! {
        h1 { "Task " (id) " " span #task-state class=(format!("state {state}")) data-task=(id) { (state) } }
        @if let Some(n) = notice { p.notice { (n) } }
        @match row {
            None => p.empty { "The task has ended and its row is gone; its history is below." }
            Some(t) => {
                dl.task {
                    dt { "Step" } dd { (kind_of(&t.step)) }
                    dt { "Tried" } dd #task-tried { (t.tried) }
                    dt { "Due" } dd { (t.wakeup_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")) }
                    @if let Some(w) = &t.locked_by { dt { "Worker" } dd { (w) } }
                    @if let Some(p) = t.parent_id { dt { "Parent" } dd { a href=(format!("{base}/tasks/{p}")) { "task " (p) } } }
                    @if let Some(k) = &t.unique_key { dt { "Key" } dd { (k) } }
                    dt { "Priority" } dd { (t.priority) }
                }
                @if let Some(e) = &t.error { h2 { "Error" } pre #task-error.error { (e) } }
                h2 { "Step JSON" }
                pre.json { (pretty(&t.step)) }
                (actions(page, t))
            }
        }
        @if !children.is_empty() {
            h2 { "Children" }
            (task_table(page, children))
        }
        h2 { "History" }
        @if history.is_empty() {
            p.empty { "No history (it is off, or past its retention)." }
        } @else {
            table.history {
                thead { tr { th { "At (UTC)" } th { "Event" } th { "From" } th { "To" } th.num { "Attempt" } th { "Worker" } th.num { "ms" } th { "Error" } } }
                tbody {
                    @for h in history {
                        tr {
                            td { (h.at.format("%Y-%m-%d %H:%M:%S%.3f")) }
                            td { span class=(format!("event {}", h.event)) { (h.event) } }
                            td { (h.from_kind.as_deref().unwrap_or("")) }
                            td { (h.to_kind.as_deref().unwrap_or("")) }
                            td.num { @if let Some(a) = h.attempt { (a) } }
                            td { (h.worker.as_deref().unwrap_or("")) }
                            td.num { @if let Some(d) = h.duration { (format!("{:.1}", d.as_secs_f64() * 1000.0)) } }
                            td.error { (short(h.error.as_deref().unwrap_or(""), 200)) }
                        }
                    }
                }
            }
        }
    };
    layout(page, &format!("Task {id}"), body)
}

/// The actions on one task, each behind a confirmation.
fn actions(page: &Page, t: &TaskRow) -> Markup {
    let base = page.base;
    let id = t.id;
    let live = matches!(
        t.state,
        TaskState::Ready | TaskState::Scheduled | TaskState::Waiting | TaskState::Parked
    );
    let editable = matches!(
        t.state,
        TaskState::Ready | TaskState::Scheduled | TaskState::Parked
    );
    html! {
        @if !page.actions {
            p.hint { "Read-only: actions are off." }
        } @else if t.state == TaskState::Running {
            p.hint { "A worker runs this task now: actions wait for its attempt to end." }
        } @else {
            div.actions {
                @if t.state == TaskState::Parked {
                    details.confirm #resume {
                        summary { "Resume…" }
                        form method="post" action=(format!("{base}/tasks/{id}/resume")) {
                            input type="hidden" name="csrf" value=(page.token);
                            p { "The task runs its step again, with a full retry budget." }
                            button type="submit" { "Confirm: resume task " (id) }
                        }
                    }
                }
                @if live {
                    details.confirm #cancel {
                        summary { "Cancel…" }
                        form method="post" action=(format!("{base}/tasks/{id}/cancel")) {
                            input type="hidden" name="csrf" value=(page.token);
                            label { "Reason " input name="reason" placeholder="why"; }
                            button.danger type="submit" { "Confirm: cancel task " (id) }
                        }
                    }
                }
                @if editable {
                    details.confirm #edit {
                        summary { "Edit the step JSON…" }
                        @if page.typed {
                            form method="post" action=(format!("{base}/tasks/{id}/edit")) {
                                input type="hidden" name="csrf" value=(page.token);
                                textarea name="step" rows="10" spellcheck="false" { (pretty(&t.step)) }
                                p.hint { "It must decode as a step of the program: it is checked before it is saved." }
                                @if t.state == TaskState::Parked {
                                    label { input type="checkbox" name="resume" value="1"; " and resume the task" }
                                }
                                button type="submit" { "Confirm: save the step of task " (id) }
                            }
                        } @else {
                            p.hint { "Editing needs the program's types to check the step: serve the dashboard from the program (`Dashboard::typed`, `jetpack_cli::run`)." }
                        }
                    }
                }
            }
        }
    }
}

pub fn found(page: &Page, text: &str, list: &[TaskRow]) -> Markup {
    let body = html! {
        h1 { "Tasks with key " (text) }
        @if list.is_empty() {
            p.empty { "No live task holds this key (as its unique key or the key its signals are sent to)." }
        } @else {
            (task_table(page, list))
        }
    };
    layout(page, "Search", body)
}

pub fn redriven(page: &Page, machine: &str, from: &str, to: &str, moved: u64) -> Markup {
    let base = page.base;
    let body = html! {
        h1 { "Redriven" }
        p.notice { "Moved " (moved) " task" @if moved != 1 { "s" } " from " (from) " to " (to) "." }
        p { a href=(format!("{base}/machines/{machine}")) { "Back to " (machine) } }
    };
    layout(page, "Redriven", body)
}

/// The filters of the task list, from its query string.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    pub(crate) state: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) machine: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) after: Option<i64>,
}

impl ListQuery {
    pub(crate) fn filter(&self) -> Filter {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let mut f = Filter::new();
        f.state = given(&self.state);
        f.step = given(&self.step);
        f.machine = given(&self.machine);
        f.error_contains = given(&self.error);
        f.after_id = self.after;
        f.limit = Some(PAGE);
        f
    }
}

/// Tasks per page of a list.
pub(crate) const PAGE: u32 = 50;
