//! Webhooks: owners (and admins, farm-wide) register HTTP(S) endpoints for
//! job events; the leader delivers each event to each matching endpoint,
//! signed (Standard Webhooks), retried with backoff for a bounded time, at
//! least once and always under the same id, across failovers.
//!
//! Pure rules: `event_kind.rs` (job events to webhook events),
//! `signature.rs`, `backoff.rs`, `address_policy.rs` (SSRF). Postgres:
//! `store.rs`, `fanout.rs` (events to deliveries, with the cursor, in one
//! transaction). The leader's loop: `runner.rs`, sending with `sender.rs`.
//! The API: `service.rs`.

pub mod address_policy;
pub mod backoff;
pub mod event_kind;
pub mod fanout;
pub mod runner;
pub mod sender;
pub mod service;
pub mod signature;
pub mod store;

use std::time::Duration;

use address_policy::AddressPolicy;
use backoff::Backoff;

/// How webhooks are delivered, from `--webhook-*`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: AddressPolicy,
    pub backoff: Backoff,
    /// Failed attempts in a row after which a webhook is paused.
    pub pause_after: u32,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// The longest one attempt may take, connection included.
    pub timeout: Duration,
    /// Webhooks one user may register.
    pub max_per_owner: i64,
}

impl Default for Settings {
    fn default() -> Self {
        WebhookArgs::default().settings()
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Hosts webhooks may reach even though they resolve to loopback,
    /// link-local or private addresses (which are refused otherwise, against
    /// SSRF), e.g. `hooks.internal,localhost`; comma-separated
    #[arg(
        long = "webhook-allow-hosts",
        env = "KILN_WEBHOOK_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub allow_hosts: Vec<String>,
    /// Milliseconds before a failed webhook attempt's first retry; doubles with each further one
    #[arg(long, env = "KILN_WEBHOOK_RETRY_BASE_MS", default_value_t = 5_000)]
    pub webhook_retry_base_ms: u64,
    /// The longest wait between two attempts of one delivery, in seconds
    #[arg(long, env = "KILN_WEBHOOK_MAX_DELAY_SECONDS", default_value_t = 3_600)]
    pub webhook_max_delay_seconds: u64,
    /// Seconds after which an undelivered webhook delivery is given up
    #[arg(long, env = "KILN_WEBHOOK_GIVE_UP_SECONDS", default_value_t = 24 * 3_600)]
    pub webhook_give_up_seconds: u64,
    /// Failed attempts in a row after which a webhook is paused until its owner resumes it
    #[arg(long, env = "KILN_WEBHOOK_PAUSE_AFTER", default_value_t = 20)]
    pub webhook_pause_after: u32,
    /// Seconds one webhook attempt may take, connecting included
    #[arg(long, env = "KILN_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,
    /// Webhooks one user may register
    #[arg(long, env = "KILN_MAX_WEBHOOKS_PER_OWNER", default_value_t = 20)]
    pub max_webhooks_per_owner: u32,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            webhook_retry_base_ms: 5_000,
            webhook_max_delay_seconds: 3_600,
            webhook_give_up_seconds: 24 * 3_600,
            webhook_pause_after: 20,
            webhook_timeout_seconds: 10,
            max_webhooks_per_owner: 20,
        }
    }
}

impl WebhookArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            policy: AddressPolicy::new(self.allow_hosts.iter().cloned()),
            backoff: Backoff {
                base: Duration::from_millis(self.webhook_retry_base_ms.max(1)),
                max_delay: Duration::from_secs(self.webhook_max_delay_seconds.max(1)),
                give_up_after: Duration::from_secs(self.webhook_give_up_seconds.max(1)),
            },
            pause_after: self.webhook_pause_after.max(1),
            concurrency: 16,
            timeout: Duration::from_secs(self.webhook_timeout_seconds.max(1)),
            max_per_owner: i64::from(self.max_webhooks_per_owner),
        }
    }
}
