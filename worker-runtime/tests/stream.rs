//! The stream contract against real processes (a Python streaming program): crashes, hangs,
//! malformed lines, too few lines and error answers fail only their own task, every other
//! task is answered exactly once with its own result.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::ExitInfo;
use mw_worker_runtime::stream::{StreamInput, StreamProgram, StreamRunner};
use serde_json::{json, Value};
use std::time::Duration;

const PROG: &str = r#"
import json, sys, time
for line in sys.stdin:
    x = json.loads(line)
    sys.stderr.write("working on %s\n" % line.strip())
    sys.stderr.flush()
    if "crash" in x:
        sys.stderr.write("boom\n"); sys.stderr.flush()
        sys.exit(3)
    if "hang" in x:
        time.sleep(3600)
    if "malformed" in x:
        print("this is not json", flush=True)
        continue
    if "few" in x:
        sys.exit(0)
    if "fail" in x:
        print(json.dumps({"error": x["fail"]}), flush=True)
        continue
    if "signal" in x:
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    if "close" in x:
        import os
        os.close(1)
        time.sleep(3600)
    print(json.dumps({"y": 2 * x["n"]}), flush=True)
"#;

fn runner(dir: &tempfile::TempDir) -> StreamRunner {
    let script = dir.path().join("prog.py");
    std::fs::write(&script, PROG).unwrap();
    let mut p = StreamProgram::new("python3".into(), dir.path().to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(200);
    StreamRunner::new(p)
}

fn input(v: Value) -> StreamInput {
    let mut i = StreamInput::new(&v);
    i.timeout = Some(Duration::from_secs(60));
    i
}

fn answer(o: &mw_worker_runtime::stream::StreamOutcome) -> Value {
    assert!(o.exit.success(), "expected success, got {:?}", o);
    serde_json::from_slice(&o.result).unwrap()
}

#[test]
fn good_inputs_answered_in_order_by_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(&dir);
    let out = r.run_all((0..500).map(|n| input(json!({ "n": n }))).collect());
    assert_eq!(out.len(), 500);
    for (n, o) in out.iter().enumerate() {
        assert_eq!(answer(o), json!({ "y": 2 * n }));
    }
    // stderr is attributed to the task current when it is read; none of it is lost.
    let all: String = out.iter().map(|o| o.stderr_tail.as_str()).collect();
    for n in 0..500 {
        assert!(
            all.contains(&format!("working on {{\"n\": {n}}}"))
                || all.contains(&format!("working on {{\"n\":{n}}}")),
            "stderr of input {n} lost"
        );
    }
    assert_eq!(r.starts(), 1, "one process for all inputs");
    // The process stays up between calls.
    let out = r.run_all(vec![input(json!({"n": 7}))]);
    assert_eq!(answer(&out[0]), json!({"y": 14}));
    assert_eq!(r.starts(), 1);
}

/// Runs `bad` between good inputs; checks that only `bad` fails (with `check`) and that
/// every good input gets its own answer.
fn only_the_bad_one_fails(
    bad: StreamInput,
    check: impl Fn(&mw_worker_runtime::stream::StreamOutcome),
) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(&dir);
    let mut inputs: Vec<StreamInput> = (0..20).map(|n| input(json!({ "n": n }))).collect();
    inputs.insert(10, bad);
    let out = r.run_all(inputs);
    assert_eq!(out.len(), 21);
    for (i, o) in out.iter().enumerate() {
        if i == 10 {
            assert!(!o.exit.success(), "the bad input must fail: {o:?}");
            check(o);
        } else {
            let n = if i < 10 { i } else { i - 1 };
            assert_eq!(answer(o), json!({ "y": 2 * n }), "input {i}");
        }
    }
    assert_eq!(r.starts(), 2, "restarted once after the bad input");
}

#[test]
fn crash_fails_only_its_task_with_stderr_tail() {
    only_the_bad_one_fails(input(json!({"crash": 1})), |o| {
        assert_eq!(o.exit, ExitInfo::Exited { code: 3 });
        assert!(o.stderr_tail.contains("boom"), "{:?}", o.stderr_tail);
    });
}

/// A program that closes its stdout and keeps running fails the current task as having
/// closed stdout (it was once reported as killed by the signal that stopped it).
#[test]
fn closed_stdout_fails_only_its_task_saying_so() {
    only_the_bad_one_fails(input(json!({"close": 1})), |o| {
        assert!(
            matches!(&o.exit, ExitInfo::StreamBroken { reason } if reason.contains("closed its stdout")),
            "{:?}",
            o.exit
        );
    });
}

