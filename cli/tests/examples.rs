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
