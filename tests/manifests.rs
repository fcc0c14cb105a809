//! Each Kiln service binary, started with exactly the environment its
//! Kubernetes manifest (deploy/k8s) and its image (deploy/Dockerfile's ENV
//! lines) give it, against real Postgres, etcd and Garage on this machine,
//! becomes ready: a variable missing from a manifest fails here, without a
//! cluster.
//!
//! The only changes are addresses, since these processes share one network
//! and filesystem where pods have their own: the cluster names of Postgres,
//! etcd and Garage become the local servers' addresses, each `0.0.0.0:PORT`
//! listen address becomes `127.0.0.1:<free port>`, the pod IP is 127.0.0.1,
//! and each volume's mount path becomes a temporary directory. The
//! credentials are the Secret deploy/k8s/gen-secret.sh makes, and the local
//! Postgres and Garage are set up with them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kiln_localfarm::{Etcd, Garage, Postgres, free_port, locate_binary};
use kiln_tests::repo_root;
use serde::Deserialize;
use serde_yaml::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The PATH of Kiln's images (Docker's default; the Dockerfile sets none).
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Kiln's workloads, in the order they can become ready: the gateway is
/// ready once a scheduler and the assets service are listed.
const SERVICES: [&str; 4] = ["assets", "scheduler", "gateway", "worker"];
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn every_service_becomes_ready_with_its_manifests_environment() -> Result<()> {
    let manifests = Manifests::load(&repo_root().join("deploy/k8s"))?;
    let found: BTreeSet<&str> = manifests.workloads.keys().map(String::as_str).collect();
    assert_eq!(
        found,
        BTreeSet::from(SERVICES),
        "deploy/k8s runs exactly Kiln's four services"
    );
    let secret = generated_secret()?;
    let dir = kiln_tests::e2e_dir()?;
    let infra = Infrastructure::start(dir.path(), &secret).await?;

    // The check can fail: the gateway without its database URL never serves.
    let gateway = manifests.environment("gateway", &secret, &infra, dir.path())?;
    let mut broken = gateway.clone();
    broken.vars.remove("KILN_DATABASE_URL");
    let mut process = broken.spawn("gateway-without-database", dir.path())?;
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .context("the gateway without KILN_DATABASE_URL kept running")??;
    assert!(!status.success(), "the gateway needs KILN_DATABASE_URL");

    let mut running = Vec::new();
    for service in SERVICES {
        let env = manifests.environment(service, &secret, &infra, dir.path())?;
        println!(
            "{service}: {}",
            env.vars.keys().cloned().collect::<Vec<_>>().join(" ")
        );
        let mut child = env.spawn(service, dir.path())?;
        let ready = env.wait_ready(&mut child, service, dir.path()).await;
        running.push(child);
        ready?;
        println!("{service} is ready");
    }
    for mut child in running {
        let _ = child.kill().await;
    }
    Ok(())
}

/// The manifests' ConfigMaps and Kiln's Deployments (by name).
struct Manifests {
    config_maps: HashMap<String, BTreeMap<String, String>>,
    workloads: BTreeMap<String, Value>,
}

impl Manifests {
    fn load(dir: &Path) -> Result<Self> {
        let mut config_maps = HashMap::new();
        let mut workloads = BTreeMap::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let object = Value::deserialize(document)
                    .with_context(|| format!("parsing {}", file.display()))?;
                let name = text_at(&object, &["metadata", "name"]).to_owned();
                match text_at(&object, &["kind"]) {
                    "ConfigMap" => {
                        let data = string_map(&object["data"])?;
                        config_maps.insert(name, data);
                    }
                    "Deployment" if is_kiln(&object) => {
                        workloads.insert(name, object);
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            config_maps,
            workloads,
        })
    }

    /// The environment of `service`'s container: its image's ENV, then its
    /// envFrom ConfigMaps, then its env entries, with addresses made local.
    fn environment(
        &self,
        service: &str,
        secret: &BTreeMap<String, String>,
        infra: &Infrastructure,
        dir: &Path,
    ) -> Result<Environment> {
        let workload = self
            .workloads
            .get(service)
            .with_context(|| format!("no Deployment {service}"))?;
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        let mut vars = image_environment(service)?;
        for source in sequence(&container["envFrom"]) {
            let name = text_at(source, &["configMapRef", "name"]);
            let data = self.config_maps.get(name).with_context(|| {
                format!("{service} reads ConfigMap {name}, which no manifest makes")
            })?;
            vars.extend(data.clone());
        }
        for entry in sequence(&container["env"]) {
            let name = text_at(entry, &["name"]).to_owned();
            let value = match (&entry["value"], &entry["valueFrom"]) {
                (Value::String(value), _) => value.clone(),
                (_, from) if from.get("secretKeyRef").is_some() => {
                    let key = text_at(from, &["secretKeyRef", "key"]);
                    secret
                        .get(key)
                        .with_context(|| format!("{service}'s {name} reads secret key {key}, which gen-secret.sh does not make"))?
                        .clone()
                }
                (_, from) => match text_at(from, &["fieldRef", "fieldPath"]) {
                    "status.podIP" => "127.0.0.1".to_owned(),
                    "metadata.name" => format!("{service}-0"),
                    other => bail!("{service}'s {name}: no local value for field {other:?}"),
                },
            };
            vars.insert(name, value);
        }
        let mounts: Vec<String> = sequence(&container["volumeMounts"])
            .iter()
            .map(|m| text_at(m, &["mountPath"]).to_owned())
            .collect();
        let mut localizer =
            Localizer::new(infra, &mounts, &dir.join(format!("{service}-volumes")))?;
        for value in vars.values_mut() {
            *value = localizer.localize(value)?;
        }
        let ops = vars
            .get("KILN_OPS_LISTEN")
            .with_context(|| format!("{service} sets no ops address"))?
            .clone();
        Ok(Environment {
            binary: locate_binary(&format!("kiln-{service}"))?,
            vars,
            ops,
        })
    }
}

