//! A local master killed with SIGKILL whose watchdog is gone too (it kills the master's tasks
//! otherwise) leaves its running tasks behind (see ARCHITECTURE.md). `mw resume` must stop
//! those leftovers before it
//! runs the tasks again, so a task never runs twice at the same time. The journal records
//! each local task's process group, and the process carries its task attempt in its
//! environment, so only the very processes the dead master started are killed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mw(dir: &Path) -> Command {
    let mut c = Command::new(mw_tests::bin("mw"));
    c.current_dir(dir)
        .env("MW_JOBS_DIR", dir.join("jobs"))
        .stdin(Stdio::null());
    c
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: read the state from /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Polls a condition on other processes' state, with an overall hang guard.
fn poll(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resume_kills_the_tasks_a_dead_master_left_running() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Each task records its pid, then waits for the gate file, then answers.
    let task = d.join("task.sh");
    std::fs::write(
        &task,
        "#!/bin/sh\necho $$ >> \"$PIDS\"\nwhile [ ! -e \"$GATE\" ]; do sleep 0.02; done\ncat\n",
    )
    .unwrap();
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        d.join("job.toml"),
        format!(
            "name = \"orph\"\nworkers = 2\nenv = {{ PIDS = \"{}\", GATE = \"{}\" }}\n[program]\npath = \"task.sh\"\n[inputs]\nlist = [1, 2, 3]\n",
            d.join("pids").display(),
            d.join("gate").display()
        ),
    )
    .unwrap();
    let mut master = mw(d)
        .args(["run", "job.toml", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Two tasks start (two slots) and are journaled as running with their handles.
    let pids_of_first_run = || -> Vec<i32> {
        std::fs::read_to_string(d.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    poll("two tasks to start", || pids_of_first_run().len() == 2);
    let journal = d.join("jobs/orph-1/journal.sqlite");
    poll("both handles in the journal", || {
        let Ok(conn) = mw::journal::open_checked(&journal, false) else {
            return false;
        };
        mw::journal::read_tasks(&conn, &journal, None)
            .map(|ts| {
                ts.iter()
                    .filter(|t| t.handle.as_deref().is_some_and(|h| h.starts_with("local:")))
                    .count()
                    == 2
            })
            .unwrap_or(false)
    });
    // A master whose watchdog is gone too (else it stops the tasks as the master dies).
    mw_tests::kill_watchdog_of(master.id());
    // SAFETY: kill only sends a signal to the master we spawned.
    unsafe {
        libc::kill(master.id() as i32, libc::SIGKILL);
    }
    master.wait().unwrap();
    let orphans = pids_of_first_run();
    assert!(
        orphans.iter().all(|p| alive(*p)),
        "the orphans should still run after the master died"
    );

    // Resume in the background; it must kill the orphans before running their tasks again.
    let mut resumed = mw(d)
        .args(["resume", "orph-1", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    poll("the orphans to be killed", || {
        orphans.iter().all(|p| !alive(*p))
    });
    std::fs::write(d.join("gate"), b"").unwrap();
    let status = resumed.wait().unwrap();
    assert!(status.success(), "mw resume failed: {status:?}");

    let out = mw(d).args(["results", "orph-1"]).output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], l["input"], "{l}");
    }
    // Three tasks, two of them started twice (once by each master): five starts in all,
    // and the two first-run processes are gone.
    let all = pids_of_first_run();
    assert_eq!(all.len(), 5, "starts: {all:?}");
}
