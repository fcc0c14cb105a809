//! The Blender add-on (`clients/blender`) in Debian's real Blender: installed
//! from its zip the way a user installs it, given its preferences, and run
//! through its submit and download operators against a farm of real
//! processes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{Client, create_token, repo_root, start_farm, state_of};

/// A scene whose left half shows a green texture kept outside the scene's
/// folder (an absolute path) and whose right half shows a blue one under
/// its own `textures/`. Rendered on the farm, both colours must be there:
/// a texture the farm does not find renders magenta.
#[tokio::test(flavor = "multi_thread")]
async fn the_addon_submits_a_scene_with_a_texture_outside_its_folder() -> Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let result = submit_and_download(&farm, dir.path()).await;
    farm.shutdown().await?;
    result
}

async fn submit_and_download(farm: &Farm, dir: &Path) -> Result<()> {
    let scene = dir.join("shot/scene.blend");
    let outside = dir.join("library/green.png");
    make_scene(&scene, &outside, None)?;
    let token = create_token(farm, "artist", pb::Role::Submitter, 0).await?;
    let run = run_addon(farm, dir, &scene, &token, true).await?;

    let job_id = run.job_id()?;
    let mut client = Client::connect(farm).await?;
    let job = client.job(&job_id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    assert_eq!(job.owner, "artist");
    assert_eq!(job.name, "scene.blend", "the job is named after the file");
    let paths: Vec<&str> = job.inputs.iter().map(|i| i.path.as_str()).collect();
    assert!(paths.contains(&"scene.blend"), "{paths:?}");
    assert!(paths.contains(&"textures/inside.png"), "{paths:?}");
    let external = format!("_kiln_external{}", outside.to_string_lossy());
    assert!(
        paths.contains(&external.as_str()),
        "the outside texture is bundled under its absolute path: {paths:?}"
    );

    // The copy the farm rendered names the outside texture inside the bundle
    // (on this machine the worker could also read the original path, so
    // the pixels alone would not tell).
    let copy = dir.join("submitted.blend");
    let scene_input = job.inputs.iter().find(|i| i.path == "scene.blend");
    let digest = &scene_input.context("no scene input")?.digest;
    client.assets.download_to(digest, &copy).await?;
    let paths = image_paths(&copy)?;
    assert!(
        paths.contains(&format!("//{external}"))
            && paths.contains(&"//textures/inside.png".to_owned()),
        "the submitted copy's image paths: {paths:?}"
    );

    // The operator reported the job's progress as it went, to its end.
    let progress = run.job_lines();
    ensure!(
        progress.len() >= 2,
        "too few progress reports: {}",
        run.stdout
    );
    let last = progress.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("succeeded") && last.contains("100%"),
        "last report: {last}"
    );
    let percents: Vec<u32> = progress.iter().filter_map(|l| percent(l)).collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {progress:?}"
    );
    assert!(
        run.stdout.contains("uploading 3 of 3 files"),
        "{}",
        run.stdout
    );

    // Downloaded by the add-on's download operator: both frames show both textures.
    let folder = run.download_folder()?;
    for frame in ["frames/frame_0001.png", "frames/frame_0002.png"] {
        let image = image::open(folder.join(frame))
            .with_context(|| format!("reading the downloaded {frame}"))?
            .to_rgb8();
        let left = image.get_pixel(16, 16).0;
        let right = image.get_pixel(48, 16).0;
        assert!(
            left[1] > 200 && left[0] < 50 && left[2] < 50,
            "{frame}: left half should be the outside texture's green, is {left:?}"
        );
        assert!(
            right[2] > 200 && right[0] < 50 && right[1] < 50,
            "{frame}: right half should be the inside texture's blue, is {right:?}"
        );
    }
    let (frames, codec, _) = kiln_tests::probe_video(&folder.join("video.mp4"))?;
    assert_eq!((frames, codec.as_str()), (2, "h264"));
    Ok(())
}

/// A scene naming a texture that does not exist: the operator names it and
/// stops before anything reaches the farm.
#[tokio::test(flavor = "multi_thread")]
async fn the_addon_reports_missing_files_before_uploading_anything() -> Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let result = refuse_missing(&farm, dir.path()).await;
    farm.shutdown().await?;
    result
}

