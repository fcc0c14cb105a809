#[derive(Debug, thiserror::Error)]
pub enum JobModelError {
    #[error("unknown built-in template {0:?}; known templates: {known}", known = crate::BUILTIN_TEMPLATES.join(", "))]
    UnknownTemplate(String),
    #[error("invalid job template: {0}")]
    Template(String),
    #[error("invalid job parameters: {0}")]
    Parameters(String),
    #[error("step {step:?}: {message}")]
    Step { step: String, message: String },
    #[error("job has {tasks} tasks, more than the limit of {limit}")]
    TooManyTasks { tasks: usize, limit: usize },
    #[error("invalid variant row id {0:?}: {1}")]
    RowId(String, String),
    #[error("approved templates: {0}")]
    TemplateDir(String),
    #[error("invalid frame range {0:?}")]
    FrameRange(String),
}
