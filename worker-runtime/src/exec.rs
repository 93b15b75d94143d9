//! Running one user program under the task contract.
//!
//! The program runs in its own process group, in a working directory the caller prepared,
//! with its input JSON on stdin. Where the kernel has pidfd, stdout and stderr are pipes read
//! in one `poll` loop (only `max_stdout_bytes` of stdout and a tail of stderr are kept);
//! elsewhere (and on Windows) they go to files beside (not inside) that directory, whose
//! sizes are watched while the program runs: one that passes its limit stops the task, so a
//! program printing for ever cannot fill the disk. A waiter thread reaps it with `wait4` to
//! get its CPU time; the calling thread waits for that or for a timeout or cancellation, and
//! then terminates the whole group: SIGTERM, a grace period, SIGKILL. After the leader exits,
//! the rest of its group is killed so no stray grandchild outlives the task, and what left the
//! group but carries the task's token (`setsid`, daemons) is killed by the sweep for ended
//! tasks' leftovers (`tokens`), within about a second.
//!
//! Suspension ([`ProcessControl::suspend`], BOINC's `<suspend/>`) stops the group; the time
//! spent suspended does not count toward the timeout (`Deadline` moves on with it), and a
//! suspend that comes while no program runs holds the next start back until the resume.
//!
//! This module knows nothing of bundles, platforms or the master.

use mw_bundle::ExitInfo;
use std::collections::BTreeMap;
use std::fs::File;
#[cfg(unix)]
use std::io::Write;
use std::io::{Read, Seek, SeekFrom};
#[cfg(unix)]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::process::{Command, Stdio};
#[cfg(unix)]
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[cfg(target_os = "linux")]
mod spawn;
#[cfg(unix)]
mod tokens;
#[cfg(windows)]
mod windows;
#[cfg(unix)]
pub use tokens::kill_token_prefix;
#[cfg(unix)]
pub(crate) use tokens::{kill_escapees, TaskToken};
#[cfg(windows)]
pub use windows::{decode_status, host_name};

/// Windows has no task tokens: a task's Job Object holds its whole tree.
#[cfg(not(unix))]
#[derive(Debug)]
pub(crate) struct TaskToken;

#[cfg(not(unix))]
pub(crate) fn kill_escapees(_token: &TaskToken) {}

/// How long a process group gets between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// The default [`ExecRequest::max_stderr_file_bytes`]: 64 MiB.
pub const DEFAULT_MAX_STDERR_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// How often a run whose stdout and stderr go to files looks at their sizes
/// ([`ExecRequest::max_stdout_bytes`], [`ExecRequest::max_stderr_file_bytes`]).
pub const OUTPUT_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Everything needed to run one program once.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Executable to run (absolute, or relative to `workdir`).
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment variables (added to the inherited environment).
    pub env: BTreeMap<String, String>,
    /// Working directory (must exist).
    pub workdir: PathBuf,
    /// Directory for the stdin/stdout/stderr files (must exist, outside `workdir`).
    pub io_dir: PathBuf,
    /// Bytes fed on stdin.
    pub stdin: Vec<u8>,
    /// A file fed on stdin instead of `stdin`: a large input already on disk is never held
    /// in memory.
    pub stdin_file: Option<PathBuf>,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// How many trailing bytes of stderr to keep.
    pub stderr_tail_bytes: usize,
    /// Largest stdout accepted, in bytes; what passes it is dropped
    /// ([`ExecOutcome::stdout_truncated`]). On the pipe path (Linux with pidfd) a program
    /// still running when its stdout passes the limit is stopped like a timeout (SIGTERM,
    /// grace, SIGKILL) and fails with [`ExitInfo::StreamBroken`] saying so; one that
    /// already exited keeps its exit status and the cut stdout. Where stdout goes to a file
    /// (kernels without pidfd, [`NO_PIDFD_ENV`], Windows), a file that grows past it while
    /// the program runs stops the task like a timeout (SIGTERM, grace, SIGKILL): it fails
    /// with [`ExitInfo::StreamBroken`] saying so, its stdout cut to this limit. The file's
    /// size is looked at every [`OUTPUT_WATCH_INTERVAL`], so it may pass the limit by what
    /// the program writes in that time and in the grace period.
    pub max_stdout_bytes: u64,
    /// Largest stderr file, in bytes, where stderr goes to a file (as for
    /// [`max_stdout_bytes`](Self::max_stdout_bytes)): a stderr file that grows past it stops
    /// the task the same way ([`ExitInfo::StreamBroken`]); the tail is still the file's last
    /// [`stderr_tail_bytes`](Self::stderr_tail_bytes). Default 64 MiB. The pipe path keeps
    /// only the tail and needs no such bound.
    pub max_stderr_file_bytes: u64,
    /// Kill the program (SIGKILL) if the thread that started it dies, e.g. when an MPI rank
    /// or a Condor/BOINC `mw-worker` is killed, so no orphan task keeps running. While a
    /// watchdog of this process runs ([`crate::dying::Watchdog`], which `mw-worker` starts),
    /// the watchdog keeps that promise (it kills every process carrying this process's task
    /// tokens once the process is gone, however it ended) and the program starts with
    /// `posix_spawn`. Without one the kernel keeps it (PR_SET_PDEATHSIG), which needs a `fork`
    /// (about 0.5 ms of system time per task here, more in a large process), so the local
    /// multicore path leaves it off: it journals each task's process group instead, and
    /// `mw resume` kills the leftovers of a crashed master.
    pub die_with_parent: bool,
}

