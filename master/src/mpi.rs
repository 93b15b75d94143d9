//! The MPI interface (cargo feature `mpi`): `mpirun -n N mw run JOB --interface mpi`.
//!
//! Rank 0 runs the master; ranks 1..N-1 are workers. Each rank makes every MPI call on ONE
//! dedicated thread (`mw-mpi`, which also initializes and finalizes MPI) and talks to the rest
//! of the process through channels:
//!
//! - **rank 0**: [`Interface::execute_task`] packs the task bundle (and, the first time a rank
//!   sees a program, the program bundle) and hands it to the comm thread, which sends it.
//!   The comm thread receives result bundles with `MPI_Improbe` + `MPI_Mrecv` (the size comes
//!   from the probe, so a large result needs nothing special), spinning briefly and then
//!   sleeping with exponential backoff up to a cap (env `MW_MPI_POLL_US`, default 100 µs); with
//!   no task in flight it sleeps in a channel receive. A `mw-mpi-results` thread decodes result
//!   bundles and finishes the tasks' completions, so the comm thread keeps pumping.
//!   Scheduling is dynamic: [`Interface::reserve_worker`] blocks until some rank is free.
//! - **ranks 1..N-1**: receive program bundles (unpacked once, cached by SHA-256), then task
//!   bundles; each task runs through the worker-runtime library in a private scratch
//!   directory on a separate thread, so the comm thread keeps receiving (and can honour a
//!   cancel message) while the task runs. A failing program is a normal result (the result
//!   bundle carries the failure); a task the rank cannot run at all comes back as an error
//!   message for that task. Neither marks the rank dead.
//!
//! **A rank that dies** (killed, crashed): Open MPI's `mpirun` notices and aborts the whole
//! job (every rank, rank 0 included, is killed and `mpirun` prints which rank died and exits
//! non-zero), so the in-flight tasks are not retried within that run; run the job with a
//! journal to resume it. The job never hangs silently in that case.
//!
//! Wire protocol (all on `MPI_COMM_WORLD`; messages from one rank arrive in order):
//! rank 0 → worker: `PROGRAM` (bundle bytes), `TASK` (u64 LE task id, 64-byte hex SHA-256 of
//! the program, task bundle bytes), `CANCEL` (u64 task id), `STOP` (empty);
//! worker → rank 0: `RESULT` (u64 task id, result bundle bytes) or `ERROR` (u64 task id,
//! UTF-8 message). Rank 0 only sends a task to a rank with nothing in flight, and it drains
//! every in-flight result before `STOP`, so no blocking send can wait on a peer that is
//! itself blocked sending.
//!
//! This module must never know about the journal, job files, the CLI, or other platforms.

use crate::interface::{Completion, HandleSink, Interface};
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, WorkerId};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mw_worker_runtime::{run_task_bytes, ProcessControl, RunOptions, UnpackedProgram};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

const TAG_PROGRAM: i32 = 1;
const TAG_TASK: i32 = 2;
const TAG_CANCEL: i32 = 3;
const TAG_STOP: i32 = 4;
const TAG_RESULT: i32 = 10;
const TAG_ERROR: i32 = 11;

/// Length of a hex SHA-256 in a `TASK` message.
const SHA_LEN: usize = 64;
/// How long a comm thread spins on `MPI_Improbe` before it starts sleeping.
const SPIN: Duration = Duration::from_micros(50);
/// How often a worker rank that runs a task probes for a cancel or stop message.
const BUSY_PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// Default backoff cap (µs); override with `MW_MPI_POLL_US`.
const DEFAULT_POLL_US: u64 = 100;
/// Name of rank 0's result-decoding thread.
const RESULTS_THREAD: &str = "mw-mpi-results";

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
    free: Vec<i32>,
    running: HashMap<TaskId, i32>,
    programs_sent: HashMap<i32, HashSet<String>>,
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
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `rank` free again after `task` ended on it.
    fn release(&self, rank: i32, task: TaskId) {
        let mut st = self.lock();
        if st.running.get(&task) == Some(&rank) {
            st.running.remove(&task);
        }
        st.finished += 1;
        if !st.free.contains(&rank) {
            st.free.push(rank);
        }
        drop(st);
        self.cond.notify_one();
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

enum Cmd {
    Execute {
        task: Arc<PreparedTask>,
        rank: i32,
        program: Option<Vec<u8>>,
        message: Vec<u8>,
        done: Completion,
    },
    Cancel {
        rank: i32,
        task: TaskId,
    },
    Shutdown,
}

/// A result (or error) received for a task, on its way to the decoding thread.
struct Finished {
    task: Arc<PreparedTask>,
    rank: i32,
    done: Completion,
    payload: Result<Vec<u8>, String>,
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
                free: Vec::new(),
                running: HashMap::new(),
                programs_sent: HashMap::new(),
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
                    st.free = (1..size).rev().collect();
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
        master_loop(&world, cmds, &shared, cap)
    } else {
        drop(cmds);
        worker_loop(&world, rank, cap)
    };
    drop(world);
    drop(universe); // MPI_Finalize, on the thread that initialized MPI
    result
}

