//! Assets end to end: bundles through `kiln render`, deduplication, a 4 GiB
//! file through the service with bounded memory, corruption caught on
//! download, and retention that spares what live jobs need. Real Garage,
//! the local-directory backend, Blender and ffmpeg throughout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use kiln_localfarm::{Farm, S3_BUCKET, locate_binary};
use kiln_proto::v1 as pb;
use kiln_tests::sick_store::SwallowingProxy;
use kiln_tests::{Client, clips_request, s3_client, start_farm, start_farm_with, state_of};
use sha2::{Digest as _, Sha256};

/// Makes `dir/<name>`: the default cube wearing `//textures/wood.png` (a
/// red and green checker written beside it) as an emission shader, so the
/// texture alone decides the colours (Cycles, 1 sample).
fn textured_scene(dir: &Path, name: &str, width: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("textures"))?;
    let scene = dir.join(name);
    let expr = format!(
        "import bpy, os\n\
         d = {dir:?}\n\
         img = bpy.data.images.new('wood', 16, 16)\n\
         px = []\n\
         for y in range(16):\n\
         \x20   for x in range(16):\n\
         \x20       px += [1, 0, 0, 1] if (x // 4 + y // 4) % 2 else [0, 1, 0, 1]\n\
         img.pixels = px\n\
         img.filepath_raw = os.path.join(d, 'textures', 'wood.png')\n\
         img.file_format = 'PNG'\n\
         img.save()\n\
         mat = bpy.data.materials.new('wood')\n\
         mat.use_nodes = True\n\
         tex = mat.node_tree.nodes.new('ShaderNodeTexImage')\n\
         tex.image = img\n\
         nodes = mat.node_tree.nodes\n\
         nodes.remove(nodes['Principled BSDF'])\n\
         emit = nodes.new('ShaderNodeEmission')\n\
         mat.node_tree.links.new(tex.outputs['Color'], emit.inputs['Color'])\n\
         mat.node_tree.links.new(emit.outputs['Emission'], nodes['Material Output'].inputs['Surface'])\n\
         cube = bpy.data.objects['Cube']\n\
         cube.data.materials.clear()\n\
         cube.data.materials.append(mat)\n\
         s = bpy.context.scene\n\
         s.render.engine = 'CYCLES'\n\
         s.cycles.samples = 1\n\
         s.cycles.use_denoising = False\n\
         s.view_settings.view_transform = 'Standard'\n\
         s.render.resolution_x = {width}\n\
         s.render.resolution_y = 36\n\
         s.render.resolution_percentage = 100\n\
         s.frame_start = 1\n\
         s.frame_end = 1\n\
         bpy.ops.wm.save_as_mainfile(filepath={scene:?})\n\
         img.filepath = '//textures/wood.png'\n\
         bpy.ops.wm.save_as_mainfile(filepath={scene:?})\n",
        dir = dir.to_string_lossy(),
        scene = scene.to_string_lossy(),
    );
    let output = std::process::Command::new("blender")
        .args(["-b", "-Y", "--factory-startup", "--python-expr", &expr])
        .output()
        .context("running blender")?;
    ensure!(
        output.status.success() && scene.is_file(),
        "blender could not make the scene: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(scene)
}

/// What one `kiln render` printed about its bundle.
#[derive(Debug, PartialEq)]
struct Sent {
    files: u64,
    bytes: u64,
}

/// Runs `kiln render` against the farm; returns what it uploaded.
fn kiln_render(farm: &Farm, scene: &Path, out: &Path, extra: &[&str]) -> Result<Sent> {
    let output = std::process::Command::new(locate_binary("kiln")?)
        .arg("render")
        .arg(scene)
        .args(["--frames", "1", "--fps", "24", "--chunk", "1", "--out"])
        .arg(out)
        .args([
            "--gateway",
            &farm.gateway_url(),
            "--token",
            farm.admin_token(),
        ])
        .args(extra)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "kiln render failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_sent(&stdout).with_context(|| format!("no bundle line in: {stdout}"))
}

/// Parses "... uploaded N files (B bytes) ...".
fn parse_sent(stdout: &str) -> Option<Sent> {
    let rest = stdout.split("uploaded ").nth(1)?;
    let mut words = rest.split_whitespace();
    let files = words.next()?.parse().ok()?;
    let bytes = words.nth(1)?.trim_start_matches('(').parse().ok()?;
    Some(Sent { files, bytes })
}

