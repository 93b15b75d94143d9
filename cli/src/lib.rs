//! The `mw` command line: `mw run JOB.toml` and the job-management commands.
//!
//! The binaries (`src/main.rs`, `src/bin/mw-condor.rs`) only call into this crate; everything
//! here is plain functions over the `mw` library. This crate is the only one that knows about
//! terminals, exit codes, job files and the result-line format. Exit codes: 0 every task
//! succeeded; 1 some task failed or was cancelled; 2 bad usage, bad job file or a setup
//! problem; 3 `mw wait --timeout` passed first.

/// Writes one line to stderr, ignoring a closed or full stderr (`eprintln!` panics there:
/// `mw run 2>&1 >out | (exec 0<&-)` once exited 101 instead of stopping cleanly). Control
/// characters in the line (a task's stderr, a pool's reason) are shown escaped
/// (`mw_bundle::text::escape_controls`), as in log lines.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        let _ = writeln!(std::io::stderr(), "{}", mw_bundle::text::escape_controls(&line));
    }};
}

mod extras;
pub mod job;
mod jobs;
mod master_log;
mod output;
pub mod platforms;
mod pool;
mod report;
mod run;
mod signals;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use output::ResultLine;

/// Exit code when every task succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code when at least one task failed or was cancelled.
pub const EXIT_TASKS_FAILED: i32 = 1;
/// Exit code for usage, job-file and setup errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when a signal (Ctrl-C, SIGTERM) or a closed output pipe stopped `mw run` or
/// `mw resume` (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit code of `mw wait --timeout` when the time passed before every task had an outcome.
pub const EXIT_TIMEOUT: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "mw",
    version,
    about = "Run thousands of independent tasks on local cores, MPI, HTCondor or BOINC.",
    long_about = None
)]
pub(crate) struct Cli {
    /// More log lines on stderr (-v info, -vv debug); `MW_LOG` (e.g. `MW_LOG=mw=debug`)
    /// overrides both flags.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// No progress display, and only errors logged (unless -v is also given).
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run a job file: submit every task, show progress, wait, write results.
    #[command(long_about = RUN_HELP)]
    Run(run::RunArgs),
    /// Create a job and start its master in the background; print the job id and directory.
    Submit(run::SubmitArgs),
    /// List jobs, or show one job's counts, slowest and failed tasks.
    Status(jobs::StatusArgs),
    /// Print a job's results (JSON lines or CSV), in task order.
    Results(jobs::ResultsArgs),
    /// Print one task's kept stdout and stderr (last attempt, or --attempt N).
    ///
    /// Into a pipe or a file they are written byte for byte. On a terminal, control characters
    /// (escape sequences a task printed) and bytes that are not UTF-8 are shown escaped.
    Logs(jobs::LogsArgs),
    /// Wait until every task of a job has an outcome; exit 0 only if all succeeded.
    Wait(jobs::WaitArgs),
    /// Cancel a job's unfinished tasks, or one task.
    Cancel(jobs::CancelArgs),
    /// Restart the master of a job whose master died; done results are kept.
    Resume(run::ResumeArgs),
    /// Run a finished job's failed (and cancelled) tasks again; done results are kept.
    Retry(run::RetryArgs),
    /// Write an HTML or SVG report: timeline, throughput, utilisation, run times, failures.
    Report(jobs::ReportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(extras::CompletionsArgs),
    /// Write man pages for mw and each of its commands into a directory.
    Man(extras::ManArgs),
}

const RUN_HELP: &str = "\
Run a job file: submit every task, show progress, wait, and write the results.

A job file (TOML) says what to run and on what. Top-level keys come before any [table]:

