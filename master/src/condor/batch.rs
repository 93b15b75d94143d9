//! Batches: tasks that arrive within the batch window become one cluster. Stages task
//! bundles, writes the submit description and item file (condor-kit), records the batch's
//! identity before `condor_submit` runs, submits, and hands the job handles to the master.
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

pub(super) fn task_files(dir: &Path, task: &PreparedTask, program_bundle: PathBuf) -> TaskFiles {
    let stem = format!("task-{}-a{}", task.id.0, task.attempt);
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
    tasks: &[(TaskId, TaskFiles)],
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
            .map(|(id, f)| SubmitItem {
                task_index: id.0,
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
            prepared.id,
            task_files(&dir, &prepared, program_bundle.clone()),
        ));
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
        let (batch, taken) = {
            let mut st = shared.lock();
            loop {
                if st.shut_down {
                    return;
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
                        st = shared
                            .cond
                            .wait_timeout(st, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    _ => st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                }
            }
            let batch = st.open_batch;
            st.open_batch += 1;
            st.first_pending = None;
            st.last_pending = None;
            let ids = std::mem::take(&mut st.pending);
            let mut taken = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(t) = st.tasks.get_mut(&id) {
                    t.phase = Phase::Submitting;
                    taken.push((id, t.files.clone(), t.task.job.clone()));
                }
            }
            (batch, taken)
        };
        if taken.is_empty() {
            continue;
        }
        // One cluster per program bundle (normally exactly one).
        let mut groups: BTreeMap<PathBuf, Vec<(TaskId, TaskFiles)>> = BTreeMap::new();
        let job = taken[0].2.clone();
        for (id, files, _) in taken {
            groups
                .entry(files.program_bundle.clone())
                .or_default()
                .push((id, files));
        }
        for (k, (program, tasks)) in groups.into_iter().enumerate() {
            let dir = tasks[0].1.dir.clone();
            let name = if k == 0 {
                format!("{}-b{batch}-{}", safe_name(&job), batch_nonce())
            } else {
                format!("{}-b{batch}-{k}-{}", safe_name(&job), batch_nonce())
            };
            submit_group(shared, &name, &dir, &program, tasks);
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

pub(super) fn submit_group(
    shared: &Shared,
    name: &str,
    dir: &Path,
    program: &Path,
    tasks: Vec<(TaskId, TaskFiles)>,
) {
    let settings = &shared.settings;
    let spec = batch_spec(settings, name, dir, program, &tasks);
    let sink = shared.sink.lock().ok().and_then(|s| s.clone());
    let submitted = write_submit_files(&spec, dir, settings.template.as_deref())
        .map_err(|e| format!("writing the submit description: {e}"))
        .map(|(sub, _)| {
            // The batch's identity (its name, `+MwBatch` in every job ad) is durable before
            // the schedd can know the batch: a master killed while condor_submit runs leaves
            // `submitting:` handles, and `mw resume` finds the cluster by its name.
            if let Some(sink) = &sink {
                for (proc, (id, _)) in tasks.iter().enumerate() {
                    sink.record_handle(*id, &pending_handle(name, proc as u64));
                }
                sink.flush();
            }
            sub
        })
        .and_then(|sub| {
            settings
                .cli
                .submit(&sub)
                .map_err(|e| format!("submitting {}: {e}", sub.display()))
        })
        .and_then(|handles| {
            if handles.len() != tasks.len() {
                return Err(format!(
                    "condor_submit reported {} jobs for {} tasks",
                    handles.len(),
                    tasks.len()
                ));
            }
            Ok(handles)
        });
    let handles = match submitted {
        Ok(h) => h,
        Err(msg) => {
            let mut done = Vec::new();
            let mut st = shared.lock();
            for (id, _) in &tasks {
                if let Some(mut t) = st.tasks.remove(id) {
                    st.finished += 1;
                    done.push((t.done.take(), t.cancel_requested));
                }
            }
            drop(st);
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
    let cluster = handles[0].cluster;
    if let Err(e) = write_cluster_marker(dir, name, cluster) {
        eprintln!(
            "mw: condor: cannot write {}/{name}.cluster ({e}); `mw resume` will look for batch {name} in the schedd",
            dir.display()
        );
    }
    let mut to_remove = Vec::new();
    {
        let mut st = shared.lock();
        st.batches += 1;
        st.jobs_submitted += handles.len() as u64;
        for ((id, _), h) in tasks.iter().zip(&handles) {
            if let Some(t) = st.tasks.get_mut(id) {
                t.handle = Some(*h);
                t.phase = Phase::Idle;
                if t.cancel_requested {
                    to_remove.push(*h);
                }
                st.by_handle.insert(*h, *id);
            }
        }
    }
    if let Some(sink) = sink {
        for ((id, _), h) in tasks.iter().zip(&handles) {
            sink.record_handle(*id, &h.to_string());
        }
    }
    // Only now: every event of the log finds its task.
    add_log(shared, &dir.join(format!("{name}.log")));
    if !to_remove.is_empty() {
        let _ = settings.cli.remove(&to_remove);
    }
}

pub(super) fn add_log(shared: &Shared, log: &Path) {
    if let Ok(w) = shared.watcher.lock() {
        if let Some(w) = w.as_ref() {
            if let Err(e) = w.add_log(log) {
                eprintln!("mw: condor: {e}");
            }
        }
    }
}
