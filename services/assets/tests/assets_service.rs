//! Runs the real `kiln-assets` binary on the local backend against a real
//! etcd, and exercises it through `AssetClient`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use futures::{StreamExt, stream};
use kiln_asset_client::{AssetClient, AssetClientError, CallCredentials, digest};
use kiln_discovery::{Discovery, DiscoveryArgs};
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::{DownloadRequest, StatRequest, UploadChunk};
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use tonic::Code;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const STARTUP: Duration = Duration::from_secs(30);
/// The farm's service token for this test's service (made up here; a farm
/// generates its own).
const SERVICE_TOKEN: &str = "test-service-token-0123456789";
const JOIN_TOKEN: &str = "test-join-token-0123456789";
const MIB: usize = 1024 * 1024;

/// Kills the process when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two different free ports: both are held until both are picked, or the
/// kernel may hand out the first again as the second.
fn two_free_ports() -> std::io::Result<(u16, u16)> {
    let first = TcpListener::bind("127.0.0.1:0")?;
    let second = TcpListener::bind("127.0.0.1:0")?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}

fn start_etcd(dir: &Path) -> std::io::Result<(ChildGuard, String)> {
    let (client_port, peer_port) = two_free_ports()?;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("etcd.log"))?)
        .spawn()?;
    Ok((ChildGuard(child), client_url))
}

fn start_assets(dir: &Path, etcd: &str, prefix: &str) -> std::io::Result<ChildGuard> {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln-assets"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "local",
            "--etcd",
            etcd,
            "--etcd-prefix",
            prefix,
        ])
        .args(["--lease-ttl", "5", "--log", "kiln_assets=debug,info"])
        .env("KILN_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("KILN_JOIN_TOKEN", JOIN_TOKEN)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("assets.log"))?)
        .spawn()?;
    Ok(ChildGuard(child))
}

/// Parsed rather than built, so new discovery options keep their defaults.
fn discovery_args(etcd: &str, prefix: &str) -> Result<DiscoveryArgs, clap::Error> {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        discovery: DiscoveryArgs,
    }
    let args = Args::try_parse_from([
        "test",
        "--etcd",
        etcd,
        "--etcd-prefix",
        prefix,
        "--lease-ttl",
        "5",
    ])?;
    Ok(args.discovery)
}

/// Finds the service through etcd, as every other Kiln component would.
async fn connect(etcd: &str, prefix: &str) -> Result<AssetClient, Box<dyn std::error::Error>> {
    let args = discovery_args(etcd, prefix)?;
    let discovery = Discovery::connect(&args, STARTUP).await?;
    let endpoint = discovery
        .find_one(kiln_discovery::service::ASSETS, STARTUP)
        .await?;
    let channel = Channel::from_shared(endpoint.grpc_uri())?.connect().await?;
    Ok(AssetClient::with_credentials(
        channel,
        CallCredentials::service(SERVICE_TOKEN)?,
    ))
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn object_path(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir.join("sha256").join(&digest[..2]).join(digest)
}

fn in_chunks(
    data: Vec<u8>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let data = Bytes::from(data);
    let pieces: Vec<_> = (0..data.len())
        .step_by(300_000)
        .map(|at| Ok(data.slice(at..(at + 300_000).min(data.len()))))
        .collect();
    stream::iter(pieces)
}

fn code(err: &AssetClientError) -> Code {
    err.code()
}

/// Waits until `condition` holds, failing after `deadline`.
async fn eventually(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn stores_and_serves_assets_through_the_real_binary() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_etcd, etcd_url) = start_etcd(dir.path())?;
    let prefix = format!("/kiln-test-{}", rand::random::<u32>());
    let _assets = start_assets(dir.path(), &etcd_url, &prefix)?;
    let client = match connect(&etcd_url, &prefix).await {
        Ok(client) => client,
        Err(err) => {
            let log = std::fs::read_to_string(dir.path().join("assets.log")).unwrap_or_default();
            return Err(format!("assets service did not come up: {err}\n{log}").into());
        }
    };
    let data_dir = dir.path().join("data");

    let content = random_bytes(5 * MIB + 123);
    let source = dir.path().join("scene.blend");
    std::fs::write(&source, &content)?;
    round_trip(&client, &source, &content, &data_dir, dir.path()).await?;
    dedupes(&client, &source, &content, &data_dir).await?;
    rejects_wrong_expected_digest(&client).await?;
    unknown_digest_is_not_found(&client, dir.path()).await?;
    malformed_digests_are_invalid(&client, &etcd_url, &prefix).await?;
    failed_source_stores_nothing(&client, &data_dir).await?;
    corrupted_object_ends_with_data_loss(&client, &data_dir, dir.path()).await?;
    Ok(())
}

