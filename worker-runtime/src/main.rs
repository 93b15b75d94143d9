//! `mw-worker`: the executable that Condor pools and BOINC clients receive. A thin binary
//! over the `mw_worker_runtime` library.
//!
//! Exit status: 0 when the task succeeded; 1 when it failed (the result bundle, still
//! written, says how); 2 when no result bundle could be made (bad arguments or bundles).

use anyhow::Context;
use clap::{Parser, Subcommand};
use mw_worker_runtime::{run_bundles, ProcessControl, RunOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mw-worker",
    version,
    about = "Runs one mw task bundle and writes its result bundle."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a task: unpack and verify both bundles, run the program, write the result bundle.
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

fn main() {
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
            let info = run_bundles(&program, &task, &result, &ProcessControl::new(), &opts)
                .with_context(|| format!("running task bundle {}", task.display()))?;
            if info.exit.success() {
                Ok(0)
            } else {
                eprintln!(
                    "mw-worker: task {} of job {} failed: {}",
                    info.task, info.job, info.exit
                );
                if !info.stderr_tail.is_empty() {
                    eprintln!("--- stderr tail ---\n{}", info.stderr_tail);
                }
                Ok(1)
            }
        }
    }
}
