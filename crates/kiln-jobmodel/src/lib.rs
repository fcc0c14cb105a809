//! Kiln's job model.
//!
//! A job is an [Open Job Description](https://github.com/OpenJobDescription)
//! job template (schema `jobtemplate-2023-09`, with the `TASK_CHUNKING`
//! extension) plus parameter values. Parsing and validation are done by the
//! `openjd-model` crate; this crate turns a validated job into a [`JobPlan`]:
//! steps in dependency order, each with its tasks' resolved command lines.

mod builtin;
mod error;
mod frames;
mod plan;
mod session_step;
mod variants;

pub use builtin::{BUILTIN_TEMPLATES, TemplateLibrary, builtin_template};
pub use error::JobModelError;
pub use frames::{blender_frame_arg, parse_frame_list};
pub use openjd_expr::path_mapping::{PathFormat, PathMappingRule};
pub use openjd_model::job::{AmountRequirement, AttributeRequirement, HostRequirements};
pub use plan::{JobPlan, Limits, PathParameter, StepPlan, TaskPlan, path_parameters, plan_job};
pub use session_step::{
    JOB_ROOT, MAX_PATH_MAPPING_RULES, OutputPath, SessionStep, check_path_mapping_rules,
    task_symbols_from_json,
};
pub use variants::{MAX_ROWS, VariantRow, VariantTable, validate_row_id, variants_template};

/// The placeholder left in task arguments for the worker to fill in: only the
/// worker knows where a task's working directory is.
pub const WORKING_DIRECTORY_PLACEHOLDER: &str = "{{Session.WorkingDirectory}}";

/// The "renderer" of steps that run through the OpenJD session model: only
/// workers that offer it (they can contain any program) take their tasks.
pub const SESSION_COMMAND: &str = "openjd";
