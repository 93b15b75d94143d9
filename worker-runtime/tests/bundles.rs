//! Bundle runs: `mw_worker_runtime::run_bundles` and the real `mw-worker run` binary with
//! program and task bundles built here around small /bin/sh scripts. Checks that nothing
//! runs when a bundle is bad (checksum, wrong program), that results come back with exit,
//! stdout and declared outputs, and the binary's exit statuses (0 ok, 1 task failed with a
//! result bundle, 2 no result bundle).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{
    BundleBuilder, BundleKind, ExitInfo, Limits, ProgramInfo, TaskInfo, RESULT_STDOUT_NAME,
    TASK_INPUT_NAME,
};
use mw_worker_runtime::{run_bundles, ProcessControl, RunError, RunOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The program every test uses; its behaviour is chosen by the task's input word.
/// The comment line is what the tamper test changes.
const SCRIPT: &str = r#"#!/bin/sh
# ORIGINAL program text
touch "$MARK"
input=$(cat)
case "$input" in
  '"ok"') echo written > out.txt; ln -s /etc/passwd leak.txt; printf '{"got":%s,"arg":"%s"}' "$input" "$1" ;;
  '"fail"') echo "it went wrong" >&2; exit 5 ;;
  '"chatty"') i=0; while [ $i -lt 300 ]; do echo "line $i of a chatty program" >&2; i=$((i+1)); done; echo END >&2; exit 3 ;;
  '"hang"') sleep 1000 ;;
  '"show"') cat prog.sh ;;
  '"huge"') echo small > out.txt; truncate -s 300M leak.txt; echo '{}' ;;
  '"case"') echo lower > out.txt; echo upper > OUT.txt; echo '{}' ;;
  '"ro"') mkdir -p d/e; touch d/e/f; chmod 555 d/e; echo written > out.txt; echo '{}' ;;
esac
"#;

struct Fixture {
    dir: tempfile::TempDir,
    program: PathBuf,
    sha: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("program.tar.gz");
        let mut b = BundleBuilder::program(
            ProgramInfo {
                executable: "prog.sh".into(),
                base_args: vec!["base".into()],
            },
            "test program",
        );
        b.add_bytes("prog.sh", SCRIPT.as_bytes().to_vec(), true)
            .unwrap();
        let sha = b.write_to(&program).unwrap();
        Fixture { dir, program, sha }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mark(&self) -> PathBuf {
        self.path("ran")
    }

    /// Writes a task bundle for `program_sha` with input `word` and returns its path.
    fn task(&self, program_sha: &str, word: &str, timeout_secs: Option<f64>) -> PathBuf {
        self.task_with_outputs(program_sha, word, timeout_secs, &["out.txt", "leak.txt"])
    }

    /// [`task`](Self::task) declaring `outputs`.
    fn task_with_outputs(
        &self,
        program_sha: &str,
        word: &str,
        timeout_secs: Option<f64>,
        outputs: &[&str],
    ) -> PathBuf {
        let mut env = std::collections::BTreeMap::new();
        env.insert("MARK".into(), self.mark().to_str().unwrap().to_string());
        let info = TaskInfo {
            job: "testjob".into(),
            task: 7,
            attempt: None,
            program_sha256: program_sha.to_string(),
            args: vec![],
            env,
            timeout_secs,
            outputs: outputs.iter().map(|o| o.to_string()).collect(),
            ..TaskInfo::default()
        };
        let mut b = BundleBuilder::task(info, "test task");
        b.add_bytes(TASK_INPUT_NAME, format!("\"{word}\"").into_bytes(), false)
            .unwrap();
        let path = self.path(&format!("task-{word}.tar.gz"));
        b.write_to(&path).unwrap();
        path
    }

    /// Runs the task with input `word` through `run_bundles` in this process; returns what
    /// it reported and the result bundle's path.
    fn run_in_process(&self, word: &str) -> (mw_bundle::ResultInfo, PathBuf) {
        let task = self.task(&self.sha, word, None);
        let result = self.path("result.tar.gz");
        let info = run_bundles(
            &self.program,
            &task,
            &result,
            &ProcessControl::new(),
            &RunOptions::default(),
        )
        .unwrap();
        (info, result)
    }

