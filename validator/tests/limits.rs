//! The validator's memory on the BOINC server is bounded by the result limit (the master's
//! `max_output`, 16 MiB by default, `max_output_bytes` in `mw_boinc.toml`), however the
//! upload is made: the real `mw-validator` runs as `script_validator` runs it, and its peak
//! resident memory (`ru_maxrss` from `wait4`, the kernel's VmHWM of the finished process)
//! is checked. The memory checks are in one test so no other test of this binary inflates
//! the parent's resident set while a child is measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{
    pack_result_member, BundleBuilder, Comparison, ExitInfo, PackResultInfo, ResultInfo,
    RESULT_STDOUT_NAME,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Proj {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn project() -> Proj {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    for d in ["bin", "tmp_host", "upload/2e1"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let exe = env!("CARGO_BIN_EXE_mw-validator");
    for name in ["mw-validator-init", "mw-validator-compare"] {
        std::os::unix::fs::symlink(exe, root.join("bin").join(name)).unwrap();
    }
    Proj { _tmp: tmp, root }
}

fn info(comparison: Comparison) -> ResultInfo {
    ResultInfo {
        job: "j".into(),
        task: 3,
        attempt: Some(1),
        exit: ExitInfo::Exited { code: 0 },
        wall_secs: 1.0,
        user_secs: 0.5,
        sys_secs: 0.1,
        host: "volunteer".into(),
        started_unix: 1.7e9,
        stderr_tail: String::new(),
        missing_outputs: vec![],
        comparison,
    }
}

/// A result whose stdout is the file at `stdout` (streamed into the archive).
fn upload_from_file(p: &Proj, name: &str, stdout: &Path, cmp: Comparison) -> PathBuf {
    let mut b = BundleBuilder::result(info(cmp), "test");
    b.add_file(RESULT_STDOUT_NAME, stdout).unwrap();
    let dest = p.root.join("upload/2e1").join(name);
    b.write_to(&dest).unwrap();
    dest
}

/// `[0,0,…,0,<last>]` of about `bytes` bytes, written to `path` without holding it.
fn dense_array(path: &Path, bytes: usize, last: u8) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"[0").unwrap();
    let chunk = b",0".repeat(1 << 15);
    for _ in 0..bytes / chunk.len() {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(&[b',', last, b']']).unwrap();
}

/// Runs `<root>/bin/NAME files…` from `tmp_host` (as script_validator does); returns the exit
/// code, stderr and the process's peak resident memory in KiB.
#[allow(clippy::zombie_processes)] // reaped by wait4 (for its rusage), not by std
fn run_measured(p: &Proj, name: &str, files: &[&Path]) -> (i32, String, u64) {
    // A child's peak starts at its parent's peak (exec keeps the larger of the two): bring
    // this process's peak down to what it holds now, so the child's is its own.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let mut child = Command::new(p.root.join("bin").join(name))
        .args(files)
        .current_dir(p.root.join("tmp_host"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child (not reaped by std: we never call wait on `child`), with
    // pointers to locals that outlive the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status), "{name} did not exit: {status}");
    eprintln!(
        "{name} -> {} (peak {} KiB): {err}",
        libc::WEXITSTATUS(status),
        usage.ru_maxrss
    );
    (
        libc::WEXITSTATUS(status),
        err,
        u64::try_from(usage.ru_maxrss).unwrap(),
    )
}

const MIB: usize = 1 << 20;

#[test]
fn a_huge_json_array_in_a_small_upload_is_refused_in_bounded_memory() {
    let p = project();
    let scratch = p.root.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // 200 MB of `[0,0,…]` in an upload of a few hundred KB (the issue: 4-8 GB spent on a
    // 3.9 MB upload).
    dense_array(&scratch.join("big"), 200 * MIB, b'0');
    let big = upload_from_file(
        &p,
        "mw_big_0_r1_0",
        &scratch.join("big"),
        Comparison::Json { rel: 0.0, abs: 0.0 },
    );
    std::fs::remove_file(scratch.join("big")).unwrap();
    assert!(std::fs::metadata(&big).unwrap().len() < 4 * MIB as u64);
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-init", &[&big]);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("over the limit of 16777216 bytes"), "{msg}");
    assert!(peak_kib < 48 * 1024, "peak memory {peak_kib} KiB");
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-compare", &[&big, &big]);
    assert_eq!(code, 1, "{msg}");
    assert!(peak_kib < 48 * 1024, "peak memory {peak_kib} KiB");

    // Under the byte limit but about 7 million values (a naive parse builds some 500 MB of
    // trees per side): two results that differ only in the last value.
    dense_array(&scratch.join("a"), 14 * MIB, b'0');
    dense_array(&scratch.join("b"), 14 * MIB, b'1');
    let json = Comparison::Json { rel: 0.0, abs: 0.0 };
    let a = upload_from_file(&p, "mw_a_0_r1_0", &scratch.join("a"), json.clone());
    let b = upload_from_file(&p, "mw_b_1_r1_0", &scratch.join("b"), json.clone());
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-init", &[&a]);
    assert_eq!(code, 0, "{msg}");
    assert!(peak_kib < 48 * 1024, "init peak memory {peak_kib} KiB");
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-compare", &[&a, &b]);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("JSON values"), "{msg}");
    assert!(peak_kib < 96 * 1024, "compare peak memory {peak_kib} KiB");
    // Identical payloads agree by their verified checksums, without parsing anything.
    let a2 = upload_from_file(&p, "mw_a_1_r2_0", &scratch.join("a"), json);
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-compare", &[&a, &a2]);
    assert_eq!(code, 0, "{msg}");
    assert!(peak_kib < 64 * 1024, "compare peak memory {peak_kib} KiB");

    // A small pack result of 100 inner results, each 16 MiB of blank stdout under a JSON rule
    // (each keeps its stdout: 1.6 GB in all without the pack's one budget).
    let up = blank_pack(&p, "mw_p_0_r1_0", 100);
    assert!(std::fs::metadata(&up).unwrap().len() < 16 * MIB as u64);
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-init", &[&up]);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("the budget of one pack result"), "{msg}");
    assert!(
        peak_kib < 300 * 1024,
        "pack init peak memory {peak_kib} KiB"
    );
    let (code, msg, peak_kib) = run_measured(&p, "mw-validator-compare", &[&up, &up]);
    assert_eq!(code, 1, "{msg}");
    assert!(
        peak_kib < 300 * 1024,
        "pack compare peak memory {peak_kib} KiB"
    );
}

/// A pack result of tasks `0..tasks` of job `j`, each 16 MiB of blank stdout under a JSON
/// rule.
fn blank_pack(p: &Proj, name: &str, tasks: u64) -> PathBuf {
    let mut pack = BundleBuilder::pack_result(
        PackResultInfo {
            job: "j".into(),
            host: "volunteer".into(),
            tasks: (0..tasks).collect(),
            not_run: vec![],
        },
        "pack",
    );
    for t in 0..tasks {
        let mut i = info(Comparison::Json { rel: 0.0, abs: 0.0 });
        i.task = t;
        let mut b = BundleBuilder::result(i, "inner");
        b.add_bytes(RESULT_STDOUT_NAME, vec![b' '; 16 * MIB], false)
            .unwrap();
        pack.add_bytes(&pack_result_member(t), b.to_bytes().unwrap(), false)
            .unwrap();
    }
    let dest = p.root.join("upload/2e1").join(name);
    pack.write_to(&dest).unwrap();
    dest
}

#[test]
fn the_limit_is_set_in_mw_boinc_toml() {
    let p = project();
    let text = p.root.join("two-kb");
    std::fs::write(&text, format!("\"{}\"", "x".repeat(2000))).unwrap();
    let up = upload_from_file(&p, "mw_t_0_r1_0", &text, Comparison::Bitwise);
    // No config file: the default (16 MiB) takes 2 KB.
    let (code, msg, _) = run_measured(&p, "mw-validator-init", &[&up]);
    assert_eq!(code, 0, "{msg}");
    // The project's mw_boinc.toml (found from tmp_<host> as `..`) lowers it.
    std::fs::write(
        p.root.join("mw_boinc.toml"),
        "app_name = \"mw\"\nspool_dir = \"mw_spool\"\nmax_output_bytes = 1000\n",
    )
    .unwrap();
    let (code, msg, _) = run_measured(&p, "mw-validator-init", &[&up]);
    assert_eq!(code, 1, "{msg}");
    assert!(
        msg.contains("2002 bytes, over the limit of 1000 bytes"),
        "{msg}"
    );
    assert!(msg.contains("max_output_bytes"), "{msg}");
    // A config the validator cannot read is the operator's to fix: retry later, not invalid.
    std::fs::write(p.root.join("mw_boinc.toml"), "max_output_bytes = \"x\"\n").unwrap();
    let (code, msg, _) = run_measured(&p, "mw-validator-init", &[&up]);
    assert_eq!(code, 3, "{msg}");
}
