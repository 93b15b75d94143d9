//! Unit tests of packing and unpacking (hostile archives live in tests/hostile.rs of this crate).
#![allow(clippy::unwrap_used)]

use crate::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn program_info() -> ProgramInfo {
    ProgramInfo {
        executable: "bin/run.sh".into(),
        base_args: vec!["--fast".into()],
    }
}

fn task_info() -> TaskInfo {
    let mut env = BTreeMap::new();
    env.insert("SEED".to_string(), "42".to_string());
    TaskInfo {
        job: "job-7".into(),
        task: 3,
        attempt: None,
        program_sha256: "ab".repeat(32),
        args: vec!["a b".into(), "--n=3".into()],
        env,
        timeout_secs: Some(12.5),
        outputs: vec!["out.txt".into()],
        comparison: Comparison::Json {
            rel: 1e-9,
            abs: 0.5,
        },
    }
}

fn result_info() -> ResultInfo {
    ResultInfo {
        job: "job-7".into(),
        task: 3,
        attempt: None,
        exit: ExitInfo::Signaled { signal: 9 },
        wall_secs: 1.25,
        user_secs: 0.5,
        sys_secs: 0.125,
        host: "node1".into(),
        started_unix: 1_790_000_000.5,
        stderr_tail: "oops\n".into(),
        missing_outputs: vec!["other.txt".into()],
        comparison: Comparison::Bitwise,
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A program bundle built from a real directory: one executable script, one data file
/// in a subdirectory, one long path (over the 100 bytes of a plain tar name field).
fn program_builder(src: &Path) -> BundleBuilder {
    let script = src.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = src.join("data.txt");
    std::fs::write(&data, "some data\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = BundleBuilder::program(program_info(), "prog");
    b.add_file("bin/run.sh", &script).unwrap();
    b.add_file("share/data.txt", &data).unwrap();
    b.add_bytes(
        &format!("deep/{}/x.bin", "d".repeat(150)),
        vec![0, 1, 2, 255],
        false,
    )
    .unwrap();
    b
}

#[test]
fn program_round_trip_keeps_manifest_contents_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("prog.tar.gz");
    let sha = program_builder(tmp.path()).write_to(&archive).unwrap();
    assert_eq!(sha, sha256_file(&archive).unwrap());

    let dest = tmp.path().join("out");
    let m = unpack(
        &archive,
        &dest,
        Some(BundleKind::Program),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(m.kind, BundleKind::Program);
    assert_eq!(m.format, FORMAT_VERSION);
    assert_eq!(m.program, Some(program_info()));
    assert_eq!(m.members.len(), 3);
    let paths: Vec<&str> = m.members.iter().map(|m| m.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "members are listed sorted by path");
    assert!(m.member("bin/run.sh").unwrap().executable);
    assert!(!m.member("share/data.txt").unwrap().executable);

    let script = dest.join("bin/run.sh");
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode_of(&script), 0o755);
    let data = dest.join("share/data.txt");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "some data\n");
    assert_eq!(mode_of(&data), 0o644);
    let deep = dest.join(format!("deep/{}/x.bin", "d".repeat(150)));
    assert_eq!(std::fs::read(deep).unwrap(), vec![0, 1, 2, 255]);
    for member in &m.members {
        let on_disk = dest.join(&member.path);
        assert_eq!(sha256_file(&on_disk).unwrap(), member.sha256);
        assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), member.size);
    }
    // Only the members were written: no manifest file, nothing else.
    let mut top: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, vec!["bin", "deep", "share"]);
}

