//! The module graph points one way. This test reads every `crate::` reference in the
//! production code of `src/` (test modules aside), maps each to the top-level module it
//! names, and checks the result against the layer order written in docs/ARCHITECTURE.md
//! (between the `layers:begin` and `layers:end` markers): a module may use modules of
//! lower layers only, never its own layer's neighbours or a higher layer, so there is no
//! cycle. The wiring (`app`, `cli`, `main`, `lib`) may use everything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const WIRING: [&str; 4] = ["app", "cli", "main", "lib"];

/// The layers, lowest first, as docs/ARCHITECTURE.md writes them: one line per layer,
/// `N. module, module  (comment)`.
fn layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let start = doc.find("layers:begin").expect("a layers:begin marker in docs/ARCHITECTURE.md");
    let end = doc.find("layers:end").expect("a layers:end marker in docs/ARCHITECTURE.md");
    doc[start..end]
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (number, rest) = line.trim().split_once(". ")?;
            number.parse::<u32>().ok()?;
            let names = rest.split("  ").next().unwrap_or(rest);
            Some(names.split(',').map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect())
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("below src");
    let first = relative.components().next().expect("a component").as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The production part of a file: up to its first `#[cfg(test)]`; nothing for a file
/// that is itself a test module (`tests.rs`).
fn production(file: &Path, text: &str) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    // Comments may name anything.
    code.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every top-level name a text refers to as `crate::name` or inside `crate::{...}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    names.insert(first_segment(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            names.insert(first_segment(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

fn first_segment(text: &str) -> String {
    text.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Exported macros live at the crate root: map each to the module that defines it.
fn macro_homes(src: &Path, files: &[PathBuf]) -> HashMap<String, String> {
    let mut homes = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read");
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("macro_rules! ") {
                homes.insert(first_segment(rest), module_of(src, file));
            }
        }
    }
    homes
}

/// `module -> used module -> files that use it`.
fn dependencies() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let macros = macro_homes(&src, &files);
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = production(file, &std::fs::read_to_string(file).expect("read"));
        for name in crate_references(&text) {
            let used = macros.get(&name).cloned().unwrap_or(name);
            if used != module {
                let shown = file.strip_prefix(&src).expect("below src").display().to_string();
                graph.entry(module.clone()).or_default().entry(used).or_default().insert(shown);
            }
        }
        graph.entry(module).or_default();
    }
    graph
}

#[test]
fn every_module_of_src_has_a_layer_and_uses_only_lower_layers() {
    let layers = layers();
    assert!(!layers.is_empty(), "docs/ARCHITECTURE.md lists no layers");
    let layer_of: HashMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, ms)| ms.iter().map(move |m| (m.as_str(), i))).collect();
    let graph = dependencies();
    let mut problems = Vec::new();
    for (module, uses) in &graph {
        if WIRING.contains(&module.as_str()) {
            continue;
        }
        let Some(&mine) = layer_of.get(module.as_str()) else {
            problems.push(format!("src/{module} has no layer in docs/ARCHITECTURE.md"));
            continue;
        };
        for (used, files) in uses {
            if WIRING.contains(&used.as_str()) {
                problems.push(format!("{module} uses the wiring module {used} ({files:?})"));
                continue;
            }
            match layer_of.get(used.as_str()) {
                None => problems.push(format!("{module} uses {used}, which has no layer ({files:?})")),
                Some(&theirs) if theirs >= mine => problems.push(format!(
                    "{module} (layer {}) uses {used} (layer {}) in {files:?}",
                    mine + 1,
                    theirs + 1
                )),
                Some(_) => {}
            }
        }
    }
    for module in layer_of.keys() {
        if !graph.contains_key(*module) {
            problems.push(format!("docs/ARCHITECTURE.md places {module}, which is not in src/"));
        }
    }
    assert!(problems.is_empty(), "the module graph breaks the documented order:\n{}", problems.join("\n"));
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let text = "use crate::events::{A, B};\nuse crate::{clock::Clock, db, self};\nlet x = crate::exec!(y);";
    let names: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(names, ["clock", "db", "events", "exec"]);
}
