//! Stream mode through a journaled `Master` over the real `Multicore` interface (2 slots, one
//! long-lived Python program each): a crash, a hang (timeout), a malformed line and too few
//! lines each fail only their own task; every other task is reported exactly once with its
//! own result, and the journal agrees.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw::{
    ExitInfo, Master, MasterOptions, Multicore, MwError, NextOutcome, Program, ProgramMode,
    TaskOutput, TaskSpec,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROG: &str = r#"
import json, sys, time
for line in sys.stdin:
    x = json.loads(line)
    k = x.get("kind")
    if k == "crash":
        sys.stderr.write("crashing on purpose\n"); sys.stderr.flush(); sys.exit(5)
    if k == "hang":
        time.sleep(3600)
    if k == "malformed":
        print("{not json", flush=True); continue
    if k == "few":
        sys.exit(0)
    if k == "error":
        print(json.dumps({"error": "refused"}), flush=True); continue
    print(json.dumps({"double": 2 * x["n"]}), flush=True)
"#;

fn python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("python3")
}

/// Every outcome by task index, each reported once, all within `limit` (a guard against a
/// hang, not a measure).
fn every_outcome(master: &Master, limit: Duration) -> BTreeMap<u64, Result<TaskOutput, MwError>> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + limit;
    loop {
        assert!(
            Instant::now() < deadline,
            "not every task finished within {limit:?}: {} did",
            seen.len()
        );
        match master.next_outcome(Duration::from_secs(1)) {
            NextOutcome::Finished(id, outcome, _) => {
                assert!(seen.insert(id.0, outcome).is_none(), "{id} reported twice");
            }
            NextOutcome::Pending => {}
            NextOutcome::AllCollected => return seen,
            NextOutcome::Stopped(e) => panic!("stopped: {e}"),
        }
    }
}

#[test]
fn every_task_reported_once_with_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("prog.py");
    std::fs::write(&script, PROG).unwrap();
    let program = Arc::new(
        Program::new(python())
            .unwrap()
            .with_base_args([script.display().to_string()])
            .with_mode(ProgramMode::Stream),
    );
    let master = Master::with_journal(
        Arc::new(Multicore::new(2)),
        MasterOptions::default(),
        &dir.path().join("job"),
    )
    .unwrap();
    let bad: BTreeMap<u64, &str> = [
        (50, "crash"),
        (120, "hang"),
        (200, "malformed"),
        (260, "few"),
        (300, "error"),
    ]
    .into_iter()
    .collect();
    let specs: Vec<TaskSpec> = (0..400u64)
        .map(|n| {
            let input = match bad.get(&n) {
                Some(k) => json!({"kind": k, "n": n}),
                None => json!({"n": n}),
            };
            let mut s = TaskSpec::new(program.clone(), input);
            s.timeout = Some(if bad.get(&n) == Some(&"hang") {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(120)
            });
            s
        })
        .collect();
    let ids = master.submit_many(specs).unwrap();
    let seen = every_outcome(&master, Duration::from_secs(120));
    assert_eq!(seen.len(), ids.len());
    for (n, outcome) in &seen {
        match (bad.get(n), outcome) {
            (None, Ok(out)) => assert_eq!(out.value, json!({"double": 2 * n})),
            (
                Some(&"crash"),
                Err(MwError::TaskFailed {
                    exit, stderr_tail, ..
                }),
            ) => {
                assert_eq!(*exit, ExitInfo::Exited { code: 5 });
                assert!(stderr_tail.contains("crashing on purpose"), "{stderr_tail}");
            }
            (Some(&"hang"), Err(MwError::TaskFailed { exit, .. })) => {
                assert!(matches!(exit, ExitInfo::TimedOut { .. }), "{exit:?}")
            }
            (Some(&"malformed"), Err(MwError::TaskFailed { exit, .. })) => {
                assert!(
                    matches!(exit, ExitInfo::StreamBroken { reason } if reason.contains("not JSON")),
                    "{exit:?}"
                )
            }
            (Some(&"few"), Err(MwError::TaskFailed { exit, .. })) => {
                assert!(
                    matches!(exit, ExitInfo::StreamBroken { reason } if reason.contains("without answering")),
                    "{exit:?}"
                )
            }
            (Some(&"error"), Err(MwError::TaskFailed { exit, .. })) => {
                assert_eq!(
                    *exit,
                    ExitInfo::ErrorReported {
                        error: "refused".into()
                    }
                )
            }
            (k, o) => panic!("task {n} ({k:?}): unexpected outcome {o:?}"),
        }
    }
    let st = master.status();
    assert_eq!((st.done, st.failed), (395, 5));
}

