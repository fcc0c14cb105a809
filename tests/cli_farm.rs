//! `kiln workers` and `kiln jobs` filters and pages, through the real `kiln`
//! binary against a real farm: what an admin types at a terminal, and what a
//! viewer is refused.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kiln_localfarm::{Farm, locate_binary};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, clips_request, create_token, eventually, start_farm, worker_connected};

const PATIENCE: Duration = Duration::from_secs(60);

/// What one `kiln` run printed and whether it succeeded.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `kiln ARGS --gateway URL --token TOKEN`.
fn kiln(farm: &Farm, token: &str, args: &[&str]) -> Result<Run> {
    let output = std::process::Command::new(locate_binary("kiln")?)
        .args(args)
        .args(["--gateway", &farm.gateway_url(), "--token", token])
        // A wide terminal, so that tables never wrap an id.
        .env("COLUMNS", "400")
        .output()?;
    Ok(Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `kiln` as the farm's admin and insists it succeeds; returns stdout.
fn admin(farm: &Farm, args: &[&str]) -> Result<String> {
    let run = kiln(farm, farm.admin_token(), args)?;
    ensure!(
        run.ok,
        "kiln {args:?} failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    Ok(run.stdout)
}

/// The `--page-token` a `kiln jobs` output offers for its next page.
fn next_token(stdout: &str) -> Option<String> {
    let rest = stdout.split("--page-token ").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// Which of `ids` an output names.
fn named<'a>(stdout: &str, ids: &'a [String]) -> Vec<&'a String> {
    ids.iter()
        .filter(|id| stdout.contains(id.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_workers_shows_and_changes_workers_and_refuses_viewers() -> Result<()> {
    let (farm, _dir) = start_farm(1, false).await?;
    let mut client = Client::connect(&farm).await?;
    let id = kiln_localfarm::worker_id(0);
    worker_connected(&client, &id, PATIENCE).await?;

    let list = admin(&farm, &["workers", "list"])?;
    let row = list
        .lines()
        .find(|l| l.contains(&id))
        .with_context(|| format!("no row for {id}:\n{list}"))?;
    ensure!(row.contains("idle"), "{list}");
    let show = admin(&farm, &["workers", "show", &id])?;
    for expected in [
        "state      idle, connected",
        "gpus",
        "running    nothing",
        "tags       (none)",
    ] {
        ensure!(show.contains(expected), "no {expected:?} in:\n{show}");
    }

    let tagged = admin(&farm, &["workers", "tags", &id, "fx,linux", "big"])?;
    ensure!(tagged.contains("tags big,fx,linux"), "{tagged}");
    let list = admin(&farm, &["workers", "list"])?;
    ensure!(list.contains("big,fx,linux"), "{list}");

    // Disabled, it takes no task, and `kiln status` says why the job waits.
    let disabled = admin(&farm, &["workers", "disable", &id])?;
    ensure!(disabled.contains("is disabled"), "{disabled}");
    let job = client
        .jobs
        .submit_job(clips_request(1, 1, "testsrc", false))
        .await?
        .into_inner();
    let status = eventually("kiln status to name the disabled worker", PATIENCE, || {
        let farm = &farm;
        let job = job.id.clone();
        let id = id.clone();
        async move {
            let out = admin(farm, &["status", &job])?;
            Ok(out
                .contains(&format!("workers kept away: {id} (disabled)"))
                .then_some(out))
        }
    })
    .await?;
    ensure!(status.contains("state     pending"), "{status}");
    ensure!(client.job(&job.id).await?.tasks_running == 0, "{status}");

    // A viewer reads the workers but the CLI reports the refusal of each action.
    let viewer = create_token(&farm, "carol", pb::Role::Viewer, 0).await?;
    let seen = kiln(&farm, &viewer, &["workers", "list"])?;
    ensure!(seen.ok && seen.stdout.contains(&id), "{}", seen.stderr);
    for action in [
        vec!["workers", "enable", &id],
        vec!["workers", "drain", &id],
        vec!["workers", "tags", &id, "mine"],
    ] {
        let refused = kiln(&farm, &viewer, &action)?;
        ensure!(
            !refused.ok && refused.stderr.contains("needs the admin role"),
            "{action:?} as a viewer: {}{}",
            refused.stdout,
            refused.stderr
        );
    }
    let still = admin(&farm, &["workers", "show", &id])?;
    ensure!(
        still.contains("disabled") && still.contains("big,fx,linux"),
        "{still}"
    );

    // Enabled, it runs the job; drained, it ends disabled.
    let enabled = admin(&farm, &["workers", "enable", &id])?;
    ensure!(
        enabled.contains("is idle") || enabled.contains("is busy"),
        "{enabled}"
    );
    let done = client.wait_until_finished(&job.id).await?;
    ensure!(done.state == pb::JobState::Succeeded as i32, "{done:?}");
    let drained = admin(&farm, &["workers", "drain", &id])?;
    ensure!(
        drained.contains("is draining") || drained.contains("is disabled"),
        "{drained}"
    );
    eventually("the idle worker's drain to end", PATIENCE, || {
        let farm = &farm;
        let id = id.clone();
        async move {
            let show = admin(farm, &["workers", "show", &id])?;
            Ok(show.contains("state      disabled").then_some(()))
        }
    })
    .await?;
    let cleared = admin(&farm, &["workers", "tags", &id])?;
    ensure!(cleared.contains("no tags"), "{cleared}");

    let unknown = kiln(
        &farm,
        farm.admin_token(),
        &["workers", "show", "no-such-worker"],
    )?;
    ensure!(
        !unknown.ok && unknown.stderr.contains("no worker"),
        "{}{}",
        unknown.stdout,
        unknown.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_jobs_filters_and_pages_through_every_job_once() -> Result<()> {
    // No worker: the jobs wait, which is all listing needs.
    let (farm, _dir) = start_farm(0, false).await?;
    let mut client = Client::connect(&farm).await?;
    let mut shots = Vec::new();
    for i in 0..7 {
        let mut request = clips_request(1, 1, "testsrc", false);
        request.name = format!("cli-shot-{i}");
        shots.push(client.jobs.submit_job(request).await?.into_inner().id);
    }
    let mut other = clips_request(1, 1, "testsrc", false);
    other.name = "cli-other".into();
    let other = client.jobs.submit_job(other).await?.into_inner().id;
    let paused = client
        .jobs
        .pause_job(pb::PauseJobRequest {
            job_id: shots[0].clone(),
        })
        .await?
        .into_inner();
    ensure!(paused.state == pb::JobState::Paused as i32, "{paused:?}");

    // Page by page with the printed token: each shot once, never the other.
    let mut seen = Vec::new();
    let mut args = vec!["jobs", "--name", "CLI-SHOT", "--limit", "3"];
    let mut token;
    let mut pages = 0;
    loop {
        let out = admin(&farm, &args)?;
        pages += 1;
        ensure!(
            named(&out, std::slice::from_ref(&other)).is_empty(),
            "{out}"
        );
        seen.extend(named(&out, &shots).into_iter().cloned());
        match next_token(&out) {
            Some(next) => token = next,
            None => break,
        }
        ensure!(pages < 10, "the pages never end");
        args = vec![
            "jobs",
            "--name",
            "CLI-SHOT",
            "--limit",
            "3",
            "--page-token",
            &token,
        ];
    }
    ensure!(pages == 3, "7 jobs in pages of 3 are 3 pages, not {pages}");
    let unique: HashSet<&String> = seen.iter().collect();
    ensure!(
        unique.len() == seen.len() && unique.len() == shots.len(),
        "every shot once: {seen:?}"
    );

    // --all follows every page itself.
    let all = admin(
        &farm,
        &["jobs", "--name", "cli-shot", "--limit", "2", "--all"],
    )?;
    ensure!(named(&all, &shots).len() == shots.len(), "{all}");
    ensure!(next_token(&all).is_none(), "{all}");

    // States and owners.
    let paused_only = admin(&farm, &["jobs", "--state", "paused"])?;
    ensure!(named(&paused_only, &shots) == [&shots[0]], "{paused_only}");
    let pending = admin(&farm, &["jobs", "--state", "pending,running"])?;
    ensure!(
        named(&pending, &shots).len() == shots.len() - 1 && pending.contains(&other),
        "{pending}"
    );
    let nobody = admin(&farm, &["jobs", "--owner", "nobody-here"])?;
    ensure!(nobody.contains("no jobs match"), "{nobody}");
    let future = admin(
        &farm,
        &["jobs", "--submitted-after", "2999-01-01T00:00:00Z"],
    )?;
    ensure!(future.contains("no jobs match"), "{future}");
    let past = admin(
        &farm,
        &[
            "jobs",
            "--submitted-before",
            "2999-01-01T00:00:00Z",
            "--all",
        ],
    )?;
    ensure!(named(&past, &shots).len() == shots.len(), "{past}");

    // Bad input: a clear error, not a listing.
    let first = admin(&farm, &["jobs", "--name", "cli-shot", "--limit", "3"])?;
    let token = next_token(&first).context("a second page")?;
    let other_filters = kiln(
        &farm,
        farm.admin_token(),
        &["jobs", "--name", "cli-other", "--page-token", &token],
    )?;
    ensure!(
        !other_filters.ok && other_filters.stderr.contains("other filters"),
        "{}{}",
        other_filters.stdout,
        other_filters.stderr
    );
    let state = kiln(&farm, farm.admin_token(), &["jobs", "--state", "sleeping"])?;
    ensure!(
        !state.ok && state.stderr.contains("is not one of"),
        "{}",
        state.stderr
    );
    let time = kiln(
        &farm,
        farm.admin_token(),
        &["jobs", "--submitted-after", "yesterday"],
    )?;
    ensure!(
        !time.ok && time.stderr.contains("RFC 3339"),
        "{}",
        time.stderr
    );

    // A submitter sees only their own jobs, and may not ask for others'.
    let alice = create_token(&farm, "alice", pb::Role::Submitter, 0).await?;
    let mine = kiln(&farm, &alice, &["jobs", "--all"])?;
    ensure!(
        mine.ok && named(&mine.stdout, &shots).is_empty() && mine.stdout.contains("no jobs match"),
        "{}{}",
        mine.stdout,
        mine.stderr
    );
    let theirs = kiln(&farm, &alice, &["jobs", "--owner", "admin"])?;
    ensure!(!theirs.ok, "{}", theirs.stdout);
    Ok(())
}
