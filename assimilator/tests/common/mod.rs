//! What the assimilator's test files share: a project laid out for the real
//! `mw-assimilator`, uploads into it, and hand-made result bundles.

#![allow(dead_code)] // each test file uses part of it

use mw_bundle::{BundleBuilder, Comparison, ExitInfo, ResultInfo, RESULT_STDOUT_NAME};
use std::path::PathBuf;

/// A project directory with `bin/mw-assimilator`, `tmp_host/`, one upload directory and the
/// spool named in `mw_boinc.toml`.
pub struct Proj {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub spool: PathBuf,
}

/// A fresh project; `extra_config` is appended to its `mw_boinc.toml`.
pub fn project(extra_config: &str) -> Proj {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proj");
    for d in ["bin", "tmp_host", "upload/2e1", "mw_spool"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // A symlink, not a copy: a file we just wrote could be held open for writing by a
    // process another test thread forks at that moment, and exec would fail (ETXTBSY).
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_mw-assimilator"),
        root.join("bin/mw-assimilator"),
    )
    .unwrap();
    let spool = root.join("mw_spool");
    std::fs::write(
        root.join("mw_boinc.toml"),
        format!(
            "app_name = \"mw\"\nspool_dir = \"{}\"\n{extra_config}",
            spool.display()
        ),
    )
    .unwrap();
    Proj {
        _tmp: tmp,
        root,
        spool,
    }
}

impl Proj {
    /// Writes an upload named `name`; returns its path.
    pub fn upload(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join("upload/2e1").join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// The result of task `task` of `job` (attempt `attempt`): exit 0 from host `h`.
pub fn info(job: &str, task: u64, attempt: Option<u32>) -> ResultInfo {
    ResultInfo {
        job: job.into(),
        task,
        attempt,
        exit: ExitInfo::Exited { code: 0 },
        wall_secs: 1.0,
        user_secs: 0.5,
        sys_secs: 0.0,
        host: "h".into(),
        started_unix: 1.7e9,
        stderr_tail: String::new(),
        missing_outputs: vec![],
        comparison: Comparison::Bitwise,
    }
}

/// A result bundle of `info` with `stdout`.
pub fn bundle(info: ResultInfo, stdout: &str) -> Vec<u8> {
    let mut b = BundleBuilder::result(info, "test");
    b.add_bytes(RESULT_STDOUT_NAME, stdout.as_bytes().to_vec(), false)
        .unwrap();
    b.to_bytes().unwrap()
}
