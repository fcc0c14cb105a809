//! The prepare stage: the device a render uses on this worker, the inputs
//! placed in the task's working directory, and the command line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kiln_proto::v1::TaskAssignment;

use crate::assets::AssetStore;
use crate::command::{self, CommandKind, Invocation, RendererPaths};
use crate::devices::{self, CyclesDevice, Gpu};
use crate::variant;
use crate::workdir::{self, InputCache, OUTPUTS_DIR, TaskDir};

/// A task ready to run.
#[derive(Debug)]
pub struct Prepared {
    pub invocation: Invocation,
    /// Inputs placed under `outputs/`, which are not outputs of this task.
    pub input_outputs: HashSet<PathBuf>,
}

/// The assignment with its Cycles device request (`-- --cycles-device
/// cpu|gpu`, or a variant's `--device`) replaced by the device this worker
/// renders it on, and that device.
pub fn choose_device(
    assignment: &TaskAssignment,
    gpus: &[Gpu],
) -> (TaskAssignment, Option<CyclesDevice>) {
    let mut assignment = assignment.clone();
    let device = match assignment.command.as_str() {
        "blender" => devices::resolve_cycles_device(&mut assignment.args, gpus),
        variant::COMMAND => devices::resolve_variant_device(&mut assignment.args, gpus),
        _ => None,
    };
    if let Some(device) = device {
        tracing::info!(device = device.name(), "cycles device chosen");
    }
    (assignment, device)
}

/// Builds the command line and places the inputs; on error, the message
/// the task fails with.
pub async fn prepare<A: AssetStore>(
    assignment: &TaskAssignment,
    dir: &TaskDir,
    renderers: &RendererPaths,
    cache: &InputCache,
    assets: &A,
) -> Result<Prepared, String> {
    let invocation = command::build(&assignment.command, &assignment.args, dir.path(), renderers)
        .map_err(|error| error.to_string())?;
    let mut input_outputs = HashSet::new();
    for input in &assignment.inputs {
        let relative =
            workdir::relative_input_path(&input.path).map_err(|error| error.to_string())?;
        cache
            .place(assets, &input.digest, &relative, dir)
            .await
            .map_err(|error| error.to_string())?;
        if let Ok(inside) = relative.strip_prefix(OUTPUTS_DIR) {
            input_outputs.insert(inside.to_path_buf());
        }
    }
    if invocation.kind == CommandKind::BlenderVariant {
        write_variant_driver(dir.path()).await?;
    }
    Ok(Prepared {
        invocation,
        input_outputs,
    })
}

/// Writes the trusted variant driver into the task's directory, replacing
/// whatever an input placed there (inputs are hard links into the cache,
/// which must not be written through).
async fn write_variant_driver(workdir: &Path) -> Result<(), String> {
    let path = variant::driver_path(workdir);
    let cannot = |e: std::io::Error| format!("cannot write the variant driver: {e}");
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(cannot)?;
    }
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(e)),
    }
    tokio::fs::write(&path, variant::DRIVER)
        .await
        .map_err(cannot)
}
