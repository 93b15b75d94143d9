//! `mw` off the happy path, end to end with the real binary and real processes: job files
//! that would crash or swallow the machine, Ctrl-C, a kill while tasks are recorded, two
//! resumes at once, another process holding the journal's write lock, a full disk,
//! `mw cancel` of a fast job, and panics injected (`MW_PANIC_AT`) into the master's own
//! threads. Every wait is a bounded poll on files or on `mw status`;
//! nothing sleeps to synchronise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_tests::{run_mw, script, spawn_mw};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// Polls `cond` (bounded: about 60 s of file-system checks, a few milliseconds apart, so
/// that the processes waited for get the cores), failing with `what`.
fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(60) {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("never happened: {what}");
}

fn lines_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: read its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn job_files_that_would_crash_or_swallow_the_machine_fail_before_anything_is_created() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let deep = format!(
        "{}x{}",
        "{% if true %}".repeat(2000),
        "{% endif %}".repeat(2000)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "workers-max",
            "workers = 9223372036854775807\n".into(),
            "workers",
        ),
        ("workers-huge", "workers = 1000000000\n".into(), "workers"),
        ("deep-template", format!("args = [{deep:?}]\n"), "args[0]"),
        (
            "macro",
            "args = [\"{% macro m() %}{{ self::m() }}{% endmacro m %}{{ self::m() }}\"]\n".into(),
            "args[0]",
        ),
        ("max-output", "max_output = \"-5\"\n".into(), "max_output"),
        // Tera's own `range` loops for ever with `step_by=0` and allocates until the
        // allocator aborts with a huge `end`: the bounded one refuses both.
        (
            "range-step-0",
            "args = [\"{% for i in range(end=3, step_by=0) %}{{ i }}{% endfor %}\"]\n".into(),
            "`step_by` must be at least 1",
        ),
        (
            "range-huge",
            "args = [\"{% for i in range(end=4000000000) %}{{ i }}{% endfor %}\"]\n".into(),
            "over the limit of 10000",
        ),
        // Bounded ranges nested multiply (10^4 turns of a 10^4-value range): the ranges of
        // one rendering are bounded together.
        (
            "range-nested",
            "args = [\"{% for a in range(end=10000) %}{% for b in range(end=10000) %}{% endfor %}{% endfor %}\"]\n".into(),
            "over 100000 values in all",
        ),
        // Loops that print a lot: the rendering stops at an argument's size limit.
        (
            "render-huge",
            "args = [\"{% for a in range(end=10000) %}{% for b in range(end=9) %}0123456789{% endfor %}{% endfor %}\"]\n".into(),
            "more than 131072 bytes",
        ),
    ];
    for (name, top, field) in cases {
        let job = format!("{top}[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1]\n");
        check_refused(d, name, &job, field);
    }
    // Inputs: a full-i64 range is not "empty" (and not an overflow), a device and a FIFO
    // are not read.
    check_refused(
        d,
        "range",
        "[program]\ncommand = [\"/bin/cat\"]\n[inputs.sweep]\nx = { start = -9223372036854775808, end = 9223372036854775807 }\n",
        "inputs.sweep.x",
    );
    check_refused(
        d,
        "zero",
        "[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nfile = \"/dev/zero\"\n",
        "inputs.file",
    );
    check_refused(
        d,
        "fifo",
        &format!(
            "[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nfile = {:?}\n",
            fifo.display().to_string()
        ),
        "inputs.file",
    );
    // A NUL byte in an argument fails the job, not each task after the job was created.
    check_refused(
        d,
        "nul",
        "args = [\"a\\u0000b\"]\n[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1]\n",
        "args[0]",
    );
    // The job file itself: a device, a FIFO (once read until memory ran out, or blocked for
    // ever) and an oversized file are refused before they are read.
    let big = d.join("big.toml");
    std::fs::write(&big, " ".repeat(17 << 20)).unwrap();
    for (job, why) in [
        ("/dev/zero", "is not a regular file"),
        (fifo.to_str().unwrap(), "is not a regular file"),
        (big.to_str().unwrap(), "over the limit of 16 MiB"),
    ] {
        let o = run_mw(d, &["run", job]);
        assert_eq!(o.code, 2, "{job}: {}", o.stderr);
        assert!(
            o.stderr.contains(job) && o.stderr.contains(why),
            "{job}: {}",
            o.stderr
        );
    }
}

/// `mw run` of `job` exits 2 naming the file and `field`, and creates no job directory.
fn check_refused(d: &Path, name: &str, job: &str, field: &str) {
    let file = format!("{name}.toml");
    write(d, &file, job);
    let o = run_mw(d, &["run", &file]);
    assert_eq!(o.code, 2, "{name}: {}", o.stderr);
    assert!(
        o.stderr.contains(&file) && o.stderr.contains(field),
        "{name}: the message must name the file and `{field}`: {}",
        o.stderr
    );
    assert!(
        !d.join("jobs").exists() || std::fs::read_dir(d.join("jobs")).unwrap().count() == 0,
        "{name}: a job was created"
    );
}

/// A job of `n` tasks that each record their pid in `pids/` and wait for `gate` to exist.
fn gated_job(d: &Path, name: &str, n: usize) {
    std::fs::create_dir_all(d.join("pids")).unwrap();
    script(
        d,
        "gated.sh",
        &format!(
            "read input\necho $$ > {pids}/$input\nwhile [ ! -e {gate} ]; do sleep 0.01; done\necho \"$input\"",
            pids = d.join("pids").display(),
            gate = d.join("gate").display()
        ),
    );
    let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    write(
        d,
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nworkers = 2\n[program]\npath = \"gated.sh\"\n[inputs]\nlist = [{}]\n",
            list.join(",")
        ),
    );
}

