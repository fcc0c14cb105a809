//! Runs real Blender and ffmpeg processes through the task runner.
//!
//! Inputs and outputs go through `DirStore`, a content-addressed directory
//! implementing the runner's `AssetStore` trait the way the assets service
//! does (SHA-256 digests, download beside then rename), so the runner can be
//! exercised without starting the service.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1::{
    TaskAssignment, TaskInput, TaskResult, WorkerMessage, worker_message::Message,
};
use kiln_worker::assets::{AssetStore, AssetStoreError, StoredAsset};
use kiln_worker::command::RendererPaths;
use kiln_worker::sandbox::{Limits, Sandbox, SandboxSettings};
use kiln_worker::task::{RunnerSettings, TaskOutcome, TaskRunner};
use kiln_worker::warm_pool::WarmSettings;
use kiln_worker::workdir::InputCache;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const WD: &str = "{{Session.WorkingDirectory}}";

#[derive(Clone)]
struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    fn path_of(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    async fn put(&self, path: &Path) -> Result<StoredAsset, AssetStoreError> {
        let (digest, size) = kiln_asset_client::digest::sha256_file_with_len(path)
            .await
            .map_err(AssetStoreError::new)?;
        tokio::fs::copy(path, self.path_of(&digest))
            .await
            .map_err(AssetStoreError::new)?;
        Ok(StoredAsset { digest, size })
    }
}

impl AssetStore for DirStore {
    async fn download_to(&self, digest: &str, dest: &Path) -> Result<u64, AssetStoreError> {
        let partial = dest.with_extension("partial");
        let size = tokio::fs::copy(self.path_of(digest), &partial)
            .await
            .map_err(AssetStoreError::new)?;
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(AssetStoreError::new)?;
        Ok(size)
    }

    async fn upload_file(&self, path: &Path, _owner: &str) -> Result<StoredAsset, AssetStoreError> {
        self.put(path).await
    }
}

struct Farm {
    _root: TempDir,
    work_dir: PathBuf,
    scratch: PathBuf,
    store: DirStore,
    runner: Arc<TaskRunner<DirStore>>,
}

impl Farm {
    async fn new() -> Result<Self, Box<dyn std::error::Error>> {
        Self::with_warm(WarmSettings {
            enabled: false,
            ..WarmSettings::default()
        })
        .await
    }

