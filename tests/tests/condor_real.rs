//! REAL HTCondor pool: `mw run` / `mw cancel` / `mw resume` with `interface = "condor"` end to
//! end against the personal HTCondor pool that `.ci/condor-pool start` runs (HTCondor 23.9's
//! real daemons in a Debian trixie chroot; `.ci/test` starts and stops it). No double here:
//! a missing pool is a test FAILURE that says how to start it.
//!
//! The schedd refuses jobs owned by root, so mw runs as the ordinary user `mwcondor` (made
//! by `.ci/condor-pool`) via `setpriv`, with every path (worker, job files, job directories,
//! logs) under /tmp, which the chroot shares. Root runs `condor_hold`/`condor_rm`/... as the
//! queue superuser. The tests share one 2-slot pool: they take a lock and run one at a time,
//! and every wait is a bounded poll with a message saying what did not happen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{CondorCli, JobAd, JobStatus};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// No `mw` command and no wait may take longer than this.
const LIMIT: Duration = Duration::from_secs(150);
/// The user that submits (the schedd refuses root).
const USER: &str = "mwcondor";

/// The pool's tool wrappers (`.ci/condor-pool` writes them), or `MW_CONDOR_BIN`.
fn condor_bin() -> PathBuf {
    std::env::var_os("MW_CONDOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/mw-condor/bin"))
}

