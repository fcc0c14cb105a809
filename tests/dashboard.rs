//! The web dashboard in a real browser (Debian's headless Chromium over
//! WebDriver) against a real farm: log in with a token, submit the example
//! scene through the form, watch its frames turn green live, open a frame's
//! log, play the video to its end, cancel a second job, disable a worker and
//! see it take no new task, and check that a viewer sees no admin buttons
//! and that the API refuses the admin actions anyway. Every page is saved as
//! a screenshot (`target/dashboard-artifacts/`), and any browser console
//! error fails the test.
//!
//! `dashboard_figures` measures, in the browser, how long the jobs page
//! takes with 10,000 jobs (`KILN_DASHBOARD_JOBS`), a 5,000-frame job's grid
//! (`KILN_DASHBOARD_FRAMES`), and how many events a second the job page
//! applies; it prints them and asserts nothing about them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use kiln_proto::v1 as pb;
use kiln_tests::webdriver::Browser;
use kiln_tests::{
    Client, blender_request, clips_request, create_token, example_scene, start_farm,
    start_farm_with,
};

const LONG: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(30);

fn artifacts() -> PathBuf {
    std::env::var_os("KILN_ARTIFACTS").map_or_else(
        || kiln_tests::repo_root().join("target/dashboard-artifacts"),
        PathBuf::from,
    )
}

/// Fails on any console error since the last look, naming the page.
fn no_console_errors(browser: &Browser, page: &str) -> Result<()> {
    let errors = browser.console_errors()?;
    ensure!(
        errors.is_empty(),
        "console errors on the {page} page: {errors:#?}"
    );
    Ok(())
}

