//! The Python client (`clients/python`): built and installed into a fresh
//! venv from a local wheelhouse (its gRPC code generated from the protos as
//! it builds), then its example renders a scene on a farm of real
//! processes, following the job's events to the end and downloading the
//! video; and its token calls work against the real gateway.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use kiln_proto::v1 as pb;
use kiln_tests::{create_token, example_scene, probe_video, repo_root, start_farm};

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_renders_the_example_from_a_fresh_venv() -> Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let result = render_example(&farm, dir.path()).await;
    farm.shutdown().await?;
    result
}

async fn render_example(farm: &kiln_localfarm::Farm, dir: &Path) -> Result<()> {
    let python = install_client(dir)?;
    let scene = example_scene(dir)?;
    let token = create_token(farm, "pipeline", pb::Role::Submitter, 0).await?;
    let out = dir.join("renders");
    let mut command = Command::new(&python);
    command
        .arg(repo_root().join("clients/python/examples/render_scene.py"))
        .arg(&scene)
        .args(["--frames", "1-4", "--chunk", "2", "--out"])
        .arg(&out)
        .env("KILN_FARM", farm.gateway_url())
        .env("KILN_TOKEN", &token);
    let stdout = run(command).await?;

    // It followed the job's events, in order, to the job's end.
    let events: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|l| l[1..l.find(']')?].parse().ok())
        .filter(|seq| *seq > 0)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events out of order or repeated: {stdout}"
    );
    assert!(
        events.iter().any(|l| l.ends_with("output video.mp4")),
        "{stdout}"
    );
    let last = events.last().copied().unwrap_or_default();
    assert!(
        last.contains("job succeeded: 4/4 tasks"),
        "the last event is the job's end: {stdout}"
    );

    let video = stdout
        .lines()
        .find_map(|l| l.strip_prefix("video: "))
        .map(PathBuf::from)
        .with_context(|| format!("no video downloaded: {stdout}"))?;
    assert_eq!(video, out.join("video.mp4"));
    let (frames, codec, _) = probe_video(&video)?;
    assert_eq!((frames, codec.as_str()), (4, "h264"));
    assert!(out.join("frames/frame_0004.png").is_file());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_manages_tokens() -> Result<()> {
    let (mut farm, dir) = start_farm(0, false).await?;
    let result = manage_tokens(&farm, dir.path()).await;
    farm.shutdown().await?;
    result
}

/// Creates a viewer token, lists it, uses it, revokes it, and sees the
/// farm refuse it afterwards: all through kiln-client as an admin.
const TOKENS_SCRIPT: &str = r#"
import os
from kiln_client import Farm, FarmError, role_name
import grpc

farm_address = os.environ["KILN_FARM"]
with Farm(farm_address, os.environ["KILN_TOKEN"]) as admin:
    created = admin.tokens.create("reviewer", "viewer")
    assert created.secret.startswith("kiln_"), created
    listed = {t.id: t for t in admin.tokens.list()}
    assert role_name(listed[created.token.id].role) == "viewer", listed
    with Farm(farm_address, created.secret) as reviewer:
        assert reviewer.jobs.list() == []
        try:
            reviewer.tokens.list()
            raise SystemExit("a viewer listed tokens")
        except FarmError as err:
            assert err.code == grpc.StatusCode.PERMISSION_DENIED, err
    admin.tokens.revoke(created.token.id)
    with Farm(farm_address, created.secret) as revoked:
        try:
            revoked.jobs.list()
            raise SystemExit("a revoked token still works")
        except FarmError as err:
            assert err.code == grpc.StatusCode.UNAUTHENTICATED, err
print("KILN_TOKENS_OK")
"#;

async fn manage_tokens(farm: &kiln_localfarm::Farm, dir: &Path) -> Result<()> {
    let python = install_client(dir)?;
    let mut command = Command::new(&python);
    command
        .args(["-c", TOKENS_SCRIPT])
        .env("KILN_FARM", farm.gateway_url())
        .env("KILN_TOKEN", farm.admin_token());
    let stdout = run(command).await?;
    assert!(stdout.contains("KILN_TOKENS_OK"), "{stdout}");
    Ok(())
}

async fn run(mut command: Command) -> Result<String> {
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    check(&output, "the python client")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn check(output: &Output, what: &str) -> Result<()> {
    ensure!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A fresh venv in `dir` with kiln-client installed offline from the
/// wheelhouse in Kiln's cache (filled by scripts/setup.sh, or here on a
/// first run). The package is built from a copy of `clients/python` and
/// `proto/`, so the build leaves nothing in the checkout.
fn install_client(dir: &Path) -> Result<PathBuf> {
    let wheels = kiln_cache().join("python-wheels");
    let fill = Command::new(repo_root().join("clients/python/wheelhouse.sh"))
        .arg(&wheels)
        .output()?;
    check(&fill, "filling the wheelhouse")?;

    let source = dir.join("source");
    copy_tree(&repo_root().join("proto"), &source.join("proto"))?;
    copy_tree(
        &repo_root().join("clients/python"),
        &source.join("clients/python"),
    )?;
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()?;
    check(&made, "python3 -m venv")?;
    let installed = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
        ])
        .arg(&wheels)
        .arg(source.join("clients/python"))
        .env_remove("PIP_FIND_LINKS")
        .output()?;
    check(&installed, "pip install clients/python")?;
    Ok(venv.join("bin/python"))
}

fn kiln_cache() -> PathBuf {
    if let Some(cache) = std::env::var_os("KILN_CACHE") {
        return cache.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("kiln")
}

/// Copies a source tree, leaving out build leftovers.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        if name_text == "build" || name_text == "__pycache__" || name_text.ends_with(".egg-info") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to.join(&name))?;
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}
