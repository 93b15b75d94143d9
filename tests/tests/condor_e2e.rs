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
    mw_tests::finish_within(child, LIMIT)
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

// ---- Task packing (`[condor] tasks_per_job`) ----

/// A job file like [`Env::job`] whose `[condor]` table packs `per` tasks per job.
fn packed_job(env: &Env, name: &str, program: &Path, inputs: &str, per: usize) -> PathBuf {
    let p = env.job(name, program, inputs, "");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(&format!("tasks_per_job = {per}\n"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `mw status JOB --json`'s counts (empty before the job exists).
fn counts(env: &Env, job: &str) -> serde_json::Value {
    let out = run(env.mw(&["status", job, "--json"], &[]));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["job"]["counts"].clone())
        .unwrap_or_default()
}

/// Polls (bounded) until `pred` holds for the job's counts.
fn wait_counts(env: &Env, job: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let t0 = Instant::now();
    while !pred(&counts(env, job)) {
        assert!(t0.elapsed() < LIMIT, "{job}: never reached: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many times the master reported each task final (a `done`, `failed` or `cancelled`
/// event in the journal: one per report, even a repeated one).
fn reports(env: &Env, job: &str) -> std::collections::BTreeMap<u64, usize> {
    let path = env.root.join("jobs").join(job).join("journal.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare("SELECT task FROM events WHERE kind IN ('done', 'failed', 'cancelled')")
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for t in stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap() {
        *out.entry(t.unwrap() as u64).or_insert(0) += 1;
    }
    out
}

/// No task of `0..n` was reported more than once: a report is a final event (`done`,
/// `failed`, `cancelled`) in the journal, so a second report of a task would show as a second
/// event. (The callers check separately that every task has its one outcome.)
fn assert_reported_at_most_once(r: &std::collections::BTreeMap<u64, usize>, n: u64) {
    assert!(r.keys().all(|t| *t < n), "reports of unknown tasks: {r:?}");
    assert!(r.values().all(|c| *c == 1), "a task reported twice: {r:?}");
}

/// The task indices of result lines, sorted.
fn tasks_of(lines: &[serde_json::Value]) -> Vec<u64> {
    let mut t: Vec<u64> = lines.iter().map(|l| l["task"].as_u64().unwrap()).collect();
    t.sort();
    t
}

/// The tasks a program logged to `log` (one index per line), sorted.
fn executions(log: &Path) -> Vec<u64> {
    let mut ran: Vec<u64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    ran.sort();
    ran
}

/// Six tasks in packs of three: two jobs; the task that fails fails alone, with its own
/// exit status and stderr, and the other five succeed.
#[test]
fn pack_with_a_failing_task_keeps_its_neighbours_results() {
    let env = Env::new();
    let p = env.script(
        "fail4.sh",
        "read -r n\nif [ \"$n\" -eq 4 ]; then echo \"task four is broken\" >&2; exit 3; fi\necho \"$((n * 10))\"",
    );
    let job = packed_job(&env, "packfail", &p, "[0, 1, 2, 3, 4, 5]", 3);
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = result_lines(&out);
    assert_eq!(tasks_of(&lines), [0, 1, 2, 3, 4, 5], "{}", text(&out));
    for l in &lines {
        let n = l["task"].as_u64().unwrap();
        if n == 4 {
            assert_eq!(l["state"], "failed", "{l}");
            assert_eq!(l["exit"], "exit status 3", "{l}");
            assert!(
                l["error"].as_str().unwrap().contains("task four is broken"),
                "{l}"
            );
        } else {
            assert_eq!(l["state"], "done", "{l}");
            assert_eq!(l["output"], n * 10, "{l}");
        }
    }
    // Two jobs (packs of three), in one cluster.
    let ads = env.cli().history(&[], None).unwrap();
    assert_eq!(ads.len(), 2, "{ads:?}");
    assert!(ads.iter().all(|a| a.status == JobStatus::Completed));
    let mut packs = Vec::new();
    find_files(&env.root.join("jobs"), "mwt", &mut packs);
    assert_eq!(packs.len(), 2, "{packs:?}");
    assert!(packs.iter().all(|p| p
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("pack-")));
    env.check_submit_files();
}

/// Cancelling one task of a running pack: it is reported cancelled at once, while its pack
/// still runs; its neighbours finish; the result it still produced is ignored.
#[test]
fn cancel_of_one_task_inside_a_running_pack() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    let p = env.script(
        "gated.sh",
        &format!(
            "read -r n\nwhile [ ! -f {gate} ]; do sleep 0.1; done\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            gate = gate.display(),
            log = log.display()
        ),
    );
    let job = packed_job(&env, "packcancel", &p, "[0, 1, 2]", 3);
    let child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    // Wait (bounded) until the pack's job runs in the pool.
    let cli = env.cli();
    let t0 = Instant::now();
    while !cli
        .query_jobs(&[])
        .unwrap()
        .iter()
        .any(|a| a.status == JobStatus::Running)
    {
        assert!(t0.elapsed() < LIMIT, "the pack never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = run(env.mw(&["cancel", "packcancel-1", "--task", "1"], &[]));
    assert!(c.status.success(), "{}", text(&c));
    // Reported cancelled while the pack (held at the gate) still runs.
    wait_counts(&env, "packcancel-1", "task 1 cancelled", |c| {
        c["cancelled"] == 1
    });
    assert!(!gate.exists());
    assert_eq!(counts(&env, "packcancel-1")["done"], 0);
    assert!(cli
        .query_jobs(&[])
        .unwrap()
        .iter()
        .any(|a| a.status == JobStatus::Running));
    std::fs::write(&gate, "").unwrap();
    let out = finish(child);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = result_lines(&out);
    assert_eq!(tasks_of(&lines), [0, 1, 2], "{}", text(&out));
    for l in &lines {
        match l["task"].as_u64().unwrap() {
            1 => assert_eq!(l["state"], "cancelled", "{l}"),
            n => {
                assert_eq!(l["state"], "done", "{l}");
                assert_eq!(l["output"], n * 10, "{l}");
            }
        }
    }
    // The pack ran all three (one job); task 1's result came back and was ignored.
    assert_eq!(executions(&log), [0, 1, 2]);
    let ads = env.cli().history(&[], None).unwrap();
    assert_eq!(ads.len(), 1);
    assert_eq!(ads[0].status, JobStatus::Completed);
}

/// The master is killed (SIGKILL) with packs in flight, then `mw resume`: one pack was
/// done, the other still ran; the resumed master re-attaches the running pack, and every
/// task is reported exactly once (across both runs) and ran exactly once. Packs of 20: the
/// resumed master re-attaches a pack's members one by one, and the pack result must be read
/// for a member that finds the pack ended with only a few members re-attached (it was once
/// refused as "over the limit of entries" and all its tasks failed).
#[test]
fn resume_after_sigkill_with_packs_in_flight() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    let p = env.script(
        "gated.sh",
        &format!(
            "read -r n\nif [ \"$n\" -ge 20 ]; then while [ ! -f {gate} ]; do sleep 0.1; done; fi\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            gate = gate.display(),
            log = log.display()
        ),
    );
    let job = packed_job(&env, "packresume", &p, &list(40), 20);
    let mut child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    wait_counts(&env, "packresume-1", "the first pack done", |c| {
        c["done"] == 20
    });
    child.kill().unwrap(); // SIGKILL: no clean-up at all
    let first = child.wait_with_output().unwrap();
    std::fs::write(&gate, "").unwrap();
    // Both packs' jobs end in the pool before the master resumes: the running pack is
    // re-attached after it came back.
    let t0 = Instant::now();
    while env.cli().history(&[], None).unwrap().len() < 2 {
        assert!(t0.elapsed() < LIMIT, "the second pack never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(env.mw(&["resume", "packresume-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("20 to re-attach"),
        "{}",
        text(&out)
    );
    // Reported once each, across both masters (what the killed one printed, if its output
    // got out before the kill, is of the first pack only).
    assert_reported_at_most_once(&reports(&env, "packresume-1"), 40);
    let printed = tasks_of(&result_lines(&first));
    assert!(printed.iter().all(|t| *t < 20), "{printed:?}");
    let all = result_lines(&run(env.mw(&["results", "packresume-1"], &[])));
    assert_eq!(all.len(), 40);
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], i as u64 * 10, "{l}");
        assert_eq!(l["attempts"], 1, "{l}");
    }
    assert_eq!(
        executions(&log),
        (0..40).collect::<Vec<u64>>(),
        "each task ran once"
    );
    // Nothing was submitted again: two packs, two jobs.
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 2);
    env.check_submit_files();
}

/// `mw resume` replays a pack job's log in which a shadow exception (007: HTCondor put the
/// job back to idle) comes before its termination (005), the job having left the queue by
/// then. The 007 alone once ended the job (`condor_q` no longer listed it) and failed every
/// member before the 005 was read; now `condor_history` says how the job ended.
#[test]
fn resume_replays_a_shadow_exception_before_the_job_terminated() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    let p = env.script(
        "gated.sh",
        &format!(
            "read -r n\nwhile [ ! -f {gate} ]; do sleep 0.1; done\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            gate = gate.display(),
            log = log.display()
        ),
    );
    let job = packed_job(&env, "packshadow", &p, "[0, 1, 2]", 3);
    let mut child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    let cli = env.cli();
    let t0 = Instant::now();
    while !cli
        .query_jobs(&[])
        .unwrap()
        .iter()
        .any(|a| a.status == JobStatus::Running)
    {
        assert!(t0.elapsed() < LIMIT, "the pack never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(&gate, "").unwrap();
    while cli.history(&[], None).unwrap().is_empty() {
        assert!(t0.elapsed() < LIMIT, "the pack never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The 007 HTCondor writes when a shadow fails, just before the 005.
    let mut logs = Vec::new();
    find_files(&env.root.join("jobs"), "log", &mut logs);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let events = std::fs::read_to_string(&logs[0]).unwrap();
    let at = events.find("005 (").expect("a 005 event");
    let header = &events[at..at + events[at..].find(" Job terminated.").unwrap()];
    let shadow = format!(
        "007{} Shadow exception!\n\tError from slot1@vm: the shadow lost the starter\n\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n...\n",
        &header[3..]
    );
    std::fs::write(
        &logs[0],
        format!("{}{shadow}{}", &events[..at], &events[at..]),
    )
    .unwrap();
    let out = run(env.mw(&["resume", "packshadow-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_reported_at_most_once(&reports(&env, "packshadow-1"), 3);
    let all = result_lines(&run(env.mw(&["results", "packshadow-1"], &[])));
    assert_eq!(all.len(), 3);
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], i as u64 * 10, "{l}");
    }
    assert_eq!(executions(&log), [0, 1, 2], "each task ran once");
}

/// `[0, 1, ..., n - 1]` as a job file's input list.
fn list(n: u64) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// Cancelling most tasks of a running pack of 20: the three left get their results from the
/// pack result, which holds 20 (it was once refused for holding more entries than the
/// members still waiting, and the three failed).
#[test]
fn cancel_of_most_tasks_inside_a_running_pack() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let p = env.script(
        "gated.sh",
        &format!(
            "read -r n\nwhile [ ! -f {gate} ]; do sleep 0.1; done\necho \"$((n * 10))\"",
            gate = gate.display(),
        ),
    );
    let job = packed_job(&env, "packcancels", &p, &list(20), 20);
    let child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    let cli = env.cli();
    let t0 = Instant::now();
    while !cli
        .query_jobs(&[])
        .unwrap()
        .iter()
        .any(|a| a.status == JobStatus::Running)
    {
        assert!(t0.elapsed() < LIMIT, "the pack never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in 1..=17 {
        let c = run(env.mw(&["cancel", "packcancels-1", "--task", &t.to_string()], &[]));
        assert!(c.status.success(), "{}", text(&c));
    }
    wait_counts(&env, "packcancels-1", "17 tasks cancelled", |c| {
        c["cancelled"] == 17
    });
    std::fs::write(&gate, "").unwrap();
    let out = finish(child);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = result_lines(&out);
    assert_eq!(
        tasks_of(&lines),
        (0..20).collect::<Vec<u64>>(),
        "{}",
        text(&out)
    );
    for l in &lines {
        match l["task"].as_u64().unwrap() {
            1..=17 => assert_eq!(l["state"], "cancelled", "{l}"),
            n => {
                assert_eq!(l["state"], "done", "{l}");
                assert_eq!(l["output"], n * 10, "{l}");
            }
        }
    }
}

/// Killed in the exact window after `condor_submit` of the packs returned and before their
/// cluster id was recorded (`MW_CRASH_AT=condor-after-submit`): the tasks' journaled
/// handles name only the batch; `mw resume` finds the cluster by `+MwBatch`, re-attaches
/// both packs, and every task runs and is reported exactly once.
#[test]
fn crash_right_after_submitting_packs_then_resume() {
    crash_at_submitting_packs_then_resume("condor-after-submit");
}

/// Killed in the window after the packs' `submitting:` handles were journaled and before
/// `condor_submit` ran (`MW_CRASH_AT=condor-before-submit`): no cluster exists; `mw resume`
/// finds none by `+MwBatch`, submits the packs itself, and every task runs and is reported
/// exactly once.
#[test]
fn crash_right_before_submitting_packs_then_resume() {
    crash_at_submitting_packs_then_resume("condor-before-submit");
}

fn crash_at_submitting_packs_then_resume(point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let log = env.root.join("executions.log");
    let p = env.script(
        "logged.sh",
        &format!(
            "read -r n\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            log = log.display()
        ),
    );
    let job = packed_job(&env, "packcrash", &p, "[0, 1, 2, 3, 4]", 3);
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[("MW_CRASH_AT", point)]));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(result_lines(&out).is_empty());
    if point == "condor-before-submit" {
        assert!(
            env.cli().query_jobs(&[]).unwrap().is_empty(),
            "no job queued"
        );
        assert!(
            env.cli().history(&[], None).unwrap().is_empty(),
            "no job ran"
        );
    }
    let out = run(env.mw(&["resume", "packcrash-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("5 to re-attach"),
        "{}",
        text(&out)
    );
    five_times_ten_ran_once_in_two_packs(&env, "packcrash-1", &log);
}

/// Killed right after the first outcome was handed to the master, before it was committed
/// (`MW_CRASH_AT=condor-result-delivered`). A window safe by construction: the result file
/// stays in the batch directory, so `mw resume` re-attaches the task and reads it again;
/// every task is reported and run exactly once and nothing is submitted again.
#[test]
fn crash_right_after_a_result_is_delivered_then_resume() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let log = env.root.join("executions.log");
    let p = env.script(
        "logged.sh",
        &format!(
            "read -r n\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            log = log.display()
        ),
    );
    let job = env.job("delivered", &p, "[0, 1, 2]", "");
    let out = run(env.mw(
        &["run", job.to_str().unwrap()],
        &[("MW_CRASH_AT", "condor-result-delivered")],
    ));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(result_lines(&out).is_empty(), "{}", text(&out));
    let t0 = Instant::now();
    while env.cli().history(&[], None).unwrap().len() < 3 {
        assert!(t0.elapsed() < LIMIT, "the jobs never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(env.mw(&["resume", "delivered-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_reported_at_most_once(&reports(&env, "delivered-1"), 3);
    let lines = result_lines(&run(env.mw(&["results", "delivered-1"], &[])));
    assert_eq!(tasks_of(&lines), [0, 1, 2]);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], l["task"].as_u64().unwrap() * 10, "{l}");
        assert_eq!(l["attempts"], 1, "{l}");
    }
    assert_eq!(executions(&log), [0, 1, 2], "each task ran once");
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 3);
}

/// A resumed master killed right after it resolved a `submitting:` handle to its cluster
/// (`MW_CRASH_AT=condor-reattach-resolved`), the first master having been killed before it
/// recorded the cluster (`condor-after-submit`). Safe by construction: the next resume
/// resolves the batch name again, to the same cluster; every task is reported and run once
/// and nothing is submitted again.
#[test]
fn resume_killed_after_resolving_a_submitted_batch_then_resume_again() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let log = env.root.join("executions.log");
    let p = env.script(
        "logged.sh",
        &format!(
            "read -r n\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            log = log.display()
        ),
    );
    let job = packed_job(&env, "resolved", &p, "[0, 1, 2, 3, 4]", 3);
    let out = run(env.mw(
        &["run", job.to_str().unwrap()],
        &[("MW_CRASH_AT", "condor-after-submit")],
    ));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let out = run(env.mw(
        &["resume", "resolved-1"],
        &[("MW_CRASH_AT", "condor-reattach-resolved")],
    ));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let out = run(env.mw(&["resume", "resolved-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    five_times_ten_ran_once_in_two_packs(&env, "resolved-1", &log);
}

/// After a resume: job `job`'s 5 tasks (`times10.sh`, packs of 3) were each reported at
/// most once, are all done with 10 times their input, each ran once (`log`), in the two
/// packs submitted once.
fn five_times_ten_ran_once_in_two_packs(env: &Env, job: &str, log: &Path) {
    assert_reported_at_most_once(&reports(env, job), 5);
    let lines = result_lines(&run(env.mw(&["results", job], &[])));
    assert_eq!(tasks_of(&lines), [0, 1, 2, 3, 4]);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], l["task"].as_u64().unwrap() * 10, "{l}");
    }
    let t0 = Instant::now();
    while executions(log).len() < 5 {
        assert!(t0.elapsed() < LIMIT, "not every task ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(executions(log), [0, 1, 2, 3, 4], "each task ran once");
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 2);
}

/// A worker that hands back `result` (a pack result bundle, kept as `<name>.tar.gz`) for
/// the first pack (`pack-0.mwt`) and runs every other bundle for real.
fn worker_returning_for_first_pack(
    env: &Env,
    name: &str,
    result: mw_bundle::BundleBuilder,
) -> PathBuf {
    let file = env.root.join(format!("{name}.tar.gz"));
    result.write_to(&file).unwrap();
    env.script(
        &format!("{name}-worker"),
        &format!(
            "case \"$5\" in\n  pack-0.mwt) cp {file} \"$7\"; exit 0 ;;\nesac\nexec {real} \"$@\"",
            file = file.display(),
            real = mw_tests::bin("mw-worker").display()
        ),
    )
}

/// A result bundle for job `job`, task `task`, exit 0 with `stdout`.
fn forged_result(job: &str, task: u64, stdout: &str) -> Vec<u8> {
    mw_tests::result_bundle(job, task, 0, stdout)
}

/// The pool returns a forged pack result for the pack of tasks 0-2: task 0's result is
/// genuine-looking, the member named for task 1 is task 4's result (misfiled), task 2 has no
/// result, and it adds a result for task 3, which belongs to the other pack. Task 0 gets its
/// result, task 1 fails as forged, task 2 runs again in a later job, and the foreign result
/// never reaches task 3, whose own pack delivers its real result.
#[test]
fn forged_inner_results_are_refused() {
    use mw_bundle::{pack_result_member, BundleBuilder, PackResultInfo};
    let env = Env::new();
    let p = env.script("times10.sh", "read -r n\necho \"$((n * 10))\"");
    let mut b = BundleBuilder::pack_result(
        PackResultInfo {
            job: "forged-1".into(),
            host: "forger".into(),
            tasks: vec![0, 1, 3],
            not_run: vec![],
        },
        "forged pack result",
    );
    b.add_bytes(
        &pack_result_member(0),
        forged_result("forged-1", 0, "0"),
        false,
    )
    .unwrap();
    b.add_bytes(
        &pack_result_member(1),
        forged_result("forged-1", 4, "666"),
        false,
    )
    .unwrap();
    b.add_bytes(
        &pack_result_member(3),
        forged_result("forged-1", 3, "666"),
        false,
    )
    .unwrap();
    // The worker forges the first pack's result and runs everything else for real.
    let worker = worker_returning_for_first_pack(&env, "forged", b);
    let job = packed_job(&env, "forged", &p, "[0, 1, 2, 3, 4, 5]", 3);
    let w = worker.display().to_string();
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[("MW_WORKER", &w)]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = result_lines(&out);
    assert_eq!(tasks_of(&lines), [0, 1, 2, 3, 4, 5], "{}", text(&out));
    for l in &lines {
        match l["task"].as_u64().unwrap() {
            1 => {
                assert_eq!(l["state"], "failed", "{l}");
                let e = l["error"].as_str().unwrap();
                assert!(e.contains("forged or misfiled result"), "{e}");
                assert!(e.contains("it is for task 4"), "{e}");
            }
            n => {
                assert_eq!(l["state"], "done", "{l}");
                assert_eq!(l["output"], n * 10, "{l}");
            }
        }
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without a result for task 2"),
        "{}",
        text(&out)
    );
    // Two packs, and task 2 once more on its own.
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 3);
}

/// A pack comes back without task 2's result and the master is killed right after it put
/// task 2 back in its queue, in memory only (`MW_CRASH_AT=condor-pack-requeued`). Safe by
/// construction: task 2's journaled handle still names the pack's job, whose pack result
/// stays in the batch directory; `mw resume` re-attaches the three tasks, reads it again,
/// takes tasks 0 and 1 from it (unless they were committed before the kill) and runs task 2
/// in a job of its own. Every task is reported once.
#[test]
fn crash_right_after_a_pack_member_is_requeued_then_resume() {
    use mw_bundle::{pack_result_member, BundleBuilder, PackResultInfo};
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let p = env.script("times10.sh", "read -r n\necho \"$((n * 10))\"");
    let mut b = BundleBuilder::pack_result(
        PackResultInfo {
            job: "requeued-1".into(),
            host: "partial".into(),
            tasks: vec![0, 1],
            not_run: vec![],
        },
        "pack result without task 2",
    );
    for t in [0u64, 1] {
        let out = (t * 10).to_string();
        b.add_bytes(
            &pack_result_member(t),
            forged_result("requeued-1", t, &out),
            false,
        )
        .unwrap();
    }
    let worker = worker_returning_for_first_pack(&env, "partial", b);
    let job = packed_job(&env, "requeued", &p, "[0, 1, 2]", 3);
    let w = worker.display().to_string();
    let out = run(env.mw(
        &["run", job.to_str().unwrap()],
        &[("MW_WORKER", &w), ("MW_CRASH_AT", "condor-pack-requeued")],
    ));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    // Only the pack was submitted.
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 1);
    let out = run(env.mw(&["resume", "requeued-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_reported_at_most_once(&reports(&env, "requeued-1"), 3);
    let lines = result_lines(&run(env.mw(&["results", "requeued-1"], &[])));
    assert_eq!(tasks_of(&lines), [0, 1, 2]);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], l["task"].as_u64().unwrap() * 10, "{l}");
    }
    // The pack, and task 2 once more on its own.
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 2);
}

