//! The default interface: N local worker slots, one child process per task, each in its own
//! temporary directory, run through the worker-runtime library (the same code `mw-worker`
//! uses on remote hosts). Cancel and timeout kill the task's whole process group.
//!
//! A streaming program ([`ProgramMode::Stream`]) runs as one long-lived process per slot
//! ([`mw_worker_runtime::stream`]); the slot then takes up to [`STREAM_SLOT_DEPTH`] tasks at
//! once and its thread feeds them to the program ahead of its answers, so neither waits on
//! the other. A slot's program serves one program key (program, arguments, environment):
//! a streaming task goes to a slot that holds its key (`Affinity`), and a slot serves what
//! it holds key by key, in runs (at most `STREAM_RUN_CAP` tasks while another key waits),
//! so interleaved keys do not restart the program for every task.
//!
//! This module knows nothing of the journal, bundles on the wire, or other platforms.

use crate::guard::panic_message;
use crate::interface::{Affinity, Completion, Depth, HandleSink, Interface};
use crate::task::{
    Execution, InterfaceError, PreparedTask, ProgramMode, ResultError, TaskId, WorkerId,
};
use mw_worker_runtime::exec::{collect_outputs, host_name};
use mw_worker_runtime::stream::{StreamInput, StreamOutcome, StreamProgram, StreamRunner};
use mw_worker_runtime::{execute, ExecRequest, ProcessControl};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

struct SlotState {
    /// Tasks handed to each slot and not finished yet (running plus waiting in its channel).
    load: Vec<u32>,
    running: HashMap<TaskId, ProcessControl>,
    shut_down: bool,
    started: u64,
    /// The streaming program keys each slot holds, so a key's tasks keep to its slots.
    affinity: Affinity,
    /// The key ([`StreamKey::hash_of`]) of each streaming task handed to a slot.
    stream_keys: HashMap<TaskId, u64>,
}

type SlotJob = (Arc<PreparedTask>, ProcessControl, Completion);

/// A started slot: the channel to its thread and its own directory.
/// A slot thread's channel, its directory, and the end of its tasks' handles
/// (`:<work dir>`, made once).
type Slot = (std::sync::mpsc::Sender<SlotJob>, PathBuf, Arc<str>);

/// Tasks a slot may hold at once. One: a task handed to a slot starts at once, and a task
/// that is "running" really runs (handing a slot its next task early measured no faster).
const SLOT_DEPTH: u32 = 1;

/// Tasks a slot running a streaming program may hold at once: enough that the program always
/// has inputs written ahead (the runner's window is 64) while the master dispatches more.
pub const STREAM_SLOT_DEPTH: u32 = 256;

/// Both of those.
const DEPTH: Depth = Depth {
    process: SLOT_DEPTH,
    stream: STREAM_SLOT_DEPTH,
};

/// Local cores as workers.
pub struct Multicore {
    slots: usize,
    state: Arc<(Mutex<SlotState>, Condvar)>,
    scratch_root: Option<PathBuf>,
    host: String,
    /// The host in task handles, shared by every task's start hook.
    handle_host: Arc<str>,
    /// One long-lived thread per slot, started on first use, fed through a channel.
    slot_threads: Mutex<Vec<Option<Slot>>>,
    /// Where to record each task's process group (a journaled master gives one).
    handles: Mutex<Option<Arc<dyn HandleSink>>>,
    /// Stale slot directories (of killed masters) are removed once, before the first slot.
    sweep: std::sync::Once,
    /// How [`Interface::shutdown`] waits until every slot thread has removed its directory.
    slot_exits: Mutex<SlotExits>,
}

/// Each slot thread holds a clone of `tx` until it has removed its slot directory; once
/// `tx` itself is dropped (at shutdown), `rx` reports disconnection when the last slot thread
/// is done. Without this wait the process could exit while a slot thread was still removing
/// its directory, leaving it without its lock file for the sweep to recognise.
struct SlotExits {
    /// `None` once shut down: no slot thread starts after that.
    tx: Option<std::sync::mpsc::Sender<()>>,
    rx: std::sync::mpsc::Receiver<()>,
}

/// The longest [`Interface::shutdown`] waits for the slot threads to end (each ends once its
/// current task, already cancelled, has stopped); past it, shutdown goes on without them.
const SLOT_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    crate::guard::lock(&state.0)
}

/// The most worker slots one multicore interface runs (a job file's `workers`; a larger
/// number, e.g. from a forged journal, is clamped to it).
pub const MAX_SLOTS: usize = 1024;

