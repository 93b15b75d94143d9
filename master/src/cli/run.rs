//! `mw run`, `mw submit` and `mw resume`: turning a job file into a journaled job and
//! driving its master until every task has an outcome.

use super::output::{Progress, ResultLine};
use super::{absolute, EXIT_OK, EXIT_TASKS_FAILED};
use crate::interface::Interface;
use crate::job::Job;
use crate::journal::{JobMeta, Journal};
use crate::master::{Master, MasterOptions, NextOutcome, TaskState};
use crate::task::{Program, TaskId, TaskSpec};
use anyhow::{bail, Context};
use clap::Args;
use mw_worker_runtime::{execute, ExecRequest, ProcessControl};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Options shared by run and submit.
#[derive(Args, Debug, Clone)]
pub(crate) struct JobOptions {
    /// The job file (TOML).
    pub(crate) job: PathBuf,
    /// Interface: multicore, mpi, condor or boinc (overrides the job file).
    #[arg(long)]
    pub(crate) interface: Option<String>,
    /// Worker slots for multicore (default: the job file's `workers`, else all cores).
    #[arg(long, short = 'j')]
    pub(crate) workers: Option<usize>,
    /// Job name (overrides the job file's `name`).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Directory holding job directories (default: $MW_JOBS_DIR or ./mw-jobs).
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

/// `mw run` arguments.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) job: JobOptions,
    /// Write result lines to FILE instead of stdout.
    #[arg(long, short = 'o')]
    pub(crate) output: Option<PathBuf>,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// Keep no journal (an in-memory master; nothing can be resumed).
    #[arg(long)]
    pub(crate) no_journal: bool,
}

/// `mw submit` arguments.
#[derive(Args, Debug)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) job: JobOptions,
    /// Submit even if the same job file is already submitted and unfinished.
    #[arg(long)]
    pub(crate) new: bool,
}

/// `mw resume` arguments.
#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    /// Job id (e.g. `monte_pi-1`) or job directory.
    pub(crate) job: String,
    /// Directory holding job directories (default: $MW_JOBS_DIR or ./mw-jobs).
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

/// The directory holding job directories.
pub(crate) fn jobs_root(arg: Option<&Path>) -> PathBuf {
    match arg {
        Some(p) => absolute(p),
        None => match std::env::var_os("MW_JOBS_DIR") {
            Some(d) => absolute(Path::new(&d)),
            None => absolute(Path::new("mw-jobs")),
        },
    }
}

/// Finds a job directory from an id or a path.
pub(crate) fn find_job_dir(job: &str, jobs_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(job);
    if as_path.join(crate::journal::JOURNAL_FILE).exists() || as_path.is_file() {
        return Ok(absolute(as_path));
    }
    let root = jobs_root(jobs_dir);
    let dir = root.join(job);
    if dir.is_dir() {
        return Ok(dir);
    }
    if as_path.is_dir() {
        return Ok(absolute(as_path));
    }
    bail!(
        "no job `{job}`: neither a job directory nor a job id under {} (see `mw status`)",
        root.display()
    )
}

fn new_job_dir(root: &Path, name: &str) -> anyhow::Result<(String, PathBuf)> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut n = 1u64;
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = fname.strip_prefix(&format!("{name}-")) {
                if let Ok(k) = rest.parse::<u64>() {
                    n = n.max(k + 1);
                }
            }
        }
    }
    loop {
        let id = format!("{name}-{n}");
        let dir = root.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

pub(crate) struct Prepared {
    pub(crate) job: Job,
    pub(crate) interface: String,
    pub(crate) workers: Option<usize>,
    pub(crate) inputs: Vec<serde_json::Value>,
    pub(crate) specs: Vec<TaskSpec>,
    pub(crate) reduce: Option<Program>,
}

/// Loads the job file and builds every task spec (all errors before anything runs).
pub(crate) fn prepare(opts: &JobOptions) -> anyhow::Result<Prepared> {
    let mut job = Job::load(&opts.job)?;
    if let Some(name) = &opts.name {
        job.name = name.clone();
        job.check_name()?;
    }
    let interface = opts.interface.clone().unwrap_or_else(|| job.interface());
    if !["multicore", "mpi", "condor", "boinc"].contains(&interface.as_str()) {
        bail!("--interface `{interface}`: expected multicore, mpi, condor or boinc");
    }
    let workers = opts.workers.or(job.file.workers);
    if workers == Some(0) {
        bail!("--workers must be at least 1");
    }
    let inputs = job.inputs()?;
    let builder = job.task_builder()?;
    let mut specs = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        specs.push(builder.build(i, input.clone())?);
    }
    let reduce = job.reduce_program()?;
    Ok(Prepared {
        job,
        interface,
        workers,
        inputs,
        specs,
        reduce,
    })
}

