//! Boundary checks over the source tree, in the style of rust-analyzer's
//! tidy tests: each rule of ARCHITECTURE.md's "Boundaries" that a type
//! checker cannot see is a test here, so crossing a boundary fails the
//! suite with the file and line. Each checker is also run on a made-up
//! tree that breaks its rule, so none of them can pass by finding nothing.
//!
//! Only product code is checked (each crate's `src/`); a file's
//! `#[cfg(test)]` module is its tests' and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its path from the workspace root, and its code (the
/// text before its test module, with line comments blanked).
struct Source {
    path: String,
    code: String,
}

const CRATES: [&str; 5] = ["agent", "controller", "cli", "core", "proto"];

/// Where the protobuf types may be named: each crate's edge.
const PROTO_EDGES: &[&str] = &[
    "proto/src/",
    "agent/src/wire.rs",
    "agent/src/service.rs",
    "controller/src/wire.rs",
    "controller/src/service.rs",
    "controller/src/agents/",
    // Binds the gRPC server.
    "controller/src/lib.rs",
    // fleetctl's commands are each one call of the Controller API; what
    // they read back and render (run_render, progress, audit_doc,
    // audit_render, render) never sees protobuf.
    "cli/src/client.rs",
    "cli/src/commands/audit.rs",
    "cli/src/commands/follow.rs",
    "cli/src/commands/hosts.rs",
    "cli/src/commands/plan.rs",
    "cli/src/commands/runs.rs",
];

/// "~600 lines": the limit a file may reach before it must be split.
const MAX_FILE_LINES: usize = 650;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text before the file's test module, with `//` comments blanked
/// (prose may name what code may not).
fn code_of(text: &str) -> String {
    let test_module = text
        .match_indices("#[cfg(test)]")
        .find(|(at, tag)| text[at + tag.len()..].trim_start().starts_with("mod "));
    let before_tests = match test_module {
        Some((at, _)) => &text[..at],
        None => text,
    };
    before_tests
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn product_sources() -> (Vec<Source>, BTreeMap<String, usize>) {
    let root = workspace();
    let mut sources = Vec::new();
    let mut lengths = BTreeMap::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            let path = file
                .strip_prefix(&root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            lengths.insert(path.clone(), text.lines().count());
            sources.push(Source {
                path,
                code: code_of(&text),
            });
        }
    }
    sources.sort_by(|a, b| a.path.cmp(&b.path));
    (sources, lengths)
}

/// Every line of `sources` outside `allowed` where `needle` is used.
fn uses_outside(sources: &[Source], needle: &str, allowed: &[&str]) -> Vec<String> {
    sources
        .iter()
        .filter(|s| !allowed.iter().any(|a| s.path.starts_with(a)))
        .flat_map(|s| {
            s.code
                .lines()
                .enumerate()
                .filter(|(_, line)| line.contains(needle))
                .map(move |(n, line)| format!("{}:{}: {}", s.path, n + 1, line.trim()))
        })
        .collect()
}

/// Lines of fleetctl that read a JSON document by key (`doc["run"]`) or
/// hold one untyped.
fn untyped_json(sources: &[Source]) -> Vec<String> {
    let mut found = Vec::new();
    for s in sources.iter().filter(|s| s.path.starts_with("cli/src/")) {
        for (n, line) in s.code.lines().enumerate() {
            let indexed = line.match_indices("[\"").any(|(at, _)| {
                line[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | ')' | ']'))
            });
            let untyped = line.contains("serde_json::Value")
                || line.match_indices("Value::").any(|(at, _)| {
                    line[..at]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !c.is_alphanumeric())
                });
            if indexed || untyped {
                found.push(format!("{}:{}: {}", s.path, n + 1, line.trim()));
            }
        }
    }
    found
}

/// The module path of a file of crate `krate` (`agent/src/remap/walk.rs`
/// → `[remap, walk]`; `mod.rs` and `lib.rs` are their directory's).
fn module_of(path: &str) -> (String, Vec<String>) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let krate = parts.remove(0).to_string();
    parts.remove(0); // src
    let mut module: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    if let Some(last) = module.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            module.push(stem.to_string());
        }
    }
    (krate, module)
}

