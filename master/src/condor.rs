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
//! This module must never know about the journal, the CLI or other platforms: it talks to the
//! master only through [`Interface`], [`Completion`] and [`HandleSink`].

use crate::interface::{Completion, HandleSink, Interface};
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, TaskSpec, WorkerId};
use mw_condor_kit::{
    spawn_log_watcher, write_submit_files, CondorCli, EventKind, JobHandle, JobStatus, LogEvent,
    LogWatcher, SubmitItem, SubmitSpec, Termination, WatchMessage,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a task waits for more tasks to join its batch, beyond the batch window.
const MAX_BATCH_DELAY: Duration = Duration::from_secs(30);

/// What to do with a held job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHold {
    /// `condor_rm` it and fail the task with the hold reason (the default).
    Fail,
    /// Keep waiting until it is released (by an administrator or `periodic_release`).
    Wait,
}

/// Settings of the HTCondor interface.
#[derive(Debug, Clone)]
pub struct CondorSettings {
    /// Where batches are staged (a directory per batch).
    pub work_dir: PathBuf,
    /// The static `mw-worker` shipped to the pool.
    pub worker: PathBuf,
    /// `request_cpus`.
    pub request_cpus: u32,
    /// `request_memory`, MiB.
    pub request_memory_mb: u64,
    /// `request_disk`, MiB.
    pub request_disk_mb: u64,
    /// `requirements` (a ClassAd expression).
    pub requirements: Option<String>,
    /// A batch is submitted once no new task arrived for this long (tasks that arrive
    /// together share one `condor_submit`), or at the latest 30 s after this window.
    pub batch_window: Duration,
    /// A user submit template (tera); `None` for condor-kit's built-in one.
    pub template: Option<PathBuf>,
    /// Held jobs: fail or wait.
    pub on_hold: OnHold,
    /// `max_retries` in the submit description.
    pub max_retries: u32,
    /// How often logs are re-read without an inotify wake-up.
    pub poll_interval: Duration,
    /// Where the `condor_*` tools are.
    pub cli: CondorCli,
}

impl CondorSettings {
    /// Defaults: 1 cpu, 512 MiB, 1 GiB disk, a 0.5 s batch window, fail on hold, the worker from
    /// `$MW_WORKER` or next to the running executable.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        CondorSettings {
            work_dir: work_dir.into(),
            worker: default_worker(),
            request_cpus: 1,
            request_memory_mb: 512,
            request_disk_mb: 1024,
            requirements: None,
            batch_window: Duration::from_millis(500),
            template: None,
            on_hold: OnHold::Fail,
            max_retries: 0,
            poll_interval: Duration::from_secs(2),
            cli: CondorCli::default(),
        }
    }
}

/// `$MW_WORKER`, else `mw-worker` next to the running executable, else `mw-worker`.
pub fn default_worker() -> PathBuf {
    if let Some(p) = std::env::var_os("MW_WORKER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("mw-worker")))
        .unwrap_or_else(|| PathBuf::from("mw-worker"))
}

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
        }
    }
}

#[derive(Default)]
struct State {
    tasks: HashMap<TaskId, Tracked>,
    pending: Vec<TaskId>,
    first_pending: Option<Instant>,
    last_pending: Option<Instant>,
    by_handle: HashMap<JobHandle, TaskId>,
    /// Events of jobs no task claims yet (a re-attached batch's log replays other tasks first).
    unclaimed: HashMap<JobHandle, Vec<LogEvent>>,
    open_batch: u64,
    shut_down: bool,
    batches: u64,
    jobs_submitted: u64,
    finished: u64,
    log_problems: u64,
}

