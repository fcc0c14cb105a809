//! The leader's webhook loop: turn new job events into deliveries
//! (`fanout.rs`), then make the attempts that are due, a bounded number at
//! once, recording each outcome. Only the leader runs it (`leader.rs`
//! starts it with the leadership and stops it with it); a new leader picks
//! up whatever is pending, so an attempt cut off by a failover is made
//! again, with the same `webhook-id`.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use sqlx::PgPool;

use crate::fence::Token;
use crate::webhooks::Settings;
use crate::webhooks::fanout;
use crate::webhooks::sender::{Sender, Signed};
use crate::webhooks::signature::sign;
use crate::webhooks::store::{self, DueDelivery};

/// How often the loop looks for new events and due attempts when idle.
const TICK: Duration = Duration::from_millis(250);
/// Due attempts read per round.
const DUE_PER_ROUND: i64 = 256;
/// Finished deliveries are kept in the log this long.
const KEEP_LOG: Duration = Duration::from_secs(7 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub async fn run(db: PgPool, token: Token, settings: Settings) {
    let sender = Sender::new(settings.policy.clone(), settings.timeout);
    let mut pruned = tokio::time::Instant::now();
    loop {
        let mut busy = false;
        match fanout::fan_out(&db, token).await {
            Ok(more) => busy |= more,
            Err(crate::SchedulerError::NotLeader(why)) => {
                tracing::info!(reason = %why, "webhook loop stops: no longer leading");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot turn job events into webhook deliveries")
            }
        }
        match store::due(&db, DUE_PER_ROUND, settings.backoff.give_up_after).await {
            Ok(due) => {
                busy |= due.len() as i64 >= DUE_PER_ROUND;
                futures::stream::iter(due)
                    .for_each_concurrent(settings.concurrency.max(1), |delivery| {
                        attempt(&db, &sender, &settings, delivery)
                    })
                    .await;
            }
            Err(err) => tracing::warn!(error = %err, "cannot read due webhook deliveries"),
        }
        if pruned.elapsed() > PRUNE_EVERY {
            pruned = tokio::time::Instant::now();
            if let Err(err) = store::prune(&db, KEEP_LOG).await {
                tracing::warn!(error = %err, "cannot prune the webhook delivery log");
            }
        }
        if !busy {
            tokio::time::sleep(TICK).await;
        }
    }
}

/// One attempt of `delivery`, and its outcome recorded.
async fn attempt(db: &PgPool, sender: &Sender, settings: &Settings, delivery: DueDelivery) {
    let now = chrono::Utc::now();
    let signature = sign(
        &delivery.secret,
        &delivery.id,
        now.timestamp(),
        delivery.body.as_bytes(),
    );
    let signed = Signed {
        id: &delivery.id,
        timestamp: now.timestamp(),
        signature: &signature,
    };
    let body = Bytes::from(delivery.body.clone());
    let outcome = sender.send(&delivery.url, signed, body).await;
    let (status, error) = match outcome {
        Ok(status) if (200..300).contains(&status) => {
            tracing::debug!(delivery = %delivery.id, status, "webhook delivered");
            if let Err(err) = store::delivered(db, &delivery, status).await {
                tracing::warn!(delivery = %delivery.id, error = %err, "cannot record a webhook delivery");
            }
            return;
        }
        Ok(status) => (Some(status), format!("the receiver answered {status}")),
        Err(err) => (None, err.to_string()),
    };
    let attempts = delivery.attempts.max(0) as u32 + 1;
    let jitter = rand::rng().random::<f64>();
    let next =
        settings
            .backoff
            .next_attempt(chrono::Utc::now(), delivery.give_up_at, attempts, jitter);
    tracing::info!(
        delivery = %delivery.id,
        webhook = %delivery.webhook_id,
        attempts,
        error = %error,
        retry_at = ?next,
        "webhook attempt failed"
    );
    match store::attempt_failed(db, &delivery, status, &error, next, settings.pause_after).await {
        Ok(true) => {
            tracing::warn!(webhook = %delivery.webhook_id, "webhook paused after repeated failures")
        }
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(delivery = %delivery.id, error = %err, "cannot record a failed webhook attempt")
        }
    }
}
