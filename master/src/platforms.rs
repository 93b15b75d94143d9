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
            let settings =
                crate::boinc::BoincSettings::from_section(&job.file.boinc, &job.base_dir)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", job.path.display()))?;
            Ok(Arc::new(crate::boinc::Boinc::new(settings)?))
        }
        "condor" => {
            let settings = job.condor_settings(job_dir.join("staging").join("condor"))?;
            Ok(Arc::new(crate::condor::Condor::new(settings)?))
        }
        _ => anyhow::bail!("interface `{name}` is not available in this build"),
    }
}
