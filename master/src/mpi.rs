//! The MPI interface (cargo feature `mpi`): `mpirun -n N mw run JOB --interface mpi`.
//!
//! Rank 0 runs the master; ranks 1..N-1 are workers. Each rank makes every MPI call on ONE
//! dedicated thread (`mw-mpi`, which also initializes and finalizes MPI) and talks to the rest
//! of the process through channels:
//!
//! - **rank 0**: [`Interface::execute_task`] packs the task bundle (and, the first time a rank
//!   sees a program, the program bundle: read once and shared by its sends to every rank
//!   that needs it while one is on its way) and hands it to the comm thread, which sends it.
//!   The comm thread receives result bundles with `MPI_Improbe` + `MPI_Mrecv` (the size comes
//!   from the probe, so a large result needs nothing special), spinning briefly and then
//!   sleeping with exponential backoff up to a cap (env `MW_MPI_POLL_US`, default 100 µs);
//!   while only streaming tasks run it polls every [`STREAM_POLL`] without spinning; with
//!   no task in flight it sleeps in a channel receive. It sends without waiting
//!   (`MPI_Isend`, see [`Outbox`]). A `mw-mpi-results` thread decodes result bundles and
//!   finishes the tasks' completions (handed over once per pass), so the comm thread keeps
//!   pumping.
//!   Scheduling is dynamic: [`Interface::reserve_worker`] blocks until some rank is free.
//! - **ranks 1..N-1**: receive program bundles (unpacked once, cached by SHA-256), then task
//!   bundles; each task runs through the worker-runtime library in a private scratch
//!   directory on a separate thread, so the comm thread keeps receiving (and can honour a
//!   cancel message) while the task runs. A failing program is a normal result (the result
//!   bundle carries the failure); a task the rank cannot run at all comes back as an error
//!   message for that task. Neither marks the rank dead. The runner thread runs each task
//!   (each stream) under the panic guard (`guard.rs`): a panic fails the tasks it held
//!   without an outcome, with its message, and a stream starts a fresh program; if the
//!   runner dies anyway, every task it held fails.
//!
//! **A rank that dies** (killed, crashed): Open MPI's `mpirun` notices and aborts the whole
//! job (every rank, rank 0 included, is killed and `mpirun` prints which rank died and exits
//! non-zero), so the in-flight tasks are not retried within that run; run the job with a
//! journal to resume it. The job never hangs silently in that case.
//!
//! **A rank that stops answering** (stopped with SIGSTOP, its node hung, its MPI thread
//! stuck) kills nothing, so `mpirun` does not notice it. A worker rank that holds tasks
//! tells rank 0 it is alive (`ALIVE`) every few seconds; rank 0 gives up a rank that holds
//! tasks and has sent nothing for `MW_MPI_SILENCE_SECS` (default 120 s): the tasks it held
//! fail saying so, it is given no more, and when the master shuts the interface down the
//! job is aborted (`MPI_Finalize` would wait for that rank for ever).
//!
//! **Worker ranks read nothing of the job**: they are sent every program and input, so
//! the CLI starts serving at once when the launcher's environment names a rank above 0
//! ([`launcher_says_worker_rank`]).
//!
//! **A comm thread that panics** (a bug): on rank 0 every task in flight fails with the
//! panic's message and the interface closes (later tasks fail at once), so the master can
//! record them; when it shuts the interface down, the job is aborted (`MPI_Abort`), since
//! `MPI_Finalize` would wait for ranks never told to stop. On a worker rank the job is
//! aborted at once (rank 0 would wait for its tasks for ever).
//!
//! **Malformed messages.** A rank that sends rank 0 a message it cannot read (too short to
//! name its task, an unknown tag, streaming results that do not decode) may have lost some
//! outcomes with it: every task it holds fails saying so, and it is given no more (with no
//! usable rank left, the interface closes). A rank answers ERROR for every task of a batch
//! it cannot read whole (the task ids are readable on their own in both batch formats).
//!
//! **Message sizes.** An MPI count is a C `int`: no message may be 2 GiB or longer. A
//! program bundle, task bundle or streaming input too long for one message fails its task
//! saying so (before anything is sent); a batch is cut before it would pass the limit; on a
//! rank, a result too long for one message fails its task.
//!
//! **Batches.** A rank holds several tasks at once (2 of a process-mode program, so the next
//! one is there when one ends; [`STREAM_RANK_DEPTH`] of a streaming program), and the comm
//! thread sends every task queued for a rank since its last pass in ONE message. A rank runs
//! its tasks in order on one runner thread: process-mode tasks one process each; streaming
//! tasks through one long-lived program ([`mw_worker_runtime::stream`]), the same runner
//! multicore slots use; the tasks of the next batches join the running stream, so the
//! program never drains between batches. Streaming tasks travel as JSON, not bundles (a null
//! task is a few bytes), and their results come back batched too: the runner passes on
//! whatever the program has answered each time it is about to wait for it.
//!
//! Wire protocol (all on `MPI_COMM_WORLD`; messages from one rank arrive in order):
//! rank 0 → worker: `PROGRAM` (bundle bytes), `TASKS` (repeated: u64 LE task id, 64-byte
//! hex SHA-256 of the program, u64 LE length, task bundle bytes; then a trailer of the task
//! ids and their u64 count, [`split_task_ids`]), `STREAM` (the task ids,
//! then what the tasks share as JSON, then each task's limits and input as JSON text:
//! [`encode_stream_batch`]), `CANCEL` (u64 task id), `STOP` (empty);
//! worker → rank 0: `RESULT` (u64 task id, result bundle bytes), `ERROR` (u64 task id,
//! UTF-8 message), `STREAM_RESULTS` (u64 count, then the binary records of
//! [`encode_results`]) or `ALIVE` (empty). Rank 0 drains every in-flight result before `STOP`. Every comm
//! thread sends with `MPI_Isend` and keeps polling while its messages are on their way, and
//! never blocks on its runner, so two peers sending to each other can never deadlock.
//!
//! This module must never know about the journal, job files, the CLI, or other platforms.

use crate::interface::{Completion, Depth, HandleSink, Interface};
use crate::task::{
    Execution, InterfaceError, PreparedTask, ProgramMode, ResultError, TaskId, WorkerId,
};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mw_worker_runtime::stream::{StreamInput, StreamProgram, StreamRunner};
use mw_worker_runtime::{run_task_bytes, ProcessControl, RunOptions, UnpackedProgram};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

const TAG_PROGRAM: i32 = 1;
const TAG_TASKS: i32 = 2;
const TAG_CANCEL: i32 = 3;
const TAG_STOP: i32 = 4;
const TAG_STREAM: i32 = 5;
const TAG_RESULT: i32 = 10;
const TAG_ERROR: i32 = 11;
const TAG_STREAM_RESULTS: i32 = 12;
const TAG_ALIVE: i32 = 13;

/// Tasks of a process-mode program a rank holds at once (one runs, one waits).
const PROCESS_RANK_DEPTH: u32 = 2;
/// Tasks of a streaming program a rank holds at once.
pub const STREAM_RANK_DEPTH: u32 = 1024;
/// Both of those.
const RANK_DEPTH: Depth = Depth {
    process: PROCESS_RANK_DEPTH,
    stream: STREAM_RANK_DEPTH,
};
/// A rank with streaming tasks wakes the scheduler each time this many places are free.
const STREAM_WAKE_EVERY: u32 = 32;

/// Streaming tasks for one rank (the `STREAM` message, see [`encode_stream_batch`]): all
/// share program, args and env.
#[derive(Debug, PartialEq)]
struct StreamBatch {
    /// SHA-256 of the program bundle (sent before with `PROGRAM`).
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    tasks: Vec<StreamTask>,
}

/// The JSON part of a `STREAM` message: what its tasks share (flat, a few levels deep).
#[derive(Debug, Serialize, Deserialize)]
struct StreamHeader {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq)]
struct StreamTask {
    id: u64,
    /// The input as JSON text, serialised compactly (one line). Carried as text, never
    /// parsed on the rank: an input the master accepted (nested up to serde_json's depth
    /// limit) reaches the program as it is.
    input: String,
    timeout_secs: Option<f64>,
    /// The task's `max_output`: a longer answer line fails it (absent: the runner's limit).
    max_output: Option<u64>,
}

/// One streaming task's outcome (in a `STREAM_RESULTS` message, see [`encode_results`]).
#[derive(Debug, PartialEq)]
struct StreamResult {
    id: u64,
    exit: mw_bundle::ExitInfo,
    result: String,
    stderr_tail: String,
    wall_secs: f64,
    started_unix: f64,
    host: String,
}

/// [`SILENCE_ENV`], or [`SILENCE_LIMIT`] when it is unset or not a positive number of
/// seconds (said once in the log).
fn silence_limit() -> Duration {
    let Ok(text) = std::env::var(SILENCE_ENV) else {
        return SILENCE_LIMIT;
    };
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => Duration::from_secs_f64(secs),
        _ => {
            log::warn!(
                "{SILENCE_ENV}={text:?} is not a positive number of seconds; using {}",
                SILENCE_LIMIT.as_secs()
            );
            SILENCE_LIMIT
        }
    }
}

/// Length of a hex SHA-256 in a `TASK` message.
const SHA_LEN: usize = 64;
/// How long a comm thread spins on `MPI_Improbe` before it starts sleeping.
const SPIN: Duration = Duration::from_micros(50);
/// How often a worker rank that runs tasks probes for more tasks, a cancel or stop (the ends
/// of its tasks wake it at once). Short enough that the next batch reaches the runner
/// before it runs dry (measured: at 2 ms, ranks of null streaming tasks idled).
const BUSY_PROBE_INTERVAL: Duration = Duration::from_micros(200);
/// How often rank 0 polls while only streaming tasks run (each rank then holds up to
/// [`STREAM_RANK_DEPTH`] of them, many ms of work): a steady pace without spinning, so the
/// cores go to the programs, and the tasks dispatched meanwhile go in one message.
const STREAM_POLL: Duration = Duration::from_micros(300);
/// How often a worker rank that holds tasks tells rank 0 it is alive (`ALIVE`, empty) when
/// it has sent nothing else meanwhile.
const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// How long rank 0 waits, by default, without a message from a rank that holds tasks before
/// it gives the rank up as hung ([`SILENCE_ENV`] overrides it).
const SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// Seconds (a positive number) rank 0 waits without a message from a rank that holds
/// tasks before it gives the rank up as hung; default [`SILENCE_LIMIT`].
pub const SILENCE_ENV: &str = "MW_MPI_SILENCE_SECS";
/// How long a comm thread waits, at the end, for its last messages to be taken.
const OUTBOX_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// The longest message MPI can carry: its counts are C `int`s (rsmpi panics on a longer
/// slice). Every message is checked against [`message_limit`] before it is sent.
const MPI_MESSAGE_LIMIT: usize = i32::MAX as usize;
/// In debug builds only, a smaller limit than [`MPI_MESSAGE_LIMIT`], in bytes: the tests
/// reach the over-the-limit paths with small files instead of writing 2 GiB. Release builds
/// ignore it (a test hook, not a setting).
const MESSAGE_LIMIT_ENV: &str = "MW_MPI_MESSAGE_LIMIT";

/// The longest message this process sends (see [`MPI_MESSAGE_LIMIT`], [`MESSAGE_LIMIT_ENV`]).
fn message_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let lowered = cfg!(debug_assertions)
            .then(|| std::env::var(MESSAGE_LIMIT_ENV).ok())
            .flatten()
            .and_then(|v| v.trim().parse::<usize>().ok());
        lowered.map_or(MPI_MESSAGE_LIMIT, |n| n.min(MPI_MESSAGE_LIMIT))
    })
}

/// Why `what`, `bytes` long, cannot be sent.
fn too_large(what: &str, bytes: usize) -> String {
    let limit = message_limit();
    if limit == MPI_MESSAGE_LIMIT {
        format!("{what} of {bytes} bytes exceeds MPI's 2 GiB message limit")
    } else {
        format!("{what} of {bytes} bytes exceeds MPI's message limit (lowered to {limit} bytes by {MESSAGE_LIMIT_ENV})")
    }
}

