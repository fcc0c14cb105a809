//! A Deadline Cloud job bundle, read from its directory: `template.yaml`
//! (or `.json`), `parameter_values.yaml|json` and `asset_references.yaml|json`,
//! turned into what a Kiln submission needs: the files to upload at their
//! place in the session, the path-mapping rules that send the submitter's
//! absolute paths there, and the directories to download outputs into.
//!
//! Every path the job names on this machine (PATH parameter values, made
//! absolute, and the asset references) falls under a root directory; each
//! root becomes `root-<n>/` in the session's working directory, with a rule
//! from the root to it, as Deadline's job attachments do.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::CliError;

/// Largest template, as the scheduler allows.
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Largest parameter-values or asset-references file.
const MAX_SIDE_FILE_BYTES: usize = 1024 * 1024;
/// Most files a bundle's inputs may hold (the scheduler's limit on inputs).
pub const MAX_INPUT_FILES: usize = 1000;
/// Parameter names for the submitter itself, as Deadline's `deadline:priority`.
const APP_PREFIX: &str = "deadline:";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParameterValuesFile {
    #[serde(default)]
    parameter_values: Vec<ParameterValue>,
}

#[derive(Debug, Deserialize)]
struct ParameterValue {
    name: String,
    value: serde_yaml::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetReferencesFile {
    #[serde(default)]
    asset_references: AssetReferences,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetReferences {
    #[serde(default)]
    inputs: Inputs,
    #[serde(default)]
    outputs: Outputs,
}

#[derive(Debug, Default, Deserialize)]
struct Inputs {
    #[serde(default)]
    filenames: Vec<String>,
    #[serde(default)]
    directories: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Outputs {
    #[serde(default)]
    directories: Vec<String>,
}

/// A bundle ready to submit.
#[derive(Debug)]
pub struct JobBundle {
    pub template: String,
    /// Every job parameter value given, PATH values absolute on this machine.
    pub parameters: HashMap<String, String>,
    /// `deadline:priority`, if the bundle sets it.
    pub priority: Option<u32>,
    /// Root directories on this machine, each placed at `root-<n>` in the session.
    pub roots: Vec<PathBuf>,
    /// Files to upload: (this machine's path, place in the session).
    pub inputs: Vec<(PathBuf, String)>,
    /// Directories the job writes, to download its outputs into.
    pub outputs: Vec<PathBuf>,
}

impl JobBundle {
    /// Reads the bundle in `dir`; `overrides` (`-p Name=Value`, relative
    /// PATH values taken from `cwd`) win over `parameter_values`.
    pub fn read(dir: &Path, overrides: &[(String, String)], cwd: &Path) -> Result<Self, CliError> {
        let dir = std::fs::canonicalize(dir).map_err(CliError::io(dir))?;
        let template = read_one(&dir, "template", MAX_TEMPLATE_BYTES)?
            .ok_or_else(|| {
                bad(format!(
                    "{} has no template.yaml or template.json",
                    dir.display()
                ))
            })?
            .1;
        let path_parameters = kiln_jobmodel::path_parameters(&template, MAX_TEMPLATE_BYTES)?;
        let values: ParameterValuesFile =
            match read_one(&dir, "parameter_values", MAX_SIDE_FILE_BYTES)? {
                Some((path, text)) => parse(&path, &text)?,
                None => ParameterValuesFile::default(),
            };
        let references: AssetReferencesFile =
            match read_one(&dir, "asset_references", MAX_SIDE_FILE_BYTES)? {
                Some((path, text)) => parse(&path, &text)?,
                None => AssetReferencesFile::default(),
            };
        let mut given: BTreeMap<String, (String, &Path)> = BTreeMap::new();
        let mut priority = None;
        for value in &values.parameter_values {
            let text = scalar(&value.value).ok_or_else(|| {
                bad(format!(
                    "parameter {:?}: value must be a string or number",
                    value.name
                ))
            })?;
            given.insert(value.name.clone(), (text, dir.as_path()));
        }
        for (name, value) in overrides {
            given.insert(name.clone(), (value.clone(), cwd));
        }
        let mut parameters = HashMap::new();
        for (name, (value, base)) in given {
            if let Some(app) = name.strip_prefix(APP_PREFIX) {
                if app == "priority" {
                    priority = Some(value.parse::<u32>().ok().filter(|p| *p <= 100).ok_or_else(
                        || bad(format!("{name}: {value:?} is not a priority from 0 to 100")),
                    )?);
                }
                continue;
            }
            if name.contains(':') {
                // Another submitter's setting (e.g. a GUI's): not for this farm.
                continue;
            }
            let value = match path_parameters.iter().any(|p| p.name == name) {
                true => absolute(base, &value),
                false => value,
            };
            parameters.insert(name, value);
        }
        // PATH parameters left at their defaults are relative to the template.
        for parameter in &path_parameters {
            if !parameters.contains_key(&parameter.name)
                && let Some(default) = &parameter.default
            {
                parameters.insert(parameter.name.clone(), absolute(&dir, default));
            }
        }
        let mut input_paths: Vec<PathBuf> = Vec::new();
        let mut output_dirs: Vec<PathBuf> = Vec::new();
        for name in &references.asset_references.inputs.filenames {
            input_paths.push(PathBuf::from(absolute(&dir, name)));
        }
        for name in &references.asset_references.inputs.directories {
            input_paths.push(PathBuf::from(absolute(&dir, name)));
        }
        for name in &references.asset_references.outputs.directories {
            output_dirs.push(PathBuf::from(absolute(&dir, name)));
        }
        for parameter in &path_parameters {
            let Some(value) = parameters.get(&parameter.name) else {
                continue;
            };
            if parameter.reads {
                input_paths.push(PathBuf::from(value));
            }
            if parameter.writes {
                output_dirs.push(match parameter.directory {
                    true => PathBuf::from(value),
                    // An OUT file: its directory receives it.
                    false => Path::new(value)
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .to_path_buf(),
                });
            }
        }
        let files = list_inputs(&input_paths)?;
        let candidates: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .chain(output_dirs.iter().cloned())
            .collect();
        let roots = outermost(candidates);
        let inputs = files
            .into_iter()
            .map(|file| {
                let place = place_of(&roots, &file)
                    .ok_or_else(|| bad(format!("{} is under no root", file.display())))?;
                Ok((file, place))
            })
            .collect::<Result<_, CliError>>()?;
        output_dirs.sort();
        output_dirs.dedup();
        Ok(Self {
            template,
            parameters,
            priority,
            roots,
            inputs,
            outputs: output_dirs,
        })
    }

    /// The submission's path-mapping rules: each root to `root-<n>`.
    pub fn path_mapping_rules(&self) -> Vec<kiln_proto::v1::PathMappingRule> {
        self.roots
            .iter()
            .enumerate()
            .map(|(n, root)| kiln_proto::v1::PathMappingRule {
                source_path_format: "POSIX".to_owned(),
                source_path: root.to_string_lossy().into_owned(),
                destination_path: root_name(n),
            })
            .collect()
    }

    /// Where an output the farm names by its place in the session goes on
    /// this machine, if it is inside one of the bundle's output directories.
    pub fn output_destination(&self, place: &str) -> Option<PathBuf> {
        let relative = crate::outputs::safe_relative(place).ok()?;
        let mut components = relative.components();
        let Some(Component::Normal(first)) = components.next() else {
            return None;
        };
        let n = first
            .to_str()?
            .strip_prefix("root-")?
            .parse::<usize>()
            .ok()?;
        let local = self.roots.get(n)?.join(components.as_path());
        self.outputs
            .iter()
            .any(|dir| local.starts_with(dir))
            .then_some(local)
    }
}

fn root_name(n: usize) -> String {
    format!("root-{n}")
}

/// The place of `file` in the session: `root-<n>/<path under the root>`.
fn place_of(roots: &[PathBuf], file: &Path) -> Option<String> {
    roots.iter().enumerate().find_map(|(n, root)| {
        let relative = file.strip_prefix(root).ok()?;
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Some(format!("{}/{}", root_name(n), parts.join("/")))
    })
}

/// The directories of `candidates` not inside another, sorted.
fn outermost(mut candidates: Vec<PathBuf>) -> Vec<PathBuf> {
    candidates.sort();
    candidates.dedup();
    let all = candidates.clone();
    candidates.retain(|c| !all.iter().any(|other| other != c && c.starts_with(other)));
    candidates
}

/// Every file named by `paths`: files as they are, directories walked
/// (hidden entries skipped), bounded.
fn list_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).map_err(CliError::io(&path))?;
        if meta.is_file() {
            files.push(path);
        } else if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(CliError::io(&path))? {
                let entry = entry.map_err(CliError::io(&path))?;
                if !entry.file_name().to_string_lossy().starts_with('.') {
                    pending.push(entry.path());
                }
            }
        }
        if files.len() > MAX_INPUT_FILES {
            return Err(bad(format!(
                "the bundle's inputs hold more than {MAX_INPUT_FILES} files"
            )));
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// `value` as an absolute, normalised path (relative ones taken from `base`).
fn absolute(base: &Path, value: &str) -> String {
    let joined = base.join(value);
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.to_string_lossy().into_owned()
}

fn scalar(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `<stem>.yaml`, `<stem>.yml` or `<stem>.json` in `dir`, if there.
fn read_one(
    dir: &Path,
    stem: &str,
    max_bytes: usize,
) -> Result<Option<(PathBuf, String)>, CliError> {
    for extension in ["yaml", "yml", "json"] {
        let path = dir.join(format!("{stem}.{extension}"));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.len() > max_bytes as u64 {
            return Err(bad(format!(
                "{} is {} bytes, more than the limit of {max_bytes}",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(CliError::io(&path))?;
        return Ok(Some((path, text)));
    }
    Ok(None)
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, CliError> {
    let parsed = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(text).map_err(|e| e.to_string()),
        _ => serde_yaml::from_str(text).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| bad(format!("{}: {e}", path.display())))
}

fn bad(message: String) -> CliError {
    CliError::Bundle(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
specificationVersion: jobtemplate-2023-09
name: Bundle
parameterDefinitions:
  - name: Scene
    type: PATH
    objectType: FILE
    dataFlow: IN
    default: ./scene/shot.blend
  - name: OutputDir
    type: PATH
    objectType: DIRECTORY
    dataFlow: OUT
    default: ./output
  - name: Frames
    type: STRING
steps:
  - name: Run
    script:
      actions:
        onRun:
          command: bash
          args: ["-c", "echo {{Param.Scene}} {{Param.Frames}}"]
"#;

    fn bundle_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("template.yaml"), TEMPLATE).unwrap();
        std::fs::create_dir_all(dir.path().join("scene/tex")).unwrap();
        std::fs::write(dir.path().join("scene/shot.blend"), b"blend").unwrap();
        std::fs::write(dir.path().join("scene/tex/wood.png"), b"png").unwrap();
        std::fs::write(
            dir.path().join("parameter_values.yaml"),
            "parameterValues:\n  - name: Frames\n    value: 1-4\n  - name: deadline:priority\n    value: 70\n  - name: gui:Layout\n    value: wide\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("asset_references.yaml"),
            "assetReferences:\n  inputs:\n    directories: [scene/tex]\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn reads_values_references_and_defaults() {
        let dir = bundle_dir();
        let bundle = JobBundle::read(dir.path(), &[], Path::new("/nowhere")).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(bundle.parameters["Frames"], "1-4");
        assert_eq!(bundle.priority, Some(70));
        assert!(!bundle.parameters.contains_key("gui:Layout"));
        assert_eq!(
            bundle.parameters["Scene"],
            root.join("scene/shot.blend").to_string_lossy()
        );
        assert_eq!(bundle.roots, [root.join("output"), root.join("scene")]);
        let places: Vec<&str> = bundle.inputs.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(places, ["root-1/shot.blend", "root-1/tex/wood.png"]);
        let rules = bundle.path_mapping_rules();
        assert_eq!(rules[1].destination_path, "root-1");
        assert_eq!(
            bundle.output_destination("root-0/render-0001.png"),
            Some(root.join("output/render-0001.png"))
        );
        assert_eq!(bundle.output_destination("root-1/shot.blend"), None);
        assert_eq!(bundle.output_destination("../etc/passwd"), None);
    }

    #[test]
    fn command_line_values_win_and_are_taken_from_the_current_directory() {
        let dir = bundle_dir();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("other.blend"), b"x").unwrap();
        let overrides = [("Scene".to_owned(), "other.blend".to_owned())];
        let bundle = JobBundle::read(dir.path(), &overrides, elsewhere.path()).unwrap();
        assert_eq!(
            bundle.parameters["Scene"],
            elsewhere.path().join("other.blend").to_string_lossy()
        );
        assert!(
            bundle
                .inputs
                .iter()
                .any(|(p, _)| p.ends_with("other.blend"))
        );
    }

    #[test]
    fn a_missing_template_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = JobBundle::read(dir.path(), &[], dir.path()).unwrap_err();
        assert!(error.to_string().contains("template.yaml"), "{error}");
    }
}