impl Multicore {
    /// `slots` worker slots (at least 1, at most [`MAX_SLOTS`]).
    pub fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        Multicore {
            slots,
            state: Arc::new((
                Mutex::new(SlotState {
                    load: vec![0; slots],
                    running: HashMap::new(),
                    shut_down: false,
                    started: 0,
                    affinity: Affinity::new(slots),
                    stream_keys: HashMap::new(),
                }),
                Condvar::new(),
            )),
            scratch_root: None,
            host: host_name(),
            handle_host: host_name().into(),
            slot_threads: Mutex::new((0..slots).map(|_| None).collect()),
            handles: Mutex::new(None),
            sweep: std::sync::Once::new(),
            slot_exits: {
                let (tx, rx) = std::sync::mpsc::channel();
                Mutex::new(SlotExits { tx: Some(tx), rx })
            },
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

/// A streaming slot wakes the scheduler only each time this many of its places are free
/// again, so the scheduler hands it tasks in runs instead of waking once per task (each
/// wake-up is a context switch, and on a busy machine a wait for a CPU).
const STREAM_WAKE_EVERY: u32 = 64;

fn release(state: &(Mutex<SlotState>, Condvar), worker: WorkerId, task: TaskId) {
    let mut st = lock(state);
    st.running.remove(&task);
    if let Some(key) = st.stream_keys.remove(&task) {
        st.affinity.remove(worker, key);
    }
    let mut wake = true;
    if let Some(l) = st.load.get_mut(worker.0 as usize) {
        *l = l.saturating_sub(1);
        wake = *l % STREAM_WAKE_EVERY == 0;
    }
    drop(st);
    if wake {
        state.1.notify_one();
    }
}

/// Prefix of slot directories in the scratch root.
const SLOT_PREFIX: &str = "mw-slot-";
/// The lock file inside a slot directory, held (flock) while the slot is in use.
const SLOT_LOCK: &str = ".mw-slot.lock";
/// The lock file's name while it is being made (see [`slot_dir`]).
const SLOT_LOCK_MAKING: &str = ".mw-slot.lock.new";
/// A slot directory without a lock file (made by an older mw) is stale after this long.
const UNLOCKED_SLOT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A new slot directory and its held lock.
///
/// The lock file is locked under another name and then renamed into place, so a sweep
/// never sees it unlocked: a new directory has no lock file (young, so not stale) or a held
/// one. (Created in place and then locked, a sweep between the two took live directories.)
/// A master killed between the two leaves a directory with no lock file, which the sweep
/// removes once it is [`UNLOCKED_SLOT_STALE_AFTER`] old.
fn slot_dir(root: Option<&Path>) -> Result<(tempfile::TempDir, std::fs::File), InterfaceError> {
    let dir = scratch(root, SLOT_PREFIX)?;
    let path = dir.path().join(SLOT_LOCK);
    let making = dir.path().join(SLOT_LOCK_MAKING);
    let lock = std::fs::File::create(&making)
        .and_then(|f| f.try_lock().map(|()| f).map_err(std::io::Error::from))
        .and_then(|f| std::fs::rename(&making, &path).map(|()| f))
        .map_err(|e| InterfaceError::new(format!("locking {}: {e}", path.display())))?;
    Ok((dir, lock))
}

/// A scratch directory for a whole run (`mw run --no-journal` has no job directory), made
/// and locked like a slot directory so that, if its master is killed, the next master's
/// sweep removes it. The directory goes when the `TempDir` drops; keep the lock until then.
pub fn locked_scratch_dir() -> Result<(tempfile::TempDir, std::fs::File), InterfaceError> {
    slot_dir(None)
}

/// Removes slot directories that no live master uses: their lock can be taken (the master
/// that made them died), or they carry no lock and are old. A directory some process still
/// works in is kept: a killed master's leftover task (which `mw resume` and `mw cancel` find
/// by its working directory) once lost it to another master's sweep, ran on in a deleted
/// directory, and was then stopped by nothing.
pub fn sweep_stale_slots(root: Option<&Path>) {
    let root = root.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    // The working directories of this machine's processes, read once, and only when a
    // directory looks stale.
    let mut cwds: Option<Vec<PathBuf>> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SLOT_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let stale = match std::fs::File::open(path.join(SLOT_LOCK)) {
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > UNLOCKED_SLOT_STALE_AFTER),
        };
        if stale {
            let cwds = cwds.get_or_insert_with(process_cwds);
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if let Some(cwd) = cwds.iter().find(|c| c.starts_with(&canonical)) {
                log::debug!(
                    "kept the stale slot directory {}: a process still works in {}",
                    path.display(),
                    cwd.display()
                );
                continue;
            }
            // A task may have left directories it cannot write to.
            make_writable(&path);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => log::info!("removed the stale slot directory {}", path.display()),
                Err(e) => log::debug!("cannot remove {}: {e}", path.display()),
            }
        }
    }
}

