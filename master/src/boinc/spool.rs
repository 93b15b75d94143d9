//! Outcomes: `mw-assimilator` spools a workunit's canonical result as
//! `<spool>/result_<wu>.tar.gz` and a workunit without a usable result as
//! `error_<wu>.toml` (names from `mw_boinc_kit`). A watcher thread (inotify through
//! `notify`, plus a polling fallback for file systems that deliver no events) turns those of
//! this master's workunits into completions, and removes the spool files of a scan only once
//! what the master recorded of their outcomes (final rows, retries, re-packed members'
//! handles) is committed (a master killed before that finds the files again on resume), and
//! only while each name still holds the file that was read (the assimilator may have
//! replaced an error record meanwhile). The
//! spool holds the only copy of a result; a workunit is assimilated once. Entries of cancelled workunits are
//! consumed; entries of other masters' workunits are left alone. A pack's result gives each
//! member its own result (read for the members known to be in that workunit); members without
//! one are packed again. The same thread fails tasks past the job's deadline. It must never
//! run `create_work`.

use super::cancel::{mark_cancelled, run_cancel_jobs};
use super::{Concluded, Pending, Shared, State, Waiting, MAX_PACK_REQUEUES, POLL_INTERVAL};
use crate::task::{Execution, InterfaceError, ResultError};
use mw_boinc_kit::errors::MAX_ERROR_RECORD_BYTES;
use mw_boinc_kit::{ErrorRecord, SpoolEntry, WuName};
use std::io::Read;
use std::path::{Path, PathBuf};
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
    Result(WuName),
    Error(WuName),
    Consume(std::path::PathBuf),
}

