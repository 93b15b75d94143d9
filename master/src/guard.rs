//! Panic guards for the threads that handle remote or user data (an interface's event,
//! spool and submit threads, the local slots): a panic while handling one item becomes that
//! item's error, with the panic's message, and a thread that dies anyway fails the tasks it
//! was responsible for instead of leaving them waiting for ever (`mw run` would hang). The
//! master's own threads use them too: a panic in the journal's writer is a lasting storage
//! failure, one in the scheduler stops the master.
//!
//! This module knows nothing of platforms or tasks.

use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Locks `m`, recovering it if a thread panicked while holding it (its plain data is still
/// usable: see `contain`).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cond` with the guard of its mutex, recovering the mutex as [`lock`] does.
pub(crate) fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// Like [`wait`], for at most `timeout`.
pub(crate) fn wait_timeout<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    match cond.wait_timeout(guard, timeout) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

/// Runs `f`; a panic becomes `Err` with its message. Callers hold no lock across `f` (a
/// poisoned mutex is recovered everywhere with `into_inner`, its plain data still usable).
pub(crate) fn contain<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()))
}

/// Waits, for at most `limit`, until every sender of `rx` has been dropped (the channel
/// carries no values: holding a sender means "not done yet"). Returns whether they were.
pub(crate) fn wait_for_drop(rx: &std::sync::mpsc::Receiver<()>, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            // A stray value is not an exit: keep waiting.
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_drop_returns_once_the_last_sender_is_gone_and_not_before() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let tx2 = tx.clone();
        // A value sent is not an exit, and a live sender makes the wait time out.
        tx.send(()).unwrap();
        drop(tx);
        assert!(!wait_for_drop(&rx, Duration::from_millis(1)));
        let t = std::thread::spawn(move || drop(tx2));
        assert!(wait_for_drop(&rx, Duration::from_secs(60)));
        t.join().unwrap();
    }
}
