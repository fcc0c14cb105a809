//! GPUs this worker can render on, and which device a Cycles render uses.
//!
//! NVIDIA GPUs are found with `nvidia-smi`; a worker without it (or without
//! a GPU) renders on the CPU. Templates ask for a device with Blender's own
//! `-- --cycles-device <value>`, where Kiln's templates pass `cpu` or `gpu`:
//! the worker replaces the value with what it can actually do and reports
//! the choice with the task's result.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How long `nvidia-smi` may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Most GPUs read from `nvidia-smi`'s output.
const MAX_GPUS: usize = 64;
const MIB: u64 = 1024 * 1024;
/// Blender's option naming the Cycles device, after `--`.
const CYCLES_DEVICE: &str = "--cycles-device";

/// One GPU the worker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub name: String,
    pub memory_bytes: u64,
}

/// The device Cycles renders on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CyclesDevice {
    Cpu,
    Cuda,
    Optix,
}

impl CyclesDevice {
    /// The value Blender's `--cycles-device` takes.
    pub fn blender_name(self) -> &'static str {
        match self {
            CyclesDevice::Cpu => "CPU",
            CyclesDevice::Cuda => "CUDA",
            CyclesDevice::Optix => "OPTIX",
        }
    }

    /// How the task's result names it.
    pub fn name(self) -> &'static str {
        match self {
            CyclesDevice::Cpu => "cpu",
            CyclesDevice::Cuda => "cuda",
            CyclesDevice::Optix => "optix",
        }
    }
}

/// Parses `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`:
/// one `name, MiB` line per GPU. Lines that do not parse (warnings, "[N/A]"
/// memory) are skipped rather than failing the whole answer.
pub fn parse_nvidia_smi(output: &str) -> Vec<Gpu> {
    output
        .lines()
        .filter_map(|line| {
            // GPU names do not contain commas, but split from the right in case.
            let (name, memory) = line.rsplit_once(',')?;
            let name = name.trim();
            let mib: u64 = memory.trim().parse().ok()?;
            (!name.is_empty()).then(|| Gpu {
                name: name.to_owned(),
                memory_bytes: mib.saturating_mul(MIB),
            })
        })
        .take(MAX_GPUS)
        .collect()
}

/// The NVIDIA GPUs `nvidia_smi` reports; none when it is missing or fails.
pub async fn detect_nvidia(nvidia_smi: &Path) -> Vec<Gpu> {
    let run = Command::new(nvidia_smi)
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(output)) if output.status.success() => output,
        Ok(Ok(output)) => {
            tracing::info!(status = %output.status, "nvidia-smi failed; no gpus");
            return Vec::new();
        }
        Ok(Err(error)) => {
            tracing::info!(%error, "nvidia-smi not available; no gpus");
            return Vec::new();
        }
        Err(_) => {
            tracing::warn!("nvidia-smi did not answer in time; no gpus");
            return Vec::new();
        }
    };
    let gpus = parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout));
    for gpu in &gpus {
        tracing::info!(name = %gpu.name, memory_bytes = gpu.memory_bytes, "gpu found");
    }
    gpus
}

/// The device for a render that asked for `requested` on a worker with `gpus`.
/// `gpu` picks OptiX on RTX cards (which have the ray-tracing cores it
/// needs) and CUDA on others; without a GPU every request renders on the CPU.
pub fn choose(requested: &str, gpus: &[Gpu]) -> CyclesDevice {
    let Some(first) = gpus.first() else {
        return CyclesDevice::Cpu;
    };
    match requested.to_ascii_lowercase().as_str() {
        "cuda" => CyclesDevice::Cuda,
        "optix" => CyclesDevice::Optix,
        "gpu" if first.name.contains("RTX") => CyclesDevice::Optix,
        "gpu" => CyclesDevice::Cuda,
        _ => CyclesDevice::Cpu,
    }
}

/// Replaces the value of `--cycles-device` after `--` in Blender's
/// arguments with the device chosen for this worker; `None` when the
/// arguments ask for no device, or for one the worker does not manage.
pub fn resolve_cycles_device(args: &mut [String], gpus: &[Gpu]) -> Option<CyclesDevice> {
    let script = args.iter().position(|a| a == "--")?;
    resolve_option(&mut args[script + 1..], CYCLES_DEVICE, gpus)
}

