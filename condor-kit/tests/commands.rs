//! The condor_* wrappers' error handling, with stand-in scripts in a private bin dir
//! (the full behaviour against the pool double is tested in mw-tests, tests/condor_double.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{CondorCli, CondorError, JobHandle};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn missing_command_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cli = CondorCli::default().with_bin_dir(dir.path());
    let e = cli.remove(&[JobHandle::new(1, 0)]).unwrap_err();
    assert!(matches!(e, CondorError::CommandMissing { .. }), "{e}");
    assert!(e.to_string().contains("condor_rm"), "{e}");
}

#[test]
fn failure_carries_stderr_and_output_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "condor_rm",
        "echo \"Couldn't find/remove all jobs matching: $*\" >&2; exit 1",
    );
    script(
        dir.path(),
        "condor_submit",
        "[ \"$1\" = -terse ] || exit 2; printf '41.0 - 41.2\\n'",
    );
    script(dir.path(), "condor_q", "exit 0");
    script(dir.path(), "condor_history", "echo '[' ; echo \"{\\\"ClusterId\\\": 41, \\\"ProcId\\\": 2, \\\"JobStatus\\\": $X}\"; echo ']'");
    let cli = CondorCli::default()
        .with_bin_dir(dir.path())
        .with_env("X", "4");
    let e = cli
        .remove(&[JobHandle::new(41, 1), JobHandle::new(41, 2)])
        .unwrap_err();
    assert!(
        matches!(&e, CondorError::CommandFailed { stderr, .. } if stderr.contains("41.1 41.2")),
        "{e}"
    );
    let h = cli.submit(Path::new("x.sub")).unwrap();
    assert_eq!(h, (0..3).map(|p| JobHandle::new(41, p)).collect::<Vec<_>>());
    assert!(
        cli.query_jobs(&[41]).unwrap().is_empty(),
        "empty condor_q output = no jobs"
    );
    let ads = cli.history(&[41], Some(5)).unwrap();
    assert_eq!(ads[0].handle, JobHandle::new(41, 2));
    assert_eq!(ads[0].status, mw_condor_kit::JobStatus::Completed);
}
