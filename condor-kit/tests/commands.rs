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

/// One job is looked up by its exact id, in the history with `-limit 1` (it scanned every
/// history file of the schedd for the whole cluster).
#[test]
fn one_job_is_asked_for_by_its_id_and_the_history_stops_at_the_first_match() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    for tool in ["condor_q", "condor_history"] {
        script(
            dir.path(),
            tool,
            &format!(
                "echo \"{tool} $*\" >> {}\necho '[{{\"ClusterId\": 7, \"ProcId\": 0, \"JobStatus\": 4}},{{\"ClusterId\": 7, \"ProcId\": 3, \"JobStatus\": 4, \"ExitCode\": 0}}]'",
                calls.display()
            ),
        );
    }
    let cli = CondorCli::default().with_bin_dir(dir.path());
    let ad = cli.job_history(JobHandle::new(7, 3)).unwrap().unwrap();
    assert_eq!((ad.handle, ad.exit_code), (JobHandle::new(7, 3), Some(0)));
    assert!(cli.query_job(JobHandle::new(7, 5)).unwrap().is_none());
    let calls = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert!(lines[0].starts_with("condor_history -json"), "{calls}");
    assert!(lines[0].contains(" -limit 1 7.3"), "{calls}");
    assert!(
        lines[1].starts_with("condor_q -json") && lines[1].ends_with(" 7.5"),
        "{calls}"
    );
}

/// A tool that prints without end (a forged or broken condor_q) was read whole into memory;
/// it is stopped past the limit, and the error shows only the start of what it printed.
#[test]
fn huge_output_is_an_error_not_a_memory_hog() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "condor_q",
        "exec yes '{\"ClusterId\": 7, \"ProcId\": 0},'",
    );
    let cli = CondorCli::default().with_bin_dir(dir.path());
    let e = cli.query_jobs(&[7]).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CondorError::BadOutput { .. }), "{msg:.300}");
    assert!(msg.contains("more than"), "{msg:.300}");
    assert!(msg.len() < 10_000, "{}", msg.len());
}

/// A schedd that does not answer held condor_q (and the master's event thread) for ever; a
/// query is stopped at its time limit and is an error saying so.
#[test]
fn a_query_that_does_not_finish_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "condor_history", "exec sleep 600");
    let cli = CondorCli::default()
        .with_bin_dir(dir.path())
        .with_query_timeout(Some(std::time::Duration::from_millis(200)));
    let e = cli.job_history(JobHandle::new(7, 0)).unwrap_err();
    assert!(matches!(e, CondorError::CommandTimedOut { .. }), "{e}");
    assert!(e.to_string().contains("condor_history"), "{e}");
    assert_eq!(
        CondorCli::default().query_timeout,
        Some(mw_condor_kit::commands::DEFAULT_QUERY_TIMEOUT)
    );
}