/// Rank 0's comm thread.
fn master_loop(
    world: &SimpleCommunicator,
    cmds: Receiver<Cmd>,
    shared: &Arc<Shared>,
    cap: Duration,
) -> Result<(), MpiError> {
    let (fin_tx, fin_rx) = mpsc::channel::<Finished>();
    let decoder_shared = shared.clone();
    let decoder = std::thread::Builder::new()
        .name(RESULTS_THREAD.into())
        .spawn(move || decode_results(fin_rx, &decoder_shared))
        .map_err(|e| MpiError::Thread(format!("cannot start the result thread: {e}")))?;
    let mut pump = MasterPump {
        world,
        shared,
        in_flight: HashMap::new(),
        stopping: false,
        fin: fin_tx,
    };
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
        while let Some(probed) = world.any_process().immediate_matched_probe() {
            progressed = true;
            let (data, status) = probed.matched_receive_vec::<u8>();
            pump.on_message(status.source_rank(), status.tag(), data);
        }
        if pump.stopping && pump.in_flight.is_empty() {
            break;
        }
        if progressed {
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
    for r in 1..world.size() {
        world
            .process_at_rank(r)
            .send_with_tag(&[0u8; 0][..], TAG_STOP);
    }
    drop(pump);
    let _ = decoder.join();
    Ok(())
}

struct MasterPump<'a> {
    world: &'a SimpleCommunicator,
    shared: &'a Arc<Shared>,
    in_flight: HashMap<i32, (Arc<PreparedTask>, Completion)>,
    stopping: bool,
    fin: Sender<Finished>,
}

impl MasterPump<'_> {
    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Execute {
                task,
                rank,
                program,
                message,
                done,
            } => {
                if self.stopping {
                    self.shared.release(rank, task.id);
                    done.finish(Err(InterfaceError::new(
                        "the MPI interface was shut down before the task could start",
                    )));
                    return;
                }
                if let Some((old, old_done)) = self.in_flight.remove(&rank) {
                    // Cannot happen (a rank is reserved before use); fail both loudly.
                    old_done.finish(Err(InterfaceError::new(format!(
                        "MPI rank {rank} was given {} while {} was still running on it",
                        task.id, old.id
                    ))));
                }
                let dest = self.world.process_at_rank(rank);
                if let Some(p) = program {
                    dest.send_with_tag(&p[..], TAG_PROGRAM);
                }
                dest.send_with_tag(&message[..], TAG_TASK);
                self.in_flight.insert(rank, (task, done));
            }
            Cmd::Cancel { rank, task } => {
                if self.in_flight.get(&rank).is_some_and(|(t, _)| t.id == task) {
                    self.world
                        .process_at_rank(rank)
                        .send_with_tag(&task.0.to_le_bytes()[..], TAG_CANCEL);
                }
            }
            Cmd::Shutdown => self.begin_stop(),
        }
    }

    /// Stops accepting work and cancels whatever runs; the loop ends once all results are in.
    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.shared.close("the MPI interface was shut down");
        for (rank, (task, _)) in &self.in_flight {
            self.world
                .process_at_rank(*rank)
                .send_with_tag(&task.id.0.to_le_bytes()[..], TAG_CANCEL);
        }
    }

    fn on_message(&mut self, rank: i32, tag: i32, data: Vec<u8>) {
        let Some((id, _)) = split_id(&data) else {
            log::warn!(
                "mpi: ignoring a {}-byte message with tag {tag} from rank {rank}: too short",
                data.len()
            );
            return;
        };
        if tag != TAG_RESULT && tag != TAG_ERROR {
            log::warn!("mpi: ignoring a message with unknown tag {tag} from rank {rank}");
            return;
        }
        match self.in_flight.get(&rank) {
            Some((t, _)) if t.id.0 == id => {}
            _ => {
                log::warn!("mpi: ignoring a result for task {id} from rank {rank}, which is not running it");
                return;
            }
        }
        let Some((task, done)) = self.in_flight.remove(&rank) else {
            return;
        };
        self.shared.release(rank, task.id);
        let payload = if tag == TAG_RESULT {
            Ok(data)
        } else {
            let msg = String::from_utf8_lossy(&data[8..]).into_owned();
            Err(format!("MPI rank {rank} could not run {}: {msg}", task.id))
        };
        let fin = Finished {
            task,
            rank,
            done,
            payload,
        };
        if let Err(mpsc::SendError(f)) = self.fin.send(fin) {
            // The decoder is gone (it panicked): report instead of losing the task.
            f.done.finish(Err(InterfaceError::new(
                "the MPI result thread is gone; result dropped",
            )));
        }
    }
}

