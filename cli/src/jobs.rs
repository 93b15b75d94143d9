//! The commands researchers live in between runs: `mw status`, `mw results`, `mw logs`,
//! `mw wait`, `mw cancel`, `mw report`. They read the job journal (read-only, except
//! `cancel`), so they work whether the job's master is alive, dead or finished.

use crate::run::{find_job_dir, jobs_root, JobRef};
use crate::{EXIT_OK, EXIT_TASKS_FAILED};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use mw::journal::{
    cancel_acknowledged, count_unfinished, data_version, master_running, open_checked, read_events,
    read_master, read_meta, read_pending_cancels, read_task, read_tasks, request_cancel,
    settle_cancels_without_master, state_counts, JobMeta, MasterRecord, StoredTask, JOURNAL_FILE,
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
    /// List only jobs in this state.
    #[arg(long, value_enum)]
    pub(crate) state: Option<JobStateFilter>,
    /// List only jobs whose name contains this text.
    #[arg(long)]
    pub(crate) name: Option<String>,
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
    #[command(flatten)]
    pub(crate) at: JobRef,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub(crate) format: ResultsFormat,
    /// Only failed and cancelled tasks.
    #[arg(long)]
    pub(crate) failed: bool,
    /// Only this task (repeatable: `--task 3 --task 7`).
    #[arg(long, value_name = "N")]
    pub(crate) task: Vec<u64>,
}

/// Streams `mw logs` prints.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both, each under a header line.
    Both,
}

/// `mw logs` arguments.
#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    pub(crate) at: JobRef,
    /// The task (its index).
    pub(crate) task: u64,
    /// Which attempt (default: the last).
    #[arg(long)]
    pub(crate) attempt: Option<u32>,
    /// Which stream.
    #[arg(long, value_enum, default_value = "both")]
    pub(crate) stream: LogStream,
}

/// `mw wait` arguments.
#[derive(Args, Debug)]
pub(crate) struct WaitArgs {
    #[command(flatten)]
    pub(crate) at: JobRef,
    /// Give up after this many seconds (exit 3), leaving the job running.
    #[arg(long, value_name = "SECS")]
    pub(crate) timeout: Option<f64>,
}

/// `mw cancel` arguments.
#[derive(Args, Debug)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    pub(crate) at: JobRef,
    /// Cancel only this task (by index); default: every unfinished task.
    #[arg(long)]
    pub(crate) task: Option<u64>,
}

/// `mw report` arguments.
#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    pub(crate) at: JobRef,
    /// Output file (.html or .svg); default: <job dir>/report.html.
    #[arg(long, short = 'o')]
    pub(crate) output: Option<PathBuf>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// True when `pid` is a live (not zombie) process on this host that is the detached master
/// of the job in `dir`: `mw submit` starts it as `mw … resume <dir>`, so one of its arguments
/// is that directory. A killed master that is not reaped yet, or any other process that
/// reused the pid (another job's master too), does not count.
fn pid_alive(pid: i64, dir: &Path) -> bool {
    if pid <= 0 || pid > i32::MAX as i64 {
        return false;
    }
    if !process_running(pid) {
        return false;
    }
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    cmdline.split(|b| *b == 0).skip(1).any(|arg| {
        let arg = Path::new(std::ffi::OsStr::from_bytes(arg));
        arg.is_absolute() && std::fs::canonicalize(arg).is_ok_and(|a| a == dir)
    })
}

/// The pid of a live master of this job on this host, if any.
pub(crate) fn live_master_pid(dir: &Path) -> anyhow::Result<Option<i64>> {
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let rec = read_master(&conn, &path)?;
    // The job's lock says for sure (any master, also a library program's); the pid check
    // covers the instant between `mw submit` and its detached master taking the lock.
    if lock_held_by_a_live_master(dir, &rec) {
        return Ok(Some(rec.pid.unwrap_or(0)));
    }
    live_master_in(&rec, dir)
}

/// The lock is held, and not only by a master that is already dead: a killed process's
/// thread-group leader turns zombie while its other threads still hold its files (the lock
/// among them) for a moment.
fn lock_held_by_a_live_master(dir: &Path, rec: &MasterRecord) -> bool {
    if !master_running(dir) {
        return false;
    }
    let here = mw_worker_runtime::exec::host_name();
    match (rec.pid, rec.host.as_deref()) {
        (Some(pid), Some(h)) if h == here => process_running(pid),
        _ => true,
    }
}

/// True when `pid` exists and is not a zombie (any program: a library master too).
fn process_running(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name: "pid (comm) S ...".
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    !(state == "Z" || state == "X")
}

