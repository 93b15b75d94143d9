//! Batches: tasks that arrive within the batch window become one cluster. Stages task
//! bundles (or, with packing, forms packs and stages one pack bundle per job), writes the
//! submit description and item file (condor-kit), records the batch's identity before
//! `condor_submit` runs, submits, and hands the job handles to the master.
//! This module must never know about the journal or the job-file format.

use super::reattach::write_cluster_marker;
use super::*;
use crate::task::TaskSpec;

/// A job-name fragment safe for `batch_name`.
pub(super) fn safe_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if out.is_empty() {
        out.push_str("mw");
    }
    out
}

/// The files of a pack job whose first task is `first` (one pack per first task per batch).
pub(super) fn pack_files(dir: &Path, first: TaskId, program_bundle: PathBuf) -> TaskFiles {
    let stem = format!("{PACK_PREFIX}{}", first.0);
    files_named(dir, &stem, program_bundle)
}

/// How a pack bundle's file name starts (a lone task's starts with `task-`).
pub(super) const PACK_PREFIX: &str = "pack-";

pub(super) fn task_files(dir: &Path, task: &PreparedTask, program_bundle: PathBuf) -> TaskFiles {
    let stem = format!("task-{}-a{}", task.id.0, task.attempt);
    files_named(dir, &stem, program_bundle)
}

/// The files in `dir` of the job (lone task or pack) whose file names start with `stem`.
fn files_named(dir: &Path, stem: &str, program_bundle: PathBuf) -> TaskFiles {
    TaskFiles {
        dir: dir.to_path_buf(),
        task_bundle: dir.join(format!("{stem}.mwt")),
        result: dir.join(format!("{stem}.result")),
        stdout: dir.join(format!("{stem}.out")),
        stderr: dir.join(format!("{stem}.err")),
        program_bundle,
    }
}

/// Builds the submit spec of one batch (one program bundle).
pub(super) fn batch_spec(
    settings: &CondorSettings,
    batch_name: &str,
    dir: &Path,
    program_bundle: &Path,
    tasks: &[(Vec<TaskId>, TaskFiles)],
) -> SubmitSpec {
    SubmitSpec {
        batch_name: batch_name.to_string(),
        executable: settings.worker.clone(),
        program_bundle: program_bundle.to_path_buf(),
        initialdir: dir.to_path_buf(),
        log: dir.join(format!("{batch_name}.log")),
        request_cpus: settings.request_cpus,
        request_memory_mb: settings.request_memory_mb,
        request_disk_mb: settings.request_disk_mb,
        requirements: settings.requirements.clone(),
        max_retries: settings.max_retries,
        items: tasks
            .iter()
            .map(|(ids, f)| SubmitItem {
                task_index: ids.first().map_or(0, |id| id.0),
                task_bundle: f.task_bundle.clone(),
                result_bundle: f
                    .result
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                output: f.stdout.clone(),
                error: f.stderr.clone(),
            })
            .collect(),
    }
}

