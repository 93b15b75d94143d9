//! Cancelling a million queued tasks (its own test binary: it allocates a lot, and the
//! memory checks of `failure_paths.rs` must not see it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

mod support;

use mw::{Interface, Master, MasterOptions, Program, TaskSpec};
use std::sync::Arc;
use std::time::Duration;
use support::scripted::Scripted;

fn program() -> Arc<Program> {
    Arc::new(Program::new("/bin/cat").unwrap())
}

fn scripted_master(s: &Arc<Scripted>) -> Master {
    Master::with_options(s.clone() as Arc<dyn Interface>, MasterOptions::default()).unwrap()
}

#[test]
fn cancelling_a_million_queued_tasks_is_linear() {
    // No worker ever frees up: every task stays queued.
    let s = Scripted::new(0, false);
    let m = scripted_master(&s);
    let p = program();
    let n = 1_000_000usize;
    let specs: Vec<TaskSpec> = (0..n)
        .map(|_| TaskSpec::new(p.clone(), serde_json::Value::Null))
        .collect();
    m.submit_many(specs).unwrap();
    let t0 = std::time::Instant::now();
    m.cancel_all();
    m.wait_all();
    let took = t0.elapsed();
    let st = m.counts();
    assert_eq!(st.cancelled, n);
    // A generous bound: it guards against the quadratic (minutes), not a speed.
    assert!(took < Duration::from_secs(60), "cancel_all took {took:?}");
}