/// The pid of the live master a job row names, if it runs on this host (the detached master
/// of the job in `dir`, before it holds the job's lock).
fn live_master_in(rec: &MasterRecord, dir: &Path) -> anyhow::Result<Option<i64>> {
    let MasterRecord { pid, host, status } = rec.clone();
    if status != "running" {
        return Ok(None);
    }
    let here = mw_worker_runtime::exec::host_name();
    match (pid, host) {
        (Some(pid), Some(h)) if h == here && pid_alive(pid, dir) => Ok(Some(pid)),
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
            let journal = dir.join(JOURNAL_FILE);
            let unfinished = count_unfinished(&conn, &journal).unwrap_or(0);
            // (A job still recording its tasks may have none yet.)
            let recording = read_master(&conn, &journal)
                .is_ok_and(|m| m.status == crate::run::STATUS_RECORDING);
            if unfinished > 0 || recording {
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
    /// Why its last master stopped before every task had an outcome (a stopped job only).
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<String>,
}

/// Job states `mw status --state` selects.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStateFilter {
    /// A master is running it.
    Running,
    /// Unfinished, and no master runs it (`mw resume` restarts one).
    Stopped,
    /// Every task done.
    Finished,
    /// Every task has an outcome, some failed.
    Failed,
    /// Every task has an outcome, none failed, some were cancelled.
    Cancelled,
}

const STATE_FINISHED: &str = "finished";
const STATE_FAILURES: &str = "finished with failures";
const STATE_CANCELLED: &str = "cancelled";
const STATE_RUNNING: &str = "running";
const STATE_STOPPED: &str = "stopped (mw resume)";

impl JobStateFilter {
    fn matches(self, state: &str) -> bool {
        state
            == match self {
                JobStateFilter::Running => STATE_RUNNING,
                JobStateFilter::Stopped => STATE_STOPPED,
                JobStateFilter::Finished => STATE_FINISHED,
                JobStateFilter::Failed => STATE_FAILURES,
                JobStateFilter::Cancelled => STATE_CANCELLED,
            }
    }
}

/// A job's state word: a failure anywhere makes it "finished with failures"; a job whose
/// only unsuccessful tasks were cancelled is "cancelled". A job whose tasks are still being
/// recorded (`recording`) is unfinished however few it holds yet.
fn job_state(dir: &Path, counts: &[(TaskState, u64)], recording: bool) -> String {
    let count = |state: TaskState| {
        counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    let unfinished = recording || count(TaskState::Queued) + count(TaskState::Running) > 0;
    if !unfinished {
        if count(TaskState::Failed) > 0 {
            STATE_FAILURES.into()
        } else if count(TaskState::Cancelled) > 0 {
            STATE_CANCELLED.into()
        } else {
            STATE_FINISHED.into()
        }
    } else if live_master_pid(dir).ok().flatten().is_some() {
        STATE_RUNNING.into()
    } else {
        STATE_STOPPED.into()
    }
}

/// The width of the terminal on stdout, if stdout is one.
fn terminal_width() -> Option<u16> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only fills the winsize struct we pass, which lives on our stack.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        Some(ws.ws_col)
    } else {
        None
    }
}

/// A plain, aligned table (no borders) that wraps its widest columns to fit the terminal.
fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.iter().copied());
    match terminal_width() {
        Some(w) => {
            t.set_width(w);
            t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
        }
        None => {
            t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        }
    }
    t
}

/// A job's summary, from counts in the journal (never every task: a job may hold millions).
fn summarize(dir: &Path) -> anyhow::Result<(JobMeta, JobSummary)> {
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let meta = read_meta(&conn, &path)?;
    let each = mw::journal::count_each_state(&conn, &path)?;
    let total: u64 = each.iter().map(|(_, n)| n).sum();
    let mut counts = BTreeMap::new();
    for (state, n) in &each {
        counts.insert(
            state.as_str().to_string(),
            usize::try_from(*n).unwrap_or(usize::MAX),
        );
    }
    let master_pid = live_master_pid(dir).ok().flatten();
    // A pool (HTCondor) says which of the tasks handed to it wait in its queue.
    if let Some(pool) = crate::pool::read(dir, master_pid) {
        let handed = counts.get("running").copied().unwrap_or(0);
        let (idle, running) = pool.split(u64::try_from(handed).unwrap_or(0));
        counts.insert("idle".into(), usize::try_from(idle).unwrap_or(0));
        counts.insert("running".into(), usize::try_from(running).unwrap_or(handed));
    }
    let state = job_state(
        dir,
        &each,
        read_master(&conn, &path).is_ok_and(|m| m.status == crate::run::STATUS_RECORDING),
    );
    let stop_reason = if state == STATE_STOPPED {
        mw::journal::stop_reason(&conn, &path)?
    } else {
        None
    };
    let summary = JobSummary {
        id: meta.id.clone(),
        name: meta.name.clone(),
        interface: meta.interface.clone(),
        state,
        tasks: usize::try_from(total).unwrap_or(usize::MAX),
        counts,
        created: meta.created,
        age_secs: (now_unix() - meta.created).max(0.0),
        dir: dir.display().to_string(),
        master_pid,
        stop_reason,
    };
    Ok((meta, summary))
}

