//! Building the dispatch core's entries: from a new submission's plan, or
//! from Postgres when a scheduler starts leading (or a finished job is
//! reopened).

use std::collections::{HashMap, HashSet};

use kiln_jobmodel::{HostRequirements, JobPlan};
use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::SchedulerError;
use crate::core::model::{AdminState, Connection, JobEntry, KnownWorker, StepEntry, TaskEntry};
use crate::core::output_ledger::RecordedOutput;
use crate::fence::{self, Token};
use crate::job_state::{JobState, TaskCounts};
use crate::matching::Requirements;
use crate::queries;
use crate::scene_history;
use crate::task_state::TaskState;

/// A job as the core schedules it, with the tasks it still has to run.
pub struct LoadedJob {
    pub job: Box<JobEntry>,
    pub tasks: Vec<TaskEntry>,
}

/// The settings a submission gives a job.
pub struct JobSettings {
    pub owner: String,
    pub priority: i32,
    pub max_failed_tasks: i64,
    pub max_run_seconds: u32,
    pub stall_seconds: u32,
    pub inputs: Vec<pb::JobInput>,
    pub waiting_on: HashSet<Uuid>,
    pub trace_context: HashMap<String, String>,
    pub name: String,
    pub tags: Vec<String>,
    pub template_name: String,
}

/// The entry for a job just stored by `inserts::insert_job`.
pub fn from_plan(
    job_id: Uuid,
    settings: JobSettings,
    plan: &JobPlan,
    task_ids: &[Vec<Uuid>],
) -> LoadedJob {
    let positions: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut tasks = Vec::with_capacity(plan.task_count());
    let steps = plan
        .steps
        .iter()
        .enumerate()
        .map(|(position, step)| {
            let ids = task_ids
                .get(position)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for ((index, task), id) in step.tasks.iter().enumerate().zip(ids) {
                tasks.push(TaskEntry {
                    id: *id,
                    job_id,
                    step: position,
                    index: index as i32,
                    state: TaskState::Pending,
                    attempt: 0,
                    failures: 0,
                    worker_id: None,
                    command: task.command.clone(),
                    args: task.args.clone(),
                    frames: task.frames.clone(),
                    task_symbols: task.symbols.clone(),
                    dispatched_at: None,
                    started_at: None,
                    claimed_attempt: None,
                    ready_at: None,
                });
            }
            StepEntry {
                name: step.name.clone(),
                command: step
                    .tasks
                    .first()
                    .map(|t| t.command.clone())
                    .unwrap_or_default(),
                depends_on: step
                    .depends_on
                    .iter()
                    .filter_map(|d| positions.get(d.as_str()).copied())
                    .collect(),
                requirements: Requirements::from_openjd(step.host_requirements.as_ref()),
                session_step: step.session.as_ref().map(|s| s.to_json().into()),
                ready: Default::default(),
                total: step.tasks.len(),
                succeeded: 0,
                failed: 0,
                mean_run_seconds: None,
            }
        })
        .collect();
    let counts = TaskCounts {
        total: tasks.len() as i64,
        waiting: tasks.len() as i64,
        ..TaskCounts::default()
    };
    let job = JobEntry {
        id: job_id,
        owner: settings.owner,
        priority: settings.priority,
        submission_order: 0,
        state: JobState::Pending,
        paused: false,
        held: None,
        max_failed_tasks: settings.max_failed_tasks,
        max_run_seconds: settings.max_run_seconds,
        stall_seconds: settings.stall_seconds,
        inputs: task_inputs(&settings.inputs),
        steps,
        task_ids: Vec::new(),
        counts,
        worker_failures: HashMap::new(),
        waiting_on: settings.waiting_on,
        message: String::new(),
        trace_context: settings.trace_context,
        name: settings.name,
        template_name: settings.template_name,
        last_event_seq: 0,
        earlier_run_times: HashMap::new(),
        recorded_outputs: Vec::new(),
        tags: settings.tags.into_iter().collect(),
        finished_outputs: Vec::new(),
    };
    LoadedJob {
        job: Box::new(job),
        tasks,
    }
}