struct Shared {
    settings: CondorSettings,
    state: Mutex<State>,
    cond: Condvar,
    sink: Mutex<Option<Arc<dyn HandleSink>>>,
    watcher: Mutex<Option<LogWatcher>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                open_batch: first_free_batch(&work_dir),
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
                .spawn(move || submit_loop(&s))
                .map_err(|e| InterfaceError::new(format!("starting the submit thread: {e}")))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("mw-condor-events".into())
                .spawn(move || event_loop(&s, rx))
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

/// A job-name fragment safe for `batch_name`.
fn safe_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if out.is_empty() {
        out.push_str("mw");
    }
    out
}

fn task_files(dir: &Path, task: &PreparedTask, program_bundle: PathBuf) -> TaskFiles {
    let stem = format!("task-{}-a{}", task.id.0, task.attempt);
    TaskFiles {
        dir: dir.to_path_buf(),
        task_bundle: dir.join(format!("{stem}.mwt")),
        result: dir.join(format!("{stem}.result")),
        stdout: dir.join(format!("{stem}.out")),
        stderr: dir.join(format!("{stem}.err")),
        program_bundle,
    }
}

/// Builds the submit spec of one batch (one program bundle).
fn batch_spec(
    settings: &CondorSettings,
    batch_name: &str,
    dir: &Path,
    program_bundle: &Path,
    tasks: &[(TaskId, TaskFiles)],
) -> SubmitSpec {
    SubmitSpec {
        batch_name: batch_name.to_string(),
        executable: settings.worker.clone(),
        program_bundle: program_bundle.to_path_buf(),
        initialdir: dir.to_path_buf(),
        log: dir.join(format!("{batch_name}.log")),
        request_cpus: settings.request_cpus,
        request_memory_mb: settings.request_memory_mb,
        request_disk_mb: settings.request_disk_mb,
        requirements: settings.requirements.clone(),
        max_retries: settings.max_retries,
        items: tasks
            .iter()
            .map(|(id, f)| SubmitItem {
                task_index: id.0,
                task_bundle: f.task_bundle.clone(),
                result_bundle: f
                    .result
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                output: f.stdout.clone(),
                error: f.stderr.clone(),
            })
            .collect(),
    }
}

/// The submit description `mw` would submit for the tasks `specs` of job `job_name` (for
/// `mw-condor submit-file`): every task in one batch, staged under `work_dir`. Returns
/// (submit text, item text). `specs` must not be empty.
pub fn preview_submit(
    job_name: &str,
    specs: Vec<TaskSpec>,
    work_dir: &Path,
    settings: &CondorSettings,
) -> Result<(String, String), InterfaceError> {
    let Some(first) = specs.first() else {
        return Err(InterfaceError::new("the job has no tasks"));
    };
    let program = first.program.clone();
    let dir = work_dir.join("batch-1");
    // The program bundle is content-addressed: pack it once (in a scratch dir) for its name.
    let scratch = tempfile::tempdir()
        .map_err(|e| InterfaceError::new(format!("creating a scratch directory: {e}")))?;
    let packed = program
        .bundle(scratch.path())
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let staging = work_dir.parent().unwrap_or(work_dir);
    let program_bundle = staging.join(packed.path.file_name().unwrap_or_default());
    let mut tasks = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let prepared = PreparedTask {
            id: TaskId(i as u64),
            attempt: 1,
            job: job_name.to_string(),
            spec,
            output_dir: None,
            staging_dir: work_dir.to_path_buf(),
        };
        tasks.push((
            prepared.id,
            task_files(&dir, &prepared, program_bundle.clone()),
        ));
    }
    let name = format!("{}-b1", safe_name(job_name));
    let spec = batch_spec(settings, &name, &dir, &program_bundle, &tasks);
    let items_file = dir.join(format!("{name}.items"));
    let submit = mw_condor_kit::render_submit(&spec, &items_file, settings.template.as_deref())
        .map_err(InterfaceError::new)?;
    let items = mw_condor_kit::render_items(&spec).map_err(InterfaceError::new)?;
    Ok((submit, items))
}

