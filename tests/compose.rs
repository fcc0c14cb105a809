//! `docker compose up` for real: the repository's docker-compose.yml on a
//! real Docker engine (started here if none runs), with every image built
//! locally (tests/docker/build-images.sh: a debootstrap base, stand-ins for
//! the third-party images, Kiln's images from the binaries this test run
//! built). It waits for every service to be healthy and for the `example`
//! service's render in ./kiln-out/compose, renders the example scene from
//! the host through the gateway as a user would, scales the workers to 3
//! and kills one mid-job (the job still delivers every frame), restarts the
//! schedulers (earlier jobs are still there), and checks that `down -v`
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kiln_localfarm::{free_port, locate_binary};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, docker_compose, example_scene, probe_video, repo_root, state_of};
use tokio::time::Instant;

/// Compose project name: fixed, so a run that died is cleaned up by the next.
const PROJECT: &str = "kiln-compose-test";
/// Tag of Kiln's images built for this test (docker-compose.yml's KILN_IMAGE_TAG).
const IMAGE_TAG: &str = "compose-test";
/// Containers of the default profile: postgres, etcd, garage, assets, two
/// schedulers, gateway, two workers, prometheus.
const SERVICES: [(&str, usize); 8] = [
    ("postgres", 1),
    ("etcd", 1),
    ("garage", 1),
    ("assets", 1),
    ("scheduler", 2),
    ("gateway", 1),
    ("worker", 2),
    ("prometheus", 1),
];
const PATIENCE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread")]
async fn compose_farm_renders_survives_a_lost_worker_and_restarted_schedulers() -> Result<()> {
    let started = Instant::now();
    ensure_docker_engine()?;
    let bin_dir = locate_binary("kiln-gateway")?
        .parent()
        .map(Path::to_path_buf)
        .context("the binaries' directory")?;
    let built = run(
        Command::new(repo_root().join("tests/docker/build-images.sh"))
            .arg(&bin_dir)
            .arg(IMAGE_TAG),
    )?;
    println!(
        "images built in {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        built.trim()
    );

    let dir = tempfile::Builder::new().prefix("kiln-compose-").tempdir()?;
    let farm = ComposeFarm::new(dir.path())?;
    let result = exercise(&farm, dir.path()).await;
    if result.is_err() {
        farm.print_logs();
    }
    let down = farm.down_and_check_nothing_left();
    println!("whole test: {:.0} s", started.elapsed().as_secs_f64());
    result.and(down)
}

async fn exercise(farm: &ComposeFarm, dir: &Path) -> Result<()> {
    let up = Instant::now();
    farm.compose(&["up", "-d"])?;
    farm.wait_healthy(&SERVICES).await?;
    println!(
        "every service healthy {:.0} s after up",
        up.elapsed().as_secs_f64()
    );

    // The documented command prints the admin token; the host renders the
    // bundled example through the published gateway, as a user would.
    let token = run(Command::new(repo_root().join("deploy/admin-token.sh")).arg(&farm.env_file))?
        .trim()
        .to_owned();
    let scene = example_scene(dir)?;
    let out = dir.join("host-render");
    let render = run(Command::new(locate_binary("kiln")?)
        .args(["render"])
        .arg(&scene)
        .args(["--frames", "1-24", "--chunk", "4", "--out"])
        .arg(&out)
        .args(["--gateway", &farm.gateway_url(), "--token", &token]))?;
    let video = find_files(&out, |p| p.extension().is_some_and(|e| e == "mp4"))?;
    ensure!(video.len() == 1, "one video from the host render: {render}");
    let (frames, codec, _) = probe_video(&video[0])?;
    assert_eq!((frames, codec.as_str()), (24, "h264"), "{render}");
    println!(
        "first video through the gateway {:.0} s after up",
        up.elapsed().as_secs_f64()
    );

    farm.wait_for_example().await?;

    let mut client = Client::connect_url(&farm.gateway_url(), &token).await?;
    let killed = scale_and_kill_a_worker(farm, &mut client, &scene).await?;
    let before = list_jobs(&mut client).await?;

    farm.compose(&["restart", "scheduler"])?;
    farm.wait_healthy(&SERVICES_AFTER_KILLING).await?;
    let after = list_jobs_once_a_leader_answers(&mut client).await?;
    assert_eq!(
        after, before,
        "every job and its state are still there after the schedulers restarted"
    );
    assert!(
        after.get(&killed) == Some(&(pb::JobState::Succeeded as i32)),
        "{after:?}"
    );
    Ok(())
}

const SERVICES_AFTER_SCALING: [(&str, usize); 8] = [
    ("postgres", 1),
    ("etcd", 1),
    ("garage", 1),
    ("assets", 1),
    ("scheduler", 2),
    ("gateway", 1),
    ("worker", 3),
    ("prometheus", 1),
];