    async fn with_warm(warm: WarmSettings) -> Result<Self, Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        // Sandboxed tasks run as uids of their own, which must reach their
        // working directories through it.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))?;
        let base = tokio::fs::canonicalize(root.path()).await?;
        let (work_dir, store_dir, scratch) =
            (base.join("work"), base.join("store"), base.join("scratch"));
        for dir in [&work_dir, &store_dir, &scratch] {
            tokio::fs::create_dir_all(dir).await?;
        }
        let cache = InputCache::open(&work_dir.join("cache"), u64::MAX).await?;
        let sandbox = Sandbox::start(SandboxSettings {
            enabled: true,
            bwrap: "bwrap".into(),
            // Away from the worker tests of other processes on this host.
            uid_base: 1_800_000_000 + (std::process::id() % 1000) * 100,
            uid_count: 8,
            limits: Limits {
                memory_bytes: 4 << 30,
                processes: 4096,
                open_files: 4096,
                disk_bytes: 4 << 30,
                output_bytes: 1 << 30,
            },
            work_dir: work_dir.clone(),
            read_only: Vec::new(),
            worker_id: "blender-runner-test".into(),
            helper: env!("CARGO_BIN_EXE_kiln-worker").into(),
        })
        .await;
        sandbox.readiness()?;
        let settings = RunnerSettings {
            work_dir: work_dir.clone(),
            renderers: RendererPaths {
                blender: Some("blender".into()),
                ffmpeg: Some("ffmpeg".into()),
                natron: None,
                helper: sandbox.helper().map(Path::to_path_buf),
            },
            log_tail_lines: 60,
            log_max_bytes: 1024 * 1024,
            keep_work_dirs: false,
            warm,
            gpus: Vec::new(),
            session_idle_timeout: std::time::Duration::from_secs(60),
            sandbox,
        };
        let store = DirStore { dir: store_dir };
        let runner = Arc::new(TaskRunner::new(settings, cache, store.clone()));
        Ok(Self {
            _root: root,
            work_dir,
            scratch,
            store,
            runner,
        })
    }

    /// Saves a small Cycles scene made by Blender itself and stores it.
    async fn scene(
        &self,
        samples: u32,
        width: u32,
        height: u32,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let path = self.scratch.join(format!("scene-{samples}-{width}.blend"));
        let script = format!(
            "import bpy; s=bpy.context.scene; s.render.engine='CYCLES'; s.cycles.samples={samples}; \
             s.cycles.use_denoising=False; s.render.resolution_x={width}; s.render.resolution_y={height}; \
             s.render.resolution_percentage=100; s.frame_end=3; bpy.ops.wm.save_as_mainfile(filepath='{}')",
            path.display()
        );
        let status = tokio::process::Command::new("blender")
            .args(["-b", "-Y", "--python-expr", &script])
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        assert!(status.success(), "blender could not create the test scene");
        Ok(self.store.put(&path).await?.digest)
    }

    async fn stored_text(
        &self,
        name: &str,
        content: &[u8],
    ) -> Result<String, Box<dyn std::error::Error>> {
        let path = self.scratch.join(name);
        tokio::fs::write(&path, content).await?;
        Ok(self.store.put(&path).await?.digest)
    }

    async fn run(&self, assignment: TaskAssignment) -> (TaskOutcome, Vec<WorkerMessage>) {
        let (events, mut received) = mpsc::channel(1024);
        let outcome = self
            .runner
            .run(&assignment, &events, &CancellationToken::new())
            .await;
        drop(events);
        let mut messages = Vec::new();
        while let Some(message) = received.recv().await {
            messages.push(message);
        }
        (outcome, messages)
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn blender_task(
    task_id: &str,
    scene_digest: &str,
    args: Vec<String>,
    frames: Vec<i64>,
) -> TaskAssignment {
    TaskAssignment {
        task_id: task_id.to_owned(),
        job_id: "job".to_owned(),
        attempt: 1,
        step_name: "render".to_owned(),
        command: "blender".to_owned(),
        args,
        inputs: vec![TaskInput {
            path: "scene.blend".to_owned(),
            digest: scene_digest.to_owned(),
        }],
        frames,
        ..Default::default()
    }
}

fn chunk_args(first: i64, last: i64) -> Vec<String> {
    let (first, last) = (first.to_string(), last.to_string());
    let scene = format!("{WD}/scene.blend");
    let output = format!("{WD}/outputs/frames/frame_####");
    strings(&[
        &scene, "-o", &output, "-F", "PNG", "-x", "1", "-s", &first, "-e", &last, "-a",
    ])
}

fn finished(outcome: TaskOutcome) -> TaskResult {
    match outcome {
        TaskOutcome::Finished(result) => result,
        TaskOutcome::Cancelled => panic!("task unexpectedly reported as cancelled"),
    }
}

/// (path, digest) of every OutputStored message, sorted by path.
fn outputs(messages: &[WorkerMessage]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = messages
        .iter()
        .filter_map(|m| match &m.message {
            Some(Message::Output(output)) if output.kind.is_empty() => {
                Some((output.path.clone(), output.digest.clone()))
            }
            _ => None,
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn renders_a_chunk_and_uploads_each_frame() -> TestResult {
    let farm = Farm::new().await?;
    let scene = farm.scene(4, 64, 36).await?;
    let (outcome, messages) = farm
        .run(blender_task("chunk", &scene, chunk_args(1, 2), vec![1, 2]))
        .await;
    let result = finished(outcome);
    assert!(
        result.success,
        "task failed: {}\n{}",
        result.message, result.log_tail
    );
    assert_eq!(result.exit_code, Some(0));
    assert!(
        result.log_tail.contains("Saved: '"),
        "log tail lacks Blender's output: {}",
        result.log_tail
    );
    assert!(matches!(
        messages.first().and_then(|m| m.message.as_ref()),
        Some(Message::Started(_))
    ));
    let stored = outputs(&messages);
    let paths: Vec<&str> = stored.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["frames/frame_0001.png", "frames/frame_0002.png"]);
    for (_, digest) in &stored {
        let content = tokio::fs::read(farm.store.path_of(digest)).await?;
        assert!(content.starts_with(PNG_MAGIC), "stored output is not a PNG");
    }
    assert!(
        !farm.work_dir.join("chunk-1").exists(),
        "working directory was not removed"
    );
    Ok(())
}

#[tokio::test]
async fn fails_when_a_frame_of_the_assignment_is_not_saved() -> TestResult {
    let farm = Farm::new().await?;
    let scene = farm.scene(1, 16, 9).await?;
    let (outcome, messages) = farm
        .run(blender_task("short", &scene, chunk_args(1, 1), vec![1, 2]))
        .await;
    let result = finished(outcome);
    assert!(!result.success);
    assert_eq!(result.exit_code, Some(0));
    assert!(
        result
            .message
            .starts_with("blender exited 0 but saved 1 of 2 frames"),
        "{}",
        result.message
    );
    assert_eq!(
        outputs(&messages).len(),
        1,
        "the saved frame is still uploaded"
    );
    Ok(())
}

#[tokio::test]
async fn a_file_that_is_not_a_blend_fails_with_blenders_message() -> TestResult {
    let farm = Farm::new().await?;
    let bogus = farm
        .stored_text("bogus.blend", b"hello, not a blend file\n")
        .await?;
    let (outcome, messages) = farm
        .run(blender_task("bogus", &bogus, chunk_args(1, 2), vec![1, 2]))
        .await;
    let result = finished(outcome);
    assert!(!result.success);
    assert!(
        result.log_tail.contains("File format is not supported"),
        "log tail: {}",
        result.log_tail
    );
    assert!(
        result.message.contains("File format is not supported"),
        "message: {}",
        result.message
    );
    assert!(outputs(&messages).is_empty());
    Ok(())
}

#[tokio::test]
async fn runs_any_command_but_refuses_escaping_input_paths() -> TestResult {
    let farm = Farm::new().await?;
    let digest = farm.stored_text("x.txt", b"x").await?;
    let mut shell = blender_task(
        "shell",
        &digest,
        strings(&["-c", "id -u; cat scene.blend; echo made > outputs/made.txt"]),
        vec![],
    );
    shell.command = "bash".to_owned();
    let (outcome, messages) = farm.run(shell).await;
    let result = finished(outcome);
    assert!(result.success, "{}\n{}", result.message, result.log_tail);
    let uid = result.log_tail.lines().next().unwrap_or_default();
    assert_ne!(
        uid, "0",
        "the task does not run as root: {}",
        result.log_tail
    );
    assert!(result.log_tail.contains('x'), "the input is readable");
    let paths: Vec<String> = outputs(&messages).into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, ["made.txt"]);

    let mut escape = blender_task("escape", &digest, strings(&["-a"]), vec![]);
    escape.inputs[0].path = "../escape.blend".to_owned();
    let result = finished(farm.run(escape).await.0);
    assert!(
        !result.success && result.message.contains("../escape.blend"),
        "{}",
        result.message
    );
    assert!(!farm.work_dir.join("escape.blend").exists());
    Ok(())
}

#[tokio::test]
async fn ffmpeg_outputs_are_found_after_exit_and_inputs_are_not_outputs() -> TestResult {
    let farm = Farm::new().await?;
    let note = farm.stored_text("note.txt", b"placed as an input").await?;
    let assignment = TaskAssignment {
        task_id: "encode".to_owned(),
        attempt: 2,
        command: "ffmpeg".to_owned(),
        args: strings(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x36:rate=24",
            "-frames:v",
            "4",
            "-pix_fmt",
            "yuv420p",
            &format!("{WD}/outputs/video.mp4"),
        ]),
        inputs: vec![TaskInput {
            path: "outputs/note.txt".to_owned(),
            digest: note,
        }],
        ..TaskAssignment::default()
    };
    let (outcome, messages) = farm.run(assignment).await;
    let result = finished(outcome);
    assert!(
        result.success,
        "task failed: {}\n{}",
        result.message, result.log_tail
    );
    let paths: Vec<String> = outputs(&messages)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(paths, ["video.mp4"]);
    Ok(())
}

#[tokio::test]
async fn cancelling_kills_the_whole_process_group() -> TestResult {
    let farm = Farm::new().await?;
    let scene = farm.scene(100_000, 640, 360).await?;
    let assignment = blender_task("long", &scene, chunk_args(1, 1), vec![1]);
    let (events, mut received) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (runner, cancel) = (farm.runner.clone(), cancel.clone());
        async move { runner.run(&assignment, &events, &cancel).await }
    });
    wait_for_rendering(&mut received).await?;
    let task_dir = farm.work_dir.join("long-1");
    let pids = processes_mentioning(&task_dir);
    assert!(!pids.is_empty(), "no blender process found while rendering");
    let groups: Vec<i32> = pids.iter().filter_map(|pid| process_group(*pid)).collect();
    assert!(!groups.is_empty());

    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), run).await??;
    assert_eq!(outcome, TaskOutcome::Cancelled);
    assert!(
        processes_mentioning(&task_dir).is_empty(),
        "blender survived cancellation"
    );
    for group in groups {
        let members = processes_in_group(group);
        let described: Vec<String> = members
            .iter()
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
            .collect();
        assert!(
            members.is_empty(),
            "process group {group} still has members: {described:?}"
        );
    }
    assert!(!task_dir.exists(), "working directory was not removed");
    Ok(())
}

