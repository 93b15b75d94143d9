//! Shared helpers for mw's end-to-end tests: locating the real binaries built by cargo and
//! making scratch directories. Test doubles (HTCondor pool, BOINC server) live in `src/bin/`
//! and each says at its top that it is a test double.
//!
//! This crate is never shipped; nothing in the product may depend on it.

use std::path::PathBuf;

/// Directory holding the workspace's built binaries (`target/debug` or `target/release`),
/// found from the running test executable (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of a workspace binary, e.g. `bin("mw")`. Panics with a hint when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
pub mod boinc_client;
pub mod condor_double;