fn task_inputs(inputs: &[pb::JobInput]) -> Vec<pb::TaskInput> {
    inputs
        .iter()
        .map(|i| pb::TaskInput {
            path: i.path.clone(),
            digest: i.digest.clone(),
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    owner: String,
    state: String,
    priority: i32,
    max_failed_tasks: i32,
    max_run_seconds: i32,
    stall_seconds: i32,
    inputs: serde_json::Value,
    depends_on_jobs: Vec<Uuid>,
    message: String,
    trace_context: serde_json::Value,
    name: String,
    tags: Vec<String>,
    template_name: String,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    job_id: Uuid,
    name: String,
    depends_on: Vec<String>,
    host_requirements: Option<serde_json::Value>,
    session_step: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    job_id: Uuid,
    step_name: String,
    index: i32,
    state: String,
    attempt: i32,
    failures: i32,
    worker_id: Option<String>,
    command: String,
    args: Vec<String>,
    frames: Vec<i64>,
    task_symbols: Option<String>,
}

/// Loads every unfinished job. Tasks left in flight by a previous leader
/// stay in flight: their workers may still run them and reclaim them when
/// they reconnect (`reclaim.rs`); the fence check makes sure this process
/// still leads before anything is dispatched.
pub async fn load_unfinished(
    db: &sqlx::PgPool,
    token: Token,
) -> Result<Vec<LoadedJob>, SchedulerError> {
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT id, owner, state, priority, max_failed_tasks, max_run_seconds, stall_seconds, inputs,
                depends_on_jobs, message, trace_context, name, tags, template_name
         FROM jobs WHERE finished_at IS NULL ORDER BY created_at",
    )
    .fetch_all(db)
    .await?;
    let mut tx = db.begin().await?;
    fence::check(&mut tx, token).await?;
    tx.commit().await?;
    Ok(load(db, rows).await?)
}

/// Loads one job (finished or not), for a retry that reopens it.
pub async fn load_one(db: &sqlx::PgPool, job_id: Uuid) -> Result<Option<LoadedJob>, sqlx::Error> {
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT id, owner, state, priority, max_failed_tasks, max_run_seconds, stall_seconds, inputs,
                depends_on_jobs, message, trace_context, name, tags, template_name
         FROM jobs WHERE id = $1",
    )
    .bind(job_id)
    .fetch_all(db)
    .await?;
    Ok(load(db, rows).await?.pop())
}

/// How many queries read the unfinished tasks at once, each a disjoint run
/// of the table's pages, so one huge job splits as well as many small ones.
const TASK_QUERY_PARTS: u32 = 4;

async fn load(db: &sqlx::PgPool, rows: Vec<JobRow>) -> Result<Vec<LoadedJob>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    // The queries are independent: run together, the scan of the task
    // counts and the transfer of the unfinished tasks overlap, which is most
    // of a new leader's wait with a million tasks queued.
    let steps = sqlx::query_as::<_, StepRow>(
        "SELECT job_id, name, depends_on, host_requirements, session_step FROM steps
         WHERE job_id = ANY($1) ORDER BY job_id, position",
    )
    .bind(&ids)
    .fetch_all(db);
    let counts = sqlx::query_as::<_, (Uuid, String, String, i64)>(
        "SELECT job_id, step_name, state, count(*) FROM tasks WHERE job_id = ANY($1)
         GROUP BY job_id, step_name, state",
    )
    .bind(&ids)
    .fetch_all(db);
    // No ORDER BY: no index matches (job, index), so Postgres would sort
    // every unfinished task, spilling to disk with a million of them, while
    // a new leader keeps the farm waiting. `assemble` orders each job's own.
    // In parts, each on a connection of its own: one query hands a million
    // rows to one Postgres backend and one decoding task, and both cores of
    // a small leader sat half idle while the farm waited for it. Each part
    // is a range of the table's pages (a TID range scan), so Postgres reads
    // every page once: parts split by a column each scanned the whole table.
    let pages = table_pages(db, "tasks").await?;
    let tasks = futures::future::try_join_all(page_ranges(pages, TASK_QUERY_PARTS).map(|(from, to)| {
        sqlx::query_as::<_, TaskRow>(
            "SELECT id, job_id, step_name, index, state, attempt, failures, worker_id, command, args,
                    frames, task_symbols
             FROM tasks WHERE ctid >= $2::text::tid AND ($3::text IS NULL OR ctid < $3::text::tid)
               AND job_id = ANY($1) AND state <> 'succeeded'",
        )
        .bind(&ids)
        .bind(from)
        .bind(to)
        .fetch_all(db)
    }));
    let blocklist = sqlx::query_as::<_, (Uuid, String, i32)>(
        "SELECT job_id, worker_id, failures FROM blocklist WHERE job_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(db);
    // Each job's last event from the end of its index, not a scan of every
    // event of the job: the last of its last block (`event_blocks.rs`).
    let event_seqs = sqlx::query_as::<_, (Uuid, Option<i64>)>(
        "SELECT j.id, (SELECT e.last_seq FROM job_events e WHERE e.job_id = j.id
                       ORDER BY e.first_seq DESC LIMIT 1)
         FROM unnest($1::uuid[]) AS j(id)",
    )
    .bind(&ids)
    .fetch_all(db);
    let (steps, counts, tasks, blocklist, dependencies, event_seqs) = tokio::try_join!(
        steps,
        counts,
        tasks,
        blocklist,
        dependency_states(db, &rows),
        event_seqs
    )?;
    let event_seqs: HashMap<Uuid, i64> = event_seqs
        .into_iter()
        .filter_map(|(id, seq)| Some((id, seq?)))
        .collect();
    // The parts are not gathered into one vector first: with a million
    // tasks that was a second million rows at a new leader's peak (with the
    // sizing in `assemble`, the peak went from 983 to 686 MiB).
    let tasks = tasks.into_iter().flatten();
    let mut loaded = assemble(rows, steps, counts, tasks, blocklist, &dependencies);
    for job in &mut loaded {
        job.job.last_event_seq = event_seqs.get(&job.job.id).map_or(0, |s| *s as u64);
    }
    attach_recorded_outputs(db, &ids, &mut loaded).await?;
    attach_earlier_run_times(db, &mut loaded).await;
    Ok(loaded)
}

