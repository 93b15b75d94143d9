//! Re-attach: a resumed master finds the jobs of tasks that were in flight when the previous
//! master died (from `cluster.proc` handles, or from a batch identity recorded before
//! `condor_submit` ran), and removes the jobs of a job (or of a task) that is cancelled
//! without a master.
//! This module must never know about the journal or the job-file format.

use super::*;

/// The handle of a task whose batch is about to be submitted: `submitting:<batch>:<proc>`.
const SUBMITTING: &str = "submitting:";

/// The handle recorded for item `proc` of batch `name` before `condor_submit` runs.
pub(super) fn pending_handle(name: &str, proc: u64) -> String {
    format!("{SUBMITTING}{name}:{proc}")
}

/// The longest a resumed master waits for a `condor_submit` the dead master started.
const STRAY_SUBMIT_WAIT: Duration = Duration::from_secs(120);

/// The batch directory holding `<name>.sub` (the batch was at least written).
fn batch_dir_of(work_dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(work_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|d| d.join(format!("{name}.sub")).is_file())
}

/// Waits (bounded) while a `condor_submit` of `sub` started by a dead master still runs: once
/// it is gone, the schedd either has the batch or never will.
fn wait_for_stray_submit(sub: &Path) {
    let Some(sub) = sub.to_str() else { return };
    let deadline = Instant::now() + STRAY_SUBMIT_WAIT;
    let mut told = false;
    while Instant::now() < deadline {
        let running = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| c.split(|b| *b == 0).any(|a| a == sub.as_bytes()))
                    .unwrap_or(false)
            });
        if !running {
            return;
        }
        if !told {
            told = true;
            log::warn!("HTCondor: a condor_submit of {sub} from the previous master still runs; waiting for it");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Writes `<dir>/<name>.cluster` durably.
pub(super) fn write_cluster_marker(dir: &Path, name: &str, cluster: u64) -> std::io::Result<()> {
    mw_bundle::fsutil::write_atomic(
        &dir.join(format!("{name}.cluster")),
        format!("{cluster}\n").as_bytes(),
        None,
    )
}

/// Removes from the pool every job of the batches staged under `work_dir` (a job's
/// `staging/condor`) that is still queued: what `mw cancel` does when no master is alive.
/// Finds the batches by their identity (`MwBatch`), so jobs of a batch whose cluster id was
/// never recorded are found too. Returns the clusters it removed.
pub fn remove_leftover_jobs(work_dir: &Path, cli: &CondorCli) -> Result<Vec<u64>, String> {
    let mut names = Vec::new();
    for dir in std::fs::read_dir(work_dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = f.path();
            if p.extension().and_then(|x| x.to_str()) == Some("sub") {
                if let Some(n) = p.file_stem().and_then(|n| n.to_str()) {
                    if mw_condor_kit::is_batch_name(n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
    }
    let ads = cli.batch_jobs(&names, false).map_err(|e| e.to_string())?;
    let mut clusters: Vec<u64> = ads
        .iter()
        .filter(|a| a.status != JobStatus::Removed)
        .map(|a| a.handle.cluster)
        .collect();
    clusters.sort_unstable();
    clusters.dedup();
    cli.remove_clusters(&clusters).map_err(|e| e.to_string())?;
    Ok(clusters)
}

/// What `mw cancel --task` does on HTCondor when no master is alive: removes the jobs that
/// only cancelled tasks still need. `unfinished` are the job's unfinished tasks (index,
/// recorded handle) and `cancelled` says which of them are being cancelled; a job
/// (`cluster.proc`) is removed only when every unfinished task recorded under it is
/// cancelled (a pack's other members keep it running), and only while it is still queued (a
/// job that has left the queue cannot be removed, and need not be). Handles that name no job
/// yet (`submitting:`) are left alone. Returns the jobs removed.
pub fn remove_jobs_of_cancelled_tasks(
    unfinished: &[(u64, Option<&str>)],
    cancelled: impl Fn(u64) -> bool,
    cli: &CondorCli,
) -> Result<Vec<JobHandle>, String> {
    let mut needed: std::collections::BTreeMap<JobHandle, bool> = Default::default();
    for (t, h) in unfinished {
        if let Some(h) = h.and_then(|h| h.parse::<JobHandle>().ok()) {
            *needed.entry(h).or_default() |= !cancelled(*t);
        }
    }
    let mut remove = Vec::new();
    for (h, kept) in needed {
        if kept {
            continue;
        }
        if cli.query_job(h).map_err(|e| e.to_string())?.is_some() {
            remove.push(h);
        }
    }
    cli.remove(&remove).map_err(|e| e.to_string())?;
    Ok(remove)
}

/// Finds the batch of `cluster`: (batch dir, batch name) from the `<name>.cluster` markers.
pub(super) fn find_batch(work_dir: &Path, cluster: u64) -> Option<(PathBuf, String)> {
    for e in std::fs::read_dir(work_dir).ok()?.flatten() {
        let dir = e.path();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in rd.flatten() {
            let p = f.path();
            if p.extension().and_then(|x| x.to_str()) != Some("cluster") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if text.trim().parse::<u64>().ok() == Some(cluster) {
                let name = p.file_stem()?.to_string_lossy().into_owned();
                return Some((dir, name));
            }
        }
    }
    None
}

/// Retries of a schedd query a resumed master needs to answer (about 30 s in all).
const SCHEDD_RETRIES: usize = 5;

/// What a resumed master learns about a batch it only knows by name.
enum Pending {
    /// The schedd has it: this cluster.
    Submitted(u64),
    /// Neither the queue nor the history has it: it was never submitted.
    NotSubmitted,
}

impl Condor {
    /// Finds the cluster of a batch recorded as `submitting:` (memoized per batch).
    fn resolve_pending(&self, name: &str) -> Result<Pending, String> {
        if let Some(e) = self.shared.lock().unresolved.get(name) {
            return Err(e.clone());
        }
        if let Some(known) = self.shared.lock().resolved.get(name) {
            return Ok(match known {
                Some(c) => Pending::Submitted(*c),
                None => Pending::NotSubmitted,
            });
        }
        let work_dir = &self.shared.settings.work_dir;
        let found = match batch_dir_of(work_dir, name) {
            None => None, // never written, so never submitted
            Some(dir) => {
                let marker = dir.join(format!("{name}.cluster"));
                match std::fs::read_to_string(&marker)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                {
                    Some(c) => Some(c),
                    None => {
                        wait_for_stray_submit(&dir.join(format!("{name}.sub")));
                        // A schedd that does not answer for a moment ("Failed to fetch ads")
                        // is asked again; an answer that never comes is remembered for the
                        // batch's other tasks.
                        use backon::BlockingRetryable;
                        let ads = (|| {
                            self.shared
                                .settings
                                .cli
                                .batch_jobs(&[name.to_string()], true)
                        })
                        .retry(
                            backon::ExponentialBuilder::default()
                                .with_min_delay(Duration::from_secs(1))
                                .with_max_delay(Duration::from_secs(15))
                                .with_max_times(SCHEDD_RETRIES),
                        )
                        .sleep(std::thread::sleep)
                        .notify(|e, after| {
                            log::warn!("HTCondor: looking for batch {name}: {e}; asking again in {after:?}")
                        })
                        .call()
                        .map_err(|e| {
                            let msg =
                                format!("cannot tell whether batch {name} reached the schedd: {e}");
                            self.shared
                                .lock()
                                .unresolved
                                .insert(name.to_string(), msg.clone());
                            msg
                        })?;
                        let mut clusters: Vec<u64> = ads.iter().map(|a| a.handle.cluster).collect();
                        clusters.sort_unstable();
                        clusters.dedup();
                        if clusters.len() > 1 {
                            // One condor_submit makes one cluster; anything else is not ours to guess.
                            let _ = self.shared.settings.cli.remove_clusters(&clusters);
                            return Err(format!(
                                "batch {name} is in {} clusters ({clusters:?}); removed them",
                                clusters.len()
                            ));
                        }
                        if let Some(c) = clusters.first() {
                            log::warn!("HTCondor: batch {name} was submitted as cluster {c} by the previous master; re-attaching");
                            if let Err(e) = write_cluster_marker(&dir, name, *c) {
                                log::warn!(
                                    "HTCondor: cannot write the cluster marker of {name}: {e}"
                                );
                            }
                        }
                        clusters.first().copied()
                    }
                }
            }
        };
        self.shared.lock().resolved.insert(name.to_string(), found);
        Ok(match found {
            Some(c) => Pending::Submitted(c),
            None => Pending::NotSubmitted,
        })
    }

    fn reattach_inner(
        &self,
        task: &Arc<PreparedTask>,
        handle: &str,
    ) -> Result<(JobHandle, TaskFiles, PathBuf, bool, u64), String> {
        let h: JobHandle = handle.parse()?;
        let (dir, name) =
            find_batch(&self.shared.settings.work_dir, h.cluster).ok_or_else(|| {
                format!(
                    "no batch of cluster {} under {}",
                    h.cluster,
                    self.shared.settings.work_dir.display()
                )
            })?;
        let items_path = dir.join(format!("{name}.items"));
        let items = std::fs::read_to_string(&items_path)
            .map_err(|e| format!("{}: {e}", items_path.display()))?;
        let items = mw_condor_kit::parse_items(&items)
            .map_err(|e| format!("{}: {e}", items_path.display()))?;
        let item = usize::try_from(h.proc)
            .ok()
            .and_then(|p| items.get(p))
            .ok_or_else(|| format!("{}: no item for proc {}", items_path.display(), h.proc))?;
        // A pack's members are listed in the pack bundle this interface staged for it.
        let packed = item.task_bundle.starts_with(super::batch::PACK_PREFIX);
        if packed {
            let listed = crate::pack::pack_bundle_tasks(&item.task_path)?;
            if !listed.contains(&task.id.0) {
                return Err(format!(
                    "{}: job {h} is a pack of tasks {listed:?}, without {}",
                    item.task_path.display(),
                    task.id
                ));
            }
        } else if item.task_index != task.id.0 {
            return Err(format!(
                "{}: item {} is task {}, not {}",
                items_path.display(),
                h.proc,
                item.task_index,
                task.id
            ));
        }
        let files = TaskFiles {
            dir: dir.clone(),
            task_bundle: item.task_path.clone(),
            result: dir.join(&item.result_bundle),
            stdout: item.output.clone(),
            stderr: item.error.clone(),
            program_bundle: PathBuf::new(),
        };
        let items = u64::try_from(items.len()).unwrap_or(u64::MAX);
        Ok((h, files, dir.join(format!("{name}.log")), packed, items))
    }

    pub(super) fn reattach_task(
        &self,
        task: Arc<PreparedTask>,
        handle: &str,
        done: Completion,
    ) -> Option<Completion> {
        let resolved;
        let handle = match handle.strip_prefix(SUBMITTING) {
            None => handle,
            Some(rest) => {
                let parsed = rest
                    .rsplit_once(':')
                    .and_then(|(n, p)| Some((n, p.parse::<u64>().ok()?)));
                let Some((name, proc)) = parsed else {
                    log::warn!(
                        "HTCondor: {} has a malformed handle {handle:?}; running it again",
                        task.id
                    );
                    return Some(done);
                };
                match self.resolve_pending(name) {
                    Ok(Pending::Submitted(cluster)) => {
                        resolved = JobHandle::new(cluster, proc).to_string();
                        if let Some(sink) = self.shared.sink.lock().ok().and_then(|s| s.clone()) {
                            sink.record_handle(task.id, &resolved);
                        }
                        // Killed here: the resolved handle may not be committed; the next
                        // resume resolves the batch name again, to the same cluster.
                        crate::crash::point("condor-reattach-resolved");
                        &resolved
                    }
                    Ok(Pending::NotSubmitted) => return Some(done),
                    Err(e) => {
                        done.finish(Err(InterfaceError::new(format!(
                            "HTCondor: {e}; not running {} again, so that it cannot run twice",
                            task.id
                        ))));
                        return None;
                    }
                }
            }
        };
        let (h, files, log, packed, items) = match self.reattach_inner(&task, handle) {
            Ok(x) => x,
            Err(e) => {
                log::warn!(
                    "HTCondor: cannot re-attach {} to job {handle}: {e}; running it again",
                    task.id
                );
                return Some(done);
            }
        };
        let id = task.id;
        let mut tracked = Tracked::new(task, done, Some(h), files, Phase::Idle);
        tracked.packed = packed;
        {
            let mut st = self.shared.lock();
            st.reattached.insert(h);
            st.reattaching.insert(h.cluster, items);
        }
        let bad_log = self.shared.lock().bad_logs.get(&log).cloned();
        if let Some(msg) = bad_log {
            // Its log is in a format mw does not read (found for another task of the batch).
            if self.join_job(h, tracked).is_some() {
                events::fail_jobs_of_bad_log(&self.shared, &[h], &msg);
            }
            return None;
        }
        if !log.exists() {
            // The log is gone: ask the schedd's history, then its queue.
            let cli = &self.shared.settings.cli;
            match events::history_ad(cli, h) {
                Some(ad) => {
                    let outcome = events::outcome_of_ad(h, &ad, &log);
                    if self.join_job(h, tracked).is_some() {
                        conclude(&self.shared, h, outcome);
                    }
                    return None;
                }
                None => {
                    let queued = cli.query_job(h).map(|ad| ad.is_some()).unwrap_or(false);
                    if !queued {
                        log::warn!("HTCondor: job {h} of {id} is neither in the queue nor in the history and its log is gone; running it again");
                        return tracked.done;
                    }
                    if self.join_job(h, tracked).is_some() {
                        add_log(&self.shared, &log);
                        // Asked about again while the log stays away.
                        self.shared
                            .lock()
                            .gone_logs
                            .insert(log, Instant::now() + events::GONE_LOG_RECHECK);
                    }
                    return None;
                }
            }
        }
        // `None` from join_job: the task got its pack's outcome already (re-attached too).
        let replay = self.join_job(h, tracked)?;
        for ev in replay {
            on_event(&self.shared, ev);
        }
        add_log(&self.shared, &log);
        None
    }

    /// Adds a re-attached task to job `h` and returns the job's events seen so far; or,
    /// when the job has ended already (another member of its pack was re-attached first and
    /// its job concluded), reports that outcome to the task at once and returns `None`.
    fn join_job(&self, h: JobHandle, tracked: Tracked) -> Option<Vec<LogEvent>> {
        let mut st = self.shared.lock();
        if let Some(outcome) = st.concluded.get(&h).cloned() {
            drop(st);
            finish_members(&self.shared, h, vec![tracked], outcome);
            return None;
        }
        let id = tracked.task.id;
        st.tasks.insert(id, tracked);
        st.by_handle.entry(h).or_default().push(id);
        Some(st.unclaimed.remove(&h).unwrap_or_default())
    }
}
