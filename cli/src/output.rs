//! Result lines, their CSV form, timestamps, colour, the progress display and the
//! end-of-run summary of the CLI.
//!
//! Result lines are the serialisable mirror of a task's outcome (the library's own types
//! stay non-serialisable, so the file format is decided here, at the edge). A finished
//! task becomes a result line in one place, whether it comes live from the master
//! ([`ResultLine::from_outcome`]) or from the journal ([`ResultLine::from_stored`]); both
//! take the exit text, host and attempts from the same library sources.

use mw::journal::StoredTask;
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
    /// When it was submitted (RFC 3339, UTC).
    pub submitted: Option<String>,
    /// When its last attempt started (RFC 3339, UTC).
    pub started: Option<String>,
    /// When it finished (RFC 3339, UTC).
    pub finished: Option<String>,
    /// Output files kept (paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<String>,
}

fn unix(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// Unix seconds as an RFC 3339 UTC timestamp with milliseconds (`2026-11-30T06:40:01.250Z`).
/// `None` for a value no calendar holds (a forged journal).
pub(crate) fn rfc3339(secs: f64) -> Option<String> {
    if !secs.is_finite() {
        return None;
    }
    let ms = (secs * 1000.0).round();
    if !(-8.0e15..8.0e15).contains(&ms) {
        return None;
    }
    let ms = ms as i64;
    // Consecutive results of a fast job share their millisecond (and a batch its submission
    // time): the last one formatted is kept per thread.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(i64, String)>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(hit) =
        LAST.with_borrow(|l| l.as_ref().filter(|(m, _)| *m == ms).map(|(_, t)| t.clone()))
    {
        return Some(hit);
    }
    let ts = jiff::Timestamp::from_millisecond(ms).ok()?;
    let text = format!("{ts:.3}");
    LAST.with_borrow_mut(|l| *l = Some((ms, text.clone())));
    Some(text)
}

/// Now, as [`rfc3339`].
pub(crate) fn now_rfc3339() -> String {
    rfc3339(unix(Some(SystemTime::now())).unwrap_or(0.0)).unwrap_or_default()
}

impl ResultLine {
    /// From a finished task, as the master hands it out.
    pub fn from_outcome(
        index: u64,
        input: serde_json::Value,
        outcome: &Result<TaskOutput, MwError>,
        times: &TaskTimes,
    ) -> ResultLine {
        match outcome {
            Ok(out) => Self::from_outcome_owned(index, input, Ok(out.clone()), times),
            Err(e) => Self::from_error(index, input, e, times),
        }
    }

    /// [`from_outcome`](Self::from_outcome) taking the outcome (its result is moved, not
    /// copied).
    pub fn from_outcome_owned(
        index: u64,
        input: serde_json::Value,
        outcome: Result<TaskOutput, MwError>,
        times: &TaskTimes,
    ) -> ResultLine {
        match outcome {
            Ok(out) => {
                let files = out
                    .output_files
                    .iter()
                    .map(|(_, p)| p.display().to_string())
                    .collect();
                Self::line(
                    index,
                    input,
                    ("done", out.value, "exit status 0".to_string(), None),
                    out.host,
                    files,
                    times,
                )
            }
            Err(e) => Self::from_error(index, input, &e, times),
        }
    }

    fn from_error(
        index: u64,
        input: serde_json::Value,
        e: &MwError,
        times: &TaskTimes,
    ) -> ResultLine {
        let state = if matches!(e, MwError::Cancelled(_)) {
            "cancelled"
        } else {
            "failed"
        };
        Self::line(
            index,
            input,
            (
                state,
                serde_json::Value::Null,
                e.exit_text(),
                Some(e.to_string()),
            ),
            e.host().to_string(),
            Vec::new(),
            times,
        )
    }

    fn line(
        index: u64,
        input: serde_json::Value,
        (state, output, exit, error): (&str, serde_json::Value, String, Option<String>),
        host: String,
        files: Vec<String>,
        times: &TaskTimes,
    ) -> ResultLine {
        ResultLine {
            task: index,
            state: state.into(),
            input,
            output,
            exit,
            error,
            wall_secs: times.wall.as_secs_f64(),
            cpu_secs: times.cpu.as_secs_f64(),
            host,
            attempts: times.attempts,
            submitted: unix(times.submitted).and_then(rfc3339),
            started: unix(times.started).and_then(rfc3339),
            finished: unix(times.finished).and_then(rfc3339),
            output_files: files,
        }
    }

    /// From a task as the journal stores it.
    pub fn from_stored(t: &StoredTask) -> ResultLine {
        ResultLine {
            task: t.index,
            state: t.state.as_str().to_string(),
            input: t.input.clone(),
            output: t.output.clone().unwrap_or(serde_json::Value::Null),
            exit: t.exit.clone().unwrap_or_default(),
            error: t.error.clone(),
            wall_secs: t.wall_secs,
            cpu_secs: t.cpu_secs,
            host: t.host.clone(),
            attempts: t.attempts,
            submitted: t.submitted.and_then(rfc3339),
            started: t.started.and_then(rfc3339),
            finished: t.finished.and_then(rfc3339),
            output_files: t.output_files.clone(),
        }
    }
}

/// Result lines as CSV (the `csv` crate quotes): fixed columns first, then the input and
/// the output flattened into one column per leaf (`input.seed`, `output.pi`, …; a scalar
/// is the column `input` or `output` itself; arrays stay JSON text), then the output files.
/// For lines already in memory; a whole job is written in two passes over its journal
/// ([`CsvColumns`], [`CsvRows`]), without holding its results. `terminal`: `out` is a
/// terminal, where every cell and column name is shown with its control characters escaped
/// (as `mw logs` shows a log); elsewhere the cells are the data, byte for byte.
pub(crate) fn write_csv(
    out: impl Write,
    lines: &[ResultLine],
    terminal: bool,
) -> anyhow::Result<()> {
    let mut cols = CsvColumns::default();
    for l in lines {
        cols.see(&l.input, &l.output)?;
    }
    let mut rows = cols.writer(out, terminal)?;
    for l in lines {
        rows.row(l)?;
    }
    rows.finish()
}

/// The CSV columns of a set of results, in order of first appearance: the first pass over
/// them (each found by a hash look-up: results with distinct keys once made this quadratic).
#[derive(Default)]
pub(crate) struct CsvColumns {
    input: Columns,
    output: Columns,
}

impl CsvColumns {
    /// Adds the columns of one result's input and output.
    pub(crate) fn see(
        &mut self,
        input: &serde_json::Value,
        output: &serde_json::Value,
    ) -> anyhow::Result<()> {
        for (k, _) in flatten("input", input) {
            self.input.add(&k)?;
        }
        for (k, _) in flatten("output", output) {
            self.output.add(&k)?;
        }
        Ok(())
    }

    /// Writes the header line to `out`; the rows follow through the writer returned.
    /// `terminal`: `out` is a terminal, and every cell and column name from the results is
    /// written with its control characters escaped ([`mw_bundle::text::escape_controls`]:
    /// a task's text could otherwise retitle, clear or recolour it).
    pub(crate) fn writer<W: Write>(self, out: W, terminal: bool) -> anyhow::Result<CsvRows<W>> {
        let mut w = csv::Writer::from_writer(out);
        let fixed = [
            "task",
            "state",
            "exit",
            "error",
            "attempts",
            "wall_secs",
            "cpu_secs",
            "host",
            "submitted",
            "started",
            "finished",
        ];
        let mut header: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        header.extend(self.input.names.iter().cloned());
        header.extend(self.output.names.iter().cloned());
        header.push("output_files".into());
        w.write_record(header.iter().map(|h| shown(h, terminal)))?;
        Ok(CsvRows {
            w,
            cols: self,
            terminal,
        })
    }
}

/// The second pass of a CSV: one row per result, in the columns [`CsvColumns`] found.
pub(crate) struct CsvRows<W: Write> {
    w: csv::Writer<W>,
    cols: CsvColumns,
    terminal: bool,
}

/// A CSV cell as written: escaped for a terminal, as it is elsewhere.
fn shown(cell: &str, terminal: bool) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    match terminal.then(|| mw_bundle::text::escape_controls(cell)) {
        Some(Cow::Owned(escaped)) => Cow::Owned(escaped.into_bytes()),
        _ => Cow::Borrowed(cell.as_bytes()),
    }
}

