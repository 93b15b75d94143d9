//! `task::serve_stream` against the stream runner: every answer reaches mw promptly, even
//! while later inputs are already buffered (mw writes up to 64 ahead and counts a task's
//! timeout from the previous answer).
//!
//! The program under test is this binary itself (`serve` as first argument), so the test
//! runs without the libtest harness (`harness = false`): libtest would print on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_worker_runtime::stream::{StreamInput, StreamOutcome, StreamProgram, StreamRunner};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        serve();
    }
    let tests: [(&str, fn()); 2] = [
        (
            "slow_tasks_each_answered_in_time",
            slow_tasks_each_answered_in_time,
        ),
        (
            "fast_answer_not_held_back_by_a_slow_task",
            fast_answer_not_held_back_by_a_slow_task,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// The streaming program: `{"ms": N}` takes N ms; `{"wait_for": PATH}` waits (at most 20 s)
/// for PATH to exist and answers whether it did; anything else is echoed.
fn serve() -> ! {
    mw_worker_runtime::task::serve_stream(|x: Value| {
        if let Some(ms) = x.get("ms").and_then(Value::as_u64) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(path) = x.get("wait_for").and_then(Value::as_str) {
            let path = PathBuf::from(path);
            for _ in 0..20_000 {
                if path.exists() {
                    return Ok::<_, String>(json!({"saw": true}));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            return Ok(json!({"saw": false}));
        }
        Ok(x)
    })
}

fn runner(dir: &tempfile::TempDir) -> StreamRunner {
    let mut p = StreamProgram::new(std::env::current_exe().unwrap(), dir.path().to_path_buf());
    p.args = vec!["serve".into()];
    p.grace = Duration::from_millis(200);
    StreamRunner::new(p)
}

fn input(v: Value, timeout: Duration) -> StreamInput {
    let mut i = StreamInput::new(&v);
    i.timeout = Some(timeout);
    i
}

fn answer(o: &StreamOutcome) -> Value {
    assert!(o.exit.success(), "expected success, got {o:?}");
    serde_json::from_slice(&o.result).unwrap()
}

/// 20 tasks of 0.5 s, all written ahead at once, with a timeout of 3 s each: each answer
/// must leave the program when it is ready, not when the whole batch is done (10 s).
fn slow_tasks_each_answered_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(&dir);
    let inputs = (0..20)
        .map(|n| input(json!({"ms": 500, "n": n}), Duration::from_secs(3)))
        .collect();
    let out = r.run_all(inputs);
    for (n, o) in out.iter().enumerate() {
        assert_eq!(answer(o), json!({"ms": 500, "n": n}), "task {n}");
    }
    assert_eq!(r.starts(), 1);
}

/// A fast answer followed by a slow task: the fast one is reported while the slow one still
/// runs (the slow one waits for a file the test creates when the fast answer arrives).
fn fast_answer_not_held_back_by_a_slow_task() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("first-answer-arrived");
    let mut r = runner(&dir);
    let mut inputs = vec![
        input(json!({"n": 0}), Duration::from_secs(60)),
        input(
            json!({"wait_for": flag.display().to_string()}),
            Duration::from_secs(60),
        ),
    ]
    .into_iter()
    .enumerate();
    let mut out = Vec::new();
    r.serve(
        || inputs.next().map(|(i, x)| (x, i)),
        |i, o| {
            if i == 0 {
                std::fs::write(&flag, b"").unwrap();
            }
            out.push(o);
        },
    );
    assert_eq!(answer(&out[0]), json!({"n": 0}));
    assert_eq!(
        answer(&out[1]),
        json!({"saw": true}),
        "the first answer was held back until the slow task ended"
    );
}