#[test]
fn killed_by_signal_fails_only_its_task() {
    only_the_bad_one_fails(input(json!({"signal": 1})), |o| {
        assert_eq!(o.exit, ExitInfo::Signaled { signal: 9 });
    });
}

#[test]
fn hang_times_out_only_its_task() {
    let mut bad = StreamInput::new(&json!({"hang": 1}));
    bad.timeout = Some(Duration::from_millis(500));
    only_the_bad_one_fails(bad, |o| {
        assert!(matches!(o.exit, ExitInfo::TimedOut { .. }), "{o:?}");
    });
}

#[test]
fn malformed_line_fails_only_its_task() {
    only_the_bad_one_fails(input(json!({"malformed": 1})), |o| {
        let ExitInfo::StreamBroken { reason } = &o.exit else {
            panic!("{o:?}")
        };
        assert!(reason.contains("not JSON"), "{reason}");
    });
}

#[test]
fn too_few_lines_fails_only_the_unanswered_task() {
    only_the_bad_one_fails(input(json!({"few": 1})), |o| {
        let ExitInfo::StreamBroken { reason } = &o.exit else {
            panic!("{o:?}")
        };
        assert!(reason.contains("without answering"), "{reason}");
    });
}

#[test]
fn error_answer_fails_its_task_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(&dir);
    let out = r.run_all(vec![
        input(json!({"n": 1})),
        input(json!({"fail": "bad parameter"})),
        input(json!({"fail": {"code": 7}})),
        input(json!({"n": 2})),
    ]);
    assert_eq!(answer(&out[0]), json!({"y": 2}));
    assert_eq!(
        out[1].exit,
        ExitInfo::ErrorReported {
            error: "bad parameter".into()
        }
    );
    assert_eq!(
        out[2].exit,
        ExitInfo::ErrorReported {
            error: r#"{"code":7}"#.into()
        }
    );
    assert_eq!(answer(&out[3]), json!({"y": 4}));
    assert_eq!(r.starts(), 1);
}

#[test]
fn overlong_line_fails_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("long.py");
    std::fs::write(
        &script,
        "import sys, json\nfor line in sys.stdin:\n    n = json.loads(line)\n    print(json.dumps('x' * n), flush=True)\n",
    )
    .unwrap();
    let mut p = StreamProgram::new("python3".into(), dir.path().to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(200);
    p.max_line_bytes = 1000;
    let mut r = StreamRunner::new(p);
    let out = r.run_all(vec![
        input(json!(10)),
        input(json!(100_000)),
        input(json!(20)),
    ]);
    assert_eq!(answer(&out[0]), json!("x".repeat(10)));
    assert!(
        matches!(&out[1].exit, ExitInfo::StreamBroken { reason } if reason.contains("longer")),
        "{:?}",
        out[1]
    );
    assert_eq!(answer(&out[2]), json!("x".repeat(20)));
}

#[test]
fn cancel_before_and_during() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(&dir);
    let early = input(json!({"n": 1}));
    early.control.cancel();
    let hang = input(json!({"hang": 1}));
    let control = hang.control.clone();
    let mut inputs = vec![early, hang, input(json!({"n": 3}))];
    let mut reported = Vec::new();
    let mut source = inputs.drain(..).enumerate();
    r.serve(
        || source.next().map(|(i, x)| (x, i)),
        |i, o| {
            // Once the hanging task is current (input 0 was reported), cancel it.
            if i == 0 {
                control.cancel();
            }
            reported.push((i, o));
        },
    );
    assert_eq!(reported.len(), 3);
    assert_eq!(reported[0].1.exit, ExitInfo::Cancelled);
    assert_eq!(reported[1].1.exit, ExitInfo::Cancelled);
    assert_eq!(answer(&reported[2].1), json!({"y": 6}));
}

#[test]
fn missing_program_fails_each_task() {
    let dir = tempfile::tempdir().unwrap();
    let p = StreamProgram::new(dir.path().join("no-such-program"), dir.path().to_path_buf());
    let mut r = StreamRunner::new(p);
    let out = r.run_all(vec![input(json!(1)), input(json!(2))]);
    assert!(out
        .iter()
        .all(|o| matches!(o.exit, ExitInfo::SpawnFailed { .. })));
}

/// True once `pid` is gone (bounded wait of 30 s through a pidfd).
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