/// A counter's value on the assets service's /metrics.
async fn assets_counter(farm: &Farm, name: &str) -> Result<f64> {
    let endpoint = farm
        .discovery()
        .find_one(kiln_discovery::service::ASSETS, Duration::from_secs(10))
        .await?;
    let ops = endpoint.ops.context("assets lists no ops address")?;
    let body = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://{ops}/metrics"))
            .call()
            .map_err(anyhow::Error::from)?
            .into_string()
            .map_err(anyhow::Error::from)
    })
    .await??;
    // A renamed metric must fail the test, not read as zero.
    body.lines()
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .with_context(|| format!("no {name} on the assets service's /metrics"))
}

fn frame(out: &Path) -> Result<image::RgbImage> {
    Ok(image::open(out.join("frames/frame_0001.png"))?.to_rgb8())
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_travel_once_and_render_with_their_textures() -> Result<()> {
    let (mut farm, dir) = start_farm(1, true).await?;
    let shot = textured_scene(&dir.path().join("a"), "shot.blend", 64)?;
    let texture = dir.path().join("a/textures/wood.png");
    let other_dir = dir.path().join("b");
    let other = textured_scene(&other_dir, "other.blend", 48)?;
    // Bundle b shares bundle a's texture, byte for byte.
    std::fs::copy(&texture, other_dir.join("textures/wood.png"))?;
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len());

    let first = kiln_render(&farm, &shot, &dir.path().join("out1"), &[])?;
    assert_eq!(
        first,
        Sent {
            files: 2,
            bytes: size(&shot)? + size(&texture)?
        },
        "the scene and its texture are uploaded"
    );
    let again = kiln_render(&farm, &shot, &dir.path().join("out2"), &[])?;
    assert_eq!(again, Sent { files: 0, bytes: 0 }, "nothing travels twice");

    let shared = kiln_render(&farm, &other, &dir.path().join("out3"), &[])?;
    assert_eq!(
        shared,
        Sent {
            files: 1,
            bytes: size(&other)?
        },
        "a bundle sharing the texture uploads only its own scene"
    );

    let textured = frame(&dir.path().join("out1"))?;
    assert_eq!(textured.dimensions(), (64, 36));
    assert_eq!(textured, frame(&dir.path().join("out2"))?);
    kiln_render(&farm, &shot, &dir.path().join("out4"), &["--no-bundle"])?;
    let untextured = frame(&dir.path().join("out4"))?;
    assert_ne!(
        textured.as_raw(),
        untextured.as_raw(),
        "the texture in textures/ was found on the farm: the frame differs from one rendered without it"
    );
    let green = |image: &image::RgbImage| image.pixels().any(|p| p[1] > 150 && p[0] < 80);
    assert!(green(&textured), "the checker's green shows");
    assert!(!green(&untextured), "no checker without the texture");

    // With S3, an output can be fetched straight from the store.
    let frame_path = dir.path().join("out1/frames/frame_0001.png");
    let digest = kiln_asset_client::digest::sha256_file(&frame_path).await?;
    let client = Client::connect(&farm).await?;
    let url = client.assets.presign_download(&digest, 60).await?;
    let fetched = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut ureq::get(&url).call()?.into_reader(), &mut body)?;
        Ok(body)
    })
    .await??;
    assert_eq!(
        fetched,
        std::fs::read(&frame_path)?,
        "the presigned URL serves the frame"
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_backend_stores_a_shared_texture_once() -> Result<()> {
    let (mut farm, dir) = start_farm(0, false).await?;
    let shot = textured_scene(&dir.path().join("a"), "shot.blend", 64)?;
    let other_dir = dir.path().join("b");
    let other = textured_scene(&other_dir, "other.blend", 48)?;
    std::fs::copy(
        dir.path().join("a/textures/wood.png"),
        other_dir.join("textures/wood.png"),
    )?;
    let out = dir.path().join("out");
    assert_eq!(kiln_render(&farm, &shot, &out, &["--no-wait"])?.files, 2);
    // No workers, so no outputs: every byte the service receives is a bundle's.
    let received = assets_counter(&farm, "asset_bytes_received_total").await?;
    assert!(received > 0.0, "the first submission uploaded its bundle");
    assert_eq!(kiln_render(&farm, &shot, &out, &["--no-wait"])?.files, 0);
    assert_eq!(
        assets_counter(&farm, "asset_bytes_received_total").await?,
        received,
        "the service received no bytes for the second submission"
    );
    assert_eq!(kiln_render(&farm, &other, &out, &["--no-wait"])?.files, 1);
    let objects = count_files(&farm.dir().join("assets/sha256"))?;
    assert_eq!(objects, 3, "two scenes and one texture are stored");
    let client = Client::connect(&farm).await?;
    let scene_digest = kiln_asset_client::digest::sha256_file(&shot).await?;
    let presigned = client.assets.presign_download(&scene_digest, 60).await;
    assert_eq!(
        presigned.err().map(|e| e.code()),
        Some(tonic::Code::FailedPrecondition),
        "no presigned URLs without S3"
    );
    farm.shutdown().await?;
    Ok(())
}

fn count_files(dir: &Path) -> Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            count += count_files(&entry.path())?;
        } else if kiln_asset_client::digest::is_valid(&entry.file_name().to_string_lossy()) {
            count += 1;
        }
    }
    Ok(count)
}