/// `target_job_secs`: one task goes alone first (the probe); the others wait for its run
/// time and then go in packs sized to the target, never larger than `tasks_per_job`.
#[test]
fn target_job_secs_probes_then_packs_by_measured_run_time() {
    let env = Env::new();
    let p = env.script("nap.sh", "read -r n\nsleep 0.1\necho \"$n\"");
    let job = packed_job(
        &env,
        "target",
        &p,
        &format!("{:?}", (0..21).collect::<Vec<_>>()),
        8,
    );
    let mut toml = std::fs::read_to_string(&job).unwrap();
    toml.push_str("target_job_secs = 2.0\n");
    std::fs::write(&job, toml).unwrap();
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(result_lines(&out).len(), 21);
    let batches = env.root.join("jobs/target-1/staging/condor");
    let mut first = Vec::new();
    find_files(&batches.join("batch-1"), "mwt", &mut first);
    assert_eq!(first.len(), 1, "the probe goes alone: {first:?}");
    assert!(first[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("task-"));
    // The rest: packs of at most 8 tasks (2 s / ~0.1 s per task, bounded by 8).
    let mut later = Vec::new();
    for e in std::fs::read_dir(&batches).unwrap().flatten() {
        if e.file_name() != "batch-1" {
            find_files(&e.path(), "mwt", &mut later);
        }
    }
    let mut packed = 0;
    for p in &later {
        let m = mw_bundle::read_manifest(p, &mw_bundle::Limits::default()).unwrap();
        let n = m.pack.map_or(1, |p| p.tasks.len());
        assert!((1..=8).contains(&n), "{}: {n} tasks", p.display());
        packed += n;
    }
    assert_eq!(packed, 20);
    assert!(later.len() <= 10, "{} jobs for 20 tasks", later.len());
}

/// A streaming program (`[program] mode = "stream"`) in packs of three: each pack runs
/// through one long-lived process of it; the task it answers with an error and the task on
/// which it dies fail alone; every other task gets its answer.
#[test]
fn streaming_program_runs_a_pack_through_one_process() {
    let env = Env::new();
    let starts = env.root.join("starts");
    let p = env.script(
        "stream.sh",
        &format!(
            "echo started >> {starts}\nwhile read -r n; do\n  case $n in\n    1) echo '{{\"error\": \"one is bad\"}}' ;;\n    4) echo 'four kills me' >&2; exit 9 ;;\n    *) echo $((n * 10)) ;;\n  esac\ndone",
            starts = starts.display()
        ),
    );
    let job = env.root.join("streampack.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"streampack\"\ninterface = \"condor\"\n[program]\npath = \"{}\"\nmode = \"stream\"\n[inputs]\nlist = [0, 1, 2, 3, 4, 5]\n[condor]\nbatch_window_secs = 0.2\ntasks_per_job = 3\n",
            p.display()
        ),
    )
    .unwrap();
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = result_lines(&out);
    assert_eq!(tasks_of(&lines), [0, 1, 2, 3, 4, 5], "{}", text(&out));
    for l in &lines {
        match l["task"].as_u64().unwrap() {
            1 => {
                assert_eq!(l["state"], "failed", "{l}");
                assert!(l["error"].as_str().unwrap().contains("one is bad"), "{l}");
            }
            4 => {
                assert_eq!(l["state"], "failed", "{l}");
                assert!(
                    l["error"].as_str().unwrap().contains("four kills me"),
                    "{l}"
                );
            }
            n => {
                assert_eq!(l["state"], "done", "{l}");
                assert_eq!(l["output"], n * 10, "{l}");
            }
        }
    }
    // Two jobs; one process per pack, and a fresh one after task 4 killed its process
    // (task 5 came after it).
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 2);
    let n = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert_eq!(n, 3, "processes started");
}