/// How many pages a table has now (`relpages` can be stale after a bulk
/// insert, the file size is not).
async fn table_pages(db: &sqlx::PgPool, table: &str) -> Result<u64, sqlx::Error> {
    let (pages,): (i64,) = sqlx::query_as(
        "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint",
    )
    .bind(table)
    .fetch_one(db)
    .await?;
    Ok(pages.max(0) as u64)
}

/// Splits `pages` pages into `parts` runs, as TID bounds: from, and to
/// (exclusive). The last run has no end, so a page added since the count is
/// still read.
fn page_ranges(pages: u64, parts: u32) -> impl Iterator<Item = (String, Option<String>)> {
    let parts = u64::from(parts.max(1));
    let per_part = pages.div_ceil(parts).max(1);
    (0..parts).map(move |part| {
        let from = format!("({},0)", part * per_part);
        let to = (part + 1 < parts).then(|| format!("({},0)", (part + 1) * per_part));
        (from, to)
    })
}

/// Gives each job the outputs its unfinished tasks recorded. They were
/// announced in the transactions that recorded them, so a report or a
/// success that lists them again announces nothing new. The paths of its
/// finished tasks come too: no other task may write them.
async fn attach_recorded_outputs(
    db: &sqlx::PgPool,
    ids: &[Uuid],
    jobs: &mut [LoadedJob],
) -> Result<(), sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String, String, i64, String, bool)> = sqlx::query_as(
        "SELECT o.job_id, o.task_id, o.path, o.digest, o.size, o.kind, t.state = 'succeeded'
         FROM outputs o JOIN tasks t ON t.id = o.task_id
         WHERE o.job_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let positions: HashMap<Uuid, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.job.id, i))
        .collect();
    for (job_id, task_id, path, digest, size, kind, finished) in rows {
        let Some(&i) = positions.get(&job_id) else {
            continue;
        };
        if finished {
            jobs[i].job.finished_outputs.push((task_id, path));
        } else {
            let recorded = RecordedOutput { digest, size, kind };
            jobs[i].job.recorded_outputs.push((task_id, path, recorded));
        }
    }
    Ok(())
}

