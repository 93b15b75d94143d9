//! The master off the happy path, at the library level: hostile numbers and sizes in
//! results, a stop in the middle of a run, completion racing cancel, and cancelling a
//! million queued tasks. Races are played exactly with the scripted interface
//! (`support/scripted.rs`): no processes, no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

mod support;

use mw::{
    Execution, Interface, InterfaceError, Master, MasterOptions, Multicore, MwError, NextOutcome,
    Program, TaskId, TaskSpec, TaskState,
};
use mw_bundle::{BundleBuilder, Comparison, ExitInfo, ResultInfo, RESULT_STDOUT_NAME};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use support::scripted::{ok_execution, Scripted};

fn result_info(task: u64) -> ResultInfo {
    ResultInfo {
        job: "t".into(),
        task,
        attempt: None,
        exit: ExitInfo::Exited { code: 0 },
        wall_secs: 0.5,
        user_secs: 0.1,
        sys_secs: 0.1,
        host: "h".into(),
        started_unix: 1.7e9,
        stderr_tail: String::new(),
        missing_outputs: vec![],
        comparison: Comparison::default(),
    }
}

fn bundle(info: ResultInfo, stdout: &[u8]) -> Vec<u8> {
    let mut b = BundleBuilder::result(info, "test result");
    b.add_bytes(RESULT_STDOUT_NAME, stdout.to_vec(), false)
        .unwrap();
    b.to_bytes().unwrap()
}

fn program() -> Arc<Program> {
    Arc::new(Program::new("/bin/cat").unwrap())
}

fn scripted_master(s: &Arc<Scripted>) -> Master {
    Master::with_options(s.clone() as Arc<dyn Interface>, MasterOptions::default()).unwrap()
}

/// Collects every outcome (bounded: the master must not hang).
fn collect_all(m: &Master) -> Vec<(TaskId, Result<mw::TaskOutput, MwError>)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match m.next_outcome(Duration::from_millis(100)) {
            NextOutcome::Finished(t, r, _) => out.push((t, r)),
            NextOutcome::Pending => {}
            NextOutcome::AllCollected => return out,
            NextOutcome::Stopped(e) => panic!("stopped: {e}"),
        }
    }
    panic!("the master never reported every task: {} so far", out.len());
}

#[test]
fn out_of_range_times_in_a_result_bundle_fail_only_that_task() {
    let mut cases = Vec::new();
    let mut i = result_info(0);
    i.wall_secs = 1e300;
    cases.push(("wall_secs", i));
    let mut i = result_info(0);
    i.started_unix = 1e19;
    cases.push(("started_unix", i));
    let mut i = result_info(0);
    i.user_secs = 1.8e19;
    i.sys_secs = 1.8e19;
    cases.push(("user_secs", i));
    let mut i = result_info(0);
    i.wall_secs = f64::NAN;
    cases.push(("wall_secs", i));
    for (field, info) in cases {
        let bytes = bundle(info, b"{\"x\":1}");
        let err = Execution::from_result_bundle(&bytes, "forged", TaskId(0), None).unwrap_err();
        assert!(
            err.0.contains(field) && err.0.contains("out of range"),
            "{field}: {err}"
        );
    }
    // Through a master: the malformed result fails its task with the message; the others
    // finish; nothing hangs.
    let s = Scripted::new(3, false);
    let m = scripted_master(&s);
    for k in 0..3 {
        m.submit_task(TaskSpec::new(program(), json!(k))).unwrap();
    }
    let started = s.wait_started(3);
    let mut bad = result_info(0);
    bad.wall_secs = 1e300;
    let outcome = Execution::from_result_bundle(&bundle(bad, b"1"), "forged", TaskId(0), None);
    s.finish(started[0], outcome);
    s.succeed(started[1], "1");
    s.succeed(started[2], "2");
    let got = collect_all(&m);
    assert_eq!(got.len(), 3);
    for (t, r) in got {
        if t == started[0] {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("out of range"), "{e}");
        } else {
            assert!(r.is_ok(), "{t}: {r:?}");
        }
    }
}

