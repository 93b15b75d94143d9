//! Job identifiers and queue status codes shared by the command wrappers and the log parser.
//! This module must never know about mw's tasks or bundles.

use std::fmt;
use std::str::FromStr;

/// One HTCondor job: `cluster.proc`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct JobHandle {
    /// The cluster id (`ClusterId`).
    pub cluster: u64,
    /// The proc id within the cluster (`ProcId`).
    pub proc: u64,
}

impl JobHandle {
    /// `cluster.proc`.
    pub fn new(cluster: u64, proc: u64) -> Self {
        JobHandle { cluster, proc }
    }
}

impl fmt::Display for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.cluster, self.proc)
    }
}

impl FromStr for JobHandle {
    type Err = String;
    /// Parses `C.P` (as printed by `condor_submit -terse` and taken by `condor_rm`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (c, p) = s
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("{s:?} is not CLUSTER.PROC"))?;
        let cluster = c
            .parse()
            .map_err(|_| format!("{s:?}: cluster {c:?} is not a number"))?;
        let proc = p
            .parse()
            .map_err(|_| format!("{s:?}: proc {p:?} is not a number"))?;
        Ok(JobHandle { cluster, proc })
    }
}

/// The `JobStatus` attribute of a job ad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum JobStatus {
    /// 1: waiting to run.
    Idle,
    /// 2: running.
    Running,
    /// 3: removed (`condor_rm`).
    Removed,
    /// 4: completed.
    Completed,
    /// 5: held.
    Held,
    /// 6: transferring output.
    TransferringOutput,
    /// 7: suspended.
    Suspended,
    /// A code this crate does not know.
    Other(i64),
}

impl JobStatus {
    /// The status for a `JobStatus` code.
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => JobStatus::Idle,
            2 => JobStatus::Running,
            3 => JobStatus::Removed,
            4 => JobStatus::Completed,
            5 => JobStatus::Held,
            6 => JobStatus::TransferringOutput,
            7 => JobStatus::Suspended,
            n => JobStatus::Other(n),
        }
    }

    /// The `JobStatus` code.
    pub fn code(self) -> i64 {
        match self {
            JobStatus::Idle => 1,
            JobStatus::Running => 2,
            JobStatus::Removed => 3,
            JobStatus::Completed => 4,
            JobStatus::Held => 5,
            JobStatus::TransferringOutput => 6,
            JobStatus::Suspended => 7,
            JobStatus::Other(n) => n,
        }
    }
}