fn stage(task: &PreparedTask) -> Result<(Vec<u8>, PathBuf), InterfaceError> {
    let program = task
        .spec
        .program
        .bundle(&task.staging_dir)
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let bytes = task
        .task_bundle_bytes(&program)
        .map_err(|e| InterfaceError::new(format!("packing the task bundle: {e}")))?;
    let path = std::path::absolute(&program.path).unwrap_or(program.path);
    Ok((bytes, path))
}

fn submit_loop(shared: &Shared) {
    loop {
        let (batch, taken) = {
            let mut st = shared.lock();
            loop {
                if st.shut_down {
                    return;
                }
                match (st.first_pending, st.last_pending) {
                    (Some(first), Some(last)) => {
                        // Submit once no task has arrived for a whole window (a burst of
                        // tasks is one batch), but never hold the first longer than the cap.
                        let window = shared.settings.batch_window;
                        let quiet = window.saturating_sub(last.elapsed());
                        let cap = (window + MAX_BATCH_DELAY).saturating_sub(first.elapsed());
                        let wait = quiet.min(cap);
                        if wait.is_zero() {
                            break;
                        }
                        st = shared
                            .cond
                            .wait_timeout(st, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    _ => st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                }
            }
            let batch = st.open_batch;
            st.open_batch += 1;
            st.first_pending = None;
            st.last_pending = None;
            let ids = std::mem::take(&mut st.pending);
            let mut taken = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(t) = st.tasks.get_mut(&id) {
                    t.phase = Phase::Submitting;
                    taken.push((id, t.files.clone(), t.task.job.clone()));
                }
            }
            (batch, taken)
        };
        if taken.is_empty() {
            continue;
        }
        // One cluster per program bundle (normally exactly one).
        let mut groups: BTreeMap<PathBuf, Vec<(TaskId, TaskFiles)>> = BTreeMap::new();
        let job = taken[0].2.clone();
        for (id, files, _) in taken {
            groups
                .entry(files.program_bundle.clone())
                .or_default()
                .push((id, files));
        }
        for (k, (program, tasks)) in groups.into_iter().enumerate() {
            let dir = tasks[0].1.dir.clone();
            let name = if k == 0 {
                format!("{}-b{batch}", safe_name(&job))
            } else {
                format!("{}-b{batch}-{k}", safe_name(&job))
            };
            submit_group(shared, &name, &dir, &program, tasks);
        }
    }
}

fn submit_group(
    shared: &Shared,
    name: &str,
    dir: &Path,
    program: &Path,
    tasks: Vec<(TaskId, TaskFiles)>,
) {
    let settings = &shared.settings;
    let spec = batch_spec(settings, name, dir, program, &tasks);
    let submitted = write_submit_files(&spec, dir, settings.template.as_deref())
        .map_err(|e| format!("writing the submit description: {e}"))
        .and_then(|(sub, _)| {
            settings
                .cli
                .submit(&sub)
                .map_err(|e| format!("submitting {}: {e}", sub.display()))
        })
        .and_then(|handles| {
            if handles.len() != tasks.len() {
                return Err(format!(
                    "condor_submit reported {} jobs for {} tasks",
                    handles.len(),
                    tasks.len()
                ));
            }
            Ok(handles)
        });
    let handles = match submitted {
        Ok(h) => h,
        Err(msg) => {
            let mut done = Vec::new();
            let mut st = shared.lock();
            for (id, _) in &tasks {
                if let Some(mut t) = st.tasks.remove(id) {
                    st.finished += 1;
                    done.push((t.done.take(), t.cancel_requested));
                }
            }
            drop(st);
            for (d, cancelled) in done.into_iter() {
                if let Some(d) = d {
                    let m = if cancelled {
                        "cancelled before it was submitted".to_string()
                    } else {
                        format!("HTCondor: {msg}")
                    };
                    d.finish(Err(InterfaceError::new(m)));
                }
            }
            return;
        }
    };
    let cluster = handles[0].cluster;
    let marker = dir.join(format!("{name}.cluster"));
    if let Err(e) = std::fs::write(&marker, format!("{cluster}\n")) {
        eprintln!(
            "mw: condor: cannot write {} ({e}); `mw resume` will not find cluster {cluster}",
            marker.display()
        );
    }
    let mut to_remove = Vec::new();
    {
        let mut st = shared.lock();
        st.batches += 1;
        st.jobs_submitted += handles.len() as u64;
        for ((id, _), h) in tasks.iter().zip(&handles) {
            if let Some(t) = st.tasks.get_mut(id) {
                t.handle = Some(*h);
                t.phase = Phase::Idle;
                if t.cancel_requested {
                    to_remove.push(*h);
                }
                st.by_handle.insert(*h, *id);
            }
        }
    }
    let sink = shared.sink.lock().ok().and_then(|s| s.clone());
    if let Some(sink) = sink {
        for ((id, _), h) in tasks.iter().zip(&handles) {
            sink.record_handle(*id, &h.to_string());
        }
    }
    // Only now: every event of the log finds its task.
    add_log(shared, &dir.join(format!("{name}.log")));
    if !to_remove.is_empty() {
        let _ = settings.cli.remove(&to_remove);
    }
}

fn add_log(shared: &Shared, log: &Path) {
    if let Ok(w) = shared.watcher.lock() {
        if let Some(w) = w.as_ref() {
            if let Err(e) = w.add_log(log) {
                eprintln!("mw: condor: {e}");
            }
        }
    }
}

fn event_loop(shared: &Shared, rx: Receiver<WatchMessage>) {
    for msg in rx {
        match msg {
            Ok(ev) => on_event(shared, ev),
            Err(e) => {
                shared.lock().log_problems += 1;
                eprintln!("mw: condor: skipped a job event log record: {e}");
            }
        }
    }
}

/// What an event means for its task.
enum Outcome {
    /// Read the result bundle (return value of mw-worker).
    Exited(i64),
    Signal(i64),
    Error(String),
    HeldFail(String),
    /// A shadow exception: fail unless the job is still queued (it will run again).
    CheckQueue(String),
}

fn on_event(shared: &Shared, ev: LogEvent) {
    let Some(h) = ev.handle() else { return };
    let mut st = shared.lock();
    let Some(&id) = st.by_handle.get(&h) else {
        st.unclaimed.entry(h).or_default().push(ev);
        return;
    };
    let outcome = apply(&mut st, shared.settings.on_hold, id, h, &ev);
    drop(st);
    if let Some(o) = outcome {
        conclude(shared, id, h, o);
    }
}

/// Updates the task's phase; returns an outcome when the event ends the task.
fn apply(
    st: &mut State,
    on_hold: OnHold,
    id: TaskId,
    h: JobHandle,
    ev: &LogEvent,
) -> Option<Outcome> {
    let t = st.tasks.get_mut(&id)?;
    if t.handle != Some(h) {
        return None; // an earlier attempt's job
    }
    let at = format!("HTCondor job {h} ({}:{})", ev.log.display(), ev.line);
    match &ev.kind {
        EventKind::Executing { .. } | EventKind::Reconnected => t.phase = Phase::Running,
        EventKind::Submitted { .. }
        | EventKind::Evicted { .. }
        | EventKind::Released { .. }
        | EventKind::ReconnectFailed { .. } => t.phase = Phase::Idle,
        EventKind::ShadowException { message } => {
            t.phase = Phase::Idle;
            let m = format!(
                "{at}: shadow exception: {}",
                message.as_deref().unwrap_or("(no message)")
            );
            t.shadow = Some(m.clone());
            return Some(Outcome::CheckQueue(m));
        }
        EventKind::Terminated(Termination::Normal { return_value }) => {
            return Some(Outcome::Exited(*return_value))
        }
        EventKind::Terminated(Termination::Abnormal { signal, .. }) => {
            return Some(Outcome::Signal(*signal))
        }
        EventKind::Aborted { reason } => {
            let why = reason.as_deref().unwrap_or("no reason given");
            return Some(Outcome::Error(if t.cancel_requested {
                format!("cancelled: {at} was removed ({why})")
            } else {
                format!("{at} was removed from the queue (aborted: {why})")
            }));
        }
        EventKind::Held {
            reason,
            code,
            subcode,
        } => {
            let m = format!(
                "{at} was held: {} (hold code {}, subcode {})",
                reason.as_deref().unwrap_or("reason unspecified"),
                code.map_or("?".into(), |c| c.to_string()),
                subcode.map_or("?".into(), |c| c.to_string()),
            );
            match on_hold {
                OnHold::Fail => return Some(Outcome::HeldFail(m)),
                OnHold::Wait => {
                    eprintln!(
                        "mw: condor: {m}; waiting for it to be released (on_hold = \"wait\")"
                    );
                    t.phase = Phase::Held;
                }
            }
        }
        EventKind::ExecutableError { message } => {
            t.shadow = Some(format!("{at}: executable error: {message}"));
        }
        _ => {}
    }
    None
}

fn take_task(shared: &Shared, id: TaskId, h: JobHandle) -> Option<Tracked> {
    let mut st = shared.lock();
    if st.tasks.get(&id).map(|t| t.handle) != Some(Some(h)) {
        return None;
    }
    let t = st.tasks.remove(&id)?;
    st.finished += 1;
    Some(t)
}

fn conclude(shared: &Shared, id: TaskId, h: JobHandle, outcome: Outcome) {
    if let Outcome::CheckQueue(msg) = &outcome {
        // Still queued: HTCondor will run it again; keep waiting.
        match shared.settings.cli.query_jobs(&[h.cluster]) {
            Ok(ads) if ads.iter().any(|a| a.handle == h) => return,
            Ok(_) => {}
            Err(e) => {
                eprintln!("mw: condor: {msg}; condor_q failed ({e}); waiting for more events");
                return;
            }
        }
    }
    let Some(mut t) = take_task(shared, id, h) else {
        return;
    };
    let result = match outcome {
        Outcome::Exited(rv) => from_exit(&t, h, rv),
        Outcome::Signal(sig) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker was killed by signal {sig}{}{}",
            signal_name(sig),
            stderr_tail(&t.files.stderr)
        ))),
        Outcome::Error(m) | Outcome::CheckQueue(m) => Err(InterfaceError::new(m)),
        Outcome::HeldFail(m) => {
            let removed = match shared.settings.cli.remove(&[h]) {
                Ok(()) => "; removed it with condor_rm (on_hold = \"fail\")".to_string(),
                Err(e) => format!("; condor_rm failed: {e}"),
            };
            Err(InterfaceError::new(format!("{m}{removed}")))
        }
    };
    let result = match (result, &t.shadow) {
        (Err(e), Some(note)) => Err(InterfaceError::new(format!("{e} (earlier: {note})"))),
        (r, _) => r,
    };
    if let Some(d) = t.done.take() {
        d.finish(result);
    }
}

