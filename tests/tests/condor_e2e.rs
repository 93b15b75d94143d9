//! `mw run` / `mw resume` with `interface = "condor"` end to end against the HTCondor pool
//! double (tests/src/condor_double.rs; a TEST DOUBLE, since HTCondor's daemons cannot be
//! installed here): the real `mw`, the real `mw-worker`, file transfer into private execute
//! directories, job event logs, hooks for held and evicted jobs, `condor_rm`, a master killed
//! with SIGKILL and resumed. Every submit file mw wrote is also parsed by HTCondor's own code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{CondorCli, JobStatus};
use mw_tests::condor_double::{condor_check, STATE_ENV};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// No run may take longer than this (a hang fails the test instead of blocking the suite).
const LIMIT: Duration = Duration::from_secs(120);

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["state", "jobs", "progs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Env { _tmp: tmp, root }
    }

    /// The HTCondor doubles under the real tools' names first, then the inherited PATH.
    fn path_var(&self) -> String {
        format!(
            "{}:{}",
            mw_tests::condor_double_path(&self.root).display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn mw(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut c = Command::new(mw_tests::bin("mw"));
        c.args(args)
            .current_dir(&self.root)
            .env("PATH", self.path_var())
            .env(STATE_ENV, self.root.join("state"))
            .env("MW_WORKER", mw_tests::bin("mw-worker"))
            .env("MW_JOBS_DIR", self.root.join("jobs"))
            .env_remove("MW_CONDOR_DOUBLE_HOLD")
            .env_remove("MW_CONDOR_DOUBLE_EVICT_ONCE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        c
    }

    fn cli(&self) -> CondorCli {
        CondorCli::default()
            .with_bin_dir(mw_tests::condor_double_path(&self.root))
            .with_env(STATE_ENV, self.root.join("state"))
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.root.join("progs").join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A job file with `interface = "condor"`.
    fn job(&self, name: &str, program: &Path, inputs: &str, extra: &str) -> PathBuf {
        let p = self.root.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\ninterface = \"condor\"\n{extra}\n[program]\npath = \"{}\"\n\n[inputs]\nlist = {inputs}\n\n[condor]\nbatch_window_secs = 0.2\n",
                program.display()
            ),
        )
        .unwrap();
        p
    }

    /// Every submit description mw wrote under this environment, parsed by HTCondor's own
    /// `htcondor2.Submit`: the values mw relies on and one queue item per task.
    fn check_submit_files(&self) -> usize {
        let mut subs = Vec::new();
        find_files(&self.root.join("jobs"), "sub", &mut subs);
        for sub in &subs {
            let v: serde_json::Value = serde_json::from_str(&condor_check("submit", sub)).unwrap();
            let at = sub.display();
            assert_eq!(v["values"]["universe"], "vanilla", "{at}");
            assert_eq!(v["values"]["should_transfer_files"], "YES", "{at}");
            assert_eq!(
                v["values"]["executable"].as_str().unwrap(),
                mw_tests::bin("mw-worker").display().to_string(),
                "{at}"
            );
            assert_eq!(
                v["values"]["transfer_output_files"], "$(result_bundle)",
                "{at}"
            );
            let items = v["items"].as_array().unwrap();
            let item_file = sub.with_extension("items");
            let lines = std::fs::read_to_string(&item_file).unwrap();
            assert_eq!(items.len(), lines.lines().count(), "{at}");
            for (item, line) in items.iter().zip(lines.lines()) {
                let cols: Vec<&str> = line.split(' ').collect();
                assert_eq!(item["task_index"], cols[0], "{at}");
                assert_eq!(item["result_bundle"], cols[3], "{at}");
                assert!(Path::new(item["task_path"].as_str().unwrap()).is_file());
            }
        }
        assert!(!subs.is_empty(), "mw wrote no submit file");
        subs.len()
    }
}

fn find_files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_files(&p, ext, out);
        } else if p.extension().and_then(|x| x.to_str()) == Some(ext) {
            out.push(p);
        }
    }
}