/// After one of the 3 workers was killed (its container stays, exited).
const SERVICES_AFTER_KILLING: [(&str, usize); 8] = [
    ("postgres", 1),
    ("etcd", 1),
    ("garage", 1),
    ("assets", 1),
    ("scheduler", 2),
    ("gateway", 1),
    ("worker", 2),
    ("prometheus", 1),
];

/// Scales to 3 workers, submits a 48-frame job, kills the container of a
/// worker while it renders, and checks the job still delivers every frame.
/// Returns the job's id.
async fn scale_and_kill_a_worker(
    farm: &ComposeFarm,
    client: &mut Client,
    scene: &Path,
) -> Result<String> {
    farm.compose(&["up", "-d", "--no-recreate", "--scale", "worker=3"])?;
    farm.wait_healthy(&SERVICES_AFTER_SCALING).await?;
    let job = client.submit_blender(scene, "1-48", 2).await?;
    let victim = rendering_worker(client, &job.id).await?;
    let container = farm
        .containers("worker")?
        .into_iter()
        .find(|id| victim.starts_with(&id[..12.min(id.len())]))
        .with_context(|| format!("no worker container runs worker {victim}"))?;
    run(Command::new("docker").args(["kill", &container]))?;
    println!("killed worker container {container} (worker {victim}) while it rendered");
    let job = client
        .wait_for_job(&job.id, PATIENCE, kiln_tests::is_final)
        .await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let outputs = client.outputs(&job.id).await?;
    let frames = outputs
        .iter()
        .filter(|o| o.path.ends_with(".png") && o.path.contains("frame_"))
        .count();
    assert_eq!(
        frames, 48,
        "every frame despite the lost worker: {outputs:?}"
    );
    Ok(job.id)
}

