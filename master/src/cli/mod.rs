//! The `mw` command line: `mw run JOB.toml` and the job-management commands.
//!
//! The binary (`src/main.rs`) only calls [`main`]; everything here is plain functions over
//! the library. Exit codes: 0 every task succeeded; 1 some task failed or was cancelled;
//! 2 bad usage, bad job file or a setup problem.

mod jobs;
mod output;
mod report;
mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use output::ResultLine;

/// Exit code when every task succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code when at least one task failed or was cancelled.
pub const EXIT_TASKS_FAILED: i32 = 1;
/// Exit code for usage, job-file and setup errors.
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "mw",
    version,
    about = "Run thousands of independent tasks on local cores, MPI, HTCondor or BOINC.",
    long_about = None
)]
pub(crate) struct Cli {
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
    /// Wait until every task of a job has an outcome; exit 0 only if all succeeded.
    Wait(jobs::WaitArgs),
    /// Cancel a job's unfinished tasks, or one task.
    Cancel(jobs::CancelArgs),
    /// Restart the master of a job whose master died; done results are kept.
    Resume(run::ResumeArgs),
    /// Write an HTML or SVG report: timeline of tasks per worker, histogram of run times.
    Report(jobs::ReportArgs),
}

const RUN_HELP: &str = "\
Run a job file: submit every task, show progress, wait, and write the results.

A job file (TOML) says what to run and on what. Top-level keys come before any [table]:

    name = \"monte-pi\"               # optional; default: the job file's directory name
    interface = \"multicore\"         # multicore (default) | mpi | condor | boinc
    workers = 4                     # multicore slots (default: number of cores)
    timeout = 60.0                  # seconds per task (optional)
    retries = 1                     # extra attempts after a failure (default 0)
    args = [\"--seed\", \"{{ input.seed }}\"]   # per-task templates (tera) over
    env = { TASK = \"{{ index }}\" }          #   `input`, `index` and `job`
    outputs = [\"out-{{ index }}.txt\"]       # files each task writes that are kept
    input_files = [\"data/{{ index }}.csv\"]  # files copied into each task's directory

    [program]
    path = \"bin/pi-task\"            # an executable, relative to the job file
    # command = [\"python3\", \"task.py\"]   # or: interpreter on PATH + base arguments
    files = [\"task.py\"]             # extra files the program needs

    [inputs]                        # exactly one of:
    list = [ {seed = 1}, {seed = 2} ]                # inline inputs
    # file = \"inputs.jsonl\"                          # one JSON value per line
    # sweep = { seed = {start = 0, end = 16}, n = [1000] }  # cartesian product

    [reduce]                        # optional: gets every result as JSON lines on stdin,
    path = \"bin/pi-reduce\"          # in task order; its stdout is printed

    [condor]                        # interface = \"condor\"
    request_cpus = 1                # also request_memory, request_disk (\"2GB\" or MB)
    requirements = 'OpSys == \"LINUX\"'
    batch_window_secs = 0.5         # tasks arriving within the window share one cluster
    on_hold = \"fail\"                # or \"wait\" for condor_release
    worker = \"target/static/release/mw-worker\"   # default: $MW_WORKER, then next to mw

    [boinc]                         # interface = \"boinc\" (after mw-boinc-setup)
    project_dir = \"/home/boincadm/projects/myproj\"
    quorum = 2                      # replication = results issued per workunit
    comparison = \"json\"             # or \"bitwise\"; rel_tolerance, abs_tolerance
    deadline_secs = 604800          # batch_size: workunits per create_work call
    job_deadline_secs = 86400       # fail (and cancel) what reached no quorum by then;
                                    # also max_error_results, max_total_results, rsc_fpops_est

The task contract: each task runs in a fresh directory, gets its input JSON on stdin, prints
its result JSON on stdout, and exits 0 on success.

Results are JSON lines in task order: task index, input, output, exit, times, host. They go
to stdout, or to --output FILE; when the job has a reduce program they go to
<job dir>/results.jsonl unless --output is given. Declared output files are kept under
<job dir>/results/task-<N>/. The job directory is <jobs dir>/<name>-<N>/ (see --jobs-dir),
holding the journal: `mw status`, `mw results`, `mw resume` work on it.

Exit status: 0 every task succeeded, 1 some task failed, 2 bad usage or job file.";

/// Entry point of the `mw` binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Submit(args) => run::submit(args),
        Command::Status(args) => jobs::status(args),
        Command::Results(args) => jobs::results(args),
        Command::Wait(args) => jobs::wait(args),
        Command::Cancel(args) => jobs::cancel(args),
        Command::Resume(args) => run::resume(args),
        Command::Report(args) => jobs::report(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mw: error: {e:#}");
            EXIT_USAGE
        }
    }
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
