//! `mw`: the master layer of the mw toolkit (paper Fig. 1).
//!
//! A [`Master`] takes tasks ([`TaskSpec`]: a [`Program`] and a JSON input), runs them through
//! one [`Interface`] (local cores by default; MPI, HTCondor or BOINC), and hands back results
//! as they finish, with time accounting, retries, cancellation and, optionally, a durable
//! journal that lets a crashed master resume.
//!
//! ```no_run
//! use mw::{Master, Multicore, Program, TaskSpec};
//! use std::sync::Arc;
//! let master = Master::new(Multicore::default())?;
//! let program = Arc::new(Program::new("target/release/monte-pi-task")?);
//! let t = master.submit_task(TaskSpec::new(program, serde_json::json!({"seed": 1, "points": 1000})))?;
//! let (_task, hits): (mw::TaskId, u64) = master.get_result(Some(t))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Architecture invariant:** the master never knows which platform it drives: everything
//! platform-specific is behind [`Interface`].

#![warn(missing_docs)]

pub mod boinc;
pub mod cli;
pub mod condor;
mod durable;
pub mod interface;
pub mod job;
pub mod journal;
pub mod master;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod multicore;
mod platforms;
pub mod task;

pub use interface::{Completion, HandleSink, Interface};
pub use master::{
    Master, MasterOptions, MasterStatus, MwError, NextOutcome, TaskOutput, TaskState, TaskTimes,
};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use multicore::Multicore;
pub use mw_bundle::{Comparison, ExitInfo};
pub use task::{
    Execution, InterfaceError, PreparedTask, Program, ProgramError, RunFacts, TaskId, TaskSpec,
    WorkerId,
};
