//! The runtime crate's layers, as `docs/design.md` names them ("Layers of the
//! runtime crate"): reads that table and the crate's sources, and fails on an
//! import that points up a layer, on an import cycle among placed files and on
//! a placed file longer than [`MAX_LINES`] lines of code.
//!
//! The imports are read from the text (`crate::` paths, `use` or inline), as a
//! reader would follow them; `super::` paths stay inside a folder, which is one
//! layer, and are not followed. Test modules (`#[cfg(test)] mod … { … }` at the
//! end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines of code (comments and test modules aside) a placed file holds.
const MAX_LINES: usize = 800;

/// Where an unplaced module sits: above every layer but the facade, so that a
/// placed module may not import it.
const UNPLACED: u32 = 35;

/// A row of the table: a top-level module of `jetpack/src`.
#[derive(Debug)]
struct Row {
    /// Its rank: ten times its layer's number.
    rank: u32,
    placed: bool,
    /// Whether its files are held to [`MAX_LINES`] (`placed` says `yes`, not
    /// only `imports`).
    short: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The table of `docs/design.md`, by module.
fn table() -> BTreeMap<String, Row> {
    let path = root().join("../docs/design.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Layers of the runtime crate"))
        .expect("docs/design.md has a section \"Layers of the runtime crate\"");
    // The table before the section's first subsection.
    let section = section.split("\n### ").next().unwrap_or(section);
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 3, "a row of the layers' table: {line}");
        let module = cells[0].trim_matches('`').to_string();
        let layer: u32 = (cells[1].split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the layer of {module} is not a number: {line}"));
        let (placed, short) = match cells[2] {
            "yes" => (true, true),
            "imports" => (true, false),
            "no" => (false, false),
            other => panic!("`placed` of {module} is yes, imports or no, not {other:?}"),
        };
        rows.insert(
            module,
            Row {
                rank: layer * 10,
                placed,
                short,
            },
        );
    }
    assert!(rows.len() > 3, "the layers' table has its rows");
    rows
}

/// A source file: its module path (`["store", "postgres"]`) and its code.
struct File {
    path: PathBuf,
    module: Vec<String>,
    code: Vec<String>,
}

fn files() -> Vec<File> {
    let src = root().join("src");
    let mut read = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read jetpack/src") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).expect("under src");
                let mut module: Vec<String> = (rel.with_extension("").iter())
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                    module.pop();
                }
                let text = fs::read_to_string(&path).expect("read a source file");
                read.push((rel.to_path_buf(), module, text));
            }
        }
    }
    // Files that are test modules of their own (`#[cfg(test)] mod tests;`)
    // are test code through and through.
    let tests: BTreeSet<Vec<String>> = (read.iter())
        .flat_map(|(_, module, text)| {
            test_modules(text).into_iter().map(move |name| {
                let mut path = module.clone();
                path.push(name);
                path
            })
        })
        .collect();
    let mut all: Vec<File> = read
        .into_iter()
        .map(|(path, module, text)| {
            let test = tests.iter().any(|t| module.starts_with(t));
            File {
                path,
                code: if test { Vec::new() } else { code_lines(&text) },
                module,
            }
        })
        .collect();
    all.sort_by(|a, b| a.path.cmp(&b.path));
    all
}

/// The modules `text` declares in files of their own under a `#[cfg(…)]`
/// that names `test`: `#[cfg(test)]` then `mod tests;` gives `tests`.
fn test_modules(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0].starts_with("#[cfg(") && w[0].contains("test"))
        .filter_map(|w| {
            let name = w[1].strip_prefix("pub(crate) ").unwrap_or(w[1]);
            let name = name.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The lines of code of a file: its test module (a `mod` under a `#[cfg(…)]`
/// that names `test`, at its end) and comment lines left out.
fn code_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            let (cfg, next) = (lines[i].trim(), lines.get(i + 1).map_or("", |l| l.trim()));
            cfg.starts_with("#[cfg(")
                && cfg.contains("test")
                && (next.starts_with("mod ") || next.starts_with("pub(crate) mod "))
        })
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.to_string())
        .collect()
}

/// The paths after each `crate::` of `code`: `crate::a::{b::C, d}` gives
/// `a::b::C` and `a::d`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        let before = at.checked_sub(1).map(|j| bytes[j]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue; // `$crate::`, `jetpack_crate::`
        }
        let (found, _) = tree(code, from, Vec::new());
        paths.extend(found);
    }
    paths
}

/// Reads a path (or a `{…}` group of them) at `at`, prefixed with `prefix`;
/// returns the paths and where it stopped.
fn tree(code: &str, mut at: usize, mut prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let bytes = code.as_bytes();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            let mut all = Vec::new();
            at += 1;
            loop {
                let (found, next) = tree(code, at, prefix.clone());
                all.extend(found);
                at = next;
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (all, at + 1);
                }
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if at == start {
            return (
                vec![prefix].into_iter().filter(|p| !p.is_empty()).collect(),
                at,
            );
        }
        prefix.push(code[start..at].to_string());
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            // `as Name` and the rest of an item end the path here.
            let mut end = at;
            let rest = code[at..].trim_start();
            if let Some(alias) = rest.strip_prefix("as ") {
                end = code.len() - alias.trim_start().len();
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
            }
            return (vec![prefix], end);
        }
    }
}

