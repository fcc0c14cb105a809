//! From a template and parameter values to steps and tasks.

use std::collections::{BTreeMap, HashMap};

use openjd_expr::path_mapping::PathMappingRule;
use openjd_expr::{ExprValue, FormatStringOptions, PathFormat, SerializedSymbolTable, SymbolTable};
use openjd_model::job::{HostRequirements, Job, Step};
use openjd_model::template::parse::document_string_to_object;
use openjd_model::{
    CallerLimits, DataFlow, DocumentType, PathParameterOptions, StepDependencyGraph,
    StepParameterSpaceIterator, create_job, decode_job_template, preprocess_job_parameters,
};

use crate::frames::{blender_frame_arg, parse_frame_list};
use crate::session_step::{self, JOB_ROOT, OutputPath, SessionStep};
use crate::{JobModelError, WORKING_DIRECTORY_PLACEHOLDER};

/// Extensions of the OpenJD schema Kiln understands.
const SUPPORTED_EXTENSIONS: &[&str] = &["TASK_CHUNKING"];

/// Commands that run Blender and read its `-f` frame syntax.
const BLENDER_COMMANDS: &[&str] = &["blender", "kiln-blender-variant"];

/// Programs the worker runs itself, with what it knows of them (Blender's
/// `-b -Y`, frames, devices, warm sessions; its own encode and check). A
/// step of one of these with a plain command line keeps that treatment;
/// every other step runs through the OpenJD session model.
const KILN_COMMANDS: &[&str] = &[
    "blender",
    "ffmpeg",
    "natron",
    "kiln-encode",
    "kiln-check",
    "kiln-blender-variant",
];

/// The task parameter whose values are frame numbers.
const FRAME_PARAMETER: &str = "Frame";

/// Bounds on what one submission may create.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tasks: usize,
    pub max_template_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tasks: 100_000,
            max_template_bytes: 256 * 1024,
        }
    }
}

/// A validated job, ready to be stored.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub name: String,
    /// In dependency order: a step comes after every step it depends on.
    pub steps: Vec<StepPlan>,
}

#[derive(Debug, Clone)]
pub struct StepPlan {
    pub name: String,
    pub depends_on: Vec<String>,
    pub host_requirements: Option<HostRequirements>,
    pub tasks: Vec<TaskPlan>,
    /// The script the worker runs as written; `None` for a Kiln command
    /// line resolved here.
    pub session: Option<SessionStep>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// Renderer name, e.g. "blender"; [`crate::SESSION_COMMAND`] for a
    /// session step.
    pub command: String,
    /// Arguments, resolved except for [`WORKING_DIRECTORY_PLACEHOLDER`];
    /// empty for a session step.
    pub args: Vec<String>,
    /// Frames the task renders; empty for steps without a `Frame` parameter.
    pub frames: Vec<i64>,
    /// The task's parameter values as text, e.g. {"Frame": "1-4"}.
    pub parameters: BTreeMap<String, String>,
    /// For a session step: `Task.Param.*` and `Task.RawParam.*`, serialised.
    pub symbols: Option<String>,
}

impl JobPlan {
    pub fn task_count(&self) -> usize {
        self.steps.iter().map(|s| s.tasks.len()).sum()
    }
}

/// Validates `template` (YAML or JSON) with `parameters` and expands it into
/// tasks. `path_mapping_rules` are the submitter's, for steps run as written.
pub fn plan_job(
    template: &str,
    parameters: &HashMap<String, String>,
    path_mapping_rules: &[PathMappingRule],
    limits: Limits,
) -> Result<JobPlan, JobModelError> {
    if template.len() > limits.max_template_bytes {
        return Err(JobModelError::Template(format!(
            "template is {} bytes, more than the limit of {}",
            template.len(),
            limits.max_template_bytes
        )));
    }
    session_step::check_path_mapping_rules(path_mapping_rules).map_err(JobModelError::Template)?;
    let (job, outputs) = instantiate(template, parameters)?;
    let context = JobContext {
        job: &job,
        outputs,
        path_mapping_rules,
    };
    let order = StepDependencyGraph::new(&job)
        .and_then(|graph| graph.topo_sorted_names())
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    let mut steps = Vec::with_capacity(order.len());
    let mut tasks_so_far = 0;
    for name in order {
        let Some(step) = job.steps.iter().find(|s| s.name == name) else {
            continue;
        };
        let plan = plan_step(&context, step, limits.max_tasks - tasks_so_far)?;
        tasks_so_far += plan.tasks.len();
        steps.push(plan);
    }
    Ok(JobPlan {
        name: job.name.clone(),
        steps,
    })
}

