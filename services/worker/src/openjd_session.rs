//! One OpenJD session on this worker: a working directory shared by
//! consecutive tasks of a job, and the job and step environments entered
//! in it. Environments are entered once and stay entered while the next
//! task is of the same job (job environments) and step (step
//! environments); they are exited, last first, when the session moves to
//! another step or ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_jobmodel::SessionStep;
use openjd_expr::SerializedSymbolTable;
use openjd_model::job::Environment;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::openjd_messages::{self, Message};
use crate::sandbox::{Sandbox, TaskSandbox};
use crate::session_action::{self, ActionEnd, ActionSpec};
use crate::session_files;
use crate::session_symbols::{self, PathMapping};
use crate::task::supervise::Rules;

/// Where a session keeps its own files (embedded files, the path-mapping
/// rules), inside its working directory; never collected as outputs.
pub const PRIVATE_DIR: &str = ".openjd";
/// How long an environment's `onExit` may run when the session ends.
const EXIT_LIMIT_SECONDS: u32 = 300;

/// Most `openjd_env`/`openjd_unset_env` one `onEnter` may issue.
const MAX_EXPORTS: usize = 256;

static NEXT_FILES_DIR: AtomicU64 = AtomicU64::new(0);

/// Which environments an entered one belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Job,
    Step(String),
}

struct Entered {
    scope: Scope,
    environment: Environment,
    /// The values its format strings are resolved with: its own, or (for a
    /// step environment, which the model gives none) the step's.
    symbols: Option<SerializedSymbolTable>,
    /// Variables it set (`None`: unset), in order, `variables` first.
    variables: Vec<(String, Option<String>)>,
    files: Vec<(String, PathBuf)>,
}

/// What an action said about itself while it ran.
pub trait ActionWatcher: Send {
    fn line(&mut self, line: &str);
    fn message(&mut self, message: &Message);
}

/// How entering an environment or running a task ended.
pub struct Ran {
    pub end: ActionEnd,
    /// The last `openjd_fail` message.
    pub fail: Option<String>,
}

impl Ran {
    /// Nothing to run, so nothing failed.
    fn ok() -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            end: ActionEnd::Exited(std::process::ExitStatus::from_raw(0)),
            fail: None,
        }
    }

    /// Why it failed, with `what` naming the action; `None` on success.
    pub fn problem(&self, what: &str) -> Option<String> {
        let problem = self.end.problem(what)?;
        Some(match &self.fail {
            Some(fail) => format!("{fail} ({problem})"),
            None => problem,
        })
    }
}

pub struct OpenJdSession {
    id: u64,
    job_id: String,
    /// Where every action of the session runs; held for the session's life.
    sandbox: TaskSandbox,
    /// The worker's own directory for the session (the task's log,
    /// thumbnails), outside anything the sandbox sees.
    scratch: PathBuf,
    dir: PathBuf,
    mapping: PathMapping,
    rules_file: PathBuf,
    entered: Vec<Entered>,
    /// Inputs already placed: path relative to `dir` → digest.
    placed: std::collections::HashMap<PathBuf, String>,
    idle_since: Instant,
}