/// The same for `kiln-blender-variant`'s own `--device` option (before any `--`).
pub fn resolve_variant_device(args: &mut [String], gpus: &[Gpu]) -> Option<CyclesDevice> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    resolve_option(&mut args[..end], "--device", gpus)
}

fn resolve_option(args: &mut [String], flag: &str, gpus: &[Gpu]) -> Option<CyclesDevice> {
    let at = args.iter().position(|a| a == flag)?;
    let value = args.get_mut(at + 1)?;
    if !matches!(
        value.to_ascii_lowercase().as_str(),
        "cpu" | "gpu" | "cuda" | "optix"
    ) {
        return None;
    }
    let device = choose(value, gpus);
    *value = device.blender_name().to_owned();
    Some(device)
}

/// What the worker advertises: `(count, memory of its smallest GPU)`,
/// unless the operator configured the figures.
pub fn advertised(configured: (u32, u64), gpus: &[Gpu]) -> (u32, u64) {
    if configured.0 > 0 {
        return configured;
    }
    let count = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
    let memory = gpus.iter().map(|g| g.memory_bytes).min().unwrap_or(0);
    (count, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_nvidia_smi_output_robustly() {
        let output = "NVIDIA GeForce RTX 4090, 24564\n\
                      Tesla T4, 15360\r\n\
                      \n\
                      NVIDIA A100-SXM4-80GB, [N/A]\n\
                      Failed to initialize NVML: Driver/library version mismatch\n\
                      , 1024\n";
        assert_eq!(
            parse_nvidia_smi(output),
            vec![
                Gpu {
                    name: "NVIDIA GeForce RTX 4090".into(),
                    memory_bytes: 24564 * MIB
                },
                Gpu {
                    name: "Tesla T4".into(),
                    memory_bytes: 15360 * MIB
                },
            ]
        );
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[tokio::test]
    async fn a_missing_nvidia_smi_means_no_gpus() {
        assert!(
            detect_nvidia(Path::new("/nonexistent/nvidia-smi"))
                .await
                .is_empty()
        );
    }

    #[test]
    fn renders_on_a_gpu_only_when_asked_and_present() {
        let rtx = [Gpu {
            name: "NVIDIA GeForce RTX 3080".into(),
            memory_bytes: 10 << 30,
        }];
        let t4 = [Gpu {
            name: "Tesla T4".into(),
            memory_bytes: 16 << 30,
        }];
        assert_eq!(choose("gpu", &[]), CyclesDevice::Cpu);
        assert_eq!(choose("optix", &[]), CyclesDevice::Cpu);
        assert_eq!(choose("gpu", &rtx), CyclesDevice::Optix);
        assert_eq!(choose("gpu", &t4), CyclesDevice::Cuda);
        assert_eq!(choose("CUDA", &rtx), CyclesDevice::Cuda);
        assert_eq!(choose("cpu", &rtx), CyclesDevice::Cpu);
    }

    #[test]
    fn rewrites_the_requested_device() {
        let mut args = strings(&["s.blend", "-f", "1", "--", "--cycles-device", "gpu"]);
        assert_eq!(
            resolve_cycles_device(&mut args, &[]),
            Some(CyclesDevice::Cpu)
        );
        assert_eq!(args[5], "CPU");
        let mut before_script = strings(&["s.blend", "--cycles-device", "gpu", "-f", "1"]);
        assert_eq!(resolve_cycles_device(&mut before_script, &[]), None);
        let mut variant = strings(&["s.blend", "--row", "a", "--device", "gpu", "-f", "1"]);
        assert_eq!(
            resolve_variant_device(&mut variant, &[]),
            Some(CyclesDevice::Cpu)
        );
        assert_eq!(variant[4], "CPU");
        let mut other = strings(&["s.blend", "--", "--cycles-device", "METAL"]);
        assert_eq!(resolve_cycles_device(&mut other, &[]), None);
        assert_eq!(other[3], "METAL");
    }

    #[test]
    fn advertises_detected_gpus_unless_configured() {
        let gpus = [
            Gpu {
                name: "a".into(),
                memory_bytes: 8 << 30,
            },
            Gpu {
                name: "b".into(),
                memory_bytes: 4 << 30,
            },
        ];
        assert_eq!(advertised((0, 0), &gpus), (2, 4 << 30));
        assert_eq!(advertised((1, 2 << 30), &gpus), (1, 2 << 30));
        assert_eq!(advertised((0, 0), &[]), (0, 0));
    }
}
