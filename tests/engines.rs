//! Render engines through a whole farm: the quality check after encoding,
//! personalised videos from a variant table (through `kiln render`), the
//! device a render used, the approved ffmpeg transcode template, and a
//! Workbench scene, whose render prints no frame lines.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kiln_proto::v1 as pb;
use kiln_tests::{
    Client, blender_request, blender_script, example_scene, repo_root, start_farm, start_farm_with,
    state_of,
};

/// Turns the example scene's light and sky off at frame 3 only, so that
/// frame renders pure black.
const BLACK_FRAME_SCENE: &str = r#"
import sys
import bpy
source, out = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.open_mainfile(filepath=source)
scene = bpy.context.scene
light = next(o for o in scene.objects if o.type == "LIGHT").data
sky = scene.world.node_tree.nodes["Background"].inputs[1]
for frame, on in ((1, True), (3, False), (4, True)):
    light.energy = 800 if on else 0
    light.keyframe_insert("energy", frame=frame)
    sky.default_value = 1.0 if on else 0.0
    sky.keyframe_insert("default_value", frame=frame)
for owner in (light, scene.world.node_tree):
    for curve in owner.animation_data.action.fcurves:
        for key in curve.keyframe_points:
            key.interpolation = "CONSTANT"
bpy.ops.wm.save_as_mainfile(filepath=out)
"#;

/// A title card: a text object named "Title" glowing in front of a picture
/// (image "Photo"), tiny and fast.
const TITLE_SCENE: &str = r#"
import sys
import bpy
out = sys.argv[sys.argv.index("--") + 1]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 2
scene.cycles.use_denoising = False
scene.cycles.device = "CPU"
scene.render.resolution_x = 96
scene.render.resolution_y = 54
scene.render.resolution_percentage = 100
scene.frame_start = 1
scene.frame_end = 2
world = bpy.data.worlds.new("World")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs[0].default_value = (0, 0, 0, 1)
scene.world = world
bpy.ops.object.text_add(location=(-2.5, -0.4, 0))
title = bpy.context.active_object
title.name = "Title"
title.data.body = "NAME"
glow = bpy.data.materials.new("Glow")
glow.use_nodes = True
nodes = glow.node_tree.nodes
nodes.remove(nodes["Principled BSDF"])
emission = nodes.new("ShaderNodeEmission")
emission.inputs[1].default_value = 5.0
glow.node_tree.links.new(emission.outputs[0], nodes["Material Output"].inputs[0])
title.data.materials.append(glow)
photo = bpy.data.images.new("Photo", 4, 4)
photo.source = "FILE"
photo.filepath = "//placeholder.png"
bpy.ops.mesh.primitive_plane_add(size=3, location=(0, 0, -0.5))
plane = bpy.context.active_object
picture = bpy.data.materials.new("Picture")
picture.use_nodes = True
tree = picture.node_tree
tree.nodes.remove(tree.nodes["Principled BSDF"])
texture = tree.nodes.new("ShaderNodeTexImage")
texture.image = photo
shine = tree.nodes.new("ShaderNodeEmission")
tree.links.new(texture.outputs[0], shine.inputs[0])
tree.links.new(shine.outputs[0], tree.nodes["Material Output"].inputs[0])
plane.data.materials.append(picture)
bpy.ops.object.camera_add(location=(0, 0, 6))
scene.camera = bpy.context.active_object
bpy.ops.wm.save_as_mainfile(filepath=out)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn quality_check_passes_a_good_render_and_names_a_black_frame() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let black = dir.path().join("black.blend");
    blender_script(dir.path(), BLACK_FRAME_SCENE, &[&scene, &black])?;
    let mut client = Client::connect(&farm).await?;

    // A normal job passes, reports it, and records the device each render used.
    let job = client.submit_blender(&scene, "1-4", 2).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    let check = step_task(&tasks, "Check")?;
    assert_eq!(check.status, "quality check passed", "{check:?}");
    for render in tasks.iter().filter(|t| t.step_name == "Render") {
        assert_eq!(
            render.device, "cpu",
            "a worker without a GPU renders on its CPU: {render:?}"
        );
    }
    let out = dir.path().join("good");
    client.download_outputs(&job.id, &out).await?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("check/report.json"))?)?;
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["frames_checked"], 4, "{report}");
    assert_eq!(report["video"]["frames"], 4, "{report}");

    // Frame 3 is black: the check fails the job and names it.
    let digest = client.assets.upload_file(&black).await?.digest;
    let job = client
        .jobs
        .submit_job(blender_request(&digest, "1-4", 4))
        .await?
        .into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    let check = step_task(&tasks, "Check")?;
    assert_eq!(check.state(), pb::TaskState::Failed, "{check:?}");
    // Blender dithers its 8-bit output, so black is not quite uniform.
    assert!(
        check
            .message
            .starts_with("quality check failed: frame 3 is uniform (stddev ")
            && check.message.ends_with(" < 2.0)"),
        "the failure names the black frame: {check:?}"
    );
    assert!(
        !check.message.contains("frame 1 ") && !check.message.contains("frame 4 "),
        "only the black frame is named: {}",
        check.message
    );

    // The same scene with the check turned off succeeds.
    let mut request = blender_request(&digest, "1-4", 4);
    request
        .parameters
        .insert("QualityCheck".to_owned(), "off".to_owned());
    let job = client.jobs.submit_job(request).await?.into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    assert_eq!(step_task(&tasks, "Check")?.status, "quality check skipped");

    farm.shutdown().await?;
    Ok(())
}