/// The working directory of every process of this machine whose `/proc` entry can be read
/// (none where there is no `/proc`).
fn process_cwds() -> Vec<PathBuf> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
        .collect()
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

fn scratch(scratch_root: Option<&Path>, prefix: &str) -> Result<tempfile::TempDir, InterfaceError> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match scratch_root {
        Some(root) => b.tempdir_in(root),
        None => b.tempdir(),
    }
    .map_err(|e| {
        let root = scratch_root.map_or_else(std::env::temp_dir, Path::to_path_buf);
        InterfaceError::new(format!(
            "creating a scratch directory in {}: {e}",
            root.display()
        ))
    })
}

/// The slot's working directory, emptied: every task starts in an empty private directory.
/// Reusing one directory per slot (rather than making and removing one per task) spares the
/// filesystem a directory block allocation and release per task, which on filesystems
/// mounted with `discard` costs a synchronous device trim.
fn fresh_workdir(slot_dir: &Path) -> Result<PathBuf, InterfaceError> {
    let work = slot_dir.join("work");
    let err = |e: std::io::Error| InterfaceError::new(format!("preparing {}: {e}", work.display()));
    match std::fs::symlink_metadata(&work) {
        Ok(m) if m.is_dir() => {
            for entry in std::fs::read_dir(&work).map_err(err)? {
                let entry = entry.map_err(err)?;
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    // A task may have left a directory it cannot write to: make it writable.
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
                    std::fs::remove_dir_all(&path).map_err(err)?;
                } else {
                    std::fs::remove_file(&path).map_err(err)?;
                }
            }
        }
        Ok(_) => {
            std::fs::remove_file(&work).map_err(err)?;
            std::fs::create_dir(&work).map_err(err)?;
        }
        Err(_) => std::fs::create_dir(&work).map_err(err)?,
    }
    Ok(work)
}

