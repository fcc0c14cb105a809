//! The leadership fence against a real Postgres: a leader frozen in the
//! middle of a write (SIGSTOP, a stalled VM) must not hold the next leader's
//! claim, and with it the whole farm, until it thaws.

use std::time::Duration;

use kiln_localfarm::Postgres;
use kiln_scheduler::fence::{self, FenceError, Token};
use sqlx::PgPool;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Postgres, and the pools of an old leader (which has claimed the fence
/// with token 1) and of the replica about to lead.
struct Leaders {
    postgres: Postgres,
    old: PgPool,
    new: PgPool,
    _dir: tempfile::TempDir,
}

async fn leaders() -> Result<Leaders> {
    let dir = tempfile::Builder::new().prefix("kiln-fence-").tempdir()?;
    let mut postgres = Postgres::new(dir.path().join("pg"), dir.path().join("pg.log"))?;
    postgres.start().await?;
    let abandoned = Duration::from_secs(1);
    let connect = |url: String| async move {
        kiln_scheduler::connect_database(&url, 2, Duration::from_secs(30), abandoned).await
    };
    let old = connect(postgres.url()).await?;
    let new = connect(postgres.url()).await?;
    fence::claim(&old, Token(1)).await?;
    Ok(Leaders {
        postgres,
        old,
        new,
        _dir: dir,
    })
}

/// The replica about to lead claims the fence with token 2, and must get
/// it (the bound only keeps a broken claim from hanging the test).
async fn new_leader_claims(leaders: &Leaders) {
    let claim = tokio::time::timeout(
        Duration::from_secs(60),
        fence::claim(&leaders.new, Token(2)),
    )
    .await;
    assert!(
        matches!(claim, Ok(Ok(()))),
        "the new leader's claim: {claim:?}"
    );
}

/// The Postgres error code `result` failed with, if it did.
fn code<T>(result: &std::result::Result<T, sqlx::Error>) -> Option<String> {
    match result {
        Err(sqlx::Error::Database(error)) => error.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn a_leader_frozen_mid_write_does_not_hold_the_next_leaders_claim() -> Result<()> {
    let mut leaders = leaders().await?;
    // The old leader begins a write, checks the fence (taking its share
    // lock), and is frozen before it commits: the transaction stays open
    // and nothing more is sent on it.
    let mut frozen = leaders.old.begin().await?;
    fence::check(&mut frozen, Token(1)).await?;

    new_leader_claims(&leaders).await;

    // Postgres ended the frozen session for idling in its transaction
    // (25P03), before the claim had to end it itself. The batch writer
    // takes that for a transient error: it writes the batch again, and the
    // fence check below tells it to step down.
    let thawed = sqlx::query("SELECT 1").execute(&mut *frozen).await;
    assert_eq!(code(&thawed).as_deref(), Some("25P03"), "{thawed:?}");
    if let Err(error) = &thawed {
        assert!(kiln_scheduler::batch_writer::is_transient(error));
    }
    drop(frozen);
    let mut next = leaders.old.begin().await?;
    let superseded = fence::check(&mut next, Token(1)).await;
    assert!(
        matches!(
            superseded,
            Err(FenceError::Superseded {
                mine: 1,
                current: 2
            })
        ),
        "{superseded:?}"
    );
    leaders.postgres.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_write_still_running_under_an_old_token_is_ended_by_the_claim() -> Result<()> {
    let mut leaders = leaders().await?;
    // The old leader's write holds the fence and is busy in Postgres (as
    // when it froze while Postgres was still sending it a result): Postgres
    // does not count that session idle, so only the claim can end it.
    let mut busy = leaders.old.begin().await?;
    fence::check(&mut busy, Token(1)).await?;
    let running = tokio::spawn(async move {
        let result = sqlx::query("SELECT pg_sleep(300)")
            .execute(&mut *busy)
            .await
            .map(|_| ());
        code(&result)
    });

    new_leader_claims(&leaders).await;
    // Ended by the claim: "terminating connection due to administrator
    // command".
    assert_eq!(running.await?.as_deref(), Some("57P01"));
    leaders.postgres.stop().await?;
    Ok(())
}