/// Peak resident memory of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_500_mb_json_result_in_a_small_upload_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdout");
    {
        // `[0,0,0,…]`: 500 MB of JSON that a naive parser turns into ~8 GB of values.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(b"[0").unwrap();
        let chunk = b",0".repeat(1 << 16);
        for _ in 0..(250_000_000 / (1 << 16)) {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"]").unwrap();
    }
    let mut b = BundleBuilder::result(result_info(0), "bomb");
    b.add_file(RESULT_STDOUT_NAME, &path).unwrap();
    let bytes = b.to_bytes().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(bytes.len() < 4 << 20, "upload is {} bytes", bytes.len());
    let before = vm_hwm_kib();
    let err = Execution::from_result_bundle_limited(
        &bytes,
        "upload",
        TaskId(0),
        None,
        mw::task::DEFAULT_MAX_OUTPUT_BYTES,
    )
    .unwrap_err();
    assert!(err.0.contains("limit"), "{err}");
    let grew = vm_hwm_kib().saturating_sub(before);
    assert!(grew < 64 * 1024, "peak memory grew by {grew} KiB");

    // Under the byte limit but with far more values than text: refused before parsing.
    let dense = format!("[0{}]", ",0".repeat(2_000_000));
    let e = mw::master::parse_stdout_limited(dense.as_bytes(), 8 << 20).unwrap_err();
    assert!(e.contains("JSON values") && e.contains("max_output"), "{e}");
    // An ordinary result passes, and the byte limit names itself.
    assert_eq!(
        mw::master::parse_stdout_limited(b"{\"x\":2.5}", 8 << 20).unwrap(),
        json!({"x": 2.5})
    );
    let e = mw::master::parse_stdout_limited(&[b' '; 100], 10).unwrap_err();
    assert!(e.contains("limit of 10 bytes"), "{e}");
}

#[test]
fn a_timeout_too_large_to_represent_is_no_timeout_and_the_slot_lives_on() {
    let m = Master::new(Multicore::new(1)).unwrap();
    let mut spec = TaskSpec::new(program(), json!({"a": 1}));
    spec.timeout = Some(Duration::MAX);
    let t0 = m.submit_task(spec).unwrap();
    let t1 = m
        .submit_task(TaskSpec::new(program(), json!({"b": 2})))
        .unwrap();
    let (_, a): (TaskId, serde_json::Value) = m.get_result(Some(t0)).unwrap();
    let (_, b): (TaskId, serde_json::Value) = m.get_result(Some(t1)).unwrap();
    assert_eq!((a, b), (json!({"a": 1}), json!({"b": 2})));
}

