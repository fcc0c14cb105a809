//! The batch writer against a real Postgres: a value Postgres refuses ends
//! the dispatch loop (and so this scheduler's leadership) at once, instead of
//! stalling all dispatch behind a write retried forever; an outage is
//! ridden out.

use std::collections::HashMap;
use std::time::Duration;

use kiln_localfarm::Postgres;
use kiln_scheduler::batch_writer::{self, WriteError};
use kiln_scheduler::core::batch::{Batch, TaskWrite};
use kiln_scheduler::core::command::{Command, Control};
use kiln_scheduler::fence::{self, Token};
use kiln_scheduler::retry::RetryPolicy;
use kiln_scheduler::scheduler::Scheduler;
use kiln_scheduler::task_state::TaskState;
use sqlx::PgPool;
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Database {
    postgres: Postgres,
    db: PgPool,
    _dir: tempfile::TempDir,
}

async fn database() -> Result<Database> {
    let dir = tempfile::Builder::new().prefix("kiln-writer-").tempdir()?;
    let mut postgres = Postgres::new(dir.path().join("pg"), dir.path().join("pg.log"))?;
    postgres.start().await?;
    let db = kiln_scheduler::connect_database(
        &postgres.url(),
        4,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await?;
    Ok(Database {
        postgres,
        db,
        _dir: dir,
    })
}

/// A job of one pending task, as a submission stores it.
async fn one_task_job(db: &PgPool) -> Result<(Uuid, Uuid)> {
    let (job, task) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO jobs (id, name, state, priority, template_document, parameters, inputs)
         VALUES ($1, 'refused', 'pending', 50, '', '{}', '[]')",
    )
    .bind(job)
    .execute(db)
    .await?;
    sqlx::query(
        "INSERT INTO steps (job_id, name, position, depends_on) VALUES ($1, 'Render', 0, '{}')",
    )
    .bind(job)
    .execute(db)
    .await?;
    sqlx::query(
        "INSERT INTO tasks (id, job_id, step_name, index, state, command, args, frames)
         VALUES ($1, $2, 'Render', 0, 'pending', 'blender', '{}', '{1}')",
    )
    .bind(task)
    .bind(job)
    .execute(db)
    .await?;
    Ok((job, task))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_postgres_refuses_stops_the_leader_instead_of_stalling_dispatch() -> Result<()> {
    let database = database().await?;
    let db = database.db.clone();
    let token = Token(1);
    fence::claim(&db, token).await?;
    let (job, _) = one_task_job(&db).await?;
    let started = Scheduler::start(
        db.clone(),
        RetryPolicy::default(),
        HashMap::new(),
        Default::default(),
        Default::default(),
        Default::default(),
        token,
    )
    .await?;
    let dispatching = tokio::spawn(started.dispatch.run());

    // Priorities are 0-100 (a CHECK constraint); the gRPC layer refuses
    // more, so only a bug could ask for it: Postgres refuses the batch.
    let asked = started
        .scheduler
        .ask(|request| Command::Control {
            request,
            job_id: job,
            control: Control::SetPriority(1000),
        })
        .await;
    assert!(
        asked.is_err(),
        "the caller is not told the change is durable"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), dispatching)
        .await
        .map_err(|_| "the dispatch loop kept retrying a write Postgres refuses")??;
    match ended {
        Err(WriteError::Refused(err)) => {
            let code = err
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("23514"), "a check violation: {err}");
        }
        other => panic!("expected the loop to stop on a refused write, got {other:?}"),
    }
    let priority: i32 = sqlx::query_scalar("SELECT priority FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&db)
        .await?;
    assert_eq!(priority, 50, "nothing of the refused batch was written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_written_once_postgres_is_back() -> Result<()> {
    let mut database = database().await?;
    let db = database.db.clone();
    let token = Token(1);
    fence::claim(&db, token).await?;
    let (_, task) = one_task_job(&db).await?;
    let mut write = TaskWrite::new(task, TaskState::Pending, 0);
    write.state = TaskState::Cancelled;
    write.message = Some("cancelled during an outage".into());
    let mut batch = Batch {
        tasks: vec![write],
        ..Batch::default()
    };

    database.postgres.stop().await?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { batch_writer::write_until_done(&db, &mut batch, token).await }
    });
    // Refused connections are waited out: were they taken for a refused
    // batch, the write would end with an error instead of succeeding below.
    database.postgres.start().await?;
    tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .map_err(|_| "the batch was not written after postgres came back")???;
    let state: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
        .bind(task)
        .fetch_one(&db)
        .await?;
    assert_eq!(state, "cancelled");
    Ok(())
}