/// Whether a Deployment runs one of Kiln's own images.
fn is_kiln(object: &Value) -> bool {
    sequence(&object["spec"]["template"]["spec"]["containers"])
        .iter()
        .any(|c| text_at(c, &["image"]).starts_with("ghcr.io/kiln/"))
}

/// The ENV lines of `target`'s stage in deploy/Dockerfile and of the stages
/// it is built from, oldest first.
fn image_environment(target: &str) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile"))?;
    let mut stages: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["FROM", from, "AS", name] => {
                stages.insert((*name).to_owned(), ((*from).to_owned(), Vec::new()));
                current = Some((*name).to_owned());
            }
            ["ENV", pairs @ ..] => {
                if let Some((_, env)) = current.as_ref().and_then(|c| stages.get_mut(c)) {
                    env.extend(pairs.iter().map(|p| (*p).to_owned()));
                }
            }
            _ => {}
        }
    }
    let mut chain = Vec::new();
    let mut stage = target.to_owned();
    while let Some((from, env)) = stages.get(&stage) {
        chain.push(env.clone());
        stage = from.clone();
    }
    ensure!(!chain.is_empty(), "deploy/Dockerfile has no stage {target}");
    let mut vars = BTreeMap::new();
    for pair in chain.into_iter().rev().flatten() {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("ENV {pair} is not NAME=VALUE"))?;
        vars.insert(name.to_owned(), value.to_owned());
    }
    Ok(vars)
}

/// Rewrites cluster addresses, listen addresses and mount paths to this
/// machine's equivalents.
struct Localizer {
    hosts: Vec<(String, String)>,
    listens: HashMap<String, String>,
    mounts: Vec<(String, PathBuf)>,
}

impl Localizer {
    fn new(infra: &Infrastructure, mounts: &[String], volumes: &Path) -> Result<Self> {
        let mut local_mounts = Vec::new();
        for (index, mount) in mounts.iter().enumerate() {
            let path = volumes.join(index.to_string());
            std::fs::create_dir_all(&path)?;
            local_mounts.push((mount.clone(), path));
        }
        Ok(Self {
            hosts: vec![
                (
                    "postgres.kiln.svc:5432".to_owned(),
                    infra.postgres_address(),
                ),
                ("etcd.kiln.svc:2379".to_owned(), infra.etcd_address()),
                ("garage.kiln.svc:3900".to_owned(), infra.garage_address()),
            ],
            listens: HashMap::new(),
            mounts: local_mounts,
        })
    }

    fn localize(&mut self, value: &str) -> Result<String> {
        if let Some(port) = value.strip_prefix("0.0.0.0:") {
            let local = match self.listens.get(port) {
                Some(local) => local.clone(),
                None => format!("127.0.0.1:{}", free_port()?),
            };
            self.listens.insert(port.to_owned(), local.clone());
            return Ok(local);
        }
        for (mount, local) in &self.mounts {
            if let Some(rest) = value.strip_prefix(mount.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return Ok(format!("{}{rest}", local.display()));
            }
        }
        let mut value = value.to_owned();
        for (cluster, local) in &self.hosts {
            value = value.replace(cluster, local);
        }
        Ok(value)
    }
}

/// One service's environment, ready to start its binary with.
#[derive(Clone)]
struct Environment {
    binary: PathBuf,
    vars: BTreeMap<String, String>,
    ops: String,
}