/// Checks that `template` is a valid OpenJD job template Kiln can run,
/// without parameter values.
pub(crate) fn check_template(template: &str, max_bytes: usize) -> Result<(), JobModelError> {
    if template.len() > max_bytes {
        return Err(JobModelError::Template(format!(
            "template is {} bytes, more than the limit of {max_bytes}",
            template.len()
        )));
    }
    let limits = CallerLimits::default();
    let document = document_string_to_object(template, DocumentType::Yaml, &limits)
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    decode_job_template(document, Some(SUPPORTED_EXTENSIONS), &limits)
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    Ok(())
}

/// What every step of a job shares.
struct JobContext<'a> {
    job: &'a Job,
    /// The PATH parameters whose data flows out.
    outputs: Vec<OutputPath>,
    path_mapping_rules: &'a [PathMappingRule],
}

/// The job, and the values of its PATH parameters with `dataFlow` OUT or INOUT.
fn instantiate(
    template: &str,
    parameters: &HashMap<String, String>,
) -> Result<(Job, Vec<OutputPath>), JobModelError> {
    let limits = CallerLimits::default();
    let document = document_string_to_object(template, DocumentType::Yaml, &limits)
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    let template = decode_job_template(document, Some(SUPPORTED_EXTENSIONS), &limits)
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    let inputs = parameters
        .iter()
        .map(|(k, v)| (k.clone(), ExprValue::String(v.clone())))
        .collect();
    // Relative PATH values are anchored at JOB_ROOT, which the worker maps
    // onto the session's working directory: Kiln jobs refer to their files
    // by their place there, never by the submitter's disk.
    let path_options = PathParameterOptions::new(JOB_ROOT, JOB_ROOT);
    let values = preprocess_job_parameters(&template, &inputs, &[], &path_options)
        .map_err(|e| JobModelError::Parameters(e.to_string()))?;
    let job =
        create_job(&template, &values, &template.default_validation_context()).map_err(|e| {
            JobModelError::Parameters(format!("{e} (values given: {})", describe(parameters)))
        })?;
    let outputs = template
        .parameter_definitions_list()
        .iter()
        .filter(|d| matches!(d.path_properties().1, Some(DataFlow::Out | DataFlow::Inout)))
        .filter_map(|d| {
            let directory = d.path_properties().0 == Some(openjd_model::ObjectType::Directory);
            Some((values.get(d.name())?, directory))
        })
        .flat_map(|(v, directory)| {
            let paths = match &v.value {
                ExprValue::String(s) => vec![s.clone()],
                ExprValue::Path { value, .. } => vec![value.clone()],
                ExprValue::ListString(items, _) | ExprValue::ListPath(items, _, _) => items.clone(),
                _ => Vec::new(),
            };
            paths
                .into_iter()
                .map(move |path| OutputPath { path, directory })
        })
        .collect();
    Ok((job, outputs))
}

/// The parameter values as `Name="value"`, sorted, so an error that cannot
/// name the faulty parameter still shows what was asked for.
fn describe(parameters: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = parameters
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    pairs.sort();
    pairs.join(", ")
}

