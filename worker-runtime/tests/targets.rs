//! The task contract and hostile bundles against a *given* `mw-worker` binary, so the same
//! cases run for every platform mw ships a worker for:
//!
//! - `MW_WORKER_BIN`: the worker to test (default: this build's `mw-worker`);
//! - `MW_WORKER_RUNNER`: what runs it, split on spaces (e.g. `wine64` for the Windows
//!   worker, `qemu-aarch64-static` for the ARM one; default: nothing);
//! - `MW_CONTRACT_PROG`: for a Windows worker, the task program (the `contract_prog` example
//!   built for Windows). Unix workers run a `/bin/sh` script with the same modes (under
//!   qemu-user the worker is emulated; the task program it starts runs on the host).
//!
//! `.ci/test` runs this file three times: native, under Wine and under qemu-user.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{
    BundleBuilder, BundleKind, ExitInfo, Limits, Manifest, Member, ProgramInfo, TaskInfo,
    FORMAT_VERSION, MANIFEST_NAME, RESULT_OUTPUTS_PREFIX, RESULT_STDOUT_NAME, TASK_INPUT_NAME,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unix twin of `tests/support/contract_prog.rs` (same modes, same output).
const SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  echo) input=$(cat); entries=$(ls -A | sed 's/.*/"&"/' | paste -sd, -)
        echo written > out.txt; printf '{"got":%s,"entries":[%s]}' "$input" "$entries" ;;
  fail) echo "it went wrong" >&2; exit 5 ;;
  tree|orphan) sleep 1000 & echo $! > "$MW_PIDFILE.tmp"; mv "$MW_PIDFILE.tmp" "$MW_PIDFILE"
        [ "$1" = orphan ] && exit 0; sleep 1000 ;;
esac
"#;

struct Target {
    worker: PathBuf,
    runner: Vec<String>,
    /// Windows worker: paths are given as `Z:\…` (Wine's view of `/`).
    windows: bool,
    /// The task program: (member name, bytes).
    program: (String, Vec<u8>),
}

impl Target {
    fn from_env() -> Self {
        let worker = std::env::var_os("MW_WORKER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mw-worker")));
        let runner: Vec<String> = std::env::var("MW_WORKER_RUNNER")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let windows = worker.extension().is_some_and(|e| e == "exe");
        let program = if windows {
            let prog = std::env::var_os("MW_CONTRACT_PROG")
                .map(PathBuf::from)
                .expect("a Windows worker needs MW_CONTRACT_PROG (contract_prog.exe)");
            (
                "contract_prog.exe".to_string(),
                std::fs::read(prog).unwrap(),
            )
        } else {
            ("prog.sh".to_string(), SCRIPT.as_bytes().to_vec())
        };
        Target {
            worker,
            runner,
            windows,
            program,
        }
    }

    /// `path` as the worker sees it.
    fn native(&self, path: &Path) -> String {
        let s = path.to_str().unwrap();
        if self.windows {
            format!("Z:{}", s.replace('/', "\\"))
        } else {
            s.to_string()
        }
    }

    /// A command running `exe` through the runner.
    fn command(&self, exe: &Path) -> Command {
        let mut cmd = match self.runner.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.env("WINEDEBUG", "-all");
        cmd
    }
}

struct Scene {
    target: Target,
    dir: tempfile::TempDir,
    program: PathBuf,
    sha: String,
}

