//! Settings of the HTCondor interface: what a program (or `job.rs`, from a job file's
//! `[condor]` table) chooses about resources, batching, held jobs and where the tools are.
//! This module must never know the job-file format: `job.rs` maps TOML onto these types.

use mw_condor_kit::CondorCli;
use std::path::PathBuf;
use std::time::Duration;

/// What to do with a held job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHold {
    /// `condor_rm` it and fail the task with the hold reason (the default).
    Fail,
    /// Keep waiting until it is released (by an administrator or `periodic_release`).
    Wait,
}

/// Settings of the HTCondor interface.
#[derive(Debug, Clone)]
pub struct CondorSettings {
    /// Where batches are staged (a directory per batch).
    pub work_dir: PathBuf,
    /// The static `mw-worker` shipped to the pool.
    pub worker: PathBuf,
    /// `request_cpus`.
    pub request_cpus: u32,
    /// `request_memory`, MiB.
    pub request_memory_mb: u64,
    /// `request_disk`, MiB.
    pub request_disk_mb: u64,
    /// `requirements` (a ClassAd expression).
    pub requirements: Option<String>,
    /// A batch is submitted once no new task arrived for this long (tasks that arrive
    /// together share one `condor_submit`), or at the latest 30 s after this window.
    pub batch_window: Duration,
    /// A user submit template (tera); `None` for condor-kit's built-in one.
    pub template: Option<PathBuf>,
    /// Held jobs: fail or wait.
    pub on_hold: OnHold,
    /// `max_retries` in the submit description.
    pub max_retries: u32,
    /// How often logs are re-read without an inotify wake-up.
    pub poll_interval: Duration,
    /// Where the `condor_*` tools are.
    pub cli: CondorCli,
    /// Tasks per HTCondor job (default 1: one job per task). More than 1 packs tasks: one
    /// job runs a pack of up to this many tasks one after the other (one pack bundle in, one
    /// result per task out), each task still reported, retried and cancelled on its own.
    /// At most [`crate::pack::MAX_TASKS_PER_PACK`].
    pub tasks_per_job: usize,
    /// With `tasks_per_job` > 1: size each pack so that its tasks run about this long in
    /// total, from the mean run time of the tasks measured so far (at least 1 task, at most
    /// `tasks_per_job`); until the first run time is known, one job of one task goes first
    /// and the others wait for it. `None`: every pack takes `tasks_per_job` tasks.
    pub target_job_time: Option<Duration>,
}

impl CondorSettings {
    /// Defaults: 1 cpu, 512 MiB, 1 GiB disk, a 0.5 s batch window, fail on hold, one task per
    /// job, the worker from `$MW_WORKER` or next to the running executable.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        CondorSettings {
            work_dir: work_dir.into(),
            worker: default_worker(),
            request_cpus: 1,
            request_memory_mb: 512,
            request_disk_mb: 1024,
            requirements: None,
            batch_window: Duration::from_millis(500),
            template: None,
            on_hold: OnHold::Fail,
            max_retries: 0,
            poll_interval: Duration::from_secs(2),
            cli: CondorCli::default(),
            tasks_per_job: 1,
            target_job_time: None,
        }
    }
}

/// `$MW_WORKER`, else `mw-worker` next to the running executable, else `mw-worker`.
pub fn default_worker() -> PathBuf {
    if let Some(p) = std::env::var_os("MW_WORKER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("mw-worker")))
        .unwrap_or_else(|| PathBuf::from("mw-worker"))
}