/// The error code of `MPI_Abort` after a comm thread panicked (EX_SOFTWARE).
const ABORT_CODE: i32 = 70;
/// Default backoff cap (µs); override with `MW_MPI_POLL_US`.
const DEFAULT_POLL_US: u64 = 100;
/// Name of rank 0's result-decoding thread.
const RESULTS_THREAD: &str = "mw-mpi-results";

/// The environment variable that chooses hwloc's components, and what [`prepare_process`]
/// sets it to when the user has not: every component but the GL plugin.
const HWLOC_COMPONENTS: (&str, &str) = ("HWLOC_COMPONENTS", "-gl");
/// Variables Open MPI's `mpirun` sets for every process it starts (a rank).
const MPIRUN_MARKERS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK"];

/// Readies this process's environment for `MPI_Init`; call it first thing in `main`, before
/// any other thread starts (it sets an environment variable, which is not thread-safe).
///
/// Open MPI's `MPI_Init` loads the machine's topology with hwloc, and hwloc's GL plugin
/// (Debian's `libhwloc-plugins`, installed with Open MPI) then looks for X servers: with
/// `DISPLAY` unset it opens displays `:0` to `:9`, over TCP ports 6000-6009 when no X socket
/// exists. Where ephemeral ports start low (1024 on some machines), `mpirun`'s own listener
/// can land on one of those ports; each rank then sends it an X11 greeting and waits forever
/// for the answer, and the job hangs before its first task. In a process `mpirun` started,
/// unless the user has chosen hwloc's components, this turns the GL plugin off
/// (`HWLOC_COMPONENTS=-gl`; a rank has no use for GPUs' X displays). Elsewhere it changes
/// nothing, so the task programs of other interfaces inherit the user's environment as is.
pub fn prepare_process() {
    let (name, value) = HWLOC_COMPONENTS;
    let under_mpirun = MPIRUN_MARKERS.iter().any(|m| std::env::var_os(m).is_some());
    if under_mpirun && std::env::var_os(name).is_none() {
        std::env::set_var(name, value);
    }
}

/// Where MPI launchers tell a process its rank in the world before `MPI_Init`: Open MPI
/// (`OMPI_COMM_WORLD_RANK`), PMIx (`PMIX_RANK`) and PMI-1/2 launchers such as MPICH's
/// Hydra (`PMI_RANK`).
const LAUNCHER_RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// Whether the MPI launcher says this process is a worker rank (rank 1 or more), read from
/// its environment before `MPI_Init`. A worker rank is sent everything it runs by rank 0,
/// so the CLI serves ([`serve_worker`]) without reading the job's inputs or journal: they
/// need not exist on the worker ranks' nodes, and N ranks on one node do not each expand
/// a sweep of millions of tasks.
pub fn launcher_says_worker_rank() -> bool {
    LAUNCHER_RANK_VARS.iter().any(|v| {
        std::env::var(v)
            .ok()
            .and_then(|r| r.trim().parse::<u64>().ok())
            .is_some_and(|r| r > 0)
    })
}

/// Where launchers give the world's size before `MPI_Init` (Open MPI, PMI-1/2).
const LAUNCHER_SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// Why this process, read from the launcher's environment before `MPI_Init`, cannot be the
/// master of an MPI job: not started by an MPI launcher, or in a world of one rank (the
/// [`MpiError::SingleRank`] message). `None` when it can, or when the launcher does not
/// say the world's size (`MPI_Init` then decides). For a command that changes a job before
/// it starts its master (`mw retry`): it refuses first, with nothing changed.
pub fn launcher_world_problem() -> Option<String> {
    let launched = LAUNCHER_RANK_VARS
        .iter()
        .chain(&LAUNCHER_SIZE_VARS)
        .any(|v| std::env::var_os(v).is_some());
    match (launched, launcher_world_size()) {
        (false, _) => Some(MpiError::SingleRank(1).to_string()),
        (true, Some(n)) if n < 2 => Some(MpiError::SingleRank(n).to_string()),
        _ => None,
    }
}

/// The world's size as the MPI launcher gave it to this process (before `MPI_Init`), if it
/// did.
pub fn launcher_world_size() -> Option<i32> {
    LAUNCHER_SIZE_VARS.iter().find_map(|v| {
        std::env::var(v)
            .ok()
            .and_then(|n| n.trim().parse::<i32>().ok())
    })
}

/// Serves as a worker rank until rank 0 says stop (see [`Mpi::init`]). An error if MPI
/// makes this process rank 0 after all (the launcher's environment said otherwise): it has
/// prepared no job to be the master of.
pub fn serve_worker() -> Result<(), MpiError> {
    match Mpi::init()? {
        MpiRole::Worker => Ok(()),
        MpiRole::Master(m) => {
            m.shutdown();
            Err(MpiError::Thread(
                "the MPI launcher's environment named a worker rank, but MPI made this \
                 process rank 0"
                    .into(),
            ))
        }
    }
}

/// Errors starting or running the MPI interface.
#[derive(Debug, thiserror::Error)]
pub enum MpiError {
    /// The world has one rank: not started under `mpirun`, or with `-n 1`.
    #[error(
        "mw run --interface mpi must be started under mpirun with at least 2 ranks, \
         e.g. mpirun -n 3 mw run JOB --interface mpi (this process sees an MPI world of size {0})"
    )]
    SingleRank(i32),
    /// MPI was already initialized in this process.
    #[error("MPI is already initialized in this process (Mpi::init may be called only once)")]
    AlreadyInitialized,
    /// The MPI thread could not be started or ended abnormally.
    #[error("the MPI communication thread: {0}")]
    Thread(String),
    /// The MPI thread panicked (and the MPI job was aborted).
    #[error("the MPI communication thread panicked: {0}")]
    Panicked(String),
    /// Worker ranks were given up as hung (the MPI job was aborted at the end: `MPI_Finalize`
    /// would wait for them for ever).
    #[error(
        "MPI ranks {0:?} stopped answering; the MPI job was aborted after every other task ended"
    )]
    Hung(Vec<i32>),
}

/// What [`Mpi::init`] made of this process.
#[derive(Debug)]
pub enum MpiRole {
    /// Rank 0: the master-side interface, to hand to a `Master`.
    Master(Mpi),
    /// A worker rank that has served tasks until rank 0 said stop; MPI is finalized and the
    /// caller should exit (successfully).
    Worker,
}

/// Rank 0's view of the worker ranks.
struct State {
    /// Tasks held by each rank (index = rank; rank 0 is the master and never used).
    load: Vec<u32>,
    running: HashMap<TaskId, i32>,
    programs_sent: HashMap<i32, HashSet<String>>,
    /// Program bundles being sent, by SHA-256: read once for every rank that needs them
    /// meanwhile (the last send done, the bundle is freed and read again when needed).
    program_bytes: HashMap<String, std::sync::Weak<Vec<u8>>>,
    /// Set when no rank will ever be free again (shut down, comm thread gone).
    closed: Option<String>,
    started: u64,
    finished: u64,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    sink: Mutex<Option<Arc<dyn HandleSink>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::guard::lock(&self.state)
    }

    /// Frees `task`'s place on `rank` after it ended there.
    fn release(&self, rank: i32, task: TaskId) {
        let mut st = self.lock();
        if st.running.get(&task) != Some(&rank) {
            return;
        }
        st.running.remove(&task);
        st.finished += 1;
        let mut wake = true;
        if let Some(l) = usize::try_from(rank).ok().and_then(|r| st.load.get_mut(r)) {
            *l = l.saturating_sub(1);
            wake = *l < PROCESS_RANK_DEPTH || *l % STREAM_WAKE_EVERY == 0;
        }
        drop(st);
        if wake {
            self.cond.notify_one();
        }
    }

    /// Frees the places of tasks that ended, under one lock.
    fn release_all(&self, ended: &[(i32, TaskId)]) {
        let mut st = self.lock();
        let mut wake = false;
        for &(rank, task) in ended {
            if st.running.get(&task) != Some(&rank) {
                continue;
            }
            st.running.remove(&task);
            st.finished += 1;
            if let Some(l) = usize::try_from(rank).ok().and_then(|r| st.load.get_mut(r)) {
                *l = l.saturating_sub(1);
                wake |= *l < PROCESS_RANK_DEPTH || *l % STREAM_WAKE_EVERY == 0;
            }
        }
        drop(st);
        if wake {
            self.cond.notify_one();
        }
    }

    fn close(&self, why: &str) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(why.to_string());
        }
        drop(st);
        self.cond.notify_all();
    }
}

/// What a task travels as.
enum Wire {
    /// A process-mode task: its entry of a `TASKS` message (head: id, program SHA-256,
    /// length; then the task bundle).
    Bundle(Vec<u8>, Vec<u8>),
    /// A streaming task: program SHA-256 and its entry.
    Stream(String, StreamTask),
}

impl Wire {
    /// At least the bytes this task adds to its batch's message (a streaming task: its
    /// entry and, if it were alone, its header).
    fn bytes(&self, task: &PreparedTask) -> usize {
        match self {
            // With its id in the trailer, and the trailer's count if it were alone.
            Wire::Bundle(head, bundle) => head.len() + bundle.len() + 16,
            Wire::Stream(_, t) => stream_header_bound(&task.spec.args, &task.spec.env)
                .saturating_add(stream_entry_bytes(t)),
        }
    }
}

/// At most the bytes of a `STREAM` message's count and header (JSON escapes a byte as at
/// most 6).
fn stream_header_bound(args: &[String], env: &BTreeMap<String, String>) -> usize {
    let text: usize = args.iter().map(|a| a.len() + 3).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>();
    text.saturating_mul(6).saturating_add(SHA_LEN + 256)
}

/// The bytes of one task's part of a `STREAM` message (its id, limits, input).
fn stream_entry_bytes(t: &StreamTask) -> usize {
    t.input.len().saturating_add(32)
}

enum Cmd {
    Execute {
        task: Arc<PreparedTask>,
        rank: i32,
        /// The program bundle, when the rank has not had it (one copy for every rank).
        program: Option<Arc<Vec<u8>>>,
        wire: Wire,
        done: Completion,
    },
    Cancel {
        rank: i32,
        task: TaskId,
    },
    Shutdown,
}

/// What came back for a task.
enum Payload {
    /// A result bundle (with the u64 id in front).
    Bundle(Vec<u8>),
    /// The rank could not run it.
    Error(String),
    /// A streaming task's outcome.
    Stream(StreamResult),
}

/// Why `payload` cannot be the outcome of a task of this mode, if it cannot: a rank sends a
/// streaming result only for a streaming task (it carries no output files: a process-mode
/// task with declared outputs would be done without them) and a result bundle only for a
/// process-mode task; an error for either.
fn payload_mismatch(mode: ProgramMode, payload: &Payload) -> Option<&'static str> {
    match (payload, mode) {
        (Payload::Error(_), _)
        | (Payload::Stream(_), ProgramMode::Stream)
        | (Payload::Bundle(_), ProgramMode::Process) => None,
        (Payload::Stream(_), _) => Some("a streaming result, but it is not a streaming task,"),
        (Payload::Bundle(_), _) => Some("a result bundle, but it is a streaming task,"),
    }
}

/// A result (or error) received for a task, on its way to the decoding thread.
struct Finished {
    task: Arc<PreparedTask>,
    rank: i32,
    done: Completion,
    payload: Payload,
}

/// MPI ranks as workers (rank 0 is the master). Build it with [`Mpi::init`].
pub struct Mpi {
    shared: Arc<Shared>,
    cmds: Sender<Cmd>,
    comm: Mutex<Option<JoinHandle<Result<(), MpiError>>>>,
    comm_id: ThreadId,
    size: i32,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi({} worker ranks)", self.size - 1)
    }
}

