//! Ctrl-C, SIGTERM and SIGHUP for the `mw` command: the first one asks the running master to stop
//! (dispatch nothing more, stop local tasks and queue them again for `mw resume`, commit,
//! say how to resume, exit 130); a second one exits at once.
//!
//! This module only sets and reads a flag; what stopping means is the library's
//! (`Master::stop`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the handlers (once per process).
pub(crate) fn install() -> std::io::Result<()> {
    if FLAG.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let mut signals = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    // A closed terminal or `kill -HUP` stops the master the same way; under `nohup` (SIGHUP
    // ignored from the start) it stays ignored.
    if !ignored_at_start(signal_hook::consts::SIGHUP) {
        signals.push(signal_hook::consts::SIGHUP);
    }
    for sig in signals {
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
    Ok(())
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