impl ExecRequest {
    /// A request with the defaults: no timeout, 4 KiB stderr tail, 256 MiB stdout limit,
    /// 64 MiB stderr file limit.
    pub fn new(program: PathBuf, workdir: PathBuf, io_dir: PathBuf) -> Self {
        ExecRequest {
            program,
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir,
            io_dir,
            stdin: Vec::new(),
            stdin_file: None,
            timeout: None,
            grace: DEFAULT_GRACE,
            stderr_tail_bytes: 4096,
            max_stdout_bytes: 256 * 1024 * 1024,
            max_stderr_file_bytes: DEFAULT_MAX_STDERR_FILE_BYTES,
            die_with_parent: false,
        }
    }
}

/// What came of running a program.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// How it ended.
    pub exit: ExitInfo,
    /// Its stdout (up to the limit).
    pub stdout: Vec<u8>,
    /// True when stdout was longer than the limit and was cut.
    pub stdout_truncated: bool,
    /// Last bytes of stderr, lossy UTF-8.
    pub stderr_tail: String,
    /// Wall-clock time.
    pub wall: Duration,
    /// User CPU time of the process and its reaped descendants.
    pub user: Duration,
    /// System CPU time.
    pub sys: Duration,
    /// When it started.
    pub started: SystemTime,
}

pub(crate) struct Exited {
    pub(crate) status: i32,
    pub(crate) user: Duration,
    pub(crate) sys: Duration,
}

#[derive(Default)]
pub(crate) struct ControlState {
    pub(crate) pgid: Option<i32>,
    pub(crate) cancelled: bool,
    /// Suspended (asked to stop and not resumed yet), whether or not a program runs: a
    /// suspend that comes while none does holds the next one back until the resume.
    pub(crate) suspended: bool,
    /// Since when, while suspended.
    suspended_since: Option<Instant>,
    /// Time spent suspended before `suspended_since`, over the control's whole life.
    stopped_before: Duration,
    /// Counts runs, so a delayed SIGKILL never hits a later run of the same control.
    pub(crate) run: u64,
    pub(crate) grace: Duration,
    /// Told the process group id right after the program started.
    pub(crate) on_start: Option<Arc<dyn Fn(i32) + Send + Sync>>,
    /// The running task's [`TASK_TOKEN_ENV`] value, which its descendants inherit.
    pub(crate) token: Option<TaskToken>,
    /// The running task's Job Object (Windows' process group).
    #[cfg(windows)]
    job: Option<Arc<windows::Job>>,
}

impl ControlState {
    /// Records the suspension starting or ending now.
    fn set_suspended(&mut self, stop: bool) {
        if stop == self.suspended {
            return;
        }
        self.suspended = stop;
        if stop {
            self.suspended_since = Some(Instant::now());
        } else if let Some(since) = self.suspended_since.take() {
            self.stopped_before = self.stopped_before.saturating_add(since.elapsed());
        }
    }

    /// All the time spent suspended so far, the current suspension included.
    pub(crate) fn stopped_time(&self) -> Duration {
        let current = self.suspended_since.map_or(Duration::ZERO, |s| s.elapsed());
        self.stopped_before.saturating_add(current)
    }
}

/// A run's time limit that does not count the time the run spent suspended: it moves on by
/// every second of a suspension (BOINC's `<suspend/>` stops a task for as long as the
/// volunteer uses the machine), so a task is never killed as timed out for it.
#[derive(Debug)]
pub(crate) struct Deadline {
    control: ProcessControl,
    t0: Instant,
    limit: Duration,
    /// The control's [`ControlState::stopped_time`] when the run started.
    stopped0: Duration,
}

impl Deadline {
    /// The limit `limit` of a run that started at `t0` under `control`; `None` without one.
    pub(crate) fn new(
        control: &ProcessControl,
        t0: Instant,
        limit: Option<Duration>,
    ) -> Option<Self> {
        let stopped0 = control.lock().stopped_time();
        limit.map(|limit| Deadline {
            control: control.clone(),
            t0,
            limit,
            stopped0,
        })
    }

    /// When the limit is reached as things stand (later with every moment suspended);
    /// `None` when too far away to represent, which is no limit (never a panic).
    pub(crate) fn at(&self) -> Option<Instant> {
        let stopped = self.control.lock().stopped_time();
        let extra = stopped.saturating_sub(self.stopped0);
        self.t0.checked_add(self.limit)?.checked_add(extra)
    }

    /// True once the limit is reached at `now`.
    pub(crate) fn passed(&self, now: Instant) -> bool {
        self.at().is_some_and(|d| now >= d)
    }

    /// What is left of the limit at `now` (zero once reached; `None`: no limit after all).
    pub(crate) fn left(&self, now: Instant) -> Option<Duration> {
        self.at().map(|d| d.saturating_duration_since(now))
    }
}

/// A handle to the process group of a running task: cancel, suspend, resume. Cheap to clone;
/// may be used from any thread, before, during or after the run.
#[derive(Clone, Default)]
pub struct ProcessControl {
    state: Arc<Mutex<ControlState>>,
    /// Signalled on resume and cancel, for a start held back by a suspension.
    wake: Arc<std::sync::Condvar>,
}

impl std::fmt::Debug for ProcessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessControl")
    }
}

