use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_discovery::{Discovery, DiscoveryArgs, Endpoint, service};
use nix::fcntl::{Flock, FlockArg};
use tokio::time::Instant;

use crate::binary::locate_binary;
use crate::error::{LocalFarmError, Result};
use crate::etcd::{ETCD_PREFIX, Etcd};
use crate::fs::{Passage, absolute, private_dir};
use crate::garage::{BUCKET, Garage, REGION};
use crate::log_tail::TAIL_LINES;
use crate::postgres::Postgres;
use crate::process::ServiceProcess;
use crate::tls::FarmCerts;
use crate::wait::POLL_INTERVAL;

/// Default time each start-up stage (a service registering) may take.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// Configures a [`Farm`]; made by [`Farm::builder`].
#[derive(Debug, Clone)]
pub struct FarmBuilder {
    dir: PathBuf,
    workers: usize,
    schedulers: usize,
    assets_replicas: usize,
    gateways: usize,
    s3: bool,
    gateway_grpc_port: u16,
    gateway_http_port: u16,
    worker_gpus: Vec<u32>,
    env: Vec<(OsString, OsString)>,
    startup_timeout: Duration,
    tls: bool,
    s3_front: Option<S3Front>,
}

/// Maps Garage's S3 endpoint to the one the assets services are given;
/// see [`FarmBuilder::s3_front`].
#[derive(Clone)]
struct S3Front(Arc<dyn Fn(&str) -> String + Send + Sync>);

impl std::fmt::Debug for S3Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Front(..)")
    }
}

impl FarmBuilder {
    /// Number of workers to start (default 2).
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// Number of scheduler replicas (default 1): one leads, the others stand by.
    pub fn schedulers(mut self, count: usize) -> Self {
        self.schedulers = count.max(1);
        self
    }

    /// Number of assets service replicas (default 1), sharing one store
    /// (the farm's Garage bucket, or its `assets/` directory).
    pub fn assets_replicas(mut self, count: usize) -> Self {
        self.assets_replicas = count.max(1);
        self
    }

    /// Number of gateways (default 1); see [`Farm::gateway_urls`].
    pub fn gateways(mut self, count: usize) -> Self {
        self.gateways = count.max(1);
        self
    }

    /// Store assets in a private Garage S3 server instead of a local
    /// directory (default: local directory).
    pub fn s3(mut self, enabled: bool) -> Self {
        self.s3 = enabled;
        self
    }

    /// With [`FarmBuilder::s3`]: the assets services reach Garage at the
    /// endpoint `front` returns for Garage's own (called once, after Garage
    /// starts), such as a proxy a test runs in between to act as a sick
    /// store. [`Farm::s3_endpoint`] stays Garage's own.
    pub fn s3_front(mut self, front: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.s3_front = Some(S3Front(Arc::new(front)));
        self
    }

    /// Fixed ports for the gateway's gRPC and REST listeners on 127.0.0.1;
    /// 0 (the default) lets the system pick.
    pub fn gateway_ports(mut self, grpc: u16, http: u16) -> Self {
        self.gateway_grpc_port = grpc;
        self.gateway_http_port = http;
        self
    }

    /// GPUs each worker advertises, by worker index (`--gpus`); workers past
    /// the end of the list are started without the flag.
    pub fn worker_gpus(mut self, gpus: Vec<u32>) -> Self {
        self.worker_gpus = gpus;
        self
    }

