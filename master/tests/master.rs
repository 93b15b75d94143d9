//! Library-level tests of `mw::Master` over the real `Multicore` interface, running real
//! processes: small /bin/sh scripts written into temp dirs. Synchronisation with running
//! tasks is by FIFOs (a task announces it started by writing to one; it waits on a gate FIFO
//! the test opens to release it), never by sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw::{
    ExitInfo, Master, MasterOptions, Multicore, MwError, Program, TaskId, TaskSpec, TaskState,
};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// A program made of `body` as a /bin/sh script.
    fn program(&self, name: &str, body: &str) -> Arc<Program> {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Arc::new(Program::new(&path).unwrap())
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        let st = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        p
    }
}

/// A task of `program` with `input` and env vars.
fn spec(program: &Arc<Program>, input: Value, env: &[(&str, String)]) -> TaskSpec {
    let mut s = TaskSpec::new(program.clone(), input);
    for (k, v) in env {
        s.env.insert(k.to_string(), v.clone());
    }
    s
}

/// Blocks until the task writes to the `started` FIFO; returns what it wrote.
fn wait_started(fifo: &Path) -> String {
    std::fs::read_to_string(fifo).unwrap()
}

/// Releases a task blocked reading the `gate` FIFO.
fn release(gate: &Path) {
    std::fs::write(gate, "go\n").unwrap();
}

/// Waits (up to 30 s, through a pidfd: no sleeping) until process `pid` has exited.
fn exited(pid: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd for one entry.
    let r = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    r == 1
}

/// A gated task: announces "$$" on $STARTED, then waits for $GATE, then prints its input.
const GATED: &str = r#"input=$(cat)
echo $$ > "$STARTED"
read -r go < "$GATE"
printf '%s' "$input""#;

#[test]
fn input_on_stdin_and_result_from_stdout_with_args_env_and_files() {
    let d = Dir::new();
    std::fs::write(d.path("data.txt"), "from input file").unwrap();
    std::fs::write(d.path("helper.txt"), "from program file").unwrap();
    let program = Arc::new(
        Program::new(&*d.program(
            "echo.sh",
            r#"input=$(cat)
printf '{"input":%s,"arg":"%s","env":"%s","file":"%s","helper":"%s"}' "$input" "$1" "$V" "$(cat data.txt)" "$(cat helper.txt)""#,
        ).executable().to_path_buf())
        .unwrap()
        .with_file(d.path("helper.txt"))
        .unwrap(),
    );
    let master = Master::new(Multicore::new(2)).unwrap();
    let mut s = spec(&program, json!({"a": [1, 2]}), &[("V", "vee".into())]);
    s.args = vec!["arg1".into()];
    s.input_files = vec![("data.txt".into(), d.path("data.txt"))];
    let t = master.submit_task(s).unwrap();
    let (got, v): (TaskId, Value) = master.get_result(Some(t)).unwrap();
    assert_eq!(got, t);
    assert_eq!(
        v,
        json!({"input": {"a": [1, 2]}, "arg": "arg1", "env": "vee",
               "file": "from input file", "helper": "from program file"})
    );
}

#[test]
fn empty_stdout_is_null_and_non_json_stdout_is_bad_output() {
    let d = Dir::new();
    let silent = d.program("silent.sh", "exit 0");
    let chatty = d.program("chatty.sh", "echo 'this is not json'");
    let master = Master::new(Multicore::new(2)).unwrap();
    let a = master.submit_task(spec(&silent, json!(1), &[])).unwrap();
    let b = master.submit_task(spec(&chatty, json!(1), &[])).unwrap();
    let (_, v): (TaskId, Value) = master.get_result(Some(a)).unwrap();
    assert_eq!(v, Value::Null);
    match master.get_result::<Value>(Some(b)) {
        Err(MwError::BadOutput { task, reason, host }) => {
            assert_eq!(task, b);
            assert!(!reason.is_empty());
            // Where it ran, as for any other failure.
            assert!(!host.is_empty());
        }
        other => panic!("expected BadOutput, got {other:?}"),
    }
}