    fn worker(&self, task: &Path, result: &Path) -> std::process::Output {
        self.worker_with(&self.program, task, result)
    }

    /// Runs `mw-worker` on a pack of this program listing `tasks`, with `members` (task
    /// index, task bundle bytes) in that order; returns its output and the pack result's path.
    fn run_pack(
        &self,
        tasks: Vec<u64>,
        members: Vec<(u64, Vec<u8>)>,
    ) -> (std::process::Output, PathBuf) {
        self.run_pack_as(tasks, members, false)
    }

    /// [`run_pack`](Self::run_pack); with `unprivileged`, a worker run by root loses the
    /// capabilities that let root ignore file permissions (through `setpriv`), so a
    /// directory a task made unwritable is as unwritable to the worker as on a volunteer's
    /// host.
    fn run_pack_as(
        &self,
        tasks: Vec<u64>,
        members: Vec<(u64, Vec<u8>)>,
        unprivileged: bool,
    ) -> (std::process::Output, PathBuf) {
        let pack = self.write_pack(tasks, members);
        let result = self.path("pack-result.tar.gz");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !(unprivileged && root) {
            return (self.worker(&pack, &result), result);
        }
        let caps = "-dac_override,-dac_read_search";
        let out = Command::new("setpriv")
            .args(["--bounding-set", caps, "--inh-caps", caps])
            .arg(env!("CARGO_BIN_EXE_mw-worker"))
            .arg("run")
            .arg("--program")
            .arg(&self.program)
            .arg("--task")
            .arg(&pack)
            .arg("--result")
            .arg(&result)
            .current_dir(self.dir.path())
            .output()
            .expect("setpriv (util-linux) runs the worker without root's file-permission override");
        (out, result)
    }

    /// Writes a pack of this program listing `tasks`, with `members` (task index, task
    /// bundle bytes), and returns its path.
    fn write_pack(&self, tasks: Vec<u64>, members: Vec<(u64, Vec<u8>)>) -> PathBuf {
        let mut b = BundleBuilder::pack(
            mw_bundle::PackInfo {
                job: "testjob".into(),
                program_sha256: self.sha.clone(),
                tasks,
                stream: false,
            },
            "test pack",
        );
        for (task, bytes) in members {
            b.add_bytes(&mw_bundle::pack_task_member(task), bytes, false)
                .unwrap();
        }
        let pack = self.path("pack.tar.gz");
        b.write_to(&pack).unwrap();
        pack
    }

