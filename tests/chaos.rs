//! Chaos: two scheduler replicas, three workers, a 60-frame Blender job, and
//! while it renders: a worker killed, the leading scheduler killed, the new
//! leader frozen past its lease and thawed, and Postgres restarted. The job
//! must succeed with exactly one output per frame, and no attempt of a task
//! may ever run on two workers.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{Client, example_scene, state_of};
use tokio::time::Instant;

const FRAMES: usize = 60;
/// A fault's recovery must come within this long, or the test fails.
const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_worker_scheduler_and_database_failures() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(3)
        .schedulers(2)
        .env("KILN_LEASE_TTL", "3")
        .start()
        .await?;
    let outcome = survive_faults(&mut farm, dir.path()).await;
    if outcome.is_err() {
        kiln_tests::print_logs(&farm, &["scheduler", "gateway", "postgres", "worker"], 60);
    }
    outcome?;
    farm.shutdown().await?;
    Ok(())
}

async fn survive_faults(farm: &mut Farm, dir: &std::path::Path) -> Result<()> {
    let scene = example_scene(dir)?;
    let mut client = Client::connect(farm).await?;
    let job = client
        .submit_blender(&scene, &format!("1-{FRAMES}"), 2)
        .await?;
    let id = job.id.clone();
    let submitted = Instant::now();
    let mut report = Vec::new();

    wait_for_progress(&mut client, &id, 2).await?;
    let fault = Instant::now();
    println!(
        "{:.1} s after submitting: kill -9 worker 0",
        submitted.elapsed().as_secs_f64()
    );
    farm.worker_mut(0).context("worker 0")?.kill().await?;
    report.push(("kill -9 worker 0", recover(&mut client, &id, fault).await?));

    let leader = kiln_tests::leading_scheduler(farm).await?;
    let fault = Instant::now();
    println!(
        "{:.1} s after submitting: kill -9 the leading scheduler",
        submitted.elapsed().as_secs_f64()
    );
    farm.schedulers_mut()[leader].kill().await?;
    report.push((
        "kill -9 the leading scheduler",
        recover(&mut client, &id, fault).await?,
    ));
    // The killed replica comes back as the standby.
    farm.schedulers_mut()[leader].start()?;

    let leader = kiln_tests::leading_scheduler(farm).await?;
    let fault = Instant::now();
    println!(
        "{:.1} s after submitting: SIGSTOP the leader",
        submitted.elapsed().as_secs_f64()
    );
    farm.schedulers_mut()[leader].pause()?;
    let recovered = recover(&mut client, &id, fault).await?;
    // Frozen well past its 3 s lease: a standby has led meanwhile.
    tokio::time::sleep_until(fault + Duration::from_secs(8)).await;
    farm.schedulers_mut()[leader].resume()?;
    report.push(("SIGSTOP the leader for 8 s, then SIGCONT", recovered));

    let fault = Instant::now();
    println!(
        "{:.1} s after submitting: restart Postgres",
        submitted.elapsed().as_secs_f64()
    );
    farm.postgres_mut().restart().await?;
    report.push(("restart Postgres", recover(&mut client, &id, fault).await?));

    let done = client.wait_until_finished(&id).await?;
    println!("faults injected, and the time until the farm finished another task:");
    for (fault, took) in &report {
        println!("  {fault}: {:.1} s", took.as_secs_f64());
    }
    println!("the job took {:.1} s", submitted.elapsed().as_secs_f64());
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");

    let frames: BTreeSet<String> = client
        .outputs(&id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .filter(|p| p.starts_with("frames/"))
        .collect();
    let expected: BTreeSet<String> = (1..=FRAMES)
        .map(|f| format!("frames/frame_{f:04}.png"))
        .collect();
    assert_eq!(frames, expected, "exactly one output per frame");

    let runs = attempts_run_by_workers(farm)?;
    for ((task, attempt), workers) in &runs {
        assert_eq!(
            workers.len(),
            1,
            "attempt {attempt} of task {task} ran on {workers:?}"
        );
    }
    assert!(
        runs.len() > FRAMES / 2,
        "every task's attempts were seen in the logs"
    );
    Ok(())
}

async fn succeeded(client: &mut Client, id: &str) -> Result<u32> {
    Ok(client.job(id).await?.tasks_succeeded)
}

async fn wait_for_progress(client: &mut Client, id: &str, at_least: u32) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while succeeded(client, id).await.unwrap_or(0) < at_least {
        if Instant::now() > deadline {
            bail!("job {id} never finished {at_least} tasks");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Time from the fault until the farm finishes another task.
async fn recover(client: &mut Client, id: &str, fault: Instant) -> Result<Duration> {
    let before = loop {
        match succeeded(client, id).await {
            Ok(n) => break n,
            Err(error) if fault.elapsed() > PATIENCE => {
                return Err(error.context(format!(
                    "the job could not be read within {PATIENCE:?} of the fault"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    loop {
        match succeeded(client, id).await {
            Ok(n) if n > before => return Ok(fault.elapsed()),
            _ if fault.elapsed() > PATIENCE => {
                bail!("the farm finished no task within {PATIENCE:?} of the fault")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Which workers ran each (task, attempt), read from the workers' logs: a
/// task's log lines carry `task{task_id=… attempt=…}`.
fn attempts_run_by_workers(farm: &Farm) -> Result<HashMap<(String, u32), BTreeSet<String>>> {
    let mut runs: HashMap<(String, u32), BTreeSet<String>> = HashMap::new();
    for index in 0..farm.worker_count() {
        let worker = kiln_localfarm::worker_id(index);
        let log = std::fs::read_to_string(farm.log_dir().join(format!("{worker}.log")))
            .with_context(|| format!("reading {worker}'s log"))?;
        for line in log.lines() {
            if let Some(key) = task_span(line) {
                runs.entry(key).or_default().insert(worker.clone());
            }
        }
    }
    Ok(runs)
}

fn task_span(line: &str) -> Option<(String, u32)> {
    let rest = &line[line.find("task{task_id=")? + "task{task_id=".len()..];
    let (task, rest) = rest.split_once(' ')?;
    let attempt = rest.strip_prefix("attempt=")?;
    let digits: String = attempt.chars().take_while(char::is_ascii_digit).collect();
    Some((task.to_owned(), digits.parse().ok()?))
}
