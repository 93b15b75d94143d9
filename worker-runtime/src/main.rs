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
use mw_worker_runtime::{run_any_bundles, ProcessControl, Ran, RunOptions};
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
    if let Some(slot) = boinc_slot() {
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
            let opts = RunOptions {
                scratch_root: scratch,
                ..RunOptions::default()
            };
            let ran = run_any_bundles(&program, &task, &result, &ProcessControl::new(), &opts)
                .with_context(|| format!("running task bundle {}", task.display()))?;
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