/// The submit description `mw` would submit for a job's tasks `specs` (for `mw-condor
/// submit-file`): every task in one batch, staged under `work_dir`. Returns (submit text, item text).
pub fn preview_submit(
    job_name: &str,
    specs: Vec<TaskSpec>,
    work_dir: &Path,
    settings: &CondorSettings,
) -> Result<(String, String), InterfaceError> {
    let Some(first) = specs.first() else {
        return Err(InterfaceError::new("the job has no tasks"));
    };
    let program_def = first.program.clone();
    let dir = work_dir.join("batch-1");
    // The program bundle is content-addressed: pack it once (in a scratch dir) for its name.
    let scratch = tempfile::tempdir()
        .map_err(|e| InterfaceError::new(format!("creating a scratch directory: {e}")))?;
    let packed = program_def
        .bundle(scratch.path())
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let staging = work_dir.parent().unwrap_or(work_dir);
    let program_bundle = staging.join(packed.path.file_name().unwrap_or_default());
    let mut tasks = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let prepared = PreparedTask {
            id: TaskId(i as u64),
            attempt: 1,
            job: job_name.to_string(),
            spec,
            output_dir: None,
            staging_dir: work_dir.to_path_buf(),
        };
        tasks.push((
            vec![prepared.id],
            task_files(&dir, &prepared, program_bundle.clone()),
        ));
    }
    // Packed (`tasks_per_job` > 1): one job per pack of that many tasks (with a target job
    // time, the first job would carry one task; the preview shows the largest packs).
    let per = settings
        .tasks_per_job
        .clamp(1, crate::pack::MAX_TASKS_PER_PACK);
    if per > 1 {
        tasks = tasks
            .chunks(per)
            .map(|c| match c {
                [one] => one.clone(),
                _ => {
                    let ids: Vec<TaskId> = c.iter().flat_map(|(ids, _)| ids.clone()).collect();
                    let files = pack_files(&dir, ids[0], program_bundle.clone());
                    (ids, files)
                }
            })
            .collect();
    }
    let name = format!("{}-b1", safe_name(job_name));
    let spec = batch_spec(settings, &name, &dir, &program_bundle, &tasks);
    let items_file = dir.join(format!("{name}.items"));
    let submit = mw_condor_kit::render_submit(&spec, &items_file, settings.template.as_deref())
        .map_err(InterfaceError::new)?;
    let items = mw_condor_kit::render_items(&spec).map_err(InterfaceError::new)?;
    Ok((submit, items))
}

pub(super) fn stage(task: &PreparedTask) -> Result<(Vec<u8>, PathBuf), InterfaceError> {
    let program = task
        .spec
        .program
        .bundle(&task.staging_dir)
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let bytes = task
        .task_bundle_bytes(&program)
        .map_err(|e| InterfaceError::new(format!("packing the task bundle: {e}")))?;
    let path = std::path::absolute(&program.path).unwrap_or(program.path);
    Ok((bytes, path))
}

pub(super) fn submit_loop(shared: &Shared) {
    loop {
        let (batch, taken, packs) = {
            let mut st = shared.lock();
            loop {
                if st.shut_down {
                    return;
                }
                if shared.packing && st.sizer.waiting() {
                    // The others wait for the probe job's run time.
                    st = crate::guard::wait(&shared.cond, st);
                    continue;
                }
                match (st.first_pending, st.last_pending) {
                    (Some(first), Some(last)) => {
                        // Submit once no task has arrived for a whole window (a burst of
                        // tasks is one batch), but never hold the first longer than the cap.
                        let window = shared.settings.batch_window;
                        let quiet = window.saturating_sub(last.elapsed());
                        let cap = (window + MAX_BATCH_DELAY).saturating_sub(first.elapsed());
                        let wait = quiet.min(cap);
                        if wait.is_zero() {
                            break;
                        }
                        st = crate::guard::wait_timeout(&shared.cond, st, wait);
                    }
                    // Tasks held back for a probe, or packed tasks queued again.
                    _ if !st.pending.is_empty() => break,
                    _ => st = crate::guard::wait(&shared.cond, st),
                }
            }
            let batch = st.open_batch;
            st.open_batch += 1;
            st.first_pending = None;
            st.last_pending = None;
            let ids = std::mem::take(&mut st.pending);
            // Tasks queued for a pack have no bundle yet; the others were staged alone.
            let (for_packs, staged): (Vec<TaskId>, Vec<TaskId>) = ids
                .into_iter()
                .partition(|id| st.tasks.get(id).is_some_and(|t| t.files.is_queued()));
            let packs = if for_packs.is_empty() {
                Vec::new()
            } else {
                form_packs(&mut st, for_packs)
            };
            let mut taken = Vec::with_capacity(staged.len());
            for id in staged {
                if let Some(t) = st.tasks.get_mut(&id) {
                    t.phase = Phase::Submitting;
                    taken.push((id, t.files.clone(), t.task.job.clone()));
                }
            }
            (batch, taken, packs)
        };
        // A panic while submitting one batch fails that batch's tasks; the next batch is
        // submitted as usual.
        let ids: Vec<TaskId> = taken
            .iter()
            .map(|(id, _, _)| *id)
            .chain(packs.iter().flatten().map(|t| t.id))
            .collect();
        let had_packs = !packs.is_empty();
        if let Err(panic) = crate::guard::contain(|| submit_taken(shared, batch, taken, packs)) {
            fail_batch(shared, batch, &ids, had_packs, &panic);
        }
    }
}

