use crate::JobModelError;

/// Names of the templates that ship with Kiln: the Blender pipeline, and
/// the approved example templates for other engines (`examples/templates`),
/// which run only commands the worker knows, with argv-only arguments.
pub const BUILTIN_TEMPLATES: &[&str] = &["blender", "ffmpeg-transcode", "natron-render"];

/// The YAML of a built-in template.
pub fn builtin_template(name: &str) -> Result<&'static str, JobModelError> {
    match name {
        "blender" => Ok(include_str!("../templates/blender.yaml")),
        "ffmpeg-transcode" => Ok(include_str!(
            "../../../examples/templates/ffmpeg-transcode.yaml"
        )),
        "natron-render" => Ok(include_str!(
            "../../../examples/templates/natron-render.yaml"
        )),
        other => Err(JobModelError::UnknownTemplate(other.to_owned())),
    }
}