fn plan_step(
    context: &JobContext<'_>,
    step: &Step,
    task_budget: usize,
) -> Result<StepPlan, JobModelError> {
    let step_error = |message: String| JobModelError::Step {
        step: step.name.clone(),
        message,
    };
    let task_sets: Vec<_> = match &step.parameter_space {
        Some(space) => {
            let iter =
                StepParameterSpaceIterator::new(space).map_err(|e| step_error(e.to_string()))?;
            // The size is known up front (0 for adaptive chunking): refuse a
            // billion-frame range at once rather than after counting past the limit.
            if iter.len() > task_budget {
                return Err(JobModelError::TooManyTasks {
                    tasks: iter.len(),
                    limit: task_budget,
                });
            }
            let tasks: Vec<_> = iter.take(task_budget.saturating_add(1)).collect();
            if tasks.len() > task_budget {
                return Err(JobModelError::TooManyTasks {
                    tasks: tasks.len(),
                    limit: task_budget,
                });
            }
            tasks
        }
        None => vec![Default::default()],
    };
    let mut symbols = match &step.resolved_symtab {
        Some(table) => table.to_symtab(PathFormat::host()).map_err(step_error)?,
        None => Default::default(),
    };
    symbols
        .set(
            "Session.WorkingDirectory",
            ExprValue::String(WORKING_DIRECTORY_PLACEHOLDER.to_owned()),
        )
        .map_err(|e| step_error(e.to_string()))?;
    let (tasks, session) = match runs_as_kiln_command(context.job, step, &symbols) {
        true => {
            let tasks = task_sets
                .iter()
                .map(|set| plan_task(step, &symbols, set).map_err(step_error))
                .collect::<Result<_, _>>()?;
            (tasks, None)
        }
        false => {
            let session = session_step(context, step);
            session_step::check_bounds(&session).map_err(step_error)?;
            let tasks = task_sets
                .iter()
                .map(|set| plan_session_task(set).map_err(step_error))
                .collect::<Result<_, _>>()?;
            (tasks, Some(session))
        }
    };
    Ok(StepPlan {
        session,
        name: step.name.clone(),
        depends_on: step
            .dependencies
            .iter()
            .flatten()
            .map(|d| d.depends_on.clone())
            .collect(),
        host_requirements: step.host_requirements.clone(),
        tasks,
    })
}

/// Whether a step is a plain command line of a program Kiln knows, which
/// is resolved here; anything else runs through the session model. A
/// command line that needs a value only the worker knows (a PATH
/// parameter, a session value other than the working directory) is not
/// plain.
fn runs_as_kiln_command(job: &Job, step: &Step, symbols: &SymbolTable) -> bool {
    let script = &step.script;
    let action = &script.actions.on_run;
    let worker_values = std::iter::once(&action.command)
        .chain(action.args.iter().flatten())
        .flat_map(|arg| arg.accessed_symbols())
        .any(|symbol| !symbol.starts_with("Task.") && !symbols.contains(&symbol));
    job.job_environments.as_ref().is_none_or(Vec::is_empty)
        && step.step_environments.as_ref().is_none_or(Vec::is_empty)
        && script.embedded_files.as_ref().is_none_or(Vec::is_empty)
        && script.let_bindings.as_ref().is_none_or(Vec::is_empty)
        && action.timeout.is_none()
        && action.cancelation.is_none()
        && KILN_COMMANDS.contains(&action.command.raw())
        && !worker_values
}

fn session_step(context: &JobContext<'_>, step: &Step) -> SessionStep {
    SessionStep {
        job_name: context.job.name.clone(),
        step_name: step.name.clone(),
        script: step.script.clone(),
        symbols: step.resolved_symtab.clone(),
        job_environments: context.job.job_environments.clone().unwrap_or_default(),
        step_environments: step.step_environments.clone().unwrap_or_default(),
        outputs: context.outputs.clone(),
        path_mapping_rules: context.path_mapping_rules.to_vec(),
    }
}

/// A task of a session step: its parameter values, for the worker to
/// resolve the script with.
fn plan_session_task(set: &openjd_model::TaskParameterSet) -> Result<TaskPlan, String> {
    let mut symbols = SymbolTable::new();
    let mut parameters = BTreeMap::new();
    let mut frames = Vec::new();
    for (name, value) in set {
        // A PATH value travels as a path, so the worker knows to map it.
        let typed = match (&value.param_type, &value.value) {
            (openjd_model::TaskParameterType::Path, ExprValue::String(path)) => {
                ExprValue::new_path(path.clone(), PathFormat::Posix)
            }
            _ => value.value.clone(),
        };
        symbols
            .set(&format!("Task.Param.{name}"), typed)
            .map_err(|e| e.to_string())?;
        symbols
            .set(&format!("Task.RawParam.{name}"), value.value.clone())
            .map_err(|e| e.to_string())?;
        let text = value.value.to_display_string();
        if name == FRAME_PARAMETER {
            frames = parse_frame_list(&text).unwrap_or_default();
        }
        parameters.insert(name.clone(), text);
    }
    let symbols = SerializedSymbolTable::from_symtab(&symbols);
    Ok(TaskPlan {
        command: crate::SESSION_COMMAND.to_owned(),
        args: Vec::new(),
        frames,
        parameters,
        symbols: Some(symbols.as_value().to_string()),
    })
}