fn poll_cap() -> Duration {
    let us = std::env::var("MW_MPI_POLL_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_POLL_US)
        .max(1);
    Duration::from_micros(us)
}

/// Spin, then sleep with exponentially growing pauses up to a cap.
struct Backoff {
    spin_until: Option<Instant>,
    sleep: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Self {
        Backoff {
            spin_until: None,
            sleep: Duration::from_micros(1),
            cap,
        }
    }

    fn reset(&mut self) {
        self.spin_until = None;
        self.sleep = Duration::from_micros(1);
    }

    /// How long to wait before the next probe; zero while still in the spin phase.
    fn next_wait(&mut self) -> Duration {
        let now = Instant::now();
        let until = *self.spin_until.get_or_insert(now + SPIN);
        if now < until {
            return Duration::ZERO;
        }
        let d = self.sleep;
        self.sleep = (self.sleep * 2).min(self.cap);
        d
    }
}

/// Appends to `out` the body of a `STREAM_RESULTS` message: for each result, u64 id, f64 wall seconds, f64
/// start (Unix seconds), then four u32-length-prefixed fields: the exit as JSON (empty for
/// the usual `Exited { code: 0 }`), the result, the stderr tail and the host. A binary
/// layout, not JSON: rank 0 reads every result of every rank on its one comm thread, and
/// this costs it a few bounds checks per result instead of a JSON parse.
fn encode_results(results: &[StreamResult], out: &mut Vec<u8>) -> Result<(), String> {
    for r in results {
        out.extend_from_slice(&r.id.to_le_bytes());
        out.extend_from_slice(&r.wall_secs.to_le_bytes());
        out.extend_from_slice(&r.started_unix.to_le_bytes());
        let exit = if r.exit == (mw_bundle::ExitInfo::Exited { code: 0 }) {
            Vec::new()
        } else {
            serde_json::to_vec(&r.exit).map_err(|e| e.to_string())?
        };
        for field in [
            &exit[..],
            r.result.as_bytes(),
            r.stderr_tail.as_bytes(),
            r.host.as_bytes(),
        ] {
            let len = u32::try_from(field.len())
                .map_err(|_| format!("a field of {} bytes is too long", field.len()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(field);
        }
    }
    Ok(())
}

/// Reads what [`encode_results`] wrote (`count` results; sent by a rank, so checked).
fn decode_results_message(count: u64, mut data: &[u8]) -> Result<Vec<StreamResult>, String> {
    fn field(data: &mut &[u8]) -> Result<String, String> {
        let len: [u8; 4] = take(data, 4)?.try_into().map_err(|_| "truncated")?;
        let len = usize::try_from(u32::from_le_bytes(len)).map_err(|_| "field too long")?;
        String::from_utf8(take(data, len)?.to_vec()).map_err(|_| "a field is not UTF-8".into())
    }
    // Each result takes at least 40 bytes: a forged count cannot make us reserve more.
    let mut out = Vec::with_capacity((data.len() / 40).min(usize::try_from(count).unwrap_or(0)));
    while !data.is_empty() {
        let id = u64::from_le_bytes(word(&mut data)?);
        let wall_secs = f64::from_le_bytes(word(&mut data)?);
        let started_unix = f64::from_le_bytes(word(&mut data)?);
        let exit = field(&mut data)?;
        let exit = if exit.is_empty() {
            mw_bundle::ExitInfo::Exited { code: 0 }
        } else {
            serde_json::from_str(&exit).map_err(|e| format!("exit of task {id}: {e}"))?
        };
        out.push(StreamResult {
            id,
            exit,
            result: field(&mut data)?,
            stderr_tail: field(&mut data)?,
            wall_secs,
            started_unix,
            host: field(&mut data)?,
        });
    }
    if out.len() as u64 != count {
        return Err(format!(
            "{} results where the header says {count}",
            out.len()
        ));
    }
    Ok(out)
}

/// The first `n` bytes of `data` (which moves past them), if it has them.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if data.len() < n {
        return Err("truncated".into());
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

/// The next 8 bytes of `data` (which moves past them).
fn word(data: &mut &[u8]) -> Result<[u8; 8], String> {
    take(data, 8)?
        .try_into()
        .map_err(|_| "truncated".to_string())
}

/// The next u64 LE length of `data`, as a `usize` no larger than what is left of it.
fn length(data: &mut &[u8]) -> Result<usize, String> {
    let n = u64::from_le_bytes(word(data)?);
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= data.len())
        .ok_or_else(|| format!("a length of {n} bytes runs past the message"))
}

/// The body of a `STREAM` message: u64 LE count, that many u64 LE task ids (readable on
/// their own, so a rank can answer for every task of a batch it cannot read), the u64
/// length and JSON text of a [`StreamHeader`], then for each task its timeout (f64 LE
/// seconds, NaN for none), its `max_output` (u64 LE, `u64::MAX` for none) and its input
/// (u64 length, JSON text). Binary, so an input travels as the text the master checked: a
/// JSON wrapper would add nesting levels the rank's parser then refuses.
fn encode_stream_batch(batch: &StreamBatch) -> Result<Vec<u8>, String> {
    let header = serde_json::to_vec(&StreamHeader {
        program: batch.program.clone(),
        args: batch.args.clone(),
        env: batch.env.clone(),
    })
    .map_err(|e| e.to_string())?;
    let inputs: usize = batch.tasks.iter().map(|t| t.input.len() + 24).sum();
    let mut out = Vec::with_capacity(16 + 8 * batch.tasks.len() + header.len() + inputs);
    out.extend_from_slice(&(batch.tasks.len() as u64).to_le_bytes());
    for t in &batch.tasks {
        out.extend_from_slice(&t.id.to_le_bytes());
    }
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in &batch.tasks {
        out.extend_from_slice(&t.timeout_secs.unwrap_or(f64::NAN).to_le_bytes());
        out.extend_from_slice(&t.max_output.unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(&(t.input.len() as u64).to_le_bytes());
        out.extend_from_slice(t.input.as_bytes());
    }
    Ok(out)
}

/// The task ids at the head of a `STREAM` message (see [`encode_stream_batch`]), if at
/// least they are whole.
fn stream_batch_ids(mut data: &[u8]) -> Option<Vec<u64>> {
    let count = u64::from_le_bytes(word(&mut data).ok()?);
    let count = usize::try_from(count)
        .ok()
        .filter(|n| n.checked_mul(8).is_some_and(|b| b <= data.len()))?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(u64::from_le_bytes(word(&mut data).ok()?));
    }
    Some(ids)
}

/// Reads a `STREAM` message (sent by rank 0, checked all the same).
fn decode_stream_batch(mut data: &[u8]) -> Result<StreamBatch, String> {
    let ids = stream_batch_ids(data).ok_or("its task ids are truncated")?;
    take(&mut data, 8 + 8 * ids.len())?;
    let header_len = length(&mut data)?;
    let header: StreamHeader = serde_json::from_slice(take(&mut data, header_len)?)
        .map_err(|e| format!("its header: {e}"))?;
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        let timeout = f64::from_le_bytes(word(&mut data)?);
        let max_output = u64::from_le_bytes(word(&mut data)?);
        let len = length(&mut data)?;
        let input = std::str::from_utf8(take(&mut data, len)?)
            .map_err(|_| format!("the input of task {id} is not UTF-8"))?;
        tasks.push(StreamTask {
            id,
            input: input.to_string(),
            timeout_secs: (!timeout.is_nan()).then_some(timeout),
            max_output: (max_output != u64::MAX).then_some(max_output),
        });
    }
    if !data.is_empty() {
        return Err(format!("{} bytes after its last task", data.len()));
    }
    Ok(StreamBatch {
        program: header.program,
        args: header.args,
        env: header.env,
        tasks,
    })
}

/// A `TASKS` message's entries and the task ids of its trailer (that many u64 LE ids, then
/// their u64 LE count, at the end: readable even when an entry is not, so the rank can
/// answer for every task of the batch), if the trailer is whole.
fn split_task_ids(data: &[u8]) -> Option<(&[u8], Vec<u64>)> {
    let (rest, count) = data.split_last_chunk::<8>()?;
    let count = usize::try_from(u64::from_le_bytes(*count)).ok()?;
    let at = rest.len().checked_sub(count.checked_mul(8)?)?;
    let (entries, ids) = rest.split_at(at);
    let ids = ids
        .chunks_exact(8)
        .filter_map(|c| Some(u64::from_le_bytes(c.try_into().ok()?)))
        .collect();
    Some((entries, ids))
}

fn split_id(data: &[u8]) -> Option<(u64, &[u8])> {
    let head: [u8; 8] = data.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(head), &data[8..]))
}

fn with_id(id: u64, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + rest.len());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(rest);
    v
}

impl Mpi {
    /// Initializes MPI on a dedicated thread and decides this process's role.
    ///
    /// - rank 0 of a world of at least 2: returns [`MpiRole::Master`];
    /// - ranks 1..N-1: serve tasks until rank 0 says stop, finalize MPI, return
    ///   [`MpiRole::Worker`] (the caller should then exit);
    /// - a world of size 1 (not under `mpirun`, or `-n 1`): [`MpiError::SingleRank`].
    pub fn init() -> Result<MpiRole, MpiError> {
        let (hello_tx, hello_rx) = mpsc::channel::<Result<(i32, i32), MpiError>>();
        let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                load: Vec::new(),
                running: HashMap::new(),
                programs_sent: HashMap::new(),
                program_bytes: HashMap::new(),
                closed: None,
                started: 0,
                finished: 0,
            }),
            cond: Condvar::new(),
            sink: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let comm = std::thread::Builder::new()
            .name("mw-mpi".into())
            .spawn(move || comm_thread(hello_tx, cmd_rx, thread_shared))
            .map_err(|e| MpiError::Thread(format!("cannot start it: {e}")))?;
        let comm_id = comm.thread().id();
        let join = |comm: JoinHandle<Result<(), MpiError>>| match comm.join() {
            Ok(r) => r,
            Err(_) => Err(MpiError::Thread("it panicked".into())),
        };
        match hello_rx.recv() {
            Ok(Ok((0, size))) => {
                {
                    let mut st = shared.lock();
                    // Rank 0 (the master) is never chosen: it is always "full".
                    st.load = (0..size)
                        .map(|r| if r == 0 { u32::MAX } else { 0 })
                        .collect();
                }
                Ok(MpiRole::Master(Mpi {
                    shared,
                    cmds: cmd_tx,
                    comm: Mutex::new(Some(comm)),
                    comm_id,
                    size,
                }))
            }
            Ok(Ok(_)) => join(comm).map(|()| MpiRole::Worker),
            Ok(Err(e)) => {
                let _ = join(comm);
                Err(e)
            }
            Err(_) => Err(join(comm)
                .err()
                .unwrap_or_else(|| MpiError::Thread("it ended before reporting".into()))),
        }
    }

    /// Number of worker ranks (world size − 1).
    pub fn workers(&self) -> usize {
        (self.size - 1).max(0) as usize
    }
}