    /// An environment variable for every Kiln service of the farm, e.g.
    /// `("KILN_LEASE_TTL", "3")` so dead workers vanish from etcd sooner, or
    /// `("KILN_LOG", "debug")`.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// TLS everywhere (default off): a private CA made at start-up signs a
    /// certificate every service serves and presents to the others; the
    /// scheduler and assets service refuse clients without one (mutual TLS),
    /// and the gateway serves TLS to anyone trusting [`Farm::tls_ca`].
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// How long each start-up stage may take (default 90 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts Postgres, etcd, Garage (with [`FarmBuilder::s3`]), then the
    /// assets service, the scheduler, the gateway and the workers, each as
    /// its own process, and returns once every one of them is registered in
    /// etcd. Whatever started is stopped again if a later step fails.
    pub async fn start(self) -> Result<Farm> {
        let layout = Layout::new(&self.dir)?;
        let lock = lock_dir(&layout.dir)?;
        let mut postgres = Postgres::new(layout.dir.join("postgres"), layout.log("postgres"))?;
        let mut etcd = Etcd::new(layout.dir.join("etcd"), layout.log("etcd"))?;
        let mut garage = match self.s3 {
            true => Some(Garage::new(
                layout.dir.join("garage"),
                layout.log("garage"),
            )?),
            false => None,
        };
        tokio::try_join!(postgres.start(), etcd.start(), async {
            match garage.as_mut() {
                Some(garage) => garage.start().await,
                None => Ok(()),
            }
        })?;
        let discovery = connect_discovery(&etcd).await?;
        let certs = match self.tls {
            true => Some(FarmCerts::generate(&layout.dir.join("tls"))?),
            false => None,
        };
        layout.close_service_dirs()?;
        let assets_s3_endpoint = garage.as_ref().map(|garage| match &self.s3_front {
            Some(front) => (front.0)(&garage.endpoint()),
            None => garage.endpoint(),
        });
        let mut farm = Farm {
            workers: Vec::new(),
            gateways: Vec::new(),
            schedulers: Vec::new(),
            assets: Vec::new(),
            garage,
            assets_s3_endpoint,
            etcd,
            postgres,
            discovery,
            gateway_endpoints: Vec::new(),
            assets_endpoints: Vec::new(),
            secrets: Secrets::generate(),
            certs,
            layout,
            config: self,
            _lock: lock,
        };
        farm.start_services().await?;
        Ok(farm)
    }
}

/// Whether users other than the owner may pass through `dir` and every
/// directory above it.
fn searchable_by_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Where a farm keeps its files.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    logs: PathBuf,
    /// Parent of the workers' work dirs. Their tasks run as uids of their
    /// own, which must pass through every directory above their working
    /// directories: `<dir>/workers` when they can, else a directory under
    /// the system's temporary directory (a farm in /root, say).
    workers: PathBuf,
    /// First of the sandbox uids of this farm's workers, random per farm so
    /// that farms running side by side (tests) do not share uids.
    uid_base: u32,
}

/// Sandbox uids each worker of a farm may use (far more than it needs).
const UIDS_PER_WORKER: u32 = 1000;

impl Layout {
    /// Creates the farm's directory and its `logs/`, closed to other users
    /// (also when they already exist). When Postgres runs as the `postgres`
    /// account (the farm runs as root), that account must pass through the
    /// farm's directory and `logs/` to its own: those two can then be
    /// traversed, never listed, and whatever lies inside is closed itself.
    fn new(dir: &Path) -> Result<Self> {
        let dir = absolute(dir)?;
        let logs = dir.join("logs");
        let passage = if nix::unistd::geteuid().is_root() {
            Passage::TraverseOnly
        } else {
            Passage::Closed
        };
        private_dir(&dir, passage)?;
        private_dir(&logs, passage)?;
        let workers = match searchable_by_others(&dir) {
            true => dir.join("workers"),
            false => {
                // One place per farm directory, the same across runs.
                let hash = dir
                    .as_os_str()
                    .as_encoded_bytes()
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
                    });
                std::env::temp_dir()
                    .join(format!("kiln-farm-{hash:016x}"))
                    .join("workers")
            }
        };
        std::fs::create_dir_all(&workers).map_err(|e| LocalFarmError::io(&workers, e))?;
        // Sandboxed tasks pass through to their working directories; no
        // one else lists what is there.
        private_dir(&workers, Passage::TraverseOnly)?;
        let uid_base = 1_900_000_000 + rand::random_range(0..20_000u32) * 10 * UIDS_PER_WORKER;
        Ok(Self {
            dir,
            logs,
            workers,
            uid_base,
        })
    }

    /// The directories the farm's own services keep data in: closed to
    /// other users, also when made earlier with a wider mode.
    fn close_service_dirs(&self) -> Result<()> {
        // Not `workers`: sandboxed tasks pass through it (`Layout::new`).
        for name in ["assets", "assets-spool"] {
            private_dir(&self.dir.join(name), Passage::Closed)?;
        }
        for name in ["garage", "tls", "etcd"] {
            let dir = self.dir.join(name);
            if dir.exists() {
                private_dir(&dir, Passage::Closed)?;
            }
        }
        Ok(())
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }
}

