//! `mw-condor`: a thin binary over the HTCondor interface. `mw-condor submit-file JOB.toml`
//! prints the submit description `mw` would submit for that job (all its tasks in one batch),
//! so a person can read, edit and reuse it. It submits nothing and must never touch a journal.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mw::condor::preview_submit;
use mw::job::Job;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "mw-condor", version, about = "HTCondor helpers for mw jobs.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the submit description `mw` would submit for JOB (one batch of all its tasks).
    SubmitFile {
        /// The job file (TOML).
        job: PathBuf,
        /// Print the queue item file (one line per task) instead of the submit description.
        #[arg(long)]
        items: bool,
        /// The staging directory to show in paths (default: ./mw-jobs/<name>-N/staging/condor).
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
            let settings = job.condor_settings(&work_dir)?;
            let builder = job.task_builder()?;
            let specs = (job.inputs()?.into_iter().enumerate())
                .map(|(i, input)| builder.build(i, input))
                .collect::<Result<Vec<_>, _>>()?;
            let (submit, item_text) = preview_submit(&job.name, specs, &work_dir, &settings)?;
            print!("{}", if items { item_text } else { submit });
            Ok(())
        }
    }
}
