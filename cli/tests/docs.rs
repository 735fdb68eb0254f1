//! The commands the documentation shows exist: every `flotilla …` line in a ```sh block of
//! README.md or docs/*.md names a subcommand the binary has, and every `--flag` on it is one
//! that subcommand takes (checked against its `--help`). A renamed or removed flag fails
//! here instead of in a reader's terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell commands of every ```sh block: continuation lines joined, comments dropped.
fn shell_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut inside = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            inside = !inside && matches!(info.trim(), "sh" | "bash" | "shell");
            pending.clear();
            continue;
        }
        if !inside {
            continue;
        }
        let text = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        // A comment starts at a `#` that begins a word.
        let text = match text.find(" #") {
            Some(at) => &text[..at],
            None if text.starts_with('#') => "",
            None => text,
        };
        match text.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(text);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// Each `flotilla` invocation in a command line: the words after `flotilla`, up to the next
/// `&&`, `||`, `|`, `;` or redirection.
fn invocations(command: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for segment in command.split(['|', ';', '&']) {
        let words: Vec<&str> = segment.split_whitespace().collect();
        // Environment assignments and wrappers may come first (`FOO=1 flotilla …`).
        let Some(start) = words
            .iter()
            .position(|word| *word == "flotilla" || word.ends_with("/flotilla"))
        else {
            continue;
        };
        if words[..start]
            .iter()
            .any(|word| !word.contains('=') && !matches!(*word, "exec" | "sudo" | "time"))
        {
            continue;
        }
        found.push(
            words[start + 1..]
                .iter()
                .take_while(|word| !word.starts_with('>') && !word.starts_with('<'))
                .map(|word| word.to_string())
                .collect(),
        );
    }
    found
}

struct Cli {
    /// `--help` output by subcommand path; `None` where the path is not a subcommand.
    help: BTreeMap<Vec<String>, Option<String>>,
}

impl Cli {
    fn help(&mut self, path: &[String]) -> Option<String> {
        self.help
            .entry(path.to_vec())
            .or_insert_with(|| {
                let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
                    .args(path)
                    .arg("--help")
                    .output()
                    .expect("flotilla runs");
                output
                    .status
                    .success()
                    .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
            })
            .clone()
    }

    /// The longest leading run of `words` that is a subcommand, and its help.
    fn subcommand(&mut self, words: &[String]) -> (Vec<String>, String) {
        let candidates = words
            .iter()
            .take_while(|word| {
                word.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
                    && !word.starts_with('-')
            })
            .count();
        for length in (0..=candidates).rev() {
            if let Some(help) = self.help(&words[..length]) {
                return (words[..length].to_vec(), help);
            }
        }
        unreachable!("flotilla --help always succeeds")
    }
}

#[test]
fn every_flotilla_command_in_the_docs_names_a_real_subcommand_and_real_flags() {
    let mut files = vec![repository().join("README.md")];
    for entry in std::fs::read_dir(repository().join("docs")).expect("docs/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|extension| extension == "md") {
            files.push(path);
        }
    }
    let mut cli = Cli {
        help: BTreeMap::new(),
    };
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let name = file
            .strip_prefix(repository())
            .unwrap_or(file)
            .display()
            .to_string();
        for command in shell_commands(&text) {
            for words in invocations(&command) {
                checked += 1;
                let (path, help) = cli.subcommand(&words);
                // A word right after the subcommand that looks like one but is not (a typo,
                // a removed subcommand) is an error where the subcommand takes none.
                if let Some(next) = words.get(path.len())
                    && next.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    && !next.starts_with('-')
                    && help.contains("Commands:")
                {
                    problems.push(format!(
                        "{name}: `flotilla {}`: '{next}' is not a subcommand of `flotilla {}`",
                        words.join(" "),
                        path.join(" ")
                    ));
                }
                for word in &words[path.len()..] {
                    let Some(flag) = word.strip_prefix("--") else {
                        continue;
                    };
                    let flag = flag.split('=').next().unwrap_or(flag);
                    let flag = flag.trim_end_matches([']', ')', ',', '"', '\'', '`']);
                    if flag.is_empty() || flag == "help" {
                        continue;
                    }
                    let named = format!("--{flag}");
                    let takes = help.split_whitespace().any(|token| {
                        token.trim_end_matches([',', '=']) == named
                            || token.starts_with(&format!("{named}="))
                            || token.starts_with(&format!("{named}["))
                            || token.starts_with(&format!("{named}<"))
                    });
                    if !takes {
                        problems.push(format!(
                            "{name}: `flotilla {}`: `flotilla {}` has no {named}",
                            words.join(" "),
                            path.join(" ")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} flotilla commands found in the docs"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_command_parser_reads_continuations_comments_and_pipelines() {
    let markdown = "text\n```sh\n$ flotilla sweep submit x.toml \\\n    --watch   # comment\n# a comment line\nFOO=1 flotilla up --agents 2 | tee log && echo flotilla --nope\n```\n```toml\nflotilla = 1\n```\n";
    let commands = shell_commands(markdown);
    assert_eq!(commands.len(), 3, "{commands:?}");
    let all: Vec<Vec<String>> = commands.iter().flat_map(|c| invocations(c)).collect();
    assert_eq!(
        all,
        vec![
            vec!["sweep", "submit", "x.toml", "--watch"],
            vec!["up", "--agents", "2"],
        ]
        .into_iter()
        .map(|words| words.into_iter().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
}