#[tokio::test]
async fn exceeding_max_run_time_fails_the_task() -> TestResult {
    let farm = Farm::new().await?;
    let scene = farm.scene(100_000, 640, 360).await?;
    let mut assignment = blender_task("slow", &scene, chunk_args(1, 1), vec![1]);
    assignment.max_run_seconds = 3;
    let result = finished(farm.run(assignment).await.0);
    assert!(!result.success);
    assert_eq!(result.exit_code, None);
    assert_eq!(result.message, "exceeded maximum run time of 3 s");
    assert!(processes_mentioning(&farm.work_dir.join("slow-1")).is_empty());
    Ok(())
}

/// Waits for the first progress report, which Blender prints once it renders.
async fn wait_for_rendering(received: &mut mpsc::Receiver<WorkerMessage>) -> TestResult {
    let wait = async {
        while let Some(message) = received.recv().await {
            if let Some(Message::Progress(progress)) = message.message
                && progress.frame == Some(1)
            {
                return true;
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), wait).await?,
        "task ended before rendering"
    );
    Ok(())
}

/// Live processes (not zombies) whose command line mentions `dir`, other
/// than the bubblewrap processes that hold their sandboxes.
fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    all_processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                !cmdline.starts_with("bwrap ") && cmdline.contains(&needle)
            })
        })
        .collect()
}