#[test]
fn only_connection_serialization_and_deadlock_errors_are_transient() {
    assert!(batch_writer::is_transient(&sqlx::Error::PoolTimedOut));
    assert!(batch_writer::is_transient(&sqlx::Error::Io(
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    )));
    assert!(!batch_writer::is_transient(&sqlx::Error::RowNotFound));
    assert!(!batch_writer::is_transient(&sqlx::Error::ColumnNotFound(
        "state".into()
    )));
}

/// The row of a task as a user reads it back.
async fn task_row(
    db: &PgPool,
    task: Uuid,
) -> Result<(
    String,
    i32,
    Option<String>,
    Option<i32>,
    String,
    String,
    String,
)> {
    Ok(sqlx::query_as(
        "SELECT state, attempt, worker_id, exit_code, log_tail, device, status FROM tasks WHERE id = $1",
    )
    .bind(task)
    .fetch_one(db)
    .await?)
}

/// Most writes go in a lean statement and the rest (a log tail, a device, a
/// status, a retry time) in the full one: a batch mixing both lands whole,
/// and a new dispatch clears what the last attempt reported either way.
#[tokio::test(flavor = "multi_thread")]
async fn lean_and_full_task_writes_in_one_batch_both_land() -> Result<()> {
    let database = database().await?;
    let db = database.db.clone();
    let token = Token(1);
    fence::claim(&db, token).await?;
    let (_, a) = one_task_job(&db).await?;
    let (_, b) = one_task_job(&db).await?;

    let mut running = TaskWrite::new(a, TaskState::Pending, 0);
    running.state = TaskState::Running;
    running.attempt = 1;
    running.worker_id = Some("w1".into());
    running.device = Some("GPU 0".into());
    running.status = Some("rendering".into());
    running.log_tail = Some("Fra:1".into());
    let mut dispatched = TaskWrite::new(b, TaskState::Pending, 0);
    dispatched.state = TaskState::Dispatched;
    dispatched.attempt = 1;
    dispatched.worker_id = Some("w2".into());
    let mut batch = Batch {
        tasks: vec![running, dispatched],
        ..Batch::default()
    };
    batch_writer::write_until_done(&db, &mut batch, token).await?;
    assert_eq!(
        task_row(&db, a).await?,
        (
            "running".into(),
            1,
            Some("w1".into()),
            None,
            "Fra:1".into(),
            "GPU 0".into(),
            "rendering".into()
        )
    );
    assert_eq!(
        task_row(&db, b).await?,
        (
            "dispatched".into(),
            1,
            Some("w2".into()),
            None,
            String::new(),
            String::new(),
            String::new()
        )
    );

    let mut again = TaskWrite::new(a, TaskState::Running, 1);
    again.state = TaskState::Dispatched;
    again.attempt = 2;
    again.worker_id = Some("w3".into());
    let mut done = TaskWrite::new(b, TaskState::Dispatched, 1);
    done.state = TaskState::Succeeded;
    done.attempt = 1;
    done.exit_code = Some(0);
    done.message = Some(String::new());
    let mut batch = Batch {
        tasks: vec![again, done],
        ..Batch::default()
    };
    batch_writer::write_until_done(&db, &mut batch, token).await?;
    assert_eq!(
        task_row(&db, a).await?,
        (
            "dispatched".into(),
            2,
            Some("w3".into()),
            None,
            "Fra:1".into(),
            String::new(),
            String::new()
        ),
        "a new dispatch clears the device and status of the last attempt"
    );
    assert_eq!(
        task_row(&db, b).await?,
        (
            "succeeded".into(),
            1,
            Some("w2".into()),
            Some(0),
            String::new(),
            String::new(),
            String::new()
        )
    );
    Ok(())
}
