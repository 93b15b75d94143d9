//! The master: run queue, scheduler thread, result collection, retries, time accounting
//! (paper §3: `submit_task`, `get_result`, `get_status`), plus cancellation.
//!
//! One mutex guards the task table; one condition variable wakes the scheduler (work queued)
//! and result waiters (task finished). Interfaces report completions through a callback that
//! takes the same lock. Several masters may live in one program: each has its own state,
//! scheduler thread and interface.
//!
//! This module never knows which platform it drives, and never touches files except through
//! the optional journal, the optional task-log directory ([`crate::task_logs`]) and, for
//! [`crate::StdoutMode::File`], the task's results directory.

mod outcome;
mod scheduler;

pub use outcome::{parse_stdout, parse_stdout_limited, MwError, TaskOutput, TaskTimes};
pub use scheduler::STDOUT_FILE;
use scheduler::{
    completion, decode, finish_durably, on_complete, prepare, run_scheduler, take_outcome,
    take_result,
};

use crate::interface::{HandleSink, Interface};
use crate::journal::Journal;
use crate::task::{TaskId, TaskSpec, ToProgram};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

pub use crate::task::TaskState;

/// Settings of a master.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Extra attempts after a failure (default 0).
    pub retries: u32,
    /// Job name (in bundles, Condor batch names, BOINC workunit names).
    pub job_name: String,
    /// Where declared output files go (`<dir>/task-<N>/`); none: not kept.
    pub results_dir: Option<PathBuf>,
    /// Where interfaces stage bundles; default: a temp dir owned by the master.
    pub staging_dir: Option<PathBuf>,
    /// Where each attempt's stdout and stderr are kept (see [`crate::task_logs`]); none:
    /// not kept.
    pub logs_dir: Option<PathBuf>,
    /// Delay before the first retry of a failed task; each further retry of the same task
    /// waits twice as long as the one before, up to [`RETRY_BACKOFF_MAX`]. Zero (the
    /// default): retry at once.
    pub retry_backoff: Duration,
    /// Which failures are retried; empty (the default): every failure except a cancel.
    pub retry_on: Vec<RetryOn>,
    /// Stop ([`Master::stop`]) once this many tasks failed for good under this master
    /// (after their retries; cancelled ones do not count), as GNU parallel's `--halt
    /// soon,fail=N`: nothing more is dispatched, what runs is stopped (or left running on a
    /// remote backend) for `resume`. None (the default): never.
    pub max_failures: Option<u64>,
}

/// The longest wait between two attempts of a task.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// A kind of failure worth another attempt (see [`MasterOptions::retry_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The program exited with this status.
    ExitCode(i32),
    /// Any non-zero exit status (and a streaming program's `{"error": ...}` answer).
    AnyExit,
    /// The program was killed by a signal (not by mw).
    Signal,
    /// The task ran past its timeout.
    Timeout,
    /// The platform could not run it (could not start, lost worker, interface error).
    Interface,
    /// It exited 0 but its stdout or declared outputs were unusable, or it broke the output
    /// contract (a streaming program's answer that is not JSON or too long, or none).
    BadOutput,
}

impl RetryOn {
    /// True when `error` is a failure of this kind.
    pub fn matches(self, error: &MwError) -> bool {
        use mw_bundle::ExitInfo;
        match (self, error) {
            (RetryOn::ExitCode(c), MwError::TaskFailed { exit, .. }) => {
                matches!(exit, ExitInfo::Exited { code } if *code == c)
            }
            // A streaming program's `{"error": ...}` answer is its way of exiting non-zero.
            (RetryOn::AnyExit, MwError::TaskFailed { exit, .. }) => {
                matches!(
                    exit,
                    ExitInfo::Exited { .. } | ExitInfo::ErrorReported { .. }
                )
            }
            (RetryOn::Signal, MwError::TaskFailed { exit, .. }) => {
                matches!(exit, ExitInfo::Signaled { .. })
            }
            (RetryOn::Timeout, MwError::TaskFailed { exit, .. }) => {
                matches!(exit, ExitInfo::TimedOut { .. })
            }
            (RetryOn::Interface, MwError::TaskFailed { exit, .. }) => {
                matches!(exit, ExitInfo::SpawnFailed { .. })
            }
            (RetryOn::Interface, MwError::Interface { .. }) => true,
            (RetryOn::BadOutput, MwError::BadOutput { .. } | MwError::MissingOutput { .. }) => true,
            // A broken output contract: a streaming program's answer that is not JSON or too
            // long, an end without answering, or a stream past its limit.
            (RetryOn::BadOutput, MwError::TaskFailed { exit, .. }) => {
                matches!(exit, ExitInfo::StreamBroken { .. })
            }
            _ => false,
        }
    }
}

impl MasterOptions {
    /// Whether `error` (of an attempt that was not cancelled) is worth another attempt
    /// under [`retry_on`](Self::retry_on) (retries left are checked separately).
    pub fn retryable(&self, error: &MwError) -> bool {
        if matches!(error, MwError::Cancelled(_)) {
            return false;
        }
        self.retry_on.is_empty() || self.retry_on.iter().any(|r| r.matches(error))
    }

    /// The wait before attempt `next_attempt` (2 for the first retry).
    pub fn backoff_before(&self, next_attempt: u32) -> Duration {
        if self.retry_backoff.is_zero() {
            return Duration::ZERO;
        }
        let doublings = next_attempt.saturating_sub(2).min(20);
        self.retry_backoff
            .saturating_mul(1u32 << doublings)
            .min(RETRY_BACKOFF_MAX)
    }
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            retries: 0,
            job_name: "mw".into(),
            results_dir: None,
            staging_dir: None,
            logs_dir: None,
            retry_backoff: Duration::ZERO,
            retry_on: Vec::new(),
            max_failures: None,
        }
    }
}

