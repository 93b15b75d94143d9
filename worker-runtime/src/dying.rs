//! What a dying `mw-worker` takes with it: its task's whole process tree and its scratch
//! directory, however it dies (Unix).
//!
//! - **Asked to stop** (SIGTERM, SIGINT, SIGHUP: `condor_rm`, a vacate, Ctrl-C, a closed
//!   terminal): [`TerminationSignals`] turns the first one into a cancel of the running task
//!   (its process group gets SIGTERM, a grace period, SIGKILL; processes that left the group
//!   carry the task's token and are killed too), the worker removes its scratch directory
//!   and then dies by that signal, so whoever watches it sees why. A second signal ends the
//!   worker at once and leaves the rest to the watchdog.
//! - **Killed** (SIGKILL, the OOM killer): nothing runs in the worker any more. A
//!   [`Watchdog`] started beforehand (the same binary, in its own process group) waits on a
//!   pipe only the worker holds; when the worker is gone, for whatever reason, the pipe
//!   closes and the watchdog kills every process carrying the worker's task-token prefix
//!   ([`crate::exec::task_token_prefix`]) and removes the scratch directory.
//!
//! This module knows nothing of bundles or platforms.

use crate::exec::{is_task_token_prefix, kill_token_prefix, task_token_prefix, ProcessControl};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The hidden first argument that makes `mw-worker` a watchdog.
pub const WATCHDOG_ARG: &str = "__mw-watchdog";

/// The prefix of a worker's own scratch directory (the watchdog removes nothing else).
pub const SCRATCH_PREFIX: &str = "mw-worker-";

/// The signals that ask a worker to stop.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it and
    // sigaddset only adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The stop signals of this worker, waited for by a thread of their own.
#[derive(Debug)]
pub struct TerminationSignals {
    got: Arc<AtomicI32>,
}

impl TerminationSignals {
    /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, so call it before any other
    /// thread exists (threads inherit the mask; programs the worker starts get an empty mask
    /// from std), and waits for them in a thread: the first cancels `control`, a second ends
    /// the worker at once by that signal.
    pub fn install(control: ProcessControl) -> std::io::Result<TerminationSignals> {
        let set = stop_set();
        // SAFETY: `set` is an initialised sigset_t; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let got = Arc::new(AtomicI32::new(0));
        let seen = got.clone();
        std::thread::Builder::new()
            .name("mw-worker-signals".into())
            .spawn(move || loop {
                let mut sig = 0;
                // SAFETY: sigwait reads the initialised `set` and writes one int to `sig`.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if seen.swap(sig, Ordering::SeqCst) != 0 {
                    eprintln!("mw-worker: second stop signal {sig}: exiting now");
                    die_by(sig);
                }
                eprintln!("mw-worker: stop signal {sig}: stopping the task");
                control.cancel();
            })?;
        Ok(TerminationSignals { got })
    }

    /// The stop signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.got.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

/// Ends this process by `sig` with its default action, so its parent sees that signal.
pub fn die_by(sig: i32) -> ! {
    // SAFETY: resetting a signal's disposition, unblocking it in this thread and raising it
    // touch no memory of ours; the default action of the stop signals ends the process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// A process that cleans up after this worker once it is gone (see the module
/// documentation). Dropping it (or the worker's death) releases the watchdog.
///
/// While one runs, this process counts as watched ([`is_watched`]): its tasks start
/// without a parent-death signal (with `posix_spawn`, not `fork`; see
/// [`crate::exec::ExecRequest::die_with_parent`]), because the watchdog kills every one of
/// them, wherever they went, however this process ends.
#[derive(Debug)]
pub struct Watchdog {
    _alive: std::io::PipeWriter,
}

/// Whether a [`Watchdog`] of this process is running.
static WATCHED: AtomicBool = AtomicBool::new(false);

/// True while a [`Watchdog`] started by this process runs: it kills this process's tasks
/// when this process dies, whatever the way.
pub fn is_watched() -> bool {
    WATCHED.load(Ordering::SeqCst)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        WATCHED.store(false, Ordering::SeqCst);
    }
}

impl Watchdog {
    /// Starts the watchdog (this same executable) for this worker's tasks and, if given,
    /// its scratch directory `scratch` (named [`SCRATCH_PREFIX`]…).
    pub fn start(scratch: Option<&Path>) -> std::io::Result<Watchdog> {
        let (reader, writer) = std::io::pipe()?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg(WATCHDOG_ARG)
            .arg(task_token_prefix())
            .args(scratch)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .process_group(0);
        // The watchdog outlives this process by design (its parent becomes init, which
        // reaps it); nothing here waits for it.
        #[allow(clippy::zombie_processes)]
        let _child = cmd.spawn()?;
        WATCHED.store(true, Ordering::SeqCst);
        Ok(Watchdog { _alive: writer })
    }
}

/// The watchdog's program (`mw-worker __mw-watchdog PREFIX [SCRATCH]`, standard input the
/// worker's end of the pipe): waits until the worker is gone, then kills what its tasks left
/// and removes its scratch directory. Returns the exit status.
pub fn watchdog_main(args: &[OsString]) -> i32 {
    let (Some(prefix), scratch) = (args.first().and_then(|a| a.to_str()), args.get(1)) else {
        eprintln!("mw-worker: watchdog: usage: {WATCHDOG_ARG} PREFIX [SCRATCH]");
        return 2;
    };
    if !is_task_token_prefix(prefix) {
        eprintln!("mw-worker: watchdog: {prefix:?} is not a task-token prefix");
        return 2;
    }
    let scratch = scratch.map(PathBuf::from);
    if let Some(dir) = &scratch {
        let ours = dir.is_absolute()
            && dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        if !ours {
            eprintln!(
                "mw-worker: watchdog: {} is not a worker's scratch directory",
                dir.display()
            );
            return 2;
        }
    }
    // EOF (or an error) on the pipe: the worker is gone.
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    kill_token_prefix(prefix);
    if let Some(dir) = scratch {
        match crate::run::remove_tree(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("mw-worker: watchdog: removing {}: {e}", dir.display());
                return 1;
            }
        }
    }
    0
}
