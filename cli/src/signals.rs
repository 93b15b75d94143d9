//! Ctrl-C, SIGTERM and SIGHUP for the `mw` command: the first one asks the running master to stop
//! (dispatch nothing more, stop local tasks and queue them again for `mw resume`, commit,
//! say how to resume, exit 130); a second one exits at once. While a job file is being read
//! and checked ([`at_once_during`]: nothing is created yet, and rendering a heavy template
//! may not look at the flag for minutes) the first one exits at once.
//!
//! This module only sets and reads a flag; what stopping means is the library's
//! (`Master::stop`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Set while a signal should end the process at once (see [`at_once_during`]).
static AT_ONCE: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the handlers (once per process).
pub(crate) fn install() -> std::io::Result<()> {
    if FLAG.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let at_once = Arc::new(AtomicBool::new(false));
    let mut signals = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    // A closed terminal or `kill -HUP` stops the master the same way; under `nohup` (SIGHUP
    // ignored from the start) it stays ignored.
    if !ignored_at_start(signal_hook::consts::SIGHUP) {
        signals.push(signal_hook::consts::SIGHUP);
    }
    for sig in signals {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            crate::EXIT_INTERRUPTED,
            at_once.clone(),
        )?;
        // Order matters: the conditional exit sees the flag a first signal set, so only a
        // second signal exits at once.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            crate::EXIT_INTERRUPTED,
            flag.clone(),
        )?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    let _ = FLAG.set(flag);
    let _ = AT_ONCE.set(at_once);
    Ok(())
}

/// Runs `f` (reading and checking a job file, before anything exists to stop or keep) with
/// Ctrl-C, SIGTERM and SIGHUP ending the process at once, exit 130.
pub(crate) fn at_once_during<T>(f: impl FnOnce() -> T) -> T {
    let set = |v: bool| {
        if let Some(a) = AT_ONCE.get() {
            a.store(v, Ordering::SeqCst);
        }
    };
    set(true);
    // One that came just before: the same.
    if interrupted() {
        std::process::exit(crate::EXIT_INTERRUPTED);
    }
    let out = f();
    set(false);
    out
}

/// Whether `sig` is ignored (as `nohup` leaves SIGHUP) in this process.
fn ignored_at_start(sig: i32) -> bool {
    // SAFETY: an all-zero `sigaction` is a valid value of the plain C struct, which
    // sigaction(2) only writes into when asked for the current disposition (null new one).
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Whether Ctrl-C, SIGTERM or SIGHUP arrived.
pub(crate) fn interrupted() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}