fn signal_name(sig: i64) -> String {
    match mw_bundle::signal_name(sig) {
        Some(name) => format!(" ({name})"),
        None => String::new(),
    }
}

/// The last lines of a job's stderr file, formatted for an error message.
fn stderr_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => {
            let start = bytes.len().saturating_sub(2000);
            let text = String::from_utf8_lossy(&bytes[start..]);
            format!("; job stderr ({}):\n{}", path.display(), text.trim_end())
        }
        _ => String::new(),
    }
}

/// The outcome of a job that terminated with `rv` (mw-worker's exit status).
fn from_exit(t: &Tracked, h: JobHandle, rv: i64) -> Result<Execution, InterfaceError> {
    let path = &t.files.result;
    let label = path.display().to_string();
    let bundle = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(InterfaceError::new(format!(
                "HTCondor job {h}: cannot read the result bundle {label}: {e}"
            )))
        }
    };
    match (rv, bundle) {
        (0 | 1, Some(bytes)) => Execution::from_result_bundle(
            &bytes,
            &label,
            t.task.id,
            t.task.output_dir.as_deref(),
        )
        .map_err(|e| {
            InterfaceError::new(format!(
                "HTCondor job {h} (mw-worker exit {rv}): bad result bundle: {e}{}",
                stderr_tail(&t.files.stderr)
            ))
        }),
        (0 | 1, None) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker exited {rv} but no result bundle came back (expected {label}){}",
            stderr_tail(&t.files.stderr)
        ))),
        (rv, _) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker exited {rv} without running the task{}",
            stderr_tail(&t.files.stderr)
        ))),
    }
}

