//! Shared helpers for mw's end-to-end tests: locating the real binaries built by cargo and
//! making scratch directories. Test doubles (HTCondor pool, BOINC server) live in `src/bin/`
//! and each says at its top that it is a test double; the HTCondor doubles are built as
//! `mw-test-condor_*` and reach tests under the real names only through
//! [`condor_double_path`]'s symlinks.
//!
//! This crate is never shipped; nothing in the product may depend on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::path::PathBuf;

/// Directory holding the workspace's built binaries (`target/debug` or `target/release`),
/// found from the running test executable (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of a workspace binary, e.g. `bin("mw")`. Panics with a hint when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// The HTCondor tools the pool double stands in for. Their doubles are built as
/// `mw-test-<tool>` (tests/src/bin/), never under the real names, so a build directory put on
/// PATH never shadows a real HTCondor.
pub const CONDOR_DOUBLE_TOOLS: [&str; 4] =
    ["condor_submit", "condor_q", "condor_rm", "condor_history"];

/// Makes `parent/condor-double-bin/` holding symlinks named like the real HTCondor tools
/// (`condor_submit`, ...) to this build's doubles (`mw-test-condor_submit`, ...), and returns
/// it: put it first on PATH, or pass it to `CondorCli::with_bin_dir`. Idempotent.
pub fn condor_double_path(parent: &std::path::Path) -> PathBuf {
    let dir = parent.join("condor-double-bin");
    std::fs::create_dir_all(&dir).expect("create the condor double bin dir");
    for tool in CONDOR_DOUBLE_TOOLS {
        let link = dir.join(tool);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(bin(&format!("mw-test-{tool}")), &link)
                .expect("symlink a condor double");
        }
    }
    dir
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
pub mod boinc_client;
pub mod condor_double;

/// What a run of the `mw` binary printed and how it exited.
#[derive(Debug)]
pub struct MwOut {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `mw ARGS` in `dir` with `MW_JOBS_DIR=dir/jobs` and asserts it did not panic.
pub fn run_mw(dir: &std::path::Path, args: &[&str]) -> MwOut {
    let out = std::process::Command::new(bin("mw"))
        .args(args)
        .current_dir(dir)
        .env("MW_JOBS_DIR", dir.join("jobs"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mw");
    let o = MwOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stderr.contains("panicked"),
        "mw {args:?} panicked:\n{}",
        o.stderr
    );
    o
}

/// A task program for the stopped-rank tests (`stop.sh` in `dir`): it echoes its input, but
/// the task with input `{"i":3}` first writes its parent's pid (the MPI rank running it) to
/// `pid_file` and stops that rank with SIGSTOP. Hand the guard's end to
/// [`kill_stopped_rank`].
pub fn rank_stopping_script(dir: &std::path::Path, pid_file: &std::path::Path) -> PathBuf {
    script(
        dir,
        "stop.sh",
        &format!(
            "x=$(cat)\ncase \"$x\" in *'\"i\":3}}'*) echo $PPID > '{}'; kill -STOP $PPID ;; esac\necho \"$x\"",
            pid_file.display()
        ),
    )
}

/// Leaves no stopped rank behind: SIGKILLs (and resumes) the pid a
/// [`rank_stopping_script`] task recorded in `pid_file`, if any.
pub fn kill_stopped_rank(pid_file: &std::path::Path) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 1)
    {
        // SAFETY: kill only sends signals, to the pid the task recorded as its rank's.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGCONT);
        }
    }
}

/// Writes an executable `/bin/sh` script `name` with `body` into `dir`.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    p
}

/// Makes `cmd` (an `mpirun` command line, possibly behind `timeout`) run here: Open MPI as
/// root in a container with few cores (reference/mpi.md), stdin closed, and two settings
/// that keep concurrent `mpirun`s from hanging each other. Returns the session-directory
/// guard: keep it until `mpirun` has ended.
///
/// - A session directory of its own (`OMPI_MCA_orte_tmpdir_base`): Open MPI 4 creates
///   `/tmp/ompi.<host>.<uid>` itself, and two `mpirun`s starting at the same instant race for
///   it ("mkdir ... File exists", orte_init fails). Removed when the guard is dropped.
/// - `HWLOC_COMPONENTS=-gl`: hwloc's GL plugin (Debian's `libhwloc-plugins`, installed with
///   Open MPI) looks for X servers on displays `:0`..`:9` when `DISPLAY` is unset, over TCP
///   ports 6000-6009. Where the ephemeral port range starts at 1024 (as on this machine), an
///   `mpirun`'s out-of-band listener sometimes gets such a port; every rank's (and every
///   other `mpirun`'s) topology probe then connects to it, sends an X11 greeting and waits
///   forever for the answer. Seen in CI: two `mpirun`s hung until their `timeout`.
pub fn ompi_env(cmd: &mut std::process::Command) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mw-ompi-")
        .tempdir()
        .expect("create an Open MPI session directory");
    cmd.env("OMPI_MCA_orte_tmpdir_base", dir.path())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("HWLOC_COMPONENTS", "-gl")
        .stdin(std::process::Stdio::null());
    dir
}