fn pids(d: &Path) -> Vec<i32> {
    std::fs::read_dir(d.join("pids"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

#[test]
fn ctrl_c_stops_every_task_and_resume_completes_the_job() {
    stop_signal_stops_every_task_and_resume_completes_the_job(libc::SIGINT);
}

#[test]
fn sigterm_stops_every_task_and_resume_completes_the_job() {
    stop_signal_stops_every_task_and_resume_completes_the_job(libc::SIGTERM);
}

/// SIGHUP (a closed terminal, `kill -HUP` of a detached master) stops the master like
/// Ctrl-C: it once killed `mw` at once (exit 129) and left its tasks running.
#[test]
fn sighup_stops_every_task_and_resume_completes_the_job() {
    stop_signal_stops_every_task_and_resume_completes_the_job(libc::SIGHUP);
}

fn stop_signal_stops_every_task_and_resume_completes_the_job(signal: i32) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "intr", 5);
    let child = spawn_mw(d, &["run", "intr.toml", "-q"], &[]);
    let mw_pid = child.id() as i32;
    poll("two tasks running", || pids(d).len() == 2);
    let running = pids(d);
    // SAFETY: kill(2) sends the signal to the mw process we started.
    unsafe { libc::kill(mw_pid, signal) };
    let (code, _, err) = finish(child);
    assert_eq!(code, 130, "signal {signal}: {err}");
    // Answered at once, then the summary and how to resume.
    assert!(
        err.contains(
            "mw: stopping: nothing more starts; running tasks are stopped and kept for `mw resume`"
        ),
        "{err}"
    );
    assert!(err.contains("mw resume intr-1"), "{err}");
    for pid in running {
        assert!(!alive(pid), "task process {pid} survived signal {signal}");
    }
    // Resume runs everything that did not finish, and the job completes.
    write(d, "gate", "");
    let o = run_mw(d, &["resume", "intr-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // It prints no result lines; it says where they all are.
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    assert!(o.stderr.contains("`mw results intr-1`"), "{}", o.stderr);
    let r = run_mw(d, &["results", "intr-1"]);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["state"] == "done"), "{lines:?}");
}

/// A stop signal relayed by GNU `timeout` reaches `mw` twice (timeout sends it to its
/// command, then to its whole process group): that is one request to stop, not a second
/// one that exits at once. It once did: exit 130 with no resume line, tasks not stopped by
/// mw.
#[test]
fn a_stop_signal_relayed_twice_by_timeout_is_one_request() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "relay", 5);
    let child = Command::new("timeout")
        .args(["600"])
        .arg(mw_tests::bin("mw"))
        .args(["run", "relay.toml", "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    poll("two tasks running", || pids(d).len() == 2);
    let running = pids(d);
    // SAFETY: kill(2) sends SIGINT to the `timeout` process we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, _, err) = finish(child);
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("mw resume relay-1"), "no resume line: {err}");
    for pid in running {
        assert!(!alive(pid), "task process {pid} survived the stop");
    }
    write(d, "gate", "");
    let o = run_mw(d, &["resume", "relay-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn a_master_killed_while_recording_tasks_is_completed_by_resume() {
    killed_while_recording_then_resumed("run-before-recording", 40, "0");
}

/// Killed after the first (smaller) chunk of tasks was recorded and its tasks started:
/// resume records the rest, and every task is reported once.
#[test]
fn a_master_killed_after_its_first_recorded_chunk_is_completed_by_resume() {
    killed_while_recording_then_resumed("run-recorded-chunk", 1_200, "500");
}

fn killed_while_recording_then_resumed(point: &str, n: i64, recorded: &str) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "rec.toml",
        &format!("name = \"rec\"\n[program]\ncommand = [\"/bin/cat\"]\n[inputs.sweep]\nx = {{ start = 0, end = {n} }}\n"),
    );
    let child = spawn_mw(d, &["run", "rec.toml", "-q"], &[("MW_CRASH_AT", point)]);
    let (code, _, _) = finish(child);
    assert_eq!(code, -1, "the crash point must kill mw");
    // Only the chunks before the crash point are in the journal.
    let before = run_mw(d, &["status", "rec-1"]);
    let tasks = before
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("tasks"))
        .map(|n| n.trim().to_string());
    assert_eq!(tasks.as_deref(), Some(recorded), "{}", before.stdout);
    // Not finished, however few tasks it holds: `mw status` says stopped, `mw wait` fails.
    assert!(before.stdout.contains("stopped"), "{}", before.stdout);
    let o = run_mw(d, &["status", "--state", "stopped"]);
    assert!(o.stdout.contains("rec-1"), "{}", o.stdout);
    let o = run_mw(d, &["wait", "rec-1"]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("not all recorded"), "{}", o.stderr);
    assert!(o.stderr.contains("`mw resume rec-1`"), "{}", o.stderr);
    // Not "finished (0 tasks)": resume records the missing tasks and runs them all.
    let o = run_mw(d, &["resume", "rec-1", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = run_mw(d, &["results", "rec-1"]);
    let xs = r
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["output"]["x"]
                .as_i64()
                .unwrap()
        })
        .collect::<Vec<_>>();
    assert_eq!(xs.len() as i64, n, "one result line per task");
    assert_eq!(xs.into_iter().collect::<BTreeSet<_>>(), (0..n).collect());
}

#[test]
fn a_journal_removed_under_a_running_master_stops_it_without_reporting_more() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "gone", 3);
    let child = spawn_mw(d, &["run", "gone.toml", "-q"], &[]);
    poll("tasks running", || pids(d).len() == 2);
    // Someone cleans up the job directory while the master runs.
    let dir = d.join("jobs/gone-1");
    std::fs::remove_file(dir.join("journal.sqlite")).unwrap();
    std::fs::write(d.join("gate"), "").unwrap();
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("removed or replaced"), "{stderr}");
    // Not one result was printed as if it were stored.
    assert_eq!(stdout.trim(), "", "{stdout}");
}

