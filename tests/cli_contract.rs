//! What a script can rely on from the real `kiln` binary against a real farm:
//! `--output json` puts only JSON on stdout, exit codes tell a failed job, a
//! cancelled one and a refusal apart, a refusal names the field it is about
//! (also over gRPC as a google.rpc BadRequest, and over REST as
//! `invalid_params`), `kiln login` saves a profile other commands use, and
//! completions and man pages come out of the binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kiln_localfarm::{Farm, locate_binary};
use kiln_tests::{Client, blender_request, rest_call, start_farm, worker_connected};
use serde_json::Value;
use tonic_types::StatusExt;

const PATIENCE: Duration = Duration::from_secs(60);
const JOB_FAILED: i32 = 3;
const JOB_CANCELLED: i32 = 4;
const REFUSED: i32 = 5;
/// A template the farm accepts, so that a refusal is about another field.
const NOOP_TEMPLATE: &str = "specificationVersion: jobtemplate-2023-09
name: noop
steps:
  - name: Noop
    parameterSpace:
      taskParameterDefinitions:
        - name: N
          type: INT
          range: \"1-2\"
    script:
      actions:
        onRun:
          command: noop
          args: [\"{{Task.Param.N}}\"]
";

/// What one `kiln` run printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Every stdout line as JSON; fails if any line is not.
    fn json_lines(&self) -> Result<Vec<Value>> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .with_context(|| format!("stdout line is not JSON: {line:?}\n{self}"))
            })
            .collect()
    }

    /// stdout as exactly one JSON document.
    fn json(&self) -> Result<Value> {
        let mut lines = self.json_lines()?;
        ensure!(lines.len() == 1, "not one JSON document:\n{self}");
        Ok(lines.remove(0))
    }

    /// The `{"error": ...}` object JSON mode writes on stderr.
    fn error(&self) -> Result<Value> {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("no JSON error on stderr:\n{self}"))?;
        let value: Value = serde_json::from_str(line)?;
        Ok(value["error"].clone())
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `kiln` in `dir` with a config directory of its own and none of the
/// caller's KILN_* settings, so only its arguments say where the farm is.
fn kiln(dir: &Path, args: &[&str]) -> Result<Run> {
    let mut command = std::process::Command::new(locate_binary("kiln")?);
    for (name, _) in std::env::vars() {
        if name.starts_with("KILN_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("COLUMNS", "400")
        .output()?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `kiln ARGS` against `farm` as its admin.
fn admin(farm: &Farm, dir: &Path, args: &[&str]) -> Result<Run> {
    let url = farm.gateway_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--gateway", &url, "--token", farm.admin_token()]);
    kiln(dir, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_read_json_exit_codes_and_profiles() -> Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let result = run(&farm, &work).await;
    farm.shutdown().await?;
    result
}

async fn run(farm: &Farm, work: &Path) -> Result<()> {
    let scene = work.join("notes.blend");
    std::fs::write(&scene, b"these are not the frames you are looking for\n")?;
    refusals(farm, work).await?;
    let cancelled = cancelled_job(farm, work).await?;
    failed_job(farm, work, &cancelled)?;
    profiles(farm, work)?;
    generated_docs(work)?;
    Ok(())
}

/// A submission the farm refuses: exit code 5, the field named in text, in
/// JSON on stderr, as a BadRequest over gRPC and as `invalid_params` in REST.
async fn refusals(farm: &Farm, work: &Path) -> Result<()> {
    let render = [
        "render",
        "notes.blend",
        "--frames",
        "12-1",
        "--fps",
        "24",
        "--no-bundle",
    ];
    let text = admin(farm, work, &render)?;
    ensure!(text.code == Some(REFUSED), "{text}");
    ensure!(
        text.stderr.contains("invalid job parameters") || text.stderr.contains("12-1"),
        "{text}"
    );
    ensure!(text.stderr.contains("field parameters:"), "{text}");

    let mut json_args = vec!["-o", "json"];
    json_args.extend(render);
    let json = admin(farm, work, &json_args)?;
    ensure!(json.code == Some(REFUSED), "{json}");
    ensure!(
        json.stdout.trim().is_empty(),
        "stdout must stay clean:\n{json}"
    );
    let error = json.error()?;
    ensure!(error["code"] == "invalid_argument", "{json}");
    ensure!(error["exit_code"] == REFUSED, "{json}");
    ensure!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("12-1"),
        "{json}"
    );
    ensure!(
        error["field_violations"][0]["field"] == "parameters",
        "{json}"
    );

    // The same refusal over gRPC carries google.rpc.BadRequest.
    let mut client = Client::connect(farm).await?;
    let digest = client
        .assets
        .upload_file(&work.join("notes.blend"))
        .await?
        .digest;
    let status = client
        .jobs
        .submit_job(blender_request(&digest, "12-1", 2))
        .await
        .expect_err("a reversed frame range is refused");
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .with_context(|| format!("no BadRequest details: {status:?}"))?;
    ensure!(
        bad.field_violations
            .iter()
            .any(|v| v.field == "parameters" && v.description.contains("12-1")),
        "{bad:?}"
    );

    // And over REST as RFC 9457 `invalid_params`, next to the old fields.
    let url = format!("{}/v1/jobs", farm.gateway_http_url());
    let token = farm.admin_token().to_owned();
    let body = serde_json::json!({"templateDocument": NOOP_TEMPLATE, "priority": 120});
    let (status, problem) =
        tokio::task::spawn_blocking(move || rest_call("POST", &url, Some(&token), Some(&body)))
            .await??;
    ensure!(status == 400, "{status} {problem}");
    ensure!(problem["code"] == "invalid_argument", "{problem}");
    ensure!(
        problem["invalid_params"][0]["name"] == "priority",
        "{problem}"
    );
    Ok(())
}

/// A job cancelled while its only worker is disabled: `cancel` prints the
/// job as JSON, and `watch` exits 4.
async fn cancelled_job(farm: &Farm, work: &Path) -> Result<String> {
    let worker = kiln_localfarm::worker_id(0);
    let client = Client::connect(farm).await?;
    worker_connected(&client, &worker, PATIENCE).await?;
    let disabled = admin(farm, work, &["-o", "json", "workers", "disable", &worker])?;
    ensure!(disabled.ok(), "{disabled}");
    ensure!(disabled.json()?["id"] == worker.as_str(), "{disabled}");

    let submitted = admin(
        farm,
        work,
        &[
            "-o",
            "json",
            "render",
            "notes.blend",
            "--frames",
            "1-2",
            "--fps",
            "24",
            "--no-bundle",
            "--no-wait",
        ],
    )?;
    ensure!(submitted.ok(), "{submitted}");
    let job = submitted.json()?;
    let id = job["submitted"]["id"]
        .as_str()
        .with_context(|| format!("no job id:\n{submitted}"))?
        .to_owned();

    let cancel = admin(farm, work, &["-o", "json", "cancel", &id])?;
    ensure!(cancel.ok(), "{cancel}");
    ensure!(cancel.json()?["state"] == "JOB_STATE_CANCELLED", "{cancel}");
    let watch = admin(farm, work, &["-o", "json", "watch", &id])?;
    ensure!(watch.code == Some(JOB_CANCELLED), "{watch}");
    watch.json_lines()?;
    ensure!(watch.error()?["code"] == "job_cancelled", "{watch}");
    let text = admin(farm, work, &["watch", &id])?;
    ensure!(text.code == Some(JOB_CANCELLED), "{text}");

    let enabled = admin(farm, work, &["workers", "enable", &worker])?;
    ensure!(enabled.ok(), "{enabled}");
    Ok(id)
}

/// A job that fails: `render` follows it as JSON Lines and exits 3, as
/// `watch` does; `status` and `jobs` print it as JSON.
fn failed_job(farm: &Farm, work: &Path, cancelled: &str) -> Result<()> {
    let render = admin(
        farm,
        work,
        &[
            "-o",
            "json",
            "render",
            "notes.blend",
            "--frames",
            "1-2",
            "--fps",
            "24",
            "--no-bundle",
        ],
    )?;
    ensure!(render.code == Some(JOB_FAILED), "{render}");
    let lines = render.json_lines()?;
    let id = lines[0]["submitted"]["id"]
        .as_str()
        .with_context(|| format!("the first line is the submitted job:\n{render}"))?
        .to_owned();
    let last_state = lines
        .iter()
        .filter_map(|l| l["jobChanged"]["state"].as_str())
        .next_back();
    ensure!(last_state == Some("JOB_STATE_FAILED"), "{render}");
    let error = render.error()?;
    ensure!(error["code"] == "job_failed", "{render}");
    ensure!(error["exit_code"] == JOB_FAILED, "{render}");

    let watch = admin(farm, work, &["watch", &id])?;
    ensure!(watch.code == Some(JOB_FAILED), "{watch}");
    ensure!(watch.stderr.contains("failed"), "{watch}");

    let status = admin(farm, work, &["-o", "json", "status", &id])?;
    ensure!(status.ok(), "{status}");
    let status = status.json()?;
    ensure!(status["job"]["id"] == id.as_str(), "{status}");
    ensure!(status["job"]["state"] == "JOB_STATE_FAILED", "{status}");
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    ensure!(
        tasks.iter().any(|t| t["state"] == "TASK_STATE_FAILED"),
        "{status}"
    );

    let jobs = admin(farm, work, &["-o", "json", "jobs"])?;
    ensure!(jobs.ok(), "{jobs}");
    let listed: Vec<String> = jobs.json()?["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        listed.contains(&id) && listed.iter().any(|j| j == cancelled),
        "{jobs}"
    );
    Ok(())
}

/// `kiln login` saves a private profile that `--profile` then uses without
/// `--gateway` or `--token`; a wrong token is refused and not saved;
/// `kiln logout` forgets it.
fn profiles(farm: &Farm, work: &Path) -> Result<()> {
    let url = farm.gateway_url();
    let token = farm.admin_token();
    let login = kiln(
        work,
        &[
            "-o",
            "json",
            "login",
            "--profile",
            "studio",
            "--gateway",
            &url,
            "--token",
            token,
        ],
    )?;
    ensure!(login.ok(), "{login}");
    ensure!(
        !login.stdout.contains(token) && !login.stderr.contains(token),
        "login printed the token:\n{login}"
    );
    let saved = login.json()?;
    ensure!(saved["profile"] == "studio", "{login}");
    let file = PathBuf::from(
        saved["config"]
            .as_str()
            .with_context(|| format!("no config path:\n{login}"))?,
    );
    ensure!(file.starts_with(work.join("config")), "{}", file.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file)?.permissions().mode();
        ensure!(mode & 0o777 == 0o600, "profiles file mode {mode:o}");
    }

    let jobs = kiln(work, &["--profile", "studio", "-o", "json", "jobs"])?;
    ensure!(jobs.ok(), "{jobs}");
    ensure!(jobs.json()?["jobs"].is_array(), "{jobs}");
    let nowhere = kiln(work, &["jobs"])?;
    ensure!(
        !nowhere.ok(),
        "no profile, no dev farm, no flags:\n{nowhere}"
    );

    let wrong = kiln(
        work,
        &[
            "login",
            "--profile",
            "typo",
            "--gateway",
            &url,
            "--token",
            "not-a-token",
        ],
    )?;
    ensure!(wrong.code == Some(REFUSED), "{wrong}");
    let unknown = kiln(work, &["--profile", "typo", "jobs"])?;
    ensure!(
        !unknown.ok() && unknown.stderr.contains("kiln login --profile typo"),
        "{unknown}"
    );

    let logout = kiln(work, &["logout", "--profile", "studio"])?;
    ensure!(logout.ok(), "{logout}");
    let gone = kiln(work, &["--profile", "studio", "jobs"])?;
    ensure!(!gone.ok(), "{gone}");
    Ok(())
}

/// Completions, man pages and the exit-code table come from the binary;
/// a wrong command line exits 2, as JSON when asked for.
fn generated_docs(work: &Path) -> Result<()> {
    let bash = kiln(work, &["completions", "bash"])?;
    ensure!(
        bash.ok() && bash.stdout.contains("complete") && bash.stdout.contains("kiln"),
        "{bash}"
    );
    let man = kiln(work, &["man"])?;
    ensure!(man.ok() && man.stdout.contains(".TH"), "{man}");
    let pages = work.join("man");
    let written = kiln(work, &["-o", "json", "man", "--dir", "man"])?;
    ensure!(written.ok(), "{written}");
    ensure!(written.json()?["files"].is_array(), "{written}");
    for page in ["kiln.1", "kiln-jobs.1", "kiln-workers-list.1"] {
        ensure!(pages.join(page).is_file(), "no {page}:\n{written}");
    }
    let usage = kiln(work, &["-o", "json", "jobs", "--no-such-flag"])?;
    ensure!(usage.code == Some(2), "{usage}");
    ensure!(usage.error()?["code"] == "usage", "{usage}");
    let help = kiln(work, &["--help"])?;
    ensure!(
        help.ok() && help.stdout.contains("Exit codes:") && help.stdout.contains("130"),
        "{help}"
    );
    Ok(())
}
