//! condor-kit end to end against the HTCondor pool double (tests/src/condor_double.rs; a TEST
//! DOUBLE, since HTCondor's daemons cannot be installed here): generated submit files, the
//! condor_* wrappers, file transfer into private execute dirs, the log watcher, test hooks and
//! condor_rm; every log the double writes is also read back by HTCondor's own reader.
//! The executable is a small shell script standing in for `mw-worker run` (same arguments).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{
    spawn_log_watcher, write_submit_files, CondorCli, EventKind, JobHandle, JobStatus, LogEvent,
    SubmitItem, SubmitSpec, Termination, WatchMessage,
};
use mw_tests::condor_double::{assert_log_matches_htcondor, STATE_ENV};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const WORKER: &str = r#"#!/bin/sh
# Stand-in for `mw-worker run --program P --task T --result R` (files arrive by basename).
[ "$1" = run ] && [ "$2" = --program ] && [ "$4" = --task ] && [ "$6" = --result ] || exit 64
[ -f "$3" ] && [ -f "$5" ] || { echo "missing input in $(pwd)" >&2; exit 65; }
read -r action arg < "$5"
case "$action" in
  ok) { cat "$3"; echo "result of $arg"; } > "$7"; echo "stdout of $arg"; echo "stderr of $arg" >&2; exit 0 ;;
  exit) echo "failed" > "$7"; exit "$arg" ;;
  signal) echo "killed" > "$7"; kill -"$arg" $$ ;;
  block) exec sleep 100000 ;;
  noresult) exit 0 ;;
esac
exit 66
"#;

struct Pool {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cli: CondorCli,
}

impl Pool {
    fn new() -> Pool {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["state", "inputs", "results", "out", "bin"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let w = root.join("bin/mw-worker");
        std::fs::write(&w, WORKER).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("inputs/program-abc.mwp"), "program bytes\n").unwrap();
        let cli = CondorCli::default()
            .with_bin_dir(mw_tests::condor_double_path(&root))
            .with_env(STATE_ENV, root.join("state"));
        Pool {
            _tmp: tmp,
            root,
            cli,
        }
    }

    /// A batch whose task i holds `actions[i]` (e.g. "ok 0", "exit 3").
    fn spec(&self, name: &str, actions: &[&str]) -> SubmitSpec {
        let r = &self.root;
        SubmitSpec {
            batch_name: name.into(),
            executable: r.join("bin/mw-worker"),
            program_bundle: r.join("inputs/program-abc.mwp"),
            initialdir: r.join("results"),
            log: r.join(format!("{name}.log")),
            request_cpus: 1,
            request_memory_mb: 64,
            request_disk_mb: 10,
            requirements: None,
            max_retries: 0,
            items: actions
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let task = r.join(format!("inputs/{name}-task-{i}.mwt"));
                    std::fs::write(&task, format!("{a}\n")).unwrap();
                    SubmitItem {
                        task_index: i as u64,
                        task_bundle: task,
                        result_bundle: format!("{name}-result-{i}.mwr"),
                        output: r.join(format!("out/{name}-{i}.out")),
                        error: r.join(format!("out/{name}-{i}.err")),
                    }
                })
                .collect(),
        }
    }

    fn submit(&self, spec: &SubmitSpec) -> Vec<JobHandle> {
        let (sub, _) = write_submit_files(spec, &self.root.join("submit"), None).unwrap();
        self.cli.submit(&sub).unwrap()
    }
}

fn next(rx: &Receiver<WatchMessage>) -> LogEvent {
    // The channel is the synchronisation; the timeout only turns a hang into a failure.
    rx.recv_timeout(Duration::from_secs(120))
        .expect("no event from the watcher")
        .expect("a bad record in the double's log")
}

/// Events per job until each of `handles` satisfies `done`.
fn collect_until(
    rx: &Receiver<WatchMessage>,
    handles: &[JobHandle],
    done: impl Fn(&[u32]) -> bool,
) -> BTreeMap<JobHandle, Vec<LogEvent>> {
    let mut by_job: BTreeMap<JobHandle, Vec<LogEvent>> = BTreeMap::new();
    while !handles.iter().all(|h| {
        by_job
            .get(h)
            .is_some_and(|v| done(&v.iter().map(|e| e.code).collect::<Vec<_>>()))
    }) {
        let e = next(rx);
        by_job.entry(e.handle().unwrap()).or_default().push(e);
    }
    by_job
}

