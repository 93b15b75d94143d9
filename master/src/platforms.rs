//! Construction of the remote-platform interfaces (HTCondor, BOINC) from a job file.

use crate::interface::Interface;
use crate::job::Job;
use std::path::Path;
use std::sync::Arc;

/// Builds the interface named `name` for `job`, staging into `job_dir`.
pub(crate) fn make(name: &str, job: &Job, job_dir: &Path) -> anyhow::Result<Arc<dyn Interface>> {
    let _ = job_dir;
    match name {
        "boinc" => {
            let settings = job
                .file
                .boinc
                .to_settings(&job.base_dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", job.path.display()))?;
            Ok(Arc::new(crate::boinc::Boinc::new(settings)?))
        }
        "condor" => Ok(Arc::new(crate::condor::from_job(job, job_dir)?)),
        _ => anyhow::bail!("interface `{name}` is not available in this build"),
    }
}

/// Checks, before a job is created, what interface `name` can check without changing
/// anything (BOINC: the project, mw's installation, permissions, settings), so a refused job
/// leaves no job directory behind.
pub(crate) fn preflight(name: &str, job: &Job) -> anyhow::Result<()> {
    if name == "boinc" {
        let settings = job
            .file
            .boinc
            .to_settings(&job.base_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", job.path.display()))?;
        crate::boinc::Boinc::check(&settings)?;
    }
    Ok(())
}
