//! Every sweep file shipped in examples/ stays valid for the binary built from this tree.

use std::path::Path;
use std::process::Command;

#[test]
fn every_example_sweep_file_validates() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|extension| extension != "toml") {
            continue;
        }
        let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["sweep", "validate"])
            .arg(&path)
            .output()
            .expect("flotilla runs");
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} example sweep files found");
}

#[test]
fn up_lists_the_built_in_examples_from_any_directory_and_names_them_on_a_typo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .current_dir(dir.path())
        .args(["up", "--list-examples"])
        .output()
        .expect("flotilla runs");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{listed}");
    for name in ["quickstart", "lstm-pipeline", "logreg", "served-command"] {
        assert!(
            listed.lines().any(|line| line == name),
            "{name} not listed:\n{listed}"
        );
    }
    assert!(listed.contains("The quickstart sweep"), "{listed}");

    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .current_dir(dir.path())
        .args(["up", "--example", "quickstrat", "--dir"])
        .arg(dir.path().join("run"))
        .output()
        .expect("flotilla runs");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        error.contains("no example called 'quickstrat'") && error.contains("quickstart"),
        "{error}"
    );
    // Nothing was started or written for a name that does not exist.
    assert!(!dir.path().join("run").exists());
}
