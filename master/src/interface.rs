//! The seam between the master and the platforms (paper, Fig. 1: the interface layer).
//!
//! An interface gets prepared tasks and reports each one's end through a [`Completion`];
//! it never touches the master's state, the journal or the user. The master never knows
//! which platform it drives.

use crate::task::{Execution, InterfaceError, PreparedTask, ProgramMode, TaskId, WorkerId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a [`Completion`] calls with the outcome.
type Callback = Box<dyn FnOnce(Result<Execution, InterfaceError>) + Send>;

/// Reports the end of one execution back to the master. Call [`Completion::finish`] exactly
/// once; dropping it unfinished reports an interface error, so a task can never be lost.
pub struct Completion {
    callback: Option<Callback>,
    /// The task whose end this reports.
    task: TaskId,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Completion({})", self.task)
    }
}

impl Completion {
    /// Wraps a callback (used by the master; tests may build their own).
    pub fn new(
        task: TaskId,
        callback: impl FnOnce(Result<Execution, InterfaceError>) + Send + 'static,
    ) -> Self {
        Completion {
            callback: Some(Box::new(callback)),
            task,
        }
    }

    /// The task this completion belongs to.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// Discards the completion without reporting anything (the master uses this when an
    /// interface hands a completion back, e.g. from a failed re-attach).
    pub fn abandon(mut self) {
        self.callback = None;
    }

    /// Reports the outcome.
    pub fn finish(mut self, outcome: Result<Execution, InterfaceError>) {
        if let Some(cb) = self.callback.take() {
            cb(outcome);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(cb) = self.callback.take() {
            cb(Err(InterfaceError::new(
                "the interface dropped the task without reporting an outcome",
            )));
        }
    }
}

/// `reserve_worker` of a platform that queues tasks itself (HTCondor, BOINC): it never
/// waits and has one worker (0); once the interface named `platform` is shut down, an error.
pub(crate) fn queued_worker(platform: &str, shut_down: bool) -> Result<WorkerId, InterfaceError> {
    if shut_down {
        return Err(shut_down_error(platform));
    }
    Ok(WorkerId(0))
}

/// How many tasks one worker (a local slot, an MPI rank) holds at once, by program mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depth {
    /// Tasks of a process-mode program.
    pub(crate) process: u32,
    /// Tasks of a streaming program.
    pub(crate) stream: u32,
}

/// Reserves a place for `task` on the least-loaded of the workers whose task counts are
/// `load`, if that one holds fewer than `depth` allows for the task's program: its id.
/// `None`: every worker is full.
pub(crate) fn reserve_least_loaded(
    load: &mut [u32],
    depth: Depth,
    task: &PreparedTask,
) -> Option<WorkerId> {
    let depth = match task.spec.program.mode() {
        ProgramMode::Process => depth.process,
        ProgramMode::Stream => depth.stream,
    };
    let (worker, held) = load.iter_mut().enumerate().min_by_key(|(_, l)| **l)?;
    if *held >= depth {
        return None;
    }
    *held += 1;
    Some(WorkerId(worker as u64))
}

/// How much more loaded than the least-loaded worker a worker may be and still get (or be
/// waited for by) a streaming task whose program key it holds ([`reserve_with_affinity`]).
pub(crate) const AFFINITY_SLACK: u32 = 64;

/// The streaming program keys each worker holds (a key: what decides which process serves a
/// task, hashed): how many tasks of each it was handed and has not finished, and the key of
/// the streaming program it keeps running.
#[derive(Debug, Default)]
pub(crate) struct Affinity {
    held: Vec<HashMap<u64, u32>>,
    process: Vec<Option<u64>>,
}

impl Affinity {
    /// No keys on any of `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Affinity {
            held: vec![HashMap::new(); workers],
            process: vec![None; workers],
        }
    }

    /// `worker` was handed a task of `key`.
    pub(crate) fn add(&mut self, worker: WorkerId, key: u64) {
        if let Some(h) = self.held.get_mut(worker.0 as usize) {
            *h.entry(key).or_insert(0) += 1;
        }
    }

    /// A task of `key` handed to `worker` ended.
    pub(crate) fn remove(&mut self, worker: WorkerId, key: u64) {
        if let Some(h) = self.held.get_mut(worker.0 as usize) {
            if let Some(n) = h.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    h.remove(&key);
                }
            }
        }
    }

    /// `worker` now runs the streaming program of `key` (`None`: none).
    pub(crate) fn set_process(&mut self, worker: WorkerId, key: Option<u64>) {
        if let Some(p) = self.process.get_mut(worker.0 as usize) {
            *p = key;
        }
    }

    /// Whether `worker` runs the program of `key` or holds tasks of it.
    fn holds(&self, worker: usize, key: u64) -> bool {
        self.process.get(worker).is_some_and(|p| *p == Some(key))
            || self.held.get(worker).is_some_and(|h| h.contains_key(&key))
    }

    /// Whether `worker` runs no program and holds no task.
    fn idle(&self, worker: usize) -> bool {
        self.process.get(worker).is_none_or(Option::is_none)
            && self.held.get(worker).is_none_or(HashMap::is_empty)
    }
}

