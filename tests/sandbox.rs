//! The trust boundary, tried as a hostile tenant would: inline templates
//! submitted with an ordinary submitter token run bash, python and ffmpeg
//! to read, write, connect and signal outside their task. Every attempt
//! fails, nothing planted leaks into their outputs or logs, nothing is
//! written outside, and the worker keeps serving other tenants. Also:
//! cancelling a bash task leaves none of its processes, and a task over its
//! memory or output limit fails naming the limit.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{Client, processes_with, start_farm_with, state_of};
use tokio::time::Instant;

/// Removes a file planted (or feared written) outside the test's directory,
/// however the test ends.
struct Planted(std::path::PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A marker no file or log contains unless it leaked.
fn marker(what: &str) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("KILN-{what}-{:016x}", hasher.finish())
}

/// A job of one task running `command` with `args`, from a template the
/// submitter wrote (not an approved one).
fn command_job(
    name: &str,
    command: &str,
    args: &[&str],
    inputs: Vec<pb::JobInput>,
) -> pb::SubmitJobRequest {
    let template = serde_json::json!({
        "specificationVersion": "jobtemplate-2023-09",
        "name": name,
        "steps": [{
            "name": "Run",
            "script": {"actions": {"onRun": {"command": command, "args": args}}}
        }]
    });
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(
            template.to_string(),
        )),
        inputs,
        ..Default::default()
    }
}

async fn submit(client: &mut Client, request: pb::SubmitJobRequest) -> Result<String> {
    Ok(client.jobs.submit_job(request).await?.into_inner().id)
}

/// Uploads `content` as a job input at `path`.
async fn input(client: &mut Client, dir: &Path, path: &str, content: &str) -> Result<pb::JobInput> {
    let file = dir.join(format!("input-{}", marker("f")));
    std::fs::write(&file, content)?;
    let digest = client.assets.upload_file(&file).await?.digest;
    Ok(pb::JobInput {
        path: path.to_owned(),
        digest,
    })
}