#[test]
fn stream_tasks_with_output_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let program = Arc::new(
        Program::new("/bin/cat")
            .unwrap()
            .with_mode(ProgramMode::Stream),
    );
    let master = Master::new(Multicore::new(1)).unwrap();
    let mut s = TaskSpec::new(program.clone(), json!(1));
    s.outputs = vec!["out.txt".into()];
    let bad = master.submit_task(s).unwrap();
    let good = master
        .submit_task(TaskSpec::new(program, json!({"a": 1})))
        .unwrap();
    let e = master.get_output(Some(bad)).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot have input files or declared outputs"),
        "{e}"
    );
    assert_eq!(
        master.get_output(Some(good)).unwrap().value,
        json!({"a": 1})
    );
    drop(dir);
}

#[test]
fn answer_over_max_output_fails_only_its_task_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("endless.py");
    std::fs::write(
        &script,
        r#"import json, sys
for line in sys.stdin:
    x = json.loads(line)
    if x.get("endless"):
        sys.stdout.write('"')
        while True:
            sys.stdout.write("x" * 65536); sys.stdout.flush()
    print(json.dumps({"double": 2 * x["n"]}), flush=True)
"#,
    )
    .unwrap();
    let program = Arc::new(
        Program::new(python())
            .unwrap()
            .with_base_args([script.display().to_string()])
            .with_mode(ProgramMode::Stream),
    );
    let master = Master::new(Multicore::new(1)).unwrap();
    let mut long = TaskSpec::new(program.clone(), json!({"endless": true}));
    long.max_output_bytes = 1000;
    let long = master.submit_task(long).unwrap();
    let next = master
        .submit_task(TaskSpec::new(program, json!({"n": 21})))
        .unwrap();
    let e = master.get_output(Some(long)).unwrap_err();
    assert!(
        e.to_string()
            .contains("longer than the limit of 1000 bytes"),
        "{e}"
    );
    assert_eq!(
        master.get_output(Some(next)).unwrap().value,
        json!({"double": 42})
    );
}

/// A Python streaming program, in `dir`, that counts its starts: it appends its key (its
/// last argument) to a log, then answers each input line `x` with `answer`, a Python
/// expression over `x` and `key`.
struct Counted {
    script: std::path::PathBuf,
    starts: std::path::PathBuf,
}

impl Counted {
    fn new(dir: &std::path::Path, answer: &str) -> Counted {
        let (script, starts) = (dir.join("counted.py"), dir.join("starts"));
        std::fs::write(
            &script,
            format!(
                "import json, sys\nwith open(sys.argv[1], \"a\") as f:\n    f.write(sys.argv[-1] + \"\\n\")\n\
                 key = sys.argv[-1]\nfor line in sys.stdin:\n    x = json.loads(line)\n    \
                 print(json.dumps({answer}), flush=True)\n"
            ),
        )
        .unwrap();
        Counted { script, starts }
    }

