// SCRATCH: manual Garage check, deleted after use.
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use kiln_asset_client::AssetClient;
use kiln_discovery::{Discovery, DiscoveryArgs};
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::StatRequest;
use rand::RngCore;
use sha2::{Digest as _, Sha256};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let etcd = std::env::var("ETCD")?;
    let args = DiscoveryArgs { etcd_endpoints: vec![etcd], etcd_prefix: "/garage-try".into(), lease_ttl: 5 };
    let ep = Discovery::connect(&args, Duration::from_secs(5)).await?.find_one("assets", Duration::from_secs(5)).await?;
    let channel = tonic::transport::Channel::from_shared(ep.grpc_uri())?.connect().await?;
    let client = AssetClient::new(channel.clone());
    let dir = tempfile::tempdir()?;
    for size in [0usize, 5 * 1024 * 1024 + 7, 150 * 1024 * 1024 + 3] {
        let mut data = vec![0u8; size];
        rand::rng().fill_bytes(&mut data);
        let digest = hex::encode(Sha256::digest(&data));
        let path = dir.path().join(format!("f{size}"));
        std::fs::write(&path, &data)?;
        assert_eq!(client.stat(&digest).await?, None);
        let t = std::time::Instant::now();
        let info = client.upload_file(&path).await?;
        println!("uploaded {size} in {:?}", t.elapsed());
        assert_eq!((info.digest.as_str(), info.size), (digest.as_str(), size as u64));
        assert_eq!(client.stat(&digest).await?, Some(size as u64));
        let dest = dir.path().join(format!("d{size}"));
        let t = std::time::Instant::now();
        assert_eq!(client.download_to(&digest, &dest).await?, size as u64);
        println!("downloaded {size} in {:?}", t.elapsed());
        assert!(std::fs::read(&dest)? == data);
        let mut chunks = Box::pin(client.download_stream(&digest).await?);
        let mut max = 0;
        while let Some(c) = chunks.next().await { max = max.max(c?.len()); }
        assert!(max <= 1024 * 1024);
        let again = client.upload_stream(None, stream::iter([Ok(Bytes::from(data.clone()))])).await?;
        assert_eq!(again.digest, digest);
        println!("size {size}: ok, max chunk {max}");
    }
    let wrong = "0".repeat(64);
    let err = client.upload_stream(Some(wrong), stream::iter([Ok(Bytes::from_static(b"unique-xyz-123"))])).await.err().ok_or("accepted")?;
    println!("wrong digest: {:?} {err}", err.code());
    assert_eq!(client.stat(&hex::encode(Sha256::digest(b"unique-xyz-123"))).await?, None);
    let unknown = hex::encode(Sha256::digest(b"never"));
    let err = client.download_stream(&unknown).await.err().ok_or("found")?;
    println!("unknown: {:?} {err}", err.code());
    let mut raw = AssetServiceClient::new(channel);
    let err = raw.stat(StatRequest { digest: "nope".into() }).await.err().ok_or("ok")?;
    println!("malformed: {:?} {}", err.code(), err.message());
    Ok(())
}
