//! `mw run` against pools and volunteers that lie, and against its own interface threads
//! failing, end to end with the real `mw`, `mw-worker`, `mw-validator` and `mw-assimilator`:
//! - HTCondor through the pool double (tests/src/condor_double.rs, a TEST DOUBLE for daemons
//!   that cannot be installed here) with a hostile execute node: an `MW_WORKER` wrapper that
//!   returns forged result bundles for chosen tasks and runs the real worker otherwise.
//! - BOINC through the server double (`boinc_server_double`, a TEST DOUBLE for BOINC's server
//!   daemons) and Debian's real `boinc` client, with a hostile volunteer: the double's
//!   `double/forge/<suffix>` hook uploads a forged bundle under the name BOINC gave the upload.
//! - Panics injected (`MW_PANIC_AT`, mw's panic points) in the threads that read what comes
//!   back: the affected tasks fail with a message, the others finish, nothing hangs.
//!
//! What a platform vouches for decides which task a result is for (Condor's cluster.proc in
//! the journal and the file it transferred back; BOINC's workunit name): a bundle whose
//! manifest names another job, task or attempt is refused, the task it claims to be still
//! completes with its own result, and the refused task is retried. Every run is bounded: a
//! hang fails the test (the child is killed) instead of blocking the suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{BundleBuilder, Comparison, ExitInfo, ResultInfo, RESULT_STDOUT_NAME};
use mw_tests::bin;
use mw_tests::condor_double::STATE_ENV;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// No run may take longer than this.
const LIMIT: Duration = Duration::from_secs(300);

/// Waits for `child`, killing it (and failing) if it runs longer than [`LIMIT`].
fn finish(child: Child) -> Output {
    mw_tests::finish_within(child, LIMIT)
}

/// [`finish`] that also returns the child's own peak resident memory in KiB (`ru_maxrss`
/// from `wait4`; call `clear_refs` first, as a child starts from its parent's peak).
#[allow(clippy::zombie_processes)] // reaped by wait4 (for its rusage), not by std
fn finish_measured(mut child: Child) -> (Output, u64) {
    use std::io::Read;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if rx.recv_timeout(LIMIT).is_err() {
            // SAFETY: kill(2) on our own child's pid, not reaped before `tx` is dropped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        } else {
            false
        }
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out_pipe.read_to_end(&mut v).unwrap();
        v
    });
    let mut stderr = Vec::new();
    err_pipe.read_to_end(&mut stderr).unwrap();
    let stdout = reader.join().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, which std never reaps (it is not waited on), with
    // pointers to locals that outlive the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid);
    let _ = tx.send(());
    let timed_out = guard.join().unwrap();
    let out = Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout,
        stderr,
    };
    assert!(
        !timed_out,
        "mw hung for more than {LIMIT:?}: {}",
        text(&out)
    );
    (out, u64::try_from(usage.ru_maxrss).unwrap())
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The result lines, by task index.
fn results(out: &Output) -> BTreeMap<u64, Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["task"].as_u64().unwrap(), v))
        .collect()
}

/// A result bundle a hostile machine returns: `job`, `task`, `stdout`, extra output files.
fn forged(job: &str, task: u64, stdout: &str, outputs: &[(&str, &str)]) -> Vec<u8> {
    forged_with(job, task, stdout, outputs, |_| {})
}

/// [`forged`], with the manifest's result table changed by `edit`.
fn forged_with(
    job: &str,
    task: u64,
    stdout: &str,
    outputs: &[(&str, &str)],
    edit: impl FnOnce(&mut ResultInfo),
) -> Vec<u8> {
    let mut info = ResultInfo {
        job: job.into(),
        task,
        attempt: Some(1),
        exit: ExitInfo::Exited { code: 0 },
        wall_secs: 0.1,
        user_secs: 0.0,
        sys_secs: 0.0,
        host: "hostile".into(),
        started_unix: 1.7e9,
        stderr_tail: String::new(),
        missing_outputs: vec![],
        comparison: Comparison::Bitwise,
    };
    edit(&mut info);
    let mut b = BundleBuilder::result(info, "forged");
    b.add_bytes(RESULT_STDOUT_NAME, stdout.as_bytes().to_vec(), false)
        .unwrap();
    for (name, body) in outputs {
        b.add_bytes(&format!("outputs/{name}"), body.as_bytes().to_vec(), false)
            .unwrap();
    }
    b.to_bytes().unwrap()
}

