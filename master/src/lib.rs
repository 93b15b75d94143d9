//! `mw`: the master layer of the mw toolkit (paper Fig. 1).
//!
//! A [`Master`] takes tasks ([`TaskSpec`]: a [`Program`] and a JSON input), runs them through
//! one [`Interface`] (local cores by default; MPI, HTCondor or BOINC), and hands back results
//! as they finish, with time accounting, retries, cancellation and, optionally, a durable
//! journal that lets a crashed master resume.
//!
//! ```
//! use mw::{Master, Multicore, Program, TaskSpec};
//! use std::sync::Arc;
//! let master = Master::new(Multicore::default())?;
//! // Any executable honouring the task contract (JSON on stdin, JSON on stdout); `cat`
//! // echoes its input back, which makes this example runnable anywhere.
//! let program = Arc::new(Program::new("/bin/cat")?);
//! let t = master.submit_task(TaskSpec::new(program, serde_json::json!({"seed": 1, "points": 1000})))?;
//! let (task, echoed): (mw::TaskId, serde_json::Value) = master.get_result(Some(t))?;
//! assert_eq!(task, t);
//! assert_eq!(echoed["points"], 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Architecture invariant:** the master never knows which platform it drives: everything
//! platform-specific is behind [`Interface`].

pub mod boinc;
pub mod condor;
pub mod crash;
mod durable;
mod guard;
pub mod interface;
pub mod journal;
pub mod master;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod multicore;
pub mod pack;
pub mod task;
pub mod task_logs;

pub use interface::{Completion, HandleSink, Interface};
pub use master::{
    Master, MasterOptions, MasterStatus, MwError, NextOutcome, RetryOn, SpecSource, TaskOutput,
    TaskState, TaskTimes,
};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use multicore::Multicore;
pub use mw_bundle::{Comparison, ExitInfo};
pub use task::{
    Execution, InterfaceError, PreparedTask, Program, ProgramError, ProgramMode, RunFacts,
    StdoutMode, TaskId, TaskSpec, ToProgram, WorkerId,
};