/// What [`Master::next_outcome`] found.
// Few of these exist at a time (one per finished task, moved out at once): boxing the
// big variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum NextOutcome {
    /// A task finished (successfully or not).
    Finished(TaskId, Result<TaskOutput, MwError>, TaskTimes),
    /// Nothing finished within the timeout.
    Pending,
    /// Every task's outcome has been collected.
    AllCollected,
    /// The master stopped ([`Master::stop`], or its journal failed) and every durable
    /// result was collected: the error says why. Unfinished tasks are left for `resume`.
    Stopped(MwError),
}

/// Per-state counts plus the interface's own status.
#[derive(Debug, Clone, Default)]
pub struct MasterStatus {
    /// Tasks queued.
    pub queued: usize,
    /// Tasks running.
    pub running: usize,
    /// Tasks done.
    pub done: usize,
    /// Tasks failed.
    pub failed: usize,
    /// Tasks cancelled.
    pub cancelled: usize,
    /// Finished results not yet collected.
    pub uncollected: usize,
    /// Queued tasks waiting out a retry backoff (counted in `queued` too).
    pub backing_off: usize,
    /// Attempts that failed and were retried so far (by this master).
    pub retried: usize,
    /// Interface name.
    pub interface: String,
    /// Interface key/values.
    pub interface_status: BTreeMap<String, String>,
}

impl MasterStatus {
    /// All tasks submitted.
    pub fn total(&self) -> usize {
        self.queued + self.running + self.done + self.failed + self.cancelled
    }
}

/// A map keyed by task index.
pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<crate::task::IdHasher>>;

/// What the master keeps of every task for the whole run: a few bytes (8), whatever the
/// task's spec, input or result. Everything larger lives in [`Live`] only while the task
/// needs it (queued with a caller-supplied spec, running, or finished and not collected).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskRecord {
    pub(crate) state: TaskState,
    pub(crate) collected: bool,
    pub(crate) cancel_requested: bool,
    /// Final and (with a journal) committed: may be handed out.
    pub(crate) durable: bool,
    pub(crate) attempts: u32,
}

impl TaskRecord {
    pub(crate) fn new(state: TaskState, attempts: u32) -> Self {
        TaskRecord {
            state,
            collected: false,
            cancel_requested: false,
            durable: false,
            attempts,
        }
    }
}

/// The part of a task kept from its dispatch until its outcome is collected.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Times (the submission time lives in the task's [`Batch`]).
    pub(crate) times: TaskTimes,
    pub(crate) outcome: Option<Box<Result<TaskOutput, MwError>>>,
}

/// Builds a task's spec from its index and input when the task is dispatched, so a master of
/// millions of tasks keeps no spec in memory ([`Master::submit_inputs`],
/// [`Master::resume_with_source`]). Any `Fn(u64, Value) -> Result<TaskSpec, String>` is one.
pub trait SpecSource: Send + Sync + 'static {
    /// The spec of task `index` whose input is `input`; an error fails the task.
    fn build(&self, index: u64, input: serde_json::Value) -> Result<TaskSpec, String>;

    /// The input of task `index` when the source can make it without reading the journal
    /// (e.g. a sweep computes it from the index); `None` (the default): the master reads it
    /// back from the journal. It must equal the input the task was submitted with.
    fn input(&self, _index: u64) -> Option<serde_json::Value> {
        None
    }

    /// Whether [`input`](Self::input) makes the input of every task this source is used
    /// with (`false`, the default: not promised). A master without a journal then keeps no
    /// inputs in memory (else it keeps each until its task is final: a million small
    /// objects cost over 500 MB).
    fn makes_every_input(&self) -> bool {
        false
    }
}

impl<F> SpecSource for F
where
    F: Fn(u64, serde_json::Value) -> Result<TaskSpec, String> + Send + Sync + 'static,
{
    fn build(&self, index: u64, input: serde_json::Value) -> Result<TaskSpec, String> {
        self(index, input)
    }
}

/// Tasks submitted together, from `first` up to the next batch: when, and from which spec
/// source (none: each task's spec is in its [`Live`]).
#[derive(Clone)]
pub(crate) struct Batch {
    pub(crate) first: u64,
    pub(crate) at: Option<SystemTime>,
    pub(crate) source: Option<Arc<dyn SpecSource>>,
}

/// Whether the source of the batch just opened makes every input itself.
fn batch_source_makes_inputs(st: &State) -> bool {
    st.batches
        .last()
        .and_then(|b| b.source.as_ref())
        .is_some_and(|s| s.makes_every_input())
}

/// How to get a task's spec, found under the lock and carried out outside it.
pub(crate) enum SpecPlan {
    Ready(TaskSpec),
    Build {
        source: Arc<dyn SpecSource>,
        input: Option<serde_json::Value>,
    },
    Missing,
}

