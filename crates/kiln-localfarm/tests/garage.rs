//! Garage against the real binary, which is built separately.

use kiln_localfarm::Garage;

#[tokio::test]
async fn garage_serves_s3_and_keeps_its_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("logs/garage.log");
    let mut garage = Garage::new(dir.path().join("garage"), &log).expect("garage");
    garage.start().await.expect("garage starts");
    assert!(garage.access_key().starts_with("GK") && garage.access_key().len() == 26);
    assert_eq!(garage.secret_key().len(), 64);
    let access_key = garage.access_key().to_owned();
    garage.stop().await.expect("garage stops");
    drop(garage);

    // Garage refuses a known key with another secret, so a second start on
    // the same directory proves the credentials were kept.
    let mut again = Garage::new(dir.path().join("garage"), &log).expect("garage");
    assert_eq!(again.access_key(), access_key);
    again.start().await.expect("garage starts on existing data");
    again.stop().await.expect("garage stops");
}

/// Something else takes Garage's S3 port between its pick and Garage's
/// start (another farm, an outgoing connection): Garage logs the clash and
/// hangs rather than exiting, and the start moves it to new ports.
#[tokio::test]
async fn garage_starts_on_new_ports_when_its_s3_port_is_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("logs/garage.log");
    let mut garage = Garage::new(dir.path().join("garage"), &log).expect("garage");
    let picked = garage.endpoint();
    let port: u16 = picked
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the endpoint");
    let squatter =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the picked port is free");
    garage.start().await.expect("garage starts on other ports");
    assert_ne!(garage.endpoint(), picked, "the endpoint moved");
    let logged = std::fs::read_to_string(&log).expect("garage's log");
    assert!(
        logged.contains("Address already in use"),
        "the first start found the port taken"
    );
    drop(squatter);
    garage.stop().await.expect("garage stops");
}
