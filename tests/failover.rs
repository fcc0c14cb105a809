//! High availability beyond the chaos run: a render keeps going through a
//! leader failover and is confirmed by the new leader instead of rendered
//! again; a crashed leader's lease is ended rather than waited out; the
//! leader rides out a short etcd outage, and stands down during a long one
//! until etcd is back.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{Client, as_owner, example_scene, scheduler_jobs, state_of};
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(120);
/// Frames of the one chunk that is rendering when the leader dies.
const FRAMES: usize = 48;

/// A farm of two schedulers and one worker, rendering the one chunk of a
/// 48-frame job.
struct Rendering {
    farm: Farm,
    client: Client,
    job: pb::Job,
    /// The render task, running and with a frame saved.
    render: String,
    _dir: tempfile::TempDir,
}

impl Rendering {
    async fn start(env: (&str, &str)) -> Result<Self> {
        let dir = kiln_tests::e2e_dir()?;
        let farm = Farm::builder(dir.path().join("farm"))
            .workers(1)
            .schedulers(2)
            .env(env.0, env.1)
            .start()
            .await?;
        let scene = example_scene(dir.path())?;
        let mut client = Client::connect(&farm).await?;
        let job = client
            .submit_blender(&scene, &format!("1-{FRAMES}"), FRAMES as u32)
            .await?;
        let render = wait_until_rendering(&mut client, &job.id).await?;
        Ok(Self {
            farm,
            client,
            job,
            render,
            _dir: dir,
        })
    }

    /// Waits for the job to succeed; returns the render task as it ended.
    async fn succeeded_render(&mut self) -> Result<pb::Task> {
        let done = self.client.wait_until_finished(&self.job.id).await?;
        assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");
        let tasks = self.client.tasks(&self.job.id).await?;
        tasks
            .into_iter()
            .find(|t| t.id == self.render)
            .context("the render task is listed")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_render_carries_on_through_a_leader_failover() -> Result<()> {
    let mut rendering = Rendering::start(("KILN_LEASE_TTL", "3")).await?;
    let leader = kiln_tests::leading_scheduler(&rendering.farm).await?;
    rendering.farm.schedulers_mut()[leader].kill().await?;
    println!(
        "killed the leading scheduler while task {} was rendering",
        rendering.render
    );

    let rendered = rendering.succeeded_render().await?;
    assert_eq!(
        rendered.attempts, 1,
        "the new leader confirmed the running attempt instead of dispatching it again: {rendered:?}"
    );
    let frames = rendering
        .client
        .outputs(&rendering.job.id)
        .await?
        .into_iter()
        .filter(|o| o.path.starts_with("frames/"))
        .count();
    assert_eq!(frames, FRAMES, "every frame stored once");
    rendering.farm.shutdown().await?;
    Ok(())
}

/// A worker restarted while no scheduler leads holds nothing when it
/// reconnects; the new leader requeues what it was given at once instead of
/// waiting out the reclaim window (set here far longer than the test waits).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_restarted_during_a_failover_gets_its_task_again_at_once() -> Result<()> {
    let mut rendering = Rendering::start(("KILN_RECLAIM_SECONDS", "3600")).await?;
    let farm = &mut rendering.farm;
    let leader = kiln_tests::leading_scheduler(farm).await?;
    farm.schedulers_mut()[leader].kill().await?;
    farm.workers_mut()[0].kill().await?;
    farm.workers_mut()[0].start()?;
    println!(
        "killed the leader and restarted the worker while task {} was rendering",
        rendering.render
    );

    // Five minutes at most, against the hour-long reclaim window.
    let rendered = rendering.succeeded_render().await?;
    assert_eq!(
        rendered.attempts, 2,
        "the attempt the restarted worker lost was dispatched again: {rendered:?}"
    );
    rendering.farm.shutdown().await?;
    Ok(())
}

/// A leader killed outright is replaced long before its lease would run
/// out: the standby finds the leader's address refusing connections and ends
/// the lease itself. With a 60 s lease, the farm finishes another task within
/// half of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_leaders_lease_is_ended_not_waited_out() -> Result<()> {
    const LEASE: Duration = Duration::from_secs(60);
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(1)
        .schedulers(2)
        .env("KILN_LEADER_TTL", LEASE.as_secs().to_string())
        .start()
        .await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-40", 2).await?;
    wait_for_succeeded(&mut client, &job.id, 1).await?;
    let led = kiln_tests::leading_scheduler(&farm).await?;
    let before = succeeded(&mut client, &job.id).await?;
    let killed = Instant::now();
    farm.schedulers_mut()[led].kill().await?;