const MIB: usize = 1024 * 1024;
const BIG_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Far past what either direction of [`BIG_BYTES`] takes (under a minute on
/// two cores, debug build), and past the store deadlines' three tries of a
/// stalled part (`s3_deadline.rs`), which the transfer must survive.
const BIG_TRANSFER_BOUND: Duration = Duration::from_secs(600);
/// Distinct pseudo-random blocks the big file cycles through. Garage keeps
/// one copy of identical 1 MiB blocks, so its disk holds 64 MiB while every
/// one of the 4 GiB still travels, is hashed and is spooled by the service.
const BLOCKS: usize = 64;

/// `BLOCKS` deterministic pseudo-random MiB (xorshift64).
fn random_blocks() -> Vec<Bytes> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..BLOCKS)
        .map(|_| {
            let mut block = Vec::with_capacity(MIB);
            while block.len() < MIB {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                block.extend_from_slice(&state.to_le_bytes());
            }
            Bytes::from(block)
        })
        .collect()
}

fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn four_gib_stream_through_with_bounded_memory() -> Result<()> {
    let (mut farm, dir) = start_farm(0, true).await?;
    // Straight to the assets service: its memory is what is measured.
    let endpoint = farm
        .discovery()
        .find_one(kiln_discovery::service::ASSETS, Duration::from_secs(10))
        .await?;
    let channel = tonic::transport::Channel::from_shared(endpoint.grpc_uri())?
        .connect()
        .await?;
    let assets = kiln_asset_client::AssetClient::with_credentials(
        channel,
        kiln_asset_client::CallCredentials::service(farm.service_token())?,
    );
    let pid = farm
        .assets_mut()
        .and_then(|p| p.pid())
        .context("assets pid")?;
    let blocks = random_blocks();
    let expected = {
        let mut hasher = Sha256::new();
        for index in 0..(BIG_BYTES as usize / MIB) {
            hasher.update(&blocks[index % BLOCKS]);
        }
        hex::encode(hasher.finalize())
    };
    let before = peak_rss_bytes(pid)?;

    let source = {
        let blocks = blocks.clone();
        futures::stream::iter(0..(BIG_BYTES as usize / MIB))
            .map(move |index| Ok::<_, std::io::Error>(blocks[index % BLOCKS].clone()))
    };
    // Bounded, so a transfer that stops answering fails this test instead of
    // holding the whole run: each takes well under a minute here.
    let stored = tokio::time::timeout(
        BIG_TRANSFER_BOUND,
        assets.upload_stream(Some(expected.clone()), source),
    )
    .await
    .context("the 4 GiB upload did not finish within its bound")??;
    assert_eq!(
        (stored.digest.as_str(), stored.size),
        (expected.as_str(), BIG_BYTES)
    );

    let download = async {
        let mut chunks = assets.download_stream(&expected).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        anyhow::Ok((size, hasher))
    };
    let (size, hasher) = tokio::time::timeout(BIG_TRANSFER_BOUND, download)
        .await
        .context("the 4 GiB download did not finish within its bound")??;
    assert_eq!(size, BIG_BYTES);
    assert_eq!(
        hex::encode(hasher.finalize()),
        expected,
        "the download matches"
    );

    let growth = peak_rss_bytes(pid)?.saturating_sub(before);
    assert!(
        growth < 128 * MIB as u64,
        "the assets service's peak RSS grew by {} MiB",
        growth / MIB as u64
    );
    farm.shutdown().await?;
    // The farm (Garage's data dir included) lives in `dir`; delete it now.
    dir.close()?;
    Ok(())
}

