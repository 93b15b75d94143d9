//! Job files: the TOML a researcher writes instead of a Rust program.
//!
//! A job file names the program, its inputs (inline list, JSON-lines file, or a parameter
//! sweep: the cartesian product of named values), per-task arguments, environment and
//! output names (tera templates over `input`, `index` and `job`), limits, the interface and
//! its settings, and an optional reduce program. Every error names the file, line, column
//! and field. Loading never panics on any input.
//!
//! This module turns a job file into [`TaskSpec`]s; it knows nothing of how they run.

use mw::task::{Program, ProgramMode, TaskSpec};
use mw_bundle::Comparison;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// A job-file error, already naming file, line, column and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

/// The program section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSection {
    /// Path of the executable, relative to the job file.
    pub path: Option<Spanned<String>>,
    /// Or a command: the first word is found on PATH (or relative to the job file), the rest
    /// are base arguments, e.g. `["python3", "task.py"]`.
    pub command: Option<Spanned<Vec<String>>>,
    /// Extra files the program needs, relative to the job file.
    #[serde(default)]
    pub files: Vec<Spanned<String>>,
    /// What the program prints: `json` (default: one JSON value, the result), `text` (the
    /// result is the text as a JSON string) or `file` (kept as the output file `stdout`;
    /// the result is its path).
    pub stdout: Option<Spanned<String>>,
    /// `"process"` (default: one process per task) or `"stream"` (one long-lived process
    /// per worker, one JSON line in and one out per task; see `mw run --help`).
    pub mode: Option<Spanned<String>>,
}

/// Sweep values: a list, or a range.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SweepValues {
    /// Explicit values.
    List(Vec<serde_json::Value>),
    /// `{ start = 0, end = 16 }` (end exclusive), optional `step`.
    Range(SweepRange),
}

/// A range of integers in a sweep; a misspelt key (`stpe`) is an error, not ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepRange {
    /// First value.
    pub start: i64,
    /// End (exclusive).
    pub end: i64,
    /// Step (default 1).
    #[serde(default)]
    pub step: Option<i64>,
}

/// Where the inputs come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsSection {
    /// Inline inputs.
    pub list: Option<Vec<serde_json::Value>>,
    /// A file of JSON lines, relative to the job file.
    pub file: Option<Spanned<String>>,
    /// A parameter sweep: the cartesian product of the named values, each task getting an
    /// object with one value per name.
    pub sweep: Option<BTreeMap<String, Spanned<SweepValues>>>,
}

/// Condor settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CondorSection {
    /// `request_cpus`.
    pub request_cpus: Option<u32>,
    /// `request_memory` (e.g. "1GB" or MB as a number).
    pub request_memory: Option<toml::Value>,
    /// `request_disk`.
    pub request_disk: Option<toml::Value>,
    /// `requirements` expression.
    pub requirements: Option<String>,
    /// Seconds to wait for more tasks before submitting a batch.
    pub batch_window_secs: Option<f64>,
    /// Path of a user submit-description template.
    pub template: Option<String>,
    /// What to do when a job is held: "fail" (default) or "wait".
    pub on_hold: Option<String>,
    /// Path of the static mw-worker to send to the pool.
    pub worker: Option<String>,
    /// Tasks per HTCondor job (default 1); more packs tasks into one job.
    pub tasks_per_job: Option<usize>,
    /// Pack so that a job runs about this many seconds (from measured run times).
    pub target_job_secs: Option<f64>,
}

/// BOINC settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BoincSection {
    /// The BOINC project directory.
    pub project_dir: Option<String>,
    /// App name (default "mw").
    pub app_name: Option<String>,
    /// Minimum quorum.
    pub quorum: Option<u32>,
    /// Initial replication (target_nresults).
    pub replication: Option<u32>,
    /// Comparison: "bitwise" or "json".
    pub comparison: Option<String>,
    /// Relative tolerance for "json".
    pub rel_tolerance: Option<f64>,
    /// Absolute tolerance for "json".
    pub abs_tolerance: Option<f64>,
    /// delay_bound in seconds: a volunteer that does not report in time is replaced.
    pub deadline_secs: Option<u64>,
    /// Tasks per create_work call.
    pub batch_size: Option<usize>,
    /// max_error_results (default 1: two hosts suffice to declare a failing task failed).
    pub max_error_results: Option<u32>,
    /// max_total_results (default max_success_results + max_error_results).
    pub max_total_results: Option<u32>,
    /// rsc_fpops_est: floating-point operations of one task (default 1e11).
    pub rsc_fpops_est: Option<f64>,
    /// The job's deadline in seconds: a task with no agreed result this long after it was
    /// handed to BOINC fails with a message (default: wait without limit).
    pub job_deadline_secs: Option<u64>,
    /// Tasks per workunit (default 1); more packs tasks into one workunit.
    pub tasks_per_workunit: Option<usize>,
    /// Pack so that a workunit runs about this many seconds (from measured run times).
    pub target_job_secs: Option<f64>,
}

impl BoincSection {
    /// The BOINC interface's settings; a relative `project_dir` is taken from `base_dir`.
    pub fn to_settings(
        &self,
        base_dir: &Path,
    ) -> Result<mw::boinc::BoincSettings, mw::boinc::BoincError> {
        let dir = self.project_dir.as_deref().ok_or_else(|| {
            mw::boinc::BoincError("[boinc] project_dir is required for interface \"boinc\"".into())
        })?;
        let dir = Path::new(dir);
        let project_dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            base_dir.join(dir)
        };
        if self.batch_size == Some(0) {
            return Err(mw::boinc::BoincError(
                "[boinc] batch_size must be at least 1".into(),
            ));
        }
        let mut s = mw::boinc::BoincSettings::new(project_dir);
        s.app_name = self.app_name.clone();
        s.quorum = self.quorum;
        s.replication = self.replication;
        s.delay_bound_secs = self.deadline_secs;
        s.max_error_results = self.max_error_results;
        s.max_total_results = self.max_total_results;
        s.rsc_fpops_est = self.rsc_fpops_est;
        s.job_deadline = self.job_deadline_secs.map(std::time::Duration::from_secs);
        if let Some(b) = self.batch_size {
            s.batch_size = b;
        }
        let (per, target) = packing(
            "[boinc] tasks_per_workunit",
            self.tasks_per_workunit,
            self.target_job_secs,
        )
        .map_err(|e| mw::boinc::BoincError(format!("[boinc] {e}")))?;
        s.tasks_per_workunit = per;
        s.target_job_time = target;
        Ok(s)
    }
}

