//! The deployment files in deploy/ and docker-compose.yml pass their tools'
//! own checks: `docker compose config`, `promtool check rules/config`, and
//! `kubernetes-validate` (installed by scripts/setup.sh into a venv).

use std::path::PathBuf;
use std::process::{Command, Output};

use kiln_tests::repo_root;

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

/// `docker compose` where the compose plugin is installed, else Debian's `docker-compose`.
fn compose() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    match plugin {
        true => {
            let mut command = Command::new("docker");
            command.arg("compose");
            command
        }
        false => Command::new("docker-compose"),
    }
}

#[test]
fn docker_compose_config_is_valid() -> anyhow::Result<()> {
    // The credentials deploy/gen-env.sh would write; compose refuses to run without them.
    let mut command = compose();
    command
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .env("POSTGRES_PASSWORD", "check")
        .env("GARAGE_RPC_SECRET", "check")
        .env("KILN_S3_ACCESS_KEY", "check")
        .env("KILN_S3_SECRET_KEY", "check");
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
    let output = run(Command::new(kubernetes_validate())
        .args(["--strict", "--quiet"])
        .args(&manifests))?;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!report.contains("ERROR"), "{report}");
    Ok(())
}
