//! The commands researchers live in between runs: `mw status`, `mw results`, `mw wait`,
//! `mw cancel`, `mw report`. They read the job journal (read-only, except `cancel`), so they
//! work whether the job's master is alive, dead or finished.

use crate::run::{find_job_dir, jobs_root};
use crate::{EXIT_OK, EXIT_TASKS_FAILED};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use mw::journal::{
    cancel_acknowledged, cancel_without_master, count_unfinished, data_version, master_running,
    open_checked, read_master, read_meta, read_tasks, request_cancel, state_counts, task_exists,
    JobMeta, MasterRecord, StoredTask, JOURNAL_FILE,
};
use mw::master::TaskState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `mw status` arguments.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// A job id or directory; without it, every job is listed.
    pub(crate) job: Option<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Directory holding job directories (default: $MW_JOBS_DIR or ./mw-jobs).
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

/// Formats for `mw results`.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum ResultsFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header.
    Csv,
}

/// `mw results` arguments.
#[derive(Args, Debug)]
pub(crate) struct ResultsArgs {
    /// A job id or directory.
    pub(crate) job: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub(crate) format: ResultsFormat,
    /// Only failed and cancelled tasks.
    #[arg(long)]
    pub(crate) failed: bool,
    /// Directory holding job directories.
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

/// `mw wait` arguments.
#[derive(Args, Debug)]
pub(crate) struct WaitArgs {
    /// A job id or directory.
    pub(crate) job: String,
    /// Directory holding job directories.
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

/// `mw cancel` arguments.
#[derive(Args, Debug)]
pub(crate) struct CancelArgs {
    /// A job id or directory.
    pub(crate) job: String,
    /// Cancel only this task (by index); default: every unfinished task.
    #[arg(long)]
    pub(crate) task: Option<u64>,
    /// Directory holding job directories.
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

/// `mw report` arguments.
#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// A job id or directory.
    pub(crate) job: String,
    /// Output file (.html or .svg); default: <job dir>/report.html.
    #[arg(long, short = 'o')]
    pub(crate) output: Option<PathBuf>,
    /// Directory holding job directories.
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// True when `pid` is a live (not zombie) `mw` process on this host. A killed master that
/// is not reaped yet, or an unrelated process that reused the pid, does not count.
fn pid_alive(pid: i64) -> bool {
    if pid <= 0 || pid > i32::MAX as i64 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name: "pid (comm) S ...".
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    if state == "Z" || state == "X" {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or(&[]);
    let name = std::path::Path::new(std::ffi::OsStr::new(
        std::str::from_utf8(argv0).unwrap_or(""),
    ))
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
    name == "mw"
}

/// The pid of a live master of this job on this host, if any.
pub(crate) fn live_master_pid(dir: &Path) -> anyhow::Result<Option<i64>> {
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let rec = read_master(&conn, &path)?;
    // The job's lock says for sure (any master, also a library program's); the pid check
    // covers the instant between `mw submit` and its detached master taking the lock.
    if master_running(dir) {
        return Ok(Some(rec.pid.unwrap_or(0)));
    }
    live_master_in(&rec)
}

/// The pid of the live master a job row names, if it runs on this host.
fn live_master_in(rec: &MasterRecord) -> anyhow::Result<Option<i64>> {
    let MasterRecord { pid, host, status } = rec.clone();
    if status != "running" {
        return Ok(None);
    }
    let here = mw_worker_runtime::exec::host_name();
    match (pid, host) {
        (Some(pid), Some(h)) if h == here && pid_alive(pid) => Ok(Some(pid)),
        _ => Ok(None),
    }
}

/// A job submitted with the same name and text that is not finished, if any.
pub(crate) fn unfinished_job_with_text(root: &Path, name: &str, text: &str) -> Option<String> {
    for dir in job_dirs(root) {
        let Ok(conn) = open_checked(&dir.join(JOURNAL_FILE), false) else {
            continue;
        };
        let Ok(meta) = read_meta(&conn, &dir) else {
            continue;
        };
        if meta.name == name && meta.job_text == text {
            let unfinished = count_unfinished(&conn, &dir.join(JOURNAL_FILE)).unwrap_or(0);
            if unfinished > 0 {
                return Some(meta.id);
            }
        }
    }
    None
}

fn job_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join(JOURNAL_FILE).is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[derive(Serialize)]
struct JobSummary {
    id: String,
    name: String,
    interface: String,
    state: String,
    tasks: usize,
    counts: BTreeMap<String, usize>,
    created: f64,
    age_secs: f64,
    dir: String,
    /// Pid of the live master on this host, if one runs.
    master_pid: Option<i64>,
}

fn job_state(dir: &Path, tasks: &[StoredTask]) -> String {
    let unfinished = tasks.iter().any(|t| !t.state.is_final());
    if !unfinished {
        if tasks.iter().all(|t| t.state == TaskState::Done) {
            "finished".into()
        } else {
            "finished with failures".into()
        }
    } else if live_master_pid(dir).ok().flatten().is_some() {
        "running".into()
    } else {
        "stopped (mw resume)".into()
    }
}

fn summarize(dir: &Path) -> anyhow::Result<(JobMeta, Vec<StoredTask>, JobSummary)> {
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let meta = read_meta(&conn, &path)?;
    let tasks = read_tasks(&conn, &path, None)?;
    let mut counts = BTreeMap::new();
    for s in ["queued", "running", "done", "failed", "cancelled"] {
        counts.insert(s.to_string(), 0);
    }
    for t in &tasks {
        *counts.entry(t.state.as_str().to_string()).or_insert(0) += 1;
    }
    let summary = JobSummary {
        id: meta.id.clone(),
        name: meta.name.clone(),
        interface: meta.interface.clone(),
        state: job_state(dir, &tasks),
        tasks: tasks.len(),
        counts,
        created: meta.created,
        age_secs: (now_unix() - meta.created).max(0.0),
        dir: dir.display().to_string(),
        master_pid: live_master_pid(dir).ok().flatten(),
    };
    Ok((meta, tasks, summary))
}

fn human_age(secs: f64) -> String {
    let s = secs as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86400 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{}h", s / 86400, (s % 86400) / 3600)
    }
}

/// `mw status`.
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match &args.job {
        None => {
            let root = jobs_root(args.jobs_dir.as_deref());
            let mut rows = Vec::new();
            let mut problems = Vec::new();
            for dir in job_dirs(&root) {
                match summarize(&dir) {
                    Ok((_, _, s)) => rows.push(s),
                    Err(e) => problems.push(format!("{e:#}")),
                }
            }
            if args.json {
                let doc = serde_json::json!({"jobs": rows, "errors": problems});
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<16} {:<10} {:<22} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}",
                    "ID",
                    "NAME",
                    "INTERFACE",
                    "STATE",
                    "TASKS",
                    "QUEUED",
                    "RUNNING",
                    "DONE",
                    "FAILED",
                    "AGE"
                )?;
                for r in &rows {
                    writeln!(
                        out,
                        "{:<24} {:<16} {:<10} {:<22} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}",
                        r.id,
                        r.name,
                        r.interface,
                        r.state,
                        r.tasks,
                        r.counts["queued"],
                        r.counts["running"],
                        r.counts["done"],
                        r.counts["failed"] + r.counts["cancelled"],
                        human_age(r.age_secs)
                    )?;
                }
                if rows.is_empty() {
                    writeln!(out, "(no jobs under {})", root.display())?;
                }
                for p in problems {
                    eprintln!("mw: {p}");
                }
            }
            Ok(EXIT_OK)
        }
        Some(job) => {
            let dir = find_job_dir(job, args.jobs_dir.as_deref())?;
            let (_, tasks, summary) = summarize(&dir)?;
            let mut slowest: Vec<&StoredTask> = tasks
                .iter()
                .filter(|t| t.state == TaskState::Done)
                .collect();
            slowest.sort_by(|a, b| b.wall_secs.total_cmp(&a.wall_secs));
            slowest.truncate(5);
            let failed: Vec<&StoredTask> = tasks
                .iter()
                .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Cancelled))
                .take(20)
                .collect();
            if args.json {
                let doc = serde_json::json!({
                    "job": summary,
                    "slowest": slowest.iter().map(|t| serde_json::json!({"task": t.index, "wall_secs": t.wall_secs, "host": t.host})).collect::<Vec<_>>(),
                    "failed": failed.iter().map(|t| serde_json::json!({"task": t.index, "state": t.state.as_str(), "exit": t.exit, "error": t.error})).collect::<Vec<_>>(),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                writeln!(out, "job        {}", summary.id)?;
                writeln!(out, "interface  {}", summary.interface)?;
                writeln!(out, "state      {}", summary.state)?;
                writeln!(out, "directory  {}", summary.dir)?;
                writeln!(out, "age        {}", human_age(summary.age_secs))?;
                writeln!(out, "tasks      {}", summary.tasks)?;
                for (k, v) in &summary.counts {
                    writeln!(out, "  {k:<10} {v}")?;
                }
                if !slowest.is_empty() {
                    writeln!(out, "slowest tasks:")?;
                    for t in &slowest {
                        writeln!(
                            out,
                            "  task {:<8} {:>10.3}s  {}",
                            t.index, t.wall_secs, t.host
                        )?;
                    }
                }
                if !failed.is_empty() {
                    writeln!(out, "failed or cancelled tasks:")?;
                    for t in &failed {
                        let err = t.error.clone().unwrap_or_default();
                        let first = err.lines().next().unwrap_or("");
                        writeln!(out, "  task {:<8} {}", t.index, first)?;
                    }
                }
            }
            Ok(EXIT_OK)
        }
    }
}

