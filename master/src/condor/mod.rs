//! The HTCondor interface: tasks that arrive within a batch window become one cluster (one
//! `condor_submit -terse` with `queue ... from` an item file); `mw-worker` runs each task on
//! the pool with file transfer, and one watcher thread follows every batch's job event log
//! and turns termination, hold, eviction and abort events into task outcomes.
//!
//! Files live under the interface's work directory (`<job>/staging/condor/batch-N/`): the task
//! bundles, the submit description and item file, the log, each job's stdout/stderr, the
//! result bundles that come back, and `<batch>.cluster` (the cluster id, so a resumed master
//! finds a batch from a `cluster.proc` handle).
//!
//! Parts: [`settings`] (what a program chooses), `batch` (batching, packing and submitting),
//! `events` (job events to task outcomes), `reattach` (resume and cancel without a master).
//!
//! **Packs** (`tasks_per_job` > 1): a job runs a pack of tasks (`pack-<first task>.mwt`, see
//! [`crate::pack`]) and returns one pack result. Every member of a pack records the job's
//! `cluster.proc` as its handle, so the journal maps the job to its tasks; the job's events
//! apply to every member. The pack result is read for the members this interface knows to
//! be in that job (what the job id vouches for); a member without a result in it is submitted
//! again in a later pack (at most [`MAX_PACK_REQUEUES`] times). Cancelling one member reports
//! it cancelled at once and drops it from its job, whose other members run on (its result is
//! ignored if it comes back); the job is removed only when no member is left.
//!
//! This module must never know about the journal, the CLI, the job-file format or other
//! platforms: it talks to the master only through [`Interface`], [`Completion`] and
//! [`HandleSink`], and is configured by [`CondorSettings`].

mod batch;
mod events;
mod reattach;
pub mod settings;

pub use batch::preview_submit;
pub use reattach::{remove_jobs_of_cancelled_tasks, remove_leftover_jobs};
pub use settings::{default_worker, CondorSettings, OnHold};

use crate::interface::{shut_down_error, Completion, HandleSink, Interface};
use crate::pack::PackSizer;
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, WorkerId};
use batch::{add_log, stage, submit_loop, task_files};
use events::{conclude, event_loop, finish_members, on_event, Outcome};
use mw_condor_kit::{
    spawn_log_watcher, write_submit_files, CondorCli, EventKind, JobHandle, JobStatus, LogEvent,
    LogWatcher, SubmitItem, SubmitSpec, Termination, WatchMessage,
};
use reattach::pending_handle;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a task waits for more tasks to join its batch, beyond the batch window.
const MAX_BATCH_DELAY: Duration = Duration::from_secs(30);

/// How many times a packed task whose pack came back without its result is submitted again
/// before it fails.
pub const MAX_PACK_REQUEUES: u32 = 3;

/// Where one task's files are.
#[derive(Debug, Clone)]
struct TaskFiles {
    dir: PathBuf,
    task_bundle: PathBuf,
    result: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    program_bundle: PathBuf,
}

impl TaskFiles {
    /// A task queued for a pack: no files of its own until its pack is formed.
    fn queued(program_bundle: PathBuf) -> Self {
        TaskFiles {
            dir: PathBuf::new(),
            task_bundle: PathBuf::new(),
            result: PathBuf::new(),
            stdout: PathBuf::new(),
            stderr: PathBuf::new(),
            program_bundle,
        }
    }