/// A stored file whose bytes changed on disk is not served as the file:
/// the stream ends with DATA_LOSS, not cleanly, and no download keeps it.
async fn corrupted_object_ends_with_data_loss(
    client: &AssetClient,
    data_dir: &Path,
    dir: &Path,
) -> TestResult {
    let content = random_bytes(3 * MIB + 77);
    let info = client
        .upload_stream(None, in_chunks(content.clone()))
        .await?;
    let object = object_path(data_dir, &info.digest);
    let mut stored = std::fs::read(&object)?;
    stored[2 * MIB + 5] ^= 0x40;
    std::fs::write(&object, &stored)?;

    let received: Vec<_> = client.download_stream(&info.digest).await?.collect().await;
    let (last, sent) = received.split_last().ok_or("an empty download")?;
    let err = last.as_ref().err().ok_or("the download ended cleanly")?;
    assert_eq!(code(err), Code::DataLoss, "{err}");
    let sent: usize = sent
        .iter()
        .map(|chunk| chunk.as_ref().map_or(0, Bytes::len))
        .sum();
    assert_eq!(sent, content.len(), "every byte is sent before the check");

    let dest = dir.join("corrupt-download");
    let err = client
        .download_to(&info.digest, &dest)
        .await
        .err()
        .ok_or("a corrupted file was downloaded")?;
    assert!(!dest.exists(), "{err}");
    Ok(())
}

async fn round_trip(
    client: &AssetClient,
    source: &Path,
    content: &[u8],
    data_dir: &Path,
    dir: &Path,
) -> TestResult {
    let info = client.upload_file(source).await?;
    assert_eq!(info.digest, sha256(content));
    assert_eq!(info.digest, digest::sha256_file(source).await?);
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(client.stat(&info.digest).await?, Some(content.len() as u64));
    assert_eq!(std::fs::read(object_path(data_dir, &info.digest))?, content);

    let dest = dir.join("downloads").join("scene.blend");
    std::fs::create_dir_all(dir.join("downloads"))?;
    assert_eq!(
        client.download_to(&info.digest, &dest).await?,
        content.len() as u64
    );
    assert_eq!(std::fs::read(&dest)?, content);
    assert_eq!(
        std::fs::read_dir(dir.join("downloads"))?.count(),
        1,
        "no temp file left"
    );

    let mut chunks = Box::pin(client.download_stream(&info.digest).await?);
    let mut streamed = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        assert!(
            chunk.len() <= MIB,
            "chunk of {} bytes exceeds 1 MiB",
            chunk.len()
        );
        streamed.extend_from_slice(&chunk);
    }
    assert_eq!(streamed, content);
    Ok(())
}

async fn dedupes(
    client: &AssetClient,
    source: &Path,
    content: &[u8],
    data_dir: &Path,
) -> TestResult {
    let object = object_path(data_dir, &sha256(content));
    let before = std::fs::metadata(&object)?.modified()?;
    let again = client.upload_file(source).await?;
    assert_eq!(
        (again.digest.as_str(), again.size),
        (sha256(content).as_str(), content.len() as u64)
    );
    // Streamed without the client's Stat shortcut: the service must notice on its own.
    let streamed = client
        .upload_stream(None, in_chunks(content.to_vec()))
        .await?;
    assert_eq!(streamed.digest, sha256(content));
    assert_eq!(
        std::fs::metadata(&object)?.modified()?,
        before,
        "object rewritten"
    );
    assert_eq!(
        std::fs::read_dir(object.parent().ok_or("no parent")?)?.count(),
        1
    );
    Ok(())
}

async fn rejects_wrong_expected_digest(client: &AssetClient) -> TestResult {
    let content = random_bytes(2 * MIB);
    let wrong = sha256(b"something else");
    let err = client
        .upload_stream(Some(wrong.clone()), in_chunks(content.clone()))
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&wrong) && message.contains(&sha256(&content)),
        "{message}"
    );
    assert_eq!(
        client.stat(&sha256(&content)).await?,
        None,
        "mismatched content was stored"
    );
    Ok(())
}

async fn unknown_digest_is_not_found(client: &AssetClient, dir: &Path) -> TestResult {
    let unknown = sha256(b"never uploaded");
    assert_eq!(client.stat(&unknown).await?, None);
    let err = client
        .download_stream(&unknown)
        .await
        .err()
        .ok_or("download of unknown digest succeeded")?;
    assert_eq!(code(&err), Code::NotFound);
    assert!(err.to_string().contains(&unknown), "{err}");
    let dest = dir.join("missing.bin");
    let err = client
        .download_to(&unknown, &dest)
        .await
        .err()
        .ok_or("download_to succeeded")?;
    assert_eq!(code(&err), Code::NotFound);
    assert!(!dest.exists());
    Ok(())
}