/// Environment variable every task process gets, with a value unique to the run. Its
/// descendants inherit it, also those that leave the task's process group (`setsid`,
/// daemons), so a timeout, a cancel or the task's end can find and kill them (HTCondor
/// tracks a job's processes the same way). A process that scrubs its environment escapes;
/// that is the documented limit without cgroups.
pub const TASK_TOKEN_ENV: &str = "MW_TASK_TOKEN";

/// The start of every [`TASK_TOKEN_ENV`] value this process gives its tasks:
/// `<pid>.<start time>-` in hex, unique to this process (the start time tells it from an
/// earlier process with the same pid). Whoever knows it can find every process of every
/// task this process started ([`kill_token_prefix`]), e.g. a watchdog after it died.
pub fn task_token_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{:x}.{nanos:x}-", std::process::id())
    })
}

/// True for a value [`task_token_prefix`] could have made (so a caller cannot turn
/// [`kill_token_prefix`] on every task of this user with an empty or short prefix).
pub fn is_task_token_prefix(prefix: &str) -> bool {
    let Some((pid, rest)) = prefix.split_once('.') else {
        return false;
    };
    let Some(start) = rest.strip_suffix('-') else {
        return false;
    };
    let hex = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    hex(pid) && hex(start) && start.len() >= 8
}

/// The command that starts a task program (Unix) with std: its arguments and environment,
/// the task token, its own process group, and, when asked, death with its parent
/// (PR_SET_PDEATHSIG, which needs a `fork`) and an empty signal mask (std leaves a forked
/// child the mask of the thread that forked it, and the worker blocks its stop signals).
/// Standard streams are the caller's to set.
#[cfg(unix)]
fn task_command(
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    workdir: &Path,
    token: &str,
    die_with_parent: bool,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .env(TASK_TOKEN_ENV, token)
        .current_dir(workdir)
        .process_group(0);
    if die_with_parent {
        // SAFETY: sigemptyset, sigprocmask and prctl(PR_SET_PDEATHSIG) are async-signal-safe
        // and touch only the child's own state and a local; they run between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// How a task program is started (Unix), the one place for it: which program, with what,
/// where, under which task token, whether it must die with the thread that starts it.
#[cfg(unix)]
pub(crate) struct TaskStart<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [String],
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) workdir: &'a Path,
    pub(crate) token: &'a str,
    pub(crate) die_with_parent: bool,
}

#[cfg(target_os = "linux")]
impl TaskStart<'_> {
    /// Whether the program starts with `posix_spawn` (module `spawn`) rather than std's
    /// `Command` (`fork` + `exec` when a parent-death signal is asked for, and always in a
    /// static binary): when no parent-death signal is needed, or a watchdog
    /// ([`crate::dying::Watchdog`]) kills this process's tasks if it dies, which keeps the
    /// promise `die_with_parent` makes. A bare program name with a PATH of the task's own is
    /// left to std too (it searches that PATH, not this process's, as `posix_spawnp` does).
    fn without_fork(&self) -> bool {
        (!self.die_with_parent || crate::dying::is_watched())
            && !(spawn::is_bare_name(self.program) && self.env.contains_key("PATH"))
    }
}

/// Starts a task program with `stdio` (stdin, stdout, stderr) and returns its pid (= its
/// process group id), or why it could not start (then after retrying briefly on ETXTBSY:
/// an executable that was just written, a test's script or a freshly unpacked program, can
/// still be open for writing in a child another thread forked and that has not reached
/// `exec` yet). The caller reaps it (`wait_pid`). The child's ends of `stdio` are closed
/// here once it started.
#[cfg(unix)]
pub(crate) fn start_task(
    start: &TaskStart<'_>,
    stdio: [std::os::fd::OwnedFd; 3],
) -> std::io::Result<i32> {
    let mut attempt = 0u64;
    loop {
        match start_task_once(start, &stdio) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 * attempt));
            }
            other => return other,
        }
    }
}

#[cfg(unix)]
fn start_task_once(
    start: &TaskStart<'_>,
    stdio: &[std::os::fd::OwnedFd; 3],
) -> std::io::Result<i32> {
    use std::os::fd::AsFd;
    let [i, o, e] = stdio;
    #[cfg(target_os = "linux")]
    if start.without_fork() {
        return spawn::spawn(
            start.program,
            start.args,
            start.env,
            start.workdir,
            start.token,
            [i.as_fd(), o.as_fd(), e.as_fd()],
        );
    }
    let mut cmd = task_command(
        start.program,
        start.args,
        start.env,
        start.workdir,
        start.token,
        start.die_with_parent,
    );
    cmd.stdin(Stdio::from(i.try_clone()?))
        .stdout(Stdio::from(o.try_clone()?))
        .stderr(Stdio::from(e.try_clone()?));
    // We reap with wait4 ourselves (for CPU times); std never reaps a dropped Child.
    cmd.spawn().map(|child| child.id() as i32)
}

#[cfg(unix)]
pub(crate) fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg only sends a signal; a stale or invalid pgid yields ESRCH, which we ignore.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

#[cfg(unix)]
/// The one termination routine for a task's process group: SIGTERM (with SIGCONT, so a
/// stopped group can act on it), a grace period, then SIGKILL. Callers differ only in how
/// they spend the grace period (a poll loop, a channel wait, a timer thread); each ends it
/// early when the leader exits, and calls [`kill`](Self::kill) when it runs out.
#[derive(Debug)]
pub(crate) struct Termination {
    pgid: i32,
    kill_at: Instant,
}

