//! `mw-boinc-setup`: thin command line over the `mw_boinc_setup` library (plan, then print
//! or apply). It must never know about the master or how tasks run.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mw-boinc-setup",
    version,
    about = "Installs mw as an app into an existing BOINC server project (idempotent)."
)]
struct Cli {
    /// The BOINC project root (made by BOINC's make_project).
    #[arg(long)]
    project_dir: PathBuf,
    /// BOINC app name.
    #[arg(long, default_value = "mw")]
    app_name: String,
    /// App version, M.mm.
    #[arg(long, default_value = "1.00")]
    app_version: String,
    /// The static mw-worker binary volunteers receive (default: the build of
    /// `cargo static-worker` in the tree this program was built in, target/static/release/
    /// mw-worker, else a static mw-worker next to this program).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// A worker for one BOINC platform, PLATFORM=PATH (repeatable): one app version per
    /// platform, e.g. `windows_x86_64=mw-worker.exe`, `aarch64-unknown-linux-gnu=PATH`,
    /// `x86_64-pc-linux-gnu=PATH`. Replaces --worker.
    #[arg(long = "worker-for", value_name = "PLATFORM=PATH", value_parser = parse_worker_for)]
    worker_for: Vec<mw_boinc_setup::platforms::PlatformWorker>,
    /// The mw-validator binary (default: mw-validator next to this program).
    #[arg(long)]
    validator: Option<PathBuf>,
    /// The mw-assimilator binary (default: mw-assimilator next to this program).
    #[arg(long)]
    assimilator: Option<PathBuf>,
    /// Results per workunit that must agree (1 = no redundancy).
    #[arg(long, default_value_t = 1)]
    quorum: u32,
    /// The largest result (a task's stdout), in bytes, that mw-validator and mw-assimilator
    /// accept from a volunteer (default: mw's default max_output, 16 MiB). It bounds their
    /// memory on this server; jobs with a larger max_output need it raised.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_output_bytes: Option<u64>,
    /// Print every planned change and write nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_worker_for(s: &str) -> Result<mw_boinc_setup::platforms::PlatformWorker, String> {
    mw_boinc_setup::platforms::parse_worker_for(s)
}

fn beside_me(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate this program")?;
    let dir = exe
        .parent()
        .context("this program has no parent directory")?;
    Ok(dir.join(name))
}

/// The default worker: the static build (see `mw_worker_runtime::static_worker`). Not
/// needed when `--worker-for` names every app version's worker.
fn default_worker(
    worker_for: &[mw_boinc_setup::platforms::PlatformWorker],
) -> anyhow::Result<PathBuf> {
    if !worker_for.is_empty() {
        return Ok(PathBuf::new());
    }
    let exe = std::env::current_exe().context("cannot locate this program")?;
    mw_worker_runtime::static_worker::find(&exe, "name one with --worker PATH")
        .map_err(anyhow::Error::msg)
}

fn main() {
    // Errors end here, as one line with their causes (`{:#}`), never a backtrace.
    if let Err(e) = real_main() {
        eprintln!("mw-boinc-setup: error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let opts = mw_boinc_setup::Options {
        project_dir: cli.project_dir.clone(),
        app_name: cli.app_name,
        app_version: cli.app_version,
        worker: match cli.worker {
            Some(p) => p,
            None => default_worker(&cli.worker_for)?,
        },
        platform_workers: cli.worker_for,
        validator: match cli.validator {
            Some(p) => p,
            None => beside_me("mw-validator")?,
        },
        assimilator: match cli.assimilator {
            Some(p) => p,
            None => beside_me("mw-assimilator")?,
        },
        quorum: cli.quorum,
        max_output_bytes: cli.max_output_bytes,
    };
    let plan = mw_boinc_setup::plan(&opts).with_context(|| {
        format!(
            "planning the installation into {}",
            cli.project_dir.display()
        )
    })?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if plan.actions.is_empty() {
        println!("already installed, nothing to change");
        return Ok(());
    }
    if cli.dry_run {
        println!(
            "dry run: {} planned changes (nothing written):",
            plan.actions.len()
        );
        for a in &plan.actions {
            println!("  {a}");
        }
        return Ok(());
    }
    let root = cli
        .project_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", cli.project_dir.display()))?;
    let mut out = std::io::stdout();
    mw_boinc_setup::apply(&plan, &root, &mut out).context("installing")?;
    for a in &plan.actions {
        if let mw_boinc_setup::Action::Backup { from, to } = a {
            println!(
                "the previous {} is kept as {}",
                from.file_name().unwrap_or_default().to_string_lossy(),
                to.display()
            );
        }
    }
    println!(
        "installed; restart the project's daemons (bin/stop && bin/start) to start the validator and assimilator"
    );
    Ok(())
}