/// Body of the `mw-mpi` thread: MPI lives and dies here.
fn comm_thread(
    hello: Sender<Result<(i32, i32), MpiError>>,
    cmds: Receiver<Cmd>,
    shared: Arc<Shared>,
) -> Result<(), MpiError> {
    // Only this thread ever calls MPI, and it is the thread that initialized it: FUNNELED.
    let Some((universe, _provided)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
    else {
        let _ = hello.send(Err(MpiError::AlreadyInitialized));
        return Ok(());
    };
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    if size < 2 {
        let _ = hello.send(Err(MpiError::SingleRank(size)));
        return Ok(()); // `universe` dropped here: MPI_Finalize
    }
    let _ = hello.send(Ok((rank, size)));
    let cap = poll_cap();
    let result = if rank == 0 {
        master_loop(&world, &cmds, &shared, cap)
    } else {
        crate::guard::contain(|| worker_loop(&world, rank, cap))
            .unwrap_or_else(|panic| Err(MpiError::Panicked(panic)))
    };
    if let Err(MpiError::Panicked(why)) = &result {
        // MPI_Finalize would wait for ranks that were never told to stop (rank 0) or for
        // results that never come (a worker): end the whole job instead. Rank 0 first
        // lets the master record its failed tasks, until it shuts the interface down.
        log::error!("mpi: rank {rank}'s MPI thread panicked: {why}");
        if rank == 0 {
            for cmd in cmds.iter() {
                match cmd {
                    Cmd::Execute {
                        task, rank, done, ..
                    } => {
                        shared.release(rank, task.id);
                        done.finish(Err(InterfaceError::new(format!(
                            "the MPI communication thread panicked: {why}"
                        ))));
                    }
                    Cmd::Cancel { .. } => {}
                    Cmd::Shutdown => break,
                }
            }
        }
        log::error!("mpi: aborting the MPI job (MPI_Abort)");
        world.abort(ABORT_CODE);
    }
    if let Err(MpiError::Hung(ranks)) = &result {
        // Every outcome is in and recorded (the master has shut the interface down); only
        // the hung ranks would keep MPI_Finalize waiting.
        log::error!("mpi: ranks {ranks:?} stopped answering: aborting the MPI job (MPI_Abort)");
        world.abort(ABORT_CODE);
    }
    drop(world);
    drop(universe); // MPI_Finalize, on the thread that initialized MPI
    result
}

/// Rank 0's comm thread. A panic in it fails every task in flight with its message and
/// closes the interface (`Err(Panicked)`).
fn master_loop(
    world: &SimpleCommunicator,
    cmds: &Receiver<Cmd>,
    shared: &Arc<Shared>,
    cap: Duration,
) -> Result<(), MpiError> {
    let (fin_tx, fin_rx) = mpsc::channel::<Vec<Finished>>();
    let decoder_shared = shared.clone();
    let decoder = std::thread::Builder::new()
        .name(RESULTS_THREAD.into())
        .spawn(move || decode_results(fin_rx, &decoder_shared))
        .map_err(|e| MpiError::Thread(format!("cannot start the result thread: {e}")))?;
    let mut pump = MasterPump {
        world,
        shared,
        in_flight: HashMap::new(),
        batches: BTreeMap::new(),
        stopping: false,
        fin: fin_tx,
        finished: Vec::new(),
        released: Vec::new(),
        process_in_flight: 0,
        outbox: Outbox::default(),
        broken: HashSet::new(),
        heard: vec![Instant::now(); usize::try_from(world.size()).unwrap_or(0)],
        silence: silence_limit(),
        silence_checked: Instant::now(),
        hung: Vec::new(),
    };
    let pumped = crate::guard::contain(|| pump_loop(world, cmds, &mut pump, cap));
    if let Err(panic) = pumped {
        pump.abandon(&format!("the MPI communication thread panicked: {panic}"));
        drop(pump);
        let _ = decoder.join();
        return Err(MpiError::Panicked(panic));
    }
    // (Not to hung ranks: the job is aborted below instead, and the last messages' sends
    // would wait for them.)
    for r in (1..world.size()).filter(|r| !pump.hung.contains(r)) {
        let _ = pump.outbox.send(world, r, TAG_STOP, Vec::new());
    }
    pump.outbox.flush();
    let hung = std::mem::take(&mut pump.hung);
    drop(pump);
    let _ = decoder.join();
    if hung.is_empty() {
        Ok(())
    } else {
        Err(MpiError::Hung(hung))
    }
}

/// Rank 0's comm thread's loop: until stopped and every result is in.
fn pump_loop(
    world: &SimpleCommunicator,
    cmds: &Receiver<Cmd>,
    pump: &mut MasterPump<'_>,
    cap: Duration,
) {
    let mut backoff = Backoff::new(cap);
    loop {
        let mut progressed = false;
        loop {
            match cmds.try_recv() {
                Ok(cmd) => {
                    progressed = true;
                    pump.handle(cmd);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    pump.begin_stop();
                    break;
                }
            }
        }
        // Everything queued for a rank since the last pass goes in one message.
        pump.send_batches();
        pump.outbox.progress();
        while let Some(probed) = world.any_process().immediate_matched_probe() {
            progressed = true;
            let (data, status) = probed.matched_receive_vec::<u8>();
            pump.on_message(status.source_rank(), status.tag(), data);
        }
        pump.hand_over();
        pump.check_silence();
        if pump.stopping && pump.in_flight.is_empty() {
            break;
        }
        if progressed {
            backoff.reset();
            continue;
        }
        if pump.process_in_flight == 0 && !pump.in_flight.is_empty() && !pump.stopping {
            // Only streaming tasks run, and each rank holds many: poll at a steady pace,
            // leaving the cores to the programs, and let new tasks gather meanwhile (they
            // go in one message per rank on the next pass).
            std::thread::sleep(STREAM_POLL);
            backoff.reset();
            continue;
        }
        if pump.in_flight.is_empty() {
            // Nothing can arrive from the workers: sleep until told something.
            match cmds.recv() {
                Ok(cmd) => pump.handle(cmd),
                Err(_) => pump.begin_stop(),
            }
            backoff.reset();
            continue;
        }
        let wait = backoff.next_wait();
        if wait.is_zero() {
            std::hint::spin_loop();
            continue;
        }
        match cmds.recv_timeout(wait) {
            Ok(cmd) => {
                pump.handle(cmd);
                backoff.reset();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => pump.begin_stop(),
        }
    }
}

/// Rank 0's messages on their way: sent with `MPI_Isend`, so rank 0 never waits for a rank
/// to take a message (Open MPI hands over a message larger than its eager limit, 4 KiB on
/// shared memory, only once the receiver matches it, and a rank's comm thread sleeps
/// between polls while its tasks run). Each message's buffer is kept here until MPI reports
/// the send complete; [`Outbox::progress`] on every pass frees what went.
#[derive(Default)]
struct Outbox {
    /// (request, destination rank, bytes).
    pending: Vec<(mpi::ffi::MPI_Request, i32, Message)>,
}

/// A message's bytes: its own, or a program bundle shared by the sends of it to several
/// ranks (read once, freed when the last send is complete).
enum Message {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl Message {
    fn bytes(&self) -> &[u8] {
        match self {
            Message::Owned(v) => v,
            Message::Shared(v) => v,
        }
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Owned(v)
    }
}

impl From<Arc<Vec<u8>>> for Message {
    fn from(v: Arc<Vec<u8>>) -> Self {
        Message::Shared(v)
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({} pending)", self.pending.len())
    }
}

impl Outbox {
    /// Sends `data`, or refuses (`Err` with its length, nothing sent) a message longer than
    /// [`message_limit`].
    fn send(
        &mut self,
        world: &SimpleCommunicator,
        rank: i32,
        tag: i32,
        data: impl Into<Message>,
    ) -> Result<(), usize> {
        let data: Message = data.into();
        let bytes = data.bytes();
        let count = Some(bytes.len())
            .filter(|n| *n <= message_limit())
            .and_then(|n| std::os::raw::c_int::try_from(n).ok())
            .ok_or(bytes.len())?;
        let mut request = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
        // SAFETY: `bytes` points to `count` initialised bytes; its heap buffer stays where it
        // is, unchanged and alive, until MPI_Test reports this request complete: `data` (the
        // Vec, or an Arc of one, which nothing mutates: no `get_mut`/`make_mut` anywhere) is
        // moved into `pending` (a move does not move the heap buffer) and dropped only after
        // completion (`progress`, `flush`, and `Drop` which flushes) or never (`forsake` and
        // `flush` past its limit leak it). The datatype and the
        // communicator are valid handles of the initialised MPI of this (the only MPI) thread,
        // and `request` is read only after MPI_Isend returned success (it wrote it then).
        let rc = unsafe {
            mpi::ffi::MPI_Isend(
                bytes.as_ptr().cast(),
                count,
                u8::equivalent_datatype().as_raw(),
                rank,
                tag,
                world.as_raw(),
                request.as_mut_ptr(),
            )
        };
        if rc != 0 {
            // (With MPI's default error handler this is not reached: an error aborts.)
            log::error!("mpi: MPI_Isend to rank {rank} failed ({rc}); sending it blocking");
            world.process_at_rank(rank).send_with_tag(bytes, tag);
            return Ok(());
        }
        // SAFETY: MPI_Isend succeeded, so it initialised `request`.
        let request = unsafe { request.assume_init() };
        self.pending.push((request, rank, data));
        Ok(())
    }

    /// Lets MPI move the pending messages on and frees the buffers of those sent.
    fn progress(&mut self) {
        self.pending.retain_mut(|(request, _, _)| {
            let mut flag: std::os::raw::c_int = 0;
            // SAFETY: `request` is an active request from MPI_Isend above (MPI_Test sets it
            // to MPI_REQUEST_NULL once complete, and completed entries are removed here).
            unsafe {
                mpi::ffi::MPI_Test(request, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE);
            }
            flag == 0
        });
    }

    /// Stops waiting for the messages to `rank`, given up as hung: the job is aborted at the
    /// end, and [`Outbox::flush`] would otherwise wait [`OUTBOX_FLUSH_LIMIT`] for a rank that
    /// never takes them. Their buffers are leaked, since MPI may still read them.
    fn forsake(&mut self, rank: i32) {
        self.pending.retain_mut(|(_, to, data)| {
            if *to == rank {
                std::mem::forget(std::mem::replace(data, Message::Owned(Vec::new())));
                false
            } else {
                true
            }
        });
    }

    /// Waits until every pending message has gone: the peers receive until the end (worker
    /// ranks until `STOP`, sent last; rank 0 until it has every result, sent before any
    /// later message of a rank). Bounded all the same: what is still pending after
    /// [`OUTBOX_FLUSH_LIMIT`] is left to MPI with its buffer leaked (never freed under it).
    fn flush(&mut self) {
        let t0 = Instant::now();
        while !self.pending.is_empty() {
            self.progress();
            if self.pending.is_empty() {
                break;
            }
            if t0.elapsed() > OUTBOX_FLUSH_LIMIT {
                log::warn!(
                    "mpi: {} message(s) still not taken after {:?}; giving up on them",
                    self.pending.len(),
                    OUTBOX_FLUSH_LIMIT
                );
                for (_, _, data) in self.pending.drain(..) {
                    std::mem::forget(data);
                }
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Tasks waiting to be sent to one rank.
#[derive(Default)]
struct Batch {
    /// At least the bytes its messages will take (kept under [`message_limit`]).
    bytes: usize,
    /// Body of a `TASKS` message.
    bundles: Vec<u8>,
    /// The tasks in `bundles`.
    bundle_ids: Vec<TaskId>,
    /// Streaming tasks, by program SHA-256, args and env (one `STREAM` message each: tasks
    /// whose args or env templates differ interleave, and are sent key by key).
    stream: BTreeMap<StreamKey, Vec<StreamTask>>,
}

struct MasterPump<'a> {
    world: &'a SimpleCommunicator,
    shared: &'a Arc<Shared>,
    in_flight: HashMap<TaskId, (i32, Arc<PreparedTask>, Completion)>,
    batches: BTreeMap<i32, Batch>,
    stopping: bool,
    fin: Sender<Vec<Finished>>,
    /// Outcomes received in this pass, handed to the decoding thread together.
    finished: Vec<Finished>,
    /// Places freed in this pass (rank, task), released together.
    released: Vec<(i32, TaskId)>,
    /// Process-mode tasks in `in_flight` (they need prompt polling: a rank holds 2).
    process_in_flight: usize,
    outbox: Outbox,
    /// Ranks that sent a message rank 0 could not read, or stopped answering: given no
    /// more tasks.
    broken: HashSet<i32>,
    /// When each rank (the index) was last heard from, or last seen holding no task.
    heard: Vec<Instant>,
    /// How long a rank that holds tasks may send nothing ([`silence_limit`]).
    silence: Duration,
    silence_checked: Instant,
    /// Ranks given up as hung: the job is aborted at the end instead of finalized.
    hung: Vec<i32>,
}

impl MasterPump<'_> {
    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Execute {
                task,
                rank,
                program,
                wire,
                done,
            } => {
                crate::crash::panic_point("mpi-comm", Some(task.id.0));
                if self.stopping || self.broken.contains(&rank) {
                    self.shared.release(rank, task.id);
                    done.finish(Err(InterfaceError::new(if self.stopping {
                        "the MPI interface was shut down before the task could start".to_string()
                    } else {
                        format!("MPI rank {rank} is no longer used (it sent a malformed message)")
                    })));
                    return;
                }
                if let Some(p) = program {
                    // Before any task that needs it: messages from one sender arrive in order.
                    self.send_batch(rank);
                    if let Err(n) = self.outbox.send(self.world, rank, TAG_PROGRAM, p) {
                        // (execute_task checked the size: not reached.)
                        self.shared.release(rank, task.id);
                        done.finish(Err(InterfaceError::new(too_large("the program bundle", n))));
                        return;
                    }
                }
                // A batch stays under the message limit: what would push it over goes next.
                let limit = message_limit();
                let size = self.batches.get(&rank).map_or(0, |b| b.bytes);
                if size > 0 && size.saturating_add(wire.bytes(&task)) > limit {
                    self.send_batch(rank);
                }
                let batch = self.batches.entry(rank).or_default();
                match wire {
                    Wire::Bundle(head, bundle) => {
                        if batch.bundles.is_empty() {
                            batch.bytes += 8; // the trailer's count
                        }
                        batch.bytes += head.len() + bundle.len() + 8;
                        batch.bundles.extend_from_slice(&head);
                        batch.bundles.extend_from_slice(&bundle);
                        batch.bundle_ids.push(task.id);
                        self.process_in_flight += 1;
                    }
                    Wire::Stream(sha, entry) => {
                        let key: StreamKey = (sha, task.spec.args.clone(), task.spec.env.clone());
                        if !batch.stream.contains_key(&key) {
                            batch.bytes += stream_header_bound(&key.1, &key.2);
                        }
                        batch.bytes += stream_entry_bytes(&entry);
                        batch.stream.entry(key).or_default().push(entry);
                    }
                }
                self.in_flight.insert(task.id, (rank, task, done));
            }
            Cmd::Cancel { rank, task } => {
                if self
                    .in_flight
                    .get(&task)
                    .is_some_and(|(r, _, _)| *r == rank)
                {
                    // A task still waiting in a batch is sent first, then cancelled.
                    self.send_batch(rank);
                    let id = task.0.to_le_bytes().to_vec();
                    let _ = self.outbox.send(self.world, rank, TAG_CANCEL, id);
                }
            }
            Cmd::Shutdown => self.begin_stop(),
        }
    }

    fn send_batches(&mut self) {
        let ranks: Vec<i32> = self.batches.keys().copied().collect();
        for r in ranks {
            self.send_batch(r);
        }
    }

    fn send_batch(&mut self, rank: i32) {
        let Some(batch) = self.batches.remove(&rank) else {
            return;
        };
        if !batch.bundles.is_empty() {
            let mut body = batch.bundles;
            let first = batch.bundle_ids.first().map(|id| id.0);
            if crate::crash::forge_point("mpi-tasks", first) {
                // A test of the rank: entries cut inside the first one's task id, so only
                // the trailer names the tasks.
                body.truncate(4);
            }
            for id in &batch.bundle_ids {
                body.extend_from_slice(&id.0.to_le_bytes());
            }
            body.extend_from_slice(&(batch.bundle_ids.len() as u64).to_le_bytes());
            if let Err(n) = self.outbox.send(self.world, rank, TAG_TASKS, body) {
                // (Batches are capped and each task checked: not reached.)
                self.fail_unsent(&batch.bundle_ids, &too_large("a batch of task bundles", n));
            }
        }
        for ((sha, args, env), tasks) in batch.stream {
            let msg = StreamBatch {
                program: sha,
                args,
                env,
                tasks,
            };
            let ids: Vec<TaskId> = msg.tasks.iter().map(|t| TaskId(t.id)).collect();
            match encode_stream_batch(&msg) {
                Ok(bytes) => {
                    if let Err(n) = self.outbox.send(self.world, rank, TAG_STREAM, bytes) {
                        // (Batches are capped and each task checked: not reached.)
                        self.fail_unsent(&ids, &too_large("a batch of streaming tasks", n));
                    }
                }
                Err(e) => self.fail_unsent(&ids, &format!("encoding the stream batch: {e}")),
            }
        }
    }

    /// Fails tasks whose message could not be sent.
    fn fail_unsent(&mut self, ids: &[TaskId], why: &str) {
        for id in ids {
            if let Some((rank, task, done)) = self.in_flight.remove(id) {
                if task.spec.program.mode() == ProgramMode::Process {
                    self.process_in_flight = self.process_in_flight.saturating_sub(1);
                }
                self.shared.release(rank, task.id);
                done.finish(Err(InterfaceError::new(why)));
            }
        }
    }

    /// Stops accepting work and cancels whatever runs; the loop ends once all results are in.
    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.shared.close("the MPI interface was shut down");
        self.send_batches();
        for (id, (rank, _, _)) in &self.in_flight {
            let id = id.0.to_le_bytes().to_vec();
            let _ = self.outbox.send(self.world, *rank, TAG_CANCEL, id);
        }
    }

    /// Takes a received outcome; [`MasterPump::hand_over`] passes it on.
    fn finished(&mut self, rank: i32, id: u64, payload: Payload) {
        match self.in_flight.get(&TaskId(id)) {
            Some((r, _, _)) if *r == rank => {}
            _ => {
                log::warn!(
                    "mpi: ignoring a result for task {id} from rank {rank}, which is not running it"
                );
                return;
            }
        }
        let Some((_, task, done)) = self.in_flight.remove(&TaskId(id)) else {
            return;
        };
        let mode = task.spec.program.mode();
        if mode == ProgramMode::Process {
            self.process_in_flight = self.process_in_flight.saturating_sub(1);
        }
        let payload = match payload_mismatch(mode, &payload) {
            None => payload,
            Some(why) => Payload::Error(format!("MPI rank {rank} sent {why} for task {id}")),
        };
        self.released.push((rank, task.id));
        self.finished.push(Finished {
            task,
            rank,
            done,
            payload,
        });
    }

    /// Frees the places of the outcomes received so far (one lock) and hands them to the
    /// decoding thread (one wake-up).
    fn hand_over(&mut self) {
        if !self.released.is_empty() {
            self.shared.release_all(&self.released);
            self.released.clear();
        }
        if self.finished.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.finished);
        if let Err(mpsc::SendError(batch)) = self.fin.send(batch) {
            // The decoder is gone (it panicked): report instead of losing the tasks.
            for f in batch {
                f.done.finish(Err(InterfaceError::new(
                    "the MPI result thread is gone; result dropped",
                )));
            }
        }
    }

    /// Stops using `rank` after it sent a message rank 0 cannot read (its tasks' outcomes
    /// may be among what was lost): fails every task it holds (and asks it to cancel them),
    /// and gives it no more; with no usable rank left, closes the interface.
    fn quarantine(&mut self, rank: i32, why: &str) {
        log::error!("mpi: rank {rank} sent {why}; it is given no more tasks");
        self.broken.insert(rank);
        let ids: Vec<TaskId> = self
            .in_flight
            .iter()
            .filter(|(_, (r, _, _))| *r == rank)
            .map(|(id, _)| *id)
            .collect();
        // What still waits for it is never sent; a cancel for a task the rank never got is
        // ignored there.
        self.batches.remove(&rank);
        // (A hung rank would never take them: the end of the job would wait for them.)
        for id in ids.iter().filter(|_| !self.hung.contains(&rank)) {
            let _ = self
                .outbox
                .send(self.world, rank, TAG_CANCEL, id.0.to_le_bytes().to_vec());
        }
        {
            let mut st = self.shared.lock();
            // Its places are not freed (the scheduler would hand it more meanwhile): it is
            // as full as rank 0, never chosen again.
            for id in &ids {
                if st.running.remove(id).is_some() {
                    st.finished += 1;
                }
            }
            if let Some(l) = usize::try_from(rank).ok().and_then(|r| st.load.get_mut(r)) {
                *l = u32::MAX;
            }
        }
        // (Their places are gone with the rank: `release` finds nothing to free.)
        self.fail_unsent(&ids, &format!("MPI rank {rank} sent {why}"));
        // (A task handed to it before this still frees its place, taking its load just
        // under the maximum: count the ranks given up, not the full ones.)
        let workers = usize::try_from(self.world.size())
            .unwrap_or(0)
            .saturating_sub(1);
        if self.broken.len() >= workers {
            self.shared
                .close("every MPI worker rank was given up (a malformed message, or silence); none is used");
        }
    }

    fn on_message(&mut self, rank: i32, tag: i32, data: Vec<u8>) {
        if let Some(h) = usize::try_from(rank)
            .ok()
            .and_then(|r| self.heard.get_mut(r))
        {
            *h = Instant::now();
        }
        if tag == TAG_ALIVE {
            return;
        }
        let Some((id, rest)) = split_id(&data) else {
            self.quarantine(
                rank,
                &format!(
                    "a malformed message ({} bytes with tag {tag}: too short)",
                    data.len()
                ),
            );
            return;
        };
        match tag {
            TAG_RESULT => self.finished(rank, id, Payload::Bundle(data)),
            TAG_ERROR => {
                // A rank sends a few lines (cut at 64 KiB); rank 0 keeps no more, whatever
                // came.
                let mut msg = String::from_utf8_lossy(rest).into_owned();
                mw_bundle::text::clip(&mut msg, MAX_RANK_TEXT);
                let msg = format!("MPI rank {rank} could not run task {id}: {msg}");
                self.finished(rank, id, Payload::Error(msg))
            }
            TAG_STREAM_RESULTS => match decode_results_message(id, rest) {
                Ok(results) => {
                    for r in results {
                        let id = r.id;
                        self.finished(rank, id, Payload::Stream(r));
                    }
                }
                Err(e) => self.quarantine(rank, &format!("malformed streaming results ({e})")),
            },
            _ => self.quarantine(rank, &format!("a message with unknown tag {tag}")),
        }
    }
}

impl MasterPump<'_> {
    /// Gives up (about once a second) every rank that holds tasks and has sent nothing for
    /// longer than the silence limit: stopped (SIGSTOP), its node hung, its MPI thread
    /// stuck. Its tasks fail saying so (a retry policy runs them again on other ranks) and
    /// it is given no more; at the end the job is aborted, since `MPI_Finalize` would wait
    /// for it. A rank that holds tasks says it is alive every [`ALIVE_EVERY`] at least.
    fn check_silence(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.silence_checked) < Duration::from_secs(1) {
            return;
        }
        self.silence_checked = now;
        let busy: HashSet<i32> = self.in_flight.values().map(|(r, _, _)| *r).collect();
        let mut silent = Vec::new();
        for (r, heard) in self.heard.iter_mut().enumerate().skip(1) {
            let Ok(rank) = i32::try_from(r) else { break };
            if !busy.contains(&rank) || self.broken.contains(&rank) {
                // An idle rank has nothing to say: its clock starts when it holds tasks.
                *heard = now;
            } else if now.duration_since(*heard) > self.silence {
                silent.push((rank, now.duration_since(*heard)));
            }
        }
        for (rank, quiet) in silent {
            self.hung.push(rank);
            self.outbox.forsake(rank);
            self.quarantine(
                rank,
                &format!(
                    "nothing for {:.0} s while it held tasks (stopped, hung, or its node is \
                     unreachable; the limit is {SILENCE_ENV}={})",
                    quiet.as_secs_f64(),
                    self.silence.as_secs_f64()
                ),
            );
        }
    }

    /// Gives up: passes on what came in, fails every task in flight with `why`, frees their
    /// places and closes the interface (later tasks fail at once instead of waiting for a
    /// rank for ever).
    fn abandon(&mut self, why: &str) {
        self.shared.close(why);
        self.hand_over();
        let ended: Vec<(i32, TaskId)> = self
            .in_flight
            .iter()
            .map(|(id, (r, _, _))| (*r, *id))
            .collect();
        self.shared.release_all(&ended);
        for (id, (rank, _, done)) in self.in_flight.drain() {
            done.finish(Err(InterfaceError::new(format!(
                "{why} (while {id} ran on MPI rank {rank})"
            ))));
        }
        self.process_in_flight = 0;
    }
}