/// The store takes part 2 of an upload and never answers it (as Garage did
/// once in CI, holding a 4 GiB upload for 80 minutes): the upload still
/// completes and verifies, the part sent again once its deadline passed.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_completes_when_the_store_never_answers_one_part() -> Result<()> {
    let proxy = SwallowingProxy::listen(b"partNumber=2&").await?;
    let front = proxy.clone();
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(0)
        .s3(true)
        .s3_front(move |garage| front.forward_to(garage))
        .start()
        .await?;
    let client = Client::connect(&farm).await?;
    // Eight parts of 8 MiB.
    let file = dir.path().join("plate.exr");
    let mut hasher = Sha256::new();
    {
        let mut bytes = Vec::with_capacity(BLOCKS * MIB);
        for block in random_blocks() {
            hasher.update(&block);
            bytes.extend_from_slice(&block);
        }
        std::fs::write(&file, bytes)?;
    }
    let expected = hex::encode(hasher.finalize());

    let stored = tokio::time::timeout(BIG_TRANSFER_BOUND, client.assets.upload_file(&file))
        .await
        .context("the upload did not finish within its bound")??;
    assert!(proxy.swallowed(), "the store swallowed part 2");
    assert_eq!(
        (stored.digest.as_str(), stored.size),
        (expected.as_str(), (BLOCKS * MIB) as u64)
    );
    let back = dir.path().join("plate-back.exr");
    client.assets.download_to(&expected, &back).await?;
    ensure!(
        std::fs::read(&back)? == std::fs::read(&file)?,
        "the file comes back as sent"
    );
    farm.shutdown().await?;
    dir.close()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_object_fails_the_task_with_a_clear_error() -> Result<()> {
    let (mut farm, dir) = start_farm(1, true).await?;
    let mut client = Client::connect(&farm).await?;
    let scene = kiln_tests::example_scene(dir.path())?;
    let stored = client.assets.upload_file(&scene).await?;
    let mut bytes = std::fs::read(&scene)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    s3_client(&mut farm)
        .await?
        .put_object()
        .bucket(S3_BUCKET)
        .key(format!("sha256/{}", stored.digest))
        .body(bytes.into())
        .send()
        .await?;

    let download = async {
        let mut chunks = client.assets.download_stream(&stored.digest).await?;
        while let Some(chunk) = chunks.next().await {
            chunk?;
        }
        anyhow::Ok(())
    };
    let refused = download
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("corrupt") && refused.contains(&stored.digest),
        "a client download is refused: {refused:?}"
    );

    let job = client.submit_blender(&scene, "1", 1).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    let render = tasks
        .iter()
        .find(|t| t.step_name == "Render")
        .context("render task")?;
    assert!(
        render.message.contains("scene.blend")
            && render.message.contains(&stored.digest)
            && render.message.contains("corrupt"),
        "the task names the input and says it is corrupt: {:?}",
        render.message
    );
    assert_eq!(
        client.outputs(&job.id).await?.len(),
        0,
        "nothing was rendered"
    );
    farm.shutdown().await?;
    Ok(())
}

