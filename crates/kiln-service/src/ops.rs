//! The HTTP ops endpoint every Kiln service serves beside its real work:
//! `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (every readiness check passes, as JSON naming each check).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ServiceError;
use crate::checks::{CHECK_GAUGE, CheckReport, Checks, Readiness};

/// How often the check gauges are refreshed when nobody asks `/readyz`,
/// and how often histograms are folded into buckets.
const REFRESH: Duration = Duration::from_secs(15);

/// Histogram buckets, in seconds, for every `*_seconds` metric: from a
/// lookup's millisecond to a long render.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0,
];

/// Where the ops endpoint listens.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Address of the HTTP ops endpoint serving /metrics, /healthz and /readyz; port 0 picks a free port
    #[arg(long, env = "KILN_OPS_LISTEN", default_value = "127.0.0.1:0")]
    pub ops_listen: SocketAddr,
}

/// A running ops endpoint; it stops when dropped.
pub struct OpsServer {
    addr: SocketAddr,
    draining: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    checks: Checks,
    draining: Arc<AtomicBool>,
}

impl OpsServer {
    /// Installs the metrics recorder, binds `args.ops_listen` and serves the
    /// ops endpoint for `service` with its readiness `checks`.
    pub async fn start(
        service: &'static str,
        args: &OpsArgs,
        checks: Checks,
    ) -> Result<Self, ServiceError> {
        let metrics = recorder()?;
        metrics::describe_gauge!(
            CHECK_GAUGE,
            "1 when the named readiness check passed last time it ran, else 0"
        );
        metrics::describe_gauge!(
            "service_info",
            "Always 1; labels name the service and its version"
        );
        metrics::gauge!("service_info", "service" => service, "version" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
        let listener = crate::bind(args.ops_listen).await?;
        let addr = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: args.ops_listen,
            source,
        })?;
        let draining = Arc::new(AtomicBool::new(false));
        let state = OpsState {
            metrics,
            checks,
            draining: draining.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "ops endpoint failed");
            }
        });
        tracing::info!(%addr, "serving ops endpoint (/metrics, /healthz, /readyz)");
        Ok(Self {
            addr,
            draining,
            stop: Some(stop),
            tasks: vec![server, tokio::spawn(refresh(state))],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `/readyz` reports not ready: the service is shutting down
    /// and load balancers should stop sending it work.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The server task ends by itself once told to stop; the refresher never does.
        for task in self.tasks.iter().skip(1) {
            task.abort();
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
fn recorder() -> Result<PrometheusHandle, ServiceError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| ServiceError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| ServiceError::Metrics(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

async fn render_metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let readiness = readiness(&state).await;
    let status = match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(readiness))
}

async fn readiness(state: &OpsState) -> Readiness {
    let mut readiness = state.checks.run().await;
    if state.draining.load(Ordering::Relaxed) {
        readiness.ready = false;
        readiness.checks.push(CheckReport {
            name: "shutdown",
            ok: false,
            detail: "shutting down; taking no new work".to_owned(),
        });
    }
    readiness
}

/// Keeps the check gauges current and the histograms folded.
async fn refresh(state: OpsState) {
    let mut timer = tokio::time::interval(REFRESH);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        state.checks.run().await;
        state.metrics.run_upkeep();
    }
}