/// Checked with a raw gRPC client too, since `AssetClient` refuses malformed
/// digests before sending them.
async fn malformed_digests_are_invalid(
    client: &AssetClient,
    etcd: &str,
    prefix: &str,
) -> TestResult {
    for bad in ["", "abc", "../../../etc/passwd", &"A".repeat(64)] {
        let err = client
            .stat(bad)
            .await
            .err()
            .ok_or("client accepted a malformed digest")?;
        assert_eq!(code(&err), Code::InvalidArgument);
    }
    let args = discovery_args(etcd, prefix)?;
    let endpoint = Discovery::connect(&args, STARTUP)
        .await?
        .find_one("assets", STARTUP)
        .await?;
    let channel = Channel::from_shared(endpoint.grpc_uri())?.connect().await?;
    // Without the farm's credentials nothing is answered, whatever user
    // the call claims to act for.
    let mut anonymous = AssetServiceClient::new(channel.clone());
    let mut claims_owner = tonic::Request::new(StatRequest {
        digest: "a".repeat(64),
    });
    claims_owner
        .metadata_mut()
        .insert(kiln_proto::metadata::OWNER, "alice".parse()?);
    let refused = anonymous
        .stat(claims_owner)
        .await
        .err()
        .ok_or("an anonymous stat was answered")?;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let mut raw =
        AssetServiceClient::with_interceptor(channel, CallCredentials::service(SERVICE_TOKEN)?);
    let bad = "../".repeat(21) + "x";
    let stat = raw
        .stat(StatRequest {
            digest: bad.clone(),
        })
        .await
        .err()
        .ok_or("stat accepted")?;
    assert_eq!(stat.code(), Code::InvalidArgument, "{stat}");
    let download = raw
        .download(DownloadRequest {
            digest: bad.clone(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or("download accepted")?;
    assert_eq!(download.code(), Code::InvalidArgument, "{download}");
    let chunk = UploadChunk {
        expected_digest: bad,
        data: Bytes::from_static(b"abc"),
        offset: 0,
    };
    let upload = raw
        .upload(stream::iter([chunk]))
        .await
        .err()
        .ok_or("upload accepted")?;
    assert_eq!(upload.code(), Code::InvalidArgument, "{upload}");
    let oversized = UploadChunk {
        expected_digest: String::new(),
        data: vec![0; 4 * MIB + 1].into(),
        offset: 0,
    };
    let upload = raw
        .upload(stream::iter([oversized]))
        .await
        .err()
        .ok_or("oversized chunk accepted")?;
    assert_eq!(upload.code(), Code::InvalidArgument, "{upload}");
    Ok(())
}

/// A source that fails half-way must not leave its partial content stored,
/// nor a spool file behind: the service has to see the upload as aborted.
async fn failed_source_stores_nothing(client: &AssetClient, data_dir: &Path) -> TestResult {
    let partial = random_bytes(MIB);
    let spool = data_dir.join("spool");
    let watched = spool.clone();
    let failing =
        stream::iter([Ok(Bytes::from(partial.clone()))]).chain(stream::once(async move {
            // Fail only once the service holds the partial upload, so the abort is really exercised.
            let reached = eventually("the upload to reach the spool", STARTUP, || {
                spooled_bytes(&watched) >= MIB as u64
            });
            if let Err(err) = reached.await {
                return Err(std::io::Error::other(err));
            }
            Err(std::io::Error::other("disk on fire"))
        }));
    let err = client
        .upload_stream(None, failing)
        .await
        .err()
        .ok_or("failed source accepted")?;
    assert_eq!(err.to_string(), "upload source failed: disk on fire");
    eventually("the spool to empty", STARTUP, || {
        spooled_bytes(&spool) == 0 && spool_is_empty(&spool)
    })
    .await?;
    assert_eq!(client.stat(&sha256(&partial)).await?, None);
    Ok(())
}

fn spooled_bytes(spool: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn spool_is_empty(spool: &Path) -> bool {
    std::fs::read_dir(spool)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false)
}

#[test]
fn help_documents_every_option() -> TestResult {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-assets"))
        .arg("--help")
        .output()?;
    let help = String::from_utf8(output.stdout)?;
    for option in [
        "--listen",
        "--backend",
        "--data-dir",
        "--spool-dir",
        "--max-upload-bytes",
        "--s3-endpoint",
        "--s3-bucket",
        "--s3-region",
        "--s3-access-key",
        "--s3-secret-key",
        "--etcd",
        "--otlp-endpoint",
        "KILN_S3_SECRET_KEY",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
    Ok(())
}