async fn stored(client: &Client, digest: &str) -> Result<bool> {
    Ok(client.assets.stat(digest).await?.is_some())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_spares_what_live_jobs_need_and_collects_the_rest() -> Result<()> {
    let (mut farm, dir) = start_farm_with(
        1,
        false,
        &[
            ("KILN_GC_INTERVAL_SECONDS", "1"),
            ("KILN_GC_GRACE_SECONDS", "2"),
            ("KILN_RETAIN_FINISHED_SECONDS", "0"),
            // No task held queued on the busy worker: the second job must
            // stay pending, which is the case the collector must spare.
            ("KILN_LOOKAHEAD", "0"),
        ],
    )
    .await?;
    let mut client = Client::connect(&farm).await?;
    let upload = |name: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("contents of {name}"))?;
        Ok(path)
    };
    let (running_input, pending_input, orphan) = (upload("a")?, upload("b")?, upload("c")?);
    let running_input = client.assets.upload_file(&running_input).await?.digest;
    let pending_input = client.assets.upload_file(&pending_input).await?.digest;
    let orphan = client.assets.upload_file(&orphan).await?.digest;

    // One slot: the first job runs for a minute, the second waits behind it.
    let with_input = |digest: &str| pb::SubmitJobRequest {
        inputs: vec![pb::JobInput {
            path: "input.bin".into(),
            digest: digest.to_owned(),
        }],
        ..clips_request(1, 60, "testsrc=size=64x36:rate=5", false)
    };
    let running = client
        .jobs
        .submit_job(with_input(&running_input))
        .await?
        .into_inner();
    let pending = client
        .jobs
        .submit_job(with_input(&pending_input))
        .await?
        .into_inner();
    client
        .wait_for_job(&running.id, Duration::from_secs(60), |job| {
            job.tasks_running == 1
        })
        .await?;

    // Watched on disk: a Stat would itself keep the object for the grace period.
    let orphan_file = farm
        .dir()
        .join("assets/sha256")
        .join(&orphan[..2])
        .join(&orphan);
    assert!(orphan_file.is_file(), "{} is stored", orphan_file.display());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while orphan_file.exists() {
        if tokio::time::Instant::now() > deadline {
            bail!("the unreferenced object was never collected");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        stored(&client, &running_input).await?,
        "a running job's input is kept"
    );
    assert!(
        stored(&client, &pending_input).await?,
        "a pending job's input is kept"
    );
    assert_eq!(client.job(&running.id).await?.tasks_running, 1);
    assert_eq!(
        state_of(&client.job(&pending.id).await?),
        pb::JobState::Pending
    );
    assert!(assets_counter(&farm, "asset_collected_objects_total").await? >= 1.0);

    for job in [&running, &pending] {
        client
            .jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: job.id.clone(),
            })
            .await?;
    }
    farm.shutdown().await?;
    Ok(())
}

/// Where the local backend keeps `digest` in the farm.
fn object_file(farm: &Farm, digest: &str) -> PathBuf {
    farm.dir()
        .join("assets/sha256")
        .join(&digest[..2])
        .join(digest)
}

/// Polls `done` every 250 ms until it holds, failing after `timeout` with `what`.
async fn eventually(
    what: &str,
    timeout: Duration,
    mut done: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// A counter on one assets replica's /metrics (0 while it has none yet).
async fn replica_counter(endpoint: &kiln_discovery::Endpoint, name: &str) -> Result<f64> {
    let ops = endpoint
        .ops
        .clone()
        .context("assets lists no ops address")?;
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let body = ureq::get(&format!("http://{ops}/metrics"))
            .call()?
            .into_string()?;
        Ok(body
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .and_then(|line| line.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0))
    })
    .await?
}

/// The seconds of grace in the collection test: long enough to submit a
/// job after the scene was confirmed, short enough to make a scene old.
const GRACE_SECONDS: u64 = 15;