/// Opens argv[-2], switches it to the Workbench engine, saves it as argv[-1].
const WORKBENCH_SCENE: &str = r#"
import sys
import bpy
source, out = sys.argv[-2], sys.argv[-1]
bpy.ops.wm.open_mainfile(filepath=source)
bpy.context.scene.render.engine = "BLENDER_WORKBENCH"
bpy.ops.wm.save_as_mainfile(filepath=out)
"#;

/// Workbench (previews, playblasts) prints no `Fra:` lines; its frames are
/// known by their saved files.
#[tokio::test(flavor = "multi_thread")]
async fn a_workbench_scene_renders_every_frame() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let workbench = dir.path().join("workbench.blend");
    blender_script(dir.path(), WORKBENCH_SCENE, &[&scene, &workbench])?;
    let mut client = Client::connect(&farm).await?;

    let job = client.submit_blender(&workbench, "1-4", 2).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let frames = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .filter(|o| o.path.starts_with("frames/"))
        .count();
    assert_eq!(frames, 4, "every Workbench frame stored");
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_variant_table_makes_one_video_per_row() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    // The scene's directory is sent with it: keep it apart from the farm's files.
    let project = dir.path().join("project");
    std::fs::create_dir(&project)?;
    let scene = project.join("title.blend");
    blender_script(dir.path(), TITLE_SCENE, &[&scene])?;
    let rows = dir.path().join("rows.csv");
    for colour in ["red", "blue"] {
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("color={colour}:s=32x32"))
            .args(["-frames:v", "1"])
            .arg(dir.path().join(format!("{colour}.png")))
            .status()?;
        assert!(status.success(), "ffmpeg could not make {colour}.png");
    }
    std::fs::write(
        &rows,
        "id,Title,image:Photo\nalice,Alice,red.png\nbob,Bob!,blue.png\ncarol,\"Carol, hi\",red.png\n",
    )?;
    let out = dir.path().join("out");
    let output = kiln_render(&farm, &scene, &rows, &out).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kiln render failed: {stderr}");
    // Without a terminal (as in a pipeline's log) progress comes as lines.
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains(" tasks, ")).collect();
    assert!(
        progress.len() >= 2 && progress.last().is_some_and(|l| l.ends_with("succeeded")),
        "progress lines ending with the job's success: {stderr}"
    );
    let mut first_frames = Vec::new();
    for id in ["alice", "bob", "carol"] {
        let report = std::fs::read(out.join(format!("variants/{id}/check.json")))?;
        let report: serde_json::Value = serde_json::from_slice(&report)?;
        assert_eq!(report["passed"], true, "{id}: {report}");
        let video = out.join(format!("variants/{id}/video.mp4"));
        let frame = first_frame(&video, &dir.path().join(format!("{id}.png")))?;
        first_frames.push((id, frame));
    }
    let client_tasks = {
        let mut client = Client::connect(&farm).await?;
        let jobs = client
            .jobs
            .list_jobs(pb::ListJobsRequest::default())
            .await?
            .into_inner()
            .jobs;
        let job = jobs.first().context("the variant job is listed")?;
        client.tasks(&job.id).await?
    };
    for render in client_tasks.iter().filter(|t| t.step_name == "Render") {
        assert_eq!(render.device, "cpu", "{render:?}");
    }
    // Each row's picture replaced the placeholder image.
    for (id, frame, red) in [
        ("alice", &first_frames[0].1, true),
        ("bob", &first_frames[1].1, false),
    ] {
        let (r, b) = frame.chunks(3).fold((0u64, 0u64), |(r, b), px| {
            (r + u64::from(px[0]), b + u64::from(px[2]))
        });
        assert_eq!(r > b, red, "{id}'s picture: red {r}, blue {b}");
    }
    for (i, (a, first)) in first_frames.iter().enumerate() {
        for (b, other) in &first_frames[i + 1..] {
            assert_ne!(first, other, "the first frames of {a} and {b} are the same");
        }
    }

    // A row naming a placeholder the scene lacks fails, naming it.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"id": "dave", "Subtitle": "Dave"}]"#)?;
    let output = kiln_render(&farm, &scene, &bad, &dir.path().join("bad-out")).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("placeholder not found in the scene: text object 'Subtitle'"),
        "{stderr}"
    );
    // A row id that would escape its directory never reaches the farm.
    let escaping = dir.path().join("escape.csv");
    std::fs::write(&escaping, "id,Title\n../../etc,x\n")?;
    let output = kiln_render(&farm, &scene, &escaping, &dir.path().join("no-out")).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("invalid variant row id \"../../etc\""),
        "{stderr}"
    );

    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn approved_ffmpeg_transcode_template_takes_shell_syntax_literally() -> anyhow::Result<()> {
    // The admin approves the example templates by pointing the scheduler at them.
    let approved = repo_root().join("examples/templates");
    let approved = approved.to_string_lossy();
    let (mut farm, dir) = start_farm_with(1, false, &[("KILN_TEMPLATE_DIR", &approved)]).await?;
    let source = dir.path().join("source.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=size=320x240:rate=24:duration=1")
        .args(["-pix_fmt", "yuv420p"])
        .arg(&source)
        .status()?;
    assert!(status.success(), "ffmpeg could not make the source video");
    let mut client = Client::connect(&farm).await?;
    let digest = client.assets.upload_file(&source).await?.digest;
    let title = "; rm -rf / #$(reboot)";
    let request = pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::BuiltinTemplate(
            "ffmpeg-transcode".into(),
        )),
        parameters: [("Height", "120"), ("Title", title)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        inputs: vec![pb::JobInput {
            path: "source.mp4".into(),
            digest,
        }],
        ..Default::default()
    };
    let job = client.jobs.submit_job(request).await?.into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let out = dir.path().join("out");
    client.download_outputs(&job.id, &out).await?;
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height:format_tags=title"])
        .args(["-of", "json"])
        .arg(out.join("transcoded.mp4"))
        .output()?;
    let info: serde_json::Value = serde_json::from_slice(&probe.stdout)?;
    assert_eq!(
        (&info["streams"][0]["width"], &info["streams"][0]["height"]),
        (&serde_json::json!(160), &serde_json::json!(120)),
        "{info}"
    );
    assert_eq!(
        info["format"]["tags"]["title"], title,
        "the parameter reached ffmpeg as one literal argument: {info}"
    );

    farm.shutdown().await?;
    Ok(())
}

