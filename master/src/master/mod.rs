//! The master: run queue, scheduler thread, result collection, retries, time accounting
//! (paper §3: `submit_task`, `get_result`, `get_status`), plus cancellation.
//!
//! One mutex guards the task table; one condition variable wakes the scheduler (work queued)
//! and result waiters (task finished). Interfaces report completions through a callback that
//! takes the same lock. Several masters may live in one program: each has its own state,
//! scheduler thread and interface.
//!
//! This module never knows which platform it drives, and never touches files except through
//! the optional journal.

mod outcome;
mod scheduler;

pub use outcome::{parse_stdout, MwError, TaskOutput, TaskTimes};
use scheduler::{
    completion, decode, finish_durably, mark_final, prepare, scheduler_loop, take_outcome,
    take_result,
};

use crate::interface::{HandleSink, Interface};
use crate::journal::Journal;
use crate::task::{TaskId, TaskSpec};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, VecDeque};
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
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            retries: 0,
            job_name: "mw".into(),
            results_dir: None,
            staging_dir: None,
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

pub(crate) struct TaskRecord {
    pub(crate) spec: TaskSpec,
    pub(crate) state: TaskState,
    pub(crate) attempts: u32,
    pub(crate) times: TaskTimes,
    pub(crate) outcome: Option<Result<TaskOutput, MwError>>,
    pub(crate) collected: bool,
    pub(crate) cancel_requested: bool,
    /// Final and (with a journal) committed: may be handed out.
    pub(crate) durable: bool,
}

struct State {
    tasks: Vec<TaskRecord>,
    queue: VecDeque<TaskId>,
    finished: VecDeque<TaskId>,
    counts: [usize; 5],
    shutting_down: bool,
    /// Why the master stopped ([`Master::stop`], or a journal that cannot commit): nothing
    /// more is dispatched, and tasks the stop interrupts are queued again, for `resume`.
    stopped: Option<String>,
    /// Final tasks whose journal row is committed (all final tasks without a journal).
    durable: usize,
    /// Tasks in `finished` not collected yet (kept so `counts` is O(1) however many wait).
    uncollected: usize,
}

impl State {
    fn set_state(&mut self, id: TaskId, to: TaskState) {
        let rec = &mut self.tasks[id.0 as usize];
        self.counts[rec.state as usize] -= 1;
        self.counts[to as usize] += 1;
        rec.state = to;
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    interface: Arc<dyn Interface>,
    options: MasterOptions,
    staging: PathBuf,
    _staging_tmp: Option<tempfile::TempDir>,
    journal: Option<Arc<Journal>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

struct JournalHandles(Arc<Journal>);

impl HandleSink for JournalHandles {
    fn record_handle(&self, task: TaskId, handle: &str) {
        self.0.record_handle(task, handle);
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
        Self::build(interface, options, None, Vec::new())
    }

    /// A master over a journal the caller created ([`Journal::create`]) with no tasks yet:
    /// every task submitted is journaled, and results are durable before they are handed out.
    pub fn with_created_journal(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        journal: Arc<Journal>,
    ) -> Result<Master, MwError> {
        Self::build(interface, options, Some(journal), Vec::new())
    }

    pub(crate) fn build(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        journal: Option<Arc<Journal>>,
        restored: Vec<TaskRecord>,
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
            tasks: Vec::new(),
            queue: VecDeque::new(),
            finished: VecDeque::new(),
            counts: [0; 5],
            shutting_down: false,
            stopped: None,
            durable: 0,
            uncollected: 0,
        };
        for rec in restored {
            let id = TaskId(state.tasks.len() as u64);
            state.counts[rec.state as usize] += 1;
            if rec.state.is_final() {
                state.durable += 1;
            }
            match rec.state {
                TaskState::Queued => state.queue.push_back(id),
                s if s.is_final() && !rec.collected => {
                    state.finished.push_back(id);
                    state.uncollected += 1;
                }
                _ => {}
            }
            state.tasks.push(rec);
        }
        if let Some(j) = &journal {
            interface.set_handle_sink(Arc::new(JournalHandles(j.clone())));
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            cond: Condvar::new(),
            interface,
            options,
            staging,
            _staging_tmp: tmp,
            journal,
        });
        if let Some(j) = &inner.journal {
            // A journal that cannot commit any more stops the master: what it cannot store
            // it must not report.
            let weak = Arc::downgrade(&inner);
            j.on_failure(move |msg| {
                if let Some(inner) = weak.upgrade() {
                    stop_inner(&inner, format!("the journal failed: {msg}"));
                }
            });
        }
        let sched_inner = inner.clone();
        let scheduler = std::thread::Builder::new()
            .name("mw-scheduler".into())
            .spawn(move || scheduler_loop(sched_inner))
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

    /// Submits many tasks under one lock (and one journal transaction).
    pub fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, MwError> {
        let mut st = self.inner.lock();
        let first = st.tasks.len() as u64;
        if let Some(j) = &self.inner.journal {
            j.record_submitted(first, &specs)?;
        }
        let now = SystemTime::now();
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = TaskId(st.tasks.len() as u64);
            st.tasks.push(TaskRecord {
                spec,
                state: TaskState::Queued,
                attempts: 0,
                times: TaskTimes {
                    submitted: Some(now),
                    ..TaskTimes::default()
                },
                outcome: None,
                collected: false,
                cancel_requested: false,
                durable: false,
            });
            st.counts[TaskState::Queued as usize] += 1;
            st.queue.push_back(id);
            ids.push(id);
        }
        drop(st);
        self.inner.cond.notify_all();
        Ok(ids)
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
            st = self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`get_output`](Self::get_output) but gives up after `timeout` with `Ok(None)`.
    pub fn get_output_timeout(
        &self,
        which: Option<TaskId>,
        timeout: Duration,
    ) -> Result<Option<TaskOutput>, MwError> {
        let deadline = std::time::Instant::now() + timeout;
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

    /// Waits for a state change until `deadline`; `None` once the deadline has passed.
    fn wait_until<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        deadline: std::time::Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        Some(
            self.inner
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0,
        )
    }