#[cfg(unix)]
impl Termination {
    /// Asks the group to stop (SIGTERM + SIGCONT) and starts the grace period.
    pub(crate) fn start(pgid: i32, grace: Duration) -> Self {
        signal_group(pgid, libc::SIGTERM);
        signal_group(pgid, libc::SIGCONT);
        Termination {
            pgid,
            kill_at: Instant::now() + grace,
        }
    }

    /// When the grace period ends.
    pub(crate) fn kill_at(&self) -> Instant {
        self.kill_at
    }

    /// What is left of the grace period.
    fn grace_left(&self) -> Duration {
        self.kill_at.saturating_duration_since(Instant::now())
    }

    /// Ends the grace period: SIGKILL to the whole group.
    pub(crate) fn kill(self) {
        signal_group(self.pgid, libc::SIGKILL);
    }
}

impl ProcessControl {
    /// A fresh control, not attached to a process yet.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // A poisoned lock only means another thread panicked mid-update of plain flags.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels the task: a run in progress is terminated (SIGTERM to its process group,
    /// SIGKILL after the grace period); a run not yet started will not start.
    pub fn cancel(&self) {
        let mut st = self.lock();
        st.cancelled = true;
        // A start held back by a suspension gives up (it will not run).
        self.wake.notify_all();
        // The group gets SIGCONT to act on the stop: it is no longer suspended.
        st.set_suspended(false);
        // No polite stop on Windows: end the whole job at once.
        #[cfg(windows)]
        if let Some(job) = &st.job {
            job.terminate();
        }
        #[cfg(unix)]
        {
            let Some(pgid) = st.pgid else {
                return;
            };
            let term = Termination::start(pgid, st.grace);
            let run = st.run;
            drop(st);
            // Not a clone of the control: what its owner hung on it (a start hook holding a
            // journal) must not outlive the owner by the grace period. While the run goes
            // on, its runner holds the control; once nobody does, the run has ended.
            let state = Arc::downgrade(&self.state);
            // The grace period is a product behaviour (give the task time to clean up), not
            // synchronisation: the kill only happens if the same run is still going.
            let _ = std::thread::Builder::new()
                .name("mw-kill-after-grace".into())
                .spawn(move || {
                    std::thread::sleep(term.grace_left());
                    let Some(state) = state.upgrade() else {
                        return;
                    };
                    let st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if st.run == run && st.pgid == Some(pgid) {
                        term.kill();
                    }
                });
        }
    }

    /// True once [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Stops the process group (SIGSTOP; on Windows every thread of the job). With no
    /// program running (unpacking, between the tasks of a pack, a streaming program being
    /// restarted) the suspension is remembered and the next program does not start before
    /// [`resume`](Self::resume). Time suspended does not count toward a run's timeout.
    pub fn suspend(&self) {
        self.set_stopped(true);
    }

    /// Continues a stopped process group (SIGCONT; on Windows every thread of the job), or
    /// lets a program held back by [`suspend`](Self::suspend) start.
    pub fn resume(&self) {
        self.set_stopped(false);
    }

    fn set_stopped(&self, stop: bool) {
        let mut st = self.lock();
        #[cfg(unix)]
        if let Some(pgid) = st.pgid {
            signal_group(pgid, if stop { libc::SIGSTOP } else { libc::SIGCONT });
        }
        #[cfg(windows)]
        if let Some(job) = &st.job {
            if st.suspended != stop {
                job.set_suspended(stop);
            }
        }
        st.set_suspended(stop);
        if !stop {
            self.wake.notify_all();
        }
    }

    /// True while suspended (see [`suspend`](Self::suspend)).
    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// All the time this control spent suspended so far.
    pub fn stopped_time(&self) -> Duration {
        self.lock().stopped_time()
    }

    /// Waits, with the lock `st` of this control, until it is not suspended or is
    /// cancelled: a program is never started into a suspension.
    pub(crate) fn hold_while_suspended<'a>(
        &'a self,
        mut st: std::sync::MutexGuard<'a, ControlState>,
    ) -> std::sync::MutexGuard<'a, ControlState> {
        while st.suspended && !st.cancelled {
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// [`hold_while_suspended`](Self::hold_while_suspended), taking the lock itself.
    #[cfg(unix)]
    pub(crate) fn wait_while_suspended(&self) {
        drop(self.hold_while_suspended(self.lock()));
    }

    /// Calls `f` with the process group id (= the leader's pid) each time a program starts
    /// under this control (e.g. to journal it, so a later master can find leftovers).
    pub fn set_on_start(&self, f: impl Fn(i32) + Send + Sync + 'static) {
        self.lock().on_start = Some(Arc::new(f));
    }

    /// CPU time of the running task's whole job so far (Windows).
    #[cfg(windows)]
    pub fn task_cpu(&self) -> Option<Duration> {
        let st = self.lock();
        st.job.as_ref().map(|j| {
            let (u, s) = j.cpu_times();
            u + s
        })
    }

    /// The process group id while a run is in progress.
    pub fn pgid(&self) -> Option<i32> {
        self.lock().pgid
    }
}

/// Errors that prevent a run from being attempted at all (not failures of the program).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// An I/O error preparing or reading the run's files.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExecError {
    let context = context.into();
    move |source| ExecError::Io { context, source }
}

