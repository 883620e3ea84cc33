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
