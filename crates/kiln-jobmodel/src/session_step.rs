//! Steps that run through the OpenJD session model on the worker.
//!
//! Kiln's own commands (`blender`, `ffmpeg`, `natron`, `kiln-*`) with a
//! plain command line are resolved at submission into argv, as before. Every
//! other step — embedded files, job or step environments, any program, PATH
//! parameters — runs as written: the worker gets the step's script, its
//! environments and the task's parameter values, and resolves `Task.File.*`,
//! `Env.File.*`, `Session.*` and path-mapped `Param.*` when it runs the task.

use openjd_expr::SerializedSymbolTable;
use openjd_expr::path_mapping::PathMappingRule;
use openjd_model::job::{Environment, StepScript};
use serde::{Deserialize, Serialize};

/// Where relative PATH parameter values are anchored at submission. The
/// worker maps this root onto the session's working directory, so
/// `./output` ends up as `<session>/output` on whichever worker runs it.
pub const JOB_ROOT: &str = "/kiln-job-root";

/// Most embedded files one script (step or environment) may have.
pub const MAX_EMBEDDED_FILES: usize = 32;
/// Most job plus step environments one step may run in.
pub const MAX_ENVIRONMENTS: usize = 16;
/// Most declared variables per environment.
pub const MAX_VARIABLES: usize = 256;
/// Most path-mapping rules a job may carry.
pub const MAX_PATH_MAPPING_RULES: usize = 64;
/// Longest source or destination path of a rule, in bytes.
const MAX_RULE_PATH_BYTES: usize = 4096;

/// Everything a worker needs to run the tasks of one step as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStep {
    pub job_name: String,
    pub step_name: String,
    pub script: StepScript,
    /// `Param.*` (except PATH ones), `RawParam.*`, `Job.Name`, `Step.Name`.
    pub symbols: Option<SerializedSymbolTable>,
    /// Entered first, in order, and kept while the job's tasks follow on the same worker.
    pub job_environments: Vec<Environment>,
    /// Entered after the job's, for this step only.
    pub step_environments: Vec<Environment>,
    /// The job's PATH parameters with `dataFlow: OUT` or `INOUT`: created
    /// before each task (a directory, or a file's directory) and collected
    /// as outputs after it.
    pub outputs: Vec<OutputPath>,
    /// The submitter's rules, applied to PATH values; a relative destination
    /// is inside the session's working directory.
    pub path_mapping_rules: Vec<PathMappingRule>,
}

impl SessionStep {
    pub fn to_json(&self) -> String {
        // Only strings, numbers and maps: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("invalid step script: {e}"))
    }
}

/// A PATH parameter's value the job writes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPath {
    /// The raw value, as given at submission (relative ones under [`JOB_ROOT`]).
    pub path: String,
    /// Whether it names a directory (`objectType: DIRECTORY`); otherwise a file.
    pub directory: bool,
}

/// A task's parameter values (`Task.Param.*`, `Task.RawParam.*`) as a
/// serialised symbol table.
pub fn task_symbols_from_json(json: &str) -> Result<SerializedSymbolTable, String> {
    SerializedSymbolTable::from_json_str(json).map_err(|e| format!("invalid task parameters: {e}"))
}

/// Checks the rules a submission gives: absolute sources, no `..` in
/// destinations, bounded sizes. Relative destinations are inside the
/// session's working directory; absolute ones are taken as they are.
pub fn check_path_mapping_rules(rules: &[PathMappingRule]) -> Result<(), String> {
    if rules.len() > MAX_PATH_MAPPING_RULES {
        return Err(format!(
            "{} path-mapping rules, more than the limit of {MAX_PATH_MAPPING_RULES}",
            rules.len()
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = |what: &str| format!("path-mapping rule {i}: {what}");
        if rule.source_path.is_empty() || rule.source_path.len() > MAX_RULE_PATH_BYTES {
            return Err(at("source_path must be 1 to 4096 bytes"));
        }
        if rule.destination_path.len() > MAX_RULE_PATH_BYTES {
            return Err(at("destination_path must be at most 4096 bytes"));
        }
        if rule
            .destination_path
            .split(['/', '\\'])
            .any(|part| part == "..")
        {
            return Err(at("destination_path must not contain '..'"));
        }
        if rule.destination_path.starts_with(JOB_ROOT) || rule.source_path.contains('\0') {
            return Err(at("reserved path"));
        }
    }
    Ok(())
}

/// Bounds on what a script may ask of a worker.
pub(crate) fn check_bounds(step: &SessionStep) -> Result<(), String> {
    let environments = step.job_environments.len() + step.step_environments.len();
    if environments > MAX_ENVIRONMENTS {
        return Err(format!(
            "runs in {environments} environments, more than the limit of {MAX_ENVIRONMENTS}"
        ));
    }
    let files = step.script.embedded_files.as_ref().map_or(0, Vec::len);
    if files > MAX_EMBEDDED_FILES {
        return Err(format!(
            "has {files} embedded files, more than the limit of {MAX_EMBEDDED_FILES}"
        ));
    }
    for environment in step.job_environments.iter().chain(&step.step_environments) {
        let files = environment
            .script
            .as_ref()
            .and_then(|s| s.embedded_files.as_ref())
            .map_or(0, Vec::len);
        if files > MAX_EMBEDDED_FILES {
            return Err(format!(
                "environment {:?} has {files} embedded files, more than the limit of {MAX_EMBEDDED_FILES}",
                environment.name
            ));
        }
        let variables = environment.variables.as_ref().map_or(0, |v| v.len());
        if variables > MAX_VARIABLES {
            return Err(format!(
                "environment {:?} sets {variables} variables, more than the limit of {MAX_VARIABLES}",
                environment.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openjd_expr::path_mapping::PathFormat;

    fn rule(source: &str, destination: &str) -> PathMappingRule {
        PathMappingRule {
            source_path_format: PathFormat::Posix,
            source_path: source.to_owned(),
            destination_path: destination.to_owned(),
        }
    }

    #[test]
    fn rules_may_not_climb_out_of_the_session() {
        assert!(check_path_mapping_rules(&[rule("/mnt/projects", "assetroot-0")]).is_ok());
        let error = check_path_mapping_rules(&[rule("/mnt", "../../etc")]);
        assert!(error.is_err_and(|e| e.contains("'..'")));
        let error = check_path_mapping_rules(&[rule("", "x")]);
        assert!(error.is_err_and(|e| e.contains("source_path")));
    }

    #[test]
    fn too_many_rules_are_refused() {
        let rules = vec![rule("/a", "b"); MAX_PATH_MAPPING_RULES + 1];
        assert!(check_path_mapping_rules(&rules).is_err_and(|e| e.contains("limit")));
    }
}