fn script(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

// ---------------------------------------------------------------------------------------
// HTCondor (pool double)

struct Pool {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Pool {
    fn new() -> Pool {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["state", "jobs", "progs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Pool { _tmp: tmp, root }
    }

    /// `mw -v run` of a Condor job file `name` with `inputs` and extra top-level lines.
    fn run(
        &self,
        name: &str,
        program: &Path,
        inputs: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Output {
        finish(self.start(name, program, inputs, extra, env))
    }

    /// Starts what [`run`](Self::run) runs.
    fn start(
        &self,
        name: &str,
        program: &Path,
        inputs: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Child {
        let job = self.root.join(format!("{name}.toml"));
        // `extra`: top-level lines, then (after a `[condor]` line) lines of the [condor] table.
        let (top, condor) = extra.split_once("[condor]\n").unwrap_or((extra, ""));
        std::fs::write(
            &job,
            format!(
                "name = \"{name}\"\ninterface = \"condor\"\n{top}\n[program]\npath = \"{}\"\n\n\
                 [inputs]\nlist = {inputs}\n\n[condor]\nbatch_window_secs = 0.2\n{condor}\n",
                program.display()
            ),
        )
        .unwrap();
        let mut c = self.command(&["-v", "run"]);
        c.arg(&job)
            .env_remove("MW_CONDOR_DOUBLE_HOLD")
            .env_remove("MW_CONDOR_DOUBLE_EVICT_ONCE");
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    /// A hostile execute node: an `MW_WORKER` that, for the first attempt of each task in
    /// `lies`, returns that bundle (HTCondor transfers back the job's own file, but its
    /// content is the node's) and runs the real `mw-worker` otherwise.
    fn hostile_worker(&self, lies: &[(u64, Vec<u8>)]) -> String {
        let progs = self.root.join("progs");
        let mut cases = String::new();
        for (task, bytes) in lies {
            let f = progs.join(format!("forged-{task}"));
            std::fs::write(&f, bytes).unwrap();
            cases.push_str(&format!(
                "  task-{task}-a1.mwt) cp {} \"$7\"; exit 0 ;;\n",
                f.display()
            ));
        }
        let worker = script(
            &progs.join("hostile-worker"),
            &format!(
                "# mw-worker run --program P --task T --result R, lying for some tasks\n\
                 case \"$5\" in\n{cases}esac\nexec {} \"$@\"",
                bin("mw-worker").display()
            ),
        );
        worker.display().to_string()
    }

    /// `mw ARGS` (resume, retry, results) in this pool's environment.
    fn mw(&self, args: &[&str]) -> Output {
        finish(self.command(args).spawn().unwrap())
    }

    /// `mw ARGS` in this pool's environment (the HTCondor double first on PATH, its state,
    /// this build's worker, the pool's jobs directory, no panic point), output piped.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("mw"));
        c.args(args)
            .current_dir(&self.root)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    mw_tests::condor_double_path(&self.root).display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env(STATE_ENV, self.root.join("state"))
            .env("MW_WORKER", bin("mw-worker"))
            .env("MW_JOBS_DIR", self.root.join("jobs"))
            .env_remove("MW_PANIC_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

#[test]
fn forged_condor_results_are_refused_and_the_right_tasks_complete() {
    let pool = Pool::new();
    let progs = pool.root.join("progs");
    // The honest program prints its input and writes its one declared output.
    let prog = script(&progs.join("echo.sh"), "cat\necho ok > declared.txt");
    let worker_s = pool.hostile_worker(&[
        (
            5,
            forged("someone-elses-job-7", 5, "55", &[("declared.txt", "ok")]),
        ),
        (3, forged("cforge-1", 7, "77", &[("declared.txt", "ok")])),
        (
            2,
            forged(
                "cforge-1",
                2,
                "2",
                &[("declared.txt", "ok"), ("sneaky.sh", "rm -rf ~")],
            ),
        ),
    ]);
    let out = pool.run(
        "cforge",
        &prog,
        "[0, 1, 2, 3, 4, 5, 6, 7]",
        "retries = 1\noutputs = [\"declared.txt\"]",
        &[("MW_WORKER", &worker_s)],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let r = results(&out);
    assert_eq!(r.len(), 8, "{all}");
    for (t, l) in &r {
        assert_eq!(l["state"], "done", "{all}");
        // Every task has its own result: task 7's is not the forged 77, task 5's not 55.
        assert_eq!(l["output"], serde_json::json!(t), "{all}");
        let attempts = if [3, 5].contains(t) { 2 } else { 1 };
        assert_eq!(l["attempts"], attempts, "task {t}: {all}");
    }
    // The refusals named what was wrong.
    assert!(
        all.contains(
            "forged or misfiled result: it names job `someone-elses-job-7`, expected `cforge-1`"
        ),
        "{all}"
    );
    assert!(
        all.contains("forged or misfiled result: it is for task 7, expected task 3"),
        "{all}"
    );
    // Task 2's result was accepted, but only its declared output file was kept.
    let dir = pool.root.join("jobs/cforge-1/results/task-2");
    assert_eq!(
        std::fs::read_to_string(dir.join("declared.txt")).unwrap(),
        "ok"
    );
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept, ["declared.txt"], "{all}");
}

#[test]
fn results_with_impossible_times_fail_their_tasks_and_the_others_finish() {
    let pool = Pool::new();
    let prog = script(&pool.root.join("progs/echo.sh"), "cat");
    let worker = pool.hostile_worker(&[
        (
            1,
            forged_with("ctimes-1", 1, "1", &[], |i| i.wall_secs = 1e300),
        ),
        (
            2,
            forged_with("ctimes-1", 2, "2", &[], |i| i.started_unix = 1e19),
        ),
        (
            3,
            forged_with("ctimes-1", 3, "3", &[], |i| {
                i.user_secs = 1.8e19;
                i.sys_secs = 1.8e19;
            }),
        ),
    ]);
    let out = pool.run(
        "ctimes",
        &prog,
        "[0, 1, 2, 3, 4]",
        "",
        &[("MW_WORKER", &worker)],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let r = results(&out);
    assert_eq!(r.len(), 5, "{all}");
    for (t, field) in [(1, "wall_secs"), (2, "started_unix"), (3, "user_secs")] {
        assert_eq!(r[&t]["state"], "failed", "{all}");
        let e = r[&t]["error"].as_str().unwrap();
        assert!(e.contains(field) && e.contains("out of range"), "{e}");
    }
    for t in [0, 4] {
        assert_eq!(r[&t]["output"], serde_json::json!(t), "{all}");
    }
}

#[test]
fn a_500_mb_json_result_in_a_small_upload_is_refused_and_the_job_can_finish() {
    let pool = Pool::new();
    let prog = script(&pool.root.join("progs/echo.sh"), "cat");
    // `[0,0,…]` of 500 MB (several GB as a parsed tree) in an upload of about 500 KB.
    let big = pool.root.join("progs/big.json");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        f.write_all(b"[0").unwrap();
        let chunk = b",0".repeat(1 << 15);
        for _ in 0..(500 << 20) / chunk.len() {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"]").unwrap();
    }
    let info = ResultInfo {
        job: "cbig-1".into(),
        task: 1,
        attempt: Some(1),
        exit: ExitInfo::Exited { code: 0 },
        wall_secs: 1.0,
        user_secs: 0.0,
        sys_secs: 0.0,
        host: "hostile".into(),
        started_unix: 1.7e9,
        stderr_tail: String::new(),
        missing_outputs: vec![],
        comparison: Comparison::Bitwise,
    };
    let mut b = BundleBuilder::result(info, "bomb");
    b.add_file(RESULT_STDOUT_NAME, &big).unwrap();
    let bomb = b.to_bytes().unwrap();
    std::fs::remove_file(&big).unwrap();
    assert!(bomb.len() < 4 << 20, "upload of {} bytes", bomb.len());
    let worker = pool.hostile_worker(&[(1, bomb)]);
    // mw's peak memory is its own (a child starts from its parent's peak): reset ours.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (out, peak_kib) =
        finish_measured(pool.start("cbig", &prog, "[0, 1, 2]", "", &[("MW_WORKER", &worker)]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let r = results(&out);
    assert_eq!(r[&1]["state"], "failed", "{all}");
    let e = r[&1]["error"].as_str().unwrap();
    assert!(e.contains("over the limit"), "{e}");
    for t in [0, 2] {
        assert_eq!(r[&t]["output"], serde_json::json!(t), "{all}");
    }
    assert!(peak_kib < 128 * 1024, "mw peaked at {peak_kib} KiB");
    // Nothing huge was stored: resume reads the journal and ends, and a retry runs task 1
    // again (on an honest node this time) and finishes the job.
    let resumed = pool.mw(&["resume", "cbig-1", "-q"]);
    assert_eq!(resumed.status.code(), Some(1), "{}", text(&resumed));
    let retried = pool.mw(&["retry", "cbig-1", "-q"]);
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried));
    let listed = pool.mw(&["results", "cbig-1"]);
    let r = results(&listed);
    assert_eq!(r.len(), 3, "{}", text(&listed));
    for (t, l) in &r {
        assert_eq!(l["state"], "done", "{}", text(&listed));
        assert_eq!(l["output"], serde_json::json!(t), "{}", text(&listed));
    }
}

#[test]
fn a_missing_condor_worker_stops_the_job_before_anything_is_created() {
    let pool = Pool::new();
    let prog = script(&pool.root.join("progs/echo.sh"), "cat");
    let missing = pool.root.join("progs/no-such-worker").display().to_string();
    let out = pool.run("noworker", &prog, "[0, 1]", "", &[("MW_WORKER", &missing)]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("noworker.toml: [condor] worker: `"), "{all}");
    assert!(all.contains("no-such-worker` (from $MW_WORKER)"), "{all}");
    let jobs: Vec<_> = std::fs::read_dir(pool.root.join("jobs")).unwrap().collect();
    assert!(jobs.is_empty(), "a refused job left {jobs:?}");
    assert_eq!(
        std::fs::read_dir(pool.root.join("state")).unwrap().count(),
        0,
        "a refused job reached the pool"
    );
}

/// Runs job `name` (3 tasks echoing their input) through the Condor double with mw's panic
/// point `point` armed; mw must end with exit 1 and a result line for each task. Returns the
/// result lines by task and everything mw printed.
fn condor_run_with_panic(name: &str, point: &str) -> (BTreeMap<u64, Value>, String) {
    let pool = Pool::new();
    let prog = script(&pool.root.join("progs/echo.sh"), "cat");
    let out = pool.run(name, &prog, "[0, 1, 2]", "", &[("MW_PANIC_AT", point)]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let r = results(&out);
    assert_eq!(r.len(), 3, "{all}");
    (r, all)
}

#[test]
fn a_panic_reading_one_condor_result_fails_that_task_only() {
    let (r, all) = condor_run_with_panic("cpanic", "condor-result:1");
    for t in [0, 2] {
        assert_eq!(r[&t]["state"], "done", "{all}");
        assert_eq!(r[&t]["output"], serde_json::json!(t), "{all}");
    }
    assert_eq!(r[&1]["state"], "failed", "{all}");
    let e = r[&1]["error"].as_str().unwrap();
    assert!(
        e.contains("internal error while reading its outcome: injected panic"),
        "{e}"
    );
}

#[test]
fn a_dead_condor_event_thread_fails_every_task_in_flight_and_mw_ends() {
    let (r, all) = condor_run_with_panic("cdead", "condor-event-loop");
    for l in r.values() {
        assert_eq!(l["state"], "failed", "{all}");
        let e = l["error"].as_str().unwrap();
        assert!(
            e.contains("the HTCondor event thread failed: injected panic"),
            "{e}"
        );
    }
}

/// Checks a 4-task run whose probe batch (task 0) panicked while being submitted to
/// `platform`: task 0 failed with the panic, tasks 1-3 finished, the submit thread lived on.
/// Returns everything mw printed.
fn only_the_probe_failed(out: &Output, platform: &str) -> String {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let r = results(out);
    assert_eq!(r.len(), 4, "{all}");
    for t in 1..4 {
        assert_eq!(r[&t]["state"], "done", "{all}");
        assert_eq!(r[&t]["output"], serde_json::json!(t), "{all}");
    }
    assert_eq!(r[&0]["state"], "failed", "{all}");
    let e = r[&0]["error"].as_str().unwrap();
    let why = format!("internal error while submitting it to {platform}: injected panic");
    assert!(e.contains(&why), "{e}");
    assert!(
        !all.contains(&format!("the {platform} submit thread failed")),
        "{all}"
    );
    all
}

/// A panic while submitting one batch fails that batch's tasks only; the submit thread goes
/// on. With `target_job_secs` the first batch is a one-task probe (the others wait for its
/// run time): the probe's batch panics, its task fails, a new probe goes out and the rest of
/// the tasks run.
#[test]
fn a_panic_submitting_one_condor_batch_fails_that_batch_only() {
    let pool = Pool::new();
    let prog = script(&pool.root.join("progs/echo.sh"), "cat");
    let out = pool.run(
        "csubmit",
        &prog,
        "[0, 1, 2, 3]",
        "[condor]\ntasks_per_job = 10\ntarget_job_secs = 60\n",
        &[("MW_PANIC_AT", "condor-submit:0")],
    );
    only_the_probe_failed(&out, "HTCondor");
}

// ---------------------------------------------------------------------------------------
// BOINC (server double + the real client)

struct Project {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: Child,
}

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("proj");
        let root = mw_tests::boinc_project(&root, &[]);
        let server = Command::new(bin("boinc_server_double"))
            .arg("serve")
            .arg(&root)
            .spawn()
            .unwrap();
        Project {
            _tmp: tmp,
            root,
            server,
        }
    }

    fn scratch(&self) -> PathBuf {
        self.root.parent().unwrap().to_path_buf()
    }

    /// `mw -v run` of a BOINC job file `name`; the job deadline is only a hang guard.
    fn run(&self, name: &str, body: &str, env: &[(&str, &str)]) -> Output {
        let dir = self.scratch().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = dir.join("job.toml");
        // `body`: the job's lines, then (after a `[boinc]` line) lines of the [boinc] table.
        let (body, boinc) = body.split_once("[boinc]\n").unwrap_or((body, ""));
        std::fs::write(
            &job,
            format!(
                "name = \"{name}\"\ninterface = \"boinc\"\n{body}\n[boinc]\nproject_dir = \"{}\"\n\
                 job_deadline_secs = 240\n{boinc}\n",
                self.root.display()
            ),
        )
        .unwrap();
        let mut c = Command::new(bin("mw"));
        c.args(["-v", "run"])
            .arg(&job)
            .arg("--jobs-dir")
            .arg(dir.join("jobs"))
            .env_remove("MW_PANIC_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        finish(c.spawn().unwrap())
    }

    fn calls_of(&self, tool: &str) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("double/calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|c| c["tool"] == tool)
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("double/stop"), "");
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn a_forged_boinc_result_is_refused_and_the_right_task_completes() {
    let p = Project::new();
    let prog = script(&p.scratch().join("echo.sh"), "cat\necho ok > declared.txt");
    // A volunteer computing task 5's first workunit uploads a bundle claiming task 7, and
    // one computing task 3's uploads task 3's result with an undeclared file added.
    let forge = p.root.join("double/forge");
    std::fs::create_dir_all(&forge).unwrap();
    std::fs::write(
        forge.join("_5_1"),
        forged("bforge-1", 7, "77", &[("declared.txt", "ok")]),
    )
    .unwrap();
    std::fs::write(
        forge.join("_3_1"),
        forged(
            "bforge-1",
            3,
            "3",
            &[("declared.txt", "ok"), ("sneaky.sh", "rm -rf ~")],
        ),
    )
    .unwrap();
    let out = p.run(
        "bforge",
        &format!(
            "retries = 1\noutputs = [\"declared.txt\"]\n[program]\npath = \"{}\"\n\
             [inputs]\nlist = [0, 1, 2, 3, 4, 5, 6, 7]\n",
            prog.display()
        ),
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        !forge.join("_5_1").exists() && !forge.join("_3_1").exists(),
        "the volunteer never uploaded its forgeries: {all}"
    );
    let r = results(&out);
    assert_eq!(r.len(), 8, "{all}");
    for (t, l) in &r {
        assert_eq!(l["state"], "done", "{all}");
        assert_eq!(l["output"], serde_json::json!(t), "task {t}: {all}");
        let attempts = if *t == 5 { 2 } else { 1 };
        assert_eq!(l["attempts"], attempts, "task {t}: {all}");
    }
    // The assimilator spooled the forgery under task 5's workunit, refused it, and said why.
    assert!(
        all.contains("forged or misfiled result: workunit mw_bforge-1_"),
        "{all}"
    );
    assert!(
        all.contains("names attempt 1 of task 7 of job `bforge-1`"),
        "{all}"
    );
    let jobs = p.scratch().join("bforge/jobs/bforge-1/results");
    for t in 0..8 {
        let kept: Vec<_> = std::fs::read_dir(jobs.join(format!("task-{t}")))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(kept, ["declared.txt"], "task {t}: {all}");
    }
}

#[test]
fn panics_reading_boinc_results_fail_tasks_with_a_message_and_mw_ends() {
    let p = Project::new();
    let prog = script(&p.scratch().join("echo.sh"), "cat");
    let body = format!(
        "[program]\npath = \"{}\"\n[inputs]\nlist = [0, 1, 2]\n",
        prog.display()
    );
    // One result: that task fails with the panic's message, the others finish.
    let out = p.run("bpanic", &body, &[("MW_PANIC_AT", "boinc-result:1")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let r = results(&out);
    assert_eq!(r.len(), 3, "{all}");
    for t in [0, 2] {
        assert_eq!(r[&t]["state"], "done", "{all}");
        assert_eq!(r[&t]["output"], serde_json::json!(t), "{all}");
    }
    let e = r[&1]["error"].as_str().unwrap();
    assert!(
        e.contains("internal error while reading its result: injected panic"),
        "{e}"
    );
    // The spool thread itself: every task in flight fails with the message (and its
    // workunit is cancelled in BOINC); mw ends instead of waiting for ever.
    let before = p.calls_of("cancel_jobs").len();
    let out = p.run("bdead", &body, &[("MW_PANIC_AT", "boinc-spool")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let r = results(&out);
    assert_eq!(r.len(), 3, "{all}");
    for l in r.values() {
        assert_eq!(l["state"], "failed", "{all}");
        let e = l["error"].as_str().unwrap();
        assert!(
            e.contains("the BOINC spool thread failed: injected panic"),
            "{e}"
        );
    }
    // Each workunit created before the thread died was cancelled once (how many there were
    // depends on how many tasks the master had handed over by then).
    let created: BTreeSet<String> = p
        .calls_of("create_work")
        .iter()
        .flat_map(|c| {
            let stdin = c["stdin"].as_str().unwrap_or_default().to_string();
            stdin
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .filter(|w| w.starts_with("mw_bdead-"))
        .collect();
    let cancelled: Vec<String> = p.calls_of("cancel_jobs")[before..]
        .iter()
        .map(|c| c["args"][1].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(cancelled.len(), created.len(), "{cancelled:?} {created:?}");
    assert_eq!(
        cancelled.into_iter().collect::<BTreeSet<_>>(),
        created,
        "{all}"
    );
}

/// A panic while submitting one BOINC batch fails that batch's tasks only (their workunits
/// cancelled in BOINC); the submit thread goes on. With `target_job_secs` the first batch is
/// a one-task probe: it panics, its task fails, a new probe goes out and the rest run.
#[test]
fn a_panic_submitting_one_boinc_batch_fails_that_batch_only() {
    let p = Project::new();
    let prog = script(&p.scratch().join("echo.sh"), "cat");
    let body = format!(
        "[program]\npath = \"{}\"\n[inputs]\nlist = [0, 1, 2, 3]\n\
         [boinc]\ntasks_per_workunit = 10\ntarget_job_secs = 60\n",
        prog.display()
    );
    let out = p.run("bsubmit", &body, &[("MW_PANIC_AT", "boinc-submit:0")]);
    let all = only_the_probe_failed(&out, "BOINC");
    // The panicking batch's workunit was stopped in BOINC too.
    assert_eq!(p.calls_of("cancel_jobs").len(), 1, "{all}");
}
