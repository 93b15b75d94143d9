//! HTCondor support for mw: submit descriptions generated from a readable tera template, wrappers
//! around `condor_submit`/`condor_rm`/`condor_q`/`condor_history`, and an incremental parser and
//! watcher of job event logs. It runs `mw-worker` jobs with file transfer (no shared file system).
//! This crate must never know about the master's task queue, journal or the contents of bundles.

pub mod commands;
pub mod error;
pub mod events;
pub mod follower;
pub mod job;
pub mod submit;
pub mod watcher;

pub use commands::{
    history, is_batch_name, parse_ads, query_jobs, remove, submit, CondorCli, JobAd,
    BATCH_ATTRIBUTE, QUERY_ATTRIBUTES,
};
pub use error::{CondorError, Result};
pub use events::{parse_record, EventKind, EventTime, LogEvent, Termination, TransferStage};
pub use follower::{LogFollower, Polled};
pub use job::{JobHandle, JobStatus};
pub use submit::{
    inline_items, parse_items, parse_terse, render_items, render_submit, write_submit_files,
    ItemLine, SubmitItem, SubmitSpec, DEFAULT_TEMPLATE,
};
pub use watcher::{spawn_log_watcher, spawn_polling_log_watcher, LogWatcher, WatchMessage};
