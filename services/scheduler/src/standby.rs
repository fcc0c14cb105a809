//! A standby scheduler is alive but not ready: its `/readyz` fails the
//! `leader` check and its gRPC health answers NOT_SERVING, so an
//! orchestrator routes the scheduler's Service to the leader only (workers
//! and gateways find the leader in etcd either way). It turns ready the
//! moment it starts leading, and not ready again when it steps down.

use futures::future::BoxFuture;
use kiln_service::{CheckResult, Health};
use tokio::sync::watch;

/// The `leader` readiness check: passes while this process leads.
pub fn leader_check(
    leading: watch::Receiver<bool>,
) -> impl Fn() -> BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    move || {
        let result = describe(*leading.borrow());
        Box::pin(async move { result })
    }
}

fn describe(leading: bool) -> CheckResult {
    match leading {
        true => Ok("leading".to_owned()),
        false => {
            Err("standby: another scheduler leads, or none has won the election yet".to_owned())
        }
    }
}

/// Keeps gRPC health SERVING while this process leads, NOT_SERVING otherwise.
pub async fn report_health(mut leading: watch::Receiver<bool>, health: Health) {
    loop {
        let now = *leading.borrow_and_update();
        health.set_serving(now).await;
        if leading.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_check_follows_leadership() {
        let (tx, rx) = watch::channel(false);
        let check = leader_check(rx);
        assert!(check().await.is_err(), "a standby is not ready");
        tx.send_replace(true);
        assert_eq!(check().await, Ok("leading".to_owned()));
        tx.send_replace(false);
        assert!(
            check().await.is_err(),
            "a leader that stepped down is not ready"
        );
    }
}
