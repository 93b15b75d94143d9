//! A watcher thread that follows every job event log of a job and delivers new events through
//! an mpsc channel. `notify` (inotify) only wakes it; it also re-reads every `poll_interval`
//! because network file systems deliver no inotify events. Reading is always done by
//! [`LogFollower`] from a saved byte offset, so a wake-up never loses or repeats an event.
//! [`LogWatcher::sync`] reads every log at once, for a reader that must know a log has
//! nothing more yet.
//! This module must never know about mw's tasks or the master.

use crate::error::{CondorError, Result};
use crate::events::LogEvent;
use crate::follower::LogFollower;
use notify::Watcher as _;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the watcher delivers: an event, or a problem with one log (a bad record, an I/O error,
/// a log in a format mw does not read, a log gone, or [`CondorError::LogRewound`] before
/// events that may repeat earlier ones).
pub type WatchMessage = Result<LogEvent, CondorError>;

enum Ctl {
    Add(PathBuf),
    Wake,
    /// Read every log now, then answer.
    Sync(Sender<()>),
    Stop,
}

/// Handle of a running watcher thread. Dropping it stops the thread.
pub struct LogWatcher {
    ctl: Sender<Ctl>,
    thread: Option<JoinHandle<()>>,
    notify: Mutex<Option<notify::RecommendedWatcher>>,
    watched_dirs: Mutex<HashSet<PathBuf>>,
}

impl std::fmt::Debug for LogWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWatcher")
            .field("notify_active", &self.notify_active())
            .finish()
    }
}

/// Starts a thread following `paths` (which need not exist yet). Events of all logs arrive on
/// the returned receiver in file order per log. The channel closes after `stop()`.
pub fn spawn_log_watcher(
    paths: Vec<PathBuf>,
    poll_interval: Duration,
) -> Result<(Receiver<WatchMessage>, LogWatcher)> {
    spawn(paths, poll_interval, true)
}

/// Like [`spawn_log_watcher`] but without inotify: only the poll interval drives reading (what
/// happens on a network file system; also lets tests exercise the fallback).
pub fn spawn_polling_log_watcher(
    paths: Vec<PathBuf>,
    poll_interval: Duration,
) -> Result<(Receiver<WatchMessage>, LogWatcher)> {
    spawn(paths, poll_interval, false)
}

fn spawn(
    paths: Vec<PathBuf>,
    poll_interval: Duration,
    use_notify: bool,
) -> Result<(Receiver<WatchMessage>, LogWatcher)> {
    let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>();
    let (ev_tx, ev_rx) = mpsc::channel::<WatchMessage>();
    let wake = ctl_tx.clone();
    // If inotify cannot be set up (limits, unsupported file system), the poll interval still works.
    let notify = if use_notify {
        notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            let _ = wake.send(Ctl::Wake);
        })
        .ok()
    } else {
        None
    };
    let thread = std::thread::Builder::new()
        .name("mw-condor-log-watcher".into())
        .spawn(move || run(ctl_rx, ev_tx, poll_interval))
        .map_err(|e| CondorError::Watch {
            path: PathBuf::new(),
            message: format!("cannot start the watcher thread: {e}"),
        })?;
    let watcher = LogWatcher {
        ctl: ctl_tx,
        thread: Some(thread),
        notify: Mutex::new(notify),
        watched_dirs: Mutex::new(HashSet::new()),
    };
    for p in paths {
        watcher.add_log(p)?;
    }
    Ok((ev_rx, watcher))
}

impl LogWatcher {
    /// Follows one more log (from its beginning). Adding a log twice has no effect.
    pub fn add_log(&self, path: impl Into<PathBuf>) -> Result<()> {
        let path: PathBuf = path.into();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let (Ok(mut n), Ok(mut dirs)) = (self.notify.lock(), self.watched_dirs.lock()) {
            if let Some(w) = n.as_mut() {
                // Watch the directory: the log may not exist yet. A failure leaves polling.
                if !dirs.contains(&dir)
                    && w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok()
                {
                    dirs.insert(dir);
                }
            }
        }
        self.ctl
            .send(Ctl::Add(path.clone()))
            .map_err(|_| CondorError::Watch {
                path,
                message: "the watcher thread has stopped".into(),
            })
    }

    /// Reads every log now and returns once what that found has been sent on the event
    /// channel: a receiver that then empties the channel has seen everything the logs held
    /// when this was called. Returns at once if the thread has stopped.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        if self.ctl.send(Ctl::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Whether inotify wake-ups are active (otherwise only the poll interval drives reading).
    pub fn notify_active(&self) -> bool {
        self.notify.lock().map(|n| n.is_some()).unwrap_or(false)
    }

    /// Stops the thread and waits for it; the event channel then closes.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Ok(mut n) = self.notify.lock() {
            *n = None;
        }
        let _ = self.ctl.send(Ctl::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(ctl: Receiver<Ctl>, out: Sender<WatchMessage>, interval: Duration) {
    let mut followers: Vec<LogFollower> = Vec::new();
    let mut last_error: Vec<Option<String>> = Vec::new();
    loop {
        let mut reply = None;
        match ctl.recv_timeout(interval) {
            Ok(Ctl::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Ctl::Sync(r)) => reply = Some(r),
            Ok(Ctl::Add(p)) => {
                if !followers.iter().any(|f| same_path(f.path(), &p)) {
                    followers.push(LogFollower::new(p));
                    last_error.push(None);
                }
            }
            Ok(Ctl::Wake) | Err(RecvTimeoutError::Timeout) => {}
        }
        for (f, last) in followers.iter_mut().zip(last_error.iter_mut()) {
            match f.poll() {
                Ok(polled) => {
                    *last = None;
                    if polled.rewound {
                        let notice = CondorError::LogRewound {
                            path: f.path().to_path_buf(),
                        };
                        if out.send(Err(notice)).is_err() {
                            return;
                        }
                    }
                    for ev in polled.events {
                        if out.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    for e in polled.bad_records {
                        if out.send(Err(e)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    // Report a persistent I/O error once, not on every poll.
                    let text = e.to_string();
                    if last.as_deref() != Some(text.as_str()) {
                        *last = Some(text);
                        if out.send(Err(e)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Some(r) = reply {
            let _ = r.send(());
        }
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b
}
