//! Crash points: named places between two writes where the tests kill the process exactly
//! (`MW_CRASH_AT=<name>` makes [`point`] send SIGKILL to its own process there). Every
//! crash window of the master has one, so resume is tested from exactly that state.
//!
//! Without the variable a point costs one cached lookup. This module knows nothing of
//! what the points guard.

use std::sync::OnceLock;

/// The environment variable naming the crash point to die at.
pub const CRASH_ENV: &str = "MW_CRASH_AT";

/// Dies by SIGKILL (no cleanup, no flush: as a killed master dies) when `MW_CRASH_AT`
/// names this point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(CRASH_ENV).ok()).as_deref() == Some(name) {
        // SAFETY: kill(2) on our own pid only sends a signal.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