fn log_in(browser: &Browser, base: &str, token: &str) -> Result<()> {
    browser.goto(&format!("{base}/"))?;
    browser.wait_for(
        "the login page",
        "document.body.dataset.page === 'login'",
        SHORT,
    )?;
    browser.type_into("#token", token)?;
    browser.click("#login")?;
    browser.wait_for(
        "the jobs page",
        "document.body.dataset.page === 'jobs'",
        SHORT,
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() -> Result<()> {
    let (farm, dir) = start_farm(2, false).await?;
    let base = farm.gateway_http_url();
    let scene = example_scene(dir.path())?;
    let mut admin = Client::connect(&farm).await?;
    let viewer_token = create_token(&farm, "vera", pb::Role::Viewer, 0).await?;
    let browser = Browser::start(&artifacts())?;

    // 1. Log in with a token: the session cookie is HttpOnly.
    browser.goto(&format!("{base}/"))?;
    browser.wait_for(
        "the login page",
        "document.body.dataset.page === 'login'",
        SHORT,
    )?;
    browser.screenshot("login")?;
    log_in(&browser, &base, farm.admin_token())?;
    let cookies = browser.script("return document.cookie;")?;
    ensure!(
        cookies == "",
        "the session cookie is readable by scripts: {cookies}"
    );
    browser.screenshot("jobs-empty")?;
    no_console_errors(&browser, "jobs")?;

    // 2. Submit the example scene through the form.
    browser.goto(&format!("{base}/submit"))?;
    browser.wait_for(
        "the submit page",
        "document.body.dataset.page === 'submit'",
        SHORT,
    )?;
    browser.type_into("#scene", &scene.display().to_string())?;
    browser.type_into("#frames", "1-8")?;
    browser.type_into("#chunk", "2")?;
    browser.type_into("#name", "browser-shot")?;
    browser.screenshot("submit")?;
    browser.click("#submit")?;
    browser.wait_for("the job page", "document.body.dataset.page === 'job'", LONG)?;
    no_console_errors(&browser, "submit")?;
    let job_id = browser.script("return document.body.dataset.job;")?;
    let job_id = job_id.as_str().unwrap_or_default().to_owned();

    // 3. Its frames turn green live: no reload (the marker survives).
    browser.script("window.stayed = true;")?;
    browser.wait_for(
        "the frame grid",
        "document.querySelectorAll('#grid .cell').length === 8",
        SHORT,
    )?;
    let green_at_first =
        browser.script("return document.querySelectorAll('#grid .cell.t-succeeded').length;")?;
    browser.wait_for(
        "every frame green",
        "document.querySelectorAll('#grid .cell.t-succeeded').length === 8",
        LONG,
    )?;
    ensure!(
        green_at_first.as_u64().unwrap_or(8) < 8,
        "the frames were green before the page watched them"
    );
    ensure!(
        browser.script("return window.stayed === true;")? == true,
        "the page reloaded instead of updating live"
    );

    // 4. A frame's log.
    browser.click("#grid .cell")?;
    let log = browser.wait_for(
        "the frame's log",
        "document.getElementById('task-log').dataset.done === 'true' && document.getElementById('task-log').textContent",
        SHORT,
    )?;
    ensure!(
        log.as_str()
            .is_some_and(|l| l.contains("Fra:") || l.contains("Saved:")),
        "not a Blender log: {log}"
    );
    ensure!(
        browser.exists("#attempts tr td")?,
        "the task's attempts are listed"
    );

    // 5. The video plays to its end; the contact sheet shows.
    browser.wait_for(
        "the job to succeed",
        "document.getElementById('job-state').textContent === 'succeeded'",
        LONG,
    )?;
    browser.wait_for("the video", "document.getElementById('video')", LONG)?;
    let ended = browser.async_script(
        "const done = arguments[0]; const v = document.getElementById('video');
         v.muted = true; v.addEventListener('ended', () => done(v.ended));
         v.addEventListener('error', () => done('error ' + (v.error && v.error.message)));
         v.play().catch((e) => done('play failed: ' + e.message));",
    )?;
    ensure!(ended == true, "the video did not play to its end: {ended}");
    browser.wait_for(
        "the contact sheet",
        "document.getElementById('contact-sheet') && document.getElementById('contact-sheet').complete && document.getElementById('contact-sheet').naturalWidth > 0",
        SHORT,
    )?;
    browser.script("document.getElementById('grid').scrollIntoView();")?;
    browser.screenshot("job")?;
    no_console_errors(&browser, "job")?;

    // 6. Cancel a second job from its page.
    let info = admin.assets.upload_file(&scene).await?;
    let second = admin
        .jobs
        .submit_job(kiln_tests::blender_request(&info.digest, "1-48", 4))
        .await?
        .into_inner();
    browser.goto(&format!("{base}/jobs/{}", second.id))?;
    browser.wait_for(
        "the second job's page",
        "document.body.dataset.page === 'job'",
        SHORT,
    )?;
    browser.click("button[data-action=cancel]")?;
    browser.wait_for(
        "the cancel to show",
        "document.getElementById('job-state').textContent === 'cancelled'",
        SHORT,
    )?;
    ensure!(
        admin.job(&second.id).await?.state == pb::JobState::Cancelled as i32,
        "the job was not cancelled"
    );
    no_console_errors(&browser, "cancelled job")?;

    // 7. Disable a worker on the workers page; it takes no new task.
    let disabled = kiln_localfarm::worker_id(1);
    browser.goto(&format!("{base}/workers"))?;
    browser.wait_for(
        "the workers page",
        "document.body.dataset.page === 'workers'",
        SHORT,
    )?;
    browser.click(&format!(
        "tr[data-worker=\"{disabled}\"] button[data-worker-action=disable]"
    ))?;
    browser.wait_for(
        "the worker shown disabled",
        &format!("document.querySelector('tr[data-worker=\"{disabled}\"] .badge').textContent === 'disabled'"),
        SHORT,
    )?;
    let third = admin
        .jobs
        .submit_job(kiln_tests::blender_request(&info.digest, "1-8", 1))
        .await?
        .into_inner();
    let finished = admin.wait_until_finished(&third.id).await?;
    ensure!(
        finished.state == pb::JobState::Succeeded as i32,
        "{finished:?}"
    );
    let tasks = admin.tasks(&third.id).await?;
    ensure!(
        tasks.iter().all(|t| t.worker_id != disabled),
        "a disabled worker took a task: {tasks:?}"
    );
    browser.goto(&format!("{base}/workers"))?;
    browser.wait_for(
        "the workers page",
        "document.body.dataset.page === 'workers'",
        SHORT,
    )?;
    browser.screenshot("workers")?;
    no_console_errors(&browser, "workers")?;

    // The timeline shows the runs per worker.
    browser.goto(&format!("{base}/timeline"))?;
    browser.wait_for(
        "spans on the timeline",
        "Number(document.getElementById('gantt').dataset.spans || 0) > 0",
        SHORT,
    )?;
    browser.screenshot("timeline")?;
    no_console_errors(&browser, "timeline")?;

    // The jobs list, with three jobs.
    browser.goto(&format!("{base}/"))?;
    browser.wait_for(
        "the jobs list",
        "document.querySelectorAll('#jobs tbody tr').length === 3",
        SHORT,
    )?;
    browser.screenshot("jobs")?;

    // 8. A viewer sees no admin buttons, and the API refuses them anyway.
    browser.click("#logout")?;
    browser.wait_for(
        "the login page",
        "document.body.dataset.page === 'login'",
        SHORT,
    )?;
    log_in(&browser, &base, &viewer_token)?;
    browser.goto(&format!("{base}/jobs/{job_id}"))?;
    let page = browser.wait_for("the viewer's job page", "document.body.dataset.page", SHORT)?;
    ensure!(page == "error" || page == "job", "{page}");
    ensure!(!browser.exists("#actions")?, "a viewer sees job controls");
    browser.goto(&format!("{base}/workers"))?;
    browser.wait_for(
        "the viewer's workers page",
        "document.body.dataset.page === 'workers'",
        SHORT,
    )?;
    ensure!(
        !browser.exists("[data-worker-action]")?,
        "a viewer sees worker actions"
    );
    browser.screenshot("workers-viewer")?;
    let refused = browser.async_script(&format!(
        "const done = arguments[0];
         const csrf = document.querySelector('meta[name=\"csrf-token\"]').content;
         const post = (path, headers) => fetch(path, {{method: 'POST', headers}}).then((r) => r.status);
         Promise.all([
           post('/v1/workers/{disabled}/enable', {{'x-csrf-token': csrf}}),
           post('/v1/jobs/{job_id}/retry', {{'x-csrf-token': csrf}}),
           post('/v1/workers/{disabled}/enable', {{}}),
         ]).then(done);"
    ))?;
    ensure!(
        refused == serde_json::json!([403, 403, 403]),
        "the API let a viewer act (or skipped the CSRF check): {refused}"
    );
    let worker = admin
        .farm
        .get_worker(pb::GetWorkerRequest {
            worker_id: disabled.clone(),
        })
        .await?
        .into_inner();
    ensure!(worker.disabled, "a viewer enabled a worker: {worker:?}");
    // The refused calls above logged their 403s; nothing else may have.
    let errors: Vec<String> = browser
        .console_errors()?
        .into_iter()
        .filter(|e| !e.contains("403"))
        .collect();
    ensure!(
        errors.is_empty(),
        "console errors for the viewer: {errors:#?}"
    );
    println!("dashboard screenshots in {}", artifacts().display());
    Ok(())
}

fn env_count(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_figures() -> Result<()> {
    let jobs = env_count("KILN_DASHBOARD_JOBS", 10_000);
    let frames = env_count("KILN_DASHBOARD_FRAMES", 5_000);
    // No worker: the jobs wait (tagged for a pool nobody is in), which is
    // all the pages need. The per-token rate limit and the per-owner job
    // quota are lifted: the figures are about the page, not about how fast
    // or how much one token may submit.
    let lifted = [
        ("KILN_RATE_LIMIT_PER_SECOND", "1000000"),
        ("KILN_RATE_LIMIT_BURST", "1000000"),
        ("KILN_MAX_UNFINISHED_JOBS_PER_OWNER", "0"),
    ];
    let (farm, dir) = start_farm_with(0, false, &lifted).await?;
    let base = farm.gateway_http_url();
    let client = Client::connect(&farm).await?;
    let started = Instant::now();
    let mut submitters = Vec::new();
    for lane in 0..16 {
        let mut jobs_api = client.jobs.clone();
        submitters.push(tokio::spawn(async move {
            for i in (lane..jobs).step_by(16) {
                let mut request = clips_request(1, 1, "testsrc", false);
                request.tags = vec!["nowhere".into()];
                request.name = format!("figure-{i:05}");
                jobs_api.submit_job(request).await?;
            }
            anyhow::Ok(())
        }));
    }
    for submitter in submitters {
        submitter.await??;
    }
    println!(
        "submitted {jobs} jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A Blender job of one frame a task: its grid has a cell per frame (it
    // never renders, so a placeholder scene does).
    let scene = dir.path().join("placeholder.blend");
    std::fs::write(&scene, b"BLENDER-v304 placeholder")?;
    let digest = client.assets.upload_file(&scene).await?.digest;
    let mut grid_request = blender_request(&digest, &format!("1-{frames}"), 1);
    grid_request.tags = vec!["nowhere".into()];
    let big = client
        .jobs
        .clone()
        .submit_job(grid_request)
        .await?
        .into_inner();

    let browser = Browser::start(&artifacts())?;
    log_in(&browser, &base, farm.admin_token())?;
    let mut list_ms = Vec::new();
    for _ in 0..3 {
        browser.goto(&format!("{base}/"))?;
        let ready = browser.wait_for("the jobs page", "window.kiln && window.kiln.ready", SHORT)?;
        list_ms.push(ready.as_f64().unwrap_or(f64::NAN));
    }
    let mut grid_ms = Vec::new();
    for _ in 0..3 {
        browser.goto(&format!("{base}/jobs/{}", big.id))?;
        let ready = browser.wait_for("the grid", "window.kiln && window.kiln.ready", LONG)?;
        grid_ms.push(ready.as_f64().unwrap_or(f64::NAN));
    }
    let cells = browser.script("return document.querySelectorAll('#grid .cell').length;")?;
    if cells.as_u64() != Some(u64::from(frames)) {
        bail!("the grid has {cells} cells, not {frames}");
    }
    // Events the page applies per second: task changes pushed through the
    // same handler the SSE stream feeds, in bursts of 1,000 per frame.
    let rate = browser.async_script(
        "const done = arguments[0];
         const ids = [...new Set([...document.querySelectorAll('#grid .cell')].map((c) => c.dataset.task))];
         const total = 50000; let sent = 0; const t0 = performance.now();
         const states = ['TASK_STATE_DISPATCHED', 'TASK_STATE_RUNNING', 'TASK_STATE_SUCCEEDED'];
         function burst() {
           for (let i = 0; i < 1000 && sent < total; i++, sent++) {
             window.kiln.inject({taskId: ids[sent % ids.length], state: states[Math.floor(sent / ids.length) % 3], attempt: 1 + Math.floor(sent / ids.length / 3)});
           }
           if (sent < total) requestAnimationFrame(burst);
           else requestAnimationFrame(() => requestAnimationFrame(() => done(total / ((performance.now() - t0) / 1000))));
         }
         burst();",
    )?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "dashboard figures: jobs page with {jobs} jobs interactive after {:.0} ms (median of 3, from navigation start); \
         {frames}-frame grid ready after {:.0} ms; the job page applies {:.0} events/s",
        median(&mut list_ms),
        median(&mut grid_ms),
        rate.as_f64().unwrap_or(f64::NAN)
    );
    browser.screenshot("grid-5000")?;
    Ok(())
}