#[cfg(unix)]
fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

#[cfg(unix)]
/// Inputs up to this size go through a pipe written before waiting (a fresh pipe holds
/// 64 KiB, so the write cannot block); larger ones through a file.
const PIPE_STDIN_MAX: usize = 16 * 1024;

#[cfg(unix)]
pub(crate) fn wait_pid(pid: i32) -> Option<Exited> {
    let mut status: i32 = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child; status and usage point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Some(Exited {
                status,
                user: timeval(usage.ru_utime),
                sys: timeval(usage.ru_stime),
            });
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Runs the program and waits for it, enforcing the timeout and honouring `control`.
pub fn execute(req: &ExecRequest, control: &ProcessControl) -> Result<ExecOutcome, ExecError> {
    #[cfg(windows)]
    return windows::execute(req, control);
    #[cfg(unix)]
    return execute_unix(req, control);
}

#[cfg(unix)]
fn execute_unix(req: &ExecRequest, control: &ProcessControl) -> Result<ExecOutcome, ExecError> {
    use std::os::fd::OwnedFd;
    // Where the kernel can tell us of the leader's exit (pidfd), stdout and stderr are pipes
    // read in a poll loop; elsewhere (old kernels on volunteer hosts) they go to files.
    let use_pipes = pidfd_supported();
    let pipe = || std::io::pipe().map_err(io_err("creating a pipe"));
    let (stdout, stderr, out_pipe, err_pipe, watch): (OwnedFd, OwnedFd, _, _, _) = if use_pipes {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        (out_w.into(), err_w.into(), Some(out_r), Some(err_r), None)
    } else {
        let (stdout, stderr) = create_output_files(req)?;
        let watch = OutputWatch::new(req, &stdout, &stderr)?;
        (stdout.into(), stderr.into(), None, None, Some(watch))
    };
    let piped_input = req.stdin_file.is_none() && req.stdin.len() <= PIPE_STDIN_MAX;
    let (stdin, stdin_pipe): (OwnedFd, _) = if piped_input {
        let (r, w) = pipe()?;
        (r.into(), Some(w))
    } else if let Some(path) = &req.stdin_file {
        let f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        (f.into(), None)
    } else {
        let stdin_path = req.io_dir.join("stdin");
        std::fs::write(&stdin_path, &req.stdin)
            .map_err(io_err(format!("writing {}", stdin_path.display())))?;
        let f = File::open(&stdin_path).map_err(io_err("opening stdin file"))?;
        (f.into(), None)
    };

    let token = TaskToken::new();
    // Register before spawning so a cancel racing with the spawn is seen. The child's ends
    // of the pipes are closed once it started (moved into start_task and dropped there).
    // A suspension holds the start back; the task's clock starts once it may run.
    let (pid, t0, started) = {
        let st = control.hold_while_suspended(control.lock());
        let started = SystemTime::now();
        let t0 = Instant::now();
        if st.cancelled {
            return Ok(outcome_without_run(ExitInfo::Cancelled, started));
        }
        let mut st = st;
        let start = TaskStart {
            program: &req.program,
            args: &req.args,
            env: &req.env,
            workdir: &req.workdir,
            token: token.as_str(),
            die_with_parent: req.die_with_parent,
        };
        match start_task(&start, [stdin, stdout, stderr]) {
            Ok(pid) => {
                st.pgid = Some(pid);
                st.run += 1;
                st.grace = req.grace;
                st.token = Some(token);
                (pid, t0, started)
            }
            Err(e) => return Ok(spawn_failed(&req.program, &e, started)),
        }
    };
    let deadline = Deadline::new(control, t0, req.timeout);
    let on_start = control.lock().on_start.clone();
    if let Some(f) = on_start {
        f(pid);
    }
    if let Some(mut pipe) = stdin_pipe {
        // A program that exits without reading its input gives EPIPE here: not an error.
        let _ = pipe.write_all(&req.stdin);
    }
    if use_pipes {
        let pumped = pump(pid, out_pipe, err_pipe, req, deadline.as_ref());
        // The leader has exited (or is being killed); reap it for its status and CPU time.
        let exited = wait_pid(pid);
        signal_group(pid, libc::SIGKILL);
        return Ok(finish(
            req,
            control,
            t0,
            started,
            if pumped.timed_out {
                Some(Stop::TimedOut)
            } else {
                pumped.over.then_some(Stop::Output(Overflow {
                    stream: "stdout",
                    limit: req.max_stdout_bytes,
                }))
            },
            exited,
            pumped.stdout,
            pumped.truncated,
            tail_string(&pumped.stderr_tail, req.stderr_tail_bytes),
        ));
    }

    // A waiter thread reaps the leader; this one looks at the timeout and at the sizes of
    // the output files in the meantime, and stops the group when either passes its limit.
    let (tx, rx) = mpsc::channel::<Exited>();
    let waiter = std::thread::Builder::new()
        .name(format!("mw-wait-{pid}"))
        .spawn(move || {
            if let Some(e) = wait_pid(pid) {
                let _ = tx.send(e);
            }
        });
    if let Err(e) = waiter {
        // Nothing could watch the task: it does not run unwatched.
        signal_group(pid, libc::SIGKILL);
        let _ = wait_pid(pid);
        let token = {
            let mut st = control.lock();
            st.pgid = None;
            st.token.take()
        };
        if let Some(t) = token {
            kill_escapees(&t);
        }
        return Err(io_err("spawning waiter thread")(e));
    }
    let (stop, exited) = loop {
        // The deadline moves on while the task is suspended: look again when the wait ends,
        // and time out only once it has really passed.
        match rx.recv_timeout(watch_wait(deadline.as_ref(), Instant::now())) {
            Ok(e) => break (None, Some(e)),
            Err(RecvTimeoutError::Disconnected) => break (None, None),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if deadline.as_ref().is_some_and(|d| d.passed(Instant::now())) {
            break (Some(Stop::TimedOut), terminate(pid, &rx, req.grace));
        }
        // A cancelled run is being stopped already (and is reported as cancelled).
        let watched = watch.as_ref().filter(|_| !control.is_cancelled());
        if let Some(over) = watched.and_then(OutputWatch::overflow) {
            // An exit that came meanwhile is the run's own end.
            if let Ok(e) = rx.try_recv() {
                break (None, Some(e));
            }
            break (Some(Stop::Output(over)), terminate(pid, &rx, req.grace));
        }
    };
    // Kill whatever is left of the group (grandchildren holding files open).
    signal_group(pid, libc::SIGKILL);
    finish_from_files(req, control, (t0, started), stop, exited)
}

/// Where a run's stdout and stderr go when they go to files (the no-pidfd path here, every
/// run on Windows): `stdout` and `stderr` in the request's I/O directory.
fn output_paths(req: &ExecRequest) -> (PathBuf, PathBuf) {
    (req.io_dir.join("stdout"), req.io_dir.join("stderr"))
}

/// Creates the files of [`output_paths`] (stdout's, stderr's) for a run to write to.
fn create_output_files(req: &ExecRequest) -> Result<(File, File), ExecError> {
    let (stdout_path, stderr_path) = output_paths(req);
    Ok((
        File::create(&stdout_path).map_err(io_err("creating stdout file"))?,
        File::create(&stderr_path).map_err(io_err("creating stderr file"))?,
    ))
}

/// Why mw stopped a run itself (a cancel is the control's, not here).
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Its timeout passed.
    TimedOut,
    /// Its stdout or stderr file passed its limit.
    Output(Overflow),
}

/// A stream whose file passed its limit.
#[derive(Debug, Clone, Copy)]
struct Overflow {
    /// `stdout` or `stderr`.
    stream: &'static str,
    /// The limit it passed, in bytes.
    limit: u64,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed its limit of {} bytes; the task was stopped",
            self.stream, self.limit
        )
    }
}