/// Whether process `pid` catches signal `sig` (its handler is installed).
fn catches(pid: u32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

#[test]
fn a_stop_signal_while_the_job_file_is_checked_ends_mw_at_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A template that takes minutes to render (10^8 loop turns) for every task.
    write(
        d,
        "slow.toml",
        "name = \"slow\"\nargs = [\"{% for i in range(end=10000) %}{% for j in range(end=10000) %}{% endfor %}{% endfor %}x\"]\n[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1]\n",
    );
    let child = spawn_mw(d, &["run", "slow.toml", "-q"], &[]);
    let pid = child.id();
    poll("mw's signal handlers", || catches(pid, libc::SIGTERM));
    // SAFETY: kill(2) on the mw process we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let (code, _, stderr) = finish(child);
    assert_eq!(code, 130, "{stderr}");
    assert!(!d.join("jobs").join("slow-1").exists(), "no job was made");
}

#[test]
fn a_second_master_for_the_same_job_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "two", 3);
    let first = spawn_mw(d, &["run", "two.toml", "-q"], &[]);
    poll("tasks running", || pids(d).len() == 2);
    // Two resumes of a job whose master is running: both refused, nothing runs twice.
    for _ in 0..2 {
        let o = run_mw(d, &["resume", "two-1", "-q"]);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(
            o.stderr.contains("another master")
                || o.stderr.contains("already has a running master"),
            "{}",
            o.stderr
        );
    }
    // The job lock, not the pid: kill the master; a resume takes the job over, and a
    // second resume while it runs is refused.
    // SAFETY: kill(2) on the mw process we started.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let _ = finish(first);
    for p in std::fs::read_dir(d.join("pids")).unwrap().flatten() {
        std::fs::remove_file(p.path()).unwrap();
    }
    let a = spawn_mw(d, &["resume", "two-1", "-q"], &[]);
    poll("the resumed master's tasks running", || pids(d).len() == 2);
    let b = run_mw(d, &["resume", "two-1", "-q"]);
    assert_eq!(b.code, 2, "{}", b.stderr);
    assert!(
        b.stderr.contains("another master") || b.stderr.contains("already has a running master"),
        "{}",
        b.stderr
    );
    write(d, "gate", "");
    let (ca, _, ea) = finish(a);
    assert_eq!(ca, 0, "{ea}");
    let r = run_mw(d, &["results", "two-1"]);
    assert_eq!(r.stdout.lines().count(), 3);
}

#[test]
fn another_process_holding_the_journal_write_lock_delays_but_never_loses_results() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "lock", 3);
    let out = d.join("out.jsonl");
    let child = spawn_mw(
        d,
        &["run", "lock.toml", "-q", "-o", out.to_str().unwrap()],
        &[],
    );
    poll("tasks running", || pids(d).len() == 2);
    let journal = d.join("jobs/lock-1/journal.sqlite");
    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    write(d, "gate", "");
    poll("every task ran", || pids(d).len() == 3);
    // The tasks ended but nothing can be committed: nothing may be reported yet.
    let printed = lines_in(&out).len();
    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);
    let (code, _, err) = finish(child);
    assert_eq!(printed, 0, "results were reported before they were stored");
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines_in(&out).len(), 3);
}

#[test]
fn a_full_disk_stops_the_master_and_what_was_printed_is_what_was_stored() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let jobs = d.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let _guard = mw_tests::Tmpfs::mount(&jobs, "600k");
    // Each task logs its run outside the tmpfs and returns 2 KB of JSON.
    script(
        d,
        "big.sh",
        &format!(
            "read input\necho \"$input\" >> {log}\nprintf '{{\"i\":%s,\"pad\":\"%s\"}}\\n' \"$input\" \"$(head -c 2000 /dev/zero | tr '\\0' x)\"",
            log = d.join("runs.log").display()
        ),
    );
    let list: Vec<String> = (0..600).map(|i| i.to_string()).collect();
    write(
        d,
        "full.toml",
        &format!(
            "name = \"full\"\nworkers = 2\n[program]\npath = \"big.sh\"\n[inputs]\nlist = [{}]\n",
            list.join(",")
        ),
    );
    let out = d.join("out.jsonl");
    let o = run_mw(d, &["run", "full.toml", "-q", "-o", out.to_str().unwrap()]);
    assert_ne!(o.code, 0, "the disk filled up: {}", o.stderr);
    assert!(o.stderr.contains("journal"), "{}", o.stderr);
    let printed: BTreeSet<i64> = lines_in(&out)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["task"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(printed.len() < 600, "the disk never filled");
    // Free space, then resume: every task is done, and no printed task ran again.
    assert!(Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&jobs)
        .status()
        .unwrap()
        .success());
    let r = run_mw(d, &["resume", "full-1", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let results = run_mw(d, &["results", "full-1"]);
    let stored: Vec<serde_json::Value> = results
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored.len(), 600);
    assert!(stored.iter().all(|l| l["state"] == "done"));
    let mut runs = std::collections::BTreeMap::<i64, u32>::new();
    for l in lines_in(&d.join("runs.log")) {
        *runs.entry(l.trim().parse().unwrap()).or_default() += 1;
    }
    for t in &printed {
        assert_eq!(
            runs.get(t),
            Some(&1),
            "task {t} was printed, then ran again"
        );
    }
}

