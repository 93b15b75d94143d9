//! `mw-worker`: the executable that Condor pools and BOINC clients receive. A thin binary
//! over the `mw_worker_runtime` library.
//!
//! Exit status: 0 when the task succeeded; 1 when it failed (the result bundle, still
//! written, says how); 2 when no result bundle could be made (bad arguments or bundles).
//!
//! BOINC mode: `mw-worker boinc`, or `mw-worker` with no subcommand in a directory holding
//! `init_data.xml` (a BOINC slot; any workunit command-line arguments are ignored), runs the
//! slot's task under the BOINC app contract (`mw_worker_runtime::boinc`); its exit statuses
//! are those of `boinc::SlotExit::code` (0 also for temporary exits, 194 after an abort).

use anyhow::Context;
use clap::{Parser, Subcommand};
use mw_worker_runtime::{run_task_or_pack_file, ProcessControl, Ran, RunOptions, UnpackedProgram};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mw-worker",
    version,
    about = "Runs one mw task bundle (or a pack of tasks) and writes its result bundle."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a task: unpack and verify both bundles, run the program, write the result bundle.
    /// A pack bundle (many tasks of one job) runs task by task into one pack result bundle.
    Run {
        /// The program bundle (.tar.gz).
        #[arg(long)]
        program: PathBuf,
        /// The task bundle (.tar.gz).
        #[arg(long)]
        task: PathBuf,
        /// Where to write the result bundle.
        #[arg(long)]
        result: PathBuf,
        /// Directory for scratch space (default: the system temp dir).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
}

/// Subcommands and flags that select the normal CLI even inside a BOINC slot.
const CLI_WORDS: &[&str] = &["run", "help", "-h", "--help", "-V", "--version"];

/// The slot directory when this invocation is BOINC mode.
fn boinc_slot() -> Option<PathBuf> {
    let first = std::env::args_os().nth(1);
    let first = first.as_ref().and_then(|a| a.to_str());
    let cwd = std::env::current_dir().ok()?;
    match first {
        Some("boinc") => Some(cwd),
        Some(w) if CLI_WORDS.contains(&w) => None,
        _ if mw_worker_runtime::boinc::is_slot(&cwd) => Some(cwd),
        _ => None,
    }
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    #[cfg(unix)]
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(mw_worker_runtime::dying::WATCHDOG_ARG))
    {
        let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        std::process::exit(mw_worker_runtime::dying::watchdog_main(&rest));
    }
    if let Some(slot) = boinc_slot() {
        // The client may SIGKILL the app: the watchdog then takes the task's processes.
        #[cfg(unix)]
        let _watchdog = watchdog(None);
        std::process::exit(mw_worker_runtime::boinc::run_in_slot(&slot));
    }
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mw-worker: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run {
            program,
            task,
            result,
            scratch,
        } => {
            let control = ProcessControl::new();
            // Before any other thread exists (see `dying::TerminationSignals::install`).
            #[cfg(unix)]
            let signals = mw_worker_runtime::dying::TerminationSignals::install(control.clone())
                .context("handling stop signals")?;
            // Everything this run writes lives in one directory of its own, which goes with
            // the worker however it ends.
            let root = scratch.unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new()
                .prefix(SCRATCH_PREFIX)
                .tempdir_in(&root)
                .with_context(|| format!("creating a scratch directory in {}", root.display()))?;
            #[cfg(unix)]
            let watchdog = watchdog(Some(dir.path()));
            let opts = RunOptions {
                scratch_root: Some(dir.path().to_path_buf()),
                ..RunOptions::default()
            };
            let ran = UnpackedProgram::unpack(&program, &opts)
                .and_then(|p| run_task_or_pack_file(&p, &task, &result, &control, &opts));
            #[cfg(unix)]
            if let Some(sig) = signals.received() {
                // Stopped: the task's processes are gone (cancel); no result is written, the
                // scratch directory goes, and the worker dies by the signal it got.
                drop(ran);
                let _ = mw_worker_runtime::run::remove_tree(dir.path());
                drop(dir);
                drop(watchdog);
                mw_worker_runtime::dying::die_by(sig);
            }
            let (ran, pending) =
                ran.with_context(|| format!("running task bundle {}", task.display()))?;
            pending.persist()?;
            // Also what a task left unwritable (a dropped TempDir would leave it behind).
            let _ = mw_worker_runtime::run::remove_tree(dir.path());
            drop(dir);
            if ran.succeeded() {
                return Ok(0);
            }
            match ran {
                Ran::Task(info) => {
                    eprintln!(
                        "mw-worker: task {} of job {} failed: {}",
                        info.task, info.job, info.exit
                    );
                    if !info.stderr_tail.is_empty() {
                        eprintln!("--- stderr tail ---\n{}", info.stderr_tail);
                    }
                }
                Ran::Pack(p) => {
                    eprintln!(
                        "mw-worker: pack of job {}: {} of {} tasks failed {:?}, {} could not run",
                        p.info.job,
                        p.failed.len(),
                        p.info.tasks.len() + p.info.not_run.len(),
                        p.failed,
                        p.info.not_run.len()
                    );
                    for n in &p.info.not_run {
                        eprintln!("mw-worker: task {} could not run: {}", n.task, n.reason);
                    }
                }
            }
            Ok(1)
        }
    }
}

/// Lets glibc's allocator keep freed memory of a few MiB instead of returning it to the
/// kernel at once. By default every block over 128 KiB is mapped when allocated and unmapped
/// when freed (and the heap trimmed above 128 KiB free), so the gzip state of each task's
/// result bundle in a pack (some 300 KiB) was mapped, faulted in and zeroed page by page,
/// and unmapped again, task after task: 160 us of the worker's 1.2 ms of CPU per null task,
/// against 35 us with these thresholds. The worker holds at most 8 MiB more than it uses.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets two of the allocator's tuning parameters; it is called
    // before any other thread exists. A refused value (0 returned) leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// The prefix of this worker's scratch directory.
#[cfg(unix)]
const SCRATCH_PREFIX: &str = mw_worker_runtime::dying::SCRATCH_PREFIX;
#[cfg(not(unix))]
const SCRATCH_PREFIX: &str = "mw-worker-";

/// Starts the watchdog that cleans up after this worker if it is killed; a worker that
/// cannot start one still runs its task (and says what it cannot promise).
#[cfg(unix)]
fn watchdog(scratch: Option<&std::path::Path>) -> Option<mw_worker_runtime::dying::Watchdog> {
    match mw_worker_runtime::dying::Watchdog::start(scratch) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!(
                "mw-worker: warning: no watchdog ({e}): if this worker is killed, its task's \
                 processes and scratch directory stay behind"
            );
            None
        }
    }
}