/// Tasks per grid job and the target job time from `tasks_per_*` and `target_job_secs`:
/// checked, and a target alone packs up to [`DEFAULT_MAX_PACK`] tasks.
pub fn packing(
    what: &str,
    per: Option<usize>,
    target_secs: Option<f64>,
) -> Result<(usize, Option<std::time::Duration>), String> {
    let max = mw::pack::MAX_TASKS_PER_PACK;
    if let Some(n) = per {
        if !(1..=max).contains(&n) {
            return Err(format!("{what} must be between 1 and {max}"));
        }
    }
    let target = match target_secs {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t <= 1e7 => {
            Some(std::time::Duration::from_secs_f64(t))
        }
        Some(_) => {
            return Err("target_job_secs must be a number of seconds between 0 and 1e7".into())
        }
    };
    let per = match (per, target) {
        (Some(n), _) => n,
        (None, Some(_)) => DEFAULT_MAX_PACK,
        (None, None) => 1,
    };
    Ok((per, target))
}

/// The largest pack `target_job_secs` chooses when no `tasks_per_*` bounds it.
pub const DEFAULT_MAX_PACK: usize = 1000;

/// The whole job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Job name (default: the job file's directory name, or its stem).
    pub name: Option<String>,
    /// Interface: multicore (default), mpi, condor, boinc.
    pub interface: Option<Spanned<String>>,
    /// Worker slots for multicore (at most [`MAX_WORKERS`]).
    pub workers: Option<Spanned<u64>>,
    /// Largest result a task may return (its stdout's JSON), as bytes or a size string
    /// ("8MB"); default [`mw::task::DEFAULT_MAX_OUTPUT_BYTES`].
    pub max_output: Option<Spanned<toml::Value>>,
    /// The program.
    /// (Not `Spanned`: toml 0.8 cannot give the span of a table written with dotted keys,
    /// `program.path = ...`; errors find the table with `Job::section_span`.)
    pub program: ProgramSection,
    /// The inputs.
    pub inputs: InputsSection,
    /// Argument templates.
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    /// Environment templates.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Declared output file templates.
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
    /// Input files per task (templates), relative to the job file.
    #[serde(default)]
    pub input_files: Vec<Spanned<String>>,
    /// Wall-clock limit per task, seconds.
    pub timeout: Option<Spanned<f64>>,
    /// Extra attempts after a failure.
    pub retries: Option<u32>,
    /// Seconds before the first retry; doubled for each further retry of a task.
    pub retry_backoff: Option<Spanned<f64>>,
    /// Which failures are retried: exit codes (integers), "exit" (any non-zero exit),
    /// "signal", "timeout", "interface", "output"; default: every failure.
    pub retry_on: Option<Spanned<Vec<toml::Value>>>,
    /// Stop the master once this many tasks failed in one run (an integer), or this share
    /// of the job's tasks (a string "5%"); the rest waits for `mw resume`.
    pub max_failures: Option<Spanned<toml::Value>>,
    /// A program that gets every result (JSON lines, task order) on stdin.
    pub reduce: Option<ProgramSection>,
    /// HTCondor settings.
    #[serde(default)]
    pub condor: CondorSection,
    /// BOINC settings.
    #[serde(default)]
    pub boinc: BoincSection,
}

/// When a run stops for its failures (`max_failures`, `mw run --max-failures`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureLimit {
    /// After this many failed tasks.
    Tasks(u64),
    /// After this percentage of the job's tasks failed (over 0, at most 100).
    Percent(f64),
}

impl FailureLimit {
    /// How many failed tasks stop a run of a job of `total` tasks (at least 1).
    pub fn threshold(self, total: u64) -> u64 {
        match self {
            FailureLimit::Tasks(n) => n,
            // Exact for any task count a job may have (at most 5*10^7).
            FailureLimit::Percent(p) => ((total as f64 * p / 100.0).ceil() as u64).max(1),
        }
    }
}

impl std::fmt::Display for FailureLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureLimit::Tasks(n) => write!(f, "{n}"),
            FailureLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for FailureLimit {
    type Err = String;

    /// `10` (tasks) or `5%` (of the job's tasks).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        match t.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0)
                .map(FailureLimit::Percent)
                .ok_or_else(|| format!("`{s}`: a share must be over 0% and at most 100%")),
            None => t
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(FailureLimit::Tasks)
                .ok_or_else(|| {
                    format!("`{s}`: expected a number of tasks (at least 1) or a share (\"5%\")")
                }),
        }
    }
}

/// A loaded job: the parsed file plus what it resolved to.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where the job file is.
    pub path: PathBuf,
    /// Its directory (relative paths are taken from here).
    pub base_dir: PathBuf,
    /// Its text.
    pub text: String,
    /// The parsed file.
    pub file: JobFile,
    /// Job name.
    pub name: String,
}

/// The dotted key (`table.key`) assigned on the line holding `offset`, if that line is a
/// `key = value` line; the table comes from the last `[header]` above it.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        let t = line.trim();
        if offset >= end && end < text.len() {
            if let Some(h) = t.strip_prefix('[') {
                let h = h.trim_start_matches('[');
                if let Some(close) = h.find(']') {
                    table = h[..close].trim().to_string();
                }
            }
            start = end;
            continue;
        }
        let eq = line.find('=')?;
        let key = line[..eq].trim();
        let ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.\"' ".contains(&b));
        if !ok {
            return None;
        }
        return Some(if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        });
    }
    None
}

/// Converts a byte offset into 1-based (line, column); an offset inside a character counts
/// as that character's start.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

impl Job {
    fn err_at(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        msg: impl std::fmt::Display,
    ) -> JobError {
        let (line, col) = line_col(&self.text, span.start);
        JobError(format!(
            "{}:{line}:{col}: field `{field}`: {msg}",
            self.path.display()
        ))
    }

