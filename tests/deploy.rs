//! The deployment files in deploy/ and docker-compose.yml pass their tools'
//! own checks: `docker compose config` (which also refuses to run without
//! the generated credentials), `promtool check rules/config`, and
//! `kubernetes-validate --strict` (installed by scripts/setup.sh into a venv).
//! tests/compose.rs runs the compose file for real; tests/manifests.rs runs
//! each service with its manifest's environment.

use std::path::PathBuf;
use std::process::{Command, Output};

use kiln_tests::{docker_compose, repo_root};

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.current_dir(repo_root()).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

#[test]
fn docker_compose_config_is_valid() -> anyhow::Result<()> {
    // Compose refuses to run without the credentials deploy/gen-env.sh writes.
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.env");
    std::fs::write(&empty, "")?;
    let refused = docker_compose()
        .arg("--env-file")
        .arg(&empty)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo_root())
        .env_remove("POSTGRES_PASSWORD")
        .output()?;
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("run deploy/gen-env.sh first"),
        "compose runs only with generated credentials: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let env_file = dir.path().join("compose.env");
    run(Command::new(repo_root().join("deploy/gen-env.sh")).arg(&env_file))?;
    let mut command = docker_compose();
    command
        .arg("--env-file")
        .arg(&env_file)
        .args(["-f", "docker-compose.yml"])
        .args([
            "--profile",
            "dashboards",
            "--profile",
            "tracing",
            "config",
            "-q",
        ]);
    run(&mut command)?;
    Ok(())
}

#[test]
fn prometheus_alert_rules_and_config_are_valid() -> anyhow::Result<()> {
    run(Command::new("promtool").args(["check", "rules", "deploy/prometheus/alerts.yml"]))?;
    run(Command::new("promtool").args(["check", "config", "deploy/prometheus/prometheus.yml"]))?;
    Ok(())
}

#[test]
fn grafana_dashboard_is_json_with_panels() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/dashboards/kiln.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let panels = dashboard["panels"].as_array().map_or(0, Vec::len);
    assert!(panels > 0, "the dashboard has panels");
    Ok(())
}

fn kubernetes_validate() -> PathBuf {
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("kiln")
        });
    cache.join("venv/bin/kubernetes-validate")
}

#[test]
fn kubernetes_manifests_are_valid() -> anyhow::Result<()> {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/k8s"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert!(!manifests.is_empty());
    // Credentials come from deploy/k8s/gen-secret.sh at deploy time, never from the repository.
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest)?;
        assert!(
            !text.contains("kind: Secret"),
            "{} commits a Secret",
            manifest.display()
        );
    }
    // The oldest and newest Kubernetes whose schemas it ships and that know
    // every field used (the worker's hostUsers and procMount among them).
    for version in ["1.30.0", "1.37.0"] {
        let output = run(Command::new(kubernetes_validate())
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(&manifests))?;
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(!report.contains("ERROR"), "{version}: {report}");
    }
    Ok(())
}
