//! Fencing tokens: a scheduler writes job state only while Postgres agrees
//! that it leads. Its token is the etcd revision of its leadership, which
//! only grows; a leader that was paused or cut off past its lease finds its
//! token superseded on its next write and steps down.

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

/// Claims the right to write with `token`. Fails if a newer leader already
/// claimed it. Waits for writes in flight under an older token to finish.
pub async fn claim(db: &sqlx::PgPool, token: Token) -> Result<(), FenceError> {
    let claimed: Option<i64> = sqlx::query_scalar(
        "INSERT INTO leader_fence (id, token) VALUES (true, $1)
         ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token
         WHERE leader_fence.token < EXCLUDED.token
         RETURNING token",
    )
    .bind(token.0)
    .fetch_optional(db)
    .await?;
    if claimed.is_some() {
        return Ok(());
    }
    let current: i64 = sqlx::query_scalar("SELECT token FROM leader_fence")
        .fetch_one(db)
        .await?;
    if current == token.0 {
        return Ok(());
    }
    Err(FenceError::Superseded {
        mine: token.0,
        current,
    })
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