#[test]
fn mw_cancel_of_a_fast_job_stops_it_within_the_acknowledgement() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("started")).unwrap();
    script(
        d,
        "null.sh",
        &format!("read input\n: > {}/$input", d.join("started").display()),
    );
    write(
        d,
        "fast.toml",
        "name = \"fast\"\nworkers = 2\n[program]\npath = \"null.sh\"\n[inputs.sweep]\ni = { start = 0, end = 20000 }\n",
    );
    let count = || std::fs::read_dir(d.join("started")).unwrap().count();
    let child = spawn_mw(d, &["run", "fast.toml", "-q", "-o", "/dev/null"], &[]);
    poll("200 tasks started", || count() >= 200);
    let o = run_mw(d, &["cancel", "fast-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // `mw cancel` waits 10 s for the acknowledgement; a master slowed by a loaded machine
    // gives it later, which the journal shows.
    if !o.stderr.contains("mw: cancelled") {
        assert!(o.stderr.contains("not acknowledged it yet"), "{}", o.stderr);
        let journal = d.join("jobs/fast-1").join(mw::journal::JOURNAL_FILE);
        poll("the master's acknowledgement of the cancel", || {
            mw::journal::open_checked(&journal, false)
                .and_then(|c| mw::journal::read_pending_cancels(&c, &journal))
                .is_ok_and(|pending| pending.is_empty())
        });
    }
    let at_ack = count();
    let (code, _, err) = finish(child);
    assert_eq!(code, 1, "cancelled tasks make the run exit 1: {err}");
    let after = count();
    // At most the tasks already handed to the two slots may still have started.
    assert!(
        after <= at_ack + 2,
        "{} tasks started after the cancel was acknowledged",
        after - at_ack
    );
    assert!(after < 20000);
}

/// `mw status JOB --json` of job `id`.
fn status_of(d: &Path, id: &str) -> serde_json::Value {
    let o = run_mw(d, &["status", id, "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).unwrap()
}

/// `mw submit FILE` with `env`; returns the job id.
fn submit_with(d: &Path, file: &str, env: &[(&str, &str)]) -> String {
    let (code, stdout, stderr) = finish(spawn_mw(d, &["submit", file], env));
    assert_eq!(code, 0, "{stderr}");
    stdout.split('\t').next().unwrap().to_string()
}

#[test]
fn a_cancel_right_after_submit_is_never_lost() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Tasks that never end by themselves: only the cancel can end the job.
    gated_job(d, "soon", 30);
    for round in 1..=3 {
        let id = submit_with(d, "soon.toml", &[]);
        assert_eq!(id, format!("soon-{round}"));
        // At once: the detached master may not have taken the job over yet.
        let o = run_mw(d, &["cancel", &id]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stderr.contains("cancelled"), "{}", o.stderr);
        let o = run_mw(d, &["wait", &id, "--timeout", "60"]);
        assert_eq!(
            o.code, 1,
            "the job must end, every task cancelled: {}",
            o.stderr
        );
        let counts = &status_of(d, &id)["job"]["counts"];
        assert_eq!(counts["cancelled"], 30, "{counts}");
        assert_eq!(counts["done"], 0, "{counts}");
    }
    poll("every started task gone", || {
        pids(d).iter().all(|p| !alive(*p))
    });

    // The detached master dies before it takes the job over: the cancel is carried out
    // without it, and no task ever starts.
    for p in std::fs::read_dir(d.join("pids")).unwrap().flatten() {
        std::fs::remove_file(p.path()).unwrap();
    }
    let id = submit_with(d, "soon.toml", &[("MW_CRASH_AT", "resume-start")]);
    let o = run_mw(d, &["cancel", &id]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("30 tasks cancelled"), "{}", o.stderr);
    assert_eq!(status_of(d, &id)["job"]["counts"]["cancelled"], 30);
    let o = run_mw(d, &["resume", &id, "-q"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("nothing to resume"), "{}", o.stderr);
    assert!(pids(d).is_empty(), "a cancelled task started");
}

#[test]
fn a_pending_cancel_is_applied_before_a_resumed_master_dispatches_anything() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("started")).unwrap();
    script(
        d,
        "mark.sh",
        &format!(
            "read input\ntouch {}/$input\necho \"$input\"",
            d.join("started").display()
        ),
    );
    write(
        d,
        "p.toml",
        "name = \"p\"\nworkers = 2\n[program]\npath = \"mark.sh\"\n[inputs]\nlist = [0, 1, 2, 3, 4, 5]\n",
    );
    // A submitted job whose master died before taking it over, and a `mw cancel` of task 0
    // killed right after recording its request: nobody has carried the request out.
    let id = submit_with(d, "p.toml", &[("MW_CRASH_AT", "resume-start")]);
    // `mw submit` returns before its detached master has reached the crash point.
    poll("the detached master gone", || {
        status_of(d, &id)["job"]["master_pid"].is_null()
    });
    let (code, _, stderr) = finish(spawn_mw(
        d,
        &["cancel", &id, "--task", "0"],
        &[("MW_CRASH_AT", "cancel-recorded")],
    ));
    assert_eq!(code, -1, "the crash point must kill mw cancel: {stderr}");
    // The next master applies it before it dispatches anything: task 0 never starts.
    let o = run_mw(d, &["resume", &id, "-q"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let started: BTreeSet<String> = std::fs::read_dir(d.join("started"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        started,
        ["1", "2", "3", "4", "5"].map(String::from).into(),
        "task 0 was cancelled before the master started"
    );
    let counts = &status_of(d, &id)["job"]["counts"];
    assert_eq!(counts["cancelled"], 1, "{counts}");
    assert_eq!(counts["done"], 5, "{counts}");
    // The request was acknowledged: a retry of task 0 runs it (it is not cancelled again).
    let o = run_mw(d, &["retry", &id, "--task", "0", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(d.join("started").join("0").exists());
}

/// `mw run` exits only after its worker slots removed their directories. The last task leaves
/// thousands of files in its working directory, so removing the slot directory takes a
/// while: before the fix the process exited in the middle of it (about one quick run in ten
/// did so even without such a task), and what was left had lost its lock file, so later
/// masters' sweeps kept it for an hour.
#[test]
fn mw_run_exits_only_after_its_slot_directories_are_removed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    script(
        d,
        "litter.sh",
        "cat > /dev/null\nmkdir -p a/b\ni=0\nwhile [ $i -lt 3000 ]; do : > f$i; : > a/b/g$i; i=$((i+1)); done\necho 1",
    );
    write(
        d,
        "litter.toml",
        "name = \"litter\"\nworkers = 2\n[program]\npath = \"litter.sh\"\n[inputs]\nlist = [1, 2]\n",
    );
    let child = spawn_mw(
        d,
        &["run", "litter.toml", "-q", "--no-journal"],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// The next master sweeps the scratch root: the slot and scratch directories of a SIGKILLed
/// master (their lock is free) go, and so does an old directory without a lock file (an
/// older mw's); a young one without a lock, one whose lock a live process holds, and
/// anything not named like a slot stay.
#[test]
fn a_killed_masters_slot_directories_are_swept_by_the_next_master() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let tmp_env = [("TMPDIR", tmp.to_str().unwrap())];
    let slots = || -> BTreeSet<String> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    gated_job(d, "gone", 2);
    let child = spawn_mw(d, &["run", "gone.toml", "-q", "--no-journal"], &tmp_env);
    poll("two tasks running", || pids(d).len() == 2);
    // Two slots, and the run's own scratch directory (it has no job directory).
    let killed = slots();
    assert_eq!(killed.len(), 3, "{killed:?}");
    assert!(
        killed.iter().all(|n| n.starts_with("mw-slot-")),
        "{killed:?}"
    );
    // SAFETY: kill(2) on the mw process we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = finish(child);
    write(d, "gate", "");
    for pid in pids(d) {
        // SAFETY: kill(2) with signal 0 only asks whether the task process still exists.
        poll("the killed master's tasks to end", || unsafe {
            libc::kill(pid, 0) != 0
        });
    }
    assert_eq!(slots(), killed, "the kill leaves the slot directories");

    let old = tmp.join("mw-slot-old");
    std::fs::create_dir(&old).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::open(&old)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(two_hours_ago))
        .unwrap();
    std::fs::create_dir(tmp.join("mw-slot-young")).unwrap();
    let live = tmp.join("mw-slot-live");
    std::fs::create_dir(&live).unwrap();
    let lock = std::fs::File::create(live.join(".mw-slot.lock")).unwrap();
    lock.try_lock().unwrap();
    std::fs::create_dir(tmp.join("other")).unwrap();

    write(
        d,
        "quick.toml",
        "name = \"quick\"\n[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1]\n",
    );
    let (code, _, err) = finish(spawn_mw(
        d,
        &["run", "quick.toml", "-q", "--no-journal"],
        &tmp_env,
    ));
    assert_eq!(code, 0, "{err}");
    let want: BTreeSet<String> = ["mw-slot-young", "mw-slot-live", "other"]
        .map(String::from)
        .into();
    assert_eq!(slots(), want);
    drop(lock);
}

/// Ctrl-C while a large sweep is being recorded stops the recording too: the job stays
/// "recording" with part of its tasks (`mw resume` records the rest). The recording thread
/// once went on to the end of a 3x10^6 sweep before `mw run` could exit.
#[test]
fn ctrl_c_stops_the_recording_of_a_large_sweep() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "huge", 1);
    // The same gated program over a sweep of 5x10^6 tasks.
    write(
        d,
        "huge.toml",
        &format!(
            "name = \"huge\"\nworkers = 2\n[program]\npath = \"gated.sh\"\n\
             [inputs.sweep]\nx = {{ start = 0, end = {n} }}\n",
            n = 5_000_000
        ),
    );
    let child = spawn_mw(d, &["run", "huge.toml", "-q"], &[]);
    poll("two tasks running", || pids(d).len() == 2);
    // SAFETY: kill(2) sends SIGINT to the mw process we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, _, err) = finish(child);
    assert_eq!(code, 130, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&run_mw(d, &["status", "huge-1", "--json"]).stdout).unwrap();
    let recorded = v["job"]["tasks"].as_u64().unwrap();
    assert!(recorded < 5_000_000, "every task was recorded after Ctrl-C");
    assert!(recorded >= 2, "{v}");
    let conn = rusqlite::Connection::open(d.join("jobs/huge-1/journal.sqlite")).unwrap();
    let status: String = conn
        .query_row("SELECT status FROM job", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "recording");
}

/// `mw cancel` of a job whose master was killed stops the local tasks that master left
/// running before it marks them cancelled: they once ran on, and `mw retry` then ran them a
/// second time beside the first.
#[test]
fn cancel_without_a_master_stops_the_tasks_it_left_running() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "orphans", 4);
    // Its own scratch root, so that the second master below is the only other one that
    // sweeps it.
    let tmp = d.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp_env = [("TMPDIR", tmp.to_str().unwrap())];
    let child = spawn_mw(d, &["run", "orphans.toml", "-q"], &tmp_env);
    poll("two tasks running", || pids(d).len() == 2);
    // Their process groups are journaled (a moment after the tasks start: the handles, not
    // the running state, are what `mw cancel` finds them by).
    let journal = d.join("jobs/orphans-1/journal.sqlite");
    poll("both tasks' process groups journaled", || {
        let Ok(conn) = rusqlite::Connection::open(&journal) else {
            return false;
        };
        conn.query_row(
            "SELECT COUNT(*) FROM tasks WHERE state = 'running' AND handle LIKE 'local:%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 2)
    });
    let running = pids(d);
    // A master whose watchdog is gone too (else the watchdog stops the tasks at once).
    mw_tests::kill_watchdog_of(child.id());
    // SAFETY: kill(2) on the mw process we started: a master that dies without clean-up.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = finish(child);
    assert!(
        running.iter().all(|p| alive(*p)),
        "the tasks died with the master"
    );
    // Another master starts meanwhile and sweeps the dead one's slot directories: it once
    // removed those the left tasks still worked in, and `mw cancel`, which finds a task by
    // its working directory, then stopped nothing.
    write(
        d,
        "other.toml",
        "name = \"other\"\n[program]\npath = \"/bin/cat\"\n[inputs]\nlist = [1]\n",
    );
    let (code, _, stderr) = finish(spawn_mw(d, &["run", "other.toml", "-q"], &tmp_env));
    assert_eq!(code, 0, "{stderr}");
    let o = run_mw(d, &["cancel", "orphans-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    poll("the left tasks stopped", || {
        running.iter().all(|p| !alive(*p))
    });
}

/// A local master killed with SIGKILL (or by the OOM killer) takes its running tasks with it:
/// its watchdog kills every process of them, also one that changed its working directory and
/// one that left its process group (`setsid`), which the journaled process groups would not
/// find. They once ran on until `mw resume` or `mw cancel`, and those two for ever.
#[test]
fn a_killed_master_takes_its_running_tasks_with_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("pids")).unwrap();
    script(
        d,
        "away.sh",
        &format!(
            "read input\ncd /\nsetsid sh -c 'echo $$ > {pids}/escaped-'\"$input\"'; exec sleep 1000' \
             < /dev/null > /dev/null 2>&1 &\necho $$ > {pids}/$input\nexec sleep 1000",
            pids = d.join("pids").display()
        ),
    );
    write(
        d,
        "away.toml",
        "name = \"away\"\nworkers = 2\n[program]\npath = \"away.sh\"\n[inputs]\nlist = [1, 2, 3]\n",
    );
    let child = spawn_mw(d, &["run", "away.toml", "-q"], &[]);
    poll("two tasks and their escaped children running", || {
        pids(d).len() == 4
    });
    let running = pids(d);
    // SAFETY: kill(2) on the mw process we started: a master that dies without clean-up.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = finish(child);
    poll("every process of the killed master's tasks gone", || {
        running.iter().all(|p| !alive(*p))
    });
}