/// A streaming program that echoes each line, except one with `{"daemon": …}`: on that it
/// starts a daemon with `setsid` (its pid in `daemon.pid`), then runs `then`.
fn daemon_program(dir: &std::path::Path, then: &str) -> StreamRunner {
    let script = dir.join("daemon.sh");
    std::fs::write(
        &script,
        format!(
            r#"while read line; do
  case "$line" in
    *daemon*)
      setsid sh -c 'echo $$ > daemon.pid; exec sleep 1000' < /dev/null > /dev/null 2>&1 &
      while [ ! -s daemon.pid ]; do :; done
      {then};;
    *) echo "$line";;
  esac
done"#
        ),
    )
    .unwrap();
    let mut p = StreamProgram::new("/bin/sh".into(), dir.to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(100);
    StreamRunner::new(p)
}

/// Runs `{"n": 1}`, `daemon` and `{"n": 2}` through `r`: the two others are answered; the
/// daemon's task's outcome and the daemon's pid are returned.
fn around_the_daemon(
    r: &mut StreamRunner,
    dir: &std::path::Path,
    daemon: StreamInput,
) -> (mw_worker_runtime::stream::StreamOutcome, i32) {
    let mut out = r.run_all(vec![input(json!({"n": 1})), daemon, input(json!({"n": 2}))]);
    assert_eq!(answer(&out[0]), json!({"n": 1}));
    assert_eq!(answer(&out[2]), json!({"n": 2}));
    let pid = std::fs::read_to_string(dir.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (out.swap_remove(1), pid)
}

#[test]
fn timeout_kills_what_the_program_started_with_setsid() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = daemon_program(dir.path(), "sleep 1000");
    let mut bad = StreamInput::new(&json!({"daemon": 1}));
    bad.timeout = Some(Duration::from_secs(2));
    let (out, pid) = around_the_daemon(&mut r, dir.path(), bad);
    assert!(matches!(out.exit, ExitInfo::TimedOut { .. }), "{out:?}");
    assert!(exited(pid), "the setsid daemon {pid} outlived the timeout");
}

/// A streaming program that exits on its own (its task fails, a fresh process takes the
/// next) leaves no daemon behind: one it started with `setsid` carries its token and is
/// killed once the process is gone. It once ran on until the worker or the master ended.
#[test]
fn a_crashed_programs_setsid_daemon_does_not_outlive_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = daemon_program(dir.path(), "exit 3");
    let (out, pid) = around_the_daemon(&mut r, dir.path(), input(json!({"daemon": 1})));
    assert_eq!(out.exit, ExitInfo::Exited { code: 3 }, "{out:?}");
    assert!(exited(pid), "the setsid daemon {pid} outlived its program");
}

/// A program for the idle cases: its pid in `pid`; `{"late": DIR}` answers, then once
/// `DIR/go` exists prints a forged line and creates `DIR/printed`; `{"idle_exit": DIR}`
/// answers, then exits (status 0) once `DIR/go` exists.
const IDLE_PROG: &str = r#"
import json, os, sys, threading, time
open("pid", "w").write(str(os.getpid()))
def when_go(d, then):
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.001)
    then()
def forge(d):
    print(json.dumps({"forged": True}), flush=True)
    open(os.path.join(d, "printed"), "w").close()
for line in sys.stdin:
    x = json.loads(line)
    if "late" in x:
        print(json.dumps({"ok": "late"}), flush=True)
        threading.Thread(target=when_go, args=(x["late"], lambda: forge(x["late"])), daemon=True).start()
    elif "idle_exit" in x:
        print(json.dumps({"ok": "idle_exit"}), flush=True)
        threading.Thread(target=when_go, args=(x["idle_exit"], lambda: os._exit(0)), daemon=True).start()
    else:
        print(json.dumps({"y": 2 * x["n"]}), flush=True)
"#;

fn idle_runner(dir: &tempfile::TempDir) -> StreamRunner {
    let script = dir.path().join("idle.py");
    std::fs::write(&script, IDLE_PROG).unwrap();
    let mut p = StreamProgram::new("python3".into(), dir.path().to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(200);
    StreamRunner::new(p)
}

#[test]
fn line_printed_while_idle_is_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut r = idle_runner(&dir);
    let out = r.run_all(vec![input(json!({ "late": d }))]);
    assert_eq!(answer(&out[0]), json!({"ok": "late"}));
    // Between calls the kept program prints a line nobody asked for.
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let printed = dir.path().join("printed");
    for _ in 0..30_000 {
        if printed.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(printed.exists(), "the program never printed its late line");
    let out = r.run_all(vec![input(json!({"n": 1})), input(json!({"n": 2}))]);
    assert_eq!(
        answer(&out[0]),
        json!({"y": 2}),
        "the late line was taken as an answer"
    );
    assert_eq!(answer(&out[1]), json!({"y": 4}));
    assert_eq!(r.starts(), 2, "a fresh process after the late line");
}

#[test]
fn program_that_exited_while_idle_fails_no_task() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut r = idle_runner(&dir);
    let out = r.run_all(vec![input(json!({ "idle_exit": d }))]);
    assert_eq!(answer(&out[0]), json!({"ok": "idle_exit"}));
    let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(dir.path().join("go"), b"").unwrap();
    assert!(exited(pid), "the program did not exit while idle");
    let out = r.run_all(vec![input(json!({"n": 3}))]);
    assert_eq!(answer(&out[0]), json!({"y": 6}));
    assert_eq!(r.starts(), 2);
}

