//! Tenants' files, attacked: a user who learns another's digest (from a
//! log, a link, a job record) tries to read it, stat it, find it, presign
//! it, resume its upload and feed it to a job of their own, through two
//! gateways in front of two assets replicas sharing one Garage bucket. Every
//! attempt is refused exactly as for a file that does not exist; the owner's
//! files stay whole (also one stored before holds were recorded, which is
//! hers because her job names it); and the attacker's own upload of the
//! same content is checked and stored once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use kiln_localfarm::{Farm, S3_BUCKET};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, clips_request, create_token, s3_client, state_of};
use sha2::{Digest as _, Sha256};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_files_stay_out_of_reach() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("kiln-e2e-").tempdir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(1)
        .s3(true)
        .gateways(2)
        .assets_replicas(2)
        .start()
        .await?;
    let s3 = s3_client(&mut farm).await?;
    let result = attack(&farm, &s3).await;
    farm.shutdown().await?;
    result
}

/// Alice's files: an upload and an output her job's worker stored.
struct Secrets {
    upload: Bytes,
    upload_digest: String,
    output_digest: String,
}

async fn attack(farm: &Farm, s3: &aws_sdk_s3::Client) -> Result<()> {
    let alice_token = create_token(farm, "alice", pb::Role::Submitter, 0).await?;
    let bob_token = create_token(farm, "bob", pb::Role::Submitter, 0).await?;
    let urls = farm.gateway_urls();
    ensure!(urls.len() == 2, "two gateways: {urls:?}");
    let mut alice = Client::connect_to(farm, &urls[0], &alice_token).await?;
    let secrets = alices_files(&mut alice).await?;
    // As if stored before the assets service recorded who holds what: her
    // output has no holds, and only her job says it is hers.
    let holds = holds_prefix(&secrets.output_digest);
    forget(s3, &holds).await?;

    for (url, http) in urls.iter().zip(farm.gateway_http_urls()) {
        let mut bob = Client::connect_to(farm, url, &bob_token).await?;
        for digest in [&secrets.upload_digest, &secrets.output_digest] {
            bob_is_refused(&mut bob, &http, &bob_token, digest).await?;
        }
    }

    let bob = Client::connect_to(farm, &urls[1], &bob_token).await?;
    let forged = bob
        .assets
        .upload_stream(
            Some(secrets.upload_digest.clone()),
            futures::stream::iter([Ok(Bytes::from_static(b"not alice's file"))]),
        )
        .await
        .expect_err("content that does not match the digest");
    assert_eq!(forged.code(), Code::InvalidArgument, "{forged}");
    assert_eq!(
        bob.assets.stat(&secrets.upload_digest).await?,
        None,
        "a forged upload gains nothing"
    );

    // Nothing of alice's changed: she still reads both files, whole.
    for url in &urls {
        let alice = Client::connect_to(farm, url, &alice_token).await?;
        assert_eq!(
            download(&alice, &secrets.upload_digest).await?,
            secrets.upload
        );
        download(&alice, &secrets.output_digest).await?;
    }
    assert_eq!(
        s3_keys(s3, &holds).await?,
        1,
        "alice's hold on her job's output is recorded again"
    );

    // Bob's own copy of the same content: accepted, checked, stored once.
    let stored = bob
        .assets
        .upload_stream(
            Some(secrets.upload_digest.clone()),
            futures::stream::iter([Ok(secrets.upload.clone())]),
        )
        .await?;
    assert_eq!(stored.digest, secrets.upload_digest);
    assert_eq!(
        download(&bob, &secrets.upload_digest).await?,
        secrets.upload
    );
    let copies = s3_keys(s3, &format!("sha256/{}", secrets.upload_digest)).await?;
    assert_eq!(copies, 1, "deduplicated: one object for both owners");
    assert_eq!(
        download(&alice, &secrets.upload_digest).await?,
        secrets.upload
    );

    admins_see_everything_through_short_lived_urls(farm, &secrets).await
}

/// Alice uploads a file and runs a job whose worker stores an output for her.
async fn alices_files(alice: &mut Client) -> Result<Secrets> {
    let upload = Bytes::from(format!("alice's private notes {:?}", SystemTime::now()));
    let upload_digest = alice
        .assets
        .upload_stream(None, futures::stream::iter([Ok(upload.clone())]))
        .await?
        .digest;
    let job = alice
        .jobs
        .submit_job(clips_request(1, 1, "testsrc=size=64x36:rate=5", false))
        .await?
        .into_inner();
    let job = alice.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let output = alice
        .outputs(&job.id)
        .await?
        .into_iter()
        .next()
        .context("the job stored an output")?;
    // The worker stored it on alice's behalf: hers to read by digest.
    download(alice, &output.digest).await?;
    Ok(Secrets {
        upload,
        upload_digest,
        output_digest: output.digest,
    })
}

async fn download(client: &Client, digest: &str) -> Result<Bytes> {
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("file");
    client.assets.download_to(digest, &dest).await?;
    Ok(Bytes::from(std::fs::read(dest)?))
}

