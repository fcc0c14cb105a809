//! The scheduler's modules depend one way: no import cycle, judging by the
//! `crate::` paths in each file's code (`use crate::...` lines and inline
//! paths alike). A cycle means a type lives in the wrong file; the failure
//! names the files around it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[test]
fn scheduler_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 20,
        "found only {} modules under {}",
        graph.len(),
        src.display()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".to_owned()].into());
    graph.insert("b".into(), ["c".to_owned()].into());
    graph.insert("c".into(), ["a".to_owned()].into());
    graph.insert("d".into(), ["a".to_owned()].into());
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn paths_are_read_from_use_lines_with_braces_and_from_code() {
    let code = "use crate::core::{Core, batch::{Batch, Effect}};\n\
                // crate::ignored::in_comment\n\
                fn f() { crate::fence::check(); }\n";
    let paths = crate_paths(code);
    assert_eq!(
        paths,
        [
            "core::Core",
            "core::batch::Batch",
            "core::batch::Effect",
            "fence::check"
        ]
    );
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module (by path, `core::batch`) -> modules its code names.
fn module_graph(src: &Path) -> Graph {
    let files = rust_files(src);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|file| (module_of(src, file), file.clone()))
        .collect();
    let reexports = reexports(&fs::read_to_string(src.join("lib.rs")).unwrap_or_default());
    let mut graph = Graph::new();
    for (module, file) in &modules {
        let code = fs::read_to_string(file).unwrap_or_default();
        let targets = graph.entry(module.clone()).or_default();
        for path in crate_paths(&code) {
            let target = resolve(&path, &modules, &reexports);
            if !target.is_empty() && &target != module {
                targets.insert(target);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `src/core/mod.rs` -> `core`, `src/core/batch.rs` -> `core::batch`, `src/lib.rs` -> ``.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// Items lib.rs re-exports (`pub use error::SchedulerError;`): item -> module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub use ")?.strip_suffix(';'))
        .filter_map(|path| {
            let (module, item) = path.rsplit_once("::")?;
            Some((item.to_owned(), module.to_owned()))
        })
        .collect()
}

/// The longest prefix of `path` that is a module; a root item re-exported
/// from a module counts as that module.
fn resolve(
    path: &str,
    modules: &BTreeMap<String, PathBuf>,
    reexports: &BTreeMap<String, String>,
) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    for end in (1..=parts.len()).rev() {
        let candidate = parts[..end].join("::");
        if modules.contains_key(&candidate) {
            return candidate;
        }
    }
    reexports.get(parts[0]).cloned().unwrap_or_default()
}

/// Every `crate::...` path in the code (comments skipped), braces expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let (tree, after) = take_tree(rest);
        paths.extend(expand(&tree));
        rest = after;
    }
    paths
}

/// A path, possibly with a `{...}` group, up to where it ends.
fn take_tree(text: &str) -> (String, &str) {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => {
                return (text[..i].to_owned(), &text[i..]);
            }
            _ => {}
        }
    }
    (text.to_owned(), "")
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        let path = tree.trim_end_matches("::").to_owned();
        return if path.is_empty() {
            Vec::new()
        } else {
            vec![path]
        };
    };
    let prefix = &tree[..open];
    let inner = tree[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 1..]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|part| {
            let part = if part == "self" { "" } else { part };
            expand(&format!("{prefix}{part}"))
        })
        .collect()
}

/// A cycle as the modules along it, first repeated at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, graph, &mut marks, &mut stack) {
            return Some(cycle);
        }
    }
    None
}
