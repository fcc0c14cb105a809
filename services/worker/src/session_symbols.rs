//! The values an OpenJD script is resolved with on this worker: the
//! step's `Param.*` with PATH values path-mapped into the session,
//! `Session.*`, the task's `Task.Param.*`, and the embedded files'
//! `Task.File.*` / `Env.File.*`.

use std::path::{Path, PathBuf};

use kiln_jobmodel::{JOB_ROOT, PathFormat, PathMappingRule};
use openjd_expr::{
    ExprValue, FormatString, FormatStringOptions, SerializedSymbolTable, SymbolTable,
};

/// How PATH values reach this session's working directory.
#[derive(Debug, Clone)]
pub struct PathMapping {
    working_dir: PathBuf,
    /// Longest source first, as OpenJD applies them; the job root last but
    /// one rule like any other.
    rules: Vec<PathMappingRule>,
    /// Whether the submitter gave rules (the job root's is Kiln's own).
    submitted: bool,
}

impl PathMapping {
    /// The submitter's `rules`, with relative destinations placed inside
    /// `working_dir`, and the job root (where relative PATH values were
    /// anchored at submission) mapped onto `working_dir`.
    pub fn new(rules: &[PathMappingRule], working_dir: &Path) -> Self {
        let inside = |destination: &str| match destination.trim_start_matches("./") {
            "" | "." => display(working_dir),
            absolute if Path::new(absolute).is_absolute() => absolute.to_owned(),
            relative => display(&working_dir.join(relative)),
        };
        let mut all: Vec<PathMappingRule> = rules
            .iter()
            .map(|rule| PathMappingRule {
                destination_path: inside(&rule.destination_path),
                ..rule.clone()
            })
            .collect();
        all.push(PathMappingRule {
            source_path_format: PathFormat::Posix,
            source_path: JOB_ROOT.to_owned(),
            destination_path: display(working_dir),
        });
        all.sort_by_key(|rule| std::cmp::Reverse(rule.source_path.len()));
        Self {
            working_dir: working_dir.to_path_buf(),
            rules: all,
            submitted: !rules.is_empty(),
        }
    }

    /// Where `path` is on this worker; a relative path is inside the session.
    pub fn map(&self, path: &str) -> String {
        let mapped = openjd_expr::path_mapping::apply_rules(&self.rules, path);
        match Path::new(&mapped).is_absolute() {
            true => mapped,
            false => display(&self.working_dir.join(&mapped)),
        }
    }

    /// The submitter's rules in OpenJD's path-mapping file format, with
    /// destinations on this worker.
    pub fn rules_json(&self) -> String {
        let rules: Vec<&PathMappingRule> = self
            .rules
            .iter()
            .filter(|rule| rule.source_path != JOB_ROOT)
            .collect();
        serde_json::json!({ "version": "pathmapping-1.0", "path_mapping_rules": rules }).to_string()
    }