    /// Waits up to `timeout` for the next finished task and returns its outcome whatever it
    /// is (for drivers such as the CLI that report failures rather than stop at them).
    pub fn next_outcome(&self, timeout: Duration) -> NextOutcome {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            while let Some(id) = st.finished.pop_front() {
                let s = &mut *st;
                let rec = &mut s.tasks[id.0 as usize];
                if !rec.collected {
                    rec.collected = true;
                    s.uncollected -= 1;
                    let times = rec.times.clone();
                    return NextOutcome::Finished(id, take_outcome(rec, id), times);
                }
            }
            if st.tasks.len() == st.durable {
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
        let uncollected = st.uncollected;
        MasterStatus {
            queued: st.counts[TaskState::Queued as usize],
            running: st.counts[TaskState::Running as usize],
            done: st.counts[TaskState::Done as usize],
            failed: st.counts[TaskState::Failed as usize],
            cancelled: st.counts[TaskState::Cancelled as usize],
            uncollected,
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
                rec.outcome = Some(Err(MwError::Cancelled(task)));
                rec.times.finished = Some(SystemTime::now());
                st.queue.retain(|t| *t != task);
                st.set_state(task, TaskState::Cancelled);
                finish_durably(&self.inner, st, task);
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
            let now = SystemTime::now();
            let mut running = Vec::new();
            for i in 0..st.tasks.len() {
                let id = TaskId(i as u64);
                match st.tasks[i].state {
                    TaskState::Queued => {
                        let rec = &mut st.tasks[i];
                        rec.cancel_requested = true;
                        rec.outcome = Some(Err(MwError::Cancelled(id)));
                        rec.times.finished = Some(now);
                        st.set_state(id, TaskState::Cancelled);
                        mark_final(&self.inner, &mut st, id);
                    }
                    TaskState::Running => {
                        st.tasks[i].cancel_requested = true;
                        running.push(id);
                    }
                    _ => {}
                }
            }
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
        while st.durable < st.tasks.len() && !(st.stopped.is_some() && self.stop_settled(&st)) {
            st = self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
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

    /// After a stop: true once no interrupted task is still to report back (immediately
    /// for a journaled remote backend, whose tasks are left running).
    fn stop_settled(&self, st: &State) -> bool {
        st.counts[TaskState::Running as usize] == 0 || self.detaches()
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
            let prepared = {
                let mut st = self.inner.lock();
                let rec = &mut st.tasks[id.0 as usize];
                Arc::new(prepare(&self.inner, id, rec))
            };
            let done = completion(&self.inner, id);
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

/// Marks the master stopped (the first reason wins) and stops what runs locally.
fn stop_inner(inner: &Arc<Inner>, reason: String) {
    let running: Vec<TaskId> = {
        let mut st = inner.lock();
        if st.stopped.is_some() {
            return;
        }
        log::warn!("stopping: {reason}");
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
