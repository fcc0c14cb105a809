//! Watching a job never loses or repeats an event: across disconnects, a
//! scheduler restart, and 50 watchers at once; live task logs show
//! Blender's lines while it renders; every frame gets a thumbnail; a
//! re-render of a scene has an ETA from the start; the farm watch tells
//! when workers join and leave.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::try_join_all;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_proto::v1::job_service_client::JobServiceClient;
use kiln_tests::hand_worker::{HandWorker, noop_request};
use kiln_tests::{AuthChannel, Client, example_scene, start_farm, state_of};
use prost::Message;
use std::io::Read;

type Jobs = JobServiceClient<AuthChannel>;

/// Pause before reconnecting while the scheduler restarts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
const CONCURRENT_WATCHERS: usize = 50;

fn is_final_record(event: &pb::JobEvent) -> bool {
    matches!(&event.event, Some(Event::JobChanged(job)) if kiln_tests::is_final(job))
}

/// Follows the job to its end, resuming after the last sequence number on
/// every break. With `hang_up_every`, it also hangs up itself after that
/// many events, `hang_ups` times.
async fn follow(
    mut jobs: Jobs,
    job_id: String,
    from_start: bool,
    hang_up_every: Option<usize>,
    mut hang_ups: usize,
) -> Result<Vec<pb::JobEvent>> {
    let mut seen: Vec<pb::JobEvent> = Vec::new();
    let mut after = from_start.then_some(0);
    let mut failures = 0;
    loop {
        let request = pb::WatchJobRequest {
            job_id: job_id.clone(),
            after_seq: after,
        };
        let mut stream = match jobs.watch_job(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) if failures < 300 => {
                failures += 1;
                tracing_pause(&status).await;
                continue;
            }
            Err(status) => bail!("cannot watch the job: {status}"),
        };
        let mut this_connection = 0;
        loop {
            match stream.message().await {
                Ok(Some(event)) if event.seq == 0 => {
                    // The opening record of a fresh watch is not in the sequence.
                    continue;
                }
                Ok(Some(event)) => {
                    after = Some(event.seq);
                    let done = is_final_record(&event);
                    seen.push(event);
                    if done {
                        return Ok(seen);
                    }
                    this_connection += 1;
                    if hang_ups > 0 && hang_up_every.is_some_and(|n| this_connection >= n) {
                        hang_ups -= 1;
                        break;
                    }
                }
                // Ended or broken before the final record: resume.
                Ok(None) => break,
                Err(status) => {
                    failures += 1;
                    if failures > 300 {
                        bail!("the watch kept failing: {status}");
                    }
                    tracing_pause(&status).await;
                    break;
                }
            }
        }
    }
}

async fn tracing_pause(status: &tonic::Status) {
    eprintln!("watch interrupted ({}); resuming", status.message());
    tokio::time::sleep(RECONNECT_PAUSE).await;
}

fn assert_complete(events: &[pb::JobEvent], reference: &[pb::JobEvent], who: &str) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = reference.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, expected, "{who}: every event once, in order");
    for (got, want) in events.iter().zip(reference) {
        assert_eq!(
            got.encode_to_vec(),
            want.encode_to_vec(),
            "{who}: event {} is the one stored",
            got.seq
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resumed_and_concurrent_watchers_get_every_event_once_across_a_restart() -> Result<()> {
    let (mut farm, dir) = start_farm(2, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-12", 2).await?;

    // One watcher hangs up three times on its own and resumes each time.
    let resumer = tokio::spawn(follow(
        client.jobs.clone(),
        job.id.clone(),
        false,
        Some(4),
        3,
    ));
    // Fifty more follow from the start at once.
    let crowd = try_join_all((0..CONCURRENT_WATCHERS).map(|_| {
        let (jobs, id) = (client.jobs.clone(), job.id.clone());
        async move { tokio::spawn(follow(jobs, id, true, None, 0)).await? }
    }));
    let crowd = tokio::spawn(crowd);

    // Restart the scheduler once some frames are done: every watcher is cut
    // off and resumes at the new one.
    client
        .wait_for_job(&job.id, Duration::from_secs(180), |j| {
            j.tasks_succeeded >= 2
        })
        .await?;
    let scheduler = farm.scheduler_mut().context("a scheduler")?;
    scheduler.terminate().await?;
    scheduler.restart().await?;

    let resumed = resumer.await??;
    let crowd = crowd.await??;
    let finished = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&finished), pb::JobState::Succeeded, "{finished:?}");

    // The whole stored history, read in one go after the end.
    let reference = follow(client.jobs.clone(), job.id.clone(), true, None, 0).await?;
    let seqs: Vec<u64> = reference.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=reference.len() as u64).collect::<Vec<_>>(),
        "the stored sequence has no gap"
    );
    assert!(
        reference.len() > 20,
        "states, progress, frames and records: {} events",
        reference.len()
    );
    let last = reference.last().context("events")?;
    assert!(
        is_final_record(last),
        "the sequence ends with the final state"
    );
    let outputs_announced = reference
        .iter()
        .filter(|e| {
            matches!(&e.event, Some(Event::OutputAdded(a)) if a.output.as_ref().is_some_and(|o| o.kind.is_empty()))
        })
        .count();
    assert_eq!(
        outputs_announced, 14,
        "every frame, the video and the check report announced once"
    );

    // The resumed watcher saw the tail of the sequence from its first event on.
    let first = resumed.first().context("the resumer saw events")?.seq as usize;
    assert_complete(&resumed, &reference[first - 1..], "the resumed watcher");
    for (i, events) in crowd.iter().enumerate() {
        assert_complete(events, &reference, &format!("watcher {i}"));
    }
    farm.shutdown().await?;
    Ok(())
}