/// The paths a `use` tree names: `a::{b, c::d}` → `a::b`, `a::c::d`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
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
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// The tree of a `use` declaration ending this statement, if it is one:
/// a line that starts with `use` (or `pub use`, `pub(crate) use`), whose
/// tree has only what a path can have.
fn use_tree(statement: &str) -> Option<&str> {
    let mut offset = 0;
    for line in statement.split_inclusive('\n') {
        let head = line.trim_start();
        let visibility = ["pub(crate) ", "pub(super) ", "pub ", ""]
            .into_iter()
            .find(|v| head.starts_with(v) && head[v.len()..].starts_with("use "));
        if let Some(v) = visibility {
            let start = offset + (line.len() - head.len()) + v.len() + "use ".len();
            let tree = &statement[start..];
            let path_like = tree
                .chars()
                .all(|c| c.is_alphanumeric() || " \n_:{},*".contains(c));
            return path_like.then_some(tree);
        }
        offset += line.len();
    }
    None
}

/// The files of its own crate each file `use`s (crate roots left out:
/// they declare every module and wire them together).
fn imports(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let files: BTreeSet<&str> = sources.iter().map(|s| s.path.as_str()).collect();
    let file_of = |krate: &str, module: &[String]| -> Option<String> {
        (0..=module.len()).rev().find_map(|n| {
            let dir = format!("{krate}/src/{}", module[..n].join("/"));
            let dir = dir.trim_end_matches('/');
            let candidates = if n == 0 {
                vec![format!("{dir}/lib.rs"), format!("{dir}/main.rs")]
            } else {
                vec![format!("{dir}.rs"), format!("{dir}/mod.rs")]
            };
            candidates.into_iter().find(|c| files.contains(c.as_str()))
        })
    };
    let mut graph = BTreeMap::new();
    for s in sources {
        let (krate, here) = module_of(&s.path);
        let mut targets = BTreeSet::new();
        for statement in s.code.split(';') {
            let Some(tree) = use_tree(statement) else {
                continue;
            };
            for path in expand(tree) {
                let segments: Vec<&str> = path.split("::").map(str::trim).collect();
                let mut module = match segments.first() {
                    Some(&"crate") => Vec::new(),
                    Some(&"super") => here[..here.len().saturating_sub(1)].to_vec(),
                    Some(&"self") => here.clone(),
                    _ => continue,
                };
                module.extend(segments[1..].iter().map(|s| s.to_string()));
                if let Some(target) = file_of(&krate, &module)
                    && target != s.path
                    && !target.ends_with("/lib.rs")
                    && !target.ends_with("/main.rs")
                {
                    targets.insert(target);
                }
            }
        }
        if !s.path.ends_with("/lib.rs") && !s.path.ends_with("/main.rs") {
            graph.insert(s.path.clone(), targets);
        }
    }
    graph
}

/// Every pair of files that import each other, as `a ⇄ b`.
fn circles(sources: &[Source]) -> Vec<String> {
    let graph = imports(sources);
    let mut found = Vec::new();
    for (a, targets) in &graph {
        for b in targets {
            if a < b && graph.get(b).is_some_and(|t| t.contains(a)) {
                found.push(format!("{a} ⇄ {b}"));
            }
        }
    }
    found
}

fn too_long(lengths: &BTreeMap<String, usize>) -> Vec<String> {
    lengths
        .iter()
        .filter(|(_, n)| **n > MAX_FILE_LINES)
        .map(|(path, n)| format!("{path}: {n} lines"))
        .collect()
}

fn assert_none(what: &str, found: Vec<String>, fix: &str) {
    assert!(found.is_empty(), "{what}:\n  {}\n{fix}", found.join("\n  "));
}