#[test]
fn a_stop_requeues_what_it_interrupts_and_resume_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let s = Scripted::new(2, false);
    let m = Master::with_journal(
        s.clone() as Arc<dyn Interface>,
        MasterOptions::default(),
        &job,
    )
    .unwrap();
    for k in 0..3 {
        m.submit_task(TaskSpec::new(program(), json!(k))).unwrap();
    }
    s.wait_started(2);
    let first = s.started()[0];
    s.succeed(first, "10");
    // The freed worker takes the third task.
    let started = s.wait_started(3);
    assert_eq!(started[0], first);
    // Task 0's result is durable before it is reported.
    match m.next_outcome(Duration::from_secs(30)) {
        NextOutcome::Finished(t, Ok(out), _) => {
            assert_eq!((t, out.value), (started[0], json!(10)));
        }
        other => panic!("{other:?}"),
    }
    m.stop("test stop");
    // The interrupted tasks were cancelled on the interface, and nothing more starts.
    let mut cancels = s.cancels();
    cancels.sort();
    assert_eq!(cancels, vec![started[1], started[2]]);
    match m.next_outcome(Duration::from_secs(30)) {
        NextOutcome::Stopped(MwError::Stopped(r)) => assert!(r.contains("test stop"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.started().len(), 3);
    assert!(matches!(
        m.get_result::<serde_json::Value>(None),
        Err(MwError::Stopped(_))
    ));
    drop(m);

    // Resume: the interrupted task and the never-started one run; task 0 does not.
    let s2 = Scripted::new(2, false);
    let m2 = Master::resume(
        s2.clone() as Arc<dyn Interface>,
        MasterOptions::default(),
        &job,
        |_, input| Ok(TaskSpec::new(program(), input)),
    )
    .unwrap();
    let again = s2.wait_started(2);
    assert!(!again.contains(&started[0]), "{again:?}");
    for t in &again {
        s2.succeed(*t, "1");
    }
    m2.wait_all();
    let states = m2.task_states();
    assert!(
        states.iter().all(|(_, st)| *st == TaskState::Done),
        "{states:?}"
    );
}

#[test]
fn a_completion_that_races_a_cancel_is_reported_once() {
    // A backend that keeps tasks running (like Condor): the cancel is only a request, and
    // the task's success arrives afterwards.
    let s = Scripted::new(1, true);
    let m = scripted_master(&s);
    let t = m.submit_task(TaskSpec::new(program(), json!(1))).unwrap();
    s.wait_started(1);
    m.cancel(t).unwrap();
    assert_eq!(s.cancels(), vec![t]);
    s.succeed(t, "7");
    let got = collect_all(&m);
    assert_eq!(got.len(), 1);
    // A success that won the race is kept (the work was done), exactly once.
    assert_eq!(got[0].1.as_ref().unwrap().value, json!(7));
    // A failure racing a cancel is a cancel.
    let t2 = m.submit_task(TaskSpec::new(program(), json!(2))).unwrap();
    s.wait_started(2);
    m.cancel(t2).unwrap();
    s.finish(t2, Err(InterfaceError::new("lost")));
    let got = collect_all(&m);
    assert!(matches!(got[0].1, Err(MwError::Cancelled(_))), "{got:?}");
    let _ = ok_execution("");
}

#[test]
fn a_result_is_trusted_only_for_what_its_task_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let mut spec = TaskSpec::new(program(), json!(1));
    spec.outputs = vec!["declared.txt".into()];
    let task = mw::PreparedTask {
        id: TaskId(5),
        attempt: 1,
        job: "mine-1".into(),
        spec,
        output_dir: Some(out.clone()),
        staging_dir: dir.path().to_path_buf(),
    };
    let make = |job: &str, t: u64| {
        let mut info = result_info(t);
        info.job = job.into();
        let mut b = BundleBuilder::result(info, "r");
        b.add_bytes(RESULT_STDOUT_NAME, b"1".to_vec(), false)
            .unwrap();
        b.add_bytes("outputs/declared.txt", b"ok".to_vec(), false)
            .unwrap();
        b.add_bytes("outputs/sneaky.sh", b"rm -rf ~".to_vec(), false)
            .unwrap();
        b.to_bytes().unwrap()
    };
    // Another job's task 5, and this job's task 7: both refused, naming why.
    let e = Execution::from_result_bundle_of(&make("someone-elses-job-7", 5), "r", &task)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("someone-elses-job-7") && e.contains("forged"),
        "{e}"
    );
    let e = Execution::from_result_bundle_of(&make("mine-1", 7), "r", &task)
        .unwrap_err()
        .to_string();
    assert!(e.contains("task 7") && e.contains("forged"), "{e}");
    // Another attempt of this very task (a stale or replayed result): refused too.
    let mut stale = result_info(5);
    stale.job = "mine-1".into();
    stale.attempt = Some(2);
    let e = Execution::from_result_bundle_of(&bundle(stale, b"1"), "r", &task)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attempt 2") && e.contains("forged"), "{e}");
    assert!(!out.exists(), "a refused result wrote files");
    // The right one: only the declared output is kept.
    let ok = Execution::from_result_bundle_of(&make("mine-1", 5), "r", &task).unwrap();
    assert_eq!(ok.output_files.len(), 1);
    assert_eq!(std::fs::read(out.join("declared.txt")).unwrap(), b"ok");
    assert!(!out.join("sneaky.sh").exists());
    // A result this machine cannot store (the output's place is taken) is a local error,
    // not a bad result.
    std::fs::remove_file(out.join("declared.txt")).unwrap();
    std::fs::create_dir_all(out.join("declared.txt/in-the-way")).unwrap();
    let e = Execution::from_result_bundle_of(&make("mine-1", 5), "r", &task).unwrap_err();
    assert!(
        matches!(&e, mw::task::ResultError::Local(m) if m.contains("cannot store output `declared.txt`")),
        "{e:?}"
    );
}

/// A journaled job of `n` tasks none of which ever started (its master had no worker).
fn job_never_started(job: &std::path::Path, n: u64) {
    let idle = Scripted::new(0, false);
    let m =
        Master::with_journal(idle as Arc<dyn Interface>, MasterOptions::default(), job).unwrap();
    for k in 0..n {
        m.submit_task(TaskSpec::new(program(), json!(k))).unwrap();
    }
    drop(m);
}