fn plan_task(
    step: &Step,
    step_symbols: &openjd_expr::SymbolTable,
    set: &openjd_model::TaskParameterSet,
) -> Result<TaskPlan, String> {
    let mut symbols = step_symbols.clone();
    let mut parameters = BTreeMap::new();
    let mut frames = Vec::new();
    for (name, value) in set {
        symbols
            .set(&format!("Task.Param.{name}"), value.value.clone())
            .map_err(|e| e.to_string())?;
        symbols
            .set(&format!("Task.RawParam.{name}"), value.value.clone())
            .map_err(|e| e.to_string())?;
        let text = value.value.to_display_string();
        if name == FRAME_PARAMETER {
            frames = parse_frame_list(&text).map_err(|e| e.to_string())?;
        }
        parameters.insert(name.clone(), text);
    }
    let action = &step.script.actions.on_run;
    let options = FormatStringOptions::new();
    let command = action
        .command
        .resolve_string_with(&symbols, &options)
        .map_err(|e| e.to_string())?;
    let mut args = action
        .args
        .iter()
        .flatten()
        .map(|arg| {
            arg.resolve_string_with(&symbols, &options)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if BLENDER_COMMANDS.contains(&command.as_str()) {
        rewrite_blender_frames(&mut args, &frames);
    }
    Ok(TaskPlan {
        command,
        args,
        frames,
        parameters,
        symbols: None,
    })
}

/// OpenJD writes a chunk as "1-4"; Blender's `-f` reads "1..4", and would take
/// "1-4" as a negative offset.
fn rewrite_blender_frames(args: &mut [String], frames: &[i64]) {
    if frames.is_empty() {
        return;
    }
    for i in 1..args.len() {
        if matches!(args[i - 1].as_str(), "-f" | "--render-frame")
            && let Ok(listed) = parse_frame_list(&args[i])
        {
            args[i] = blender_frame_arg(&listed);
        }
    }
}

/// A PATH parameter of a template, as a job bundle's submitter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParameter {
    pub name: String,
    /// The template's default, if any (relative to the template's directory).
    pub default: Option<String>,
    /// Whether the job reads what the path names.
    pub reads: bool,
    /// Whether the job writes there (OUT or INOUT): collected as outputs.
    pub writes: bool,
    /// Whether it names a directory (rather than a file or either).
    pub directory: bool,
}

/// The PATH parameters of `template` (YAML or JSON), checked like a submission.
pub fn path_parameters(
    template: &str,
    max_bytes: usize,
) -> Result<Vec<PathParameter>, JobModelError> {
    check_template(template, max_bytes)?;
    let limits = CallerLimits::default();
    let document = document_string_to_object(template, DocumentType::Yaml, &limits)
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    let template = decode_job_template(document, Some(SUPPORTED_EXTENSIONS), &limits)
        .map_err(|e| JobModelError::Template(e.to_string()))?;
    Ok(template
        .parameter_definitions_list()
        .iter()
        .filter(|d| d.type_name() == "PATH")
        .map(|d| {
            let (object_type, data_flow) = d.path_properties();
            PathParameter {
                name: d.name().to_owned(),
                default: d.default_value(),
                reads: matches!(data_flow, Some(DataFlow::In | DataFlow::Inout)),
                writes: matches!(data_flow, Some(DataFlow::Out | DataFlow::Inout)),
                directory: matches!(object_type, Some(openjd_model::ObjectType::Directory)),
            }
        })
        .collect())
}
