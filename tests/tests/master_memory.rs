//! A master's memory does not grow with the size of its job (issue: a master that scales to
//! millions). A journaled `mw run` of a 10^5-task sweep, once every task is recorded and
//! dispatching has begun, must have peaked (VmHWM) far below what a copy of every task
//! spec and input costs (about 2.6 KB per task before, 260 MB here). No timing: the bound is
//! on memory, and every wait is a bounded poll on the journal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the master needs a few tens of MB for 10^5 tasks (a few bytes per task plus
/// SQLite's and the allocator's own), a copy of every spec costs 260 MB.
const BOUND_KB: u64 = 120 * 1024;
const TASKS: u64 = 100_000;

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_sweep_of_100000_tasks_keeps_the_master_small() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Each task waits for a gate that never opens: two run, the rest stay queued.
    let task = d.join("task.sh");
    std::fs::write(
        &task,
        "#!/bin/sh\nwhile [ ! -e \"$GATE\" ]; do sleep 0.05; done\ncat\n",
    )
    .unwrap();
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        d.join("job.toml"),
        format!(
            "name = \"big\"\nworkers = 2\nenv = {{ GATE = \"{}\" }}\n[program]\npath = \"task.sh\"\n\
             [inputs.sweep]\na = {{ start = 0, end = 400 }}\nb = {{ start = 0, end = 250 }}\n",
            d.join("gate").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(mw_tests::bin("mw"))
        .args(["run", "job.toml", "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let journal = d.join("jobs/big-1").join(mw::journal::JOURNAL_FILE);
    // Every task recorded (the job is `running`) and two dispatched.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("mw run ended early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the job was not recorded in time"
        );
        let ready = journal.exists()
            && (|| {
                let conn = mw::journal::open_checked(&journal, false).ok()?;
                let status = mw::journal::read_master(&conn, &journal).ok()?.status;
                let c = mw::journal::state_counts(&conn, &journal).ok()?;
                let running: i64 = conn
                    .query_row(
                        "SELECT COUNT(*) FROM tasks WHERE state = 'running'",
                        [],
                        |r| r.get(0),
                    )
                    .ok()?;
                Some(status == "running" && c.unfinished == TASKS && running == 2)
            })()
            .unwrap_or(false);
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = vm_hwm_kb(child.id());
    // Stop it (SIGTERM: local tasks stopped, job left for resume).
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "mw run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(130),
        "mw run stopped by SIGTERM exits 130"
    );
    assert!(
        hwm < BOUND_KB,
        "the master of {TASKS} tasks peaked at {} MB (bound {} MB)",
        hwm / 1024,
        BOUND_KB / 1024
    );
    eprintln!(
        "master VmHWM with {TASKS} tasks recorded: {} MB",
        hwm / 1024
    );
}