impl Environment {
    /// Starts the binary with this environment and nothing else (no
    /// arguments, no inherited variables).
    fn spawn(&self, name: &str, dir: &Path) -> Result<Child> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        Command::new(&self.binary)
            .env_clear()
            .env("PATH", IMAGE_PATH)
            .envs(&self.vars)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))
    }

    /// Polls `/readyz` on the ops address until it answers 200.
    async fn wait_ready(&self, child: &mut Child, name: &str, dir: &Path) -> Result<()> {
        let url = format!("http://{}/readyz", self.ops);
        let deadline = Instant::now() + READY_TIMEOUT;
        let log = dir.join(format!("{name}.log"));
        let tail = || kiln_localfarm::log_tail(&log, 30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}) before it was ready:\n{}", tail());
            }
            let probe = url.clone();
            let answer = tokio::task::spawn_blocking(move || match ureq::get(&probe).call() {
                Ok(response) => Some((200, response.into_string().unwrap_or_default())),
                Err(ureq::Error::Status(code, response)) => {
                    Some((code, response.into_string().unwrap_or_default()))
                }
                Err(_) => None,
            })
            .await?;
            match answer {
                Some((200, _)) => return Ok(()),
                Some((503, body)) if short_of_disk_only(&body) => {
                    println!(
                        "{name}: every check passes but disk_space: this machine has less free disk \
                         than the manifest's KILN_MIN_FREE_BYTES asks of a worker ({body})"
                    );
                    return Ok(());
                }
                other if Instant::now() > deadline => {
                    bail!("{name} never became ready: {other:?}\n{}", tail())
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// Whether a `/readyz` answer fails only because the disk holds less free
/// space than asked: the manifest's minimum is about the machine, not about a
/// missing setting, and shared machines run short. Any other failing check,
/// or a disk check that cannot read its path, still counts as not ready.
fn short_of_disk_only(body: &str) -> bool {
    let Ok(readiness) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let checks = readiness["checks"].as_array().cloned().unwrap_or_default();
    let failing: Vec<_> = checks
        .iter()
        .filter(|c| c["ok"].as_bool() != Some(true))
        .collect();
    matches!(failing.as_slice(), [only] if only["name"] == "disk_space"
        && only["detail"].as_str().is_some_and(|d| d.contains("below the minimum")))
}

/// Postgres, etcd and Garage on this machine, set up with the Secret's credentials.
struct Infrastructure {
    postgres: Postgres,
    etcd: Etcd,
    garage: Garage,
}

impl Infrastructure {
    async fn start(dir: &Path, secret: &BTreeMap<String, String>) -> Result<Self> {
        let mut postgres = Postgres::new(dir.join("postgres"), dir.join("postgres.log"))?;
        postgres.start().await?;
        // What the manifest's Postgres image does with POSTGRES_USER, _DB and
        // _PASSWORD: the user owns the database and logs in with the password.
        let password = secret
            .get("postgres-password")
            .context("the Secret has no postgres-password")?;
        let setup = format!(
            "CREATE ROLE kiln LOGIN PASSWORD '{password}'; ALTER DATABASE kiln OWNER TO kiln;"
        );
        // The private Postgres takes only its superuser's password (SCRAM).
        let superuser_password = std::fs::read_to_string(postgres.password_file())?;
        let output = std::process::Command::new(postgres.bin_dir().join("psql"))
            .env("PGPASSWORD", superuser_password.trim())
            .args(["-h", "127.0.0.1", "-p", &postgres.port().to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "kiln",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &setup,
            ])
            .output()?;
        ensure!(
            output.status.success(),
            "creating the kiln role: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The manifests' etcd runs without authentication (a NetworkPolicy
        // lets only Kiln's pods reach it), and so does this one.
        let mut etcd = Etcd::new(dir.join("etcd"), dir.join("etcd.log"))?.without_auth();
        etcd.start().await?;
        // The garage manifest's credentials, where kiln_localfarm::Garage keeps its own.
        let garage_dir = dir.join("garage");
        std::fs::create_dir_all(&garage_dir)?;
        let credentials = serde_json::json!({
            "access_key": secret.get("s3-access-key"),
            "secret_key": secret.get("s3-secret-key"),
            "rpc_secret": secret.get("garage-rpc-secret"),
        });
        std::fs::write(
            garage_dir.join("credentials.json"),
            serde_json::to_vec(&credentials)?,
        )?;
        let mut garage = Garage::new(&garage_dir, dir.join("garage.log"))?;
        garage.start().await?;
        Ok(Self {
            postgres,
            etcd,
            garage,
        })
    }

    fn postgres_address(&self) -> String {
        format!("127.0.0.1:{}", self.postgres.port())
    }

    fn etcd_address(&self) -> String {
        without_scheme(&self.etcd.url())
    }

    fn garage_address(&self) -> String {
        without_scheme(&self.garage.endpoint())
    }
}

fn without_scheme(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .to_owned()
}

/// The `stringData` of the Secret deploy/k8s/gen-secret.sh prints.
fn generated_secret() -> Result<BTreeMap<String, String>> {
    let output =
        std::process::Command::new(repo_root().join("deploy/k8s/gen-secret.sh")).output()?;
    ensure!(output.status.success(), "deploy/k8s/gen-secret.sh failed");
    let secret: Value = serde_yaml::from_slice(&output.stdout)?;
    ensure!(
        text_at(&secret, &["kind"]) == "Secret",
        "gen-secret.sh prints a Secret"
    );
    string_map(&secret["stringData"])
}

fn text_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn sequence(value: &Value) -> Vec<&Value> {
    value
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn string_map(value: &Value) -> Result<BTreeMap<String, String>> {
    let Some(mapping) = value.as_mapping() else {
        return Ok(BTreeMap::new());
    };
    mapping
        .iter()
        .map(|(k, v)| {
            let key = k.as_str().context("a non-string key")?.to_owned();
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => bail!("{key}: {other:?} is not a string"),
            };
            Ok((key, value))
        })
        .collect()
}
