//! The dashboard's pages, rendered on the server from the same `PublicApi`
//! calls (and checks) as REST and gRPC; the script then keeps them live
//! from the SSE streams. Lists are paged on the server, so a farm with
//! 10,000 jobs sends a page of them, not all.

use std::fmt::Write;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use kiln_proto::v1 as pb;
use kiln_proto::v1::farm_service_server::FarmService;
use kiln_proto::v1::job_service_server::JobService;
use serde::Deserialize;

use super::html::{self, esc, url};
use super::{Csrf, csrf_of};
use crate::auth::{Principal, Role};
use crate::rest::{RestState, call};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    state: Option<String>,
    owner: Option<String>,
    name: Option<String>,
    /// The API's page token of the page to show (absent: the first page).
    page: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

fn time(at: Option<&pbjson_types::Timestamp>) -> Option<DateTime<Utc>> {
    at.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(
    field: &str,
    text: &Option<String>,
) -> Result<Option<pbjson_types::Timestamp>, String> {
    let Some(text) = text.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    // A browser's datetime-local input gives no zone: read it as UTC.
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").map(|t| t.and_utc())
        })
        .map_err(|_| format!("{field}: {text:?} is not a time"))?;
    Ok(Some(pbjson_types::Timestamp {
        seconds: parsed.timestamp(),
        nanos: parsed.timestamp_subsec_nanos() as i32,
    }))
}

const STATES: [&str; 6] = [
    "pending",
    "running",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
];

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Pending) => "pending",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Paused) => "paused",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn eta_text(job: &pb::Job) -> String {
    match &job.eta {
        Some(eta) => format!(
            "~{} ± {}",
            duration(eta.seconds_left),
            duration(eta.plus_minus_seconds)
        ),
        None => String::new(),
    }
}

fn duration(seconds: u32) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn error_page(caller: &Principal, csrf: &str, status: StatusCode, message: &str) -> Response {
    let body = format!("<p class=\"error\" id=\"page-error\">{}</p>", esc(message));
    (
        status,
        html::page("Error", "error", caller, csrf, &[], &body),
    )
        .into_response()
}