    /// Where a section starts (`[name` or `name =`), for error locations of sections that may
    /// be implicit tables (which carry no span).
    fn section_span(&self, name: &str) -> std::ops::Range<usize> {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim_start();
            if t.starts_with(&format!("[{name}"))
                || t.starts_with(&format!("{name} ="))
                || t.starts_with(&format!("{name}="))
                || t.starts_with(&format!("{name}."))
            {
                let start = offset + (line.len() - t.len());
                return start..start + t.trim_end().len();
            }
            offset += line.len();
        }
        0..0
    }

    /// Reads and parses a job file.
    pub fn load(path: &Path) -> Result<Job, JobError> {
        let text = read_regular_file(path, MAX_JOB_FILE_BYTES).map_err(|e| {
            JobError(format!(
                "cannot read the job file: {e} (large input lists belong in `inputs.file`)"
            ))
        })?;
        Self::parse(path, text)
    }

    /// Parses job-file text that came from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Job, JobError> {
        let file: JobFile = toml::from_str(&text).map_err(|e| {
            let msg = e.message().trim_end();
            let loc = e
                .span()
                .map(|s| {
                    let (l, c) = line_col(&text, s.start);
                    format!("{l}:{c}:")
                })
                .unwrap_or_default();
            // Name the field with its table (`program.bogus`) from the key on the error's
            // line; toml's own text names only the bare key, and only for unknown fields.
            // A missing field's span is its table, which names nothing more.
            let field = match e.span() {
                Some(s) if !msg.starts_with("missing field") => key_path_at(&text, s.start)
                    .map(|k| format!(" field `{k}`:"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            JobError(format!(
                "{}:{loc}{field} {}",
                path.display(),
                explain_toml_error(msg)
            ))
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = file.name.clone().unwrap_or_else(|| default_name(&abs));
        let job = Job {
            path: path.to_path_buf(),
            base_dir,
            text,
            file,
            name,
        };
        job.check_name()?;
        job.check_interface()?;
        job.check_limits()?;
        job.stdout_mode()?;
        job.retry_policy()?;
        job.max_failures()?;
        Ok(job)
    }

    /// The failure limit (`max_failures`), if the job sets one.
    pub fn max_failures(&self) -> Result<Option<FailureLimit>, JobError> {
        let Some(v) = &self.file.max_failures else {
            return Ok(None);
        };
        let parsed = match v.get_ref() {
            toml::Value::Integer(n) => u64::try_from(*n)
                .ok()
                .filter(|n| *n >= 1)
                .map(FailureLimit::Tasks)
                .ok_or_else(|| "must be at least 1".to_string()),
            toml::Value::String(s) => s.parse(),
            other => Err(format!(
                "`{other}`: expected a number of tasks (10) or a share of them (\"5%\")"
            )),
        };
        parsed
            .map(Some)
            .map_err(|e| self.err_at(v.span(), "max_failures", e))
    }

    /// The program's stdout mode (`[program] stdout`).
    pub fn stdout_mode(&self) -> Result<mw::StdoutMode, JobError> {
        match &self.file.program.stdout {
            None => Ok(mw::StdoutMode::Json),
            Some(s) => mw::StdoutMode::parse(s.get_ref()).ok_or_else(|| {
                self.err_at(
                    s.span(),
                    "program.stdout",
                    format!("`{}`: expected \"json\", \"text\" or \"file\"", s.get_ref()),
                )
            }),
        }
    }

    /// The retry backoff and the kinds of failure retried (`retry_backoff`, `retry_on`).
    pub fn retry_policy(&self) -> Result<(Duration, Vec<mw::RetryOn>), JobError> {
        let backoff = match &self.file.retry_backoff {
            None => Duration::ZERO,
            Some(b) => {
                let v = *b.get_ref();
                if !(v.is_finite() && (0.0..=86400.0).contains(&v)) {
                    return Err(self.err_at(
                        b.span(),
                        "retry_backoff",
                        "must be between 0 and 86400 seconds",
                    ));
                }
                Duration::from_secs_f64(v)
            }
        };
        let mut on = Vec::new();
        if let Some(list) = &self.file.retry_on {
            // An empty list would read as "retry nothing" but the default (no list) retries
            // every failure: refuse it rather than guess.
            if list.get_ref().is_empty() {
                return Err(self.err_at(
                    list.span(),
                    "retry_on",
                    "is empty: leave it out to retry every failure, or set `retries = 0` to retry none",
                ));
            }
            for v in list.get_ref() {
                let kind = match v {
                    // Exit status 0 is never a failure. Other codes may be beyond 255: a
                    // Windows program's exit code is 32 bits.
                    toml::Value::Integer(c) if *c != 0 => {
                        i32::try_from(*c).ok().map(mw::RetryOn::ExitCode)
                    }
                    toml::Value::String(s) => match s.as_str() {
                        "exit" => Some(mw::RetryOn::AnyExit),
                        "signal" => Some(mw::RetryOn::Signal),
                        "timeout" => Some(mw::RetryOn::Timeout),
                        "interface" => Some(mw::RetryOn::Interface),
                        "output" => Some(mw::RetryOn::BadOutput),
                        _ => None,
                    },
                    _ => None,
                };
                match kind {
                    Some(k) => on.push(k),
                    None => {
                        return Err(self.err_at(
                            list.span(),
                            "retry_on",
                            format!(
                                "`{v}`: expected non-zero exit codes (integers) or \"exit\", \"signal\", \"timeout\", \"interface\", \"output\""
                            ),
                        ))
                    }
                }
            }
        }
        Ok((backoff, on))
    }

    /// Checks the job name (from the file, `--name` or the default) is usable as a
    /// directory name.
    pub fn check_name(&self) -> Result<(), JobError> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !self.name.starts_with('.')
            // A job id is an argument of every command: one starting with `-` is an option.
            && !self.name.starts_with('-');
        if !ok {
            let msg = format!(
                "`{}` must be 1-64 characters of letters, digits, `-`, `_` or `.`, not starting with `.` or `-`",
                self.name
            );
            if self.file.name.as_deref() == Some(self.name.as_str()) {
                return Err(self.err_at(self.section_span("name"), "name", msg));
            }
            return Err(JobError(format!("job name {msg}")));
        }
        Ok(())
    }

    /// `[boinc] comparison` is one of the two rules and its tolerances are numbers of 0 or
    /// more (a misspelt rule would silently have compared bit by bit).
    fn check_comparison(&self) -> Result<(), JobError> {
        let b = &self.file.boinc;
        let at = |field: &str, msg: String| {
            Err(self.err_at(self.section_span("boinc"), &format!("boinc.{field}"), msg))
        };
        if let Some(c) = b.comparison.as_deref() {
            if c != "bitwise" && c != "json" {
                return at(
                    "comparison",
                    format!("is `{c}`; use \"bitwise\" or \"json\""),
                );
            }
        }
        for (field, v) in [
            ("rel_tolerance", b.rel_tolerance),
            ("abs_tolerance", b.abs_tolerance),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return at(field, format!("is {v}; it must be a number of 0 or more"));
                }
            }
        }
        Ok(())
    }

    /// TOML's `nan` and `inf` are no JSON values: an input holding one would silently reach
    /// its task as `null`, so it is refused, naming the field.
    fn check_finite_inputs(&self) -> Result<(), JobError> {
        fn non_finite(v: &toml::Value) -> bool {
            match v {
                toml::Value::Float(f) => !f.is_finite(),
                toml::Value::Array(a) => a.iter().any(non_finite),
                toml::Value::Table(t) => t.values().any(non_finite),
                _ => false,
            }
        }
        let Ok(doc) = toml::from_str::<toml::Table>(&self.text) else {
            return Ok(());
        };
        let Some(inputs) = doc.get("inputs").and_then(toml::Value::as_table) else {
            return Ok(());
        };
        let msg = "nan and inf are not JSON values; write them as strings or leave them out";
        if inputs.get("list").is_some_and(non_finite) {
            return Err(self.err_at(self.section_span("inputs"), "inputs.list", msg));
        }
        if let Some(sweep) = inputs.get("sweep").and_then(toml::Value::as_table) {
            for (name, values) in sweep {
                if non_finite(values) {
                    let span = self
                        .file
                        .inputs
                        .sweep
                        .as_ref()
                        .and_then(|s| s.get(name))
                        .map_or_else(|| self.section_span("inputs"), |v| v.span());
                    return Err(self.err_at(span, &format!("inputs.sweep.{name}"), msg));
                }
            }
        }
        Ok(())
    }

    /// Limits that keep a job file from crashing or swallowing the machine, checked before
    /// anything is created: workers, result size, sweep ranges, template size and depth.
    fn check_limits(&self) -> Result<(), JobError> {
        self.workers()?;
        self.max_output_bytes()?;
        self.check_finite_inputs()?;
        self.check_comparison()?;
        if let Some(sweep) = &self.file.inputs.sweep {
            for (name, values) in sweep {
                if let SweepValues::Range(SweepRange { start, end, step }) = values.get_ref() {
                    range_len(*start, *end, step.unwrap_or(1)).map_err(|m| {
                        self.err_at(values.span(), &format!("inputs.sweep.{name}"), m)
                    })?;
                }
            }
        }
        let templates = self
            .file
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("args[{i}]"), a))
            .chain(self.file.env.iter().map(|(k, v)| (format!("env.{k}"), v)))
            .chain(
                self.file
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (format!("outputs[{i}]"), o)),
            )
            .chain(
                self.file
                    .input_files
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (format!("input_files[{i}]"), o)),
            );
        for (field, t) in templates {
            check_template(t.get_ref()).map_err(|m| self.err_at(t.span(), &field, m))?;
        }
        Ok(())
    }

    /// Worker slots from the job file, checked (`None`: all cores).
    pub fn workers(&self) -> Result<Option<usize>, JobError> {
        match &self.file.workers {
            None => Ok(None),
            Some(w) => match usize::try_from(*w.get_ref()) {
                Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Some(n)),
                _ => Err(self.err_at(
                    w.span(),
                    "workers",
                    format!("must be between 1 and {MAX_WORKERS}"),
                )),
            },
        }
    }

    /// The largest result a task may return, in bytes.
    pub fn max_output_bytes(&self) -> Result<u64, JobError> {
        match &self.file.max_output {
            None => Ok(mw::task::DEFAULT_MAX_OUTPUT_BYTES),
            Some(v) => {
                let bytes = match v.get_ref() {
                    toml::Value::Integer(n) => u64::try_from(*n).ok(),
                    toml::Value::String(s) => parse_size(s),
                    _ => None,
                };
                match bytes {
                    Some(b) if (1..=MAX_OUTPUT_LIMIT).contains(&b) => Ok(b),
                    _ => Err(self.err_at(
                        v.span(),
                        "max_output",
                        format!(
                            "must be a size between 1 byte and {} MiB, e.g. 8388608 or \"8MB\"",
                            MAX_OUTPUT_LIMIT >> 20
                        ),
                    )),
                }
            }
        }
    }

    fn check_interface(&self) -> Result<(), JobError> {
        if let Some(i) = &self.file.interface {
            if !["multicore", "mpi", "condor", "boinc"].contains(&i.get_ref().as_str()) {
                return Err(self.err_at(
                    i.span(),
                    "interface",
                    format!(
                        "unknown interface `{}`; expected multicore, mpi, condor or boinc",
                        i.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The interface named in the file (default multicore).
    pub fn interface(&self) -> String {
        self.file
            .interface
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_else(|| "multicore".into())
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Resolves a program section (`program` or `reduce`) into a [`Program`].
    pub fn program_from(&self, section: &ProgramSection, field: &str) -> Result<Program, JobError> {
        let s = section;
        let (exe, base_args, span) = match (&s.path, &s.command) {
            (Some(p), None) => (self.resolve(p.get_ref()), Vec::new(), p.span()),
            (None, Some(c)) => {
                let words = c.get_ref();
                let Some(first) = words.first() else {
                    return Err(self.err_at(c.span(), &format!("{field}.command"), "is empty"));
                };
                let exe = if first.contains('/') {
                    self.resolve(first)
                } else {
                    find_on_path(first).ok_or_else(|| {
                        self.err_at(
                            c.span(),
                            &format!("{field}.command"),
                            format!("`{first}` is not found on PATH"),
                        )
                    })?
                };
                (exe, words[1..].to_vec(), c.span())
            }
            (Some(_), Some(c)) => {
                return Err(self.err_at(
                    c.span(),
                    field,
                    "give either `path` or `command`, not both",
                ))
            }
            (None, None) => {
                return Err(self.err_at(
                    self.section_span(field),
                    field,
                    "needs `path = \"...\"` (an executable) or `command = [\"interpreter\", \"script\"]`",
                ))
            }
        };
        let field_name = if s.path.is_some() {
            format!("{field}.path")
        } else {
            format!("{field}.command")
        };
        let mut program =
            Program::new(&exe).map_err(|e| self.err_at(span.clone(), &field_name, e))?;
        program = program.with_base_args(base_args);
        for f in &s.files {
            program = program
                .with_file(self.resolve(f.get_ref()))
                .map_err(|e| self.err_at(f.span(), &format!("{field}.files"), e))?;
        }
        Ok(program)
    }

    /// The job's main program.
    pub fn program(&self) -> Result<Program, JobError> {
        let program = self.program_from(&self.file.program, "program")?;
        let Some(mode) = &self.file.program.mode else {
            return Ok(program);
        };
        let parsed = ProgramMode::parse(mode.get_ref()).ok_or_else(|| {
            self.err_at(
                mode.span(),
                "program.mode",
                format!("is `{}`; use \"process\" or \"stream\"", mode.get_ref()),
            )
        })?;
        if parsed == ProgramMode::Stream {
            for (files, field, what) in [
                (&self.file.outputs, "outputs", "declare output files"),
                (&self.file.input_files, "input_files", "take input files"),
            ] {
                if let Some(f) = files.first() {
                    return Err(self.err_at(
                        f.span(),
                        field,
                        format!(
                            "a streaming program (program.mode = \"stream\") cannot {what}: \
                             one process serves many tasks in one directory"
                        ),
                    ));
                }
            }
            if let Some(out) = &self.file.program.stdout {
                if self.stdout_mode()? != mw::StdoutMode::Json {
                    return Err(self.err_at(
                        out.span(),
                        "program.stdout",
                        "a streaming program answers each task with one JSON line: \
                         program.stdout must be \"json\" (the default)",
                    ));
                }
            }
        }
        Ok(program.with_mode(parsed))
    }

    /// The reduce program, if any.
    pub fn reduce_program(&self) -> Result<Option<Program>, JobError> {
        match &self.file.reduce {
            Some(r) if r.mode.is_some() => Err(self.err_at(
                r.mode
                    .as_ref()
                    .map_or_else(|| self.section_span("reduce"), |m| m.span()),
                "reduce.mode",
                "a reduce program always gets every result at once; it has no mode",
            )),
            Some(r) => self.program_from(r, "reduce").map(Some),
            None => Ok(None),
        }
    }

    /// Expands the inputs section into the list of task inputs (all in memory: prefer
    /// [`input_source`](Self::input_source) for big jobs).
    pub fn inputs(&self) -> Result<Vec<serde_json::Value>, JobError> {
        self.input_source()?.iter().collect()
    }

    /// The inputs section, counted (a sweep by multiplying its dimensions, with checked
    /// arithmetic, before anything is expanded) and produced lazily by [`Inputs::iter`], so
    /// memory does not grow with the number of tasks.
    pub fn input_source(&self) -> Result<Inputs, JobError> {
        let sec = &self.file.inputs;
        let given = [sec.list.is_some(), sec.file.is_some(), sec.sweep.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            return Err(self.err_at(
                self.section_span("inputs"),
                "inputs",
                "give exactly one of `list`, `file` (JSON lines) or `sweep`",
            ));
        }
        if let Some(list) = &sec.list {
            if list.is_empty() {
                return Err(self.err_at(
                    self.section_span("inputs"),
                    "inputs.list",
                    "is empty: no tasks to run",
                ));
            }
            return Ok(Inputs::List(list.clone()));
        }
        if let Some(file) = &sec.file {
            let path = self.resolve(file.get_ref());
            let text = read_regular_file(&path, MAX_INPUTS_FILE_BYTES)
                .map_err(|m| self.err_at(file.span(), "inputs.file", m))?;
            // Every line is checked now (and dropped); they are parsed again as tasks are
            // recorded, so only the file's text stays in memory.
            let lines = Inputs::Lines {
                path: path.clone(),
                job_path: self.path.clone(),
                text,
                count: 0,
            };
            let mut count = 0u64;
            for v in lines.iter() {
                v?;
                count += 1;
            }
            let Inputs::Lines { text, .. } = lines else {
                return Err(JobError("internal: not a file of inputs".into()));
            };
            if count == 0 {
                return Err(self.err_at(
                    file.span(),
                    "inputs.file",
                    format!("{} holds no inputs", path.display()),
                ));
            }
            return Ok(Inputs::Lines {
                path,
                job_path: self.path.clone(),
                text,
                count,
            });
        }
        let Some(sweep) = &sec.sweep else {
            return Ok(Inputs::List(Vec::new()));
        };
        if sweep.is_empty() {
            return Err(self.err_at(
                self.section_span("inputs"),
                "inputs.sweep",
                "names no parameters: no tasks to run",
            ));
        }
        let mut axes: Vec<(String, Axis)> = Vec::new();
        for (name, values) in sweep {
            let axis = match values.get_ref() {
                SweepValues::List(v) => Axis::List(v.clone()),
                SweepValues::Range(SweepRange { start, end, step }) => {
                    let step = step.unwrap_or(1);
                    let count = range_len(*start, *end, step).map_err(|m| {
                        self.err_at(values.span(), &format!("inputs.sweep.{name}"), m)
                    })?;
                    Axis::Range {
                        start: *start,
                        step,
                        count,
                    }
                }
            };
            if axis.is_empty() {
                return Err(self.err_at(
                    values.span(),
                    &format!("inputs.sweep.{name}"),
                    "is empty, so the sweep has no tasks",
                ));
            }
            axes.push((name.clone(), axis));
        }
        // Counted before anything is expanded; an overflow is over the limit too.
        let total = axes
            .iter()
            .try_fold(1u64, |a, (_, axis)| a.checked_mul(axis.len()));
        match total {
            Some(total) if total <= MAX_SWEEP_TASKS => Ok(Inputs::Sweep { axes, count: total }),
            _ => Err(self.err_at(
                self.section_span("inputs"),
                "inputs.sweep",
                format!(
                    "expands to {} tasks, over the limit of 5*10^7",
                    total
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "more than 2^64".into())
                ),
            )),
        }
    }

    /// Timeout per task.
    pub fn timeout(&self) -> Result<Option<Duration>, JobError> {
        match &self.file.timeout {
            None => Ok(None),
            Some(t) => {
                let v = *t.get_ref();
                if !(v.is_finite() && v > 0.0 && v < 1e9) {
                    return Err(self.err_at(
                        t.span(),
                        "timeout",
                        "must be a positive number of seconds",
                    ));
                }
                Ok(Some(Duration::from_secs_f64(v)))
            }
        }
    }

    /// The comparison rule for redundant (BOINC) results.
    pub fn comparison(&self) -> Comparison {
        match self.file.boinc.comparison.as_deref() {
            Some("json") => Comparison::Json {
                rel: self.file.boinc.rel_tolerance.unwrap_or(1e-9),
                abs: self.file.boinc.abs_tolerance.unwrap_or(0.0),
            },
            _ => Comparison::Bitwise,
        }
    }

    /// Builds the templates and returns a function from (index, input) to a task spec.
    pub fn task_builder(&self) -> Result<TaskBuilder, JobError> {
        let program = Arc::new(self.program()?);
        TaskBuilder::new(self, program)
    }
}

/// Rewrites serde's messages into ones that say what to write: a suggestion for a misspelt
/// key (by edit distance), and what a sweep value may be.
fn explain_toml_error(msg: &str) -> String {
    if msg.contains("untagged enum SweepValues") {
        return "a sweep parameter is a list of values (`x = [0.1, 0.2, 0.5]`, any JSON values) \
                or an integer range (`x = { start = 0, end = 10, step = 2 }`: `end` is \
                exclusive, `step` defaults to 1); for non-integer values, list them"
            .to_string();
    }
    // "unknown field `input`, expected one of `a`, `b`" (or "expected `a` or `b`").
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((bad, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let best = candidates
                .iter()
                .map(|c| (strsim::damerau_levenshtein(bad, c), *c))
                .min();
            if let Some((d, c)) = best {
                if d <= 2.max(bad.len() / 3) {
                    return format!("{msg}; did you mean `{c}`?");
                }
            }
        }
    }
    msg.to_string()
}

/// The most tasks a sweep may expand to.
pub const MAX_SWEEP_TASKS: u64 = 50_000_000;

/// One dimension of a sweep: values listed in the job file, or a range never expanded.
#[derive(Debug, Clone)]
pub enum Axis {
    /// Explicit values.
    List(Vec<serde_json::Value>),
    /// `start`, `start + step`, ... (`count` values).
    Range {
        /// First value.
        start: i64,
        /// Step (positive).
        step: i64,
        /// How many values.
        count: u64,
    },
}

impl Axis {
    /// How many values.
    pub fn len(&self) -> u64 {
        match self {
            Axis::List(v) => v.len() as u64,
            Axis::Range { count, .. } => *count,
        }
    }

    /// Whether it has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` (`i < len()`).
    fn value(&self, i: u64) -> serde_json::Value {
        match self {
            Axis::List(v) => v
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .cloned()
                .unwrap_or_default(),
            // Within the range by construction: start + i*step < end fits an i64.
            Axis::Range { start, step, .. } => {
                let v = i128::from(*start) + i128::from(i) * i128::from(*step);
                i64::try_from(v).map(Into::into).unwrap_or_default()
            }
        }
    }
}

/// A job's task inputs, counted up front and produced one at a time.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// Listed in the job file.
    List(Vec<serde_json::Value>),
    /// JSON lines of a file (its text, checked line by line when loaded).
    Lines {
        /// The file.
        path: PathBuf,
        /// The job file naming it (for error messages).
        job_path: PathBuf,
        /// Its text.
        text: String,
        /// Non-empty lines.
        count: u64,
    },
    /// The cartesian product of the axes, last axis fastest.
    Sweep {
        /// Name and values of each parameter.
        axes: Vec<(String, Axis)>,
        /// Product of the axes' lengths.
        count: u64,
    },
}

impl Inputs {
    /// How many tasks.
    pub fn len(&self) -> u64 {
        match self {
            Inputs::List(v) => v.len() as u64,
            Inputs::Lines { count, .. } | Inputs::Sweep { count, .. } => *count,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`get`](Self::get) makes every input (a list, a sweep; not a file).
    pub fn indexed(&self) -> bool {
        !matches!(self, Inputs::Lines { .. })
    }

    /// Input `index` without going through the others, when that is cheap (a list, a
    /// sweep); `None` for a file of inputs or an index out of range.
    pub fn get(&self, index: u64) -> Option<serde_json::Value> {
        match self {
            Inputs::List(v) => v.get(usize::try_from(index).ok()?).cloned(),
            Inputs::Lines { .. } => None,
            Inputs::Sweep { axes, count } => {
                if index >= *count {
                    return None;
                }
                // The odometer of `iter` read backwards: the last axis is the fastest digit.
                let mut digits = vec![0u64; axes.len()];
                let mut rest = index;
                for (k, (_, axis)) in axes.iter().enumerate().rev() {
                    digits[k] = rest % axis.len();
                    rest /= axis.len();
                }
                let mut obj = serde_json::Map::new();
                for ((name, axis), d) in axes.iter().zip(digits) {
                    obj.insert(name.clone(), axis.value(d));
                }
                Some(serde_json::Value::Object(obj))
            }
        }
    }

    /// The inputs in task order; memory stays that of one input.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Result<serde_json::Value, JobError>> + '_> {
        match self {
            Inputs::List(v) => Box::new(v.iter().cloned().map(Ok)),
            Inputs::Lines {
                path,
                job_path,
                text,
                ..
            } => Box::new(
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(move |(i, line)| {
                        // A dense line (`[0,0,…]`) would take some 30 times its size as a
                        // tree: its values are counted first, within the line limit.
                        use mw_bundle::JsonLimitError as L;
                        let too_big = match mw_bundle::check_json_limited(
                            line.as_bytes(),
                            MAX_INPUT_LINE_BYTES,
                        ) {
                            Err(L::TooManyValues {
                                values, max_values, ..
                            }) => Some(format!(
                                "about {values} JSON values on one line, over the {max_values} \
                                 one input may hold"
                            )),
                            Err(L::TooLarge { size, limit }) => Some(format!(
                                "a line of {size} bytes, over the {limit} one input may take"
                            )),
                            _ => None,
                        };
                        if let Some(why) = too_big {
                            return Err(JobError(format!(
                                "{}:{}: {why} (inputs.file of {})",
                                path.display(),
                                i + 1,
                                job_path.display()
                            )));
                        }
                        serde_json::from_str(line).map_err(|e| {
                            JobError(format!(
                                "{}:{}:{}: not a JSON value (inputs.file of {}): {e}",
                                path.display(),
                                i + 1,
                                e.column(),
                                job_path.display()
                            ))
                        })
                    }),
            ),
            Inputs::Sweep { axes, count } => {
                let mut idx = vec![0u64; axes.len()];
                Box::new((0..*count).map(move |_| {
                    let mut obj = serde_json::Map::new();
                    for (k, (name, axis)) in axes.iter().enumerate() {
                        obj.insert(name.clone(), axis.value(idx[k]));
                    }
                    // Odometer: last axis fastest.
                    for k in (0..axes.len()).rev() {
                        idx[k] += 1;
                        if idx[k] < axes[k].1.len() {
                            break;
                        }
                        idx[k] = 0;
                    }
                    Ok(serde_json::Value::Object(obj))
                }))
            }
        }
    }
}

fn default_name(abs: &Path) -> String {
    let stem = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raw = if stem == "job" {
        abs.parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or(stem)
    } else {
        stem
    };
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    // `.hidden.toml` or `ééé.toml` would begin with `-`: an id every command takes for an
    // option.
    let cleaned = cleaned.trim_start_matches('-');
    if cleaned.is_empty() {
        "job".into()
    } else {
        cleaned.to_string()
    }
}

/// Most worker slots a job may ask for.
pub const MAX_WORKERS: usize = mw::multicore::MAX_SLOTS;
pub use mw_bundle::MAX_OUTPUT_LIMIT;
/// Largest job file read (it is parsed in memory; never a device or a FIFO).
pub const MAX_JOB_FILE_BYTES: u64 = 16 << 20;
/// Largest line of an `inputs.file` (one task's input) for the count of its JSON values:
/// at most one value per 16 bytes of it.
const MAX_INPUT_LINE_BYTES: u64 = 64 << 20;
/// Largest `inputs.file` read (it is read into memory).
pub const MAX_INPUTS_FILE_BYTES: u64 = 256 << 20;
/// Largest template text, in bytes.
const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Deepest nesting of `{% %}` blocks in a template (deeper ones overflow tera's stack).
const MAX_TEMPLATE_DEPTH: usize = 32;

/// Reads a regular file of at most `limit` bytes as UTF-8: never a device (`/dev/zero`),
/// a FIFO (it would block) or an oversized file.
fn read_regular_file(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > limit {
        return Err(format!(
            "{} is {} bytes, over the limit of {} MiB",
            path.display(),
            meta.len(),
            limit >> 20
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > limit {
        return Err(format!(
            "{} grew over the limit of {} MiB",
            path.display(),
            limit >> 20
        ));
    }
    Ok(text)
}

/// A size like `8MB`, `512k`, `1GiB` or a plain number of bytes.
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// How many values `start..end` by `step` has (end exclusive), in exact arithmetic;
/// refuses a non-positive step and more than 10^7 values.
pub fn range_len(start: i64, end: i64, step: i64) -> Result<u64, String> {
    if step <= 0 {
        return Err("step must be positive".into());
    }
    let span = i128::from(end) - i128::from(start);
    if span <= 0 {
        return Ok(0);
    }
    let count = (span + i128::from(step) - 1) / i128::from(step);
    if count > 10_000_000 {
        return Err(format!(
            "range has {count} values, more than the limit of 10^7"
        ));
    }
    u64::try_from(count).map_err(|_| "range too large".to_string())
}

/// Refuses templates that would crash the renderer (too long, nested too deep) or pull in
/// other templates (macros, includes: recursion without a bound).
fn check_template(text: &str) -> Result<(), String> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "template is {} bytes, over the limit of {MAX_TEMPLATE_BYTES}",
            text.len()
        ));
    }
    let mut depth = 0usize;
    let mut rest = text;
    while let Some(i) = rest.find("{%") {
        rest = &rest[i + 2..];
        let tag = rest.trim_start_matches(['-', ' ', '\t', '\n', '\r']);
        let word: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match word.as_str() {
            "macro" | "import" | "include" | "extends" | "block" => {
                return Err(format!(
                    "`{{% {word} %}}` is not allowed in job-file templates"
                ))
            }
            "if" | "for" | "filter" | "raw" => {
                depth += 1;
                if depth > MAX_TEMPLATE_DEPTH {
                    return Err(format!(
                        "template blocks are nested more than {MAX_TEMPLATE_DEPTH} deep"
                    ));
                }
            }
            w if w.starts_with("end") => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Finds an executable on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Makes task specs from inputs, rendering the job's templates.
pub struct TaskBuilder {
    program: Arc<Program>,
    tera: tera::Tera,
    args: Vec<Template>,
    env: Vec<(String, Template)>,
    outputs: Vec<Template>,
    input_files: Vec<Template>,
    timeout: Option<Duration>,
    comparison: Comparison,
    max_output_bytes: u64,
    stdout: mw::StdoutMode,
    base_dir: PathBuf,
    job_name: String,
    /// Job file path and each template's "line:col", for render errors.
    job_path: PathBuf,
    locations: BTreeMap<String, String>,
}

impl std::fmt::Debug for TaskBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskBuilder")
    }
}

enum Template {
    Literal(String),
    Named(String),
}

/// Most values a template's `range(...)` makes.
const MAX_TEMPLATE_RANGE: usize = 10_000;

/// Most values all the `range(...)` calls of one rendering make together: a `range` inside
/// a loop is called again at every turn, so nested loops of bounded ranges would still
/// multiply into billions of turns.
const MAX_TEMPLATE_RANGE_TOTAL: usize = 100_000;

/// Most bytes one rendered field may hold: Linux's limit on one argument or environment
/// string (`MAX_ARG_STRLEN`, 32 pages), which a longer one could not pass anyway. Rendering
/// stops there, so a template's loops cannot grow the master's memory.
const MAX_RENDERED_BYTES: usize = 128 * 1024;

thread_local! {
    /// What is left of [`MAX_TEMPLATE_RANGE_TOTAL`] for the rendering on this thread
    /// (set by [`TaskBuilder::render`] before each).
    static RANGE_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_TEMPLATE_RANGE_TOTAL) };
}

/// A rendering's output, refused past [`MAX_RENDERED_BYTES`].
struct RenderedBytes(Vec<u8>);

impl std::io::Write for RenderedBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other(format!(
                "renders to more than {MAX_RENDERED_BYTES} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tera's `range(start=0, end, step_by=1)`, bounded: at most [`MAX_TEMPLATE_RANGE`] values,
/// and a `step_by` of 0 is an error (tera's own loops for ever, and a huge `end` allocates
/// until the allocator aborts).
fn bounded_range(
    args: &std::collections::HashMap<String, serde_json::Value>,
) -> tera::Result<serde_json::Value> {
    let int = |name: &str, default: Option<i64>| -> tera::Result<i64> {
        match args.get(name) {
            None => default.ok_or_else(|| tera::Error::msg(format!("range: `{name}` is required"))),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| tera::Error::msg(format!("range: `{name}` must be an integer"))),
        }
    };
    let (start, end, step) = (
        int("start", Some(0))?,
        int("end", None)?,
        int("step_by", Some(1))?,
    );
    if step < 1 {
        return Err(tera::Error::msg("range: `step_by` must be at least 1"));
    }
    let count = (i128::from(end) - i128::from(start)).max(0);
    let count = (count + i128::from(step) - 1) / i128::from(step);
    if count > MAX_TEMPLATE_RANGE as i128 {
        return Err(tera::Error::msg(format!(
            "range: {count} values, over the limit of {MAX_TEMPLATE_RANGE}"
        )));
    }
    // Within MAX_TEMPLATE_RANGE: the count fits a usize.
    let n = count as usize;
    let left = RANGE_LEFT.with(|l| l.get());
    if n > left {
        return Err(tera::Error::msg(format!(
            "range: the ranges of one rendering make over {MAX_TEMPLATE_RANGE_TOTAL} values in all"
        )));
    }
    RANGE_LEFT.with(|l| l.set(left - n));
    // In i128, as the count: `i * step` may pass i64 (the sum is in range).
    let values: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::Value::from((i128::from(start) + i * i128::from(step)) as i64))
        .collect();
    Ok(serde_json::Value::Array(values))
}

impl TaskBuilder {
    fn new(job: &Job, program: Arc<Program>) -> Result<Self, JobError> {
        let mut tera = tera::Tera::default();
        tera.register_function("range", bounded_range);
        let mut locations = BTreeMap::new();
        let mut add = |field: String, s: &Spanned<String>| -> Result<Template, JobError> {
            let text = s.get_ref();
            if !text.contains("{{") && !text.contains("{%") {
                return Ok(Template::Literal(text.clone()));
            }
            let (l, c) = line_col(&job.text, s.span().start);
            locations.insert(field.clone(), format!("{l}:{c}"));
            tera.add_raw_template(&field, text).map_err(|e| {
                let detail = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                job.err_at(s.span(), &field, format!("bad template: {e} {detail}"))
            })?;
            Ok(Template::Named(field))
        };
        let mut args = Vec::new();
        for (i, a) in job.file.args.iter().enumerate() {
            args.push(add(format!("args[{i}]"), a)?);
        }
        let mut env = Vec::new();
        for (k, v) in &job.file.env {
            env.push((k.clone(), add(format!("env.{k}"), v)?));
        }
        let mut outputs = Vec::new();
        for (i, o) in job.file.outputs.iter().enumerate() {
            outputs.push(add(format!("outputs[{i}]"), o)?);
        }
        let mut input_files = Vec::new();
        for (i, o) in job.file.input_files.iter().enumerate() {
            input_files.push(add(format!("input_files[{i}]"), o)?);
        }
        Ok(TaskBuilder {
            program,
            tera,
            args,
            env,
            outputs,
            input_files,
            timeout: job.timeout()?,
            comparison: job.comparison(),
            max_output_bytes: job.max_output_bytes()?,
            stdout: job.stdout_mode()?,
            base_dir: job.base_dir.clone(),
            job_name: job.name.clone(),
            job_path: job.path.clone(),
            locations,
        })
    }

    /// The program all tasks share.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    fn render(
        &self,
        t: &Template,
        ctx: &Option<tera::Context>,
        index: usize,
    ) -> Result<String, JobError> {
        match t {
            Template::Literal(s) => Ok(s.clone()),
            Template::Named(name) => {
                let ctx = ctx
                    .as_ref()
                    .ok_or_else(|| JobError("internal: no context".into()))?;
                RANGE_LEFT.with(|l| l.set(MAX_TEMPLATE_RANGE_TOTAL));
                let mut out = RenderedBytes(Vec::new());
                let rendered = self.tera.render_to(name, ctx, &mut out).and_then(|()| {
                    String::from_utf8(out.0)
                        .map_err(|_| tera::Error::msg("the rendering is not UTF-8"))
                });
                rendered.map_err(|e| {
                    // Every cause (a failing function's own message is two levels down).
                    let mut detail = String::new();
                    let mut cause = std::error::Error::source(&e);
                    while let Some(c) = cause {
                        detail.push_str(&format!(": {c}"));
                        cause = c.source();
                    }
                    JobError(format!(
                        "{}:{}: field `{name}`: cannot render for task {index}: {e}{detail}",
                        self.job_path.display(),
                        self.locations.get(name).map(String::as_str).unwrap_or("")
                    ))
                })
            }
        }
    }

    /// The spec of task `index` with `input`.
    pub fn build(&self, index: usize, input: serde_json::Value) -> Result<TaskSpec, JobError> {
        let needs_ctx = self
            .args
            .iter()
            .chain(self.outputs.iter())
            .chain(self.input_files.iter())
            .chain(self.env.iter().map(|(_, t)| t))
            .any(|t| matches!(t, Template::Named(..)));
        let ctx = if needs_ctx {
            let mut c = tera::Context::new();
            c.insert("input", &input);
            c.insert("index", &index);
            c.insert("job", &self.job_name);
            Some(c)
        } else {
            None
        };
        let mut spec = TaskSpec::new(self.program.clone(), input);
        for (i, a) in self.args.iter().enumerate() {
            let arg = self.render(a, &ctx, index)?;
            if arg.contains('\0') {
                return Err(JobError(format!(
                    "{}: field `args[{i}]`: task {index}: an argument cannot contain a NUL byte",
                    self.job_path.display()
                )));
            }
            spec.args.push(arg);
        }
        for (k, v) in &self.env {
            let value = self.render(v, &ctx, index)?;
            if value.contains('\0') || k.contains('\0') || k.contains('=') || k.is_empty() {
                return Err(JobError(format!(
                    "{}: field `env.{k}`: task {index}: an environment variable's name must be non-empty without `=` or NUL, its value without NUL",
                    self.job_path.display()
                )));
            }
            spec.env.insert(k.clone(), value);
        }
        for (i, o) in self.outputs.iter().enumerate() {
            let name = self.render(o, &ctx, index)?;
            mw_bundle::check_relative_path(&name).map_err(|e| {
                JobError(format!(
                    "{}: field `outputs[{i}]`: task {index}: output `{name}`: {e}",
                    self.job_path.display()
                ))
            })?;
            if self.stdout == mw::StdoutMode::File && name == mw::master::STDOUT_FILE {
                return Err(JobError(format!(
                    "{}: field `outputs[{i}]`: task {index}: an output named `{name}` would be \
                     overwritten by the stdout that `stdout = \"file\"` keeps under that name",
                    self.job_path.display()
                )));
            }
            spec.outputs.push(name);
        }
        for f in &self.input_files {
            let rel = self.render(f, &ctx, index)?;
            let path = if Path::new(&rel).is_absolute() {
                PathBuf::from(&rel)
            } else {
                self.base_dir.join(&rel)
            };
            if !path.is_file() {
                let what = if path.exists() {
                    "is not a regular file"
                } else {
                    "does not exist"
                };
                return Err(JobError(format!(
                    "{}: field `input_files`: task {index}: input file {} {what}",
                    self.job_path.display(),
                    path.display()
                )));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some((_, first)) = spec.input_files.iter().find(|(n, _)| *n == name) {
                return Err(JobError(format!(
                    "{}: field `input_files`: task {index}: input files {} and {} would both \
                     be `{name}` in the task's directory",
                    self.job_path.display(),
                    first.display(),
                    path.display()
                )));
            }
            spec.input_files.push((name, path));
        }
        spec.timeout = self.timeout;
        spec.comparison = self.comparison.clone();
        spec.max_output_bytes = self.max_output_bytes;
        spec.stdout = self.stdout;
        Ok(spec)
    }
}

#[cfg(test)]
mod sweep_tests;