/// Runs one task in the slot's emptied working directory; `io_dir` (the slot's own)
/// holds its stdin/stdout/stderr files when they are not pipes.
fn run_one(
    task: &PreparedTask,
    control: &ProcessControl,
    io_dir: &Path,
    host: &str,
) -> Result<Execution, ResultError> {
    // The slot's directory is this machine's: a failure there is not the task's.
    let workdir = fresh_workdir(io_dir).map_err(|e| ResultError::Local(e.0))?;
    let spec = &task.spec;
    for (name, path) in &spec.input_files {
        crate::task::check_input_file_name(name)
            .map_err(|e| ResultError::Bad(InterfaceError::new(e.to_string())))?;
        std::fs::copy(path, workdir.join(name)).map_err(|e| {
            let why = format!("copying input file {}: {e}", path.display());
            if crate::task::is_storage_error(&e) {
                ResultError::Local(why)
            } else {
                ResultError::Bad(InterfaceError::new(why))
            }
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
    // One byte over the limit is enough to tell the result is too large (the master then
    // fails the task naming the limit); nothing more is read into memory.
    req.max_stdout_bytes = spec.max_output_bytes.saturating_add(1);
    // The task's log keeps the last LOG_CAP_BYTES of stderr; one byte more tells it was cut
    // (the log then says so). The task's error carries only the last 4 KiB.
    req.stderr_tail_bytes = crate::task_logs::LOG_CAP_BYTES + 1;
    let mut outcome = execute(&req, control)
        .map_err(|e| InterfaceError::new(format!("running {}: {e}", task.id)))?;
    let stdout_over = matches!(&outcome.exit,
        mw_bundle::ExitInfo::StreamBroken { reason } if reason.starts_with("stdout passed"));
    if outcome.stdout_truncated && stdout_over {
        // Stopped for printing past the capture (`exec`'s overflow): the limit the user set
        // is one byte less.
        outcome.exit = mw_bundle::ExitInfo::StreamBroken {
            reason: format!(
                "stdout passed the task's limit of {} bytes (max_output); the task was stopped",
                spec.max_output_bytes
            ),
        };
    }
    let (found, missing) = collect_outputs(&workdir, &spec.outputs);
    let mut output_files = Vec::new();
    if let Some(out_dir) = &task.output_dir {
        // Where the outputs are kept is this machine's: a failure there is not the task's.
        for f in found {
            let dest = out_dir.join(&f.name);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    ResultError::Local(format!(
                        "cannot store output `{}` in {}: {e}",
                        f.name,
                        parent.display()
                    ))
                })?;
            }
            if std::fs::rename(&f.path, &dest).is_err() {
                std::fs::copy(&f.path, &dest).map_err(|e| {
                    ResultError::Local(format!(
                        "cannot store output `{}` as {}: {e}",
                        f.name,
                        dest.display()
                    ))
                })?;
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

/// A slot thread's life: run what arrives, one process per task or through the slot's
/// streaming program, until the channel closes.
fn slot_loop(
    rx: &std::sync::mpsc::Receiver<SlotJob>,
    dir: &Path,
    host: &str,
    state: &Arc<(Mutex<SlotState>, Condvar)>,
    worker: WorkerId,
    sink: Option<&Arc<dyn HandleSink>>,
) {
    let mut stream: Option<(StreamKey, StreamRunner)> = None;
    // Tasks received and not started yet, oldest first (a streaming run takes those of its
    // key out of turn; see `run_stream`).
    let mut backlog: VecDeque<SlotJob> = VecDeque::new();
    loop {
        finish_cancelled(&mut backlog, host, state, worker);
        let job = match backlog.pop_front() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        if job.0.spec.program.mode() == ProgramMode::Stream {
            // A panic fails the tasks in flight (their tokens report it when dropped) and
            // restarts the program; it never takes the slot down.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_stream(job, rx, &mut backlog, &mut stream, dir, host, state, worker)
            }));
            if let Err(p) = run {
                log::error!(
                    "internal error in a streaming slot: {}",
                    panic_message(p.as_ref())
                );
                stop_stream(&mut stream, state, worker);
            }
            continue;
        }
        // Once a process-mode task comes, a streaming program of this slot is stopped.
        stop_stream(&mut stream, state, worker);
        let (task, control, done) = job;
        // A panic while running one task fails that task (with a message) and frees the
        // slot; it never takes the slot down.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_one(&task, &control, dir, host)
        }))
        .unwrap_or_else(|p| {
            Err(ResultError::Bad(InterfaceError::new(format!(
                "internal error while running {}: {}",
                task.id,
                panic_message(p.as_ref())
            ))))
        });
        release(state, worker, task.id);
        if let (Err(ResultError::Local(why)), Some(sink)) = (&outcome, sink) {
            // This machine cannot keep what tasks produce: a journaled master stops (the
            // task is then queued again for `mw resume`) rather than fail task after task.
            sink.cannot_store(&format!("{}: {why}", task.id));
        }
        done.finish(outcome.map_err(InterfaceError::from));
    }
}

/// Stops the slot's streaming program, if it runs one.
fn stop_stream(
    stream: &mut Option<(StreamKey, StreamRunner)>,
    state: &(Mutex<SlotState>, Condvar),
    worker: WorkerId,
) {
    if stream.take().is_some() {
        lock(state).affinity.set_process(worker, None);
    }
}

/// What must be equal for two tasks to share one streaming process: the program by what it
/// runs (executable, arguments, files, mode; not by its address, which a freed program's
/// successor may take), the task's arguments and environment.
struct StreamKey {
    program: Arc<crate::task::Program>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

impl StreamKey {
    fn of(task: &PreparedTask) -> StreamKey {
        StreamKey {
            program: task.spec.program.clone(),
            args: task.spec.args.clone(),
            env: task.spec.env.clone(),
        }
    }

    fn matches(&self, task: &PreparedTask) -> bool {
        self.program.same_as(&task.spec.program)
            && self.args == task.spec.args
            && self.env == task.spec.env
    }

    /// A task's key, hashed: what the slots' affinity ([`Affinity`]) counts. Two keys that
    /// hash alike only share a preference for the same slots.
    fn hash_of(task: &PreparedTask) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        task.spec.program.identity_hash().hash(&mut h);
        task.spec.args.hash(&mut h);
        task.spec.env.hash(&mut h);
        h.finish()
    }
}

/// The most tasks of one program key a slot serves in a row while a task of another key,
/// older than the next one of this key, waits in it: a slot serves its tasks key by key,
/// and no key waits for ever.
const STREAM_RUN_CAP: u32 = 256;

/// A task given to the streaming runner: reports its end exactly once, and frees its place
/// in the slot even if it is dropped unreported (a panic).
struct StreamToken {
    id: TaskId,
    done: Option<Completion>,
    state: Arc<(Mutex<SlotState>, Condvar)>,
    worker: WorkerId,
}