    /// True while the task waits for its pack to be formed.
    fn is_queued(&self) -> bool {
        self.task_bundle.as_os_str().is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Submitting,
    Idle,
    Running,
    Held,
}

struct Tracked {
    task: Arc<PreparedTask>,
    done: Option<Completion>,
    handle: Option<JobHandle>,
    files: TaskFiles,
    phase: Phase,
    cancel_requested: bool,
    shadow: Option<String>,
    /// Where the job last started (its 001 event), so a job the pool ends keeps its run.
    ran_on: Option<String>,
    /// Runs in a pack with other tasks (its files are the pack's).
    packed: bool,
    /// Times it was submitted again because its pack came back without its result.
    requeues: u32,
    /// Times its job went back to idle without ending (evicted, reconnect failed).
    evictions: u32,
}

impl crate::pack::PackMember for Tracked {
    fn task(&self) -> &Arc<PreparedTask> {
        &self.task
    }
}

impl Tracked {
    /// A task this interface follows, idle until its log says otherwise.
    fn new(
        task: Arc<PreparedTask>,
        done: Completion,
        handle: Option<JobHandle>,
        files: TaskFiles,
        phase: Phase,
    ) -> Self {
        Tracked {
            task,
            done: Some(done),
            handle,
            files,
            phase,
            cancel_requested: false,
            shadow: None,
            ran_on: None,
            packed: false,
            requeues: 0,
            evictions: 0,
        }
    }
}

#[derive(Default)]
struct State {
    tasks: HashMap<TaskId, Tracked>,
    pending: Vec<TaskId>,
    first_pending: Option<Instant>,
    last_pending: Option<Instant>,
    /// Each job's tasks (one, or a pack's members); removed when the job has ended.
    by_handle: HashMap<JobHandle, Vec<TaskId>>,
    /// Events of jobs no task claims yet (a re-attached batch's log replays other tasks first),
    /// kept only for the clusters in `reattaching`, until re-attaching is done.
    unclaimed: HashMap<JobHandle, Vec<LogEvent>>,
    /// Clusters being re-attached, and their item counts (the procs they can have).
    reattaching: HashMap<u64, u64>,
    open_batch: u64,
    shut_down: bool,
    batches: u64,
    jobs_submitted: u64,
    finished: u64,
    log_problems: u64,
    /// Batches a resumed master knew only by name: their cluster, or `None` if never submitted.
    resolved: HashMap<String, Option<u64>>,
    /// Batches whose fate the schedd could not tell (after retries): why, for their tasks.
    unresolved: HashMap<String, String>,
    /// Why the interface can run no more tasks (its submit or event thread died): new tasks
    /// fail at once with this message instead of waiting for ever.
    broken: Option<String>,
    /// Pack sizes (and the run times measured so far).
    sizer: PackSizer,
    /// Jobs re-attached by a resumed master, and how the ones that ended did: a member of a
    /// pack that is re-attached after its job ended gets the same outcome.
    reattached: HashSet<JobHandle>,
    concluded: HashMap<JobHandle, Outcome>,
    /// Logs in a format mw does not read, and the message their tasks fail with.
    bad_logs: HashMap<PathBuf, String>,
    /// Logs that are gone, and when to ask the schedd about their jobs next.
    gone_logs: HashMap<PathBuf, Instant>,
    /// Jobs whose last event so far is a shadow exception.
    shadowed: HashMap<JobHandle, events::ShadowCheck>,
}

impl State {
    /// Tracks task `id` as pending (waiting for the next batch) and notes when it came.
    fn add_pending(&mut self, id: TaskId, t: Tracked) {
        self.tasks.insert(id, t);
        self.pending.push(id);
        let now = Instant::now();
        self.first_pending.get_or_insert(now);
        self.last_pending = Some(now);
    }
}

struct Shared {
    settings: CondorSettings,
    /// Tasks are packed (`tasks_per_job` > 1).
    packing: bool,
    state: Mutex<State>,
    cond: Condvar,
    sink: Mutex<Option<Arc<dyn HandleSink>>>,
    watcher: Mutex<Option<LogWatcher>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::guard::lock(&self.state)
    }
}

/// HTCondor pool as workers.
pub struct Condor {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Condor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condor({})", self.shared.settings.work_dir.display())
    }
}

fn first_free_batch(work_dir: &Path) -> u64 {
    let mut next = 1;
    if let Ok(rd) = std::fs::read_dir(work_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("batch-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                next = next.max(n + 1);
            }
        }
    }
    next
}

