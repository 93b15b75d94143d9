//! `mw run`, `mw submit` and `mw resume`: turning a job file into a journaled job and
//! driving its master until every task has an outcome.

use crate::job::{Inputs, Job, TaskBuilder};
use crate::output::{Progress, ResultLine};
use crate::{absolute, EXIT_INTERRUPTED, EXIT_OK, EXIT_TASKS_FAILED};
use anyhow::{bail, Context};
use clap::Args;
use mw::interface::Interface;
use mw::journal::{JobMeta, Journal};
use mw::master::{Master, MasterOptions, NextOutcome, SpecSource};
use mw::task::{Program, TaskId, TaskSpec};
use mw_worker_runtime::{execute, ExecRequest, ProcessControl};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Keep no journal (an in-memory master; nothing can be resumed, nothing is kept on
    /// disk: refused for a job that declares output files).
    #[arg(long)]
    pub(crate) no_journal: bool,
    /// Stop once N tasks failed, or P% of the job's tasks (overrides the job file's
    /// `max_failures` for this run); the rest waits for `mw resume`.
    #[arg(long, value_name = "N|P%")]
    pub(crate) max_failures: Option<crate::job::FailureLimit>,
    /// Print each task as it would run (a JSON line: task, input, command, env, input
    /// files, outputs, timeout) after every check, and run nothing, create nothing.
    #[arg(long, conflicts_with_all = ["output", "no_journal", "max_failures"])]
    pub(crate) dry_run: bool,
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

/// The job a command acts on: an id found under the jobs directory, or a job directory.
#[derive(Args, Debug)]
pub(crate) struct JobRef {
    /// Job id (e.g. `monte_pi-1`) or job directory.
    pub(crate) job: String,
    /// Directory holding job directories (default: $MW_JOBS_DIR or ./mw-jobs).
    #[arg(long)]
    pub(crate) jobs_dir: Option<PathBuf>,
}

impl JobRef {
    /// The job's directory.
    pub(crate) fn dir(&self) -> anyhow::Result<PathBuf> {
        find_job_dir(&self.job, self.jobs_dir.as_deref())
    }
}

/// `mw resume` arguments.
#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    pub(crate) at: JobRef,
}