/// Every way bob could reach `digest` answers as for a file that is not stored.
async fn bob_is_refused(bob: &mut Client, http: &str, token: &str, digest: &str) -> Result<()> {
    let unknown = hex::encode(Sha256::digest(b"no one stored this"));
    let missing = bob.assets.download_stream(digest).await.err();
    assert_eq!(missing.map(|e| e.code()), Some(Code::NotFound), "Download");
    assert_eq!(bob.assets.stat(digest).await?, None, "Stat");
    let asked = vec![digest.to_owned(), unknown.clone()];
    assert_eq!(
        bob.assets.find_missing(&asked).await?,
        asked,
        "FindMissing tells bob nothing: alice's file is as missing as an unknown one"
    );
    let presigned = bob.assets.presign_download(digest, 60).await.err();
    assert_eq!(
        presigned.map(|e| e.code()),
        Some(Code::NotFound),
        "PresignDownload"
    );
    assert_eq!(bob.assets.upload_offset(digest).await?, 0, "UploadOffset");

    let (status, body) = rest_get(&format!("{http}/v1/assets/{digest}"), token).await?;
    assert_eq!(status, 404, "REST download: {body}");
    let error: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(error["error"]["code"], "not_found", "{body}");
    assert!(!body.contains("alice"), "the refusal names no one: {body}");
    let (status, body) = rest_get(&format!("{http}/v1/assets/{digest}/stat"), token).await?;
    assert_eq!(status, 200, "{body}");
    // proto3 JSON leaves out `false`.
    let stat: serde_json::Value = serde_json::from_str(&body)?;
    assert!(
        !stat["exists"].as_bool().unwrap_or(false),
        "REST stat: {body}"
    );

    // A job naming the digest as its input is refused like one naming an
    // unknown digest, and nothing is created.
    let submit = |digest: &str| pb::SubmitJobRequest {
        inputs: vec![pb::JobInput {
            path: "stolen.bin".into(),
            digest: digest.to_owned(),
        }],
        ..clips_request(1, 1, "testsrc=size=64x36:rate=5", false)
    };
    let refused = bob
        .jobs
        .submit_job(submit(digest))
        .await
        .expect_err("a job on alice's file");
    let unknown_refused = bob
        .jobs
        .submit_job(submit(&unknown))
        .await
        .expect_err("a job on an unknown file");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        refused.message().replace(digest, "D"),
        unknown_refused.message().replace(&unknown, "D"),
        "the refusal reveals nothing"
    );
    let jobs = bob
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "bob has no jobs: {jobs:?}");
    Ok(())
}

/// The admin reads anyone's file; presigned URLs live minutes.
async fn admins_see_everything_through_short_lived_urls(
    farm: &Farm,
    secrets: &Secrets,
) -> Result<()> {
    let admin = Client::connect(farm).await?;
    assert!(!download(&admin, &secrets.output_digest).await?.is_empty());
    let week = admin
        .assets
        .presign_download(&secrets.upload_digest, 7 * 24 * 3600)
        .await
        .expect_err("a week-long URL");
    assert_eq!(week.code(), Code::InvalidArgument, "{week}");
    let channel = kiln_tls::ClientTls::trusting(farm.tls_ca())?
        .endpoint(&farm.gateway_url())?
        .connect()
        .await?;
    let mut raw = pb::asset_service_client::AssetServiceClient::with_interceptor(
        channel,
        kiln_asset_client::CallCredentials::bearer(farm.admin_token())?,
    );
    let presigned = raw
        .presign_download(pb::PresignDownloadRequest {
            digest: secrets.upload_digest.clone(),
            expires_seconds: 0,
        })
        .await?
        .into_inner();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let lives = Duration::from_secs(presigned.expires_at_unix_seconds.saturating_sub(now));
    assert!(
        lives <= Duration::from_secs(15 * 60),
        "a default URL lives minutes, not days: {lives:?}"
    );
    let (status, body) = rest_get(&presigned.url, "").await?;
    assert_eq!(status, 200);
    assert_eq!(
        body.as_bytes(),
        &secrets.upload[..],
        "the URL serves the file"
    );
    Ok(())
}

/// GET `url` (with a bearer `token` unless empty): the status and body.
async fn rest_get(url: &str, token: &str) -> Result<(u16, String)> {
    let (url, token) = (url.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::get(&url);
        if !token.is_empty() {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(err) => return Err(anyhow::Error::from(err)),
        };
        Ok((response.status(), response.into_string()?))
    })
    .await?
}

/// Where the holds of `digest` are kept in the bucket.
fn holds_prefix(digest: &str) -> String {
    format!("owners/{}/{digest}/", &digest[..2])
}

/// Deletes every object of the bucket under `prefix`.
async fn forget(s3: &aws_sdk_s3::Client, prefix: &str) -> Result<()> {
    let listed = s3
        .list_objects_v2()
        .bucket(S3_BUCKET)
        .prefix(prefix)
        .send()
        .await?;
    ensure!(!listed.contents().is_empty(), "nothing under {prefix}");
    for object in listed.contents() {
        s3.delete_object()
            .bucket(S3_BUCKET)
            .set_key(object.key().map(str::to_owned))
            .send()
            .await?;
    }
    Ok(())
}

/// How many objects in the farm's bucket have keys starting with `prefix`.
async fn s3_keys(s3: &aws_sdk_s3::Client, prefix: &str) -> Result<usize> {
    let listed = s3
        .list_objects_v2()
        .bucket(S3_BUCKET)
        .prefix(prefix)
        .send()
        .await?;
    Ok(listed.contents().len())
}