impl Condor {
    /// Starts the submit and watcher threads. Fails when the work directory cannot be made.
    pub fn new(settings: CondorSettings) -> Result<Condor, InterfaceError> {
        let work_dir = std::path::absolute(&settings.work_dir)
            .map_err(|e| InterfaceError::new(format!("{}: {e}", settings.work_dir.display())))?;
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| InterfaceError::new(format!("creating {}: {e}", work_dir.display())))?;
        let mut settings = settings;
        settings.work_dir = work_dir.clone();
        let (rx, watcher) = spawn_log_watcher(Vec::new(), settings.poll_interval)
            .map_err(|e| InterfaceError::new(format!("starting the log watcher: {e}")))?;
        let sizer = PackSizer::new(settings.tasks_per_job, settings.target_job_time);
        let shared = Arc::new(Shared {
            packing: sizer.packing(),
            state: Mutex::new(State {
                open_batch: first_free_batch(&work_dir),
                sizer,
                ..State::default()
            }),
            settings,
            cond: Condvar::new(),
            sink: Mutex::new(None),
            watcher: Mutex::new(Some(watcher)),
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("mw-condor-submit".into())
                .spawn(move || {
                    if let Err(panic) = crate::guard::contain(|| submit_loop(&s)) {
                        fail_all(&s, format!("the HTCondor submit thread failed: {panic}"));
                    }
                })
                .map_err(|e| InterfaceError::new(format!("starting the submit thread: {e}")))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("mw-condor-events".into())
                .spawn(move || {
                    let why = match crate::guard::contain(|| event_loop(&s, rx)) {
                        Ok(()) => "the HTCondor job-log watcher stopped".to_string(),
                        Err(panic) => format!("the HTCondor event thread failed: {panic}"),
                    };
                    if !s.lock().shut_down {
                        fail_all(&s, why);
                    }
                })
                .map_err(|e| InterfaceError::new(format!("starting the event thread: {e}")))?,
        );
        Ok(Condor {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// The work directory (absolute).
    pub fn work_dir(&self) -> &Path {
        &self.shared.settings.work_dir
    }
}

impl Interface for Condor {
    fn name(&self) -> &'static str {
        "condor"
    }

    fn keeps_running_without_master(&self) -> bool {
        true
    }

    fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        crate::interface::queued_worker("HTCondor", self.shared.lock().shut_down)
    }

    fn execute_task(&self, task: Arc<PreparedTask>, _worker: WorkerId, done: Completion) {
        if let Some(why) = self.shared.lock().broken.clone() {
            return done.finish(Err(InterfaceError::new(why)));
        }
        if self.shared.packing || batch::is_stream(&task) {
            // Its bundle is made when its pack is formed, at submit time (a streaming
            // program's tasks always go in a pack, even of one, to run through it).
            return batch::queue_for_pack(&self.shared, task, done);
        }
        let (bytes, program) = match stage(&task) {
            Ok(x) => x,
            Err(e) => return done.finish(Err(e)),
        };
        let mut st = self.shared.lock();
        if st.shut_down {
            drop(st);
            return done.finish(Err(shut_down_error("HTCondor")));
        }
        let dir = self
            .shared
            .settings
            .work_dir
            .join(format!("batch-{}", st.open_batch));
        let files = task_files(&dir, &task, program);
        let written =
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&files.task_bundle, &bytes));
        if let Err(e) = written {
            drop(st);
            let e = batch::staging_error(&self.shared, &files.task_bundle, &e);
            return done.finish(Err(e));
        }
        let id = task.id;
        st.add_pending(id, Tracked::new(task, done, None, files, Phase::Pending));
        drop(st);
        self.shared.cond.notify_all();
    }

    fn status(&self) -> BTreeMap<String, String> {
        let st = self.shared.lock();
        let count = |p: Phase| st.tasks.values().filter(|t| t.phase == p).count();
        let mut m = BTreeMap::new();
        m.insert(
            "waiting_for_submit".into(),
            count(Phase::Pending).to_string(),
        );
        m.insert("idle".into(), count(Phase::Idle).to_string());
        m.insert("running".into(), count(Phase::Running).to_string());
        m.insert("held".into(), count(Phase::Held).to_string());
        m.insert("batches".into(), st.batches.to_string());
        m.insert("jobs_submitted".into(), st.jobs_submitted.to_string());
        m.insert("finished".into(), st.finished.to_string());
        m.insert("log_problems".into(), st.log_problems.to_string());
        m
    }

    fn cancel(&self, task: TaskId) {
        let mut st = self.shared.lock();
        let Some(t) = st.tasks.get_mut(&task) else {
            return;
        };
        t.cancel_requested = true;
        if t.packed && t.handle.is_some() {
            return batch::cancel_packed(&self.shared, st, task);
        }
        match (t.phase, t.handle) {
            (Phase::Pending, _) => {
                let done = st.tasks.remove(&task).and_then(|mut t| t.done.take());
                st.pending.retain(|p| *p != task);
                st.finished += 1;
                drop(st);
                if let Some(d) = done {
                    d.finish(Err(InterfaceError::new(
                        "cancelled before it was submitted to HTCondor",
                    )));
                }
            }
            (_, Some(h)) => {
                drop(st);
                if let Err(e) = self.shared.settings.cli.remove(&[h]) {
                    // It may have just finished; its terminated event then decides.
                    log::warn!("HTCondor: cancelling {task} (job {h}): {e}");
                }
            }
            // Being submitted: the submit thread removes it once it has a handle.
            _ => {}
        }
    }

    fn set_handle_sink(&self, sink: Arc<dyn HandleSink>) {
        if let Ok(mut s) = self.shared.sink.lock() {
            *s = Some(sink);
        }
    }

    fn reattach(
        &self,
        task: Arc<PreparedTask>,
        handle: &str,
        done: Completion,
    ) -> Option<Completion> {
        self.reattach_task(task, handle, done)
    }

    fn reattach_done(&self) {
        // No task is re-attached any more: events of jobs without a task are not waited
        // for, nor are outcomes kept for pack members re-attached late.
        let mut st = self.shared.lock();
        st.unclaimed = HashMap::new();
        st.reattaching = HashMap::new();
        st.resolved = HashMap::new();
        st.unresolved = HashMap::new();
        st.reattached = HashSet::new();
        st.concluded = HashMap::new();
    }

    fn shutdown(&self) {
        {
            let mut st = self.shared.lock();
            st.shut_down = true;
        }
        self.shared.cond.notify_all();
        let watcher = self.shared.watcher.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = watcher {
            w.stop();
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
        // Jobs still in the pool stay there: their tasks keep their handles in the journal,
        // and `mw resume` re-attaches them. Nothing is reported for them now.
        let left: Vec<Tracked> = self.shared.lock().tasks.drain().map(|(_, t)| t).collect();
        for mut t in left {
            if let Some(d) = t.done.take() {
                d.abandon();
            }
        }
    }
}

/// A thread this interface cannot do without has died: every task it follows fails with
/// `why` (its job, if any, is removed from the pool), and so does every later task.
fn fail_all(shared: &Shared, why: String) {
    let tasks: Vec<Tracked> = {
        let mut st = shared.lock();
        st.broken = Some(why.clone());
        st.pending.clear();
        st.tasks.drain().map(|(_, t)| t).collect()
    };
    log::error!("{why}: failing {} task(s) in flight", tasks.len());
    let handles: Vec<JobHandle> = tasks.iter().filter_map(|t| t.handle).collect();
    if !handles.is_empty() {
        if let Err(e) = shared.settings.cli.remove(&handles) {
            log::warn!("condor_rm of the failed tasks' jobs: {e}");
        }
    }
    for mut t in tasks {
        if let Some(d) = t.done.take() {
            d.finish(Err(InterfaceError::new(format!("{}: {why}", t.task.id))));
        }
    }
}