impl StreamToken {
    fn finish(mut self, outcome: Result<Execution, InterfaceError>) {
        release(&self.state, self.worker, self.id);
        if let Some(done) = self.done.take() {
            done.finish(outcome);
        }
    }
}

impl Drop for StreamToken {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            release(&self.state, self.worker, self.id);
            done.finish(Err(InterfaceError::new(format!(
                "internal error: the streaming slot lost {}",
                self.id
            ))));
        }
    }
}

/// Why a task cannot run in stream mode, if it cannot.
fn stream_unfit(task: &PreparedTask) -> Option<String> {
    if !task.spec.input_files.is_empty() || !task.spec.outputs.is_empty() {
        return Some(format!(
            "{}: a streaming program's tasks cannot have input files or declared outputs \
             (one process serves many tasks in one directory)",
            task.id
        ));
    }
    None
}

/// Reports every task in `backlog` that was cancelled before it started (it never starts),
/// so a cancel does not wait for its key's turn to come.
fn finish_cancelled(
    backlog: &mut VecDeque<SlotJob>,
    host: &str,
    state: &Arc<(Mutex<SlotState>, Condvar)>,
    worker: WorkerId,
) {
    if !backlog.iter().any(|(_, control, _)| control.is_cancelled()) {
        return;
    }
    let (cancelled, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(backlog)
        .into_iter()
        .partition(|(_, control, _)| control.is_cancelled());
    *backlog = kept;
    for (task, _, done) in cancelled {
        release(state, worker, task.id);
        done.finish(Ok(Execution {
            exit: mw_bundle::ExitInfo::Cancelled,
            stdout: Vec::new(),
            stderr_tail: String::new(),
            wall: std::time::Duration::ZERO,
            cpu: std::time::Duration::ZERO,
            host: host.to_string(),
            started: None,
            output_files: Vec::new(),
            missing_outputs: Vec::new(),
        }));
    }
}

/// Runs `first` through the slot's streaming program, then every task of the same key
/// (program, arguments and environment) that arrives, taken out of turn from `backlog`
/// (where what arrives for other keys waits, in order): the run ends when no task of its
/// key is left, or after [`STREAM_RUN_CAP`] tasks once an older task of another key waits.
#[allow(clippy::too_many_arguments)]
fn run_stream(
    first: SlotJob,
    rx: &std::sync::mpsc::Receiver<SlotJob>,
    backlog: &mut VecDeque<SlotJob>,
    stream: &mut Option<(StreamKey, StreamRunner)>,
    dir: &Path,
    host: &str,
    state: &Arc<(Mutex<SlotState>, Condvar)>,
    worker: WorkerId,
) {
    let (task, control, done) = first;
    if let Some(why) = stream_unfit(&task) {
        release(state, worker, task.id);
        done.finish(Err(InterfaceError::new(why)));
        return;
    }
    if !stream.as_ref().is_some_and(|(k, _)| k.matches(&task)) {
        // Stop the old program before emptying its directory for the new one.
        stop_stream(stream, state, worker);
        let workdir = match prepare_stream_dir(&task, dir) {
            Ok(w) => w,
            Err(e) => {
                release(state, worker, task.id);
                done.finish(Err(e));
                return;
            }
        };
        let spec = &task.spec;
        let mut p = StreamProgram::new(spec.program.executable().to_path_buf(), workdir);
        p.args = spec.program.base_args().to_vec();
        p.args.extend(spec.args.iter().cloned());
        p.env = spec.env.clone();
        *stream = Some((StreamKey::of(&task), StreamRunner::new(p)));
        lock(state)
            .affinity
            .set_process(worker, Some(StreamKey::hash_of(&task)));
    }
    let Some((key, runner)) = stream.as_mut() else {
        return;
    };
    let token = |task: &PreparedTask, done: Completion| StreamToken {
        id: task.id,
        done: Some(done),
        state: state.clone(),
        worker,
    };
    let input = |task: &PreparedTask, control: ProcessControl| StreamInput {
        line: serde_json::to_vec(&task.spec.input).unwrap_or_else(|_| b"null".to_vec()),
        timeout: task.spec.timeout,
        control,
        // A longer answer fails the task naming its limit, and is never read whole.
        max_answer_bytes: Some(task.spec.max_output_bytes),
    };
    let mut first = Some((input(&task, control), token(&task, done)));
    let mut served = 0u32;
    runner.serve(
        || {
            if let Some(f) = first.take() {
                served += 1;
                return Some(f);
            }
            backlog.extend(rx.try_iter());
            let at = backlog.iter().position(|(task, _, _)| {
                task.spec.program.mode() == ProgramMode::Stream
                    && key.matches(task)
                    && stream_unfit(task).is_none()
            })?;
            if at > 0 && served >= STREAM_RUN_CAP {
                return None;
            }
            let (task, control, done) = backlog.remove(at)?;
            served = served.saturating_add(1);
            Some((input(&task, control), token(&task, done)))
        },
        |token: StreamToken, o: StreamOutcome| {
            token.finish(Ok(Execution {
                exit: o.exit,
                stdout: o.result,
                stderr_tail: o.stderr_tail,
                wall: o.wall,
                // A long-lived process's CPU time is not split per task.
                cpu: std::time::Duration::ZERO,
                host: host.to_string(),
                started: Some(o.started),
                output_files: Vec::new(),
                missing_outputs: Vec::new(),
            }))
        },
    );
}

/// The slot's emptied working directory with the program's files linked in.
fn prepare_stream_dir(task: &PreparedTask, dir: &Path) -> Result<PathBuf, InterfaceError> {
    let workdir = fresh_workdir(dir)?;
    for (name, path) in task.spec.program.files() {
        let link = workdir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(path, &link).map_err(|e| {
                InterfaceError::new(format!("linking program file {}: {e}", path.display()))
            })?;
        }
    }
    Ok(workdir)
}

