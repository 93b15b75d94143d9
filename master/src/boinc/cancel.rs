//! Cancelling workunits: `bin/cancel_jobs --name <wu>` from the project root, plus a marker
//! `cancelled_<wu>` in the spool so that whatever BOINC still assimilates for the workunit
//! (its `--error 16` call, late results of volunteers that kept running it) is consumed by
//! the assimilator instead of lingering in the spool. Works with or without a live master:
//! [`cancel_workunits`] is what `mw cancel` calls when no master runs. Also without a
//! master: [`SpooledOutcomes`], the spool files of workunits whose tasks all have their
//! outcome recorded (a master killed after committing them, before it removed the files),
//! which `mw resume` removes.

use super::batch::PENDING_PREFIX;
use super::BoincError;
use mw_boinc_kit::{MwBoincConfig, WuName};
use std::path::Path;
use std::process::{Command, Stdio};

/// The workunit name in a recorded handle (`<wu>` or `pending:<wu>`).
pub fn workunit_of_handle(handle: &str) -> Option<WuName> {
    WuName::parse(handle.strip_prefix(PENDING_PREFIX).unwrap_or(handle)).ok()
}

/// The workunits to cancel when the unfinished tasks `unfinished` (index, recorded handle)
/// are cancelled: all of them (`task` = `None`), or task `task` only. A workunit is
/// cancelled only when every unfinished task recorded under it is cancelled: a pack's other
/// members keep their workunit. Handles are compared by the workunit they name (a member
/// may still say `pending:<wu>` while another says `<wu>`, after a kill between the two
/// records). Returns each workunit's name once, sorted.
pub fn workunits_to_cancel(unfinished: &[(u64, Option<&str>)], task: Option<u64>) -> Vec<String> {
    // One pass: each workunit named, and whether a task that is not cancelled still needs it.
    let mut needed: std::collections::BTreeMap<String, bool> = Default::default();
    for (t, h) in unfinished {
        if let Some(wu) = h.and_then(workunit_of_handle) {
            let kept = task.is_some_and(|n| n != *t);
            *needed.entry(wu.as_str().to_string()).or_default() |= kept;
        }
    }
    needed
        .into_iter()
        .filter(|(_, kept)| !kept)
        .map(|(wu, _)| wu)
        .collect()
}

/// Marks `wu` cancelled in the spool and removes what is already spooled for it.
pub(super) fn mark_cancelled(spool: &Path, wu: &WuName) {
    let _ = mw_bundle::write_atomic(&spool.join(wu.cancel_marker_name()), b"", Some(0o644));
    let _ = std::fs::remove_file(spool.join(wu.result_spool_name()));
    let _ = std::fs::remove_file(spool.join(wu.error_spool_name()));
}

/// Runs `bin/cancel_jobs --name WU` from the project root; says what happened.
pub(super) fn run_cancel_jobs(project: &Path, wu: &WuName) -> String {
    match Command::new(project.join("bin/cancel_jobs"))
        .args(["--name", wu.as_str()])
        .current_dir(project)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(super::batch::wait_bounded)
    {
        Ok(o) if o.status.success() => "bin/cancel_jobs marked it cancelled".to_string(),
        Ok(o) => format!(
            "bin/cancel_jobs failed ({}): {}",
            o.status,
            super::batch::trim_tool_output(&String::from_utf8_lossy(&o.stderr))
        ),
        Err(e) => format!("bin/cancel_jobs could not run: {e}"),
    }
}

/// Cancels the workunits recorded under `handles` in the project at `project_dir` (no master
/// needed): marks each cancelled in the spool, consumes its spool entries, and runs
/// `bin/cancel_jobs --name` for it. Returns, per handle, what happened.
pub fn cancel_workunits(
    project_dir: &Path,
    handles: &[String],
) -> Result<Vec<(String, String)>, BoincError> {
    let cfg = MwBoincConfig::load(project_dir).map_err(|e| BoincError(e.to_string()))?;
    Ok(handles
        .iter()
        .map(|h| match workunit_of_handle(h) {
            Some(wu) => {
                mark_cancelled(&cfg.spool_dir, &wu);
                (h.clone(), run_cancel_jobs(project_dir, &wu))
            }
            None => (
                h.clone(),
                "not a workunit name; not passed to bin/cancel_jobs".into(),
            ),
        })
        .collect())
}