/// Submits what the submit loop took for `batch`: its packs, then its lone tasks (one
/// cluster per program bundle, normally exactly one).
fn submit_taken(
    shared: &Shared,
    batch: u64,
    taken: Vec<(TaskId, TaskFiles, String)>,
    packs: Vec<Vec<Arc<PreparedTask>>>,
) {
    if !packs.is_empty() {
        submit_packs(shared, batch, packs);
    }
    let Some(job) = taken.first().map(|t| t.2.clone()) else {
        return;
    };
    let mut groups: BTreeMap<PathBuf, Vec<(Vec<TaskId>, TaskFiles)>> = BTreeMap::new();
    for (id, files, _) in taken {
        groups
            .entry(files.program_bundle.clone())
            .or_default()
            .push((vec![id], files));
    }
    for (k, (program, tasks)) in groups.into_iter().enumerate() {
        let dir = tasks[0].1.dir.clone();
        submit_group(shared, &group_name(&job, batch, k), &dir, &program, tasks);
    }
}

/// A panic while submitting `batch` (caught): its tasks that are still held fail with the
/// panic's message, and the jobs the pool already got for them are removed.
fn fail_batch(shared: &Shared, batch: u64, ids: &[TaskId], had_packs: bool, panic: &str) {
    let (tasks, handles) = {
        let mut st = shared.lock();
        let mut tasks = Vec::with_capacity(ids.len());
        let mut handles = Vec::new();
        for id in ids {
            if let Some(t) = st.tasks.remove(id) {
                if let Some(h) = t.handle {
                    if !handles.contains(&h) {
                        handles.push(h);
                    }
                }
                tasks.push(t);
            }
        }
        for h in &handles {
            st.by_handle.remove(h);
        }
        st.finished += tasks.len() as u64;
        if had_packs {
            // A probe pack of this batch will not end by itself.
            st.sizer.job_ended();
        }
        (tasks, handles)
    };
    shared.cond.notify_all();
    log::error!(
        "condor: internal error while submitting batch {batch}: {panic}; failing its {} task(s)",
        tasks.len()
    );
    if !handles.is_empty() {
        if let Err(e) = shared.settings.cli.remove(&handles) {
            log::warn!("condor_rm of the jobs of failed batch {batch}: {e}");
        }
    }
    for mut t in tasks {
        if let Some(d) = t.done.take() {
            d.finish(Err(InterfaceError::new(format!(
                "{}: internal error while submitting it to HTCondor: {panic}",
                t.task.id
            ))));
        }
    }
}

/// The name of the `k`-th cluster of batch `batch` (one per program bundle).
fn group_name(job: &str, batch: u64, k: usize) -> String {
    if k == 0 {
        format!("{}-b{batch}-{}", safe_name(job), batch_nonce())
    } else {
        format!("{}-b{batch}-{k}-{}", safe_name(job), batch_nonce())
    }
}

/// Packing: queues a task to be packed when its batch is submitted (its program bundle is
/// made now, once per program; its task bundle goes into the pack bundle then).
pub(super) fn queue_for_pack(shared: &Shared, task: Arc<PreparedTask>, done: Completion) {
    let program = match task.spec.program.bundle(&task.staging_dir) {
        Ok(p) => std::path::absolute(&p.path).unwrap_or(p.path),
        Err(e) => {
            return done.finish(Err(InterfaceError::new(format!(
                "packing the program bundle: {e}"
            ))))
        }
    };
    let mut st = shared.lock();
    if st.shut_down {
        drop(st);
        return done.finish(Err(shut_down_error("HTCondor")));
    }
    let files = TaskFiles::queued(program);
    let id = task.id;
    st.add_pending(id, Tracked::new(task, done, None, files, Phase::Pending));
    drop(st);
    shared.cond.notify_all();
}

/// True for a task of a streaming program (its tasks always run in packs).
pub(super) fn is_stream(task: &PreparedTask) -> bool {
    task.spec.program.mode() == crate::task::ProgramMode::Stream
}