impl Drop for MasterPump<'_> {
    fn drop(&mut self) {
        self.abandon("the MPI interface stopped");
    }
}

/// The `mw-mpi-results` thread: decodes result bundles and finishes completions.
fn decode_results(rx: Receiver<Vec<Finished>>, shared: &Arc<Shared>) {
    for f in rx.into_iter().flatten() {
        let (task, rank) = (f.task.clone(), f.rank);
        // What a rank sent is read under a guard: a panic fails this task with its message,
        // and the thread goes on with the others.
        let outcome = crate::guard::contain(|| match f.payload {
            Payload::Bundle(data) => {
                let label = format!("result bundle of {} from MPI rank {rank}", task.id);
                match data.get(8..) {
                    Some(bundle) => match Execution::from_result_bundle_of(bundle, &label, &task) {
                        Err(ResultError::Local(why)) => {
                            // This machine cannot store it: the master stops (with a journal),
                            // and the task is queued again for `mw resume` (the rank's result
                            // is gone).
                            let sink = crate::guard::lock(&shared.sink).clone();
                            if let Some(sink) = sink {
                                sink.cannot_store(&why);
                            }
                            Err(InterfaceError::new(why))
                        }
                        other => other.map_err(InterfaceError::from),
                    },
                    None => Err(InterfaceError::new(format!("{label}: message too short"))),
                }
            }
            Payload::Error(msg) => Err(InterfaceError::new(msg)),
            Payload::Stream(r) => stream_execution(r, rank, task.spec.max_output_bytes),
        })
        .unwrap_or_else(|panic| {
            Err(InterfaceError::new(format!(
                "{}: internal error while reading its result from MPI rank {rank}: {panic}",
                task.id
            )))
        });
        f.done.finish(outcome);
    }
}

