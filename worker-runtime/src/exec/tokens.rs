//! Task tokens (Unix): the [`TASK_TOKEN_ENV`] value each task process (and each streaming
//! process) gets, and what finds processes by it in `/proc`.
//!
//! A token is held as a [`TaskToken`] for as long as its process may run. While held it is
//! *live*; once dropped, every process still carrying it was left behind by a task that
//! ended (a daemon that called `setsid`, a double fork): a sweeper thread kills those, at
//! most about once a second, however the task ended. A task that is stopped (timeout,
//! cancel) has its escapees killed at once ([`kill_escapees`]); a dead worker's are killed by
//! its watchdog ([`kill_token_prefix`]).
//!
//! This module knows nothing of bundles, platforms or the master.

use super::{task_token_prefix, TASK_TOKEN_ENV};
use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// The shortest time between two sweeps for escapees of ended tasks: a sweep reads the
/// environment of every process of the machine.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The tokens held now (their tasks or streaming processes may still run).
fn live() -> MutexGuard<'static, HashSet<String>> {
    static LIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A [`TASK_TOKEN_ENV`] value, unique to one run of a program: live from its making (before
/// the spawn, so no sweep can take the new process for a leftover) until it is dropped,
/// which asks for a sweep of what its processes left running.
#[derive(Debug)]
pub(crate) struct TaskToken(String);

impl TaskToken {
    pub(crate) fn new() -> TaskToken {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let value = format!(
            "{}{:x}",
            task_token_prefix(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        live().insert(value.clone());
        TaskToken(value)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        live().remove(&self.0);
        request_sweep();
    }
}

/// The sweeper thread's mailbox: whether a token was dropped since its last sweep.
struct Sweeper {
    due: Mutex<bool>,
    wake: Condvar,
}

/// Asks the sweeper thread (started on first use) to look for processes of ended tasks.
fn request_sweep() {
    static SWEEPER: OnceLock<Option<&'static Sweeper>> = OnceLock::new();
    let sweeper = SWEEPER.get_or_init(|| {
        let s: &'static Sweeper = Box::leak(Box::new(Sweeper {
            due: Mutex::new(false),
            wake: Condvar::new(),
        }));
        match std::thread::Builder::new()
            .name("mw-sweep".into())
            .spawn(move || sweep_loop(s))
        {
            Ok(_) => Some(s),
            Err(e) => {
                log::warn!(
                    "cannot start the thread that stops what ended tasks left running ({e}): \
                     such processes run on until this process ends"
                );
                None
            }
        }
    });
    if let Some(s) = sweeper {
        *s.due.lock().unwrap_or_else(|e| e.into_inner()) = true;
        s.wake.notify_one();
    }
}

fn sweep_loop(s: &'static Sweeper) {
    let ours = format!("{TASK_TOKEN_ENV}={}", task_token_prefix());
    loop {
        {
            let mut due = s.due.lock().unwrap_or_else(|e| e.into_inner());
            while !*due {
                due = s.wake.wait(due).unwrap_or_else(|e| e.into_inner());
            }
            *due = false;
        }
        kill_matching(|env| {
            token_of(env).is_some_and(|t| t.starts_with(ours.as_bytes()) && !is_live(t))
        });
        std::thread::sleep(SWEEP_INTERVAL);
    }
}

/// Whether `entry` (`MW_TASK_TOKEN=<value>`) names a token held now.
fn is_live(entry: &[u8]) -> bool {
    let value = &entry[TASK_TOKEN_ENV.len() + 1..];
    std::str::from_utf8(value).is_ok_and(|v| live().contains(v))
}

/// The `MW_TASK_TOKEN=<value>` entry of a `/proc/<pid>/environ` (NUL-separated), if any.
fn token_of(environ: &[u8]) -> Option<&[u8]> {
    environ.split(|b| *b == 0).find(|e| {
        e.len() > TASK_TOKEN_ENV.len()
            && e.starts_with(TASK_TOKEN_ENV.as_bytes())
            && e[TASK_TOKEN_ENV.len()] == b'='
    })
}

/// SIGKILLs every process of this user whose environment carries `token` (read from
/// `/proc/<pid>/environ`; other users' processes cannot be read and are not ours).
pub(crate) fn kill_escapees(token: &TaskToken) {
    let needle = format!("{TASK_TOKEN_ENV}={}\0", token.as_str());
    kill_matching(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()));
}

/// SIGKILLs every process of this user whose [`TASK_TOKEN_ENV`] starts with `prefix` (a
/// [`task_token_prefix`]): every process of every task one worker process started, wherever
/// they went (their own process group, `setsid`). Does nothing for a prefix that
/// [`super::is_task_token_prefix`] refuses.
pub fn kill_token_prefix(prefix: &str) {
    if super::is_task_token_prefix(prefix) {
        let needle = format!("{TASK_TOKEN_ENV}={prefix}");
        kill_matching(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
}

/// SIGKILLs every process (but this one and init) whose environment `matches`. Repeats until
/// two passes in a row, a few milliseconds apart, find none, so a process forking or
/// exec'ing while we look (it shows an empty environment for a moment) is caught too.
fn kill_matching(matches: impl Fn(&[u8]) -> bool) {
    let me = std::process::id();
    let mut quiet_passes = 0;
    for _ in 0..20 {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut found = 0;
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid <= 1 || pid as u32 == me {
                continue;
            }
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if matches(&env) {
                found += 1;
                // SAFETY: kill(2) only sends a signal to a process that carries our token.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if found > 0 {
            quiet_passes = 0;
        } else if quiet_passes == 1 {
            return;
        } else {
            quiet_passes = 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_live_while_held() {
        let t = TaskToken::new();
        let entry = format!("{TASK_TOKEN_ENV}={}", t.as_str());
        assert!(is_live(entry.as_bytes()));
        drop(t);
        assert!(!is_live(entry.as_bytes()));
    }

    #[test]
    fn the_token_entry_is_found_only_as_a_whole_variable() {
        assert_eq!(
            token_of(b"A=1\0MW_TASK_TOKEN=ab.cd-1\0B=2\0"),
            Some(&b"MW_TASK_TOKEN=ab.cd-1"[..])
        );
        assert_eq!(token_of(b"XMW_TASK_TOKEN=1\0MW_TASK_TOKENS=2\0"), None);
        assert_eq!(token_of(b"MW_TASK_TOKEN\0"), None);
        assert_eq!(token_of(b""), None);
    }
}
