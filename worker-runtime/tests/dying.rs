//! A dying `mw-worker run` takes its task with it: the real binary runs a task that starts a
//! grandchild in its process group and a daemon that leaves the group with `setsid`; the
//! worker is then stopped (SIGTERM, SIGINT), killed (SIGKILL: its watchdog cleans up) or
//! ends normally, and every process of the task must be gone and the worker's scratch
//! directory removed. Every wait is bounded: process exits through a pidfd, files by a
//! polling loop with a deadline.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{BundleBuilder, ProgramInfo, TaskInfo, TASK_INPUT_NAME};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The task: a grandchild in its group and a daemon outside it, each recording its pid,
/// then it waits (or, given `exit`, returns at once, leaving both behind).
const PROG: &str = r#"#!/bin/sh
sleep 100000 &
echo $! > "$OUT/grandchild.tmp" && mv "$OUT/grandchild.tmp" "$OUT/grandchild"
setsid sh -c 'echo $$ > "$OUT/daemon.tmp" && mv "$OUT/daemon.tmp" "$OUT/daemon"; exec sleep 100000' &
while [ ! -f "$OUT/daemon" ]; do sleep 0.01; done
echo $$ > "$OUT/leader.tmp" && mv "$OUT/leader.tmp" "$OUT/leader"
input=$(cat)
[ "$input" = '"exit"' ] && { echo '"left them"'; exit 0; }
wait
"#;

struct Setup {
    dir: tempfile::TempDir,
    /// Pids the task reported, killed at the end whatever happens.
    pids: Vec<i32>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: kill(2) only sends a signal; these are the test's own leftovers at worst.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        for d in ["out", "scratch"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Setup { dir, pids: vec![] }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `mw-worker run` on the task with input `word`.
    fn start_worker(&self, word: &str) -> Child {
        let mut b = BundleBuilder::program(
            ProgramInfo {
                executable: "prog.sh".into(),
                base_args: vec![],
            },
            "program",
        );
        b.add_bytes("prog.sh", PROG.as_bytes().to_vec(), true)
            .unwrap();
        let program = self.path("program.tar.gz");
        let sha = b.write_to(&program).unwrap();
        let mut env = std::collections::BTreeMap::new();
        env.insert("OUT".into(), self.path("out").display().to_string());
        let info = TaskInfo {
            job: "dying".into(),
            task: 1,
            program_sha256: sha,
            env,
            ..TaskInfo::default()
        };
        let mut b = BundleBuilder::task(info, "task");
        b.add_bytes(TASK_INPUT_NAME, format!("\"{word}\"").into_bytes(), false)
            .unwrap();
        let task = self.path("task.tar.gz");
        b.write_to(&task).unwrap();
        Command::new(env!("CARGO_BIN_EXE_mw-worker"))
            .arg("run")
            .arg("--program")
            .arg(&program)
            .arg("--task")
            .arg(&task)
            .arg("--result")
            .arg(self.path("result.tar.gz"))
            .arg("--scratch")
            .arg(self.path("scratch"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Waits (bounded) for the task to report its three pids.
    fn task_pids(&mut self) -> [i32; 3] {
        let names = ["leader", "grandchild", "daemon"];
        for n in names {
            let f = self.path("out").join(n);
            poll(&format!("the task to write {}", f.display()), || {
                f.is_file()
            });
        }
        let pids = names.map(|n| {
            std::fs::read_to_string(self.path("out").join(n))
                .unwrap()
                .trim()
                .parse::<i32>()
                .unwrap()
        });
        self.pids.extend(pids);
        pids
    }

    fn scratch_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path("scratch"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// Polls `cond` every 10 ms for at most 60 s, failing with `what`.
fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within 60 s: {what}");
}

/// Waits (up to 60 s, through a pidfd) until process `pid` has exited; true when it has.
fn exits(pid: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd for one entry.
    let r = unsafe { libc::poll(&mut pfd, 1, 60_000) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    r == 1
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn assert_all_gone(s: &Setup, pids: &[i32]) {
    for (name, &pid) in ["leader", "grandchild", "daemon"].iter().zip(pids) {
        assert!(
            exits(pid),
            "the task's {name} (pid {pid}) survived the worker"
        );
    }
    poll("the worker's scratch directory to be removed", || {
        s.scratch_entries().is_empty()
    });
}

#[test]
fn a_stopped_worker_stops_its_task_tree_removes_its_scratch_and_dies_by_the_signal() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut s = Setup::new();
        let mut worker = s.start_worker("wait");
        let pids = s.task_pids();
        assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
        let entries = s.scratch_entries();
        assert!(
            entries.len() == 1 && entries[0].starts_with("mw-worker-"),
            "{entries:?}"
        );
        signal(&worker, sig);
        let status = worker.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{status:?}");
        // The worker itself removed its scratch directory before dying.
        assert!(s.scratch_entries().is_empty(), "{:?}", s.scratch_entries());
        assert_all_gone(&s, &pids);
        assert!(
            !s.path("result.tar.gz").exists(),
            "a stopped task left a result"
        );
    }
}

#[test]
fn a_killed_worker_is_cleaned_up_after_by_its_watchdog() {
    let mut s = Setup::new();
    let mut worker = s.start_worker("wait");
    let pids = s.task_pids();
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    assert_eq!(s.scratch_entries().len(), 1);
    signal(&worker, libc::SIGKILL);
    let status = worker.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_all_gone(&s, &pids);
}

#[test]
fn what_a_task_leaves_running_goes_when_its_worker_ends() {
    let mut s = Setup::new();
    let worker = s.start_worker("exit");
    let pids = s.task_pids();
    let out = worker.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(s.path("result.tar.gz").is_file());
    // The leader exited on its own; the grandchild (its group) and the setsid daemon must
    // not outlive the worker.
    assert_all_gone(&s, &pids);
}