/// The most of a text a rank sends (an error, a host name, a stderr tail, a reason) that rank
/// 0 keeps: each is copied into messages and the journal, and a rank may send anything.
const MAX_RANK_TEXT: usize = 64 * 1024;

/// A streaming task's outcome from a rank as an execution (times checked like a bundle's;
/// its texts cut to [`MAX_RANK_TEXT`], an error the program reported to `max_output` bytes,
/// the most it may be where the task runs).
fn stream_execution(
    mut r: StreamResult,
    rank: i32,
    max_output: u64,
) -> Result<Execution, InterfaceError> {
    use mw_bundle::{text::clip, ExitInfo};
    clip(&mut r.host, MAX_RANK_TEXT);
    if r.stderr_tail.len() > MAX_RANK_TEXT {
        r.stderr_tail = mw_bundle::text::tail(&r.stderr_tail, MAX_RANK_TEXT).to_string();
    }
    match &mut r.exit {
        ExitInfo::SpawnFailed { reason } | ExitInfo::StreamBroken { reason } => {
            clip(reason, MAX_RANK_TEXT)
        }
        ExitInfo::ErrorReported { error } => {
            clip(error, usize::try_from(max_output).unwrap_or(usize::MAX))
        }
        _ => {}
    }
    let label = format!("stream result of task {} from MPI rank {rank}", r.id);
    let secs = |field: &str, v: f64| {
        if v.is_finite() && (0.0..=crate::task::MAX_REPORTED_SECS).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(InterfaceError::new(format!(
                "{label}: {field} = {v} is out of range"
            )))
        }
    };
    let wall = secs("wall_secs", r.wall_secs)?;
    let started = std::time::UNIX_EPOCH + secs("started_unix", r.started_unix)?;
    Ok(Execution {
        exit: r.exit,
        stdout: r.result.into_bytes(),
        stderr_tail: r.stderr_tail,
        wall,
        cpu: Duration::ZERO,
        host: r.host,
        started: Some(started),
        output_files: Vec::new(),
        missing_outputs: Vec::new(),
    })
}

/// Work for a rank's runner thread.
enum Job {
    /// Process-mode tasks: (id, program, task bundle, control).
    Bundles(Vec<(u64, Arc<UnpackedProgram>, Vec<u8>, ProcessControl)>),
    /// Streaming tasks of one program.
    Stream {
        program: Arc<UnpackedProgram>,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        tasks: Vec<(StreamTask, ProcessControl)>,
    },
}

/// What the runner thread reports.
enum Done {
    Bundle(u64, Result<Vec<u8>, String>),
    /// Streaming outcomes, gathered while the program worked (see [`runner_loop`]).
    Stream(Vec<StreamResult>),
    /// These tasks, those of them not reported yet, failed (the runner panicked).
    Failed(Vec<u64>, String),
}

/// Program SHA-256, args and env: what tasks sharing one streaming process have in common.
type StreamKey = (String, Vec<String>, BTreeMap<String, String>);

/// Bytes of streaming results (answers and stderr) gathered before they are passed on even
/// though the program has more answers ready, so one `STREAM_RESULTS` message stays small.
const GATHER_BYTES: usize = 1 << 20;

/// A rank's runner thread: runs its jobs in order of arrival; streaming ones through one
/// long-lived program per (program, args, env), kept between batches. Streaming tasks of
/// later batches with the running program's key join the running stream as they come, also
/// ahead of waiting batches of other keys (not of process-mode tasks), so the program never
/// drains between batches and tasks whose keys interleave are served key by key instead of
/// restarting the program for each; outcomes go to the comm thread in groups: whatever the
/// program had answered each time the runner is about to wait for it.
fn runner_loop(jobs: Receiver<Job>, out: Sender<Done>, rank: i32, opts: RunOptions) {
    let host = mw_worker_runtime::exec::host_name();
    let mut stream: Option<(StreamKey, StreamRunner)> = None;
    let mut stream_dir: Option<tempfile::TempDir> = None;
    // Jobs taken from the channel and not run yet, in order of arrival.
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    loop {
        let job = match waiting.pop_front() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        match job {
            Job::Bundles(tasks) => {
                for (id, program, bundle, control) in tasks {
                    let label = format!("task bundle of task {id} on MPI rank {rank}");
                    // A panic fails this task with its message; the runner goes on.
                    let outcome = crate::guard::contain(|| {
                        crate::crash::panic_point("mpi-runner", Some(id));
                        run_task_bytes(&program, &bundle, &label, &control, &opts)
                            .map(|(_, bytes)| with_id(id, &bytes))
                            .map_err(|e| e.to_string())
                    })
                    .unwrap_or_else(|panic| {
                        Err(format!("internal error on MPI rank {rank}: {panic}"))
                    });
                    let _ = out.send(Done::Bundle(id, outcome));
                }
            }
            Job::Stream {
                program,
                args,
                env,
                tasks,
            } => {
                // Every task this stream took (the next batches' too), so that a panic fails
                // those without an outcome instead of leaving them running for ever.
                let held: std::cell::RefCell<Vec<u64>> =
                    std::cell::RefCell::new(tasks.iter().map(|(t, _)| t.id).collect());
                let gathered: std::cell::RefCell<(Vec<StreamResult>, usize)> =
                    std::cell::RefCell::new((Vec::new(), 0));
                let flush = || {
                    let mut g = gathered.borrow_mut();
                    if !g.0.is_empty() {
                        let batch = std::mem::take(&mut g.0);
                        g.1 = 0;
                        let _ = out.send(Done::Stream(batch));
                    }
                };
                let served = crate::guard::contain(|| {
                    let key = (program.sha256().to_string(), args, env);
                    if stream.as_ref().is_none_or(|(k, _)| *k != key) {
                        stream = None;
                        let dir = match make_stream_dir(&program, &opts) {
                            Ok(d) => d,
                            Err(e) => {
                                for (t, _) in tasks {
                                    let _ = out.send(Done::Bundle(
                                        t.id,
                                        Err(format!("preparing the streaming program: {e}")),
                                    ));
                                }
                                return;
                            }
                        };
                        let mut p =
                            StreamProgram::new(program.executable(), dir.path().join("work"));
                        p.args = program.base_args();
                        p.args.extend(key.1.iter().cloned());
                        p.env = key.2.clone();
                        // A killed rank must not leave its program running.
                        p.die_with_parent = true;
                        stream_dir = Some(dir);
                        stream = Some((key, StreamRunner::new(p)));
                    }
                    let Some((key, runner)) = stream.as_mut() else {
                        return;
                    };
                    let mut queue: std::collections::VecDeque<(StreamTask, ProcessControl)> =
                        tasks.into();
                    let mut source = || loop {
                        if let Some((mut t, control)) = queue.pop_front() {
                            crate::crash::panic_point("mpi-runner", Some(t.id));
                            let input = StreamInput {
                                line: std::mem::take(&mut t.input).into_bytes(),
                                timeout: t
                                    .timeout_secs
                                    .filter(|s| s.is_finite() && *s >= 0.0)
                                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                                control,
                                max_answer_bytes: t.max_output,
                            };
                            return Some((input, t.id));
                        }
                        // The next batches of the same key join this stream, also past those
                        // of other keys (their tasks interleave when a job's args or env
                        // vary: served key by key, the program is not restarted for each),
                        // but not past process-mode tasks.
                        let same = |j: &Job| {
                            matches!(j, Job::Stream { program, args, env, .. }
                            if program.sha256() == key.0 && *args == key.1 && *env == key.2)
                        };
                        let before_bundles = waiting
                            .iter()
                            .position(|j| matches!(j, Job::Bundles(_)))
                            .unwrap_or(waiting.len());
                        if let Some(at) = waiting.iter().take(before_bundles).position(same) {
                            if let Some(Job::Stream { tasks, .. }) = waiting.remove(at) {
                                held.borrow_mut().extend(tasks.iter().map(|(t, _)| t.id));
                                queue.extend(tasks);
                            }
                            continue;
                        }
                        if before_bundles < waiting.len() {
                            return None; // process-mode tasks wait
                        }
                        match jobs.try_recv() {
                            Ok(j) if same(&j) => {
                                if let Job::Stream { tasks, .. } = j {
                                    held.borrow_mut().extend(tasks.iter().map(|(t, _)| t.id));
                                    queue.extend(tasks);
                                }
                            }
                            Ok(other) => waiting.push_back(other),
                            Err(_) => return None,
                        }
                    };
                    runner.serve_with(
                        &mut source,
                        |id, o| {
                            let r = StreamResult {
                                id,
                                exit: o.exit,
                                result: String::from_utf8_lossy(&o.result).into_owned(),
                                stderr_tail: o.stderr_tail,
                                wall_secs: o.wall.as_secs_f64(),
                                started_unix: o
                                    .started
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0.0, |d| d.as_secs_f64()),
                                host: host.clone(),
                            };
                            let full = {
                                let mut g = gathered.borrow_mut();
                                g.1 += r.result.len() + r.stderr_tail.len();
                                g.0.push(r);
                                g.1 >= GATHER_BYTES
                            };
                            if full {
                                flush();
                            }
                        },
                        flush,
                    );
                });
                flush();
                if let Err(panic) = served {
                    // The program and its state are unknown: the next tasks start a new one.
                    stream = None;
                    stream_dir = None;
                    let msg = format!("internal error on MPI rank {rank}: {panic}");
                    let _ = out.send(Done::Failed(held.into_inner(), msg));
                }
            }
        }
    }
    drop(stream);
    drop(stream_dir);
}

/// A private directory for a streaming program, with the program's files linked in `work/`.
fn make_stream_dir(
    program: &UnpackedProgram,
    opts: &RunOptions,
) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("mw-stream-");
    let dir = match &opts.scratch_root {
        Some(root) => b.tempdir_in(root)?,
        None => b.tempdir()?,
    };
    let work = dir.path().join("work");
    std::fs::create_dir(&work)?;
    mw_worker_runtime::run::link_program_files(&program.root(), &work)?;
    Ok(dir)
}