#[test]
fn dense_answer_is_refused_by_value_count_without_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("dense.py");
    std::fs::write(
        &script,
        "import sys, json\nfor line in sys.stdin:\n    n = json.loads(line)\n    print(json.dumps([0] * n, separators=(',', ':')), flush=True)\n",
    )
    .unwrap();
    let mut p = StreamProgram::new("python3".into(), dir.path().to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(200);
    // 10,000 values in 20 KB: within the bytes, over the values the limit allows (4,096).
    p.max_line_bytes = 30_000;
    let mut r = StreamRunner::new(p);
    let out = r.run_all(vec![input(json!(3)), input(json!(10_000)), input(json!(2))]);
    assert_eq!(answer(&out[0]), json!([0, 0, 0]));
    assert!(
        matches!(&out[1].exit, ExitInfo::StreamBroken { reason } if reason.contains("JSON values")),
        "{:?}",
        out[1].exit
    );
    assert_eq!(answer(&out[2]), json!([0, 0]));
}

#[test]
fn only_a_lone_error_key_is_an_error_answer() {
    use mw_worker_runtime::stream::classify_line;
    let err = |e: &str| Err(ExitInfo::ErrorReported { error: e.into() });
    assert_eq!(classify_line(br#"{"error": "no"}"#, 1000), err("no"));
    assert_eq!(classify_line(br#" {"error":[1, 2]}"#, 1000), err("[1,2]"));
    assert_eq!(classify_line(br#"{"error":null}"#, 1000), err("null"));
    // A repeated key is one key, the last value winning (what the master would parse).
    assert_eq!(
        classify_line(br#"{"error":"a","error":"b"}"#, 1000),
        err("b")
    );
    assert_eq!(classify_line(br#"{"error":"a","error":2}"#, 1000), err("2"));
    for result in [
        &br#"{"error":"no","more":1}"#[..],
        br#"{"more":1,"error":"no"}"#,
        br#"{"error":"no","more":1,"error":"no"}"#,
        br#"{}"#,
        br#"["error"]"#,
        br#""error""#,
    ] {
        assert_eq!(classify_line(result, 1000), Ok(result));
    }
    for broken in [&b""[..], b"  ", b"{", b"{\"error\":}", b"1 2"] {
        assert!(
            matches!(
                classify_line(broken, 1000),
                Err(ExitInfo::StreamBroken { .. })
            ),
            "{broken:?}"
        );
    }
}

/// A program slower to start than one task's timeout (a model to load, a large import): its
/// first answer gets a start-up allowance on top, so its tasks succeed instead of each one
/// timing out and restarting the program for the next. Once it has answered, the timeout
/// alone holds again: a task that hangs then times out after its own limit.
#[test]
fn a_slow_start_is_not_counted_against_the_first_task() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slow.sh");
    std::fs::write(
        &script,
        "sleep 1.5\nwhile read line; do case \"$line\" in *hang*) sleep 1000;; *) echo \"$line\";; esac; done\n",
    )
    .unwrap();
    let mut p = StreamProgram::new("/bin/sh".into(), dir.path().to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(100);
    let mut r = StreamRunner::new(p);
    let timed = |v: Value| {
        let mut i = input(v);
        i.timeout = Some(Duration::from_millis(500));
        i
    };
    // The second task's limit is generous: it tests only that the start-up allowance is
    // not needed again (a loaded machine may hold an answer back for a while).
    let mut second = timed(json!({"n": 2}));
    second.timeout = Some(Duration::from_secs(10));
    let out = r.run_all(vec![
        timed(json!({"n": 1})),
        second,
        timed(json!({"hang": 1})),
    ]);
    assert_eq!(answer(&out[0]), json!({"n": 1}), "{:?}", out[0]);
    assert_eq!(answer(&out[1]), json!({"n": 2}), "{:?}", out[1]);
    assert!(
        matches!(out[2].exit, ExitInfo::TimedOut { limit_secs } if limit_secs == 0.5),
        "{:?}",
        out[2]
    );
    assert_eq!(r.starts(), 1);
}
