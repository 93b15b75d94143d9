//! End to end through BOINC with a detached master: `mw submit` / SIGKILL / `mw resume`, and
//! `mw cancel`, against a project laid out by the BOINC server TEST DOUBLE
//! (`boinc_server_double`, which stands in for BOINC's server daemons) into which the real
//! `mw-boinc-setup` installed mw. Workunits are executed by Debian's REAL `boinc` client
//! running the real `mw-worker` (the double's `serve` loop), validated and assimilated by the
//! real `mw-validator` / `mw-assimilator`.
//!
//! Needs `cargo build --workspace` first and the `boinc-client` package.
//! Synchronisation: every wait is a bounded poll of an observable condition (the journal,
//! the double's records, /proc); the bounds are hang guards, never assertions on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw::journal::{open_checked, read_tasks, StoredTask, JOURNAL_FILE};
use mw::TaskState;
use mw_tests::{bin, bin_dir};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Hang guard for every bounded poll.
const HANG_GUARD: Duration = Duration::from_secs(150);

/// Polls `cond` until it holds; panics naming `what` if the hang guard runs out.
fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "gave up waiting for {what} after {HANG_GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scratch BOINC project (the double) with mw installed; `serve` is started on demand.
struct Project {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: Option<Child>,
    /// Detached masters started through `mw submit`, killed if a test fails midway.
    masters: Vec<i64>,
}

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("proj");
        let root = mw_tests::boinc_project(&root, &[]);
        Project {
            _tmp: tmp,
            root,
            server: None,
            masters: Vec::new(),
        }
    }

    fn scratch(&self) -> PathBuf {
        self.root.parent().unwrap().to_path_buf()
    }

    fn jobs_dir(&self) -> PathBuf {
        self.scratch().join("jobs")
    }

    fn start_serve(&mut self) {
        assert!(self.server.is_none());
        self.server = Some(
            Command::new(bin("boinc_server_double"))
                .arg("serve")
                .arg(&self.root)
                .spawn()
                .unwrap(),
        );
    }

    /// Asks the serve loop to stop (it checks between rounds) and waits for it.
    fn stop_serve(&mut self) {
        std::fs::write(self.root.join("double/stop"), "").unwrap();
        if let Some(mut s) = self.server.take() {
            let st = s.wait().unwrap();
            assert!(st.success(), "serve loop: {st}");
        }
    }

    fn calls_of(&self, tool: &str) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("double/calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|c| c["tool"] == tool)
            .collect()
    }

    fn wus(&self) -> Vec<Value> {
        let mut v: Vec<Value> = std::fs::read_dir(self.root.join("double/wus"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        v.sort_by_key(|w| w["id"].as_u64());
        v
    }

    fn spool_entries(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("mw_spool"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }

    /// Writes a 4-task Monte Carlo pi job file for this project; returns its path.
    fn pi_job(&self, name: &str) -> PathBuf {
        let dir = self.scratch().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = dir.join("job.toml");
        std::fs::write(
            &job,
            format!(
                "name = \"{name}\"\ninterface = \"boinc\"\n[program]\npath = \"{}\"\n\
                 [inputs.sweep]\nseed = {{ start = 0, end = 4 }}\npoints = [500000]\n\
                 [reduce]\npath = \"{}\"\n[boinc]\nproject_dir = \"{}\"\n",
                program("monte-pi-task"),
                program("monte-pi-reduce"),
                self.root.display()
            ),
        )
        .unwrap();
        job
    }

    /// `mw submit JOB`: returns (job id, job dir) and remembers the detached master.
    fn submit(&mut self, job: &Path) -> (String, PathBuf) {
        self.submit_env(job, &[])
    }

    /// `mw submit JOB` with `env` (which the detached master inherits).
    fn submit_env(&mut self, job: &Path, env: &[(&str, &str)]) -> (String, PathBuf) {
        let out = Command::new(bin("mw"))
            .args(["submit".as_ref(), job.as_os_str()])
            .arg("--jobs-dir")
            .arg(self.jobs_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (id, dir) = stdout.trim().split_once('\t').unwrap();
        let dir = PathBuf::from(dir);
        self.masters.push(master_pid(&dir));
        (id.to_string(), dir)
    }

    /// Runs `mw ARGS --jobs-dir <jobs>`.
    fn mw(&self, args: &[&std::ffi::OsStr]) -> Output {
        Command::new(bin("mw"))
            .args(args)
            .arg("--jobs-dir")
            .arg(self.jobs_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Waits until the detached master created every workunit and the journal holds their
    /// handles; returns the handles by task.
    fn wait_for_workunits(&self, dir: &Path, n: usize) -> Vec<String> {
        poll_until("the workunits and their handles in the journal", || {
            self.wus().len() == n
                && tasks(dir).iter().all(|t| {
                    t.handle
                        .as_deref()
                        .is_some_and(|h| !h.starts_with("pending:"))
                })
        });
        tasks(dir)
            .iter()
            .map(|t| t.handle.clone().unwrap())
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for &pid in &self.masters {
            if mw_alive(pid) {
                // SAFETY: kill(2) with a pid we checked is a live `mw` we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = std::fs::write(self.root.join("double/stop"), "");
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn program(name: &str) -> String {
    bin_dir().join(name).display().to_string()
}

fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn tasks(dir: &Path) -> Vec<StoredTask> {
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false).unwrap();
    read_tasks(&conn, &path, None).unwrap()
}

/// The master pid the journal's job table records.
fn master_pid(dir: &Path) -> i64 {
    let path = dir.join(JOURNAL_FILE);
    let conn = open_checked(&path, false).unwrap();
    conn.query_row("SELECT master_pid FROM job", [], |r| r.get::<_, i64>(0))
        .unwrap()
}

/// True while `pid` is a live (not zombie) `mw` process.
fn mw_alive(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    let comm = stat
        .find('(')
        .zip(stat.rfind(')'))
        .map(|(a, b)| &stat[a + 1..b])
        .unwrap_or("");
    comm == "mw" && state != "Z" && state != "X"
}

fn results(p: &Project, id: &str) -> Vec<Value> {
    let out = p.mw(&["results".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status(p: &Project, id: &str) -> Value {
    let out = p.mw(&["status".as_ref(), id.as_ref(), "--json".as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every create_work call, flattened to the workunit names of its stdin lines.
fn created_names(p: &Project) -> Vec<String> {
    let mut names = Vec::new();
    for c in p.calls_of("create_work") {
        assert_eq!(c["cwd"], p.root.display().to_string());
        for line in c["stdin"].as_str().unwrap().lines() {
            let toks: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(toks[0], "--wu_name", "{line}");
            assert!(toks[1..].iter().all(|t| shell_safe(t)), "{line}");
            names.push(toks[1].to_string());
        }
    }
    names
}

#[test]
fn sigkilled_master_resumes_and_reattaches_every_workunit() {
    let mut p = Project::new();
    let job = p.pi_job("res");
    let (id, dir) = p.submit(&job);
    // No serve loop yet: the workunits are created but nobody runs them.
    let handles = p.wait_for_workunits(&dir, 4);
    let pid = *p.masters.last().unwrap();
    assert!(mw_alive(pid), "the detached master {pid} is not running");
    assert!(tasks(&dir).iter().all(|t| t.state == TaskState::Running));
    // SAFETY: kill(2) on the live `mw` master this test started through `mw submit`.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    poll_until("the killed master to die", || !mw_alive(pid));
    assert_eq!(status(&p, &id)["job"]["state"], "stopped (mw resume)");

    // The server runs every workunit while no master is alive.
    p.start_serve();
    poll_until("every workunit to be assimilated", || {
        let wus = p.wus();
        wus.len() == 4 && wus.iter().all(|w| w["done"] == "assimilated")
    });
    p.stop_serve();
    assert_eq!(p.spool_entries("result_").len(), 4);

    // The resumed master re-attaches by handle and takes the spooled results.
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 to re-attach"), "{err}");
    assert!(
        p.spool_entries("result_").is_empty(),
        "{:?}",
        p.spool_entries("")
    );

    // Every task done exactly once, by its first (and only) workunit.
    let res = results(&p, &id);
    let idx: Vec<u64> = res.iter().map(|r| r["task"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![0, 1, 2, 3], "{res:#?}");
    for r in &res {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["attempts"], 1, "{r:#}");
    }
    // No workunit was created twice: one create_work line per task, names as journaled.
    let names = created_names(&p);
    assert_eq!(names, handles, "create_work lines vs journal handles");
    let wus = p.wus();
    assert_eq!(wus.len(), 4);
    let clients = p.calls_of("client");
    for h in &handles {
        assert!(shell_safe(h), "{h}");
        let runs = clients.iter().filter(|c| c["wu"] == h.as_str()).count();
        assert_eq!(runs, 1, "{h} ran {runs} times");
    }
    assert_eq!(p.calls_of("script_assimilator").len(), 4);

    // The results equal those of the same job on local cores, and give pi.
    let local = Command::new(bin("mw"))
        .arg("run")
        .arg(&job)
        .args(["-q", "--interface", "multicore", "-o"])
        .arg(p.scratch().join("local.jsonl"))
        .arg("--jobs-dir")
        .arg(p.scratch().join("jobs-local"))
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", text(&local));
    let local: Vec<Value> = std::fs::read_to_string(p.scratch().join("local.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(local.len(), 4);
    for (b, l) in res.iter().zip(&local) {
        assert_eq!(b["task"], l["task"]);
        assert_eq!(b["output"], l["output"], "task {}", b["task"]);
    }
    let mut stdin = String::new();
    for r in &res {
        stdin.push_str(&r["output"].to_string());
        stdin.push('\n');
    }
    let mut reduce = Command::new(bin("monte-pi-reduce"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut reduce.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = reduce.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["points"], 2_000_000);
    let pi = v["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "{pi}");

    // Resuming a finished job changes nothing.
    let again = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(results(&p, &id), res);
    assert_eq!(created_names(&p).len(), 4);
}

#[test]
fn cancel_marks_every_workunit_cancelled_through_cancel_jobs() {
    let mut p = Project::new();
    let job = p.pi_job("can");
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 4);
    let pid = *p.masters.last().unwrap();

    let out = p.mw(&["cancel".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    let waited = p.mw(&["wait".as_ref(), id.as_ref()]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    // The master finishes by itself once every task is cancelled.
    poll_until("the master to exit after the cancel", || !mw_alive(pid));

    let st = status(&p, &id);
    assert_eq!(st["job"]["counts"]["cancelled"], 4, "{st:#}");
    assert_eq!(st["job"]["state"], "cancelled", "{st:#}");
    for r in results(&p, &id) {
        assert_eq!(r["state"], "cancelled", "{r:#}");
    }

    check_cancelled_on_the_server(&mut p, &handles);
    // No master is left and nothing reappears: the job stays cancelled.
    assert!(!mw_alive(pid));
    let again = p.mw(&["wait".as_ref(), id.as_ref()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert_eq!(status(&p, &id)["job"]["counts"]["cancelled"], 4);
}

/// bin/cancel_jobs ran once per workunit, from the project root, with a shell-safe name, and
/// the server then never sends them to a client and reports them with mask 16 (CANCELLED).
fn check_cancelled_on_the_server(p: &mut Project, handles: &[String]) {
    let cancels = p.calls_of("cancel_jobs");
    let mut named = BTreeSet::new();
    for c in &cancels {
        assert_eq!(c["cwd"], p.root.display().to_string());
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args.len(), 2, "{args:?}");
        assert_eq!(args[0], "--name");
        assert!(shell_safe(args[1]), "{args:?}");
        named.insert(args[1].to_string());
    }
    assert_eq!(cancels.len(), handles.len(), "{cancels:#?}");
    assert_eq!(named, handles.iter().cloned().collect::<BTreeSet<_>>());
    // The double's cancel_jobs leaves a marker only for a workunit it knows.
    for h in handles {
        let marker = p.root.join("double/cancel").join(h);
        assert!(marker.is_file(), "{h} was not cancelled on the server");
    }
    p.start_serve();
    poll_until("the cancelled workunits to be reported", || {
        let wus = p.wus();
        wus.len() == handles.len() && wus.iter().all(|w| w["done"] == "error")
    });
    p.stop_serve();
    assert!(p.calls_of("client").is_empty());
    for w in p.wus() {
        assert_eq!(w["error_mask"], 16, "{w:#}");
        assert_eq!(w["cancelled"], true, "{w:#}");
    }
    let asm = p.calls_of("script_assimilator");
    assert_eq!(asm.len(), handles.len());
    for a in &asm {
        let cmd = a["cmd"].as_str().unwrap();
        assert!(
            cmd.starts_with("../bin/mw-assimilator --error 16 "),
            "{cmd}"
        );
    }
}

#[test]
fn cancel_while_create_work_runs_still_cancels_the_workunits() {
    let mut p = Project::new();
    let job = p.pi_job("cw");
    // create_work is called (and recorded) but holds before creating the workunits.
    let hold = p.root.join("double/hold_create_work");
    std::fs::write(&hold, "").unwrap();
    let (id, dir) = p.submit(&job);
    let pid = *p.masters.last().unwrap();
    poll_until("the create_work call", || {
        !p.calls_of("create_work").is_empty()
    });
    let out = p.mw(&["cancel".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    poll_until("every task cancelled in the journal", || {
        tasks(&dir).iter().all(|t| t.state == TaskState::Cancelled)
    });
    // BOINC knows no such workunits yet: cancel_jobs would find nothing.
    assert!(p.calls_of("cancel_jobs").is_empty());
    assert!(p.wus().is_empty());
    // The master does not exit before its create_work call returned.
    assert!(mw_alive(pid));
    std::fs::remove_file(&hold).unwrap();
    poll_until("the master to exit", || !mw_alive(pid));
    // The held batch may hold fewer than 4 (tasks still queued are cancelled before
    // submission); every workunit it created was cancelled once it existed.
    let names = created_names(&p);
    assert!((1..=4).contains(&names.len()), "{names:?}");
    assert_eq!(p.calls_of("create_work").len(), 1);
    check_cancelled_on_the_server(&mut p, &names);
    let waited = p.mw(&["wait".as_ref(), id.as_ref()]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    assert_eq!(status(&p, &id)["job"]["counts"]["cancelled"], 4);
}

/// A cancel that reaches the master while its submit thread holds the tasks (taken from the
/// queue, not yet staged: the window widened with `MW_DELAY_AT`; the tasks then run in the
/// journal without a handle) ends the task there: the batch creates workunits for the
/// others only. Such a cancel was once lost (the task was in neither the queue nor
/// `waiting`), and its workunit was created and run.
#[test]
fn cancel_while_the_submit_thread_holds_a_task_creates_no_workunit_for_it() {
    let mut p = Project::new();
    let job = p.pi_job("ih");
    // The submit thread holds the tasks until the cancel is carried out.
    let gate = tempfile::tempdir().unwrap();
    let gate = gate.path().join("open");
    let hold = format!("boinc-in-hand:until:{}", gate.display());
    let (id, dir) = p.submit_env(&job, &[("MW_DELAY_AT", hold.as_str())]);
    poll_until("the submit thread to take the 4 tasks", || {
        std::fs::read_to_string(dir.join("master.log"))
            .is_ok_and(|l| l.contains("staging a batch of 4 task(s)"))
    });
    assert!(tasks(&dir).iter().all(|t| t.handle.is_none()));
    let out = p.mw(&[
        "cancel".as_ref(),
        id.as_ref(),
        "--task".as_ref(),
        "0".as_ref(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The batch goes on; task 0 ends cancelled when it reaches it, and only once that is
    // committed does the master acknowledge the request (`mw cancel` waited for that within
    // a bound, and said it had not come yet).
    std::fs::write(&gate, "").unwrap();
    poll_until("the master's acknowledgement of the cancel", || {
        let path = dir.join(JOURNAL_FILE);
        let conn = open_checked(&path, false).unwrap();
        mw::journal::read_pending_cancels(&conn, &path)
            .unwrap()
            .is_empty()
    });
    poll_until("the batch's create_work call", || {
        !p.calls_of("create_work").is_empty()
    });
    let names = created_names(&p);
    let created: BTreeSet<u64> = names.iter().map(|n| task_of(n)).collect();
    assert_eq!(created, BTreeSet::from([1, 2, 3]), "{names:?}");
    let t0 = tasks(&dir).into_iter().find(|t| t.index == 0).unwrap();
    assert_eq!(t0.state, TaskState::Cancelled);
}

/// A resumed master that cannot follow the workunits it takes over (its spool thread dies
/// at once: `MW_PANIC_AT=boinc-spool`) fails their tasks and cancels the workunits in BOINC,
/// which the killed master had created (`MW_CRASH_AT=boinc-after-create-work`: their names
/// are journaled as pending). They were once left to run for nobody.
#[test]
fn workunits_a_broken_resumed_master_takes_over_are_cancelled() {
    let p = Project::new();
    let job = p.pi_job("bk");
    let run = |args: &[&std::ffi::OsStr], env: (&str, &str)| {
        Command::new(bin("mw"))
            .args(args)
            .arg("--jobs-dir")
            .arg(p.jobs_dir())
            .env(env.0, env.1)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(
        &["run".as_ref(), job.as_os_str()],
        ("MW_CRASH_AT", "boinc-after-create-work"),
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let created: BTreeSet<String> = created_names(&p).into_iter().collect();
    assert!(!created.is_empty());
    let out = run(
        &["resume".as_ref(), "bk-1".as_ref()],
        ("MW_PANIC_AT", "boinc-spool"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let cancelled: BTreeSet<String> = p
        .calls_of("cancel_jobs")
        .iter()
        .map(|c| c["args"][1].as_str().unwrap().to_string())
        .collect();
    assert!(created.is_subset(&cancelled), "{created:?} {cancelled:?}");
    for r in results(&p, "bk-1") {
        assert_eq!(r["state"], "failed", "{r:#}");
    }
}

/// The workunit names of the (held) first create_work call; the journal recorded each as
/// `pending:<wu>` before the call ran.
fn held_names(p: &Project, dir: &Path) -> Vec<String> {
    poll_until("the create_work call", || {
        !p.calls_of("create_work").is_empty()
    });
    let names: Vec<String> = created_names(p);
    assert!(!names.is_empty());
    let handles: BTreeSet<String> = tasks(dir).into_iter().filter_map(|t| t.handle).collect();
    for n in &names {
        assert!(
            handles.contains(&format!("pending:{n}")),
            "{n}: {handles:?}"
        );
    }
    names
}

/// Whether the project has a workunit of each of `names` (the master may have created
/// others meanwhile, from tasks it handed to a later batch).
fn has_workunits(p: &Project, names: &[String]) -> bool {
    let wus = p.wus();
    names
        .iter()
        .all(|n| wus.iter().any(|w| w["name"] == n.as_str()))
}

/// The task index in a workunit name `mw_<job>_<run>_<task>_<attempt>`.
fn task_of(wu: &str) -> u64 {
    let mut parts = wu.rsplit('_');
    parts.next();
    parts.next().unwrap().parse().unwrap()
}

/// Kills the detached master of this test and waits until it is gone.
fn kill_master(p: &Project) {
    let pid = *p.masters.last().unwrap();
    assert!(mw_alive(pid), "the detached master {pid} is not running");
    // SAFETY: kill(2) on the live `mw` master this test started through `mw submit`.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    poll_until("the killed master to die", || !mw_alive(pid));
}

/// Checks that every workunit a host got had its input files staged in the download
/// hierarchy (a workunit created without them ends as download errors on every host) and
/// that no host failed in the harness.
fn assert_inputs_were_downloadable(p: &Project) {
    for c in p.calls_of("client") {
        assert!(
            c.get("download_error").is_none() && c.get("harness_error").is_none(),
            "a host could not run {}: {c:#}",
            c["wu"]
        );
    }
    for w in p.wus() {
        for r in w["results"].as_array().unwrap() {
            assert_ne!(r["client_state"], "downloading", "{w:#}");
        }
    }
}

/// Resumes the job and checks that every task was done by exactly one workunit, computed
/// once, and that each name journaled before the interrupted create_work call was kept.
fn resume_and_check_once_each(p: &mut Project, id: &str, held: &[String]) {
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_inputs_were_downloadable(p);
    let res = results(p, id);
    assert_eq!(res.len(), 4);
    for r in &res {
        assert_eq!(r["state"], "done", "{r:#}");
    }
    let wus = p.wus();
    let clients = p.calls_of("client");
    for task in 0..4u64 {
        let of_task: Vec<&str> = wus
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .filter(|n| task_of(n) == task)
            .collect();
        assert_eq!(of_task.len(), 1, "task {task}: workunits {of_task:?}");
        let runs = clients.iter().filter(|c| c["wu"] == of_task[0]).count();
        assert_eq!(runs, 1, "{} ran {runs} times", of_task[0]);
    }
    for n in held {
        assert_eq!(
            wus.iter().filter(|w| w["name"] == n.as_str()).count(),
            1,
            "{n}"
        );
        let r = &res[task_of(n) as usize];
        assert_eq!(r["attempts"], 1, "{r:#}");
    }
}

#[test]
fn sigkill_right_after_create_work_then_resume_creates_no_workunit_twice() {
    let mut p = Project::new();
    p.start_serve();
    let job = p.pi_job("crash");
    // create_work is called but holds: the master dies while the batch is being created.
    let hold = p.root.join("double/hold_create_work");
    std::fs::write(&hold, "").unwrap();
    let (id, dir) = p.submit(&job);
    let names = held_names(&p, &dir);
    kill_master(&p);
    // The orphaned create_work call goes on and creates its workunits: the journal never
    // learnt that it returned.
    std::fs::remove_file(&hold).unwrap();
    poll_until("the orphaned batch's workunits", || {
        has_workunits(&p, &names)
    });
    resume_and_check_once_each(&mut p, &id, &names);
    // The resumed master submitted the held names again (each a duplicate, re-attached);
    // a task that was not in the held batch (the batch window closed before it) may get a
    // name of its own, but a held task never gets a second name.
    let calls = p.calls_of("create_work");
    assert!(calls.len() >= 2, "{calls:#?}");
    for c in &calls[1..] {
        for line in c["stdin"].as_str().unwrap().lines() {
            let toks: Vec<&str> = line.split_whitespace().collect();
            let wu = toks
                .iter()
                .position(|t| *t == "--wu_name")
                .and_then(|i| toks.get(i + 1))
                .unwrap_or_else(|| panic!("no --wu_name in {line}"));
            if names.iter().any(|n| task_of(n) == task_of(wu)) {
                assert!(names.iter().any(|n| line.contains(n.as_str())), "{line}");
            }
        }
    }
    p.stop_serve();
}

#[test]
fn batch_with_one_duplicate_name_creates_the_others_once_and_reattaches_it() {
    let mut p = Project::new();
    // create_work inserts two lines per chunk: a duplicate fails its chunk, not the batch.
    std::fs::write(p.root.join("double/create_work_chunk"), "2").unwrap();
    let job = p.pi_job("dup");
    let hold = p.root.join("double/hold_create_work");
    std::fs::write(&hold, "").unwrap();
    let (id, dir) = p.submit(&job);
    let names = held_names(&p, &dir);
    let held = p.calls_of("create_work").remove(0);
    kill_master(&p);
    // The held call creates nothing.
    std::fs::write(p.root.join("double/abort_create_work"), "").unwrap();
    poll_until("the held create_work to give up", || {
        !p.calls_of("create_work_aborted").is_empty()
    });
    std::fs::remove_file(&hold).unwrap();
    std::fs::remove_file(p.root.join("double/abort_create_work")).unwrap();
    assert!(p.wus().is_empty());
    // One workunit of the batch (the second line, if the batch has two) exists already.
    let lines: Vec<&str> = held["stdin"].as_str().unwrap().lines().collect();
    let line = lines[1.min(lines.len() - 1)].to_string();
    let args: Vec<String> = held["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut cw = Command::new(p.root.join("bin/create_work"))
        .args(&args)
        .current_dir(&p.root)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut cw.stdin.take().unwrap(),
        format!("{line}\n").as_bytes(),
    )
    .unwrap();
    assert!(cw.wait().unwrap().success());
    assert_eq!(p.wus().len(), 1);

    p.start_serve();
    resume_and_check_once_each(&mut p, &id, &names);
    p.stop_serve();
    // The resumed master's first call failed on the duplicate; the others were created.
    let calls = p.calls_of("create_work");
    assert!(calls.len() >= 4, "{calls:#?}");
}

/// Where staged file `name` is in the project's download hierarchy (`download/<h>/name`).
fn staged_file(p: &Project, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(p.root.join("download"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join(name))
        .find(|f| f.is_file())
}

/// One `create_work` call whose LAST line names a workunit the project already has: the
/// call inserts the lines before it (one per chunk here) and fails on it; the next call
/// reports each of those as a duplicate in turn. They are this batch's own workunits: their
/// inputs must stay staged (before the fix mw removed them as inputs of older workunits,
/// and every host then failed to download them). Only the input mw staged for the name
/// that existed before is removed again.
#[test]
fn duplicate_in_a_later_chunk_keeps_the_inputs_of_the_workunits_created_before_it() {
    let mut p = Project::new();
    std::fs::write(p.root.join("double/create_work_chunk"), "1").unwrap();
    let job = p.pi_job("late");
    let hold = p.root.join("double/hold_create_work");
    std::fs::write(&hold, "").unwrap();
    let (id, dir) = p.submit(&job);
    let names = held_names(&p, &dir);
    assert!(
        names.len() >= 2,
        "the first batch holds one task only ({names:?}): the master handed its 4 tasks \
         to the batch more than the batch window (300 ms) apart"
    );
    let held = p.calls_of("create_work").remove(0);
    let last: Vec<String> = held["stdin"]
        .as_str()
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let (dup, prog, mw_input) = (&last[1], &last[2], &last[3]);
    // The project already has a workunit of that name, with an input of its own (BOINC
    // files are immutable by name: not the file mw staged for it).
    let own = format!("{dup}_own.tar.gz");
    std::fs::copy(
        staged_file(&p, mw_input).unwrap(),
        p.root.join("download").join(&own),
    )
    .unwrap();
    let args: Vec<String> = held["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut cw = Command::new(p.root.join("bin/create_work"))
        .args(&args)
        .current_dir(&p.root)
        .env("BOINC_DOUBLE_NO_HOLD", "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut cw.stdin.take().unwrap(),
        format!("--wu_name {dup} {prog} {own}\n").as_bytes(),
    )
    .unwrap();
    let out = cw.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.wus().len(), 1);

    p.start_serve();
    std::fs::remove_file(&hold).unwrap();
    poll_until("every task to be final", || {
        tasks(&dir).iter().all(|t| t.state.is_final())
    });
    let waited = p.mw(&["wait".as_ref(), id.as_ref()]);
    p.stop_serve();
    assert_inputs_were_downloadable(&p);
    assert!(waited.status.success(), "{}", text(&waited));
    let res = results(&p, &id);
    assert_eq!(res.len(), 4);
    let wus = p.wus();
    let clients = p.calls_of("client");
    for r in &res {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["attempts"], 1, "{r:#}");
    }
    for n in &names {
        assert_eq!(
            wus.iter().filter(|w| w["name"] == n.as_str()).count(),
            1,
            "{n}"
        );
        let runs = clients.iter().filter(|c| c["wu"] == n.as_str()).count();
        assert_eq!(runs, 1, "{n} ran {runs} times");
    }
    // The first call failed on the last line; each of the others then came back once as a
    // duplicate (plus the test's own call). Tasks the master handed over after the held
    // batch went in calls of their own, which name none of these workunits.
    let naming_these = p
        .calls_of("create_work")
        .iter()
        .filter(|c| {
            let stdin = c["stdin"].as_str().unwrap_or_default();
            stdin.lines().any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|w| names.iter().any(|n| n == w))
            })
        })
        .count();
    assert_eq!(naming_these, names.len() + 1);
    // The input mw staged for the name that existed before was nobody's: removed again.
    assert_eq!(
        staged_file(&p, mw_input),
        None,
        "{mw_input} was left staged"
    );
}

/// A workunit whose input is gone from the download hierarchy ends as a real project ends
/// it: every host that gets it reports a download error (client error, exit status -186,
/// nothing run), the workunit gets its error mask within max_error_results /
/// max_total_results, and mw learns of the failure; no host directory keeps a worker copy.
#[test]
fn workunit_without_its_input_fails_with_download_errors_and_is_not_retried_forever() {
    let mut p = Project::new();
    let job = p.pi_job("lost");
    let hold = p.root.join("double/hold_create_work");
    std::fs::write(&hold, "").unwrap();
    let (id, dir) = p.submit(&job);
    let names = held_names(&p, &dir);
    let held = p.calls_of("create_work").remove(0);
    let first: Vec<&str> = held["stdin"]
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let (lost_wu, lost_input) = (first[1].to_string(), first[3].to_string());
    std::fs::remove_file(p.root.join("double/hold_create_work")).unwrap();
    poll_until("the held batch's workunits", || has_workunits(&p, &names));
    // The input is lost after create_work checked it (before any host fetched it).
    std::fs::remove_file(staged_file(&p, &lost_input).unwrap()).unwrap();
    p.start_serve();
    poll_until("every task to be final", || {
        tasks(&dir).iter().all(|t| t.state.is_final())
    });
    let _ = p.mw(&["wait".as_ref(), id.as_ref()]);
    poll_until("the lost workunit to be assimilated as an error", || {
        p.wus()
            .iter()
            .any(|w| w["name"] == lost_wu.as_str() && w["done"] == "error")
    });
    p.stop_serve();
    let wu = p
        .wus()
        .into_iter()
        .find(|w| w["name"] == lost_wu.as_str())
        .unwrap();
    let sent = wu["results"].as_array().unwrap();
    assert!(!sent.is_empty(), "{wu:#}");
    assert!(
        sent.len() as u64 <= wu["max_total_results"].as_u64().unwrap(),
        "{wu:#}"
    );
    for r in sent {
        assert_eq!(r["outcome"], "client_error", "{wu:#}");
        assert_eq!(r["exit_status"], "-186", "{wu:#}");
    }
    assert_ne!(wu["error_mask"], 0, "{wu:#}");
    let clients = p.calls_of("client");
    let lost: Vec<&Value> = clients
        .iter()
        .filter(|c| c["wu"] == lost_wu.as_str())
        .collect();
    assert_eq!(lost.len(), sent.len(), "{lost:#?}");
    for c in &lost {
        let stderr = c["stderr"].as_str().unwrap();
        assert!(stderr.contains("couldn't get input files"), "{stderr}");
        assert!(stderr.contains(&lost_input), "{stderr}");
    }
    // The task learnt of its workunit's failure: it failed, or it ran again under another
    // name (a retry), and nothing else of the job was disturbed.
    let res = results(&p, &id);
    let task = task_of(&lost_wu) as usize;
    assert!(
        res[task]["state"] == "failed" || res[task]["attempts"].as_u64() > Some(1),
        "{:#}",
        res[task]
    );
    for (i, r) in res.iter().enumerate() {
        if i != task {
            assert_eq!(r["state"], "done", "{r:#}");
        }
    }
    // What the hosts were sent is gone once they quit: no worker copy is left behind.
    for h in std::fs::read_dir(p.root.join("double/hosts"))
        .unwrap()
        .flatten()
    {
        let copy = h
            .path()
            .join("projects")
            .join(mw_tests::boinc_client::PROJECT_DIR)
            .join(mw_tests::boinc_client::WORKER_PHYSICAL);
        assert!(!copy.exists(), "{} left behind", copy.display());
    }
}

/// Writes a task program that announces it started, then waits (bounded) for a gate file.
fn gate_job(p: &Project, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = p.scratch().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let started = dir.join("started");
    let gate = dir.join("gate");
    let script = dir.join("gate.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 1200 ]; do \
             sleep 0.1; i=$((i+1)); done\necho '{{\"ok\": 1}}'\n",
            started.display(),
            gate.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"{name}\"\ninterface = \"boinc\"\n[program]\npath = \"{}\"\n\
             [inputs]\nlist = [1]\n[boinc]\nproject_dir = \"{}\"\n",
            script.display(),
            p.root.display()
        ),
    )
    .unwrap();
    (job, started, gate)
}

#[test]
fn late_result_of_a_cancelled_workunit_does_not_stop_the_assimilator() {
    let mut p = Project::new();
    p.start_serve();
    let (job, started, gate) = gate_job(&p, "gated");
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 1);
    poll_until("the volunteer to run the task", || started.exists());
    // The project's operator cancels the workunit while a volunteer is computing it.
    let out = Command::new(p.root.join("bin/cancel_jobs"))
        .args(["--name", &handles[0]])
        .current_dir(&p.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&gate, "").unwrap();
    // The error is assimilated first (mw records the task as failed), then the late result,
    // whose upload the file deleter already removed: the assimilator must acknowledge it,
    // and must not replace the cancel's record with its own (in CI the master once read
    // the late result's record instead, when both came before its scan).
    let waited = p.mw(&["wait".as_ref(), id.as_ref()]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    poll_until("the late result's assimilation", || {
        p.calls_of("script_assimilator").len() == 2
    });
    let asm = p.calls_of("script_assimilator");
    assert!(
        asm[0]["cmd"].as_str().unwrap().contains("--error 16"),
        "{asm:#?}"
    );
    assert!(
        !asm[1]["cmd"].as_str().unwrap().contains("--error"),
        "{asm:#?}"
    );
    assert_eq!(asm[1]["exit"], 0, "{asm:#?}");
    assert!(!p.root.join("double/assimilator_stopped").exists());
    let r = results(&p, &id);
    assert_eq!(r[0]["state"], "failed", "{r:#?}");
    assert!(
        r[0]["error"].as_str().unwrap().contains("CANCELLED"),
        "{r:#?}"
    );
    // What is left of the workunit in the spool (the late result's record, when the cancel's
    // was taken before it came) names the workunit and why.
    let rec = p.root.join(format!("mw_spool/error_{}.toml", handles[0]));
    if let Ok(record) = std::fs::read_to_string(&rec) {
        assert!(
            record.contains(&handles[0]) && record.contains("no longer exists"),
            "{record}"
        );
    }

    // The next workunit of the app is assimilated as usual.
    let next = p.pi_job("next");
    let (next_id, next_dir) = p.submit(&next);
    let _ = next_dir;
    let waited = p.mw(&["wait".as_ref(), next_id.as_ref()]);
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited));
    assert!(results(&p, &next_id).iter().all(|r| r["state"] == "done"));
    p.stop_serve();
}

#[test]
fn cancel_with_no_master_cancels_the_workunits() {
    let mut p = Project::new();
    let job = p.pi_job("nomaster");
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 4);
    kill_master(&p);
    let out = p.mw(&["cancel".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bin/cancel_jobs marked it cancelled"), "{err}");
    assert!(tasks(&dir).iter().all(|t| t.state == TaskState::Cancelled));
    check_cancelled_on_the_server(&mut p, &handles);
    // Their spool entries were consumed: nothing is left for a master that will never come.
    assert!(
        p.spool_entries("error_").is_empty(),
        "{:?}",
        p.spool_entries("")
    );
    assert!(p.spool_entries("result_").is_empty());
    let again = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("re-attach"));
}

/// `mw cancel` with no master killed after `bin/cancel_jobs` and before the tasks were
/// marked cancelled (`MW_CRASH_AT=cancel-platform-stopped`). A window that was already safe
/// on BOINC (its workunits were always cancelled first): the request is still pending, so
/// `mw resume` applies it before it dispatches anything; every task is cancelled once and
/// no workunit is created again.
#[test]
fn cancel_killed_after_cancel_jobs_then_resume() {
    let mut p = Project::new();
    let job = p.pi_job("cancelkill");
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 4);
    kill_master(&p);
    let out = Command::new(bin("mw"))
        .args(["cancel", &id, "--jobs-dir"])
        .arg(p.jobs_dir())
        .env("MW_CRASH_AT", "cancel-platform-stopped")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(
        tasks(&dir).iter().all(|t| t.state == TaskState::Running),
        "{:#?}",
        tasks(&dir)
    );
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(tasks(&dir).iter().all(|t| t.state == TaskState::Cancelled));
    assert_reported_at_most_once(&reports(&dir), 4);
    // Every workunit cancelled on the server (the resumed master, applying the request,
    // calls `bin/cancel_jobs` for its workunits again: idempotent), none created again.
    let named: BTreeSet<String> = p
        .calls_of("cancel_jobs")
        .iter()
        .map(|c| c["args"][1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, handles.iter().cloned().collect::<BTreeSet<_>>());
    for h in &handles {
        assert!(p.root.join("double/cancel").join(h).is_file(), "{h}");
    }
    assert_eq!(created_names(&p).len(), 4);
}

// ---- Task packing (`[boinc] tasks_per_workunit`) ----

/// A job of `n` tasks (input = index) running `times10.sh` (prints 10 × its input and logs
/// it to `executions.log`), packed `per` to a workunit. Returns (job file, executions log).
fn pack_job(p: &Project, name: &str, n: u64, per: usize) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = p.scratch().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("executions.log");
    let script = dir.join("times10.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread -r n\necho \"$n\" >> '{}'\necho \"$((n * 10))\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inputs: Vec<u64> = (0..n).collect();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"{name}\"\ninterface = \"boinc\"\n[program]\npath = \"{}\"\n\
             [inputs]\nlist = {inputs:?}\n[boinc]\nproject_dir = \"{}\"\n\
             tasks_per_workunit = {per}\n",
            script.display(),
            p.root.display()
        ),
    )
    .unwrap();
    (job, log)
}

/// How many times the master reported each task final (journal events `done`, `failed`,
/// `cancelled`: one per report, even a repeated one).
fn reports(dir: &Path) -> std::collections::BTreeMap<u64, usize> {
    let conn = rusqlite::Connection::open(dir.join(JOURNAL_FILE)).unwrap();
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

/// The tasks a job's program logged, sorted.
fn executions(log: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    v.sort();
    v
}

/// SIGKILL of the master with two pack workunits in flight, then `mw resume`: both packs are
/// re-attached by their names, nothing is created twice, and every task is reported exactly
/// once and ran exactly once.
#[test]
fn sigkill_with_packs_in_flight_then_resume_reports_each_task_once() {
    let mut p = Project::new();
    let (job, log) = pack_job(&p, "packres", 5, 3);
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 2);
    let names: BTreeSet<&String> = handles.iter().collect();
    assert_eq!(names.len(), 2, "two packs: {handles:?}");
    assert!(names.iter().all(|n| n.contains("_p")), "{names:?}");
    kill_master(&p);
    p.start_serve();
    poll_until("both packs to be assimilated", || {
        let wus = p.wus();
        wus.len() == 2 && wus.iter().all(|w| w["done"] == "assimilated")
    });
    p.stop_serve();
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("5 to re-attach"),
        "{}",
        text(&out)
    );
    assert_reported_at_most_once(&reports(&dir), 5);
    let res = results(&p, &id);
    assert_eq!(res.len(), 5);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["output"], i as u64 * 10, "{r:#}");
        assert_eq!(r["attempts"], 1, "{r:#}");
    }
    assert_eq!(executions(&log), [0, 1, 2, 3, 4]);
    assert_eq!(created_names(&p).len(), 2, "no workunit created twice");
    assert!(p.spool_entries("result_").is_empty());
}

/// Killed in the exact window after `create_work` created the pack workunits and before
/// their names were journaled as created (`MW_CRASH_AT=boinc-after-create-work`): the
/// resumed master submits the pending packs again under the same names (duplicates,
/// re-attached) with the pack bundles already staged, and each task runs and is reported once.
#[test]
fn crash_right_after_create_work_of_packs_then_resume() {
    crash_at_create_work_of_packs_then_resume("boinc-after-create-work");
}

/// Killed in the window before `create_work` (`MW_CRASH_AT=boinc-before-create-work`): the
/// packs are staged and their names journaled as pending, but no workunit exists; the
/// resumed master creates them under those names, and each task runs and is reported once.
#[test]
fn crash_right_before_create_work_of_packs_then_resume() {
    crash_at_create_work_of_packs_then_resume("boinc-before-create-work");
}

/// A pack whose members a resumed master takes over in two ways (one with the pack's name
/// journaled as created, re-attached at once; one still `pending:`, queued and submitted
/// again: a kill between the two handle records leaves that) and whose result is already
/// spooled: the result goes to the first; the second, submitted after that, gets its
/// outcome from the kept pack result instead of waiting for a spool file that is gone.
#[test]
fn a_pack_member_that_joins_after_its_pack_came_back_gets_its_outcome() {
    let mut p = Project::new();
    p.start_serve();
    let (job, _log) = pack_job(&p, "split", 4, 2);
    let out = Command::new(bin("mw"))
        .arg("run")
        .arg(&job)
        .arg("--jobs-dir")
        .arg(p.jobs_dir())
        .env("MW_CRASH_AT", "boinc-after-create-work")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    poll_until("both packs' results in the spool", || {
        p.spool_entries("result_").len() == 2
    });
    p.stop_serve();
    let dir = p.jobs_dir().join("split-1");
    // Task 0's pack as if its name had been journaled as created before the kill.
    let first = tasks(&dir).into_iter().find(|t| t.index == 0).unwrap();
    let pending = first.handle.unwrap();
    let wu = pending.strip_prefix("pending:").unwrap().to_string();
    let conn = rusqlite::Connection::open(dir.join(JOURNAL_FILE)).unwrap();
    conn.execute("UPDATE tasks SET handle = ?1 WHERE idx = 0", [&wu])
        .unwrap();
    drop(conn);
    let mates = tasks(&dir)
        .into_iter()
        .filter(|t| t.handle.as_deref() == Some(pending.as_str()))
        .count();
    assert_eq!(mates, 1, "the pack's other member is still pending");
    // (A hang here is the defect: `timeout` ends it.)
    let out = Command::new("timeout")
        .arg("120")
        .arg(bin("mw"))
        .args(["resume", "split-1", "-q", "--jobs-dir"])
        .arg(p.jobs_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_reported_at_most_once(&reports(&dir), 4);
    for (i, r) in results(&p, "split-1").iter().enumerate() {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["output"], i as u64 * 10, "{r:#}");
    }
}

fn crash_at_create_work_of_packs_then_resume(point: &str) {
    let mut p = Project::new();
    p.start_serve();
    let (job, log) = pack_job(&p, "packcrash", 4, 2);
    let out = Command::new(bin("mw"))
        .arg("run")
        .arg(&job)
        .arg("--jobs-dir")
        .arg(p.jobs_dir())
        .env("MW_CRASH_AT", point)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let before = created_names(&p).len();
    assert_eq!(
        before,
        if point == "boinc-before-create-work" {
            0
        } else {
            2
        },
        "workunits when the master died"
    );
    let id = "packcrash-1";
    let dir = p.jobs_dir().join(id);
    let pending: BTreeSet<String> = tasks(&dir).into_iter().filter_map(|t| t.handle).collect();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(
        pending.iter().all(|h| h.starts_with("pending:")),
        "{pending:?}"
    );
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_reported_at_most_once(&reports(&dir), 4);
    for (i, r) in results(&p, id).iter().enumerate() {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["output"], i as u64 * 10, "{r:#}");
    }
    p.stop_serve();
    // Two workunits, each run once; the resumed master's create_work lines were duplicates.
    let wus = p.wus();
    assert_eq!(wus.len(), 2, "{wus:#?}");
    let clients = p.calls_of("client");
    for w in &wus {
        let runs = clients.iter().filter(|c| c["wu"] == w["name"]).count();
        assert_eq!(runs, 1, "{} ran {runs} times", w["name"]);
        assert!(pending.contains(&format!("pending:{}", w["name"].as_str().unwrap())));
    }
    assert_eq!(executions(&log), [0, 1, 2, 3]);
}

/// Cancelling one task of a pack workunit: it is reported cancelled at once; the workunit
/// is not cancelled (its other tasks run on) and their results arrive.
#[test]
fn cancel_of_one_task_inside_a_pack_workunit() {
    let mut p = Project::new();
    let (job, _) = pack_job(&p, "packcan", 3, 3);
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 1);
    let out = p.mw(&[
        "cancel".as_ref(),
        id.as_ref(),
        "--task".as_ref(),
        "1".as_ref(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    poll_until("task 1 to be reported cancelled", || {
        status(&p, &id)["job"]["counts"]["cancelled"] == 1
    });
    // Nobody has run the workunit yet (no serve loop): the cancel did not wait for it.
    assert!(p.calls_of("client").is_empty());
    assert!(
        p.calls_of("cancel_jobs").is_empty(),
        "the pack was cancelled"
    );
    p.start_serve();
    let waited = p.mw(&["wait".as_ref(), id.as_ref()]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    p.stop_serve();
    let res = results(&p, &id);
    assert_eq!(res[0]["state"], "done");
    assert_eq!(res[0]["output"], 0);
    assert_eq!(res[1]["state"], "cancelled", "{:#}", res[1]);
    assert_eq!(res[2]["state"], "done");
    assert_eq!(res[2]["output"], 20);
    assert!(p.calls_of("cancel_jobs").is_empty());
    assert_eq!(p.wus().len(), 1);
    assert_eq!(handles.iter().collect::<BTreeSet<_>>().len(), 1);
    assert_reported_at_most_once(&reports(&dir), 3);
}

/// A result bundle for job `job`, task `task`, exit `code`, with `stdout`.
fn result_bytes(job: &str, task: u64, code: i32, stdout: &str) -> Vec<u8> {
    mw_tests::result_bundle(job, task, code, stdout)
}

/// A volunteer's forged pack result becomes canonical for the pack of tasks 0-2: task 0's
/// result looks genuine, the member filed as task 1 is task 3's (misfiled), task 2 has
/// none, and it adds a result for task 3, which is in the other workunit. Task 0 gets its
/// result, task 1 fails as forged, task 2 is packed again, and task 3 gets its own.
#[test]
fn forged_pack_result_from_a_volunteer_is_refused_task_by_task() {
    use mw_bundle::{pack_result_member, BundleBuilder, PackResultInfo};
    let mut p = Project::new();
    let (job, _) = pack_job(&p, "packforge", 4, 3);
    let (id, dir) = p.submit(&job);
    let handles = p.wait_for_workunits(&dir, 2);
    let first = handles[0].clone();
    assert_eq!(
        handles,
        [&first, &first, &first, &handles[3]].map(|h| h.clone()),
        "the packs are tasks 0-2 and task 3"
    );
    let job_id = id.clone();
    let mut b = BundleBuilder::pack_result(
        PackResultInfo {
            job: job_id.clone(),
            host: "forger".into(),
            tasks: vec![0, 1, 3],
            not_run: vec![],
        },
        "forged pack result",
    );
    b.add_bytes(
        &pack_result_member(0),
        result_bytes(&job_id, 0, 0, "0"),
        false,
    )
    .unwrap();
    b.add_bytes(
        &pack_result_member(1),
        result_bytes(&job_id, 3, 0, "666"),
        false,
    )
    .unwrap();
    b.add_bytes(
        &pack_result_member(3),
        result_bytes(&job_id, 3, 0, "666"),
        false,
    )
    .unwrap();
    // What the assimilator spools for the workunit's canonical result.
    let spooled = p
        .root
        .join("mw_spool")
        .join(format!("result_{first}.tar.gz"));
    b.write_to(&spooled).unwrap();
    // The master takes it before any volunteer ran the workunit (no serve loop yet); the
    // genuine result that comes later is not waited for any more and stays unclaimed.
    poll_until("the master to take the forged result", || !spooled.exists());
    p.start_serve();
    let waited = p.mw(&["wait".as_ref(), id.as_ref()]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    p.stop_serve();
    let res = results(&p, &id);
    assert_eq!(res.len(), 4);
    assert_eq!(res[0]["state"], "done", "{:#}", res[0]);
    assert_eq!(res[0]["output"], 0);
    assert_eq!(res[1]["state"], "failed", "{:#}", res[1]);
    let e = res[1]["error"].as_str().unwrap();
    assert!(
        e.contains("forged or misfiled result: it is for task 3"),
        "{e}"
    );
    assert_eq!(res[2]["state"], "done", "{:#}", res[2]);
    assert_eq!(res[2]["output"], 20);
    assert_eq!(res[3]["state"], "done", "{:#}", res[3]);
    assert_eq!(
        res[3]["output"], 30,
        "the foreign result did not reach task 3"
    );
    // Task 2 went in a third workunit.
    assert_eq!(p.wus().len(), 3);
    assert_reported_at_most_once(&reports(&dir), 4);
}

/// A volunteer's pack result without one member's result, and the master killed right after
/// it removed that spool file (`MW_CRASH_AT=boinc-results-removed`). The file is the only copy of the
/// results (a workunit is assimilated once), so it goes only once the delivered results and
/// the re-packed member's new handle are committed. Before, the file went first: the resumed
/// master had lost the two results and re-attached all three tasks to the pack, whose result
/// never came again, and waited for ever.
#[test]
fn kill_right_after_a_partial_pack_result_is_taken_then_resume() {
    use mw_bundle::{pack_result_member, BundleBuilder, PackResultInfo};
    let mut p = Project::new();
    let (job, log) = pack_job(&p, "packgap", 3, 3);
    let master = Command::new(bin("mw"))
        .arg("run")
        .arg(&job)
        .arg("--jobs-dir")
        .arg(p.jobs_dir())
        .env("MW_CRASH_AT", "boinc-results-removed")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = "packgap-1";
    let dir = p.jobs_dir().join(id);
    let wu = p.wait_for_workunits(&dir, 1)[0].clone();
    // What the assimilator spools for a volunteer's pack result holding tasks 0 and 1 only.
    let mut b = BundleBuilder::pack_result(
        PackResultInfo {
            job: id.into(),
            host: "volunteer".into(),
            tasks: vec![0, 1],
            not_run: vec![],
        },
        "pack result",
    );
    for t in [0u64, 1] {
        let out = (t * 10).to_string();
        b.add_bytes(&pack_result_member(t), result_bytes(id, t, 0, &out), false)
            .unwrap();
    }
    // The volunteer uploads it (the double's hook for a hostile volunteer); the workunit is
    // then assimilated, once.
    let forge = p.root.join("double/forge");
    std::fs::create_dir_all(&forge).unwrap();
    b.write_to(&forge.join(&wu)).unwrap();
    p.start_serve();
    let out = master.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(p.spool_entries("result_").is_empty());
    // Committed before the file went: two results, and task 2 no longer waits for the pack.
    let at_kill = tasks(&dir);
    assert_eq!(at_kill[0].state, TaskState::Done);
    assert_eq!(at_kill[1].state, TaskState::Done);
    assert_ne!(
        at_kill[2].handle.as_deref(),
        Some(wu.as_str()),
        "{at_kill:#?}"
    );
    let out = Command::new("timeout")
        .args(["-k", "10", "300"])
        .arg(bin("mw"))
        .args(["resume", id, "--jobs-dir"])
        .arg(p.jobs_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    p.stop_serve();
    assert!(out.status.success(), "{}", text(&out));
    assert_reported_at_most_once(&reports(&dir), 3);
    let res = results(&p, id);
    assert_eq!(res.len(), 3);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["output"], i as u64 * 10, "{r:#}");
    }
    // Task 2 ran again, in a workunit of its own.
    assert_eq!(created_names(&p).len(), 2);
    assert_eq!(executions(&log), [0, 1, 2, 2]);
}

/// A job of `n` tasks, `per` to a workunit, whose program writes its declared output
/// `out.txt` (the input times 10) and prints the same number.
fn output_job(p: &Project, name: &str, n: u64, per: usize) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = p.scratch().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("times10.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r n\necho \"$((n * 10))\" > out.txt\necho \"$((n * 10))\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inputs: Vec<u64> = (0..n).collect();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"{name}\"\ninterface = \"boinc\"\noutputs = [\"out.txt\"]\n\
             [program]\npath = \"{}\"\n[inputs]\nlist = {inputs:?}\n[boinc]\n\
             project_dir = \"{}\"\ntasks_per_workunit = {per}\n",
            script.display(),
            p.root.display()
        ),
    )
    .unwrap();
    job
}

/// A result that came back but cannot be stored on the master's machine (here its output
/// file's place is taken by a directory; a full disk fails the same write) is not the
/// volunteer's fault: the master stops with the reason, the task stays in flight and its
/// spool file stays; once the place is free, `mw resume` takes the result (no task runs
/// twice, no workunit is created again).
fn a_result_that_cannot_be_stored_stops_the_master_and_is_taken_on_resume(per: usize) {
    let mut p = Project::new();
    let job = output_job(&p, &format!("nostore{per}"), 2, per);
    let (id, dir) = p.submit(&job);
    let wus = 2 / per;
    p.wait_for_workunits(&dir, wus);
    let blocked = dir.join("results/task-1/out.txt");
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    p.start_serve();
    let pid = *p.masters.last().unwrap();
    poll_until("the master to stop", || !mw_alive(pid));
    p.stop_serve();
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(
        log.contains("cannot store output `out.txt`") && log.contains("mw resume"),
        "{log}"
    );
    assert!(!log.contains("bad result bundle"), "{log}");
    let t = tasks(&dir);
    assert_eq!(t[1].state, TaskState::Running, "{t:?}");
    assert!(!p.spool_entries("result_").is_empty());
    assert_eq!(status(&p, &id)["job"]["state"], "stopped (mw resume)");

    std::fs::remove_dir_all(&blocked).unwrap();
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    let res = results(&p, &id);
    assert_eq!(res.len(), 2);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["output"], i as u64 * 10, "{r:#}");
        assert_eq!(r["attempts"], 1, "{r:#}");
        let file = dir.join(format!("results/task-{i}/out.txt"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            (i * 10).to_string()
        );
    }
    assert_eq!(created_names(&p).len(), wus, "no workunit created twice");
    assert!(p.spool_entries("result_").is_empty());
}

#[test]
fn a_result_that_cannot_be_stored_stops_the_master_and_is_taken_on_resume_lone() {
    a_result_that_cannot_be_stored_stops_the_master_and_is_taken_on_resume(1);
}

#[test]
fn a_result_that_cannot_be_stored_stops_the_master_and_is_taken_on_resume_pack() {
    a_result_that_cannot_be_stored_stops_the_master_and_is_taken_on_resume(2);
}

/// The project's download directory fills up while tasks are staged (a tiny tmpfs over it):
/// the master stops with the reason instead of failing every task the same way, no task is
/// recorded as failed, and once there is room, `mw resume` finishes the job.
#[test]
fn a_full_project_disk_stops_the_master_and_resume_finishes() {
    let mut p = Project::new();
    let download = p.root.join("download");
    assert!(download.is_dir(), "{}", download.display());
    let guard = mw_tests::Tmpfs::mount(&download, "8k");
    // Inputs that do not compress: each task bundle is larger than the whole tmpfs.
    let dir = p.scratch().join("full");
    std::fs::create_dir_all(&dir).unwrap();
    let inputs: Vec<String> = (0..3u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let noise: String = (0..12_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            format!("{{ n = {i}, noise = \"{noise}\" }}")
        })
        .collect();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"full\"\ninterface = \"boinc\"\n[program]\npath = \"{}\"\n\
             [inputs]\nlist = [{}]\n[boinc]\nproject_dir = \"{}\"\n",
            program("null-task"),
            inputs.join(", "),
            p.root.display()
        ),
    )
    .unwrap();
    let (id, dir) = p.submit(&job);
    let pid = *p.masters.last().unwrap();
    poll_until("the master to stop", || !mw_alive(pid));
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(
        log.contains("No space left on device") && log.contains("mw resume"),
        "{log}"
    );
    let st = status(&p, &id);
    assert_eq!(st["job"]["state"], "stopped (mw resume)", "{st:#}");
    assert_eq!(st["job"]["counts"]["failed"], 0, "{st:#}");
    assert!(p.wus().is_empty(), "no workunit without its input");

    drop(guard);
    p.start_serve();
    let out = p.mw(&["resume".as_ref(), id.as_ref()]);
    p.stop_serve();
    assert!(out.status.success(), "{}", text(&out));
    let res = results(&p, &id);
    assert_eq!(res.len(), 3);
    assert!(res.iter().all(|r| r["state"] == "done"), "{res:#?}");
}

/// The master killed after the outcomes it took from the spool were committed and before it
/// removed their spool files (`MW_CRASH_AT=boinc-result-committed`). The results are in the
/// journal; the files, which no task waits for any more, are removed by `mw resume` (they
/// stayed in the project's spool for ever: a resumed master waits only for the workunits
/// of unfinished tasks), and every task is reported and run exactly once.
#[test]
fn kill_after_results_are_committed_before_their_spool_files_go_then_resume() {
    let mut p = Project::new();
    let (job, log) = pack_job(&p, "spoolleft", 2, 1);
    let master = Command::new(bin("mw"))
        .arg("run")
        .arg(&job)
        .arg("--jobs-dir")
        .arg(p.jobs_dir())
        .env("MW_CRASH_AT", "boinc-result-committed")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = "spoolleft-1";
    let dir = p.jobs_dir().join(id);
    p.wait_for_workunits(&dir, 2);
    p.start_serve();
    let out = master.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let done = tasks(&dir)
        .iter()
        .filter(|t| t.state == TaskState::Done)
        .count();
    assert!(done >= 1, "{:#?}", tasks(&dir));
    // The files of what was taken are still there (and a later workunit's maybe too).
    assert!(
        p.spool_entries("result_").len() >= done,
        "{:?}",
        p.spool_entries("")
    );
    let out = Command::new("timeout")
        .args(["-k", "10", "300"])
        .arg(bin("mw"))
        .args(["resume", id, "--jobs-dir"])
        .arg(p.jobs_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Every workunit has run by now; what the resumed master took it removed.
    poll_until("both workunits run", || executions(&log).len() == 2);
    p.stop_serve();
    assert!(
        p.spool_entries("result_").is_empty(),
        "{:?}",
        p.spool_entries("")
    );
    assert_reported_at_most_once(&reports(&dir), 2);
    let res = results(&p, id);
    assert_eq!(res.len(), 2);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r["state"], "done", "{r:#}");
        assert_eq!(r["output"], i as u64 * 10, "{r:#}");
    }
    assert_eq!(executions(&log), [0, 1]);
}
