//! The dashboard's pages, its JSON API and its actions: a handler each.

use super::*;
use pages::{ListQuery, PAGE};

/// A page as a response.
pub(crate) fn html(page: maud::Markup) -> Response {
    axum::response::Html(page.into_string()).into_response()
}

pub(crate) async fn not_found() -> Failure {
    Failure::NotFound("no such page".into())
}

pub(crate) async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/dashboard.css"),
    )
}

pub(crate) async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/dashboard.js"),
    )
}

/// How long a page waits for a first count before it shows placeholders
/// (its script fills them in).
pub(crate) const PAGE_WAIT: Duration = Duration::from_millis(60);

/// How long the live data's answers wait for a first read.
pub(crate) const API_WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn overview(State(s): State<Arc<Inner>>) -> Result<Response, Failure> {
    // Both reads start now and are waited for together.
    let (counts, activity) = tokio::join!(s.counts(PAGE_WAIT), s.activity(PAGE_WAIT));
    let (counts, activity) = (counts?, activity?);
    let graphs = on!(&s.db, p => admin::recorded_graphs(p).await)?;
    let mut names: Vec<String> = graphs.iter().map(|g| g.machine.clone()).collect();
    for kind in counts.iter().flat_map(|c| c.keys()) {
        let machine = kind
            .split_once('.')
            .map_or(kind.as_str(), |(m, _)| m)
            .to_string();
        if !names.contains(&machine) {
            names.push(machine);
        }
    }
    names.sort();
    Ok(html(pages::overview(
        &s.page(),
        &names,
        counts.as_deref(),
        activity.as_deref(),
    )))
}

pub(crate) async fn machine(
    State(s): State<Arc<Inner>>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    // Both reads start now and are waited for together.
    let (counts, activity) = tokio::join!(s.counts(PAGE_WAIT), s.activity(PAGE_WAIT));
    let (counts, activity) = (counts?, activity?);
    let graph = on!(&s.db, p => admin::recorded_graph(p, &name).await)?.map(|(g, _)| g);
    let known = graph.is_some()
        || (counts.iter().flat_map(|c| c.keys()))
            .any(|k| k.split_once('.').is_some_and(|(m, _)| m == name));
    if !known {
        return Err(Failure::NotFound(format!(
            "no machine {name}: no worker recorded it and no task is at one of its steps"
        )));
    }
    Ok(html(pages::machine(
        &s.page(),
        &name,
        graph.as_ref(),
        counts.as_deref(),
        activity.as_deref(),
    )))
}

pub(crate) async fn tasks(
    State(s): State<Arc<Inner>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, Failure> {
    let filter = q.filter();
    // Parked tasks are indexed; any other filter reads the table in id order
    // until it has a page, which on a big table can take a while: the page
    // says so instead of making its viewer wait.
    let read = async { on!(&s.db, p => admin::list(p, &filter).await) };
    let list = match tokio::time::timeout(s.list_wait, read).await {
        Ok(list) => Some(list.map_err(|e| match e {
            jetpack::Error::Admin(text) => Failure::Bad(text),
            other => other.into(),
        })?),
        Err(_) => None,
    };
    Ok(html(pages::tasks(&s.page(), &q, list.as_deref(), PAGE)))
}

/// A task's id from its path, or a page saying what is wrong.
pub(crate) fn task_id(text: &str) -> Result<i64, Failure> {
    text.parse()
        .map_err(|_| Failure::Bad(format!("{text:?} is not a task id: ids are whole numbers")))
}

/// A notice after an action (`?done=resumed`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Done {
    done: Option<String>,
}