/// The sizes of a run's stdout and stderr files, watched while it runs (through handles of
/// their own, so what the size is comes from the open file, not a directory entry).
struct OutputWatch {
    stdout: File,
    stderr: File,
    max_stdout: u64,
    max_stderr: u64,
}

impl OutputWatch {
    /// Watches `stdout` and `stderr` (the files the program is given) under `req`'s limits.
    fn new(req: &ExecRequest, stdout: &File, stderr: &File) -> Result<Self, ExecError> {
        Ok(OutputWatch {
            stdout: stdout
                .try_clone()
                .map_err(io_err("watching the stdout file"))?,
            stderr: stderr
                .try_clone()
                .map_err(io_err("watching the stderr file"))?,
            max_stdout: req.max_stdout_bytes,
            max_stderr: req.max_stderr_file_bytes,
        })
    }

    /// The first stream whose file is now past its limit, if one is (a size that cannot be
    /// read passes nothing).
    fn overflow(&self) -> Option<Overflow> {
        let past = |f: &File, limit: u64| f.metadata().is_ok_and(|m| m.len() > limit);
        if past(&self.stdout, self.max_stdout) {
            Some(Overflow {
                stream: "stdout",
                limit: self.max_stdout,
            })
        } else if past(&self.stderr, self.max_stderr) {
            Some(Overflow {
                stream: "stderr",
                limit: self.max_stderr,
            })
        } else {
            None
        }
    }
}

/// How long to wait before looking again at a run on the files path: the watch interval, or
/// less when the timeout comes first.
fn watch_wait(deadline: Option<&Deadline>, now: Instant) -> Duration {
    match deadline.and_then(|d| d.left(now)) {
        Some(left) => left.min(OUTPUT_WATCH_INTERVAL),
        None => OUTPUT_WATCH_INTERVAL,
    }
}

