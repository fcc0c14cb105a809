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