/// A worker rank's comm thread: serve rank 0 until `STOP`.
fn worker_loop(world: &SimpleCommunicator, rank: i32, cap: Duration) -> Result<(), MpiError> {
    let master = world.process_at_rank(0);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("mw-mpi-rank{rank}-"))
        .tempdir();
    let opts = RunOptions {
        scratch_root: scratch.as_ref().ok().map(|d| d.path().to_path_buf()),
        ..RunOptions::default()
    };
    if let Err(e) = &scratch {
        log::warn!(
            "mpi rank {rank}: cannot make a scratch directory ({e}); using the system temp dir"
        );
    }
    let mut programs: HashMap<String, Result<Arc<UnpackedProgram>, String>> = HashMap::new();
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let runner_opts = opts.clone();
    let runner = std::thread::Builder::new()
        .name(format!("mw-mpi-runner-{rank}"))
        .spawn(move || runner_loop(job_rx, done_tx, rank, runner_opts))
        .map_err(|e| MpiError::Thread(format!("cannot start the runner thread: {e}")))?;
    // Tasks handed to the runner and not reported yet, with their cancel handles.
    let mut controls: HashMap<u64, ProcessControl> = HashMap::new();
    let mut backoff = Backoff::new(cap);
    // What goes to rank 0 is sent without waiting (see `Outbox`): the comm thread goes on
    // receiving while rank 0 has not taken it yet, so nothing crossing can deadlock.
    let mut outbox = Outbox::default();
    let send_error = |outbox: &mut Outbox, id: u64, msg: &str| {
        // A message is a few lines; cut all the same, so it always fits.
        let mut msg = msg.to_string();
        mw_bundle::text::clip(&mut msg, 64 * 1024);
        if let Err(n) = outbox.send(world, 0, TAG_ERROR, with_id(id, msg.as_bytes())) {
            log::error!(
                "mpi rank {rank}: an error message of {n} bytes for task {id} was not sent"
            );
        }
    };
    let program_for = |programs: &HashMap<String, Result<Arc<UnpackedProgram>, String>>,
                       sha: &str|
     -> Result<Arc<UnpackedProgram>, String> {
        match programs.get(sha) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(e)) => Err(format!("its program bundle is unusable: {e}")),
            None => Err(format!("program {sha} was never sent to this rank")),
        }
    };
    let mut pending: Option<Done> = None;
    // When this rank last told rank 0 it is alive (see `MasterPump::check_silence`).
    let mut alive_sent = Instant::now();
    // Well inside rank 0's limit (the launcher gives every rank the same environment).
    let alive_every = ALIVE_EVERY.min(silence_limit() / 4);
    loop {
        let mut progressed = false;
        if !controls.is_empty() && alive_sent.elapsed() >= alive_every {
            let _ = outbox.send(world, 0, TAG_ALIVE, Vec::new());
            alive_sent = Instant::now();
        }
        // Results: bundles one message each, streaming ones batched.
        let mut stream_results = Vec::new();
        while let Some(d) = pending.take().or_else(|| done_rx.try_recv().ok()) {
            progressed = true;
            match d {
                Done::Bundle(id, outcome) => {
                    controls.remove(&id);
                    match outcome {
                        Ok(bytes) => {
                            // A test of rank 0: a message too short to name its task.
                            let bytes = if crate::crash::forge_point("mpi-result", Some(id)) {
                                vec![0; 4]
                            } else {
                                bytes
                            };
                            if let Err(n) = outbox.send(world, 0, TAG_RESULT, bytes) {
                                send_error(&mut outbox, id, &too_large("its result bundle", n));
                            }
                        }
                        Err(msg) => send_error(&mut outbox, id, &msg),
                    }
                }
                Done::Stream(rs) => {
                    for r in &rs {
                        controls.remove(&r.id);
                    }
                    stream_results.extend(rs);
                }
                Done::Failed(ids, msg) => {
                    for id in ids {
                        if controls.remove(&id).is_some() {
                            send_error(&mut outbox, id, &msg);
                        }
                    }
                }
            }
        }
        if !stream_results.is_empty() {
            // In messages under the limit; a result too long for one fails alone.
            let mut body = Vec::new();
            let mut count = 0u64;
            let send_body = |outbox: &mut Outbox, body: &mut Vec<u8>, count: &mut u64| {
                if *count > 0 {
                    let msg = with_id(*count, body);
                    // (Each message was kept under the limit: not refused.)
                    let _ = outbox.send(world, 0, TAG_STREAM_RESULTS, msg);
                }
                body.clear();
                *count = 0;
            };
            for r in &stream_results {
                let before = body.len();
                if let Err(e) = encode_results(std::slice::from_ref(r), &mut body) {
                    body.truncate(before);
                    send_error(&mut outbox, r.id, &format!("encoding its result: {e}"));
                    continue;
                }
                if 8 + body.len() <= message_limit() {
                    count += 1;
                    continue;
                }
                let record = body.split_off(before);
                send_body(&mut outbox, &mut body, &mut count);
                if 8 + record.len() > message_limit() {
                    send_error(&mut outbox, r.id, &too_large("its result", record.len()));
                } else {
                    body = record;
                    count = 1;
                }
            }
            send_body(&mut outbox, &mut body, &mut count);
        }
        outbox.progress();
        let message = master.immediate_matched_probe().map(|probed| {
            let (data, status) = probed.matched_receive_vec::<u8>();
            (data, status.tag())
        });
        if let Some((data, tag)) = message {
            progressed = true;
            match tag {
                TAG_PROGRAM => {
                    let sha = mw_bundle::sha256_hex(&data);
                    let label = format!("program bundle {} on MPI rank {rank}", &sha[..16]);
                    programs.entry(sha).or_insert_with(|| {
                        UnpackedProgram::from_bytes(&data, &label, &opts)
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    });
                }
                TAG_TASKS => {
                    let Some((mut rest, named)) = split_task_ids(&data) else {
                        log::warn!(
                            "mpi rank {rank}: ignoring a task batch without readable task ids"
                        );
                        continue;
                    };
                    let mut tasks = Vec::new();
                    // Every task the batch names is answered: run, or failed below.
                    let mut unanswered: HashSet<u64> = named.iter().copied().collect();
                    let mut malformed = None;
                    while !rest.is_empty() {
                        let Some((id, after)) = split_id(rest) else {
                            malformed = Some("malformed task message (a truncated entry)");
                            break;
                        };
                        unanswered.remove(&id);
                        let sha = after
                            .get(..SHA_LEN)
                            .and_then(|s| std::str::from_utf8(s).ok());
                        let len = after
                            .get(SHA_LEN..)
                            .and_then(split_id)
                            .and_then(|(n, b)| usize::try_from(n).ok().map(|n| (n, b)));
                        let (Some(sha), Some((len, body))) = (sha, len) else {
                            send_error(&mut outbox, id, "malformed task message");
                            malformed = Some("malformed task message (an earlier entry)");
                            break;
                        };
                        let Some(bundle) = body.get(..len) else {
                            send_error(
                                &mut outbox,
                                id,
                                "malformed task message (truncated bundle)",
                            );
                            malformed = Some("malformed task message (an earlier entry)");
                            break;
                        };
                        rest = &body[len..];
                        match program_for(&programs, sha) {
                            Ok(p) => {
                                let control = ProcessControl::new();
                                controls.insert(id, control.clone());
                                tasks.push((id, p, bundle.to_vec(), control));
                            }
                            Err(e) => send_error(&mut outbox, id, &e),
                        }
                    }
                    if let Some(why) = malformed {
                        for id in named.iter().filter(|id| unanswered.contains(id)) {
                            send_error(&mut outbox, *id, why);
                        }
                    }
                    if !tasks.is_empty() {
                        let ids: Vec<u64> = tasks.iter().map(|t| t.0).collect();
                        if job_tx.send(Job::Bundles(tasks)).is_err() {
                            for id in ids {
                                controls.remove(&id);
                                send_error(&mut outbox, id, "the rank's runner thread has stopped");
                            }
                        }
                    }
                }
                TAG_STREAM => match decode_stream_batch(&data) {
                    Ok(batch) => match program_for(&programs, &batch.program) {
                        Ok(program) => {
                            let mut tasks: Vec<(StreamTask, ProcessControl)> = Vec::new();
                            for t in batch.tasks {
                                // One line each: a raw newline would make two inputs.
                                if t.input.contains('\n') {
                                    send_error(&mut outbox, t.id, "its input is not one line");
                                    continue;
                                }
                                let c = ProcessControl::new();
                                controls.insert(t.id, c.clone());
                                tasks.push((t, c));
                            }
                            let ids: Vec<u64> = tasks.iter().map(|t| t.0.id).collect();
                            let job = Job::Stream {
                                program,
                                args: batch.args,
                                env: batch.env,
                                tasks,
                            };
                            if job_tx.send(job).is_err() {
                                for id in ids {
                                    controls.remove(&id);
                                    send_error(
                                        &mut outbox,
                                        id,
                                        "the rank's runner thread has stopped",
                                    );
                                }
                            }
                        }
                        Err(e) => {
                            for t in batch.tasks {
                                send_error(&mut outbox, t.id, &e);
                            }
                        }
                    },
                    Err(e) => match stream_batch_ids(&data) {
                        // Every task it names fails: none may stay running for ever.
                        Some(ids) => {
                            let msg = format!("its stream batch could not be read: {e}");
                            for id in ids {
                                send_error(&mut outbox, id, &msg);
                            }
                        }
                        None => log::warn!(
                            "mpi rank {rank}: ignoring a stream batch without readable task ids: {e}"
                        ),
                    },
                },
                TAG_CANCEL => {
                    if let Some((id, _)) = split_id(&data) {
                        if let Some(c) = controls.get(&id) {
                            c.cancel();
                        }
                    }
                }
                TAG_STOP => {
                    for c in controls.values() {
                        c.cancel();
                    }
                    drop(job_tx);
                    let _ = runner.join();
                    outbox.flush();
                    break;
                }
                other => {
                    log::warn!("mpi rank {rank}: ignoring a message with unknown tag {other}")
                }
            }
        }
        if progressed {
            backoff.reset();
            continue;
        }
        if !controls.is_empty() {
            // Tasks run: their ends wake us through the channel at once; meanwhile the master
            // sends more tasks, a cancel or stop, and our messages to it move on as we poll.
            match done_rx.recv_timeout(BUSY_PROBE_INTERVAL) {
                Ok(d) => pending = Some(d),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The runner thread died anyway: what it held will never end.
                    for (id, _) in controls.drain() {
                        send_error(&mut outbox, id, "the rank's runner thread has died");
                    }
                }
            }
            continue;
        }
        let wait = backoff.next_wait();
        if wait.is_zero() {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// The program bundle at `path`, to send to a rank (its size checked before it is read).
fn read_program_bundle(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let reading = |e: std::io::Error| format!("reading the program bundle {}: {e}", path.display());
    let len = std::fs::metadata(path).map_err(reading)?.len();
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > message_limit() {
        return Err(too_large(
            &format!("the program bundle {}", path.display()),
            len,
        ));
    }
    let bytes = std::fs::read(path).map_err(reading)?;
    if bytes.len() > message_limit() {
        return Err(too_large(
            &format!("the program bundle {}", path.display()),
            bytes.len(),
        ));
    }
    Ok(bytes)
}

impl Mpi {
    fn fail(&self, rank: i32, task: &PreparedTask, done: Completion, msg: String) {
        self.shared.release(rank, task.id);
        done.finish(Err(InterfaceError::new(msg)));
    }
}

impl Interface for Mpi {
    fn name(&self) -> &'static str {
        "mpi"
    }

    fn reserve_worker(&self, task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        let mut st = self.shared.lock();
        loop {
            if let Some(why) = &st.closed {
                return Err(InterfaceError::new(why));
            }
            // The least-loaded rank, if it can take one more.
            if let Some(rank) =
                crate::interface::reserve_least_loaded(&mut st.load, RANK_DEPTH, task)
            {
                return Ok(rank);
            }
            st = crate::guard::wait(&self.shared.cond, st);
        }
    }

    fn execute_task(&self, task: Arc<PreparedTask>, worker: WorkerId, done: Completion) {
        let Ok(rank) = i32::try_from(worker.0) else {
            done.finish(Err(InterfaceError::new(format!(
                "worker {} is not an MPI rank",
                worker.0
            ))));
            return;
        };
        {
            let mut st = self.shared.lock();
            st.running.insert(task.id, rank);
            st.started += 1;
        }
        let bundle = match task.spec.program.bundle(&task.staging_dir) {
            Ok(b) => b,
            Err(e) => return self.fail(rank, &task, done, format!("packing the program: {e}")),
        };
        if bundle.sha256.len() != SHA_LEN {
            return self.fail(
                rank,
                &task,
                done,
                "program SHA-256 is not 64 hex digits".into(),
            );
        }
        let wire = match task.spec.program.mode() {
            ProgramMode::Stream => {
                if !task.spec.input_files.is_empty() || !task.spec.outputs.is_empty() {
                    let msg = format!(
                        "{}: a streaming program's tasks cannot have input files or declared \
                         outputs (one process serves many tasks in one directory)",
                        task.id
                    );
                    return self.fail(rank, &task, done, msg);
                }
                let input = match serde_json::to_string(&task.spec.input) {
                    Ok(text) => text,
                    Err(e) => {
                        let msg = format!("{}: encoding its input: {e}", task.id);
                        return self.fail(rank, &task, done, msg);
                    }
                };
                let wire = Wire::Stream(
                    bundle.sha256.clone(),
                    StreamTask {
                        id: task.id.0,
                        input,
                        timeout_secs: task.spec.timeout.map(|t| t.as_secs_f64()),
                        max_output: Some(task.spec.max_output_bytes),
                    },
                );
                let n = wire.bytes(&task);
                if n > message_limit() {
                    let msg = too_large(&format!("{}: its input (with args and env)", task.id), n);
                    return self.fail(rank, &task, done, msg);
                }
                wire
            }
            ProgramMode::Process => match task.task_bundle_bytes(&bundle) {
                Ok(bytes) => {
                    // Its head; the bundle itself is copied once, into the batch.
                    let mut head = Vec::with_capacity(16 + SHA_LEN);
                    head.extend_from_slice(&task.id.0.to_le_bytes());
                    head.extend_from_slice(bundle.sha256.as_bytes());
                    head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    let wire = Wire::Bundle(head, bytes);
                    let n = wire.bytes(&task);
                    if n > message_limit() {
                        let msg = too_large(&format!("{}: its task bundle", task.id), n);
                        return self.fail(rank, &task, done, msg);
                    }
                    wire
                }
                Err(e) => return self.fail(rank, &task, done, format!("packing the task: {e}")),
            },
        };
        let need_program = !self
            .shared
            .lock()
            .programs_sent
            .get(&rank)
            .is_some_and(|sent| sent.contains(&bundle.sha256));
        let program = if need_program {
            let held = self
                .shared
                .lock()
                .program_bytes
                .get(&bundle.sha256)
                .and_then(std::sync::Weak::upgrade);
            match held {
                Some(b) => Some(b),
                None => match read_program_bundle(&bundle.path) {
                    Ok(b) => {
                        let b = Arc::new(b);
                        let mut st = self.shared.lock();
                        st.program_bytes.retain(|_, w| w.strong_count() > 0);
                        st.program_bytes
                            .insert(bundle.sha256.clone(), Arc::downgrade(&b));
                        Some(b)
                    }
                    Err(msg) => return self.fail(rank, &task, done, msg),
                },
            }
        } else {
            None
        };
        if need_program {
            // Marked only once it is on its way: a bundle that could not be read is read
            // again for the rank's next task of that program.
            let mut st = self.shared.lock();
            st.programs_sent
                .entry(rank)
                .or_default()
                .insert(bundle.sha256.clone());
        }
        let sink = crate::guard::lock(&self.shared.sink).clone();
        if let Some(sink) = sink {
            sink.record_handle(task.id, &format!("mpi-rank-{rank}"));
        }
        let cmd = Cmd::Execute {
            task,
            rank,
            program,
            wire,
            done,
        };
        if let Err(mpsc::SendError(Cmd::Execute { task, done, .. })) = self.cmds.send(cmd) {
            self.fail(
                rank,
                &task,
                done,
                "the MPI communication thread has ended".into(),
            );
        }
    }

    fn status(&self) -> BTreeMap<String, String> {
        let st = self.shared.lock();
        let mut m = BTreeMap::new();
        m.insert("ranks".into(), self.size.to_string());
        m.insert("worker_ranks".into(), self.workers().to_string());
        m.insert("busy".into(), st.running.len().to_string());
        m.insert("started".into(), st.started.to_string());
        m.insert("finished".into(), st.finished.to_string());
        if let Some(why) = &st.closed {
            m.insert("closed".into(), why.clone());
        }
        m
    }

    fn cancel(&self, task: TaskId) {
        let rank = self.shared.lock().running.get(&task).copied();
        if let Some(rank) = rank {
            let _ = self.cmds.send(Cmd::Cancel { rank, task });
        }
    }

    fn set_handle_sink(&self, sink: Arc<dyn HandleSink>) {
        *crate::guard::lock(&self.shared.sink) = Some(sink);
    }

    /// Cancels what runs, waits for those results, tells every worker rank to stop and
    /// finalizes MPI (on the comm thread). Idempotent.
    fn shutdown(&self) {
        let handle = crate::guard::lock(&self.comm).take();
        let Some(handle) = handle else {
            return;
        };
        self.shared.close("the MPI interface was shut down");
        let _ = self.cmds.send(Cmd::Shutdown);
        let here = std::thread::current();
        if here.id() == self.comm_id || here.name() == Some(RESULTS_THREAD) {
            // The comm thread joins the results thread before it ends: joining it from
            // either would deadlock. It finishes (and finalizes MPI) on its own.
            return;
        }
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("mpi: {e}"),
            Err(_) => log::error!("mpi: the MPI communication thread panicked"),
        }
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a rank sends is cut on rank 0: a host name, a stderr tail and a reason of
    /// 1 MiB each keep 64 KiB; a reported error keeps the task's `max_output`.
    #[test]
    fn a_ranks_texts_are_cut_on_rank_0() {
        let big = "x".repeat(1 << 20);
        let r = |exit| StreamResult {
            id: 1,
            exit,
            result: String::new(),
            stderr_tail: big.clone(),
            wall_secs: 1.0,
            started_unix: 1.7e9,
            host: big.clone(),
        };
        let e = stream_execution(
            r(mw_bundle::ExitInfo::StreamBroken {
                reason: big.clone(),
            }),
            1,
            100,
        )
        .unwrap();
        // `clip` marks its cut with ` […]`.
        let cut = MAX_RANK_TEXT + " […]".len();
        assert_eq!(e.host.len(), cut);
        assert_eq!(e.stderr_tail.len(), MAX_RANK_TEXT);
        assert!(
            matches!(&e.exit, mw_bundle::ExitInfo::StreamBroken { reason } if reason.len() == cut)
        );
        let e = stream_execution(
            r(mw_bundle::ExitInfo::ErrorReported { error: big.clone() }),
            1,
            100,
        )
        .unwrap();
        assert!(
            matches!(&e.exit, mw_bundle::ExitInfo::ErrorReported { error } if error.len() == 100 + " […]".len())
        );
    }

    fn result(id: u64, exit: mw_bundle::ExitInfo) -> StreamResult {
        StreamResult {
            id,
            exit,
            result: format!("{{\"i\":{id}}}"),
            stderr_tail: if id.is_multiple_of(2) {
                String::new()
            } else {
                "warn\n".into()
            },
            wall_secs: 0.25,
            started_unix: 1.7e9,
            host: "node-1".into(),
        }
    }

    #[test]
    fn stream_results_round_trip_and_forgeries_are_refused() {
        let rs = vec![
            result(1, mw_bundle::ExitInfo::Exited { code: 0 }),
            result(
                2,
                mw_bundle::ExitInfo::ErrorReported {
                    error: "bad seed".into(),
                },
            ),
        ];
        let mut body = Vec::new();
        encode_results(&rs, &mut body).unwrap();
        assert_eq!(decode_results_message(2, &body).unwrap(), rs);
        // A count that does not match, a truncated body, a huge length: errors, no panic.
        assert!(decode_results_message(3, &body).is_err());
        assert!(decode_results_message(u64::MAX, &body).is_err());
        assert!(decode_results_message(2, &body[..body.len() - 1]).is_err());
        let mut forged = body.clone();
        forged[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_results_message(2, &forged).is_err());
        assert_eq!(decode_results_message(0, &[]).unwrap(), vec![]);
    }

    #[test]
    fn a_result_of_the_wrong_kind_for_its_task_is_refused() {
        let stream = Payload::Stream(result(1, mw_bundle::ExitInfo::Exited { code: 0 }));
        let bundle = Payload::Bundle(vec![0; 8]);
        let error = Payload::Error("x".into());
        assert!(payload_mismatch(ProgramMode::Process, &stream).is_some());
        assert!(payload_mismatch(ProgramMode::Stream, &bundle).is_some());
        assert!(payload_mismatch(ProgramMode::Stream, &stream).is_none());
        assert!(payload_mismatch(ProgramMode::Process, &bundle).is_none());
        assert!(payload_mismatch(ProgramMode::Process, &error).is_none());
        assert!(payload_mismatch(ProgramMode::Stream, &error).is_none());
    }

    #[test]
    fn a_task_batchs_ids_are_read_from_its_trailer_whatever_its_entries() {
        let mut body = b"entries of any shape".to_vec();
        for id in [3u64, 9] {
            body.extend_from_slice(&id.to_le_bytes());
        }
        body.extend_from_slice(&2u64.to_le_bytes());
        let (entries, ids) = split_task_ids(&body).unwrap();
        assert_eq!(entries, b"entries of any shape");
        assert_eq!(ids, vec![3, 9]);
        // A count past the message, a short message: no ids, no panic.
        let mut forged = body.clone();
        let n = forged.len();
        forged[n - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(split_task_ids(&forged).is_none());
        forged[n - 8..].copy_from_slice(&5u64.to_le_bytes());
        assert!(split_task_ids(&forged).is_none());
        assert!(split_task_ids(&body[..7]).is_none());
        assert_eq!(split_task_ids(&0u64.to_le_bytes()), Some((&[][..], vec![])));
    }

    fn stream_batch(inputs: &[&str]) -> StreamBatch {
        StreamBatch {
            program: "ab".repeat(32),
            args: vec!["--x".into()],
            env: BTreeMap::from([("K".into(), "v".into())]),
            tasks: inputs
                .iter()
                .enumerate()
                .map(|(i, input)| StreamTask {
                    id: 7 + i as u64,
                    input: input.to_string(),
                    timeout_secs: (i == 0).then_some(2.5),
                    max_output: (i == 1).then_some(99),
                })
                .collect(),
        }
    }

    #[test]
    fn a_stream_batch_carries_inputs_as_text_whatever_their_depth() {
        // Nested as deep as the master accepts: a JSON wrapper pushed it past serde_json's
        // recursion limit on the rank, and the whole batch was dropped.
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let batch = stream_batch(&[&deep, "{\"i\":1}", "null"]);
        let body = encode_stream_batch(&batch).unwrap();
        assert_eq!(decode_stream_batch(&body).unwrap(), batch);
        assert_eq!(stream_batch_ids(&body), Some(vec![7, 8, 9]));
        assert_eq!(
            decode_stream_batch(&encode_stream_batch(&stream_batch(&[])).unwrap()).unwrap(),
            stream_batch(&[])
        );
    }

    #[test]
    fn a_damaged_stream_batch_is_an_error_and_its_ids_stay_readable() {
        let body = encode_stream_batch(&stream_batch(&["1", "2"])).unwrap();
        for cut in [body.len() - 1, 30, 24] {
            assert!(decode_stream_batch(&body[..cut]).is_err(), "cut at {cut}");
            assert_eq!(stream_batch_ids(&body[..cut]), Some(vec![7, 8]));
        }
        let mut longer = body.clone();
        longer.push(b' ');
        assert!(decode_stream_batch(&longer).is_err());
        // A forged count or length reserves nothing and reads nothing past the end.
        let mut forged = body.clone();
        forged[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_stream_batch(&forged).is_err());
        assert_eq!(stream_batch_ids(&forged), None);
        let mut forged = body.clone();
        forged[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_stream_batch(&forged).is_err());
        assert_eq!(stream_batch_ids(&body[..20]), None);
    }
}
