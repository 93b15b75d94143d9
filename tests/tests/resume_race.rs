//! Two `mw resume` of one job started together (the issue: both ran, 271-284 of 300 tasks
//! executed twice, because a pid check came before the journal was opened): exactly one
//! takes the job (the OS lock on the job), the other is refused with exit 2 while the first
//! runs, and every task runs once. Tasks wait for a gate file, so the two masters overlap;
//! every wait is a bounded poll.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_tests::{run_mw, script, spawn_mw};
use std::process::Child;
use std::time::{Duration, Instant};

/// Waits for `child` (bounded: it is killed, failing the test, after 120 s); exit code and
/// stderr.
fn finish(child: Child) -> (i32, String) {
    let out = mw_tests::finish_within(child, Duration::from_secs(120));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `cond` every 10 ms for at most 60 s, failing with `what`.
fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within 60 s: {what}");
}

#[test]
fn two_resumes_started_together_run_each_task_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Each run of a task appends its input to runs.log, then waits for the gate.
    script(
        d,
        "gated.sh",
        &format!(
            "read input\necho \"$input\" >> {log}\nwhile [ ! -e {gate} ]; do sleep 0.01; done\n\
             echo \"$input\"",
            log = d.join("runs.log").display(),
            gate = d.join("gate").display()
        ),
    );
    std::fs::write(
        d.join("race.toml"),
        "name = \"race\"\nworkers = 4\n[program]\npath = \"gated.sh\"\n[inputs.sweep]\n\
         x = { start = 0, end = 12 }\n",
    )
    .unwrap();
    // A master killed before it recorded any task: the job exists and needs a resume.
    let (code, _) = finish(spawn_mw(
        d,
        &["run", "race.toml", "-q"],
        &[("MW_CRASH_AT", "run-before-recording")],
    ));
    assert_eq!(code, -1, "the crash point must kill mw");
    // Two resumes at once. One runs tasks (they wait at the gate); the other must be
    // refused while it does (two masters would both wait at the gate, and neither end).
    let mut a = spawn_mw(d, &["resume", "race-1", "-q"], &[]);
    let mut b = spawn_mw(d, &["resume", "race-1", "-q"], &[]);
    poll("one of two resumes to be refused", || {
        a.try_wait().unwrap().is_some() || b.try_wait().unwrap().is_some()
    });
    poll("the other resumed master running tasks", || {
        std::fs::read_to_string(d.join("runs.log"))
            .map(|s| s.lines().count() >= 4)
            .unwrap_or(false)
    });
    std::fs::write(d.join("gate"), "").unwrap();
    let (ca, ea) = finish(a);
    let (cb, eb) = finish(b);
    let mut codes = [ca, cb];
    codes.sort();
    assert_eq!(codes, [0, 2], "a: {ea}\nb: {eb}");
    let refused = if ca == 2 { &ea } else { &eb };
    assert!(
        refused.contains("another master") || refused.contains("already has a running master"),
        "{refused}"
    );
    // Every task ran exactly once, and the job is complete.
    let mut runs: Vec<i64> = std::fs::read_to_string(d.join("runs.log"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["x"]
                .as_i64()
                .unwrap()
        })
        .collect();
    runs.sort();
    assert_eq!(runs, (0..12).collect::<Vec<_>>());
    let r = run_mw(d, &["results", "race-1"]);
    assert_eq!(r.stdout.lines().count(), 12, "{}", r.stderr);
    assert!(
        r.stdout.lines().all(|l| l.contains("\"done\"")),
        "{}",
        r.stdout
    );
}