/// A task that exits normally leaves no daemon behind while its master runs on: a process it
/// started with `setsid` carries its token and is killed soon after the task ended. It once
/// ran until the master ended (for a long job, hours; for a job of many such tasks, one
/// daemon per task).
#[test]
fn a_finished_tasks_setsid_daemon_goes_while_its_master_runs_on() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (daemon, gate) = (d.join("daemon"), d.join("gate"));
    script(
        d,
        "leave.sh",
        &format!(
            "read input\nif [ \"$input\" = 1 ]; then\n\
             setsid sh -c 'echo $$ > {daemon}.tmp; mv {daemon}.tmp {daemon}; exec sleep 1000' \
             < /dev/null > /dev/null 2>&1 &\n\
             while [ ! -e {daemon} ]; do sleep 0.01; done\nelse\n\
             while [ ! -e {gate} ]; do sleep 0.01; done\nfi\necho \"$input\"",
            daemon = daemon.display(),
            gate = gate.display()
        ),
    );
    write(
        d,
        "leave.toml",
        "name = \"leave\"\nworkers = 2\n[program]\npath = \"leave.sh\"\n[inputs]\nlist = [1, 2]\n",
    );
    let mut child = spawn_mw(d, &["run", "leave.toml", "-q"], &[]);
    poll("the daemon started", || daemon.exists());
    let pid: i32 = std::fs::read_to_string(&daemon)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    poll("the finished task's daemon gone", || !alive(pid));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the master ended before the daemon went"
    );
    write(d, "gate", "");
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}