fn stored_line(t: &StoredTask) -> super::ResultLine {
    super::ResultLine {
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
        submitted: t.submitted,
        started: t.started,
        finished: t.finished,
        output_files: t.output_files.clone(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `mw results`.
pub(crate) fn results(args: ResultsArgs) -> anyhow::Result<i32> {
    let dir = find_job_dir(&args.job, args.jobs_dir.as_deref())?;
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let tasks = read_tasks(&conn, &path, None)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if matches!(args.format, ResultsFormat::Csv) {
        writeln!(
            out,
            "task,state,input,output,exit,error,wall_secs,cpu_secs,host,attempts"
        )?;
    }
    for t in &tasks {
        let finalish = t.state.is_final();
        if !finalish {
            continue;
        }
        if args.failed && t.state == TaskState::Done {
            continue;
        }
        let line = stored_line(t);
        match args.format {
            ResultsFormat::Jsonl => {
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            ResultsFormat::Csv => {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    line.task,
                    line.state,
                    csv_field(&line.input.to_string()),
                    csv_field(&line.output.to_string()),
                    csv_field(&line.exit),
                    csv_field(line.error.as_deref().unwrap_or("")),
                    line.wall_secs,
                    line.cpu_secs,
                    csv_field(&line.host),
                    line.attempts
                )?;
            }
        }
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// `mw wait`: blocks until every task of the job has an outcome.
pub(crate) fn wait(args: WaitArgs) -> anyhow::Result<i32> {
    let dir = find_job_dir(&args.job, args.jobs_dir.as_deref())?;
    let path = dir.join(JOURNAL_FILE);
    // One connection for the whole wait; the tasks are counted again only when another
    // connection committed something (SQLite's data_version), so waiting on a job of a
    // million tasks costs a few cheap reads a second, not a scan.
    let conn = open_checked(&path, false)?;
    let mut seen_version: Option<i64> = None;
    let mut counts = state_counts(&conn, &path)?;
    loop {
        let version = data_version(&conn, &path)?;
        if seen_version != Some(version) {
            counts = state_counts(&conn, &path)?;
            seen_version = Some(version);
        }
        let master_alive =
            master_running(&dir) || live_master_in(&read_master(&conn, &path)?)?.is_some();
        // Every task has an outcome; a master still alive is finishing up (reduce), so
        // wait for it to exit too.
        if counts.unfinished == 0 && !master_alive {
            let total = counts.done + counts.failed + counts.cancelled;
            let bad = counts.failed + counts.cancelled;
            if bad > 0 {
                eprintln!("mw: {bad} of {total} tasks did not succeed");
                return Ok(EXIT_TASKS_FAILED);
            }
            // The reduce program's output, when a detached master ran it.
            if let Ok(out) = std::fs::read(dir.join("reduce.out")) {
                std::io::stdout().write_all(&out)?;
            }
            return Ok(EXIT_OK);
        }
        if counts.unfinished > 0 && !master_alive {
            // Re-check: the master may have finished between the two reads.
            let still = state_counts(&conn, &path)?.unfinished;
            if still > 0 {
                bail!(
                    "job {}: {still} tasks unfinished and no master is running; start one with `mw resume {}`",
                    dir.display(),
                    dir.display()
                );
            }
            continue;
        }
        // Another process's journal: nothing to block on, so a cheap poll.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many 20 ms polls `mw cancel` waits for a live master's acknowledgement (10 s).
const CANCEL_ACK_POLLS: u32 = 500;

/// `mw cancel`.
pub(crate) fn cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let dir = find_job_dir(&args.job, args.jobs_dir.as_deref())?;
    let path = dir.join(JOURNAL_FILE);
    let mut conn = open_checked(&path, true)?;
    if let Some(t) = args.task {
        if !task_exists(&conn, &path, t)? {
            bail!("job {}: there is no task {t}", dir.display());
        }
    }
    match live_master_pid(&dir)? {
        Some(pid) => {
            let req = request_cancel(&conn, &path, args.task, now_unix())?;
            let what = match args.task {
                Some(t) => format!("task {t}"),
                None => "every unfinished task".into(),
            };
            // The master applies requests at least every 200 ms and acknowledges them once
            // applied: from then on no cancelled task starts. Wait for that (bounded).
            for _ in 0..CANCEL_ACK_POLLS {
                if cancel_acknowledged(&conn, &path, req)? {
                    eprintln!("mw: cancelled {what} (master pid {pid})");
                    return Ok(EXIT_OK);
                }
                if live_master_pid(&dir)?.is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "mw: cancel of {what} requested; the master (pid {pid}) has not acknowledged it yet \
                 (`mw status` shows when it has)"
            );
        }
        None => {
            // No master: mark unfinished tasks cancelled directly.
            let n = cancel_without_master(&mut conn, &path, args.task, now_unix())?;
            eprintln!("mw: {n} tasks cancelled");
        }
    }
    Ok(EXIT_OK)
}

/// `mw report`.
pub(crate) fn report(args: ReportArgs) -> anyhow::Result<i32> {
    let dir = find_job_dir(&args.job, args.jobs_dir.as_deref())?;
    let (meta, tasks, _) = summarize(&dir)?;
    let out = args.output.unwrap_or_else(|| dir.join("report.html"));
    let svg = super::report::render_svg(&meta, &tasks);
    let text = if out.extension().and_then(|e| e.to_str()) == Some("svg") {
        svg
    } else {
        super::report::render_html(&meta, &tasks, &svg)
    };
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(EXIT_OK)
}