/// Reads the job's stored events from the start until one matches.
async fn wait_for_event(
    jobs: &mut Jobs,
    job_id: &str,
    wanted: impl Fn(&pb::JobEvent) -> bool,
) -> Result<()> {
    let request = pb::WatchJobRequest {
        job_id: job_id.to_owned(),
        after_seq: Some(0),
    };
    let mut stream = jobs.watch_job(request).await?.into_inner();
    let wait = async {
        while let Some(event) = stream.message().await? {
            if wanted(&event) {
                return Ok(());
            }
        }
        bail!("the watch ended before the event")
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("the event never came")?
}

fn announced_path(event: &pb::JobEvent) -> Option<&str> {
    match &event.event {
        Some(Event::OutputAdded(added)) => added.output.as_ref().map(|o| o.path.as_str()),
        _ => None,
    }
}

/// A frame whose own report is lost with the connection (here: across a
/// scheduler restart) is known only from its task's success. It must still
/// be announced, once; a frame reported before the restart, reported again
/// after it and listed in the success too, is announced once as well.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_known_only_from_its_success_is_announced_once_across_a_restart() -> Result<()> {
    let (mut farm, _dir) = start_farm(0, false).await?;
    let mut client = Client::connect(&farm).await?;
    let job = client.jobs.submit_job(noop_request(1)).await?.into_inner();
    let mut worker = HandWorker::join(&farm, "hand-0", &[]).await?;
    let task = worker.assignment().await?;
    worker.started(&task).await?;
    let output = |path: &str, digest: char| pb::OutputStored {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        path: path.to_owned(),
        digest: digest.to_string().repeat(64),
        size: 100,
        kind: String::new(),
    };
    let (before, lost) = (
        output("frames/f_0001.png", 'a'),
        output("frames/f_0002.png", 'b'),
    );

    // The first frame is reported and announced before the restart.
    worker.output_stored(&before).await?;
    wait_for_event(&mut client.jobs, &job.id, |e| {
        announced_path(e) == Some(before.path.as_str())
    })
    .await?;
    // Killed, so the old leader can do nothing more about the session.
    let scheduler = farm.scheduler_mut().context("a scheduler")?;
    scheduler.kill().await?;
    drop(worker);
    scheduler.start()?;

    // The worker comes back still holding the attempt. The second frame's
    // own report was lost with the old connection; the first is reported
    // again, and the success lists both.
    let holds = [(task.task_id.clone(), task.attempt)];
    let worker = HandWorker::join(&farm, "hand-0", &holds).await?;
    worker.output_stored(&before).await?;
    worker
        .succeeded(&task, vec![before.clone(), lost.clone()])
        .await?;

    let finished = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&finished), pb::JobState::Succeeded, "{finished:?}");
    let mut stored: Vec<String> = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    stored.sort();
    assert_eq!(stored, [before.path.clone(), lost.path.clone()]);
    let history = follow(client.jobs.clone(), job.id.clone(), true, None, 0).await?;
    let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "the stored sequence has no gap"
    );
    let mut announced: Vec<&str> = history.iter().filter_map(announced_path).collect();
    announced.sort();
    assert_eq!(
        announced,
        [before.path.as_str(), lost.path.as_str()],
        "each stored output announced exactly once"
    );
    let succeeded_at = history
        .iter()
        .position(|e| {
            matches!(&e.event, Some(Event::TaskStateChanged(c)) if c.state() == pb::TaskState::Succeeded)
        })
        .context("the task's success is in the sequence")?;
    let lost_at = history
        .iter()
        .position(|e| announced_path(e) == Some(lost.path.as_str()))
        .context("the lost frame is announced")?;
    assert!(
        lost_at < succeeded_at,
        "a task's outputs are announced before its success"
    );
    farm.shutdown().await?;
    Ok(())
}