/// Finds the batch of `cluster`: (batch dir, batch name) from the `<name>.cluster` markers.
fn find_batch(work_dir: &Path, cluster: u64) -> Option<(PathBuf, String)> {
    for e in std::fs::read_dir(work_dir).ok()?.flatten() {
        let dir = e.path();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in rd.flatten() {
            let p = f.path();
            if p.extension().and_then(|x| x.to_str()) != Some("cluster") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if text.trim().parse::<u64>().ok() == Some(cluster) {
                let name = p.file_stem()?.to_string_lossy().into_owned();
                return Some((dir, name));
            }
        }
    }
    None
}

impl Condor {
    fn reattach_inner(
        &self,
        task: &Arc<PreparedTask>,
        handle: &str,
    ) -> Result<(JobHandle, TaskFiles, PathBuf), String> {
        let h: JobHandle = handle.parse()?;
        let (dir, name) =
            find_batch(&self.shared.settings.work_dir, h.cluster).ok_or_else(|| {
                format!(
                    "no batch of cluster {} under {}",
                    h.cluster,
                    self.shared.settings.work_dir.display()
                )
            })?;
        let items_path = dir.join(format!("{name}.items"));
        let items = std::fs::read_to_string(&items_path)
            .map_err(|e| format!("{}: {e}", items_path.display()))?;
        let line = items
            .lines()
            .filter(|l| !l.trim().is_empty())
            .nth(h.proc as usize)
            .ok_or_else(|| format!("{}: no item for proc {}", items_path.display(), h.proc))?;
        // task_index task_path task_bundle result_bundle task_out task_err
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() != 6 || cols[0].parse::<u64>().ok() != Some(task.id.0) {
            return Err(format!(
                "{}: item {} is not {}: {line:?}",
                items_path.display(),
                h.proc,
                task.id
            ));
        }
        let files = TaskFiles {
            dir: dir.clone(),
            task_bundle: PathBuf::from(cols[1]),
            result: dir.join(cols[3]),
            stdout: PathBuf::from(cols[4]),
            stderr: PathBuf::from(cols[5]),
            program_bundle: PathBuf::new(),
        };
        Ok((h, files, dir.join(format!("{name}.log"))))
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
        if self.shared.lock().shut_down {
            return Err(InterfaceError::new("the HTCondor interface was shut down"));
        }
        Ok(WorkerId(0))
    }

