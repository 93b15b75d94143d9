//! The mw worker runtime: how a task is executed, everywhere.
//!
//! [`exec`] runs one program under the task contract (input JSON on stdin, result JSON from
//! stdout, exit 0 = success, declared outputs collected, stderr tail kept, timeout and
//! cancellation by process group). [`run`] does the same for bundles: program bundle + task
//! bundle in, result bundle out; it is what the `mw-worker` binary, the MPI worker ranks and
//! the BOINC app mode call; [`pack`] runs a pack of tasks (one grid job, many tasks) the same
//! way, task by task, into one pack result bundle. [`task`] is the three-line helper for Rust
//! task programs. [`static_worker`] finds the static `mw-worker` the tools ship to remote
//! machines. `dying` (Unix) is what a dying `mw-worker` takes with it: its task's process
//! tree and scratch directory, on a stop signal and, through a watchdog, on SIGKILL.
//!
//! **Architecture invariant:** only this crate executes user programs. It knows nothing of
//! the master, the journal, or how bundles travel (Condor, BOINC, MPI).

pub mod boinc;
#[cfg(unix)]
pub mod dying;
pub mod exec;
pub mod pack;
pub mod run;
pub mod static_worker;
pub mod stream;
pub mod task;

pub use exec::{execute, ExecOutcome, ExecRequest, ProcessControl};
pub use pack::{run_any_bundles, run_task_or_pack_file, PackSummary, PendingResult, Ran};
pub use run::{run_bundles, run_task_bytes, run_task_file, RunError, RunOptions, UnpackedProgram};
