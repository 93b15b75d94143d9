//! Crash points: named places between two writes where the tests kill the process exactly
//! (`MW_CRASH_AT=<name>` makes [`point`] send SIGKILL to its own process there). Every
//! crash window of the master has one, so resume is tested from exactly that state.
//! Panic points (`MW_PANIC_AT=<name>` or `<name>:<task>`, [`panic_point`]) do the same for
//! the guards around threads that handle remote data and the master's own threads: the test
//! makes one panic and checks the tasks fail (or the master stops) with a message instead of
//! `mw run` hanging. Delay points
//! (`MW_DELAY_AT=<name>:<ms>`, or `<name>:until:<path>` to hold until a file exists,
//! [`delay_point`]) widen a window instead, for a test that checks the master never ends
//! inside it or that acts while the master is held in it. Forge points (`MW_FORGE_AT=<name>` or
//! `<name>:<task>`, [`forge_point`]) make a peer send something malformed in place of what
//! it should, for a test that checks the receiver fails the tasks concerned.
//!
//! Without the variables a point costs one cached lookup. This module knows nothing of
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

/// The environment variable naming the panic point to panic at (`name`, or `name:TASK` for
/// one task only).
pub const PANIC_ENV: &str = "MW_PANIC_AT";

/// Panics (a test of the panic guards; never without `MW_PANIC_AT`) when `MW_PANIC_AT`
/// names this point, for every task (`name`) or for `task` only (`name:N`).
#[allow(clippy::panic)] // the one deliberate panic: what the guards are tested with
pub fn panic_point(name: &str, task: Option<u64>) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let Some(at) = AT.get_or_init(|| std::env::var(PANIC_ENV).ok()).as_deref() else {
        return;
    };
    if names(at, name, task) {
        std::panic::panic_any(format!("injected panic at `{at}` ({PANIC_ENV})"));
    }
}

/// Whether `at` (`name` or `name:TASK`) names the point `name` for `task`.
fn names(at: &str, name: &str, task: Option<u64>) -> bool {
    match at.split_once(':') {
        None => at == name,
        Some((n, t)) => n == name && task.is_some_and(|task| t == task.to_string()),
    }
}

/// The environment variable naming the forge point where something malformed is sent
/// (`name`, or `name:TASK` for one task only).
pub const FORGE_ENV: &str = "MW_FORGE_AT";

/// Whether to send something malformed here (a test of the receiver; never without
/// `MW_FORGE_AT`): `MW_FORGE_AT` names this point, for every task (`name`) or for `task`
/// only (`name:N`). The caller decides what malformed means.
pub fn forge_point(name: &str, task: Option<u64>) -> bool {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(FORGE_ENV).ok())
        .as_deref()
        .is_some_and(|at| names(at, name, task))
}

/// The environment variable naming the delay point to pause at, and for how long:
/// `<name>:<milliseconds>`, or `<name>:until:<path>` (until the file `<path>` exists).
pub const DELAY_ENV: &str = "MW_DELAY_AT";

/// How long a delay point holds.
enum Hold {
    For(std::time::Duration),
    Until(std::path::PathBuf),
}

/// Pauses this thread (a test widening a window between two steps, e.g. to check that the
/// master does not exit in it; never without `MW_DELAY_AT`) when `MW_DELAY_AT` names this
/// point. A timed pause is capped at 10 s, a wait for a file at 120 s.
pub fn delay_point(name: &str) {
    static AT: OnceLock<Option<(String, Hold)>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var(DELAY_ENV).ok()?;
        let (n, how) = v.split_once(':')?;
        let hold = match how.strip_prefix("until:") {
            Some(path) => Hold::Until(path.into()),
            None => Hold::For(std::time::Duration::from_millis(
                how.parse::<u64>().ok()?.min(10_000),
            )),
        };
        Some((n.to_string(), hold))
    });
    match at {
        Some((n, Hold::For(d))) if n == name => std::thread::sleep(*d),
        Some((n, Hold::Until(path))) if n == name => {
            let t0 = std::time::Instant::now();
            while !path.exists() && t0.elapsed() < std::time::Duration::from_secs(120) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        _ => {}
    }
}
