//! The leadership fence against a real Postgres: a leader frozen in the
//! middle of a write (SIGSTOP, a stalled VM) must not hold the next leader's
//! claim, and with it the whole farm, until it thaws.

use std::time::Duration;

use kiln_localfarm::Postgres;
use kiln_scheduler::fence::{self, Token};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn a_leader_frozen_mid_write_does_not_hold_the_next_leaders_claim() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("kiln-fence-").tempdir()?;
    let mut postgres = Postgres::new(dir.path().join("pg"), dir.path().join("pg.log"))?;
    postgres.start().await?;
    let abandoned = Duration::from_secs(1);
    let old_leader =
        kiln_scheduler::connect_database(&postgres.url(), 2, Duration::from_secs(30), abandoned)
            .await?;
    let new_leader =
        kiln_scheduler::connect_database(&postgres.url(), 2, Duration::from_secs(30), abandoned)
            .await?;
    fence::claim(&old_leader, Token(1)).await?;

    // The old leader begins a write, checks the fence (taking its share
    // lock), and is frozen before it commits: the transaction stays open
    // and nothing more is sent on it.
    let mut frozen = old_leader.begin().await?;
    fence::check(&mut frozen, Token(1)).await?;

    // The claim waits for the abandoned write only until Postgres ends that
    // session; without that, it waited out its lock timeout and failed.
    let claim =
        tokio::time::timeout(Duration::from_secs(20), fence::claim(&new_leader, Token(2))).await;
    assert!(
        matches!(claim, Ok(Ok(()))),
        "the new leader's claim: {claim:?}"
    );

    // The old leader, thawed, cannot finish the write it began, and its
    // next write finds itself superseded.
    // The batch writer takes that for a transient error: it writes the
    // batch again, and the fence check below tells it to step down.
    let thawed = fence::check(&mut frozen, Token(1)).await;
    match &thawed {
        Err(fence::FenceError::Database(error)) => assert!(
            kiln_scheduler::batch_writer::is_transient(error),
            "the ended session's error is retried: {error:?}"
        ),
        other => panic!("a write after the session ended: {other:?}"),
    }
    drop(frozen);
    let mut next = old_leader.begin().await?;
    let superseded = fence::check(&mut next, Token(1)).await;
    assert!(
        matches!(
            superseded,
            Err(fence::FenceError::Superseded {
                mine: 1,
                current: 2
            })
        ),
        "{superseded:?}"
    );
    postgres.stop().await?;
    Ok(())
}