/// Text from a journal or the filesystem as `mw status` shows it: one line, its control
/// characters escaped.
fn shown(text: &str) -> String {
    mw_bundle::text::escape_controls_one_line(text).into_owned()
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
            // A jobs directory that exists but cannot be read is an error, not "no jobs".
            if let Err(e) = std::fs::read_dir(&root) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    bail!("cannot list the jobs under {}: {e}", root.display());
                }
            }
            for dir in job_dirs(&root) {
                match summarize(&dir) {
                    Ok((_, s)) => rows.push(s),
                    Err(e) => problems.push(format!("{e:#}")),
                }
            }
            rows.retain(|r| {
                let state_ok = args.state.map(|f| f.matches(&r.state)).unwrap_or(true);
                let name_ok = args
                    .name
                    .as_deref()
                    .map(|n| r.name.contains(n))
                    .unwrap_or(true);
                state_ok && name_ok
            });
            if args.json {
                let doc = serde_json::json!({"jobs": rows, "errors": problems});
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                // IDLE (waiting in a pool's queue) only when a live pool job reports it.
                let with_idle = rows.iter().any(|r| r.counts.contains_key("idle"));
                let mut header = vec!["ID", "NAME", "INTERFACE", "STATE", "TASKS", "QUEUED"];
                if with_idle {
                    header.push("IDLE");
                }
                header.extend(["RUNNING", "DONE", "FAILED", "CANCELLED", "AGE"]);
                let mut t = table(&header);
                let count = |r: &JobSummary, k: &str| {
                    r.counts
                        .get(k)
                        .map_or_else(|| "-".to_string(), |n| n.to_string())
                };
                for r in &rows {
                    // What the journal holds is shown escaped, newlines too: a name could
                    // otherwise drive the terminal or break the table's rows.
                    let mut row = vec![
                        shown(&r.id),
                        shown(&r.name),
                        shown(&r.interface),
                        r.state.clone(),
                        r.tasks.to_string(),
                        count(r, "queued"),
                    ];
                    if with_idle {
                        row.push(count(r, "idle"));
                    }
                    row.extend([
                        count(r, "running"),
                        count(r, "done"),
                        count(r, "failed"),
                        count(r, "cancelled"),
                        human_age(r.age_secs),
                    ]);
                    t.add_row(row);
                }
                for i in 0..header.len() {
                    if let Some(c) = t.column_mut(i) {
                        // Flush left, two spaces between columns, counts right-aligned.
                        c.set_padding((0, 2));
                        if i >= 4 {
                            c.set_cell_alignment(comfy_table::CellAlignment::Right);
                        }
                    }
                }
                if rows.is_empty() {
                    writeln!(
                        out,
                        "(no jobs under {}{})",
                        shown(&root.display().to_string()),
                        if args.state.is_some() || args.name.is_some() {
                            " that match"
                        } else {
                            ""
                        }
                    )?;
                } else {
                    writeln!(out, "{t}")?;
                }
                for p in problems {
                    say!("mw: {p}");
                }
            }
            Ok(EXIT_OK)
        }
        Some(job) => {
            let dir = find_job_dir(job, args.jobs_dir.as_deref())?;
            let (_, summary) = summarize(&dir)?;
            let (slowest, failed) = {
                let path = dir.join(JOURNAL_FILE);
                let conn = open_checked(&path, false)?;
                (
                    mw::journal::slowest_done(&conn, &path, 5)?,
                    mw::journal::first_unsuccessful(&conn, &path, 20)?,
                )
            };
            if args.json {
                let doc = serde_json::json!({
                    "job": summary,
                    "slowest": slowest.iter().map(|(task, wall, host)| serde_json::json!({"task": task, "wall_secs": wall, "host": host})).collect::<Vec<_>>(),
                    "failed": failed.iter().map(|t| serde_json::json!({"task": t.index, "state": t.state.as_str(), "exit": t.exit, "error": t.error})).collect::<Vec<_>>(),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                // What the journal and the filesystem hold is shown escaped, newlines too.
                writeln!(out, "job        {}", shown(&summary.id))?;
                writeln!(out, "interface  {}", shown(&summary.interface))?;
                writeln!(out, "state      {}", summary.state)?;
                if let Some(why) = &summary.stop_reason {
                    writeln!(out, "stopped    {}", shown(why))?;
                }
                writeln!(out, "directory  {}", shown(&summary.dir))?;
                writeln!(out, "age        {}", human_age(summary.age_secs))?;
                writeln!(out, "tasks      {}", summary.tasks)?;
                for (k, v) in &summary.counts {
                    writeln!(out, "  {k:<10} {v}")?;
                }
                if !slowest.is_empty() {
                    writeln!(out, "slowest tasks:")?;
                    for (task, wall, host) in &slowest {
                        // (A host name is what the worker said of itself.)
                        let host = shown(host);
                        writeln!(out, "  task {task:<8} {wall:>10.3}s  {host}")?;
                    }
                }
                if !failed.is_empty() {
                    writeln!(out, "failed or cancelled tasks:")?;
                    for t in &failed {
                        let err = t.error.clone().unwrap_or_default();
                        let reason = crate::output::failure_reason(&err);
                        writeln!(out, "  task {:<8} {}", t.index, reason)?;
                    }
                    // Named as a plain `mw … ID` finds it (a path for a job under
                    // --jobs-dir); `mw retry` refuses a job whose master still runs.
                    let id = crate::run::job_arg(&summary.id, &dir);
                    let when = if summary.state == STATE_RUNNING {
                        " once the job has ended (mw wait)"
                    } else {
                        ""
                    };
                    writeln!(
                        out,
                        "(all of them: mw results {id} --failed; a task's output: mw logs {id} TASK; \
                         run them again{when}: mw retry {id})",
                        id = shown(&id)
                    )?;
                }
            }
            Ok(EXIT_OK)
        }
    }
}

