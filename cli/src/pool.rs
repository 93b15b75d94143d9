//! What the live master last heard from a pool about the tasks it handed over: HTCondor jobs
//! waiting in the queue (idle, also held or not yet submitted) versus executing (the job
//! event log's 000 submit vs 001 execute). The drive loop writes it every few seconds to
//! `<job dir>/pool-status.json`; `mw status` and the progress line split "running" with it.
//! It is a display only, never a result: the journal stays the record of every task. The
//! file is read as hostile (bounded, numbers checked) and trusted only while the master that
//! wrote it is the job's live master.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The file in the job directory.
pub(crate) const POOL_STATUS_FILE: &str = "pool-status.json";

/// Largest file read back (it is a few dozen bytes when written by mw).
const MAX_BYTES: u64 = 4096;

/// Tasks handed to the pool, by what the pool says of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PoolStatus {
    /// The master process that wrote it.
    pub master_pid: i64,
    /// In the pool's queue, not executing (idle, held, or waiting to be submitted).
    pub idle: u64,
    /// Executing on a machine of the pool.
    pub running: u64,
}

impl PoolStatus {
    /// From an interface's status map: only interfaces that report `idle` and `running`
    /// (HTCondor) have a pool status.
    pub(crate) fn from_interface(status: &BTreeMap<String, String>) -> Option<PoolStatus> {
        let n = |k: &str| status.get(k).and_then(|v| v.parse::<u64>().ok());
        let running = n("running")?;
        let idle = n("idle")?
            .saturating_add(n("held").unwrap_or(0))
            .saturating_add(n("waiting_for_submit").unwrap_or(0));
        Some(PoolStatus {
            master_pid: i64::from(std::process::id()),
            idle,
            running,
        })
    }

    /// Splits the journal's `running` count (tasks handed to the pool) into idle and
    /// running: the pool's executing count, at most all of them, and the rest idle.
    pub(crate) fn split(&self, handed_over: u64) -> (u64, u64) {
        let running = self.running.min(handed_over);
        (handed_over - running, running)
    }
}

/// Writes the status atomically (a reader never sees half a file). Failures are ignored:
/// the display is best effort and must never stop a run.
pub(crate) fn write(job_dir: &Path, status: &PoolStatus) {
    if let Ok(bytes) = serde_json::to_vec(status) {
        let _ = mw_bundle::write_atomic(&job_dir.join(POOL_STATUS_FILE), &bytes, None);
    }
}

/// The pool status written by the job's live master `live_pid`, if there is one.
pub(crate) fn read(job_dir: &Path, live_pid: Option<i64>) -> Option<PoolStatus> {
    use std::io::Read;
    let live_pid = live_pid?;
    let mut text = String::new();
    std::fs::File::open(job_dir.join(POOL_STATUS_FILE))
        .ok()?
        .take(MAX_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    let s: PoolStatus = serde_json::from_str(&text).ok()?;
    (s.master_pid == live_pid).then_some(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn from_an_interface_status_and_split() {
        let m: BTreeMap<String, String> = [
            ("idle", "2"),
            ("held", "1"),
            ("waiting_for_submit", "1"),
            ("running", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = PoolStatus::from_interface(&m).unwrap();
        assert_eq!((s.idle, s.running), (4, 3));
        assert_eq!(s.split(7), (4, 3));
        // The journal is the record: never more running than tasks handed over.
        assert_eq!(s.split(2), (0, 2));
        assert!(PoolStatus::from_interface(&BTreeMap::new()).is_none());
        let bad: BTreeMap<String, String> = [("idle", "x"), ("running", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(PoolStatus::from_interface(&bad).is_none());
    }

    #[test]
    fn read_back_only_from_the_live_master() {
        let t = tempfile::tempdir().unwrap();
        let s = PoolStatus {
            master_pid: 42,
            idle: 1,
            running: 2,
        };
        write(t.path(), &s);
        assert_eq!(read(t.path(), Some(42)), Some(s));
        assert_eq!(read(t.path(), Some(43)), None);
        assert_eq!(read(t.path(), None), None);
        std::fs::write(t.path().join(POOL_STATUS_FILE), "{\"idle\": -1}").unwrap();
        assert_eq!(read(t.path(), Some(42)), None);
        std::fs::write(t.path().join(POOL_STATUS_FILE), vec![b' '; 10_000]).unwrap();
        assert_eq!(read(t.path(), Some(42)), None);
    }
}
