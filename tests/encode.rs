//! The built-in template's encode options through a whole farm: codec and
//! an audio asset mixed in and cut to the video's length.

use std::path::Path;

use anyhow::{Context, bail};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, blender_request, example_scene, start_farm, state_of};

#[tokio::test(flavor = "multi_thread")]
async fn h265_video_with_music_cut_to_its_length() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let music = dir.path().join("music.wav");
    // Five seconds of tone for half a second of video.
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=5",
        ])
        .arg(&music)
        .status()?;
    assert!(status.success(), "ffmpeg could not make the audio file");
    let mut client = Client::connect(&farm).await?;
    let scene_digest = client.assets.upload_file(&scene).await?.digest;
    let music_digest = client.assets.upload_file(&music).await?.digest;

    let mut request = blender_request(&scene_digest, "1-12", 12);
    request.parameters.extend([
        ("Codec".to_owned(), "h265".to_owned()),
        ("Quality".to_owned(), "30".to_owned()),
        ("AudioFile".to_owned(), "audio/music.wav".to_owned()),
    ]);
    request.inputs.push(pb::JobInput {
        path: "audio/music.wav".into(),
        digest: music_digest,
    });
    let job = client.jobs.submit_job(request).await?.into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");

    let out = dir.path().join("out");
    client.download_outputs(&job.id, &out).await?;
    let streams = probe_streams(&out.join("video.mp4"))?;
    let video = streams
        .iter()
        .find(|s| s.0 == "video")
        .context("no video stream")?;
    let audio = streams
        .iter()
        .find(|s| s.0 == "audio")
        .context("no audio stream")?;
    assert_eq!(video.1, "hevc");
    assert_eq!(audio.1, "aac");
    assert!(
        (video.2 - 0.5).abs() < 0.01,
        "12 frames at 24 fps last half a second: {video:?}"
    );
    assert!(
        (audio.2 - video.2).abs() < 0.05,
        "audio lasts as long as the video: {audio:?} vs {video:?}"
    );

    farm.shutdown().await?;
    Ok(())
}

/// (codec_type, codec_name, duration in seconds) of every stream, by ffprobe.
fn probe_streams(path: &Path) -> anyhow::Result<Vec<(String, String, f64)>> {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()?;
    if !output.status.success() {
        bail!(
            "ffprobe failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let streams = info["streams"].as_array().context("no streams")?;
    streams
        .iter()
        .map(|s| {
            let text = |key: &str| s[key].as_str().unwrap_or_default().to_owned();
            Ok((
                text("codec_type"),
                text("codec_name"),
                text("duration").parse()?,
            ))
        })
        .collect()
}