/// Splits the tasks taken for a batch into packs (per program bundle and mode, in arrival
/// order) of the sizes the sizer gives; tasks it holds back (waiting for a probe) stay
/// pending.
fn form_packs(st: &mut State, ids: Vec<TaskId>) -> Vec<Vec<Arc<PreparedTask>>> {
    let mut groups: Vec<((PathBuf, bool), Vec<TaskId>)> = Vec::new();
    for id in ids {
        let Some(t) = st.tasks.get(&id) else { continue };
        let key = (t.files.program_bundle.clone(), is_stream(&t.task));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(id),
            None => groups.push((key, vec![id])),
        }
    }
    let mut packs = Vec::new();
    for (_, group) in groups {
        let mut rest: &[TaskId] = &group;
        while !rest.is_empty() {
            let Some(n) = st.sizer.next_size() else {
                st.pending.extend_from_slice(rest);
                break;
            };
            let (pack, after) = rest.split_at(n.min(rest.len()));
            rest = after;
            let mut members = Vec::with_capacity(pack.len());
            for id in pack {
                if let Some(t) = st.tasks.get_mut(id) {
                    t.phase = Phase::Submitting;
                    members.push(t.task.clone());
                }
            }
            packs.push(members);
        }
    }
    packs
}

/// Stages each pack (a lone task as a plain task bundle, more as a pack bundle) in the
/// batch's directory and submits one cluster per program bundle.
fn submit_packs(shared: &Shared, batch: u64, packs: Vec<Vec<Arc<PreparedTask>>>) {
    let dir = shared.settings.work_dir.join(format!("batch-{batch}"));
    let mut groups: BTreeMap<PathBuf, Vec<(Vec<TaskId>, TaskFiles)>> = BTreeMap::new();
    let mut job = String::new();
    for pack in packs {
        let Some(first) = pack.first() else { continue };
        job.clone_from(&first.job);
        let staged = stage_pack(shared, &dir, &pack);
        let mut st = shared.lock();
        match staged {
            Ok(files) => {
                let packed = pack.len() > 1 || is_stream(first);
                for t in &pack {
                    if let Some(tr) = st.tasks.get_mut(&t.id) {
                        tr.files = files.clone();
                        tr.packed = packed;
                    }
                }
                groups
                    .entry(files.program_bundle.clone())
                    .or_default()
                    .push((pack.iter().map(|t| t.id).collect(), files));
            }
            Err(e) => {
                let mut done = Vec::new();
                for t in &pack {
                    if let Some(mut tr) = st.tasks.remove(&t.id) {
                        st.finished += 1;
                        done.extend(tr.done.take());
                    }
                }
                st.sizer.job_ended();
                drop(st);
                for d in done {
                    d.finish(Err(e.clone()));
                }
            }
        }
    }
    for (k, (program, jobs)) in groups.into_iter().enumerate() {
        submit_group(shared, &group_name(&job, batch, k), &dir, &program, jobs);
    }
}

/// Writes the bundle of one pack into `dir`: a lone task's own task bundle, or a pack bundle
/// (always for a streaming program's tasks).
fn stage_pack(
    shared: &Shared,
    dir: &Path,
    pack: &[Arc<PreparedTask>],
) -> Result<TaskFiles, InterfaceError> {
    let first = pack
        .first()
        .ok_or_else(|| InterfaceError::new("an empty pack"))?;
    let program = first
        .spec
        .program
        .bundle(&first.staging_dir)
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let program_path = std::path::absolute(&program.path).unwrap_or(program.path.clone());
    let (files, bytes) = if pack.len() == 1 && !is_stream(first) {
        let (bytes, path) = stage(first)?;
        (task_files(dir, first, path), bytes)
    } else {
        let bytes = crate::pack::pack_bundle_bytes(pack, &program)?;
        (pack_files(dir, first.id, program_path), bytes)
    };
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&files.task_bundle, &bytes))
        .map_err(|e| staging_error(shared, &files.task_bundle, &e))?;
    Ok(files)
}

