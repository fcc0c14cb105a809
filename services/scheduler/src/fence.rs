//! Fencing tokens: a scheduler writes job state only while Postgres agrees
//! that it leads. Its token is the etcd revision of its leadership, which
//! only grows; a leader that was paused or cut off past its lease finds its
//! token superseded on its next write and steps down.

use std::time::Duration;

use sqlx::PgConnection;

/// The token of the scheduler allowed to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub i64);

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("leadership token {mine} is superseded by {current}")]
    Superseded { mine: i64, current: i64 },
}

/// How long a scheduler's session may sit idle inside a transaction before
/// Postgres ends it, for a leadership lease of `lease_ttl` seconds.
///
/// Every write holds a share lock on the fence until it commits, and
/// [`claim`] waits for those locks. A leader frozen in the middle of a write
/// (SIGSTOP, a stalled VM) leaves its transaction idle, and would hold the
/// next leader's claim, and so the whole farm, until it thawed. Its lease has
/// run out by the time a standby claims, so twice the lease is no live
/// leader's transaction: the scheduler's transactions never wait on anything
/// but Postgres between statements. At least 5 s, so a debug build on a busy
/// machine is not cut off mid-write.
pub fn abandoned_after(lease_ttl: i64) -> Duration {
    let lease = Duration::from_secs(u64::try_from(lease_ttl).unwrap_or(0));
    (2 * lease).max(Duration::from_secs(5))
}

/// How long [`claim`] waits for writes in flight under an older token to
/// finish; a write commits in milliseconds. Set per transaction, as the
/// statement takes no parameters.
const CLAIM_LOCK_WAIT: &str = "SET LOCAL lock_timeout = '5s'";

/// Claims the right to write with `token`. Fails if a newer leader already
/// claimed it. Waits for writes in flight under an older token to finish
/// (at most [`CLAIM_LOCK_WAIT`]); writes that hold the fence past that
/// belong to a leader that lost the election and cannot go on, frozen
/// while Postgres was still sending it a result, say, which
/// [`abandoned_after`] does not cover. Their sessions are ended and the
/// claim tried again.
pub async fn claim(db: &sqlx::PgPool, token: Token) -> Result<(), FenceError> {
    match try_claim(db, token).await {
        Err(FenceError::Database(error)) if is_lock_timeout(&error) => {
            let ended = end_earlier_writers(db).await?;
            tracing::warn!(
                sessions = ended,
                "an earlier leader's writes held the fence past the claim's wait; ended their sessions"
            );
            try_claim(db, token).await
        }
        other => other,
    }
}

async fn try_claim(db: &sqlx::PgPool, token: Token) -> Result<(), FenceError> {
    let mut tx = db.begin().await?;
    sqlx::query(CLAIM_LOCK_WAIT).execute(&mut *tx).await?;
    let claimed: Option<i64> = sqlx::query_scalar(
        "INSERT INTO leader_fence (id, token) VALUES (true, $1)
         ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token
         WHERE leader_fence.token < EXCLUDED.token
         RETURNING token",
    )
    .bind(token.0)
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_some() {
        tx.commit().await?;
        return Ok(());
    }
    let current: i64 = sqlx::query_scalar("SELECT token FROM leader_fence")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if current == token.0 {
        return Ok(());
    }
    Err(FenceError::Superseded {
        mine: token.0,
        current,
    })
}

/// Postgres's `lock_not_available`: a lock wait ran past `lock_timeout`.
fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Ends every other session holding a write's lock on the fence; returns
/// how many. Only a leader's writes take those locks, and this process won
/// the election, so they are an earlier leader's.
async fn end_earlier_writers(db: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
         FROM (SELECT DISTINCT pid FROM pg_locks
               WHERE locktype = 'relation' AND relation = 'leader_fence'::regclass
                 AND mode IN ('RowShareLock', 'RowExclusiveLock') AND granted
                 AND pid <> pg_backend_pid()) AS holders",
    )
    .fetch_one(db)
    .await
}

/// Checks, inside a write's transaction, that `token` still leads, and
/// holds that true until the transaction ends.
pub async fn check(conn: &mut PgConnection, token: Token) -> Result<(), FenceError> {
    let current: Option<i64> = sqlx::query_scalar("SELECT token FROM leader_fence FOR SHARE")
        .fetch_optional(&mut *conn)
        .await?;
    match current {
        Some(current) if current == token.0 => Ok(()),
        Some(current) => Err(FenceError::Superseded {
            mine: token.0,
            current,
        }),
        None => Err(FenceError::Superseded {
            mine: token.0,
            current: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_transaction_outlives_the_lease() {
        assert_eq!(abandoned_after(3), Duration::from_secs(6));
        assert_eq!(abandoned_after(30), Duration::from_secs(60));
        assert_eq!(
            abandoned_after(2),
            Duration::from_secs(5),
            "never under 5 s, whatever the lease"
        );
        assert_eq!(abandoned_after(-1), Duration::from_secs(5));
    }
}
