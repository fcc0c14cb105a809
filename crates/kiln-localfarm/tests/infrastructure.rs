//! Postgres, etcd and process supervision against the real programs.

use std::process::Command;
use std::time::Duration;

use kiln_localfarm::{ETCD_USER, Etcd, LocalFarmError, Postgres, ServiceProcess};

fn psql(postgres: &Postgres, sql: &str) -> String {
    let output = Command::new(postgres.bin_dir().join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
            "-d",
            &postgres.url(),
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn postgres_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut postgres = Postgres::new(
        dir.path().join("pg/data"),
        dir.path().join("logs/postgres.log"),
    )
    .expect("postgres");
    postgres.start().await.expect("postgres starts");
    assert!(
        postgres.url().ends_with("/kiln"),
        "url names the kiln database: {}",
        postgres.url()
    );

    psql(
        &postgres,
        "CREATE TABLE kept (id int); INSERT INTO kept VALUES (42);",
    );
    postgres.restart().await.expect("postgres restarts");
    assert_eq!(psql(&postgres, "SELECT id FROM kept"), "42");

    // A second cluster object on the same directory reuses the data.
    postgres.stop().await.expect("postgres stops");
    drop(postgres);
    let mut again = Postgres::new(
        dir.path().join("pg/data"),
        dir.path().join("logs/postgres.log"),
    )
    .expect("postgres");
    again
        .start()
        .await
        .expect("postgres starts on existing data");
    assert_eq!(psql(&again, "SELECT id FROM kept"), "42");
}

#[tokio::test]
async fn etcd_takes_only_the_farm_user_and_only_under_its_prefix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd =
        Etcd::new(dir.path().join("etcd"), dir.path().join("logs/etcd.log")).expect("etcd");
    etcd.start().await.expect("etcd starts");

    // Another local user: reaches the port, but without the password gets nothing.
    let mut stranger = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("connects");
    let refused = stranger.put("/kiln/probe", "1", None).await;
    assert!(refused.is_err(), "an anonymous write is refused");
    assert!(
        stranger.get("/kiln", None).await.is_err(),
        "an anonymous read is refused"
    );
    let wrong = etcd_client::ConnectOptions::new().with_user(ETCD_USER, "not-the-password");
    assert!(
        etcd_client::Client::connect([etcd.url()], Some(wrong))
            .await
            .is_err(),
        "a wrong password is refused"
    );

    let mut client = etcd_client::Client::connect([etcd.url()], Some(etcd.connect_options()))
        .await
        .expect("the farm's user connects");
    client.put("/kiln/probe", "1", None).await.expect("put");
    let got = client.get("/kiln/probe", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
    assert!(
        client.put("/elsewhere", "1", None).await.is_err(),
        "the farm's user writes only under its prefix"
    );

    // A restart keeps the data, users and authentication included.
    etcd.restart().await.expect("etcd restarts");
    assert!(stranger.get("/kiln/probe", None).await.is_err());
    let mut client = etcd_client::Client::connect([etcd.url()], Some(etcd.connect_options()))
        .await
        .expect("connects again");
    assert_eq!(
        client
            .get("/kiln/probe", None)
            .await
            .expect("get")
            .kvs()
            .len(),
        1
    );
    etcd.stop().await.expect("etcd stops");
    assert!(!etcd.process_mut().is_running());
}

/// psql as another local user would run it: no password from us.
fn psql_without_password(postgres: &Postgres) -> std::process::Output {
    Command::new(postgres.bin_dir().join("psql"))
        .args([
            "-X",
            "-w",
            "-tA",
            "-d",
            &postgres.public_url(),
            "-c",
            "SELECT 1",
        ])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/dev/null")
        .output()
        .expect("psql runs")
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn postgres_takes_only_its_password_even_on_a_cluster_left_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("pg/data");
    let log = dir.path().join("logs/postgres.log");
    // Files an older run left readable by everyone.
    std::fs::create_dir_all(log.parent().expect("dir")).expect("logs dir");
    std::fs::write(&log, b"").expect("log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut postgres = Postgres::new(&data, &log).expect("postgres");
    postgres.start().await.expect("postgres starts");
    assert_eq!(psql(&postgres, "SELECT 1"), "1", "the farm connects");
    assert!(
        !psql_without_password(&postgres).status.success(),
        "a connection without the password is refused"
    );
    assert!(
        !postgres
            .public_url()
            .contains(&read(&postgres.password_file())),
        "the URL to show has no password"
    );
    assert_eq!(mode(&postgres.password_file()), 0o600);
    assert_eq!(mode(&log), 0o600, "the log is narrowed to its owner");

    // A cluster an older Kiln made trusts every local connection.
    postgres.stop().await.expect("postgres stops");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .expect("open the cluster");
    std::fs::set_permissions(
        postgres.password_file(),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    drop(postgres);
    let mut again = Postgres::new(&data, &log).expect("postgres");
    again.start().await.expect("postgres starts again");
    assert!(
        !psql_without_password(&again).status.success(),
        "the open cluster is closed at start"
    );
    assert_eq!(psql(&again, "SELECT 1"), "1");
    assert_eq!(mode(&again.password_file()), 0o600);
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .expect("readable")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn process_that_dies_reports_its_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = ServiceProcess::new("doomed", "/bin/sh", dir.path().join("doomed.log"))
        .args(["-c", "echo about to fail; echo bad config >&2; exit 3"]);
    process.start().expect("starts");
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert_eq!(status.code(), Some(3));
    match process.check_running() {
        Err(LocalFarmError::NotRunning { .. }) => {}
        other => panic!("expected NotRunning, got {other:?}"),
    }
    let tail = process.log_tail(20);
    assert!(
        tail.contains("about to fail") && tail.contains("bad config"),
        "log tail: {tail}"
    );
}

#[tokio::test]
async fn early_exit_error_names_process_and_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = ServiceProcess::new("crasher", "/bin/sh", dir.path().join("crasher.log"))
        .args(["-c", "echo cannot bind port >&2; exit 1"]);
    process.start().expect("starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        if let Err(err) = process.check_running() {
            break err;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process never exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let message = err.to_string();
    assert!(
        message.contains("crasher") && message.contains("cannot bind port"),
        "{message}"
    );
    assert!(message.contains("crasher.log"), "{message}");
}

#[tokio::test]
async fn pause_resume_and_terminate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process =
        ServiceProcess::new("sleeper", "/bin/sleep", dir.path().join("sleeper.log")).arg("600");
    process.start().expect("starts");
    let pid = process.pid().expect("has a pid");
    process.pause().expect("pauses");
    wait_for_state(pid, |state| state == 'T').await;
    process.resume().expect("resumes");
    wait_for_state(pid, |state| state != 'T').await;
    process.terminate().await.expect("terminates");
    assert!(!process.is_running());
    assert!(process.pid().is_none());
    process.restart().await.expect("starts again");
    assert!(process.is_running());
    process.kill().await.expect("kills");
    assert!(!process.is_running());
}

/// Signals arrive asynchronously; polls until the process's state matches.
async fn wait_for_state(pid: u32, matches: impl Fn(char) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches(process_state(pid)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "state is still {}",
            process_state(pid)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The state letter of /proc/<pid>/stat (R, S, T, ...).
fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process exists");
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    after_name
        .trim_start()
        .chars()
        .next()
        .expect("state letter")
}

/// Something else takes etcd's client port between its pick and etcd's
/// start (another farm, an outgoing connection): etcd exits, and its first
/// start moves it to new ports.
#[tokio::test]
async fn etcd_starts_on_new_ports_when_its_client_port_is_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("logs/etcd.log");
    let mut etcd = Etcd::new(dir.path().join("etcd"), &log).expect("etcd");
    let picked = etcd.url();
    let port: u16 = picked
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the URL");
    let squatter =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the picked port is free");
    etcd.start().await.expect("etcd starts on other ports");
    assert_ne!(etcd.url(), picked, "the URL moved");
    let logged = std::fs::read_to_string(&log).expect("etcd's log");
    assert!(
        logged.contains("address already in use"),
        "the first start found the port taken"
    );
    let mut client = etcd_client::Client::connect([etcd.url()], Some(etcd.connect_options()))
        .await
        .expect("etcd answers at its new URL");
    client
        .put("/kiln/probe", "1", None)
        .await
        .expect("the farm's user writes");
    drop(squatter);
    etcd.stop().await.expect("etcd stops");
}
