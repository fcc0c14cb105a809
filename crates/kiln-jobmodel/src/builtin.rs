use std::collections::BTreeMap;
use std::path::Path;

use crate::JobModelError;

/// Most approved templates one directory may hold.
const MAX_APPROVED: usize = 1000;

/// Names of the templates that ship with Kiln. Templates for other engines
/// (`examples/templates`) are approved by an admin: see [`TemplateLibrary`].
pub const BUILTIN_TEMPLATES: &[&str] = &["blender"];

/// The YAML of a built-in template.
pub fn builtin_template(name: &str) -> Result<&'static str, JobModelError> {
    match name {
        "blender" => Ok(include_str!("../templates/blender.yaml")),
        other => Err(JobModelError::UnknownTemplate(other.to_owned())),
    }
}

/// The templates jobs may name: the built-ins, plus templates an admin
/// approved by putting them in a directory the scheduler loads at start
/// (`<name>.yaml`, `<name>.yml` or `<name>.json`; the file name is the
/// template's name). Approved templates run only commands the workers know.
#[derive(Debug, Clone, Default)]
pub struct TemplateLibrary {
    approved: BTreeMap<String, String>,
}

impl TemplateLibrary {
    /// Loads and checks every template in `dir`; one invalid template fails
    /// the whole load, so a typo is noticed at start rather than at submission.
    pub fn load_dir(dir: &Path, max_template_bytes: usize) -> Result<Self, JobModelError> {
        let io = |e: std::io::Error| JobModelError::TemplateDir(format!("{}: {e}", dir.display()));
        let mut approved = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let extension = path.extension().and_then(|e| e.to_str());
            let (Some("yaml" | "yml" | "json"), Some(name)) =
                (extension, path.file_stem().and_then(|s| s.to_str()))
            else {
                continue;
            };
            if approved.len() == MAX_APPROVED {
                return Err(JobModelError::TemplateDir(format!(
                    "{} holds more than {MAX_APPROVED} templates",
                    dir.display()
                )));
            }
            if BUILTIN_TEMPLATES.contains(&name) || approved.contains_key(name) {
                return Err(JobModelError::TemplateDir(format!(
                    "{}: template {name:?} is already defined",
                    path.display()
                )));
            }
            let document = std::fs::read_to_string(&path).map_err(io)?;
            crate::plan::check_template(&document, max_template_bytes)
                .map_err(|e| JobModelError::TemplateDir(format!("{}: {e}", path.display())))?;
            approved.insert(name.to_owned(), document);
        }
        Ok(Self { approved })
    }

    /// A built-in or approved template by name.
    pub fn get(&self, name: &str) -> Result<&str, JobModelError> {
        match self.approved.get(name) {
            Some(document) => Ok(document),
            None => builtin_template(name),
        }
    }

    /// Names of the approved templates (not the built-ins).
    pub fn approved_names(&self) -> impl Iterator<Item = &str> {
        self.approved.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_approved_templates_and_refuses_bad_ones() {
        let Ok(dir) = tempfile::tempdir() else {
            return;
        };
        let good = "specificationVersion: jobtemplate-2023-09\nname: Hi\nsteps:\n  - name: A\n    script:\n      actions:\n        onRun:\n          command: ffmpeg\n";
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        assert!(write("hello.yaml", good).is_ok() && write("notes.txt", "ignored").is_ok());
        let library = TemplateLibrary::load_dir(dir.path(), 64 * 1024);
        let library = library.unwrap_or_default();
        assert_eq!(library.approved_names().collect::<Vec<_>>(), ["hello"]);
        assert_eq!(library.get("hello").ok(), Some(good));
        assert!(library.get("blender").is_ok());
        assert!(library.get("nope").is_err());

        assert!(write("blender.yaml", good).is_ok());
        let clash = TemplateLibrary::load_dir(dir.path(), 64 * 1024);
        assert!(clash.is_err_and(|e| e.to_string().contains("already defined")));
        assert!(std::fs::remove_file(dir.path().join("blender.yaml")).is_ok());
        assert!(write("broken.yaml", "name: x").is_ok());
        let broken = TemplateLibrary::load_dir(dir.path(), 64 * 1024);
        assert!(broken.is_err_and(|e| e.to_string().contains("broken.yaml")));
    }
}
