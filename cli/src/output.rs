//! Result lines and progress display of the CLI.
//!
//! Result lines are the serialisable mirror of a task's outcome (the library's own types
//! stay non-serialisable, so the file format is decided here, at the edge).

use mw::master::{MasterStatus, MwError, TaskOutput, TaskTimes};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One line of `mw run` / `mw results` output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultLine {
    /// Task index.
    pub task: u64,
    /// "done", "failed" or "cancelled".
    pub state: String,
    /// The task's input.
    pub input: serde_json::Value,
    /// The result JSON (null unless done).
    pub output: serde_json::Value,
    /// How the program ended, e.g. "exit status 0".
    pub exit: String,
    /// Error text for failed tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall-clock seconds of the last attempt.
    pub wall_secs: f64,
    /// CPU seconds of the last attempt.
    pub cpu_secs: f64,
    /// Host of the last attempt.
    pub host: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix seconds: submitted, started, finished.
    pub submitted: Option<f64>,
    /// Started.
    pub started: Option<f64>,
    /// Finished.
    pub finished: Option<f64>,
    /// Output files kept (paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<String>,
}

fn unix(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl ResultLine {
    /// From a finished task.
    pub fn from_outcome(
        index: u64,
        input: serde_json::Value,
        outcome: &Result<TaskOutput, MwError>,
        times: Option<&TaskTimes>,
    ) -> ResultLine {
        match outcome {
            Ok(out) => ResultLine {
                task: index,
                state: "done".into(),
                input,
                output: out.value.clone(),
                exit: "exit status 0".into(),
                error: None,
                wall_secs: out.times.wall.as_secs_f64(),
                cpu_secs: out.times.cpu.as_secs_f64(),
                host: out.host.clone(),
                attempts: out.attempts,
                submitted: unix(out.times.submitted),
                started: unix(out.times.started),
                finished: unix(out.times.finished),
                output_files: out
                    .output_files
                    .iter()
                    .map(|(_, p)| p.display().to_string())
                    .collect(),
            },
            Err(e) => {
                let (exit, host, attempts, state) = match e {
                    MwError::TaskFailed {
                        exit,
                        host,
                        attempts,
                        ..
                    } => (exit.to_string(), host.clone(), *attempts, "failed"),
                    MwError::Interface { attempts, .. } => {
                        ("not run".into(), String::new(), *attempts, "failed")
                    }
                    MwError::Cancelled(_) => ("cancelled".into(), String::new(), 0, "cancelled"),
                    _ => ("exit status 0".into(), String::new(), 1, "failed"),
                };
                let t = times.cloned().unwrap_or_default();
                ResultLine {
                    task: index,
                    state: state.into(),
                    input,
                    output: serde_json::Value::Null,
                    exit,
                    error: Some(e.to_string()),
                    wall_secs: t.wall.as_secs_f64(),
                    cpu_secs: t.cpu.as_secs_f64(),
                    host,
                    attempts,
                    submitted: unix(t.submitted),
                    started: unix(t.started),
                    finished: unix(t.finished),
                    output_files: Vec::new(),
                }
            }
        }
    }
}

/// Progress on a terminal (a bar) or as plain lines (when stderr is not a terminal).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    start: Instant,
    last_line: Instant,
    quiet: bool,
    /// Tasks already finished before this process started (resume): not in the rate.
    baseline: u64,
}

impl Progress {
    pub(crate) fn new(total: u64, quiet: bool) -> Progress {
        let bar = if !quiet && std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
            ) {
                b.set_style(style);
            }
            Some(b)
        } else {
            None
        };
        Progress {
            bar,
            total,
            start: Instant::now(),
            last_line: Instant::now(),
            quiet,
            baseline: 0,
        }
    }

    /// Tasks finished before this run (a resumed job): counted in the position, not the rate.
    pub(crate) fn set_baseline(&mut self, finished_before: u64) {
        self.baseline = finished_before;
    }

    pub(crate) fn update(&mut self, status: &MasterStatus, force: bool) {
        let finished = (status.done + status.failed + status.cancelled) as u64;
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = finished.saturating_sub(self.baseline) as f64 / elapsed;
        let msg = format!(
            "queued {} running {} done {} failed {} | {:.1} tasks/s",
            status.queued,
            status.running,
            status.done,
            status.failed + status.cancelled,
            rate
        );
        if let Some(bar) = &self.bar {
            bar.set_position(finished);
            bar.set_message(msg);
            return;
        }
        if self.quiet {
            return;
        }
        if force || self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let left = self.total.saturating_sub(finished);
            let eta = if rate > 0.0 {
                format!("{:.0}s", left as f64 / rate)
            } else {
                "?".into()
            };
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "mw: {finished}/{} finished; {msg}; ETA {eta}",
                self.total
            );
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