fn processes_in_group(group: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|pid| process_group(*pid) == Some(group))
        .collect()
}

fn all_processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process group from `/proc/<pid>/stat`: the fields after the
/// parenthesised name are state, ppid, pgrp.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let _state = fields.next()?;
    let _ppid = fields.next()?;
    fields.next()?.parse().ok()
}

#[tokio::test]
async fn a_silent_command_is_killed_as_stalled() -> TestResult {
    let farm = Farm::new().await?;
    // ffmpeg paced to real time with its statistics and log off: a process
    // that runs for a minute printing nothing.
    let assignment = TaskAssignment {
        task_id: "silent".to_owned(),
        attempt: 1,
        command: "ffmpeg".to_owned(),
        args: strings(&[
            "-nostdin",
            "-nostats",
            "-loglevel",
            "quiet",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=16x16:rate=5:duration=60",
            "-f",
            "null",
            "-",
        ]),
        stall_seconds: 2,
        max_run_seconds: 50,
        ..TaskAssignment::default()
    };
    let started = std::time::Instant::now();
    let result = finished(farm.run(assignment).await.0);
    assert!(!result.success);
    assert_eq!(result.message, "stalled: no output for 2 s");
    assert_eq!(result.exit_code, None, "killed, not exited");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(processes_mentioning(&farm.work_dir.join("silent-1")).is_empty());
    Ok(())
}

