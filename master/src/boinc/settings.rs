//! The BOINC interface's settings: what a job asks of the project (redundancy, limits, work
//! estimate, deadlines), as plain Rust values. The job file's `[boinc]` section is mapped onto
//! them by the job-file module; this module must never know the job-file format.

use super::BoincError;
use mw_boinc_kit::template::TemplateParams;
use mw_boinc_kit::MwBoincConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Default number of workunits per `create_work --stdin` call.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// The interface's settings (from a job file's `[boinc]` section, or built in Rust).
#[derive(Debug, Clone)]
pub struct BoincSettings {
    /// The BOINC project root (holding `mw_boinc.toml`).
    pub project_dir: PathBuf,
    /// App name; must match the installed one when given.
    pub app_name: Option<String>,
    /// min_quorum (default: the installed template's).
    pub quorum: Option<u32>,
    /// target_nresults (default: the quorum).
    pub replication: Option<u32>,
    /// delay_bound in seconds: a volunteer that does not report in time is replaced
    /// (default 7 days).
    pub delay_bound_secs: Option<u64>,
    /// max_error_results (default 1: two hosts can declare a failing task failed).
    pub max_error_results: Option<u32>,
    /// max_total_results (default: max_success_results + max_error_results).
    pub max_total_results: Option<u32>,
    /// rsc_fpops_est: floating-point operations of one task (default 1e11).
    pub rsc_fpops_est: Option<f64>,
    /// rsc_fpops_bound (default: the larger of 8.64e13 and 1000 × rsc_fpops_est).
    pub rsc_fpops_bound: Option<f64>,
    /// The job's deadline: a task without a result this long after it was handed to BOINC is
    /// failed (and its workunit cancelled) with a message saying so. None waits forever.
    pub job_deadline: Option<Duration>,
    /// Workunits per `create_work` call.
    pub batch_size: usize,
    /// Tasks per workunit (default 1). More than 1 packs tasks: one workunit runs a pack of
    /// up to this many tasks one after the other on a volunteer's host (one pack bundle in,
    /// one result per task out), each task still reported, retried and cancelled on its own.
    /// At most [`crate::pack::MAX_TASKS_PER_PACK`].
    pub tasks_per_workunit: usize,
    /// With `tasks_per_workunit` > 1: size each pack so that its tasks run about this long in
    /// total on a volunteer's host, from the mean run time measured so far (at least 1 task,
    /// at most `tasks_per_workunit`); until the first run time is known, one workunit of one
    /// task goes first and the others wait for it. `None`: every pack is full size.
    pub target_job_time: Option<Duration>,
}

impl BoincSettings {
    /// Settings for a project directory, everything else default.
    pub fn new(project_dir: impl Into<PathBuf>) -> Self {
        BoincSettings {
            project_dir: project_dir.into(),
            app_name: None,
            quorum: None,
            replication: None,
            delay_bound_secs: None,
            max_error_results: None,
            max_total_results: None,
            rsc_fpops_est: None,
            rsc_fpops_bound: None,
            job_deadline: None,
            batch_size: DEFAULT_BATCH_SIZE,
            tasks_per_workunit: 1,
            target_job_time: None,
        }
    }

    /// The input-template parameters these settings ask for, checked.
    pub fn template_params(&self, cfg: &MwBoincConfig) -> Result<TemplateParams, BoincError> {
        let quorum = self.quorum.unwrap_or(cfg.quorum);
        let mut p = TemplateParams::for_quorum(quorum);
        if let Some(n) = self.max_error_results {
            p = p.with_max_error_results(n);
        }
        if let Some(r) = self.replication {
            p = p.with_replication(r);
        }
        if let Some(n) = self.max_total_results {
            p.max_total_results = n;
        }
        if let Some(d) = self.delay_bound_secs {
            p.delay_bound = d;
        }
        if let Some(f) = self.rsc_fpops_est {
            p.rsc_fpops_est = f;
            p.rsc_fpops_bound = p.rsc_fpops_bound.max(f * 1000.0);
        }
        if let Some(b) = self.rsc_fpops_bound {
            p.rsc_fpops_bound = b;
        }
        p.check().map_err(|e| BoincError(e.to_string()))?;
        if self.batch_size == 0 {
            return Err(BoincError("batch_size must be at least 1".into()));
        }
        if self.job_deadline == Some(Duration::ZERO) {
            return Err(BoincError("the job deadline must be positive".into()));
        }
        Ok(p)
    }
}
