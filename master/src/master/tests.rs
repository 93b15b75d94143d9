//! Guards on the master's memory per task (no timing): the compact record stays a few bytes,
//! specs built by a [`SpecSource`] see the right input (from memory or read back from the
//! journal), and nothing of a task stays in its live part once its outcome is collected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use super::*;
use crate::task::{Execution, InterfaceError, PreparedTask, Program, WorkerId};
use crate::Completion;
use mw_bundle::ExitInfo;

/// Runs every task at once on the calling thread: its stdout is its input.
struct Echo;

impl Interface for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        Ok(WorkerId(0))
    }
    fn execute_task(&self, task: Arc<PreparedTask>, _worker: WorkerId, done: Completion) {
        done.finish(Ok(Execution {
            exit: ExitInfo::Exited { code: 0 },
            stdout: serde_json::to_vec(&task.spec.input).unwrap(),
            stderr_tail: String::new(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            host: "here".into(),
            started: None,
            output_files: Vec::new(),
            missing_outputs: Vec::new(),
        }));
    }
    fn status(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn cancel(&self, _task: TaskId) {}
}

fn source() -> Arc<dyn SpecSource> {
    let program = Arc::new(Program::new("/bin/sh").unwrap());
    Arc::new(move |index: u64, input: serde_json::Value| {
        if input["i"] != index {
            return Err(format!("task {index} got input {input}"));
        }
        Ok(TaskSpec::new(program.clone(), input))
    })
}

fn inputs(range: std::ops::Range<u64>) -> Vec<serde_json::Value> {
    range.map(|i| serde_json::json!({ "i": i })).collect()
}

/// Collects every outcome, checking each result is its task's input.
fn collect_all(master: &Master, n: u64) {
    let mut seen = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "only {seen} of {n} results came"
        );
        match master.next_outcome(Duration::from_secs(1)) {
            NextOutcome::Finished(id, Ok(out), _) => {
                assert_eq!(out.value["i"], id.0, "{id}: wrong result {}", out.value);
                seen += 1;
            }
            NextOutcome::Finished(id, Err(e), _) => panic!("{id} failed: {e}"),
            NextOutcome::Pending => {}
            NextOutcome::AllCollected => break,
            NextOutcome::Stopped(e) => panic!("stopped: {e}"),
        }
    }
    assert_eq!(seen, n);
}

/// What the master keeps beyond the compact records: live parts, specs, inputs.
fn live_parts(master: &Master) -> usize {
    let st = master.inner.lock();
    st.live.len() + st.specs.len() + st.inputs.len() + st.raw.len()
}

#[test]
fn a_done_result_waits_as_its_text_and_is_parsed_when_collected() {
    let master = Master::new(Echo).unwrap();
    master.submit_inputs(inputs(0..10), source()).unwrap();
    master.wait_all();
    {
        let st = master.inner.lock();
        assert_eq!(
            st.raw.len(),
            10,
            "each uncollected result is kept as its text"
        );
        for (id, text) in st.raw.iter() {
            assert_eq!(&**text, format!("{{\"i\":{id}}}"));
        }
    }
    // collect_all checks each value is its task's input, parsed from the text.
    collect_all(&master, 10);
    assert_eq!(live_parts(&master), 0);
}

#[test]
fn more_to_come_keeps_waiters_from_concluding_nothing_is_pending() {
    let master = Master::new(Echo).unwrap();
    let more = master.expect_more();
    assert!(
        matches!(
            master.next_outcome(Duration::from_millis(1)),
            NextOutcome::Pending
        ),
        "with more tasks to come, an empty master is not done"
    );
    assert!(matches!(master.try_get_output(None), Ok(None)));
    master.submit_inputs(inputs(0..3), source()).unwrap();
    drop(more);
    collect_all(&master, 3);
    assert!(matches!(
        master.next_outcome(Duration::from_millis(1)),
        NextOutcome::AllCollected
    ));
}

#[test]
fn a_task_record_is_a_few_bytes() {
    assert!(
        std::mem::size_of::<TaskRecord>() <= 8,
        "TaskRecord grew to {} bytes: it is kept for every task of a run of millions",
        std::mem::size_of::<TaskRecord>()
    );
}

