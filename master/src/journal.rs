//! The job journal (SQLite). Placeholder API; filled in by the durable-jobs work.

use crate::master::TaskRecord;
use crate::task::{TaskId, TaskSpec};

/// Journal errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

/// A job's journal.
#[derive(Debug)]
pub struct Journal {}

impl Journal {
    pub(crate) fn record_submitted(
        &self,
        _first: u64,
        _specs: &[TaskSpec],
    ) -> Result<(), JournalError> {
        Ok(())
    }
    pub(crate) fn record_started(&self, _task: TaskId, _attempt: u32) {}
    pub(crate) fn record_handle(&self, _task: TaskId, _handle: &str) {}
    pub(crate) fn record_final(&self, _task: TaskId, _rec: &TaskRecord) {}
    pub(crate) fn flush(&self) {}
}
