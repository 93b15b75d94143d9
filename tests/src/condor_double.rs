//! TEST DOUBLE: stands in for HTCondor's daemons, which cannot be installed here.
//!
//! Shared code of the `condor_submit`, `condor_q`, `condor_rm` and `condor_history` doubles in
//! `src/bin/`, built as `mw-test-condor_submit`, ... (never under the real names: tests reach
//! them through the symlinks of [`crate::condor_double_path`]). A "pool" is a state directory named by `MW_CONDOR_DOUBLE_STATE`, holding
//! `state.json` (guarded by `flock` on `state.lock`) and one private execute directory per job
//! run under `execute/`. `condor_submit` understands only the submit commands condor-kit's
//! generator emits, answers like `condor_submit -terse`, writes 000 events, and starts a
//! detached runner per job (itself, re-executed) that copies the executable and the input
//! files into the execute directory, runs the job there, copies the output files back to
//! `initialdir` and writes 001/004/005/012 events in HTCondor's text format (ISO dates).
//!
//! Test hooks, read at submit time (proc lists like `0,2` or `all`):
//! - `MW_CONDOR_DOUBLE_HOLD=<procs>`: the job is held (012, code 1) instead of running.
//! - `MW_CONDOR_DOUBLE_EVICT_ONCE=<procs>`: the job starts, is evicted (004), then runs again.
//! - `MW_CONDOR_DOUBLE_NO_RUN=1`: jobs are recorded (000 events, idle) but never run (benchmarks).
//!
//! It must never be used outside tests, and it knows nothing about mw's bundles.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Env var naming the state directory of the pool double.
pub const STATE_ENV: &str = "MW_CONDOR_DOUBLE_STATE";
const RUN_FLAG: &str = "--mw-double-run";
const HOST: &str = "<127.0.0.1:9618?addrs=127.0.0.1-9618&alias=double.invalid>";
const SLOT: &str = "slot1_1@double.invalid";

/// One job of the pool, with everything the runner needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoubleJob {
    /// `ClusterId`.
    pub cluster: u64,
    /// `ProcId`.
    pub proc: u64,
    /// HTCondor's JobStatus code: 1 idle, 2 running, 3 removed, 4 completed, 5 held.
    pub status: i64,
    /// `executable` after macro expansion.
    pub executable: PathBuf,
    /// `arguments`, split.
    pub arguments: Vec<String>,
    /// `initialdir`.
    pub initialdir: PathBuf,
    /// `log`.
    pub log: PathBuf,
    /// `output`.
    pub output: PathBuf,
    /// `error`.
    pub error: PathBuf,
    /// `transfer_input_files`.
    pub input_files: Vec<PathBuf>,
    /// `transfer_output_files`.
    pub output_files: Vec<String>,
    /// `submit_event_notes`.
    pub notes: Option<String>,
    /// `JobBatchName`.
    pub batch_name: Option<String>,
    /// `+MwBatch` (a ClassAd string), as the real schedd stores it in the job ad.
    #[serde(default)]
    pub mw_batch: Option<String>,
    /// Submitted on hold.
    pub hold: bool,
    /// Evict this job once before it runs (a scripted fault).
    pub evict_once: bool,
    /// `NumJobStarts`.
    pub num_job_starts: u64,
    /// `ExitCode`, once exited.
    pub exit_code: Option<i64>,
    /// `ExitSignal`, once signalled.
    pub exit_signal: Option<i64>,
    /// `HoldReason`, when held.
    pub hold_reason: Option<String>,
    /// `HoldReasonCode`, when held.
    pub hold_reason_code: Option<i64>,
    /// The process running the job, while it runs.
    pub pid: Option<i32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_cluster: u64,
    jobs: Vec<DoubleJob>,
}

fn state_dir() -> Result<PathBuf> {
    let dir = std::env::var_os(STATE_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow!("{STATE_ENV} is not set: the condor test double needs a state directory")
        })?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `f` on the pool state under an exclusive lock and saves the state afterwards.