    fn worker_with(&self, program: &Path, task: &Path, result: &Path) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_mw-worker"))
            .arg("run")
            .arg("--program")
            .arg(program)
            .arg("--task")
            .arg(task)
            .arg("--result")
            .arg(result)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

fn read_result(path: &Path) -> mw_bundle::InMemoryBundle {
    let bytes = std::fs::read(path).unwrap();
    mw_bundle::open_in_memory(
        &bytes,
        "result",
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap()
}

fn gzip(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn run_bundles_returns_exit_stdout_and_declared_outputs_only() {
    let fx = Fixture::new();
    let (info, result) = fx.run_in_process("ok");
    assert_eq!(info.exit, ExitInfo::Exited { code: 0 });
    assert_eq!(info.job, "testjob");
    assert_eq!(info.task, 7);
    assert!(!info.host.is_empty());
    assert!(info.wall_secs > 0.0);
    assert!(info.started_unix > 0.0);
    assert_eq!(info.missing_outputs, ["leak.txt"]);
    let bundle = read_result(&result);
    assert_eq!(bundle.manifest.result.as_ref().unwrap(), &info);
    let stdout: serde_json::Value =
        serde_json::from_slice(&bundle.members[RESULT_STDOUT_NAME]).unwrap();
    assert_eq!(stdout, serde_json::json!({"got": "ok", "arg": "base"}));
    assert_eq!(bundle.members["outputs/out.txt"], b"written\n");
    assert!(!bundle.members.contains_key("outputs/leak.txt"));
}

/// A task that writes more output than a result may carry (here a sparse 300 MiB file) fails
/// naming that file; the worker never reads it into memory, and keeps the outputs that fit.
#[test]
fn an_output_file_over_the_result_limit_is_missing_with_its_reason_not_read() {
    let fx = Fixture::new();
    let (info, result) = fx.run_in_process("huge");
    assert_eq!(info.exit, ExitInfo::Exited { code: 0 });
    assert_eq!(info.missing_outputs.len(), 1, "{:?}", info.missing_outputs);
    let why = &info.missing_outputs[0];
    assert!(
        why.starts_with("leak.txt (314572800 bytes: ") && why.contains("256 MiB"),
        "{why}"
    );
    let bundle = read_result(&result);
    assert_eq!(bundle.members["outputs/out.txt"], b"small\n");
    assert!(!bundle.members.contains_key("outputs/leak.txt"));
}

/// An output declared twice is one file: the run's result holds it once (the result bundle
/// refuses a member added twice, which threw the finished run away).
#[test]
fn an_output_declared_twice_is_in_the_result_once() {
    let fx = Fixture::new();
    let task = fx.task_with_outputs(&fx.sha, "ok", None, &["out.txt", "out.txt"]);
    let result = fx.path("result.tar.gz");
    let info = run_bundles(
        &fx.program,
        &task,
        &result,
        &ProcessControl::new(),
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(info.exit, ExitInfo::Exited { code: 0 });
    assert!(
        info.missing_outputs.is_empty(),
        "{:?}",
        info.missing_outputs
    );
    let bundle = read_result(&result);
    assert_eq!(bundle.members["outputs/out.txt"], b"written\n");
}

/// Outputs whose names differ only in case are one file on Windows, so a result cannot
/// carry both: the first is kept and the second reported missing with the reason, rather
/// than the whole finished run failing to make a result.
#[test]
fn an_output_differing_from_another_only_in_case_is_missing_with_its_reason() {
    let fx = Fixture::new();
    let task = fx.task_with_outputs(&fx.sha, "case", None, &["out.txt", "OUT.txt"]);
    let result = fx.path("result.tar.gz");
    let info = run_bundles(
        &fx.program,
        &task,
        &result,
        &ProcessControl::new(),
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(info.exit, ExitInfo::Exited { code: 0 });
    assert_eq!(info.missing_outputs.len(), 1, "{:?}", info.missing_outputs);
    let why = &info.missing_outputs[0];
    assert!(
        why.starts_with("OUT.txt (") && why.contains("only in case") && why.contains("out.txt"),
        "{why}"
    );
    let bundle = read_result(&result);
    assert_eq!(bundle.members["outputs/out.txt"], b"lower\n");
    assert!(!bundle.members.contains_key("outputs/OUT.txt"));
}

#[test]
fn mw_worker_run_success_writes_the_result_bundle_and_exits_0() {
    let fx = Fixture::new();
    let task = fx.task(&fx.sha, "ok", None);
    let result = fx.path("result.tar.gz");
    let out = fx.worker(&task, &result);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = read_result(&result);
    let info = bundle.manifest.result.unwrap();
    assert!(info.exit.success());
    assert_eq!(bundle.members["outputs/out.txt"], b"written\n");
    assert!(bundle.members[RESULT_STDOUT_NAME].starts_with(b"{\"got\":\"ok\""));
}

/// A manifest's timeout too large for a `Duration` (forged or corrupt) is no limit, not a
/// panic of the worker: alone and in a pack.
#[test]
fn a_timeout_too_large_for_a_duration_runs_the_task_without_a_limit() {
    let fx = Fixture::new();
    let task = fx.task(&fx.sha, "ok", Some(1e300));
    let result = fx.path("result.tar.gz");
    let out = fx.worker(&task, &result);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let bundle = read_result(&result);
    assert!(bundle.manifest.result.unwrap().exit.success());
    let (out, result) = fx.run_pack(vec![7], vec![(7, std::fs::read(&task).unwrap())]);
    let err = String::from_utf8_lossy(&out.stderr);
    let inner = inner_result(&open_pack_result(&result), 7);
    let r = inner.manifest.result.unwrap();
    // (The pack counts it failed only for its declared `leak.txt`, a link it refuses.)
    assert_eq!(r.exit, ExitInfo::Exited { code: 0 }, "{r:?} {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn mw_worker_run_failing_task_exits_1_and_still_writes_the_result() {
    let fx = Fixture::new();
    let task = fx.task(&fx.sha, "fail", None);
    let result = fx.path("result.tar.gz");
    let out = fx.worker(&task, &result);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("task 7 of job testjob failed: exit status 5"),
        "{stderr}"
    );
    assert!(stderr.contains("it went wrong"), "{stderr}");
    let info = read_result(&result).manifest.result.unwrap();
    assert_eq!(info.exit, ExitInfo::Exited { code: 5 });
    assert_eq!(info.stderr_tail, "it went wrong\n");
}

/// A result carries the last 4 KiB of the task's stderr; when there was more, it says so
/// first (the master keeps this text as the attempt's stderr log, where a silent cut once
/// looked like the whole of it).
#[test]
fn a_long_stderr_comes_back_as_its_tail_marked_cut() {
    use mw_worker_runtime::run::{RESULT_STDERR_BYTES, STDERR_CUT};
    let fx = Fixture::new();
    let (info, _) = fx.run_in_process("chatty");
    assert_eq!(info.exit, ExitInfo::Exited { code: 3 });
    let tail = info
        .stderr_tail
        .strip_prefix(STDERR_CUT)
        .unwrap_or_else(|| {
            panic!("no cut marker: {:?}", &info.stderr_tail[..80]);
        });
    assert_eq!(tail.len(), RESULT_STDERR_BYTES);
    assert!(
        tail.ends_with("line 299 of a chatty program\nEND\n"),
        "{tail}"
    );
    // A short stderr is whole and unmarked.
    let (info, _) = fx.run_in_process("fail");
    assert_eq!(info.stderr_tail, "it went wrong\n");
}

#[test]
fn mw_worker_run_timeout_is_a_failed_task_with_a_result() {
    let fx = Fixture::new();
    let task = fx.task(&fx.sha, "hang", Some(0.5));
    let result = fx.path("result.tar.gz");
    let out = fx.worker(&task, &result);
    assert_eq!(out.status.code(), Some(1));
    let info = read_result(&result).manifest.result.unwrap();
    assert!(
        matches!(info.exit, ExitInfo::TimedOut { .. }),
        "{:?}",
        info.exit
    );
}

#[test]
fn a_tampered_program_bundle_is_refused_naming_the_entry_and_nothing_runs() {
    let fx = Fixture::new();
    let raw = gzip(&["-dc"], &std::fs::read(&fx.program).unwrap());
    let needle = b"ORIGINAL";
    let hits: Vec<usize> = raw
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1);
    let mut tampered = raw.clone();
    tampered[hits[0]..hits[0] + needle.len()].copy_from_slice(b"TAMPERED");
    let bad = fx.path("bad-program.tar.gz");
    let bad_bytes = gzip(&["-c"], &tampered);
    std::fs::write(&bad, &bad_bytes).unwrap();
    // The task names the tampered archive, so only the member checksum can stop it.
    let task = fx.task(&mw_bundle::sha256_hex(&bad_bytes), "ok", None);
    let result = fx.path("result.tar.gz");

    let err = run_bundles(
        &bad,
        &task,
        &result,
        &ProcessControl::new(),
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RunError::Bundle(_)), "{err:?}");
    assert!(err.to_string().contains("prog.sh"), "{err}");

    let out = fx.worker_with(&bad, &task, &result);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("entry `prog.sh`"), "{stderr}");
    assert!(stderr.contains("bad-program.tar.gz"), "{stderr}");
    assert!(!fx.mark().exists(), "the tampered program ran");
    assert!(!result.exists());
}

#[test]
fn a_task_bundle_for_another_program_is_refused_and_nothing_runs() {
    let fx = Fixture::new();
    let other = "0".repeat(64);
    let task = fx.task(&other, "ok", None);
    let result = fx.path("result.tar.gz");
    let err = run_bundles(
        &fx.program,
        &task,
        &result,
        &ProcessControl::new(),
        &RunOptions::default(),
    )
    .unwrap_err();
    match &err {
        RunError::WrongProgram { wanted, actual, .. } => {
            assert_eq!(wanted, &other);
            assert_eq!(actual, &fx.sha);
        }
        e => panic!("expected WrongProgram, got {e:?}"),
    }
    let out = fx.worker(&task, &result);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wants program"), "{stderr}");
    assert!(stderr.contains(&fx.sha), "{stderr}");
    assert!(
        !fx.mark().exists(),
        "the program ran for a task not meant for it"
    );
    assert!(!result.exists());
}

#[test]
fn a_program_bundle_passed_as_the_task_is_refused() {
    let fx = Fixture::new();
    let result = fx.path("result.tar.gz");
    let out = fx.worker(&fx.program, &result);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.is_empty());
    assert!(!fx.mark().exists());
    assert!(!result.exists());
}

/// A task bundle (bytes) of task `id` with input `word`.
fn task_bytes(fx: &Fixture, id: u64, word: &str) -> Vec<u8> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("MARK".into(), fx.mark().to_str().unwrap().to_string());
    let info = TaskInfo {
        job: "testjob".into(),
        task: id,
        program_sha256: fx.sha.clone(),
        env,
        outputs: vec!["out.txt".into()],
        ..TaskInfo::default()
    };
    let mut b = BundleBuilder::task(info, "test task");
    b.add_bytes(TASK_INPUT_NAME, format!("\"{word}\"").into_bytes(), false)
        .unwrap();
    b.to_bytes().unwrap()
}

