//! Runs the real `mw-validator`, installed under its two names in a project-like `bin/`, the
//! way `script_validator` does: `../bin/NAME files…` through `/bin/sh` from `tmp_<host>`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{BundleBuilder, Comparison, ExitInfo, ResultInfo, RESULT_STDOUT_NAME};
use std::io::Write;
use std::path::{Path, PathBuf};

struct Proj {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn project() -> Proj {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    for d in ["bin", "tmp_host", "upload/2e1", "upload/335"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let exe = env!("CARGO_BIN_EXE_mw-validator");
    for name in ["mw-validator-init", "mw-validator-compare"] {
        // A symlink, not a copy (a copy may be busy for exec: ETXTBSY under parallel tests).
        std::os::unix::fs::symlink(exe, root.join("bin").join(name)).unwrap();
    }
    Proj { _tmp: tmp, root }
}

fn info(job: &str, task: u64, exit: ExitInfo, comparison: Comparison) -> ResultInfo {
    ResultInfo {
        job: job.into(),
        task,
        attempt: None,
        exit,
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

fn bundle(info: ResultInfo, stdout: &str, outputs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = BundleBuilder::result(info, "test");
    b.add_bytes(RESULT_STDOUT_NAME, stdout.as_bytes().to_vec(), false)
        .unwrap();
    for (name, data) in outputs {
        b.add_bytes(&format!("outputs/{name}"), data.to_vec(), false)
            .unwrap();
    }
    b.to_bytes().unwrap()
}

fn ok(job: &str, stdout: &str, cmp: Comparison) -> Vec<u8> {
    bundle(
        info(job, 7, ExitInfo::Exited { code: 0 }, cmp),
        stdout,
        &[("a.dat", b"AAA")],
    )
}

impl Proj {
    fn upload(&self, sub: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join("upload").join(sub).join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs `../bin/NAME args…` through /bin/sh from tmp_host; returns (exit code, stderr).
    fn call(&self, name: &str, files: &[&Path]) -> (i32, String) {
        let mut cmd = format!("../bin/{name}");
        for f in files {
            cmd.push(' ');
            cmd.push_str(f.to_str().unwrap());
        }
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(self.root.join("tmp_host"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{cmd} -> {:?}: {err}", out.status.code());
        assert_eq!(err.lines().count(), 1, "one line of reason: {err:?}");
        (out.status.code().unwrap(), err)
    }

    fn init(&self, f: &Path) -> (i32, String) {
        self.call("mw-validator-init", &[f])
    }

    fn compare(&self, a: &Path, b: &Path) -> (i32, String) {
        self.call("mw-validator-compare", &[a, b])
    }
}

#[test]
fn init_accepts_a_good_result_and_rejects_a_failed_task() {
    let p = project();
    let good = p.upload(
        "2e1",
        "mw_w1_0_r1_0",
        &ok("j1", "{\"x\":1}", Comparison::Bitwise),
    );
    let (code, msg) = p.init(&good);
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("job j1 task 7"));
    let failed = bundle(
        info("j1", 7, ExitInfo::Exited { code: 2 }, Comparison::Bitwise),
        "",
        &[],
    );
    let failed = p.upload("2e1", "mw_w1_1_r2_0", &failed);
    let (code, msg) = p.init(&failed);
    assert_eq!(code, 1);
    assert!(msg.contains("did not succeed"), "{msg}");
}

#[test]
fn compare_bitwise_accepts_agreeing_and_rejects_disagreeing() {
    let p = project();
    let a = p.upload(
        "2e1",
        "mw_w1_0_r1_0",
        &ok("j1", "{\"pi\":3.14159}", Comparison::Bitwise),
    );
    let b = p.upload(
        "335",
        "mw_w1_1_r2_0",
        &ok("j1", "{\"pi\":3.14159}", Comparison::Bitwise),
    );
    assert_eq!(p.compare(&a, &b).0, 0);
    let c = p.upload(
        "335",
        "mw_w1_2_r3_0",
        &ok("j1", "{\"pi\":3.14160}", Comparison::Bitwise),
    );
    let (code, msg) = p.compare(&a, &c);
    assert_eq!(code, 1);
    assert!(msg.contains("stdout.json"), "{msg}");
    // Same stdout, different output file.
    let d = bundle(
        info("j1", 7, ExitInfo::Exited { code: 0 }, Comparison::Bitwise),
        "{\"pi\":3.14159}",
        &[("a.dat", b"AAB")],
    );
    let d = p.upload("335", "mw_w1_3_r4_0", &d);
    let (code, msg) = p.compare(&a, &d);
    assert_eq!(code, 1);
    assert!(msg.contains("outputs/a.dat"), "{msg}");
    // Results of different tasks never match.
    let e = bundle(
        info("j1", 8, ExitInfo::Exited { code: 0 }, Comparison::Bitwise),
        "{\"pi\":3.14159}",
        &[("a.dat", b"AAA")],
    );
    let e = p.upload("335", "mw_w2_0_r5_0", &e);
    assert_eq!(p.compare(&a, &e).0, 1);
}

#[test]
fn compare_json_tolerates_float_noise_within_tolerance_only() {
    let p = project();
    let rule = Comparison::Json {
        rel: 1e-9,
        abs: 0.0,
    };
    let a = p.upload(
        "2e1",
        "mw_w1_0_r1_0",
        &ok(
            "j1",
            "{\"sum\": 0.30000000000000004, \"n\": [1, 2.5], \"s\": \"x\"}",
            rule.clone(),
        ),
    );
    let b = p.upload(
        "335",
        "mw_w1_1_r2_0",
        &ok(
            "j1",
            "{\"s\": \"x\", \"n\": [1, 2.5000000000001], \"sum\": 0.3}",
            rule.clone(),
        ),
    );
    let (code, msg) = p.compare(&a, &b);
    assert_eq!(code, 0, "{msg}");
    let c = p.upload(
        "335",
        "mw_w1_2_r3_0",
        &ok(
            "j1",
            "{\"sum\": 0.31, \"n\": [1, 2.5], \"s\": \"x\"}",
            rule.clone(),
        ),
    );
    let (code, msg) = p.compare(&a, &c);
    assert_eq!(code, 1);
    assert!(msg.contains("$.sum"), "{msg}");
    let d = p.upload(
        "335",
        "mw_w1_3_r4_0",
        &ok(
            "j1",
            "{\"sum\": 0.3, \"n\": [1, 2.5], \"s\": \"y\"}",
            rule.clone(),
        ),
    );
    assert_eq!(p.compare(&a, &d).0, 1);
    // Absolute tolerance.
    let abs = Comparison::Json {
        rel: 0.0,
        abs: 0.01,
    };
    let e = p.upload("2e1", "mw_w5_0_r1_0", &ok("j2", "[0.001]", abs.clone()));
    let f = p.upload("335", "mw_w5_1_r1_0", &ok("j2", "[0.0]", abs.clone()));
    assert_eq!(p.compare(&e, &f).0, 0);
    let g = p.upload("335", "mw_w5_2_r1_0", &ok("j2", "[0.02]", abs));
    assert_eq!(p.compare(&e, &g).0, 1);
}

#[test]
fn malformed_and_hostile_bundles_are_invalid() {
    let p = project();
    let good = p.upload("2e1", "good_0_r1_0", &ok("j1", "1", Comparison::Bitwise));
    // Not a bundle at all.
    let junk = p.upload("335", "junk_0_r1_0", b"<html>502 Bad Gateway</html>");
    assert_eq!(p.init(&junk).0, 1);
    assert_eq!(p.compare(&good, &junk).0, 1);
    // A flipped byte in the compressed stream.
    let mut bytes = ok("j1", "1", Comparison::Bitwise);
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    assert_eq!(p.init(&p.upload("335", "flip_0_r1_0", &bytes)).0, 1);
    // A task bundle instead of a result bundle.
    let task = BundleBuilder::task(Default::default(), "t")
        .to_bytes()
        .unwrap();
    let (code, msg) = p.init(&p.upload("335", "task_0_r1_0", &task));
    assert_eq!(code, 1);
    assert!(msg.contains("expected a result bundle"), "{msg}");
    // A checksum that lies: manifest from one bundle, member content from another.
    let lying = hand_made(&ok_manifest_text(), &[("stdout.json", b"2")]);
    let (code, msg) = p.init(&p.upload("335", "lie_0_r1_0", &lying));
    assert_eq!(code, 1);
    assert!(msg.contains("SHA-256 mismatch"), "{msg}");
    // A member escaping the directory.
    let escape = hand_made(&ok_manifest_text(), &[("../../etc/passwd", b"x")]);
    let (code, msg) = p.init(&p.upload("335", "esc_0_r1_0", &escape));
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    // Negative tolerance is refused.
    let bad_tol = ok(
        "j1",
        "1",
        Comparison::Json {
            rel: -1.0,
            abs: 0.0,
        },
    );
    assert_eq!(p.init(&p.upload("335", "tol_0_r1_0", &bad_tol)).0, 1);
}

/// A manifest text for a good result bundle with stdout "1".
fn ok_manifest_text() -> String {
    let bytes = ok("j1", "1", Comparison::Bitwise);
    let b = mw_bundle::open_in_memory(&bytes, "x", None, &mw_bundle::Limits::default()).unwrap();
    toml::to_string(&b.manifest).unwrap()
}

/// A gzip'd tar written by hand: the manifest first, then raw entries (names unchecked).
fn hand_made(manifest: &str, entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut add = |name: &str, data: &[u8]| {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        tar.extend_from_slice(&h);
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    add("MANIFEST.toml", manifest.as_bytes());
    for (n, d) in entries {
        add(n, d);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn io_problems_and_wrong_calls_are_transient() {
    let p = project();
    // A directory that is not there (BOINC's ERR_OPENDIR): retried later.
    let missing = p.root.join("upload/no-such-dir/never_uploaded_0_r1_0");
    assert!(!missing.parent().unwrap().exists());
    let (code, msg) = p.init(&missing);
    assert_eq!(code, 3, "{msg}");
    // A file missing from a directory that is there: invalid, as BOINC's own validators
    // take it (it was once "retry later", every 6 hours for ever).
    let a = p.upload("2e1", "a_0_r1_0", &ok("j1", "1", Comparison::Bitwise));
    let (code, msg) = p.init(&a.with_file_name("never_uploaded_0_r1_0"));
    assert_eq!(code, 1, "{msg}");
    // Called with no files (what BOINC does with multi-token configs, §0.1): not "valid".
    assert_eq!(p.call("mw-validator-init", &[]).0, 3);
    let a = p.upload("2e1", "a_0_r1_0", &ok("j1", "1", Comparison::Bitwise));
    assert_eq!(p.call("mw-validator-compare", &[&a]).0, 3);
}

#[test]
fn help_and_version_answer_on_stdout_under_every_name() {
    let p = project();
    let direct = PathBuf::from(env!("CARGO_BIN_EXE_mw-validator"));
    let init = p.root.join("bin/mw-validator-init");
    let compare = p.root.join("bin/mw-validator-compare");
    let run = |exe: &Path, args: &[&str]| {
        let out = std::process::Command::new(exe).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let version = format!("mw-validator {}\n", env!("CARGO_PKG_VERSION"));
    for exe in [&direct, &init, &compare] {
        for flag in ["--version", "-V"] {
            assert_eq!(run(exe, &[flag]), (Some(0), version.clone(), String::new()));
        }
        for flag in ["--help", "-h"] {
            let (code, out, err) = run(exe, &[flag]);
            assert_eq!(code, Some(0), "{err}");
            assert!(err.is_empty(), "{err}");
            assert!(
                out.contains("mw-validator-init FILE")
                    && out.contains("mw-validator-compare FILE1 FILE2")
                    && out.contains("3 transient"),
                "{out}"
            );
        }
    }
    assert_eq!(run(&direct, &["init", "--help"]).0, Some(0));
    // The BOINC-facing contract is unchanged: no mode, or no file, is a transient failure
    // with one line on stderr; a path is judged.
    let (code, out, err) = run(&direct, &[]);
    assert_eq!((code, out.as_str()), (Some(3), ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(run(&init, &[]).0, Some(3));
    let bad = p.upload("2e1", "mw_w1_0_r1_0", b"not a bundle");
    let (code, msg) = p.init(&bad);
    assert_eq!(code, 1, "{msg}");
}
