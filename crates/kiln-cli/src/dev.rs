//! `kiln dev`: a whole farm on this machine until Ctrl-C.

use std::path::Path;
use std::time::Duration;

use kiln_localfarm::Farm;

use crate::cli::DevArgs;
use crate::connect::{DEV_FILE, DevInfo};
use crate::error::CliError;

/// How often the farm's processes are checked for crashes.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let dir = std::path::absolute(&args.dir).map_err(CliError::io(&args.dir))?;
    let mut builder = Farm::builder(&dir)
        .workers(usize::from(args.workers))
        .gateways(usize::from(args.gateways))
        .s3(args.s3)
        .tls(args.tls)
        .gateway_ports(args.grpc_port, args.http_port);
    if args.no_sandbox {
        say!("WARNING: tasks run unsandboxed (--no-sandbox), as your own user");
        builder = builder.env("KILN_NO_SANDBOX", "true");
    }
    say!("starting a Kiln farm in {} ...", dir.display());
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // Dropping a half-started farm on Ctrl-C stops whatever it started.
    let mut farm = tokio::select! {
        farm = builder.start() => farm?,
        () = &mut signal => return Err(CliError::Interrupted),
    };
    let (etcd_user, etcd_password) = farm.etcd_credentials();
    let info = DevInfo {
        gateway_grpc: farm.gateway_url(),
        gateway_http: farm.gateway_http_url(),
        gateways_http: farm.gateway_http_urls(),
        etcd: farm.etcd_url(),
        etcd_user: etcd_user.to_owned(),
        etcd_password: etcd_password.to_owned(),
        database: farm.database_url(),
        logs: farm.log_dir().to_path_buf(),
        token: farm.admin_token().to_owned(),
        ca: farm.tls_ca().map(Path::to_path_buf),
    };
    let dev_file = dir.join(DEV_FILE);
    write_dev_info(&dev_file, &info)?;
    print_summary(&farm, &info, &dev_file);

    supervise(&mut farm, &mut signal).await;
    say!("stopping the farm ...");
    if let Err(err) = std::fs::remove_file(&dev_file)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("cannot remove {}: {err}", dev_file.display());
    }
    farm.shutdown().await?;
    say!("stopped; data kept in {}", dir.display());
    Ok(())
}

fn write_dev_info(path: &Path, info: &DevInfo) -> Result<(), CliError> {
    let json = serde_json::to_vec_pretty(info).map_err(|source| CliError::DevInfo {
        path: path.to_path_buf(),
        source,
    })?;
    // It holds the admin token and the database and etcd passwords.
    use std::io::Write as _;
    let mut file = crate::profiles::private_file(path)?;
    file.write_all(&json).map_err(CliError::io(path))
}

fn print_summary(farm: &Farm, info: &DevInfo, dev_file: &Path) {
    // Scripts get where the farm is; its secrets stay in dev.json.
    crate::output::emit(&serde_json::json!({
        "event": "running",
        "dir": farm.dir(),
        "dev_file": dev_file,
        "gateway_grpc": info.gateway_grpc,
        "gateway_http": info.gateway_http,
        "gateways_http": info.gateways_http,
        "workers": farm.worker_count(),
        "logs": info.logs,
    }));
    say!("Kiln dev farm is running in {}", farm.dir().display());
    say!("  gateway gRPC  {}", info.gateway_grpc);
    say!("  gateway REST  {}", info.gateway_http);
    for (n, url) in info.gateways_http.iter().enumerate().skip(1) {
        say!(
            "  gateway {}     REST {url}, gRPC {}",
            n + 1,
            grpc_of(farm, n)
        );
    }
    // Their passwords are in the dev file (readable by its owner only).
    say!("  Postgres      {}", farm.database_public_url());
    say!("  etcd          {} (user {})", info.etcd, info.etcd_user);
    if let Some(ca) = &info.ca {
        say!("  TLS CA        {}", ca.display());
    }
    if let Some(s3) = farm.s3_endpoint() {
        say!("  S3 (Garage)   {s3}");
    }
    say!("  workers       {}", farm.worker_count());
    say!("  logs          {}", info.logs.display());
    say!("  admin token   {}", info.token);
    say!("    (REST: curl -H 'authorization: Bearer <token>' ...; gRPC: metadata authorization)");
    say!(
        "kiln commands run under {} find it through {} (it holds the Postgres and etcd passwords too).",
        parent_of(farm.dir()).display(),
        dev_file.display()
    );
    say!("Press Ctrl-C to stop.");
}

fn grpc_of(farm: &Farm, index: usize) -> String {
    farm.gateway_urls().get(index).cloned().unwrap_or_default()
}

fn parent_of(dir: &Path) -> &Path {
    dir.parent().unwrap_or(dir)
}

/// Runs until `signal`, warning about processes that die meanwhile.
async fn supervise(farm: &mut Farm, signal: &mut std::pin::Pin<&mut impl Future<Output = ()>>) {
    loop {
        tokio::select! {
            () = signal.as_mut() => return,
            () = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {
                for exit in farm.take_exits() {
                    eprintln!("warning: {exit}");
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for sigterm; only ctrl-c stops the farm");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