/// A master killed in the reduce step (every task done) leaves a job `mw resume` runs the
/// reduce step of: the job was once marked finished before its reduce step, and the reduce
/// output was lost for good.
#[test]
fn a_master_killed_in_the_reduce_step_is_completed_by_resume() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "reduce.sh",
        &format!(
            "echo $$ > {pid}\nwhile [ ! -e {gate} ]; do sleep 0.01; done\nwc -l",
            pid = d.join("reduce.pid").display(),
            gate = d.join("gate").display()
        ),
    );
    write(
        d,
        "red.toml",
        "name = \"red\"\n[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1, 2, 3]\n\
         [reduce]\npath = \"reduce.sh\"\n",
    );
    let child = spawn_mw(d, &["run", "red.toml", "-q"], &[]);
    poll("the reduce step running", || {
        std::fs::read_to_string(d.join("reduce.pid")).is_ok_and(|s| s.ends_with('\n'))
    });
    // SAFETY: kill(2) on the mw process we started, then on the reduce program it left.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = finish(child);
    let reduce_pid: i32 = std::fs::read_to_string(d.join("reduce.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: as above, the reduce program this test's job started.
    unsafe { libc::kill(reduce_pid, libc::SIGKILL) };
    write(d, "gate", "");
    let o = run_mw(d, &["resume", "red-1", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "3", "{}", o.stderr);
    let kept = std::fs::read_to_string(d.join("jobs/red-1/reduce.out")).unwrap();
    assert_eq!(kept.trim(), "3");
}

/// `mw resume` of a job with a reduce step whose tasks failed says the reduce step was not
/// run, as `mw run` does (it said nothing), and records the job as finished.
#[test]
fn a_resumed_job_with_failed_tasks_says_its_reduce_step_was_not_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "task.sh",
        "x=$(cat)
[ \"$x\" = 2 ] && exit 3
echo \"$x\"",
    );
    write(
        d,
        "red.toml",
        "name = \"red\"\n[program]\npath = \"task.sh\"\n[inputs]\nlist = [1, 2, 3]\n\
         [reduce]\ncommand = [\"wc\", \"-l\"]\n",
    );
    // Killed before it recorded its tasks: every task is left to `mw resume`.
    let killed = spawn_mw(
        d,
        &["run", "red.toml", "-q"],
        &[("MW_CRASH_AT", "run-before-recording")],
    );
    let (code, _, stderr) = finish(killed);
    assert_ne!(code, 0, "{stderr}");
    let o = run_mw(d, &["resume", "red-1", "-q"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("mw: the reduce program was not run because tasks failed"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("1 failed"), "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "", "no reduce output: {}", o.stdout);
    let s = run_mw(d, &["status", "red-1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["job"]["state"], "finished with failures", "{}", s.stdout);
}

/// `mw retry` of a stopped job whose tasks never finished (none failed) points to the
/// `mw resume` that runs them, and that command works as printed. It said only "no failed
/// or cancelled tasks to retry".
#[test]
fn retry_of_a_stopped_job_points_to_resume() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "st.toml",
        "name = \"st\"\n[program]\ncommand = [\"/bin/cat\"]\n[inputs]\nlist = [1, 2, 3]\n",
    );
    let killed = spawn_mw(
        d,
        &["run", "st.toml", "-q"],
        &[("MW_CRASH_AT", "run-before-recording")],
    );
    let (code, _, stderr) = finish(killed);
    assert_ne!(code, 0, "{stderr}");
    let o = run_mw(d, &["retry", "st-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let hint = "before it had recorded every task: `mw resume st-1` runs the rest";
    assert!(o.stderr.contains(hint), "{}", o.stderr);
    let o = run_mw(d, &["resume", "st-1", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // A second run of the job, killed once its tasks were recorded, before any ran.
    let killed = spawn_mw(
        d,
        &["run", "st.toml", "-q"],
        &[("MW_CRASH_AT", "run-recorded-chunk")],
    );
    let _ = finish(killed);
    let o = run_mw(d, &["retry", "st-2"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let hint = "3 task(s) never finished: `mw resume st-2` runs the rest";
    assert!(o.stderr.contains(hint), "{}", o.stderr);
    let o = run_mw(d, &["resume", "st-2", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run_mw(d, &["results", "st-2"]);
    assert_eq!(o.stdout.lines().count(), 3, "{}", o.stdout);
}

/// The pid a dead master's journal names, reused by another process (here another job's
/// master, also an `mw`): the job counts as stopped, not running, so `mw resume` takes it
/// over. It once counted as running for good: `mw resume` refused and `mw wait` waited.
#[test]
fn a_dead_masters_pid_reused_by_another_mw_is_not_its_master() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "victim", 2);
    let victim = spawn_mw(d, &["run", "victim.toml", "-q"], &[]);
    poll("the victim's tasks running", || pids(d).len() == 2);
    mw_tests::kill_watchdog_of(victim.id());
    // SAFETY: kill(2) on the mw process we started.
    unsafe { libc::kill(victim.id() as i32, libc::SIGKILL) };
    let _ = finish(victim);
    // Another job's master, alive, takes the dead master's place in the victim's journal.
    write(
        d,
        "other.toml",
        "name = \"other\"\nworkers = 1\n[program]\npath = \"gated.sh\"\n[inputs]\nlist = [9]\n",
    );
    let other = spawn_mw(d, &["run", "other.toml", "-q"], &[]);
    poll("the other job's task running", || pids(d).len() == 3);
    let conn = rusqlite::Connection::open(d.join("jobs/victim-1/journal.sqlite")).unwrap();
    conn.execute("UPDATE job SET master_pid = ?1", [i64::from(other.id())])
        .unwrap();
    drop(conn);
    let s = run_mw(d, &["status", "victim-1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert!(
        !v["job"]["state"].as_str().unwrap().starts_with("running"),
        "{}",
        s.stdout
    );
    write(d, "gate", "");
    let o = run_mw(d, &["resume", "victim-1", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 0, "{}", o.stdout);
    let r = run_mw(d, &["results", "victim-1"]);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    let _ = finish(other);
}

/// An output the master's machine cannot keep (here its place is taken by a directory; a
/// full disk fails the same write) is not the task's fault: `mw run` stops with the reason
/// instead of failing task after task, the task is queued again, and `mw resume` finishes
/// the job once the place is free.
#[test]
fn an_output_that_cannot_be_stored_stops_mw_run_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let gate = d.join("gate");
    let log = d.join("runs.log");
    script(
        d,
        "out.sh",
        &format!(
            "read -r n\necho \"$n\" >> {log}\necho \"$n\" > out.txt\n\
             if [ \"$n\" = 1 ]; then while [ ! -f {gate} ]; do sleep 0.05; done; fi\n\
             echo \"$n\"",
            log = log.display(),
            gate = gate.display()
        ),
    );
    write(
        d,
        "out.toml",
        "name = \"out\"\nworkers = 2\noutputs = [\"out.txt\"]\n[program]\npath = \"out.sh\"\n\
         [inputs]\nlist = [0, 1, 2, 3]\n",
    );
    let child = spawn_mw(d, &["run", "out.toml", "-q"], &[]);
    poll("task 1 to start", || {
        lines_in(&log).iter().any(|l| l == "1")
    });
    let blocked = d.join("jobs/out-1/results/task-1/out.txt");
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    std::fs::write(&gate, "").unwrap();
    let (code, _, stderr) = finish(child);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("cannot store output `out.txt`") && stderr.contains("mw resume"),
        "{stderr}"
    );
    let counts = &status_of(d, "out-1")["job"]["counts"];
    assert_eq!(counts["failed"], 0, "{counts}");

    std::fs::remove_dir_all(&blocked).unwrap();
    let o = run_mw(d, &["resume", "out-1", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run_mw(d, &["results", "out-1"]);
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", o.stdout);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        let file = d.join(format!("jobs/out-{}/results/task-{i}/out.txt", 1));
        assert_eq!(std::fs::read_to_string(file).unwrap().trim(), i.to_string());
    }
}

/// Runs `mw run <job> -q` in `d` with the panic point `point` armed (`MW_PANIC_AT`): a hung
/// master fails the test (killed after two minutes) instead of hanging the suite. Returns
/// the exit code, stdout and stderr (which holds the injected panic's own report).
fn run_with_panic(d: &Path, job: &str, point: &str) -> (i32, String, String) {
    let child = spawn_mw(d, &["run", job, "-q"], &[("MW_PANIC_AT", point)]);
    let out = mw_tests::finish_within(child, std::time::Duration::from_secs(120));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A job of `n` tasks echoing their input (`{"i": N}`), each run logged to `runs.log`.
fn logged_job(d: &Path, name: &str, n: usize) {
    script(
        d,
        "logged.sh",
        &format!(
            "x=$(cat)\necho \"$x\" >> {log}\necho \"$x\"",
            log = d.join("runs.log").display()
        ),
    );
    let list: Vec<String> = (0..n).map(|i| format!("{{i = {i}}}")).collect();
    write(
        d,
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nworkers = 2\n[program]\npath = \"logged.sh\"\n[inputs]\nlist = [{}]\n",
            list.join(", ")
        ),
    );
}

/// The tasks of the result lines in `text`.
fn tasks_of(text: &str) -> Vec<i64> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["task"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// How many times each task ran, from `runs.log`.
fn runs_of(d: &Path) -> std::collections::BTreeMap<i64, u32> {
    let mut runs = std::collections::BTreeMap::new();
    for l in lines_in(&d.join("runs.log")) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        *runs.entry(v["i"].as_i64().unwrap()).or_default() += 1;
    }
    runs
}

/// After a panic stopped `mw run` of job `name` (`n` tasks, `printed` of them printed):
/// `mw resume` finishes the job, `mw results` reports every task once and done, and no
/// printed task ran again.
fn resume_reports_every_task_once(d: &Path, name: &str, n: usize, printed: &[i64]) {
    let id = format!("{name}-1");
    let o = run_mw(d, &["resume", &id, "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = run_mw(d, &["results", &id]);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        tasks_of(&r.stdout),
        (0..n as i64).collect::<Vec<_>>(),
        "{}",
        r.stdout
    );
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        // `{"i": N}` (`logged_job`) or `N` (`gated_job`).
        let out = &l["output"];
        assert_eq!(out.get("i").unwrap_or(out), &l["task"], "{l}");
    }
    let runs = runs_of(d);
    for t in printed {
        assert_eq!(
            runs.get(t),
            Some(&1),
            "task {t} was printed, then ran again"
        );
    }
}

/// A panic in the journal's writer thread (after it committed task 3's final row, before
/// reporting it durable) is a storage failure: `mw run` stops at once saying so, exits 2,
/// printed only what was stored, and `mw resume` finishes the job. (The writer once died
/// silently: nothing more was ever reported durable and `mw run` waited for ever.)
#[test]
fn a_panic_in_the_journal_writer_stops_mw_run_and_resume_finishes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    logged_job(d, "jpanic", 8);
    let (code, stdout, stderr) = run_with_panic(d, "jpanic.toml", "journal-writer:3");
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("the journal's writer thread panicked")
            && stderr.contains("injected panic")
            && stderr.contains("mw resume"),
        "{stderr}"
    );
    // Task 3's row was stored but never reported durable: it is not printed.
    let printed = tasks_of(&stdout);
    assert!(!printed.contains(&3), "{stdout}");
    resume_reports_every_task_once(d, "jpanic", 8, &printed);
    // Stored before the panic, task 3 did not run again either.
    assert_eq!(runs_of(d).get(&3), Some(&1));
}

/// A panic in the master's scheduler thread (task 2 taken from the queue, not yet handed to
/// a slot) stops the master: `mw run` exits 2 naming the panic, and `mw resume` finishes the
/// job, task 2 included. (The task in the scheduler's hand once stayed "running" with nobody
/// to report it, and `mw run` waited for ever for the stop to settle.)
#[test]
fn a_panic_in_the_scheduler_stops_mw_run_and_resume_finishes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    logged_job(d, "spanic", 6);
    let (code, stdout, stderr) = run_with_panic(d, "spanic.toml", "scheduler:2");
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("the scheduler thread panicked")
            && stderr.contains("injected panic")
            && stderr.contains("mw resume"),
        "{stderr}"
    );
    let printed = tasks_of(&stdout);
    assert!(!printed.contains(&2), "{stdout}");
    resume_reports_every_task_once(d, "spanic", 6, &printed);
}

/// A panic in `mw run`'s recording thread (after the first chunk of 500 tasks was recorded,
/// while tasks 0 and 1 wait on a gate) stops the master at once: `mw run` exits 2 naming the
/// panic and pointing to `mw resume`, which records the rest and finishes the job. (It once
/// ran every task recorded so far, here waiting for ever on the gate, before saying
/// anything.)
#[test]
fn a_panic_in_the_recording_thread_stops_mw_run_and_resume_finishes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "rpanic", 600);
    let (code, stdout, stderr) = run_with_panic(d, "rpanic.toml", "run-record:0");
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("the thread recording the tasks panicked")
            && stderr.contains("injected panic")
            && stderr.contains("`mw resume rpanic-1` records the rest"),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "", "{stdout}");
    assert_eq!(status_of(d, "rpanic-1")["job"]["counts"]["done"], 0);
    std::fs::write(d.join("gate"), "").unwrap();
    resume_reports_every_task_once(d, "rpanic", 600, &[]);
}

/// A panic while the master handles one task's outcome (on the local slot's thread that
/// reports it) fails that task with the panic's message; the slot and the other tasks go
/// on, and `mw run` ends with every task reported once. (The slot's thread once died with
/// the task still running for the master, and `mw run` waited for ever.)
#[test]
fn a_panic_handling_one_outcome_fails_that_task_only() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    logged_job(d, "cpanic", 6);
    let (code, stdout, stderr) = run_with_panic(d, "cpanic.toml", "completion:2");
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tasks_of(&stdout), (0..6).collect::<Vec<_>>(), "{stdout}");
    for l in &lines {
        if l["task"] == 2 {
            assert_eq!(l["state"], "failed", "{l}");
            let e = l["error"].as_str().unwrap();
            assert!(
                e.contains("internal error while handling its outcome")
                    && e.contains("injected panic"),
                "{e}"
            );
        } else {
            assert_eq!(l["state"], "done", "{l}");
        }
    }
    assert!(runs_of(d).values().all(|&n| n == 1), "{:?}", runs_of(d));
}