/// `mw retry` arguments.
#[derive(Args, Debug)]
pub(crate) struct RetryArgs {
    #[command(flatten)]
    pub(crate) at: JobRef,
    /// Only failed tasks (default: failed and cancelled ones).
    #[arg(long, conflicts_with = "task")]
    pub(crate) failed: bool,
    /// Only this task (repeatable); it must have failed or been cancelled.
    #[arg(long, value_name = "N")]
    pub(crate) task: Vec<u64>,
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

/// How the user names the job in `dir` on a command line mw suggests: its id where a plain
/// `mw … ID` finds it (the default jobs directory), else its directory's path (a job made
/// with `--jobs-dir` would not be found by its id alone), single-quoted when the shell
/// needs it.
pub(crate) fn job_arg(id: &str, dir: &Path) -> String {
    if find_job_dir(id, None).is_ok_and(|d| d == dir) {
        return id.to_string();
    }
    let path = dir.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,=:@%".contains(c);
    if path.chars().all(plain) {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

/// Finds a job directory from an id or a path.
pub(crate) fn find_job_dir(job: &str, jobs_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(job);
    if as_path.join(mw::journal::JOURNAL_FILE).exists() || as_path.is_file() {
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

/// The jobs directory's lock file: held (flock) while a job id is chosen and, for
/// `mw submit`, while it looks for the same job submitted already.
const JOBS_LOCK: &str = ".mw-jobs.lock";

/// Makes the directory of a new job `name` under `root`, with the next free number, after
/// `before` (run while no other mw chooses an id under `root`: two `mw submit`s of one job
/// file at once each see the other). A number once given is never given again, even if its
/// directory was moved away (`.mw-last-<name>` keeps the last): a moved job's running master
/// would otherwise write into the new job that took its path.
fn new_job_dir(
    root: &Path,
    name: &str,
    before: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(String, PathBuf, std::fs::File)> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let lock_path = root.join(JOBS_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .with_context(|| format!("locking {}", lock_path.display()))?;
    before()?;
    let last_path = root.join(format!(".mw-last-{name}"));
    let mut n = std::fs::read_to_string(&last_path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .and_then(|k| k.checked_add(1))
        .unwrap_or(1);
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = fname.strip_prefix(&format!("{name}-")) {
                // A directory named with the largest number (`name-18446744073709551615`)
                // leaves the next number to the loop below, not to an overflow.
                if let Some(next) = rest.parse::<u64>().ok().and_then(|k| k.checked_add(1)) {
                    n = n.max(next);
                }
            }
        }
    }
    loop {
        let id = format!("{name}-{n}");
        let dir = root.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                mw_bundle::write_atomic(&last_path, format!("{n}\n").as_bytes(), None)
                    .with_context(|| format!("writing {}", last_path.display()))?;
                return Ok((id, dir, lock));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                n = n.checked_add(1).with_context(|| {
                    format!("no free job number for `{name}` in {}", root.display())
                })?;
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

pub(crate) struct Prepared {
    pub(crate) job: Job,
    pub(crate) interface: String,
    pub(crate) workers: Option<usize>,
    /// Counted, produced lazily: no task's input or spec is kept for the whole run (the
    /// journal holds the inputs; specs are built on dispatch).
    pub(crate) inputs: Arc<Inputs>,
    pub(crate) builder: Arc<TaskBuilder>,
    pub(crate) reduce: Option<Program>,
}

/// Tasks recorded (and submitted) per journal transaction, at most.
const RECORD_CHUNK: usize = 10_000;

/// The first transaction's tasks: the slots start on them while later chunks, each 4 times
/// larger up to [`RECORD_CHUNK`], are recorded.
const FIRST_RECORD_CHUNK: usize = 500;

/// Builds every task spec once and drops it, so every error comes before anything runs
/// while memory stays that of one task.
fn check_specs(inputs: &Inputs, builder: &TaskBuilder, skip: usize) -> anyhow::Result<()> {
    for (i, input) in inputs.iter().enumerate().skip(skip) {
        builder.build(i, input?)?;
    }
    Ok(())
}

/// The spec source of a job's tasks: its template builder over each task's input, which a
/// list or a sweep makes from the task's index (a file's inputs are read back from the
/// journal).
struct JobSource {
    builder: Arc<TaskBuilder>,
    inputs: Option<Arc<Inputs>>,
}

impl SpecSource for JobSource {
    fn build(&self, index: u64, input: serde_json::Value) -> Result<TaskSpec, String> {
        let index = usize::try_from(index).map_err(|e| e.to_string())?;
        self.builder.build(index, input).map_err(|e| e.to_string())
    }

    fn input(&self, index: u64) -> Option<serde_json::Value> {
        self.inputs.as_ref().and_then(|i| i.get(index))
    }

    fn makes_every_input(&self) -> bool {
        self.inputs.as_ref().is_some_and(|i| i.indexed())
    }
}

fn spec_source(builder: &Arc<TaskBuilder>, inputs: Option<&Arc<Inputs>>) -> Arc<dyn SpecSource> {
    Arc::new(JobSource {
        builder: builder.clone(),
        inputs: inputs.cloned(),
    })
}

/// Hands `inputs` (from task `skip` on) to `record` in chunks growing from
/// [`FIRST_RECORD_CHUNK`] to [`RECORD_CHUNK`], with the index of each chunk's first task,
/// each input made into a `T` by `each` as it is produced (its JSON text, say: a chunk of
/// small objects then costs a few bytes per input instead of a map node of hundreds).
fn in_chunks<T>(
    inputs: &Inputs,
    skip: usize,
    each: impl Fn(serde_json::Value) -> anyhow::Result<T>,
    mut record: impl FnMut(u64, Vec<T>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut size = FIRST_RECORD_CHUNK;
    let mut chunk = Vec::with_capacity(size);
    let mut first = skip as u64;
    for input in inputs.iter().skip(skip) {
        chunk.push(each(input?)?);
        if chunk.len() == size {
            let n = chunk.len() as u64;
            size = (size * 4).min(RECORD_CHUNK);
            record(
                first,
                std::mem::replace(&mut chunk, Vec::with_capacity(size)),
            )?;
            first += n;
        }
    }
    if !chunk.is_empty() {
        record(first, chunk)?;
    }
    Ok(())
}

/// Stops the master if the thread recording a run's tasks dies (`mw run`): it would
/// otherwise run every task recorded so far (and wait for any that never ends) before
/// `mw run` said anything. The job stays `recording`: `mw resume` records the rest.
struct StopIfRecorderDies<'a> {
    master: &'a Master,
    recording: &'a AtomicBool,
}

impl Drop for StopIfRecorderDies<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.master
                .stop("recording the tasks failed: the thread recording them panicked");
            self.recording.store(false, Ordering::Release);
        }
    }
}

/// The recording of a run's tasks ended because the master stopped (not an error).
#[derive(Debug, thiserror::Error)]
#[error("the master stopped before every task was recorded")]
struct RecordingStopped;

/// An input as the journal stores it.
fn encode(input: serde_json::Value) -> anyhow::Result<Box<serde_json::value::RawValue>> {
    Ok(serde_json::value::to_raw_value(&input)?)
}

/// Loads the job file and checks every task spec (all errors before anything runs).
pub(crate) fn prepare(opts: &JobOptions) -> anyhow::Result<Prepared> {
    crate::signals::at_once_during(|| prepare_job(opts, true))
}

/// [`prepare`] for `mw run --dry-run`, which runs nothing: the platform's own tools need
/// not be on this machine (a HTCondor job is shown on a laptop without HTCondor).
fn prepare_dry_run(opts: &JobOptions) -> anyhow::Result<Prepared> {
    crate::signals::at_once_during(|| prepare_job(opts, false))
}

fn prepare_job(opts: &JobOptions, platform_needed: bool) -> anyhow::Result<Prepared> {
    let mut job = Job::load(&opts.job)?;
    if let Some(name) = &opts.name {
        job.name = name.clone();
        job.check_name()?;
    }
    let interface = opts.interface.clone().unwrap_or_else(|| job.interface());
    if !["multicore", "mpi", "condor", "boinc"].contains(&interface.as_str()) {
        bail!("--interface `{interface}`: expected multicore, mpi, condor or boinc");
    }
    if platform_needed {
        crate::platforms::check_available(&interface)?;
    }
    let workers = opts.workers.or(job.workers()?);
    if workers.is_some_and(|w| !(1..=crate::job::MAX_WORKERS).contains(&w)) {
        bail!(
            "--workers must be between 1 and {}",
            crate::job::MAX_WORKERS
        );
    }
    let inputs = Arc::new(job.input_source()?);
    let builder = Arc::new(job.task_builder()?);
    check_specs(&inputs, &builder, 0)?;
    let reduce = job.reduce_program()?;
    Ok(Prepared {
        job,
        interface,
        workers,
        inputs,
        builder,
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
            watch_local_tasks();
            let mc = match workers {
                Some(n) => mw::Multicore::new(n),
                None => mw::Multicore::default(),
            };
            Ok(Arc::new(mc))
        }
        "mpi" => mpi_interface(workers),
        other => crate::platforms::make(other, job, job_dir),
    }
}

/// Starts, once per process, the watchdog that kills this master's local tasks when the master
/// is gone however it died (SIGKILL, the OOM killer): every process carrying this process's
/// task-token prefix, also those that left their process group or working directory
/// (`mw_worker_runtime::dying`, the same one `mw-worker` runs; this binary answers its
/// hidden argument in `main`). Without it (it could not start), `mw resume` and `mw cancel`
/// still stop the leftovers they can find by their journaled process groups.
fn watch_local_tasks() {
    #[cfg(unix)]
    {
        static WATCHDOG: std::sync::OnceLock<Option<mw_worker_runtime::dying::Watchdog>> =
            std::sync::OnceLock::new();
        WATCHDOG.get_or_init(|| match mw_worker_runtime::dying::Watchdog::start(None) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "no watchdog for the local tasks ({e}): if this master is killed, its \
                     running tasks stay until `mw resume` or `mw cancel` stops them"
                );
                None
            }
        });
    }
}

/// Under an MPI launcher, a worker rank of a job on the MPI interface (`interface` says
/// which one the job uses) serves the tasks rank 0 sends it and returns true once released,
/// having read nothing else of the job (see `mw::mpi::launcher_says_worker_rank`).
fn served_as_mpi_worker(
    interface: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<bool> {
    #[cfg(feature = "mpi")]
    if mw::mpi::launcher_says_worker_rank() && interface()? == "mpi" {
        // A rank runs its tasks as local processes: if it is killed (the OOM killer, an
        // impatient second Ctrl-C to mpirun), the watchdog stops what they started too.
        // Started before `MPI_Init`, so no MPI state is forked.
        watch_local_tasks();
        mw::mpi::serve_worker()?;
        return Ok(true);
    }
    #[cfg(not(feature = "mpi"))]
    let _ = interface;
    Ok(false)
}

/// Why this process cannot be an MPI job's master (see `mw::mpi::launcher_world_problem`).
#[cfg(feature = "mpi")]
fn mpi_master_problem() -> Option<String> {
    mw::mpi::launcher_world_problem()
}

#[cfg(not(feature = "mpi"))]
fn mpi_master_problem() -> Option<String> {
    Some(NO_MPI.to_string())
}

/// What an mw built without MPI says of an MPI job.
#[cfg(not(feature = "mpi"))]
const NO_MPI: &str = "this mw was built without MPI support; rebuild with `cargo build --release --features mpi` (needs Open MPI and libclang)";

/// The MPI interface (rank 0). `workers` (the job file's or `--workers`) is not used on MPI:
/// the ranks `mpirun -n` starts are the workers, which rank 0 says when they differ.
#[cfg(feature = "mpi")]
fn mpi_interface(workers: Option<usize>) -> anyhow::Result<Arc<dyn Interface>> {
    match mw::mpi::Mpi::init()? {
        mw::mpi::MpiRole::Master(m) => {
            if let Some(n) = workers.filter(|n| *n != m.workers()) {
                say!(
                    "mw: workers = {n} is not used on MPI: the {} worker ranks `mpirun -n` \
                     started run the tasks",
                    m.workers()
                );
            }
            Ok(Arc::new(m))
        }
        mw::mpi::MpiRole::Worker => {
            // A worker rank has served until the master released it.
            std::process::exit(0);
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_interface(_workers: Option<usize>) -> anyhow::Result<Arc<dyn Interface>> {
    bail!(NO_MPI)
}

fn master_options(
    job: &Job,
    id: &str,
    job_dir: Option<&Path>,
    halt: Option<Halt>,
) -> MasterOptions {
    // Checked when the job file was parsed.
    let (retry_backoff, retry_on) = job.retry_policy().unwrap_or_default();
    MasterOptions {
        retries: job.file.retries.unwrap_or(0),
        job_name: id.to_string(),
        results_dir: job_dir.map(|d| d.join("results")),
        staging_dir: job_dir.map(|d| d.join("staging")),
        logs_dir: job_dir.map(|d| d.join(LOGS_DIR)),
        retry_backoff,
        retry_on,
        max_failures: halt.map(|h| h.after),
    }
}

/// Where a job directory keeps each attempt's stdout and stderr (`mw logs`).
pub(crate) const LOGS_DIR: &str = "logs";

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
    before: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(String, PathBuf, Arc<Journal>)> {
    let root = jobs_root(jobs_dir);
    // The jobs directory stays locked until the journal exists (in status `recording`,
    // which the duplicate check of another `mw submit` counts as unfinished).
    let (id, dir, _lock) = new_job_dir(&root, &p.job.name, before)?;
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
    // Until every task is recorded the job is not complete: `mw resume` of a job still
    // "recording" (its creator was killed) records the missing tasks from the job file first.
    // The journal is created in that status (once created "running" and then set: a kill in
    // between left a job that resume and wait called finished, with no task).
    let journal = Journal::create_in_status(&dir, &meta, STATUS_RECORDING)?;
    Ok((id, dir, journal))
}

/// Which of the files a job reads `path` is (the job file, its program and reduce program
/// with their files, its inputs file), if any: `mw run --output` would replace it.
fn job_file_at(p: &Prepared, path: &Path) -> Option<&'static str> {
    let target = std::fs::canonicalize(path).ok()?;
    let same = |b: &Path| std::fs::canonicalize(b).ok().as_ref() == Some(&target);
    let program_has =
        |prog: &Program| same(prog.executable()) || prog.files().iter().any(|(_, f)| same(f));
    if same(&p.job.path) {
        Some("the job file")
    } else if program_has(p.builder.program()) {
        Some("the job's program or one of its files")
    } else if p.reduce.as_ref().is_some_and(program_has) {
        Some("the job's reduce program or one of its files")
    } else if matches!(&*p.inputs, Inputs::Lines { path: f, .. } if same(f)) {
        Some("the job's inputs file")
    } else {
        None
    }
}

/// `mw run --dry-run`: every task's spec as a JSON line on stdout, built as a master would
/// build it on dispatch; nothing runs and nothing is created.
fn dry_run(p: &Prepared, quiet: bool) -> anyhow::Result<i32> {
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, input) in p.inputs.iter().enumerate() {
        let spec = p.builder.build(i, input?)?;
        let program = &spec.program;
        let command: Vec<String> = std::iter::once(program.executable().display().to_string())
            .chain(program.base_args().iter().cloned())
            .chain(spec.args.iter().cloned())
            .collect();
        let line = serde_json::json!({
            "task": i,
            "input": spec.input,
            "command": command,
            "env": spec.env,
            "input_files": spec
                .input_files
                .iter()
                .map(|(name, path)| serde_json::json!({"name": name, "path": path}))
                .collect::<Vec<_>>(),
            "outputs": spec.outputs,
            "timeout_secs": spec.timeout.map(|t| t.as_secs_f64()),
        });
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    if !quiet {
        say!(
            "mw: dry run of job {}: {} tasks on {}; nothing was run or created",
            p.job.name,
            p.inputs.len(),
            p.interface
        );
    }
    Ok(EXIT_OK)
}

/// `mw run`.
pub(crate) fn run(args: RunArgs, quiet: bool) -> anyhow::Result<i32> {
    let opts = &args.job;
    if args.dry_run {
        return dry_run(&prepare_dry_run(opts)?, quiet);
    }
    if served_as_mpi_worker(|| match &opts.interface {
        Some(i) => Ok(i.clone()),
        None => Ok(Job::load(&opts.job)?.interface()),
    })? {
        return Ok(EXIT_OK);
    }
    let p = prepare(&args.job)?;
    if args.no_journal && p.job.stdout_mode()? == mw::StdoutMode::File {
        bail!(
            "{}: `stdout = \"file\"` keeps each task's stdout as a file, which --no-journal \
             cannot keep (it keeps nothing on disk); run it without --no-journal",
            p.job.path.display()
        );
    }
    if args.no_journal && !p.job.file.outputs.is_empty() {
        // Without a job directory they would land in a scratch directory removed at exit,
        // and the result lines would name files that are gone.
        bail!(
            "{}: the job declares output files (`outputs`), which --no-journal cannot keep \
             (it keeps nothing on disk); run it without --no-journal: they go to \
             jobs/ID/results/task-N/",
            p.job.path.display()
        );
    }
    // The results file is made before the job: one that cannot be made (a directory, no
    // permission) leaves no job behind. It never replaces a file the job reads.
    let mut output_file = match &args.output {
        Some(path) => {
            if let Some(what) = job_file_at(&p, path) {
                bail!("--output {}: that is {what}", path.display());
            }
            Some(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )
        }
        None => None,
    };
    // Rank 0 of an MPI job starts MPI before it creates anything (worker ranks serve in
    // `served_as_mpi_worker`).
    let early_interface = if p.interface == "mpi" {
        Some(make_interface("mpi", &p.job, p.workers, Path::new("."))?)
    } else {
        None
    };
    // (Without a journal the interface stages in a scratch directory of its own.)
    let root = (!args.no_journal).then(|| jobs_root(args.job.jobs_dir.as_deref()));
    crate::platforms::preflight(&p.interface, &p.job, root.as_deref())?;
    let (id, job_dir, journal) = if args.no_journal {
        (p.job.name.clone(), None, None)
    } else {
        let (id, dir, j) = create_job(&p, args.job.jobs_dir.as_deref(), || Ok(()))?;
        (id, Some(dir), Some(j))
    };
    // Declared before `scratch`, so dropped after it: the directory goes while locked.
    let _scratch_lock;
    let scratch;
    let dir_for_interface = match &job_dir {
        Some(d) => d.clone(),
        None => {
            let (dir, lock) =
                mw::multicore::locked_scratch_dir().context("creating a scratch directory")?;
            (scratch, _scratch_lock) = (dir, lock);
            scratch.path().to_path_buf()
        }
    };
    let interface = match early_interface {
        Some(i) => i,
        None => make_interface(&p.interface, &p.job, p.workers, &dir_for_interface)?,
    };
    if let Some(d) = &job_dir {
        if !quiet {
            say!(
                "mw: job {id} ({} tasks, {}) in {}",
                p.inputs.len(),
                p.interface,
                d.display()
            );
        }
    }
    let total = usize::try_from(p.inputs.len())?;
    let halt = Halt::new(
        match args.max_failures {
            Some(limit) => Some(limit),
            None => p.job.max_failures()?,
        },
        total as u64,
    );
    let opts = master_options(
        &p.job,
        &id,
        job_dir.as_deref().or(Some(&dir_for_interface)),
        halt,
    );
    let master = match &journal {
        Some(j) => Master::with_created_journal(interface, opts, j.clone())?,
        None => Master::with_options(interface, opts)?,
    };
    let source = spec_source(&p.builder, Some(&p.inputs));
    // A master killed here leaves a job created but with no task recorded yet.
    mw::crash::point("run-before-recording");
    // The tasks are recorded (and submitted) by a thread of their own while this one
    // collects results: the first results never wait for the last tasks' recording, and
    // results do not pile up in the master meanwhile. Until it is done, the master counts
    // more tasks to come (so the run does not end early) and cancel requests wait.
    let more_to_come = master.expect_more();
    let recording = AtomicBool::new(true);
    let record = || -> anyhow::Result<()> {
        let _more_to_come = more_to_come;
        let _stop = StopIfRecorderDies {
            master: &master,
            recording: &recording,
        };
        let after_chunk = || mw::crash::point("run-recorded-chunk");
        // A stopped master (Ctrl-C, a failed journal) records nothing more: the job stays
        // "recording" and `mw resume` records the rest (a 3x10^6 sweep was once recorded to
        // its end after Ctrl-C).
        let stopped = || master.stopped().is_some();
        let recorded = if journal.is_some() {
            in_chunks(&p.inputs, 0, encode, |first, chunk| {
                if stopped() {
                    return Err(anyhow::Error::new(RecordingStopped));
                }
                master.submit_encoded_inputs(chunk, source.clone())?;
                // A master killed here leaves a job whose tasks are partly recorded.
                after_chunk();
                mw::crash::panic_point("run-record", Some(first));
                Ok(())
            })
        } else {
            in_chunks(&p.inputs, 0, Ok, |_, chunk| {
                if stopped() {
                    return Err(anyhow::Error::new(RecordingStopped));
                }
                master.submit_inputs(chunk, source.clone())?;
                after_chunk();
                Ok(())
            })
        }
        .and_then(|()| match &journal {
            Some(j) => Ok(j.set_job_status("running")?),
            None => Ok(()),
        });
        let recorded = match recorded {
            Err(e) if e.is::<RecordingStopped>() => Ok(()),
            other => other,
        };
        if let Err(e) = &recorded {
            master.stop(&format!("recording the tasks failed: {e:#}"));
        }
        recording.store(false, Ordering::Release);
        recorded
    };
    // The result lines' inputs: made from the index (a list, a sweep), else read back from
    // the journal, else (a file of inputs without a journal) kept in memory.
    let kept_inputs: Option<Vec<serde_json::Value>> = match (&journal, p.inputs.get(0)) {
        (None, None) => Some(p.inputs.iter().collect::<Result<_, _>>()?),
        _ => None,
    };

    // Where result lines go.
    let reduce_present = p.reduce.is_some();
    let dest = match (&args.output, reduce_present, &job_dir) {
        (Some(path), _, _) => path.display().to_string(),
        (None, true, Some(d)) => d.join("results.jsonl").display().to_string(),
        (None, true, None) => "nowhere".to_string(),
        (None, false, _) => "standard output".to_string(),
    };
    let mut sink: Box<dyn Write> = match (&args.output, reduce_present, &job_dir) {
        (Some(path), _, _) => {
            Box::new(std::io::BufWriter::new(output_file.take().with_context(
                || format!("{} was not created", path.display()),
            )?))
        }
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
    let mut progress = Progress::new(total as u64, quiet);
    // Lines that finished ahead of an earlier task wait here, as their JSON text (a few
    // times smaller than the parsed line).
    let mut lines: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next_to_write = 0u64;
    let mut failed = 0usize;
    let mut tally = Tally::default();
    // Without a journal, the reduce program's input waits here as JSON text (with one, it is
    // read back from the journal one result at a time).
    let keep_for_reduce = reduce_present && journal.is_none();
    let mut reduce_inputs: Vec<Option<Box<str>>> =
        vec![None; if keep_for_reduce { total } else { 0 }];
    let (recorded, end) = std::thread::scope(|scope| {
        let recorder = std::thread::Builder::new()
            .name("mw-record".into())
            .spawn_scoped(scope, record);
        let recorder = match recorder {
            Ok(r) => r,
            Err(e) => return (Err(anyhow::Error::from(e)), None),
        };
        let end = drive(
            &master,
            journal.as_deref(),
            Some(&recording),
            &mut progress,
            halt,
            |task, outcome, times| {
                if outcome.is_err() {
                    failed += 1;
                }
                tally.add(task.0, &outcome);
                if keep_for_reduce {
                    if let Ok(out) = &outcome {
                        reduce_inputs[task.0 as usize] = Some(out.value.to_string().into());
                    }
                }
                let input = match (p.inputs.get(task.0), &kept_inputs, &journal) {
                    (Some(input), _, _) => input,
                    (None, Some(inputs), _) => inputs[task.0 as usize].clone(),
                    (None, None, Some(j)) => j.read_input(task.0)?,
                    (None, None, None) => serde_json::Value::Null,
                };
                let line = ResultLine::from_outcome_owned(task.0, input, outcome, &times);
                if task.0 != next_to_write {
                    let mut text = serde_json::to_vec(&line)?;
                    text.push(b'\n');
                    lines.insert(task.0, text);
                    return Ok(());
                }
                let written = serde_json::to_writer(&mut sink, &line)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| Ok(sink.write_all(b"\n")?))
                    .and_then(|()| {
                        next_to_write += 1;
                        while let Some(line) = lines.remove(&next_to_write) {
                            sink.write_all(&line)?;
                            next_to_write += 1;
                        }
                        Ok(())
                    });
                written.with_context(|| format!("writing results to {dest}"))
            },
        );
        let recorded = recorder.join().unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            let resume = match &job_dir {
                Some(d) => format!("; `mw resume {}` records the rest", job_arg(&id, d)),
                None => String::new(),
            };
            Err(anyhow::anyhow!(
                "the thread recording the tasks panicked ({why}){resume}"
            ))
        });
        (recorded, Some(end))
    });
    recorded?;
    let end = end.context("internal: no end of the run")??;
    if let DriveEnd::Stopped {
        reason,
        interrupted,
        halted,
    } = end
    {
        // Whatever was printed is in the journal; the rest waits for `mw resume`.
        let _ = sink.flush();
        drop(sink);
        let hint = job_dir.as_deref().map(|d| job_arg(&id, d));
        if halted {
            // What failed, before the master goes (as at the end of a run).
            tally.print_stopped(hint.as_deref(), progress.elapsed(), tally.finished());
        }
        let how = Stop::new(interrupted, halted);
        return stopped_exit(&reason, how, hint.as_deref(), &p.interface, || {
            drop(master);
            if let Some(j) = &journal {
                j.close();
            }
        });
    }
    if let Err(e) = sink.flush() {
        let e = anyhow::Error::from(e);
        if !crate::is_broken_pipe(&e) {
            let kept = match &job_dir {
                Some(d) => format!(
                    " (every result is kept in the journal: `mw results {}`)",
                    job_arg(&id, d)
                ),
                None => String::new(),
            };
            return Err(e.context(format!("writing results to {dest}{kept}")));
        }
    }
    drop(sink);
    // With a reduce step to run, the job is finished once it ran: a master killed in it
    // leaves a job `mw resume` runs the reduce step of.
    let reduce_due = p.reduce.is_some() && failed == 0;
    if let (Some(j), false) = (&journal, reduce_due) {
        j.set_job_status("finished")?;
        j.close();
    }
    // The summary before the master goes: on MPI with ranks given up as hung, shutting the
    // interface down aborts the MPI job (and this process) at once.
    if !quiet || failed > 0 {
        // Named as the commands the summary suggests find it (a path under --jobs-dir).
        let job = job_dir.as_deref().map(|d| job_arg(&id, d));
        tally.print(job.as_deref(), progress.elapsed(), total);
    }
    drop(master);
    if let Some(reduce) = &p.reduce {
        if failed > 0 {
            say!("mw: the reduce program was not run because tasks failed");
            return Ok(EXIT_TASKS_FAILED);
        }
        let out = match &job_dir {
            Some(dir) => reduce_from_journal_results(dir, reduce)?,
            None => run_reduce(reduce, |w| {
                for v in &reduce_inputs {
                    w.write_all(v.as_deref().unwrap_or("null").as_bytes())?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            })?,
        };
        // Kept in the job before the job is marked finished (which a resume then leaves
        // alone) and before it is printed: a master killed after the mark printed nothing,
        // and the reduce output was lost for good; now `mw wait` prints the kept one.
        if let Some(dir) = &job_dir {
            mw_worker_runtime::run::write_atomically(&dir.join("reduce.out"), &out)?;
        }
        if let Some(j) = &journal {
            j.set_job_status("finished")?;
            j.close();
        }
        // Killed here: the job is finished and its reduce output kept, not yet printed.
        mw::crash::point("run-reduce-finished");
        std::io::stdout().write_all(&out)?;
        std::io::stdout().flush()?;
    }
    Ok(if failed > 0 {
        EXIT_TASKS_FAILED
    } else {
        EXIT_OK
    })
}

/// Job status while its tasks are being recorded (see [`complete_recording`]).
pub(crate) const STATUS_RECORDING: &str = "recording";

/// A job whose creator was killed while recording its tasks: records the tasks from
/// `have` on, from the job file (the inputs are the same: the job text is in the journal).
fn complete_recording(dir: &Path, job: &Job, have: usize) -> anyhow::Result<()> {
    let inputs = job.input_source()?;
    let builder = job.task_builder()?;
    if have as u64 > inputs.len() {
        bail!(
            "job {}: the journal holds {have} tasks but its job file makes {}; it was not made by this job file",
            dir.display(),
            inputs.len()
        );
    }
    check_specs(&inputs, &builder, have)?;
    let (journal, _, _) = Journal::open_status(dir)?;
    log::info!(
        "job {}: its tasks were not all recorded; recording {} more",
        dir.display(),
        inputs.len() - have as u64
    );
    in_chunks(&inputs, have, encode, |first, chunk| {
        journal.record_encoded(first, chunk)?;
        Ok(())
    })?;
    journal.set_job_status("running")?;
    journal.close();
    Ok(())
}

/// How a drive ended.
pub(crate) enum DriveEnd {
    /// Every task has an outcome.
    Complete,
    /// The master stopped (Ctrl-C/SIGTERM, a closed output pipe, a failed journal);
    /// unfinished tasks are left for `mw resume`.
    Stopped {
        /// Why.
        reason: String,
        /// True when a signal or a closed output pipe asked for it (exit 130), false for
        /// a failure (the journal).
        interrupted: bool,
        /// True when the run's failures reached its `max_failures` (exit 1).
        halted: bool,
    },
}

/// When a run stops for its failures: after `after` failed tasks (what the master is told),
/// as `limit` says (what the user is told).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Halt {
    after: u64,
    limit: crate::job::FailureLimit,
}

impl Halt {
    /// The halt of a job of `total` tasks whose limit is `limit` (none: never).
    pub(crate) fn new(limit: Option<crate::job::FailureLimit>, total: u64) -> Option<Halt> {
        limit.map(|limit| Halt {
            after: limit.threshold(total),
            limit,
        })
    }
}

/// How often a running master looks for `mw cancel` requests, whatever the task rate.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// How often the drive loop asks the interface what the pool says (idle vs running) for the
/// progress line and `mw status` ([`crate::pool`]).
const POOL_POLL: Duration = Duration::from_secs(1);

/// Counts of a run's outcomes and its first failures, for the end-of-run summary.
#[derive(Default)]
struct Tally {
    done: usize,
    failed: usize,
    cancelled: usize,
    first_failures: Vec<(u64, String)>,
}

impl Tally {
    fn add(&mut self, task: u64, outcome: &Result<mw::TaskOutput, mw::MwError>) {
        match outcome {
            Ok(_) => self.done += 1,
            Err(mw::MwError::Cancelled(_)) => self.cancelled += 1,
            Err(e) => {
                self.failed += 1;
                self.note_failure(task, e.to_string());
            }
        }
    }

    /// The outcomes a resumed job already has: counts, and its first failures read from
    /// the journal (not every task: a job may hold millions).
    fn from_journal(path: &Path, counts: &mw::journal::StateCounts) -> anyhow::Result<Tally> {
        let conn = mw::journal::open_checked(path, false)?;
        let first_failures =
            mw::journal::first_failures(&conn, path, crate::output::SUMMARY_FAILURES)?;
        Ok(Tally {
            done: usize::try_from(counts.done)?,
            failed: usize::try_from(counts.failed)?,
            cancelled: usize::try_from(counts.cancelled)?,
            first_failures,
        })
    }

    fn note_failure(&mut self, task: u64, reason: String) {
        if self.first_failures.len() < crate::output::SUMMARY_FAILURES {
            self.first_failures.push((task, reason));
            self.first_failures.sort_by_key(|(t, _)| *t);
        }
    }

    fn print(&self, job: Option<&str>, wall: Duration, ran_here: usize) {
        self.print_as(job, wall, ran_here, true);
    }

    /// The summary of a run that stopped before every task had an outcome.
    fn print_stopped(&self, job: Option<&str>, wall: Duration, ran_here: usize) {
        self.print_as(job, wall, ran_here, false);
    }

    fn print_as(&self, job: Option<&str>, wall: Duration, ran_here: usize, ended: bool) {
        crate::output::print_summary(
            job,
            (self.done, self.failed, self.cancelled),
            wall,
            ran_here,
            &self.first_failures,
            ended,
        );
    }

    /// Tasks with an outcome.
    fn finished(&self) -> usize {
        self.done + self.failed + self.cancelled
    }
}

/// What `mw` answers at once to a stop signal (the summary and the resume line come when
/// the master has stopped).
fn stopping_note(interface: &str, journaled: bool) -> String {
    let running = match (interface, journaled) {
        ("condor" | "boinc", true) => {
            "tasks on the platform keep running for `mw resume` to take up"
        }
        (_, true) => "running tasks are stopped and kept for `mw resume`",
        (_, false) => "running tasks are stopped (no journal: nothing can resume them)",
    };
    format!("mw: stopping: nothing more starts; {running} (a second Ctrl-C exits at once)")
}

/// Collects every task's outcome as it finishes, handing each to `on_finished`, keeping
/// the progress display current, applying `mw cancel` requests from the journal at least
/// every [`CANCEL_POLL`], and stopping the master on Ctrl-C/SIGTERM or when `on_finished`
/// finds the output pipe closed.
fn drive(
    master: &Master,
    journal: Option<&Journal>,
    recording: Option<&AtomicBool>,
    progress: &mut Progress,
    halt: Option<Halt>,
    mut on_finished: impl FnMut(
        TaskId,
        Result<mw::TaskOutput, mw::MwError>,
        mw::TaskTimes,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<DriveEnd> {
    let mut next_cancel_check = std::time::Instant::now();
    let mut cancels_applied = std::collections::HashSet::new();
    let mut next_pool_check = std::time::Instant::now();
    let job_dir = journal.and_then(|j| j.path().parent().map(Path::to_path_buf));
    let mut pool_written = false;
    let mut log = job_dir
        .as_deref()
        .and_then(crate::master_log::Rotation::detect);
    let mut interrupted = false;
    let mut output_closed = false;
    // Whether the master's failure limit stopped it (and this was said).
    let mut halted = false;
    let end = loop {
        if std::time::Instant::now() >= next_pool_check {
            next_pool_check = std::time::Instant::now() + POOL_POLL;
            if log.as_mut().is_some_and(|l| l.check().is_none()) {
                log = None;
            }
            let status = master.status();
            if let Some(pool) = crate::pool::PoolStatus::from_interface(&status.interface_status) {
                progress.set_pool(pool);
                if let Some(dir) = &job_dir {
                    crate::pool::write(dir, &pool);
                    pool_written = true;
                }
            }
        }
        if !interrupted && crate::signals::interrupted() {
            interrupted = true;
            master.stop("interrupted (SIGINT/SIGTERM)");
            progress.note(&stopping_note(master.interface_name(), journal.is_some()));
        }
        // Cancel requests wait until every task is recorded (a whole-job cancel must reach
        // the last ones too).
        let recorded = recording.is_none_or(|r| !r.load(Ordering::Acquire));
        if let (Some(j), true) = (journal, recorded) {
            if std::time::Instant::now() >= next_cancel_check {
                apply_cancel_requests(master, j, &mut cancels_applied)?;
                next_cancel_check = std::time::Instant::now() + CANCEL_POLL;
            }
        }
        match master.next_outcome(CANCEL_POLL) {
            NextOutcome::Finished(task, outcome, times) => {
                // The master stops itself at its failure limit; said once, when seen.
                if let (Some(h), Err(e), false) = (halt, &outcome, halted) {
                    if !matches!(e, mw::MwError::Cancelled(_)) && master.halted() {
                        halted = true;
                        progress.note(&format!(
                            "mw: {} tasks failed (max_failures = {}): stopping; nothing more starts",
                            h.after, h.limit
                        ));
                    }
                }
                if output_closed {
                    // Stored in the journal; nowhere to print it.
                    continue;
                }
                if let Err(e) = on_finished(task, outcome, times) {
                    if crate::is_broken_pipe(&e) {
                        output_closed = true;
                        interrupted = true;
                        master.stop("the output pipe was closed");
                        continue;
                    }
                    return Err(e);
                }
            }
            NextOutcome::Pending => {}
            NextOutcome::AllCollected => break DriveEnd::Complete,
            NextOutcome::Stopped(e) => {
                break DriveEnd::Stopped {
                    reason: match e {
                        mw::MwError::Stopped(r) => r,
                        other => other.to_string(),
                    },
                    interrupted,
                    halted: !interrupted && master.halted(),
                }
            }
        }
        if progress.due() {
            progress.update(&master.counts(), false);
        }
    };
    // A request that stopped one of the last tasks is acknowledged now that its end is
    // committed (every task has its outcome).
    if let (Some(j), DriveEnd::Complete) = (journal, &end) {
        apply_cancel_requests(master, j, &mut cancels_applied)?;
    }
    progress.update(&master.counts(), true);
    progress.finish();
    if let Some(l) = log.as_mut() {
        l.check();
    }
    if let (true, Some(dir)) = (pool_written, &job_dir) {
        let _ = std::fs::remove_file(dir.join(crate::pool::POOL_STATUS_FILE));
    }
    Ok(end)
}

/// Applies the pending cancel requests this master has not applied yet (`applied` keeps
/// their ids), and acknowledges each once what it asks is committed: its task (every task)
/// has its outcome in the journal. A running task ends some time after its cancel; a
/// request acknowledged before that was lost with a master killed in between, though
/// `mw cancel` had said the task was cancelled. Unacknowledged, the next master applies it.
fn apply_cancel_requests(
    master: &Master,
    journal: &Journal,
    applied: &mut std::collections::HashSet<i64>,
) -> anyhow::Result<()> {
    let requests = journal.pending_cancel_requests()?;
    if requests.is_empty() {
        return Ok(());
    }
    for (id, req) in &requests {
        // Applied once by this loop (one a resumed master applied at its start, still
        // pending for a task being stopped, is applied once more: a second cancel of a
        // task being cancelled changes nothing).
        if !applied.insert(*id) {
            continue;
        }
        match req {
            None => master.cancel_all(),
            Some(t) => {
                let _ = master.cancel(TaskId(*t));
            }
        }
    }
    journal.flush();
    let mut ids: Vec<i64> = Vec::new();
    for (id, req) in &requests {
        if journal.cancel_settled(*req)? {
            ids.push(*id);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    journal.ack_cancel_requests(&ids)?;
    // Killed here: the requests are acknowledged (`mw cancel` has said so).
    mw::crash::point("cancel-acknowledged");
    Ok(())
}

/// What `mw run`/`mw resume` say and return when the master stopped before every task had
/// an outcome; `end_master` drops the master and closes the journal.
fn stopped_exit(
    reason: &str,
    stop: Stop,
    job: Option<&str>,
    interface: &str,
    end_master: impl FnOnce(),
) -> anyhow::Result<i32> {
    let how = match (job, stop) {
        (Some(id), Stop::Halted) => format!(
            "`{}` runs the unfinished tasks, then `mw retry {id}` the failed ones",
            resume_command(id, interface)
        ),
        (Some(id), _) => format!(
            "`{}` runs the unfinished tasks",
            resume_command(id, interface)
        ),
        (None, _) => "nothing can be resumed (no journal)".to_string(),
    };
    match stop {
        Stop::Interrupted | Stop::Halted => {
            // Said before the master ends: under `mpirun`, which SIGKILLs the ranks a
            // second after it passed the interrupt on, ending the MPI interface may not
            // finish.
            say!("mw: stopped: {reason}; {how}");
            end_master();
            Ok(if stop == Stop::Halted {
                EXIT_TASKS_FAILED
            } else {
                EXIT_INTERRUPTED
            })
        }
        Stop::Failure => {
            end_master();
            bail!("the master stopped: {reason}; {how}")
        }
    }
}

/// Why a master stopped before every task had an outcome, as its exit says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A signal or a closed output pipe (exit 130).
    Interrupted,
    /// The run's failures reached `max_failures` (exit 1).
    Halted,
    /// Something failed (the journal): an error (exit 2).
    Failure,
}

impl Stop {
    fn new(interrupted: bool, halted: bool) -> Stop {
        match (interrupted, halted) {
            (true, _) => Stop::Interrupted,
            (false, true) => Stop::Halted,
            (false, false) => Stop::Failure,
        }
    }
}

/// The command that resumes `job` (as [`job_arg`] names it) run on `interface`: an MPI job
/// under `mpirun`, with this world's size when the launcher said it.
pub(crate) fn resume_command(job: &str, interface: &str) -> String {
    if interface != "mpi" {
        return format!("mw resume {job}");
    }
    #[cfg(feature = "mpi")]
    let size = mw::mpi::launcher_world_size().map(|n| n.to_string());
    #[cfg(not(feature = "mpi"))]
    let size: Option<String> = None;
    format!(
        "mpirun -n {} mw resume {job}",
        size.as_deref().unwrap_or("N")
    )
}

/// Runs the reduce program locally with every result as a JSON line on stdin, which
/// `write_input` writes (to a file the program then reads: never all in memory).
pub(crate) fn run_reduce(
    reduce: &Program,
    write_input: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir().context("creating a scratch directory for reduce")?;
    let work = dir.path().join("work");
    let io = dir.path().join("io");
    std::fs::create_dir(&work)?;
    std::fs::create_dir(&io)?;
    for (name, path) in reduce.files() {
        std::os::unix::fs::symlink(path, work.join(name))?;
    }
    let input = dir.path().join("reduce-input.jsonl");
    {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&input)
                .with_context(|| format!("creating {}", input.display()))?,
        );
        write_input(&mut w).with_context(|| format!("writing {}", input.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", input.display()))?;
    }
    let mut req = ExecRequest::new(reduce.executable().to_path_buf(), work, io);
    req.args = reduce.base_args().to_vec();
    req.stdin_file = Some(input);
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
    crate::platforms::preflight(&p.interface, &p.job, Some(&root))?;
    let (id, dir, journal) = create_job(&p, args.job.jobs_dir.as_deref(), || {
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
        Ok(())
    })?;
    // A stop signal while the tasks are recorded (a sweep of millions takes a while) leaves
    // the job `recording`, with no master: `mw resume` records the rest and runs it. (It was
    // once ignored: the job was started anyway.)
    let recorded = in_chunks(&p.inputs, 0, encode, |first, chunk| {
        if crate::signals::interrupted() {
            return Err(anyhow::Error::new(RecordingStopped));
        }
        journal.record_encoded(first, chunk)?;
        Ok(())
    });
    let interrupted = match recorded {
        Err(e) if e.is::<RecordingStopped>() => true,
        other => {
            other?;
            crate::signals::interrupted()
        }
    };
    if interrupted {
        journal.close();
        say!(
            "mw: stopped while recording the tasks of job {id}; it has no master: `mw resume {id}` \
             records the rest and runs it, `mw cancel {id}` drops it"
        );
        return Ok(EXIT_INTERRUPTED);
    }
    // Not `running` under this (short-lived) process's pid, or the detached master would
    // see a live master and refuse to start.
    journal.set_job_status("submitted")?;
    journal.close();
    drop(journal);
    let pid = spawn_detached_master(&dir)?;
    // Record the detached master at once, so `mw wait`/`mw status` right after `mw submit`
    // see a live master (the master records itself too; a finished one is left alone).
    let path = dir.join(mw::journal::JOURNAL_FILE);
    let conn = mw::journal::open_checked(&path, true)?;
    mw::journal::record_detached_master(
        &conn,
        &path,
        i64::from(pid),
        &mw_worker_runtime::exec::host_name(),
    )?;
    drop(conn);
    use std::io::Write;
    // The job runs whether or not its id can be printed; the error says which it is.
    writeln!(std::io::stdout(), "{id}\t{}", dir.display())
        .with_context(|| format!("job {id} was submitted, but printing its id failed"))?;
    Ok(EXIT_OK)
}

fn spawn_detached_master(dir: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding the mw executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(crate::master_log::FILE))
        .with_context(|| format!("creating {}", dir.join(crate::master_log::FILE).display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = std::process::Command::new(exe);
    // Info-level log lines with timestamps go to master.log; no progress display.
    cmd.args(["--verbose", "--quiet", "resume"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    use std::os::unix::process::CommandExt;
    // A new session (and so a new process group): the master survives the terminal closing
    // (no SIGHUP) and a Ctrl-C in it. `setsid` fails for a process-group leader, so no
    // `process_group(0)` before it; its failure is reported, not ignored.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; the closure
    // only reads errno through std.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the detached master")?;
    Ok(child.id())
}

/// `mw retry`: queues a finished job's failed (and cancelled) tasks again in its journal,
/// keeping every done task's row untouched, then runs them like `mw resume`.
pub(crate) fn retry(args: RetryArgs, quiet: bool) -> anyhow::Result<i32> {
    let dir = args.at.dir()?;
    let interface = || -> anyhow::Result<String> {
        let path = dir.join(mw::journal::JOURNAL_FILE);
        let conn = mw::journal::open_checked(&path, false)?;
        Ok(mw::journal::read_meta(&conn, &path)?.interface)
    };
    // An MPI job's worker ranks serve rank 0's master: they change nothing.
    if served_as_mpi_worker(interface)? {
        return Ok(EXIT_OK);
    }
    // Rank 0 runs the retried tasks only in an MPI world: refused before anything changed.
    if interface()? == "mpi" {
        if let Some(why) = mpi_master_problem() {
            bail!("{why}; nothing was queued again");
        }
    }
    if let Some(pid) = super::jobs::live_master_pid(&dir)? {
        bail!(
            "job {} has a running master (pid {pid}); wait for it (`mw wait`) before retrying",
            dir.display()
        );
    }
    // Held from here until the master below runs the requeued tasks: a `mw resume` (or
    // another `mw retry`) started meanwhile is refused before anything changed, instead of
    // finding nothing to do and leaving the requeued tasks without a master.
    mw::journal::hold_master_lock(&dir)?;
    let which = if !args.task.is_empty() {
        mw::journal::RetrySelection::Tasks(args.task.clone())
    } else if args.failed {
        mw::journal::RetrySelection::Failed
    } else {
        mw::journal::RetrySelection::AllUnsuccessful
    };
    let path = dir.join(mw::journal::JOURNAL_FILE);
    let mut conn = mw::journal::open_checked(&path, true)?;
    // A cancel left pending (its `mw cancel` was stopped before carrying it out) came
    // before this retry: carried out now, so the master started below does not cancel what
    // the user asked to run again, the platform's copies of its tasks stopped first (else
    // the retried tasks ran beside their HTCondor jobs or BOINC workunits still out).
    super::jobs::carry_out_pending_cancels(&dir, &mut conn, &path)?;
    let (queued, refused) = mw::journal::requeue_for_retry(&mut conn, &path, &which, now_unix())?;
    // With nothing to retry, what a stopped job still has to run (`mw resume`'s work).
    let unfinished = if queued.is_empty() {
        let meta = mw::journal::read_meta(&conn, &path)?;
        let n = mw::journal::state_counts(&conn, &path)?.unfinished;
        let recording = mw::journal::read_master(&conn, &path)?.status == STATUS_RECORDING;
        let left = if n > 0 {
            Some(format!("{n} task(s) never finished"))
        } else if recording {
            Some("its master stopped before it had recorded every task".to_string())
        } else {
            None
        };
        left.map(|left| (left, meta.id, meta.interface))
    } else {
        None
    };
    drop(conn);
    if !refused.is_empty() {
        let why: Vec<String> = refused
            .iter()
            .map(|(t, s)| match s {
                Some(s) => format!("task {t} is {}", s.as_str()),
                None => format!("there is no task {t}"),
            })
            .collect();
        bail!(
            "nothing was queued: {} (only failed or cancelled tasks can be retried)",
            why.join(", ")
        );
    }
    if queued.is_empty() {
        if let Some((left, id, interface)) = unfinished {
            say!(
                "mw: no failed or cancelled tasks to retry; {left}: `{}` runs the rest",
                resume_command(&job_arg(&id, &dir), &interface)
            );
        } else {
            say!("mw: no failed or cancelled tasks to retry");
        }
        return Ok(EXIT_OK);
    }
    if !quiet {
        say!("mw: retrying {} task(s)", queued.len());
    }
    resume(
        ResumeArgs {
            at: JobRef {
                job: dir.display().to_string(),
                jobs_dir: None,
            },
        },
        quiet,
    )
}

/// A BOINC job's master killed after it committed outcomes it took from the project's spool
/// and before it removed their files left files that no master waits for: removed here, by
/// the journal's record of which workunits only finished tasks name. Best effort (what it
/// cannot do is said, and the resume goes on).
fn remove_taken_spool_files(dir: &Path, job: &Job) {
    let run = || -> anyhow::Result<Vec<PathBuf>> {
        let settings = job
            .file
            .boinc
            .to_settings(&job.base_dir)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut spooled = mw::boinc::SpooledOutcomes::list(&settings.project_dir)?;
        if spooled.is_empty() {
            return Ok(Vec::new());
        }
        let path = dir.join(mw::journal::JOURNAL_FILE);
        let conn = mw::journal::open_checked(&path, false)?;
        mw::journal::visit_handles(&conn, &path, |_, finished, handle| {
            spooled.note(handle, finished);
            Ok::<(), mw::journal::JournalError>(())
        })?;
        Ok(spooled.remove_taken())
    };
    match run() {
        Ok(removed) => {
            for f in removed {
                log::info!(
                    "removed {}: its outcome was recorded before the master stopped",
                    f.display()
                );
            }
        }
        Err(e) => say!("mw: warning: could not look for spool files already taken: {e:#}"),
    }
}

/// What `mw resume` says and returns of job `id` whose every task has an outcome (`counts`).
fn nothing_to_resume(id: &str, counts: &mw::journal::StateCounts) -> i32 {
    let total = counts.done + counts.failed + counts.cancelled;
    say!("mw: job {id} is finished ({total} tasks); nothing to resume");
    if counts.done == total {
        EXIT_OK
    } else {
        EXIT_TASKS_FAILED
    }
}

/// `mw resume`: restart the master of a job whose master died (or finish a submitted job).
pub(crate) fn resume(args: ResumeArgs, quiet: bool) -> anyhow::Result<i32> {
    let dir = args.at.dir()?;
    if served_as_mpi_worker(|| {
        let path = dir.join(mw::journal::JOURNAL_FILE);
        let conn = mw::journal::open_checked(&path, false)?;
        Ok(mw::journal::read_meta(&conn, &path)?.interface)
    })? {
        return Ok(EXIT_OK);
    }
    // A master killed here (e.g. `mw submit`'s detached master starting) has not taken the
    // job over yet.
    mw::crash::point("resume-start");
    // A finished job has nothing to resume, which reading it tells (the lock below needs a
    // job directory this user can write).
    {
        let path = dir.join(mw::journal::JOURNAL_FILE);
        let conn = mw::journal::open_checked(&path, false)?;
        let c = mw::journal::state_counts(&conn, &path)?;
        if mw::journal::read_master(&conn, &path)?.status == "finished" && c.unfinished == 0 {
            return Ok(nothing_to_resume(
                &mw::journal::read_meta(&conn, &path)?.id,
                &c,
            ));
        }
    }
    // Refuse to run a second master beside a live one. Then hold the job's lock while
    // deciding what is left (`mw retry` took it already): a `mw retry` queueing tasks
    // again meanwhile could otherwise find this resume about to call the job finished.
    if !mw::journal::holds_master_lock(&dir) {
        if let Some(pid) = super::jobs::live_master_pid(&dir)? {
            if pid != std::process::id() as i64 {
                bail!(
                    "job {} already has a running master (pid {pid}); `mw status` shows its progress",
                    dir.display()
                );
            }
        }
        mw::journal::hold_master_lock(&dir)?;
    }
    let journal_path = dir.join(mw::journal::JOURNAL_FILE);
    // Counts only: a resumed master of millions of tasks reads no inputs or results here.
    let counts = || -> anyhow::Result<(u64, mw::journal::StateCounts)> {
        let conn = mw::journal::open_checked(&journal_path, false)?;
        let c = mw::journal::state_counts(&conn, &journal_path)?;
        Ok((c.unfinished + c.done + c.failed + c.cancelled, c))
    };
    let meta = {
        let conn = mw::journal::open_checked(&journal_path, false)?;
        mw::journal::read_meta(&conn, &journal_path)?
    };
    let (stored_len, _) = counts()?;
    let job_path = PathBuf::from(&meta.job_path);
    let mut job = Job::parse(&job_path, meta.job_text.clone())?;
    job.name = meta.name.clone();
    if meta.interface == "boinc" {
        remove_taken_spool_files(&dir, &job);
    }
    let status = {
        let conn = mw::journal::open_checked(&journal_path, false)?;
        mw::journal::read_master(&conn, &journal_path)?.status
    };
    if status == STATUS_RECORDING {
        complete_recording(&dir, &job, usize::try_from(stored_len)?)?;
    }
    let (total, state_counts) = counts()?;
    let unfinished = state_counts.unfinished;
    if unfinished == 0 {
        // Every task has an outcome, but the job was not marked finished: its master died
        // after the last task, perhaps in the reduce step, whose output is then missing. Run
        // it (once it had run, the job was marked finished right after).
        if status != "finished" && state_counts.done == total {
            if let Some(reduce) = job.reduce_program()? {
                reduce_from_journal(&dir, &reduce)?;
            }
        }
        let (journal, _, _) = Journal::open_status(&dir)?;
        journal.set_job_status("finished")?;
        journal.close();
        return Ok(nothing_to_resume(&meta.id, &state_counts));
    }
    let builder = Arc::new(job.task_builder()?);
    let reduce = job.reduce_program()?;
    let interface = make_interface(&meta.interface, &job, meta.workers, &dir)?;
    let remote = interface.keeps_running_without_master();
    let to_reattach = if remote {
        let conn = mw::journal::open_checked(&journal_path, false)?;
        mw::journal::count_running_with_handle(&conn, &journal_path)?
    } else {
        0
    };
    let halt = Halt::new(job.max_failures()?, total);
    let opts = master_options(&job, &meta.id, Some(&dir), halt);
    log::info!(
        "master pid {} resuming job {} on {}: {unfinished} of {total} tasks unfinished, {to_reattach} to re-attach",
        std::process::id(),
        meta.id,
        meta.interface
    );
    if !quiet {
        say!(
            "mw: resuming job {} ({} of {total} tasks unfinished, {to_reattach} to re-attach)",
            meta.id,
            unfinished,
        );
    }
    // A list or a sweep makes each input from the job text kept in the journal; a file of
    // inputs (which may have changed since) is read back from the journal.
    let inputs = match job.file.inputs.file {
        None => job.input_source().ok().map(Arc::new),
        Some(_) => None,
    };
    let source = spec_source(&builder, inputs.as_ref());
    let master = Master::resume_with_source(interface, opts, &dir, source)?;
    let journal = master
        .journal()
        .cloned()
        .context("a resumed master always has a journal")?;
    let mut progress = Progress::new(total, quiet);
    progress.set_baseline(total - unfinished);
    let mut failed = usize::try_from(state_counts.failed + state_counts.cancelled)?;
    let mut tally = Tally::from_journal(&journal_path, &state_counts)?;
    let end = drive(
        &master,
        Some(&journal),
        None,
        &mut progress,
        halt,
        |task, outcome, _| {
            if outcome.is_err() {
                failed += 1;
            }
            tally.add(task.0, &outcome);
            Ok(())
        },
    )?;
    if let DriveEnd::Stopped {
        reason,
        interrupted,
        halted,
    } = end
    {
        let job = job_arg(&meta.id, &dir);
        if halted {
            // Only what finished under this master counts in the rate.
            let before = state_counts.done + state_counts.failed + state_counts.cancelled;
            let here = (tally.finished() as u64).saturating_sub(before);
            tally.print_stopped(Some(&job), progress.elapsed(), usize::try_from(here)?);
        }
        let how = Stop::new(interrupted, halted);
        return stopped_exit(&reason, how, Some(&job), &meta.interface, || {
            drop(master);
            journal.close();
        });
    }
    // How the job ended is what its journal says: tasks a `mw cancel` settled while this
    // master was starting (racing it) were no outcome of this master, but they did not
    // succeed either.
    journal.flush();
    let (_, end_counts) = counts()?;
    let failed = failed.max(usize::try_from(end_counts.failed + end_counts.cancelled)?);
    if !quiet || failed > 0 {
        tally.print(
            Some(&job_arg(&meta.id, &dir)),
            progress.elapsed(),
            usize::try_from(unfinished)?,
        );
    }
    if !quiet && reduce.is_none() {
        // Unlike `mw run`, a resumed master prints no result lines (the earlier ones went
        // to the interrupted run's output): say where all of them are.
        say!(
            "mw: every result, from before the resume too: `mw results {}`",
            job_arg(&meta.id, &dir)
        );
    }
    log::info!(
        "job {}: every task has an outcome ({failed} failed or cancelled)",
        meta.id
    );
    // As in `mw run`: the summary and, unless a reduce step is due, the job's end are
    // recorded before the master goes (on MPI with a rank given up as hung, shutting the
    // interface down aborts the process).
    if reduce.is_some() && failed > 0 {
        say!("mw: the reduce program was not run because tasks failed");
    }
    let reduce = reduce.filter(|_| failed == 0);
    if reduce.is_none() {
        journal.set_job_status("finished")?;
    }
    drop(master);
    if let Some(reduce) = &reduce {
        reduce_from_journal(&dir, reduce)?;
        journal.set_job_status("finished")?;
    }
    journal.close();
    Ok(if failed > 0 {
        EXIT_TASKS_FAILED
    } else {
        EXIT_OK
    })
}

/// Runs the reduce program over the journal's results, in task order, read one at a time.
fn reduce_from_journal_results(dir: &Path, reduce: &Program) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(mw::journal::JOURNAL_FILE);
    let conn = mw::journal::open_checked(&path, false)?;
    run_reduce(reduce, |w| {
        mw::journal::visit_tasks(&conn, &path, None, |t| -> anyhow::Result<()> {
            serde_json::to_writer(&mut *w, &t.output.unwrap_or_default())?;
            w.write_all(b"\n")?;
            Ok(())
        })
    })
}

/// For a job finished by a resumed or detached master: runs the reduce program over the
/// journal's results (task order), keeps its output in `<job dir>/reduce.out` (which
/// `mw wait` prints) and prints it.
fn reduce_from_journal(dir: &Path, reduce: &Program) -> anyhow::Result<()> {
    let out = reduce_from_journal_results(dir, reduce)?;
    mw_worker_runtime::run::write_atomically(&dir.join("reduce.out"), &out)?;
    std::io::stdout().write_all(&out)?;
    std::io::stdout().flush()?;
    Ok(())
}
