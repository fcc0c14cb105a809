//! Dashboard sessions in the gateway's schema: a token exchanged for a
//! random cookie secret (only its SHA-256 stored) and a CSRF secret. A
//! session authenticates as its token, so revoking the token ends it.
//! Lookups are cached briefly, like tokens'.

use std::time::Duration;

use moka::sync::Cache;
use sqlx::{PgPool, Row};

use crate::auth::{self, Principal, Role};
use crate::error::GatewayError;
use crate::tokens::TokenStore;

/// How long a session lasts after login.
pub const SESSION_HOURS: i64 = 12;
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_CAPACITY: u64 = 10_000;

/// A live session: who it acts as, and the secret its changes must echo.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
}

#[derive(Clone)]
pub struct SessionStore {
    db: PgPool,
    cache: Cache<[u8; 32], Option<Session>>,
}

impl SessionStore {
    pub fn new(tokens: &TokenStore) -> Self {
        Self {
            db: tokens.pool().clone(),
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// Opens a session for a token's principal; returns the cookie's secret
    /// and the session's CSRF secret. Expired sessions are swept meanwhile.
    pub async fn open(&self, principal: &Principal) -> Result<(String, String), GatewayError> {
        let secret = auth::new_secret();
        let csrf = auth::new_secret();
        sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
            .execute(&self.db)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (secret_sha256, token_id, csrf, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
        )
        .bind(&auth::secret_hash(&secret)[..])
        .bind(principal.token_id)
        .bind(&csrf)
        .bind(SESSION_HOURS as i32)
        .execute(&self.db)
        .await?;
        Ok((secret, csrf))
    }

    /// What the cache knows of a cookie's secret: `Some(None)` for one known
    /// to be no live session, `None` when only Postgres can tell.
    pub fn cached(&self, secret: &str) -> Option<Option<Session>> {
        self.cache.get(&auth::secret_hash(secret))
    }

    /// The live session a cookie names, if any (its token not revoked), as
    /// Postgres says; the answer is remembered briefly.
    pub async fn look_up(&self, secret: &str) -> Result<Option<Session>, GatewayError> {
        let hash = auth::secret_hash(secret);
        let row = sqlx::query(
            "SELECT t.id, t.name, t.role, t.max_priority, s.csrf FROM sessions s JOIN tokens t ON t.id = s.token_id \
             WHERE s.secret_sha256 = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.db)
        .await?;
        let session = match row {
            Some(row) => {
                let role: String = row.try_get("role")?;
                let max_priority: i32 = row.try_get("max_priority")?;
                match Role::parse(&role) {
                    Some(role) => Some(Session {
                        principal: Principal {
                            token_id: row.try_get("id")?,
                            name: row.try_get("name")?,
                            role,
                            max_priority: u32::try_from(max_priority).unwrap_or(0),
                        },
                        csrf: row.try_get("csrf")?,
                    }),
                    None => None,
                }
            }
            None => None,
        };
        self.cache.insert(hash, session.clone());
        Ok(session)
    }

    /// Ends a session (logout).
    pub async fn close(&self, secret: &str) -> Result<(), GatewayError> {
        let hash = auth::secret_hash(secret);
        sqlx::query("DELETE FROM sessions WHERE secret_sha256 = $1")
            .bind(&hash[..])
            .execute(&self.db)
            .await?;
        self.cache.invalidate(&hash);
        Ok(())
    }
}