/// The end of a run whose stdout and stderr went to the files of [`output_paths`]: reads
/// them within the request's limits, then [`finish`].
fn finish_from_files(
    req: &ExecRequest,
    control: &ProcessControl,
    (t0, started): (Instant, SystemTime),
    stop: Option<Stop>,
    exited: Option<Exited>,
) -> Result<ExecOutcome, ExecError> {
    let (stdout_path, stderr_path) = output_paths(req);
    let (stdout, stdout_truncated) = read_limited(&stdout_path, req.max_stdout_bytes)?;
    let stderr_tail = read_tail(&stderr_path, req.stderr_tail_bytes)?;
    Ok(finish(
        req,
        control,
        t0,
        started,
        stop,
        exited,
        stdout,
        stdout_truncated,
        stderr_tail,
    ))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    req: &ExecRequest,
    control: &ProcessControl,
    t0: Instant,
    started: SystemTime,
    stop: Option<Stop>,
    exited: Option<Exited>,
    stdout: Vec<u8>,
    stdout_truncated: bool,
    stderr_tail: String,
) -> ExecOutcome {
    let (cancelled, token) = {
        let mut st = control.lock();
        st.pgid = None;
        (st.cancelled, st.token.take())
    };
    if stop.is_some() || cancelled {
        // Processes that left the task's process group (setsid, a daemon's double fork)
        // still carry its token: they go too.
        if let Some(t) = token {
            kill_escapees(&t);
        }
    }
    let wall = t0.elapsed();
    let exit = match (&exited, stop) {
        (_, Some(Stop::TimedOut)) => ExitInfo::TimedOut {
            limit_secs: req.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0),
        },
        // Reused (a worker's results stay readable by masters that know no newer variant):
        // the reason says what happened.
        (_, Some(Stop::Output(over))) => ExitInfo::StreamBroken {
            reason: over.to_string(),
        },
        (Some(e), None) if cancelled && !decode_status(e.status).success() => ExitInfo::Cancelled,
        (Some(e), None) => decode_status(e.status),
        (None, None) => ExitInfo::SpawnFailed {
            reason: "lost track of the process".into(),
        },
    };
    let (user, sys) = exited
        .as_ref()
        .map(|e| (e.user, e.sys))
        .unwrap_or((Duration::ZERO, Duration::ZERO));
    ExecOutcome {
        exit,
        stdout,
        stdout_truncated,
        stderr_tail,
        wall,
        user,
        sys,
        started,
    }
}

#[cfg(unix)]
pub(crate) fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return None;
    }
    // SAFETY: r is a fresh descriptor that nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// Set (to anything) to force the path for kernels without pidfd (before Linux 5.3):
/// stdout and stderr go to files and the leader is waited for by a thread. The test suite
/// runs the task-contract tests both ways.
pub const NO_PIDFD_ENV: &str = "MW_NO_PIDFD";

#[cfg(unix)]
/// Whether this kernel has pidfd_open (Linux 5.3+) and it is not switched off, probed once.
pub(crate) fn pidfd_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        std::env::var_os(NO_PIDFD_ENV).is_none() && pidfd_open(std::process::id() as i32).is_some()
    })
}

#[cfg(unix)]
struct Pumped {
    timed_out: bool,
    /// Stdout passed its limit while the leader ran: the task was stopped for it.
    over: bool,
    stdout: Vec<u8>,
    truncated: bool,
    stderr_tail: Vec<u8>,
}

#[cfg(unix)]
/// How long pipes are still drained after the leader exited and its group was killed (a
/// grandchild that left the group could otherwise hold them open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