/// Waits for `child`, killing it (and failing) if it runs longer than [`LIMIT`].
fn finish(child: Child) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if rx.recv_timeout(LIMIT).is_err() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped before `tx` is dropped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    let timed_out = guard.join().unwrap();
    assert!(
        !timed_out,
        "mw hung for more than {LIMIT:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    finish(cmd.borrow_mut().spawn().unwrap())
}

fn result_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// examples/<dir>/job.toml rewritten for Condor with programs from this build.
fn example_job(env: &Env, dir: &str, tasks: u32) -> PathBuf {
    let src = mw_tests::workspace_root()
        .join("examples")
        .join(dir)
        .join("job.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    let bins = mw_tests::bin_dir();
    let mut out = String::from("interface = \"condor\"\n");
    for line in text.lines() {
        let line = line.replace("../../target/release", &bins.display().to_string());
        // Keep the test quick: fewer, smaller tasks.
        let line = match line.split_once(" = ") {
            Some(("seed", _)) => format!("seed = {{ start = 0, end = {tasks} }}"),
            Some(("chunk", _)) => format!("chunk = {{ start = 0, end = {tasks} }}"),
            Some(("points", _)) => "points = [20000]".to_string(),
            _ => line,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("\n[condor]\nbatch_window_secs = 0.2\n");
    let p = env.root.join(format!("{dir}.toml"));
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn monte_pi_completes_and_prints_pi() {
    let env = Env::new();
    let job = example_job(&env, "monte_pi", 6);
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let pi = v["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.1, "{v}");
    assert_eq!(v["points"], 6 * 20000);
    // All six tasks went to the pool in one cluster.
    let ads = env.cli().history(&[], None).unwrap();
    assert_eq!(ads.len(), 6);
    assert!(ads
        .iter()
        .all(|a| a.handle.cluster == ads[0].handle.cluster));
    assert!(ads.iter().all(|a| a.status == JobStatus::Completed));
    env.check_submit_files();
}

#[test]
fn prime_tester_completes() {
    let env = Env::new();
    let job = example_job(&env, "primes", 4);
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.trim().is_empty(), "{}", text(&out));
    // 4 chunks of 5000: the same count the multicore interface computes.
    let mc = run(env.mw(
        &["run", job.to_str().unwrap(), "--interface", "multicore"],
        &[],
    ));
    assert!(mc.status.success(), "{}", text(&mc));
    assert_eq!(stdout, String::from_utf8_lossy(&mc.stdout));
    env.check_submit_files();
}

#[test]
fn task_exiting_non_zero_fails_with_its_stderr() {
    let env = Env::new();
    let p = env.script("fail.sh", "echo 'no good input here' >&2\nexit 3");
    let job = env.job("fails", &p, "[1, 2]", "");
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert!(!out.status.success(), "{}", text(&out));
    let lines = result_lines(&out);
    assert_eq!(lines.len(), 2, "{}", text(&out));
    for l in &lines {
        assert_eq!(l["state"], "failed", "{l}");
        assert_eq!(l["exit"], "exit status 3", "{l}");
        assert!(
            l["error"].as_str().unwrap().contains("no good input here"),
            "{l}"
        );
    }
    env.check_submit_files();
}

#[test]
fn task_killed_by_a_signal_fails_naming_it() {
    let env = Env::new();
    // The program kills itself (the worker reports it) ...
    let own = env.script("segv.sh", "kill -SEGV $$");
    let job = env.job("segv", &own, "[1]", "");
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    let l = &result_lines(&out)[0];
    assert_eq!(l["state"], "failed", "{}", text(&out));
    assert_eq!(l["exit"], "killed by signal 11", "{l}");
    // ... or kills mw-worker itself: HTCondor sees an abnormal termination.
    // (An empty result file is left in the job's sandbox first, so output transfer works and
    // the pool reports the signal rather than a transfer hold.)
    let worker = env.script(
        "kill-worker.sh",
        "for t in \"$_CONDOR_SCRATCH_DIR\"/task-*.mwt; do : > \"${t%.mwt}.result\"; done\nkill -KILL $PPID\nexit 0",
    );
    let job = env.job("killworker", &worker, "[1]", "");
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    let l = &result_lines(&out)[0];
    assert_eq!(l["state"], "failed", "{}", text(&out));
    let e = l["error"].as_str().unwrap();
    assert!(e.contains("killed by signal 9 (SIGKILL)"), "{e}");
    env.check_submit_files();
}

#[test]
fn held_job_fails_with_the_hold_reason_and_is_removed() {
    let env = Env::new();
    let p = env.script("ok.sh", "echo 1");
    let job = env.job("held", &p, "[1]", "");
    let out = run(env.mw(
        &["run", job.to_str().unwrap()],
        &[("MW_CONDOR_DOUBLE_HOLD", "all")],
    ));
    assert!(!out.status.success(), "{}", text(&out));
    let l = &result_lines(&out)[0];
    assert_eq!(l["state"], "failed", "{l}");
    let e = l["error"].as_str().unwrap();
    assert!(
        e.contains("was held: via MW_CONDOR_DOUBLE_HOLD (test hook)"),
        "{e}"
    );
    assert!(e.contains("hold code 1"), "{e}");
    assert!(e.contains("removed it with condor_rm"), "{e}");
    // It left the queue as removed.
    let ads = env.cli().history(&[], None).unwrap();
    assert_eq!(ads[0].status, JobStatus::Removed);
    env.check_submit_files();
}

#[test]
fn aborted_job_fails_and_mw_does_not_hang() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let p = env.script(
        "block.sh",
        &format!(
            "while [ ! -f {} ]; do sleep 0.2; done\necho 1",
            gate.display()
        ),
    );
    let job = env.job("aborted", &p, "[1]", "");
    let child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    // Wait (bounded) until the job runs in the pool, then remove it behind mw's back.
    let cli = env.cli();
    let t0 = Instant::now();
    let handle = loop {
        let ads = cli.query_jobs(&[]).unwrap();
        if let Some(a) = ads.iter().find(|a| a.status == JobStatus::Running) {
            break a.handle;
        }
        assert!(t0.elapsed() < LIMIT, "the job never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    cli.remove(&[handle]).unwrap();
    let out = finish(child);
    std::fs::write(&gate, "").unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let l = &result_lines(&out)[0];
    assert_eq!(l["state"], "failed", "{l}");
    let e = l["error"].as_str().unwrap();
    assert!(e.contains(&format!("job {handle}")), "{e}");
    assert!(
        e.contains("removed from the queue (aborted: via condor_rm"),
        "{e}"
    );
    env.check_submit_files();
}

#[test]
fn evicted_job_runs_again_and_completes() {
    let env = Env::new();
    let job = example_job(&env, "monte_pi", 2);
    let out = run(env.mw(
        &["run", job.to_str().unwrap()],
        &[("MW_CONDOR_DOUBLE_EVICT_ONCE", "all")],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"pi\""));
    let mut logs = Vec::new();
    find_files(&env.root.join("jobs"), "log", &mut logs);
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert_eq!(log.lines().filter(|l| l.starts_with("004 (")).count(), 2);
    assert_eq!(
        log.matches("Normal termination (return value 0)").count(),
        2
    );
    env.check_submit_files();
}

#[test]
fn missing_or_corrupt_result_bundle_is_a_clear_task_error() {
    let env = Env::new();
    let p = env.script("ok.sh", "echo 1");
    // A worker that writes no result bundle: the pool holds the job (output transfer failure).
    let none = env.script("no-result-worker", "exit 0");
    let job = env.job("noresult", &p, "[1]", "");
    let none_s = none.display().to_string();
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[("MW_WORKER", &none_s)]));
    let l = &result_lines(&out)[0];
    assert_eq!(l["state"], "failed", "{}", text(&out));
    let e = l["error"].as_str().unwrap();
    assert!(e.contains("Transfer output files failure"), "{e}");
    // A worker that writes garbage as the result bundle.
    let bad = env.script("bad-result-worker", "echo 'not a bundle' > \"$7\"\nexit 0");
    let job = env.job("badresult", &p, "[1]", "");
    let bad_s = bad.display().to_string();
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[("MW_WORKER", &bad_s)]));
    let l = &result_lines(&out)[0];
    assert_eq!(l["state"], "failed", "{}", text(&out));
    let e = l["error"].as_str().unwrap();
    assert!(e.contains("bad result bundle"), "{e}");
    assert!(e.contains(".result"), "{e}");
}

#[test]
fn resume_after_sigkill_collects_every_result_exactly_once() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    // Tasks 0-2 finish at once; 3-5 wait for the gate, so they are in flight at the kill.
    let p = env.script(
        "gated.sh",
        &format!(
            "read -r n\nif [ \"$n\" -ge 3 ]; then while [ ! -f {gate} ]; do sleep 0.1; done; fi\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            gate = gate.display(),
            log = log.display()
        ),
    );
    let job = env.job("resumed", &p, "[0, 1, 2, 3, 4, 5]", "");
    let mut child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    let job_dir = env.root.join("jobs/resumed-1");
    let status = |env: &Env| -> serde_json::Value {
        let out = run(env.mw(&["status", "resumed-1", "--json"], &[]));
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let t0 = Instant::now();
    loop {
        if job_dir.exists() {
            let s = status(&env);
            if s.to_string().contains("\"done\":3") {
                break;
            }
        }
        assert!(t0.elapsed() < LIMIT, "three tasks never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL: no clean-up at all
    child.wait().unwrap();
    std::fs::write(&gate, "").unwrap();
    let out = run(env.mw(&["resume", "resumed-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 to re-attach"),
        "{}",
        text(&out)
    );
    let out = run(env.mw(&["results", "resumed-1"], &[]));
    let lines = result_lines(&out);
    assert_eq!(lines.len(), 6, "{}", text(&out));
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], i as u64 * 10, "{l}");
    }
    let mut ran: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    ran.sort();
    assert_eq!(ran, vec![0, 1, 2, 3, 4, 5], "each task ran exactly once");
    // Still one cluster: nothing was submitted again.
    let ads = env.cli().history(&[], None).unwrap();
    assert_eq!(ads.len(), 6);
    env.check_submit_files();
}

#[test]
fn status_tells_jobs_idle_in_the_pool_from_running_ones() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let p = env.script(
        "gated.sh",
        &format!(
            "read -r n\nwhile [ ! -f {gate} ]; do sleep 0.1; done\necho \"$n\"",
            gate = gate.display()
        ),
    );
    let counts = |id: &str| -> serde_json::Value {
        let out = run(env.mw(&["status", id, "--json"], &[]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["job"]["counts"].clone()
    };
    let wait_for = |id: &str, what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        let t0 = Instant::now();
        loop {
            let c = counts(id);
            if ok(&c) {
                return;
            }
            assert!(t0.elapsed() < LIMIT, "{id}: never {what}; last counts {c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Jobs the pool keeps idle (the double's hook: submitted, 000 events, never started).
    let job = env.job("waiting", &p, "[1, 2, 3]", "");
    let progress = env.root.join("waiting.stderr");
    let mut child = env
        .mw(
            &["run", job.to_str().unwrap()],
            &[("MW_CONDOR_DOUBLE_NO_RUN", "1")],
        )
        .stderr(std::fs::File::create(&progress).unwrap())
        .spawn()
        .unwrap();
    wait_for("waiting-1", "idle 3 running 0", &|c| {
        c["idle"] == 3 && c["running"] == 0 && c["queued"] == 0
    });
    // The progress line (every 2 s when piped) says so too.
    let t0 = Instant::now();
    while !std::fs::read_to_string(&progress)
        .unwrap()
        .contains("queued 0 idle 3 running 0 ")
    {
        assert!(
            t0.elapsed() < LIMIT,
            "no progress line with idle 3: {}",
            std::fs::read_to_string(&progress).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = run(env.mw(&["status"], &[]));
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("waiting-1"))
        .unwrap()
        .split_whitespace()
        .collect();
    // Every cell of this row is one word, so columns line up with the header's words.
    assert_eq!(header.len(), row.len(), "{table}");
    let col = |name: &str| {
        let i = header.iter().position(|h| *h == name);
        row[i.unwrap_or_else(|| panic!("no {name} column:\n{table}"))]
    };
    assert_eq!((col("IDLE"), col("RUNNING")), ("3", "0"), "{table}");
    child.kill().unwrap();
    child.wait().unwrap();
    // A master that is gone says nothing of the pool.
    wait_for("waiting-1", "without pool counts", &|c| {
        c.is_object() && c.get("idle").is_none()
    });

    // Jobs that execute: running, none idle.
    let job = env.job("executing", &p, "[1, 2, 3]", "");
    let child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    wait_for("executing-1", "idle 0 running 3", &|c| {
        c["idle"] == 0 && c["running"] == 3
    });
    std::fs::write(&gate, "").unwrap();
    let out = finish(child);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(result_lines(&out).len(), 3, "{}", text(&out));
    // Nothing about the pool is left once the run is over.
    assert!(!env.root.join("jobs/executing-1/pool-status.json").exists());
    let c = counts("executing-1");
    assert!(c.get("idle").is_none() && c["done"] == 3, "{c}");
}

#[test]
fn mw_condor_prints_a_submit_file_htcondor_reads_as_printed() {
    let env = Env::new();
    let job = example_job(&env, "monte_pi", 3);
    let mw_condor = |extra: &[&str]| {
        let mut args = vec!["submit-file"];
        args.extend_from_slice(extra);
        args.push(job.to_str().unwrap());
        run(Command::new(mw_tests::bin("mw-condor"))
            .args(&args)
            .current_dir(&env.root)
            .env("MW_WORKER", mw_tests::bin("mw-worker"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()))
    };
    let out = mw_condor(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let sub = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(sub.contains("universe                = vanilla"), "{sub}");
    assert!(sub.contains("queue task_index"), "{sub}");
    // Saved where nothing else is: HTCondor's own parser reads it as printed.
    let elsewhere = env.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let path = elsewhere.join("preview.sub");
    std::fs::write(&path, sub.as_bytes()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&condor_check("submit", &path)).unwrap();
    assert_eq!(v["values"]["transfer_executable"], "true");
    assert_eq!(
        v["values"]["executable"].as_str().unwrap(),
        mw_tests::bin("mw-worker").display().to_string()
    );
    assert!(v["qargs"].as_str().unwrap().contains(" from "), "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{v}");
    // The inline items are the item file `mw` writes (`--items`), one job per task.
    let lines = String::from_utf8_lossy(&mw_condor(&["--items"]).stdout).into_owned();
    assert_eq!(lines.lines().count(), 3, "{lines}");
    for (i, (item, line)) in items.iter().zip(lines.lines()).enumerate() {
        let cols: Vec<&str> = line.split(' ').collect();
        assert_eq!(item["task_index"], i.to_string(), "{v}");
        assert_eq!(item["task_index"], cols[0], "{v}");
        assert_eq!(item["task_path"], cols[1], "{v}");
        assert_eq!(item["result_bundle"], cols[3], "{v}");
    }
    // A preview writes nothing.
    let mut written = Vec::new();
    find_files(&env.root, "items", &mut written);
    assert!(written.is_empty(), "{written:?}");
    assert!(!env.root.join("mw-jobs").exists());
}

/// Benchmark, not a check (run by bench/condor.sh): parses the job event log named by
/// `MW_BENCH_LOG` with condor-kit's follower and prints events/s.
#[test]
#[ignore]
fn bench_log_follower() {
    let log = PathBuf::from(std::env::var("MW_BENCH_LOG").unwrap());
    let bytes = std::fs::metadata(&log).unwrap().len();
    let t0 = Instant::now();
    let polled = mw_condor_kit::LogFollower::new(&log).poll().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(polled.bad_records.is_empty());
    let n = polled.events.len();
    assert!(n > 0);
    println!(
        "log follower: {n} events ({:.1} MB) in {secs:.3} s = {:.0} events/s",
        bytes as f64 / 1e6,
        n as f64 / secs
    );
}