#[tokio::test(flavor = "multi_thread")]
async fn a_re_render_of_an_old_scene_survives_collection_on_the_other_replica() -> Result<()> {
    // Replica 0 answers the client and never collects; replica 1, started
    // later, collects every second. Finished jobs keep nothing.
    let grace = GRACE_SECONDS.to_string();
    let (mut farm, dir) = start_farm_with(
        1,
        false,
        &[
            ("KILN_GC_INTERVAL_SECONDS", "0"),
            ("KILN_GC_GRACE_SECONDS", &grace),
            ("KILN_RETAIN_FINISHED_SECONDS", "0"),
        ],
    )
    .await?;
    let token = kiln_tests::create_token(&farm, "alice", pb::Role::Submitter, 0).await?;
    let mut alice = Client::connect_as(&farm, &token).await?;
    let scene = kiln_tests::example_scene(dir.path())?;
    let canary = dir.path().join("canary.bin");
    std::fs::write(&canary, b"no job will ever name this")?;
    let canary = alice.assets.upload_file(&canary).await?.digest;
    let first = alice.submit_blender(&scene, "1", 1).await?;
    let first = alice.wait_until_finished(&first.id).await?;
    assert_eq!(state_of(&first), pb::JobState::Succeeded, "{first:?}");
    let scene_digest = first.inputs[0].digest.clone();

    // The scene is now old: uploaded and last confirmed more than the grace ago.
    tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 1)).await;

    // A re-render asks replica 0 whether the scene is stored, as `kiln render` does...
    let replica0 = farm
        .wait_for_instances(kiln_discovery::service::ASSETS, 1, Duration::from_secs(10))
        .await?
        .remove(0);
    let channel = tonic::transport::Channel::from_shared(replica0.grpc_uri())?
        .connect()
        .await?;
    // As the gateway calls it: with the farm's service token, for alice.
    let as_alice = kiln_asset_client::AssetClient::with_credentials(
        channel,
        kiln_asset_client::CallCredentials::service(farm.service_token())?,
    )
    .on_behalf_of("alice", None)?;
    assert!(
        as_alice
            .find_missing(std::slice::from_ref(&scene_digest))
            .await?
            .is_empty(),
        "the scene is stored"
    );

    // ... and before it submits, replica 1 collects.
    farm.add_assets_replica_with_env(&[("KILN_GC_INTERVAL_SECONDS", "1")])
        .await?;
    let replica1 = farm
        .wait_for_instances(kiln_discovery::service::ASSETS, 2, Duration::from_secs(10))
        .await?
        .into_iter()
        .find(|endpoint| endpoint.instance != replica0.instance)
        .context("the second replica")?;
    let canary_file = object_file(&farm, &canary);
    eventually(
        "replica 1 collects the unreferenced canary and finishes its round",
        Duration::from_secs(60),
        async || {
            Ok(!canary_file.exists()
                && replica_counter(&replica1, "asset_collections_total").await? >= 1.0)
        },
    )
    .await?;
    assert!(
        object_file(&farm, &scene_digest).is_file(),
        "the scene confirmed on replica 0 survived replica 1's collection"
    );

    let second = alice
        .jobs
        .submit_job(kiln_tests::blender_request(&scene_digest, "1-2", 1))
        .await?
        .into_inner();
    let second = alice.wait_until_finished(&second.id).await?;
    assert_eq!(state_of(&second), pb::JobState::Succeeded, "{second:?}");
    for output in alice.all_outputs(&second.id).await? {
        assert!(
            object_file(&farm, &output.digest).is_file(),
            "output {} survives",
            output.path
        );
    }
    assert!(
        object_file(&farm, &scene_digest).is_file(),
        "the scene survives"
    );
    farm.shutdown().await?;
    Ok(())
}

/// Spool files of the local backend's assets service, with their sizes.
fn spool_sizes(farm: &Farm) -> Result<Vec<u64>> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(farm.dir().join("assets/spool"))? {
        sizes.push(entry?.metadata()?.len());
    }
    Ok(sizes)
}

/// The gateway's default limit on one gRPC message.
const GATEWAY_MAX_MESSAGE: usize = 8 * MIB;