pub(crate) async fn task(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, Failure> {
    let id = task_id(&id)?;
    let row = on!(&s.db, p => jetpack::find(p, id).await)?;
    let history = on!(&s.db, p => jetpack::history(p, id).await)?;
    if row.is_none() && history.is_empty() {
        return Err(Failure::NotFound(format!(
            "no task {id}: it never existed, or it ended and its history is past its retention"
        )));
    }
    let children = on!(&s.db, p => admin::children(p, id).await)?;
    let notice = done.done.as_deref().and_then(pages::notice);
    Ok(html(pages::task(
        &s.page(),
        id,
        row.as_ref(),
        &history,
        &children,
        notice,
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    q: Option<String>,
}

pub(crate) async fn search(
    State(s): State<Arc<Inner>>,
    Query(q): Query<SearchQuery>,
) -> Result<Response, Failure> {
    let text = q.q.unwrap_or_default().trim().to_string();
    if text.is_empty() {
        return Err(Failure::Bad("search for a task's id or a key".into()));
    }
    if let Ok(id) = text.trim_start_matches('#').parse::<i64>() {
        return Ok(Redirect::to(&format!("{}/tasks/{id}", s.base)).into_response());
    }
    let found = on!(&s.db, p => admin::by_key(p, &text).await)?;
    if let [only] = found.as_slice() {
        return Ok(Redirect::to(&format!("{}/tasks/{}", s.base, only.id)).into_response());
    }
    Ok(html(pages::found(&s.page(), &text, &found)))
}

pub(crate) async fn api_counts(State(s): State<Arc<Inner>>) -> Result<Json<Value>, Failure> {
    let counts = s.counts(API_WAIT).await?;
    Ok(Json(json!({
        "counts": counts.as_deref().map(|c| &c.per_kind),
        "estimated": counts.as_deref().map(|c| &c.estimated),
    })))
}

pub(crate) async fn api_activity(State(s): State<Arc<Inner>>) -> Result<Json<Value>, Failure> {
    let Some(a) = s.activity(API_WAIT).await? else {
        return Ok(Json(json!({ "minutes": null })));
    };
    let minutes: Vec<Value> = (a.minutes.iter())
        .map(|m| json!([m.at.timestamp(), m.moved, m.finished, m.failed]))
        .collect();
    Ok(Json(json!({
        "now": jetpack::chrono::Utc::now().timestamp(),
        "minutes": minutes,
        "moves": a.moves,
    })))
}

pub(crate) async fn api_task(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Failure> {
    let id = task_id(&id)?;
    let row = on!(&s.db, p => jetpack::find(p, id).await)?;
    Ok(Json(match row {
        Some(t) => json!({
            "state": state_name(t.state),
            "step": t.step,
            "tried": t.tried,
            "error": t.error,
        }),
        None => {
            let history = on!(&s.db, p => jetpack::history(p, id).await)?;
            let last = history.last().map(|t| t.event.clone());
            json!({ "state": if last.is_some() { "ended" } else { "gone" }, "event": last })
        }
    }))
}

/// A form of the dashboard's, with its token.
#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    resume: Option<String>,
}

/// The task an action of `form` is on, checked: the form's token, the id,
/// and that no worker holds the task.
pub(crate) async fn acting_on(s: &Inner, id: &str, form: &ActionForm) -> Result<TaskRow, Failure> {
    s.check_token(&form.csrf)?;
    let id = task_id(id)?;
    let Some(row) = on!(&s.db, p => jetpack::find(p, id).await)? else {
        return Err(Failure::NotFound(format!(
            "no task {id}: it ended, or never existed; nothing changed"
        )));
    };
    if row.state == TaskState::Running {
        return Err(Failure::Conflict(format!(
            "task {id} is running on {}: wait for its attempt to end; nothing changed",
            row.locked_by.as_deref().unwrap_or("a worker")
        )));
    }
    Ok(row)
}

pub(crate) fn back_to(s: &Inner, id: i64, done: &str) -> Response {
    Redirect::to(&format!("{}/tasks/{id}?done={done}", s.base)).into_response()
}

pub(crate) async fn resume(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    let row = acting_on(&s, &id, &form).await?;
    let id = row.id;
    if row.state != TaskState::Parked {
        return Err(Failure::Conflict(format!(
            "task {id} is {}, not parked: nothing to resume; nothing changed",
            state_name(row.state)
        )));
    }
    if !on!(&s.db, p => jetpack::resume(p, id).await)? {
        return Err(Failure::Conflict(format!(
            "task {id} was not parked any more: nothing changed"
        )));
    }
    Ok(back_to(&s, id, "resumed"))
}

pub(crate) async fn cancel(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    let id = acting_on(&s, &id, &form).await?.id;
    let reason = match form.reason.trim() {
        "" => "cancelled from the dashboard",
        reason => reason,
    };
    match on!(&s.db, p => jetpack::cancel(p, id, reason).await)? {
        jetpack::Cancel::Cancelled => Ok(back_to(&s, id, "cancelled")),
        jetpack::Cancel::Finished => Err(Failure::Conflict(format!(
            "task {id} has finished: nothing to cancel; nothing changed"
        ))),
        _ => Err(Failure::NotFound(format!("no task {id}: nothing changed"))),
    }
}

pub(crate) async fn edit(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    let id = acting_on(&s, &id, &form).await?.id;
    s.types.edit(&s.db, id, form.step.trim()).await?;
    if form.resume.is_some() && on!(&s.db, p => jetpack::resume(p, id).await)? {
        return Ok(back_to(&s, id, "edited-resumed"));
    }
    Ok(back_to(&s, id, "edited"))
}

/// A redrive from a machine's page.
#[derive(Debug, Deserialize)]
pub(crate) struct RedriveForm {
    #[serde(default)]
    csrf: String,
    from: String,
    to: String,
    #[serde(default)]
    state: String,
}

pub(crate) async fn redrive(
    State(s): State<Arc<Inner>>,
    Form(form): Form<RedriveForm>,
) -> Result<Response, Failure> {
    s.check_token(&form.csrf)?;
    let mut filter = Filter::new();
    if !form.state.is_empty() {
        filter.state = Some(form.state.clone());
    }
    let moved = s
        .types
        .redrive(&s.db, &form.from, &form.to, &filter)
        .await?;
    let machine = form
        .from
        .split_once('.')
        .map_or(form.from.as_str(), |(m, _)| m);
    Ok(html(pages::redriven(
        &s.page(),
        machine,
        &form.from,
        &form.to,
        moved,
    )))
}