/// A panic while handling an event of job `h` (caught): its tasks (one, or a pack's members)
/// fail with the message.
fn fail_task_of(shared: &Shared, h: JobHandle, panic: &str) {
    let members = {
        let mut st = shared.lock();
        let members = events::take_members(&mut st, h);
        st.finished += members.len() as u64;
        members
    };
    for mut t in members {
        if let Some(d) = t.done.take() {
            d.finish(Err(InterfaceError::new(format!(
                "internal error while handling HTCondor job {h}: {panic}"
            ))));
        }
    }
}

impl Drop for Condor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::task::{Program, TaskSpec};
    use mw_bundle::{BundleBuilder, Comparison, ExitInfo, ResultInfo, RESULT_STDOUT_NAME};
    use mw_condor_kit::CondorCli;
    use std::io::Write;
    use std::sync::mpsc;

    const TERMINATED: &str = "005 (007.{p}.000) 2026-11-24 10:00:03 Job terminated.\n\t(1) Normal termination (return value 0)\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n\t0  -  Run Bytes Sent By Job\n...\n";

    fn task(id: u64, staging: &Path) -> Arc<PreparedTask> {
        let program = Arc::new(Program::new("/bin/sh").unwrap());
        Arc::new(PreparedTask {
            id: TaskId(id),
            attempt: 1,
            job: "unit".into(),
            spec: TaskSpec::new(program, serde_json::json!(id)),
            output_dir: None,
            staging_dir: staging.to_path_buf(),
        })
    }

    fn result_bundle(task: u64, stdout: &[u8]) -> Vec<u8> {
        let info = ResultInfo {
            job: "unit".into(),
            task,
            attempt: None,
            exit: ExitInfo::Exited { code: 0 },
            wall_secs: 0.1,
            user_secs: 0.0,
            sys_secs: 0.0,
            host: "exec".into(),
            started_unix: 1.0,
            stderr_tail: String::new(),
            missing_outputs: vec![],
            comparison: Comparison::default(),
        };
        let mut b = BundleBuilder::result(info, "unit result");
        b.add_bytes(RESULT_STDOUT_NAME, stdout.to_vec(), false)
            .unwrap();
        b.to_bytes().unwrap()
    }

    /// A batch directory `batch-1` under `<tmp>/condor` as a dead master left it: its item
    /// file for procs `0..procs` and, if the cluster is known, its cluster marker. Returns the
    /// work directory and the batch directory.
    fn stage_batch(tmp: &Path, name: &str, cluster: Option<u64>, procs: u64) -> (PathBuf, PathBuf) {
        let work = tmp.join("condor");
        let batch = work.join("batch-1");
        std::fs::create_dir_all(&batch).unwrap();
        if let Some(c) = cluster {
            std::fs::write(batch.join(format!("{name}.cluster")), format!("{c}\n")).unwrap();
        }
        let b = batch.display();
        let items: String = (0..procs)
            .map(|p| format!("{p} {b}/task-{p}-a1.mwt task-{p}-a1.mwt task-{p}-a1.result {b}/task-{p}-a1.out {b}/task-{p}-a1.err\n"))
            .collect();
        std::fs::write(batch.join(format!("{name}.items")), items).unwrap();
        (work, batch)
    }

    /// An executable `/bin/sh` script `name` in `bin` (a stand-in for an HTCondor tool).
    fn fake_tool(bin: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(bin).unwrap();
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// A resumed master asks a schedd that does not answer for a moment (twice "Failed to
    /// fetch ads") again, and re-attaches the batch it then finds; a single failed query once
    /// failed every task of the batch for good.
    #[test]
    fn a_schedd_that_fails_for_a_moment_is_asked_again_on_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let name = "unit-b1-0000abcd";
        let (work, batch) = stage_batch(tmp.path(), name, None, 1);
        std::fs::write(batch.join(format!("{name}.sub")), "queue\n").unwrap();
        std::fs::write(batch.join("task-0-a1.result"), result_bundle(0, b"42")).unwrap();
        let log = batch.join(format!("{name}.log"));
        append(
            &log,
            "000 (007.000.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n",
        );
        append(&log, &TERMINATED.replace("{p}", "000"));
        let bin = tmp.path().join("bin");
        let calls = tmp.path().join("calls");
        fake_tool(
            &bin,
            "condor_q",
            &format!(
                "echo q >> {c}\nif [ $(wc -l < {c}) -le 2 ]; then echo 'Failed to fetch ads' >&2; exit 1; fi\n\
                 echo '[{{\"ClusterId\": 7, \"ProcId\": 0, \"JobStatus\": 4, \"MwBatch\": \"{name}\"}}]'",
                c = calls.display()
            ),
        );
        fake_tool(&bin, "condor_history", "echo '[]'");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = CondorCli::default().with_bin_dir(&bin);
        let condor = Condor::new(settings).unwrap();
        let (tx, rx) = mpsc::channel();
        let done = Completion::new(TaskId(0), move |r| tx.send(r).unwrap());
        let back = condor.reattach(task(0, tmp.path()), &format!("submitting:{name}:0"), done);
        assert!(back.is_none(), "re-attach refused");
        let got = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(got.unwrap().stdout, b"42");
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 3);
        condor.shutdown();
    }

    /// A job the pool evicts again and again (a machine that keeps preempting it) is removed
    /// and its task fails after [`events::MAX_EVICTIONS`] evictions; it once went on for ever.
    #[test]
    fn a_job_evicted_again_and_again_fails_and_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch) = stage_batch(tmp.path(), "unit-b1", Some(7), 1);
        let log = batch.join("unit-b1.log");
        append(
            &log,
            "000 (007.000.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n",
        );
        for _ in 0..=events::MAX_EVICTIONS {
            append(&log, "001 (007.000.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.4:9618>\n...\n");
            append(&log, "004 (007.000.000) 2026-11-24 10:00:02 Job was evicted.\n\t(0) Job was not checkpointed.\n...\n");
        }
        let bin = tmp.path().join("bin");
        let removed = tmp.path().join("removed");
        fake_tool(
            &bin,
            "condor_rm",
            &format!("echo \"$@\" >> {}", removed.display()),
        );
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = CondorCli::default().with_bin_dir(&bin);
        let condor = Condor::new(settings).unwrap();
        let (tx, rx) = mpsc::channel();
        let done = Completion::new(TaskId(0), move |r| tx.send(r).unwrap());
        assert!(condor.reattach(task(0, tmp.path()), "7.0", done).is_none());
        let err = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("was evicted 21 times"), "{err}");
        assert_eq!(std::fs::read_to_string(&removed).unwrap().trim(), "7.0");
        condor.shutdown();
    }

    /// Re-attaching to a batch whose log has a record cut off mid-way and an event code
    /// HTCondor does not define: the cut record is completed later and counted once, the
    /// unknown one is skipped, and a job that exited 0 without a result bundle is a clear error.
    #[test]
    fn reattach_truncated_log_unknown_code_and_missing_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch) = stage_batch(tmp.path(), "unit-b1", Some(7), 2);
        std::fs::write(batch.join("task-0-a1.result"), result_bundle(0, b"42")).unwrap();
        std::fs::write(batch.join("task-1-a1.err"), "worker said: lost it\n").unwrap();
        let log = batch.join("unit-b1.log");
        append(&log, "000 (007.000.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n    mw task 0\n...\n");
        append(
            &log,
            "077 (007.000.000) 2026-11-24 10:00:01 An event from the future\n\tbody\n...\n",
        );
        let full = TERMINATED.replace("{p}", "000");
        let (head, tail) = full.split_at(full.find("(1) Normal").unwrap() + 5);
        append(&log, head);

        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = CondorCli::default().with_bin_dir(tmp.path().join("no-condor-here"));
        let condor = Condor::new(settings).unwrap();
        let (tx, rx) = mpsc::channel();
        for id in [0u64, 1] {
            let tx = tx.clone();
            let done = Completion::new(TaskId(id), move |r| tx.send((id, r)).unwrap());
            let back = condor.reattach(task(id, tmp.path()), &format!("7.{id}"), done);
            assert!(back.is_none(), "re-attach of task {id} refused");
        }
        append(&log, tail);
        append(&log, &TERMINATED.replace("{p}", "001"));
        let mut got = BTreeMap::new();
        for _ in 0..2 {
            let (id, r) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
            assert!(got.insert(id, r).is_none(), "task {id} reported twice");
        }
        let ok = got[&0].as_ref().unwrap();
        assert_eq!(ok.stdout, b"42");
        let err = got[&1].as_ref().unwrap_err().to_string();
        assert!(err.contains("HTCondor job 7.1"), "{err}");
        assert!(err.contains("no result bundle came back"), "{err}");
        assert!(err.contains("worker said: lost it"), "{err}");
        assert_eq!(condor.status()["log_problems"], "0");
        condor.shutdown();
    }

    /// Work directory with batch 1 of cluster 7 staged for tasks 0..n (lone tasks): returns
    /// (work dir, batch dir, log path).
    fn staged_batch(root: &Path, n: u64) -> (PathBuf, PathBuf, PathBuf) {
        let work = root.join("condor");
        let batch = work.join("batch-1");
        std::fs::create_dir_all(&batch).unwrap();
        std::fs::write(batch.join("unit-b1.cluster"), "7\n").unwrap();
        let b = batch.display();
        let items: String = (0..n)
            .map(|i| {
                format!(
                    "{i} {b}/task-{i}-a1.mwt task-{i}-a1.mwt task-{i}-a1.result {b}/task-{i}-a1.out {b}/task-{i}-a1.err\n"
                )
            })
            .collect();
        std::fs::write(batch.join("unit-b1.items"), items).unwrap();
        let log = batch.join("unit-b1.log");
        (work, batch, log)
    }

    /// Fake HTCondor tools in `dir`: each appends its arguments to `calls` and prints the
    /// text given for it.
    fn fake_tools(dir: &Path, outputs: &[(&str, &str)]) -> CondorCli {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        for (name, out) in outputs {
            let path = dir.join(name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> {calls}\ncat <<'EOF'\n{out}\nEOF\n",
                    calls = dir.join("calls").display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        CondorCli::default().with_bin_dir(dir)
    }

    /// Re-attaches tasks 0..n to jobs 7.0..7.n; their outcomes arrive on the receiver.
    #[allow(clippy::type_complexity)]
    fn reattach_all(
        condor: &Condor,
        root: &Path,
        n: u64,
    ) -> mpsc::Receiver<(u64, Result<Execution, InterfaceError>)> {
        let (tx, rx) = mpsc::channel();
        for id in 0..n {
            let tx = tx.clone();
            let done = Completion::new(TaskId(id), move |r| {
                let _ = tx.send((id, r));
            });
            let back = condor.reattach(task(id, root), &format!("7.{id}"), done);
            assert!(back.is_none(), "re-attach of task {id} refused");
        }
        rx
    }

    fn outcomes(
        rx: &mpsc::Receiver<(u64, Result<Execution, InterfaceError>)>,
        n: u64,
    ) -> BTreeMap<u64, Result<Execution, InterfaceError>> {
        let mut got = BTreeMap::new();
        for _ in 0..n {
            let (id, r) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
            assert!(got.insert(id, r).is_none(), "task {id} reported twice");
        }
        got
    }

    /// A batch whose log HTCondor writes in JSON (the pool's DEFAULT_USERLOG_FORMAT_OPTIONS):
    /// its tasks waited for ever with no message. They fail saying what to set, and their
    /// jobs are removed.
    #[test]
    fn a_json_log_fails_the_batch_saying_what_to_set() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, _batch, log) = staged_batch(tmp.path(), 2);
        std::fs::write(
            &log,
            "{\n    \"MyType\": \"SubmitEvent\",\n    \"Cluster\": 7,\n    \"Proc\": 0\n}\n",
        )
        .unwrap();
        let bin = tmp.path().join("bin");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = fake_tools(
            &bin,
            &[("condor_rm", ""), ("condor_q", ""), ("condor_history", "")],
        );
        let condor = Condor::new(settings).unwrap();
        let rx = reattach_all(&condor, tmp.path(), 2);
        let got = outcomes(&rx, 2);
        for id in [0u64, 1] {
            let err = got[&id].as_ref().unwrap_err().to_string();
            assert!(err.contains(&format!("HTCondor job 7.{id}")), "{err}");
            assert!(err.contains("JSON"), "{err}");
            assert!(err.contains("DEFAULT_USERLOG_FORMAT_OPTIONS"), "{err}");
        }
        let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
        for id in [0u64, 1] {
            assert!(
                calls
                    .lines()
                    .any(|l| l.starts_with("condor_rm") && l.contains(&format!("7.{id}"))),
                "{calls}"
            );
        }
        condor.shutdown();
    }

    /// The log of a batch in flight is deleted: its tasks waited for ever. The jobs that left
    /// the queue end as condor_history says; one the schedd does not know fails, saying so.
    #[test]
    fn a_deleted_log_ends_its_jobs_as_the_schedd_says() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch, log) = staged_batch(tmp.path(), 2);
        std::fs::write(batch.join("task-0-a1.result"), result_bundle(0, b"42")).unwrap();
        for p in ["000", "001"] {
            append(&log, &format!("000 (007.{p}.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n"));
        }
        append(
            &log,
            "001 (007.000.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.5:9618>\n...\n",
        );
        append(
            &log,
            "001 (007.001.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.5:9618>\n...\n",
        );
        let bin = tmp.path().join("bin");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = fake_tools(
            &bin,
            &[
                ("condor_rm", ""),
                ("condor_q", ""),
                (
                    "condor_history",
                    "[{\"ClusterId\": 7, \"ProcId\": 0, \"JobStatus\": 4, \"ExitCode\": 0, \"ExitBySignal\": false}]",
                ),
            ],
        );
        let condor = Condor::new(settings).unwrap();
        let rx = reattach_all(&condor, tmp.path(), 2);
        // Both runs were read (so the log was followed) before it goes.
        let t0 = Instant::now();
        while condor.status()["running"] != "2" {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{:?}",
                condor.status()
            );
            std::thread::yield_now();
        }
        std::fs::remove_file(&log).unwrap();
        let got = outcomes(&rx, 2);
        assert_eq!(got[&0].as_ref().unwrap().stdout, b"42");
        let err = got[&1].as_ref().unwrap_err().to_string();
        assert!(err.contains("HTCondor job 7.1"), "{err}");
        assert!(err.contains("neither condor_q nor condor_history"), "{err}");
        condor.shutdown();
        // The history is asked for each job by its id, stopping at the first match.
        let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
        let history: Vec<&str> = calls
            .lines()
            .filter(|l| l.starts_with("condor_history"))
            .collect();
        assert!(!history.is_empty(), "{calls}");
        for l in history {
            assert!(
                l.ends_with(" -limit 1 7.0") || l.ends_with(" -limit 1 7.1"),
                "{calls}"
            );
        }
    }

    /// A job had a shadow exception (007), HTCondor ran it again and it exited 0 (005), and
    /// it has left the queue and the history was rotated: the 007 alone failed the task, and
    /// the result on disk was ignored. The later 005 decides.
    #[test]
    fn a_shadow_exception_followed_by_a_termination_is_decided_by_the_termination() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch, log) = staged_batch(tmp.path(), 2);
        std::fs::write(batch.join("task-0-a1.result"), result_bundle(0, b"42")).unwrap();
        for p in ["000", "001"] {
            append(&log, &format!("000 (007.{p}.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n"));
        }
        let shadow = "007 (007.{p}.000) 2026-11-24 10:00:02 Shadow exception!\n\tError from slot1@vm: the shadow lost the starter\n\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n...\n";
        append(&log, &shadow.replace("{p}", "000"));
        append(&log, &TERMINATED.replace("{p}", "000"));
        // Job 7.1 has nothing after its 007, and the schedd has forgotten it: it fails with
        // the exception.
        append(&log, &shadow.replace("{p}", "001"));
        let bin = tmp.path().join("bin");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = fake_tools(
            &bin,
            &[("condor_rm", ""), ("condor_q", ""), ("condor_history", "")],
        );
        let condor = Condor::new(settings).unwrap();
        let rx = reattach_all(&condor, tmp.path(), 2);
        let got = outcomes(&rx, 2);
        match &got[&0] {
            Ok(e) => assert_eq!(e.stdout, b"42"),
            Err(e) => panic!("task 0 failed: {e}"),
        }
        let err = got[&1].as_ref().unwrap_err().to_string();
        assert!(err.contains("HTCondor job 7.1"), "{err}");
        assert!(err.contains("shadow exception"), "{err}");
        condor.shutdown();
    }

    /// A shadow exception with nothing after it yet, of a job the schedd still has (HTCondor
    /// put it back to idle): the task waits, and the job's later run decides.
    #[test]
    fn a_shadow_exception_of_a_queued_job_waits_for_its_next_run() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch, log) = staged_batch(tmp.path(), 1);
        std::fs::write(batch.join("task-0-a1.result"), result_bundle(0, b"42")).unwrap();
        append(
            &log,
            "000 (007.000.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n",
        );
        append(&log, "007 (007.000.000) 2026-11-24 10:00:02 Shadow exception!\n\tError from slot1@vm: the shadow lost the starter\n\t0  -  Run Bytes Sent By Job\n...\n");
        let bin = tmp.path().join("bin");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = fake_tools(
            &bin,
            &[
                ("condor_rm", ""),
                (
                    "condor_q",
                    "[{\"ClusterId\": 7, \"ProcId\": 0, \"JobStatus\": 1}]",
                ),
                ("condor_history", ""),
            ],
        );
        let condor = Condor::new(settings).unwrap();
        let rx = reattach_all(&condor, tmp.path(), 1);
        // The schedd was asked, and said the job is queued.
        let t0 = Instant::now();
        while !std::fs::read_to_string(bin.join("calls"))
            .unwrap_or_default()
            .contains("condor_q")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "condor_q never asked"
            );
            std::thread::yield_now();
        }
        assert!(
            rx.try_recv().is_err(),
            "the task ended on the shadow exception"
        );
        append(
            &log,
            "001 (007.000.000) 2026-11-24 10:00:05 Job executing on host: <1.2.3.5:9618>\n...\n",
        );
        append(&log, &TERMINATED.replace("{p}", "000"));
        let got = outcomes(&rx, 1);
        assert_eq!(got[&0].as_ref().unwrap().stdout, b"42");
        let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
        assert!(
            calls.contains("condor_q -json -attributes") && calls.contains(" 7.0"),
            "{calls}"
        );
        condor.shutdown();
    }

    /// Another file, at least as long, renamed over a batch's log while it is followed (an
    /// admin's or a tool's rewrite): it was read on from the old offset, mid-record, so the
    /// termination was lost and the task waited for ever. It is read from its start; the job
    /// that had ended already is not reported twice.
    #[test]
    fn a_replaced_log_is_read_again_from_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch, log) = staged_batch(tmp.path(), 2);
        std::fs::write(batch.join("task-0-a1.result"), result_bundle(0, b"42")).unwrap();
        std::fs::write(batch.join("task-1-a1.result"), result_bundle(1, b"43")).unwrap();
        let submitted = |p: &str| {
            format!("000 (007.{p}.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n")
        };
        let running = |p: &str| {
            format!("001 (007.{p}.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.5:9618>\n...\n")
        };
        let old = format!(
            "{}{}{}{}{}",
            submitted("001"),
            running("001"),
            TERMINATED.replace("{p}", "001"),
            submitted("000"),
            running("000")
        );
        append(&log, &old);
        let bin = tmp.path().join("bin");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = fake_tools(
            &bin,
            &[("condor_rm", ""), ("condor_q", ""), ("condor_history", "")],
        );
        let condor = Condor::new(settings).unwrap();
        let rx = reattach_all(&condor, tmp.path(), 2);
        let (id, first) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(id, 1);
        assert_eq!(first.unwrap().stdout, b"43");
        // Job 7.0 runs (its events were read): the log is replaced by a longer one whose
        // 005 of job 7.0 spans the old file's end.
        let t0 = Instant::now();
        while condor.status()["running"] != "1" {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{:?}",
                condor.status()
            );
            std::thread::yield_now();
        }
        let new = format!(
            "{}{}{}{}{}",
            submitted("001"),
            TERMINATED.replace("{p}", "001"),
            submitted("000"),
            TERMINATED.replace("{p}", "000"),
            running("001"),
        );
        let old_end = old.len();
        let term0 = new.rfind("005 (007.000").unwrap();
        assert!(
            term0 < old_end && old_end < term0 + TERMINATED.len(),
            "the test's premise"
        );
        std::fs::write(batch.join("replacement"), new).unwrap();
        std::fs::rename(batch.join("replacement"), &log).unwrap();
        let (id, second) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(id, 0);
        assert_eq!(second.unwrap().stdout, b"42");
        assert_eq!(condor.status()["finished"], "2");
        condor.shutdown();
        assert!(rx.try_recv().is_err(), "a task reported twice");
    }

    /// What the interface keeps per job is dropped when the job ends: `by_handle` kept an
    /// empty entry per job, `unclaimed` the events of a re-attached batch's jobs whose tasks
    /// had finished before the resume, and `concluded`/`reattached`/`resolved` grew for the
    /// whole run.
    #[test]
    fn nothing_is_kept_per_job_after_the_jobs_end() {
        const N: u64 = 20;
        const DONE_BEFORE: u64 = 5;
        let tmp = tempfile::tempdir().unwrap();
        let (work, batch, log) = staged_batch(tmp.path(), N + DONE_BEFORE);
        // First what no re-attached task claims (read before any outcome): the jobs of tasks
        // that finished before the resume, and forged procs the batch does not have.
        let mut text = String::new();
        let job = |p: u64| {
            let p = format!("{p:03}");
            format!(
                "000 (007.{p}.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:9618>\n...\n\
                 001 (007.{p}.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.5:9618>\n...\n{}",
                TERMINATED.replace("{p}", &p)
            )
        };
        for p in N..N + DONE_BEFORE {
            text += &job(p);
        }
        for p in 1000..1100 {
            text += &format!("001 (007.{p}.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.5:9618>\n...\n");
        }
        for p in 0..N {
            text += &job(p);
        }
        append(&log, &text);
        for id in 0..N {
            std::fs::write(
                batch.join(format!("task-{id}-a1.result")),
                result_bundle(id, id.to_string().as_bytes()),
            )
            .unwrap();
        }
        let bin = tmp.path().join("bin");
        let mut settings = CondorSettings::new(&work);
        settings.poll_interval = Duration::from_millis(20);
        settings.cli = fake_tools(
            &bin,
            &[("condor_rm", ""), ("condor_q", ""), ("condor_history", "")],
        );
        let condor = Condor::new(settings).unwrap();
        // Tasks N.. finished before the resume: only 0..N are re-attached.
        let rx = reattach_all(&condor, tmp.path(), N);
        condor.reattach_done();
        let got = outcomes(&rx, N);
        for (id, r) in &got {
            assert_eq!(r.as_ref().unwrap().stdout, id.to_string().as_bytes());
        }
        // The log read once more (a rewind): nothing comes back, nothing is kept.
        let again = batch.join("again");
        std::fs::write(&again, &text).unwrap();
        std::fs::rename(&again, &log).unwrap();
        if let Some(w) = condor.shared.watcher.lock().unwrap().as_ref() {
            w.sync();
        }
        let st = condor.shared.lock();
        let sizes = [
            ("tasks", st.tasks.len()),
            ("by_handle", st.by_handle.len()),
            ("unclaimed", st.unclaimed.len()),
            ("reattaching", st.reattaching.len()),
            ("resolved", st.resolved.len()),
            ("reattached", st.reattached.len()),
            ("concluded", st.concluded.len()),
            ("shadowed", st.shadowed.len()),
            ("gone_logs", st.gone_logs.len()),
        ];
        assert!(sizes.iter().all(|(_, n)| *n == 0), "{sizes:?}");
        assert_eq!(st.finished, N);
        drop(st);
        condor.shutdown();
        assert!(rx.try_recv().is_err(), "a task reported twice");
    }

    /// A job's stderr file comes back from the pool and may be huge: only its end is read
    /// into the error message.
    #[test]
    fn stderr_tail_reads_only_the_end_of_a_huge_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.err");
        let mut f = std::fs::File::create(&path).unwrap();
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            f.write_all(&junk).unwrap();
        }
        f.write_all(b"\nthe last words\n").unwrap();
        drop(f);
        let tail = events::stderr_tail(&path);
        assert!(tail.ends_with("the last words"), "{tail}");
        assert!(
            tail.len() < 2100 + path.display().to_string().len(),
            "{}",
            tail.len()
        );
        assert_eq!(events::stderr_tail(&dir.path().join("none")), "");
    }
}