/// Gives each job what earlier jobs of its scene took. Without them a job
/// only waits longer for its first ETA, so a failed read is logged, not fatal.
pub async fn attach_earlier_run_times(db: &sqlx::PgPool, jobs: &mut [LoadedJob]) {
    let scenes: Vec<String> = jobs
        .iter()
        .filter_map(|j| scene_history::scene_key(&j.job.inputs))
        .collect();
    if scenes.is_empty() {
        return;
    }
    let known = match scene_history::load(db, &scenes).await {
        Ok(known) => known,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read earlier jobs' run times; ETAs wait for this job's own");
            return;
        }
    };
    for job in jobs {
        if let Some(times) =
            scene_history::scene_key(&job.job.inputs).and_then(|s| known.get(&s).cloned())
        {
            job.job.earlier_run_times = times;
        }
    }
}

/// States of the jobs the given jobs depend on.
async fn dependency_states(
    db: &sqlx::PgPool,
    rows: &[JobRow],
) -> Result<HashMap<Uuid, JobState>, sqlx::Error> {
    let wanted: Vec<Uuid> = rows
        .iter()
        .flat_map(|r| r.depends_on_jobs.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let states: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM jobs WHERE id = ANY($1)")
            .bind(&wanted)
            .fetch_all(db)
            .await?;
    Ok(states
        .into_iter()
        .filter_map(|(id, state)| Some((id, JobState::parse(&state)?)))
        .collect())
}

fn assemble(
    rows: Vec<JobRow>,
    steps: Vec<StepRow>,
    counts: Vec<(Uuid, String, String, i64)>,
    tasks: impl IntoIterator<Item = TaskRow>,
    blocklist: Vec<(Uuid, String, i32)>,
    dependencies: &HashMap<Uuid, JobState>,
) -> Vec<LoadedJob> {
    let mut jobs: HashMap<Uuid, LoadedJob> = HashMap::new();
    let mut order = Vec::new();
    for row in rows {
        order.push(row.id);
        jobs.insert(
            row.id,
            LoadedJob {
                job: Box::new(job_entry(row, dependencies)),
                tasks: Vec::new(),
            },
        );
    }
    for step in steps {
        let Some(loaded) = jobs.get_mut(&step.job_id) else {
            continue;
        };
        let requirements: Option<HostRequirements> = step
            .host_requirements
            .and_then(|v| serde_json::from_value(v).ok());
        let positions: Vec<usize> = step
            .depends_on
            .iter()
            .filter_map(|d| loaded.job.steps.iter().position(|s| &s.name == d))
            .collect();
        loaded.job.steps.push(StepEntry {
            name: step.name,
            command: String::new(),
            depends_on: positions,
            requirements: Requirements::from_openjd(requirements.as_ref()),
            session_step: step.session_step.map(Into::into),
            ready: Default::default(),
            total: 0,
            succeeded: 0,
            failed: 0,
            mean_run_seconds: None,
        });
    }
    for (job_id, step_name, state, n) in counts {
        let Some(loaded) = jobs.get_mut(&job_id) else {
            continue;
        };
        let Some(state) = TaskState::parse(&state) else {
            continue;
        };
        add_count(&mut loaded.job, &step_name, state, n);
    }
    // Each job's tasks vector sized once from its counts, rather than grown
    // by doubling (up to twice the room, for every job, at a leader's peak).
    for loaded in jobs.values_mut() {
        let counts = &loaded.job.counts;
        let unfinished = counts.total.saturating_sub(counts.succeeded);
        loaded
            .tasks
            .reserve_exact(usize::try_from(unfinished).unwrap_or(0));
    }
    for (job_id, worker_id, failures) in blocklist {
        if let Some(loaded) = jobs.get_mut(&job_id) {
            loaded
                .job
                .worker_failures
                .insert(worker_id, failures.max(0) as u32);
        }
    }
    for row in tasks {
        let Some(loaded) = jobs.get_mut(&row.job_id) else {
            continue;
        };
        let Some(step) = loaded
            .job
            .steps
            .iter()
            .position(|s| s.name == row.step_name)
        else {
            continue;
        };
        let state = TaskState::parse(&row.state).unwrap_or(TaskState::Pending);
        if loaded.job.steps[step].command.is_empty() {
            loaded.job.steps[step].command = row.command.clone();
        }
        loaded.tasks.push(TaskEntry {
            id: row.id,
            job_id: row.job_id,
            step,
            index: row.index,
            state,
            attempt: row.attempt,
            failures: row.failures,
            worker_id: row.worker_id,
            command: row.command,
            args: row.args,
            frames: row.frames,
            task_symbols: row.task_symbols,
            dispatched_at: None,
            started_at: None,
            claimed_attempt: None,
            ready_at: None,
        });
    }
    order
        .into_iter()
        .filter_map(|id| jobs.remove(&id))
        .map(|mut loaded| {
            // Each step's ready queue is filled in this order.
            loaded.tasks.sort_unstable_by_key(|t| (t.step, t.index));
            loaded
        })
        .collect()
}

fn add_count(job: &mut JobEntry, step_name: &str, state: TaskState, n: i64) {
    job.counts.total += n;
    match state {
        TaskState::Pending | TaskState::WaitingRetry => job.counts.waiting += n,
        TaskState::Dispatched | TaskState::Running => job.counts.in_flight += n,
        TaskState::Succeeded => job.counts.succeeded += n,
        TaskState::Failed => job.counts.failed += n,
        TaskState::Cancelled => job.counts.cancelled += n,
    }
    if let Some(step) = job.steps.iter_mut().find(|s| s.name == step_name) {
        step.total += n as usize;
        match state {
            TaskState::Succeeded => step.succeeded += n as usize,
            TaskState::Failed => step.failed += n as usize,
            _ => {}
        }
    }
}

fn job_entry(row: JobRow, dependencies: &HashMap<Uuid, JobState>) -> JobEntry {
    let state = JobState::parse(&row.state).unwrap_or(JobState::Pending);
    JobEntry {
        id: row.id,
        owner: row.owner,
        priority: row.priority,
        submission_order: 0,
        state,
        paused: state == JobState::Paused,
        held: None,
        max_failed_tasks: i64::from(row.max_failed_tasks),
        max_run_seconds: row.max_run_seconds.max(0) as u32,
        stall_seconds: row.stall_seconds.max(0) as u32,
        inputs: task_inputs(&queries::inputs_from_json(&row.inputs)),
        steps: Vec::new(),
        task_ids: Vec::new(),
        counts: TaskCounts::default(),
        worker_failures: HashMap::new(),
        waiting_on: row
            .depends_on_jobs
            .into_iter()
            .filter(|d| dependencies.get(d) != Some(&JobState::Succeeded))
            .collect(),
        message: row.message,
        trace_context: serde_json::from_value(row.trace_context).unwrap_or_default(),
        name: row.name,
        template_name: row.template_name,
        last_event_seq: 0,
        earlier_run_times: HashMap::new(),
        recorded_outputs: Vec::new(),
        tags: row.tags.into_iter().collect(),
        finished_outputs: Vec::new(),
    }
}

/// Every worker `workers` holds, for a new leader's core.
pub async fn load_known_workers(db: &sqlx::PgPool) -> Result<Vec<KnownWorker>, sqlx::Error> {
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "SELECT id, hostname, capabilities, tags, admin_state, connection, last_seen FROM workers",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(known_worker).collect())
}