fn step_task<'a>(tasks: &'a [pb::Task], step: &str) -> anyhow::Result<&'a pb::Task> {
    tasks
        .iter()
        .find(|t| t.step_name == step)
        .with_context(|| format!("no {step} task in {tasks:?}"))
}

/// Runs `kiln render <scene> --variants <table>` against the farm.
async fn kiln_render(
    farm: &kiln_localfarm::Farm,
    scene: &Path,
    table: &Path,
    out: &Path,
) -> anyhow::Result<std::process::Output> {
    let kiln = kiln_localfarm::locate_binary("kiln")?;
    let output = tokio::process::Command::new(kiln)
        .arg("render")
        .arg(scene)
        .arg("--variants")
        .arg(table)
        .args(["--frames", "1-2", "--fps", "24", "--chunk", "2"])
        .arg("--out")
        .arg(out)
        .args(["--gateway", &farm.gateway_url()])
        .args(["--token", farm.admin_token()])
        .env_remove("KILN_GATEWAY")
        .env_remove("KILN_TOKEN")
        .kill_on_drop(true)
        .output()
        .await?;
    Ok(output)
}

/// The video's first frame as RGB pixels, decoded by ffmpeg into `png`.
fn first_frame(video: &Path, png: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if !video.is_file() {
        bail!("{} was not downloaded", video.display());
    }
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(video)
        .args(["-frames:v", "1"])
        .arg(png)
        .status()?;
    if !status.success() {
        bail!("ffmpeg could not decode {}", video.display());
    }
    Ok(image::open(png)?.to_rgb8().into_raw())
}
