//! The documentation and the binary agree: every command's options, as
//! `--help` shows them, appear in the command reference.

use clap::CommandFactory;

/// The README and every page under docs/, as one text.
fn documentation() -> String {
    let mut text = std::fs::read_to_string(crate::helpers::repo_root().join("README.md")).unwrap();
    if let Ok(entries) = std::fs::read_dir(crate::helpers::repo_root().join("docs")) {
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                text.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    text
}

/// Each leaf command as its words and its long options.
/// A command's words and each long option with its short form, if any.
type Leaf = (Vec<String>, Vec<(String, Option<String>)>);

fn leaves(command: &clap::Command, words: Vec<String>, out: &mut Vec<Leaf>) {
    let subcommands: Vec<&clap::Command> = command.get_subcommands().filter(|c| c.get_name() != "help").collect();
    if subcommands.is_empty() {
        let options = command
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| (format!("--{l}"), a.get_short().map(|s| format!("-{s} ")))))
            .filter(|(l, _)| l != "--help" && l != "--version")
            .collect();
        out.push((words, options));
        return;
    }
    for sub in subcommands {
        let mut next = words.clone();
        next.push(sub.get_name().to_owned());
        leaves(sub, next, out);
    }
}

#[test]
fn every_option_of_every_command_is_documented() {
    let docs = documentation();
    let mut all = Vec::new();
    leaves(&halflife::cli::Cli::command(), Vec::new(), &mut all);
    assert!(all.len() > 20, "the command tree was not read");
    let mut missing = Vec::new();
    for (words, options) in all {
        // A command is documented where a line names it: `halflife systems
        // promote …`, or a synopsis listing alternatives (`systems
        // suspend|retire|revoke <id>`).
        let named = |line: &str| {
            line.match_indices("halflife ").any(|(at, _)| {
                let mut rest = line[at + "halflife ".len()..].split_whitespace();
                words.iter().all(|w| {
                    rest.next().is_some_and(|t| {
                        let t = t.trim_matches(|c: char| !(c.is_alphanumeric() || c == '-' || c == '|'));
                        t.split('|').any(|alt| alt == w)
                    })
                })
            })
        };
        let lines: Vec<&str> = docs.lines().filter(|l| named(l)).collect();
        if lines.is_empty() {
            missing.push(format!("halflife {} is not in the command reference", words.join(" ")));
            continue;
        }
        for (long, short) in options {
            let shown = |l: &&str| l.contains(long.as_str()) || short.as_ref().is_some_and(|s| l.contains(s.as_str()));
            if !lines.iter().any(shown) {
                missing.push(format!("halflife {} {long}", words.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "documented nowhere:\n  {}", missing.join("\n  "));
}

/// README.md and every page under docs/, each with its path.
fn pages() -> Vec<(std::path::PathBuf, String)> {
    let root = crate::helpers::repo_root();
    let mut paths = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// The text outside fenced code blocks, line by line.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// The anchors GitHub gives a page's headings: lower case, punctuation
/// dropped but for `-` and `_`, spaces as `-`, a repeated one numbered.
fn anchors(text: &str) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = std::collections::HashSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else { continue };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// Every inline link's target on a line, outside code spans.
fn link_targets(line: &str) -> Vec<String> {
    let mut text = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            text.push_str(part);
        }
    }
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        out.push(rest[..end].split_whitespace().next().unwrap_or("").to_owned());
        rest = &rest[end..];
    }
    out
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let root = crate::helpers::repo_root();
    let pages = pages();
    let mut checked = 0;
    let mut broken = Vec::new();
    for (path, text) in &pages {
        let name = path.strip_prefix(root).unwrap().display().to_string();
        for line in prose(text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = target.split_once('#').map_or((target.as_str(), None), |(f, a)| (f, Some(a)));
                let linked = if file.is_empty() { path.clone() } else { path.parent().unwrap().join(file) };
                if file.is_empty() && target.is_empty() {
                    broken.push(format!("{name}: an empty link"));
                    continue;
                }
                if !linked.exists() {
                    broken.push(format!("{name}: {target}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let headings = if linked.extension().is_some_and(|e| e == "md") {
                        anchors(&std::fs::read_to_string(&linked).unwrap())
                    } else {
                        std::collections::HashSet::new()
                    };
                    if !headings.contains(anchor) {
                        broken.push(format!("{name}: {target}: no heading with that anchor"));
                    }
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} relative links found: the links were not read");
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

#[test]
fn every_page_under_docs_is_linked_from_the_readme() {
    let pages = pages();
    let readme: Vec<String> = prose(&pages[0].1).into_iter().flat_map(link_targets).collect();
    let unlinked: Vec<String> = pages[1..]
        .iter()
        .map(|(path, _)| format!("docs/{}", path.file_name().unwrap().to_string_lossy()))
        .filter(|page| !readme.iter().any(|t| t.split('#').next() == Some(page.as_str())))
        .collect();
    assert!(unlinked.is_empty(), "not linked from README.md: {unlinked:?}");
}