impl<W: Write> CsvRows<W> {
    /// Writes the row of `l`. A value in a column the first pass did not see is an error
    /// (the results changed between the passes), never dropped.
    pub(crate) fn row(&mut self, l: &ResultLine) -> anyhow::Result<()> {
        let mut rec = vec![
            l.task.to_string(),
            l.state.clone(),
            l.exit.clone(),
            l.error.clone().unwrap_or_default(),
            l.attempts.to_string(),
            l.wall_secs.to_string(),
            l.cpu_secs.to_string(),
            l.host.clone(),
            l.submitted.clone().unwrap_or_default(),
            l.started.clone().unwrap_or_default(),
            l.finished.clone().unwrap_or_default(),
        ];
        for (cols, value, prefix) in [
            (&self.cols.input, &l.input, "input"),
            (&self.cols.output, &l.output, "output"),
        ] {
            let mut cells = vec![String::new(); cols.names.len()];
            for (name, value) in flatten(prefix, value) {
                let Some(&i) = cols.index.get(&name) else {
                    anyhow::bail!(
                        "task {}: column {name} appeared after the header was written",
                        l.task
                    );
                };
                cells[i] = value;
            }
            rec.extend(cells);
        }
        rec.push(l.output_files.join(";"));
        self.w
            .write_record(rec.iter().map(|c| shown(c, self.terminal)))?;
        Ok(())
    }

