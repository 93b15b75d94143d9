//! The default interface: N local worker slots, one child process per task, each in its own
//! temporary directory, run through the worker-runtime library (the same code `mw-worker`
//! uses on remote hosts). Cancel and timeout kill the task's whole process group.
//!
//! This module knows nothing of the journal, bundles on the wire, or other platforms.

use crate::interface::{Completion, Interface};
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, WorkerId};
use mw_worker_runtime::exec::{collect_outputs, host_name};
use mw_worker_runtime::{execute, ExecRequest, ProcessControl};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

struct SlotState {
    free: Vec<u64>,
    running: HashMap<TaskId, ProcessControl>,
    shut_down: bool,
    started: u64,
}

type SlotJob = (Arc<PreparedTask>, ProcessControl, Completion);

/// Local cores as workers.
pub struct Multicore {
    slots: usize,
    state: Arc<(Mutex<SlotState>, Condvar)>,
    scratch_root: Option<PathBuf>,
    host: String,
    /// One long-lived thread per slot, started on first use, fed through a channel.
    slot_threads: Mutex<Vec<Option<std::sync::mpsc::Sender<SlotJob>>>>,
}

impl std::fmt::Debug for Multicore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Multicore({} slots)", self.slots)
    }
}

impl Default for Multicore {
    /// One slot per available core.
    fn default() -> Self {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Multicore::new(n)
    }
}

fn lock(state: &(Mutex<SlotState>, Condvar)) -> MutexGuard<'_, SlotState> {
    state.0.lock().unwrap_or_else(|p| p.into_inner())
}

impl Multicore {
    /// `slots` worker slots (at least 1).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Multicore {
            slots,
            state: Arc::new((
                Mutex::new(SlotState {
                    free: (0..slots as u64).rev().collect(),
                    running: HashMap::new(),
                    shut_down: false,
                    started: 0,
                }),
                Condvar::new(),
            )),
            scratch_root: None,
            host: host_name(),
            slot_threads: Mutex::new((0..slots).map(|_| None).collect()),
        }
    }

    /// Makes task directories under `dir` instead of the system temp dir.
    pub fn with_scratch_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_root = Some(dir.into());
        self
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }
}

fn release(state: &(Mutex<SlotState>, Condvar), worker: WorkerId, task: TaskId) {
    let mut st = lock(state);
    st.running.remove(&task);
    st.free.push(worker.0);
    drop(st);
    state.1.notify_one();
}

fn scratch(scratch_root: Option<&Path>, prefix: &str) -> Result<tempfile::TempDir, InterfaceError> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match scratch_root {
        Some(root) => b.tempdir_in(root),
        None => b.tempdir(),
    }
    .map_err(|e| InterfaceError::new(format!("creating a scratch directory: {e}")))
}

/// Runs one task in a fresh working directory; `io_dir` (the slot's own, reused) holds
/// its stdout and stderr files.
fn run_one(
    task: &PreparedTask,
    control: &ProcessControl,
    scratch_root: Option<&Path>,
    io_dir: &Path,
    host: &str,
) -> Result<Execution, InterfaceError> {
    let dir = scratch(scratch_root, "mw-task-")?;
    let workdir = dir.path().to_path_buf();
    let spec = &task.spec;
    for (name, path) in &spec.input_files {
        std::fs::copy(path, workdir.join(name)).map_err(|e| {
            InterfaceError::new(format!("copying input file {}: {e}", path.display()))
        })?;
    }
    for (name, path) in spec.program.files() {
        let link = workdir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(path, &link).map_err(|e| {
                InterfaceError::new(format!("linking program file {}: {e}", path.display()))
            })?;
        }
    }
    let mut req = ExecRequest::new(
        spec.program.executable().to_path_buf(),
        workdir.clone(),
        io_dir.to_path_buf(),
    );
    req.args = spec.program.base_args().to_vec();
    req.args.extend(spec.args.iter().cloned());
    req.env = spec.env.clone();
    req.stdin = serde_json::to_vec(&spec.input).unwrap_or_else(|_| b"null".to_vec());
    req.timeout = spec.timeout;
    let outcome = execute(&req, control)
        .map_err(|e| InterfaceError::new(format!("running {}: {e}", task.id)))?;
    let (found, missing) = collect_outputs(&workdir, &spec.outputs);
    let mut output_files = Vec::new();
    if let Some(out_dir) = &task.output_dir {
        for f in found {
            let dest = out_dir.join(&f.name);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    InterfaceError::new(format!("creating {}: {e}", parent.display()))
                })?;
            }
            if std::fs::rename(&f.path, &dest).is_err() {
                std::fs::copy(&f.path, &dest)
                    .map_err(|e| InterfaceError::new(format!("keeping output {}: {e}", f.name)))?;
            }
            output_files.push((f.name, dest));
        }
    }
    Ok(Execution {
        exit: outcome.exit,
        stdout: outcome.stdout,
        stderr_tail: outcome.stderr_tail,
        wall: outcome.wall,
        cpu: outcome.user + outcome.sys,
        host: host.to_string(),
        started: Some(outcome.started),
        output_files,
        missing_outputs: missing,
    })
}