/// Builds the interface a job asks for.
pub(crate) fn make_interface(
    name: &str,
    job: &Job,
    workers: Option<usize>,
    job_dir: &Path,
) -> anyhow::Result<Arc<dyn Interface>> {
    let _ = (job, job_dir);
    match name {
        "multicore" => {
            let mc = match workers {
                Some(n) => crate::Multicore::new(n),
                None => crate::Multicore::default(),
            };
            Ok(Arc::new(mc))
        }
        "mpi" => mpi_interface(),
        other => crate::platforms::make(other, job, job_dir),
    }
}

#[cfg(feature = "mpi")]
fn mpi_interface() -> anyhow::Result<Arc<dyn Interface>> {
    match crate::mpi::Mpi::init()? {
        crate::mpi::MpiRole::Master(m) => Ok(Arc::new(m)),
        crate::mpi::MpiRole::Worker => {
            // A worker rank has served until the master released it.
            std::process::exit(0);
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_interface() -> anyhow::Result<Arc<dyn Interface>> {
    bail!("this mw was built without MPI support; rebuild with `cargo build --release --features mpi` (needs Open MPI and libclang)")
}

fn master_options(job: &Job, id: &str, job_dir: Option<&Path>) -> MasterOptions {
    MasterOptions {
        retries: job.file.retries.unwrap_or(0),
        job_name: id.to_string(),
        results_dir: job_dir.map(|d| d.join("results")),
        staging_dir: job_dir.map(|d| d.join("staging")),
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Creates the job directory and journal with every task queued.
fn create_job(
    p: &Prepared,
    jobs_dir: Option<&Path>,
) -> anyhow::Result<(String, PathBuf, Arc<Journal>)> {
    let root = jobs_root(jobs_dir);
    let (id, dir) = new_job_dir(&root, &p.job.name)?;
    std::fs::write(dir.join("job.toml"), &p.job.text)
        .with_context(|| format!("writing {}", dir.join("job.toml").display()))?;
    let meta = JobMeta {
        id: id.clone(),
        name: p.job.name.clone(),
        interface: p.interface.clone(),
        workers: p.workers,
        job_text: p.job.text.clone(),
        job_path: absolute(&p.job.path).display().to_string(),
        created: now_unix(),
    };
    let journal = Journal::create(&dir, &meta)?;
    Ok((id, dir, journal))
}

/// `mw run`.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<i32> {
    let p = prepare(&args.job)?;
    // Under mpirun, every rank gets here; worker ranks serve inside make_interface and exit.
    let early_interface = if p.interface == "mpi" {
        Some(make_interface("mpi", &p.job, p.workers, Path::new("."))?)
    } else {
        None
    };
    crate::platforms::preflight(&p.interface, &p.job)?;
    let (id, job_dir, journal) = if args.no_journal {
        (p.job.name.clone(), None, None)
    } else {
        let (id, dir, j) = create_job(&p, args.job.jobs_dir.as_deref())?;
        (id, Some(dir), Some(j))
    };
    let scratch;
    let dir_for_interface = match &job_dir {
        Some(d) => d.clone(),
        None => {
            scratch = tempfile::tempdir().context("creating a scratch directory")?;
            scratch.path().to_path_buf()
        }
    };
    let interface = match early_interface {
        Some(i) => i,
        None => make_interface(&p.interface, &p.job, p.workers, &dir_for_interface)?,
    };
    if let Some(d) = &job_dir {
        if !args.quiet {
            eprintln!(
                "mw: job {id} ({} tasks, {}) in {}",
                p.specs.len(),
                p.interface,
                d.display()
            );
        }
    }
    let opts = master_options(&p.job, &id, job_dir.as_deref().or(Some(&dir_for_interface)));
    let master = Master::build(interface, opts, journal.clone(), Vec::new())?;
    let total = p.specs.len();
    for chunk in p.specs.chunks(10_000) {
        master.submit_many(chunk.to_vec())?;
    }

    // Where result lines go.
    let reduce_present = p.reduce.is_some();
    let mut sink: Box<dyn Write> = match (&args.output, reduce_present, &job_dir) {
        (Some(path), _, _) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        (None, true, Some(d)) => {
            let path = d.join("results.jsonl");
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ))
        }
        (None, true, None) => Box::new(std::io::sink()),
        (None, false, _) => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut progress = Progress::new(total as u64, args.quiet);
    let mut lines: BTreeMap<u64, ResultLine> = BTreeMap::new();
    let mut next_to_write = 0u64;
    let mut failed = 0usize;
    let mut reduce_inputs: Vec<Option<serde_json::Value>> =
        vec![None; if reduce_present { total } else { 0 }];
    drive(
        &master,
        journal.as_deref(),
        &mut progress,
        |task, outcome, times| {
            if outcome.is_err() {
                failed += 1;
            }
            if reduce_present {
                if let Ok(out) = &outcome {
                    reduce_inputs[task.0 as usize] = Some(out.value.clone());
                }
            }
            let line = ResultLine::from_outcome(
                task.0,
                p.inputs[task.0 as usize].clone(),
                &outcome,
                Some(&times),
            );
            lines.insert(task.0, line);
            while let Some(line) = lines.remove(&next_to_write) {
                serde_json::to_writer(&mut sink, &line)?;
                sink.write_all(b"\n")?;
                next_to_write += 1;
            }
            Ok(())
        },
    )?;
    sink.flush()?;
    drop(sink);
    if let Some(j) = &journal {
        j.set_job_status("finished")?;
    }
    drop(master);
    if let Some(j) = &journal {
        j.close();
    }
    if failed > 0 {
        eprintln!("mw: {failed} of {total} tasks failed");
    }
    if let Some(reduce) = &p.reduce {
        if failed > 0 {
            eprintln!("mw: the reduce program was not run because tasks failed");
            return Ok(EXIT_TASKS_FAILED);
        }
        let values: Vec<serde_json::Value> = reduce_inputs
            .into_iter()
            .map(|v| v.unwrap_or_default())
            .collect();
        let out = run_reduce(reduce, &values)?;
        std::io::stdout().write_all(&out)?;
        std::io::stdout().flush()?;
    }
    Ok(if failed > 0 {
        EXIT_TASKS_FAILED
    } else {
        EXIT_OK
    })
}

/// Collects every task's outcome as it finishes, handing each to `on_finished`, keeping
/// the progress display current and applying `mw cancel` requests from the journal.
fn drive(
    master: &Master,
    journal: Option<&Journal>,
    progress: &mut Progress,
    mut on_finished: impl FnMut(
        TaskId,
        Result<crate::TaskOutput, crate::MwError>,
        crate::TaskTimes,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    loop {
        match master.next_outcome(Duration::from_millis(500)) {
            NextOutcome::Finished(task, outcome, times) => on_finished(task, outcome, times)?,
            NextOutcome::Pending => {
                if let Some(j) = journal {
                    apply_cancel_requests(master, j)?;
                }
            }
            NextOutcome::AllCollected => break,
        }
        progress.update(&master.counts(), false);
    }
    progress.update(&master.counts(), true);
    progress.finish();
    Ok(())
}

fn apply_cancel_requests(master: &Master, journal: &Journal) -> anyhow::Result<()> {
    for req in journal.take_cancel_requests()? {
        match req {
            None => master.cancel_all(),
            Some(t) => {
                let _ = master.cancel(TaskId(t));
            }
        }
    }
    Ok(())
}

/// Runs the reduce program locally with every result as a JSON line on stdin.
pub(crate) fn run_reduce(
    reduce: &Program,
    values: &[serde_json::Value],
) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir().context("creating a scratch directory for reduce")?;
    let work = dir.path().join("work");
    let io = dir.path().join("io");
    std::fs::create_dir(&work)?;
    std::fs::create_dir(&io)?;
    for (name, path) in reduce.files() {
        std::os::unix::fs::symlink(path, work.join(name))?;
    }
    let mut stdin = Vec::new();
    for v in values {
        serde_json::to_writer(&mut stdin, v)?;
        stdin.push(b'\n');
    }
    let mut req = ExecRequest::new(reduce.executable().to_path_buf(), work, io);
    req.args = reduce.base_args().to_vec();
    req.stdin = stdin;
    let out = execute(&req, &ProcessControl::new())?;
    if !out.exit.success() {
        bail!(
            "the reduce program {} failed: {}\n{}",
            reduce.executable().display(),
            out.exit,
            out.stderr_tail
        );
    }
    Ok(out.stdout)
}

/// `mw submit`: create the job and start a detached master (`mw resume`) for it.
pub(crate) fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let p = prepare(&args.job)?;
    if p.interface == "mpi" {
        bail!("an MPI job runs inside mpirun: use `mpirun -n N mw run JOB --interface mpi`");
    }
    let root = jobs_root(args.job.jobs_dir.as_deref());
    if !args.new {
        if let Some(existing) =
            super::jobs::unfinished_job_with_text(&root, &p.job.name, &p.job.text)
        {
            bail!(
                "this job file is already submitted as `{existing}` and not finished: \
                 `mw resume {existing}` restarts its master if it died, `mw status {existing}` shows it; \
                 pass --new (or --name) to submit it again as a new job"
            );
        }
    }
    crate::platforms::preflight(&p.interface, &p.job)?;
    let (id, dir, journal) = create_job(&p, args.job.jobs_dir.as_deref())?;
    let ids_first = 0u64;
    journal.record_submitted(ids_first, &p.specs)?;
    // Not `running` under this (short-lived) process's pid, or the detached master would
    // see a live master and refuse to start.
    journal.set_job_status("submitted")?;
    journal.close();
    drop(journal);
    let pid = spawn_detached_master(&dir)?;
    // Record the detached master at once, so `mw wait`/`mw status` right after `mw submit`
    // see a live master (the master records itself too; a finished one is left alone).
    let path = dir.join(crate::journal::JOURNAL_FILE);
    let conn = crate::journal::open_checked(&path, true)?;
    conn.execute(
        "UPDATE job SET master_pid = ?1, master_host = ?2, status = 'running' WHERE status = 'submitted'",
        rusqlite::params![pid as i64, mw_worker_runtime::exec::host_name()],
    )
    .with_context(|| format!("{}: recording the master", path.display()))?;
    drop(conn);
    println!("{id}\t{}", dir.display());
    Ok(EXIT_OK)
}

fn spawn_detached_master(dir: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding the mw executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("master.log"))
        .with_context(|| format!("creating {}", dir.join("master.log").display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("resume")
        .arg(dir)
        .arg("--quiet")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    use std::os::unix::process::CommandExt;
    // A new session: the master survives the terminal closing (no SIGHUP).
    cmd.process_group(0);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the detached master")?;
    Ok(child.id())
}

/// `mw resume`: restart the master of a job whose master died (or finish a submitted job).
pub(crate) fn resume(args: ResumeArgs) -> anyhow::Result<i32> {
    let dir = find_job_dir(&args.job, args.jobs_dir.as_deref())?;
    // Refuse to run a second master beside a live one.
    if let Some(pid) = super::jobs::live_master_pid(&dir)? {
        if pid != std::process::id() as i64 {
            bail!(
                "job {} already has a running master (pid {pid}); `mw status` shows its progress",
                dir.display()
            );
        }
    }
    let journal_path = dir.join(crate::journal::JOURNAL_FILE);
    let (meta, stored) = {
        let conn = crate::journal::open_checked(&journal_path, false)?;
        (
            crate::journal::read_meta(&conn, &journal_path)?,
            crate::journal::read_tasks(&conn, &journal_path, None)?,
        )
    };
    let job_path = PathBuf::from(&meta.job_path);
    let mut job = Job::parse(&job_path, meta.job_text.clone())?;
    job.name = meta.name.clone();
    let unfinished = stored.iter().filter(|t| !t.state.is_final()).count();
    if unfinished == 0 {
        let (journal, _, _) = Journal::open(&dir)?;
        journal.set_job_status("finished")?;
        journal.close();
        eprintln!(
            "mw: job {} is finished ({} tasks); nothing to resume",
            meta.id,
            stored.len()
        );
        return Ok(if stored.iter().all(|t| t.state == TaskState::Done) {
            EXIT_OK
        } else {
            EXIT_TASKS_FAILED
        });
    }
    let builder = job.task_builder()?;
    let reduce = job.reduce_program()?;
    let interface = make_interface(&meta.interface, &job, meta.workers, &dir)?;
    let remote = interface.keeps_running_without_master();
    let to_reattach = stored
        .iter()
        .filter(|t| remote && t.state == TaskState::Running && t.handle.is_some())
        .count();
    let opts = master_options(&job, &meta.id, Some(&dir));
    let total = stored.len();
    if !args.quiet {
        eprintln!(
            "mw: resuming job {} ({} of {total} tasks unfinished, {to_reattach} to re-attach)",
            meta.id, unfinished,
        );
    }
    let master = Master::resume(interface, opts, &dir, |index, input| {
        builder
            .build(index as usize, input)
            .map_err(|e| crate::MwError::Journal(e.to_string()))
    })?;
    let journal = master
        .journal()
        .cloned()
        .context("a resumed master always has a journal")?;
    let mut progress = Progress::new(total as u64, args.quiet);
    progress.set_baseline((total - unfinished) as u64);
    let mut failed = stored
        .iter()
        .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Cancelled))
        .count();
    drive(&master, Some(&journal), &mut progress, |_, outcome, _| {
        if outcome.is_err() {
            failed += 1;
        }
        Ok(())
    })?;
    drop(master);
    if failed == 0 {
        if let Some(reduce) = &reduce {
            reduce_from_journal(&dir, reduce)?;
        }
    }
    journal.set_job_status("finished")?;
    journal.close();
    Ok(if failed > 0 {
        EXIT_TASKS_FAILED
    } else {
        EXIT_OK
    })
}

/// For a job finished by a resumed or detached master: runs the reduce program over the
/// journal's results (task order), keeps its output in `<job dir>/reduce.out` (which
/// `mw wait` prints) and prints it.
fn reduce_from_journal(dir: &Path, reduce: &Program) -> anyhow::Result<()> {
    let path = dir.join(crate::journal::JOURNAL_FILE);
    let conn = crate::journal::open_checked(&path, false)?;
    let values: Vec<serde_json::Value> = crate::journal::read_tasks(&conn, &path, None)?
        .into_iter()
        .map(|t| t.output.unwrap_or_default())
        .collect();
    drop(conn);
    let out = run_reduce(reduce, &values)?;
    mw_worker_runtime::run::write_atomically(&dir.join("reduce.out"), &out)?;
    std::io::stdout().write_all(&out)?;
    std::io::stdout().flush()?;
    Ok(())
}