fn with_state<R>(dir: &Path, f: impl FnOnce(&mut State) -> Result<R>) -> Result<R> {
    let lock_path = dir.join("state.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own and keep open for the whole call; the lock is
    // released when `lock` is dropped (closed).
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        bail!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    let path = dir.join("state.json");
    let mut state: State = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
            next_cluster: 1,
            jobs: vec![],
        },
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let r = f(&mut state)?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(&tmp, &path)?;
    drop(lock);
    Ok(r)
}

fn find(state: &mut State, cluster: u64, proc: u64) -> Result<&mut DoubleJob> {
    state
        .jobs
        .iter_mut()
        .find(|j| j.cluster == cluster && j.proc == proc)
        .ok_or_else(|| anyhow!("no job {cluster}.{proc} in the pool double"))
}

// ---------------------------------------------------------------- event log writing

fn now_local() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes into the zeroed `tm` we own; `t` outlives the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Appends one event in HTCondor's text format (header, body lines, `...`).
fn write_event(job: &DoubleJob, code: u32, message: &str, body: &[String]) -> Result<()> {
    let mut text = format!(
        "{:03} ({:03}.{:03}.{:03}) {} {}\n",
        code,
        job.cluster,
        job.proc,
        0,
        now_local(),
        message
    );
    for l in body {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("...\n");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&job.log)
        .with_context(|| format!("opening the job log {}", job.log.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", job.log.display()))
}

fn usage_lines(total: bool) -> Vec<String> {
    let mut v = vec![
        "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage".to_string(),
        "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage".to_string(),
    ];
    if total {
        v.push("\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Remote Usage".into());
        v.push("\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage".into());
    }
    v.push("\t0  -  Run Bytes Sent By Job".into());
    v.push("\t0  -  Run Bytes Received By Job".into());
    if total {
        v.push("\t0  -  Total Bytes Sent By Job".into());
        v.push("\t0  -  Total Bytes Received By Job".into());
    }
    v
}

/// The `Partitionable Resources` table the real 23.9 daemons append to 004/005 bodies.
fn resource_table() -> Vec<String> {
    [
        "\tPartitionable Resources :    Usage  Request Allocated ",
        "\t   Cpus                 :        0        1         1 ",
        "\t   Disk (KB)            :        1     1024      1024 ",
        "\t   Memory (MB)          :        1       64        64 ",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect()
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ`, for the 005 trailer.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------- submit file parsing

/// The commands condor-kit's generator emits; anything else is refused.
const KNOWN: &[&str] = &[
    "universe",
    "executable",
    "transfer_executable",
    "arguments",
    "initialdir",
    "log",
    "output",
    "error",
    "should_transfer_files",
    "when_to_transfer_output",
    "transfer_input_files",
    "transfer_output_files",
    "request_cpus",
    "request_memory",
    "request_disk",
    "requirements",
    "max_retries",
    "batch_name",
    "submit_event_notes",
];

struct SubmitFile {
    commands: BTreeMap<String, String>,
    queue_vars: Vec<String>,
    items_file: PathBuf,
}

fn parse_submit(path: &Path) -> Result<SubmitFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut commands = BTreeMap::new();
    let mut queue = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = || format!("{}:{}", path.display(), n + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if queue.is_some() {
            bail!(
                "{}: the double supports one queue statement, last in the file",
                at()
            );
        }
        if let Some(rest) = line.strip_prefix("queue ") {
            let (vars, file) = rest
                .split_once(" from ")
                .ok_or_else(|| anyhow!("{}: only `queue VARS from FILE` is supported", at()))?;
            let vars: Vec<String> = vars
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|v| !v.is_empty())
                .map(|v| v.to_ascii_lowercase())
                .collect();
            queue = Some((vars, PathBuf::from(file.trim())));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("{}: not `command = value`: {line:?}", at()))?;
        let k = k.trim().to_ascii_lowercase();
        if !k.starts_with('+') && !KNOWN.contains(&k.as_str()) {
            bail!(
                "{}: the condor double does not know the submit command {k:?}",
                at()
            );
        }
        commands.insert(k, v.trim().to_string());
    }
    let (queue_vars, items_file) =
        queue.ok_or_else(|| anyhow!("{}: no queue statement", path.display()))?;
    Ok(SubmitFile {
        commands,
        queue_vars,
        items_file,
    })
}

fn expand(value: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(')')
            .ok_or_else(|| anyhow!("unterminated $( in {value:?}"))?;
        let name = rest[i + 2..i + end].to_ascii_lowercase();
        let v = vars
            .get(&name)
            .ok_or_else(|| anyhow!("undefined macro $({name}) in {value:?}"))?;
        out.push_str(v);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// New-syntax arguments: `"a b 'c d'"`; single quotes group words.
fn split_arguments(value: &str) -> Result<Vec<String>> {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| {
            anyhow!("the double supports only new-syntax (double-quoted) arguments: {value:?}")
        })?;
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut has = false;
    for c in inner.chars() {
        match c {
            '\'' => {
                in_quote = !in_quote;
                has = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if has {
                    args.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if in_quote {
        bail!("unbalanced ' in arguments {value:?}");
    }
    if has {
        args.push(cur);
    }
    Ok(args)
}

fn proc_list(var: &str) -> Result<Option<Vec<u64>>> {
    match std::env::var(var) {
        Err(_) => Ok(Some(vec![])),
        Ok(v) if v.trim() == "all" || v.trim() == "*" => Ok(None),
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .with_context(|| format!("{var}: {s:?} is not a proc number"))
            })
            .collect::<Result<Vec<u64>>>()
            .map(Some),
    }
}

fn in_list(list: &Option<Vec<u64>>, proc: u64) -> bool {
    list.as_ref().is_none_or(|l| l.contains(&proc))
}

fn absolute(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `condor_submit [-terse] FILE`.
pub fn submit_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(RUN_FLAG) {
        let c = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad runner args"))?;
        let p = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad runner args"))?;
        return run_job(&state_dir()?, c, p);
    }
    let terse = args.iter().any(|a| a == "-terse");
    let files: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let [file] = files.as_slice() else {
        bail!("usage: condor_submit [-terse] FILE (the test double takes exactly one file)");
    };
    let dir = state_dir()?;
    let cwd = std::env::current_dir()?;
    let sub = parse_submit(Path::new(file.as_str()))?;
    let items_path = absolute(&cwd, &sub.items_file.to_string_lossy());
    let items_text = std::fs::read_to_string(&items_path)
        .with_context(|| format!("reading the queue item file {}", items_path.display()))?;
    let hold = proc_list("MW_CONDOR_DOUBLE_HOLD")?;
    let evict = proc_list("MW_CONDOR_DOUBLE_EVICT_ONCE")?;
    let cmd = |k: &str| sub.commands.get(k).cloned();
    for required in ["executable", "log", "universe"] {
        if cmd(required).is_none() {
            bail!("{file}: no {required:?} command");
        }
    }
    if cmd("universe").as_deref() != Some("vanilla") {
        bail!("{file}: the double runs only the vanilla universe");
    }
    if cmd("should_transfer_files").as_deref() != Some("YES") {
        bail!(
            "{file}: the double needs should_transfer_files = YES (its execute dirs share nothing)"
        );
    }
    let (cluster, n) = with_state(&dir, |state| {
        let cluster = state.next_cluster;
        state.next_cluster += 1;
        let mut procs = Vec::new();
        for (n, line) in items_text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let proc = procs.len() as u64;
            let mut vars = BTreeMap::new();
            vars.insert("cluster".to_string(), cluster.to_string());
            vars.insert("clusterid".to_string(), cluster.to_string());
            vars.insert("process".to_string(), proc.to_string());
            vars.insert("procid".to_string(), proc.to_string());
            let mut rest = line.trim();
            for (i, var) in sub.queue_vars.iter().enumerate() {
                let value = if i + 1 == sub.queue_vars.len() {
                    std::mem::take(&mut rest).to_string()
                } else {
                    let end = rest.find([',', ' ', '\t']).unwrap_or(rest.len());
                    let v = rest[..end].to_string();
                    rest = rest[end..].trim_start_matches([',', ' ', '\t']);
                    v
                };
                vars.insert(var.clone(), value);
            }
            let get = |k: &str| -> Result<Option<String>> {
                cmd(k)
                    .map(|v| expand(&v, &vars))
                    .transpose()
                    .with_context(|| format!("{}: item line {}: {k}", items_path.display(), n + 1))
            };
            let initialdir = absolute(&cwd, &get("initialdir")?.unwrap_or_else(|| ".".into()));
            let path_of = |v: Option<String>, default: &str| {
                absolute(&initialdir, &v.unwrap_or_else(|| default.into()))
            };
            let list = |v: Option<String>| -> Vec<String> {
                v.unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            let job = DoubleJob {
                cluster,
                proc,
                status: 1,
                executable: path_of(get("executable")?, ""),
                arguments: match get("arguments")? {
                    Some(a) => split_arguments(&a)?,
                    None => vec![],
                },
                log: path_of(get("log")?, ""),
                output: path_of(get("output")?, "/dev/null"),
                error: path_of(get("error")?, "/dev/null"),
                input_files: list(get("transfer_input_files")?)
                    .iter()
                    .map(|f| absolute(&initialdir, f))
                    .collect(),
                output_files: list(get("transfer_output_files")?),
                notes: get("submit_event_notes")?,
                batch_name: get("batch_name")?,
                mw_batch: get("+mwbatch")?.map(|v| v.trim_matches('"').to_string()),
                initialdir,
                hold: in_list(&hold, proc),
                evict_once: in_list(&evict, proc),
                num_job_starts: 0,
                exit_code: None,
                exit_signal: None,
                hold_reason: None,
                hold_reason_code: None,
                pid: None,
            };
            let body: Vec<String> = job.notes.iter().map(|n| format!("    {n}")).collect();
            write_event(&job, 0, &format!("Job submitted from host: {HOST}"), &body)?;
            procs.push(job);
        }
        if procs.is_empty() {
            bail!("{}: no queue items", items_path.display());
        }
        let n = procs.len() as u64;
        state.jobs.extend(procs);
        Ok((cluster, n))
    })?;
    // Like a schedd: the jobs run after condor_submit has returned, in detached runners.
    let exe = std::env::current_exe()?;
    // Benchmark hook: record the jobs (they stay idle) but run nothing.
    let n_run = if std::env::var_os("MW_CONDOR_DOUBLE_NO_RUN").is_some() {
        0
    } else {
        n
    };
    for proc in 0..n_run {
        Command::new(&exe)
            .args([RUN_FLAG, &cluster.to_string(), &proc.to_string()])
            .env(STATE_ENV, &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the job runner")?;
    }
    if terse {
        println!("{cluster}.0 - {cluster}.{}", n - 1);
    } else {
        println!("Submitting job(s){}", ".".repeat(n as usize));
        println!("{n} job(s) submitted to cluster {cluster}.");
    }
    Ok(())
}

fn copy_in(src: &Path, dest_dir: &Path) -> Result<PathBuf> {
    let name = src
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", src.display()))?;
    let dest = dest_dir.join(name);
    std::fs::copy(src, &dest).with_context(|| format!("transferring {}", src.display()))?;
    Ok(dest)
}

/// The detached runner of one job.
fn run_job(dir: &Path, cluster: u64, proc: u64) -> Result<()> {
    loop {
        // Start (or hold) under the lock.
        let job = with_state(dir, |s| {
            let job = find(s, cluster, proc)?;
            if job.status != 1 {
                return Ok(None);
            }
            if job.hold {
                job.status = 5;
                job.hold_reason = Some("via MW_CONDOR_DOUBLE_HOLD (test hook)".into());
                job.hold_reason_code = Some(1);
                write_event(
                    job,
                    12,
                    "Job was held.",
                    &[
                        "\tvia MW_CONDOR_DOUBLE_HOLD (test hook)".into(),
                        "\tCode 1 Subcode 0".into(),
                    ],
                )?;
                return Ok(None);
            }
            job.status = 2;
            job.num_job_starts += 1;
            // As the real schedd: input transfer (040), then 001 with the slot's body, then 006.
            write_event(
                job,
                40,
                "Started transferring input files",
                &[format!("\tTransferring to host: {HOST}")],
            )?;
            write_event(job, 40, "Finished transferring input files", &[])?;
            write_event(
                job,
                1,
                &format!("Job executing on host: {HOST}"),
                &[
                    format!("\tSlotName: {SLOT}"),
                    format!(
                        "\tCondorScratchDir = \"{}/execute/dir_{cluster}.{proc}.{}\"",
                        dir.display(),
                        job.num_job_starts
                    ),
                    "\tCpus = 1".into(),
                    "\tDisk = 1024".into(),
                    "\tGPUs = 0".into(),
                    "\tMemory = 64".into(),
                ],
            )?;
            write_event(
                job,
                6,
                "Image size of job updated: 1000",
                &[
                    "\t1  -  MemoryUsage of job (MB)".into(),
                    "\t1000  -  ResidentSetSize of job (KB)".into(),
                ],
            )?;
            Ok(Some(job.clone()))
        })?;
        let Some(job) = job else { return Ok(()) };
        let exec_dir = dir
            .join("execute")
            .join(format!("dir_{cluster}.{proc}.{}", job.num_job_starts));
        std::fs::create_dir_all(&exec_dir)?;
        let exe = copy_in(&job.executable, &exec_dir)?;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
        for f in &job.input_files {
            copy_in(f, &exec_dir)?;
        }
        if job.evict_once && job.num_job_starts == 1 {
            let evicted = with_state(dir, |s| {
                let j = find(s, cluster, proc)?;
                if j.status != 2 {
                    return Ok(false);
                }
                j.status = 1;
                let mut body = vec!["\t(0) Job was not checkpointed.".to_string()];
                body.extend(usage_lines(false));
                write_event(j, 4, "Job was evicted.", &body)?;
                Ok(true)
            })?;
            if evicted {
                continue;
            }
            return Ok(());
        }
        let out = File::create(&job.output)
            .with_context(|| format!("creating {}", job.output.display()))?;
        let err = File::create(&job.error)
            .with_context(|| format!("creating {}", job.error.display()))?;
        // Spawned under the lock, so condor_rm always finds the pid of a started job.
        let mut child = with_state(dir, |s| {
            let j = find(s, cluster, proc)?;
            if j.status != 2 {
                return Ok(None); // removed before it started
            }
            let child = Command::new(&exe)
                .args(&job.arguments)
                .current_dir(&exec_dir)
                .env("_CONDOR_SCRATCH_DIR", &exec_dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn();
            if let Ok(c) = &child {
                j.pid = Some(c.id() as i32);
            }
            Ok(Some(child))
        })?;
        let Some(child) = child.as_mut() else {
            return Ok(());
        };
        if let Ok(c) = child.as_mut() {
            wait_without_reaping(c.id() as i32)?;
        }
        return with_state(dir, |s| {
            let j = find(s, cluster, proc)?;
            j.pid = None;
            // Reaped only now, under the lock, so condor_rm never signals a recycled pid.
            let status = match child.as_mut() {
                Ok(c) => Some(c.wait()?),
                Err(_) => None,
            };
            if j.status != 2 {
                return Ok(()); // removed meanwhile: condor_rm wrote the 009 event
            }
            let Some(status) = status else {
                j.status = 5;
                j.hold_reason = Some(format!("Failed to execute '{}'", exe.display()));
                j.hold_reason_code = Some(6);
                let body = [
                    format!("\t{}", j.hold_reason.clone().unwrap_or_default()),
                    "\tCode 6 Subcode 2".into(),
                ];
                return write_event(j, 12, "Job was held.", &body);
            };
            write_event(j, 40, "Started transferring output files", &[])?;
            for name in j.output_files.clone() {
                let src = exec_dir.join(&name);
                if let Err(e) = std::fs::copy(&src, j.initialdir.join(&name)) {
                    // As the real 23.9 pool: the starter's 021, an eviction (004) whose
                    // reason line has no `Reason:` prefix, then the hold (012, code 12).
                    write_event(j, 40, "Finished transferring output files", &[])?;
                    let reason = format!(
                        "Transfer output files failure at execution point {SLOT} while sending files to access point double.invalid. Details: reading from file {}: {e}",
                        src.display()
                    );
                    write_event(
                        j,
                        21,
                        &format!("Error from starter on {SLOT}:"),
                        &[
                            format!("\tSTARTER at 127.0.0.1 failed to send file(s) to <127.0.0.1:9618>: |Error: reading from file {}: {e}", src.display()),
                            "\tCode 13 Subcode 2".into(),
                        ],
                    )?;
                    let mut body = vec!["\t(0) CPU times".to_string()];
                    body.extend(usage_lines(false));
                    body.push(format!("\t{reason}"));
                    body.extend(resource_table());
                    write_event(j, 4, "Job was evicted.", &body)?;
                    if let Some(sig) = status.signal() {
                        j.exit_signal = Some(sig.into());
                    }
                    j.status = 5;
                    j.hold_reason = Some(reason.clone());
                    j.hold_reason_code = Some(12);
                    let body = [format!("\t{reason}"), "\tCode 12 Subcode 2".into()];
                    return write_event(j, 12, "Job was held.", &body);
                }
            }
            write_event(j, 40, "Finished transferring output files", &[])?;
            j.status = 4;
            let mut body = match (status.code(), status.signal()) {
                (Some(code), _) => {
                    j.exit_code = Some(code.into());
                    vec![format!("\t(1) Normal termination (return value {code})")]
                }
                (None, sig) => {
                    let sig = sig.unwrap_or(0);
                    j.exit_signal = Some(sig.into());
                    vec![
                        format!("\t(0) Abnormal termination (signal {sig})"),
                        "\t(0) No core file".into(),
                    ]
                }
            };
            body.extend(usage_lines(true));
            body.extend(resource_table());
            body.push(String::new());
            body.push(match (status.code(), status.signal()) {
                (Some(code), _) => format!(
                    "\tJob terminated of its own accord at {} with exit-code {code}.",
                    utc_now()
                ),
                (None, sig) => format!(
                    "\tJob terminated of its own accord at {} with signal {}.",
                    utc_now(),
                    sig.unwrap_or(0)
                ),
            });
            write_event(j, 5, "Job terminated.", &body)
        });
    }
}

/// Blocks until process `pid` (our child) has exited, leaving it a zombie so its pid stays taken.
fn wait_without_reaping(pid: i32) -> Result<()> {
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo_t we own; WNOWAIT keeps the
        // child waitable, so std's Child::wait reaps it later.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for the job process");
        }
    }
}

// ---------------------------------------------------------------- condor_rm / condor_q / condor_history

/// `condor_rm C | C.P ...`.
pub fn rm_main() -> Result<()> {
    let targets: Vec<(u64, Option<u64>)> = std::env::args()
        .skip(1)
        .map(|a| match a.split_once('.') {
            Some((c, p)) => Ok((c.parse()?, Some(p.parse()?))),
            None => Ok((a.parse()?, None)),
        })
        .collect::<Result<_, std::num::ParseIntError>>()
        .map_err(|e| anyhow!("usage: condor_rm CLUSTER[.PROC]...: {e}"))?;
    if targets.is_empty() {
        bail!("usage: condor_rm CLUSTER[.PROC]...");
    }
    let dir = state_dir()?;
    let mut missing = Vec::new();
    with_state(&dir, |s| {
        for (c, p) in &targets {
            let mut found = false;
            for j in s
                .jobs
                .iter_mut()
                .filter(|j| j.cluster == *c && p.is_none_or(|p| p == j.proc))
            {
                if ![1, 2, 5].contains(&j.status) {
                    continue;
                }
                found = true;
                j.status = 3;
                write_event(
                    j,
                    9,
                    "Job was aborted.",
                    &["\tvia condor_rm (by user double)".into()],
                )?;
                if let Some(pid) = j.pid.take() {
                    // SAFETY: kill(2) on the pid the runner recorded for the job's process; the
                    // runner reaps it only while holding the state lock we hold now, and clears
                    // `pid` then, so the pid cannot have been recycled.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                println!("Job {}.{} marked for removal", j.cluster, j.proc);
            }
            if !found {
                missing.push(match p {
                    Some(p) => format!("{c}.{p}"),
                    None => c.to_string(),
                });
            }
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        // As the real condor_rm for a job that already left the queue (exit 1).
        bail!(
            "{}",
            missing
                .iter()
                .map(|m| if m.contains('.') {
                    format!("Job {m} not found")
                } else {
                    format!("Couldn't find/remove all jobs in cluster {m}")
                })
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

fn ad(j: &DoubleJob) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("ClusterId".into(), j.cluster.into());
    m.insert("ProcId".into(), j.proc.into());
    m.insert("JobStatus".into(), j.status.into());
    m.insert("NumJobStarts".into(), j.num_job_starts.into());
    if let Some(b) = &j.batch_name {
        m.insert("JobBatchName".into(), b.clone().into());
    }
    if let Some(b) = &j.mw_batch {
        m.insert("MwBatch".into(), b.clone().into());
    }
    if let Some(c) = j.exit_code {
        m.insert("ExitCode".into(), c.into());
        m.insert("ExitBySignal".into(), false.into());
    }
    if let Some(sig) = j.exit_signal {
        m.insert("ExitSignal".into(), sig.into());
        m.insert("ExitBySignal".into(), true.into());
    }
    if let Some(r) = &j.hold_reason {
        m.insert("HoldReason".into(), r.clone().into());
    }
    if let Some(c) = j.hold_reason_code {
        m.insert("HoldReasonCode".into(), c.into());
        m.insert("HoldReasonSubCode".into(), 0.into());
    }
    serde_json::Value::Object(m)
}

fn list_main(in_queue: bool) -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut clusters = Vec::new();
    let mut limit = None;
    let mut batches: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-json" => {}
            "-attributes" => {
                it.next();
            }
            "-limit" => limit = it.next().and_then(|n| n.parse::<usize>().ok()),
            // Every owner: the double has one.
            "-allusers" => {}
            // Only what mw asks: `MwBatch == "a" || MwBatch == "b"`.
            "-constraint" => {
                let expr = it
                    .next()
                    .ok_or_else(|| anyhow!("-constraint needs a value"))?;
                for term in expr.split("||") {
                    let v = term
                        .trim()
                        .strip_prefix("MwBatch == ")
                        .map(|v| v.trim_matches('"').to_string())
                        .ok_or_else(|| {
                            anyhow!("the double understands only MwBatch constraints: {expr:?}")
                        })?;
                    batches.push(v);
                }
            }
            // `C` or `C.P`, as the real tools take them.
            a => clusters.push(
                match a.split_once('.') {
                    None => a.parse::<u64>().ok().map(|c| (c, None)),
                    Some((c, p)) => c.parse::<u64>().ok().zip(p.parse::<u64>().ok().map(Some)),
                }
                .ok_or_else(|| anyhow!("the double does not understand argument {a:?}"))?,
            ),
        }
    }
    let dir = state_dir()?;
    let ads: Vec<serde_json::Value> = with_state(&dir, |s| {
        Ok(s.jobs
            .iter()
            .filter(|j| [1, 2, 5, 7].contains(&j.status) == in_queue)
            .filter(|j| {
                clusters.is_empty()
                    || clusters
                        .iter()
                        .any(|(c, p)| *c == j.cluster && p.is_none_or(|p| p == j.proc))
            })
            .filter(|j| {
                batches.is_empty() || j.mw_batch.as_ref().is_some_and(|b| batches.contains(b))
            })
            .map(ad)
            .collect())
    })?;
    let ads: Vec<_> = ads.into_iter().take(limit.unwrap_or(usize::MAX)).collect();
    // Like CondorClassAdListWriter: nothing at all when there are no ads.
    if !ads.is_empty() {
        let body: Vec<String> = ads.iter().map(|a| a.to_string()).collect();
        println!("[\n{}\n]", body.join(",\n"));
    }
    Ok(())
}

/// `condor_q -json [-attributes ...] [CLUSTER[.PROC]...]`: jobs still in the queue.
pub fn q_main() -> Result<()> {
    list_main(true)
}

/// `condor_history -json [-attributes ...] [-limit N] [CLUSTER[.PROC]...]`: jobs that left the
/// queue.
pub fn history_main() -> Result<()> {
    list_main(false)
}

// ---------------------------------------------------------------- helpers for the tests

/// The Python interpreter that has HTCondor's `htcondor2` module: `MW_PYTHON`, else
/// `.venv/bin/python` at the workspace root. Panics (the test fails) when neither exists.
pub fn htcondor_python() -> PathBuf {
    let p = match std::env::var_os("MW_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => crate::workspace_root().join(".venv/bin/python"),
    };
    assert!(
        p.exists(),
        "{} does not exist: run the CI setup first (python3 -m venv .venv && \
         .venv/bin/pip install htcondor==25.14.1), or set MW_PYTHON to a python with htcondor2",
        p.display()
    );
    p
}

/// Runs tests/python/condor_check.py (HTCondor's own parsers) and returns its stdout.
pub fn condor_check(mode: &str, file: &Path) -> String {
    let script = crate::workspace_root().join("tests/python/condor_check.py");
    let out = Command::new(htcondor_python())
        .arg(&script)
        .arg(mode)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {mode} {} failed: {}",
        script.display(),
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compares condor-kit's reading of a job event log with HTCondor's, event by event: type,
/// cluster, proc, and return value / signal / hold code and reason. Returns the event count.
pub fn assert_log_matches_htcondor(log: &Path) -> usize {
    use mw_condor_kit::{EventKind, LogFollower, Termination};
    let oracle: Vec<serde_json::Value> = condor_check("events", log)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("oracle line {l:?}: {e}")))
        .collect();
    let polled = LogFollower::new(log)
        .poll()
        .unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
    assert!(polled.bad_records.is_empty(), "{:?}", polled.bad_records);
    let ours = polled.events;
    assert_eq!(ours.len(), oracle.len(), "event count of {}", log.display());
    for (i, (e, o)) in ours.iter().zip(&oracle).enumerate() {
        let at = format!("{} event {i} ({o})", log.display());
        assert_eq!(Some(e.code as i64), o["type"].as_i64(), "{at}: type");
        assert_eq!(Some(e.cluster), o["cluster"].as_i64(), "{at}: cluster");
        assert_eq!(Some(e.proc), o["proc"].as_i64(), "{at}: proc");
        match &e.kind {
            EventKind::Terminated(Termination::Normal { return_value }) => {
                assert_eq!(o["terminated_normally"], true, "{at}");
                assert_eq!(
                    Some(*return_value),
                    o["return_value"].as_i64(),
                    "{at}: return value"
                );
            }
            EventKind::Terminated(Termination::Abnormal { signal, .. }) => {
                assert_eq!(o["terminated_normally"], false, "{at}");
                match o["signal"].as_i64() {
                    Some(sig) => assert_eq!(*signal, sig, "{at}: signal"),
                    // HTCondor leaves out an invalid signal number (the synthetic log's -1).
                    None => assert!(*signal < 0, "{at}: signal {signal} not in HTCondor's event"),
                }
            }
            EventKind::Held { reason, code, .. } => {
                assert_eq!(
                    Some(code.unwrap_or(0)),
                    o["hold_code"].as_i64(),
                    "{at}: hold code"
                );
                if let Some(r) = o["hold_reason"].as_str() {
                    assert_eq!(reason.as_deref(), Some(r), "{at}: hold reason");
                }
            }
            _ => {}
        }
    }
    ours.len()
}