pub async fn jobs(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    csrf: Option<Extension<Csrf>>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Response {
    let csrf = csrf_of(csrf);
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return error_page(
                &caller,
                &csrf,
                StatusCode::BAD_REQUEST,
                &rejection.body_text(),
            );
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let states: Vec<i32> = query
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .filter_map(|name| {
            pb::JobState::from_str_name(&format!("JOB_STATE_{}", name.trim().to_ascii_uppercase()))
        })
        .map(|s| s as i32)
        .collect();
    let after = match parse_time("after", &query.after) {
        Ok(after) => after,
        Err(message) => return error_page(&caller, &csrf, StatusCode::BAD_REQUEST, &message),
    };
    let request = pb::ListJobsRequest {
        page_size: limit,
        page_token: query.page.clone().unwrap_or_default(),
        owner: query.owner.clone().unwrap_or_default(),
        states,
        name_contains: query.name.clone().unwrap_or_default(),
        submitted_after: after,
        ..Default::default()
    };
    let (jobs, next_page) = match state.api.list_jobs(call(&caller, request)).await {
        Ok(list) => {
            let list = list.into_inner();
            (list.jobs, list.next_page_token)
        }
        Err(status) => {
            let code = crate::rest::ApiError::from(status.clone()).status();
            return error_page(&caller, &csrf, code, status.message());
        }
    };
    let mut body = String::new();
    let selected = query.state.as_deref().unwrap_or("");
    let _ = write!(
        body,
        "<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"/\" id=\"filters\">\
         <label>State <select name=\"state\"><option value=\"\">any</option>"
    );
    for name in STATES {
        let sel = if selected == name { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{name}</option>");
    }
    let _ = write!(
        body,
        "</select></label><label>Name <input name=\"name\" value=\"{}\"></label>",
        esc(query.name.as_deref().unwrap_or(""))
    );
    if caller.is_admin() {
        let _ = write!(
            body,
            "<label>Owner <input name=\"owner\" value=\"{}\"></label>",
            esc(query.owner.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(
        body,
        "<label>Submitted after <input type=\"datetime-local\" name=\"after\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button> <a href=\"/\">Clear</a></form>\
         <p id=\"new-jobs\" class=\"notice\" hidden><a href=\"\">New jobs: show them</a></p>\
         <table class=\"jobs\" id=\"jobs\"><thead><tr><th>Name</th><th>State</th><th>Progress</th>\
         <th>ETA</th><th>Owner</th><th>Priority</th><th>Submitted (UTC)</th></tr></thead><tbody>",
        esc(query.after.as_deref().unwrap_or(""))
    );
    for job in &jobs {
        let submitted = time(job.created_at.as_ref())
            .map(rfc3339)
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr data-job=\"{id}\"><td><a href=\"/jobs/{id}\">{name}</a></td>\
             <td><span class=\"badge s-{state}\">{state}</span></td>\
             <td><progress value=\"{done}\" max=\"{total}\"></progress> <span class=\"count\">{done}/{total}</span></td>\
             <td class=\"eta\">{eta}</td><td>{owner}</td><td class=\"priority\">{priority}</td>\
             <td class=\"submitted\">{submitted}</td></tr>",
            id = esc(&job.id),
            name = esc(&job.name),
            state = state_name(job.state),
            done = job.tasks_succeeded,
            total = job.tasks_total.max(1),
            eta = esc(&eta_text(job)),
            owner = esc(&job.owner),
            priority = job.priority,
            submitted = esc(&submitted[..submitted.len().min(19)].replace('T', " ")),
        );
    }
    body.push_str("</tbody></table>");
    if jobs.is_empty() {
        body.push_str("<p class=\"empty\">No jobs.</p>");
    }
    if !next_page.is_empty() {
        let mut next = format!("/?page={}&limit={limit}", url(&next_page));
        for (key, value) in [
            ("state", &query.state),
            ("owner", &query.owner),
            ("name", &query.name),
            ("after", &query.after),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                let _ = write!(next, "&{key}={}", url(value));
            }
        }
        let _ = write!(
            body,
            "<p class=\"pager\"><a id=\"older\" href=\"{}\">Older jobs →</a></p>",
            esc(&next)
        );
    }
    let first = query.page.is_none();
    html::page(
        "Jobs",
        "jobs",
        &caller,
        &csrf,
        &[("first-page", first.to_string())],
        &body,
    )
}

pub async fn job(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    csrf: Option<Extension<Csrf>>,
    Path(id): Path<String>,
) -> Response {
    let csrf = csrf_of(csrf);
    let request = pb::GetJobRequest { job_id: id.clone() };
    let job = match state.api.get_job(call(&caller, request)).await {
        Ok(job) => job.into_inner(),
        Err(status) => {
            let code = crate::rest::ApiError::from(status.clone()).status();
            return error_page(&caller, &csrf, code, status.message());
        }
    };
    let may_control =
        caller.role >= Role::Submitter && (caller.is_admin() || caller.name == job.owner);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1 id=\"job-name\">{name}</h1><p class=\"facts\"><span class=\"badge s-{state}\" id=\"job-state\">{state}</span> \
         <progress id=\"job-progress\" value=\"{done}\" max=\"{total}\"></progress> \
         <span id=\"job-count\">{done}/{total} tasks</span> · failed <span id=\"job-failed\">{failed}</span> \
         · ETA <span id=\"job-eta\">{eta}</span> · owner {owner} · priority <span id=\"job-priority\">{priority}</span>{tags}</p>\
         <p class=\"message\" id=\"job-message\">{message}</p>",
        name = esc(&job.name),
        state = state_name(job.state),
        done = job.tasks_succeeded,
        total = job.tasks_total.max(1),
        failed = job.tasks_failed,
        eta = esc(&eta_text(&job)),
        owner = esc(&job.owner),
        priority = job.priority,
        tags = if job.tags.is_empty() {
            String::new()
        } else {
            format!(" · tags {}", esc(&job.tags.join(", ")))
        },
        message = esc(&job.message),
    );
    if may_control {
        body.push_str(
            "<div class=\"actions\" id=\"actions\">\
             <button type=\"button\" data-action=\"cancel\" class=\"danger\">Cancel</button>\
             <button type=\"button\" data-action=\"pause\">Pause</button>\
             <button type=\"button\" data-action=\"resume\">Resume</button>\
             <button type=\"button\" data-action=\"retry\">Retry</button>\
             <button type=\"button\" data-action=\"unblock\">Unblock workers</button>\
             <label>Priority <select id=\"priority-level\"><option value=\"25\">low</option>\
             <option value=\"50\">normal</option><option value=\"75\">high</option>\
             <option value=\"100\">critical</option></select></label>\
             <button type=\"button\" data-action=\"priority\">Set priority</button></div>",
        );
    }
    body.push_str(
        "<p class=\"error\" id=\"action-error\" hidden></p>\
         <section id=\"waiting\" hidden><h2>Why is it waiting?</h2><ul id=\"waiting-reasons\"></ul></section>\
         <section><h2>Frames <label class=\"toggle\"><input type=\"checkbox\" id=\"show-thumbs\"> thumbnails</label></h2>\
         <div id=\"legend\" class=\"legend\"></div><div id=\"grid\" class=\"grid\" aria-busy=\"true\"></div>\
         <div id=\"other-tasks\" class=\"grid other\"></div></section>\
         <section id=\"task-panel\" hidden><h2 id=\"task-title\"></h2><table id=\"attempts\" class=\"attempts\"></table>\
         <pre id=\"task-log\" class=\"log\"></pre></section>\
         <section id=\"media\"><div id=\"video-box\"></div><div id=\"sheet-box\"></div></section>",
    );
    let final_state = matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    );
    html::page(
        &job.name,
        "job",
        &caller,
        &csrf,
        &[
            ("job", job.id.clone()),
            ("owner", job.owner.clone()),
            ("final", final_state.to_string()),
        ],
        &body,
    )
}

fn worker_state(state: i32) -> &'static str {
    match pb::WorkerState::try_from(state) {
        Ok(pb::WorkerState::Idle) => "idle",
        Ok(pb::WorkerState::Busy) => "busy",
        Ok(pb::WorkerState::Draining) => "draining",
        Ok(pb::WorkerState::Disabled) => "disabled",
        Ok(pb::WorkerState::Lost) => "lost",
        Ok(pb::WorkerState::Offline) => "offline",
        _ => "unknown",
    }
}