/// Every output of a job (logs included) as text, by path.
async fn output_texts(
    client: &mut Client,
    job_id: &str,
    dir: &Path,
) -> Result<HashMap<String, String>> {
    let mut texts = HashMap::new();
    for output in client.all_outputs(job_id).await? {
        let dest = dir.join(marker("out"));
        client.assets.download_to(&output.digest, &dest).await?;
        let bytes = std::fs::read(&dest)?;
        texts.insert(output.path, String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(texts)
}

fn port_of(url: &str) -> Result<u16> {
    let rest = url.rsplit_once(':').context("no port")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

/// The loopback services of the farm, by name: port.
async fn farm_ports(farm: &Farm) -> Result<Vec<(&'static str, u16)>> {
    let find = |service| farm.discovery().find_one(service, Duration::from_secs(10));
    let assets = find(kiln_discovery::service::ASSETS).await?;
    let scheduler = find(kiln_discovery::service::SCHEDULER).await?;
    Ok(vec![
        ("etcd", port_of(&farm.etcd_url())?),
        ("postgres", port_of(&farm.database_url())?),
        ("assets", port_of(&assets.grpc)?),
        ("scheduler", port_of(&scheduler.grpc)?),
        ("gateway", port_of(&farm.gateway_url())?),
        ("gateway-rest", port_of(&farm.gateway_http_url())?),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_tenant_cannot_read_write_reach_or_signal_outside_its_task() -> Result<()> {
    let (mut farm, dir) = start_farm_with(1, false, &[("KILN_SLOTS", "2")]).await?;
    let mut admin = Client::connect(&farm).await?;
    let mut victim = kiln_tests::submitter(&farm, "victim").await?;
    let mut mallory = kiln_tests::submitter(&farm, "mallory").await?;

    // What must not leak: a file outside every task, another tenant's input
    // (in the worker's cache and in its running task's directory), the
    // worker's own settings (its join token is in its environment).
    let secret = marker("SECRET");
    let secret_path = dir.path().join("planted-secret.txt");
    std::fs::write(&secret_path, &secret)?;
    let host_tmp_secret = Planted(std::env::temp_dir().join(format!("{}.txt", marker("tmp"))));
    std::fs::write(&host_tmp_secret.0, &secret)?;
    let victim_text = marker("VICTIM");
    let victim_input = input(&mut victim, dir.path(), "victim.txt", &victim_text).await?;
    let victim_job = submit(
        &mut victim,
        command_job(
            "victim",
            "bash",
            &["-c", "cat victim.txt; sleep 600"],
            vec![victim_input.clone()],
        ),
    )
    .await?;
    victim.wait_running(&victim_job).await?;
    let worker_dir = farm.workers_dir().join("worker-0");
    // The victim's task runs as written (bash), in an OpenJD session of its
    // job: the session's directory holds its input.
    let victim_dir = std::fs::read_dir(worker_dir.join("openjd"))?
        .flatten()
        .map(|entry| entry.path())
        .find(|dir| dir.join("victim.txt").exists())
        .context("the victim's task holds its input")?;
    let cache_file = worker_dir.join("cache").join(&victim_input.digest);
    ensure!(cache_file.exists(), "the worker caches the victim's input");
    let worker_pid = farm
        .worker_mut(0)
        .and_then(|w| w.pid())
        .context("worker pid")?;
    let join_token = farm.join_token().to_owned();
    let written_outside = dir.path().join("written-by-task.txt");
    let written_host_tmp = Planted(std::env::temp_dir().join(format!("{}.txt", marker("written"))));
    let ports = farm_ports(&farm).await?;
    // Names of this run only, so a file an earlier unsandboxed run left
    // behind cannot fail the test, nor hide a write of this one.
    let system_writes = [
        Planted(Path::new("/usr").join(marker("pwned"))),
        Planted(Path::new("/etc").join(marker("pwned"))),
    ];

    // bash: files, environment, processes, loopback ports; its own input
    // and working directory are the control that the attempts can succeed.
    let own = input(&mut mallory, dir.path(), "own.txt", "mine").await?;
    let mut script = String::from(
        "attempt() { name=$1; shift; if \"$@\" > /tmp/attempt 2>&1; then \
         echo \"ATTEMPT $name: SUCCEEDED $(head -c 300 /tmp/attempt | tr '\\n' ' ')\"; \
         else echo \"ATTEMPT $name: denied\"; fi; }\n",
    );
    let path = |p: &Path| p.to_string_lossy().into_owned();
    for (name, command) in [
        ("read-own-input", "cat own.txt".to_owned()),
        (
            "write-own-outputs",
            "echo mine > outputs/mine.txt".to_owned(),
        ),
        (
            "read-planted-secret",
            format!("cat '{}'", path(&secret_path)),
        ),
        (
            "read-host-tmp",
            format!("cat '{}'", path(&host_tmp_secret.0)),
        ),
        ("read-worker-cache", format!("cat '{}'", path(&cache_file))),
        (
            "list-worker-cache",
            format!("ls '{}'", path(&worker_dir.join("cache"))),
        ),
        (
            "read-other-task",
            format!("cat '{}'/victim.txt", path(&victim_dir)),
        ),
        (
            "find-other-inputs",
            format!(
                "timeout 60 grep -rl --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr '{victim_text}' / | grep ."
            ),
        ),
        (
            "worker-environment",
            "cat /proc/*/environ | tr '\\0' '\\n' | grep KILN_".to_owned(),
        ),
        ("own-environment", "env | grep KILN_".to_owned()),
        (
            "write-usr",
            format!("touch '{}'", path(&system_writes[0].0)),
        ),
        (
            "write-etc",
            format!("touch '{}'", path(&system_writes[1].0)),
        ),
        ("see-worker-process", format!("test -e /proc/{worker_pid}")),
        (
            "see-other-processes",
            "ps -e -o comm= | grep -E 'kiln-worker|postgres|etcd'".to_owned(),
        ),
        ("signal-worker", format!("kill -9 {worker_pid}")),
    ] {
        script.push_str(&format!(
            "attempt {name} sh -c \"{}\"\n",
            command.replace('"', "\\\"")
        ));
    }
    // Writes outside are judged on the host: inside, the paths lead into the
    // task's private /tmp, where its mount points are.
    script.push_str(&format!(
        "echo pwned > '{}'; echo pwned > '{}'\n",
        path(&written_outside),
        path(&written_host_tmp.0)
    ));
    for (name, port) in &ports {
        script.push_str(&format!(
            "attempt connect-{name} timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'\n"
        ));
    }
    script.push_str(&format!(
        "ln -s '{}' outputs/leak.txt\nln -s / outputs/root\n",
        path(&secret_path)
    ));
    let bash_job = submit(
        &mut mallory,
        command_job("bash-escape", "bash", &["-c", &script], vec![own]),
    )
    .await?;

    // python: the same from another runtime, sockets included.
    let python = format!(
        r#"
import os, socket
def attempt(name, fn):
    try:
        fn()
        print("ATTEMPT " + name + ": SUCCEEDED")
    except Exception as error:
        print("ATTEMPT " + name + ": denied (" + type(error).__name__ + ")")
def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
def found(text):
    if not text:
        raise ValueError("nothing")
attempt("control-read-own-workdir", lambda: os.listdir("."))
attempt("read-planted-secret", lambda: open({secret:?}).read())
attempt("read-worker-cache", lambda: open({cache:?}).read())
attempt("read-other-task", lambda: open({other:?}).read())
attempt("kill-worker", lambda: os.kill({pid}, 9))
attempt("environ-of-1", lambda: found("KILN_" in open("/proc/1/environ").read() and "yes"))
attempt("internet", lambda: socket.create_connection(("1.1.1.1", 53), timeout=5).close())
{connects}
"#,
        secret = path(&secret_path),
        cache = path(&cache_file),
        other = path(&victim_dir.join("victim.txt")),
        pid = worker_pid,
        connects = ports
            .iter()
            .map(|(name, port)| format!("attempt(\"connect-{name}\", lambda: connect({port}))"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let python_job = submit(
        &mut mallory,
        command_job("python-escape", "python3", &["-c", &python], vec![]),
    )
    .await?;

    // ffmpeg: its file and network protocols, which an argument filter
    // could never close.
    let secret_arg = path(&secret_path);
    let ffmpeg_file = submit(
        &mut mallory,
        command_job(
            "ffmpeg-file",
            "ffmpeg",
            &[
                "-y",
                "-f",
                "data",
                "-i",
                &secret_arg,
                "-map",
                "0",
                "-c",
                "copy",
                "-f",
                "data",
                "outputs/leak.bin",
            ],
            vec![],
        ),
    )
    .await?;
    let http = format!(
        "http://127.0.0.1:{}/v1/jobs",
        port_of(&farm.gateway_http_url())?
    );
    let ffmpeg_net = submit(
        &mut mallory,
        command_job(
            "ffmpeg-net",
            "ffmpeg",
            &["-y", "-i", &http, "-f", "null", "-"],
            vec![],
        ),
    )
    .await?;

    let bash = mallory.wait_until_finished(&bash_job).await?;
    let python = mallory.wait_until_finished(&python_job).await?;
    let file = mallory.wait_until_finished(&ffmpeg_file).await?;
    let net = mallory.wait_until_finished(&ffmpeg_net).await?;
    assert_eq!(state_of(&bash), pb::JobState::Succeeded, "{bash:?}");
    assert_eq!(state_of(&python), pb::JobState::Succeeded, "{python:?}");
    assert_eq!(
        state_of(&file),
        pb::JobState::Failed,
        "ffmpeg finds no such file: {file:?}"
    );
    assert_eq!(
        state_of(&net),
        pb::JobState::Failed,
        "ffmpeg reaches no server: {net:?}"
    );

    let scratch = dir.path().join("downloads");
    std::fs::create_dir_all(&scratch)?;
    let mut everything = String::new();
    for job in [&bash_job, &python_job, &ffmpeg_file, &ffmpeg_net] {
        for (path, text) in output_texts(&mut mallory, job, &scratch).await? {
            everything.push_str(&format!("\n== {path}\n{text}"));
        }
    }
    let attempts: Vec<&str> = everything
        .lines()
        .filter(|l| l.starts_with("ATTEMPT "))
        .collect();
    for control in [
        "read-own-input",
        "write-own-outputs",
        "control-read-own-workdir",
    ] {
        assert!(
            attempts
                .iter()
                .any(|a| a.starts_with(&format!("ATTEMPT {control}: SUCCEEDED"))),
            "the control attempt {control} works, so the others could: {everything}"
        );
    }
    let escapes: Vec<&&str> = attempts
        .iter()
        .filter(|a| {
            a.contains("SUCCEEDED")
                && ![
                    "read-own-input",
                    "write-own-outputs",
                    "control-read-own-workdir",
                ]
                .iter()
                .any(|c| a.starts_with(&format!("ATTEMPT {c}:")))
        })
        .collect();
    assert!(escapes.is_empty(), "escapes: {escapes:?}");
    let expected = 15 + 7 + 2 * ports.len();
    assert_eq!(
        attempts.len(),
        expected,
        "every attempt ran and reported: {attempts:?}"
    );
    for (what, leaked) in [
        ("the planted secret", &secret),
        ("another tenant's input", &victim_text),
        ("the worker's join token", &join_token),
        ("the admin token", &farm.admin_token().to_owned()),
    ] {
        assert!(
            !everything.contains(leaked.as_str()),
            "{what} leaked into outputs or logs"
        );
    }
    let bash_outputs: Vec<String> = mallory
        .outputs(&bash_job)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    // A step run as written (bash) names its outputs by their place in its
    // session.
    assert_eq!(
        bash_outputs,
        ["outputs/mine.txt"],
        "symlinks out of outputs/ are not outputs"
    );
    assert!(
        !written_outside.exists(),
        "a task wrote outside its directory"
    );
    assert!(!written_host_tmp.0.exists(), "a task wrote the host's /tmp");
    for planted in &system_writes {
        assert!(
            !planted.0.exists(),
            "a task wrote {} on the host's read-only system",
            planted.0.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&secret_path)?,
        secret,
        "the secret is untouched"
    );
    assert!(
        farm.worker_mut(0).is_some_and(|w| w.is_running()),
        "the worker survived"
    );

    // The victim's task was never disturbed, and the worker serves others.
    let victim_tasks = victim.tasks(&victim_job).await?;
    assert_eq!(
        victim_tasks[0].state(),
        pb::TaskState::Running,
        "{victim_tasks:?}"
    );
    victim
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: victim_job.clone(),
        })
        .await?;
    let after = submit(
        &mut admin,
        command_job(
            "after",
            "bash",
            &["-c", "echo fine > outputs/fine.txt"],
            vec![],
        ),
    )
    .await?;
    let after = admin.wait_until_finished(&after).await?;
    assert_eq!(state_of(&after), pb::JobState::Succeeded, "{after:?}");

    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_bash_task_leaves_none_of_its_processes() -> Result<()> {
    let (mut farm, _dir) = start_farm_with(1, false, &[]).await?;
    let mut mallory = kiln_tests::submitter(&farm, "mallory").await?;
    // Children that leave the process group, the session, and their parent.
    let script = "sleep 3107 & setsid sleep 3108 & (sleep 3109 &) ; \
                  nohup sh -c 'trap \"\" TERM HUP; sleep 3110' >/dev/null 2>&1 & \
                  echo started; wait";
    let job = submit(
        &mut mallory,
        command_job("ignores-term", "bash", &["-c", script], vec![]),
    )
    .await?;
    mallory.wait_running(&job).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ["sleep 3107", "sleep 3108", "sleep 3109", "sleep 3110"]
        .iter()
        .any(|s| processes_with(s).is_empty())
    {
        ensure!(
            Instant::now() < deadline,
            "the task's processes never all started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mallory
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job.clone(),
        })
        .await?;
    let cancelled = mallory.wait_until_finished(&job).await?;
    assert_eq!(
        state_of(&cancelled),
        pb::JobState::Cancelled,
        "{cancelled:?}"
    );
    // The cancelation period: the worker stops a task at once, and waits
    // (at most 5 s) until its processes are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left: Vec<(u32, String)> = Vec::new();
    while Instant::now() < deadline {
        left = ["sleep 3107", "sleep 3108", "sleep 3109", "sleep 3110"]
            .iter()
            .flat_map(|s| processes_with(s))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.is_empty(),
        "processes outlived the cancelled task: {left:?}"
    );
    assert!(farm.worker_mut(0).is_some_and(|w| w.is_running()));
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_over_its_memory_or_output_limit_fails_naming_it() -> Result<()> {
    let env = [
        ("KILN_TASK_MEMORY_BYTES", "268435456"),
        ("KILN_TASK_OUTPUT_BYTES", "1048576"),
    ];
    let (mut farm, dir) = start_farm_with(1, false, &env).await?;
    let mut mallory = kiln_tests::submitter(&farm, "mallory").await?;

    // Memory grows 16 MiB at a time, each page touched.
    let hog = "import time\nheld = []\nwhile True:\n    held.append(b'x' * (16 << 20))\n    time.sleep(0.05)\n";
    let job = submit(
        &mut mallory,
        command_job("hog", "python3", &["-c", hog], vec![]),
    )
    .await?;
    let job = mallory.wait_until_finished(&job).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let task = &mallory.tasks(&job.id).await?[0];
    assert!(
        task.message.contains("memory limit of 256 MiB"),
        "the failure names the limit: {task:?}"
    );

    // Outputs past 1 MiB.
    let flood = "head -c 3000000 /dev/zero > outputs/big.bin";
    let job = submit(
        &mut mallory,
        command_job("flood", "bash", &["-c", flood], vec![]),
    )
    .await?;
    let job = mallory.wait_until_finished(&job).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let task = &mallory.tasks(&job.id).await?[0];
    assert!(
        task.message.contains("output limit of 1 MiB"),
        "the failure names the limit: {task:?}"
    );
    assert!(
        mallory.outputs(&job.id).await?.is_empty(),
        "nothing past the limit was stored"
    );

    // The worker survived both and serves the next task.
    let ok = submit(
        &mut mallory,
        command_job("ok", "bash", &["-c", "echo ok > outputs/ok.txt"], vec![]),
    )
    .await?;
    let ok = mallory.wait_until_finished(&ok).await?;
    assert_eq!(state_of(&ok), pb::JobState::Succeeded, "{ok:?}");
    assert!(farm.worker_mut(0).is_some_and(|w| w.is_running()));
    let _ = dir;
    farm.shutdown().await?;
    Ok(())
}

/// A worker's `/readyz`: status code and body.
async fn readyz(farm: &Farm, worker: &str) -> Result<(u16, serde_json::Value)> {
    let endpoints = farm
        .discovery()
        .find(kiln_discovery::service::WORKER)
        .await?;
    let ops = endpoints
        .into_iter()
        .find(|e| e.instance == worker)
        .and_then(|e| e.ops)
        .context("the worker lists no ops address")?;
    let url = format!("http://{ops}/readyz");
    tokio::task::spawn_blocking(move || {
        let (code, body) = match ureq::get(&url).call() {
            Ok(response) => (response.status(), response.into_string()?),
            Err(ureq::Error::Status(code, response)) => (code, response.into_string()?),
            Err(error) => return Err(error.into()),
        };
        Ok((code, serde_json::from_str(&body)?))
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_cannot_sandbox_takes_no_task_unless_its_operator_opts_out() -> Result<()> {
    let (mut farm, _dir) = start_farm_with(0, false, &[]).await?;
    farm.add_worker_with_env(&[("KILN_BWRAP", "/nonexistent/bwrap")])
        .await?;
    let (code, readiness) = readyz(&farm, "worker-0").await?;
    assert_eq!(code, 503, "{readiness}");
    assert!(
        readiness.to_string().contains("cannot sandbox tasks"),
        "the sandbox check says why: {readiness}"
    );

    let mut mallory = kiln_tests::submitter(&farm, "mallory").await?;
    let job = submit(
        &mut mallory,
        command_job("who", "bash", &["-c", "id -u"], vec![]),
    )
    .await?;
    // A trusted single-user machine: its operator opts out, loudly.
    farm.add_worker_with_env(&[("KILN_NO_SANDBOX", "true")])
        .await?;
    let (code, readiness) = readyz(&farm, "worker-1").await?;
    assert_eq!(code, 200, "{readiness}");
    let job = mallory.wait_until_finished(&job).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let tasks = mallory.tasks(&job.id).await?;
    assert_eq!(
        tasks[0].worker_id, "worker-1",
        "the worker that cannot sandbox took no task: {tasks:?}"
    );
    let log = farm
        .worker_mut(1)
        .map(|w| w.log_tail(200))
        .unwrap_or_default();
    assert!(
        log.contains("TASKS RUN UNSANDBOXED"),
        "logged loudly: {log}"
    );
    farm.shutdown().await?;
    Ok(())
}

const NET_PROBE: &str = r#"specificationVersion: jobtemplate-2023-09
name: NetProbe
parameterDefinitions:
  - name: Port
    type: INT
steps:
  - name: Probe
    script:
      actions:
        onRun:
          command: bash
          args: ["-c", "exec 3<>/dev/tcp/127.0.0.1/{{Param.Port}} && echo connected > outputs/connected.txt"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn only_a_template_the_admin_approved_for_it_reaches_the_network() -> Result<()> {
    let templates = kiln_tests::e2e_dir()?;
    std::fs::write(templates.path().join("net-probe.yaml"), NET_PROBE)?;
    let dir = templates.path().to_string_lossy().into_owned();
    let env = [
        ("KILN_TEMPLATE_DIR", dir.as_str()),
        ("KILN_NETWORK_TEMPLATES", "net-probe"),
    ];
    let (mut farm, _dir) = start_farm_with(1, false, &env).await?;
    let mut mallory = kiln_tests::submitter(&farm, "mallory").await?;
    let port = port_of(&farm.gateway_http_url())?.to_string();
    let parameters: HashMap<String, String> = [("Port".to_owned(), port)].into();

    let approved = pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::BuiltinTemplate(
            "net-probe".into(),
        )),
        parameters: parameters.clone(),
        ..Default::default()
    };
    let job = submit(&mut mallory, approved).await?;
    let job = mallory.wait_until_finished(&job).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");

    // The same template written by the submitter runs without network.
    let inline = pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(
            NET_PROBE.to_owned(),
        )),
        parameters,
        ..Default::default()
    };
    let job = submit(&mut mallory, inline).await?;
    let job = mallory.wait_until_finished(&job).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let tasks = mallory.tasks(&job.id).await?;
    assert!(
        tasks[0].log_tail.contains("Connection refused"),
        "no listener in its own network namespace: {tasks:?}"
    );
    farm.shutdown().await?;
    Ok(())
}
