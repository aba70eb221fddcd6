//! The crate's layers, bottom first, and the test that keeps them: a module
//! uses only modules of lower layers (`crate::x` in its code outside
//! `#[cfg(test)]` parts and comments), so the pipeline's imports go one way
//! and there are no cycles. ARCHITECTURE.md explains each layer. A new
//! module gets a place here; a needed upward import means a type belongs
//! lower down (or behind a trait the lower layer defines).

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom first. Modules of one layer do not use each other either.
const LAYERS: &[&[&str]] = &[
    // Leaves: no module of the crate.
    &["duration", "secrets", "private_fs", "schedule", "backoff"],
    &["event", "logging", "http_retry"],
    // A public HTTP server with limits (the webhook's).
    &["serve"],
    // Zoom's wire formats and clients: OAuth, WebSocket, webhook, REST.
    &["zoom"],
    // What scripts can do, and the sandbox they do it from.
    &["effects"],
    &["script"],
    &["rules"],
    &["engine"],
    // Several nodes on one journal: identity, leases, the node registry's seam.
    &["cluster"],
    // What the engine's seams are given, and what drives it.
    &["journal", "reload", "terminal"],
    // `zoomwire test` runs rules against the memory journal.
    &["reconcile", "scheduler", "rule_tests"],
    &["admin"],
    &["config"],
    &["daemon"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The `crate::x` modules a source file uses, outside comments and tests
/// (a `#[cfg(test)] mod tests;` line, or the `#[cfg(test)]` module that
/// ends a file).
fn used_modules(source: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        if line.starts_with("#[cfg(test)]") {
            match lines.next() {
                Some(item) if item.trim_end().ends_with(';') => continue,
                _ => break,
            }
        }
        if !line.starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    let mut used = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            // `use crate::{a, b::{c, d}}`: the first name of each top-level path.
            Some(group) => used.extend(top_level_paths(group).filter_map(first_name)),
            None => used.extend(first_name(rest)),
        }
    }
    used
}

/// The comma-separated paths of a `{...}` group (its text after the `{`).
fn top_level_paths(group: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0;
    let mut end = group.len();
    let mut starts = vec![0];
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                end = at;
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => starts.push(at + 1),
            _ => {}
        }
    }
    let bounds: Vec<(usize, usize)> = starts
        .iter()
        .zip(starts.iter().skip(1).map(|s| s - 1).chain([end]))
        .map(|(&start, stop)| (start, stop))
        .collect();
    bounds
        .into_iter()
        .map(move |(start, stop)| group[start..stop].trim())
}

fn first_name(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, module: Option<&str>, found: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let owner = module.map_or(stem.clone(), str::to_string);
        if path.is_dir() {
            sources(&path, Some(&owner), found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push((owner, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, None, &mut files);
    let mut wrong = Vec::new();
    for (module, source) in &files {
        if module == "lib" || module == "layers" {
            continue;
        }
        let Some(own) = layer_of(module) else {
            wrong.push(format!("`{module}` has no layer in layers.rs"));
            continue;
        };
        for used in used_modules(source) {
            if used == *module {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!("`{module}` uses `{used}`, not below it")),
                None => wrong.push(format!("`{module}` uses `{used}`, which has no layer")),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn reads_the_modules_a_file_uses() {
    let source = "//! about crate::daemon\nuse crate::{event::Event, zoom};\n\
                  use crate::{\n    journal::{a, b},\n    reload,\n};\n\
                  use crate::effects::BoxFuture;\nfn f() -> crate::rules::Rule {}\n\
                  #[cfg(test)]\nmod tests;\nuse crate::zoom::rest;\n\
                  #[cfg(test)]\nmod more { use crate::admin; }\nuse crate::daemon;\n";
    let used: Vec<String> = used_modules(source).into_iter().collect();
    assert_eq!(
        used,
        ["effects", "event", "journal", "reload", "rules", "zoom"]
    );
}