/// The error of a task bundle that could not be written to `path`. When this machine's
/// storage is full, a journaled master is told to stop first (the task is then queued again
/// for `mw resume`) rather than fail every task after this one the same way.
pub(super) fn staging_error(shared: &Shared, path: &Path, e: &std::io::Error) -> InterfaceError {
    let why = format!("staging the task bundle {}: {e}", path.display());
    if crate::task::is_storage_error(e) {
        let sink = crate::guard::lock(&shared.sink).clone();
        if let Some(sink) = sink {
            sink.cannot_store(&why);
        }
    }
    InterfaceError::new(why)
}

/// Cancels `task`, a member of a pack already submitted: it is reported cancelled at once
/// and leaves its job, whose other members run on (its result is ignored if it comes
/// back); a job left without members is removed from the pool.
pub(super) fn cancel_packed(shared: &Shared, mut st: MutexGuard<'_, State>, task: TaskId) {
    let Some(mut t) = st.tasks.remove(&task) else {
        return;
    };
    let Some(h) = t.handle else { return };
    let mut empty = false;
    if let Some(members) = st.by_handle.get_mut(&h) {
        members.retain(|m| *m != task);
        empty = members.is_empty();
    }
    if empty {
        st.by_handle.remove(&h);
    }
    st.finished += 1;
    if empty {
        st.sizer.job_ended();
    }
    drop(st);
    shared.cond.notify_all();
    if let Some(d) = t.done.take() {
        d.finish(Err(InterfaceError::new(format!(
            "cancelled: it was packed in HTCondor job {h} with other tasks, which run on{}",
            if empty {
                "; none was left, so the job is removed"
            } else {
                "; its result will be ignored"
            }
        ))));
    }
    if empty {
        if let Err(e) = shared.settings.cli.remove(&[h]) {
            log::warn!("HTCondor: removing job {h}, whose tasks were all cancelled: {e}");
        }
    }
}

/// A short random suffix that makes a batch name unique across runs and machines (batch
/// numbers restart in every job directory), so the name can identify the batch in the schedd.
pub(super) fn batch_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// Removes every job of batch `name` the schedd holds (found by its `+MwBatch` attribute):
/// after a condor_submit that failed or answered what mw could not read.
fn remove_batch(settings: &CondorSettings, name: &str) -> Result<(), String> {
    let ads = settings
        .cli
        .batch_jobs(&[name.to_string()], false)
        .map_err(|e| format!("looking for its jobs: {e}"))?;
    let mut clusters: Vec<u64> = ads.iter().map(|a| a.handle.cluster).collect();
    clusters.sort_unstable();
    clusters.dedup();
    if !clusters.is_empty() {
        log::warn!("HTCondor batch {name}: condor_submit failed; removing the clusters it queued: {clusters:?}");
    }
    settings
        .cli
        .remove_clusters(&clusters)
        .map_err(|e| format!("removing clusters {clusters:?}: {e}"))
}