/// An upload through the gateway that sends `first` (in 1 MiB chunks), and
/// once `held` says the assets service holds it, a message over the
/// gateway's size limit: the client's stream fails part-way.
async fn upload_that_fails_part_way(
    farm: &Farm,
    expected_digest: &str,
    first: &[u8],
    held: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let channel = tonic::transport::Channel::from_shared(farm.gateway_url())?
        .connect()
        .await?;
    let mut raw = pb::asset_service_client::AssetServiceClient::with_interceptor(
        channel,
        kiln_asset_client::CallCredentials::bearer(farm.admin_token())?,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn(async move {
        raw.upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for (index, piece) in first.chunks(MIB).enumerate() {
        let expected_digest = if index == 0 { expected_digest } else { "" };
        tx.send(pb::UploadChunk {
            expected_digest: expected_digest.to_owned(),
            data: Bytes::copy_from_slice(piece),
            offset: 0,
        })
        .await?;
    }
    eventually(
        "the assets service holds the first chunks",
        Duration::from_secs(30),
        held,
    )
    .await?;
    tx.send(pb::UploadChunk {
        data: vec![0; GATEWAY_MAX_MESSAGE + 1].into(),
        ..Default::default()
    })
    .await?;
    let refused = call.await?.expect_err("an oversized chunk");
    ensure!(
        refused.code() != tonic::Code::Ok,
        "the client learns its upload failed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_failing_at_the_gateway_is_kept_for_resuming_never_stored_truncated() -> Result<()>
{
    let (mut farm, _dir) = start_farm(0, false).await?;
    let client = Client::connect(&farm).await?;
    let file: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    let digest = hex::encode(Sha256::digest(&file));
    let head = &file[..MIB];

    // Named digest: the part received is kept, and the upload resumes.
    let held = MIB as u64;
    upload_that_fails_part_way(&farm, &digest, head, async || {
        Ok(spool_sizes(&farm)?.contains(&held))
    })
    .await?;
    let mut offset = 0;
    eventually(
        "the gateway passes the failure on and the service keeps the part",
        Duration::from_secs(30),
        async || {
            offset = client.assets.upload_offset(&digest).await?;
            Ok(offset == MIB as u64)
        },
    )
    .await?;
    assert_eq!(client.assets.stat(&digest).await?, None, "not stored yet");
    let rest = Bytes::from(file[MIB..].to_vec());
    let stored = client
        .assets
        .upload_stream_at(
            Some(digest.clone()),
            offset,
            futures::stream::iter([Ok(rest)]),
        )
        .await?;
    assert_eq!(
        (stored.digest.as_str(), stored.size),
        (digest.as_str(), file.len() as u64)
    );

    // No digest named: nothing to resume, and the part is not stored as a file.
    let other: Vec<u8> = file.iter().map(|b| b ^ 0x5a).collect();
    let other_head = &other[..MIB];
    upload_that_fails_part_way(&farm, "", other_head, async || {
        Ok(spool_sizes(&farm)?.contains(&held))
    })
    .await?;
    eventually(
        "the service drops the part",
        Duration::from_secs(30),
        async || Ok(spool_sizes(&farm)?.is_empty()),
    )
    .await?;
    let truncated = hex::encode(Sha256::digest(other_head));
    assert_eq!(
        client.assets.stat(&truncated).await?,
        None,
        "a failed upload is never stored as if complete"
    );
    farm.shutdown().await?;
    Ok(())
}

/// Keys of the multipart uploads in progress in the farm's bucket, and of
/// the objects waiting under `staging/`.
async fn leftovers(s3: &aws_sdk_s3::Client) -> Result<(Vec<String>, Vec<String>)> {
    let uploads = s3.list_multipart_uploads().bucket(S3_BUCKET).send().await?;
    let uploading = uploads
        .uploads()
        .iter()
        .filter_map(|upload| upload.key().map(str::to_owned))
        .collect();
    let staging = s3
        .list_objects_v2()
        .bucket(S3_BUCKET)
        .prefix("staging/")
        .send()
        .await?;
    let staged = staging
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_owned))
        .collect();
    Ok((uploading, staged))
}

/// `len` bytes of a pattern that `seed` varies.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn download_all(client: &Client, digest: &str) -> Result<Vec<u8>> {
    let mut chunks = client.assets.download_stream(digest).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes)
}

/// The attack: an upload declares the digest of one file and streams other
/// bytes (more than a part, so parts reach the bucket before the end).
/// Nothing may appear under that digest, and no part may stay behind.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_declaring_another_files_digest_leaves_nothing_in_the_bucket() -> Result<()> {
    let (mut farm, _dir) = start_farm(0, true).await?;
    let client = Client::connect(&farm).await?;
    let s3 = s3_client(&mut farm).await?;
    let claimed = pattern(20 * MIB, 0);
    let digest = hex::encode(Sha256::digest(&claimed));
    let sent = Bytes::from(pattern(20 * MIB, 0x5a));

    let refused = client
        .assets
        .upload_stream(
            Some(digest.clone()),
            futures::stream::iter([Ok(sent.clone())]),
        )
        .await
        .err()
        .context("an upload whose bytes differ from its digest is refused")?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert_eq!(client.assets.stat(&digest).await?, None);
    let download = download_all(&client, &digest).await;
    let code = download.err().and_then(|err| {
        err.downcast_ref::<kiln_asset_client::AssetClientError>()
            .map(|err| err.code())
    });
    assert_eq!(code, Some(tonic::Code::NotFound), "nothing to download");
    let head = s3
        .head_object()
        .bucket(S3_BUCKET)
        .key(format!("sha256/{digest}"))
        .send()
        .await;
    assert!(head.is_err(), "nothing under the content key: {head:?}");
    assert_eq!(
        leftovers(&s3).await?,
        (vec![], vec![]),
        "no multipart upload or staged object stays behind"
    );

    // Without a declared digest the bytes wait in staging, then are copied
    // to their content key; staging is emptied.
    let info = client
        .assets
        .upload_stream(None, futures::stream::iter([Ok(sent.clone())]))
        .await?;
    assert_eq!(info.digest, hex::encode(Sha256::digest(&sent)));
    assert_eq!(download_all(&client, &info.digest).await?, sent);
    assert_eq!(leftovers(&s3).await?, (vec![], vec![]));

    // The real file with its digest is stored; sent again, it is verified
    // and kept once.
    for _ in 0..2 {
        let info = client
            .assets
            .upload_stream(
                Some(digest.clone()),
                futures::stream::iter([Ok(Bytes::from(claimed.clone()))]),
            )
            .await?;
        assert_eq!(
            (info.digest.as_str(), info.size),
            (digest.as_str(), claimed.len() as u64)
        );
    }
    assert_eq!(download_all(&client, &digest).await?, claimed);
    assert_eq!(leftovers(&s3).await?, (vec![], vec![]));
    farm.shutdown().await?;
    Ok(())
}