/// The first record of a job that carries an ETA, from its stored events.
async fn first_eta(client: &mut Client, job_id: &str) -> Result<(usize, Option<pb::Eta>)> {
    let events = follow(client.jobs.clone(), job_id.to_owned(), true, None, 0).await?;
    let records: Vec<&pb::Job> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::JobChanged(job)) => Some(job),
            _ => None,
        })
        .collect();
    let first = records.first().context("the job has records")?;
    Ok((records.len(), first.eta))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerender_of_a_scene_has_an_eta_before_its_first_task_ends() -> Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;

    let first = client.submit_blender(&scene, "1-4", 1).await?;
    let done = client.wait_until_finished(&first.id).await?;
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");
    let (_, eta) = first_eta(&mut client, &first.id).await?;
    assert_eq!(
        eta, None,
        "a scene never rendered has no ETA until a task ends"
    );

    // Another range and chunk size of the same file.
    let again = client.submit_blender(&scene, "5-10", 2).await?;
    let done = client.wait_until_finished(&again.id).await?;
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");
    let (_, eta) = first_eta(&mut client, &again.id).await?;
    let eta = eta.context("the re-render's first record has an ETA")?;
    assert_eq!(
        eta.samples, 0,
        "no task of the re-render had ended: {eta:?}"
    );
    assert!(
        eta.earlier_samples >= 4 && eta.seconds_left > 0,
        "the ETA starts from the first job's run times: {eta:?}"
    );
    farm.shutdown().await?;
    Ok(())
}