#[derive(sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub capabilities: Vec<u8>,
    pub tags: Vec<String>,
    pub admin_state: String,
    pub connection: String,
    pub last_seen: chrono::DateTime<chrono::Utc>,
}

pub fn known_worker(row: WorkerRow) -> KnownWorker {
    KnownWorker {
        capabilities: prost::Message::decode(row.capabilities.as_slice()).unwrap_or_default(),
        tags: row.tags.into_iter().collect(),
        admin: AdminState::parse(&row.admin_state).unwrap_or_default(),
        connection: Connection::parse(&row.connection).unwrap_or(Connection::Offline),
        last_seen: row.last_seen,
        id: row.id,
        hostname: row.hostname,
    }
}

#[cfg(test)]
mod tests {
    use super::page_ranges;

    #[test]
    fn page_ranges_cover_every_page_once_and_leave_the_last_open() {
        for pages in [0, 1, 3, 4, 5, 45_000, 45_001] {
            let ranges: Vec<_> = page_ranges(pages, 4).collect();
            assert_eq!(ranges.len(), 4);
            assert_eq!(ranges[0].0, "(0,0)");
            // Each run starts where the one before ends.
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1.as_deref(), Some(pair[1].0.as_str()));
            }
            assert_eq!(ranges[3].1, None, "a page added since the count is read");
        }
        let ranges: Vec<_> = page_ranges(45_001, 4).collect();
        assert_eq!(ranges[1].0, "(11251,0)");
    }
}