    name = \"monte-pi\"               # optional; default: the job file's name without .toml
                                    #   (its directory's name when the file is job.toml)
    interface = \"multicore\"         # multicore (default) | mpi | condor | boinc
    workers = 4                     # multicore slots (default: number of cores)
    timeout = 60.0                  # seconds per task (optional)
    retries = 1                     # extra attempts after a failure (default 0)
    retry_backoff = 2.0             # seconds before a retry, doubled each time (default 0)
    retry_on = [75, \"timeout\"]      # retry only these: exit codes, \"exit\" (any, and a
                                    #   stream's {\"error\": …}), \"signal\", \"timeout\",
                                    #   \"interface\", \"output\" (unusable stdout or outputs,
                                    #   a stream's bad or missing answer) (default: all)
    max_failures = 10               # stop once 10 tasks failed for good (or \"5%\" of the
                                    #   tasks), as `parallel --halt soon,fail=10`: the rest
                                    #   waits for `mw resume` (default: run them all)
    args = [\"--seed\", \"{{ input.seed }}\"]   # per-task templates (tera) over
    env = { TASK = \"{{ index }}\" }          #   `input`, `index` and `job`
    outputs = [\"out-{{ index }}.txt\"]       # files each task must write; kept
    input_files = [\"data/{{ index }}.csv\"]  # files copied into each task's directory

    [program]
    path = \"bin/pi-task\"            # an executable, relative to the job file
    # command = [\"python3\", \"task.py\"]   # or: interpreter on PATH + base arguments
    files = [\"task.py\"]             # extra files the program needs
    stdout = \"json\"                 # json: stdout is the result JSON (default);
                                    # text: the result is stdout as a string;
                                    # file: stdout kept as the output file `stdout`
    mode = \"process\"               # or \"stream\": one long-lived process per worker

    [inputs]                        # exactly one of:
    list = [ {seed = 1}, {seed = 2} ]                # inline inputs
    # file = \"inputs.jsonl\"                          # one JSON value per line
    # sweep = { seed = {start = 0, end = 16, step = 1}, n = [1000, 0.5] }
    #   a sweep is the cartesian product of its parameters; each is a list of values or an
    #   integer range whose `end` is exclusive (`step` defaults to 1; list float values)

    [reduce]                        # optional: gets every result as JSON lines on stdin,
    path = \"bin/pi-reduce\"          # in task order; its stdout is printed

    [condor]                        # interface = \"condor\" (needs condor_submit on PATH)
    request_cpus = 1                # also request_memory, request_disk (\"2GB\" or MB)
    requirements = 'OpSys == \"LINUX\"'
    batch_window_secs = 0.5         # tasks arriving within the window share one cluster
    on_hold = \"fail\"                # or \"wait\" for condor_release
    tasks_per_job = 100             # pack tasks: one job runs up to 100 of them (default 1)
    target_job_secs = 600           # or choose the pack size so a job runs ~10 min, from
                                    #   the run times measured so far (first one task alone)
    worker = \"target/static/release/mw-worker\"   # default: $MW_WORKER, then the
                                    # static build (`cargo static-worker`)

    [boinc]                         # interface = \"boinc\" (after mw-boinc-setup)
    project_dir = \"/home/boincadm/projects/myproj\"
    quorum = 2                      # replication = results issued per workunit
    comparison = \"json\"             # or \"bitwise\"; rel_tolerance, abs_tolerance
    deadline_secs = 604800          # batch_size: workunits per create_work call
    job_deadline_secs = 86400       # fail (and cancel) what reached no quorum by then;
                                    # also max_error_results, max_total_results, rsc_fpops_est
    tasks_per_workunit = 100        # pack tasks into workunits; target_job_secs as above

The task contract: each task runs in a fresh directory, gets its input JSON on stdin, prints
its result on stdout (JSON, unless [program] stdout says otherwise), and exits 0 on success;
a declared output it did not write fails it. Its stdout and stderr are kept under
<job dir>/logs/ (capped at 1 MiB each): `mw logs JOB TASK`. A packed grid job runs its
tasks one after the other, each under this same contract; each task is still reported,
retried and cancelled on its own (a cancelled one is reported at once, its pack runs on).

The stream contract (mode = \"stream\", for tasks of milliseconds): one process per worker
slot (multicore slot, MPI rank) serves many tasks. It reads one input per line on stdin
(compact JSON: no raw newline inside) and writes exactly one line per input on stdout, in
the same order, flushing each at once (an answer held back while the program works on
later inputs keeps its task current, counting that work against its timeout). A line that is a JSON object with the single key
\"error\" (e.g. {\"error\": \"bad seed\"}; the value may be any JSON) fails that task only;
any other JSON value is the task's result (to return such an object, wrap it). When stdin
closes, the program should exit. The current task is the oldest input not yet answered;
its timeout counts from when it became current (until a freshly started program has
answered once, its start-up gets the timeout again on top, at least a minute). What fails
only the current task, after
which the program is stopped (SIGTERM, SIGKILL after 2 s, whole process group) and a fresh
one serves the rest (inputs sent ahead but not answered are sent again, so a task may run
twice but is reported once): the program exits or is killed (the task fails with its exit
status; exit 0 before answering counts as too few lines), closes stdout, prints a line that
is not JSON or that is longer than the task's max_output, exceeds the timeout, or the task
is cancelled.
stderr: a failed task reports the last 4 KiB of the program's stderr; a successful one
what was read from stderr since the previous answer (best effort). Stream tasks cannot
have input_files or outputs; per-task args/env templates work, but each distinct value
gets its own process. Rust: mw_worker_runtime::task::serve_stream; Python: examples/stream.

Results are JSON lines in task order: task index, input, output, exit, attempts, times
(RFC 3339), host. They go to stdout, or to --output FILE; when the job has a reduce program
they go to <job dir>/results.jsonl unless --output is given. Declared output files are kept
under <job dir>/results/task-<N>/. The job directory is <jobs dir>/<name>-<N>/ (see
--jobs-dir), holding the journal: `mw status`, `mw results`, `mw retry`, `mw resume` work
on it. The run ends with a summary line and the first failures.

Exit status: 0 every task succeeded, 1 some task failed (or max_failures stopped the run),
2 bad usage or job file, 130 stopped by a signal.";

/// Entry point of the `mw` binary; returns the process exit code.
pub fn main() -> i32 {
    // The watchdog of a local master's tasks (see `run::watch_local_tasks`): this same
    // binary, started with a hidden first argument.
    #[cfg(unix)]
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(mw_worker_runtime::dying::WATCHDOG_ARG))
    {
        let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        return mw_worker_runtime::dying::watchdog_main(&rest);
    }
    // Before any thread starts (it sets an environment variable for MPI_Init).
    #[cfg(feature = "mpi")]
    mw::mpi::prepare_process();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    if let Err(e) = signals::install() {
        say!("mw: error: installing signal handlers: {e}");
        return EXIT_USAGE;
    }
    let quiet = cli.quiet;
    // Commands that only print: a reader that stops early (`| head`) ends them quietly.
    let prints_only = matches!(
        cli.command,
        Command::Results(_)
            | Command::Status(_)
            | Command::Logs(_)
            | Command::Completions(_)
            | Command::Report(_)
            | Command::Man(_)
    ) || matches!(&cli.command, Command::Run(r) if r.dry_run);
    let result = match cli.command {
        Command::Run(args) => run::run(args, quiet),
        Command::Submit(args) => run::submit(args),
        Command::Status(args) => jobs::status(args),
        Command::Results(args) => jobs::results(args),
        Command::Logs(args) => jobs::logs(args),
        Command::Wait(args) => jobs::wait(args, quiet),
        Command::Cancel(args) => jobs::cancel(args),
        Command::Resume(args) => run::resume(args, quiet),
        Command::Retry(args) => run::retry(args, quiet),
        Command::Report(args) => jobs::report(args),
        Command::Completions(args) => extras::completions(args),
        Command::Man(args) => extras::man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) if prints_only && is_broken_pipe(&e) => EXIT_OK,
        Err(e) => {
            say!("mw: error: {e:#}");
            EXIT_USAGE
        }
    }
}

/// True when the error comes from writing to a pipe whose reader has gone.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<csv::Error>().is_some_and(|ce| {
                matches!(ce.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|je| je.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// The `mw` command definition (for completions and man pages).
pub(crate) fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The environment variable that sets log filters (env_logger syntax, e.g. `mw=debug`).
pub const LOG_ENV: &str = "MW_LOG";

/// Sets up the `log` facade for an mw binary: warnings and errors by default, `-v` info,
/// `-vv` debug, `-q` errors only; `MW_LOG` overrides. On a terminal lines read
/// `mw: warning: …`; elsewhere (a detached master's `master.log`) they carry a timestamp.
pub fn init_logging(verbose: u8, quiet: bool) {
    use std::io::{IsTerminal, Write};
    let level = match (verbose, quiet) {
        (0, true) => log::LevelFilter::Error,
        (0, false) => log::LevelFilter::Warn,
        (1, _) => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(filters) = std::env::var(LOG_ENV) {
        builder.parse_filters(&filters);
    }
    if std::io::stderr().is_terminal() {
        builder.format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            let text = record.args().to_string();
            writeln!(
                buf,
                "mw: {level}: {}",
                mw_bundle::text::escape_controls(&text)
            )
        });
    } else {
        builder.format(|buf, record| {
            let text = record.args().to_string();
            writeln!(
                buf,
                "[{} {} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                mw_bundle::text::escape_controls(&text)
            )
        });
    }
    // A second initialisation (tests calling main twice) keeps the first logger.
    let _ = builder.try_init();
}

/// Resolves a path relative to the current directory.
pub(crate) fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    /// The job file shown by `mw run --help` is a valid job file (every field exists and
    /// sits in the right table).
    #[test]
    fn help_example_is_a_valid_job_file() {
        let start = super::RUN_HELP.find("    name = ").expect("example start");
        let end = super::RUN_HELP
            .find("The task contract")
            .expect("example end");
        let text: String = super::RUN_HELP[start..end]
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let job = crate::job::Job::parse(std::path::Path::new("help.toml"), text)
            .unwrap_or_else(|e| panic!("the help's example does not parse: {e}"));
        assert_eq!(job.name, "monte-pi");
        assert_eq!(job.file.args.len(), 2);
        assert_eq!(job.file.boinc.quorum, Some(2));
        assert_eq!(job.file.condor.on_hold.as_deref(), Some("fail"));
    }
}
