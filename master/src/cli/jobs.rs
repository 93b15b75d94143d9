//! The commands researchers live in between runs: `mw status`, `mw results`, `mw wait`,
//! `mw cancel`, `mw report`. They read the job journal (read-only, except `cancel`), so they
//! work whether the job's master is alive, dead or finished.

use super::run::{find_job_dir, jobs_root};
use super::{EXIT_OK, EXIT_TASKS_FAILED};
use crate::journal::{open_checked, read_meta, read_tasks, JobMeta, StoredTask, JOURNAL_FILE};
use crate::master::TaskState;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rusqlite::params;
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
    let conn = open_checked(&dir.join(JOURNAL_FILE), false)?;
    let (pid, host, status): (Option<i64>, Option<String>, String) = conn
        .query_row("SELECT master_pid, master_host, status FROM job", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .context("reading the job row")?;
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
            let unfinished: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM tasks WHERE state IN ('queued','running')",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0);
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
    loop {
        let conn = open_checked(&path, false)?;
        let tasks = read_tasks(&conn, &path, None)?;
        drop(conn);
        let unfinished = tasks.iter().filter(|t| !t.state.is_final()).count();
        // Every task has an outcome; a master still alive is finishing up (reduce), so
        // wait for it to exit too.
        if unfinished == 0 && live_master_pid(&dir)?.is_none() {
            let bad = tasks.iter().filter(|t| t.state != TaskState::Done).count();
            if bad > 0 {
                eprintln!("mw: {bad} of {} tasks did not succeed", tasks.len());
                return Ok(EXIT_TASKS_FAILED);
            }
            // The reduce program's output, when a detached master ran it.
            if let Ok(out) = std::fs::read(dir.join("reduce.out")) {
                std::io::stdout().write_all(&out)?;
            }
            return Ok(EXIT_OK);
        }
        if unfinished == 0 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if live_master_pid(&dir)?.is_none() {
            // Re-check: the master may have finished between the two reads.
            let conn = open_checked(&path, false)?;
            let still = read_tasks(&conn, &path, None)?
                .iter()
                .filter(|t| !t.state.is_final())
                .count();
            if still > 0 {
                bail!(
                    "job {}: {still} tasks unfinished and no master is running; start one with `mw resume {}`",
                    dir.display(),
                    dir.display()
                );
            }
            continue;
        }
        // Polling another process's journal: there is nothing to block on.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `mw cancel`.
pub(crate) fn cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let dir = find_job_dir(&args.job, args.jobs_dir.as_deref())?;
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, true)?;
    if let Some(t) = args.task {
        let exists: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE idx = ?1",
                params![t as i64],
                |r| r.get(0),
            )
            .context("reading tasks")?;
        if exists == 0 {
            bail!("job {}: there is no task {t}", dir.display());
        }
    }
    match live_master_pid(&dir)? {
        Some(pid) => {
            conn.execute(
                "INSERT INTO cancel_requests (task, at) VALUES (?1, ?2)",
                params![args.task.map(|t| t as i64), now_unix()],
            )
            .context("recording the cancel request")?;
            eprintln!(
                "mw: cancel requested; the running master (pid {pid}) stops {} within a second",
                match args.task {
                    Some(t) => format!("task {t}"),
                    None => "every unfinished task".into(),
                }
            );
        }
        None => {
            // No master: stop what runs on BOINC by its recorded workunit names, then mark
            // unfinished tasks cancelled directly.
            cancel_boinc_workunits(&conn, &path, args.task)?;
            let n = conn
                .execute(
                    "UPDATE tasks SET state = 'cancelled', exit = 'cancelled', error = 'task ' || idx || ' was cancelled', finished = ?2
                     WHERE state IN ('queued','running') AND (?1 IS NULL OR idx = ?1)",
                    params![args.task.map(|t| t as i64), now_unix()],
                )
                .context("cancelling tasks")?;
            conn.execute(
                "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, 'cancelled', 'mw cancel without a running master')",
                params![now_unix(), args.task.map(|t| t as i64)],
            )
            .context("recording the cancel")?;
            eprintln!("mw: {n} tasks cancelled");
        }
    }
    Ok(EXIT_OK)
}

/// `mw cancel` with no master for a BOINC job: cancels the workunits of its unfinished
/// tasks in the project (`bin/cancel_jobs` by the names the journal recorded).
fn cancel_boinc_workunits(
    conn: &rusqlite::Connection,
    path: &Path,
    task: Option<u64>,
) -> anyhow::Result<()> {
    let meta = read_meta(conn, path)?;
    if meta.interface != "boinc" {
        return Ok(());
    }
    let handles: Vec<String> = read_tasks(conn, path, None)?
        .into_iter()
        .filter(|t| !t.state.is_final() && task.map_or(true, |n| n == t.index))
        .filter_map(|t| t.handle)
        .collect();
    if handles.is_empty() {
        return Ok(());
    }
    let job = crate::job::Job::parse(Path::new(&meta.job_path), meta.job_text.clone())?;
    let settings = job
        .file
        .boinc
        .to_settings(&job.base_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", meta.job_path))?;
    for (handle, how) in crate::boinc::cancel_workunits(&settings.project_dir, &handles)? {
        eprintln!("mw: BOINC workunit {handle}: {how}");
    }
    Ok(())
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
