//! The crate's top-level modules depend on each other without a cycle.
//!
//! Reads every `src/**/*.rs` file, finds its `crate::x` references (in `use`
//! items and paths, including `use crate::{a, b}` groups) and fails if the
//! graph of top-level modules those references draw has a cycle, printing
//! the cycle and the files that make each of its edges. Comments, string
//! literals and `#[cfg(test)] mod … { … }` blocks do not count: a unit test
//! borrowing a helper from a higher module couples no shipped code.
#![expect(clippy::expect_used, reason = "a source file that cannot be read fails the test")]
#![expect(clippy::panic, reason = "a cycle fails the test with the cycle as its message")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    assert!(modules.len() > 5, "found too few modules in src/lib.rs: {modules:?}");
    let graph = import_graph(&src, &modules);
    if let Some(cycle) = find_cycle(&graph) {
        let mut report = format!("import cycle between top-level modules: {}\n", cycle.join(" -> "));
        for pair in cycle.windows(2) {
            let files = &graph[&pair[0]][&pair[1]];
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            report.push_str(&format!("  {} -> {}: {}\n", pair[0], pair[1], files.join(", ")));
        }
        panic!("{report}");
    }
}

#[test]
fn the_scanner_sees_references_and_ignores_what_does_not_count() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let text = r##"
        use crate::a::Thing;
        use crate::{b::Other, c};
        // crate::d in a comment
        const S: &str = "crate::d in a string";
        const R: &str = r#"crate::d in a raw string"#;
        const Q: char = '"';
        fn f<'x>(_: &'x str) -> crate::a::Thing { todo!() }
        #[cfg(test)]
        mod tests {
            use crate::e;
            fn g() { let _ = "}"; }
        }
        fn h() {}
    "##;
    let refs = references(text, &modules);
    assert_eq!(refs, ["a", "b", "c"].map(String::from).into());
}

#[test]
fn a_cycle_is_found_and_a_chain_is_not() {
    let edge = |graph: &mut Graph, a: &str, b: &str| {
        graph.entry(a.into()).or_default().entry(b.into()).or_default().insert("f.rs".into());
    };
    let mut graph = Graph::new();
    edge(&mut graph, "http", "broker");
    edge(&mut graph, "broker", "config");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "config", "http");
    assert_eq!(find_cycle(&graph), Some(["broker", "config", "http", "broker"].map(String::from).into()));
}

/// The `mod x;` items of `src/lib.rs`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_owned())
        })
        .collect()
}

/// Edges `from -> to -> files` between top-level modules.
fn import_graph(src: &Path, modules: &BTreeSet<String>) -> Graph {
    let mut graph = Graph::new();
    for module in modules {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        rust_files(&src.join(module), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let shown = file.strip_prefix(src.parent().unwrap_or(src)).unwrap_or(&file).display().to_string();
            for target in references(&text, modules) {
                if &target != module {
                    graph.entry(module.clone()).or_default().entry(target).or_default().insert(shown.clone());
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`.
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = without_test_modules(&code_only(text));
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest_trimmed = rest.trim_start();
        if let Some(group) = rest_trimmed.strip_prefix('{') {
            // `crate::{a::x, b}`: the first name of each top-level entry.
            let mut depth = 0usize;
            let mut at_entry_start = true;
            let mut name = String::new();
            for c in group.chars() {
                if depth == 0 && at_entry_start {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                        continue;
                    }
                    if c.is_whitespace() && name.is_empty() {
                        continue;
                    }
                    at_entry_start = false;
                    if modules.contains(&name) {
                        found.insert(std::mem::take(&mut name));
                    }
                    name.clear();
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_entry_start = true,
                    _ => {}
                }
            }
            if modules.contains(&name) {
                found.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if modules.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

/// `text` with comments, string and character literals replaced by spaces
/// (newlines kept), so that braces and paths can be read from what is left.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if (c == 'r' || c == 'b') && raw_string_hashes(&chars[i..]).is_some() {
            let (prefix, hashes) = raw_string_hashes(&chars[i..]).unwrap_or_default();
            let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            for _ in 0..prefix {
                out.push(' ');
            }
            i += prefix;
            while i < chars.len() && !chars[i..].starts_with(&closing) {
                blank(&mut out, chars[i]);
                i += 1;
            }
            for _ in 0..closing.len().min(chars.len() - i) {
                out.push(' ');
            }
            i += closing.len();
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime.
            let end = if next == Some('\\') {
                chars[i + 2..].iter().position(|&c| c == '\'').map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// For a raw string literal starting here (`r"`, `r#"`, `br#"`): the length
/// of its opening and its number of `#`.
fn raw_string_hashes(chars: &[char]) -> Option<(usize, usize)> {
    let start = if chars.first() == Some(&'b') { 1 } else { 0 };
    if chars.get(start) != Some(&'r') {
        return None;
    }
    let hashes = chars[start + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(start + 1 + hashes) == Some(&'"')).then_some((start + 2 + hashes, hashes))
}

/// `code` (as `code_only` returns it) without `#[cfg(test)] mod x { … }`.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let item = item.strip_prefix("pub ").unwrap_or(item).trim_start();
        let Some(open) = item.strip_prefix("mod ").and_then(|m| m.find('{').map(|b| (m, b))) else {
            rest = after;
            continue;
        };
        let (module, brace) = open;
        if module[..brace].contains(';') {
            // `#[cfg(test)] mod x;`: a file of its own, read on its own.
            rest = after;
            continue;
        }
        let body_start = code.len() - module.len() + brace + 1;
        let mut depth = 1usize;
        let mut end = code.len();
        for (j, c) in code[body_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = body_start + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &code[end..];
    }
    out.push_str(rest);
    out
}

/// A cycle in `graph`, as the modules along it with the first repeated at
/// the end; `None` if there is none.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, done: &mut BTreeSet<String>, path: &mut Vec<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}