struct State {
    tasks: Vec<TaskRecord>,
    live: IdMap<Live>,
    /// Specs the caller handed over ([`Master::submit_many`]), kept until the task is final.
    specs: IdMap<TaskSpec>,
    /// Done tasks' JSON results as their (checked) text, parsed into the outcome's value
    /// only when collected: while results wait to be collected, each costs its text rather
    /// than its tree (for a small object, a 600-byte map node).
    raw: IdMap<Box<str>>,
    /// Inputs of tasks built by a [`SpecSource`] on a master without a journal, kept until
    /// the task is final (with a journal they are read back from it on dispatch; a source
    /// that [makes every input](SpecSource::makes_every_input) makes them again).
    inputs: IdMap<serde_json::Value>,
    batches: Vec<Batch>,
    /// Attempts made before this master took a task over (resume, `mw retry`), for the
    /// unfinished tasks that had any: the retry budget counts from here. A map, not a field
    /// of [`TaskRecord`], which stays 8 bytes.
    attempts_before: IdMap<u32>,
    queue: VecDeque<TaskId>,
    /// Queued tasks waiting out a retry backoff, with when they may run again.
    delayed: Vec<(std::time::Instant, TaskId)>,
    retried: usize,
    finished: VecDeque<TaskId>,
    counts: [usize; 5],
    shutting_down: bool,
    /// Why the master stopped ([`Master::stop`], or a journal that cannot commit): nothing
    /// more is dispatched, and tasks the stop interrupts are queued again, for `resume`.
    stopped: Option<String>,
    /// Tasks that failed for good under this master (see [`MasterOptions::max_failures`]).
    failed_here: u64,
    /// Whether [`MasterOptions::max_failures`] stopped the master.
    halted: bool,
    /// Final tasks whose journal row is committed (all final tasks without a journal).
    durable: usize,
    /// Tasks whose outcome was handed out (or, resumed, was by the previous master).
    collected: usize,
    /// Tasks a submission is recording in the journal (not in `tasks` yet), plus one per
    /// [`MoreToCome`]: pending for whoever waits for results meanwhile.
    submitting: usize,
}

impl State {
    fn set_state(&mut self, id: TaskId, to: TaskState) {
        let rec = &mut self.tasks[id.0 as usize];
        self.counts[rec.state as usize] -= 1;
        self.counts[to as usize] += 1;
        rec.state = to;
    }

    /// Tasks in a final state (done, failed, cancelled).
    pub(crate) fn finals(&self) -> usize {
        self.counts[TaskState::Done as usize]
            + self.counts[TaskState::Failed as usize]
            + self.counts[TaskState::Cancelled as usize]
    }

    /// The task's live part, created when missing.
    pub(crate) fn live(&mut self, id: TaskId) -> &mut Live {
        self.live.entry(id.0).or_default()
    }

    /// The batch task `id` was submitted in.
    fn batch(&self, id: TaskId) -> Option<&Batch> {
        let i = self.batches.partition_point(|b| b.first <= id.0);
        i.checked_sub(1).and_then(|i| self.batches.get(i))
    }

    /// The task's times so far.
    pub(crate) fn times(&self, id: TaskId) -> TaskTimes {
        let live = self.live.get(&id.0).map(|l| l.times.clone());
        self.times_from(id, live)
    }

    /// The task's times, from its live part's times (if it has one).
    pub(crate) fn times_from(&self, id: TaskId, live: Option<TaskTimes>) -> TaskTimes {
        let mut t = live.unwrap_or_default();
        t.submitted = self.batch(id).and_then(|b| b.at);
        if let Some(rec) = self.tasks.get(id.0 as usize) {
            t.attempts = rec.attempts;
        }
        t
    }

    /// How to get task `id`'s spec (cheap: the building happens outside the lock).
    pub(crate) fn spec_plan(&self, id: TaskId) -> SpecPlan {
        if let Some(spec) = self.specs.get(&id.0) {
            return SpecPlan::Ready(spec.clone());
        }
        match self.batch(id).and_then(|b| b.source.clone()) {
            Some(source) => SpecPlan::Build {
                source,
                input: self.inputs.get(&id.0).cloned(),
            },
            None => SpecPlan::Missing,
        }
    }

    /// Attempts of task `id` this master made (its retry budget counts these).
    pub(crate) fn attempts_here(&self, id: TaskId) -> u32 {
        let before = self.attempts_before.get(&id.0).copied().unwrap_or(0);
        self.tasks[id.0 as usize].attempts.saturating_sub(before)
    }

    /// Drops what a final task no longer needs (its spec, input and earlier attempts).
    fn release(&mut self, id: TaskId) {
        self.specs.remove(&id.0);
        self.inputs.remove(&id.0);
        self.attempts_before.remove(&id.0);
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    /// Held by a submission from choosing its first index until its tasks are in `state`:
    /// the journal records them without the state's lock (which the scheduler and every
    /// completion need meanwhile), and no other submission takes the same indices.
    submitting: Mutex<()>,
    interface: Arc<dyn Interface>,
    options: MasterOptions,
    staging: PathBuf,
    _staging_tmp: Option<tempfile::TempDir>,
    journal: Option<Arc<Journal>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::guard::lock(&self.state)
    }

    fn submitting(&self) -> MutexGuard<'_, ()> {
        crate::guard::lock(&self.submitting)
    }

    /// Counts `n` tasks as being submitted; returns the first one's index. The caller holds
    /// [`submitting`](Self::submitting) until the tasks are in the state (then subtracts
    /// `n` from `State::submitting` under the same lock that adds them).
    fn begin_submit(&self, n: usize) -> u64 {
        let mut st = self.lock();
        st.submitting += n;
        st.tasks.len() as u64
    }

    /// A failed submission's tasks are no longer pending; waiters look again.
    fn end_submit(&self, n: usize, failed: bool) {
        if failed {
            self.lock().submitting -= n;
            self.cond.notify_all();
        }
    }

    /// Carries out a [`SpecPlan`] (outside the lock: it may read the journal and render
    /// templates).
    pub(crate) fn realize(&self, id: TaskId, plan: SpecPlan) -> Result<TaskSpec, String> {
        match plan {
            SpecPlan::Ready(spec) => Ok(spec),
            SpecPlan::Build { source, input } => {
                let input = match (input.or_else(|| source.input(id.0)), &self.journal) {
                    (Some(input), _) => input,
                    (None, Some(j)) => j.read_input(id.0).map_err(|e| e.to_string())?,
                    (None, None) => return Err(format!("{id}: its input is not known")),
                };
                source
                    .build(id.0, input)
                    .map_err(|e| format!("cannot build the task: {e}"))
            }
            SpecPlan::Missing => Err(format!("{id}: its spec is not known to this master")),
        }
    }
}