impl Drop for MasterPump<'_> {
    fn drop(&mut self) {
        for (rank, (task, done)) in self.in_flight.drain() {
            done.finish(Err(InterfaceError::new(format!(
                "the MPI interface stopped while {} ran on rank {rank}",
                task.id
            ))));
        }
    }
}

/// The `mw-mpi-results` thread: decodes result bundles and finishes completions.
fn decode_results(rx: Receiver<Finished>, _shared: &Arc<Shared>) {
    for f in rx {
        let outcome = match f.payload {
            Ok(data) => {
                let label = format!("result bundle of {} from MPI rank {}", f.task.id, f.rank);
                match data.get(8..) {
                    Some(bundle) => Execution::from_result_bundle_of(bundle, &label, &f.task),
                    None => Err(InterfaceError::new(format!("{label}: message too short"))),
                }
            }
            Err(msg) => Err(InterfaceError::new(msg)),
        };
        f.done.finish(outcome);
    }
}

/// A task running on a worker rank.
struct Running {
    id: u64,
    control: ProcessControl,
    thread: JoinHandle<()>,
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
    let (res_tx, res_rx) = mpsc::channel::<(u64, Result<Vec<u8>, String>)>();
    let mut current: Option<Running> = None;
    let mut pending: Option<(u64, Result<Vec<u8>, String>)> = None;
    let mut backoff = Backoff::new(cap);
    let send_error = |id: u64, msg: &str| {
        master.send_with_tag(&with_id(id, msg.as_bytes())[..], TAG_ERROR);
    };
    loop {
        let mut progressed = false;
        if let Some((id, outcome)) = pending.take().or_else(|| res_rx.try_recv().ok()) {
            progressed = true;
            if let Some(run) = current.take() {
                let _ = run.thread.join();
            }
            match outcome {
                Ok(bytes) => master.send_with_tag(&bytes[..], TAG_RESULT),
                Err(msg) => send_error(id, &msg),
            }
        }
        if let Some(probed) = master.immediate_matched_probe() {
            progressed = true;
            let (data, status) = probed.matched_receive_vec::<u8>();
            match status.tag() {
                TAG_PROGRAM => {
                    let sha = mw_bundle::sha256_hex(&data);
                    let label = format!("program bundle {} on MPI rank {rank}", &sha[..16]);
                    programs.entry(sha).or_insert_with(|| {
                        UnpackedProgram::from_bytes(&data, &label, &opts)
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    });
                }
                TAG_TASK => {
                    let Some((id, rest)) = split_id(&data) else {
                        log::warn!("mpi rank {rank}: ignoring a malformed task message");
                        continue;
                    };
                    if current.is_some() {
                        send_error(id, "the rank is already running a task");
                        continue;
                    }
                    let Some(sha) = rest
                        .get(..SHA_LEN)
                        .and_then(|s| std::str::from_utf8(s).ok())
                    else {
                        send_error(id, "malformed task message (no program SHA-256)");
                        continue;
                    };
                    let program = match programs.get(sha) {
                        Some(Ok(p)) => p.clone(),
                        Some(Err(e)) => {
                            send_error(id, &format!("its program bundle is unusable: {e}"));
                            continue;
                        }
                        None => {
                            send_error(id, &format!("program {sha} was never sent to this rank"));
                            continue;
                        }
                    };
                    let bundle = rest[SHA_LEN..].to_vec();
                    let control = ProcessControl::new();
                    let thread_control = control.clone();
                    let tx = res_tx.clone();
                    let thread_opts = opts.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("mw-mpi-task-{id}"))
                        .spawn(move || {
                            let label = format!("task bundle of task {id} on MPI rank {rank}");
                            let outcome = run_task_bytes(
                                &program,
                                &bundle,
                                &label,
                                &thread_control,
                                &thread_opts,
                            )
                            .map(|(_, bytes)| with_id(id, &bytes))
                            .map_err(|e| e.to_string());
                            let _ = tx.send((id, outcome));
                        });
                    match spawned {
                        Ok(thread) => {
                            current = Some(Running {
                                id,
                                control,
                                thread,
                            })
                        }
                        Err(e) => send_error(id, &format!("cannot start a task thread: {e}")),
                    }
                }
                TAG_CANCEL => {
                    if let Some((id, _)) = split_id(&data) {
                        if let Some(run) = current.as_ref().filter(|r| r.id == id) {
                            run.control.cancel();
                        }
                    }
                }
                TAG_STOP => {
                    if let Some(run) = current.take() {
                        run.control.cancel();
                        let _ = run.thread.join();
                    }
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
        if current.is_some() {
            // A task runs: its end wakes us through the channel at once, and the master only
            // sends a cancel or stop meanwhile, so probe rarely and leave the CPU to the task.
            if let Ok(r) = res_rx.recv_timeout(BUSY_PROBE_INTERVAL) {
                pending = Some(r);
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

    fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        let mut st = self.shared.lock();
        loop {
            if let Some(why) = &st.closed {
                return Err(InterfaceError::new(why));
            }
            if let Some(rank) = st.free.pop() {
                return Ok(WorkerId(rank as u64));
            }
            st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
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
        let bundle = match task.spec.program.bundle(&task.staging_dir) {
            Ok(b) => b,
            Err(e) => return self.fail(rank, &task, done, format!("packing the program: {e}")),
        };
        let message = match task.task_bundle_bytes(&bundle) {
            Ok(bytes) => {
                let mut m = Vec::with_capacity(8 + SHA_LEN + bytes.len());
                m.extend_from_slice(&task.id.0.to_le_bytes());
                m.extend_from_slice(bundle.sha256.as_bytes());
                m.extend_from_slice(&bytes);
                m
            }
            Err(e) => return self.fail(rank, &task, done, format!("packing the task: {e}")),
        };
        if bundle.sha256.len() != SHA_LEN {
            return self.fail(
                rank,
                &task,
                done,
                "program SHA-256 is not 64 hex digits".into(),
            );
        }
        let need_program = {
            let st = self.shared.lock();
            !st.programs_sent
                .get(&rank)
                .is_some_and(|s| s.contains(&bundle.sha256))
        };
        let program = if need_program {
            match std::fs::read(&bundle.path) {
                Ok(b) => Some(b),
                Err(e) => {
                    let msg = format!("reading the program bundle {}: {e}", bundle.path.display());
                    return self.fail(rank, &task, done, msg);
                }
            }
        } else {
            None
        };
        {
            let mut st = self.shared.lock();
            st.programs_sent
                .entry(rank)
                .or_default()
                .insert(bundle.sha256.clone());
            st.running.insert(task.id, rank);
            st.started += 1;
        }
        let sink = self
            .shared
            .sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sink) = sink {
            sink.record_handle(task.id, &format!("mpi-rank-{rank}"));
        }
        let cmd = Cmd::Execute {
            task,
            rank,
            program,
            message,
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
        *self.shared.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Cancels what runs, waits for those results, tells every worker rank to stop and
    /// finalizes MPI (on the comm thread). Idempotent.
    fn shutdown(&self) {
        let handle = self.comm.lock().unwrap_or_else(|p| p.into_inner()).take();
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