/// The module of `modules` a path lands in: its longest prefix that is one
/// (`lib.rs` itself, the empty path, for `crate::Error` and the like).
fn resolve<'a>(path: &[String], modules: &'a BTreeSet<Vec<String>>) -> Option<&'a Vec<String>> {
    (0..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n].to_vec()))
}

/// A top-level module's rank and whether it is placed.
fn rank(module: &[String], table: &BTreeMap<String, Row>) -> (u32, bool) {
    let top = module.first().map_or("lib", String::as_str);
    match table.get(top) {
        Some(row) if row.placed => (row.rank, true),
        _ if top == "lib" => (40, true),
        _ => (UNPLACED, false),
    }
}

/// The imports among the crate's files: from each file to the files it names.
fn edges(files: &[File]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges = BTreeMap::new();
    for f in files {
        let code = f.code.join("\n");
        let to: BTreeSet<Vec<String>> = (crate_paths(&code).iter())
            .filter_map(|p| resolve(p, &modules))
            .filter(|m| **m != f.module)
            .cloned()
            .collect();
        edges.insert(f.module.clone(), to);
    }
    edges
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

#[test]
fn imports_point_down_the_layers() {
    let table = table();
    let files = files();
    for (module, row) in &table {
        let exists = module == "lib" || files.iter().any(|f| f.module.first() == Some(module));
        assert!(
            exists || !row.placed,
            "docs/design.md places module `{module}`, which jetpack/src does not have"
        );
    }
    let mut up = Vec::new();
    for (from, targets) in edges(&files) {
        let (from_rank, placed) = rank(&from, &table);
        if !placed {
            continue;
        }
        for to in targets {
            let (to_rank, _) = rank(&to, &table);
            if to_rank > from_rank && to.first() != from.first() {
                up.push(format!("{} imports {}", name(&from), name(&to)));
            }
        }
    }
    assert!(
        up.is_empty(),
        "imports that point up a layer (docs/design.md, \"Layers of the runtime crate\"):\n  {}",
        up.join("\n  ")
    );
}

#[test]
fn placed_files_form_no_cycle() {
    let table = table();
    let files = files();
    let placed = |m: &Vec<String>| rank(m, &table).1;
    let edges: BTreeMap<Vec<String>, Vec<Vec<String>>> = (edges(&files).into_iter())
        .filter(|(from, _)| placed(from))
        .map(|(from, to)| (from, to.into_iter().filter(placed).collect()))
        .collect();
    // A depth-first search that meets a file on its own path found a cycle.
    fn visit(
        at: &Vec<String>,
        edges: &BTreeMap<Vec<String>, Vec<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut cycle = path[i..].to_vec();
            cycle.push(at.clone());
            return Some(cycle);
        }
        if !done.insert(at.clone()) {
            return None;
        }
        path.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        // Moved into `done` only once left: a second entry through another
        // path is not a cycle.
        let mut path = Vec::new();
        if let Some(cycle) = visit(start, &edges, &mut path, &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
            panic!("an import cycle: {}", names.join(" → "));
        }
    }
}

#[test]
fn placed_files_are_short() {
    let table = table();
    let short = |f: &&File| {
        let top = f.module.first().map_or("lib", String::as_str);
        table.get(top).is_some_and(|row| row.short)
    };
    let long: Vec<String> = (files().iter())
        .filter(short)
        .filter(|f| f.code.iter().filter(|l| !l.trim().is_empty()).count() > MAX_LINES)
        .map(|f| format!("{} ({} lines)", f.path.display(), f.code.len()))
        .collect();
    assert!(
        long.is_empty(),
        "placed files over {MAX_LINES} lines of code: {}",
        long.join(", ")
    );
}

#[test]
fn test_modules_are_left_out() {
    let code = code_lines("use a;\n// b\nfn c() {}\n#[cfg(all(test, feature = \"x\"))]\nmod tests {\n    use crate::up;\n}\n");
    assert_eq!(code, ["use a;", "fn c() {}"]);
}

#[test]
fn the_reader_of_imports_reads_what_rust_does() {
    let paths = crate_paths(
        "use crate::a::{b::C, d as E, f::{self, G}};\nlet x = crate::h::i(); $crate::no; use super::j;",
    );
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["a::b::C", "a::d", "a::f::self", "a::f::G", "h::i"]);
}

#[test]
fn test_files_are_found_by_their_declarations() {
    let text = "mod a;\n#[cfg(all(test, feature = \"x\"))]\nmod conformance;\n#[cfg(test)]\npub(crate) mod tests;\n#[cfg(test)]\nmod inline {\n}\n";
    assert_eq!(test_modules(text), ["conformance", "tests"]);
}