impl OpenJdSession {
    /// A session of `job_id` in the fresh directory `dir`, with the step's
    /// path-mapping rules (the same for every step of a job).
    pub async fn create(
        id: u64,
        job_id: &str,
        (dir, scratch): (PathBuf, PathBuf),
        step: &SessionStep,
        sandbox: &Sandbox,
        network: bool,
    ) -> Result<Self, String> {
        let cannot = |e: std::io::Error| format!("cannot create the session directory: {e}");
        for place in [&dir, &scratch] {
            if tokio::fs::symlink_metadata(place).await.is_ok() {
                tokio::fs::remove_dir_all(place).await.map_err(cannot)?;
            }
        }
        tokio::fs::create_dir_all(dir.join(PRIVATE_DIR))
            .await
            .map_err(cannot)?;
        tokio::fs::create_dir_all(&scratch).await.map_err(cannot)?;
        let dir = tokio::fs::canonicalize(&dir).await.map_err(cannot)?;
        let sandbox = sandbox
            .enter(&format!("openjd-{id}"), &dir, network)
            .map_err(|e| format!("cannot make the session's sandbox: {e}"))?;
        let mapping = PathMapping::new(&step.path_mapping_rules, &dir);
        let rules_file = dir.join(PRIVATE_DIR).join("path-mapping.json");
        tokio::fs::write(&rules_file, mapping.rules_json())
            .await
            .map_err(|e| format!("cannot write the path-mapping rules: {e}"))?;
        Ok(Self {
            id,
            job_id: job_id.to_owned(),
            sandbox,
            scratch,
            dir,
            mapping,
            rules_file,
            entered: Vec::new(),
            placed: Default::default(),
            idle_since: Instant::now(),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    pub fn sandbox(&self) -> &TaskSandbox {
        &self.sandbox
    }

    pub fn mapping(&self) -> &PathMapping {
        &self.mapping
    }

    pub fn idle_since(&self) -> Instant {
        self.idle_since
    }

    pub fn mark_idle(&mut self) {
        self.idle_since = Instant::now();
    }

    /// Whether the input `relative` with `digest` is already in place.
    pub fn has_input(&self, relative: &Path, digest: &str) -> bool {
        self.placed.get(relative).is_some_and(|d| d == digest)
    }

    pub fn placed_input(&mut self, relative: PathBuf, digest: &str) {
        self.placed.insert(relative, digest.to_owned());
    }

    /// How many environments are entered (for logs and tests).
    pub fn environments_entered(&self) -> usize {
        self.entered.len()
    }

    /// Exits what `step` does not run in, and enters what it needs that
    /// is not entered yet: job environments stay while the job does, step
    /// environments while the step does.
    pub async fn prepare_environments(
        &mut self,
        step: &SessionStep,
        rules: Rules,
        cancel: &CancellationToken,
        watcher: &mut impl ActionWatcher,
    ) -> Ran {
        let wanted: Vec<(Scope, &Environment)> = step
            .job_environments
            .iter()
            .map(|e| (Scope::Job, e))
            .chain(
                step.step_environments
                    .iter()
                    .map(|e| (Scope::Step(step.step_name.clone()), e)),
            )
            .collect();
        let keep = self
            .entered
            .iter()
            .zip(&wanted)
            .take_while(|(entered, (scope, env))| {
                entered.scope == *scope && entered.environment == **env
            })
            .count();
        while self.entered.len() > keep {
            self.exit_last(cancel, watcher).await;
        }
        for (scope, environment) in wanted.into_iter().skip(keep) {
            // The model gives a step environment no values of its own: it
            // shares the step's.
            let symbols = environment
                .resolved_symtab
                .clone()
                .or_else(|| step.symbols.clone());
            let ran = self
                .enter(scope, environment, symbols, rules, cancel, watcher)
                .await;
            if ran.problem("").is_some() {
                return ran;
            }
        }
        Ran::ok()
    }

    async fn enter(
        &mut self,
        scope: Scope,
        environment: &Environment,
        serialized: Option<SerializedSymbolTable>,
        rules: Rules,
        cancel: &CancellationToken,
        watcher: &mut impl ActionWatcher,
    ) -> Ran {
        let failed = |message: String| Ran {
            end: ActionEnd::Failed(message),
            fail: None,
        };
        let name = &environment.name;
        tracing::info!(session = self.id, environment = %name, "entering openjd environment");
        watcher.line(&format!("kiln: entering environment {name}"));
        let mut symbols = match session_symbols::scope_symbols(
            serialized.as_ref(),
            &self.mapping,
            &self.rules_file,
        ) {
            Ok(symbols) => symbols,
            Err(error) => return failed(format!("environment {name}: {error}")),
        };
        let files = match self.write_files(environment, &mut symbols).await {
            Ok(files) => files,
            Err(error) => return failed(format!("environment {name}: {error}")),
        };
        let mut variables = Vec::new();
        let mut declared: Vec<_> = environment.variables.iter().flatten().collect();
        declared.sort_by(|a, b| a.0.cmp(b.0));
        for (variable, value) in declared {
            if !openjd_messages::is_env_name(variable) {
                return failed(format!(
                    "environment {name}: bad variable name {variable:?}"
                ));
            }
            match session_symbols::resolve(value, &symbols) {
                Ok(value) => variables.push((variable.clone(), Some(value))),
                Err(error) => return failed(format!("environment {name}: {error}")),
            }
        }
        self.entered.push(Entered {
            scope,
            environment: environment.clone(),
            symbols: serialized,
            variables,
            files,
        });
        let Some(on_enter) = environment
            .script
            .as_ref()
            .and_then(|s| s.actions.on_enter.as_ref())
        else {
            return Ran::ok();
        };
        let spec = match ActionSpec::resolve(on_enter, &symbols) {
            Ok(spec) => spec,
            Err(error) => {
                self.entered.pop();
                return failed(format!("environment {name} onEnter: {error}"));
            }
        };
        let env = self.environment_variables();
        let mut exported = Vec::new();
        let ran = run_watched(
            &spec,
            &self.sandbox,
            &env,
            rules,
            cancel,
            watcher,
            // Bounded like declared variables: one action cannot grow
            // the environment of every later one without limit.
            |message| match message {
                _ if exported.len() >= MAX_EXPORTS => {}
                Message::SetEnv { name, value } => {
                    exported.push((name.clone(), Some(value.clone())))
                }
                Message::UnsetEnv(name) => exported.push((name.clone(), None)),
                _ => {}
            },
        )
        .await;
        if ran.problem("").is_some() {
            // A failed onEnter leaves the environment not entered: no onExit.
            self.entered.pop();
            return Ran {
                end: ran.end,
                fail: ran
                    .fail
                    .or_else(|| Some(format!("environment {name} failed to enter"))),
            };
        }
        if let Some(entered) = self.entered.last_mut() {
            entered.variables.extend(exported);
        }
        ran
    }

    /// Exits the innermost environment, running its `onExit`; a failing
    /// exit is logged, since no task waits for it.
    async fn exit_last(&mut self, cancel: &CancellationToken, watcher: &mut impl ActionWatcher) {
        let env = self.environment_variables();
        let Some(entered) = self.entered.pop() else {
            return;
        };
        let name = &entered.environment.name;
        tracing::info!(session = self.id, environment = %name, "exiting openjd environment");
        watcher.line(&format!("kiln: exiting environment {name}"));
        let Some(on_exit) = entered
            .environment
            .script
            .as_ref()
            .and_then(|s| s.actions.on_exit.as_ref())
        else {
            return;
        };
        let symbols = session_symbols::scope_symbols(
            entered.symbols.as_ref(),
            &self.mapping,
            &self.rules_file,
        )
        .and_then(|mut symbols| {
            session_symbols::add_files(&mut symbols, "Env.File", &entered.files)?;
            Ok(symbols)
        });
        let spec = symbols.and_then(|symbols| ActionSpec::resolve(on_exit, &symbols));
        let spec = match spec {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(session = self.id, environment = %name, %error, "cannot run onExit");
                return;
            }
        };
        let rules = Rules {
            max_run_seconds: EXIT_LIMIT_SECONDS,
            ..Rules::default()
        };
        let ran = run_watched(&spec, &self.sandbox, &env, rules, cancel, watcher, |_| {}).await;
        if let Some(problem) = ran.problem("onExit") {
            tracing::warn!(session = self.id, environment = %name, %problem, "environment exit failed");
            watcher.line(&format!("kiln: environment {name} exit failed: {problem}"));
        }
    }

    /// Exits every environment, innermost first, and deletes the directory
    /// unless `keep` (for debugging).
    pub async fn end(mut self, keep: bool) {
        let cancel = CancellationToken::new();
        let mut watcher = LogOnly;
        while !self.entered.is_empty() {
            self.exit_last(&cancel, &mut watcher).await;
        }
        tracing::info!(session = self.id, job_id = %self.job_id, "openjd session ended");
        // Whatever the session's processes left running goes with its sandbox.
        self.sandbox.kill();
        let _ = tokio::fs::remove_dir_all(&self.scratch).await;
        if !keep && let Err(error) = tokio::fs::remove_dir_all(&self.dir).await {
            tracing::warn!(path = %self.dir.display(), %error, "cannot remove session directory");
        }
    }

    /// Runs a task's `onRun` with the step's values, the task's
    /// `task_symbols`, and its embedded files written afresh.
    pub async fn run_task(
        &mut self,
        step: &SessionStep,
        task_symbols: &openjd_expr::SerializedSymbolTable,
        rules: Rules,
        cancel: &CancellationToken,
        watcher: &mut impl ActionWatcher,
    ) -> Ran {
        let failed = |message: String| Ran {
            end: ActionEnd::Failed(message),
            fail: None,
        };
        let symbols =
            session_symbols::scope_symbols(step.symbols.as_ref(), &self.mapping, &self.rules_file)
                .and_then(|mut symbols| {
                    session_symbols::add_task(&mut symbols, task_symbols, &self.mapping)?;
                    Ok(symbols)
                });
        let mut symbols = match symbols {
            Ok(symbols) => symbols,
            Err(error) => return failed(error),
        };
        let files = step.script.embedded_files.as_deref().unwrap_or_default();
        if let Err(error) = self
            .write_script_files(files, "Task.File", &mut symbols)
            .await
        {
            return failed(error);
        }
        let spec = match ActionSpec::resolve(&step.script.actions.on_run, &symbols) {
            Ok(spec) => spec,
            Err(error) => return failed(error),
        };
        let env = self.environment_variables();
        run_watched(&spec, &self.sandbox, &env, rules, cancel, watcher, |_| {}).await
    }

    async fn write_files(
        &self,
        environment: &Environment,
        symbols: &mut openjd_expr::SymbolTable,
    ) -> Result<Vec<(String, PathBuf)>, String> {
        let files = environment
            .script
            .as_ref()
            .and_then(|s| s.embedded_files.as_deref())
            .unwrap_or_default();
        self.write_script_files(files, "Env.File", symbols).await
    }

    /// Writes `files` into a fresh directory and names them in `symbols`.
    async fn write_script_files(
        &self,
        files: &[openjd_model::job::EmbeddedFile],
        prefix: &str,
        symbols: &mut openjd_expr::SymbolTable,
    ) -> Result<Vec<(String, PathBuf)>, String> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let n = NEXT_FILES_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(PRIVATE_DIR).join(format!("files-{n}"));
        let placed = session_files::paths(files, &dir)?;
        session_symbols::add_files(symbols, prefix, &placed)?;
        session_files::write(files, &placed, symbols).await?;
        Ok(placed)
    }

    /// The environment of the next action: a fixed base, then every entered
    /// environment's variables, outermost first.
    fn environment_variables(&self) -> Vec<(String, String)> {
        // The sandbox supplies the base (PATH, HOME, LANG, ...).
        let mut env: Vec<(String, String)> = vec![(
            "OPENJD_SESSION_WORKING_DIR".to_owned(),
            self.dir.to_string_lossy().into_owned(),
        )];
        for entered in &self.entered {
            for (name, value) in &entered.variables {
                env.retain(|(existing, _)| existing != name);
                if let Some(value) = value {
                    env.push((name.clone(), value.clone()));
                }
            }
        }
        env
    }
}

/// Runs `spec`, passing lines and messages to `watcher` (and messages to
/// `also`), and remembers the last `openjd_fail`.
async fn run_watched(
    spec: &ActionSpec,
    sandbox: &TaskSandbox,
    env: &[(String, String)],
    rules: Rules,
    cancel: &CancellationToken,
    watcher: &mut impl ActionWatcher,
    mut also: impl FnMut(&Message) + Send,
) -> Ran {
    let mut fail = None;
    // Directories the worker made since (embedded files, OUT directories)
    // become the sandbox's; files stay the worker's, read-only inputs.
    if let Err(error) = sandbox.hand_over(sandbox.workdir()) {
        return Ran {
            end: ActionEnd::Failed(format!(
                "cannot prepare the session for its sandbox: {error}"
            )),
            fail: None,
        };
    }
    let end = session_action::run(spec, sandbox, env, rules, cancel, |line| {
        watcher.line(line);
        if let Some(message) = openjd_messages::parse(line) {
            if let Message::Fail(text) = &message {
                fail = Some(text.clone());
            }
            also(&message);
            watcher.message(&message);
        }
    })
    .await;
    Ran { end, fail }
}

/// For environments exited when no task is watching: lines go to the log.
struct LogOnly;

impl ActionWatcher for LogOnly {
    fn line(&mut self, line: &str) {
        tracing::debug!(line, "openjd environment output");
    }

    fn message(&mut self, _: &Message) {}
}