/// A result bundle as an execute node or volunteer could return it, made by hand: job `job`,
/// task `task`, exit `code`, `stdout`, from host `forger` (for tests of forged and misfiled
/// results).
pub fn result_bundle(job: &str, task: u64, code: i32, stdout: &str) -> Vec<u8> {
    let info = mw_bundle::ResultInfo {
        job: job.into(),
        task,
        attempt: None,
        exit: mw_bundle::ExitInfo::Exited { code },
        wall_secs: 0.01,
        user_secs: 0.0,
        sys_secs: 0.0,
        host: "forger".into(),
        started_unix: 1.0,
        stderr_tail: String::new(),
        missing_outputs: vec![],
        comparison: mw_bundle::Comparison::default(),
    };
    let mut b = mw_bundle::BundleBuilder::result(info, "forged");
    b.add_bytes(
        mw_bundle::RESULT_STDOUT_NAME,
        stdout.as_bytes().to_vec(),
        false,
    )
    .expect("add stdout to a result bundle");
    b.to_bytes().expect("write a result bundle")
}

/// Waits for `child` (its stdout and stderr piped) and returns its output, killing it and
/// failing the test if it runs longer than `limit` (a hung `mw` must not hang the suite).
pub fn finish_within(
    child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped before `tx` is dropped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output().expect("wait for the child");
    let _ = tx.send(());
    let timed_out = guard.join().expect("the timeout thread");
    assert!(
        !timed_out,
        "mw hung for more than {limit:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills (SIGKILL) the watchdog a local `mw` master (`master`, a pid) started for its tasks:
/// its child that runs the hidden `__mw-watchdog` argument. For tests of what is left when the
/// watchdog too is gone. Panics if the master has none (it starts one with its interface,
/// before any task runs).
pub fn kill_watchdog_of(master: u32) {
    let proc_dir = std::fs::read_dir("/proc").expect("read /proc");
    for e in proc_dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the fields after the last `)`.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid != Some(master) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == b"__mw-watchdog") {
            // SAFETY: kill(2) on the watchdog process found just above, a child of our `mw`.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return;
        }
    }
    panic!("mw (pid {master}) has no watchdog");
}

/// Starts `mw ARGS` in `dir` in the background, jobs under `dir/jobs`, with `env` added;
/// stdout and stderr piped (see [`finish_within`]).
pub fn spawn_mw(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut c = std::process::Command::new(bin("mw"));
    c.args(args)
        .current_dir(dir)
        .env("MW_JOBS_DIR", dir.join("jobs"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start mw")
}

/// A small tmpfs mounted over `dir` (a full disk on demand), unmounted when dropped. Needs
/// root (CI runs as root); the test fails saying so otherwise.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`: `600k`, `8k`) over `dir`.
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(
            mounted,
            "this test mounts a small tmpfs and needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A BOINC project made by the server double at `root`, with mw installed by
/// `mw-boinc-setup` (this build's worker, validator and assimilator, plus `setup_args`);
/// returns the project's canonical path.
pub fn boinc_project(root: &std::path::Path, setup_args: &[&str]) -> PathBuf {
    use std::process::{Command, Stdio};
    let made = Command::new(bin("boinc_server_double"))
        .arg("make-project")
        .arg(root)
        .stdout(Stdio::null())
        .status()
        .expect("run boinc_server_double make-project");
    assert!(made.success(), "make-project failed");
    let out = Command::new(bin("mw-boinc-setup"))
        .arg("--project-dir")
        .arg(root)
        .arg("--worker")
        .arg(bin("mw-worker"))
        .arg("--validator")
        .arg(bin("mw-validator"))
        .arg("--assimilator")
        .arg(bin("mw-assimilator"))
        .args(setup_args)
        .output()
        .expect("run mw-boinc-setup");
    assert!(
        out.status.success(),
        "mw-boinc-setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.canonicalize().expect("the project's path")
}
