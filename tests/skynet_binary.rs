//! The `skynet` binary starts and names itself.
//!
//! This target belongs to the skynet package (crates/skynet/Cargo.toml), not to the tests
//! package beside it: an integration test makes cargo build its own package's binaries, so
//! `cargo test --workspace` builds target/<profile>/skynet before any test runs, and the
//! tests package's tests (through `common::skynet_bin()`) and tests/console run that one.

use std::process::Command;

#[test]
fn the_binary_prints_its_name_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_skynet"))
        .arg("--version")
        .output()
        .expect("skynet runs");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("skynet {}", env!("CARGO_PKG_VERSION")),
        "{out:?}"
    );
}