/// Paths a submit description carries cannot hold a space or a comma (HTCondor splits its
/// lists there), and a `requirements` line ending in `\` would swallow the next command:
/// such a job is refused before its directory exists, not when its first batch is submitted.
#[test]
fn a_job_a_submit_description_cannot_carry_is_refused_before_it_exists() {
    let env = Env::new();
    let p = env.script("ok.sh", "echo 1");
    let spaced = env.root.join("my jobs");
    let job = env.job("spaced", &p, "[1]", "");
    let out = run(env.mw(
        &[
            "run",
            job.to_str().unwrap(),
            "--jobs-dir",
            spaced.to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jobs-dir"), "{err}");
    assert!(!spaced.exists(), "a job directory was made: {err}");

    let job = env.root.join("req.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"req\"\ninterface = \"condor\"\n[program]\npath = \"{}\"\n[inputs]\nlist = [1]\n[condor]\nrequirements = 'Arch == \"X86_64\" \\'\n",
            p.display()
        ),
    )
    .unwrap();
    let out = run(env.mw(&["run", job.to_str().unwrap()], &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("requirements") && err.contains("next line"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(env.root.join("jobs")).unwrap().count(),
        0,
        "{err}"
    );
}

/// A result that came back from the pool but cannot be stored on the master's machine (its
/// output file's place is taken by a directory; a full disk fails the same write) is not the
/// pool's fault: `mw run` stops with the reason and the task stays in flight; once the place
/// is free, `mw resume` takes the result from the job's files (nothing is submitted again,
/// nothing runs twice).
fn result_that_cannot_be_stored_stops_mw_and_is_taken_on_resume(per: usize) {
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    let p = env.script(
        "out.sh",
        &format!(
            "read -r n\necho \"$n\" >> {log}\necho \"$((n * 10))\" > out.txt\n\
             if [ \"$n\" = 1 ]; then while [ ! -f {gate} ]; do sleep 0.1; done; fi\n\
             echo \"$((n * 10))\"",
            gate = gate.display(),
            log = log.display()
        ),
    );
    let name = format!("nostore{per}");
    let job = env.job(&name, &p, "[0, 1]", "outputs = [\"out.txt\"]");
    let mut file = std::fs::read_to_string(&job).unwrap();
    file.push_str(&format!("tasks_per_job = {per}\n"));
    std::fs::write(&job, file).unwrap();
    let child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    let id = format!("{name}-1");
    let t0 = Instant::now();
    while !executions(&log).contains(&1) {
        assert!(t0.elapsed() < LIMIT, "task 1 never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let blocked = env.root.join(format!("jobs/{id}/results/task-1/out.txt"));
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    std::fs::write(&gate, "").unwrap();
    let out = finish(child);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot store output `out.txt`") && err.contains("mw resume"),
        "{err}"
    );
    assert!(!err.contains("bad result bundle"), "{err}");
    assert_eq!(counts(&env, &id)["running"], 1, "task 1 is still in flight");

    std::fs::remove_dir_all(&blocked).unwrap();
    let out = run(env.mw(&["resume", &id], &[]));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(env.mw(&["results", &id], &[]));
    let lines = result_lines(&out);
    assert_eq!(lines.len(), 2, "{}", text(&out));
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], i as u64 * 10, "{l}");
        assert_eq!(l["attempts"], 1, "{l}");
        let file = env.root.join(format!("jobs/{id}/results/task-{i}/out.txt"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            (i * 10).to_string()
        );
    }
    assert_eq!(executions(&log), [0, 1], "each task ran once");
    assert_eq!(env.cli().history(&[], None).unwrap().len(), 2 / per);
}

#[test]
fn result_that_cannot_be_stored_stops_mw_and_is_taken_on_resume_lone() {
    result_that_cannot_be_stored_stops_mw_and_is_taken_on_resume(1);
}

#[test]
fn result_that_cannot_be_stored_stops_mw_and_is_taken_on_resume_pack() {
    result_that_cannot_be_stored_stops_mw_and_is_taken_on_resume(2);
}

// ---- `mw cancel` and `mw retry` with no master ----

/// The jobs still queued and not removed (idle, running, held …).
fn live_jobs(env: &Env) -> Vec<String> {
    env.cli()
        .query_jobs(&[])
        .unwrap()
        .into_iter()
        .filter(|a| !matches!(a.status, JobStatus::Removed | JobStatus::Completed))
        .map(|a| format!("{}.{} {:?}", a.handle.cluster, a.handle.proc, a.status))
        .collect()
}

/// A job of three tasks whose first attempts hold (each until `gate` exists) and whose
/// later attempts run at once; its master is killed with SIGKILL while the three jobs run in
/// the pool. Then `mw cancel` of the whole job, killed at `point`, and `mw retry`: the
/// retried tasks run once each, and nothing of the first attempts is left in the pool.
fn cancel_killed_then_retry(point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    let p = first_attempts_hold(&env, &gate, &log);
    let job = env.job("cancelretry", &p, "[0, 1, 2]", "");
    let mut child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    wait_first_attempts(&env);
    child.kill().unwrap(); // SIGKILL: the jobs go on in the pool
    child.wait().unwrap();
    assert_eq!(live_jobs(&env).len(), 3, "{:?}", live_jobs(&env));
    let out = run(env.mw(&["cancel", "cancelretry-1"], &[("MW_CRASH_AT", point)]));
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the crash point must kill mw cancel: {}",
        text(&out)
    );
    if point == "cancel-platform-stopped" {
        // Killed after condor_rm, before the journal says cancelled: the jobs are gone, the
        // request still pending, the tasks not yet final.
        assert!(live_jobs(&env).is_empty(), "{:?}", live_jobs(&env));
        assert_eq!(counts(&env, "cancelretry-1")["cancelled"], 0);
    }
    let out = run(env.mw(&["retry", "cancelretry-1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    // Nothing of the first attempts runs on in the pool beside the retried tasks.
    let left = live_jobs(&env);
    std::fs::write(&gate, "").unwrap();
    assert!(left.is_empty(), "jobs left running in the pool: {left:?}");
    let lines = result_lines(&run(env.mw(&["results", "cancelretry-1"], &[])));
    assert_eq!(tasks_of(&lines), [0, 1, 2]);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], l["task"].as_u64().unwrap() * 10, "{l}");
    }
    assert_eq!(executions(&log), [0, 1, 2], "each retried task ran once");
}

/// `mw cancel --task 1` while no master runs removes that task's job from the pool (it was
/// left running, so a `mw retry --task 1` ran the task beside it); the other jobs run on,
/// and `mw retry --task 1` runs it once more, alone.
#[test]
fn cancel_of_one_task_without_a_master_removes_its_job() {
    let env = Env::new();
    let gate = env.root.join("gate");
    let log = env.root.join("executions.log");
    let p = first_attempts_hold(&env, &gate, &log);
    let job = env.job("cancelone", &p, "[0, 1, 2]", "");
    let mut child = env
        .mw(&["run", job.to_str().unwrap()], &[])
        .spawn()
        .unwrap();
    wait_first_attempts(&env);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(env.mw(&["cancel", "cancelone-1", "--task", "1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    let left = live_jobs(&env);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|j| !j.starts_with("1.1 ")), "{left:?}");
    std::fs::write(&gate, "").unwrap();
    let out = run(env.mw(&["retry", "cancelone-1", "--task", "1"], &[]));
    assert!(out.status.success(), "{}", text(&out));
    let lines = result_lines(&run(env.mw(&["results", "cancelone-1"], &[])));
    assert_eq!(tasks_of(&lines), [0, 1, 2]);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], l["task"].as_u64().unwrap() * 10, "{l}");
    }
    assert_eq!(executions(&log), [0, 1, 2], "each task ran to its end once");
}

/// A program whose first attempt at each task holds until `gate` exists (or the test's
/// directory is gone: a failed test leaves nothing running) and whose later attempts run at
/// once; each run to its end logs its task to `log`.
fn first_attempts_hold(env: &Env, gate: &Path, log: &Path) -> PathBuf {
    env.script(
        "first_holds.sh",
        &format!(
            "read -r n\nif [ ! -e {root}/first-$n ]; then : > {root}/first-$n; \
             while [ ! -f {gate} ] && [ -d {root} ]; do sleep 0.1; done; fi\necho \"$n\" >> {log}\necho \"$((n * 10))\"",
            root = env.root.display(),
            gate = gate.display(),
            log = log.display()
        ),
    )
}

/// Waits until the first attempts of tasks 0, 1 and 2 run.
fn wait_first_attempts(env: &Env) {
    let t0 = Instant::now();
    while !(0..3).all(|n| env.root.join(format!("first-{n}")).exists()) {
        assert!(t0.elapsed() < LIMIT, "the three jobs never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mw cancel` killed after recording its request (`MW_CRASH_AT=cancel-recorded`), then
/// `mw retry`: the retry carries out the pending cancel, removing the job's HTCondor jobs,
/// before it queues the tasks again. Before, it only marked the tasks cancelled in the
/// journal, and the retried tasks were submitted beside their first jobs, still running.
#[test]
fn retry_after_a_killed_cancel_removes_the_first_jobs() {
    cancel_killed_then_retry("cancel-recorded");
}

/// `mw cancel` killed after `condor_rm` and before the tasks were marked cancelled
/// (`MW_CRASH_AT=cancel-platform-stopped`): the request is still pending and `mw retry`
/// carries it out again (nothing left to remove) before running the tasks again. (Before,
/// `mw cancel` marked the tasks cancelled first: killed before its `condor_rm`, it left
/// the jobs running in the pool and a job that a second `mw cancel` found nothing to do in.)
#[test]
fn cancel_killed_after_condor_rm_then_retry() {
    cancel_killed_then_retry("cancel-platform-stopped");
}