/// Reads the spool once and reports every outcome that belongs to a task of this master.
fn scan_spool(shared: &Arc<Shared>) {
    let entries = match std::fs::read_dir(&shared.spool) {
        Ok(entries) => entries,
        Err(e) => {
            // Said once per kind of error (the next scans retry quietly).
            let said = format!("{:?}", e.kind());
            let mut st = shared.lock();
            if st.spool_error.as_deref() != Some(said.as_str()) {
                log::error!(
                    "cannot read the BOINC spool {}: {e}; no outcome arrives until it can be read",
                    shared.spool.display()
                );
                st.spool_error = Some(said);
            }
            return;
        }
    };
    shared.lock().spool_error = None;
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
            } else if st.creating.contains(&wu) {
                // Its create_work call is under way (the outcome of a resumed pending name):
                // delivered once the call has returned and the tasks' handles are recorded
                // (the batch wakes this thread then).
            } else if st.by_wu.get(&wu).is_some_and(|m| !m.is_empty()) {
                if is_result {
                    found.push(Found::Result(wu));
                } else {
                    found.push(Found::Error(wu));
                }
            }
        }
    }
    let mut delivered = Vec::new();
    for f in found {
        // Once the master shuts down, nothing more is delivered (a resumed master reads
        // what is left).
        if shared.lock().shut_down {
            break;
        }
        match f {
            Found::Result(wu) => {
                let seen = SeenFile::at(shared.spool.join(wu.result_spool_name()));
                if take_result(shared, &wu) {
                    delivered.push(seen);
                }
            }
            Found::Error(wu) => delivered.extend(take_error(shared, &wu)),
            Found::Consume(path) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    remove_delivered(shared, delivered);
}

/// A spool file as it was when its outcome was read: removed later only if the name still
/// holds that file. The assimilator replaces an error record atomically (a late result of a
/// workunit that already failed records why it was unusable under the same name), and that
/// newer record, written while the master was committing, is not the one it delivered.
struct SeenFile {
    path: PathBuf,
    /// (device, inode); `None` when it could not be looked at (then it is not removed).
    id: Option<(u64, u64)>,
}

impl SeenFile {
    fn at(path: PathBuf) -> Self {
        let id = file_id(&path);
        SeenFile { path, id }
    }

    /// Removes the file if its name still holds the file seen.
    fn remove(self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().as_ref().map(id_of)
}

/// (device, inode) of a file.
fn id_of(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Removes the spool files whose outcomes were handed to the master, once the master's
/// records of them are committed (one commit for the whole scan). When the journal cannot
/// commit, the files stay for `mw resume`.
fn remove_delivered(shared: &Shared, delivered: Vec<SeenFile>) {
    if delivered.is_empty() {
        return;
    }
    let sink = crate::guard::lock(&shared.sink).clone();
    if let Some(sink) = sink {
        if !sink.flush() {
            log::warn!(
                "the journal could not commit; leaving {} delivered spool file(s) for `mw resume`",
                delivered.len()
            );
            return;
        }
    }
    // Delivered and committed (the master may now end): the files go before the master does.
    crate::crash::delay_point("boinc-result-delivered");
    // Killed here: the outcomes are committed and their spool files still there.
    crate::crash::point("boinc-result-committed");
    for seen in delivered {
        seen.remove();
    }
    crate::crash::point("boinc-results-removed");
}

/// A spool file of ours that is there but cannot be read here (its permissions, an I/O
/// error): not the volunteer's fault, and the only copy of the outcome. It stays and its
/// tasks wait for it; the error is said once per workunit, so the project's admin can fix
/// it (the next scan, or `mw resume`, then takes it). A file gone meanwhile is not said.
fn unreadable_for_now(shared: &Shared, wu: &WuName, path: &Path, e: &std::io::Error) {
    if !crate::task::is_local_read_error(e) {
        return;
    }
    if shared.lock().unreadable.insert(wu.clone()) {
        log::error!(
            "BOINC workunit {wu}: cannot read {} ({e}); its task(s) wait until it can be read",
            path.display()
        );
    }
}

/// Takes the tasks still waiting for workunit `wu` (one, or a pack's members).
fn take_members(st: &mut State, wu: &WuName) -> Vec<Waiting> {
    st.unreadable.remove(wu);
    let mut out = Vec::new();
    for task in st.by_wu.remove(wu).unwrap_or_default() {
        if st.waiting.get(&task).is_some_and(|w| w.wu == *wu) {
            out.extend(st.waiting.remove(&task));
        }
    }
    out
}

/// Delivers workunit `wu`'s result; true once delivered (its spool file may go).
fn take_result(shared: &Shared, wu: &WuName) -> bool {
    let path = shared.spool.join(wu.result_spool_name());
    if wu.is_pack() {
        return take_pack_result(shared, wu, &path);
    }
    let cap = {
        let st = shared.lock();
        st.by_wu
            .get(wu)
            .and_then(|tasks| tasks.first())
            .and_then(|task| st.waiting.get(task))
            .map(|w| mw_bundle::max_result_upload_bytes(w.task.spec.max_output_bytes))
    };
    let Some(cap) = cap else { return false };
    // Read no more than the task may return (the assimilator applies the same limits).
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return false; // Gone for now: the next scan decides.
    };
    let bytes = if !meta.is_file() {
        // The assimilator renames regular files into place: anything else (a FIFO would
        // block the read for ever) is not a result.
        Err(format!("{} is not a regular file", path.display()))
    } else if meta.len() > cap {
        Err(format!(
            "{} is {} bytes, over the {cap} bytes a result of this task may take",
            path.display(),
            meta.len()
        ))
    } else {
        match crate::task::read_bounded(&path, cap) {
            Ok(b) => Ok(b),
            Err(e) => {
                // Unreadable for now: the next scan decides.
                unreadable_for_now(shared, wu, &path, &e);
                return false;
            }
        }
    };
    let members = take_members(&mut shared.lock(), wu);
    let mut left_for_resume = false;
    for mut w in members {
        let label = path.display().to_string();
        // A volunteer's bundle is read under a guard: a panic fails this task with its
        // message, and the spool thread goes on.
        let read = crate::guard::contain(|| {
            crate::crash::panic_point("boinc-result", Some(w.task.id.0));
            bytes
                .clone()
                .map_err(|e| ResultError::Bad(InterfaceError::new(e)))
                .and_then(|bytes| Execution::from_result_bundle_of(&bytes, &label, &w.task))
        });
        let outcome = match read {
            Ok(Ok(exec)) => Ok(exec),
            Ok(Err(ResultError::Local(why))) => {
                // Not the volunteer's fault: the spool file stays for `mw resume`.
                left_for_resume |= not_stored(shared, w, format!("BOINC workunit {wu}: {why}"));
                continue;
            }
            Ok(Err(ResultError::Bad(e))) => Err(InterfaceError::new(format!(
                "BOINC workunit {wu}: bad result bundle from the volunteer: {e}"
            ))),
            Err(panic) => Err(InterfaceError::new(format!(
                "BOINC workunit {wu}: internal error while reading its result: {panic}"
            ))),
        };
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
    }
    !left_for_resume
}

/// A pack's result: each member gets its own result from it, members without one are packed
/// again. For a pack a resumed master re-attached, the result is kept (in the job's staging
/// directory) for members re-attached after it came back.
fn take_pack_result(shared: &Shared, wu: &WuName, path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false; // Gone for now: the next scan decides.
    };
    // (Anything but a file is not kept, and fails its members when read.)
    let regular = meta.is_file();
    if regular {
        if let Err(e) = crate::task::open_regular(path) {
            unreadable_for_now(shared, wu, path, &e);
            return false;
        }
    }
    let (members, kept, keep_spooled) = {
        let mut st = shared.lock();
        let members = take_members(&mut st, wu);
        // A re-attached pack whose result could not be kept for its later members keeps
        // its spool file instead (delivered to them when they come).
        let mut keep_spooled = false;
        let kept = match members.first() {
            Some(w) if regular && st.reattached.contains(wu) => {
                let dir = w.task.staging_dir.join("boinc-packs");
                let kept = dir.join(wu.result_spool_name());
                match std::fs::create_dir_all(&dir).and_then(|_| std::fs::copy(path, &kept)) {
                    Ok(_) => {
                        st.concluded
                            .insert(wu.clone(), Concluded::Result(kept.clone()));
                        Some(kept)
                    }
                    Err(e) => {
                        log::warn!(
                            "keeping {} as {}: {e}; the spool file stays for the pack's other members",
                            path.display(),
                            kept.display()
                        );
                        keep_spooled = true;
                        None
                    }
                }
            }
            _ => None,
        };
        if !members.is_empty() {
            st.sizer.job_ended();
        }
        (members, kept, keep_spooled)
    };
    shared.cond.notify_all();
    // Under a guard: a panic drops the members still held, and each of them fails
    // ("dropped without an outcome") instead of waiting for ever.
    let left_for_resume = match crate::guard::contain(|| {
        deliver_pack(shared, wu, kept.as_deref().unwrap_or(path), members)
    }) {
        Ok(left) => left,
        Err(panic) => {
            log::error!(
                "BOINC workunit {wu}: internal error while reading its pack result: {panic}"
            );
            false
        }
    };
    // A member whose result could not be stored here is taken from the spool again by
    // `mw resume`.
    !keep_spooled && !left_for_resume
}

/// Reads pack result `path` of workunit `wu` for `members` and reports each one's outcome.
/// True: a member was left for `mw resume` (its result could not be stored here).
fn deliver_pack(shared: &Shared, wu: &WuName, path: &Path, members: Vec<Waiting>) -> bool {
    let Some(first) = members.first() else {
        return false;
    };
    let scratch = first.task.staging_dir.clone();
    crate::pack::deliver_pack_result(
        path,
        &scratch,
        members,
        &format!("BOINC workunit {wu}: bad result in the volunteer's pack result"),
        |e| format!("BOINC workunit {wu}: bad pack result from the volunteer: {e}"),
        |w, outcome| report(shared, w, outcome),
        |w, why| requeue(shared, w, wu, why),
        |w, why| not_stored(shared, w, format!("BOINC workunit {wu}: {why}")),
    )
}

/// A task whose result came back but could not be stored here: the master stops and the
/// task stays in flight (its spool file is kept) for `mw resume`, or, without a journal, it
/// fails. True: left in flight.
fn not_stored(shared: &Shared, mut w: Waiting, why: String) -> bool {
    let sink = crate::guard::lock(&shared.sink).clone();
    let Some(done) = w.done.take() else {
        return false;
    };
    let left = crate::interface::result_not_stored(sink.as_ref(), done, why);
    if !left {
        shared.lock().failed += 1;
    }
    left
}

/// Hands one task its outcome (counting it, and recording its run time for pack sizes).
fn report(shared: &Shared, mut w: Waiting, outcome: Result<Execution, InterfaceError>) {
    {
        let mut st = shared.lock();
        match &outcome {
            Ok(e) => {
                st.completed += 1;
                st.sizer.record(e.wall);
            }
            Err(_) => st.failed += 1,
        }
    }
    if let Some(done) = w.done.take() {
        done.finish(outcome);
    }
}

/// A member of pack `wu` without a result in the pack result: packed again in a later
/// workunit, at most [`MAX_PACK_REQUEUES`] times, then failed.
fn requeue(shared: &Shared, mut w: Waiting, wu: &WuName, why: &str) {
    let id = w.task.id;
    if w.requeues >= MAX_PACK_REQUEUES {
        let msg = format!(
            "BOINC workunit {wu}: its pack came back without a result for {id} ({why}), \
             {MAX_PACK_REQUEUES} times before; not submitting it again"
        );
        return report(shared, w, Err(InterfaceError::new(msg)));
    }
    log::warn!("BOINC workunit {wu} came back without a result for {id} ({why}); packing it again");
    let Some(done) = w.done.take() else { return };
    // Its journaled handle no longer names a workunit that will deliver it (the pack's
    // result is removed once this is committed, see `remove_delivered`): a master killed
    // before the member is packed again finds it queued on resume, not waiting for ever.
    if let Some(sink) = crate::guard::lock(&shared.sink).clone() {
        sink.record_handle(id, &format!("{}{wu}", super::batch::REQUEUED_PREFIX));
    }
    let mut st = shared.lock();
    if st.shut_down {
        drop(st);
        // Left for `mw resume`, which runs it again.
        done.abandon();
        return;
    }
    if let Some(why) = st.broken.clone() {
        // No thread is left to submit it again.
        st.failed += 1;
        drop(st);
        done.finish(Err(InterfaceError::new(format!("{id}: {why}"))));
        return;
    }
    st.queue.push_back(Pending {
        task: w.task.clone(),
        done,
        wu: None,
        since: std::time::Instant::now(),
        requeues: w.requeues + 1,
    });
    drop(st);
    shared.cond.notify_all();
}

/// A member of a re-attached pack whose workunit came back before it was re-attached.
pub(super) fn finish_late_member(shared: &Shared, w: Waiting, c: Concluded) {
    match c {
        Concluded::Result(path) => {
            let wu = w.wu.clone();
            deliver_pack(shared, &wu, &path, vec![w]);
        }
        Concluded::Error(message) => {
            let id = w.task.id;
            report(
                shared,
                w,
                Err(InterfaceError::new(format!("{id}: {message}"))),
            );
        }
    }
}

/// Reads at most [`MAX_ERROR_RECORD_BYTES`] of a file as text; also says which file it read
/// (the name may be given another file meanwhile: the assimilator replaces error records).
fn read_capped(path: &Path) -> std::io::Result<(String, SeenFile)> {
    let mut bytes = Vec::new();
    let file = crate::task::open_regular(path)?;
    let id = file.metadata().ok().as_ref().map(id_of);
    file.take(MAX_ERROR_RECORD_BYTES).read_to_end(&mut bytes)?;
    // (A record that is not UTF-8 is reported unreadable by its parser, not skipped.)
    let seen = SeenFile {
        path: path.to_path_buf(),
        id,
    };
    Ok((String::from_utf8_lossy(&bytes).into_owned(), seen))
}

/// Delivers workunit `wu`'s error record; once delivered, the file read (to remove).
fn take_error(shared: &Shared, wu: &WuName) -> Option<SeenFile> {
    let path = shared.spool.join(wu.error_spool_name());
    let (text, seen) = match read_capped(&path) {
        Ok(read) => read,
        // Not a file (the assimilator writes only files): an unreadable record, not one
        // to wait for.
        Err(_) if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) => {
            (String::new(), SeenFile::at(path.clone()))
        }
        Err(e) => {
            // Gone or unreadable for now: the next scan decides.
            unreadable_for_now(shared, wu, &path, &e);
            return None;
        }
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
    let members = {
        let mut st = shared.lock();
        let members = take_members(&mut st, wu);
        if wu.is_pack() {
            if st.reattached.contains(wu) {
                st.concluded
                    .insert(wu.clone(), Concluded::Error(message.clone()));
            }
            if !members.is_empty() {
                st.sizer.job_ended();
            }
        }
        members
    };
    shared.cond.notify_all();
    for w in members {
        let id = w.task.id;
        report(
            shared,
            w,
            Err(InterfaceError::new(format!("{id}: {message}"))),
        );
    }
    Some(seen)
}

/// Fails (and cancels in BOINC) every task waiting longer than the job's deadline (every
/// member of a pack once its oldest member is late).
fn check_deadline(shared: &Shared) {
    let Some(deadline) = shared.job_deadline else {
        return;
    };
    let expired: Vec<(WuName, Vec<Waiting>)> = {
        let mut st = shared.lock();
        let mut late: Vec<WuName> = st
            .waiting
            .values()
            .filter(|w| w.since.elapsed() > deadline && !st.creating.contains(&w.wu))
            .map(|w| w.wu.clone())
            .collect();
        late.sort();
        late.dedup();
        let mut out = Vec::new();
        for wu in late {
            let members = take_members(&mut st, &wu);
            st.cancelled_wus.insert(wu.clone());
            st.failed += members.len() as u64;
            if wu.is_pack() {
                st.sizer.job_ended();
            }
            out.push((wu, members));
        }
        out
    };
    // A pack that ended frees the sizer (its probe may be what the submit thread waits for).
    shared.cond.notify_all();
    for (wu, members) in expired {
        mark_cancelled(&shared.spool, &wu);
        let how = run_cancel_jobs(&shared.project, &wu);
        for mut w in members {
            let task = w.task.id;
            if let Some(done) = w.done.take() {
                done.finish(Err(InterfaceError::new(format!(
                    "{task}: BOINC workunit {wu} reached no quorum within the job's deadline of {} s \
                     (too few hosts returned agreeing results; with one result per host, a failure \
                     needs max_error_results + 1 hosts and a disagreement quorum + 2); {how}",
                    deadline.as_secs()
                ))));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Seen in CI: a late result of a workunit that had already failed was recorded (the
    /// assimilator replaces `error_<wu>.toml` atomically) while the master committed the
    /// first record's outcome, and the master's removal of "its" record then deleted the
    /// new one. A delivered spool file is removed only while its name still holds it.
    #[test]
    fn a_delivered_spool_file_replaced_meanwhile_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_mw_j_r_0_1.toml");
        std::fs::write(&path, "first").unwrap();
        let seen = SeenFile::at(path.clone());
        // The assimilator's atomic replacement: a new file renamed over the name.
        let tmp = dir.path().join(".tmp");
        std::fs::write(&tmp, "second").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        seen.remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        // The file seen is removed.
        SeenFile::at(path.clone()).remove();
        assert!(!path.exists());
        // A file that was not there is not looked for later.
        let gone = SeenFile::at(dir.path().join("missing"));
        std::fs::write(dir.path().join("missing"), "late").unwrap();
        gone.remove();
        assert!(dir.path().join("missing").exists());
    }
}