#[test]
fn task_round_trip_in_memory_and_on_disk() {
    let mut b = BundleBuilder::task(task_info(), "task");
    b.add_bytes(TASK_INPUT_NAME, br#"{"x": [1, 2, 3]}"#.to_vec(), false)
        .unwrap();
    b.add_bytes(
        &format!("{TASK_FILES_PREFIX}in.csv"),
        b"a,b\n1,2\n".to_vec(),
        false,
    )
    .unwrap();
    b.add_bytes(&format!("{TASK_FILES_PREFIX}empty"), Vec::new(), false)
        .unwrap();
    let bytes = b.to_bytes().unwrap();

    let mem = open_in_memory(&bytes, "task", Some(BundleKind::Task), &Limits::default()).unwrap();
    assert_eq!(mem.manifest.task, Some(task_info()));
    assert_eq!(mem.manifest.kind, BundleKind::Task);
    assert_eq!(mem.members.len(), 3);
    assert_eq!(
        mem.members[TASK_INPUT_NAME],
        br#"{"x": [1, 2, 3]}"#.to_vec()
    );
    assert_eq!(mem.members["files/in.csv"], b"a,b\n1,2\n".to_vec());
    assert_eq!(mem.members["files/empty"], Vec::<u8>::new());

    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("t.tar.gz");
    std::fs::write(&archive, &bytes).unwrap();
    let dest = tmp.path().join("d");
    let m = unpack(&archive, &dest, Some(BundleKind::Task), &Limits::default()).unwrap();
    assert_eq!(m, mem.manifest);
    assert_eq!(
        std::fs::read(dest.join("files/in.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    assert_eq!(std::fs::read(dest.join("files/empty")).unwrap(), b"");
    assert_eq!(mode_of(&dest.join(TASK_INPUT_NAME)), 0o644);
}

#[test]
fn result_round_trip() {
    let mut b = BundleBuilder::result(result_info(), "result");
    b.add_bytes(RESULT_STDOUT_NAME, b"{\"y\": 2.5}\n".to_vec(), false)
        .unwrap();
    b.add_bytes(
        &format!("{RESULT_OUTPUTS_PREFIX}out.txt"),
        b"out\n".to_vec(),
        true,
    )
    .unwrap();
    let bytes = b.to_bytes().unwrap();
    let mem = open_in_memory(
        &bytes,
        "result",
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap();
    let info = mem.manifest.result.clone().unwrap();
    assert_eq!(info, result_info());
    assert!(!info.exit.success());
    assert_eq!(info.exit.to_string(), "killed by signal 9");
    assert_eq!(mem.members[RESULT_STDOUT_NAME], b"{\"y\": 2.5}\n".to_vec());
    assert!(mem.manifest.member("outputs/out.txt").unwrap().executable);

    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("r.tar.gz");
    std::fs::write(&archive, &bytes).unwrap();
    let m = unpack(&archive, &tmp.path().join("d"), None, &Limits::default()).unwrap();
    assert_eq!(m, mem.manifest);
    assert_eq!(mode_of(&tmp.path().join("d/outputs/out.txt")), 0o755);
}

#[test]
fn every_exit_kind_survives_toml() {
    for exit in [
        ExitInfo::Exited { code: 0 },
        ExitInfo::Exited { code: -3 },
        ExitInfo::Signaled { signal: 15 },
        ExitInfo::TimedOut { limit_secs: 2.5 },
        ExitInfo::Cancelled,
        ExitInfo::SpawnFailed {
            reason: "no such file \"x\"".into(),
        },
    ] {
        let mut info = result_info();
        info.exit = exit.clone();
        let bytes = BundleBuilder::result(info, "r").to_bytes().unwrap();
        let mem = open_in_memory(&bytes, "r", None, &Limits::default()).unwrap();
        assert_eq!(mem.manifest.result.unwrap().exit, exit);
    }
    assert!(ExitInfo::Exited { code: 0 }.success());
    assert!(!ExitInfo::Cancelled.success());
}

#[test]
fn packing_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.tar.gz");
    let b = tmp.path().join("b.tar.gz");
    let src1 = tmp.path().join("s1");
    let src2 = tmp.path().join("s2");
    std::fs::create_dir(&src1).unwrap();
    std::fs::create_dir(&src2).unwrap();
    let sha_a = program_builder(&src1).write_to(&a).unwrap();
    // Touch the second source files later: mtimes differ, the archive must not.
    let sha_b = program_builder(&src2).write_to(&b).unwrap();
    assert_eq!(sha_a, sha_b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // Insertion order does not matter either.
    let mut x = BundleBuilder::task(task_info(), "x");
    x.add_bytes("b", b"2".to_vec(), false).unwrap();
    x.add_bytes("a", b"1".to_vec(), false).unwrap();
    let mut y = BundleBuilder::task(task_info(), "y");
    y.add_bytes("a", b"1".to_vec(), false).unwrap();
    y.add_bytes("b", b"2".to_vec(), false).unwrap();
    let (x, y) = (x.to_bytes().unwrap(), y.to_bytes().unwrap());
    assert_eq!(sha256_hex(&x), sha256_hex(&y));

    // And different content gives a different hash.
    let mut z = BundleBuilder::task(task_info(), "z");
    z.add_bytes("a", b"1".to_vec(), false).unwrap();
    z.add_bytes("b", b"3".to_vec(), false).unwrap();
    assert_ne!(sha256_hex(&z.to_bytes().unwrap()), sha256_hex(&x));
}

/// Streaming the archive into a file (`write_into`, `write_to`) gives the very bytes
/// `to_bytes` builds in memory, large file members included, and they unpack verified.
#[test]
fn an_archive_streamed_to_a_file_is_the_one_built_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    // 3 MiB that do not compress away, over several copy buffers and tar blocks.
    let content: Vec<u8> = (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &content).unwrap();
    let builder = || {
        let mut b = program_builder(tmp.path());
        b.add_file("big.bin", &big).unwrap();
        b
    };
    let in_memory = builder().to_bytes().unwrap();
    let streamed = tmp.path().join("streamed.tar.gz");
    let file = std::fs::File::create(&streamed).unwrap();
    builder().write_into(file).unwrap().sync_all().unwrap();
    assert_eq!(std::fs::read(&streamed).unwrap(), in_memory);
    let written = tmp.path().join("written.tar.gz");
    assert_eq!(
        builder().write_to(&written).unwrap(),
        sha256_hex(&in_memory)
    );
    assert_eq!(std::fs::read(&written).unwrap(), in_memory);
    let b = open_in_memory(&in_memory, "big", None, &Limits::default()).unwrap();
    assert_eq!(b.members["big.bin"], content);
    assert_eq!(b.manifest.member("big.bin").unwrap().size, 3 << 20);
}

#[test]
fn read_manifest_reads_only_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("p.tar.gz");
    program_builder(tmp.path()).write_to(&archive).unwrap();
    let m = read_manifest(&archive, &Limits::default()).unwrap();
    assert_eq!(m.kind, BundleKind::Program);
    assert_eq!(m.program.unwrap().executable, "bin/run.sh");
    assert_eq!(m.members.len(), 3);
    assert!(!tmp.path().join("bin").exists());

    let missing = tmp.path().join("nope.tar.gz");
    let err = read_manifest(&missing, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.tar.gz") && err.contains("cannot open"),
        "{err}"
    );

    // The same from bytes already read; bytes that are no bundle name their label.
    let bytes = std::fs::read(&archive).unwrap();
    let from_bytes = read_manifest_bytes(&bytes, "upload-7", &Limits::default()).unwrap();
    assert_eq!(from_bytes.kind, BundleKind::Program);
    assert_eq!(from_bytes.members.len(), 3);
    let err = read_manifest_bytes(b"not gzip", "upload-7", &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("upload-7"), "{err}");
}

#[test]
fn expected_kind_mismatch_is_refused() {
    let bytes = BundleBuilder::task(task_info(), "t").to_bytes().unwrap();
    let err = open_in_memory(
        &bytes,
        "t.tar.gz",
        Some(BundleKind::Program),
        &Limits::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("t.tar.gz"), "{err}");
    assert!(err.contains(MANIFEST_NAME), "{err}");
    assert!(
        err.contains("expected a program bundle, found a task bundle"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("t.tar.gz");
    std::fs::write(&archive, &bytes).unwrap();
    let err = unpack(
        &archive,
        &tmp.path().join("d"),
        Some(BundleKind::Result),
        &Limits::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("expected a result bundle, found a task bundle"),
        "{err}"
    );
}

/// Builds a one-entry archive whose manifest is `text` (a hand-written TOML).
fn manifest_only(text: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, MANIFEST_NAME, text.as_bytes())
        .unwrap();
    let mut gz = tar.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

#[test]
fn newer_format_is_refused() {
    let text = "format = 2\nkind = \"program\"\n[program]\nexecutable = \"x\"\n";
    let err = open_in_memory(&manifest_only(text), "new.tar.gz", None, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("new.tar.gz"), "{err}");
    assert!(err.contains("format 2 is newer"), "{err}");

    // The current version with the same text is fine.
    let ok = text.replace("format = 2", "format = 1");
    let mem = open_in_memory(&manifest_only(&ok), "ok", None, &Limits::default()).unwrap();
    assert_eq!(mem.manifest.program.unwrap().executable, "x");
}

#[test]
fn bad_manifests_are_refused_with_where() {
    let cases: &[(&str, &str)] = &[
        // Syntax error on line 3: the line is named.
        ("format = 1\nkind = \"task\"\n[task\n", "line 3"),
        ("format = 1\nkind = \"gadget\"\n", "gadget"),
        ("format = 1\nkind = \"task\"\n", "without its [task] table"),
        ("format = 0\nkind = \"task\"\n", "format 0"),
        (
            "format = 1\nkind = \"program\"\n[program]\nexecutable = \"x\"\n\
             [[member]]\npath = \"x\"\nsha256 = \"zz\"\nsize = 1\n",
            "sha256 is not 64 hex digits",
        ),
        (
            "format = 1\nkind = \"program\"\n[program]\nexecutable = \"x\"\n\
             [[member]]\npath = \"../x\"\nsha256 = \"00\"\nsize = 1\n",
            "`..` path component",
        ),
    ];
    for (text, want) in cases {
        let err = open_in_memory(&manifest_only(text), "m.tar.gz", None, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.tar.gz"), "{err}");
        assert!(err.contains(want), "wanted `{want}` in: {err}");
    }
}

#[test]
fn builder_refuses_bad_member_paths_and_duplicates() {
    for bad in ["", "/abs", "a/../b", "./a", "a//b", "a\\b", MANIFEST_NAME] {
        let mut b = BundleBuilder::task(task_info(), "lbl");
        let err = b.add_bytes(bad, vec![], false).unwrap_err().to_string();
        assert!(err.starts_with("building lbl"), "{err}");
        assert!(err.contains(&format!("member `{bad}`")), "{err}");
    }
    let mut b = BundleBuilder::task(task_info(), "lbl");
    b.add_bytes("a", vec![1], false).unwrap();
    let err = b.add_bytes("a", vec![2], false).unwrap_err().to_string();
    assert!(err.contains("added twice"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let err = b.add_file("d", tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let err = b
        .add_file("m", &tmp.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("member `m`: cannot read"), "{err}");
}

#[test]
fn check_relative_path_rules() {
    assert!(check_relative_path("a/b.txt").is_ok());
    assert!(check_relative_path("outputs/x.y.z").is_ok());
    assert!(check_relative_path(&"a".repeat(1024)).is_ok());
    assert!(check_relative_path(&"a".repeat(1025)).is_err());
    assert!(check_relative_path("a\0b").is_err());
    assert!(check_relative_path("a/").is_err());
    assert!(check_relative_path("..").is_err());
}

#[test]
fn windows_names_are_refused_on_every_platform() {
    for bad in [
        "..\\evil",
        "C:\\x",
        "C:x",
        "\\\\server\\share\\x",
        "CON",
        "con.txt",
        "dir/NUL",
        "Aux.tar.gz",
        "com1",
        "LPT9.log",
        "CON .txt",
        "a:stream",
        "dir/a.txt:Zone.Identifier",
        "trailing.",
        "trailing ",
        "what?",
        "a*b",
        "pipe|x",
        "tab\tname",
    ] {
        let err = check_relative_path(bad).unwrap_err();
        assert!(!err.is_empty(), "{bad}");
    }
    for ok in [
        "console.txt",
        "CONFIG",
        "com10",
        "lpt",
        "nul_result.json",
        "a.b.c",
    ] {
        assert!(
            check_relative_path(ok).is_ok(),
            "{ok}: {:?}",
            check_relative_path(ok)
        );
    }
    assert!(check_relative_path("a:stream")
        .unwrap_err()
        .contains("`a:stream`"));
    assert!(check_relative_path("CON")
        .unwrap_err()
        .contains("reserved Windows device"));
}

#[test]
fn case_insensitive_duplicates_are_refused_when_building() {
    let mut b = BundleBuilder::task(task_info(), "lbl");
    b.add_bytes("Data/x.txt", vec![1], false).unwrap();
    let err = b
        .add_bytes("data/X.TXT", vec![2], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("member `data/X.TXT`"), "{err}");
    assert!(err.contains("`Data/x.txt` only in case"), "{err}");
}

#[test]
fn unpack_does_not_overwrite_existing_files() {
    let mut b = BundleBuilder::task(task_info(), "t");
    b.add_bytes("a.txt", b"new".to_vec(), false).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("t.tar.gz");
    b.write_to(&archive).unwrap();
    let dest = tmp.path().join("d");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("a.txt"), "old").unwrap();
    let err = unpack(&archive, &dest, None, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("entry `a.txt`"), "{err}");
    assert_eq!(std::fs::read_to_string(dest.join("a.txt")).unwrap(), "old");
}