impl Interface for Multicore {
    fn name(&self) -> &'static str {
        "multicore"
    }

    fn reserve_worker(&self, task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        let key =
            (task.spec.program.mode() == ProgramMode::Stream).then(|| StreamKey::hash_of(task));
        let mut st = lock(&self.state);
        loop {
            if st.shut_down {
                return Err(InterfaceError::new("the multicore interface was shut down"));
            }
            let state = &mut *st;
            let slot = match key {
                // A streaming task goes to a slot serving its program key, if one is free
                // enough: its slot then serves that key's tasks in runs, not one at a time.
                Some(key) => crate::interface::reserve_with_affinity(
                    &mut state.load,
                    STREAM_SLOT_DEPTH,
                    &state.affinity,
                    key,
                ),
                // The least-loaded slot, if it can take one more.
                None => crate::interface::reserve_least_loaded(&mut state.load, DEPTH, task),
            };
            if let Some(slot) = slot {
                return Ok(slot);
            }
            st = crate::guard::wait(&self.state.1, st);
        }
    }

    fn execute_task(&self, task: Arc<PreparedTask>, worker: WorkerId, done: Completion) {
        let control = ProcessControl::new();
        {
            let mut st = lock(&self.state);
            st.running.insert(task.id, control.clone());
            st.started += 1;
            if task.spec.program.mode() == ProgramMode::Stream {
                let key = StreamKey::hash_of(&task);
                st.affinity.add(worker, key);
                st.stream_keys.insert(task.id, key);
            }
        }
        let id = task.id;
        let mut threads = crate::guard::lock(&self.slot_threads);
        let slot = worker.0 as usize;
        // No slot thread starts once shut down (no exit token left to give it).
        let exit_token = threads
            .get(slot)
            .is_some_and(Option::is_none)
            .then(|| crate::guard::lock(&self.slot_exits).tx.clone())
            .flatten();
        // Why a slot could not start, for the task that needed it.
        let mut why_no_slot = String::from("the multicore interface was shut down");
        if let Some(exit_token) = exit_token {
            self.sweep
                .call_once(|| sweep_stale_slots(self.scratch_root.as_deref()));
            // The slot's own directory (random name), kept for the slot thread's lifetime,
            // with a lock held as long as it is in use (so a later master can tell a
            // directory a killed master left behind).
            match slot_dir(self.scratch_root.as_deref()) {
                Err(e) => why_no_slot = format!("cannot make a worker slot's directory: {e}"),
                Ok((dir, lock)) => {
                    let path = dir.path().to_path_buf();
                    let (tx, rx) = std::sync::mpsc::channel::<SlotJob>();
                    let state = self.state.clone();
                    let host = self.host.clone();
                    let sink = crate::guard::lock(&self.handles).clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("mw-slot-{slot}"))
                        .spawn(move || {
                            slot_loop(&rx, dir.path(), &host, &state, worker, sink.as_ref());
                            // The directory goes while its lock is still held (a task may have
                            // left directories it cannot write to), then the lock, and then
                            // shutdown may stop waiting for this slot.
                            make_writable(dir.path());
                            if let Err(e) = dir.close() {
                                log::debug!("cannot remove a slot directory: {e}");
                            }
                            drop(lock);
                            drop(exit_token);
                        });
                    match spawned {
                        Ok(_) => {
                            let work: Arc<str> = format!(":{}", path.join("work").display()).into();
                            threads[slot] = Some((tx, path, work));
                        }
                        Err(e) => why_no_slot = format!("cannot start a worker slot's thread: {e}"),
                    }
                }
            }
        }
        let Some((tx, _, work)) = threads.get(slot).and_then(Option::as_ref) else {
            drop(threads);
            release(&self.state, worker, id);
            done.finish(Err(InterfaceError::new(why_no_slot)));
            return;
        };
        let sink = crate::guard::lock(&self.handles).clone();
        if let Some(sink) = sink {
            // The handle names the process and the slot's working directory (unique, random)
            // it started in, so a resumed master can tell its own leftover from an unrelated
            // process that reused the pid (see `stop_leftover`).
            let host = self.handle_host.clone();
            let work = work.clone();
            control.set_on_start(move |pid| {
                sink.record_handle(id, &format!("local:{host}:{pid}{work}"));
            });
        }
        let sent = tx.send((task, control, done)).map_err(|e| e.0 .2);
        drop(threads);
        if let Err(done) = sent {
            release(&self.state, worker, id);
            done.finish(Err(InterfaceError::new(
                "the worker slot thread has stopped",
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

    fn set_handle_sink(&self, sink: Arc<dyn HandleSink>) {
        *crate::guard::lock(&self.handles) = Some(sink);
    }

    /// Kills the process group a dead master left running (see [`stop_leftover`]).
    fn stop_leftover(&self, handle: &str) {
        stop_leftover_on(&self.host, handle);
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
        let mut threads = crate::guard::lock(&self.slot_threads);
        for t in threads.iter_mut() {
            t.take();
        }
        drop(threads);
        // Wait until each has removed its directory (see `SlotExits`).
        let mut exits = crate::guard::lock(&self.slot_exits);
        exits.tx = None;
        if !crate::guard::wait_for_drop(&exits.rx, SLOT_EXIT_WAIT) {
            log::warn!(
                "a worker slot did not end within {SLOT_EXIT_WAIT:?} of the shutdown; \
                 not waiting for it"
            );
        }
    }
}

/// Kills the process group of a local task a dead master left running, named by its
/// journaled handle (`local:<host>:<pid>:<slot dir>`), when the handle names this host and
/// the process still runs in the slot directory (unique, random) it was started in. What
/// `mw resume` does before running the task again, and `mw cancel` with no master before
/// marking it cancelled.
pub fn stop_leftover(handle: &str) {
    stop_leftover_on(&host_name(), handle);
}

fn stop_leftover_on(this_host: &str, handle: &str) {
    let mut parts = handle.splitn(4, ':');
    let (Some("local"), Some(host), Some(pid), Some(mark)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return;
    };
    if host != this_host || pid <= 1 || mark.is_empty() {
        return;
    }
    // The handle comes from the journal, which may be forged: only a slot's working
    // directory (`…/mw-slot-*/work`) names a task of ours, and only a process that carries an
    // mw task token is one (an unrelated process sitting in some directory is never killed).
    let recorded = Path::new(mark);
    let in_a_slot = recorded.file_name() == Some(std::ffi::OsStr::new("work"))
        && recorded
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with(SLOT_PREFIX));
    if !in_a_slot || !carries_a_task_token(pid) {
        return;
    }
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return;
    };
    let recorded = std::fs::canonicalize(recorded).unwrap_or_else(|_| recorded.to_path_buf());
    // A directory removed meanwhile (by hand, or a tmp cleaner) reads as "<dir> (deleted)".
    let deleted = {
        let mut d = recorded.clone().into_os_string();
        d.push(" (deleted)");
        PathBuf::from(d)
    };
    if cwd == recorded || cwd == deleted {
        // SAFETY: killpg only sends a signal; the process runs in our slot directory and
        // leads its own process group.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
}

/// Whether process `pid`'s environment has an mw task token (`MW_TASK_TOKEN`): a task some
/// mw started.
fn carries_a_task_token(pid: i32) -> bool {
    let key = format!("{}=", mw_worker_runtime::exec::TASK_TOKEN_ENV);
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|var| var.starts_with(key.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure
    use super::*;

    /// A forged journal handle naming an unrelated process (by its pid and the directory it
    /// sits in) kills nothing: it once took `mw cancel` to SIGKILL any process group of the
    /// user's.
    #[test]
    fn a_forged_handle_never_stops_an_unrelated_process() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let fake_slot = dir.path().join(format!("{SLOT_PREFIX}forged")).join("work");
        std::fs::create_dir_all(&fake_slot).unwrap();
        let host = host_name();
        for cwd in [dir.path().to_path_buf(), fake_slot] {
            let mut innocent = std::process::Command::new("sleep")
                .arg("1000")
                .current_dir(&cwd)
                .env_remove(mw_worker_runtime::exec::TASK_TOKEN_ENV)
                .process_group(0)
                .spawn()
                .unwrap();
            let handle = format!("local:{host}:{}:{}", innocent.id(), cwd.display());
            stop_leftover_on(&host, &handle);
            assert!(
                innocent.try_wait().unwrap().is_none(),
                "{handle} stopped an unrelated process"
            );
            innocent.kill().unwrap();
            innocent.wait().unwrap();
        }
    }

    /// A leftover task whose slot directory was removed meanwhile (it reads as
    /// "<dir> (deleted)") is still found and stopped.
    #[test]
    fn a_leftover_whose_slot_directory_was_removed_is_still_stopped() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join(format!("{SLOT_PREFIX}gone")).join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut left = std::process::Command::new("sleep")
            .arg("1000")
            .current_dir(&work)
            .env(mw_worker_runtime::exec::TASK_TOKEN_ENV, "leftover")
            .process_group(0)
            .spawn()
            .unwrap();
        let handle = format!("local:{}:{}:{}", host_name(), left.id(), work.display());
        // Its environment shows in /proc a moment after spawn returns (a vfork parent
        // resumes while the child's exec is still setting up its new stack).
        let pid = i32::try_from(left.id()).unwrap();
        for _ in 0..10_000 {
            if carries_a_task_token(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::fs::remove_dir_all(dir.path().join(format!("{SLOT_PREFIX}gone"))).unwrap();
        stop_leftover_on(&host_name(), &handle);
        // Should it have been missed, a SIGTERM ends it now, and the test fails, not hangs
        // (a SIGKILL sent first has already made the process exit).
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = left.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    /// The sweep keeps a stale slot directory while a process still works in it (a killed
    /// master's leftover task, which `mw cancel` finds by it), and removes it after.
    #[test]
    fn the_sweep_keeps_a_stale_slot_directory_a_process_still_works_in() {
        let root = tempfile::tempdir().unwrap();
        let slot = root.path().join(format!("{SLOT_PREFIX}left"));
        std::fs::create_dir_all(slot.join("work")).unwrap();
        // Its lock file is there and not held: the master that made it is dead.
        std::fs::File::create(slot.join(SLOT_LOCK)).unwrap();
        let mut left = std::process::Command::new("sleep")
            .arg("1000")
            .current_dir(slot.join("work"))
            .spawn()
            .unwrap();
        sweep_stale_slots(Some(root.path()));
        let kept = slot.join("work").is_dir();
        left.kill().unwrap();
        left.wait().unwrap();
        assert!(kept, "the sweep took the directory a task still works in");
        sweep_stale_slots(Some(root.path()));
        assert!(!slot.exists(), "a stale directory nobody uses was kept");
    }

    /// A forged journal's `workers` (or a library caller's) is clamped, never allocated.
    #[test]
    fn slots_are_clamped_not_allocated_as_asked() {
        assert_eq!(Multicore::new(usize::MAX).slots, MAX_SLOTS);
        assert_eq!(Multicore::new(0).slots, 1);
    }

    /// Masters sweeping while another makes its slot directories must never take a live one:
    /// a slot directory is visible to a sweep only with its lock file already held. (The lock
    /// file was once created and then locked: a sweep between the two took the directory of a
    /// starting slot, and its first task failed with "preparing .../work: No such file".)
    #[test]
    fn a_sweep_never_takes_a_slot_directory_being_made() {
        let root = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweepers: Vec<_> = (0..2)
            .map(|_| {
                let (root, stop) = (root.path().to_path_buf(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sweep_stale_slots(Some(&root));
                    }
                })
            })
            .collect();
        let mut lost = 0;
        for _ in 0..1000 {
            match slot_dir(Some(root.path())) {
                Ok((dir, _lock)) => {
                    if !dir.path().join(SLOT_LOCK).exists() {
                        lost += 1;
                    }
                }
                Err(_) => lost += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in sweepers {
            s.join().unwrap();
        }
        assert_eq!(lost, 0, "live slot directories swept or not made");
    }
}
