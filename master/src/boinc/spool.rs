//! Outcomes: `mw-assimilator` spools a workunit's canonical result as
//! `<spool>/result_<wu>.tar.gz` and a workunit without a usable result as
//! `error_<wu>.toml` (names from `mw_boinc_kit`). A watcher thread (inotify through
//! `notify`, plus a polling fallback for file systems that deliver no events) turns those of
//! this master's workunits into completions and removes each spool file right after its
//! outcome has been handed to the master (a crash in the instant between the two loses that
//! result; the task is then re-run by `mw resume`). Entries of cancelled workunits are
//! consumed; entries of other masters' workunits are left alone. The same thread fails tasks
//! past the job's deadline. It must never run `create_work`.

use super::cancel::{mark_cancelled, run_cancel_jobs};
use super::{Shared, POLL_INTERVAL};
use crate::task::{Execution, InterfaceError, TaskId};
use mw_boinc_kit::errors::MAX_ERROR_RECORD_BYTES;
use mw_boinc_kit::{ErrorRecord, SpoolEntry, WuName};
use std::io::Read;
use std::path::Path;
use std::sync::{mpsc, Arc};

pub(super) fn watch_loop(shared: &Arc<Shared>, rx: &mpsc::Receiver<()>) {
    loop {
        if shared.lock().shut_down {
            return;
        }
        crate::crash::panic_point("boinc-spool", None);
        scan_spool(shared);
        check_deadline(shared);
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
                // Coalesce a burst of events into one scan.
                while rx.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

enum Found {
    Result(TaskId, WuName),
    Error(WuName),
    Consume(std::path::PathBuf),
}

/// Reads the spool once and reports every outcome that belongs to a task of this master.
fn scan_spool(shared: &Arc<Shared>) {
    let Ok(entries) = std::fs::read_dir(&shared.spool) else {
        return;
    };
    let mut found = Vec::new();
    {
        let st = shared.lock();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (wu, is_result) = match SpoolEntry::parse(&name) {
                Some(SpoolEntry::Result(wu)) => (wu, true),
                Some(SpoolEntry::Error(wu)) => (wu, false),
                None => continue,
            };
            if st.cancelled_wus.contains(&wu) {
                found.push(Found::Consume(e.path()));
            } else if let Some(&task) = st.by_wu.get(&wu) {
                if is_result {
                    found.push(Found::Result(task, wu));
                } else {
                    found.push(Found::Error(wu));
                }
            }
        }
    }
    for f in found {
        match f {
            Found::Result(task, wu) => take_result(shared, task, &wu),
            Found::Error(wu) => take_error(shared, &wu),
            Found::Consume(path) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn take_result(shared: &Shared, task: TaskId, wu: &WuName) {
    let path = shared.spool.join(wu.result_spool_name());
    let cap = {
        let st = shared.lock();
        st.waiting
            .get(&task)
            .map(|w| mw_bundle::max_result_upload_bytes(w.task.spec.max_output_bytes))
    };
    let Some(cap) = cap else {
        return;
    };
    // Read no more than the task may return (the assimilator applies the same limits).
    let Ok(meta) = std::fs::metadata(&path) else {
        return; // Gone for now: the next scan decides.
    };
    let bytes = if meta.len() > cap {
        Err(format!(
            "{} is {} bytes, over the {cap} bytes a result of this task may take",
            path.display(),
            meta.len()
        ))
    } else {
        match crate::task::read_bounded(&path, cap) {
            Ok(b) => Ok(b),
            Err(_) => return, // Unreadable for now: the next scan decides.
        }
    };
    let waiting = {
        let mut st = shared.lock();
        if st.by_wu.get(wu) != Some(&task) {
            return;
        }
        st.by_wu.remove(wu);
        st.waiting.remove(&task)
    };
    let Some(mut w) = waiting else {
        return;
    };
    let label = path.display().to_string();
    // A volunteer's bundle is read under a guard: a panic fails this task with its message,
    // and the spool thread goes on.
    let outcome = crate::guard::contain(|| {
        crate::crash::panic_point("boinc-result", Some(task.0));
        bytes
            .map_err(InterfaceError::new)
            .and_then(|bytes| Execution::from_result_bundle_of(&bytes, &label, &w.task))
            .map_err(|e| {
                InterfaceError::new(format!(
                    "BOINC workunit {wu}: bad result bundle from the volunteer: {e}"
                ))
            })
    })
    .unwrap_or_else(|panic| {
        Err(InterfaceError::new(format!(
            "BOINC workunit {wu}: internal error while reading its result: {panic}"
        )))
    });
    {
        let mut st = shared.lock();
        match &outcome {
            Ok(_) => st.completed += 1,
            Err(_) => st.failed += 1,
        }
    }
    if let Some(done) = w.done.take() {
        done.finish(outcome);
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads at most [`MAX_ERROR_RECORD_BYTES`] of a file as text.
fn read_capped(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_ERROR_RECORD_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

fn take_error(shared: &Shared, wu: &WuName) {
    let path = shared.spool.join(wu.error_spool_name());
    let Ok(text) = read_capped(&path) else {
        return;
    };
    let (waiting, task) = {
        let mut st = shared.lock();
        let Some(task) = st.by_wu.remove(wu) else {
            return;
        };
        (st.waiting.remove(&task), task)
    };
    let message = crate::guard::contain(|| match ErrorRecord::from_text(&text) {
        Ok(rec) => rec.describe(),
        Err(e) => format!(
            "BOINC workunit {wu} failed; its error record {} is unreadable: {}",
            path.display(),
            e.message()
        ),
    })
    .unwrap_or_else(|panic| {
        format!("BOINC workunit {wu} failed; internal error reading its error record: {panic}")
    });
    shared.lock().failed += 1;
    if let Some(done) = waiting.and_then(|mut w| w.done.take()) {
        done.finish(Err(InterfaceError::new(format!("{task}: {message}"))));
    }
    let _ = std::fs::remove_file(&path);
}

/// Fails (and cancels in BOINC) every task waiting longer than the job's deadline.
fn check_deadline(shared: &Shared) {
    let Some(deadline) = shared.job_deadline else {
        return;
    };
    let expired: Vec<(TaskId, super::Waiting)> = {
        let mut st = shared.lock();
        let late: Vec<TaskId> = st
            .waiting
            .iter()
            .filter(|(_, w)| w.since.elapsed() > deadline && !st.creating.contains(&w.wu))
            .map(|(t, _)| *t)
            .collect();
        let mut out = Vec::new();
        for t in late {
            if let Some(w) = st.waiting.remove(&t) {
                st.by_wu.remove(&w.wu);
                st.cancelled_wus.insert(w.wu.clone());
                st.failed += 1;
                out.push((t, w));
            }
        }
        out
    };
    for (task, mut w) in expired {
        mark_cancelled(&shared.spool, &w.wu);
        let how = run_cancel_jobs(&shared.project, &w.wu);
        if let Some(done) = w.done.take() {
            done.finish(Err(InterfaceError::new(format!(
                "{task}: BOINC workunit {} reached no quorum within the job's deadline of {} s \
                 (too few hosts returned agreeing results; with one result per host, a failure \
                 needs max_error_results + 1 hosts and a disagreement quorum + 2); {how}",
                w.wu,
                deadline.as_secs()
            ))));
        }
    }
}