/// The outcomes (result bundles, error records) in a project's spool, looked at before a
/// master takes a job over: each workunit's files, and whether a finished or an unfinished
/// task of the job names it ([`note`](Self::note)). A master removes a spool file only after
/// committing what it took from it, so a master killed between the two leaves a file whose
/// tasks are all finished; no master waits for it any more, and it stayed in the spool for
/// ever. [`remove_taken`](Self::remove_taken) removes those.
#[derive(Debug, Default)]
pub struct SpooledOutcomes {
    /// Workunit name -> (its spool files, a finished task names it, an unfinished one does).
    by_wu: std::collections::HashMap<String, (Vec<std::path::PathBuf>, bool, bool)>,
}

impl SpooledOutcomes {
    /// Lists the outcome files in the spool of the project at `project_dir`.
    pub fn list(project_dir: &Path) -> Result<SpooledOutcomes, BoincError> {
        let cfg = MwBoincConfig::load(project_dir).map_err(|e| BoincError(e.to_string()))?;
        let rd = std::fs::read_dir(&cfg.spool_dir).map_err(|e| {
            BoincError(format!(
                "cannot read the spool {}: {e}",
                cfg.spool_dir.display()
            ))
        })?;
        let mut out = SpooledOutcomes::default();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let wu = match mw_boinc_kit::SpoolEntry::parse(&name) {
                Some(
                    mw_boinc_kit::SpoolEntry::Result(wu) | mw_boinc_kit::SpoolEntry::Error(wu),
                ) => wu,
                None => continue,
            };
            out.by_wu
                .entry(wu.as_str().to_string())
                .or_default()
                .0
                .push(e.path());
        }
        Ok(out)
    }

    /// Whether the spool holds no outcome at all (nothing to note).
    pub fn is_empty(&self) -> bool {
        self.by_wu.is_empty()
    }

    /// Notes that a task recorded under `handle` is `finished` (has its outcome) or not.
    pub fn note(&mut self, handle: &str, finished: bool) {
        let Some(wu) = workunit_of_handle(handle) else {
            return;
        };
        if let Some((_, fin, unfin)) = self.by_wu.get_mut(wu.as_str()) {
            if finished {
                *fin = true;
            } else {
                *unfin = true;
            }
        }
    }

    /// Removes the files of the workunits that a finished task names and no unfinished one
    /// does (a pack's other members may still wait for it). Returns the files removed.
    pub fn remove_taken(self) -> Vec<std::path::PathBuf> {
        let mut removed = Vec::new();
        for (files, finished, unfinished) in self.by_wu.into_values() {
            if finished && !unfinished {
                for f in files {
                    if std::fs::remove_file(&f).is_ok() {
                        removed.push(f);
                    }
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workunit_is_cancelled_only_when_all_its_unfinished_members_are() {
        let wu = |n: u32| format!("mw_job-1_0123abcd_p{n}");
        assert!(
            WuName::parse(&wu(1)).is_ok(),
            "a valid pack name: {}",
            wu(1)
        );
        let (p1, p2) = (wu(1), wu(2));
        let pending1 = format!("{PENDING_PREFIX}{p1}");
        let requeued = format!("requeued:{p1}");
        // Pack 1: tasks 0 and 1 (task 1 still `pending:` after a kill between the records);
        // pack 2: task 2; task 3 waits to be packed again.
        let unfinished = [
            (0, Some(p1.as_str())),
            (1, Some(pending1.as_str())),
            (2, Some(p2.as_str())),
            (3, Some(requeued.as_str())),
            (4, None),
        ];
        assert!(
            workunits_to_cancel(&unfinished, Some(0)).is_empty(),
            "task 1 still needs pack 1"
        );
        assert!(workunits_to_cancel(&unfinished, Some(1)).is_empty());
        assert_eq!(workunits_to_cancel(&unfinished, Some(2)), vec![p2.clone()]);
        assert!(workunits_to_cancel(&unfinished, Some(3)).is_empty());
        assert!(workunits_to_cancel(&unfinished, Some(4)).is_empty());
        assert_eq!(workunits_to_cancel(&unfinished, None), [p1.clone(), p2]);
        let only_pack1 = [(0, Some(p1.as_str())), (1, Some(pending1.as_str()))];
        assert_eq!(workunits_to_cancel(&only_pack1, None), [p1]);
    }
}