/// Reads the farm watch until a change of `worker`; returns its position.
async fn next_worker_change(
    stream: &mut tonic::Streaming<pb::JobEvent>,
    worker: &str,
) -> Result<(pb::WorkerChange, u64)> {
    let wait = async {
        while let Some(event) = stream.message().await? {
            if let Some(Event::WorkerChanged(change)) = &event.event
                && change.worker_id == worker
            {
                assert!(event.job_id.is_empty() && event.seq == 0, "{event:?}");
                return Ok((change.change(), event.farm_seq));
            }
        }
        bail!("the farm watch ended")
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .context("no change of the worker")?
}

#[tokio::test(flavor = "multi_thread")]
async fn the_farm_watch_tells_when_workers_join_and_leave() -> Result<()> {
    let (mut farm, _dir) = start_farm(1, false).await?;
    let client = Client::connect(&farm).await?;
    let worker = kiln_localfarm::worker_id(0);
    let mut jobs = client.jobs.clone();
    let from_start = pb::WatchFarmRequest {
        after_farm_seq: Some(0),
    };
    let mut stream = jobs.watch_farm(from_start).await?.into_inner();
    let (change, joined_at) = next_worker_change(&mut stream, &worker).await?;
    assert_eq!(change, pb::WorkerChange::Joined);

    farm.workers_mut()[0].kill().await?;
    let (change, left_at) = next_worker_change(&mut stream, &worker).await?;
    assert_eq!(
        change,
        pb::WorkerChange::Left,
        "the killed worker's stream broke"
    );

    // Resuming after the join replays the departure, not the join.
    let resumed = pb::WatchFarmRequest {
        after_farm_seq: Some(joined_at),
    };
    let mut stream = jobs.watch_farm(resumed).await?.into_inner();
    assert_eq!(
        next_worker_change(&mut stream, &worker).await?,
        (pb::WorkerChange::Left, left_at)
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn live_logs_show_blender_rendering_and_every_frame_has_a_thumbnail() -> Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    // One task renders all twelve frames, so its log grows for a while.
    let job = client.submit_blender(&scene, "1-12", 12).await?;

    let render = loop {
        let tasks = client.tasks(&job.id).await?;
        if let Some(task) = tasks
            .iter()
            .find(|t| t.step_name == "Render" && t.state() == pb::TaskState::Running)
        {
            break task.clone();
        }
        let current = client.job(&job.id).await?;
        if kiln_tests::is_final(&current) {
            bail!("the job ended before its render was seen running: {current:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // `kiln logs -f` follows the running task's output until it ends.
    let output = tokio::process::Command::new(kiln_localfarm::locate_binary("kiln")?)
        .args(["logs", &job.id, &render.id, "-f"])
        .args([
            "--gateway",
            &farm.gateway_url(),
            "--token",
            farm.admin_token(),
        ])
        .output()
        .await?;
    let live = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kiln logs -f failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        live.lines().any(|l| l.starts_with("Fra:")),
        "the live log shows Blender's Fra: lines: {live}"
    );

    let finished = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&finished), pb::JobState::Succeeded, "{finished:?}");

    // The whole log is stored once the attempt ends.
    let log = client
        .jobs
        .get_task_log(pb::GetTaskLogRequest {
            job_id: job.id.clone(),
            task_id: render.id.clone(),
        })
        .await?
        .into_inner();
    let stored = dir.path().join("render.log");
    client.assets.download_to(&log.digest, &stored).await?;
    let text = std::fs::read_to_string(&stored)?;
    assert!(text.contains("Fra:") && text.contains("Saved:"), "{text}");

    // Every frame has a thumbnail with the frame's aspect ratio (320 x 180).
    let outputs = client.all_outputs(&job.id).await?;
    let frames: Vec<&pb::JobOutput> = outputs
        .iter()
        .filter(|o| o.kind.is_empty() && o.path.starts_with("frames/"))
        .collect();
    assert_eq!(frames.len(), 12);
    for frame in frames {
        let thumbnail = outputs
            .iter()
            .find(|o| o.kind == "thumbnail" && o.path == format!("thumbnails/{}", frame.path))
            .with_context(|| format!("no thumbnail of {}", frame.path))?;
        let path = dir.path().join("thumb.png");
        client.assets.download_to(&thumbnail.digest, &path).await?;
        let image = image::open(&path)?;
        assert_eq!(
            (image.width(), image.height()),
            (256, 144),
            "{} keeps the frame's 16:9",
            thumbnail.path
        );
        std::fs::remove_file(&path)?;
    }

    // The same through REST: the job's last three events over SSE resumed
    // with Last-Event-ID, the stored log, and the contact sheet.
    let last_seq = follow(client.jobs.clone(), job.id.clone(), true, None, 0)
        .await?
        .len() as u64;
    let (base, auth) = (
        farm.gateway_http_url(),
        format!("Bearer {}", farm.admin_token()),
    );
    let (job_id, task_id) = (job.id.clone(), render.id.clone());
    tokio::task::spawn_blocking(move || rest_checks(&base, &auth, &job_id, &task_id, last_seq))
        .await??;
    farm.shutdown().await?;
    Ok(())
}

fn rest_checks(base: &str, auth: &str, job_id: &str, task_id: &str, last_seq: u64) -> Result<()> {
    let agent = ureq::AgentBuilder::new().build();
    let get = |path: &str| {
        agent
            .get(&format!("{base}{path}"))
            .set("authorization", auth)
    };
    let sse = get(&format!("/v1/jobs/{job_id}/events"))
        .set("accept", "text/event-stream")
        .set("last-event-id", &(last_seq - 3).to_string())
        .call()?;
    assert_eq!(sse.content_type(), "text/event-stream");
    let body = sse.into_string()?;
    let ids: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .filter_map(|id| id.trim().parse().ok())
        .collect();
    assert_eq!(ids, vec![last_seq - 2, last_seq - 1, last_seq], "{body}");
    assert!(body.contains("event: job_changed"), "{body}");

    let log = get(&format!("/v1/jobs/{job_id}/tasks/{task_id}/log"))
        .call()?
        .into_string()?;
    assert!(log.contains("Fra:"), "{log}");

    let sheet = get(&format!("/v1/jobs/{job_id}/contact-sheet")).call()?;
    assert_eq!(sheet.content_type(), "image/png");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut sheet.into_reader().take(64 << 20), &mut bytes)?;
    let sheet = image::load_from_memory(&bytes)?;
    assert_eq!(
        (sheet.width(), sheet.height()),
        (8 * 256, 2 * 256),
        "twelve thumbnails in rows of eight"
    );
    Ok(())
}