#[test]
fn collected_tasks_leave_nothing_behind_in_memory() {
    let master = Master::new(Echo).unwrap();
    let n = 100_000;
    let range = master.submit_inputs(inputs(0..n), source()).unwrap();
    assert_eq!(range, 0..n);
    collect_all(&master, n);
    assert_eq!(
        live_parts(&master),
        0,
        "collected tasks kept their live part"
    );
    // Specs handed over by the caller are dropped too once collected.
    let program = Arc::new(Program::new("/bin/sh").unwrap());
    let specs = (n..n + 1000)
        .map(|i| TaskSpec::new(program.clone(), serde_json::json!({ "i": i })))
        .collect();
    master.submit_many(specs).unwrap();
    collect_all(&master, 1000);
    assert_eq!(live_parts(&master), 0);
}

#[test]
fn journaled_inputs_are_read_back_on_dispatch_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::with_journal(
        Arc::new(Echo),
        MasterOptions::default(),
        &dir.path().join("job"),
    )
    .unwrap();
    let n = 20_000;
    for first in (0..n).step_by(5_000) {
        master
            .submit_inputs(inputs(first..first + 5_000), source())
            .unwrap();
    }
    // Queued tasks of a journaled master hold nothing but their compact record (a done
    // one has its live part and its result's text).
    assert!(live_parts(&master) <= master.counts().running + 2 * master.counts().done + 2);
    collect_all(&master, n);
    assert_eq!(live_parts(&master), 0);
}

/// Without a journal, a source that makes every input from its index (a sweep) spares the
/// master keeping the inputs of queued tasks; one that does not is still given its input.
#[test]
fn a_master_without_journal_keeps_no_input_a_source_can_remake() {
    struct Sweep(Arc<dyn SpecSource>);
    impl SpecSource for Sweep {
        fn build(&self, index: u64, input: serde_json::Value) -> Result<TaskSpec, String> {
            self.0.build(index, input)
        }
        fn input(&self, index: u64) -> Option<serde_json::Value> {
            Some(serde_json::json!({ "i": index }))
        }
        fn makes_every_input(&self) -> bool {
            true
        }
    }
    // A stopped master keeps every task queued.
    let master = Master::with_options(Arc::new(Echo), MasterOptions::default()).unwrap();
    master.stop("keep every task queued");
    let n = 2_000;
    master
        .submit_inputs(inputs(0..n), Arc::new(Sweep(source())))
        .unwrap();
    assert_eq!(
        master.inner.lock().inputs.len(),
        0,
        "inputs the source remakes"
    );
    master.submit_inputs(inputs(n..2 * n), source()).unwrap();
    assert_eq!(
        master.inner.lock().inputs.len(),
        n as usize,
        "a plain source's"
    );
    // Each task is built from the input the source makes (`source` checks it).
    let master = Master::with_options(Arc::new(Echo), MasterOptions::default()).unwrap();
    master
        .submit_inputs(inputs(0..n), Arc::new(Sweep(source())))
        .unwrap();
    collect_all(&master, n);
    assert_eq!(live_parts(&master), 0);
}

/// Inputs given as JSON text: stored as they are with a journal, parsed without one; each
/// task gets its own input either way (`source` checks it).
#[test]
fn encoded_inputs_run_like_parsed_ones() {
    let texts = |range: std::ops::Range<u64>| -> Vec<Box<serde_json::value::RawValue>> {
        inputs(range)
            .iter()
            .map(|v| serde_json::value::to_raw_value(v).unwrap())
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let journaled = Master::with_journal(
        Arc::new(Echo),
        MasterOptions::default(),
        &dir.path().join("j"),
    )
    .unwrap();
    let in_memory = Master::with_options(Arc::new(Echo), MasterOptions::default()).unwrap();
    for master in [&journaled, &in_memory] {
        assert_eq!(
            master
                .submit_encoded_inputs(texts(0..300), source())
                .unwrap(),
            0..300
        );
        collect_all(master, 300);
    }
    drop(journaled);
    let path = dir.path().join("j").join(crate::journal::JOURNAL_FILE);
    let conn = crate::journal::open_checked(&path, false).unwrap();
    let tasks = crate::journal::read_tasks(&conn, &path, None).unwrap();
    assert_eq!(tasks.len(), 300);
    assert!(tasks
        .iter()
        .all(|t| t.input == serde_json::json!({ "i": t.index })));
}

#[test]
fn a_done_task_is_journaled_with_its_result_and_the_done_constants() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let master = Master::with_journal(Arc::new(Echo), MasterOptions::default(), &job).unwrap();
    master.submit_inputs(inputs(0..50), source()).unwrap();
    collect_all(&master, 50);
    drop(master);
    let path = job.join(crate::journal::JOURNAL_FILE);
    let conn = crate::journal::open_checked(&path, false).unwrap();
    let tasks = crate::journal::read_tasks(&conn, &path, None).unwrap();
    assert_eq!(tasks.len(), 50);
    for t in tasks {
        assert_eq!(t.state, TaskState::Done, "task {}", t.index);
        assert_eq!(t.output, Some(serde_json::json!({ "i": t.index })));
        assert_eq!(t.exit.as_deref(), Some("exit status 0"));
        assert_eq!(t.error, None);
        assert!(t.output_files.is_empty());
        assert_eq!(t.host, "here");
        assert_eq!(t.attempts, 1);
        assert!(t.finished.is_some());
    }
}

