//! The packed event log (`event_blocks.rs`, migration 0015) against a real
//! Postgres: events written one row each before the migration and in blocks
//! after it read back through every reader exactly as the flat log of
//! events they are: a job's by seq, the farm's by farm_seq (merged with
//! farm events), the webhook fan-out's, task histories and timelines, and
//! the last positions a new leader starts from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_localfarm::Postgres;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_scheduler::batch_writer;
use kiln_scheduler::core::batch::Batch;
use kiln_scheduler::event_replay::{self, PAGE, Scope};
use kiln_scheduler::fence::{self, Token};
use kiln_scheduler::history;
use kiln_scheduler::webhooks::store;
use pbjson_types::Timestamp;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The log as the core numbers it, in farm order; what every reader must
/// give back.
#[derive(Default)]
struct Model {
    events: Vec<pb::JobEvent>,
    seqs: HashMap<Uuid, u64>,
    /// The largest batch of job events written, for page bounds.
    largest_batch: usize,
}

impl Model {
    fn next(&mut self, job: Option<Uuid>, event: Event) -> pb::JobEvent {
        let farm_seq = self.events.len() as u64 + 1;
        let event = pb::JobEvent {
            job_id: job.map(|j| j.to_string()).unwrap_or_default(),
            seq: job.map_or(0, |j| {
                let seq = self.seqs.entry(j).or_default();
                *seq += 1;
                *seq
            }),
            farm_seq,
            event: Some(event),
            at: Some(Timestamp {
                seconds: 1_900_000_000 + farm_seq as i64,
                nanos: 0,
            }),
        };
        self.events.push(event.clone());
        event
    }

    fn of_job(&self, job: Uuid) -> impl Iterator<Item = &pb::JobEvent> {
        let id = job.to_string();
        self.events.iter().filter(move |e| e.job_id == id)
    }

    fn last_farm_seq(&self) -> u64 {
        self.events.len() as u64
    }
}

/// A progress event; its status line's length varies, so that encoded
/// events need one, two or three bytes for their length.
fn progress(n: u64) -> Event {
    let status = match n {
        9 => "s".repeat(20_000),
        n => "s".repeat((n % 7) as usize * 45),
    };
    Event::TaskProgress(pb::TaskProgress {
        task_id: format!("task {n}"),
        fraction: 0.5,
        status,
        ..Default::default()
    })
}

fn task_change(task: Uuid, state: pb::TaskState, attempt: u32, worker: &str) -> Event {
    Event::TaskStateChanged(pb::TaskStateChanged {
        task_id: task.to_string(),
        step_name: "Render".into(),
        state: state as i32,
        worker_id: worker.into(),
        attempt,
        ..Default::default()
    })
}

fn worker_joined() -> Event {
    Event::WorkerChanged(pb::WorkerChanged::default())
}

/// A pseudo-random sequence, the same every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