    /// The program, with `extra` base arguments after the log's path.
    fn program(&self, extra: &[&str]) -> Program {
        let mut args = vec![
            self.script.display().to_string(),
            self.starts.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Program::new(python())
            .unwrap()
            .with_base_args(args)
            .with_mode(ProgramMode::Stream)
    }

    /// How many times it started.
    fn starts(&self) -> usize {
        std::fs::read_to_string(&self.starts)
            .unwrap()
            .lines()
            .count()
    }
}

/// Tasks of three program keys (their argument selects the process), interleaved, on 2
/// slots: a slot serves its tasks key by key, so the streaming program starts a few times,
/// not once per task (600 such tasks once started 597 processes).
#[test]
fn interleaved_program_keys_start_a_process_per_run_not_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let counted = Counted::new(dir.path(), r#"{"key": key, "n": x["n"]}"#);
    let program = Arc::new(counted.program(&[]));
    let master = Master::with_journal(
        Arc::new(Multicore::new(2)),
        MasterOptions::default(),
        &dir.path().join("job"),
    )
    .unwrap();
    const TASKS: u64 = 600;
    let key = |n: u64| format!("k{}", n % 3);
    let specs: Vec<TaskSpec> = (0..TASKS)
        .map(|n| {
            let mut s = TaskSpec::new(program.clone(), json!({"n": n}));
            s.args = vec![key(n)];
            s
        })
        .collect();
    master.submit_many(specs).unwrap();
    // A guard against a hang, not a measure: the tasks take well under a second.
    let seen = every_outcome(&master, Duration::from_secs(300));
    assert_eq!(seen.len() as u64, TASKS);
    for (n, outcome) in &seen {
        let out = outcome.as_ref().unwrap_or_else(|e| panic!("task {n}: {e}"));
        assert_eq!(out.value, json!({"key": key(*n), "n": n}), "task {n}");
    }
    assert_eq!(master.status().done as u64, TASKS);
    let started = counted.starts();
    assert!(
        started <= 18,
        "{started} streaming programs started for {TASKS} tasks of 3 keys on 2 slots"
    );
}

/// A streaming process serves the tasks of the program it runs, and only those: programs
/// are told apart by what they run, not by where they sit in memory. Two programs
/// alternated on one slot, each given as a `&Program` (a fresh copy per task, freed after
/// it, whose address the next copy often takes) each answer their own tasks; and copies of
/// one program share its process.
#[test]
fn a_streaming_process_serves_its_own_program_not_one_at_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let counted = Counted::new(dir.path(), "key");
    let (a, b) = (counted.program(&["A"]), counted.program(&["B"]));
    let master = Master::new(Multicore::new(1)).unwrap();
    // One task at a time, collected before the next: each copy is freed before the next.
    for i in 0..20u32 {
        for (p, name) in [(&a, "A"), (&a, "A"), (&b, "B")] {
            let t = master.submit(p, &i).unwrap();
            let (_, got): (_, String) = master.get_result(Some(t)).unwrap();
            assert_eq!(
                got, name,
                "round {i}: program {name}'s task answered by {got}"
            );
        }
    }
    // A then B in every round: 40 starts, not 60 (the two copies of A share a process).
    assert_eq!(counted.starts(), 40, "streaming programs started");
}

/// A task cancelled while it waits in a slot for its program key's turn (the slot serving
/// another key, whose task hangs) is reported cancelled, once; the other key's next task,
/// taken out of turn, still gets its result.
#[test]
fn a_task_cancelled_while_its_key_waits_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("prog.py");
    std::fs::write(&script, PROG).unwrap();
    let program = Arc::new(
        Program::new(python())
            .unwrap()
            .with_base_args([script.display().to_string()])
            .with_mode(ProgramMode::Stream),
    );
    let master = Master::new(Multicore::new(1)).unwrap();
    let spec = |input: serde_json::Value, key: &str| {
        let mut s = TaskSpec::new(program.clone(), input);
        s.args = vec![key.to_string()];
        s
    };
    let hang = master
        .submit_task(spec(json!({"kind": "hang", "n": 0}), "a"))
        .unwrap();
    let other = master.submit_task(spec(json!({"n": 1}), "b")).unwrap();
    let same = master.submit_task(spec(json!({"n": 2}), "a")).unwrap();
    master.cancel(other).unwrap();
    master.cancel(hang).unwrap();
    for id in [other, hang] {
        let e = master.get_output(Some(id)).unwrap_err();
        assert!(matches!(e, MwError::Cancelled(t) if t == id), "{id}: {e}");
    }
    assert_eq!(
        master.get_output(Some(same)).unwrap().value,
        json!({"double": 4})
    );
    let st = master.status();
    assert_eq!((st.done, st.cancelled), (1, 2));
}