    /// Flushes what is written.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        self.w.flush()?;
        Ok(())
    }
}

/// Most distinct input or output columns a CSV gets (beyond them, JSON lines say it better).
const MAX_CSV_COLUMNS: usize = 10_000;

/// CSV columns in order of first appearance, with their positions.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    index: std::collections::HashMap<String, usize>,
}

impl Columns {
    fn add(&mut self, name: &str) -> anyhow::Result<()> {
        if self.index.contains_key(name) {
            return Ok(());
        }
        if self.names.len() >= MAX_CSV_COLUMNS {
            anyhow::bail!(
                "the results have over {MAX_CSV_COLUMNS} distinct {} columns; use JSON lines \
                 (`--format jsonl`)",
                name.split('.').next().unwrap_or(name)
            );
        }
        self.index.insert(name.to_string(), self.names.len());
        self.names.push(name.to_string());
        Ok(())
    }
}

/// A key as one segment of a dotted column name: as it is, unless it holds a `.` or a `"`
/// or is empty; then in double quotes (a `"` doubled). So `{"a":{"b":1}}` (`a.b`) and
/// `{"a.b":2}` (`"a.b"`) get two columns, not one holding the last value.
fn column_key(k: &str) -> std::borrow::Cow<'_, str> {
    if k.is_empty() || k.contains(['.', '"']) {
        std::borrow::Cow::Owned(format!("\"{}\"", k.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(k)
    }
}

/// Leaves of a JSON value as (dotted column name, cell text).
fn flatten(prefix: &str, v: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into(prefix, v, &mut out, 0);
    out
}

fn flatten_into(name: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>, depth: usize) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() && depth < 8 => {
            for (k, child) in m {
                flatten_into(&format!("{name}.{}", column_key(k)), child, out, depth + 1);
            }
        }
        serde_json::Value::Null => out.push((name.to_string(), String::new())),
        serde_json::Value::String(s) => out.push((name.to_string(), s.clone())),
        other => out.push((name.to_string(), other.to_string())),
    }
}

/// Whether stderr gets colour: a terminal, and `NO_COLOR` unset or empty.
pub(crate) fn colour_on_stderr() -> bool {
    let no_color = match std::env::var_os("NO_COLOR") {
        Some(v) => !v.is_empty(),
        None => false,
    };
    std::io::stderr().is_terminal() && !no_color
}

/// Colours for terminal text.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Paint {
    Red,
    Green,
    Yellow,
    Bold,
}

