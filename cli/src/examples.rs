//! The sweeps shipped in `examples/`, built into the binary: `flotilla up` runs the
//! quickstart and `flotilla up --example NAME` any of them from whatever directory it is
//! started in. The files in `examples/` stay the readable copies; these are the same bytes
//! (`include_str!`), and a test checks that every sweep file there has an entry here.
//!
//! An example whose trials run a program of this repository (a command trial) carries that
//! program and the Python helpers it imports; they are written under the run's directory,
//! which becomes the trials' (and serving programs') working directory, so the sweep's
//! relative paths (`examples/trials/logreg.py`) resolve as they do from the repository root.

use std::path::Path;

use anyhow::Context;
use flotilla_sdk::SweepSpec;

/// One shipped example: its sweep file and the files its programs need, by path relative to
/// the repository root.
pub struct Example {
    pub name: &'static str,
    pub sweep: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

macro_rules! repo_file {
    ($path:literal) => {
        ($path, include_str!(concat!("../../", $path)))
    };
}

const TRIAL_HELPER: (&str, &str) = repo_file!("python/flotilla_trial/__init__.py");
const SERVE_HELPER: (&str, &str) = repo_file!("python/flotilla_serve/__init__.py");

/// `examples/NAME.toml` under its name, with the files its programs need.
macro_rules! example {
    ($name:literal $(, $file:expr)* $(,)?) => {
        Example {
            name: $name,
            sweep: include_str!(concat!("../../examples/", $name, ".toml")),
            files: &[$($file),*],
        }
    };
}

pub const EXAMPLES: &[Example] = &[
    example!("quickstart"),
    example!("lstm-pipeline"),
    example!("logreg", repo_file!("examples/trials/logreg.py")),
    example!("trade-off", repo_file!("examples/trials/logreg.py")),
    example!(
        "resumable",
        repo_file!("examples/trials/resumable.py"),
        TRIAL_HELPER
    ),
    example!("burst", repo_file!("examples/trials/quadratic.py")),
    example!(
        "served-command",
        repo_file!("examples/trials/softmax.py"),
        repo_file!("examples/serving/softmax_serve.py"),
        TRIAL_HELPER,
        SERVE_HELPER,
    ),
];

/// The example called `name`, or an error that lists the names there are.
pub fn find(name: &str) -> anyhow::Result<&'static Example> {
    EXAMPLES
        .iter()
        .find(|example| example.name == name)
        .with_context(|| {
            format!(
                "no example called '{name}'; the examples are: {} (`flotilla up --list-examples` describes them)",
                names().join(", ")
            )
        })
}

pub fn names() -> Vec<&'static str> {
    EXAMPLES.iter().map(|example| example.name).collect()
}

impl Example {
    /// The sweep file's opening comment, joined into one paragraph.
    pub fn description(&self) -> String {
        self.sweep
            .lines()
            .map_while(|line| line.strip_prefix('#'))
            .map(str::trim)
            .take_while(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The example's sweep, ready to run from `dir`: its files are written under `dir`, and
    /// its trials and serving program (where it has files) run there.
    pub fn prepare(&self, dir: &Path) -> anyhow::Result<SweepSpec> {
        let mut spec = SweepSpec::from_toml(self.sweep, &format!("example '{}'", self.name))?;
        if self.files.is_empty() {
            return Ok(spec);
        }
        for (path, contents) in self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&target, contents)
                .with_context(|| format!("writing {}", target.display()))?;
        }
        let workdir = std::fs::canonicalize(dir)
            .with_context(|| format!("resolving {}", dir.display()))?
            .to_string_lossy()
            .into_owned();
        spec.trial.workdir.get_or_insert_with(|| workdir.clone());
        if let Some(serving) = &mut spec.serving {
            serving.workdir.get_or_insert(workdir);
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn every_sweep_file_in_examples_is_built_in_byte_for_byte() {
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(repository().join("examples")).expect("examples/") {
            let path = entry.expect("an entry").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                let name = path
                    .file_stem()
                    .expect("a name")
                    .to_string_lossy()
                    .into_owned();
                let example = find(&name).unwrap_or_else(|error| panic!("{error}"));
                assert_eq!(
                    example.sweep,
                    std::fs::read_to_string(&path).expect("read"),
                    "{name}"
                );
                on_disk.push(name);
            }
        }
        on_disk.sort();
        let mut built_in: Vec<String> = names().into_iter().map(String::from).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
    }

    #[test]
    fn each_example_carries_every_repository_file_its_programs_name() {
        for example in EXAMPLES {
            let dir = tempfile::tempdir().expect("tempdir");
            let spec = example
                .prepare(dir.path())
                .unwrap_or_else(|error| panic!("{}: {error}", example.name));
            let mut named: Vec<&String> = spec.trial.args.iter().collect();
            if let Some(serving) = &spec.serving {
                named.extend(&serving.args);
            }
            for arg in named {
                for word in arg.split_whitespace() {
                    if word.starts_with("examples/") {
                        assert!(
                            example.files.iter().any(|(path, _)| *path == word),
                            "{} runs {word} but does not carry it",
                            example.name
                        );
                    }
                }
            }
            // A Python program that imports a helper carries it.
            for (path, contents) in example.files {
                for (helper, module) in [
                    (TRIAL_HELPER.0, "import flotilla_trial"),
                    (SERVE_HELPER.0, "import flotilla_serve"),
                ] {
                    if contents.contains(module) {
                        assert!(
                            example.files.iter().any(|(p, _)| *p == helper),
                            "{}: {path} imports {helper}",
                            example.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_prepared_example_runs_its_programs_from_the_run_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = find("served-command")
            .expect("shipped")
            .prepare(dir.path())
            .expect("prepared");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(
            spec.trial.workdir.as_deref(),
            Some(root.to_str().expect("utf-8"))
        );
        assert_eq!(
            spec.serving.as_ref().and_then(|s| s.workdir.as_deref()),
            Some(root.to_str().expect("utf-8"))
        );
        assert!(root.join("examples/trials/softmax.py").is_file());
        assert!(root.join("python/flotilla_serve/__init__.py").is_file());
        spec.validate().expect("valid");
        // Built-in trainers run where they are: no files, no working directory.
        let quickstart = find("quickstart")
            .expect("shipped")
            .prepare(dir.path())
            .expect("prepared");
        assert_eq!(quickstart.trial.workdir, None);
        assert!(
            find("nope")
                .err()
                .is_some_and(|error| error.to_string().contains("quickstart, lstm-pipeline"))
        );
        assert!(
            find("quickstart")
                .expect("shipped")
                .description()
                .starts_with("The quickstart sweep")
        );
    }
}