impl Interface for Multicore {
    fn name(&self) -> &'static str {
        "multicore"
    }

    fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        let mut st = lock(&self.state);
        loop {
            if st.shut_down {
                return Err(InterfaceError::new("the multicore interface was shut down"));
            }
            if let Some(slot) = st.free.pop() {
                return Ok(WorkerId(slot));
            }
            st = self.state.1.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn execute_task(&self, task: Arc<PreparedTask>, worker: WorkerId, done: Completion) {
        let control = ProcessControl::new();
        {
            let mut st = lock(&self.state);
            st.running.insert(task.id, control.clone());
            st.started += 1;
        }
        let id = task.id;
        let mut threads = self.slot_threads.lock().unwrap_or_else(|p| p.into_inner());
        let slot = worker.0 as usize;
        if threads.get(slot).map(Option::is_none).unwrap_or(false) {
            let (tx, rx) = std::sync::mpsc::channel::<SlotJob>();
            let state = self.state.clone();
            let scratch_root = self.scratch_root.clone();
            let host = self.host.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mw-slot-{slot}"))
                .spawn(move || {
                    let io = scratch(scratch_root.as_deref(), "mw-slot-io-");
                    for (task, control, done) in rx {
                        let outcome = match &io {
                            Ok(io) => {
                                run_one(&task, &control, scratch_root.as_deref(), io.path(), &host)
                            }
                            Err(e) => Err(e.clone()),
                        };
                        release(&state, worker, task.id);
                        done.finish(outcome);
                    }
                });
            if spawned.is_ok() {
                threads[slot] = Some(tx);
            }
        }
        let sent = match threads.get(slot).and_then(Option::as_ref) {
            Some(tx) => tx.send((task, control, done)).map_err(|e| e.0 .2),
            None => Err(done),
        };
        drop(threads);
        if let Err(done) = sent {
            release(&self.state, worker, id);
            done.finish(Err(InterfaceError::new(
                "cannot start a worker slot thread",
            )));
        }
    }

    fn status(&self) -> BTreeMap<String, String> {
        let st = lock(&self.state);
        let mut m = BTreeMap::new();
        m.insert("slots".into(), self.slots.to_string());
        m.insert("busy".into(), st.running.len().to_string());
        m.insert("started".into(), st.started.to_string());
        m
    }

    fn cancel(&self, task: TaskId) {
        let st = lock(&self.state);
        if let Some(c) = st.running.get(&task) {
            c.cancel();
        }
    }

    fn shutdown(&self) {
        let mut st = lock(&self.state);
        st.shut_down = true;
        for c in st.running.values() {
            c.cancel();
        }
        drop(st);
        self.state.1.notify_all();
        // Dropping the senders ends the slot threads once their current task is done.
        let mut threads = self.slot_threads.lock().unwrap_or_else(|p| p.into_inner());
        for t in threads.iter_mut() {
            t.take();
        }
    }
}