/// `mw results`.
pub(crate) fn results(args: ResultsArgs) -> anyhow::Result<i32> {
    let dir = args.at.dir()?;
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let wanted =
        |t: &StoredTask| t.state.is_final() && !(args.failed && t.state == TaskState::Done);
    if args.task.is_empty() && matches!(args.format, ResultsFormat::Jsonl) {
        // Every result, one at a time (a job may hold millions of them).
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        mw::journal::visit_tasks(&conn, &path, None, |t| -> anyhow::Result<()> {
            if wanted(&t) {
                serde_json::to_writer(&mut out, &super::ResultLine::from_stored(&t))?;
                out.write_all(b"\n")?;
            }
            Ok(())
        })?;
        out.flush()?;
        return Ok(EXIT_OK);
    }
    // A task's text in a CSV cell may hold escape sequences that drive a terminal: shown
    // escaped there, byte for byte elsewhere (as `mw logs` does). JSON lines escape control
    // characters themselves.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout().lock());
    if args.task.is_empty() {
        // CSV takes its columns from every result: one pass finds them, a second writes the
        // rows, both over one snapshot of the journal (a live master may commit meanwhile).
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        mw::journal::in_snapshot(&conn, &path, |conn| -> anyhow::Result<()> {
            let mut cols = crate::output::CsvColumns::default();
            mw::journal::visit_tasks(conn, &path, None, |t| -> anyhow::Result<()> {
                if wanted(&t) {
                    let null = serde_json::Value::Null;
                    cols.see(&t.input, t.output.as_ref().unwrap_or(&null))?;
                }
                Ok(())
            })?;
            let mut rows = cols.writer(&mut out, terminal)?;
            mw::journal::visit_tasks(conn, &path, None, |t| -> anyhow::Result<()> {
                if wanted(&t) {
                    rows.row(&super::ResultLine::from_stored(&t))?;
                }
                Ok(())
            })?;
            rows.finish()
        })?;
        out.flush()?;
        return Ok(EXIT_OK);
    }
    // Tasks named by number: a few, held; in task order, each once (`--task 1 --task 1`).
    let mut named = args.task.clone();
    named.sort_unstable();
    named.dedup();
    let tasks = {
        let mut v = Vec::with_capacity(named.len());
        for &n in &named {
            match read_task(&conn, &path, n)? {
                Some(t) => v.push(t),
                None => bail!("job {}: there is no task {n}", dir.display()),
            }
        }
        v
    };
    let lines: Vec<super::ResultLine> = tasks
        .iter()
        .filter(|t| wanted(t))
        .map(super::ResultLine::from_stored)
        .collect();
    if !named.is_empty() && lines.len() < named.len() {
        let open: Vec<String> = tasks
            .iter()
            .filter(|t| !t.state.is_final())
            .map(|t| format!("task {} is {}", t.index, t.state.as_str()))
            .collect();
        if !open.is_empty() {
            say!("mw: no result yet: {}", open.join(", "));
        }
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        ResultsFormat::Jsonl => {
            for line in &lines {
                serde_json::to_writer(&mut out, line)?;
                out.write_all(b"\n")?;
            }
        }
        ResultsFormat::Csv => crate::output::write_csv(&mut out, &lines, terminal)?,
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// `mw logs`: one task's kept stdout and stderr.
pub(crate) fn logs(args: LogsArgs) -> anyhow::Result<i32> {
    use mw::task_logs::{read, Stream};
    let dir = args.at.dir()?;
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let Some(task) = read_task(&conn, &path, args.task)? else {
        bail!("job {}: there is no task {}", dir.display(), args.task);
    };
    drop(conn);
    if args.attempt == Some(0) {
        bail!("attempts are counted from 1: there is no attempt 0");
    }
    let attempt = args.attempt.unwrap_or(task.attempts);
    if attempt == 0 {
        bail!(
            "task {} has not run yet ({}): no logs",
            args.task,
            task.state.as_str()
        );
    }
    if attempt > task.attempts {
        bail!(
            "task {} has made {} attempt(s); there is no attempt {attempt}",
            args.task,
            task.attempts
        );
    }
    let logs_dir = dir.join(crate::run::LOGS_DIR);
    let id = mw::TaskId(args.task);
    let mut out = std::io::stdout().lock();
    // What a task printed may hold escape sequences that drive a terminal (retitle it, clear
    // it, hide lines): shown escaped there, byte for byte elsewhere.
    let terminal = std::io::IsTerminal::is_terminal(&out);
    let write_log = |out: &mut std::io::StdoutLock<'_>, bytes: &[u8]| {
        if terminal {
            let text = String::from_utf8_lossy(bytes);
            out.write_all(mw_bundle::text::escape_controls(&text).as_bytes())
        } else {
            out.write_all(bytes)
        }
    };
    let both = args.stream == LogStream::Both;
    if args.stream != LogStream::Stderr {
        if both {
            writeln!(out, "==> task {} attempt {attempt}: stdout <==", args.task)?;
        }
        match read(&logs_dir, id, attempt, Stream::Stdout) {
            Some(bytes) => write_log(&mut out, &bytes)?,
            // A JSON result is kept in the journal, not twice.
            None if attempt == task.attempts && task.state == TaskState::Done => {
                if let Some(v) = &task.output {
                    writeln!(out, "{v}")?;
                }
            }
            None => {}
        }
    }
    if args.stream != LogStream::Stdout {
        if both {
            writeln!(out, "==> task {} attempt {attempt}: stderr <==", args.task)?;
        }
        if let Some(bytes) = read(&logs_dir, id, attempt, Stream::Stderr) {
            write_log(&mut out, &bytes)?;
        }
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// `mw wait`: blocks until every task of the job has an outcome.
pub(crate) fn wait(args: WaitArgs, quiet: bool) -> anyhow::Result<i32> {
    let dir = args.at.dir()?;
    let path = dir.join(JOURNAL_FILE);
    let deadline = match args.timeout {
        Some(t) if (0.0..1e9).contains(&t) => {
            Some(std::time::Instant::now() + Duration::from_secs_f64(t))
        }
        Some(_) => bail!("--timeout must be a number of seconds from 0 to 10^9"),
        None => None,
    };
    // One connection for the whole wait; the tasks are counted again only when another
    // connection committed something (SQLite's data_version), so waiting on a job of a
    // million tasks costs a few cheap reads a second, not a scan.
    let conn = open_checked(&path, false)?;
    let mut seen_version: Option<i64> = None;
    let mut counts = state_counts(&conn, &path)?;
    // The job as the commands suggested below find it (a path under another jobs
    // directory, quoted for the shell when needed), and the resume that suits it.
    let meta = read_meta(&conn, &path)?;
    let job = crate::run::job_arg(&meta.id, &dir);
    let resume = crate::run::resume_command(&job, &meta.interface);
    loop {
        // Ctrl-C/SIGTERM/SIGHUP end the waiting (the job itself goes on).
        if crate::signals::interrupted() {
            return Ok(crate::EXIT_INTERRUPTED);
        }
        let version = data_version(&conn, &path)?;
        if seen_version != Some(version) {
            counts = state_counts(&conn, &path)?;
            seen_version = Some(version);
        }
        let rec = read_master(&conn, &path)?;
        let master_alive =
            lock_held_by_a_live_master(&dir, &rec) || live_master_in(&rec, &dir)?.is_some();
        // A job still recording its tasks (its creator stopped before it recorded them all)
        // is not done however few tasks it holds yet.
        if rec.status == crate::run::STATUS_RECORDING {
            counts.unfinished = counts.unfinished.max(1);
        }
        // Every task has an outcome; a master still alive is finishing up (reduce), so
        // wait for it to exit too.
        if counts.unfinished == 0 && !master_alive {
            let total = counts.done + counts.failed + counts.cancelled;
            let bad = counts.failed + counts.cancelled;
            if bad > 0 {
                say!(
                    "mw: {bad} of {total} tasks did not succeed ({} failed, {} cancelled); \
                     see `mw results {job} --failed`",
                    counts.failed,
                    counts.cancelled,
                );
                return Ok(EXIT_TASKS_FAILED);
            }
            // A job with a reduce step is finished when its master ran it: one that ended
            // before (the reduce failed, or the master was killed in it) says so, instead of
            // a success without the reduce's output.
            if rec.status != "finished" && !dir.join("reduce.out").exists() {
                let meta = read_meta(&conn, &path)?;
                let reduces = crate::job::Job::parse(Path::new(&meta.job_path), meta.job_text)
                    .is_ok_and(|j| j.file.reduce.is_some());
                if reduces {
                    bail!(
                        "job {}: every task is done, but its reduce step did not finish (its \
                         master failed or was stopped in it: see {}); `{resume}` runs it again",
                        dir.display(),
                        dir.join("master.log").display(),
                    );
                }
            }
            if !quiet {
                say!("mw: all {total} tasks done");
            }
            // The reduce program's output, when a detached master ran it.
            if let Ok(out) = std::fs::read(dir.join("reduce.out")) {
                std::io::stdout().write_all(&out)?;
            }
            return Ok(EXIT_OK);
        }
        if let Some(d) = deadline {
            if std::time::Instant::now() >= d {
                say!(
                    "mw: wait: timed out with {} of {} tasks unfinished; the job goes on",
                    counts.unfinished,
                    counts.unfinished + counts.done + counts.failed + counts.cancelled
                );
                return Ok(crate::EXIT_TIMEOUT);
            }
        }
        if counts.unfinished > 0 && !master_alive {
            // Re-check: the master may have finished between the two reads.
            let still = state_counts(&conn, &path)?.unfinished;
            if read_master(&conn, &path)?.status == crate::run::STATUS_RECORDING {
                bail!(
                    "job {}: its tasks are not all recorded and no master is running; start one with `{resume}`",
                    dir.display(),
                );
            }
            if still > 0 {
                bail!(
                    "job {}: {still} tasks unfinished and no master is running; start one with `{resume}`",
                    dir.display(),
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

/// How many 20 ms polls it waits for a master that has not taken the job yet (it is still
/// starting, e.g. right after `mw submit`; reading a job of millions of tasks takes seconds).
const CANCEL_START_POLLS: u32 = 6_000;

/// `mw cancel`.
///
/// The request is recorded in the journal first, whatever happens next: a master that
/// takes the job after that reads it with the tasks (in one snapshot) and applies it before
/// it dispatches anything; a running master applies it within [`crate::run`]'s poll. With no
/// master, `mw cancel` carries out every pending request itself
/// ([`carry_out_pending_cancels`]: the platform's copies stopped first, then the tasks
/// marked cancelled in one transaction that a starting master sees whole or not at all). So
/// a cancel is never lost, even right after `mw submit` while the detached master starts.
pub(crate) fn cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let dir = args.at.dir()?;
    let path = dir.join(JOURNAL_FILE);
    let mut conn = open_checked(&path, true)?;
    if let Some(t) = args.task {
        match read_task(&conn, &path, t)? {
            None => bail!("job {}: there is no task {t}", dir.display()),
            Some(task) if task.state.is_final() => {
                say!(
                    "mw: task {t} already finished ({}); nothing to cancel",
                    task.state.as_str()
                );
                return Ok(EXIT_OK);
            }
            Some(_) => {}
        }
    } else if count_unfinished(&conn, &path)? == 0 {
        say!("mw: every task of the job already has an outcome; nothing to cancel");
        return Ok(EXIT_OK);
    }
    let what = match args.task {
        Some(t) => format!("task {t}"),
        None => "every unfinished task".into(),
    };
    let req = request_cancel(&conn, &path, args.task, now_unix())?;
    // A `mw cancel` killed here leaves its request pending for the next master.
    mw::crash::point("cancel-recorded");
    // What an acknowledged request did: a task that finished at that instant is not cancelled.
    let acknowledged = |conn: &mw::journal::Connection, pid: i64| -> anyhow::Result<()> {
        if let Some(t) = args.task {
            if let Some(task) = read_task(conn, &path, t)? {
                if task.state.is_final() && task.state != TaskState::Cancelled {
                    say!(
                        "mw: task {t} finished ({}) before the cancel reached it",
                        task.state.as_str()
                    );
                    return Ok(());
                }
            }
        }
        say!("mw: cancelled {what} (master pid {pid})");
        Ok(())
    };
    if let Some(pid) = live_master_pid(&dir)? {
        // The master applies requests at least every 200 ms (a starting one before it
        // dispatches anything): from then on no cancelled task starts. It acknowledges one
        // once the tasks it stops have their end committed (a running task's takes the time
        // to stop it), so an acknowledged cancel survives the master. Wait for that
        // (bounded).
        let mut polls = 0u32;
        loop {
            if cancel_acknowledged(&conn, &path, req)? {
                acknowledged(&conn, pid)?;
                return Ok(EXIT_OK);
            }
            if live_master_pid(&dir)?.is_none() {
                // It ended without applying the request: carried out below, without it.
                break;
            }
            let starting = !master_running(&dir);
            polls += 1;
            if polls >= CANCEL_ACK_POLLS && !(starting && polls < CANCEL_START_POLLS) {
                say!(
                    "mw: cancel of {what} requested; the master (pid {pid}) has not acknowledged it yet \
                     (it applies it as soon as it can; `mw status` shows when it has)"
                );
                return Ok(EXIT_OK);
            }
            // A stop signal ends the waiting for the acknowledgement; the request stands.
            if crate::signals::interrupted() {
                return Ok(crate::EXIT_INTERRUPTED);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if cancel_acknowledged(&conn, &path, req)? {
            acknowledged(&conn, pid)?;
            return Ok(EXIT_OK);
        }
    }
    // No master: carried out here, the platform's copies stopped before the journal says
    // so.
    let settled = carry_out_pending_cancels(&dir, &mut conn, &path)?;
    let n: usize = settled.iter().map(|(_, n)| n).sum();
    say!("mw: {n} tasks cancelled");
    Ok(EXIT_OK)
}

/// Carries out every pending cancel request of the job in `dir` while no master runs (`mw
/// cancel`, and `mw retry` before it queues anything again): first what runs on the
/// platform is stopped (BOINC workunits by their recorded names, local tasks a dead master
/// left, the job's HTCondor jobs, or a task's job that no other task needs), then the tasks are marked
/// cancelled in one transaction. In that order a process killed between the two leaves the
/// requests pending, carried out again by the next `mw cancel`, `mw retry` or master; in
/// the other order it left the tasks cancelled in the journal (so a second `mw cancel` found
/// nothing to do) with their HTCondor jobs still running in the pool, and a `mw retry`
/// submitted them beside those. Returns each request's task (`None`: every task) and how
/// many tasks it cancelled.
pub(crate) fn carry_out_pending_cancels(
    dir: &Path,
    conn: &mut mw::journal::Connection,
    path: &Path,
) -> anyhow::Result<Vec<(Option<u64>, usize)>> {
    let pending = read_pending_cancels(conn, path)?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    for (_, task) in &pending {
        cancel_boinc_workunits(conn, path, *task)?;
    }
    // Local tasks a dead master left running are stopped before they are marked cancelled
    // (else `mw retry` ran them a second time beside the first).
    let cancelled = |t: u64| pending.iter().any(|(_, p)| p.is_none_or(|n| n == t));
    let running = mw::journal::running_handles(conn, path)?;
    for (task, handle) in &running {
        if cancelled(*task) {
            mw::multicore::stop_leftover(handle);
        }
    }
    // Jobs on HTCondor outlive the master: take them out of the pool too (for a task, its
    // job, unless a pack's other members still need it).
    let condor = dir.join("staging").join("condor");
    let not_removed = |e: String| {
        anyhow::anyhow!(
            "this job's HTCondor jobs could not be removed ({e}); nothing was marked \
             cancelled (the request stays pending: `mw cancel` again carries it out)"
        )
    };
    if condor.is_dir() {
        if pending.iter().any(|(_, t)| t.is_none()) {
            match mw::condor::remove_leftover_jobs(&condor, &Default::default()) {
                Ok(c) if c.is_empty() => {}
                Ok(c) => say!("mw: removed HTCondor clusters {c:?} with condor_rm"),
                Err(e) => return Err(not_removed(e)),
            }
        } else {
            let held: Vec<(u64, Option<&str>)> = running
                .iter()
                .map(|(t, h)| (*t, Some(h.as_str())))
                .collect();
            let removed =
                mw::condor::remove_jobs_of_cancelled_tasks(&held, cancelled, &Default::default())
                    .map_err(not_removed)?;
            if !removed.is_empty() {
                let jobs: Vec<String> = removed.iter().map(|h| h.to_string()).collect();
                say!(
                    "mw: removed HTCondor jobs {} with condor_rm",
                    jobs.join(" ")
                );
            }
        }
    }
    // Killed here: the platform's copies are stopped, the tasks not yet marked cancelled;
    // the requests are still pending.
    mw::crash::point("cancel-platform-stopped");
    Ok(settle_cancels_without_master(conn, path, now_unix())?)
}

/// `mw cancel` with no master for a BOINC job: cancels the workunits of its unfinished
/// tasks in the project (`bin/cancel_jobs` by the names the journal recorded).
fn cancel_boinc_workunits(
    conn: &mw::journal::Connection,
    path: &Path,
    task: Option<u64>,
) -> anyhow::Result<()> {
    let meta = read_meta(conn, path)?;
    if meta.interface != "boinc" {
        return Ok(());
    }
    let unfinished: Vec<StoredTask> = read_tasks(conn, path, None)?
        .into_iter()
        .filter(|t| !t.state.is_final())
        .collect();
    // A pack's other members keep their workunit (the cancelled one's result is then not
    // waited for).
    let recorded: Vec<(u64, Option<&str>)> = unfinished
        .iter()
        .map(|t| (t.index, t.handle.as_deref()))
        .collect();
    let handles = mw::boinc::workunits_to_cancel(&recorded, task);
    if handles.is_empty() {
        return Ok(());
    }
    let job = crate::job::Job::parse(Path::new(&meta.job_path), meta.job_text.clone())?;
    let settings = job
        .file
        .boinc
        .to_settings(&job.base_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", meta.job_path))?;
    for (handle, how) in mw::boinc::cancel_workunits(&settings.project_dir, &handles)? {
        say!("mw: BOINC workunit {handle}: {how}");
    }
    Ok(())
}

/// Whether writing a report to `out` would replace a file of the job in `dir`: any file
/// already in the job directory (its journal, lock, logs, outputs) but an earlier report
/// (`.html`, `.svg`). Links are followed.
fn replaces_a_job_file(dir: &Path, out: &Path) -> bool {
    let (Ok(dir), Ok(out)) = (std::fs::canonicalize(dir), std::fs::canonicalize(out)) else {
        return false;
    };
    let report = out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("svg"));
    out.starts_with(&dir) && !out.is_dir() && !report
}

/// `mw report`.
pub(crate) fn report(args: ReportArgs) -> anyhow::Result<i32> {
    let dir = args.at.dir()?;
    let (meta, summary) = summarize(&dir)?;
    // Every task's timing, compact; whole rows only for the failed tasks the page lists.
    // Both from one snapshot, so the counts and the list agree.
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false)?;
    let (tasks, failed) = mw::journal::in_snapshot(&conn, &path, |c| {
        let tasks = super::report::ReportTasks::read(c, &path, summary.tasks)?;
        let failed =
            mw::journal::first_tasks_in(c, &path, TaskState::Failed, super::report::LIST_FAILED)?;
        Ok::<_, mw::journal::JournalError>((tasks, failed))
    })?;
    let events = read_events(
        &conn,
        &path,
        &["submitted", "retry", "retry-requested", "resumed"],
        100_000,
    )?;
    let out = args.output.unwrap_or_else(|| dir.join("report.html"));
    if replaces_a_job_file(&dir, &out) {
        bail!(
            "-o {}: that is one of the job's own files (its journal, logs or outputs); \
             name a new .html or .svg file",
            out.display()
        );
    }
    let logs_dir = dir.join(crate::run::LOGS_DIR);
    let data = super::report::ReportData {
        meta: &meta,
        tasks: &tasks,
        failed: &failed,
        events: &events,
        logs_dir: &logs_dir,
    };
    let svg = out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let text = if svg {
        super::report::render_svg(&data)
    } else {
        super::report::render_html(&data)
    };
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    use std::io::Write;
    writeln!(std::io::stdout(), "{}", out.display()).context("printing the report's path")?;
    Ok(EXIT_OK)
}