    fn execute_task(&self, task: Arc<PreparedTask>, _worker: WorkerId, done: Completion) {
        let (bytes, program) = match stage(&task) {
            Ok(x) => x,
            Err(e) => return done.finish(Err(e)),
        };
        let mut st = self.shared.lock();
        if st.shut_down {
            drop(st);
            return done.finish(Err(InterfaceError::new(
                "the HTCondor interface was shut down",
            )));
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
            return done.finish(Err(InterfaceError::new(format!(
                "staging the task bundle {}: {e}",
                files.task_bundle.display()
            ))));
        }
        let id = task.id;
        st.tasks
            .insert(id, Tracked::new(task, done, None, files, Phase::Pending));
        st.pending.push(id);
        let now = Instant::now();
        st.first_pending.get_or_insert(now);
        st.last_pending = Some(now);
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
                    eprintln!("mw: condor: cancelling {task} (job {h}): {e}");
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
        let (h, files, log) = match self.reattach_inner(&task, handle) {
            Ok(x) => x,
            Err(e) => {
                eprintln!(
                    "mw: condor: cannot re-attach {} to job {handle}: {e}; running it again",
                    task.id
                );
                return Some(done);
            }
        };
        let id = task.id;
        if !log.exists() {
            // The log is gone: ask the schedd's history, then its queue.
            let cli = &self.shared.settings.cli;
            let ad = cli
                .history(&[h.cluster], None)
                .ok()
                .and_then(|ads| ads.into_iter().find(|a| a.handle == h));
            let tracked = Tracked::new(task.clone(), done, Some(h), files, Phase::Idle);
            match ad {
                Some(ad) => {
                    let outcome = match (ad.status, ad.exit_code, ad.exit_signal) {
                        (_, _, Some(sig)) if ad.attributes.get("ExitBySignal")
                            == Some(&serde_json::Value::Bool(true)) => Outcome::Signal(sig),
                        (JobStatus::Completed, Some(rv), _) => Outcome::Exited(rv),
                        (JobStatus::Removed, _, _) => Outcome::Error(format!(
                            "HTCondor job {h} was removed from the queue (found in condor_history; its log {} is gone)",
                            log.display()
                        )),
                        (s, _, _) => Outcome::Error(format!(
                            "HTCondor job {h} left the queue in state {s:?} (its log {} is gone)",
                            log.display()
                        )),
                    };
                    let mut st = self.shared.lock();
                    st.tasks.insert(id, tracked);
                    st.by_handle.insert(h, id);
                    drop(st);
                    conclude(&self.shared, id, h, outcome);
                    return None;
                }
                None => {
                    let queued = cli
                        .query_jobs(&[h.cluster])
                        .map(|ads| ads.iter().any(|a| a.handle == h))
                        .unwrap_or(false);
                    if !queued {
                        eprintln!("mw: condor: job {h} of {id} is neither in the queue nor in the history and its log is gone; running it again");
                        return tracked.done;
                    }
                    let mut st = self.shared.lock();
                    st.tasks.insert(id, tracked);
                    st.by_handle.insert(h, id);
                    drop(st);
                    add_log(&self.shared, &log);
                    return None;
                }
            }
        }
        let replay = {
            let mut st = self.shared.lock();
            st.tasks
                .insert(id, Tracked::new(task, done, Some(h), files, Phase::Idle));
            st.by_handle.insert(h, id);
            st.unclaimed.remove(&h).unwrap_or_default()
        };
        for ev in replay {
            on_event(&self.shared, ev);
        }
        add_log(&self.shared, &log);
        None
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

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Re-attaching to a batch whose log has a record cut off mid-way and an event code
    /// HTCondor does not define: the cut record is completed later and counted once, the
    /// unknown one is skipped, and a job that exited 0 without a result bundle is a clear error.
    #[test]
    fn reattach_truncated_log_unknown_code_and_missing_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("condor");
        let batch = work.join("batch-1");
        std::fs::create_dir_all(&batch).unwrap();
        std::fs::write(batch.join("unit-b1.cluster"), "7\n").unwrap();
        let b = batch.display();
        std::fs::write(
            batch.join("unit-b1.items"),
            format!(
                "0 {b}/task-0-a1.mwt task-0-a1.mwt task-0-a1.result {b}/task-0-a1.out {b}/task-0-a1.err\n\
                 1 {b}/task-1-a1.mwt task-1-a1.mwt task-1-a1.result {b}/task-1-a1.out {b}/task-1-a1.err\n"
            ),
        )
        .unwrap();
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
}
