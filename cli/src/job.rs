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
    Range {
        /// First value.
        start: i64,
        /// End (exclusive).
        end: i64,
        /// Step (default 1).
        #[serde(default)]
        step: Option<i64>,
    },
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
    /// delay_bound in seconds.
    pub deadline_secs: Option<u64>,
    /// Tasks per create_work call.
    pub batch_size: Option<usize>,
}

/// The whole job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Job name (default: the job file's directory name, or its stem).
    pub name: Option<String>,
    /// Interface: multicore (default), mpi, condor, boinc.
    pub interface: Option<Spanned<String>>,
    /// Worker slots for multicore.
    pub workers: Option<usize>,
    /// The program.
    pub program: Spanned<ProgramSection>,
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
    /// A program that gets every result (JSON lines, task order) on stdin.
    pub reduce: Option<Spanned<ProgramSection>>,
    /// HTCondor settings.
    #[serde(default)]
    pub condor: CondorSection,
    /// BOINC settings.
    #[serde(default)]
    pub boinc: BoincSection,
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

/// Converts a byte offset into 1-based (line, column).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
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
        let text = std::fs::read_to_string(path)
            .map_err(|e| JobError(format!("{}: cannot read the job file: {e}", path.display())))?;
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
            JobError(format!("{}:{loc}{field} {msg}", path.display()))
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
        Ok(job)
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
            && !self.name.starts_with('.');
        if !ok {
            let msg = format!(
                "`{}` must be 1-64 characters of letters, digits, `-`, `_` or `.`, not starting with `.`",
                self.name
            );
            if self.file.name.as_deref() == Some(self.name.as_str()) {
                return Err(self.err_at(self.section_span("name"), "name", msg));
            }
            return Err(JobError(format!("job name {msg}")));
        }
        Ok(())
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
    pub fn program_from(
        &self,
        section: &Spanned<ProgramSection>,
        field: &str,
    ) -> Result<Program, JobError> {
        let s = section.get_ref();
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
                    section.span(),
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
        let Some(mode) = &self.file.program.get_ref().mode else {
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
            if let Some(o) = self.file.outputs.first() {
                return Err(self.err_at(
                    o.span(),
                    "outputs",
                    "a streaming program (program.mode = \"stream\") cannot declare output \
                     files: one process serves many tasks in one directory",
                ));
            }
            if let Some(f) = self.file.input_files.first() {
                return Err(self.err_at(
                    f.span(),
                    "input_files",
                    "a streaming program (program.mode = \"stream\") cannot take input \
                     files: one process serves many tasks in one directory",
                ));
            }
        }
        Ok(program.with_mode(parsed))
    }

    /// The reduce program, if any.
    pub fn reduce_program(&self) -> Result<Option<Program>, JobError> {
        match &self.file.reduce {
            Some(r) if r.get_ref().mode.is_some() => Err(self.err_at(
                r.get_ref().mode.as_ref().map_or(r.span(), |m| m.span()),
                "reduce.mode",
                "a reduce program always gets every result at once; it has no mode",
            )),
            Some(r) => self.program_from(r, "reduce").map(Some),
            None => Ok(None),
        }
    }

    /// Expands the inputs section into the list of task inputs.
    pub fn inputs(&self) -> Result<Vec<serde_json::Value>, JobError> {
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
            return Ok(list.clone());
        }
        if let Some(file) = &sec.file {
            let path = self.resolve(file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                self.err_at(
                    file.span(),
                    "inputs.file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    JobError(format!(
                        "{}:{}:{}: not a JSON value (inputs.file of {}): {e}",
                        path.display(),
                        i + 1,
                        e.column(),
                        self.path.display()
                    ))
                })?;
                out.push(v);
            }
            if out.is_empty() {
                return Err(self.err_at(
                    file.span(),
                    "inputs.file",
                    format!("{} holds no inputs", path.display()),
                ));
            }
            return Ok(out);
        }
        let Some(sweep) = &sec.sweep else {
            return Ok(Vec::new());
        };
        if sweep.is_empty() {
            return Err(self.err_at(
                self.section_span("inputs"),
                "inputs.sweep",
                "names no parameters: no tasks to run",
            ));
        }
        let mut axes: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
        for (name, values) in sweep {
            let vals = match values.get_ref() {
                SweepValues::List(v) => v.clone(),
                SweepValues::Range { start, end, step } => {
                    let step = step.unwrap_or(1);
                    if step <= 0 {
                        return Err(self.err_at(
                            values.span(),
                            &format!("inputs.sweep.{name}.step"),
                            "must be positive",
                        ));
                    }
                    let count = if end > start {
                        (end - start + step - 1) / step
                    } else {
                        0
                    };
                    if count > 10_000_000 {
                        return Err(self.err_at(
                            values.span(),
                            &format!("inputs.sweep.{name}"),
                            "range has more than 10^7 values",
                        ));
                    }
                    (0..count)
                        .map(|i| serde_json::Value::from(start + i * step))
                        .collect()
                }
            };
            if vals.is_empty() {
                return Err(self.err_at(
                    values.span(),
                    &format!("inputs.sweep.{name}"),
                    "is empty, so the sweep has no tasks",
                ));
            }
            axes.push((name.clone(), vals));
        }
        let total: usize = axes
            .iter()
            .map(|(_, v)| v.len())
            .try_fold(1usize, |a, b| a.checked_mul(b))
            .unwrap_or(usize::MAX);
        if total > 50_000_000 {
            return Err(self.err_at(
                self.section_span("inputs"),
                "inputs.sweep",
                format!("expands to {total} tasks, over the limit of 5*10^7"),
            ));
        }
        let mut out = Vec::with_capacity(total);
        let mut idx = vec![0usize; axes.len()];
        for _ in 0..total {
            let mut obj = serde_json::Map::new();
            for (k, (name, vals)) in axes.iter().enumerate() {
                obj.insert(name.clone(), vals[idx[k]].clone());
            }
            out.push(serde_json::Value::Object(obj));
            // Odometer: last axis fastest.
            for k in (0..axes.len()).rev() {
                idx[k] += 1;
                if idx[k] < axes[k].1.len() {
                    break;
                }
                idx[k] = 0;
            }
        }
        Ok(out)
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
    if cleaned.is_empty() {
        "job".into()
    } else {
        cleaned
    }
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

impl TaskBuilder {
    fn new(job: &Job, program: Arc<Program>) -> Result<Self, JobError> {
        let mut tera = tera::Tera::default();
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
                self.tera.render(name, ctx).map_err(|e| {
                    let detail = std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    JobError(format!(
                        "{}:{}: field `{name}`: cannot render for task {index}: {e} {detail}",
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
        for a in &self.args {
            spec.args.push(self.render(a, &ctx, index)?);
        }
        for (k, v) in &self.env {
            spec.env.insert(k.clone(), self.render(v, &ctx, index)?);
        }
        for o in &self.outputs {
            let name = self.render(o, &ctx, index)?;
            mw_bundle::check_relative_path(&name)
                .map_err(|e| JobError(format!("task {index}: output `{name}`: {e}")))?;
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
                return Err(JobError(format!(
                    "task {index}: input file {} does not exist",
                    path.display()
                )));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            spec.input_files.push((name, path));
        }
        spec.timeout = self.timeout;
        spec.comparison = self.comparison.clone();
        Ok(spec)
    }
}
