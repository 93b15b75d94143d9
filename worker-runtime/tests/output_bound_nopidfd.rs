//! On the files path (kernels without pidfd, forced here with `MW_NO_PIDFD`; every run on
//! Windows) stdout and stderr go to files: a program printing without end must be stopped
//! once its file passes its limit, not fill the disk.
//!
//! `MW_NO_PIDFD` is read once, at a binary's first run, and setting it while other threads
//! may start processes is unsound: this binary sets it first thing and runs its tests one
//! after the other, without the libtest harness (`harness = false`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::ExitInfo;
use mw_worker_runtime::{execute, ExecRequest, ProcessControl};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The limit under test, for stdout and for stderr.
const LIMIT: u64 = 64 * 1024;

/// What the programs print at most: 12288 blocks of 64 KiB, 768 MiB. "For ever" for this
/// test, yet finite, so that without the bound a run ends (and the test fails) rather than
/// hangs or fills the disk.
const BLOCKS: u32 = 12288;

/// Far more than the limit plus what a program can write while its file is looked at and
/// it is stopped; far less than what it prints unbounded.
const FAR_BELOW_FOR_EVER: u64 = 512 * 1024 * 1024;

/// A request running `body` as a /bin/sh script in `dir`, with fresh work and io dirs.
fn request(dir: &Path, body: &str) -> ExecRequest {
    let script = dir.join("prog.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.join("work");
    let io = dir.join("io");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&io).unwrap();
    ExecRequest::new(script, work, io)
}

/// The size of `io/<name>` in `dir`: the file is there (the files path was taken).
fn file_size(dir: &Path, name: &str) -> u64 {
    let path = dir.join("io").join(name);
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{} (was the files path taken?): {e}", path.display()))
        .len()
}

fn stdout_printing_for_ever_is_stopped_at_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(
        dir.path(),
        &format!("i=0; while [ $i -lt {BLOCKS} ]; do head -c 65536 /dev/zero; i=$((i+1)); done"),
    );
    req.max_stdout_bytes = LIMIT;
    let out = execute(&req, &ProcessControl::new()).unwrap();
    let size = file_size(dir.path(), "stdout");
    println!("  the stdout file stopped at {size} bytes");
    assert!(!out.exit.success(), "{:?}", out.exit);
    assert_eq!(
        out.exit,
        ExitInfo::StreamBroken {
            reason: format!("stdout passed its limit of {LIMIT} bytes; the task was stopped"),
        }
    );
    assert_eq!(out.stdout.len() as u64, LIMIT);
    assert!(out.stdout_truncated);
    assert!(size > LIMIT, "the stdout file has {size} bytes");
    assert!(
        size < FAR_BELOW_FOR_EVER,
        "the stdout file grew to {size} bytes"
    );
}

fn stderr_printing_for_ever_is_stopped_at_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(
        dir.path(),
        &format!(
            "i=0; while [ $i -lt {BLOCKS} ]; do i=$((i+1)); \
             head -c 65536 /dev/zero >&2; echo \" block $i\" >&2; done"
        ),
    );
    req.max_stderr_file_bytes = LIMIT;
    req.stderr_tail_bytes = 100;
    let out = execute(&req, &ProcessControl::new()).unwrap();
    let size = file_size(dir.path(), "stderr");
    println!("  the stderr file stopped at {size} bytes");
    assert!(!out.exit.success(), "{:?}", out.exit);
    assert_eq!(
        out.exit,
        ExitInfo::StreamBroken {
            reason: format!("stderr passed its limit of {LIMIT} bytes; the task was stopped"),
        }
    );
    assert!(size > LIMIT, "the stderr file has {size} bytes");
    assert!(
        size < FAR_BELOW_FOR_EVER,
        "the stderr file grew to {size} bytes"
    );
    // The tail is still the file's last bytes.
    let file = std::fs::read(dir.path().join("io/stderr")).unwrap();
    let tail = &file[file.len() - 100..];
    assert_eq!(out.stderr_tail, String::from_utf8_lossy(tail));
    assert!(out.stdout.is_empty() && !out.stdout_truncated);
}

fn main() {
    std::env::set_var(mw_worker_runtime::exec::NO_PIDFD_ENV, "1");
    let tests: [(&str, fn()); 2] = [
        (
            "stdout_printing_for_ever_is_stopped_at_its_limit",
            stdout_printing_for_ever_is_stopped_at_its_limit,
        ),
        (
            "stderr_printing_for_ever_is_stopped_at_its_limit",
            stderr_printing_for_ever_is_stopped_at_its_limit,
        ),
    ];
    // Like libtest: an argument not starting with `-` runs only the tests whose name has it.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        println!("test {name} ...");
        test();
        println!("test {name} ... ok");
    }
}