/// With S3 an upload streams into the bucket as it arrives; cut off, it is
/// kept (parts sent, hash state, unsent tail) and resumes to a verified file.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_s3_upload_resumes_and_verifies() -> Result<()> {
    let (mut farm, _dir) = start_farm(0, true).await?;
    let client = Client::connect(&farm).await?;
    let s3 = s3_client(&mut farm).await?;
    let file = pattern(20 * MIB, 0x33);
    let digest = hex::encode(Sha256::digest(&file));
    let content_key = format!("sha256/{digest}");

    // 12 MiB: the first 8 MiB part is on its way to the bucket.
    upload_that_fails_part_way(&farm, &digest, &file[..12 * MIB], async || {
        Ok(leftovers(&s3).await?.0.contains(&content_key))
    })
    .await?;
    let mut offset = 0;
    eventually(
        "the service keeps the interrupted upload",
        Duration::from_secs(30),
        async || {
            offset = client.assets.upload_offset(&digest).await?;
            Ok(offset > 0)
        },
    )
    .await?;
    assert_eq!(client.assets.stat(&digest).await?, None, "not stored yet");
    let rest = Bytes::from(file[offset as usize..].to_vec());
    let stored = client
        .assets
        .upload_stream_at(
            Some(digest.clone()),
            offset,
            futures::stream::iter([Ok(rest)]),
        )
        .await?;
    assert_eq!(
        (stored.digest.as_str(), stored.size),
        (digest.as_str(), file.len() as u64)
    );
    assert_eq!(download_all(&client, &digest).await?, file);
    assert_eq!(leftovers(&s3).await?, (vec![], vec![]));

    // No digest named: nothing to resume, and its parts are dropped.
    let other = pattern(12 * MIB, 0x77);
    upload_that_fails_part_way(&farm, "", &other, async || {
        Ok(leftovers(&s3)
            .await?
            .0
            .iter()
            .any(|key| key.starts_with("staging/")))
    })
    .await?;
    eventually(
        "the service aborts the staged upload",
        Duration::from_secs(30),
        async || Ok(leftovers(&s3).await? == (vec![], vec![])),
    )
    .await?;
    let truncated = hex::encode(Sha256::digest(&other));
    assert_eq!(client.assets.stat(&truncated).await?, None);
    farm.shutdown().await?;
    Ok(())
}