#[test]
fn cancel_requests_pending_in_the_journal_are_applied_before_a_resumed_master_dispatches() {
    // What `mw cancel` leaves when it runs while no master holds the job (e.g. right after
    // `mw submit`, before the detached master took the job over): the next master must
    // apply it before anything starts, and acknowledge it.
    let dir = tempfile::tempdir().unwrap();
    for (name, request) in [("one", Some(1u64)), ("all", None)] {
        let job = dir.path().join(name);
        job_never_started(&job, 4);
        let path = job.join(mw::journal::JOURNAL_FILE);
        let conn = mw::journal::open_checked(&path, true).unwrap();
        let req = mw::journal::request_cancel(&conn, &path, request, 1.7e9).unwrap();
        drop(conn);

        let s = Scripted::new(4, false);
        let m = Master::resume(
            s.clone() as Arc<dyn Interface>,
            MasterOptions::default(),
            &job,
            |_, input| Ok(TaskSpec::new(program(), input)),
        )
        .unwrap();
        let conn = mw::journal::open_checked(&path, false).unwrap();
        assert!(mw::journal::cancel_acknowledged(&conn, &path, req).unwrap());
        let expect_started = if request.is_some() { 3 } else { 0 };
        for t in s.wait_started(expect_started) {
            s.succeed(t, "0");
        }
        let outcomes = collect_all(&m);
        assert_eq!(outcomes.len(), 4, "{name}");
        for (t, r) in &outcomes {
            let cancelled = request.is_none_or(|c| c == t.0);
            assert_eq!(
                matches!(r, Err(MwError::Cancelled(_))),
                cancelled,
                "{name}: {t}: {r:?}"
            );
        }
        let started = s.started();
        assert_eq!(started.len(), expect_started, "{name}: {started:?}");
        if let Some(c) = request {
            assert!(!started.contains(&TaskId(c)), "{name}: {started:?}");
        }
        drop(m);
        let conn = mw::journal::open_checked(&path, false).unwrap();
        let counts = mw::journal::state_counts(&conn, &path).unwrap();
        assert_eq!(counts.cancelled, 4 - expect_started as u64, "{name}");
    }
}

/// Dropping a journaled master whose task runs lets the job go when the drop returns: a
/// cancel's grace-period thread does not keep the journal (through the start hook that
/// records the task's process) and its lock for two more seconds, so a resume right after
/// finds the job free, and the journal's log is folded in.
#[test]
fn a_dropped_master_with_a_task_running_frees_its_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let started = dir.path().join("started");
    let script = dir.path().join("slow.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\nexec sleep 60\n", started.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let slow = Arc::new(Program::new(&script).unwrap());
    let m = Master::with_journal(
        Arc::new(Multicore::new(1)) as Arc<dyn Interface>,
        MasterOptions::default(),
        &job,
    )
    .unwrap();
    m.submit_task(TaskSpec::new(slow.clone(), json!(1)))
        .unwrap();
    // Wait until the process runs (its first act is to touch `started`).
    for _ in 0..6000 {
        if started.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(started.exists(), "the task never started");
    drop(m);
    let again = Master::resume(
        Arc::new(Multicore::new(1)) as Arc<dyn Interface>,
        MasterOptions::default(),
        &job,
        |_, v| Ok(TaskSpec::new(slow.clone(), v)),
    );
    assert!(again.is_ok(), "{:?}", again.err());
    again.unwrap().stop("test over");
}

/// A slot that cannot start says why, naming the directory: a task's error is the cause,
/// not "thread or scratch directory".
#[test]
fn a_slot_that_cannot_make_its_directory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-root");
    let m = Master::new(Multicore::new(1).with_scratch_root(&missing)).unwrap();
    let t = m.submit(&Program::new("/bin/cat").unwrap(), &1).unwrap();
    let e = m
        .get_result::<serde_json::Value>(Some(t))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("scratch directory"),
        "{e}"
    );
}

/// An input file's name is one plain file name in the task's directory: a path, `..` or
/// an absolute name fails the task and writes nothing outside it.
#[test]
fn an_input_file_named_as_a_path_fails_its_task_and_writes_nothing_outside() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.txt");
    std::fs::write(&source, "data").unwrap();
    let outside = dir.path().join("escaped");
    let m = Master::new(Multicore::new(1)).unwrap();
    let cat = Arc::new(Program::new("/bin/cat").unwrap());
    let mut ids = Vec::new();
    for name in [
        outside.display().to_string(),
        "../escaped".to_string(),
        "..".to_string(),
        String::new(),
    ] {
        let mut spec = TaskSpec::new(cat.clone(), json!(1));
        spec.input_files = vec![(name.clone(), source.clone())];
        ids.push((m.submit_task(spec).unwrap(), name));
    }
    let mut fine = TaskSpec::new(cat, json!(2));
    fine.input_files = vec![("data.txt".into(), source.clone())];
    let ok = m.submit_task(fine).unwrap();
    for (id, name) in ids {
        let e = m
            .get_result::<serde_json::Value>(Some(id))
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain file name"), "`{name}`: {e}");
    }
    assert_eq!(m.get_result::<u32>(Some(ok)).unwrap().1, 2);
    assert!(
        !outside.exists(),
        "an input file was written outside its task's directory"
    );
}
