//! The BOINC app protocol of the Windows `mw-worker`, under Wine, against
//! `tests/support/boinc_client_double.rs`, which plays the Windows client's side as BOINC's
//! sources describe it (named mapping `shm_boinc_<i>`, `<comm_obj_name>` in
//! `init_data.xml`, heartbeats, `<quit/>`; see `src/boinc/WINDOWS.md`).
//!
//! Needs a Windows build and Wine, so the tests are ignored by default; `.ci/test` runs them
//! with `--ignored` and `MW_WORKER_BIN` (mw-worker.exe), `MW_CONTRACT_PROG`,
//! `MW_BOINC_CLIENT_DOUBLE` and `MW_WORKER_RUNNER` (wine64) set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{BundleBuilder, BundleKind, ExitInfo, Limits, ProgramInfo, TaskInfo};
use std::path::{Path, PathBuf};
use std::process::Command;

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")))
}

fn wine_path(p: &Path) -> String {
    format!("Z:{}", p.to_str().unwrap().replace('/', "\\"))
}

struct Slot {
    dir: tempfile::TempDir,
}

impl Slot {
    /// A BOINC data directory with project files and slot 0 holding `<soft_link>` files
    /// for the three logical names, as the client prepares it.
    fn new(mode: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("projects/p");
        let slot = dir.path().join("slots/0");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::create_dir_all(&slot).unwrap();
        let prog = std::fs::read(env_path("MW_CONTRACT_PROG")).unwrap();
        let mut b = BundleBuilder::program(
            ProgramInfo {
                executable: "contract_prog.exe".into(),
                base_args: vec![],
            },
            "program",
        );
        b.add_bytes("contract_prog.exe", prog, true).unwrap();
        let sha = b.write_to(&project.join("program.tar.gz")).unwrap();
        let mut env = std::collections::BTreeMap::new();
        env.insert("MW_PIDFILE".into(), wine_path(&dir.path().join("pid")));
        let info = TaskInfo {
            job: "boincwin".into(),
            task: 3,
            attempt: None,
            program_sha256: sha,
            args: vec![mode.into()],
            env,
            ..TaskInfo::default()
        };
        let mut t = BundleBuilder::task(info, "task");
        t.add_bytes(mw_bundle::TASK_INPUT_NAME, b"{\"n\":2}".to_vec(), false)
            .unwrap();
        t.write_to(&project.join("task.tar.gz")).unwrap();
        for (logical, physical) in [
            ("mw_program", "program.tar.gz"),
            ("mw_task", "task.tar.gz"),
            ("mw_result", "result.tar.gz"),
        ] {
            std::fs::write(
                slot.join(logical),
                format!("<soft_link>../../projects/p/{physical}</soft_link>\n"),
            )
            .unwrap();
        }
        Slot { dir }
    }

    fn slot(&self) -> PathBuf {
        self.dir.path().join("slots/0")
    }

    /// Runs the client double (under Wine) on the slot; returns its JSON report.
    fn run_client(&self, mode: &str) -> serde_json::Value {
        let runner = std::env::var("MW_WORKER_RUNNER").unwrap_or_else(|_| "wine64".into());
        let out = Command::new(runner)
            .arg(env_path("MW_BOINC_CLIENT_DOUBLE"))
            .arg(wine_path(&self.slot()))
            .arg(wine_path(&env_path("MW_WORKER_BIN")))
            .arg(mode)
            .env("WINEDEBUG", "-all")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "client double failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

#[test]
#[ignore = "needs the Windows mw-worker and Wine; run by .ci/test"]
fn a_task_finishes_through_the_named_segment() {
    let s = Slot::new("echo");
    let report = s.run_client("finish");
    assert_eq!(report["exit"], 0, "{report}");
    // The worker found the segment by <comm_obj_name> and reported through it.
    assert!(report["statuses"].as_u64().unwrap() >= 1, "{report}");
    let status = report["last_status"].as_str().unwrap();
    assert!(
        status.contains("<fraction_done>1.000000</fraction_done>"),
        "{report}"
    );
    assert!(status.contains("<current_cpu_time>"), "{report}");
    assert!(s.slot().join("boinc_finish_called").is_file());
    let bytes = std::fs::read(s.dir.path().join("projects/p/result.tar.gz")).unwrap();
    let r = mw_bundle::open_in_memory(&bytes, "r", Some(BundleKind::Result), &Limits::default())
        .unwrap();
    assert_eq!(
        r.manifest.result.unwrap().exit,
        ExitInfo::Exited { code: 0 }
    );
}

#[test]
#[ignore = "needs the Windows mw-worker and Wine; run by .ci/test"]
fn quit_through_the_segment_stops_the_task_tree_for_a_later_restart() {
    let s = Slot::new("tree");
    // Quit once the task has started its child (it writes the pid file then).
    let pidfile = wine_path(&s.dir.path().join("pid"));
    let report = s.run_client(&format!("quit:{pidfile}"));
    // <quit/>: exit 0 with boinc_temporary_exit, no finish file, no result.
    assert_eq!(report["exit"], 0, "{report}");
    let temp = std::fs::read_to_string(s.slot().join("boinc_temporary_exit")).unwrap();
    assert!(temp.contains("quit requested"), "{temp}");
    assert!(!s.slot().join("boinc_finish_called").exists());
    assert!(!s.dir.path().join("projects/p/result.tar.gz").exists());
    // The task's own child was in the job and is gone too.
    let pid = std::fs::read_to_string(s.dir.path().join("pid")).unwrap();
    let st = Command::new(std::env::var("MW_WORKER_RUNNER").unwrap_or_else(|_| "wine64".into()))
        .arg(env_path("MW_CONTRACT_PROG"))
        .arg("gone")
        .arg(pid.trim())
        .env("WINEDEBUG", "-all")
        .status()
        .unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the task's child {pid} outlived <quit/>"
    );
}
