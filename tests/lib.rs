//! Helpers for Kiln's end-to-end tests: a farm of real processes, a client
//! speaking to its gateway, and scenes made with the real Blender.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_asset_client::{AssetClient, CallCredentials};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_proto::v1::farm_service_client::FarmServiceClient;
use kiln_proto::v1::job_service_client::JobServiceClient;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub mod hand_worker;
pub mod sick_store;
pub mod webdriver;

/// A finished job takes at most this long in these tests.
pub const JOB_DEADLINE: Duration = Duration::from_secs(300);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh temporary directory for a test's farm. Other users may pass
/// through it (not list it): the workers' sandboxed tasks run as uids of
/// their own and must reach their working directories below it.
pub fn e2e_dir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("kiln-e2e-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

/// Starts a farm in a fresh temporary directory (kept alive by the returned guard).
pub async fn start_farm(workers: usize, s3: bool) -> Result<(Farm, tempfile::TempDir)> {
    start_farm_with(workers, s3, &[]).await
}

/// [`start_farm`] with environment variables for every Kiln service.
pub async fn start_farm_with(
    workers: usize,
    s3: bool,
    env: &[(&str, &str)],
) -> Result<(Farm, tempfile::TempDir)> {
    let dir = e2e_dir()?;
    let mut builder = Farm::builder(dir.path().join("farm"))
        .workers(workers)
        .s3(s3);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let farm = builder.start().await?;
    Ok((farm, dir))
}

/// A farm with TLS everywhere ([`kiln_localfarm::FarmBuilder::tls`]) in a fresh temporary directory.
pub async fn start_farm_tls(workers: usize) -> Result<(Farm, tempfile::TempDir)> {
    let dir = e2e_dir()?;
    let farm = Farm::builder(dir.path().join("farm"))
        .workers(workers)
        .tls(true)
        .start()
        .await?;
    Ok((farm, dir))
}

pub type AuthChannel = InterceptedService<Channel, CallCredentials>;

/// A gRPC client of the farm's gateway, carrying a bearer token.
#[derive(Clone)]
pub struct Client {
    pub jobs: JobServiceClient<AuthChannel>,
    pub farm: FarmServiceClient<AuthChannel>,
    pub assets: AssetClient,
}

impl Client {
    /// A client with the farm's admin token.
    pub async fn connect(farm: &Farm) -> Result<Self> {
        Self::connect_as(farm, farm.admin_token()).await
    }

    /// A client presenting `token` (over TLS, trusting the farm's CA, when the farm serves TLS).
    pub async fn connect_as(farm: &Farm, token: &str) -> Result<Self> {
        Self::connect_to(farm, &farm.gateway_url(), token).await
    }

    /// [`Client::connect_as`] through the gateway at `url` (one of [`Farm::gateway_urls`]).
    pub async fn connect_to(farm: &Farm, url: &str, token: &str) -> Result<Self> {
        let channel = kiln_tls::ClientTls::trusting(farm.tls_ca())?
            .endpoint(url)?
            .connect()
            .await?;
        Self::over(channel, token)
    }

    /// A client of the plaintext gateway at `url` (a farm this test did not start), presenting `token`.
    pub async fn connect_url(url: &str, token: &str) -> Result<Self> {
        let channel = Channel::from_shared(url.to_owned())?.connect().await?;
        Self::over(channel, token)
    }

    fn over(channel: Channel, token: &str) -> Result<Self> {
        let credentials = CallCredentials::bearer(token)?;
        Ok(Self {
            jobs: JobServiceClient::with_interceptor(channel.clone(), credentials.clone())
                .max_decoding_message_size(16 * 1024 * 1024),
            farm: FarmServiceClient::with_interceptor(channel.clone(), credentials.clone()),
            assets: AssetClient::with_credentials(channel, credentials),
        })
    }

    /// Uploads `scene` and submits the built-in Blender template for it.
    pub async fn submit_blender(
        &mut self,
        scene: &Path,
        frames: &str,
        chunk: u32,
    ) -> Result<pb::Job> {
        let info = self.assets.upload_file(scene).await?;
        Ok(self
            .jobs
            .submit_job(blender_request(&info.digest, frames, chunk))
            .await?
            .into_inner())
    }

    pub async fn job(&mut self, id: &str) -> Result<pb::Job> {
        Ok(self
            .jobs
            .get_job(pb::GetJobRequest {
                job_id: id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Every task of the job, page after page.
    pub async fn tasks(&mut self, id: &str) -> Result<Vec<pb::Task>> {
        let mut tasks = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .jobs
                .list_tasks(pb::ListTasksRequest {
                    job_id: id.to_owned(),
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            tasks.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return Ok(tasks);
            }
            page_token = page.next_page_token;
        }
    }

    /// The job's own files (frames, videos), without thumbnails and logs.
    pub async fn outputs(&mut self, id: &str) -> Result<Vec<pb::JobOutput>> {
        let mut outputs = self.all_outputs(id).await?;
        outputs.retain(|o| o.kind.is_empty());
        Ok(outputs)
    }

    /// Every output of the job, thumbnails and logs included.
    pub async fn all_outputs(&mut self, id: &str) -> Result<Vec<pb::JobOutput>> {
        let mut outputs = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .jobs
                .list_outputs(pb::ListOutputsRequest {
                    job_id: id.to_owned(),
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            outputs.extend(page.outputs);
            if page.next_page_token.is_empty() {
                return Ok(outputs);
            }
            page_token = page.next_page_token;
        }
    }

    /// Polls until the job reaches a final state; returns it.
    pub async fn wait_until_finished(&mut self, id: &str) -> Result<pb::Job> {
        self.wait_for_job(id, JOB_DEADLINE, is_final).await
    }

    /// Polls until a task of the job runs; answers with that task.
    pub async fn wait_running(&mut self, job_id: &str) -> Result<pb::Task> {
        let deadline = Instant::now() + JOB_DEADLINE;
        loop {
            let tasks = self.tasks(job_id).await?;
            if let Some(task) = tasks.iter().find(|t| t.state() == pb::TaskState::Running) {
                return Ok(task.clone());
            }
            if Instant::now() >= deadline {
                bail!("no task of {job_id} ran: {tasks:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until `condition` holds for the job, or fails after `timeout`.
    pub async fn wait_for_job(
        &mut self,
        id: &str,
        timeout: Duration,
        condition: impl Fn(&pb::Job) -> bool,
    ) -> Result<pb::Job> {
        let deadline = Instant::now() + timeout;
        loop {
            // The scheduler may be restarting: treat "unavailable" as "not yet".
            match self.job(id).await {
                Ok(job) if condition(&job) => return Ok(job),
                Ok(job) if Instant::now() >= deadline => {
                    bail!("job {id} never reached the condition: {job:?}")
                }
                Err(err) if Instant::now() >= deadline => return Err(err),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Downloads every output of a job into `dir`, keeping relative paths.
    pub async fn download_outputs(&mut self, id: &str, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for output in self.outputs(id).await? {
            let dest = dir.join(&output.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            self.assets.download_to(&output.digest, &dest).await?;
            paths.push(dest);
        }
        Ok(paths)
    }
}

/// A client of a new submitter (an ordinary tenant) named `name`, whose
/// token the admin creates.
pub async fn submitter(farm: &Farm, name: &str) -> Result<Client> {
    let secret = create_token(farm, name, pb::Role::Submitter, 0).await?;
    Client::connect_as(farm, &secret).await
}

pub fn blender_request(digest: &str, frames: &str, chunk: u32) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::BuiltinTemplate(
            "blender".into(),
        )),
        parameters: [
            ("Frames", frames.to_owned()),
            ("ChunkSize", chunk.to_string()),
            ("FrameRate", "24".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        inputs: vec![pb::JobInput {
            path: "scene.blend".into(),
            digest: digest.to_owned(),
        }],
        ..Default::default()
    }
}

pub fn state_of(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
}

pub fn is_final(job: &pb::Job) -> bool {
    matches!(
        state_of(job),
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// Makes the bundled example scene (examples/make_scene.py) in `dir`.
pub fn example_scene(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("scene.blend");
    let script = repo_root().join("examples/make_scene.py");
    run_blender_python(&[
        "--factory-startup",
        "--python",
        &script.to_string_lossy(),
        "--",
        &out.to_string_lossy(),
    ])?;
    Ok(out)
}

/// What a booby-trapped scene's script prints when it runs.
pub const AUTOEXEC_RAN: &str = "KILN-AUTOEXEC-RAN";

/// Makes a scene whose text block is registered to run when the file
/// loads; if it ever runs, it prints [`AUTOEXEC_RAN`] and creates `marker`.
pub fn booby_trapped_scene(dir: &Path, marker: &Path) -> Result<PathBuf> {
    let out = dir.join("trap.blend");
    // It says so on stdout too: inside a task's sandbox the marker's path
    // is out of reach, but its output is the task's log.
    let payload = format!(
        "print('{AUTOEXEC_RAN}'); open({:?}, 'w').write('autoexec ran')",
        marker.to_string_lossy()
    );
    let expr = format!(
        "import bpy\n\
         s = bpy.context.scene\n\
         s.render.engine = 'CYCLES'\n\
         s.cycles.samples = 1\n\
         s.cycles.use_denoising = False\n\
         s.render.resolution_x = 32\n\
         s.render.resolution_y = 18\n\
         t = bpy.data.texts.new('autorun.py')\n\
         t.write({payload:?})\n\
         t.use_module = True\n\
         bpy.ops.wm.save_as_mainfile(filepath={out:?})\n",
        out = out.to_string_lossy()
    );
    run_blender_python(&["--python-expr", &expr])?;
    Ok(out)
}

/// Runs the Python `source` in Blender (factory settings) with `args`
/// after `--`, to make or change test scenes.
pub fn blender_script(dir: &Path, source: &str, args: &[&Path]) -> Result<()> {
    let script = dir.join(format!("script-{}.py", rand_suffix()));
    std::fs::write(&script, source)?;
    let script_arg = script.to_string_lossy().into_owned();
    let mut all = vec!["--factory-startup", "--python", &script_arg, "--"];
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    all.extend(args.iter().map(String::as_str));
    let result = run_blender_python(&all);
    let _ = std::fs::remove_file(&script);
    result
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn run_blender_python(args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("blender")
        .args(["-b", "-Y"])
        .args(args)
        .output()
        .context("running blender (is it installed? scripts/setup.sh installs it)")?;
    if !output.status.success() {
        bail!(
            "blender failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Frame count, codec and pixel format of a video, read by ffprobe.
pub fn probe_video(path: &Path) -> Result<(u64, String, String)> {
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,codec_name,pix_fmt",
            "-of",
            "json",
        ])
        .arg(path)
        .output()?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let stream = &info["streams"][0];
    let frames = stream["nb_read_frames"].as_str().unwrap_or("0").parse()?;
    let text = |key: &str| stream[key].as_str().unwrap_or_default().to_owned();
    Ok((frames, text("codec_name"), text("pix_fmt")))
}

/// Process ids of running Blender processes whose command line mentions
/// `dir` (not the bubblewrap processes holding their sandboxes).
pub fn blender_processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|(_, cmdline)| {
            !cmdline.starts_with("bwrap ")
                && cmdline.contains("blender")
                && cmdline.contains(&needle)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Live processes whose command line contains `needle` (a zombie's is empty).
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(needle))
        .collect()
}

/// Every process of the machine: its id and command line.
fn processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// A job of `count` ffmpeg tasks, each encoding `seconds` of a lavfi
/// `source` in real time (`-re`), so a task's length is known. With `gpu`,
/// its step requires a GPU. A `source` that is not a lavfi filter makes
/// every task fail.
pub fn clips_request(count: u32, seconds: u32, source: &str, gpu: bool) -> pb::SubmitJobRequest {
    let host_requirements = if gpu {
        "    hostRequirements:\n      amounts:\n        - name: amount.worker.gpu\n          min: 1\n"
    } else {
        ""
    };
    let template = format!(
        r#"specificationVersion: jobtemplate-2023-09
name: Clips
parameterDefinitions:
  - name: Count
    type: INT
  - name: Seconds
    type: INT
  - name: Source
    type: STRING
steps:
  - name: Clip
    parameterSpace:
      taskParameterDefinitions:
        - name: N
          type: INT
          range: "1-{{{{Param.Count}}}}"
{host_requirements}    script:
      actions:
        onRun:
          command: ffmpeg
          args: ["-y", "-hide_banner", "-re", "-f", "lavfi", "-i", "{{{{Param.Source}}}}d={{{{Param.Seconds}}}}",
                 "{{{{Session.WorkingDirectory}}}}/outputs/clip_{{{{Task.Param.N}}}}.mp4"]
"#
    );
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        parameters: [
            ("Count", count.to_string()),
            ("Seconds", seconds.to_string()),
            // The duration is one more option of the filter: after its
            // own options (`testsrc=size=64x36:d=1`) or as its first one
            // (`testsrc=d=1`; this machine's ffmpeg 5.1 refuses `testsrc:d=1`).
            (
                "Source",
                format!("{source}{}", if source.contains('=') { ':' } else { '=' }),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        ..Default::default()
    }
}

/// A client of the farm's Garage bucket (the farm must use S3).
pub async fn s3_client(farm: &mut Farm) -> Result<aws_sdk_s3::Client> {
    let endpoint = farm.s3_endpoint().context("farm has no S3")?;
    let garage = farm.garage_mut().context("farm has no garage")?;
    let credentials = aws_sdk_s3::config::Credentials::new(
        garage.access_key(),
        garage.secret_key(),
        None,
        None,
        "kiln-tests",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_s3::config::Region::new(kiln_localfarm::S3_REGION))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Makes a token for `name` with the farm's admin token; `max_priority` 0
/// leaves the default grant (high). Returns its secret.
pub async fn create_token(
    farm: &Farm,
    name: &str,
    role: pb::Role,
    max_priority: u32,
) -> Result<String> {
    let channel = kiln_tls::ClientTls::trusting(farm.tls_ca())?
        .endpoint(&farm.gateway_url())?
        .connect()
        .await?;
    let mut tokens = pb::token_service_client::TokenServiceClient::with_interceptor(
        channel,
        CallCredentials::bearer(farm.admin_token())?,
    );
    let request = pb::CreateTokenRequest {
        name: name.to_owned(),
        role: role as i32,
        max_priority,
    };
    Ok(tokens.create_token(request).await?.into_inner().secret)
}

/// One REST call (`body` as JSON, `token` as bearer): the status and the
/// JSON body (Null when there is none). Blocking; call it from
/// `spawn_blocking` in async tests.
pub fn rest_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let mut request = ureq::request(method, url).set("content-type", "application/json");
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request.send_string(&body.to_string()),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => bail!("{method} {url}: {err}"),
    };
    let status = response.status();
    let json = response.into_json().unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// The gRPC status an error carries (from a call, or wrapped by anyhow).
pub fn status_of(error: &anyhow::Error) -> Option<&tonic::Status> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tonic::Status>())
}

/// A client of the scheduler's own job API as the gateway calls it (with
/// the farm's service token), on behalf of the user `as_owner` names.
pub async fn scheduler_jobs(farm: &Farm) -> Result<JobServiceClient<AuthChannel>> {
    let endpoint = farm
        .discovery()
        .find_one(kiln_discovery::service::SCHEDULER, Duration::from_secs(10))
        .await?;
    let channel = Channel::from_shared(endpoint.grpc_uri())?.connect().await?;
    Ok(JobServiceClient::with_interceptor(
        channel,
        CallCredentials::service(farm.service_token())?,
    ))
}

/// A request made on behalf of `owner`, as the gateway makes it.
pub fn as_owner<T>(owner: &str, message: T) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        kiln_proto::metadata::OWNER,
        owner.parse().context("owner name")?,
    );
    Ok(request)
}

/// When the job finished, as a comparable instant.
pub fn finished_at(job: &pb::Job) -> (i64, i32) {
    job.finished_at
        .as_ref()
        .map_or((i64::MAX, 0), |t| (t.seconds, t.nanos))
}

/// The index of the scheduler replica that leads, once one does.
pub async fn leading_scheduler(farm: &Farm) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(index) = farm.leading_scheduler().await? {
            return Ok(index);
        }
        if Instant::now() > deadline {
            bail!("no scheduler leads");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the last `lines` lines of every log in the farm's log directory
/// whose file name starts with one of `prefixes`: a test that fails after a
/// fault calls this, so the failure carries the services' side of it (the
/// farm's directory, and its logs, go with the test).
pub fn print_logs(farm: &Farm, prefixes: &[&str], lines: usize) {
    let Ok(entries) = std::fs::read_dir(farm.log_dir()) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| prefixes.iter().any(|p| name.starts_with(p)))
        })
        .collect();
    logs.sort();
    for log in logs {
        println!("==== {} (last {lines} lines)", log.display());
        println!("{}", kiln_localfarm::log_tail(&log, lines));
    }
}

/// `docker compose` where the compose plugin is installed, else Debian's `docker-compose`.
pub fn docker_compose() -> std::process::Command {
    let plugin = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    match plugin {
        true => {
            let mut command = std::process::Command::new("docker");
            command.arg("compose");
            command
        }
        false => std::process::Command::new("docker-compose"),
    }
}

/// Waits until worker `id` is connected to the farm (as the farm service
/// sees it), for at most `deadline`; returns it.
pub async fn worker_connected(client: &Client, id: &str, deadline: Duration) -> Result<pb::Worker> {
    eventually("the worker to join", deadline, || {
        let mut client = client.clone();
        let request = pb::GetWorkerRequest {
            worker_id: id.to_owned(),
        };
        async move {
            Ok(client
                .farm
                .get_worker(request)
                .await
                .ok()
                .map(|w| w.into_inner())
                .filter(|w| w.connected))
        }
    })
    .await
}

/// Polls `check` every 200 ms until it gives a value, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let until = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) if Instant::now() < until => {}
            Ok(None) => bail!("timed out waiting for {what}"),
            Err(err) if Instant::now() < until => {
                tracing_free_note(&err);
            }
            Err(err) => return Err(err.context(format!("waiting for {what}"))),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tracing_free_note(err: &anyhow::Error) {
    eprintln!("(still waiting: {err:#})");
}