/// A pack of four tasks through the real `mw-worker run`: one task fails (its neighbours
/// still succeed), one member is another task's bundle under a forged name (not run, with
/// the reason), and the pack result holds one result bundle per task that ran.
#[test]
fn mw_worker_runs_a_pack_task_by_task() {
    let fx = Fixture::new();
    let (out, result) = fx.run_pack(
        vec![3, 1, 4, 2],
        vec![
            (3, task_bytes(&fx, 3, "ok")),
            (1, task_bytes(&fx, 1, "fail")),
            // Member 4 holds task 9's bundle: the worker must not run it as task 4.
            (4, task_bytes(&fx, 9, "ok")),
            (2, task_bytes(&fx, 2, "ok")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 of 4 tasks failed [1]"), "{stderr}");
    let bundle = open_pack_result(&result);
    let info = bundle.manifest.pack_result.clone().unwrap();
    assert_eq!(info.job, "testjob");
    assert_eq!(info.tasks, vec![3, 1, 2], "run in the pack's order");
    assert_eq!(info.not_run.len(), 1);
    assert_eq!(info.not_run[0].task, 4);
    assert!(
        info.not_run[0].reason.contains("it is task 9"),
        "{:?}",
        info.not_run
    );
    assert_eq!(bundle.members.len(), 3);
    for (task, exit) in [(3, 0), (1, 5), (2, 0)] {
        let inner = inner_result(&bundle, task);
        let r = inner.manifest.result.unwrap();
        assert_eq!(r.task, task);
        assert_eq!(r.exit, ExitInfo::Exited { code: exit }, "task {task}");
        if exit == 0 {
            assert_eq!(inner.members["outputs/out.txt"], b"written\n");
        } else {
            assert_eq!(r.stderr_tail, "it went wrong\n");
        }
    }
}

/// The lowered bound on a pack's task results kept in memory, for the test below.
const RESULTS_BOUND: u64 = 1024;

/// The names in directory `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A pack whose task results together pass the in-memory bound (lowered to
/// [`RESULTS_BOUND`]; the rest go to scratch files): its pack result is written to a file
/// beside the result path as it is built, holds every task's result, and reaches the result
/// path only through `persist` (a dropped one leaves nothing behind).
#[test]
fn a_pack_result_past_the_memory_bound_is_a_file_holding_every_task_result() {
    use mw_worker_runtime::{run_task_or_pack_file, Ran, UnpackedProgram};
    let fx = Fixture::new();
    let tasks: Vec<u64> = (1..=8).collect();
    let members = tasks
        .iter()
        .map(|&t| (t, task_bytes(&fx, t, "ok")))
        .collect();
    let pack = fx.write_pack(tasks.clone(), members);
    let out_dir = fx.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let result = out_dir.join("pack-result.tar.gz");
    let opts = RunOptions {
        pack_results_in_memory: Some(RESULTS_BOUND),
        ..RunOptions::default()
    };
    let program = UnpackedProgram::unpack(&fx.program, &opts).unwrap();
    let control = ProcessControl::new();

    let (ran, pending) = run_task_or_pack_file(&program, &pack, &result, &control, &opts).unwrap();
    assert!(matches!(&ran, Ran::Pack(p) if p.all_succeeded()), "{ran:?}");
    // Already a file beside the result path, not yet at it.
    let before = names_in(&out_dir);
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].starts_with(".mw-tmp-"), "{before:?}");
    assert!(!result.exists());
    assert_eq!(pending.path(), result);
    pending.persist().unwrap();
    assert_eq!(names_in(&out_dir), ["pack-result.tar.gz"]);

    let bundle = open_pack_result(&result);
    let info = bundle.manifest.pack_result.clone().unwrap();
    assert_eq!(info.tasks, tasks);
    assert!(info.not_run.is_empty(), "{:?}", info.not_run);
    assert_eq!(bundle.members.len(), tasks.len());
    let total: u64 = bundle.members.values().map(|m| m.len() as u64).sum();
    assert!(
        total > 3 * RESULTS_BOUND,
        "the results ({total} bytes) must pass the bound for this test to mean anything"
    );
    for &task in &tasks {
        let inner = inner_result(&bundle, task);
        let r = inner.manifest.result.unwrap();
        assert_eq!(r.task, task);
        assert_eq!(r.exit, ExitInfo::Exited { code: 0 }, "task {task}");
        assert_eq!(inner.members["outputs/out.txt"], b"written\n");
        let stdout = String::from_utf8_lossy(&inner.members[RESULT_STDOUT_NAME]);
        assert!(stdout.contains(r#""got":"ok""#), "task {task}: {stdout}");
    }

    // A pending pack result dropped without `persist` (a stopped worker) leaves nothing.
    let other = out_dir.join("other.tar.gz");
    let (_, pending) = run_task_or_pack_file(&program, &pack, &other, &control, &opts).unwrap();
    drop(pending);
    assert_eq!(names_in(&out_dir), ["pack-result.tar.gz"]);
}

/// A task that leaves a directory it cannot write to deep in the shared working directory
/// (`chmod 555 d/e` over a file) does not stop the pack: the next task still runs.
#[test]
fn a_packed_task_leaving_an_unwritable_directory_does_not_stop_the_next() {
    let fx = Fixture::new();
    let (out, result) = fx.run_pack_as(
        vec![1, 2],
        vec![(1, task_bytes(&fx, 1, "ro")), (2, task_bytes(&fx, 2, "ok"))],
        true,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bundle = open_pack_result(&result);
    let info = bundle.manifest.pack_result.clone().unwrap();
    assert!(info.not_run.is_empty(), "{:?}\n{stderr}", info.not_run);
    assert_eq!(info.tasks, vec![1, 2]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let inner = inner_result(&bundle, 2);
    assert_eq!(
        inner.manifest.result.unwrap().exit,
        ExitInfo::Exited { code: 0 }
    );
    assert_eq!(inner.members["outputs/out.txt"], b"written\n");
}

/// Tasks of a pack share one reused working directory, whose links to the program's files
/// are kept from task to task: a task with an input file named like a program file gets its
/// file (not the link, and the write does not go through it into the program), and the
/// next task runs the program intact.
#[test]
fn a_packed_task_input_named_like_a_program_file_never_writes_through_a_kept_link() {
    use mw_bundle::TASK_FILES_PREFIX;
    let fx = Fixture::new();
    let mut shadowing = {
        let mut env = std::collections::BTreeMap::new();
        env.insert("MARK".into(), fx.mark().to_str().unwrap().to_string());
        BundleBuilder::task(
            TaskInfo {
                job: "testjob".into(),
                task: 2,
                program_sha256: fx.sha.clone(),
                env,
                ..TaskInfo::default()
            },
            "test task",
        )
    };
    shadowing
        .add_bytes(TASK_INPUT_NAME, b"\"show\"".to_vec(), false)
        .unwrap();
    shadowing
        .add_bytes(
            &format!("{TASK_FILES_PREFIX}prog.sh"),
            b"an input file, not the program\n".to_vec(),
            false,
        )
        .unwrap();
    let (out, result) = fx.run_pack(
        vec![1, 2, 3],
        vec![
            (1, task_bytes(&fx, 1, "ok")),
            (2, shadowing.to_bytes().unwrap()),
            (3, task_bytes(&fx, 3, "ok")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let bundle = open_pack_result(&result);
    let stdout = |task: u64| {
        let inner = inner_result(&bundle, task);
        let r = inner.manifest.result.unwrap();
        assert_eq!(r.exit, ExitInfo::Exited { code: 0 }, "task {task}: {r:?}");
        String::from_utf8(inner.members[RESULT_STDOUT_NAME].clone()).unwrap()
    };
    assert_eq!(stdout(2), "an input file, not the program\n");
    for task in [1, 3] {
        assert_eq!(stdout(task), r#"{"got":"ok","arg":"base"}"#, "task {task}");
    }
}

/// A pack for another program, or one listing a task without its member, runs nothing.
#[test]
fn a_pack_for_another_program_or_with_a_missing_member_runs_nothing() {
    use mw_bundle::{pack_task_member, PackInfo};
    let fx = Fixture::new();
    for (sha, tasks) in [("0".repeat(64), vec![1]), (fx.sha.clone(), vec![1, 2])] {
        let mut b = BundleBuilder::pack(
            PackInfo {
                job: "testjob".into(),
                program_sha256: sha,
                tasks,
                stream: false,
            },
            "test pack",
        );
        b.add_bytes(&pack_task_member(1), task_bytes(&fx, 1, "ok"), false)
            .unwrap();
        let pack = fx.path("pack.tar.gz");
        b.write_to(&pack).unwrap();
        let result = fx.path("pack-result.tar.gz");
        let out = fx.worker(&pack, &result);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("wants program") || stderr.contains("has no member"),
            "{stderr}"
        );
        assert!(!fx.mark().exists(), "a task ran from a refused pack");
        assert!(!result.exists());
    }
}

/// A pack of a streaming program (`stream` in the pack): one process answers the tasks,
/// one JSON line each; a task answered with `{"error": ...}` fails alone, a task on which the
/// program dies fails alone (with its stderr) and a fresh process serves the next ones.
#[test]
fn mw_worker_runs_a_streaming_pack_through_one_process() {
    use mw_bundle::{pack_task_member, PackInfo};
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let program = dir.path().join("program.tar.gz");
    let script = format!(
        "#!/bin/sh\necho started >> '{}'\nwhile read -r line; do\n  case \"$line\" in\n    \
         '\"bad\"') echo '{{\"error\": \"bad input\"}}' ;;\n    \
         '\"die\"') echo 'dying now' >&2; exit 7 ;;\n    \
         *) echo \"{{\\\"got\\\": $line}}\" ;;\n  esac\ndone\n",
        starts.display()
    );
    let mut b = BundleBuilder::program(
        ProgramInfo {
            executable: "stream.sh".into(),
            base_args: vec![],
        },
        "stream program",
    );
    b.add_bytes("stream.sh", script.into_bytes(), true).unwrap();
    let sha = b.write_to(&program).unwrap();
    let task = |id: u64, input: &str| {
        let info = TaskInfo {
            job: "sj".into(),
            task: id,
            program_sha256: sha.clone(),
            ..TaskInfo::default()
        };
        let mut t = BundleBuilder::task(info, "t");
        t.add_bytes(TASK_INPUT_NAME, input.as_bytes().to_vec(), false)
            .unwrap();
        t.to_bytes().unwrap()
    };
    let inputs = [
        (0, "1"),
        (1, "\"bad\""),
        (2, "{\"k\":\n 2}"),
        (3, "\"die\""),
        (4, "4"),
    ];
    let mut p = BundleBuilder::pack(
        PackInfo {
            job: "sj".into(),
            program_sha256: sha.clone(),
            tasks: inputs.iter().map(|(t, _)| *t).collect(),
            stream: true,
        },
        "stream pack",
    );
    for (t, input) in inputs {
        p.add_bytes(&pack_task_member(t), task(t, input), false)
            .unwrap();
    }
    let pack = dir.path().join("pack.tar.gz");
    p.write_to(&pack).unwrap();
    let result = dir.path().join("result.tar.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_mw-worker"))
        .args(["run", "--program"])
        .arg(&program)
        .arg("--task")
        .arg(&pack)
        .arg("--result")
        .arg(&result)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let bundle = open_pack_result(&result);
    assert_eq!(
        bundle.manifest.pack_result.as_ref().unwrap().tasks,
        [0, 1, 2, 3, 4]
    );
    let inner = |t: u64| {
        let b = inner_result(&bundle, t);
        let stdout = b
            .members
            .get(RESULT_STDOUT_NAME)
            .cloned()
            .unwrap_or_default();
        (
            b.manifest.result.unwrap(),
            String::from_utf8(stdout).unwrap(),
        )
    };
    let (r0, s0) = inner(0);
    assert!(r0.exit.success(), "{r0:?}");
    assert_eq!(s0, "{\"got\": 1}");
    let (r1, _) = inner(1);
    assert_eq!(
        r1.exit,
        ExitInfo::ErrorReported {
            error: "bad input".into()
        }
    );
    let (r2, s2) = inner(2);
    assert!(r2.exit.success(), "{r2:?}");
    assert_eq!(
        s2, "{\"got\": {\"k\":2}}",
        "the input went as one compact line"
    );
    let (r3, _) = inner(3);
    assert_eq!(r3.exit, ExitInfo::Exited { code: 7 });
    assert!(r3.stderr_tail.contains("dying now"), "{r3:?}");
    let (r4, s4) = inner(4);
    assert!(r4.exit.success(), "{r4:?}");
    assert_eq!(s4, "{\"got\": 4}");
    // One process for tasks 0-3, a fresh one after it died.
    let n = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert_eq!(n, 2, "processes started");
}

/// The pack-result bundle the worker wrote at `path`, opened and verified.
fn open_pack_result(path: &Path) -> mw_bundle::InMemoryBundle {
    let bytes = std::fs::read(path).unwrap();
    mw_bundle::open_in_memory(
        &bytes,
        "pack result",
        Some(BundleKind::PackResult),
        &Limits::default(),
    )
    .unwrap()
}

/// Task `task`'s result bundle inside a pack result, opened and verified.
fn inner_result(pack: &mw_bundle::InMemoryBundle, task: u64) -> mw_bundle::InMemoryBundle {
    mw_bundle::open_in_memory(
        &pack.members[&mw_bundle::pack_result_member(task)],
        "inner",
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap()
}