pub async fn workers(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    csrf: Option<Extension<Csrf>>,
) -> Response {
    let csrf = csrf_of(csrf);
    let request = pb::ListWorkersRequest { limit: 0 };
    let workers = match state.api.list_workers(call(&caller, request)).await {
        Ok(list) => list.into_inner().workers,
        Err(status) => {
            return error_page(&caller, &csrf, StatusCode::BAD_GATEWAY, status.message());
        }
    };
    let mut body = String::from(
        "<h1>Workers</h1><table class=\"workers\" id=\"workers\"><thead><tr><th>Worker</th><th>State</th>\
         <th>Running</th><th>Offers</th><th>Tags</th><th>CPU</th><th>Memory</th><th>GPU</th>\
         <th>Last seen (UTC)</th><th>Blocklisted by</th><th></th></tr></thead><tbody>",
    );
    for worker in &workers {
        let _ = write!(body, "{}", worker_row(worker, caller.is_admin()));
    }
    body.push_str("</tbody></table>");
    if workers.is_empty() {
        body.push_str("<p class=\"empty\">No workers have joined yet.</p>");
    }
    html::page("Workers", "workers", &caller, &csrf, &[], &body)
}

/// One worker's row; the script renders the same from JSON when it refreshes.
fn worker_row(worker: &pb::Worker, admin: bool) -> String {
    let caps = worker.capabilities.clone().unwrap_or_default();
    let renderers: Vec<String> = caps.renderers.iter().map(|r| r.name.clone()).collect();
    let running: Vec<String> = worker
        .running
        .iter()
        .map(|t| {
            // A task held queued (lookahead) waits for a slot: not running yet.
            let waiting = if t.started { "" } else { " (waiting)" };
            format!(
                "<a href=\"/jobs/{}\">{} #{}</a>{waiting}",
                esc(&t.job_id),
                esc(&t.step_name),
                t.index
            )
        })
        .collect();
    let usage = worker.usage.unwrap_or_default();
    let actions = if admin {
        format!(
            "<button type=\"button\" data-worker-action=\"disable\">Disable</button>\
             <button type=\"button\" data-worker-action=\"enable\">Enable</button>\
             <button type=\"button\" data-worker-action=\"drain\">Drain</button>\
             <input class=\"tags-input\" value=\"{}\" aria-label=\"tags\">\
             <button type=\"button\" data-worker-action=\"tags\">Set tags</button>",
            esc(&worker.tags.join(","))
        )
    } else {
        String::new()
    };
    format!(
        "<tr data-worker=\"{id}\"><td>{id}<br><small>{host}</small></td>\
         <td><span class=\"badge w-{state}\">{state}</span></td><td class=\"running\">{running}{hidden}</td>\
         <td>{cores} cores, {memory} GiB, {gpus} GPU, {slots} slots{lookahead}<br><small>{renderers}</small></td>\
         <td class=\"tags\">{tags}</td><td>{cpu}</td><td>{mem_used}</td><td>{gpu}</td>\
         <td>{seen}</td><td>{blocked}</td><td class=\"actions\">{actions}</td></tr>",
        id = esc(&worker.id),
        host = esc(&worker.hostname),
        state = worker_state(worker.state),
        running = running.join(", "),
        hidden = if worker.hidden_running > 0 {
            format!(" (+{} of other users)", worker.hidden_running)
        } else {
            String::new()
        },
        cores = caps.cpu_cores,
        memory = caps.memory_bytes / (1 << 30),
        gpus = caps.gpus,
        slots = caps.slots.max(1),
        lookahead = if caps.lookahead > 0 {
            format!(" (+{} queued)", caps.lookahead)
        } else {
            String::new()
        },
        renderers = esc(&renderers.join(", ")),
        tags = esc(&worker.tags.join(", ")),
        cpu = if worker.connected {
            format!("{:.0}%", usage.cpu * 100.0)
        } else {
            String::new()
        },
        mem_used = if worker.connected && usage.memory_total_bytes > 0 {
            format!(
                "{:.1}/{:.1} GiB",
                usage.memory_used_bytes as f64 / f64::from(1 << 30),
                usage.memory_total_bytes as f64 / f64::from(1 << 30)
            )
        } else {
            String::new()
        },
        gpu = usage
            .gpu
            .map(|g| format!("{:.0}%", g * 100.0))
            .unwrap_or_default(),
        seen = time(worker.last_seen.as_ref())
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default(),
        blocked = worker
            .blocklisted_by
            .iter()
            .map(|j| format!("<a href=\"/jobs/{0}\">{0:.8}</a>", esc(j)))
            .chain(
                (worker.blocklisted_by_more > 0)
                    .then(|| format!("and {} more", worker.blocklisted_by_more)),
            )
            .collect::<Vec<_>>()
            .join(" "),
    )
}