    pub fn working_dir(&self) -> &Path {
        &self.working_dir
    }
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A symbol table for one scope (a step, or an environment): `serialized`
/// from the job model, with path-mapped `Param.*` for PATH parameters and
/// the session's values.
pub fn scope_symbols(
    serialized: Option<&SerializedSymbolTable>,
    mapping: &PathMapping,
    rules_file: &Path,
) -> Result<SymbolTable, String> {
    let mut table = match serialized {
        Some(serialized) => serialized.to_symtab(PathFormat::host())?,
        None => SymbolTable::new(),
    };
    let raw_names: Vec<String> = table
        .get_table("RawParam")
        .map(|raw| raw.keys().map(str::to_owned).collect())
        .unwrap_or_default();
    for name in raw_names {
        let key = format!("Param.{name}");
        if table.contains(&key) {
            continue;
        }
        if let Some(mapped) = table
            .get_value(&format!("RawParam.{name}"))
            .and_then(|raw| map_value(raw, mapping))
        {
            set(&mut table, &key, mapped)?;
        }
    }
    set(
        &mut table,
        "Session.WorkingDirectory",
        ExprValue::new_path(display(mapping.working_dir()), PathFormat::host()),
    )?;
    set(
        &mut table,
        "Session.HasPathMappingRules",
        ExprValue::Bool(mapping.submitted),
    )?;
    set(
        &mut table,
        "Session.PathMappingRulesFile",
        ExprValue::new_path(display(rules_file), PathFormat::host()),
    )?;
    Ok(table)
}

/// Adds a task's `Task.Param.*` / `Task.RawParam.*`, PATH values mapped.
pub fn add_task(
    table: &mut SymbolTable,
    task: &SerializedSymbolTable,
    mapping: &PathMapping,
) -> Result<(), String> {
    let task = task.to_symtab(PathFormat::host())?;
    for key in task.all_paths("") {
        let Some(value) = task.get_value(&key) else {
            continue;
        };
        // Only PATH task parameters are mapped; a STRING one is text.
        let is_path = matches!(value, ExprValue::Path { .. } | ExprValue::ListPath(..));
        let value = match key.starts_with("Task.Param.") && is_path {
            true => map_value(value, mapping).unwrap_or_else(|| value.clone()),
            false => value.clone(),
        };
        set(table, &key, value)?;
    }
    Ok(())
}

/// Adds embedded files' paths as `<prefix>.<name>` (`Task.File`, `Env.File`).
pub fn add_files(
    table: &mut SymbolTable,
    prefix: &str,
    files: &[(String, PathBuf)],
) -> Result<(), String> {
    for (name, path) in files {
        set(
            table,
            &format!("{prefix}.{name}"),
            ExprValue::new_path(display(path), PathFormat::host()),
        )?;
    }
    Ok(())
}

/// `value` resolved with `table`.
pub fn resolve(value: &FormatString, table: &SymbolTable) -> Result<String, String> {
    value
        .resolve_string_with(table, &FormatStringOptions::new())
        .map_err(|e| format!("cannot resolve {:?}: {e}", value.raw()))
}

fn map_value(value: &ExprValue, mapping: &PathMapping) -> Option<ExprValue> {
    match value {
        ExprValue::Path { value, .. } | ExprValue::String(value) => {
            Some(ExprValue::new_path(mapping.map(value), PathFormat::host()))
        }
        ExprValue::ListPath(items, _, _) | ExprValue::ListString(items, _) => {
            let mapped = items
                .iter()
                .map(|item| ExprValue::new_path(mapping.map(item), PathFormat::host()))
                .collect();
            ExprValue::make_list(mapped, openjd_expr::ExprType::PATH).ok()
        }
        _ => None,
    }
}

fn set(table: &mut SymbolTable, key: &str, value: ExprValue) -> Result<(), String> {
    table
        .set(key, value)
        .map_err(|e| format!("cannot set {key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(source: &str, destination: &str) -> PathMappingRule {
        PathMappingRule {
            source_path_format: PathFormat::Posix,
            source_path: source.to_owned(),
            destination_path: destination.to_owned(),
        }
    }

    #[test]
    fn job_root_and_relative_destinations_land_in_the_session() {
        let mapping = PathMapping::new(
            &[rule("/home/artist/shot", "assetroot-0")],
            Path::new("/w/s-1"),
        );
        assert_eq!(mapping.map(&format!("{JOB_ROOT}/output")), "/w/s-1/output");
        assert_eq!(
            mapping.map("/home/artist/shot/scene.blend"),
            "/w/s-1/assetroot-0/scene.blend"
        );
        assert_eq!(mapping.map("renders/a.png"), "/w/s-1/renders/a.png");
        assert_eq!(mapping.map("/usr/bin/env"), "/usr/bin/env");
        assert!(mapping.rules_json().contains("/home/artist/shot"));
        assert!(!mapping.rules_json().contains(JOB_ROOT));
    }

    #[test]
    fn the_longest_source_wins() {
        let mapping = PathMapping::new(
            &[rule("/mnt", "a"), rule("/mnt/projects/x", "b")],
            Path::new("/w"),
        );
        assert_eq!(mapping.map("/mnt/projects/x/f"), "/w/b/f");
        assert_eq!(mapping.map("/mnt/other/f"), "/w/a/other/f");
    }

    #[test]
    fn path_parameters_become_params_mapped_into_the_session() {
        let mut template = SymbolTable::new();
        template
            .set(
                "RawParam.OutputDir",
                ExprValue::new_path(format!("{JOB_ROOT}/out"), PathFormat::Posix),
            )
            .unwrap();
        template.set("Param.Fps", ExprValue::Int(24)).unwrap();
        let serialized = SerializedSymbolTable::from_symtab(&template);
        let mapping = PathMapping::new(&[], Path::new("/w/s"));
        let table =
            scope_symbols(Some(&serialized), &mapping, Path::new("/w/s/rules.json")).unwrap();
        let resolve_text = |text: &str| resolve(&FormatString::new(text).unwrap(), &table).unwrap();
        assert_eq!(resolve_text("{{Param.OutputDir}}/f.mp4"), "/w/s/out/f.mp4");
        assert_eq!(
            resolve_text("{{RawParam.OutputDir}}"),
            format!("{JOB_ROOT}/out")
        );
        assert_eq!(resolve_text("{{Param.Fps}}"), "24");
        assert_eq!(resolve_text("{{Session.WorkingDirectory}}"), "/w/s");
        assert_eq!(resolve_text("{{Session.HasPathMappingRules}}"), "false");
    }

    #[test]
    fn task_values_and_files_are_added() {
        let mut task = SymbolTable::new();
        task.set("Task.Param.Shot", ExprValue::Int(3)).unwrap();
        task.set("Task.RawParam.Shot", ExprValue::Int(3)).unwrap();
        task.set("Task.Param.Quality", ExprValue::String("3".to_owned()))
            .unwrap();
        task.set(
            "Task.Param.Plate",
            ExprValue::new_path("plates/a.exr", PathFormat::Posix),
        )
        .unwrap();
        let mapping = PathMapping::new(&[], Path::new("/w/s"));
        let mut table = scope_symbols(None, &mapping, Path::new("/w/r.json")).unwrap();
        add_task(
            &mut table,
            &SerializedSymbolTable::from_symtab(&task),
            &mapping,
        )
        .unwrap();
        add_files(
            &mut table,
            "Task.File",
            &[("Run".to_owned(), PathBuf::from("/w/f/run.sh"))],
        )
        .unwrap();
        let text = FormatString::new(
            "{{Task.File.Run}} {{Task.Param.Shot}} {{Task.Param.Quality}} {{Task.Param.Plate}}",
        )
        .unwrap();
        assert_eq!(
            resolve(&text, &table).unwrap(),
            "/w/f/run.sh 3 3 /w/s/plates/a.exr",
            "STRING values stay text; relative PATH values are in the session"
        );
        let missing = FormatString::new("{{Task.File.Other}}").unwrap();
        assert!(resolve(&missing, &table).is_err());
    }
}