/// Submits one cluster: `jobs` are (the job's tasks, the job's files), one job each.
pub(super) fn submit_group(
    shared: &Shared,
    name: &str,
    dir: &Path,
    program: &Path,
    jobs: Vec<(Vec<TaskId>, TaskFiles)>,
) {
    for id in jobs.iter().flat_map(|(ids, _)| ids) {
        crate::crash::panic_point("condor-submit", Some(id.0));
    }
    let settings = &shared.settings;
    let spec = batch_spec(settings, name, dir, program, &jobs);
    let sink = shared.sink.lock().ok().and_then(|s| s.clone());
    // Set once condor_submit ran: from then on the schedd may hold jobs of the batch whatever
    // condor_submit answered.
    let mut ran_submit = false;
    let submitted = write_submit_files(&spec, dir, settings.template.as_deref())
        .map_err(|e| format!("writing the submit description: {e}"))
        .and_then(|(sub, _)| {
            // The batch's identity (its name, `+MwBatch` in every job ad) is durable before
            // the schedd can know the batch: a master killed while condor_submit runs leaves
            // `submitting:` handles, and `mw resume` finds the cluster by its name.
            if let Some(sink) = &sink {
                for (proc, (ids, _)) in jobs.iter().enumerate() {
                    for id in ids {
                        sink.record_handle(*id, &pending_handle(name, proc as u64));
                    }
                }
                if !sink.flush() {
                    return Err(
                        "the journal could not record the batch's name; not submitting it"
                            .to_string(),
                    );
                }
            }
            crate::crash::point("condor-before-submit");
            Ok(sub)
        })
        .and_then(|sub| {
            ran_submit = true;
            settings
                .cli
                .submit(&sub)
                .map_err(|e| format!("submitting {}: {e}", sub.display()))
        })
        .and_then(|handles| {
            if handles.len() != jobs.len() {
                return Err(format!(
                    "condor_submit reported {} jobs for {} tasks",
                    handles.len(),
                    jobs.len()
                ));
            }
            Ok(handles)
        });
    let handles = match submitted {
        Ok(h) => h,
        Err(mut msg) => {
            if ran_submit {
                // condor_submit may have queued jobs and still failed (a lost connection after
                // the commit), or answered what mw could not read: the batch's tasks fail (and
                // may be retried in a new batch), so whatever it queued must not run as well.
                if let Err(e) = remove_batch(settings, name) {
                    log::warn!("HTCondor batch {name}: {e}");
                    msg.push_str(&format!(
                        "; jobs it may have queued could not be removed: {e}"
                    ));
                }
            }
            let mut done = Vec::new();
            let mut st = shared.lock();
            for (ids, _) in &jobs {
                for id in ids {
                    if let Some(mut t) = st.tasks.remove(id) {
                        st.finished += 1;
                        done.push((t.done.take(), t.cancel_requested));
                    }
                }
                st.sizer.job_ended();
            }
            drop(st);
            shared.cond.notify_all();
            for (d, cancelled) in done.into_iter() {
                if let Some(d) = d {
                    let m = if cancelled {
                        "cancelled before it was submitted".to_string()
                    } else {
                        format!("HTCondor: {msg}")
                    };
                    d.finish(Err(InterfaceError::new(m)));
                }
            }
            return;
        }
    };
    crate::crash::point("condor-after-submit");
    let cluster = handles[0].cluster;
    if let Err(e) = write_cluster_marker(dir, name, cluster) {
        log::warn!(
            "HTCondor: cannot write {}/{name}.cluster ({e}); `mw resume` will look for batch {name} in the schedd",
            dir.display()
        );
    }
    let mut to_remove = Vec::new();
    let mut cancel_members = Vec::new();
    {
        let mut st = shared.lock();
        st.batches += 1;
        st.jobs_submitted += handles.len() as u64;
        for ((ids, _), h) in jobs.iter().zip(&handles) {
            let mut members = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(t) = st.tasks.get_mut(id) {
                    t.handle = Some(*h);
                    t.phase = Phase::Idle;
                    if t.cancel_requested {
                        if t.packed {
                            cancel_members.push(*id);
                        } else {
                            to_remove.push(*h);
                        }
                    }
                    members.push(*id);
                }
            }
            st.by_handle.insert(*h, members);
        }
    }
    if let Some(sink) = sink {
        for ((ids, _), h) in jobs.iter().zip(&handles) {
            for id in ids {
                sink.record_handle(*id, &h.to_string());
            }
        }
    }
    // Only now: every event of the log finds its task.
    add_log(shared, &dir.join(format!("{name}.log")));
    if !to_remove.is_empty() {
        let _ = settings.cli.remove(&to_remove);
    }
    for id in cancel_members {
        cancel_packed(shared, shared.lock(), id);
    }
}