/// Reserves a place for a streaming task of program key `key` on one of the workers whose
/// task counts are `load` (each holds at most `depth`), so that the tasks of a key keep to
/// the workers already serving it, each then serving its tasks key by key. In order: the
/// least-loaded worker holding `key` if it has nothing to do; a worker holding nothing; a
/// worker with nothing to do while the one holding `key` has tasks waiting; the worker
/// holding `key` if it is within [`AFFINITY_SLACK`] of the least loaded (if it is full,
/// `None`: the task waits for it); else the least-loaded worker. `None`: wait.
pub(crate) fn reserve_with_affinity(
    load: &mut [u32],
    depth: u32,
    affinity: &Affinity,
    key: u64,
) -> Option<WorkerId> {
    let least = (0..load.len()).min_by_key(|w| load[*w])?;
    let affine = (0..load.len())
        .filter(|w| affinity.holds(*w, key))
        .min_by_key(|w| load[*w]);
    let idle = (0..load.len()).find(|w| load[*w] == 0 && affinity.idle(*w));
    let worker = match (affine, idle) {
        (Some(w), _) if load[w] == 0 => w,
        (_, Some(w)) => w,
        (Some(w), None) if load[least] == 0 && load[w] > 1 => least,
        (Some(w), None) if load[w] <= load[least].saturating_add(AFFINITY_SLACK) => w,
        (_, None) => least,
    };
    let held = load.get_mut(worker)?;
    if *held >= depth {
        return None;
    }
    *held += 1;
    Some(WorkerId(worker as u64))
}

/// What a task meets at the interface named `platform` after it was shut down.
pub(crate) fn shut_down_error(platform: &str) -> InterfaceError {
    InterfaceError::new(format!("the {platform} interface was shut down"))
}

/// Records backend handles (Condor cluster.proc, BOINC workunit name, MPI rank) so a
/// resumed master can re-attach. Given to interfaces by the master.
pub trait HandleSink: Send + Sync {
    /// Records that `task` runs under `handle` on the backend.
    fn record_handle(&self, task: TaskId, handle: &str);

    /// Waits until every handle recorded and every outcome reported so far is durable
    /// (committed), for an interface that must not act on the backend before its record
    /// survives a crash. False when the journal could not commit them.
    fn flush(&self) -> bool {
        true
    }

    /// This machine could not store a result that came back from the platform (`why`: a
    /// full disk, an output path that cannot be written). True: the master stops with `why`
    /// (it has a journal), and the interface leaves the task in flight with its result
    /// kept where it arrived, for `mw resume` to take again. False (no journal): the
    /// interface fails the task with `why`.
    fn cannot_store(&self, _why: &str) -> bool {
        false
    }
}

/// Ends a task whose result came back but could not be stored here (see
/// [`HandleSink::cannot_store`]): left in flight when the master stops (true: keep the
/// result for `mw resume`), else failed with `why`.
pub(crate) fn result_not_stored(
    sink: Option<&Arc<dyn HandleSink>>,
    done: Completion,
    why: String,
) -> bool {
    if sink.is_some_and(|s| s.cannot_store(&why)) {
        done.abandon();
        true
    } else {
        done.finish(Err(InterfaceError::new(why)));
        false
    }
}