/// What a resumed master starts from (see `durable.rs`).
#[derive(Default)]
pub(crate) struct Restored {
    pub(crate) tasks: Vec<TaskRecord>,
    pub(crate) batches: Vec<Batch>,
    pub(crate) specs: IdMap<TaskSpec>,
    pub(crate) attempts_before: IdMap<u32>,
    /// Queued tasks a pending `mw cancel` names: cancelled before anything is dispatched.
    pub(crate) cancel_queued: Vec<u64>,
}

/// More tasks to come ([`Master::expect_more`]); dropping it ends that.
pub struct MoreToCome<'a> {
    inner: &'a Inner,
}

impl std::fmt::Debug for MoreToCome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoreToCome")
    }
}

impl Drop for MoreToCome<'_> {
    fn drop(&mut self) {
        self.inner.lock().submitting -= 1;
        self.inner.cond.notify_all();
    }
}

/// The master. Dropping it cancels what still runs and stops its scheduler.
pub struct Master {
    inner: Arc<Inner>,
    scheduler: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Master({})", self.inner.interface.name())
    }
}

struct JournalHandles(Arc<Journal>, std::sync::Weak<Inner>);

impl HandleSink for JournalHandles {
    fn record_handle(&self, task: TaskId, handle: &str) {
        self.0.record_handle(task, handle);
    }

    fn flush(&self) -> bool {
        self.0.flush();
        self.0.failure().is_none()
    }

    fn cannot_store(&self, why: &str) -> bool {
        if let Some(inner) = self.1.upgrade() {
            stop_inner(
                &inner,
                format!("{why}; stopped: `mw resume` goes on once results can be stored here"),
            );
        }
        true
    }
}

impl Master {
    /// A master over `interface` with default options and no journal.
    pub fn new(interface: impl Interface) -> Result<Master, MwError> {
        Self::with_options(Arc::new(interface), MasterOptions::default())
    }

    /// A master with options and no journal.
    pub fn with_options(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
    ) -> Result<Master, MwError> {
        Self::build(interface, options, None, Restored::default())
    }

    /// A master over a journal the caller created ([`Journal::create`]) with no tasks yet:
    /// every task submitted is journaled, and results are durable before they are handed out.
    pub fn with_created_journal(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        journal: Arc<Journal>,
    ) -> Result<Master, MwError> {
        Self::build(interface, options, Some(journal), Restored::default())
    }

    pub(crate) fn build(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        journal: Option<Arc<Journal>>,
        restored: Restored,
    ) -> Result<Master, MwError> {
        let (staging, tmp) = match &options.staging_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| {
                    MwError::Journal(format!("creating staging dir {}: {e}", d.display()))
                })?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("mw-staging-")
                    .tempdir()
                    .map_err(|e| MwError::Journal(format!("creating a staging dir: {e}")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut state = State {
            tasks: Vec::with_capacity(restored.tasks.len()),
            live: IdMap::default(),
            specs: restored.specs,
            raw: IdMap::default(),
            inputs: IdMap::default(),
            batches: restored.batches,
            attempts_before: restored.attempts_before,
            queue: VecDeque::new(),
            delayed: Vec::new(),
            retried: 0,
            finished: VecDeque::new(),
            counts: [0; 5],
            shutting_down: false,
            stopped: None,
            failed_here: 0,
            halted: false,
            durable: 0,
            collected: 0,
            submitting: 0,
        };
        let cancel_at_start = restored.cancel_queued;
        for rec in restored.tasks {
            let id = TaskId(state.tasks.len() as u64);
            state.counts[rec.state as usize] += 1;
            if rec.state.is_final() {
                state.durable += 1;
            }
            if rec.collected {
                state.collected += 1;
            }
            match rec.state {
                TaskState::Queued => state.queue.push_back(id),
                s if s.is_final() && !rec.collected => state.finished.push_back(id),
                _ => {}
            }
            state.tasks.push(rec);
        }
        let inner = Arc::new_cyclic(|weak| {
            if let Some(j) = &journal {
                interface.set_handle_sink(Arc::new(JournalHandles(j.clone(), weak.clone())));
            }
            Inner {
                state: Mutex::new(state),
                cond: Condvar::new(),
                submitting: Mutex::new(()),
                interface,
                options,
                staging,
                _staging_tmp: tmp,
                journal,
            }
        });
        if let Some(j) = &inner.journal {
            // A journal that cannot commit any more stops the master: what it cannot store
            // it must not report.
            let weak = Arc::downgrade(&inner);
            j.on_durable(move |tasks| {
                if let Some(inner) = weak.upgrade() {
                    mark_durable(&mut inner.lock(), tasks);
                    inner.cond.notify_all();
                }
            });
            let weak = Arc::downgrade(&inner);
            j.on_failure(move |msg| {
                if let Some(inner) = weak.upgrade() {
                    stop_inner(&inner, format!("the journal failed: {msg}"));
                }
            });
        }
        if !cancel_at_start.is_empty() {
            let mut st = inner.lock();
            let set: std::collections::HashSet<u64> = cancel_at_start.iter().copied().collect();
            st.queue.retain(|t| !set.contains(&t.0));
            cancel_queued(&inner, &mut st, cancel_at_start);
        }
        let sched_inner = inner.clone();
        let scheduler = std::thread::Builder::new()
            .name("mw-scheduler".into())
            .spawn(move || run_scheduler(sched_inner))
            .map_err(|e| MwError::Journal(format!("cannot start the scheduler thread: {e}")))?;
        Ok(Master {
            inner,
            scheduler: Some(scheduler),
        })
    }

    /// Submits a task; returns at once with its id.
    pub fn submit_task(&self, spec: TaskSpec) -> Result<TaskId, MwError> {
        Ok(self.submit_many(vec![spec])?[0])
    }

    /// Submits `program` with `input` (anything serialisable as JSON); returns at once with
    /// the task's id. `program` is a `&Program` or an `Arc<Program>` ([`ToProgram`]).
    ///
    /// ```
    /// use mw::{Master, Multicore, Program};
    /// let master = Master::new(Multicore::new(2))?;
    /// // `cat` echoes its input: any program honouring the task contract will do.
    /// let cat = Program::new("/bin/cat")?;
    /// let t = master.submit(&cat, &[1, 2, 3])?;
    /// let (_, echoed): (_, Vec<u32>) = master.get_result(Some(t))?;
    /// assert_eq!(echoed, [1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit<T: Serialize + ?Sized>(
        &self,
        program: impl ToProgram,
        input: &T,
    ) -> Result<TaskId, MwError> {
        let input = serde_json::to_value(input).map_err(|e| MwError::BadInput(e.to_string()))?;
        self.submit_task(TaskSpec::new(program.to_program(), input))
    }