#[test]
fn result_of_the_wrong_type_names_the_task() {
    let d = Dir::new();
    let p = d.program("str.sh", r#"echo '"not a number"'"#);
    let master = Master::new(Multicore::new(1)).unwrap();
    let t = master.submit_task(spec(&p, json!(null), &[])).unwrap();
    let err = master.get_result::<u64>(Some(t)).unwrap_err();
    assert!(
        matches!(err, MwError::WrongType { task, .. } if task == t),
        "{err:?}"
    );
    assert!(err.to_string().contains("task 0"));
}

#[test]
fn a_failing_task_error_names_the_task_the_exit_status_and_the_stderr_tail() {
    let d = Dir::new();
    let p = d.program(
        "fail.sh",
        r#"echo "some progress" >&2
echo "bad things happened" >&2
exit 7"#,
    );
    let master = Master::new(Multicore::new(1)).unwrap();
    let _ok = master
        .submit_task(spec(&d.program("ok.sh", "echo 1"), json!(0), &[]))
        .unwrap();
    let t = master.submit_task(spec(&p, json!(0), &[])).unwrap();
    let err = master.get_result::<Value>(Some(t)).unwrap_err();
    match &err {
        MwError::TaskFailed {
            task,
            exit,
            stderr_tail,
            attempts,
            host,
        } => {
            assert_eq!(*task, t);
            assert_eq!(*exit, ExitInfo::Exited { code: 7 });
            assert!(stderr_tail.contains("bad things happened"));
            assert_eq!(*attempts, 1);
            assert!(!host.is_empty());
        }
        e => panic!("expected TaskFailed, got {e:?}"),
    }
    assert_eq!(err.task(), Some(t));
    let text = err.to_string();
    assert!(text.contains("task 1 failed"), "{text}");
    assert!(text.contains("exit status 7"), "{text}");
    assert!(text.contains("bad things happened"), "{text}");
}

#[test]
fn a_task_killed_by_a_signal_errs_naming_the_signal() {
    let d = Dir::new();
    let p = d.program("segv.sh", "echo dying >&2; kill -SEGV $$");
    let master = Master::new(Multicore::new(1)).unwrap();
    let t = master.submit_task(spec(&p, json!(0), &[])).unwrap();
    let err = master.get_result::<Value>(Some(t)).unwrap_err();
    assert!(
        matches!(&err, MwError::TaskFailed { exit: ExitInfo::Signaled { signal }, .. } if *signal == libc::SIGSEGV),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("task 0"), "{text}");
    assert!(text.contains("signal 11"), "{text}");
    assert!(text.contains("SIGSEGV"), "{text}");
    assert!(text.contains("dying"), "{text}");
}

#[test]
fn a_timeout_fails_the_task_and_kills_its_process_group() {
    let d = Dir::new();
    let p = d.program(
        "hang.sh",
        r#"sleep 1000 &
echo $! > "$PIDS"
sleep 1000"#,
    );
    let master = Master::new(Multicore::new(1)).unwrap();
    let mut s = spec(&p, json!(0), &[("PIDS", d.s("pids"))]);
    s.timeout = Some(Duration::from_secs(1));
    let t = master.submit_task(s).unwrap();
    let err = master.get_result::<Value>(Some(t)).unwrap_err();
    assert!(
        matches!(
            &err,
            MwError::TaskFailed {
                exit: ExitInfo::TimedOut { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    let pid: i32 = std::fs::read_to_string(d.path("pids"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(exited(pid), "grandchild {pid} outlived the timeout");
}

#[test]
fn declared_output_files_come_back_and_links_do_not() {
    let d = Dir::new();
    std::fs::write(d.path("secret"), "host secret").unwrap();
    let p = d.program(
        "out.sh",
        r#"echo result > out.txt
ln -s "$SECRET" leak.txt
echo '{}'"#,
    );
    let results = d.path("results");
    let master = Master::with_options(
        Arc::new(Multicore::new(1)),
        MasterOptions {
            results_dir: Some(results.clone()),
            ..MasterOptions::default()
        },
    )
    .unwrap();
    let mut s = spec(&p, json!(0), &[("SECRET", d.s("secret"))]);
    s.outputs = vec!["out.txt".into(), "leak.txt".into()];
    let t = master.submit_task(s.clone()).unwrap();
    // A link in place of a declared output is not kept, and the task fails naming it.
    match master.get_output(Some(t)) {
        Err(MwError::MissingOutput { files, .. }) => assert_eq!(files, ["leak.txt"]),
        other => panic!("expected MissingOutput, got {other:?}"),
    }
    assert!(!results.join("task-0").join("leak.txt").exists());
    // The regular file came back.
    s.outputs = vec!["out.txt".into()];
    let t = master.submit_task(s).unwrap();
    let out = master.get_output(Some(t)).unwrap();
    let names: Vec<&str> = out.output_files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["out.txt"]);
    let kept = &out.output_files[0].1;
    assert!(kept.starts_with(&results));
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "result\n");
    assert!(!results.join("task-1").join("leak.txt").exists());
}

#[test]
fn get_result_for_a_task_vs_next_finished_vs_non_blocking() {
    let d = Dir::new();
    let started = d.fifo("started");
    let gate = d.fifo("gate");
    let gated = d.program("gated.sh", GATED);
    let quick = d.program("quick.sh", "cat");
    let master = Master::new(Multicore::new(2)).unwrap();
    let env = [("STARTED", d.s("started")), ("GATE", d.s("gate"))];
    let a = master.submit_task(spec(&gated, json!("a"), &env)).unwrap();
    let b = master.submit_task(spec(&quick, json!("b"), &[])).unwrap();
    wait_started(&started);

    // A is blocked on its gate: the next finished task can only be B.
    let (t, v): (TaskId, String) = master.get_result(None).unwrap();
    assert_eq!((t, v.as_str()), (b, "b"));
    assert!(matches!(
        master.get_result::<Value>(Some(b)),
        Err(MwError::AlreadyCollected(t)) if t == b
    ));
    assert!(master.try_get_result::<Value>(Some(a)).unwrap().is_none());
    assert!(master.try_get_result::<Value>(None).unwrap().is_none());
    assert_eq!(master.task_state(a), Some(TaskState::Running));
    assert!(master
        .get_output_timeout(Some(a), Duration::from_millis(1))
        .unwrap()
        .is_none());

    release(&gate);
    master.wait_all();
    let (t, v): (TaskId, String) = master.try_get_result(Some(a)).unwrap().unwrap();
    assert_eq!((t, v.as_str()), (a, "a"));
    assert!(matches!(
        master.try_get_result::<Value>(Some(a)),
        Err(MwError::AlreadyCollected(t)) if t == a
    ));
    assert!(matches!(
        master.get_result::<Value>(None),
        Err(MwError::NothingPending)
    ));
    assert!(matches!(
        master.try_get_result::<Value>(None),
        Err(MwError::NothingPending)
    ));
    assert!(matches!(
        master.get_result::<Value>(Some(TaskId(99))),
        Err(MwError::UnknownTask(TaskId(99)))
    ));
}

#[test]
fn get_result_none_on_a_fresh_master_is_nothing_pending() {
    let master = Master::new(Multicore::new(1)).unwrap();
    assert!(matches!(
        master.get_result::<Value>(None),
        Err(MwError::NothingPending)
    ));
}

#[test]
fn next_finished_returns_every_task_once() {
    let d = Dir::new();
    let p = d.program("cat.sh", "cat");
    let master = Master::new(Multicore::new(2)).unwrap();
    let ids: Vec<TaskId> = (0..10)
        .map(|i| master.submit_task(spec(&p, json!(i), &[])).unwrap())
        .collect();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (t, v): (TaskId, u64) = master.get_result(None).unwrap();
        assert_eq!(v, t.0);
        seen.push(t);
    }
    seen.sort();
    assert_eq!(seen, ids);
    assert!(matches!(
        master.get_result::<Value>(None),
        Err(MwError::NothingPending)
    ));
}

const FLAKY: &str = r#"n=$(cat "$COUNTER" 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > "$COUNTER"
if [ $n -eq 1 ]; then echo "first attempt fails" >&2; exit 1; fi
echo "{\"attempt\": $n}""#;

#[test]
fn a_retry_succeeds_after_a_first_failure() {
    let d = Dir::new();
    let p = d.program("flaky.sh", FLAKY);
    let master = Master::with_options(
        Arc::new(Multicore::new(1)),
        MasterOptions {
            retries: 1,
            ..MasterOptions::default()
        },
    )
    .unwrap();
    let t = master
        .submit_task(spec(&p, json!(0), &[("COUNTER", d.s("counter"))]))
        .unwrap();
    let out = master.get_output(Some(t)).unwrap();
    assert_eq!(out.value, json!({"attempt": 2}));
    assert_eq!(out.attempts, 2);
    assert_eq!(std::fs::read_to_string(d.path("counter")).unwrap(), "2\n");
}

#[test]
fn without_retries_the_first_failure_is_final() {
    let d = Dir::new();
    let p = d.program("flaky.sh", FLAKY);
    let master = Master::new(Multicore::new(1)).unwrap();
    let t = master
        .submit_task(spec(&p, json!(0), &[("COUNTER", d.s("counter"))]))
        .unwrap();
    let err = master.get_result::<Value>(Some(t)).unwrap_err();
    assert!(
        matches!(&err, MwError::TaskFailed { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("first attempt fails"));
    assert_eq!(master.status().failed, 1);
    assert_eq!(std::fs::read_to_string(d.path("counter")).unwrap(), "1\n");
}

#[test]
fn max_failures_stops_the_master_after_that_many_final_failures() {
    let d = Dir::new();
    // Fails for good (no retries left) unless the input is even; a retried failure that
    // then succeeds does not count.
    let p = d.program(
        "odd.sh",
        r#"i=$(cat); echo "$i" >> "$RAN"; [ $((i % 2)) = 0 ] || exit 3; echo "$i""#,
    );
    let master = Master::with_options(
        Arc::new(Multicore::new(1)),
        MasterOptions {
            max_failures: Some(2),
            ..MasterOptions::default()
        },
    )
    .unwrap();
    let specs = (0..20)
        .map(|i| spec(&p, json!(i), &[("RAN", d.s("ran"))]))
        .collect();
    master.submit_many(specs).unwrap();
    let mut failed = 0;
    let stopped = loop {
        match master.next_outcome(Duration::from_secs(600)) {
            mw::NextOutcome::Finished(_, Err(_), _) => failed += 1,
            mw::NextOutcome::Finished(_, Ok(_), _) => {}
            mw::NextOutcome::Stopped(e) => break e,
            other => panic!("{other:?}"),
        }
    };
    assert!(master.halted());
    assert!(stopped.to_string().contains("2 tasks failed"), "{stopped}");
    // One slot: the second failure stops it, though the next task may have been handed out
    // (and then stopped) meanwhile; both failures were handed out before the stop.
    assert_eq!(failed, 2);
    let ran = std::fs::read_to_string(d.path("ran")).unwrap();
    assert!(ran.lines().count() <= 5, "{ran}");
    assert!(master.task_state(TaskId(19)) == Some(TaskState::Queued));
}

#[test]
fn retries_are_used_up_by_a_task_that_always_fails() {
    let d = Dir::new();
    let p = d.program(
        "always.sh",
        r#"echo x >> "$COUNTER"; echo "nope" >&2; exit 2"#,
    );
    let master = Master::with_options(
        Arc::new(Multicore::new(1)),
        MasterOptions {
            retries: 2,
            ..MasterOptions::default()
        },
    )
    .unwrap();
    let t = master
        .submit_task(spec(&p, json!(0), &[("COUNTER", d.s("counter"))]))
        .unwrap();
    let err = master.get_result::<Value>(Some(t)).unwrap_err();
    assert!(
        matches!(&err, MwError::TaskFailed { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("attempt 3"), "{err}");
    assert_eq!(
        std::fs::read_to_string(d.path("counter")).unwrap(),
        "x\nx\nx\n"
    );
}

#[test]
fn cancel_a_queued_task_and_a_running_task() {
    let d = Dir::new();
    let started = d.fifo("started");
    let _gate = d.fifo("gate");
    let blocker = d.program(
        "blocker.sh",
        r#"sleep 1000 &
echo "$$ $!" > "$STARTED"
read -r go < "$GATE"
echo '"released"'"#,
    );
    let marker = d.program("marker.sh", r#"touch "$MARK"; echo 1"#);
    let master = Master::new(Multicore::new(1)).unwrap();
    let running = master
        .submit_task(spec(
            &blocker,
            json!(0),
            &[("STARTED", d.s("started")), ("GATE", d.s("gate"))],
        ))
        .unwrap();
    let queued = master
        .submit_task(spec(&marker, json!(0), &[("MARK", d.s("ran"))]))
        .unwrap();
    let pids: Vec<i32> = wait_started(&started)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    // One slot: the second task waits in the queue.
    assert_eq!(master.task_state(queued), Some(TaskState::Queued));

    master.cancel(queued).unwrap();
    assert_eq!(master.task_state(queued), Some(TaskState::Cancelled));
    assert!(matches!(
        master.get_result::<Value>(Some(queued)),
        Err(MwError::Cancelled(t)) if t == queued
    ));

    master.cancel(running).unwrap();
    let err = master.get_result::<Value>(Some(running)).unwrap_err();
    assert!(
        matches!(err, MwError::Cancelled(t) if t == running),
        "{err:?}"
    );
    assert!(err.to_string().contains("task 0 was cancelled"));
    for pid in pids {
        assert!(exited(pid), "process {pid} of the cancelled task survived");
    }
    master.wait_all();
    assert!(!d.path("ran").exists(), "the cancelled queued task ran");
    let s = master.status();
    assert_eq!(
        (s.cancelled, s.done, s.failed, s.running, s.queued),
        (2, 0, 0, 0, 0)
    );
    // Cancelling a finished task does nothing; an unknown one is an error.
    master.cancel(running).unwrap();
    assert_eq!(master.task_state(running), Some(TaskState::Cancelled));
    assert!(matches!(
        master.cancel(TaskId(42)),
        Err(MwError::UnknownTask(TaskId(42)))
    ));
}

#[test]
fn cancel_all_stops_everything() {
    let d = Dir::new();
    let p = d.program("forever.sh", "exec sleep 1000");
    let master = Master::new(Multicore::new(2)).unwrap();
    let ids: Vec<TaskId> = (0..5)
        .map(|i| master.submit_task(spec(&p, json!(i), &[])).unwrap())
        .collect();
    master.cancel_all();
    master.wait_all();
    for id in ids {
        assert!(matches!(
            master.get_result::<Value>(Some(id)),
            Err(MwError::Cancelled(t)) if t == id
        ));
    }
    assert_eq!(master.status().cancelled, 5);
}

#[test]
fn status_counts_follow_the_tasks() {
    let d = Dir::new();
    let started = d.fifo("started");
    let gate = d.fifo("gate");
    let gated = d.program("gated.sh", GATED);
    let ok = d.program("ok.sh", "echo 1");
    let bad = d.program("bad.sh", "exit 1");
    let master = Master::new(Multicore::new(1)).unwrap();
    let env = [("STARTED", d.s("started")), ("GATE", d.s("gate"))];
    master.submit_task(spec(&gated, json!(0), &env)).unwrap();
    master.submit_task(spec(&ok, json!(0), &[])).unwrap();
    master.submit_task(spec(&bad, json!(0), &[])).unwrap();
    let doomed = master.submit_task(spec(&ok, json!(0), &[])).unwrap();
    wait_started(&started);
    master.cancel(doomed).unwrap();
    let s = master.status();
    assert_eq!(
        (
            s.running,
            s.queued,
            s.done,
            s.failed,
            s.cancelled,
            s.uncollected
        ),
        (1, 2, 0, 0, 1, 1)
    );
    assert_eq!(s.total(), 4);
    assert_eq!(s.interface, "multicore");
    assert_eq!(s.interface_status["slots"], "1");
    assert_eq!(s.interface_status["busy"], "1");

    release(&gate);
    master.wait_all();
    let s = master.status();
    assert_eq!(
        (
            s.running,
            s.queued,
            s.done,
            s.failed,
            s.cancelled,
            s.uncollected
        ),
        (0, 0, 2, 1, 1, 4)
    );
    assert_eq!(s.interface_status["busy"], "0");
    assert_eq!(s.interface_status["started"], "3");
    let _ = master.get_result::<Value>(None);
    assert_eq!(master.status().uncollected, 3);
}

#[test]
fn two_masters_at_once_keep_their_results_apart() {
    let d = Dir::new();
    let p1 = d.program("one.sh", r#"printf '{"master":1,"input":%s}' "$(cat)""#);
    let p2 = d.program("two.sh", r#"printf '{"master":2,"input":%s}' "$(cat)""#);
    let m1 = Master::new(Multicore::new(1)).unwrap();
    let m2 = Master::new(Multicore::new(1)).unwrap();
    let ids1: Vec<TaskId> = (0..4)
        .map(|i| m1.submit_task(spec(&p1, json!(i), &[])).unwrap())
        .collect();
    let ids2: Vec<TaskId> = (0..6)
        .map(|i| m2.submit_task(spec(&p2, json!(100 + i), &[])).unwrap())
        .collect();
    // Both masters number their tasks from 0.
    assert_eq!(ids1[0], ids2[0]);
    let h = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..6 {
            let (t, v): (TaskId, Value) = m2.get_result(None).unwrap();
            got.push((t, v));
        }
        assert!(matches!(
            m2.get_result::<Value>(None),
            Err(MwError::NothingPending)
        ));
        got
    });
    for _ in 0..4 {
        let (t, v): (TaskId, Value) = m1.get_result(None).unwrap();
        assert_eq!(v, json!({"master": 1, "input": t.0}));
    }
    assert!(matches!(
        m1.get_result::<Value>(None),
        Err(MwError::NothingPending)
    ));
    let got = h.join().unwrap();
    assert_eq!(got.len(), 6);
    for (t, v) in got {
        assert_eq!(v, json!({"master": 2, "input": 100 + t.0}));
    }
}

#[test]
fn time_accounting_is_filled_in() {
    let d = Dir::new();
    let p = d.program(
        "work.sh",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i",
    );
    let master = Master::new(Multicore::new(1)).unwrap();
    let t = master.submit_task(spec(&p, json!(0), &[])).unwrap();
    let out = master.get_output(Some(t)).unwrap();
    assert_eq!(out.task, t);
    assert_eq!(out.value, json!(20000));
    let times = &out.times;
    let submitted = times.submitted.unwrap();
    let started = times.started.unwrap();
    let finished = times.finished.unwrap();
    assert!(submitted <= started, "{times:?}");
    assert!(started <= finished, "{times:?}");
    assert!(times.wall > Duration::ZERO);
    assert!(times.cpu > Duration::ZERO);
    assert!(!out.host.is_empty());
    assert_eq!(out.attempts, 1);
}

#[test]
fn dropping_a_master_stops_its_running_tasks() {
    let d = Dir::new();
    let started = d.fifo("started");
    let _gate = d.fifo("gate");
    let p = d.program("gated.sh", GATED);
    let master = Master::new(Multicore::new(1)).unwrap();
    master
        .submit_task(spec(
            &p,
            json!(0),
            &[("STARTED", d.s("started")), ("GATE", d.s("gate"))],
        ))
        .unwrap();
    let pid: i32 = wait_started(&started).trim().parse().unwrap();
    drop(master);
    assert!(exited(pid), "task {pid} outlived its master");
}
