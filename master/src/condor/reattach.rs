//! Re-attach: a resumed master finds the jobs of tasks that were in flight when the previous
//! master died (from `cluster.proc` handles, or from a batch identity recorded before
//! `condor_submit` ran), and removes the jobs of a job that is cancelled without a master.
//! This module must never know about the journal or the job-file format.

use super::*;

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

impl Condor {
    fn reattach_inner(
        &self,
        task: &Arc<PreparedTask>,
        handle: &str,
    ) -> Result<(JobHandle, TaskFiles, PathBuf), String> {
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
        if item.task_index != task.id.0 {
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
        Ok((h, files, dir.join(format!("{name}.log"))))
    }

    pub(super) fn reattach_task(
        &self,
        task: Arc<PreparedTask>,
        handle: &str,
        done: Completion,
    ) -> Option<Completion> {
        let (h, files, log) = match self.reattach_inner(&task, handle) {
            Ok(x) => x,
            Err(e) => {
                eprintln!(
                    "mw: condor: cannot re-attach {} to job {handle}: {e}; running it again",
                    task.id
                );
                return Some(done);
            }
        };
        let id = task.id;
        if !log.exists() {
            // The log is gone: ask the schedd's history, then its queue.
            let cli = &self.shared.settings.cli;
            let ad = cli
                .history(&[h.cluster], None)
                .ok()
                .and_then(|ads| ads.into_iter().find(|a| a.handle == h));
            let tracked = Tracked::new(task.clone(), done, Some(h), files, Phase::Idle);
            match ad {
                Some(ad) => {
                    let outcome = match (ad.status, ad.exit_code, ad.exit_signal) {
                        (_, _, Some(sig)) if ad.attributes.get("ExitBySignal")
                            == Some(&serde_json::Value::Bool(true)) => Outcome::Signal(sig),
                        (JobStatus::Completed, Some(rv), _) => Outcome::Exited(rv),
                        (JobStatus::Removed, _, _) => Outcome::Error(format!(
                            "HTCondor job {h} was removed from the queue (found in condor_history; its log {} is gone)",
                            log.display()
                        )),
                        (s, _, _) => Outcome::Error(format!(
                            "HTCondor job {h} left the queue in state {s:?} (its log {} is gone)",
                            log.display()
                        )),
                    };
                    let mut st = self.shared.lock();
                    st.tasks.insert(id, tracked);
                    st.by_handle.insert(h, id);
                    drop(st);
                    conclude(&self.shared, id, h, outcome);
                    return None;
                }
                None => {
                    let queued = cli
                        .query_jobs(&[h.cluster])
                        .map(|ads| ads.iter().any(|a| a.handle == h))
                        .unwrap_or(false);
                    if !queued {
                        eprintln!("mw: condor: job {h} of {id} is neither in the queue nor in the history and its log is gone; running it again");
                        return tracked.done;
                    }
                    let mut st = self.shared.lock();
                    st.tasks.insert(id, tracked);
                    st.by_handle.insert(h, id);
                    drop(st);
                    add_log(&self.shared, &log);
                    return None;
                }
            }
        }
        let replay = {
            let mut st = self.shared.lock();
            st.tasks
                .insert(id, Tracked::new(task, done, Some(h), files, Phase::Idle));
            st.by_handle.insert(h, id);
            st.unclaimed.remove(&h).unwrap_or_default()
        };
        for ev in replay {
            on_event(&self.shared, ev);
        }
        add_log(&self.shared, &log);
        None
    }
}