    /// Runs `program` once per input and returns the results in input order (like Python's
    /// `Executor.map`), each decoded as `R`. The first failure, in input order, is returned
    /// as the error, once the tasks still unfinished are cancelled and over (their outcomes
    /// taken: a later `get_result(None)` does not meet them).
    ///
    /// ```
    /// use mw::{Master, Multicore, Program};
    /// let master = Master::new(Multicore::new(2))?;
    /// let cat = Program::new("/bin/cat")?;
    /// let squares: Vec<u64> = master.map(&cat, (1..=5u64).map(|i| i * i))?;
    /// assert_eq!(squares, [1, 4, 9, 16, 25]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<T: Serialize, R: DeserializeOwned>(
        &self,
        program: impl ToProgram,
        inputs: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>, MwError> {
        let program = program.to_program();
        let specs = inputs
            .into_iter()
            .map(|i| {
                serde_json::to_value(&i)
                    .map(|v| TaskSpec::new(program.clone(), v))
                    .map_err(|e| MwError::BadInput(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self.submit_many(specs)?;
        let mut out = Vec::with_capacity(ids.len());
        for (k, id) in ids.iter().enumerate() {
            match self.get_result::<R>(Some(*id)) {
                Ok((_, r)) => out.push(r),
                Err(e) => {
                    for later in &ids[k + 1..] {
                        let _ = self.cancel(*later);
                    }
                    // Their outcomes are this call's to take: left behind, they would be what
                    // the caller's next `get_result(None)` returns.
                    for later in &ids[k + 1..] {
                        let _ = self.get_output(Some(*later));
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Starts a batch of `n` tasks submitted now, from the next free index: first stored in
    /// the journal, if any, by `record` (given the first index and the submit time) without
    /// holding the state lock, then noted with where its specs come from (`source`; none:
    /// stored in `specs`). The caller holds [`Inner::submitting`]; returns the first index
    /// and the state lock, under which the caller adds the `n` tasks.
    fn open_batch(
        &self,
        n: usize,
        source: Option<Arc<dyn SpecSource>>,
        record: impl FnOnce(&Journal, u64, f64) -> Result<(), crate::journal::JournalError>,
    ) -> Result<(u64, MutexGuard<'_, State>), MwError> {
        let first = self.inner.begin_submit(n);
        let now = SystemTime::now();
        if let Some(j) = &self.inner.journal {
            let at = scheduler::unix_secs(Some(now)).unwrap_or(0.0);
            let recorded = record(j, first, at);
            self.inner.end_submit(n, recorded.is_err());
            recorded?;
        }
        let mut st = self.inner.lock();
        st.submitting -= n;
        st.batches.push(Batch {
            first,
            at: Some(now),
            source,
        });
        Ok((first, st))
    }

    /// Submits many tasks at once (one journal transaction). A stopped master takes none
    /// ([`MwError::Stopped`]): it would never run them.
    pub fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, MwError> {
        if let Some(why) = self.stopped() {
            return Err(MwError::Stopped(why));
        }
        let _submitting = self.inner.submitting();
        let (_, mut st) = self.open_batch(specs.len(), None, |j, first, at| {
            j.record_submitted_at(first, &specs, at)
        })?;
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = TaskId(st.tasks.len() as u64);
            st.tasks.push(TaskRecord::new(TaskState::Queued, 0));
            st.specs.insert(id.0, spec);
            st.counts[TaskState::Queued as usize] += 1;
            st.queue.push_back(id);
            ids.push(id);
        }
        drop(st);
        self.inner.cond.notify_all();
        Ok(ids)
    }

    /// Says that more tasks are still to be submitted (by another thread, say) until the
    /// returned guard is dropped: meanwhile no waiter ([`next_outcome`](Self::next_outcome),
    /// [`wait_all`](Self::wait_all), [`get_output`](Self::get_output)) concludes that
    /// nothing is pending.
    pub fn expect_more(&self) -> MoreToCome<'_> {
        self.inner.lock().submitting += 1;
        MoreToCome { inner: &self.inner }
    }

    /// Like [`submit_inputs`](Self::submit_inputs), with each input given as its JSON text
    /// (`serde_json::value::to_raw_value`): a journaled master stores the texts as they are
    /// (a chunk of them costs a few bytes per input, where parsed objects cost hundreds),
    /// one without a journal parses them.
    pub fn submit_encoded_inputs(
        &self,
        inputs: Vec<Box<serde_json::value::RawValue>>,
        source: Arc<dyn SpecSource>,
    ) -> Result<std::ops::Range<u64>, MwError> {
        if self.inner.journal.is_none() {
            let values = inputs
                .iter()
                .map(|raw| serde_json::from_str(raw.get()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MwError::BadInput(e.to_string()))?;
            return self.submit_inputs(values, source);
        }
        let _submitting = self.inner.submitting();
        let n = inputs.len();
        let (first, mut st) = self.open_batch(n, Some(source), |j, first, at| {
            j.record_encoded_at(first, inputs, at)
        })?;
        for _ in 0..n {
            let id = TaskId(st.tasks.len() as u64);
            st.tasks.push(TaskRecord::new(TaskState::Queued, 0));
            st.queue.push_back(id);
        }
        st.counts[TaskState::Queued as usize] += n;
        let end = st.tasks.len() as u64;
        drop(st);
        self.inner.cond.notify_all();
        Ok(first..end)
    }

    /// Submits one task per input at once (one journal transaction), whose specs
    /// `source` builds when each task is dispatched (again for a retry). The master keeps a
    /// few bytes per task: with a journal the inputs are stored there and read back on
    /// dispatch; without one they are kept until their task is final. Returns the new tasks'
    /// indices. For millions of tasks, call it in chunks (e.g. 10,000 inputs each) from a lazy
    /// iterator: memory then stays proportional to a chunk and the tasks in flight.
    pub fn submit_inputs(
        &self,
        inputs: Vec<serde_json::Value>,
        source: Arc<dyn SpecSource>,
    ) -> Result<std::ops::Range<u64>, MwError> {
        let _submitting = self.inner.submitting();
        let (first, mut st) = self.open_batch(inputs.len(), Some(source), |j, first, at| {
            j.record_inputs_at(first, &inputs, at)
        })?;
        // Where a task's input comes from on dispatch: the journal, the source, else memory.
        let keep = self.inner.journal.is_none() && !batch_source_makes_inputs(&st);
        for input in inputs {
            let id = TaskId(st.tasks.len() as u64);
            st.tasks.push(TaskRecord::new(TaskState::Queued, 0));
            if keep {
                st.inputs.insert(id.0, input);
            }
            st.counts[TaskState::Queued as usize] += 1;
            st.queue.push_back(id);
        }
        let end = st.tasks.len() as u64;
        drop(st);
        self.inner.cond.notify_all();
        Ok(first..end)
    }

    /// Waits for a result: of `which` task, or of the next task to finish (`None`).
    /// The result JSON is decoded as `T`. A failed task arrives as `Err` naming it.
    pub fn get_result<T: DeserializeOwned>(
        &self,
        which: Option<TaskId>,
    ) -> Result<(TaskId, T), MwError> {
        let out = self.get_output(which)?;
        decode(out)
    }

    /// Like [`get_result`](Self::get_result) but returns the whole record.
    pub fn get_output(&self, which: Option<TaskId>) -> Result<TaskOutput, MwError> {
        let mut st = self.inner.lock();
        loop {
            if let Some(r) = take_result(&mut st, which)? {
                return r;
            }
            st = crate::guard::wait(&self.inner.cond, st);
        }
    }

    /// Like [`get_output`](Self::get_output) but gives up after `timeout` with `Ok(None)`.
    pub fn get_output_timeout(
        &self,
        which: Option<TaskId>,
        timeout: Duration,
    ) -> Result<Option<TaskOutput>, MwError> {
        // No deadline when `timeout` reaches past what an `Instant` holds ("for ever").
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut st = self.inner.lock();
        loop {
            if let Some(r) = take_result(&mut st, which)? {
                return r.map(Some);
            }
            st = match self.wait_until(st, deadline) {
                Some(st) => st,
                None => return Ok(None),
            };
        }
    }

    /// Waits for a state change until `deadline` (none: for as long as it takes); `None`
    /// once the deadline has passed.
    fn wait_until<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        deadline: Option<std::time::Instant>,
    ) -> Option<MutexGuard<'a, State>> {
        let Some(deadline) = deadline else {
            return Some(crate::guard::wait(&self.inner.cond, st));
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        Some(crate::guard::wait_timeout(&self.inner.cond, st, left))
    }

    /// Waits up to `timeout` for the next finished task and returns its outcome whatever it
    /// is (for drivers such as the CLI that report failures rather than stop at them).
    pub fn next_outcome(&self, timeout: Duration) -> NextOutcome {
        // No deadline when `timeout` reaches past what an `Instant` holds ("for ever").
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut st = self.inner.lock();
        loop {
            while let Some(id) = st.finished.pop_front() {
                if !st.tasks[id.0 as usize].collected {
                    st.tasks[id.0 as usize].collected = true;
                    let (outcome, times) = take_outcome(&mut st, id);
                    return NextOutcome::Finished(id, outcome, times);
                }
            }
            if st.tasks.len() == st.durable && st.submitting == 0 {
                return NextOutcome::AllCollected;
            }
            if let Some(reason) = &st.stopped {
                if self.stop_settled(&st) {
                    return NextOutcome::Stopped(MwError::Stopped(reason.clone()));
                }
            }
            st = match self.wait_until(st, deadline) {
                Some(st) => st,
                None => return NextOutcome::Pending,
            };
        }
    }

    /// Non-blocking [`get_result`](Self::get_result): `Ok(None)` when not finished yet.
    pub fn try_get_result<T: DeserializeOwned>(
        &self,
        which: Option<TaskId>,
    ) -> Result<Option<(TaskId, T)>, MwError> {
        match self.try_get_output(which)? {
            Some(out) => decode(out).map(Some),
            None => Ok(None),
        }
    }

    /// Non-blocking [`get_output`](Self::get_output).
    pub fn try_get_output(&self, which: Option<TaskId>) -> Result<Option<TaskOutput>, MwError> {
        let mut st = self.inner.lock();
        match take_result(&mut st, which)? {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    /// Counts per state and the interface's status.
    pub fn status(&self) -> MasterStatus {
        let mut status = self.counts();
        status.interface = self.inner.interface.name().to_string();
        status.interface_status = self.inner.interface.status();
        status
    }

    /// Counts per state only: cheap (no call into the interface), for progress displays.
    pub fn counts(&self) -> MasterStatus {
        let st = self.inner.lock();
        // Counted, not found by a scan: this is called after every result.
        let uncollected = st.durable.saturating_sub(st.collected);
        MasterStatus {
            queued: st.counts[TaskState::Queued as usize],
            running: st.counts[TaskState::Running as usize],
            done: st.counts[TaskState::Done as usize],
            failed: st.counts[TaskState::Failed as usize],
            cancelled: st.counts[TaskState::Cancelled as usize],
            uncollected,
            backing_off: st.delayed.len(),
            retried: st.retried,
            ..MasterStatus::default()
        }
    }

    /// The state of one task.
    pub fn task_state(&self, task: TaskId) -> Option<TaskState> {
        self.inner
            .lock()
            .tasks
            .get(task.0 as usize)
            .map(|r| r.state)
    }

    /// Cancels a task: a queued task is dropped from the queue, a running one is stopped
    /// by its interface. Its `get_result` then returns [`MwError::Cancelled`]. Cancelling a
    /// finished task does nothing.
    pub fn cancel(&self, task: TaskId) -> Result<(), MwError> {
        let mut st = self.inner.lock();
        let Some(rec) = st.tasks.get_mut(task.0 as usize) else {
            return Err(MwError::UnknownTask(task));
        };
        match rec.state {
            TaskState::Queued => {
                rec.cancel_requested = true;
                let attempts = rec.attempts;
                let live = st.live(task);
                live.outcome = Some(Box::new(Err(MwError::Cancelled(task))));
                live.times.finished = Some(SystemTime::now());
                live.times.attempts = attempts;
                st.queue.retain(|t| *t != task);
                st.delayed.retain(|(_, t)| *t != task);
                st.set_state(task, TaskState::Cancelled);
                st.release(task);
                finish_durably(&self.inner, st, task, None);
            }
            TaskState::Running => {
                rec.cancel_requested = true;
                drop(st);
                self.inner.interface.cancel(task);
            }
            _ => {}
        }
        Ok(())
    }

    /// Cancels every task not finished yet, in one pass over the task table (O(tasks),
    /// whatever the number queued).
    pub fn cancel_all(&self) {
        let running: Vec<TaskId> = {
            let mut st = self.inner.lock();
            st.queue.clear();
            // Tasks waiting out a retry backoff are queued too: cancelled below.
            st.delayed.clear();
            let mut running = Vec::new();
            let mut cancelled = Vec::new();
            for i in 0..st.tasks.len() {
                let id = TaskId(i as u64);
                match st.tasks[i].state {
                    TaskState::Queued => cancelled.push(id.0),
                    TaskState::Running => {
                        st.tasks[i].cancel_requested = true;
                        running.push(id);
                    }
                    _ => {}
                }
            }
            cancel_queued(&self.inner, &mut st, cancelled);
            running
        };
        self.inner.cond.notify_all();
        for id in running {
            self.inner.interface.cancel(id);
        }
    }

    /// Blocks until no task is queued or running (or the master stopped and what it
    /// interrupted has settled).
    pub fn wait_all(&self) {
        let mut st = self.inner.lock();
        while (st.durable < st.tasks.len() || st.submitting > 0)
            && !(st.stopped.is_some() && self.stop_settled(&st))
        {
            st = crate::guard::wait(&self.inner.cond, st);
        }
    }

    /// Stops the master for good: nothing more is dispatched; running local tasks are
    /// stopped (their process groups killed) and queued again in the journal, so `resume`
    /// runs them; tasks on a backend that outlives the master (HTCondor, BOINC) are left
    /// running for `resume` to re-attach when the master is journaled. Results that were
    /// already durable can still be collected; then [`next_outcome`](Self::next_outcome)
    /// returns [`NextOutcome::Stopped`]. Used for Ctrl-C and a broken output pipe.
    pub fn stop(&self, reason: &str) {
        stop_inner(&self.inner, reason.to_string());
    }

    /// Why the master stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.inner.lock().stopped.clone()
    }

    /// Whether [`MasterOptions::max_failures`] stopped the master (its failures, not a
    /// [`stop`](Self::stop) call or a journal that cannot commit).
    pub fn halted(&self) -> bool {
        self.inner.lock().halted
    }

    /// After a stop: true once no interrupted task is still to report back (immediately
    /// for a journaled remote backend, whose tasks are left running) and every outcome
    /// already final is committed, so it is handed out before the stop is (unless the
    /// journal cannot commit any more).
    fn stop_settled(&self, st: &State) -> bool {
        let reported = st.counts[TaskState::Running as usize] == 0 || self.detaches();
        let committed = st.durable >= st.finals()
            || self
                .inner
                .journal
                .as_ref()
                .is_none_or(|j| j.failure().is_some());
        reported && committed
    }

    /// Whether running tasks outlive this master (journaled Condor/BOINC).
    fn detaches(&self) -> bool {
        self.inner.journal.is_some() && self.inner.interface.keeps_running_without_master()
    }

    /// The interface's name.
    pub fn interface_name(&self) -> &'static str {
        self.inner.interface.name()
    }

    /// The journal, when this master has one.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.journal.as_ref()
    }

    /// Re-attaches tasks that were in flight on a remote backend when the previous master
    /// died (called by `resume`). Tasks the interface cannot re-attach are queued again.
    pub(crate) fn reattach(&self, tasks: Vec<(TaskId, String)>) {
        for (id, handle) in tasks {
            let (plan, attempt) = {
                let st = self.inner.lock();
                (st.spec_plan(id), st.tasks[id.0 as usize].attempts)
            };
            let prepared = match self.inner.realize(id, plan) {
                Ok(spec) => Arc::new(prepare(&self.inner, id, attempt, spec)),
                Err(e) => {
                    on_complete(
                        &self.inner,
                        id,
                        Err(crate::task::InterfaceError::new(e)),
                        None,
                    );
                    continue;
                }
            };
            let done = completion(&self.inner, &prepared);
            if let Some(done) = self.inner.interface.reattach(prepared, &handle, done) {
                // Could not re-attach: queue the task again.
                done.abandon();
                let mut st = self.inner.lock();
                st.set_state(id, TaskState::Queued);
                st.queue.push_front(id);
                drop(st);
                self.inner.cond.notify_all();
            }
        }
        self.inner.interface.reattach_done();
    }

    /// Ids of every task and their states, in order.
    pub fn task_states(&self) -> Vec<(TaskId, TaskState)> {
        let st = self.inner.lock();
        st.tasks
            .iter()
            .enumerate()
            .map(|(i, r)| (TaskId(i as u64), r.state))
            .collect()
    }
}

/// Cancels queued tasks that are out of the queue already, with one journal message (and
/// one callback) for all of them. No live part: the outcome (cancelled) and the time are
/// known at collection, so cancelling millions of tasks allocates nothing each.
fn cancel_queued(inner: &Arc<Inner>, st: &mut State, cancelled: Vec<u64>) {
    for &t in &cancelled {
        let id = TaskId(t);
        st.tasks[t as usize].cancel_requested = true;
        st.live.remove(&t);
        st.release(id);
        st.set_state(id, TaskState::Cancelled);
    }
    match &inner.journal {
        None => mark_durable(st, &cancelled),
        // Collectable once committed (the journal's durable hook marks them).
        Some(j) if !cancelled.is_empty() => j.record_cancelled(cancelled),
        Some(_) => {}
    }
}

/// Makes final tasks collectable (their journal rows, if any, are committed).
fn mark_durable(st: &mut State, tasks: &[u64]) {
    for &t in tasks {
        st.finished.push_back(TaskId(t));
        st.durable += 1;
        st.tasks[t as usize].durable = true;
    }
}

/// Marks the master stopped (the first reason wins) and stops what runs locally.
fn stop_inner(inner: &Arc<Inner>, reason: String) {
    let running: Vec<TaskId> = {
        let mut st = inner.lock();
        if st.stopped.is_some() {
            return;
        }
        // Info, not a warning: whoever stopped it (the CLI, a journal failure) says why.
        log::info!("stopping: {reason}");
        if let Some(j) = &inner.journal {
            j.record_stopped(&reason);
        }
        st.stopped = Some(reason);
        (0..st.tasks.len())
            .filter(|&i| st.tasks[i].state == TaskState::Running)
            .map(|i| TaskId(i as u64))
            .collect()
    };
    inner.cond.notify_all();
    let detach = inner.journal.is_some() && inner.interface.keeps_running_without_master();
    if !detach {
        for t in running {
            inner.interface.cancel(t);
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            st.shutting_down = true;
            // Tasks the drop interrupts are queued again in the journal (for `resume`),
            // not recorded as cancelled by the user.
            if st.stopped.is_none() {
                st.stopped = Some("the master was dropped".into());
            }
        }
        self.inner.cond.notify_all();
        // Stop what still runs: nobody will collect it (unless a journaled master of a remote
        // backend leaves it running for `mw resume`).
        let running: Vec<TaskId> = {
            let st = self.inner.lock();
            (0..st.tasks.len() as u64)
                .map(TaskId)
                .filter(|t| st.tasks[t.0 as usize].state == TaskState::Running)
                .collect()
        };
        let detach =
            self.inner.journal.is_some() && self.inner.interface.keeps_running_without_master();
        if !detach {
            for t in running {
                self.inner.interface.cancel(t);
            }
        }
        // After shutdown, reserve_worker must return promptly (an error is fine), so the
        // scheduler thread can be joined.
        self.inner.interface.shutdown();
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
        if let Some(j) = &self.inner.journal {
            j.flush();
        }
    }
}

#[cfg(test)]
mod tests;