/// One test at a time on the shared pool; checks once that the pool answers.
fn pool() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let ok = CHECKED.get_or_init(|| {
        let q = condor_bin().join("condor_q");
        if !q.exists() {
            return Err(format!("{} does not exist", q.display()));
        }
        let out = Command::new(&q)
            .arg("-totals")
            .current_dir("/tmp")
            .output()
            .map_err(|e| format!("{}: {e}", q.display()))?;
        if !out.status.success() {
            return Err(format!(
                "condor_q -totals failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        uid_gid(USER)?;
        // Jobs an interrupted earlier run left would hold the two slots.
        let _ = Command::new(condor_bin().join("condor_rm"))
            .args([
                "-constraint",
                "Owner == \"mwcondor\" && MwBatch =!= undefined",
            ])
            .current_dir("/tmp")
            .output();
        Ok(())
    });
    if let Err(e) = ok {
        panic!(
            "no real HTCondor pool ({e}). Start it with `sudo .ci/condor-pool start` (what \
             `.ci/test` does), or point MW_CONDOR_BIN at the condor_* tools of a pool"
        );
    }
    guard
}

fn uid_gid(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("user {user} does not exist (`.ci/condor-pool start` makes it)"))
    };
    Ok((id("-u")?, id("-g")?))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch directory under /tmp owned by the submitting user, with a worker copy.
struct Scratch {
    root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Whatever happened, the test's jobs leave the shared pool.
        for d in std::fs::read_dir(self.root.join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = mw::condor::remove_leftover_jobs(&d.path().join("staging/condor"), &cli());
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let root = PathBuf::from(format!("/tmp/mw-condor-real-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("jobs")).unwrap();
        // The worker is shipped with every job: a stripped copy keeps that small.
        let worker = root.join("mw-worker");
        std::fs::copy(mw_tests::bin("mw-worker"), &worker).unwrap();
        let _ = Command::new("strip").arg(&worker).status();
        let s = Scratch { root };
        s.chown();
        s
    }

    fn chown(&self) {
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", &format!("{USER}:"), self.root.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    /// A shell script task program.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.chown();
        p
    }

    /// A job file for the real pool; `name` must be unique in the pool's history.
    fn job(&self, name: &str, program: &Path, inputs: &str, condor: &str) -> String {
        let p = self.root.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\ninterface = \"condor\"\n[program]\npath = \"{}\"\n\n[inputs]\nlist = {inputs}\n\n[condor]\nbatch_window_secs = 0.2\nworker = \"{}\"\nrequest_memory = 64\nrequest_disk = 64\n{condor}\n",
                program.display(),
                self.root.join("mw-worker").display()
            ),
        )
        .unwrap();
        self.chown();
        p.to_str().unwrap().to_string()
    }

    /// `mw ARGS` as the submitting user, with the pool's tools first on PATH (or `path_first`).
    fn mw(&self, args: &[&str], path_first: Option<&Path>) -> Command {
        let mut path = format!("{}:/usr/bin:/bin", condor_bin().display());
        if let Some(p) = path_first {
            path = format!("{}:{path}", p.display());
        }
        let mut c = if is_root() {
            let (uid, gid) = uid_gid(USER).unwrap();
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ]);
            c.arg(mw_tests::bin("mw"));
            c
        } else {
            Command::new(mw_tests::bin("mw"))
        };
        c.args(args)
            .current_dir(&self.root)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.root)
            .env("MW_JOBS_DIR", self.root.join("jobs"))
            .env("MW_WORKER", self.root.join("mw-worker"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn job_dir(&self, name: &str) -> PathBuf {
        self.root.join("jobs").join(format!("{name}-1"))
    }

    /// Every batch name mw wrote for this job (`<name>.sub` files).
    fn batches(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let staging = self.job_dir(name).join("staging/condor");
        for d in std::fs::read_dir(staging).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().and_then(|x| x.to_str()) == Some("sub") {
                    out.push(p.file_stem().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

/// The pool's tools as the test's own user (root: queue superuser).
fn cli() -> CondorCli {
    CondorCli::default().with_bin_dir(condor_bin())
}

/// A `condor_*` tool as root on `args`; panics with its output when it fails.
fn condor(tool: &str, args: &[&str]) -> String {
    let out = Command::new(condor_bin().join(tool))
        .args(args)
        .current_dir("/tmp")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Jobs of this job's batches in the queue (and, with `history`, those that left it).
fn jobs_of(s: &Scratch, name: &str, history: bool) -> Vec<JobAd> {
    let b = s.batches(name);
    cli().batch_jobs(&b, history).unwrap()
}

/// Polls `f` until it returns `Some`, at most [`LIMIT`]; panics with `what` otherwise.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < LIMIT, "timed out after {LIMIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `child`; kills it and fails when it runs longer than [`LIMIT`].
fn finish(mut child: Child) -> Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mw ran longer than {LIMIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(mut cmd: Command) -> Output {
    finish(cmd.spawn().unwrap())
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `mw results JOB` as JSON lines, by task.
fn results(s: &Scratch, name: &str) -> Vec<serde_json::Value> {
    let out = run(s.mw(&["results", &format!("{name}-1")], None));
    let mut v: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    v.sort_by_key(|l| l["task"].as_u64());
    v
}

/// A name no earlier run of the suite used (the pool's history outlives test runs).
fn unique(name: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("{name}{}", t % 100_000_000)
}

/// Until the job's log shows `n` jobs executing (001) or more.
fn wait_running(s: &Scratch, name: &str, n: usize) {
    wait_for(
        &format!("{n} job(s) of {name} to start on the pool"),
        || {
            let ads = jobs_of(s, name, false);
            (ads.iter()
                .filter(|a| a.status == JobStatus::Running)
                .count()
                >= n)
                .then_some(())
        },
    );
}

/// examples/<dir>/job.toml for the real pool: programs from this build, few small tasks.
fn example_job(s: &Scratch, dir: &str, name: &str, tasks: u32) -> String {
    let src = mw_tests::workspace_root()
        .join("examples")
        .join(dir)
        .join("job.toml");
    let bins = mw_tests::bin_dir();
    let mut out = String::from("interface = \"condor\"\n");
    for line in std::fs::read_to_string(&src).unwrap().lines() {
        let line = line.replace("../../target/release", &bins.display().to_string());
        let line = match line.split_once(" = ") {
            Some(("name", _)) => format!("name = \"{name}\""),
            Some(("seed", _)) => format!("seed = {{ start = 0, end = {tasks} }}"),
            Some(("chunk", _)) => format!("chunk = {{ start = 0, end = {tasks} }}"),
            Some(("points", _)) => "points = [200000]".to_string(),
            _ => line,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!(
        "\n[condor]\nbatch_window_secs = 0.2\nworker = \"{}\"\nrequest_memory = 64\n",
        s.root.join("mw-worker").display()
    ));
    let p = s.root.join(format!("{name}.toml"));
    std::fs::write(&p, out).unwrap();
    s.chown();
    p.to_str().unwrap().to_string()
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rfind(|l| l.starts_with('{'));
    serde_json::from_str(line.unwrap_or_else(|| panic!("no JSON line; {}", text(out)))).unwrap()
}

#[test]
fn real_pool_pi_and_primes_are_right() {
    let _pool = pool();
    let s = Scratch::new("examples");
    let pi = unique("pi");
    let job = example_job(&s, "monte_pi", &pi, 4);
    let out = run(s.mw(&["run", &job], None));
    assert!(out.status.success(), "{}", text(&out));
    let v = last_json(&out);
    let hits = v["hits"].as_u64().unwrap();
    assert_eq!(v["points"], 800_000, "{v}");
    assert!(
        (v["pi"].as_f64().unwrap() - std::f64::consts::PI).abs() < 0.05,
        "{v}"
    );
    // The same seeds on local cores give the same hits: the pool ran the same computation.
    let local = run(s.mw(&["run", &job, "--interface", "multicore"], None));
    assert!(local.status.success(), "{}", text(&local));
    assert_eq!(last_json(&local)["hits"].as_u64(), Some(hits));

    let primes = unique("primes");
    let job = example_job(&s, "primes", &primes, 3);
    let out = run(s.mw(&["run", &job], None));
    assert!(out.status.success(), "{}", text(&out));
    let local = run(s.mw(&["run", &job, "--interface", "multicore"], None));
    assert!(local.status.success(), "{}", text(&local));
    assert_eq!(last_json(&out), last_json(&local), "{}", text(&out));
    assert!(last_json(&out).to_string().contains(':'), "{}", text(&out));
}

#[test]
fn real_pool_failing_task_and_killed_worker() {
    let _pool = pool();
    let s = Scratch::new("fail");
    // 0: ok; 1: exits 3 with a message on stderr; 2: kills its mw-worker with SIGKILL.
    let p = s.script(
        "t.sh",
        "read -r n\ncase $n in\n1) echo \"boom from task $n\" >&2; exit 3 ;;\n2) echo 'killing my worker' >&2; kill -9 $PPID; sleep 5 ;;\nesac\necho $((n * 10))",
    );
    let name = unique("fail");
    let job = s.job(&name, &p, "[0, 1, 2]", "");
    let out = run(s.mw(&["run", &job], None));
    assert!(!out.status.success(), "{}", text(&out));
    let r = results(&s, &name);
    assert_eq!(r.len(), 3, "{}", text(&out));
    assert_eq!(r[0]["state"], "done");
    assert_eq!(r[0]["output"], 0);
    assert_eq!(r[1]["state"], "failed");
    let e1 = r[1]["error"].as_str().unwrap();
    assert!(e1.contains("boom from task 1"), "{e1}");
    assert!(e1.contains('3'), "{e1}");
    assert_eq!(r[2]["state"], "failed");
    let e2 = r[2]["error"].as_str().unwrap();
    assert!(e2.contains("signal 9") && e2.contains("SIGKILL"), "{e2}");
    assert_eq!(r[2]["exit"], "signal 9", "{}", r[2]);
    assert!(!r[2]["host"].as_str().unwrap().is_empty(), "{}", r[2]);
    // `mw status` shows whole messages, not only their first line.
    let st = run(s.mw(&["status", &format!("{name}-1")], None));
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("boom from task 1"),
        "{}",
        text(&st)
    );
}

#[test]
fn real_pool_condor_hold_fail_and_wait_release() {
    let _pool = pool();
    let s = Scratch::new("hold");
    let gate = s.root.join("gate");
    let p = s.script(
        "gated.sh",
        &format!(
            "read -r n\nwhile [ ! -f {} ]; do sleep 0.2; done\necho $n",
            gate.display()
        ),
    );
    let failing = unique("holdfail");
    let waiting = unique("holdwait");
    let job_f = s.job(&failing, &p, "[0]", "on_hold = \"fail\"");
    let job_w = s.job(&waiting, &p, "[7]", "on_hold = \"wait\"");
    let cf = s.mw(&["run", &job_f], None).spawn().unwrap();
    let cw = s.mw(&["run", &job_w], None).spawn().unwrap();
    wait_running(&s, &failing, 1);
    wait_running(&s, &waiting, 1);
    for name in [&failing, &waiting] {
        let c = jobs_of(&s, name, false)[0].handle.cluster.to_string();
        condor("condor_hold", &[&c]);
    }
    let out = finish(cf);
    assert!(!out.status.success(), "{}", text(&out));
    let r = results(&s, &failing);
    let e = r[0]["error"].as_str().unwrap();
    assert!(e.contains("was held") && e.contains("condor_rm"), "{e}");
    assert_eq!(r[0]["exit"], "held", "{}", r[0]);
    assert!(!r[0]["host"].as_str().unwrap().is_empty(), "{}", r[0]);
    // The waiting one stays held until released, then finishes.
    wait_for("the on_hold = \"wait\" job to be held", || {
        jobs_of(&s, &waiting, false)
            .iter()
            .any(|a| a.status == JobStatus::Held)
            .then_some(())
    });
    std::fs::write(&gate, "").unwrap();
    let c = jobs_of(&s, &waiting, false)[0].handle.cluster.to_string();
    condor("condor_release", &[&c]);
    let out = finish(cw);
    assert!(out.status.success(), "{}", text(&out));
    let r = results(&s, &waiting);
    assert_eq!((r.len(), &r[0]["output"]), (1, &serde_json::json!(7)));
}

#[test]
fn real_pool_condor_rm_behind_mws_back() {
    let _pool = pool();
    let s = Scratch::new("rm");
    let p = s.script("sleepy.sh", "read -r n\nsleep 100\necho $n");
    let name = unique("rm");
    let job = s.job(&name, &p, "[0]", "");
    let child = s.mw(&["run", &job], None).spawn().unwrap();
    wait_running(&s, &name, 1);
    let c = jobs_of(&s, &name, false)[0].handle.cluster.to_string();
    condor("condor_rm", &[&c]);
    let out = finish(child);
    assert!(!out.status.success(), "{}", text(&out));
    let r = results(&s, &name);
    let e = r[0]["error"].as_str().unwrap();
    assert!(e.contains("removed"), "{e}");
    assert_eq!(r[0]["exit"], "removed", "{}", r[0]);
    assert!(!r[0]["host"].as_str().unwrap().is_empty(), "{}", r[0]);
}

#[test]
fn real_pool_vacated_job_runs_again_and_is_reported_once() {
    let _pool = pool();
    let s = Scratch::new("vacate");
    let gate = s.root.join("gate");
    let runs = s.root.join("runs");
    std::fs::write(&runs, "").unwrap();
    s.chown();
    // The first run waits for the gate (so it is running when vacated); later runs do not.
    let p = s.script(
        "t.sh",
        &format!(
            "read -r n\necho run >> {runs}\nif [ $(wc -l < {runs}) -eq 1 ]; then while [ ! -f {gate} ]; do sleep 0.2; done; fi\necho $((n + 1))",
            runs = runs.display(),
            gate = gate.display()
        ),
    );
    let name = unique("vacate");
    let job = s.job(&name, &p, "[41]", "");
    let child = s.mw(&["run", &job], None).spawn().unwrap();
    wait_running(&s, &name, 1);
    let c = jobs_of(&s, &name, false)[0].handle.cluster.to_string();
    condor("condor_vacate_job", &[&c]);
    let out = finish(child);
    assert!(out.status.success(), "{}", text(&out));
    let r = results(&s, &name);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["output"], 42);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("\"task\":0").count(), 1, "{stdout}");
    let ran = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert!(ran >= 2, "the vacated job did not run again ({ran} runs)");
    let log = std::fs::read_to_string(
        std::fs::read_dir(s.job_dir(&name).join("staging/condor/batch-1"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().and_then(|x| x.to_str()) == Some("log"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        log.contains("\n004 ("),
        "no eviction event in the log:\n{log}"
    );
}

#[test]
fn real_pool_cancel_with_live_and_dead_master_leaves_no_job() {
    let _pool = pool();
    let s = Scratch::new("cancel");
    let p = s.script("sleepy.sh", "read -r n\nsleep 100\necho $n");
    for live in [true, false] {
        let name = unique(if live { "cancellive" } else { "canceldead" });
        let job = s.job(&name, &p, "[0, 1, 2]", "");
        let mut child = s.mw(&["run", &job], None).spawn().unwrap();
        wait_running(&s, &name, 1);
        let live_child = if live {
            Some(child)
        } else {
            child.kill().unwrap(); // SIGKILL: the jobs stay in the pool
            child.wait().unwrap();
            None
        };
        let out = run(s.mw(&["cancel", &format!("{name}-1")], None));
        assert!(out.status.success(), "{}", text(&out));
        if let Some(child) = live_child {
            let out = finish(child);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("cancelled"),
                "{}",
                text(&out)
            );
        }
        wait_for(
            &format!("no job of {name} left in condor_q (live master: {live})"),
            || jobs_of(&s, &name, false).is_empty().then_some(()),
        );
        let r = results(&s, &name);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|l| l["state"] == "cancelled"), "{r:?}");
    }
}

/// Tasks that append their input to `runs` (shared through /tmp) and wait for `gate` when
/// their input is at least `gated_from`.
fn recording_script(s: &Scratch, gated_from: u64) -> (PathBuf, PathBuf, PathBuf) {
    let gate = s.root.join("gate");
    let runs = s.root.join("runs");
    std::fs::write(&runs, "").unwrap();
    let p = s.script(
        "rec.sh",
        &format!(
            "read -r n\nif [ $n -ge {gated_from} ]; then while [ ! -f {gate} ]; do sleep 0.2; done; fi\necho $n >> {runs}\necho $((n * 10))",
            gate = gate.display(),
            runs = runs.display()
        ),
    );
    (p, gate, runs)
}

fn assert_each_ran_once(runs: &Path, n: u64) {
    let mut ran: Vec<u64> = std::fs::read_to_string(runs)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        (0..n).collect::<Vec<_>>(),
        "each task must run exactly once"
    );
}

fn assert_results_once(s: &Scratch, name: &str, n: u64) {
    let r = results(s, name);
    assert_eq!(r.len() as u64, n, "{r:?}");
    for (i, l) in r.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        assert_eq!(l["output"], i as u64 * 10, "{l}");
    }
}

#[test]
fn real_pool_sigkill_of_the_master_then_resume_reattaches() {
    let _pool = pool();
    let s = Scratch::new("resume");
    // 0-1 finish at once; 2-5 wait for the gate: 2 of them run, 2 stay idle (2 slots).
    let (p, gate, runs) = recording_script(&s, 2);
    s.chown();
    let name = unique("resume");
    let job = s.job(&name, &p, "[0, 1, 2, 3, 4, 5]", "");
    let mut child = s.mw(&["run", &job], None).spawn().unwrap();
    wait_for("two tasks to finish and two to run", || {
        let done = std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count();
        let running = jobs_of(&s, &name, false)
            .iter()
            .filter(|a| a.status == JobStatus::Running)
            .count();
        (done >= 2 && running >= 2).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(&gate, "").unwrap();
    let out = run(s.mw(&["resume", &format!("{name}-1")], None));
    assert!(out.status.success(), "{}", text(&out));
    assert_results_once(&s, &name, 6);
    assert_each_ran_once(&runs, 6);
    // Re-attached, not resubmitted: six procs in all, in one cluster.
    let ads = wait_for("the pool's history to list all six jobs", || {
        let ads = jobs_of(&s, &name, true);
        (ads.iter()
            .filter(|a| a.status == JobStatus::Completed)
            .count()
            >= 6)
            .then_some(ads)
    });
    let mut handles: Vec<_> = ads.iter().map(|a| a.handle).collect();
    handles.sort();
    handles.dedup();
    assert_eq!(handles.len(), 6, "{handles:?}");
    assert!(
        handles.iter().all(|h| h.cluster == handles[0].cluster),
        "{handles:?}"
    );
}

#[test]
fn real_pool_sigkill_during_condor_submit_then_resume_runs_nothing_twice() {
    let _pool = pool();
    let s = Scratch::new("submitkill");
    let (p, gate, runs) = recording_script(&s, 0);
    // A condor_submit that submits for real, says so, then hangs as if slow: the master is
    // killed after the schedd has the cluster but before mw learned its id.
    let wrap = s.root.join("wrap");
    std::fs::create_dir_all(&wrap).unwrap();
    let marker = s.root.join("submitted");
    let pidfile = s.root.join("wrapper.pid");
    let w = wrap.join("condor_submit");
    std::fs::write(
        &w,
        format!(
            "#!/bin/sh\necho $$ > {pid}\n{real} \"$@\" > {out} 2>&1\ntouch {marker}\nsleep 100\ncat {out}\n",
            pid = pidfile.display(),
            real = condor_bin().join("condor_submit").display(),
            out = s.root.join("submit.out").display(),
            marker = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.chown();
    let name = unique("subkill");
    let job = s.job(&name, &p, "[0, 1, 2, 3]", "");
    let mut child = s.mw(&["run", &job], Some(&wrap)).spawn().unwrap();
    wait_for("the wrapped condor_submit to submit", || {
        marker.exists().then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // The submit "finishes" (its process goes away) after the master died.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    // mw never learned the cluster id: only the batch identity recorded before the submit.
    let batch = s.batches(&name);
    assert_eq!(batch.len(), 1, "{batch:?}");
    let cluster_marker = s
        .job_dir(&name)
        .join("staging/condor/batch-1")
        .join(format!("{}.cluster", batch[0]));
    assert!(
        !cluster_marker.exists(),
        "{} exists",
        cluster_marker.display()
    );
    std::fs::write(&gate, "").unwrap();
    let out = run(s.mw(&["resume", &format!("{name}-1")], None));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("re-attaching"),
        "{}",
        text(&out)
    );
    assert_results_once(&s, &name, 4);
    assert_each_ran_once(&runs, 4);
    let ads = jobs_of(&s, &name, true);
    let mut handles: Vec<_> = ads.iter().map(|a| a.handle).collect();
    handles.sort();
    handles.dedup();
    assert_eq!(
        handles.len(),
        4,
        "one cluster of four jobs, none resubmitted: {handles:?}"
    );
}

/// Task packing on the real pool (`tasks_per_job = 4`): eight tasks in two jobs. The first
/// pack finishes (one of its tasks fails alone, its neighbours succeed); the master is
/// killed (SIGKILL) while the second pack runs, held at a gate, and one of the second pack's
/// tasks is cancelled while no master runs; `mw resume` re-attaches the running pack, and
/// every task is reported exactly once (the cancelled one stays cancelled) and ran once.
#[test]
fn real_pool_packs_failing_task_sigkill_and_resume() {
    let _pool = pool();
    let s = Scratch::new("packs");
    let gate = s.root.join("gate");
    let runs = s.root.join("runs");
    std::fs::write(&runs, "").unwrap();
    let p = s.script(
        "pack.sh",
        &format!(
            "read -r n\nif [ $n -ge 4 ]; then while [ ! -f {gate} ]; do sleep 0.2; done; fi\necho $n >> {runs}\nif [ $n -eq 2 ]; then echo \"task $n is broken\" >&2; exit 3; fi\necho $((n * 10))",
            gate = gate.display(),
            runs = runs.display()
        ),
    );
    let name = unique("packs");
    let job = s.job(&name, &p, "[0, 1, 2, 3, 4, 5, 6, 7]", "tasks_per_job = 4");
    let mut child = s.mw(&["run", &job], None).spawn().unwrap();
    wait_for("the first pack to finish and the second to run", || {
        let done = std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count();
        let running = jobs_of(&s, &name, false)
            .iter()
            .filter(|a| a.status == JobStatus::Running)
            .count();
        let st = run(s.mw(&["status", &format!("{name}-1"), "--json"], None));
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
        let final_ = v["job"]["counts"]["done"].as_u64().unwrap_or(0)
            + v["job"]["counts"]["failed"].as_u64().unwrap_or(0);
        (done >= 4 && running >= 1 && final_ >= 4).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Cancelled while no master runs: recorded in the journal, the pack is left running.
    let c = run(s.mw(&["cancel", &format!("{name}-1"), "--task", "6"], None));
    assert!(c.status.success(), "{}", text(&c));
    assert!(
        jobs_of(&s, &name, false)
            .iter()
            .any(|a| a.status == JobStatus::Running),
        "the cancel of one task removed its whole pack"
    );
    std::fs::write(&gate, "").unwrap();
    let out = run(s.mw(&["resume", &format!("{name}-1")], None));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 to re-attach"),
        "{}",
        text(&out)
    );
    let r = results(&s, &name);
    assert_eq!(r.len(), 8, "{r:?}");
    for (i, l) in r.iter().enumerate() {
        match i {
            2 => {
                assert_eq!(l["state"], "failed", "{l}");
                assert!(
                    l["error"].as_str().unwrap().contains("task 2 is broken"),
                    "{l}"
                );
            }
            6 => assert_eq!(l["state"], "cancelled", "{l}"),
            _ => {
                assert_eq!(l["state"], "done", "{l}");
                assert_eq!(l["output"], i as u64 * 10, "{l}");
            }
        }
    }
    // Each task reported at most once (journal events; each has its outcome, above), each
    // ran once, in two jobs.
    let conn = rusqlite::Connection::open(s.job_dir(&name).join("journal.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT task, count(*) FROM events WHERE kind IN ('done', 'failed', 'cancelled') GROUP BY task ORDER BY task")
        .unwrap();
    let counts: Vec<(i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    // (A second report of a task would be a second final event; a task that ended done may
    // have none, its row saying everything.)
    assert!(
        counts.iter().all(|(t, c)| *c == 1 && (0..8).contains(t)),
        "a task reported twice: {counts:?}"
    );
    assert_each_ran_once(&runs, 8);
    let ads = wait_for("the pool's history to list both packs", || {
        let ads = jobs_of(&s, &name, true);
        (ads.iter()
            .filter(|a| a.status == JobStatus::Completed)
            .count()
            >= 2)
            .then_some(ads)
    });
    let mut handles: Vec<_> = ads.iter().map(|a| a.handle).collect();
    handles.sort();
    handles.dedup();
    assert_eq!(handles.len(), 2, "two packs, two jobs: {handles:?}");
}
