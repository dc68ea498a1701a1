//! The house rules of `src/`, checked on the source text so they stay true as
//! the code grows (issue 7): Redis is spoken only in its rooms, Lua lives in
//! named files, the top-level modules import each other without a cycle, and
//! no file grows into a second concept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms that may issue Redis commands or hold Lua scripts.
/// `gate/` keeps the fleet-wide rate gate of each source (issue 8, point 3).
const REDIS_ROOMS: &[&str] = &["queue/", "lock/", "state/", "gate/", "db.rs"];

/// The longest a source file may be before it wants splitting by concept.
const MAX_FILE_LINES: usize = 800;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every file below `dir` ending in `ext`, with its path relative to `src/`.
fn files(dir: &Path, ext: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                let rel = path
                    .strip_prefix(src())
                    .expect("below src/")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("source files are UTF-8");
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

/// The text before the file's unit tests, if it has any.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// No Redis command, pipeline or script outside `queue/`, `lock/`, `state/`, `gate/` and `db.rs`.
#[test]
fn redis_is_spoken_only_in_its_rooms() {
    let patterns = [
        "redis::cmd",
        "redis::pipe",
        "Script::new",
        "AsyncCommands",
        "invoke_async",
        "query_async",
    ];
    let offenders: Vec<String> = files(&src(), "rs")
        .into_iter()
        .filter(|(rel, _)| !REDIS_ROOMS.iter().any(|room| rel.starts_with(room)))
        .flat_map(|(rel, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, line)| patterns.iter().any(|p| line.contains(p)))
                .map(|(n, line)| format!("src/{rel}:{}: {}", n + 1, line.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "Redis outside queue/, lock/, state/, gate/, db.rs:\n{}",
        offenders.join("\n")
    );
}

/// Every script is a `lua/*.lua` file that opens with a comment (its KEYS and ARGV),
/// and Rust builds scripts only from such files.
#[test]
fn lua_lives_in_named_files() {
    for (rel, text) in files(&src(), "lua") {
        assert!(
            text.starts_with("--"),
            "src/{rel} must open with a comment naming its KEYS and ARGV"
        );
    }
    for (rel, text) in files(&src(), "rs") {
        for (n, line) in text.lines().enumerate() {
            if line.contains("Script::new(") || line.contains("fenced_script(") {
                let inline = !line.contains("include_str!(\"lua/") && !line.contains("fn fenced_script");
                let composer = line.contains("format!(\"{LUA_CHECK_AND_RAISE}");
                assert!(
                    !inline || composer,
                    "src/{rel}:{}: inline Lua; put it in a lua/*.lua file",
                    n + 1
                );
            }
        }
    }
}

/// The top-level modules of `src/` (from their `crate::` paths outside unit tests) form no cycle.
#[test]
fn no_import_cycle_among_modules() {
    let all = files(&src(), "rs");
    let top = |rel: &str| rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs").to_owned();
    let modules: BTreeSet<String> = all
        .iter()
        .map(|(rel, _)| top(rel))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &all {
        let from = top(rel);
        if !modules.contains(&from) {
            continue;
        }
        let code = without_tests(text);
        let mut named = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                named.extend(
                    group
                        .split(',')
                        .filter_map(|p| p.trim().split("::").next())
                        .map(str::to_owned),
                );
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                named.insert(rest[..end].to_owned());
            }
        }
        for to in named {
            if to != from && modules.contains(&to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search; a grey node reached again closes a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == next).unwrap_or(0);
                    cycles.push(format!("{} -> {next}", path[start..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(next, edges, state, path, cycles),
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
    }
    let (mut state, mut cycles) = (BTreeMap::new(), Vec::new());
    for m in &modules {
        if !state.contains_key(m.as_str()) {
            visit(m, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles among src/ modules:\n{}",
        cycles.join("\n")
    );
}

/// No source file is longer than 800 lines before its unit tests: one concept per file.
#[test]
fn files_hold_one_concept() {
    let long: Vec<String> = files(&src(), "rs")
        .into_iter()
        .map(|(rel, text)| (rel, without_tests(&text).lines().count()))
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .map(|(rel, n)| format!("src/{rel}: {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines (split them by concept):\n{}",
        long.join("\n")
    );
}
