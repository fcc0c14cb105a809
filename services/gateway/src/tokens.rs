//! The token store: the gateway's own tables in Postgres schema `gateway`.
//!
//! Lookups are cached for a few seconds, so a busy client costs no query per
//! call; a revocation through this gateway clears the cache at once, one
//! made through another gateway instance takes effect within [`CACHE_TTL`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use moka::sync::Cache;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::auth::{self, Principal, Role};
use crate::error::GatewayError;

/// The schema holding the gateway's tables and its own migration history,
/// apart from the scheduler's.
pub const SCHEMA: &str = "gateway";
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_CAPACITY: u64 = 10_000;
/// The name of the token made from `--bootstrap-admin-token`.
pub const BOOTSTRAP_NAME: &str = "admin";

#[derive(Clone)]
pub struct TokenStore {
    db: PgPool,
    /// Secret hash to its principal, or to `None` for unknown secrets.
    cache: Cache<[u8; 32], Option<Principal>>,
}

impl TokenStore {
    /// Connects (waiting up to `patience` for Postgres) and migrates.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        patience: Duration,
    ) -> Result<Self, GatewayError> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.options([("search_path", SCHEMA)]);
        let deadline = tokio::time::Instant::now() + patience;
        let db = loop {
            let attempt = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await;
            match attempt {
                Ok(db) => break db,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %err, "waiting for postgres");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err.into()),
            }
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {SCHEMA}"
        )))
        .execute(&db)
        .await?;
        sqlx::migrate!("./migrations").run(&db).await?;
        Ok(Self {
            db,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// The gateway's Postgres pool (schema `gateway`), for the session store.
    pub fn pool(&self) -> &PgPool {
        &self.db
    }

    /// Makes `secret` the admin token, revoking the one an earlier start made.
    pub async fn bootstrap_admin(&self, secret: &str) -> Result<(), GatewayError> {
        let hash = auth::secret_hash(secret);
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE tokens SET revoked_at = now() \
             WHERE bootstrap AND revoked_at IS NULL AND secret_sha256 <> $1",
        )
        .bind(&hash[..])
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO tokens (id, name, role, secret_sha256, bootstrap) \
             VALUES ($1, $2, 'admin', $3, true) ON CONFLICT (secret_sha256) DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(BOOTSTRAP_NAME)
        .bind(&hash[..])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.cache.invalidate_all();
        Ok(())
    }

    /// The principal a presented secret stands for, if it is a live token.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, GatewayError> {
        if let Some(known) = self.cached(secret) {
            return Ok(known);
        }
        self.look_up(secret).await
    }

    /// What the cache knows of a secret: `Some(None)` for one known to be
    /// no live token, `None` when only Postgres can tell.
    pub fn cached(&self, secret: &str) -> Option<Option<Principal>> {
        self.cache.get(&auth::secret_hash(secret))
    }

    /// Asks Postgres what a secret stands for, and remembers the answer.
    pub async fn look_up(&self, secret: &str) -> Result<Option<Principal>, GatewayError> {
        let hash = auth::secret_hash(secret);
        let row = sqlx::query(
            "SELECT id, name, role, max_priority FROM tokens \
             WHERE secret_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.db)
        .await?;
        let principal = match row {
            Some(row) => {
                let role: String = row.try_get("role")?;
                Role::parse(&role).map(|role| -> Result<Principal, sqlx::Error> {
                    let max_priority: i32 = row.try_get("max_priority")?;
                    Ok(Principal {
                        token_id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        role,
                        max_priority: u32::try_from(max_priority).unwrap_or(0),
                    })
                })
            }
            None => None,
        }
        .transpose()?;
        self.cache.insert(hash, principal.clone());
        Ok(principal)
    }

    /// Creates a token that may give job priorities up to `max_priority`;
    /// returns it and its secret.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        max_priority: u32,
    ) -> Result<(pb::Token, String), GatewayError> {
        auth::check_name(name)?;
        if max_priority > 100 {
            return Err(GatewayError::Invalid {
                field: "max_priority",
                reason: format!("{max_priority} is outside 0-100"),
            });
        }
        let secret = auth::new_secret();
        let row = sqlx::query(
            "INSERT INTO tokens (id, name, role, secret_sha256, max_priority) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING id, name, role, created_at, revoked_at, max_priority",
        )
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(role.as_str())
        .bind(&auth::secret_hash(&secret)[..])
        .bind(max_priority as i32)
        .fetch_one(&self.db)
        .await?;
        Ok((token_of(&row)?, secret))
    }

    /// Tokens newest first, after the token created at `after.0` with id
    /// `after.1` if given; at most `limit`.
    pub async fn list(
        &self,
        include_revoked: bool,
        limit: i64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<pb::Token>, GatewayError> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at, max_priority FROM tokens \
             WHERE ($1 OR revoked_at IS NULL) \
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(include_revoked)
        .bind(limit)
        .bind(after.map(|(at, _)| at))
        .bind(after.map(|(_, id)| id))
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(token_of).collect()
    }

    pub async fn revoke(&self, id: &str) -> Result<pb::Token, GatewayError> {
        let uuid = Uuid::parse_str(id).map_err(|_| GatewayError::Invalid {
            field: "token_id",
            reason: format!("{id:?} is not a UUID"),
        })?;
        let row = sqlx::query(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
             RETURNING id, name, role, created_at, revoked_at, max_priority",
        )
        .bind(uuid)
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| GatewayError::UnknownToken(id.to_owned()))?;
        self.cache.invalidate_all();
        token_of(&row)
    }
}

fn token_of(row: &sqlx::postgres::PgRow) -> Result<pb::Token, GatewayError> {
    let id: Uuid = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let revoked_at: Option<DateTime<Utc>> = row.try_get("revoked_at")?;
    let max_priority: i32 = row.try_get("max_priority")?;
    Ok(pb::Token {
        id: id.to_string(),
        name: row.try_get("name")?,
        role: Role::parse(&role).map_or(pb::Role::Unspecified, Role::to_proto) as i32,
        created_at: Some(timestamp(created_at)),
        revoked_at: revoked_at.map(timestamp),
        max_priority: u32::try_from(max_priority).unwrap_or(0),
    })
}

fn timestamp(at: DateTime<Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}