/// `text` in `paint` when `on`.
pub(crate) fn paint(on: bool, paint: Paint, text: &str) -> String {
    if !on {
        return text.to_string();
    }
    let code = match paint {
        Paint::Red => "31",
        Paint::Green => "32",
        Paint::Yellow => "33",
        Paint::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// What `mw run` and `mw resume` print when every task has an outcome: one summary line
/// that stays, the first failures with their reason, and the commands to see the rest.
/// `ended`: the job has an outcome for every task (else it stopped, and what runs the
/// failed tasks again is said with how to resume it).
pub(crate) fn print_summary(
    job: Option<&str>,
    counts: (usize, usize, usize),
    wall: Duration,
    ran_here: usize,
    first_failures: &[(u64, String)],
    ended: bool,
) {
    let (done, failed, cancelled) = counts;
    let colour = colour_on_stderr();
    let secs = wall.as_secs_f64();
    let rate = if secs > 0.0 {
        ran_here as f64 / secs
    } else {
        0.0
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "mw: {} tasks: {}, {}, {} in {:.1} s ({:.1} tasks/s)",
        done + failed + cancelled,
        paint(colour && done > 0, Paint::Green, &format!("{done} done")),
        paint(
            colour && failed > 0,
            Paint::Red,
            &format!("{failed} failed")
        ),
        paint(
            colour && cancelled > 0,
            Paint::Yellow,
            &format!("{cancelled} cancelled")
        ),
        secs,
        rate
    );
    for (task, reason) in first_failures {
        let first = failure_reason(reason);
        let _ = writeln!(
            err,
            "mw:   {} {first}",
            paint(colour, Paint::Bold, &format!("task {task}:"))
        );
    }
    if failed + cancelled > 0 {
        match job {
            Some(id) => {
                let again = if ended {
                    format!("; run the failed ones again: `mw retry {id}`")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    err,
                    "mw: every failure: `mw results {id} --failed`; one task's stdout/stderr: \
                     `mw logs {id} TASK`{again}"
                );
            }
            None => {
                let _ = writeln!(
                    err,
                    "mw: every failure is in the result lines (state \"failed\"); run without \
                     --no-journal to keep a job that `mw retry` can re-run"
                );
            }
        }
    }
}

/// A task's error in one line: its first line, without the task's name (the caller shows
/// it) and with the last line of the stderr tail it carries, if any; its control characters
/// escaped (the text comes from the task's stderr or the platform).
pub(crate) fn failure_reason(error: &str) -> String {
    mw_bundle::text::escape_controls(&failure_line(error)).into_owned()
}

fn failure_line(error: &str) -> String {
    let mut lines = error.lines();
    let first = lines.next().unwrap_or("");
    // "task 3 was cancelled" (a cancelled task's whole error) says no more than its state.
    if first.starts_with("task ") && first.ends_with(" was cancelled") {
        return "cancelled".to_string();
    }
    let first = first
        .split_once(" failed: ")
        .map(|(_, rest)| rest)
        .unwrap_or(first);
    match first.strip_suffix("; stderr tail:") {
        Some(head) => {
            let last = lines
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("");
            format!("{head}: {last}")
        }
        None => first.to_string(),
    }
}

/// How many failures the end-of-run summary shows.
pub(crate) const SUMMARY_FAILURES: usize = 3;

/// Progress on a terminal (a bar) or as plain lines (when stderr is not a terminal).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    start: Instant,
    last_line: Instant,
    quiet: bool,
    /// Tasks already finished before this process started (resume): not in the rate.
    baseline: u64,
    /// What the pool last said of the tasks handed to it (HTCondor: idle vs executing).
    pool: Option<crate::pool::PoolStatus>,
}

impl Progress {
    pub(crate) fn new(total: u64, quiet: bool) -> Progress {
        let bar = if !quiet && std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(total);
            // The ETA is ours (in the message): none before a task has finished.
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}]",
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
            pool: None,
        }
    }

    /// The pool's latest word on the tasks handed to it: "running" is then split into
    /// idle (queued in the pool) and running (executing).
    pub(crate) fn set_pool(&mut self, pool: crate::pool::PoolStatus) {
        self.pool = Some(pool);
    }

    /// Tasks finished before this run (a resumed job): counted in the position, not the rate.
    pub(crate) fn set_baseline(&mut self, finished_before: u64) {
        self.baseline = finished_before;
    }

    /// Whether an update would show anything now (the drive loop asks before it reads the
    /// master's counts: most results of a fast job change nothing on screen).
    pub(crate) fn due(&self) -> bool {
        match &self.bar {
            Some(_) => self.last_line.elapsed() >= BAR_REFRESH,
            None => !self.quiet && self.last_line.elapsed() >= Duration::from_secs(2),
        }
    }

    pub(crate) fn update(&mut self, status: &MasterStatus, force: bool) {
        let finished = (status.done + status.failed + status.cancelled) as u64;
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let here = finished.saturating_sub(self.baseline);
        let rate = here as f64 / elapsed;
        let mut msg = match self.pool {
            Some(p) => {
                let (idle, running) = p.split(status.running as u64);
                format!(
                    "queued {} idle {idle} running {running} done {} failed {}",
                    status.queued, status.done, status.failed
                )
            }
            None => format!(
                "queued {} running {} done {} failed {}",
                status.queued, status.running, status.done, status.failed
            ),
        };
        if status.cancelled > 0 {
            msg.push_str(&format!(" cancelled {}", status.cancelled));
        }
        if status.retried > 0 {
            msg.push_str(&format!(" retried {}", status.retried));
        }
        if status.backing_off > 0 {
            msg.push_str(&format!(" (backing off {})", status.backing_off));
        }
        msg.push_str(&format!(" | {rate:.1} tasks/s"));
        let left = self.total.saturating_sub(finished);
        // No ETA until a task has finished here (a rate of 0 says nothing).
        let eta = if here > 0 && rate > 0.0 && left > 0 {
            format!("ETA {}", human_secs(left as f64 / rate))
        } else if left == 0 {
            "ETA 0s".into()
        } else {
            "ETA ?".into()
        };
        if let Some(bar) = &self.bar {
            self.last_line = Instant::now();
            bar.set_position(finished);
            bar.set_message(format!("{msg} | {eta}"));
            return;
        }
        if self.quiet {
            return;
        }
        if force || self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "[{}] mw: {finished}/{} finished; {msg}; {eta}",
                now_rfc3339(),
                self.total
            );
        }
    }

    /// Prints `line` on stderr (above the bar, when there is one), quiet or not: for what
    /// answers the user (a stop signal), not for progress.
    pub(crate) fn note(&self, line: &str) {
        let line = mw_bundle::text::escape_controls(line);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    /// Seconds since the display started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// How often the progress bar's text is refreshed.
const BAR_REFRESH: Duration = Duration::from_millis(100);

/// Seconds as `42s`, `3m20s`, `2h05m`.
fn human_secs(s: f64) -> String {
    if s.is_finite() && s > 0.0 && s < 1.0 {
        return "<1s".into();
    }
    let s = if s.is_finite() { s.max(0.0) as u64 } else { 0 };
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary names the task once: every task error's reason follows "failed: ".
    #[test]
    fn a_failure_reason_does_not_repeat_the_task() {
        for e in [
            mw::MwError::BadOutput {
                task: mw::TaskId(3),
                reason: "its stdout is not JSON".into(),
                host: "h".into(),
            },
            mw::MwError::MissingOutput {
                task: mw::TaskId(3),
                files: vec!["a".into()],
                attempts: 1,
                host: "h".into(),
            },
        ] {
            let reason = failure_reason(&e.to_string());
            assert!(reason.starts_with("the program exited 0 but"), "{reason}");
        }
    }

    /// A cancelled task is listed as "task 3  cancelled", not "task 3  task 3 was cancelled".
    #[test]
    fn a_cancelled_tasks_reason_does_not_repeat_the_task() {
        let e = mw::MwError::Cancelled(mw::TaskId(3)).to_string();
        assert_eq!(failure_reason(&e), "cancelled");
    }

    #[test]
    fn timestamps_are_rfc3339_and_forged_ones_are_dropped() {
        assert_eq!(rfc3339(0.0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            rfc3339(1_700_000_000.25).as_deref(),
            Some("2023-11-14T22:13:20.250Z")
        );
        assert_eq!(rfc3339(f64::NAN), None);
        assert_eq!(rfc3339(1e300), None);
    }

    fn line(task: u64, input: serde_json::Value, output: serde_json::Value) -> ResultLine {
        ResultLine {
            task,
            state: "done".into(),
            input,
            output,
            exit: "exit status 0".into(),
            error: None,
            wall_secs: 0.5,
            cpu_secs: 0.25,
            host: "h".into(),
            attempts: 1,
            submitted: None,
            started: None,
            finished: None,
            output_files: vec![],
        }
    }

    /// Keys whose dotted names would coincide (`{"a":{"b":1}}` and `{"a.b":2}`) get a
    /// column each: no value overwrites another.
    #[test]
    fn csv_columns_of_colliding_dotted_names_stay_apart() {
        let l = line(
            0,
            serde_json::json!({"a": {"b": 1}, "a.b": 2, "q\"": 3, "": 4}),
            serde_json::json!(5),
        );
        let mut out = Vec::new();
        write_csv(&mut out, std::slice::from_ref(&l), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        let row: Vec<String> = r
            .records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(String::from)
            .collect();
        let cell = |name: &str| {
            let i = header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("{name} in {header:?}"));
            row[i].clone()
        };
        assert_eq!(cell("input.a.b"), "1");
        assert_eq!(cell("input.\"a.b\""), "2");
        assert_eq!(cell("input.\"q\"\"\""), "3");
        assert_eq!(cell("input.\"\""), "4");
        assert_eq!(cell("output"), "5");
    }

    /// To a terminal every cell and column name from the results has its control characters
    /// escaped (newlines kept: the CSV quotes them); to a file or pipe they are the data.
    #[test]
    fn csv_escapes_control_characters_only_for_a_terminal() {
        let mut l = line(
            0,
            serde_json::json!({"k\u{1b}]0;t\u{7}": "a\u{1b}[31mb"}),
            serde_json::json!("x\u{0}y\u{1}z\nw"),
        );
        l.error = Some("e\u{1b}[2J".into());
        l.host = "h\u{7}".into();
        let mut raw = Vec::new();
        write_csv(&mut raw, std::slice::from_ref(&l), false).unwrap();
        for b in [0x1b, 0x07, 0x00, 0x01] {
            assert!(raw.contains(&b), "byte {b:#x} not kept in {raw:?}");
        }
        let mut shown = Vec::new();
        write_csv(&mut shown, std::slice::from_ref(&l), true).unwrap();
        let text = String::from_utf8(shown).unwrap();
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\u{0}', '\u{1}']),
            "{text:?}"
        );
        for escaped in [
            r"input.k\u{1b}]0;t\u{7}",
            r"a\u{1b}[31mb",
            r"x\u{0}y\u{1}z",
            r"e\u{1b}[2J",
            r"h\u{7}",
        ] {
            assert!(text.contains(escaped), "no {escaped} in {text:?}");
        }
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 1, "{text:?}");
        assert!(
            rows[0].iter().any(|c| c == "x\\u{0}y\\u{1}z\nw"),
            "{text:?}"
        );
    }

    #[test]
    fn csv_flattens_inputs_and_outputs() {
        let mk = line;
        let lines = vec![
            mk(
                0,
                serde_json::json!({"seed": 1, "p": {"n": 2}}),
                serde_json::json!({"pi": 3.1}),
            ),
            mk(
                1,
                serde_json::json!({"seed": 2}),
                serde_json::json!("a, \"b\""),
            ),
        ];
        let mut buf = Vec::new();
        write_csv(&mut buf, &lines, false).unwrap();
        let mut r = csv::Reader::from_reader(buf.as_slice());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        for c in ["input.seed", "input.p.n", "output.pi", "output", "started"] {
            assert!(header.contains(&c.to_string()), "{header:?}");
        }
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert_eq!(&rows[0][col("input.p.n")], "2");
        assert_eq!(&rows[0][col("output.pi")], "3.1");
        assert_eq!(&rows[1][col("output")], "a, \"b\"");
        assert_eq!(&rows[1][col("input.p.n")], "");
        // Results that each bring new keys: refused past the column limit, with a hint.
        let distinct: Vec<ResultLine> = (0..MAX_CSV_COLUMNS as u64 + 1)
            .map(|i| {
                mk(
                    i,
                    serde_json::json!(i),
                    serde_json::json!({ format!("k{i}"): i }),
                )
            })
            .collect();
        let e = write_csv(std::io::sink(), &distinct, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("distinct output columns") && e.contains("jsonl"),
            "{e}"
        );
        assert!(write_csv(std::io::sink(), &distinct[..100], false).is_ok());
    }
}
