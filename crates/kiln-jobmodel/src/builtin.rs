use crate::JobModelError;

/// Names of the templates that ship with Kiln.
pub const BUILTIN_TEMPLATES: &[&str] = &["blender"];

/// The YAML of a built-in template.
pub fn builtin_template(name: &str) -> Result<&'static str, JobModelError> {
    match name {
        "blender" => Ok(include_str!("../templates/blender.yaml")),
        other => Err(JobModelError::UnknownTemplate(other.to_owned())),
    }
}