pub(super) fn add_log(shared: &Shared, log: &Path) {
    if let Ok(w) = shared.watcher.lock() {
        if let Some(w) = w.as_ref() {
            if let Err(e) = w.add_log(log) {
                log::warn!("HTCondor: {e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::task::Program;
    use mw_condor_kit::CondorCli;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;

    fn tool(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Runs task 0 (`/bin/sh`, staged from `staging`) through `condor`; its outcome.
    fn run_task_0(condor: &Condor, staging: &Path) -> Result<Execution, InterfaceError> {
        let program = Arc::new(Program::new("/bin/sh").unwrap());
        let task = Arc::new(PreparedTask {
            id: TaskId(0),
            attempt: 1,
            job: "unit".into(),
            spec: TaskSpec::new(program, serde_json::json!(0)),
            output_dir: None,
            staging_dir: staging.to_path_buf(),
        });
        let (tx, rx) = mpsc::channel();
        let done = Completion::new(TaskId(0), move |r| tx.send(r).unwrap());
        let worker = condor.reserve_worker(&task).unwrap();
        condor.execute_task(task, worker, done);
        rx.recv_timeout(Duration::from_secs(60)).unwrap()
    }

    /// Records what the interface could not store.
    #[derive(Default)]
    struct Sink(std::sync::Mutex<Vec<String>>);

    impl crate::interface::HandleSink for Sink {
        fn record_handle(&self, _task: TaskId, _handle: &str) {}

        fn cannot_store(&self, why: &str) -> bool {
            self.0.lock().unwrap().push(why.to_string());
            true
        }
    }

    /// A task bundle that cannot be staged because the disk is full (the bundle's path
    /// leads to /dev/full, which answers every write with ENOSPC) stops a journaled master
    /// (through its sink) instead of only failing the task: every later task would fail
    /// the same way.
    #[test]
    fn staging_on_a_full_disk_tells_the_master_to_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let mut settings = CondorSettings::new(tmp.path().join("condor"));
        settings.cli = CondorCli::default().with_bin_dir(tmp.path().join("no-tools"));
        settings.batch_window = Duration::from_millis(1);
        settings.worker = PathBuf::from("/bin/true");
        let condor = Condor::new(settings).unwrap();
        let sink = Arc::new(Sink::default());
        condor.set_handle_sink(sink.clone());
        let batch = tmp.path().join("condor/batch-1");
        std::fs::create_dir_all(&batch).unwrap();
        std::os::unix::fs::symlink("/dev/full", batch.join("task-0-a1.mwt")).unwrap();
        let err = run_task_0(&condor, tmp.path()).unwrap_err().to_string();
        assert!(err.contains("staging the task bundle"), "{err}");
        let told = sink.0.lock().unwrap().clone();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].contains("task-0-a1.mwt"), "{told:?}");
        condor.shutdown();
    }

    /// condor_submit queued the job and then failed (its connection lost after the commit),
    /// or answered in a way mw cannot read: the task fails, and the job it queued is removed
    /// (found by its batch name), so it does not run beside the task's retry.
    #[test]
    fn a_failed_condor_submit_leaves_no_job_of_its_batch_in_the_schedd() {
        for (case, submit) in [
            ("exit 1 after the commit", "echo '7.0 - 7.0'; exit 1"),
            (
                "unreadable answer",
                "echo 'site banner: welcome'; echo '7.0 - 7.0'",
            ),
            ("more jobs than tasks", "echo '7.0 - 7.1'"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let bin = tmp.path().join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let removed = tmp.path().join("removed");
            tool(&bin, "condor_submit", submit);
            // The schedd holds cluster 7, whatever batch name it was given.
            tool(
                &bin,
                "condor_q",
                r#"for a; do case "$a" in *MwBatch*) b=${a#*\"}; b=${b%%\"*};; esac; done
printf '[{"ClusterId": 7, "ProcId": 0, "JobStatus": 1, "MwBatch": "%s"}]\n' "$b""#,
            );
            tool(
                &bin,
                "condor_rm",
                &format!("echo \"$@\" >> {}", removed.display()),
            );
            let mut settings = CondorSettings::new(tmp.path().join("condor"));
            settings.cli = CondorCli::default().with_bin_dir(&bin);
            settings.batch_window = Duration::from_millis(1);
            settings.worker = PathBuf::from("/bin/true");
            let condor = Condor::new(settings).unwrap();
            let err = run_task_0(&condor, tmp.path()).unwrap_err().to_string();
            assert!(err.contains("HTCondor"), "{case}: {err}");
            let rm = std::fs::read_to_string(&removed).unwrap_or_default();
            assert_eq!(
                rm.trim(),
                "7",
                "{case}: condor_rm was called with {rm:?} ({err})"
            );
            condor.shutdown();
        }
    }
}
