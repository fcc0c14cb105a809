//! `kiln-blender-variant`: Blender rendering one row of a variant table.
//! The worker runs Blender with its own trusted script (`variant_driver.py`,
//! through `--python` while `-Y` still blocks scripts in the .blend), which
//! reads the row from the job's JSON table and sets text bodies and image
//! files; the template cannot add Python of its own.

use std::path::{Path, PathBuf};

use crate::command::{self, CommandError};
use crate::workdir;

/// The command name templates use.
pub const COMMAND: &str = "kiln-blender-variant";
/// The driver, written into each task's directory before Blender starts.
pub const DRIVER: &str = include_str!("variant_driver.py");
/// Where the driver goes, relative to the task's directory.
pub const DRIVER_PATH: &str = ".kiln/variant_driver.py";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariantError {
    #[error("kiln-blender-variant: {0} is required")]
    Missing(&'static str),
    #[error("kiln-blender-variant: option {0} lacks its value")]
    NoValue(String),
    #[error("kiln-blender-variant: the variant table {0:?} must be inside the working directory")]
    Table(String),
    #[error("kiln-blender-variant: {0}")]
    RowId(String),
    #[error("kiln-blender-variant: arguments after '--' are the worker's")]
    ScriptArgs,
    #[error("kiln-blender-variant: {0}")]
    Blender(String),
}

/// Blender's argv for a variant render: the template's Blender arguments
/// (checked as for `blender`), the driver right after the scene so it runs
/// before any `-f`, and the table and row for the driver after `--`, then
/// Cycles' device when `--device` gave one.
pub fn blender_args(args: &[String], workdir: &Path) -> Result<Vec<String>, VariantError> {
    let mut table = None;
    let mut row = None;
    let mut device = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let slot = match arg.as_str() {
            "--" => return Err(VariantError::ScriptArgs),
            "--variants" => &mut table,
            "--row" => &mut row,
            "--device" => &mut device,
            _ => {
                rest.push(arg.clone());
                continue;
            }
        };
        *slot = Some(
            iter.next()
                .cloned()
                .ok_or_else(|| VariantError::NoValue(arg.clone()))?,
        );
    }
    let table = table.ok_or(VariantError::Missing("--variants"))?;
    let row = row.ok_or(VariantError::Missing("--row"))?;
    kiln_jobmodel::validate_row_id(&row).map_err(|e| VariantError::RowId(e.to_string()))?;
    let inside = Path::new(&table)
        .strip_prefix(workdir)
        .ok()
        .and_then(|relative| workdir::relative_input_path(&relative.to_string_lossy()).ok())
        .is_some();
    if !inside {
        return Err(VariantError::Table(table));
    }
    let mut blender = command::blender_args(&rest, false)
        .map_err(|error: CommandError| VariantError::Blender(error.to_string()))?;
    if blender.len() < 3 {
        return Err(VariantError::Missing("the scene"));
    }
    // `-b -Y scene`, then the driver, then the template's render options.
    let driver = driver_path(workdir).to_string_lossy().into_owned();
    blender.splice(3..3, ["--python".to_owned(), driver]);
    blender.extend(["--".to_owned(), table, row]);
    // Cycles reads its device from anywhere after `--`; the task runner has
    // already replaced the template's cpu/gpu with this worker's choice.
    if let Some(device) = device {
        blender.extend(["--cycles-device".to_owned(), device]);
    }
    Ok(blender)
}

/// The driver's place in the task directory `workdir`.
pub fn driver_path(workdir: &Path) -> PathBuf {
    workdir.join(DRIVER_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn runs_the_driver_before_rendering_with_the_row_after_double_dash() {
        let args = strings(&[
            "/w/scene.blend",
            "--variants",
            "/w/variants.json",
            "--row",
            "alice",
            "-o",
            "/w/outputs/variants/alice/frames/frame_####",
            "-f",
            "1..4",
            "--device",
            "CPU",
        ]);
        assert_eq!(
            blender_args(&args, Path::new("/w")),
            Ok(strings(&[
                "-b",
                "-Y",
                "/w/scene.blend",
                "--python",
                "/w/.kiln/variant_driver.py",
                "-o",
                "/w/outputs/variants/alice/frames/frame_####",
                "-f",
                "1..4",
                "--",
                "/w/variants.json",
                "alice",
                "--cycles-device",
                "CPU",
            ]))
        );
    }

    #[test]
    fn refuses_traversal_foreign_tables_and_python() {
        let base = |row: &str, table: &str| {
            strings(&[
                "/w/scene.blend",
                "--variants",
                table,
                "--row",
                row,
                "-f",
                "1",
            ])
        };
        let w = Path::new("/w");
        assert!(matches!(
            blender_args(&base("../../etc", "/w/v.json"), w),
            Err(VariantError::RowId(_))
        ));
        assert!(matches!(
            blender_args(&base("a", "/etc/v.json"), w),
            Err(VariantError::Table(_))
        ));
        assert!(matches!(
            blender_args(&base("a", "/w/../etc/v.json"), w),
            Err(VariantError::Table(_))
        ));
        let mut python = base("a", "/w/v.json");
        python.extend(strings(&["--python-expr", "import os"]));
        assert!(matches!(
            blender_args(&python, w),
            Err(VariantError::Blender(_))
        ));
        let mut script = base("a", "/w/v.json");
        script.push("--".to_owned());
        assert_eq!(blender_args(&script, w), Err(VariantError::ScriptArgs));
    }
}