#[tokio::test]
async fn warm_sessions_are_reused_recycled_and_killed_on_cancel() -> TestResult {
    let farm = Farm::with_warm(WarmSettings {
        max_frames: 2,
        ..WarmSettings::default()
    })
    .await?;
    let scene = farm.scene(2, 32, 18).await?;
    let mut notes = Vec::new();
    for frame in 1..=3 {
        let args = frame_args(frame);
        let task = blender_task(&format!("warm{frame}"), &scene, args, vec![frame]);
        let (outcome, messages) = farm.run(task).await;
        let result = finished(outcome);
        assert!(result.success, "{}\n{}", result.message, result.log_tail);
        let name = format!("frames/frame_{frame:04}.png");
        assert_eq!(
            outputs(&messages).first().map(|o| o.0.as_str()),
            Some(name.as_str())
        );
        let note = result
            .log_tail
            .lines()
            .find(|l| l.starts_with("kiln: "))
            .map(str::to_owned);
        notes.push(note.unwrap_or_default());
    }
    assert!(notes[0].contains("new warm blender session"), "{notes:?}");
    assert!(notes[1].contains("(1 frames rendered before)"), "{notes:?}");
    assert!(
        notes[2].contains("new warm blender session"),
        "recycled after 2 frames: {notes:?}"
    );

    let slow = farm.scene(100_000, 640, 360).await?;
    let assignment = blender_task("long", &slow, frame_args(1), vec![1]);
    let (events, mut received) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (runner, cancel) = (farm.runner.clone(), cancel.clone());
        async move { runner.run(&assignment, &events, &cancel).await }
    });
    wait_for_rendering(&mut received).await?;
    let warm_dir = farm.work_dir.join("warm");
    let before = processes_mentioning(&warm_dir);
    assert_eq!(
        before.len(),
        2,
        "the idle session and the rendering one: {before:?}"
    );
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), run).await??;
    assert_eq!(outcome, TaskOutcome::Cancelled);
    let after = processes_mentioning(&warm_dir);
    assert_eq!(after.len(), 1, "only the idle session is left: {after:?}");
    Ok(())
}

/// A warm task hands its session back, and frees its slot, as soon as
/// Blender has rendered its frame: a task started at that moment renders in
/// the same session while the first finishes its uploads and its result,
/// and each stores its own frame. (Handed back at the end instead, the
/// second task would find no idle session and start a new one.)
#[tokio::test]
async fn a_released_warm_task_lends_its_session_to_the_next_while_it_finishes() -> TestResult {
    let farm = Farm::with_warm(WarmSettings::default()).await?;
    let scene = farm.scene(2, 32, 18).await?;
    let first = blender_task("first", &scene, frame_args(1), vec![1]);
    let second = blender_task("second", &scene, frame_args(2), vec![2]);
    let (events, mut received) = mpsc::channel(1024);
    let (release, released) = tokio::sync::oneshot::channel();
    let cancel = CancellationToken::new();
    let (first_outcome, second_outcome) = tokio::join!(
        farm.runner
            .run_releasing(&first, &events, &cancel, move || {
                let _ = release.send(());
            }),
        async {
            released.await.expect("the first task released its slot");
            farm.runner.run(&second, &events, &cancel).await
        }
    );
    drop(events);
    let mut messages = Vec::new();
    while let Some(message) = received.recv().await {
        messages.push(message);
    }
    let (first, second) = (finished(first_outcome), finished(second_outcome));
    assert!(first.success, "{}\n{}", first.message, first.log_tail);
    assert!(second.success, "{}\n{}", second.message, second.log_tail);
    assert!(
        second.log_tail.contains("(1 frames rendered before)"),
        "the second task rendered in the first one's session: {}",
        second.log_tail
    );
    let paths: Vec<String> = outputs(&messages).into_iter().map(|o| o.0).collect();
    assert_eq!(paths, ["frames/frame_0001.png", "frames/frame_0002.png"]);
    Ok(())
}

fn frame_args(frame: i64) -> Vec<String> {
    let scene = format!("{WD}/scene.blend");
    let output = format!("{WD}/outputs/frames/frame_####");
    strings(&[
        &scene,
        "-o",
        &output,
        "-F",
        "PNG",
        "-x",
        "1",
        "-f",
        &frame.to_string(),
    ])
}