#[test]
fn protobuf_types_stay_at_each_crates_edge() {
    let (sources, _) = product_sources();
    assert_none(
        "fleet_proto used outside the edge modules",
        uses_outside(&sources, "fleet_proto", PROTO_EDGES),
        "convert in the crate's wire module (agent/src/wire.rs, controller/src/wire.rs, controller/src/agents/) and pass domain types inward",
    );
}

#[test]
fn the_store_engine_and_the_container_engine_each_have_one_home() {
    let (sources, _) = product_sources();
    assert_none(
        "sled used outside the controller's store",
        uses_outside(&sources, "sled::", &["controller/src/store.rs"]),
        "keep the store behind controller/src/store.rs",
    );
    assert_none(
        "bollard used outside the agent",
        uses_outside(&sources, "bollard", &["agent/src/"]),
        "only the agent talks to a container engine",
    );
}

#[test]
fn fleetctl_reads_documents_as_the_shared_types() {
    let (sources, _) = product_sources();
    assert_none(
        "fleetctl reads a JSON document by key or holds it untyped",
        untyped_json(&sources),
        "deserialize into the fleet_core type (plan, run, event) and use its fields",
    );
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let (sources, _) = product_sources();
    assert_none(
        "import circles",
        circles(&sources),
        "move what both need into a module of its own that imports neither",
    );
}

#[test]
fn no_source_file_is_too_long_to_read_in_one_sitting() {
    let (_, lengths) = product_sources();
    assert_none(
        &format!("files over {MAX_FILE_LINES} lines"),
        too_long(&lengths),
        "split it by reason to change",
    );
}

/// The checkers on a made-up tree that breaks every rule: each finds it.
#[test]
fn each_checker_finds_what_breaks_its_rule() {
    let source = |path: &str, text: &str| Source {
        path: path.into(),
        code: code_of(text),
    };
    let tree = vec![
        source(
            "controller/src/run/unit.rs",
            "use fleet_proto::agent::v1 as pb;\nuse crate::run::ctx::Draft;\n",
        ),
        source(
            "controller/src/run/ctx.rs",
            "use crate::run::{unit::kinds, model};\n// fleet_proto in prose is fine\n",
        ),
        source(
            "controller/src/wire.rs",
            "use fleet_proto::controller::v1 as pb;\n",
        ),
        source("controller/src/run/holds.rs", "fn f(db: sled::Db) {}\n"),
        source("core/src/plan.rs", "use bollard::Docker;\n"),
        source(
            "cli/src/commands/run_render.rs",
            "let id = view[\"run\"][\"id\"].as_str();\nlet t = Table::new(&[\"HOST\"]);\n",
        ),
        source(
            "cli/src/commands/progress.rs",
            "fn f(v: &serde_json::Value) {}\n#[cfg(test)]\nmod tests { fn g() { x[\"a\"]; } }\n",
        ),
    ];
    let proto = uses_outside(&tree, "fleet_proto", PROTO_EDGES);
    assert_eq!(
        proto,
        ["controller/src/run/unit.rs:1: use fleet_proto::agent::v1 as pb;"]
    );
    assert_eq!(
        uses_outside(&tree, "sled::", &["controller/src/store.rs"]).len(),
        1
    );
    assert_eq!(uses_outside(&tree, "bollard", &["agent/src/"]).len(), 1);
    let untyped = untyped_json(&tree);
    assert_eq!(untyped.len(), 2, "{untyped:?}");
    assert!(untyped[0].starts_with("cli/src/commands/run_render.rs:1"));
    assert!(untyped[1].starts_with("cli/src/commands/progress.rs:1"));
    assert_eq!(
        circles(&tree),
        ["controller/src/run/ctx.rs ⇄ controller/src/run/unit.rs"]
    );
    let lengths = BTreeMap::from([("agent/src/big.rs".to_string(), MAX_FILE_LINES + 1)]);
    assert_eq!(too_long(&lengths).len(), 1);
    assert_eq!(
        expand("crate::a::{b, c::{d, e}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e"]
    );
}
