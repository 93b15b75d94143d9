//! Ctrl-C, SIGTERM and SIGHUP for the `mw` command: the first one asks the running master to stop
//! (dispatch nothing more, stop local tasks and queue them again for `mw resume`, commit,
//! say how to resume, exit 130); a second one exits at once. A repeat of the signal within
//! [`REPEAT_WINDOW`] of the first is the same request, not a second one: GNU `timeout`
//! sends its signal to the command and then to the command's whole process group, and
//! `mpirun` follows a forwarded SIGINT with SIGTERM, so one request often arrives twice.
//! While a job file is being read and checked ([`at_once_during`]: nothing is created yet,
//! and rendering a heavy template may not look at the flag for minutes) the first one
//! exits at once.
//!
//! This module only sets and reads a flag; what stopping means is the library's
//! (`Master::stop`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Set while a signal should end the process at once (see [`at_once_during`]).
static AT_ONCE: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// How long after the first stop signal a repeat counts as the same request.
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// Installs the handlers (once per process): a thread that takes the signals as they come.
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
    let mut incoming = signal_hook::iterator::Signals::new(&signals)?;
    let (f, a) = (flag.clone(), at_once.clone());
    std::thread::Builder::new()
        .name("mw-signals".into())
        .spawn(move || {
            let mut first: Option<Instant> = None;
            // Signals that arrive together come as one.
            for _ in incoming.forever() {
                match on_signal(&mut first, Instant::now(), a.load(Ordering::SeqCst)) {
                    // Exits without running anything more of this process (as a signal's
                    // default action would), whatever its other threads are doing.
                    Action::Exit => signal_hook::low_level::exit(crate::EXIT_INTERRUPTED),
                    Action::Stop => f.store(true, Ordering::SeqCst),
                    Action::Same => {}
                }
            }
        })?;
    let _ = FLAG.set(flag);
    let _ = AT_ONCE.set(at_once);
    Ok(())
}

/// What a stop signal does.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// The first: stop the master.
    Stop,
    /// A repeat of the first within [`REPEAT_WINDOW`]: nothing more.
    Same,
    /// A second request (or any signal while nothing exists to stop): exit at once.
    Exit,
}

/// Decides what a stop signal arriving `now` does, given when the first came (`first`,
/// set by the first) and whether signals end the process at once.
fn on_signal(first: &mut Option<Instant>, now: Instant, at_once: bool) -> Action {
    match *first {
        _ if at_once => Action::Exit,
        None => {
            *first = Some(now);
            Action::Stop
        }
        Some(t) if now.saturating_duration_since(t) < REPEAT_WINDOW => Action::Same,
        Some(_) => Action::Exit,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first signal stops; its repeat within the window is the same request; one after
    /// the window, or any while signals end the process at once, exits.
    #[test]
    fn a_repeat_within_the_window_is_the_same_request() {
        let t0 = Instant::now();
        let mut first = None;
        assert_eq!(on_signal(&mut first, t0, false), Action::Stop);
        assert_eq!(on_signal(&mut first, t0, false), Action::Same);
        let just_in = t0 + REPEAT_WINDOW - Duration::from_millis(1);
        assert_eq!(on_signal(&mut first, just_in, false), Action::Same);
        assert_eq!(
            on_signal(&mut first, t0 + REPEAT_WINDOW, false),
            Action::Exit
        );
        assert_eq!(on_signal(&mut None, t0, true), Action::Exit);
        assert_eq!(on_signal(&mut Some(t0), t0, true), Action::Exit);
    }
}
