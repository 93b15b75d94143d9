//! `mw-worker` as a BOINC app, run by Debian's REAL `boinc` client (no server, no network),
//! following reference/boinc-client.md §8. Needs the `boinc-client` package installed (not
//! running as a service) and `mw-worker` built (`cargo build -p mw-worker-runtime`).
//!
//! No sleeps synchronise anything: every wait polls observable state (`boinccmd
//! --get_tasks`, files, /proc) in a bounded loop whose timeout is only a hang guard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{BundleBuilder, BundleKind, Limits, ProgramInfo, TaskInfo};
use mw_tests::boinc_client::{run_workunit_with_real_client, DataDir, Job, TaskStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GUARD: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    mw_tests::workspace_root().join("tests/boinc").join(name)
}

/// Writes a program bundle running `script_name` and a task bundle for it; returns paths.
fn bundles(dir: &Path, script_name: &str, env: BTreeMap<String, String>) -> (PathBuf, PathBuf) {
    let program = dir.join("program.tar.gz");
    let mut b = BundleBuilder::program(
        ProgramInfo {
            executable: "prog.sh".into(),
            base_args: vec![],
        },
        "program",
    );
    b.add_file("prog.sh", &script(script_name)).unwrap();
    let sha = b.write_to(&program).unwrap();
    let task = dir.join("task.tar.gz");
    let mut t = BundleBuilder::task(
        TaskInfo {
            job: "boincjob".into(),
            task: 7,
            attempt: None,
            program_sha256: sha,
            env,
            outputs: vec!["out.txt".into()],
            ..TaskInfo::default()
        },
        "task",
    );
    t.add_bytes("input.json", br#"{"word":"hello"}"#.to_vec(), false)
        .unwrap();
    t.write_to(&task).unwrap();
    (program, task)
}

fn worker() -> PathBuf {
    mw_tests::bin("mw-worker")
}

#[test]
fn real_client_runs_mw_worker_to_success() {
    let d = tempfile::tempdir().unwrap();
    let (program, task) = bundles(d.path(), "upper.sh", BTreeMap::new());
    let out = run_workunit_with_real_client(&worker(), &program, &task, d.path()).unwrap();
    assert_eq!(
        out.task.state(),
        "uploaded",
        "{:#?}\n{}",
        out.task,
        out.client_log
    );
    assert_eq!(out.task.get("exit_status"), Some("0"));
    // The result bundle the worker wrote through the resolved `mw_result` link.
    let bytes = std::fs::read(&out.result_file).unwrap();
    let bundle = mw_bundle::open_in_memory(
        &bytes,
        "result",
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap();
    let info = bundle.manifest.result.clone().unwrap();
    assert!(info.exit.success(), "{info:?}");
    assert_eq!((info.job.as_str(), info.task), ("boincjob", 7));
    assert_eq!(bundle.members["stdout.json"], br#"{"WORD":"HELLO"}"#);
    assert_eq!(bundle.members["outputs/out.txt"], b"output file\n");
    // The finish file was written (and the client accepted the exit as a real finish).
    assert!(
        out.stderr_txt.contains("writing boinc_finish_called"),
        "{}",
        out.stderr_txt
    );
    assert!(
        !out.client_log.contains("no 'finished' file"),
        "{}",
        out.client_log
    );
    assert!(out
        .client_log
        .contains("Computation for task wu1_r0 finished"));
    // CPU time reached the client through the app_status channel (non-API apps report 0).
    let cpu = out.task.number("final CPU time").unwrap();
    assert!(cpu > 0.0, "final CPU time {cpu}: app_status not read");
    assert!(!out.stderr_txt.contains(&out.data_dir.authenticator));
}

#[test]
fn failing_task_is_a_compute_error_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let (program, task) = bundles(d.path(), "fail.sh", BTreeMap::new());
    let out = run_workunit_with_real_client(&worker(), &program, &task, d.path()).unwrap();
    assert_eq!(out.task.state(), "compute error", "{:#?}", out.task);
    assert_eq!(out.task.get("exit_status"), Some("1"));
    assert!(
        out.stderr_txt
            .contains("task failed: task 7 of job boincjob: exit status 3"),
        "{}",
        out.stderr_txt
    );
    assert!(
        out.stderr_txt.contains("boom: this task always fails"),
        "{}",
        out.stderr_txt
    );
    assert!(!out.stderr_txt.contains("boinc_finish_called"));
    // The failed result bundle is still there for the server to inspect.
    let bytes = std::fs::read(&out.result_file).unwrap();
    let bundle = mw_bundle::open_in_memory(
        &bytes,
        "result",
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap();
    assert!(!bundle.manifest.result.unwrap().exit.success());
    assert!(!out.stderr_txt.contains(&out.data_dir.authenticator));
}

#[test]
fn bad_task_bundle_is_a_compute_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let (program, _) = bundles(d.path(), "upper.sh", BTreeMap::new());
    let bogus = d.path().join("bogus.tar.gz");
    std::fs::write(&bogus, b"this is not a bundle").unwrap();
    let out = run_workunit_with_real_client(&worker(), &program, &bogus, d.path()).unwrap();
    assert_eq!(out.task.state(), "compute error", "{:#?}", out.task);
    assert_eq!(out.task.get("exit_status"), Some("2"));
    assert!(
        out.stderr_txt.contains("mw-worker: error:"),
        "{}",
        out.stderr_txt
    );
    assert!(out.stderr_txt.contains("wu1_mw_task"), "{}", out.stderr_txt);
}

fn wait_file(path: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        assert!(t0.elapsed() < GUARD, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// /proc state letter of `pid` (`T` = stopped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn wait_proc(pid: i32, want: impl Fn(Option<char>) -> bool, what: &str) {
    let t0 = Instant::now();
    while !want(proc_state(pid)) {
        assert!(t0.elapsed() < GUARD, "task process {pid} never {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn task(t: &[TaskStatus]) -> Option<&TaskStatus> {
    t.iter().find(|t| t.name() == "gated_r0")
}

#[test]
fn suspend_resume_and_quit_through_the_mmap_channel() {
    let d = tempfile::tempdir().unwrap();
    let gate = d.path().join("gate");
    let started = d.path().join("started");
    let env = BTreeMap::from([
        ("MW_GATE".to_string(), gate.display().to_string()),
        ("MW_STARTED".to_string(), started.display().to_string()),
    ]);
    let (program, task_bundle) = bundles(d.path(), "gate.sh", env);
    let job = Job {
        name: "gated".into(),
        program_bundle: program,
        task_bundle,
    };
    let data = DataDir::create(
        &d.path().join("client"),
        &worker(),
        &[job],
        "mwSECRETauth42",
    )
    .unwrap();
    let mut client = data.start().unwrap();
    client
        .wait_for("EXECUTING", GUARD, |t| {
            task(t).and_then(|t| t.active_state()) == Some("EXECUTING")
        })
        .unwrap();
    let pid: i32 = wait_file(&started).trim().parse().unwrap();
    wait_proc(pid, |s| matches!(s, Some(c) if c != 'T'), "ran");

    // The worker reports fraction done (0 while running) over app_status.
    let tasks = client.tasks();
    assert_eq!(task(&tasks).unwrap().number("fraction done"), Some(0.0));

    // The slot's init_data.xml holds the authenticator; the slot's stderr never does.
    let slot = data.dir.join("slots/0");
    let init = std::fs::read_to_string(slot.join("init_data.xml")).unwrap();
    assert!(init.contains("mwSECRETauth42"));

    // Suspend: the client sends <suspend/>, the worker SIGSTOPs the task's process group.
    client.task_op("gated_r0", "suspend").unwrap();
    client
        .wait_for("SUSPENDED", GUARD, |t| {
            task(t).and_then(|t| t.active_state()) == Some("SUSPENDED")
        })
        .unwrap();
    wait_proc(pid, |s| s == Some('T'), "stopped");

    // Resume: <resume/> → SIGCONT.
    client.task_op("gated_r0", "resume").unwrap();
    client
        .wait_for("EXECUTING again", GUARD, |t| {
            task(t).and_then(|t| t.active_state()) == Some("EXECUTING")
        })
        .unwrap();
    wait_proc(pid, |s| matches!(s, Some(c) if c != 'T'), "continued");

    // Quit (client shutdown): <quit/> → the worker stops the task and exits at once, so the
    // client need not kill it after its 60 s quit timeout.
    let exited_by_itself = client.quit(GUARD).unwrap();
    assert!(exited_by_itself, "client had to be killed");
    wait_proc(pid, |s| s.is_none() || s == Some('Z'), "went away");
    let log = data.client_log();
    assert!(!log.contains("killing them"), "{log}");
    let stderr = std::fs::read_to_string(slot.join("stderr.txt")).unwrap();
    assert!(
        stderr.contains("suspend requested by the BOINC client"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resume requested by the BOINC client"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Quit requested by the BOINC client"),
        "{stderr}"
    );
    assert!(!stderr.contains("mwSECRETauth42"));
    assert!(!data.result_file("gated").exists());

    // A new client restarts the task; opening the gate lets it finish successfully.
    std::fs::remove_file(&started).unwrap();
    let mut client = data.start().unwrap();
    wait_file(&started);
    std::fs::write(&gate, b"open").unwrap();
    let tasks = client
        .wait_for("the restarted task to finish", GUARD, |t| {
            task(t).is_some_and(|t| t.is_finished())
        })
        .unwrap();
    let t = task(&tasks).unwrap();
    assert_eq!(t.state(), "uploaded", "{t:#?}\n{}", data.client_log());
    assert!(t.number("final CPU time").unwrap() > 0.0, "{t:#?}");
    client.quit(GUARD).unwrap();
    let bytes = std::fs::read(data.result_file("gated")).unwrap();
    let bundle = mw_bundle::open_in_memory(
        &bytes,
        "result",
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(bundle.members["stdout.json"], b"\"gate opened\"\n");
    assert!(!data.stderr_txt("gated_r0").contains("mwSECRETauth42"));
}

#[test]
fn abort_through_the_mmap_channel_stops_the_task() {
    let d = tempfile::tempdir().unwrap();
    let started = d.path().join("started");
    let env = BTreeMap::from([
        (
            "MW_GATE".to_string(),
            d.path().join("never").display().to_string(),
        ),
        ("MW_STARTED".to_string(), started.display().to_string()),
    ]);
    let (program, task_bundle) = bundles(d.path(), "gate.sh", env);
    let job = Job {
        name: "gated".into(),
        program_bundle: program,
        task_bundle,
    };
    let data = DataDir::create(&d.path().join("client"), &worker(), &[job], "x").unwrap();
    let mut client = data.start().unwrap();
    let pid: i32 = wait_file(&started).trim().parse().unwrap();
    client.task_op("gated_r0", "abort").unwrap();
    let tasks = client
        .wait_for("the aborted task to finish", GUARD, |t| {
            task(t).is_some_and(|t| t.is_finished())
        })
        .unwrap();
    assert_eq!(task(&tasks).unwrap().state(), "aborted", "{tasks:#?}");
    // The worker stopped the task's process group itself.
    wait_proc(pid, |s| s.is_none() || s == Some('Z'), "went away");
    assert!(client.quit(GUARD).unwrap());
    assert!(!data.result_file("gated").exists());
    let log = data.client_log();
    assert!(log.contains("task_state=ABORT_PENDING"), "{log}");
}