    let after = client
        .wait_for_job(&job.id, LEASE / 2, |j| j.tasks_succeeded > before)
        .await
        .context("no task finished in half the crashed leader's lease: was it waited out?")?;
    println!(
        "leader killed with {before} tasks done: {} done {:.1} s later, with a {} s lease",
        after.tasks_succeeded,
        killed.elapsed().as_secs_f64(),
        LEASE.as_secs()
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_rides_out_etcd_outages() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(2)
        .schedulers(2)
        .env("KILN_LEASE_TTL", "3")
        // The leadership lease: long enough that the short outage below (a
        // crash, half a second, then etcd's start-up, which took up to 3 s on
        // a loaded CI machine) stays well inside it, short enough that the
        // long one ends it soon.
        .env("KILN_LEADER_TTL", "8")
        .start()
        .await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-40", 2).await?;
    wait_for_succeeded(&mut client, &job.id, 2).await?;
    // Asked directly, the leader answers for the job while it leads.
    let mut leader = scheduler_jobs(&farm).await?;

    let led = kiln_tests::leading_scheduler(&farm).await?;
    let outage = Instant::now();
    farm.etcd_mut().process_mut().kill().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    farm.etcd_mut().start().await?;
    let down = outage.elapsed();
    let before = succeeded(&mut client, &job.id).await?;
    wait_for_succeeded(&mut client, &job.id, before + 1).await?;
    println!(
        "etcd down for {:.1} s: the farm finished another task {:.1} s after it went down",
        down.as_secs_f64(),
        outage.elapsed().as_secs_f64()
    );
    assert_eq!(
        kiln_tests::leading_scheduler(&farm).await?,
        led,
        "an etcd outage shorter than the lease changes no leader"
    );

    let outage = Instant::now();
    farm.etcd_mut().stop().await?;
    let stood_down = wait_until_standby(&mut leader, &job.id).await?;
    println!(
        "etcd down for good: the leader stopped leading after {:.1} s",
        stood_down.as_secs_f64()
    );
    farm.etcd_mut().start().await?;
    let back = Instant::now();
    let before = succeeded(&mut client, &job.id).await?;
    wait_for_succeeded(&mut client, &job.id, before + 1).await?;
    println!(
        "etcd down for {:.1} s: the farm finished another task {:.1} s after etcd came back",
        (back - outage).as_secs_f64(),
        back.elapsed().as_secs_f64()
    );

    let done = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");
    let frames = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .filter(|o| o.path.starts_with("frames/"))
        .count();
    assert_eq!(frames, 40, "every frame stored once");
    farm.shutdown().await?;
    Ok(())
}

/// Waits until the job's first render task runs and has saved a frame; returns its id.
async fn wait_until_rendering(client: &mut Client, job_id: &str) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outputs = client.outputs(job_id).await?;
        if !outputs.is_empty() {
            let tasks = client.tasks(job_id).await?;
            if let Some(task) = tasks
                .iter()
                .find(|t| t.step_name == "Render" && t.state == pb::TaskState::Running as i32)
            {
                return Ok(task.id.clone());
            }
            bail!("the render finished before the failover could be tried: {tasks:?}");
        }
        if Instant::now() > deadline {
            bail!("job {job_id} never started rendering");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the scheduler that led until it answers as a standby; returns how long that took.
async fn wait_until_standby(
    scheduler: &mut pb::job_service_client::JobServiceClient<kiln_tests::AuthChannel>,
    job_id: &str,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let request = as_owner(
            "admin",
            pb::GetJobRequest {
                job_id: job_id.to_owned(),
            },
        )?;
        match scheduler.get_job(request).await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Ok(started.elapsed());
            }
            _ if started.elapsed() > PATIENCE => {
                bail!("the leader kept leading without etcd")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Tasks the job has finished, once the farm answers again.
async fn succeeded(client: &mut Client, job_id: &str) -> Result<u32> {
    Ok(client
        .wait_for_job(job_id, PATIENCE, |_| true)
        .await?
        .tasks_succeeded)
}

/// Waits until the job has finished `at_least` tasks; the gateway may
/// briefly find no leader while etcd comes back.
async fn wait_for_succeeded(client: &mut Client, job_id: &str, at_least: u32) -> Result<()> {
    client
        .wait_for_job(job_id, PATIENCE, |j| j.tasks_succeeded >= at_least)
        .await?;
    Ok(())
}
