//! End to end through BOINC: `mw run` with `interface = "boinc"` against a project laid out by
//! the BOINC server TEST DOUBLE (`boinc_server_double`, which stands in for BOINC's server
//! daemons) into which the real `mw-boinc-setup` installed mw; every workunit is executed by
//! Debian's REAL `boinc` client running the real `mw-worker`, then validated and assimilated
//! by the real `mw-validator` / `mw-assimilator` called as BOINC's script daemons call them.
//!
//! Needs `cargo build --workspace` first (mw, mw-worker, mw-boinc-setup, mw-validator,
//! mw-assimilator and the example programs) and the `boinc-client` package.
//! No sleeps synchronise anything: `mw run` returns when every task has an outcome.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_tests::{bin, bin_dir, workspace_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

struct Project {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: Child,
}

impl Project {
    fn new(quorum: u32) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("proj");
        let root = mw_tests::boinc_project(&root, &["--quorum", &quorum.to_string()]);
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

    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("double/calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn calls_of(&self, tool: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["tool"] == tool)
            .collect()
    }

    fn wus(&self) -> Vec<Value> {
        let mut v: Vec<Value> = std::fs::read_dir(self.root.join("double/wus"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
            .collect();
        v.sort_by_key(|w| w["id"].as_u64());
        v
    }

    /// Writes a job file in the project's scratch dir and runs `mw run` on it.
    fn run(&self, name: &str, body: &str) -> Output {
        self.run_with(name, body, "")
    }

    /// Like `run`, with extra `[boinc]` lines.
    fn run_with(&self, name: &str, body: &str, boinc: &str) -> Output {
        self.run_env(name, body, boinc, &[])
    }

    /// Like `run_with`, with extra environment variables for `mw`.
    fn run_env(&self, name: &str, body: &str, boinc: &str, env: &[(&str, &str)]) -> Output {
        let dir = self.root.parent().unwrap().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = dir.join("job.toml");
        std::fs::write(
            &job,
            format!(
                "name = \"{name}\"\ninterface = \"boinc\"\n{body}\n[boinc]\nproject_dir = \"{}\"\n{boinc}",
                self.root.display()
            ),
        )
        .unwrap();
        Command::new(bin("mw"))
            .arg("run")
            .arg(&job)
            .arg("-q")
            .arg("--jobs-dir")
            .arg(dir.join("jobs"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("double/stop"), "");
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn program(name: &str) -> String {
    bin_dir().join(name).display().to_string()
}

/// Every workunit was run by the real client to success, assimilated, and cleaned up.
fn check_all_ran(p: &Project, n: usize, results_per_wu: usize) {
    let wus = p.wus();
    assert_eq!(wus.len(), n, "{wus:#?}");
    let clients = p.calls_of("client");
    for w in &wus {
        let name = w["name"].as_str().unwrap();
        assert!(shell_safe(name), "workunit name {name:?}");
        assert_eq!(w["done"], "assimilated", "{w:#}");
        let runs: Vec<&Value> = clients.iter().filter(|c| c["wu"] == name).collect();
        assert_eq!(runs.len(), results_per_wu, "{runs:#?}");
        for r in runs {
            assert_eq!(r["state"], "uploaded", "{r:#}");
            assert_eq!(r["exit_status"], "0", "{r:#}");
        }
        for r in w["results"].as_array().unwrap() {
            // Upload files vanish right after assimilation, as on a real server.
            let up = r["upload"].as_str().unwrap();
            assert!(!Path::new(up).exists(), "{up} still there");
            assert!(up.contains("/upload/"), "{up}");
        }
        for f in w["inputs"].as_array().unwrap() {
            assert!(shell_safe(f.as_str().unwrap()), "staged file name {f}");
        }
        // The program bundle is shared and marked <no_delete/>; it stays staged where
        // BOINC's dir_hier_path puts it, with its .md5 cache file.
        let prog = w["inputs"][0].as_str().unwrap();
        let h = mw::boinc::dir_hier_path(prog, 1024).unwrap();
        let staged = p.root.join("download").join(&h).join(prog);
        assert!(staged.is_file(), "{}", staged.display());
        let md5 = std::fs::read_to_string(format!("{}.md5", staged.display())).unwrap();
        let (sum, size) = md5.trim().split_once(' ').unwrap();
        assert_eq!(sum.len(), 32);
        let size: f64 = size.parse().unwrap();
        assert_eq!(size as u64, std::fs::metadata(&staged).unwrap().len());
    }
    // create_work ran from the project root with --stdin, one line per workunit.
    let cw = p.calls_of("create_work");
    assert!(!cw.is_empty());
    let mut lines = 0;
    for c in &cw {
        assert_eq!(c["cwd"], p.root.display().to_string());
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--stdin"), "{args:?}");
        for a in &args {
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b)),
                "{a:?}"
            );
        }
        lines += c["stdin"].as_str().unwrap().lines().count();
    }
    assert_eq!(lines, n);
    // Assimilator called as script_assimilator does: `../bin/mw-assimilator WU_ID FILE`.
    let asm = p.calls_of("script_assimilator");
    assert_eq!(asm.len(), n);
    for a in &asm {
        let cmd = a["cmd"].as_str().unwrap();
        assert!(cmd.starts_with("../bin/mw-assimilator "), "{cmd}");
        assert_eq!(a["exit"], 0);
    }
    // Only the shared program bundle stays staged: every task bundle (and its .md5) went
    // with its workunit in the file deleter's pass.
    let left_tasks = staged_task_bundles(&p.root);
    assert!(
        left_tasks.is_empty(),
        "task bundles left in download/: {left_tasks:?}"
    );
    // The master consumed every spooled result.
    let left: Vec<_> = std::fs::read_dir(p.root.join("mw_spool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("result_"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Task bundles (`*_task.tar.gz`, and their `.md5`) anywhere under `download/`.
fn staged_task_bundles(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root.join("download")).unwrap().flatten() {
        let entries: Vec<PathBuf> = if d.path().is_dir() {
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![d.path()]
        };
        for e in entries {
            let n = e.file_name().unwrap().to_string_lossy().into_owned();
            if n.contains("_task.tar.gz") {
                out.push(n);
            }
        }
    }
    out
}

/// Writes an executable shell script in the project's scratch dir; returns its path.
fn write_script(p: &Project, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = p.root.parent().unwrap().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn monte_pi_through_boinc_prints_pi() {
    let p = Project::new(1);
    // examples/monte_pi/job.toml with 4 smaller tasks and programs from target/<profile>.
    let example =
        std::fs::read_to_string(workspace_root().join("examples/monte_pi/job.toml")).unwrap();
    assert!(example.contains("monte-pi-task"));
    let out = p.run(
        "pi",
        &format!(
            "[program]\npath = \"{}\"\n[inputs.sweep]\nseed = {{ start = 0, end = 4 }}\n\
             points = [500000]\n[reduce]\npath = \"{}\"\n",
            program("monte-pi-task"),
            program("monte-pi-reduce")
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.contains("\"pi\"")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    let pi = v["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "{pi}");
    assert_eq!(v["points"], 2_000_000);
    check_all_ran(&p, 4, 1);
    // Quorum 1: the validator's init ran once per result, compare never.
    assert_eq!(p.calls_of("script_validator").len(), 4);
}

#[test]
fn primes_through_boinc_match_multicore() {
    let p = Project::new(1);
    let body = format!(
        "[program]\npath = \"{}\"\n[inputs.sweep]\nchunk = {{ start = 0, end = 4 }}\n\
         size = [2500]\nmax = [10000]\n[reduce]\npath = \"{}\"\n",
        program("prime-task"),
        program("prime-reduce")
    );
    let out = p.run("primes", &body);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_all_ran(&p, 4, 1);
    // The same job on local cores gives the same answer.
    let dir = p.root.parent().unwrap().join("primes");
    let local = Command::new(bin("mw"))
        .arg("run")
        .arg(dir.join("job.toml"))
        .args(["-q", "--interface", "multicore", "--jobs-dir"])
        .arg(dir.join("jobs-local"))
        .output()
        .unwrap();
    assert!(local.status.success());
    let count = |s: &str| -> Value {
        let l = s.lines().find(|l| l.contains("\"count\"")).unwrap();
        serde_json::from_str(l).unwrap()
    };
    let (b, m) = (
        count(&stdout),
        count(&String::from_utf8_lossy(&local.stdout)),
    );
    assert_eq!(b, m);
    assert!(b["count"].as_u64().unwrap() > 0);
}

#[test]
fn failing_task_on_two_hosts_ends_with_its_exit_status_and_stderr() {
    let p = Project::new(1);
    // Two volunteers only (one result per host): with the defaults, the two client errors
    // they can return are enough to declare the task failed.
    std::fs::write(p.root.join("double/host_count"), "2").unwrap();
    // size 0 makes prime-task exit non-zero: a client error on every host. The job deadline
    // is only a hang guard here; the task must end by BOINC's own limits.
    let out = p.run_with(
        "bad",
        &format!(
            "[program]\npath = \"{}\"\n[inputs]\nlist = [{{ chunk = 0, size = 0, max = 10 }}]\n",
            program("prime-task")
        ),
        "job_deadline_secs = 600\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let all = format!("{stdout}\n{stderr}");
    assert!(all.contains("error mask"), "{all}");
    assert!(all.contains("TOO_MANY_ERROR_RESULTS"), "{all}");
    assert!(!all.contains("deadline"), "{all}");
    // The reason reached mw: the task's exit status and its stderr, from the result bundles
    // the clients uploaded although the task failed.
    assert!(
        all.contains("exit status 2") || all.contains("exit status 1"),
        "{all}"
    );
    assert!(all.contains("size must be positive"), "{all}");
    let clients = p.calls_of("client");
    assert_eq!(clients.len(), 2, "{clients:#?}");
    assert_ne!(clients[0]["host"], clients[1]["host"]);
    for c in &clients {
        assert_eq!(c["state"], "compute error", "{c:#}");
        assert!(
            c["stderr"]
                .as_str()
                .unwrap()
                .contains("size must be positive"),
            "{c:#}"
        );
    }
    let asm = p.calls_of("script_assimilator");
    assert_eq!(asm.len(), 1);
    assert!(asm[0]["cmd"]
        .as_str()
        .unwrap()
        .starts_with("../bin/mw-assimilator --error "));
    // The master removed the error record once the task error was recorded.
    let left: Vec<_> = std::fs::read_dir(p.root.join("mw_spool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("error_"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(staged_task_bundles(&p.root).is_empty());
}

#[test]
fn disagreeing_results_name_the_differing_field() {
    let p = Project::new(2);
    // Every run prints another number: no two results ever agree.
    let task = write_script(
        &p,
        "random.sh",
        "echo \"{\\\"x\\\": $(od -An -N4 -tu4 /dev/urandom | tr -d ' '), \\\"y\\\": 1}\"",
    );
    let out = p.run_with(
        "dis",
        &format!("[program]\npath = \"{task}\"\n[inputs]\nlist = [1]\n"),
        "quorum = 2\ncomparison = \"json\"\nrel_tolerance = 1e-6\njob_deadline_secs = 600\n",
    );
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("TOO_MANY_SUCCESS_RESULTS"), "{all}");
    assert!(
        all.contains("results disagreed: `stdout.json`: $.x: "),
        "{all}"
    );
    assert!(all.contains(" vs "), "{all}");
    assert!(all.contains("(rel tol 1e-6)"), "{all}");
    // Quorum 2 with the default max_success_results 3: four results on four hosts.
    let clients = p.calls_of("client");
    let hosts: std::collections::BTreeSet<&str> = clients
        .iter()
        .map(|c| c["host"].as_str().unwrap())
        .collect();
    assert_eq!(clients.len(), 4, "{clients:#?}");
    assert_eq!(hosts.len(), 4, "one result per host: {hosts:?}");
}

#[test]
fn job_deadline_fails_a_task_without_quorum_and_cancels_its_workunit() {
    let p = Project::new(2);
    // One host and quorum 2: the second result can never be sent.
    std::fs::write(p.root.join("double/host_count"), "1").unwrap();
    let out = p.run_with(
        "late",
        &format!(
            "[program]\npath = \"{}\"\n[inputs.sweep]\nseed = {{ start = 0, end = 1 }}\n\
             points = [1000]\n",
            program("monte-pi-task")
        ),
        "quorum = 2\njob_deadline_secs = 3\n",
    );
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("no quorum within the job's deadline of 3 s"),
        "{all}"
    );
    let wus = p.wus();
    assert_eq!(wus.len(), 1);
    let cancels = p.calls_of("cancel_jobs");
    assert_eq!(cancels.len(), 1, "{cancels:#?}");
    assert_eq!(cancels[0]["args"][1], wus[0]["name"]);
}

/// A pack sizer's probe (`target_job_secs`: the first pack of one task measures the run
/// time, the other tasks wait for it) that misses the job's deadline ends like any other
/// workunit, and the tasks behind it go on (and here miss it too); the submit thread once
/// waited for a wake-up that never came, and `mw run` hung.
#[test]
fn a_probe_pack_past_the_job_deadline_does_not_hold_the_other_tasks() {
    let p = Project::new(2);
    // One host and quorum 2: no workunit can ever be completed.
    std::fs::write(p.root.join("double/host_count"), "1").unwrap();
    let out = p.run_with(
        "probe",
        &format!(
            "[program]\npath = \"{}\"\n[inputs.sweep]\nseed = {{ start = 0, end = 4 }}\n\
             points = [1000]\n",
            program("monte-pi-task")
        ),
        "quorum = 2\njob_deadline_secs = 2\ntasks_per_workunit = 4\ntarget_job_secs = 60\n",
    );
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    // One result line each.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .matches("no quorum within the job's deadline of 2 s")
            .count(),
        4,
        "{all}"
    );
}

#[test]
fn two_jobs_directories_run_the_same_job_against_one_project() {
    let p = Project::new(1);
    let dir = p.root.parent().unwrap().join("same");
    std::fs::create_dir_all(&dir).unwrap();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"same\"\ninterface = \"boinc\"\n[program]\npath = \"{}\"\n\
             [inputs.sweep]\nseed = {{ start = 0, end = 2 }}\npoints = [1000]\n\
             [boinc]\nproject_dir = \"{}\"\n",
            program("monte-pi-task"),
            p.root.display()
        ),
    )
    .unwrap();
    // Two researchers (two jobs directories), the same job, one project, at the same time:
    // both get job id same-1.
    let run = |jobs: &str| {
        Command::new(bin("mw"))
            .arg("run")
            .arg(&job)
            .arg("-q")
            .arg("--jobs-dir")
            .arg(dir.join(jobs))
            .spawn()
            .unwrap()
    };
    let (a, b) = (run("jobs-a"), run("jobs-b"));
    for (name, child) in [("a", a), ("b", b)] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "run {name}: {out:?}");
    }
    assert!(dir.join("jobs-a/same-1").is_dir() && dir.join("jobs-b/same-1").is_dir());
    let wus = p.wus();
    assert_eq!(wus.len(), 4, "{wus:#?}");
    let names: std::collections::BTreeSet<&str> =
        wus.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    assert!(wus.iter().all(|w| w["done"] == "assimilated"));
    for c in p.calls_of("create_work") {
        assert!(!c.to_string().contains("Duplicate"), "{c}");
    }
}

#[test]
fn quorum_two_with_json_comparison() {
    let p = Project::new(2);
    let out = p.run_with(
        "pi2",
        &format!(
            "[program]\npath = \"{}\"\n[inputs.sweep]\nseed = {{ start = 0, end = 2 }}\n\
             points = [200000]\n[reduce]\npath = \"{}\"\n",
            program("monte-pi-task"),
            program("monte-pi-reduce")
        ),
        "quorum = 2\ncomparison = \"json\"\nrel_tolerance = 1e-9\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"pi\""), "{stdout}");
    let wus = p.wus();
    let new: Vec<&Value> = wus.iter().collect();
    assert_eq!(new.len(), 2);
    let clients = p.calls_of("client");
    for w in &new {
        assert_eq!(w["min_quorum"], 2);
        assert_eq!(w["done"], "assimilated");
        let name = w["name"].as_str().unwrap();
        let hosts: Vec<&str> = clients
            .iter()
            .filter(|c| c["wu"] == name)
            .map(|c| c["host"].as_str().unwrap())
            .collect();
        assert_eq!(hosts.len(), 2, "two results on two hosts: {hosts:?}");
        assert_ne!(hosts[0], hosts[1]);
    }
    let compares: Vec<Value> = p
        .calls_of("script_validator")
        .into_iter()
        .filter(|c| {
            c["cmd"]
                .as_str()
                .unwrap()
                .starts_with("../bin/mw-validator-compare ")
        })
        .collect();
    assert!(compares.len() >= 2, "{compares:#?}");
    assert!(compares.iter().all(|c| c["exit"] == 0));
}

#[test]
fn refused_up_front_without_mw_installed_or_as_another_user() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("bare");
    let st = Command::new(bin("boinc_server_double"))
        .arg("make-project")
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"r\"\ninterface = \"boinc\"\n[program]\npath = \"{}\"\n[inputs]\n\
             list = [1]\n[boinc]\nproject_dir = \"{}\"\n",
            program("null-task"),
            root.display()
        ),
    )
    .unwrap();
    let jobs = tmp.path().join("jobs");
    let run = |cmd: &mut Command| {
        let out = cmd
            .arg("run")
            .arg(&job)
            .arg("-q")
            .arg("--jobs-dir")
            .arg(&jobs)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // mw is not installed in the project: exit 2, saying what to run; no job was created.
    let (code, err) = run(&mut Command::new(bin("mw")));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mw-boinc-setup --project-dir"), "{err}");
    assert!(!jobs.exists(), "a refused job left {}", jobs.display());

    // Installed, but the master runs as a user who cannot write the download hierarchy
    // (switching users needs root; the suite runs as root in CI).
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the part run as another user is not exercised");
        return;
    }
    let out = Command::new(bin("mw-boinc-setup"))
        .arg("--project-dir")
        .arg(&root)
        .arg("--worker")
        .arg(bin("mw-worker"))
        .arg("--validator")
        .arg(bin("mw-validator"))
        .arg("--assimilator")
        .arg(bin("mw-assimilator"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("mw"));
    let (code, err) = run(&mut as_nobody);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("download"), "{err}");
    assert!(err.contains("project's owner"), "{err}");
    assert!(!jobs.exists(), "a refused job left {}", jobs.display());
}

