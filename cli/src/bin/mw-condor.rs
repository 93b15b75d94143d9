//! `mw-condor`: a thin binary over the HTCondor interface. `mw-condor submit-file JOB.toml`
//! prints the submit description `mw` would submit for that job (all its tasks in one batch),
//! so a person can read, edit and reuse it; its queue items are inline (`queue ... from ( ... )`),
//! so HTCondor reads it as printed. It submits nothing and must never touch a journal.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mw::condor::preview_submit;
use mw_cli::job::Job;
use mw_cli::platforms::condor_settings;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "mw-condor", version, about = "HTCondor helpers for mw jobs.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the submit description `mw` would submit for JOB (one batch of all its tasks),
    /// with the queue items inline so HTCondor reads it as printed. The worker it ships is
    /// `[condor] worker`, else $MW_WORKER, else the static build of `cargo static-worker`.
    SubmitFile {
        /// The job file (TOML).
        job: PathBuf,
        /// Print the queue items (one line per task, the item file `mw` writes) instead of the
        /// submit description.
        #[arg(long)]
        items: bool,
        /// The staging directory to show in paths (default: `./mw-jobs/<name>-N/staging/condor`).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("mw-condor: error: {e:#}");
        std::process::exit(2);
    }
}

/// The most tasks `submit-file` prints a description for.
const MAX_PREVIEW_TASKS: u64 = 100_000;

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::SubmitFile {
            job,
            items,
            work_dir,
        } => {
            let job = Job::load(&job)?;
            let work_dir = match work_dir {
                Some(d) => std::path::absolute(&d).with_context(|| d.display().to_string())?,
                None => std::env::current_dir()?
                    .join("mw-jobs")
                    .join(format!("{}-N", job.name))
                    .join("staging")
                    .join("condor"),
            };
            let settings = condor_settings(&job, &work_dir)?;
            if !settings.worker.is_file() {
                anyhow::bail!(
                    "the worker {} does not exist (`cargo static-worker` builds the static one)",
                    settings.worker.display()
                );
            }
            if let Some(w) = mw_worker_runtime::static_worker::dynamic_warning(&settings.worker) {
                eprintln!("mw-condor: warning: {w}");
            }
            // Counted before anything is expanded: every task's spec is held to print one
            // description.
            let inputs = job.input_source()?;
            if inputs.len() > MAX_PREVIEW_TASKS {
                anyhow::bail!(
                    "the job has {} tasks; submit-file prints at most {MAX_PREVIEW_TASKS} \
                     (`mw run` and `mw submit` take any number)",
                    inputs.len()
                );
            }
            let builder = job.task_builder()?;
            let specs = inputs
                .iter()
                .enumerate()
                .map(|(i, input)| Ok(builder.build(i, input?)?))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (submit, item_text) = preview_submit(&job.name, specs, &work_dir, &settings)?;
            if items {
                print!("{item_text}");
            } else {
                print!("{}", mw_condor_kit::inline_items(&submit, &item_text)?);
            }
            Ok(())
        }
    }
}
