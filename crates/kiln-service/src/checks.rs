//! Readiness checks: each service names what it needs before it can do its
//! work (Postgres, etcd, S3, a renderer, disk space) as small async closures,
//! and `/readyz` runs them all.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

/// What one check found: `Ok(detail)` when ready, `Err(reason)` when not.
pub type CheckResult = Result<String, String>;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, CheckResult> + Send + Sync>;

/// A check that hangs (a dead dependency often does) fails after this long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The gauge each check's latest result is recorded in, labelled `check`.
pub const CHECK_GAUGE: &str = "health_check_up";

/// The named readiness checks of one service.
#[derive(Clone, Default)]
pub struct Checks {
    checks: Vec<(&'static str, CheckFn)>,
}

/// The outcome of every check, as `/readyz` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<CheckReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check called `name`; it runs each time readiness is asked for.
    pub fn add<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as BoxFuture<_>)));
        self
    }

    /// Runs every check at once, records each in [`CHECK_GAUGE`], and reports them.
    pub async fn run(&self) -> Readiness {
        let runs = self.checks.iter().map(|(name, check)| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            metrics::gauge!(CHECK_GAUGE, "check" => *name).set(f64::from(u8::from(result.is_ok())));
            let ok = result.is_ok();
            CheckReport {
                name,
                ok,
                detail: result.unwrap_or_else(|reason| reason),
            }
        });
        let checks = futures::future::join_all(runs).await;
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// Ready while etcd answers a status request.
pub fn etcd(
    discovery: &kiln_discovery::Discovery,
) -> impl Fn() -> BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    let discovery = discovery.clone();
    move || {
        let mut client = discovery.client();
        Box::pin(async move {
            client
                .status()
                .await
                .map(|status| format!("etcd {}", status.version()))
                .map_err(|e| format!("etcd unreachable: {e}"))
        })
    }
}

/// Ready while at least one instance of `service` is registered in etcd.
pub fn registered(
    discovery: &kiln_discovery::Discovery,
    service: &'static str,
) -> impl Fn() -> BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    let discovery = discovery.clone();
    move || {
        let discovery = discovery.clone();
        Box::pin(async move {
            match discovery.find(service).await {
                Ok(found) if !found.is_empty() => Ok(format!("{} registered", found.len())),
                Ok(_) => Err(format!("no {service} registered in etcd")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Ready while the filesystem holding `path` has at least `min_free_bytes` available.
pub fn disk_space(
    path: PathBuf,
    min_free_bytes: u64,
) -> impl Fn() -> BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    move || {
        let path = path.clone();
        Box::pin(async move { free_space_at_least(&path, min_free_bytes) })
    }
}

/// Whether the filesystem holding `path` has `min_free_bytes` available to this user.
pub fn free_space_at_least(path: &Path, min_free_bytes: u64) -> CheckResult {
    let stats = nix::sys::statvfs::statvfs(path)
        .map_err(|e| format!("cannot read free space of {}: {e}", path.display()))?;
    // statvfs's field types differ between platforms (not u64 on every one).
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size()));
    if free < min_free_bytes {
        return Err(format!(
            "{} has {free} bytes free, below the minimum of {min_free_bytes}",
            path.display()
        ));
    }
    Ok(format!("{free} bytes free in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_names_every_check_and_fails_if_one_fails() {
        let checks = Checks::new()
            .add("fine", || async { Ok("all good".to_owned()) })
            .add("broken", || async { Err("gone".to_owned()) });
        let readiness = checks.run().await;
        assert!(!readiness.ready);
        let names: Vec<_> = readiness.checks.iter().map(|c| (c.name, c.ok)).collect();
        assert_eq!(names, [("fine", true), ("broken", false)]);
        assert_eq!(readiness.checks[1].detail, "gone");
    }

    #[test]
    fn disk_space_compares_against_the_minimum() {
        let dir = std::env::temp_dir();
        assert!(free_space_at_least(&dir, 0).is_ok());
        assert!(free_space_at_least(&dir, u64::MAX).is_err());
        assert!(free_space_at_least(Path::new("/no/such/dir/kiln"), 0).is_err());
    }
}