#[cfg(unix)]
/// Reads stdout and stderr until both close, watching the leader's pidfd and the timeout:
/// on timeout the group gets SIGTERM, then SIGKILL after the grace period; when the leader
/// exits the rest of its group is killed so the pipes close.
fn pump(
    pid: i32,
    out: Option<std::io::PipeReader>,
    err: Option<std::io::PipeReader>,
    req: &ExecRequest,
    limit: Option<&Deadline>,
) -> Pumped {
    use std::os::fd::AsRawFd;
    let pidfd = pidfd_open(pid);
    let mut out = out;
    let mut err = err;
    let mut p = Pumped {
        timed_out: false,
        over: false,
        stdout: Vec::new(),
        truncated: false,
        stderr_tail: Vec::new(),
    };
    let mut term: Option<Termination> = None;
    let mut leader_gone = pidfd.is_none();
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        // Where the limit is now (it moves on while the task is suspended); one too far
        // away to represent is no limit (never a panic).
        let deadline = limit.and_then(Deadline::at);
        if let Some(d) = deadline {
            if !p.timed_out && now >= d && !leader_gone {
                p.timed_out = true;
                term = Some(Termination::start(pid, req.grace));
            }
        }
        if let Some(t) = term.take() {
            if now >= t.kill_at() {
                t.kill();
            } else {
                term = Some(t);
            }
        }
        if let Some(d) = drain_until {
            if now >= d {
                break;
            }
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut which: Vec<u8> = Vec::with_capacity(3);
        let watched = [
            out.as_ref().map(|o| o.as_raw_fd()),
            err.as_ref().map(|e| e.as_raw_fd()),
            pidfd
                .as_ref()
                .filter(|_| !leader_gone)
                .map(|p| p.as_raw_fd()),
        ];
        for (i, fd) in (0u8..).zip(watched) {
            if let Some(fd) = fd {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if fds.is_empty() || (leader_gone && out.is_none() && err.is_none()) {
            break;
        }
        let mut wake: Option<Instant> = None;
        for t in [
            deadline.filter(|_| !p.timed_out && !leader_gone),
            term.as_ref().map(Termination::kill_at),
            drain_until,
        ]
        .into_iter()
        .flatten()
        {
            wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        }
        let timeout_ms: i32 = match wake {
            None => -1,
            Some(w) => {
                let ms = w.saturating_duration_since(Instant::now()).as_millis();
                ms.clamp(1, i32::MAX as u128) as i32
            }
        };
        // SAFETY: fds points to fds.len() initialised pollfd structs that live across the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for (fd, w) in fds.iter().zip(which.iter()) {
            if fd.revents == 0 {
                continue;
            }
            match w {
                0 => {
                    let n = out.as_mut().map(|o| o.read(&mut buf)).unwrap_or(Ok(0));
                    match n {
                        Ok(0) | Err(_) => out = None,
                        Ok(n) => {
                            let room =
                                (req.max_stdout_bytes as usize).saturating_sub(p.stdout.len());
                            if n > room {
                                p.truncated = true;
                                // A program still printing past the limit is stopped like
                                // one past its timeout: its result is lost anyway, and
                                // reading its output for ever would only burn a core.
                                if !leader_gone && !p.over && !p.timed_out {
                                    p.over = true;
                                    term = Some(Termination::start(pid, req.grace));
                                }
                            }
                            p.stdout.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                }
                1 => {
                    let n = err.as_mut().map(|e| e.read(&mut buf)).unwrap_or(Ok(0));
                    match n {
                        Ok(0) | Err(_) => err = None,
                        Ok(n) => {
                            p.stderr_tail.extend_from_slice(&buf[..n]);
                            let keep = req.stderr_tail_bytes.max(1);
                            if p.stderr_tail.len() > 2 * keep {
                                let cut = p.stderr_tail.len() - keep;
                                p.stderr_tail.drain(..cut);
                            }
                        }
                    }
                }
                _ => {
                    leader_gone = true;
                    // Kill what is left of the group so the pipes close.
                    signal_group(pid, libc::SIGKILL);
                    term = None;
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
            }
        }
    }
    p
}

#[cfg(unix)]
pub(crate) fn tail_string(bytes: &[u8], n: usize) -> String {
    let start = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(unix)]
/// SIGTERM the group, wait up to `grace` for the leader to exit, then SIGKILL; returns the
/// leader's exit as reaped by the waiter thread.
fn terminate(pid: i32, rx: &mpsc::Receiver<Exited>, grace: Duration) -> Option<Exited> {
    let term = Termination::start(pid, grace);
    if let Ok(e) = rx.recv_timeout(term.grace_left()) {
        return Some(e);
    }
    term.kill();
    rx.recv().ok()
}

/// The outcome of a program that could not be started: `why` names the program (and the
/// interpreter its `#!` line names, when that is what is missing: the kernel then reports
/// the script itself as not found).
fn spawn_failed(program: &Path, why: &dyn std::fmt::Display, started: SystemTime) -> ExecOutcome {
    let mut reason = format!("{}: {why}", program.display());
    if let Some(interpreter) = missing_interpreter(program) {
        reason.push_str(&format!(
            " (the interpreter on its #! line, `{interpreter}`, does not exist)"
        ));
    }
    outcome_without_run(ExitInfo::SpawnFailed { reason }, started)
}

/// The interpreter a script's `#!` line names, if the script exists and that interpreter
/// does not. Reads at most the first 256 bytes.
fn missing_interpreter(program: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(256);
    std::fs::File::open(program)
        .ok()?
        .take(256)
        .read_to_end(&mut head)
        .ok()?;
    let line = head.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let interpreter = line.split_whitespace().next()?;
    (!Path::new(interpreter).exists()).then(|| interpreter.to_string())
}

fn outcome_without_run(exit: ExitInfo, started: SystemTime) -> ExecOutcome {
    ExecOutcome {
        exit,
        stdout: Vec::new(),
        stdout_truncated: false,
        stderr_tail: String::new(),
        wall: Duration::ZERO,
        user: Duration::ZERO,
        sys: Duration::ZERO,
        started,
    }
}

#[cfg(unix)]
/// Turns a raw wait status into an [`ExitInfo`].
pub fn decode_status(status: i32) -> ExitInfo {
    if libc::WIFEXITED(status) {
        ExitInfo::Exited {
            code: libc::WEXITSTATUS(status),
        }
    } else if libc::WIFSIGNALED(status) {
        ExitInfo::Signaled {
            signal: libc::WTERMSIG(status),
        }
    } else {
        ExitInfo::Exited { code: status }
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<(Vec<u8>, bool), ExecError> {
    let file = File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(len.min(limit) as usize);
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok((buf, len > limit))
}

fn read_tail(path: &Path, n: usize) -> Result<String, ExecError> {
    let mut file = File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(n as u64);
    file.seek(SeekFrom::Start(start))
        .map_err(io_err(format!("reading {}", path.display())))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A declared output as found after the run.
#[derive(Debug, Clone)]
pub struct CollectedOutput {
    /// The declared relative path.
    pub name: String,
    /// Where it is on disk.
    pub path: PathBuf,
}

/// Finds the declared outputs in `workdir`. Only regular files count: a symbolic link named
/// as an output is reported missing, so a task cannot smuggle a host file into its result.
/// Unsafe names (absolute, `..`) are reported missing too. A name declared more than once
/// is one output, found or missing once.
pub fn collect_outputs(workdir: &Path, outputs: &[String]) -> (Vec<CollectedOutput>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in outputs {
        if !seen.insert(name.as_str()) {
            continue;
        }
        if mw_bundle::check_relative_path(name).is_err() {
            missing.push(name.clone());
            continue;
        }
        let path = workdir.join(name);
        let ok = ancestors_are_real_dirs(workdir, name)
            && std::fs::symlink_metadata(&path)
                .map(|m| m.file_type().is_file())
                .unwrap_or(false);
        if ok {
            found.push(CollectedOutput {
                name: name.clone(),
                path,
            });
        } else {
            missing.push(name.clone());
        }
    }
    (found, missing)
}

fn ancestors_are_real_dirs(root: &Path, rel: &str) -> bool {
    let mut p = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

#[cfg(unix)]
/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for 256 bytes; gethostname writes at most that and we
    // read up to the first NUL.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