pub async fn timeline(
    Extension(caller): Extension<Principal>,
    csrf: Option<Extension<Csrf>>,
) -> Response {
    let csrf = csrf_of(csrf);
    let body = "<h1>Timeline</h1><p class=\"hint\">Tasks per worker over the last <select id=\"window\">\
                <option value=\"300\">5 minutes</option><option value=\"1800\" selected>30 minutes</option>\
                <option value=\"3600\">hour</option></select>, live.</p>\
                <div class=\"timeline\"><canvas id=\"gantt\" width=\"1200\" height=\"400\"></canvas></div>\
                <p id=\"gantt-hover\" class=\"hint\"></p>";
    html::page("Timeline", "timeline", &caller, &csrf, &[], body)
}

pub async fn submit(
    Extension(caller): Extension<Principal>,
    csrf: Option<Extension<Csrf>>,
) -> Response {
    let csrf = csrf_of(csrf);
    if caller.role < Role::Submitter {
        return error_page(
            &caller,
            &csrf,
            StatusCode::FORBIDDEN,
            "submitting needs the submitter role",
        );
    }
    let body = "<h1>Submit a Blender job</h1><form id=\"submit-form\" class=\"submit\">\
        <label>Scene (.blend) <input type=\"file\" id=\"scene\" accept=\".blend\" required></label>\
        <label>Name <input id=\"name\" placeholder=\"the file's name\"></label>\
        <label>Frames <input id=\"frames\" value=\"1-12\" required></label>\
        <label>Chunk size <input id=\"chunk\" type=\"number\" min=\"1\" value=\"4\" required></label>\
        <label>Priority <select id=\"priority\"><option value=\"25\">low</option>\
        <option value=\"50\" selected>normal</option><option value=\"75\">high</option>\
        <option value=\"100\">critical</option></select></label>\
        <label>Frame rate <input id=\"fps\" type=\"number\" min=\"1\" value=\"24\"></label>\
        <label>Video codec <select id=\"codec\"><option>h264</option><option>h265</option>\
        <option>prores</option></select></label>\
        <label>Tags (pools) <input id=\"tags\" placeholder=\"comma-separated, optional\"></label>\
        <button type=\"submit\" id=\"submit\">Upload and submit</button></form>\
        <p id=\"submit-status\" class=\"hint\"></p>";
    html::page("Submit", "submit", &caller, &csrf, &[], body)
}
