//! What the worker's machine uses (CPU, memory, GPU), sampled every few
//! seconds: into the metrics gauges, and kept as the latest sample that each
//! heartbeat carries to the scheduler (and so to the farm's worker list).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::v1::ResourceUsage;
use tokio::process::Command;

use crate::worker_metrics::{CPU_USAGE, MEMORY_USAGE};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long one `nvidia-smi` query may take.
const GPU_QUERY_TIMEOUT: Duration = Duration::from_secs(4);
const MIB: u64 = 1024 * 1024;

/// The latest sample, shared between the sampler and the sessions.
#[derive(Clone, Default)]
pub struct HostUsage {
    latest: Arc<Mutex<Option<ResourceUsage>>>,
}

impl HostUsage {
    pub fn latest(&self) -> Option<ResourceUsage> {
        self.latest.lock().ok()?.as_ref().copied()
    }

    fn set(&self, usage: ResourceUsage) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(usage);
        }
    }

    /// Samples forever; GPUs through `nvidia-smi` when the worker has any.
    pub async fn sample(self, gpus: u32) {
        let mut system = sysinfo::System::new();
        let mut timer = tokio::time::interval(SAMPLE_EVERY);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            // CPU use is measured between two refreshes, so the first sample reads 0.
            system.refresh_cpu_usage();
            system.refresh_memory();
            let cpu = system.global_cpu_usage();
            metrics::gauge!(CPU_USAGE).set(f64::from(cpu));
            metrics::gauge!(MEMORY_USAGE).set(system.used_memory() as f64);
            let (gpu, gpu_memory_used_bytes) = if gpus > 0 {
                gpu_use().await.unwrap_or((None, 0))
            } else {
                (None, 0)
            };
            self.set(ResourceUsage {
                cpu: (cpu / 100.0).clamp(0.0, 1.0),
                memory_used_bytes: system.used_memory(),
                memory_total_bytes: system.total_memory(),
                gpu,
                gpu_memory_used_bytes,
            });
        }
    }
}

/// The busiest GPU's utilisation (0 to 1) and the GPUs' memory in use.
async fn gpu_use() -> Option<(Option<f32>, u64)> {
    let query = Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(GPU_QUERY_TIMEOUT, query)
        .await
        .ok()?
        .ok()?;
    output
        .status
        .success()
        .then(|| parse_gpu_use(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses lines of `utilization %, memory MiB`.
fn parse_gpu_use(text: &str) -> (Option<f32>, u64) {
    let mut busiest: Option<f32> = None;
    let mut memory = 0;
    for line in text.lines().take(64) {
        let mut fields = line.split(',').map(str::trim);
        let (Some(util), Some(mem)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(util) = util.parse::<f32>() {
            let util = (util / 100.0).clamp(0.0, 1.0);
            busiest = Some(busiest.map_or(util, |b| b.max(util)));
        }
        memory += mem.parse::<u64>().unwrap_or(0) * MIB;
    }
    (busiest, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_use_reads_the_busiest_gpu_and_all_memory() {
        let (gpu, memory) = parse_gpu_use("35, 1024\n80, 2048\nbad line\n");
        assert_eq!(gpu, Some(0.8));
        assert_eq!(memory, 3072 * MIB);
        assert_eq!(parse_gpu_use(""), (None, 0));
    }
}