async fn refuse_missing(farm: &Farm, dir: &Path) -> Result<()> {
    let scene = dir.join("shot/scene.blend");
    let outside = dir.join("library/green.png");
    let missing = dir.join("library/gone.png");
    make_scene(&scene, &outside, Some(&missing))?;
    let token = create_token(farm, "artist", pb::Role::Submitter, 0).await?;
    let run = run_addon(farm, dir, &scene, &token, false).await?;

    assert!(
        run.stdout.contains("KILN_SUBMIT_RESULT CANCELLED"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("missing") && run.stdout.contains(&*missing.to_string_lossy()),
        "the report names the missing file: {}",
        run.stdout
    );
    let client = Client::connect(farm).await?;
    let (digest, _) = kiln_asset_client::digest::sha256_file_with_len(&outside).await?;
    let absent = client
        .assets
        .find_missing(std::slice::from_ref(&digest))
        .await?;
    assert_eq!(
        absent,
        vec![digest],
        "the texture that exists was not uploaded"
    );
    let mut client = client;
    let jobs = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "no job was submitted: {jobs:?}");
    Ok(())
}

/// The add-on's pure-Python parts (bundle paths, progress, the REST
/// client against a local server), with the standard library's unittest.
#[test]
fn the_addons_unit_tests_pass() -> Result<()> {
    let output = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "tests",
            "-p",
            "test_*.py",
        ])
        .current_dir(repo_root().join("clients/blender"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn make_scene(scene: &Path, outside: &Path, missing: Option<&Path>) -> Result<()> {
    let script = repo_root().join("clients/blender/tests/make_texture_scene.py");
    let mut command = Command::new("blender");
    command
        .args(["-b", "-Y", "--factory-startup", "--python"])
        .arg(&script)
        .arg("--")
        .arg(scene)
        .arg(outside);
    if let Some(missing) = missing {
        command.arg(missing);
    }
    let output = command.output().context("running blender")?;
    ensure!(
        output.status.success(),
        "making the scene failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The image paths stored in a .blend, as Blender reads them.
fn image_paths(blend: &Path) -> Result<Vec<String>> {
    let output = Command::new("blender")
        .args(["-b", "-Y", "--factory-startup"])
        .arg(blend)
        .args([
            "--python-expr",
            "import bpy\nfor i in bpy.data.images: print('KILN_IMAGE_PATH', i.filepath)",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout
        .lines()
        .filter_map(|l| l.strip_prefix("KILN_IMAGE_PATH "))
        .map(str::to_owned)
        .collect())
}

/// What one Blender run of the driver printed.
struct AddonRun {
    stdout: String,
}

impl AddonRun {
    fn marker(&self, name: &str) -> Result<Vec<&str>> {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} line in: {}", self.stdout))?;
        Ok(line.split_whitespace().skip(1).collect())
    }

    fn job_id(&self) -> Result<String> {
        let words = self.marker("KILN_SUBMIT_RESULT")?;
        if words.first() != Some(&"FINISHED") {
            bail!("the submit operator did not finish: {}", self.stdout);
        }
        Ok(words.get(1).copied().unwrap_or_default().to_owned())
    }

    fn download_folder(&self) -> Result<PathBuf> {
        let words = self.marker("KILN_DOWNLOAD_RESULT")?;
        if words.first() != Some(&"FINISHED") {
            bail!("the download operator did not finish: {}", self.stdout);
        }
        Ok(PathBuf::from(words.get(1).copied().unwrap_or_default()))
    }

    /// The operator's reports about the job (`Info: Kiln: job ... N%`).
    fn job_lines(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter(|l| l.contains("Kiln: job ") && l.contains('%'))
            .map(str::to_owned)
            .collect()
    }
}

fn percent(line: &str) -> Option<u32> {
    let end = line.find('%')?;
    let start = line[..end].rfind(' ')? + 1;
    line[start..end].parse().ok()
}

/// Runs Blender on `scene` with the add-on installed from its zip into a
/// private user folder, its preferences pointing at `farm` with `token`.
async fn run_addon(
    farm: &Farm,
    dir: &Path,
    scene: &Path,
    token: &str,
    download: bool,
) -> Result<AddonRun> {
    let root = repo_root().join("clients/blender");
    let zip = dir.join("kiln_blender.zip");
    let packaged = Command::new("python3")
        .arg(root.join("package.py"))
        .arg(&zip)
        .output()?;
    ensure!(packaged.status.success(), "packaging the add-on failed");
    let mut command = Command::new("blender");
    command
        .args(["-b", "-Y"])
        .arg(scene)
        .arg("--python")
        .arg(root.join("tests/submit_driver.py"))
        .args(["--", "--addon"])
        .arg(&zip)
        .args([
            "--farm",
            &farm.gateway_http_url(),
            "--frames",
            "1-2",
            "--chunk",
            "1",
        ])
        .env("BLENDER_USER_SCRIPTS", dir.join("blender-user/scripts"))
        .env("BLENDER_USER_CONFIG", dir.join("blender-user/config"))
        .env("KILN_TEST_TOKEN", token);
    if download {
        command.arg("--download");
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "blender failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(AddonRun { stdout })
}