/// One platform. Implementations must be cheap to call from the scheduler thread and
/// thread-safe: `cancel` and `status` come from user threads while tasks run. A panic in
/// `reserve_worker` or `execute_task` fails the task at hand (a `Completion` dropped
/// unreported fails its task), not the master. One interface serves one master: its task
/// ids are that master's.
pub trait Interface: Send + Sync + 'static {
    /// Short name (`multicore`, `mpi`, `condor`, `boinc`).
    fn name(&self) -> &'static str;

    /// Waits until a worker can take `task` and reserves it. May block; returns an error when
    /// no worker will ever be free (e.g. all MPI ranks died), and promptly once `shutdown`
    /// was called (dropping the master waits for it).
    fn reserve_worker(&self, task: &PreparedTask) -> Result<WorkerId, InterfaceError>;

    /// Starts `task` on the reserved `worker` and returns at once; reports the end through
    /// `done`, from any thread.
    fn execute_task(&self, task: Arc<PreparedTask>, worker: WorkerId, done: Completion);

    /// Platform-specific key/values for `status()`.
    fn status(&self) -> BTreeMap<String, String>;

    /// Best-effort cancellation of a running task; its completion still arrives.
    fn cancel(&self, task: TaskId);

    /// Gives the interface a place to record backend handles (called once, before any task).
    fn set_handle_sink(&self, _sink: Arc<dyn HandleSink>) {}

    /// Re-attaches to a task that was in flight on the backend under `handle` when a previous
    /// master died; its completion arrives through `done`. Returns `Some(done)` when the
    /// interface cannot re-attach (the task is then queued and run again).
    fn reattach(
        &self,
        _task: Arc<PreparedTask>,
        _handle: &str,
        done: Completion,
    ) -> Option<Completion> {
        Some(done)
    }

    /// Called by a resumed master once every task it found in flight has been offered to
    /// [`Interface::reattach`]: what the interface kept only for re-attaching can go.
    fn reattach_done(&self) {}

    /// Called by a resumed master for a task that was running under `handle` when the
    /// previous master died and that this interface cannot re-attach: stop whatever of it
    /// may still run (e.g. an orphaned local process group), before it is queued again.
    fn stop_leftover(&self, _handle: &str) {}

    /// True when tasks keep running on the backend after this process exits (Condor,
    /// BOINC). A journaled master dropped with such tasks in flight then leaves them running
    /// for `mw resume` to re-attach, instead of cancelling them.
    fn keeps_running_without_master(&self) -> bool {
        false
    }

    /// Called once when the master shuts down.
    fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure
    use super::*;

    fn reserve(load: &mut [u32], affinity: &mut Affinity, key: u64) -> Option<u64> {
        let w = reserve_with_affinity(load, 256, affinity, key)?;
        affinity.add(w, key);
        Some(w.0)
    }

    /// Interleaved keys keep to the slots that hold them; a key no slot holds still gets one.
    #[test]
    fn interleaved_keys_keep_to_their_slots() {
        let mut affinity = Affinity::new(2);
        let mut load = [0, 0];
        let got: Vec<_> = [1, 2, 3, 1, 2, 3]
            .into_iter()
            .map(|k| reserve(&mut load, &mut affinity, k).unwrap())
            .collect();
        // Key 1 on the first idle slot, key 2 on the other, key 3 on the least loaded.
        assert_eq!(got, [0, 1, 0, 0, 1, 0]);
    }

    /// One key spreads over the idle slots (each starts its program once), and a slot with
    /// nothing to do takes a task whose slot has others waiting.
    #[test]
    fn idle_slots_are_not_left_idle() {
        let mut affinity = Affinity::new(3);
        let mut load = [0, 0, 0];
        let got: Vec<_> = (0..3)
            .map(|_| reserve(&mut load, &mut affinity, 7).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2]);
        let mut affinity = Affinity::new(2);
        affinity.set_process(WorkerId(1), Some(8));
        let mut load = [2, 0];
        affinity.add(WorkerId(0), 7);
        assert_eq!(reserve(&mut load, &mut affinity, 7), Some(1));
    }

    /// A full slot holding the key is waited for within the slack, not beyond it.
    #[test]
    fn a_full_affine_slot_is_waited_for_only_within_the_slack() {
        let mut affinity = Affinity::new(2);
        affinity.set_process(WorkerId(0), Some(1));
        affinity.set_process(WorkerId(1), Some(2));
        let mut load = [256, 256 - AFFINITY_SLACK];
        assert_eq!(reserve(&mut load, &mut affinity, 1), None);
        let mut load = [256, 255 - AFFINITY_SLACK];
        assert_eq!(reserve(&mut load, &mut affinity, 1), Some(1));
        let mut load = [256, 256];
        assert_eq!(reserve(&mut load, &mut affinity, 3), None);
    }
}