impl Scene {
    fn new() -> Self {
        let target = Target::from_env();
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("program.tar.gz");
        let (name, bytes) = target.program.clone();
        let mut b = BundleBuilder::program(
            ProgramInfo {
                executable: name.clone(),
                base_args: vec![],
            },
            "contract program",
        );
        b.add_bytes(&name, bytes, true).unwrap();
        let sha = b.write_to(&program).unwrap();
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        Scene {
            target,
            dir,
            program,
            sha,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn task_info(&self, mode: &str, timeout_secs: Option<f64>) -> TaskInfo {
        let mut env = std::collections::BTreeMap::new();
        env.insert("MW_PIDFILE".into(), self.target.native(&self.path("pid")));
        TaskInfo {
            job: "targets".into(),
            task: 1,
            attempt: None,
            program_sha256: self.sha.clone(),
            args: vec![mode.to_string()],
            env,
            timeout_secs,
            outputs: vec!["out.txt".into()],
            ..TaskInfo::default()
        }
    }

    fn task(&self, mode: &str, input: &str, timeout_secs: Option<f64>) -> PathBuf {
        let mut b = BundleBuilder::task(self.task_info(mode, timeout_secs), "task");
        b.add_bytes(TASK_INPUT_NAME, input.as_bytes().to_vec(), false)
            .unwrap();
        let path = self.path(&format!("task-{mode}.tar.gz"));
        b.write_to(&path).unwrap();
        path
    }

    /// Runs `mw-worker run` through the runner; returns (exit code, stderr).
    fn worker(&self, program: &Path, task: &Path, result: &Path) -> (Option<i32>, String) {
        let t = &self.target;
        let out = t
            .command(&t.worker)
            .arg("run")
            .arg("--program")
            .arg(t.native(program))
            .arg("--task")
            .arg(t.native(task))
            .arg("--result")
            .arg(t.native(result))
            .arg("--scratch")
            .arg(t.native(&self.path("scratch")))
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn result(&self, path: &Path) -> mw_bundle::InMemoryBundle {
        let bytes = std::fs::read(path).unwrap();
        mw_bundle::open_in_memory(
            &bytes,
            "result",
            Some(BundleKind::Result),
            &Limits::default(),
        )
        .unwrap()
    }

    /// The pid the task wrote; waits for the file only as long as the worker ran (the
    /// worker has returned when this is called, so the file is complete or absent).
    fn task_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.path("pid"))
            .expect("the task program did not write its child's pid");
        text.trim().parse().unwrap()
    }

    /// True once process `pid` (of the task's platform) has ended; bounded wait.
    fn gone(&self, pid: u32) -> bool {
        if self.target.windows {
            let prog = self.path("contract_prog.exe");
            std::fs::write(&prog, &self.target.program.1).unwrap();
            let st = self
                .target
                .command(&prog)
                .arg("gone")
                .arg(pid.to_string())
                .status()
                .unwrap();
            return st.code() == Some(0);
        }
        for _ in 0..600 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat
                        .rfind(')')
                        .and_then(|i| stat[i + 1..].split_whitespace().next().map(String::from));
                    if matches!(state.as_deref(), Some("Z") | Some("X")) {
                        return true;
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }
}

#[test]
fn fresh_dir_stdin_stdout_and_declared_outputs() {
    let s = Scene::new();
    let result = s.path("r.tar.gz");
    let (code, err) = s.worker(&s.program, &s.task("echo", r#"{"n":41}"#, None), &result);
    assert_eq!(code, Some(0), "{err}");
    let r = s.result(&result);
    let info = r.manifest.result.clone().unwrap();
    assert_eq!(info.exit, ExitInfo::Exited { code: 0 });
    let stdout = String::from_utf8(r.members[RESULT_STDOUT_NAME].clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["got"]["n"], 41, "{stdout}");
    // A fresh directory: only the program itself is there when the task starts.
    assert_eq!(
        v["entries"],
        serde_json::json!([s.target.program.0]),
        "{stdout}"
    );
    assert_eq!(
        r.members[&format!("{RESULT_OUTPUTS_PREFIX}out.txt")],
        b"written\n"
    );
}

#[test]
fn a_failing_task_keeps_its_status_and_stderr() {
    let s = Scene::new();
    let result = s.path("r.tar.gz");
    let (code, err) = s.worker(&s.program, &s.task("fail", "null", None), &result);
    assert_eq!(code, Some(1), "{err}");
    let info = s.result(&result).manifest.result.unwrap();
    assert_eq!(info.exit, ExitInfo::Exited { code: 5 });
    assert!(info.stderr_tail.contains("it went wrong"), "{info:?}");
}

#[test]
fn a_timeout_kills_the_whole_process_tree() {
    let s = Scene::new();
    let result = s.path("r.tar.gz");
    // Under Wine the task starts two Wine processes before its child's pid is written: a
    // loaded machine takes seconds for that.
    let limit = if s.target.windows { 15.0 } else { 3.0 };
    let (code, err) = s.worker(&s.program, &s.task("tree", "null", Some(limit)), &result);
    assert_eq!(code, Some(1), "{err}");
    let info = s.result(&result).manifest.result.unwrap();
    assert!(
        matches!(info.exit, ExitInfo::TimedOut { .. }),
        "{:?}",
        info.exit
    );
    let pid = s.task_pid();
    assert!(s.gone(pid), "the task's child {pid} outlived the timeout");
}

#[test]
fn a_child_left_behind_is_killed_when_the_task_exits() {
    let s = Scene::new();
    let result = s.path("r.tar.gz");
    let (code, err) = s.worker(&s.program, &s.task("orphan", "null", None), &result);
    assert_eq!(code, Some(0), "{err}");
    let pid = s.task_pid();
    assert!(s.gone(pid), "the task's child {pid} outlived its task");
}

// ---------------------------------------------------------------- hostile bundles

fn header(name: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// A gzip'd tar written entry by entry, so any name can be forged.
fn raw_bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, data) in entries {
        tar.extend_from_slice(header(name, data.len() as u64).as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len() + (512 - data.len() % 512) % 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn member(path: &str, data: &[u8]) -> Member {
    Member {
        path: path.into(),
        sha256: mw_bundle::sha256_hex(data),
        size: data.len() as u64,
        executable: false,
    }
}

#[test]
fn hostile_entry_names_are_refused_naming_the_entry() {
    let s = Scene::new();
    for name in [
        "..\\evil",
        "C:\\x",
        "CON",
        "a:stream",
        "files/aux.txt",
        "x.",
    ] {
        let input = b"null".as_slice();
        let payload = b"owned\n".as_slice();
        let manifest = Manifest {
            format: FORMAT_VERSION,
            kind: BundleKind::Task,
            program: None,
            task: Some(s.task_info("echo", None)),
            result: None,
            pack: None,
            pack_result: None,
            members: vec![member(TASK_INPUT_NAME, input), member(name, payload)],
        };
        let text = toml::to_string(&manifest).unwrap();
        let task = s.path("hostile.tar.gz");
        std::fs::write(
            &task,
            raw_bundle(&[
                (MANIFEST_NAME, text.as_bytes()),
                (TASK_INPUT_NAME, input),
                (name, payload),
            ]),
        )
        .unwrap();
        let result = s.path("r-hostile.tar.gz");
        let (code, err) = s.worker(&s.program, &task, &result);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("`{name}`")),
            "{name} not named in: {err}"
        );
        assert!(!result.exists(), "{name}: a result was written");
        assert!(!s.path("evil").exists() && !s.path("scratch/evil").exists());
    }
}

#[test]
fn case_insensitive_duplicates_are_refused() {
    let s = Scene::new();
    let a = b"one\n".as_slice();
    let b = b"two\n".as_slice();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        kind: BundleKind::Task,
        program: None,
        task: Some(s.task_info("echo", None)),
        result: None,
        pack: None,
        pack_result: None,
        members: vec![member("files/Data.txt", a), member("files/data.TXT", b)],
    };
    let text = toml::to_string(&manifest).unwrap();
    let task = s.path("dup.tar.gz");
    std::fs::write(
        &task,
        raw_bundle(&[
            (MANIFEST_NAME, text.as_bytes()),
            ("files/Data.txt", a),
            ("files/data.TXT", b),
        ]),
    )
    .unwrap();
    let (code, err) = s.worker(&s.program, &task, &s.path("r-dup.tar.gz"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`files/data.TXT`"), "{err}");
    assert!(err.contains("only in case"), "{err}");
}