async fn add_job(db: &PgPool, owner: &str) -> Result<Uuid> {
    let job = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs (id, name, state, priority, template_document, parameters, inputs, owner)
         VALUES ($1, $2, 'running', 50, '', '{}', '[]', $3)",
    )
    .bind(job)
    .bind(format!("job of {owner}"))
    .bind(owner)
    .execute(db)
    .await?;
    Ok(job)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_written_before_and_after_packing_read_back_as_one_log() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-event-log-")
        .tempdir()?;
    let mut postgres = Postgres::new(dir.path().join("pg"), dir.path().join("pg.log"))?;
    postgres.start().await?;
    let url = postgres.url();

    // The schema before blocks, and a log written in it: one row per event.
    let old = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    sqlx::migrate!("./migrations").run_to(14, &old).await?;
    let alice = add_job(&old, "alice").await?;
    let bob = add_job(&old, "bob").await?;
    let carol = add_job(&old, "carol").await?;
    let task = Uuid::new_v4();
    let mut model = Model::default();
    let mut rng = Lcg(7);
    for n in 0..40u64 {
        let (job, event) = match (n, rng.below(4)) {
            (9, _) => (Some(bob), progress(n)),
            (3, _) => (
                Some(alice),
                task_change(task, pb::TaskState::Dispatched, 1, "w1"),
            ),
            (_, 0) => (None, worker_joined()),
            (_, 1) => (Some(alice), progress(n)),
            (_, 2) => (Some(bob), progress(n)),
            _ => (Some(carol), progress(n)),
        };
        let event = model.next(job, event);
        match job {
            Some(job) => {
                sqlx::query(
                    "INSERT INTO job_events (job_id, seq, farm_seq, payload) VALUES ($1, $2, $3, $4)",
                )
                .bind(job)
                .bind(event.seq as i64)
                .bind(event.farm_seq as i64)
                .bind(event.encode_to_vec())
                .execute(&old)
                .await?;
            }
            None => {
                sqlx::query("INSERT INTO farm_events (farm_seq, payload) VALUES ($1, $2)")
                    .bind(event.farm_seq as i64)
                    .bind(event.encode_to_vec())
                    .execute(&old)
                    .await?;
            }
        }
    }
    old.close().await;

    // Migrated, then written on in blocks, batches of all sizes: one far
    // larger than a page, some with farm events among the jobs'.
    let db =
        kiln_scheduler::connect_database(&url, 4, Duration::from_secs(30), Duration::from_secs(10))
            .await?;
    let token = Token(1);
    fence::claim(&db, token).await?;
    let sizes = [1, 7, 3, 1200, 2, 40, 1, 600, 5, 90, 1, 1, 300, 8];
    for (i, size) in sizes.into_iter().enumerate() {
        let mut batch = Batch::default();
        let mut job_events = 0;
        for n in 0..size {
            let (job, event) = match (i, n, rng.below(5)) {
                (1, 0, _) => (
                    Some(alice),
                    task_change(task, pb::TaskState::Running, 1, "w1"),
                ),
                (1, 4, _) => (
                    Some(alice),
                    task_change(task, pb::TaskState::WaitingRetry, 1, "w1"),
                ),
                (5, 0, _) => (
                    Some(alice),
                    task_change(task, pb::TaskState::Dispatched, 2, "w2"),
                ),
                (_, _, 0) => (None, worker_joined()),
                (_, _, 1) => (Some(alice), progress(n)),
                (_, _, 2) => (Some(bob), progress(n)),
                _ => (Some(carol), progress(n)),
            };
            let event = Arc::new(model.next(job, event));
            match job {
                Some(job) => {
                    job_events += 1;
                    batch.events.push((job, event));
                }
                None => batch.farm_events.push(event),
            }
        }
        model.largest_batch = model.largest_batch.max(job_events);
        batch_writer::write_until_done(&db, &mut batch, token).await?;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
        .fetch_one(&db)
        .await?;
    assert!(
        rows < 40 + 3 * sizes.len() as i64,
        "one row per job per batch after packing, {rows} rows"
    );

    let bound = PAGE as usize + 2 * model.largest_batch;
    let end = model.last_farm_seq();

    // A job's events after every position, page by page.
    for job in [alice, bob, carol] {
        let all: Vec<pb::JobEvent> = model.of_job(job).cloned().collect();
        let last = all.last().map_or(0, |e| e.seq);
        assert_eq!(
            event_replay::last_position(&db, Scope::Job(job)).await?,
            last
        );
        let mut positions: Vec<u64> = (0..=last + 1).step_by(7).collect();
        positions.extend([1, 2, last.saturating_sub(1), last, last + 1]);
        for after in positions {
            let read = read_from(&db, Scope::Job(job), after, bound).await?;
            let expected: Vec<&pb::JobEvent> = all.iter().filter(|e| e.seq > after).collect();
            assert_eq!(
                read.iter().collect::<Vec<_>>(),
                expected,
                "job after {after}"
            );
        }
    }

    // The farm's, merged with farm events.
    assert_eq!(event_replay::last_position(&db, Scope::Farm).await?, end);
    let mut positions: Vec<u64> = (0..=end + 1).step_by(13).collect();
    positions.extend([1, 39, 40, 41, 42, end - 1, end, end + 1]);
    for after in positions {
        let read = read_from(&db, Scope::Farm, after, bound).await?;
        let expected: Vec<&pb::JobEvent> =
            model.events.iter().filter(|e| e.farm_seq > after).collect();
        assert_eq!(
            read.iter().collect::<Vec<_>>(),
            expected,
            "farm after {after}"
        );
    }

    // The webhook fan-out's: job events only, with their owners.
    let owners: HashMap<String, &str> = [(alice, "alice"), (bob, "bob"), (carol, "carol")]
        .into_iter()
        .map(|(id, owner)| (id.to_string(), owner))
        .collect();
    for after in [0u64, 1, 20, 40, 41, 45, 300, 1000, 2000, end] {
        let mut conn = db.acquire().await?;
        let mut read = Vec::new();
        let mut at = after as i64;
        loop {
            let page = store::events_after(&mut conn, at, 500).await?;
            if let Some(e) = page.events.last() {
                at = e.event.farm_seq as i64;
            }
            for stored in &page.events {
                assert_eq!(stored.job_id.to_string(), stored.event.job_id);
                assert_eq!(owners[&stored.event.job_id], stored.owner);
            }
            read.extend(page.events.into_iter().map(|e| e.event));
            if !page.more {
                break;
            }
        }
        let expected: Vec<&pb::JobEvent> = model
            .events
            .iter()
            .filter(|e| e.farm_seq > after && !e.job_id.is_empty())
            .collect();
        assert_eq!(
            read.iter().collect::<Vec<_>>(),
            expected,
            "webhooks after {after}"
        );
    }

    // A task's attempts, from a migrated row and blocks.
    let attempts = history::task_attempts(&db, alice, task).await?;
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.worker_id.as_str(), a.state))
            .collect::<Vec<_>>(),
        [
            (1, "w1", pb::TaskState::WaitingRetry as i32),
            (2, "w2", pb::TaskState::Dispatched as i32)
        ]
    );
    assert!(attempts[0].dispatched_at.is_some() && attempts[0].started_at.is_some());
    assert!(attempts[0].ended_at.is_some());

    // The timeline: the run still going, of alice's job; none of bob's.
    let since = chrono::DateTime::from_timestamp(0, 0).ok_or("a time")?;
    let spans = history::task_spans(&db, None, since, 100).await?;
    assert_eq!(
        spans
            .iter()
            .map(|s| (s.attempt, s.job_name.as_str()))
            .collect::<Vec<_>>(),
        [(2, "job of alice"), (1, "job of alice")]
    );
    assert!(
        history::task_spans(&db, Some("bob"), since, 100)
            .await?
            .is_empty()
    );
    assert_eq!(
        history::task_spans(&db, Some("alice"), since, 100)
            .await?
            .len(),
        2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_block_is_an_error_for_a_watch_not_a_panic() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-event-log-")
        .tempdir()?;
    let mut postgres = Postgres::new(dir.path().join("pg"), dir.path().join("pg.log"))?;
    postgres.start().await?;
    let db = kiln_scheduler::connect_database(
        &postgres.url(),
        4,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await?;
    let job = add_job(&db, "alice").await?;
    sqlx::query(
        "INSERT INTO job_events (job_id, first_seq, last_seq, batch_first, first_farm_seq,
                                 last_farm_seq, payload)
         VALUES ($1, 1, 2, 1, 1, 2, '\\x05ffffffff'::bytea)",
    )
    .bind(job)
    .execute(&db)
    .await?;
    for scope in [Scope::Job(job), Scope::Farm] {
        let status = event_replay::page(&db, scope, 0)
            .await
            .err()
            .ok_or("a corrupt block read back")?;
        assert_eq!(status.code(), tonic::Code::DataLoss, "{status}");
    }
    // The fan-out skips it, as it skipped a corrupt event: one bad row must
    // not stop every webhook.
    let mut conn = db.acquire().await?;
    let page = store::events_after(&mut conn, 0, 500).await?;
    assert!(page.events.is_empty() && !page.more);
    Ok(())
}

/// Every event of `scope` after `after`, page by page as a watcher catches
/// up, checking that no page is over `bound`.
async fn read_from(
    db: &PgPool,
    scope: Scope,
    after: u64,
    bound: usize,
) -> Result<Vec<pb::JobEvent>> {
    let mut read = Vec::new();
    let mut at = after;
    loop {
        let page = event_replay::page(db, scope, at).await?;
        assert!(
            page.events.len() <= bound,
            "a page of {}",
            page.events.len()
        );
        if let Some(e) = page.events.last() {
            at = scope.position(e);
        }
        read.extend(page.events);
        if !page.more {
            return Ok(read);
        }
    }
}
