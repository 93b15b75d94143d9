//! A master's memory does not grow with the size of its job (issue: a master that scales to
//! millions). A journaled `mw run` of a 10^5-task sweep, once every task is recorded and
//! dispatching has begun (and again under `mw resume`), must have peaked (VmHWM) far below
//! what a copy of every task spec and input costs (about 2.6 KB per task before, 260 MB here). No timing: the bound is
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
    // Every task recorded (the job is `running`) and two dispatched by this master.
    wait_for_two_running(&mut child, &journal);
    let hwm = vm_hwm_kb(child.id());
    stop(child);
    assert!(
        hwm < BOUND_KB,
        "the master of {TASKS} tasks peaked at {} MB (bound {} MB)",
        hwm / 1024,
        BOUND_KB / 1024
    );
    eprintln!(
        "mw run: master VmHWM with {TASKS} tasks recorded: {} MB",
        hwm / 1024
    );
    // The resumed master reads counts and compact statuses, not every input and result.
    let mut child = Command::new(mw_tests::bin("mw"))
        .args(["resume", "big-1", "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_two_running(&mut child, &journal);
    let hwm = vm_hwm_kb(child.id());
    stop(child);
    assert!(
        hwm < BOUND_KB,
        "the resumed master of {TASKS} tasks peaked at {} MB (bound {} MB)",
        hwm / 1024,
        BOUND_KB / 1024
    );
    eprintln!("mw resume: master VmHWM: {} MB", hwm / 1024);
    // The commands over the job read counts and a few rows, or one row at a time: never
    // every task at once (`mw status` once held all 10^5 rows, about 180 MB with results,
    // and `mw results` about 340 MB; 1.6 and 3.2 GB at 10^6).
    for args in [
        vec!["status", "big-1"],
        vec!["status", "big-1", "--json"],
        vec!["status"],
        vec!["results", "big-1"],
    ] {
        let peak = peak_kb_of(
            Command::new(mw_tests::bin("mw"))
                .args(&args)
                .current_dir(d)
                .env("MW_JOBS_DIR", d.join("jobs"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        assert!(
            peak < COMMAND_BOUND_KB,
            "mw {args:?} over {TASKS} tasks peaked at {} MB (bound {} MB)",
            peak / 1024,
            COMMAND_BOUND_KB / 1024
        );
    }
}

/// Bound of a command reading the journal of [`TASKS`] tasks (the binary itself and SQLite's
/// page cache are most of it).
const COMMAND_BOUND_KB: u64 = 64 * 1024;

/// Runs `cmd` to its end and returns its peak resident set (wait4's `ru_maxrss`, KB).
fn peak_kb_of(cmd: &mut Command) -> u64 {
    // Reaped by wait4 below (which `Child::wait` cannot do with the usage).
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4(2) on our own child, with pointers to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    u64::try_from(usage.ru_maxrss).unwrap()
}

/// Waits (bounded) until every task is recorded, the job is `running` under `child` and
/// two tasks run.
fn wait_for_two_running(child: &mut std::process::Child, journal: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("mw ended early: {status}");
        }
        assert!(Instant::now() < deadline, "the job was not running in time");
        let ready = journal.exists()
            && (|| {
                let conn = mw::journal::open_checked(journal, false).ok()?;
                let m = mw::journal::read_master(&conn, journal).ok()?;
                let c = mw::journal::state_counts(&conn, journal).ok()?;
                let running: i64 = conn
                    .query_row(
                        "SELECT COUNT(*) FROM tasks WHERE state = 'running'",
                        [],
                        |r| r.get(0),
                    )
                    .ok()?;
                Some(
                    m.status == "running"
                        && m.pid == Some(i64::from(child.id()))
                        && c.unfinished == TASKS
                        && running == 2,
                )
            })()
            .unwrap_or(false);
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a master with SIGTERM (local tasks stopped, the job left for resume): exit 130.
fn stop(mut child: std::process::Child) {
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "mw did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "mw stopped by SIGTERM exits 130");
}

/// A journaled run with a reduce program reads the results back from the journal one at a
/// time for the reduce program's input file: the master does not hold every result (2x10^5
/// tasks once peaked at about 190 MB, 892 MB at 10^6).
#[test]
fn a_reduce_over_200000_results_keeps_the_master_small() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("job.toml"),
        format!(
            "name = \"red\"\nworkers = 2\n[program]\npath = {:?}\nmode = \"stream\"\n\
             [inputs.sweep]\ni = {{ start = 0, end = 200000 }}\n[reduce]\ncommand = [\"wc\", \"-l\"]\n",
            mw_tests::bin("null-stream").display().to_string()
        ),
    )
    .unwrap();
    let out = d.join("reduce.out");
    let peak = peak_kb_of(
        Command::new(mw_tests::bin("mw"))
            .args(["run", "job.toml", "-q"])
            .current_dir(d)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null()),
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "200000");
    assert!(
        peak < REDUCE_BOUND_KB,
        "mw run with a reduce over 200000 results peaked at {} MB (bound {} MB)",
        peak / 1024,
        REDUCE_BOUND_KB / 1024
    );
    // The results as CSV: its columns come from every result, but two passes over the
    // journal find them and write the rows without holding the results (it once held them
    // all: about 750 MB here, 3.8 GB at 10^6).
    let csv = d.join("results.csv");
    let peak = peak_kb_of(
        Command::new(mw_tests::bin("mw"))
            .args(["results", "red-1", "--format", "csv"])
            .current_dir(d)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&csv).unwrap())
            .stderr(Stdio::null()),
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.ends_with(",input.i,output.i,output_files"),
        "{header}"
    );
    assert_eq!(lines.count(), 200_000);
    assert!(
        peak < COMMAND_BOUND_KB,
        "mw results --format csv over 200000 results peaked at {} MB (bound {} MB)",
        peak / 1024,
        COMMAND_BOUND_KB / 1024
    );
    // The report draws every task from 48 bytes of timing each, reading inputs and errors
    // only for the failed tasks it lists (whole rows took about 160 MB here, 0.8 GB at 10^6).
    let report = d.join("report.html");
    let peak = peak_kb_of(
        Command::new(mw_tests::bin("mw"))
            .args(["report", "red-1", "-o"])
            .arg(&report)
            .current_dir(d)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        page.contains("200000 tasks: 200000 done"),
        "report: {}",
        &page[..page.len().min(2000)]
    );
    assert!(
        peak < COMMAND_BOUND_KB,
        "mw report over 200000 tasks peaked at {} MB (bound {} MB)",
        peak / 1024,
        COMMAND_BOUND_KB / 1024
    );
}

/// Bound of a journaled 2x10^5-task run with a reduce program (about 90 MB in a debug build).
const REDUCE_BOUND_KB: u64 = 140 * 1024;
