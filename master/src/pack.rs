//! Task packs for grid platforms: many tasks of one job in one grid job (an HTCondor job, a
//! BOINC workunit), so that each task no longer pays the platform's overhead per job.
//!
//! - `pack_bundle_bytes`: the pack bundle (each task's own task bundle inside it).
//! - `read_pack_result`: the pack result that came back, read as hostile input. The pack
//!   is identified by what the platform vouches for (the job or workunit it came back
//!   from), so its members are known before it is opened: each member's result is looked up
//!   under that member's name and must be that task's result (job, task, declared outputs,
//!   limits: [`Execution::from_result_bundle_of`]); anything else in it is ignored, never
//!   delivered to another task. Members without a result are returned as missing.
//! - `deliver_pack_result`: reads it and hands each member its outcome (or back to its
//!   platform to run again), for any platform's tracker of a member (`PackMember`).
//! - `PackSizer`: how many tasks the next pack takes (a fixed size, or a size chosen from
//!   the run times measured so far, bounded by the fixed size).
//!
//! This module knows nothing of any particular platform; `condor/` and `boinc/` build on it.

use crate::task::{
    read_bounded, Execution, InterfaceError, PreparedTask, ProgramBundle, ResultError, TaskId,
    MAX_RESULT_FILES_BYTES,
};
use mw_bundle::{pack_result_member, pack_task_member, BundleKind, Limits, PackInfo};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The most tasks one pack may hold (a pack bundle lists each task as one member, and
/// bundles are read with at most 10,000 entries).
pub const MAX_TASKS_PER_PACK: usize = 5000;

/// The largest pack result read, whatever its tasks' limits add up to.
const MAX_PACK_RESULT_BYTES: u64 = 4 << 30;

/// Pack results up to this size (compressed) are read in memory; larger ones are unpacked
/// to disk.
const PACK_RESULT_IN_MEMORY: u64 = 64 << 20;

/// The most a pack result read in memory may unpack to.
const PACK_RESULT_IN_MEMORY_UNPACKED: u64 = 256 << 20;

/// Bytes a result bundle of `task` may take, compressed or not.
pub(crate) fn result_cap(task: &PreparedTask) -> u64 {
    task.spec
        .max_output_bytes
        .saturating_add(MAX_RESULT_FILES_BYTES)
        .saturating_add(1 << 20)
}

/// The pack bundle of `tasks` (all of one job and one program, in one mode), in that order.
/// A streaming program's tasks run through one long-lived process of it on the worker.
pub(crate) fn pack_bundle_bytes(
    tasks: &[Arc<PreparedTask>],
    program: &ProgramBundle,
) -> Result<Vec<u8>, InterfaceError> {
    let job = tasks.first().map(|t| t.job.clone()).unwrap_or_default();
    let info = PackInfo {
        job,
        program_sha256: program.sha256.clone(),
        tasks: tasks.iter().map(|t| t.id.0).collect(),
        stream: tasks
            .first()
            .is_some_and(|t| t.spec.program.mode() == crate::task::ProgramMode::Stream),
    };
    let mut b = mw_bundle::BundleBuilder::pack(info, "pack bundle");
    for t in tasks {
        let bytes = t.task_bundle_bytes(program).map_err(|e| {
            InterfaceError::new(format!("packing the task bundle of {}: {e}", t.id))
        })?;
        b.add_bytes(&pack_task_member(t.id.0), bytes, false)
            .map_err(|e| InterfaceError::new(format!("packing {}: {e}", t.id)))?;
    }
    b.to_bytes()
        .map_err(|e| InterfaceError::new(format!("packing the pack bundle: {e}")))
}

/// The tasks a pack bundle we staged lists (read back from disk on resume).
pub(crate) fn pack_bundle_tasks(path: &Path) -> Result<Vec<u64>, String> {
    let m = mw_bundle::read_manifest(path, &Limits::default()).map_err(|e| e.to_string())?;
    match (m.kind, m.pack) {
        (BundleKind::Pack, Some(p)) => Ok(p.tasks),
        _ => Err(format!("{} is not a pack bundle", path.display())),
    }
}

/// What a pack result held for the pack's members.
#[derive(Debug, Default)]
pub(crate) struct PackOutcome {
    /// Each member with a result in the pack: its outcome (a result that is not the
    /// member's own is an error of that member).
    pub results: Vec<(TaskId, Result<Execution, ResultError>)>,
    /// Members without a result, with what the worker said about them.
    pub missing: Vec<(TaskId, String)>,
}

/// A member of a pack as a platform tracks it while its pack runs.
pub(crate) trait PackMember {
    /// The member's task as dispatched.
    fn task(&self) -> &Arc<PreparedTask>;
}

/// Reads the pack result at `path` for the pack's `members` (see [`read_pack_result`]) and
/// hands each member what it says of it: its outcome to `report` (an error in it worded as
/// `"{bad_member}: {error}"`), or, when it holds no result for the member, the member to
/// `requeue` with the reason. When the pack result as a whole is unusable, every member gets
/// the error `bad_pack` words for it, through `report`. A member whose result this machine
/// could not store (see [`ResultError::Local`]) goes to `not_stored` with the reason, which
/// says whether it was left for `mw resume`; then the return is true and the pack result
/// must be kept.
#[allow(clippy::too_many_arguments)] // one closure per way a member leaves its pack
pub(crate) fn deliver_pack_result<M: PackMember>(
    path: &Path,
    scratch: &Path,
    members: Vec<M>,
    bad_member: &str,
    bad_pack: impl FnOnce(&InterfaceError) -> String,
    mut report: impl FnMut(M, Result<Execution, InterfaceError>),
    mut requeue: impl FnMut(M, &str),
    mut not_stored: impl FnMut(M, String) -> bool,
) -> bool {
    let mut kept = false;
    let tasks: Vec<Arc<PreparedTask>> = members.iter().map(|m| m.task().clone()).collect();
    let read = read_pack_result(path, &tasks, scratch);
    let mut by_id: HashMap<TaskId, M> = members.into_iter().map(|m| (m.task().id, m)).collect();
    match read {
        Ok(pack) => {
            for (id, outcome) in pack.results {
                let Some(m) = by_id.remove(&id) else { continue };
                match outcome {
                    Err(ResultError::Local(why)) => kept |= not_stored(m, why),
                    Err(ResultError::Bad(InterfaceError(e, ran))) => {
                        report(m, Err(InterfaceError(format!("{bad_member}: {e}"), ran)));
                    }
                    Ok(exec) => report(m, Ok(exec)),
                }
            }
            for (id, why) in pack.missing {
                if let Some(m) = by_id.remove(&id) {
                    requeue(m, &why);
                }
            }
        }
        Err(ResultError::Local(why)) => {
            for (_, m) in by_id.drain() {
                kept |= not_stored(m, format!("{}: {why}", path.display()));
            }
        }
        Err(ResultError::Bad(e)) => {
            let e = InterfaceError::new(bad_pack(&e));
            for (_, m) in by_id.drain() {
                report(m, Err(e.clone()));
            }
        }
    }
    // Anything left (cannot happen: every member is a result or missing) is not lost.
    for (_, m) in by_id {
        requeue(m, "the pack result did not account for it");
    }
    kept
}

/// Reads the pack result at `path` for the pack `members` (of one job): in memory, or when
/// large unpacked into a private directory under `scratch` (every checksum verified, within
/// the limits of a full pack of such tasks: `members` may be only those still waiting); then
/// each member's result under its own limits. An error means the pack result as a whole is
/// unusable.
pub(crate) fn read_pack_result(
    path: &Path,
    members: &[Arc<PreparedTask>],
    scratch: &Path,
) -> Result<PackOutcome, ResultError> {
    let label = path.display().to_string();
    let Some(first) = members.first() else {
        return Ok(PackOutcome::default());
    };
    // Bounded by the largest pack there can be, not by the members still waiting for it: a
    // resumed master re-attaches a pack's members one by one, and after a cancel fewer
    // members wait than the pack ran, while the result holds an entry for every task run.
    let cap = members
        .iter()
        .map(|t| result_cap(t))
        .max()
        .unwrap_or(0)
        .saturating_mul(MAX_TASKS_PER_PACK as u64)
        .min(MAX_PACK_RESULT_BYTES);
    // A file that is there but cannot be read is this machine's problem (its permissions,
    // an I/O error), not the pack's: its members' results are not stored, not bad.
    let local = |e: std::io::Error| -> ResultError {
        if crate::task::is_local_read_error(&e) {
            ResultError::Local(format!("cannot read {label}: {e}"))
        } else {
            InterfaceError::new(format!("{label}: {e}")).into()
        }
    };
    let size = std::fs::metadata(path).map_err(local)?.len();
    if size > cap {
        return Err(InterfaceError::new(format!(
            "{label}: {size} bytes, larger than the {cap} bytes the pack's results may take"
        ))
        .into());
    }
    let limits = Limits {
        max_total_bytes: cap,
        max_entries: MAX_TASKS_PER_PACK.saturating_add(16),
        ..Limits::default()
    };
    // A small pack result is read into memory (no file written or removed per task); a
    // large one is unpacked into a private directory and read member by member.
    let dir;
    let in_memory = if size <= PACK_RESULT_IN_MEMORY {
        let bytes = read_bounded(path, cap).map_err(local)?;
        let small = Limits {
            max_total_bytes: cap.min(PACK_RESULT_IN_MEMORY_UNPACKED),
            ..limits
        };
        match mw_bundle::open_in_memory(&bytes, &label, Some(BundleKind::PackResult), &small) {
            Ok(b) => Some(b),
            // Larger unpacked than memory should hold: read it from disk below.
            Err(mw_bundle::BundleError::Limit { .. }) => None,
            Err(e) => return Err(InterfaceError::new(e).into()),
        }
    } else {
        None
    };
    let (manifest, mut members_in_memory) = if let Some(b) = in_memory {
        dir = None;
        (b.manifest, Some(b.members))
    } else {
        // (Where this machine keeps it: an error here is not the pack's.)
        std::fs::create_dir_all(scratch)
            .map_err(|e| ResultError::Local(format!("creating {}: {e}", scratch.display())))?;
        let d = tempfile::Builder::new()
            .prefix("pack-result-")
            .tempdir_in(scratch)
            .map_err(|e| {
                ResultError::Local(format!("a scratch directory in {}: {e}", scratch.display()))
            })?;
        let m = mw_bundle::unpack(path, d.path(), Some(BundleKind::PackResult), &limits)
            .map_err(InterfaceError::new)?;
        dir = Some(d);
        (m, None)
    };
    let info = manifest.pack_result.clone().unwrap_or_default();
    if info.job != first.job {
        return Err(InterfaceError::new(format!(
            "{label}: forged or misfiled pack result: it names job `{}`, expected `{}`",
            info.job, first.job
        ))
        .into());
    }
    let ours: HashSet<String> = members.iter().map(|t| pack_result_member(t.id.0)).collect();
    for m in &manifest.members {
        if !ours.contains(&m.path) {
            log::info!(
                "{label}: ignoring `{}`: not the result of a task waiting for this pack \
                 (cancelled meanwhile, or forged)",
                m.path
            );
        }
    }
    let not_run: HashMap<u64, &str> = info
        .not_run
        .iter()
        .map(|n| (n.task, n.reason.as_str()))
        .collect();
    let mut out = PackOutcome::default();
    for t in members {
        let member = pack_result_member(t.id.0);
        if manifest.member(&member).is_none() {
            let why = match not_run.get(&t.id.0) {
                Some(r) => format!("the worker could not run it: {r}"),
                None => "the pack result has no result for it".to_string(),
            };
            out.missing.push((t.id, why));
            continue;
        }
        let inner_label = format!("{label}#{member}");
        let bytes = match (&mut members_in_memory, &dir) {
            (Some(m), _) => Ok(m.remove(&member).unwrap_or_default()),
            (None, Some(d)) => read_bounded(&d.path().join(&member), result_cap(t))
                .map_err(|e| InterfaceError::new(format!("{inner_label}: {e}"))),
            (None, None) => Err(InterfaceError::new(format!("{inner_label}: not read"))),
        };
        let outcome = bytes
            .map_err(ResultError::Bad)
            .and_then(|bytes| Execution::from_result_bundle_of(&bytes, &inner_label, t));
        out.results.push((t.id, outcome));
    }
    Ok(out)
}

/// Chooses pack sizes: `max` tasks per pack, or, with a target job time, as many tasks as
/// the mean run time measured so far fits into the target (at least 1, at most `max`).
/// Before anything is measured, one probe pack of one task goes first and the others wait
/// until a job has ended.
#[derive(Debug)]
pub(crate) struct PackSizer {
    max: usize,
    target: Option<Duration>,
    measured_secs: f64,
    measured: u64,
    probe_out: bool,
}

impl Default for PackSizer {
    /// One task per job.
    fn default() -> Self {
        PackSizer::new(1, None)
    }
}

impl PackSizer {
    /// `max` is clamped to 1..=[`MAX_TASKS_PER_PACK`]; a target only matters when `max` > 1.
    pub(crate) fn new(max: usize, target: Option<Duration>) -> PackSizer {
        let max = max.clamp(1, MAX_TASKS_PER_PACK);
        PackSizer {
            max,
            target: target.filter(|t| !t.is_zero() && max > 1),
            measured_secs: 0.0,
            measured: 0,
            probe_out: false,
        }
    }

    /// True when tasks are packed at all (else every job carries one task, as without packs).
    pub(crate) fn packing(&self) -> bool {
        self.max > 1
    }

    /// How many tasks the next pack takes; `None`: none now (a probe is out, nothing is
    /// measured yet; ask again after [`job_ended`](Self::job_ended)).
    pub(crate) fn next_size(&mut self) -> Option<usize> {
        let Some(target) = self.target else {
            return Some(self.max);
        };
        if self.measured > 0 {
            let mean = self.measured_secs / self.measured as f64;
            let fits = if mean > 0.0 {
                target.as_secs_f64() / mean
            } else {
                f64::INFINITY
            };
            // Saturating float-to-int conversion, then bounded.
            return Some((fits.floor() as usize).clamp(1, self.max));
        }
        if self.probe_out {
            return None;
        }
        self.probe_out = true;
        Some(1)
    }

    /// Records the run time of a task that ran.
    pub(crate) fn record(&mut self, wall: Duration) {
        let secs = wall.as_secs_f64();
        if secs.is_finite() && secs >= 0.0 {
            self.measured_secs += secs;
            self.measured += 1;
        }
    }

    /// A job ended (whatever its outcome): a probe is no longer out.
    pub(crate) fn job_ended(&mut self) {
        self.probe_out = false;
    }

    /// True while tasks wait for a probe's run time.
    pub(crate) fn waiting(&self) -> bool {
        self.target.is_some() && self.measured == 0 && self.probe_out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A pack result that is there but cannot be read is this machine's failure (its
    /// results are not stored: kept for `mw resume`), not a bad pack; one that is missing
    /// or is not a regular file is the pack's.
    #[test]
    fn a_pack_result_this_machine_cannot_read_is_not_called_bad() {
        let dir = tempfile::tempdir().unwrap();
        let program = Arc::new(crate::task::Program::new("/bin/sh").unwrap());
        let task = Arc::new(PreparedTask {
            id: TaskId(0),
            attempt: 1,
            job: "unit".into(),
            spec: crate::task::TaskSpec::new(program, serde_json::json!(0)),
            output_dir: None,
            staging_dir: dir.path().to_path_buf(),
        });
        let read = |path: &Path| read_pack_result(path, std::slice::from_ref(&task), dir.path());
        // Root reads any file whatever its mode: "not a directory" is an error of the
        // system reading it that needs no privileges to make.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        match read(&file.join("result.tar.gz")) {
            Err(ResultError::Local(why)) => assert!(why.contains("cannot read"), "{why}"),
            other => panic!("expected a local error, got {other:?}"),
        }
        let missing = dir.path().join("missing.tar.gz");
        assert!(matches!(read(&missing), Err(ResultError::Bad(_))));
        assert!(matches!(read(dir.path()), Err(ResultError::Bad(_))));
    }

    #[test]
    fn sizes_fixed_probe_then_measured_and_bounded() {
        let mut fixed = PackSizer::new(100, None);
        assert!(fixed.packing());
        assert_eq!(fixed.next_size(), Some(100));
        assert_eq!(PackSizer::new(0, None).next_size(), Some(1));
        assert_eq!(
            PackSizer::new(usize::MAX, None).next_size(),
            Some(MAX_TASKS_PER_PACK)
        );
        // A target without room to pack changes nothing.
        let mut one = PackSizer::new(1, Some(Duration::from_secs(60)));
        assert!(!one.packing());
        assert_eq!(one.next_size(), Some(1));

        let mut s = PackSizer::new(50, Some(Duration::from_secs(60)));
        assert_eq!(s.next_size(), Some(1), "the probe");
        assert!(s.waiting());
        assert_eq!(s.next_size(), None, "the others wait for the probe");
        s.job_ended();
        assert_eq!(s.next_size(), Some(1), "nothing measured: another probe");
        s.record(Duration::from_secs(4));
        s.record(Duration::from_secs(8));
        s.job_ended();
        assert!(!s.waiting());
        assert_eq!(s.next_size(), Some(10), "60 s / 6 s mean");
        s.record(Duration::from_secs(600));
        assert_eq!(s.next_size(), Some(1), "at least one task per pack");
        let mut fast = PackSizer::new(50, Some(Duration::from_secs(60)));
        fast.record(Duration::ZERO);
        assert_eq!(fast.next_size(), Some(50), "at most max");
    }
}