/// A worker id rendering one of the job's tasks, once one is running.
async fn rendering_worker(client: &mut Client, job_id: &str) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let tasks = client.tasks(job_id).await?;
        if let Some(task) = tasks
            .iter()
            .find(|t| t.state == pb::TaskState::Running as i32 && !t.worker_id.is_empty())
        {
            return Ok(task.worker_id.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "no task of {job_id} ever ran: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job the admin sees, with its state.
async fn list_jobs(client: &mut Client) -> Result<BTreeMap<String, i32>> {
    let jobs = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    Ok(jobs.into_iter().map(|j| (j.id, j.state)).collect())
}

async fn list_jobs_once_a_leader_answers(client: &mut Client) -> Result<BTreeMap<String, i32>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match list_jobs(client).await {
            Ok(jobs) => return Ok(jobs),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The compose project under test, with its own credentials and ports.
struct ComposeFarm {
    env_file: PathBuf,
    grpc_port: u16,
}

impl ComposeFarm {
    /// Credentials from deploy/gen-env.sh in `dir`, free host ports, and a
    /// clean slate: whatever an earlier run of this test left is removed.
    fn new(dir: &Path) -> Result<Self> {
        let env_file = dir.join("compose.env");
        run(Command::new(repo_root().join("deploy/gen-env.sh")).arg(&env_file))?;
        let grpc_port = free_port()?;
        let extra = format!(
            "KILN_IMAGE_TAG={IMAGE_TAG}\nKILN_GRPC_PORT={grpc_port}\nKILN_HTTP_PORT={}\nKILN_PROMETHEUS_PORT={}\n",
            free_port()?,
            free_port()?
        );
        let mut text = std::fs::read_to_string(&env_file)?;
        text.push_str(&extra);
        std::fs::write(&env_file, text)?;
        let farm = Self {
            env_file,
            grpc_port,
        };
        farm.compose(&["down", "-v", "--remove-orphans"])?;
        // The example writes here; earlier runs' files must not count.
        for stale in find_files(&farm.example_out(), |_| true)? {
            std::fs::remove_file(stale)?;
        }
        Ok(farm)
    }

    fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn example_out(&self) -> PathBuf {
        repo_root().join("kiln-out/compose")
    }

    /// Runs `docker compose ARGS` on the repository's compose file.
    fn compose(&self, args: &[&str]) -> Result<String> {
        let mut command = docker_compose();
        command
            .args(["-p", PROJECT, "--env-file"])
            .arg(&self.env_file)
            .arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .args(args);
        run(&mut command)
    }

    /// Ids of the running or stopped containers of `service`.
    fn containers(&self, service: &str) -> Result<Vec<String>> {
        Ok(self
            .compose(&["ps", "-q", service])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Waits until each service runs its expected number of healthy
    /// containers (stopped ones aside).
    async fn wait_healthy(&self, expected: &[(&str, usize)]) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut waiting = Vec::new();
            for (service, count) in expected {
                let states = self.health_of(service)?;
                let healthy = states.iter().filter(|s| s.as_str() == "running healthy");
                if healthy.count() != *count {
                    waiting.push(format!("{service}: {states:?}"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("services never became healthy: {}", waiting.join("; "));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// "STATUS HEALTH" of each container of `service`.
    fn health_of(&self, service: &str) -> Result<Vec<String>> {
        let ids = self.containers(service)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let format =
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}";
        let output = run(Command::new("docker")
            .args(["inspect", "-f", format])
            .args(&ids))?;
        Ok(output.lines().map(str::to_owned).collect())
    }

    /// Waits for the `example` service to finish, and checks what it wrote
    /// into ./kiln-out/compose: 24 frames and their video.
    async fn wait_for_example(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ids = self.containers("example")?;
            let state = match ids.first() {
                Some(id) => run(Command::new("docker").args([
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{.State.ExitCode}}",
                    id,
                ]))?,
                None => String::new(),
            };
            match state.trim() {
                "exited 0" => break,
                _ if Instant::now() > deadline => {
                    bail!("the example never finished: {state:?}")
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        let out = self.example_out();
        let frames = find_files(&out, |p| {
            p.extension().is_some_and(|e| e == "png")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("frame_"))
                && !p.to_string_lossy().contains("thumbnails")
        })?;
        let videos = find_files(&out, |p| p.extension().is_some_and(|e| e == "mp4"))?;
        assert_eq!(
            frames.len(),
            24,
            "the example's frames in {}",
            out.display()
        );
        ensure!(
            videos.len() == 1,
            "the example's video in {}",
            out.display()
        );
        assert_eq!(probe_video(&videos[0])?.0, 24, "{}", videos[0].display());
        println!("the example service rendered into {}", out.display());
        Ok(())
    }

    /// The last lines of every container's log, for a failure's report.
    fn print_logs(&self) {
        match self.compose(&["logs", "--no-color", "--tail", "40"]) {
            Ok(logs) => println!("--- docker compose logs ---\n{logs}"),
            Err(err) => println!("cannot read the compose logs: {err:#}"),
        }
    }

    /// `down -v`, then nothing of the project may remain: no container,
    /// volume or network.
    fn down_and_check_nothing_left(&self) -> Result<()> {
        self.compose(&["down", "-v", "--remove-orphans"])?;
        let label = format!("label=com.docker.compose.project={PROJECT}");
        for kind in [
            &["ps", "-a", "-q", "--filter"][..],
            &["volume", "ls", "-q", "--filter"][..],
            &["network", "ls", "-q", "--filter"][..],
        ] {
            let left = run(Command::new("docker").args(kind).arg(&label))?;
            ensure!(left.trim().is_empty(), "`down -v` left {kind:?}: {left}");
        }
        Ok(())
    }
}

/// Makes sure a Docker engine answers: starts `dockerd` (as root) when none
/// runs. Fails, saying why, when there is no engine to be had.
fn ensure_docker_engine() -> Result<()> {
    if docker_answers() {
        return Ok(());
    }
    let is_root = nix::unistd::geteuid().is_root();
    ensure!(
        is_root,
        "no Docker engine answers `docker info`, and this test starts `dockerd` only as root: \
         start it (`sudo dockerd &`, or your service manager) and run the test again"
    );
    let log_dir = cache_dir().join("docker");
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::File::create(log_dir.join("dockerd.log"))?;
    // Its own session, so it outlives this test like a system service.
    let mut dockerd = Command::new("setsid");
    dockerd
        .arg("dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Descriptors this test inherited (a build lock's flock among them) must
    // not live on in the daemon: it outlives the test by design.
    // SAFETY: between fork and exec only close(2), which is async-signal-safe.
    unsafe {
        dockerd.pre_exec(|| {
            for fd in 3..1024 {
                nix::libc::close(fd);
            }
            Ok(())
        });
    }
    dockerd.spawn().context(
        "cannot start dockerd: is Debian's docker.io installed? scripts/setup.sh installs it",
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if docker_answers() {
            println!("started dockerd (log in {})", log_dir.display());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "dockerd did not answer within a minute; see {}",
        log_dir.join("dockerd.log").display()
    )
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("kiln")
}

/// Runs `command`; its stdout, or an error quoting both outputs.
fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// Files under `dir` (recursively) that `keep` accepts; none when `dir` is missing.
fn find_files(dir: &Path, keep: impl Fn(&Path) -> bool + Copy) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err.into()),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(find_files(&path, keep)?);
        } else if keep(&path) {
            found.push(path);
        }
    }
    Ok(found)
}