/// A job whose `max_output` is over what the project's validator and assimilator accept
/// would have volunteers compute results the server then refuses: `mw run` refuses it up
/// front (exit 2, naming the server's setting and how to raise it), creating no workunit.
#[test]
fn max_output_over_the_servers_limit_is_refused_up_front() {
    let p = Project::new(1);
    let body = format!(
        "max_output = \"32MiB\"\n[program]\npath = \"{}\"\n[inputs]\nlist = [1, 2]\n",
        program("null-task")
    );
    let out = p.run("big", &body);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("max_output_bytes"), "{err}");
    assert!(
        err.contains("mw-boinc-setup --max-output-bytes 33554432"),
        "{err}"
    );
    let jobs = p.root.parent().unwrap().join("big/jobs");
    assert!(!jobs.exists(), "a refused job left {}", jobs.display());
    assert!(p.calls_of("create_work").is_empty(), "{:#?}", p.calls());
    // Within the server's limit, the same job runs.
    let out = p.run("fits", &body.replace("32MiB", "16MiB"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its two workunits (one batch, or two when the master handed the tasks over apart).
    let created: usize = p
        .calls_of("create_work")
        .iter()
        .map(|c| c["stdin"].as_str().unwrap_or_default().lines().count())
        .sum();
    assert_eq!(created, 2, "{:#?}", p.calls());
}

/// Six tasks packed three to a workunit: two workunits, each run once by the real client
/// (exit 0: a pack succeeds whenever its result is written), validated and assimilated; the
/// task that fails fails alone with its exit status and stderr, its neighbours succeed.
#[test]
fn pack_with_a_failing_task_through_boinc() {
    let p = Project::new(1);
    let task = write_script(
        &p,
        "fail4.sh",
        "read -r n\nif [ \"$n\" -eq 4 ]; then echo 'task four is broken' >&2; exit 3; fi\necho \"$((n * 10))\"",
    );
    let out = p.run_with(
        "packs",
        &format!("[program]\npath = \"{task}\"\n[inputs]\nlist = [0, 1, 2, 3, 4, 5]\n"),
        "tasks_per_workunit = 3\njob_deadline_secs = 600\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{stdout}");
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
    check_all_ran(&p, 2, 1);
    assert!(p
        .wus()
        .iter()
        .all(|w| w["name"].as_str().unwrap().contains("_p")));
    let init = p.calls_of("script_validator");
    assert_eq!(init.len(), 2, "{init:#?}");
}

/// `mw run` ends only once its spool thread has removed every result it delivered. The
/// delay point holds that thread between delivering the last result and removing its file,
/// where before the master could end first and leave the file in `mw_spool` for good (one
/// result bundle of a finished job per such exit).
#[test]
fn the_master_ends_only_after_removing_the_results_it_delivered() {
    let p = Project::new(1);
    let out = p.run_env(
        "spooled",
        &format!(
            "[program]\npath = \"{}\"\n[inputs]\nlist = [1, 2, 3]\n",
            program("null-task")
        ),
        "",
        &[("MW_DELAY_AT", "boinc-result-delivered:700")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_all_ran(&p, 3, 1);
}