#[test]
fn cancelling_every_queued_task_allocates_nothing_per_task() {
    // An interface whose workers never come: every task stays queued.
    struct Never;
    impl Interface for Never {
        fn name(&self) -> &'static str {
            "never"
        }
        fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
            Err(InterfaceError::new("no worker"))
        }
        fn execute_task(&self, _t: Arc<PreparedTask>, _w: WorkerId, done: Completion) {
            done.finish(Err(InterfaceError::new("no worker")));
        }
        fn status(&self) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
        fn cancel(&self, _task: TaskId) {}
    }
    let master = Master::new(Never).unwrap();
    master.stop("keep every task queued");
    let n = 50_000;
    cancel_and_collect(&master, n);
    // Journaled: one journal message for them all, and every row says cancelled.
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let master = Master::with_journal(Arc::new(Never), MasterOptions::default(), &job).unwrap();
    master.stop("keep every task queued");
    cancel_and_collect(&master, 20_000);
    drop(master);
    let path = job.join(crate::journal::JOURNAL_FILE);
    let conn = crate::journal::open_checked(&path, false).unwrap();
    let tasks = crate::journal::read_tasks(&conn, &path, None).unwrap();
    assert_eq!(tasks.len(), 20_000);
    for t in &tasks {
        assert_eq!(t.state, TaskState::Cancelled, "task {}", t.index);
        assert_eq!(
            t.error.as_deref(),
            Some(format!("task {} was cancelled", t.index).as_str())
        );
        assert!(t.finished.is_some());
    }
}

fn cancel_and_collect(master: &Master, n: u64) {
    master.submit_inputs(inputs(0..n), source()).unwrap();
    master.cancel_all();
    assert_eq!(live_parts(master), 0);
    // Collectable once committed.
    if let Some(j) = master.journal() {
        j.flush();
    }
    assert_eq!(master.counts().uncollected, n as usize);
    let mut cancelled = 0;
    while let Ok(Some(_)) | Err(MwError::Cancelled(_)) =
        master.try_get_output(None).map(|o| o.map(|_| ()))
    {
        cancelled += 1;
        if cancelled > n {
            break;
        }
    }
    assert_eq!(cancelled, n, "every task comes back cancelled");
    assert_eq!(master.counts().uncollected, 0);
}

#[test]
fn the_live_part_of_a_task_is_small() {
    // Every running or uncollected task has one: its outcome is boxed.
    assert!(
        std::mem::size_of::<Live>() <= 96,
        "Live grew to {} bytes",
        std::mem::size_of::<Live>()
    );
}

/// [`Echo`], but panicking in `reserve_worker` for task `reserve` and in `execute_task`
/// for task `execute`.
struct PanicAt {
    reserve: u64,
    execute: u64,
}

impl Interface for PanicAt {
    fn name(&self) -> &'static str {
        "panic-at"
    }
    fn reserve_worker(&self, task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        if task.id.0 == self.reserve {
            panic!("reserve blew up");
        }
        Ok(WorkerId(0))
    }
    fn execute_task(&self, task: Arc<PreparedTask>, worker: WorkerId, done: Completion) {
        if task.id.0 == self.execute {
            panic!("execute blew up");
        }
        Echo.execute_task(task, worker, done)
    }
    fn status(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn cancel(&self, _task: TaskId) {}
}

