//! `mpirun -n 3 mw run JOB --interface mpi` on the paper's examples (feature `mpi`): the
//! real `mw` binary under the real Open MPI `mpirun` prints pi and the prime count, and
//! its results equal those of the multicore path for the same job file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure
#![cfg(feature = "mpi")]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A copy of an example job file whose program paths point at this build's binaries.
fn job_copy(example: &str, dir: &Path) -> PathBuf {
    let src = mw_tests::workspace_root()
        .join("examples")
        .join(example)
        .join("job.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    let bin = mw_tests::bin_dir();
    let text = text.replace("../../target/release", &bin.display().to_string());
    let path = dir.join(format!("{example}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn ompi(c: &mut Command) -> &mut Command {
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdin(Stdio::null())
}

fn run_mpi(job: &Path, jobs: &Path, output: &Path) -> Output {
    let out = ompi(
        Command::new("timeout")
            .args(["300", "mpirun", "-n", "3"])
            .arg(mw_tests::bin("mw"))
            .arg("run")
            .arg(job)
            .args(["--interface", "mpi", "-q", "--jobs-dir"])
            .arg(jobs)
            .arg("--output")
            .arg(output),
    )
    .output()
    .expect("run mpirun");
    assert!(
        out.status.success(),
        "mpirun mw run failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_multicore(job: &Path, jobs: &Path, output: &Path) -> Output {
    let out = Command::new(mw_tests::bin("mw"))
        .arg("run")
        .arg(job)
        .args(["-q", "--jobs-dir"])
        .arg(jobs)
        .arg("--output")
        .arg(output)
        .stdin(Stdio::null())
        .output()
        .expect("run mw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (task, output) pairs of a results file, in order.
fn outputs(path: &Path) -> Vec<(u64, Value)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["task"].as_u64().unwrap(), v["output"].clone())
        })
        .collect()
}

fn reduce_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(last).unwrap()
}

#[test]
fn monte_pi_under_mpirun_prints_pi_and_matches_multicore() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("monte_pi", tmp.path());
    let mpi = run_mpi(
        &job,
        &tmp.path().join("jobs"),
        &tmp.path().join("mpi.jsonl"),
    );
    let mc = run_multicore(&job, &tmp.path().join("jobs"), &tmp.path().join("mc.jsonl"));
    let pi = reduce_line(&mpi)["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    assert_eq!(reduce_line(&mpi), reduce_line(&mc));
    let (a, b) = (
        outputs(&tmp.path().join("mpi.jsonl")),
        outputs(&tmp.path().join("mc.jsonl")),
    );
    assert_eq!(a.len(), 16);
    assert_eq!(a, b, "per-task results differ between MPI and multicore");
}

#[test]
fn prime_tester_under_mpirun_matches_multicore() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("primes", tmp.path());
    let mpi = run_mpi(
        &job,
        &tmp.path().join("jobs"),
        &tmp.path().join("mpi.jsonl"),
    );
    let mc = run_multicore(&job, &tmp.path().join("jobs"), &tmp.path().join("mc.jsonl"));
    let count = reduce_line(&mpi)["count"].as_u64().unwrap();
    assert!(count > 6000, "count = {count}");
    assert_eq!(reduce_line(&mpi), reduce_line(&mc));
    assert_eq!(
        outputs(&tmp.path().join("mpi.jsonl")),
        outputs(&tmp.path().join("mc.jsonl"))
    );
}