fn codes(events: &[LogEvent]) -> Vec<u32> {
    events.iter().map(|e| e.code).collect()
}

#[test]
fn batch_runs_with_file_transfer_and_outcomes() {
    let pool = Pool::new();
    let spec = pool.spec("b1", &["ok 0", "exit 3", "signal 15", "noresult"]);
    let (rx, watcher) = spawn_log_watcher(vec![spec.log.clone()], Duration::from_secs(1)).unwrap();
    let handles = pool.submit(&spec);
    assert_eq!(handles.len(), 4);
    assert!(handles
        .iter()
        .enumerate()
        .all(|(i, h)| h.proc == i as u64 && h.cluster == handles[0].cluster));
    let terminal = |c: &[u32]| c.contains(&5) || c.contains(&12);
    let ev = collect_until(&rx, &handles, terminal);
    watcher.stop();

    // 040 input transfer, 001, 006, 040 output transfer, 005: as the real 23.9 pool writes.
    assert_eq!(codes(&ev[&handles[0]]), vec![0, 40, 40, 1, 6, 40, 40, 5]);
    match &ev[&handles[0]][0].kind {
        EventKind::Submitted { notes, .. } => assert_eq!(notes, &vec!["mw task 0".to_string()]),
        k => panic!("{k:?}"),
    }
    let outcome = |i: usize| ev[&handles[i]].last().unwrap().kind.clone();
    assert_eq!(
        outcome(0),
        EventKind::Terminated(Termination::Normal { return_value: 0 })
    );
    assert_eq!(
        outcome(1),
        EventKind::Terminated(Termination::Normal { return_value: 3 })
    );
    assert_eq!(
        outcome(2),
        EventKind::Terminated(Termination::Abnormal {
            signal: 15,
            core_file: None
        })
    );
    assert!(
        matches!(outcome(3), EventKind::Held { code: Some(12), ref reason, .. } if reason.as_deref().unwrap_or("").contains("b1-result-3.mwr")),
        "{:?}",
        outcome(3)
    );

    // Result bundles transferred back to initialdir (a missing one put proc 3 on hold, as in
    // HTCondor); nothing else came back.
    let results = pool.root.join("results");
    assert_eq!(
        std::fs::read_to_string(results.join("b1-result-0.mwr")).unwrap(),
        "program bytes\nresult of 0\n"
    );
    let mut back: Vec<_> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    back.sort();
    assert_eq!(
        back,
        vec!["b1-result-0.mwr", "b1-result-1.mwr", "b1-result-2.mwr"]
    );
    assert_eq!(
        std::fs::read_to_string(pool.root.join("out/b1-0.out")).unwrap(),
        "stdout of 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(pool.root.join("out/b1-0.err")).unwrap(),
        "stderr of 0\n"
    );

    // The queue and the history.
    let q = pool.cli.query_jobs(&[handles[0].cluster]).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].handle, q[0].status, q[0].hold_reason_code),
        (handles[3], JobStatus::Held, Some(12))
    );
    let h = pool.cli.history(&[handles[0].cluster], None).unwrap();
    let exits: Vec<_> = h
        .iter()
        .map(|a| (a.handle.proc, a.status, a.exit_code, a.exit_signal))
        .collect();
    assert_eq!(
        exits,
        vec![
            (0, JobStatus::Completed, Some(0), None),
            (1, JobStatus::Completed, Some(3), None),
            (2, JobStatus::Completed, None, Some(15)),
        ]
    );
    pool.cli.remove(&[handles[3]]).unwrap();
    assert!(pool
        .cli
        .query_jobs(&[handles[0].cluster])
        .unwrap()
        .is_empty());
    // 000 040 040 001 006 040 040 005 for procs 0-2; for proc 3 (no result bundle) what the
    // real pool wrote (fixtures/condor/real23_worker_sigkill_held_removed.log):
    // 000 040 040 001 006 040 040 021 004 012 009.
    assert_eq!(assert_log_matches_htcondor(&spec.log), 3 * 8 + 11);
}

