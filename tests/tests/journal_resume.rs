//! Crash-resume end to end (issue 3 acceptance): a 2,000-task local job of ~5 ms tasks is
//! started with the real `mw run`, its master is killed with SIGKILL part-way, `mw resume`
//! finishes it, and the results are compared with an uninterrupted run. Every task appends
//! its index to an execution log, so re-executions are counted, not guessed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const TASKS: u64 = 2000;

fn mw(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(mw_tests::bin("mw"))
        .args(args)
        .current_dir(dir)
        .env("MW_JOBS_DIR", dir.join("jobs"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "mw {args:?}: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// A job dir with the task script and a job file logging executions to `exec.log`.
fn setup(dir: &Path) {
    let task = dir.join("task.sh");
    std::fs::write(
        &task,
        "#!/bin/sh\necho \"$1\" >> \"$2\"\nsleep 0.005\nprintf '{\"i\":%s,\"sq\":%s}\\n' \"$1\" \"$(( $1 * $1 ))\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"crash\"\nworkers = 2\nargs = [\"{{{{ index }}}}\", \"{}\"]\n[program]\npath = \"task.sh\"\n[inputs.sweep]\ni = {{ start = 0, end = {TASKS} }}\n",
            dir.join("exec.log").display()
        ),
    )
    .unwrap();
}

/// `mw results` as task index -> (state, input, output), asserting one line per task.
fn results(dir: &Path) -> BTreeMap<u64, (String, serde_json::Value, serde_json::Value)> {
    let (code, out, err) = mw(dir, &["results", "crash-1"]);
    assert_eq!(code, 0, "{err}");
    let mut m = BTreeMap::new();
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = v["task"].as_u64().unwrap();
        let prev = m.insert(
            t,
            (
                v["state"].as_str().unwrap().to_string(),
                v["input"].clone(),
                v["output"].clone(),
            ),
        );
        assert!(prev.is_none(), "task {t} has two result lines");
    }
    m
}

fn executions(dir: &Path) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    let text = std::fs::read_to_string(dir.join("exec.log")).unwrap_or_default();
    for l in text.lines() {
        *m.entry(l.trim().parse::<u64>().unwrap()).or_insert(0) += 1;
    }
    m
}

#[test]
fn sigkill_mid_job_then_resume_loses_nothing_and_reruns_nothing() {
    let started = std::time::Instant::now();
    // The uninterrupted reference run.
    let reference = tempfile::tempdir().unwrap();
    setup(reference.path());
    let (code, _, err) = mw(
        reference.path(),
        &["run", "job.toml", "-q", "-o", "r.jsonl"],
    );
    assert_eq!(code, 0, "{err}");
    let want = results(reference.path());
    assert_eq!(want.len() as u64, TASKS);

    // The run that gets killed.
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let mut master = Command::new(mw_tests::bin("mw"))
        .args(["run", "job.toml", "-q", "-o", "r.jsonl"])
        .current_dir(d.path())
        .env("MW_JOBS_DIR", d.path().join("jobs"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Poll the journal (another process's state) until some tasks are done.
    let mut polls = 0;
    loop {
        polls += 1;
        assert!(polls < 20_000, "the job never got going");
        // Fails until `mw run` has created the journal.
        let (code, out, _) = mw(d.path(), &["status", "crash-1", "--json"]);
        if code != 0 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v["job"]["counts"]["done"].as_u64().unwrap() >= 150 {
            break;
        }
    }
    // SIGKILL the master only (its tasks run in their own process groups).
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(master.id() as i32, libc::SIGKILL) };
    assert_eq!(r, 0);
    let status = master.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    let before = results(d.path());
    let done_before: Vec<u64> = before
        .iter()
        .filter(|(_, (s, _, _))| s == "done")
        .map(|(t, _)| *t)
        .collect();
    assert!(done_before.len() >= 150);
    assert!(
        (done_before.len() as u64) < TASKS,
        "the kill came after the end; nothing was tested"
    );
    let (_, table, _) = mw(d.path(), &["status"]);
    assert!(table.contains("stopped"), "{table}");

    let (code, _, err) = mw(d.path(), &["resume", "crash-1", "-q"]);
    assert_eq!(code, 0, "{err}");

    let after = results(d.path());
    assert_eq!(after.len() as u64, TASKS, "every task has one result line");
    assert_eq!(after, want, "results differ from the uninterrupted run");
    let execs = executions(d.path());
    for t in &done_before {
        assert_eq!(
            execs.get(t),
            Some(&1),
            "task {t} was done before the kill but ran {:?} times",
            execs.get(t)
        );
    }
    for t in 0..TASKS {
        assert!(
            execs.get(&t).copied().unwrap_or(0) >= 1,
            "task {t} never ran"
        );
    }

    // Resuming a finished job changes nothing.
    let log_len = std::fs::metadata(d.path().join("exec.log")).unwrap().len();
    for _ in 0..2 {
        let (code, _, err) = mw(d.path(), &["resume", "crash-1"]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("nothing to resume"), "{err}");
    }
    assert_eq!(results(d.path()), after);
    assert_eq!(
        std::fs::metadata(d.path().join("exec.log")).unwrap().len(),
        log_len
    );
    eprintln!(
        "2,000-task crash/resume test (reference run + killed run + resume): {:.1} s wall, {} tasks done before the kill",
        started.elapsed().as_secs_f64(),
        done_before.len()
    );
}

/// `mw run` of a job with a reduce step, killed after the job was marked finished and
/// before it printed the reduce output (`MW_CRASH_AT=run-reduce-finished`). The output is
/// kept in the job first (`reduce.out`), so `mw wait` prints it and `mw resume` has nothing
/// to do. Before, `mw run` kept it nowhere: the finished job's reduce output was lost for
/// good (`mw resume` leaves a finished job alone, and `mw wait` said only "all tasks done").
#[test]
fn killed_after_the_reduce_step_the_output_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("red.toml"),
        "name = \"red\"\n[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1, 2, 3]\n\
         [reduce]\ncommand = [\"wc\", \"-l\"]\n",
    )
    .unwrap();
    let out = Command::new(mw_tests::bin("mw"))
        .args(["run", "red.toml", "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .env("MW_CRASH_AT", "run-reduce-finished")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(9), "not killed: {stderr}");
    assert!(out.stdout.is_empty(), "printed before the kill");
    let (code, stdout, stderr) = mw(d, &["wait", "red-1", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "3", "{stderr}");
    let (code, stdout, stderr) = mw(d, &["resume", "red-1", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("nothing to resume"), "{stderr}");
    assert_eq!(stdout.trim(), "", "the reduce step ran again: {stdout}");
}