/// Every outcome by task, waiting at most `limit` in all (a hang fails, it does not block).
fn outcomes(master: &Master, limit: Duration) -> BTreeMap<u64, Result<serde_json::Value, String>> {
    let deadline = std::time::Instant::now() + limit;
    let mut got = BTreeMap::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the master hangs: only {got:?} came"
        );
        match master.next_outcome(Duration::from_millis(200)) {
            NextOutcome::Finished(id, r, _) => {
                assert!(got
                    .insert(id.0, r.map(|o| o.value).map_err(|e| e.to_string()))
                    .is_none());
            }
            NextOutcome::Pending => {}
            NextOutcome::AllCollected => return got,
            NextOutcome::Stopped(e) => panic!("stopped: {e}"),
        }
    }
}

/// A panic in the caller's code the scheduler runs (a spec source, an interface's
/// `reserve_worker` or `execute_task`) fails that task with the panic's message; the other
/// tasks run and nothing waits for ever.
#[test]
fn a_panic_in_a_spec_source_or_an_interface_fails_its_task_not_the_master() {
    let master = Master::new(PanicAt {
        reserve: 2,
        execute: 4,
    })
    .unwrap();
    let program = Arc::new(Program::new("/bin/sh").unwrap());
    let src: Arc<dyn SpecSource> = Arc::new(move |index: u64, input: serde_json::Value| {
        if index == 1 {
            panic!("source blew up");
        }
        Ok(TaskSpec::new(program.clone(), input))
    });
    master.submit_inputs(inputs(0..6), src).unwrap();
    let got = outcomes(&master, Duration::from_secs(60));
    assert_eq!(got.len(), 6, "{got:?}");
    for (i, says) in [(1, "source blew up"), (2, "reserve blew up")] {
        let e = got[&i].as_ref().unwrap_err();
        assert!(e.contains(says) && e.contains("panicked"), "task {i}: {e}");
    }
    assert!(got[&4].is_err(), "{got:?}");
    for i in [0u64, 3, 5] {
        assert_eq!(got[&i].as_ref().unwrap()["i"], i, "{got:?}");
    }
    // And the master still takes work.
    master.submit_inputs(inputs(6..7), source()).unwrap();
    assert_eq!(outcomes(&master, Duration::from_secs(60)).len(), 1);
}

/// "Wait for ever" as a timeout (`Duration::MAX`) waits; it does not overflow an `Instant`.
#[test]
fn a_timeout_past_what_an_instant_holds_waits_without_a_deadline() {
    let master = Master::new(Echo).unwrap();
    master.submit_inputs(inputs(0..2), source()).unwrap();
    let out = master
        .get_output_timeout(Some(TaskId(0)), Duration::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(out.value["i"], 0);
    assert!(matches!(
        master.next_outcome(Duration::MAX),
        NextOutcome::Finished(TaskId(1), Ok(_), _)
    ));
    assert!(matches!(
        master.next_outcome(Duration::MAX),
        NextOutcome::AllCollected
    ));
}

/// A failed `map` takes the outcomes of the tasks it cancelled: the caller's next
/// `get_result(None)` is about the caller's own next task, not a cancelled one of `map`'s.
#[test]
fn a_failed_map_leaves_no_outcome_of_its_own_behind() {
    let master = Master::new(PanicAt {
        reserve: u64::MAX,
        execute: 1,
    })
    .unwrap();
    let program = Arc::new(Program::new("/bin/sh").unwrap());
    let r: Result<Vec<serde_json::Value>, _> = master.map(program.clone(), 0..5u64);
    assert!(r.is_err());
    let mine = master.submit(program, &serde_json::json!("mine")).unwrap();
    let (id, v): (TaskId, serde_json::Value) = master.get_result(None).unwrap();
    assert_eq!((id, v), (mine, serde_json::json!("mine")));
}

/// A stopped master refuses new tasks instead of queueing them for ever.
#[test]
fn a_stopped_master_refuses_new_tasks() {
    let master = Master::new(Echo).unwrap();
    master.stop("done here");
    let program = Arc::new(Program::new("/bin/sh").unwrap());
    let r = master.submit(program.clone(), &1);
    assert!(
        matches!(&r, Err(MwError::Stopped(why)) if why == "done here"),
        "{r:?}"
    );
    let r: Result<Vec<u32>, _> = master.map(program, [1, 2]);
    assert!(matches!(r, Err(MwError::Stopped(_))), "{r:?}");
    assert_eq!(master.counts().total(), 0);
}