#[test]
fn hold_and_evict_hooks_then_condor_rm() {
    let pool = Pool::new();
    let spec = pool.spec("b2", &["ok 0", "ok 1"]);
    let cli = pool
        .cli
        .clone()
        .with_env("MW_CONDOR_DOUBLE_HOLD", "0")
        .with_env("MW_CONDOR_DOUBLE_EVICT_ONCE", "1");
    let (sub, _) = write_submit_files(&spec, &pool.root.join("submit"), None).unwrap();
    let (rx, watcher) = spawn_log_watcher(vec![spec.log.clone()], Duration::from_secs(1)).unwrap();
    let handles = cli.submit(&sub).unwrap();
    let ev = collect_until(&rx, &handles, |c| c.contains(&5) || c.contains(&12));
    assert_eq!(codes(&ev[&handles[0]]), vec![0, 12]);
    assert_eq!(
        codes(&ev[&handles[1]]),
        vec![0, 40, 40, 1, 6, 4, 40, 40, 1, 6, 40, 40, 5]
    );
    assert!(matches!(
        ev[&handles[0]][1].kind,
        EventKind::Held { code: Some(1), .. }
    ));
    assert!(pool.root.join("results/b2-result-1.mwr").exists());

    pool.cli.remove(&[handles[0]]).unwrap();
    let mut e = next(&rx);
    if e.code == 6 {
        e = next(&rx); // the image-size update that follows 001
    }
    assert_eq!((e.handle(), e.code), (Some(handles[0]), 9));
    watcher.stop();
    let h = pool.cli.history(&[handles[0].cluster], None).unwrap();
    let st: Vec<_> = h.iter().map(|a| (a.handle.proc, a.status)).collect();
    assert_eq!(st, vec![(0, JobStatus::Removed), (1, JobStatus::Completed)]);
    assert_eq!(h[1].attributes["NumJobStarts"], 2);
    // Removing a job that has left the queue fails with condor_rm's message.
    let err = pool.cli.remove(&[handles[1]]).unwrap_err().to_string();
    assert!(
        err.contains("Job 1.1 not found") || err.contains(&format!("Job {} not found", handles[1])),
        "{err}"
    );
    assert_log_matches_htcondor(&spec.log);
}

#[test]
fn condor_rm_aborts_a_running_job() {
    let pool = Pool::new();
    let spec = pool.spec("b3", &["block x"]);
    let (rx, watcher) = spawn_log_watcher(vec![spec.log.clone()], Duration::from_secs(1)).unwrap();
    let handles = pool.submit(&spec);
    let ev = collect_until(&rx, &handles, |c| c.contains(&1));
    assert_eq!(codes(&ev[&handles[0]]), vec![0, 40, 40, 1]);
    let q = pool.cli.query_jobs(&[]).unwrap();
    assert_eq!(
        q.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![JobStatus::Running]
    );
    pool.cli.remove(&handles).unwrap();
    let mut e = next(&rx);
    if e.code == 6 {
        e = next(&rx); // the image-size update that follows 001
    }
    assert_eq!((e.handle(), e.code), (Some(handles[0]), 9));
    assert!(
        matches!(e.kind, EventKind::Aborted { reason: Some(ref r) } if r.contains("condor_rm"))
    );
    watcher.stop();
    assert!(pool.cli.query_jobs(&[]).unwrap().is_empty());
    assert_eq!(
        pool.cli.history(&[], None).unwrap()[0].status,
        JobStatus::Removed
    );
    assert_log_matches_htcondor(&spec.log);
}

#[test]
fn clusters_are_numbered_per_pool_and_bad_submit_files_fail() {
    let pool = Pool::new();
    let a = pool.submit(&pool.spec("c1", &["ok 0"]));
    let b = pool.submit(&pool.spec("c2", &["ok 0", "ok 1"]));
    assert_eq!(b[0].cluster, a[0].cluster + 1);
    let bad = pool.root.join("bad.sub");
    std::fs::write(
        &bad,
        "universe = vanilla\ntransfer_inptu_files = x\nqueue\n",
    )
    .unwrap();
    let err = pool.cli.submit(&bad).unwrap_err().to_string();
    assert!(
        err.contains("transfer_inptu_files") && err.contains("bad.sub:2"),
        "{err}"
    );
    let missing = Path::new("/nonexistent/x.sub");
    assert!(pool.cli.submit(missing).is_err());
}
