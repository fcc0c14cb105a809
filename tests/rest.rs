//! The REST API: upload, submit (202 + Location), status (202 until done),
//! outputs and download, and JSON errors for bad requests.

use std::time::Duration;

use kiln_tests::{example_scene, start_farm};
use serde_json::{Value, json};
use tokio::time::Instant;

fn call(request: ureq::Request, body: Option<Value>) -> (u16, ureq::Response) {
    let result = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match result {
        Ok(response) => (response.status(), response),
        Err(ureq::Error::Status(code, response)) => (code, response),
        Err(err) => panic!("transport error: {err}"),
    }
}

fn json_of(response: ureq::Response) -> Value {
    response.into_json().expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_through_rest_from_upload_to_download() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let base = farm.gateway_http_url();
    let auth = format!("Bearer {}", farm.admin_token());
    let result = tokio::task::spawn_blocking(move || run(&base, &auth, &scene)).await;
    farm.shutdown().await?;
    result?
}

fn run(base: &str, auth: &str, scene: &std::path::Path) -> anyhow::Result<()> {
    let agent = ureq::AgentBuilder::new().build();
    let get = |url: &str| agent.get(url).set("authorization", auth);
    let post = |url: &str| agent.post(url).set("authorization", auth);
    let bytes = std::fs::read(scene)?;
    let uploaded = post(&format!("{base}/v1/assets")).send_bytes(&bytes)?;
    assert_eq!(uploaded.status(), 201);
    let digest = json_of(uploaded)["digest"]
        .as_str()
        .expect("a digest")
        .to_owned();

    let submit = |chunk: &str| {
        json!({
            "builtinTemplate": "blender",
            "parameters": {"Frames": "1-2", "ChunkSize": chunk, "FrameRate": "24"},
            "inputs": [{"path": "scene.blend", "digest": digest}],
        })
    };
    let (status, response) = call(post(&format!("{base}/v1/jobs")), Some(submit("0")));
    assert_eq!(status, 400);
    let error = json_of(response);
    assert_eq!(error["error"]["code"], "invalid_argument");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ChunkSize"),
        "{error}"
    );

    let (status, response) = call(post(&format!("{base}/v1/jobs")), Some(submit("2")));
    assert_eq!(status, 202);
    let location = response
        .header("location")
        .expect("a Location header")
        .to_owned();
    let job = json_of(response);
    let id = job["id"].as_str().expect("an id").to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));

    let deadline = Instant::now() + Duration::from_secs(180);
    let finished = loop {
        let (status, response) = call(get(&format!("{base}{location}/status")), None);
        if status == 200 {
            break json_of(response);
        }
        assert_eq!(status, 202, "a running job answers 202");
        assert!(
            response.header("retry-after").is_some(),
            "202 carries Retry-After"
        );
        assert!(Instant::now() < deadline, "job never finished");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(finished["state"], "JOB_STATE_SUCCEEDED", "{finished}");

    let outputs = json_of(get(&format!("{base}{location}/outputs")).call()?);
    let paths: Vec<&str> = outputs["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        // The job's own files; thumbnails and logs have a kind.
        .filter(|o| o.get("kind").is_none())
        .filter_map(|o| o["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "check/report.json",
            "frames/frame_0001.png",
            "frames/frame_0002.png",
            "video.mp4"
        ]
    );
    let video = get(&format!("{base}{location}/outputs/video.mp4")).call()?;
    assert_eq!(video.header("content-type"), Some("video/mp4"));
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut video.into_reader(), &mut body)?;
    assert_eq!(&body[4..8], b"ftyp", "an mp4 file");

    let (status, response) = call(get(&format!("{base}/v1/jobs/{}", uuid_like())), None);
    assert_eq!(status, 404);
    assert_eq!(json_of(response)["error"]["code"], "not_found");
    let (status, _) = call(
        post(&format!("{base}/v1/jobs")).set("content-type", "application/json"),
        None,
    );
    assert_eq!(status, 400, "an empty body is not a job");
    Ok(())
}

fn uuid_like() -> &'static str {
    "00000000-0000-4000-8000-000000000000"
}