/// A whole Kiln farm of real processes on 127.0.0.1, for `kiln dev` and
/// end-to-end tests.
///
/// Everything lives under one directory: `postgres/` (kept across runs, so
/// jobs survive) and its password file, `etcd/`, `assets/` or `garage/`,
/// `workers/<id>/` and `logs/<process>.log`, none of it open to other
/// users. Postgres and etcd listen on 127.0.0.1 but take only the farm's
/// own processes, which get their passwords in their environment. Dropping
/// a farm kills its services at once and stops Postgres; [`Farm::shutdown`]
/// stops everything gracefully instead.
///
/// ```no_run
/// # async fn demo() -> Result<(), kiln_localfarm::LocalFarmError> {
/// let dir = std::path::Path::new("/tmp/farm");
/// let mut farm = kiln_localfarm::Farm::builder(dir).workers(2).start().await?;
/// let gateway = farm.gateway_url(); // connect a tonic channel here
/// farm.worker_mut(0).expect("two workers").kill().await?;
/// farm.wait_for_instances(kiln_discovery::service::WORKER, 1, std::time::Duration::from_secs(30)).await?;
/// farm.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Farm {
    // Fields drop in declaration order: services before what they depend on.
    workers: Vec<ServiceProcess>,
    gateways: Vec<ServiceProcess>,
    /// Scheduler replicas; each process's host name is `replica-<index>`,
    /// which its etcd instance name carries.
    schedulers: Vec<ServiceProcess>,
    assets: Vec<ServiceProcess>,
    garage: Option<Garage>,
    /// Where the assets services reach Garage ([`FarmBuilder::s3_front`]).
    assets_s3_endpoint: Option<String>,
    etcd: Etcd,
    postgres: Postgres,
    discovery: Discovery,
    /// Where each gateway listens, by index.
    gateway_endpoints: Vec<Endpoint>,
    /// How each assets replica was listed when it started, by index.
    assets_endpoints: Vec<Endpoint>,
    secrets: Secrets,
    certs: Option<FarmCerts>,
    layout: Layout,
    config: FarmBuilder,
    _lock: Flock<File>,
}

/// Fresh for every start, never written to disk by the farm.
struct Secrets {
    /// The gateway's bootstrap admin token.
    admin_token: String,
    /// What workers present to the scheduler and the assets service.
    join_token: String,
    /// What the gateway, the scheduler and the assets service present to
    /// each other.
    service_token: String,
}

impl Secrets {
    fn generate() -> Self {
        Self {
            admin_token: random_secret(),
            join_token: random_secret(),
            service_token: random_secret(),
        }
    }
}

/// `kiln_` and 256 random bits in hex, the gateway's own token format.
fn random_secret() -> String {
    format!("kiln_{}", crate::secret::random_hex(32))
}

impl Farm {
    /// A builder for a farm living in `dir` (created if missing).
    pub fn builder(dir: impl Into<PathBuf>) -> FarmBuilder {
        FarmBuilder {
            dir: dir.into(),
            workers: 2,
            schedulers: 1,
            assets_replicas: 1,
            gateways: 1,
            s3: false,
            gateway_grpc_port: 0,
            gateway_http_port: 0,
            worker_gpus: Vec::new(),
            env: Vec::new(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            tls: false,
            s3_front: None,
        }
    }

    async fn start_services(&mut self) -> Result<()> {
        for _ in 0..self.config.assets_replicas {
            self.add_assets_replica_with_env(&[]).await?;
        }

        for index in 0..self.config.schedulers {
            let name = match index {
                0 => "scheduler".to_owned(),
                n => format!("scheduler-{n}"),
            };
            let scheduler = self
                .service("scheduler", &name)?
                .env("KILN_DATABASE_URL", self.postgres.url())
                .env("HOSTNAME", format!("replica-{index}"));
            self.schedulers.push(scheduler);
        }
        // The first replica leads; the others start once it does, and stand by.
        if let Some(first) = self.schedulers.first_mut() {
            start_and_register(
                &self.discovery,
                service::SCHEDULER,
                first,
                self.config.startup_timeout,
            )
            .await?;
        }
        for standby in self.schedulers.iter_mut().skip(1) {
            standby.start()?;
        }

        for index in 0..self.config.gateways {
            let name = match index {
                0 => "gateway".to_owned(),
                n => format!("gateway-{n}"),
            };
            // Fixed ports are for the first gateway; the others pick free ones.
            let ports = match index {
                0 => (self.config.gateway_grpc_port, self.config.gateway_http_port),
                _ => (0, 0),
            };
            let gateway = self
                .service("gateway", &name)?
                .args(gateway_args(ports))
                .env("KILN_DATABASE_URL", self.postgres.url())
                .env("KILN_BOOTSTRAP_ADMIN_TOKEN", &self.secrets.admin_token);
            self.gateways.push(gateway);
            let gateway = &mut self.gateways[index];
            let endpoint = start_and_register(
                &self.discovery,
                service::GATEWAY,
                gateway,
                self.config.startup_timeout,
            )
            .await?;
            self.gateway_endpoints.push(endpoint);
        }

        for _ in 0..self.config.workers {
            self.add_worker().await?;
        }
        tracing::info!(
            gateway = %self.gateway_url(),
            workers = self.workers.len(),
            dir = %self.layout.dir.display(),
            "farm ready"
        );
        Ok(())
    }

    /// A process `name` running the Kiln service `kind` (binary
    /// `kiln-<kind>`), pointed at this farm's etcd.
    fn service(&self, kind: &str, name: &str) -> Result<ServiceProcess> {
        let binary = locate_binary(&format!("kiln-{kind}"))?;
        let (etcd_user, etcd_password) = self.etcd.credentials();
        let mut process = ServiceProcess::new(name, binary, self.layout.log(name))
            .args(["--etcd", &self.etcd.url(), "--etcd-prefix", ETCD_PREFIX])
            // Secrets go in the environment, which other users cannot read.
            .env("KILN_ETCD_USER", etcd_user)
            .env("KILN_ETCD_PASSWORD", etcd_password);
        process = match kind {
            "scheduler" | "assets" => process
                .env("KILN_SERVICE_TOKEN", &self.secrets.service_token)
                .env("KILN_JOIN_TOKEN", &self.secrets.join_token),
            "gateway" => process.env("KILN_SERVICE_TOKEN", &self.secrets.service_token),
            "worker" => process.env("KILN_JOIN_TOKEN", &self.secrets.join_token),
            _ => process,
        };
        if let Some(certs) = &self.certs {
            process = process
                .env("KILN_TLS_CERT", &certs.cert)
                .env("KILN_TLS_KEY", &certs.key)
                .env("KILN_TLS_CA", &certs.ca);
            // Internal services take only callers holding a farm certificate;
            // the gateway is public and checks tokens instead.
            if kind == "scheduler" || kind == "assets" {
                process = process.env("KILN_TLS_CLIENT_CA", &certs.ca);
            }
        }
        for (key, value) in &self.config.env {
            process = process.env(key, value);
        }
        Ok(process)
    }

    fn assets_args(&self) -> Vec<OsString> {
        let (Some(garage), Some(endpoint)) = (&self.garage, &self.assets_s3_endpoint) else {
            return vec![
                "--backend".into(),
                "local".into(),
                "--data-dir".into(),
                self.layout.dir.join("assets").into(),
            ];
        };
        let mut args: Vec<OsString> = [
            "--backend",
            "s3",
            "--s3-endpoint",
            endpoint,
            "--s3-bucket",
            BUCKET,
            "--s3-region",
            REGION,
            "--s3-access-key",
            garage.access_key(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        // Uploads are staged here while hashed; keep them inside the farm.
        args.extend([
            "--spool-dir".into(),
            self.layout.dir.join("assets-spool").into(),
        ]);
        args
    }

    fn with_assets_env(&self, process: ServiceProcess) -> ServiceProcess {
        match &self.garage {
            Some(garage) => process.env("KILN_S3_SECRET_KEY", garage.secret_key()),
            None => process,
        }
    }

    /// Starts one more assets service replica (`assets`, `assets-1`, ...),
    /// with environment variables for it only on top of the farm's (e.g.
    /// `("KILN_GC_INTERVAL_SECONDS", "1")`), and waits until it is
    /// registered; returns its index for [`Farm::assets_replica_mut`].
    pub async fn add_assets_replica_with_env(&mut self, env: &[(&str, &str)]) -> Result<usize> {
        let index = self.assets.len();
        let name = match index {
            0 => "assets".to_owned(),
            n => format!("assets-{n}"),
        };
        let mut assets =
            self.with_assets_env(self.service("assets", &name)?.args(self.assets_args()));
        for (key, value) in env {
            assets = assets.env(key, value);
        }
        self.assets.push(assets);
        let endpoint = start_and_register(
            &self.discovery,
            service::ASSETS,
            &mut self.assets[index],
            self.config.startup_timeout,
        )
        .await?;
        self.assets_endpoints.push(endpoint);
        Ok(index)
    }

    /// Starts one more worker (`worker-<index>`, GPUs from
    /// [`FarmBuilder::worker_gpus`]) and waits until it is registered;
    /// returns its index for [`Farm::worker_mut`].
    pub async fn add_worker(&mut self) -> Result<usize> {
        self.add_worker_with_env(&[]).await
    }

    /// [`Farm::add_worker`], with environment variables for this worker
    /// only, on top of the farm's (e.g. `("KILN_DRAIN_SECONDS", "1")`).
    pub async fn add_worker_with_env(&mut self, env: &[(&str, &str)]) -> Result<usize> {
        let index = self.workers.len();
        let id = worker_id(index);
        let work_dir = self.layout.workers.join(&id);
        let uid_base = self.layout.uid_base + (index as u32 % 10) * UIDS_PER_WORKER;
        let mut worker = self
            .service("worker", &id)?
            .args(["--worker-id", &id, "--work-dir"])
            .arg(&work_dir)
            .args(["--sandbox-uid-base", &uid_base.to_string()]);
        if let Some(gpus) = self.config.worker_gpus.get(index) {
            worker = worker.args(["--gpus", &gpus.to_string()]);
        }
        for (key, value) in env {
            worker = worker.env(key, value);
        }
        self.workers.push(worker);
        let worker = &mut self.workers[index];
        start_and_register(
            &self.discovery,
            service::WORKER,
            worker,
            self.config.startup_timeout,
        )
        .await?;
        Ok(index)
    }

    /// Restarts the (first) gateway (SIGTERM, then start) and learns its new
    /// address, which changes unless [`FarmBuilder::gateway_ports`] fixed it.
    pub async fn restart_gateway(&mut self) -> Result<()> {
        let Some(gateway) = self.gateways.first_mut() else {
            return Err(LocalFarmError::NotRunning {
                name: "gateway".to_owned(),
            });
        };
        gateway.terminate().await?;
        let endpoint = start_and_register(
            &self.discovery,
            service::GATEWAY,
            gateway,
            self.config.startup_timeout,
        )
        .await?;
        self.gateway_endpoints[0] = endpoint;
        Ok(())
    }

    /// Waits until exactly `count` instances of `service` (see
    /// [`kiln_discovery::service`]) are registered, e.g. until a killed
    /// worker's lease has expired; returns them.
    pub async fn wait_for_instances(
        &self,
        service: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Endpoint>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.discovery.find(service).await?;
            if found.len() == count {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(LocalFarmError::Timeout {
                    what: format!(
                        "{count} registered {service} instances (found {})",
                        found.len()
                    ),
                    waited: timeout,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Processes (services, etcd, Garage) that died since the last call,
    /// each with the end of its log; a supervisor polls this to notice crashes.
    pub fn take_exits(&mut self) -> Vec<LocalFarmError> {
        let services = self.workers.iter_mut().chain(
            self.gateways
                .iter_mut()
                .chain(self.assets.iter_mut())
                .chain(self.schedulers.iter_mut()),
        );
        let infrastructure = std::iter::once(self.etcd.process_mut())
            .chain(self.garage.as_mut().map(Garage::process_mut));
        services
            .chain(infrastructure)
            .filter_map(ServiceProcess::take_exit)
            .collect()
    }

    /// Stops everything in reverse start order: workers, gateway, scheduler
    /// and assets get SIGTERM (SIGKILL after 10 s), then Garage, etcd and
    /// Postgres stop. Keeps going past failures and returns the first one.
    pub async fn shutdown(&mut self) -> Result<()> {
        let mut first_error = None;
        let mut note = |result: Result<()>| {
            if let Err(err) = result {
                tracing::warn!(error = %err, "shutdown step failed");
                first_error.get_or_insert(err);
            }
        };
        let workers =
            futures::future::join_all(self.workers.iter_mut().map(ServiceProcess::terminate)).await;
        workers.into_iter().for_each(&mut note);
        for gateway in &mut self.gateways {
            note(gateway.terminate().await);
        }
        for scheduler in self.schedulers.iter_mut().rev() {
            note(scheduler.terminate().await);
        }
        for assets in &mut self.assets {
            note(assets.terminate().await);
        }
        if let Some(garage) = self.garage.as_mut() {
            note(garage.stop().await);
        }
        note(self.etcd.stop().await);
        note(self.postgres.stop().await);
        tracing::info!(dir = %self.layout.dir.display(), "farm stopped");
        first_error.map_or(Ok(()), Err)
    }

    /// The farm's directory.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Parent of the workers' work dirs (`workers/<id>/`): inside the
    /// farm's directory unless other users cannot pass through it.
    pub fn workers_dir(&self) -> &Path {
        &self.layout.workers
    }

    /// The directory holding every process's log, `<dir>/logs`.
    pub fn log_dir(&self) -> &Path {
        &self.layout.logs
    }

    /// The (first) gateway's gRPC address as `127.0.0.1:PORT`.
    pub fn gateway_grpc_addr(&self) -> &str {
        self.gateway_endpoints
            .first()
            .map_or("", |e| e.grpc.as_str())
    }

    /// The (first) gateway's gRPC URL, `http://127.0.0.1:PORT` (`https`
    /// with [`FarmBuilder::tls`]), for a tonic channel.
    pub fn gateway_url(&self) -> String {
        self.gateway_urls()
            .into_iter()
            .next()
            .unwrap_or_else(|| "http://".to_owned())
    }

    /// Every gateway's gRPC URL, in start order ([`FarmBuilder::gateways`]).
    pub fn gateway_urls(&self) -> Vec<String> {
        self.gateway_endpoints
            .iter()
            .map(Endpoint::grpc_uri)
            .collect()
    }

    /// The (first) gateway's REST base URL, `http://127.0.0.1:PORT`
    /// (`https` with [`FarmBuilder::tls`]).
    pub fn gateway_http_url(&self) -> String {
        self.gateway_http_urls()
            .into_iter()
            .next()
            .unwrap_or_else(|| "http://".to_owned())
    }

    /// Every gateway's REST base URL, in start order.
    pub fn gateway_http_urls(&self) -> Vec<String> {
        self.gateway_endpoints
            .iter()
            .filter_map(Endpoint::http_url)
            .collect()
    }

    /// The farm CA's certificate (PEM) when it runs with TLS: what clients trust.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.certs.as_ref().map(|certs| certs.ca.as_path())
    }

    /// The certificate and key every service of a TLS farm presents.
    pub fn tls_certs(&self) -> Option<&FarmCerts> {
        self.certs.as_ref()
    }

    /// An admin token for the gateway, made afresh at each start (tokens of
    /// earlier starts of the same farm directory are revoked).
    pub fn admin_token(&self) -> &str {
        &self.secrets.admin_token
    }

    /// The secret workers join the scheduler with.
    pub fn join_token(&self) -> &str {
        &self.secrets.join_token
    }

    /// The secret the gateway, the scheduler and the assets service present
    /// to each other: a test holding it calls them as the gateway would.
    pub fn service_token(&self) -> &str {
        &self.secrets.service_token
    }

    /// The etcd client URL.
    pub fn etcd_url(&self) -> String {
        self.etcd.url()
    }

    /// The etcd user and password the farm's processes connect as.
    pub fn etcd_credentials(&self) -> (&str, &str) {
        self.etcd.credentials()
    }

    /// The scheduler's database, `postgres://postgres:PASSWORD@127.0.0.1:PORT/kiln`.
    pub fn database_url(&self) -> String {
        self.postgres.url()
    }

    /// [`Farm::database_url`] without the password, to show.
    pub fn database_public_url(&self) -> String {
        self.postgres.public_url()
    }

    /// The Garage S3 endpoint, when the farm uses S3.
    pub fn s3_endpoint(&self) -> Option<String> {
        self.garage.as_ref().map(Garage::endpoint)
    }

    /// A discovery client on the farm's etcd (prefix [`ETCD_PREFIX`]).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The first scheduler replica, e.g. to kill and restart it.
    pub fn scheduler_mut(&mut self) -> Option<&mut ServiceProcess> {
        self.schedulers.first_mut()
    }

    /// Every scheduler replica.
    pub fn schedulers_mut(&mut self) -> &mut [ServiceProcess] {
        &mut self.schedulers
    }

    /// Which replica leads now, as listed in etcd; `None` while none does.
    pub async fn leading_scheduler(&self) -> Result<Option<usize>> {
        let listed = self.discovery.find(service::SCHEDULER).await?;
        Ok(listed.iter().find_map(|endpoint| {
            let (_, rest) = endpoint.instance.split_once("replica-")?;
            rest.split('-').next()?.parse().ok()
        }))
    }

    /// The (first) assets service process.
    pub fn assets_mut(&mut self) -> Option<&mut ServiceProcess> {
        self.assets.first_mut()
    }

    /// How each assets replica was listed in etcd when it started (its
    /// instance, gRPC and ops addresses), by index.
    pub fn assets_endpoints(&self) -> &[Endpoint] {
        &self.assets_endpoints
    }

    /// Assets service replica number `index` (from 0, in start order).
    pub fn assets_replica_mut(&mut self, index: usize) -> Option<&mut ServiceProcess> {
        self.assets.get_mut(index)
    }

    /// The (first) gateway process; prefer [`Farm::restart_gateway`] to restart it.
    pub fn gateway_mut(&mut self) -> Option<&mut ServiceProcess> {
        self.gateways.first_mut()
    }

    /// Worker number `index` (from 0, in start order), if there is one.
    pub fn worker_mut(&mut self, index: usize) -> Option<&mut ServiceProcess> {
        self.workers.get_mut(index)
    }

    /// Every worker process, in start order.
    pub fn workers_mut(&mut self) -> &mut [ServiceProcess] {
        &mut self.workers
    }

    /// How many workers were started (running or not).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The Postgres cluster, e.g. to restart it.
    pub fn postgres_mut(&mut self) -> &mut Postgres {
        &mut self.postgres
    }

    /// The etcd server, e.g. to stop it in an outage test.
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    /// The Garage server, when the farm uses S3.
    pub fn garage_mut(&mut self) -> Option<&mut Garage> {
        self.garage.as_mut()
    }
}

/// The `--worker-id` of worker number `index`: `worker-<index>`.
pub fn worker_id(index: usize) -> String {
    format!("worker-{index}")
}

/// Starts `process` and waits until a `service` instance that was not
/// registered before shows up in etcd; returns that instance.
async fn start_and_register(
    discovery: &Discovery,
    service: &str,
    process: &mut ServiceProcess,
    timeout: Duration,
) -> Result<Endpoint> {
    let known: HashSet<String> = discovery
        .find(service)
        .await?
        .into_iter()
        .map(|e| e.instance)
        .collect();
    process.start()?;
    let deadline = Instant::now() + timeout;
    loop {
        let fresh = discovery
            .find(service)
            .await?
            .into_iter()
            .find(|e| !known.contains(&e.instance));
        if let Some(endpoint) = fresh {
            tracing::info!(process = process.name(), grpc = %endpoint.grpc, "service registered");
            return Ok(endpoint);
        }
        process.check_running()?;
        if Instant::now() >= deadline {
            return Err(LocalFarmError::NotReady {
                name: process.name().to_owned(),
                what: format!("registered in etcd as a {service}"),
                waited: timeout,
                log: process.log_path().to_path_buf(),
                tail: process.log_tail(TAIL_LINES),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `--grpc-listen` and `--http-listen` on 127.0.0.1 at `(grpc, http)` (0: any free port).
fn gateway_args((grpc, http): (u16, u16)) -> Vec<String> {
    vec![
        "--grpc-listen".to_owned(),
        format!("127.0.0.1:{grpc}"),
        "--http-listen".to_owned(),
        format!("127.0.0.1:{http}"),
    ]
}

async fn connect_discovery(etcd: &Etcd) -> Result<Discovery> {
    let (user, password) = etcd.credentials();
    let args = DiscoveryArgs {
        etcd_endpoints: vec![etcd.url()],
        etcd_prefix: ETCD_PREFIX.to_owned(),
        lease_ttl: 10,
        advertise_host: None,
        etcd_user: Some(user.to_owned()),
        etcd_password: Some(password.to_owned().into()),
    };
    Ok(Discovery::connect(&args, Duration::from_secs(10)).await?)
}

/// Holds `<dir>/farm.lock` so two farms never share a directory (they would
/// fight over its Postgres cluster).
fn lock_dir(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join("farm.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LocalFarmError::io(&path, e))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => LocalFarmError::Locked {
            dir: dir.to_path_buf(),
            lock: path.clone(),
        },
        other => LocalFarmError::io(&path, other.into()),
    })
}
