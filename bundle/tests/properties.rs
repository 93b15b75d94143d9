//! Property tests of the bundle reader and the bounded readers around it: bundles made by
//! this crate's own writer round-trip; arbitrary bytes, forged manifests and real bundles
//! with bit flips, truncations and tar-level damage are refused cleanly, write nothing
//! outside the destination and leave nothing half-verified inside it; JSON results are read
//! within their limits, `check_json_limited` agreeing with `parse_json_limited` and both with
//! serde_json; `text::tail`/`clip` stay within their bounds on character boundaries.
//!
//! Deterministic: a fixed seed and case count unless `PROPTEST_RNG_SEED`/`PROPTEST_CASES` are
//! set (to explore further by hand), no failure files written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{
    check_json_limited, check_relative_path, open_in_memory, parse_json_limited,
    read_manifest_bytes, text, unpack, BundleBuilder, BundleKind, JsonLimitError, Limits,
    ProgramInfo, MANIFEST_NAME,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        RngSeed::Fixed(0x6d77_6275_6e64)
    };
    ProptestConfig {
        // `PROPTEST_CASES` explores further by hand; CI runs the given count.
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        failure_persistence: None,
        max_shrink_iters: 4096,
        rng_seed,
        ..base
    }
}

fn limits() -> Limits {
    Limits {
        max_total_bytes: 256 * 1024,
        max_entries: 64,
        max_manifest_bytes: 64 * 1024,
    }
}

/// Files of a program bundle: unique paths (never a Windows device name), some in
/// sub-directories, any content.
fn files() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
    prop::collection::vec(
        (
            0u8..3,
            "[a-z]{1,6}",
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        ),
        1..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (dir, name, data, exec))| {
                let path = match dir {
                    0 => format!("m_{name}{i}"),
                    d => format!("dir_{d}/m_{name}{i}"),
                };
                (path, data, exec)
            })
            .collect()
    })
}

fn build(files: &[(String, Vec<u8>, bool)]) -> Vec<u8> {
    let mut b = BundleBuilder::program(
        ProgramInfo {
            executable: files[0].0.clone(),
            base_args: vec!["--x".into()],
        },
        "prog.tar.gz",
    );
    for (path, data, exec) in files {
        b.add_bytes(path, data.clone(), *exec).unwrap();
    }
    b.to_bytes().unwrap()
}

/// Every file under `root` (relative path -> content); directories as `None`.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            assert!(!meta.file_type().is_symlink(), "a link: {}", p.display());
            if meta.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Unpacks `bytes` into a fresh directory: on success every file is a manifest member with
/// its content; on failure nothing is left; never anything outside the destination. Also
/// reads them in memory, with the same verdict. Returns whether they were accepted.
fn unpack_checked(bytes: &[u8]) -> bool {
    let scene = tempfile::tempdir().unwrap();
    let archive = scene.path().join("in.tar.gz");
    std::fs::write(&archive, bytes).unwrap();
    std::fs::write(scene.path().join("outside.txt"), b"keep me\n").unwrap();
    let dest = scene.path().join("dest");
    let before = tree(scene.path());
    let result = unpack(&archive, &dest, None, &limits());
    let mut after = tree(scene.path());
    let inside: BTreeMap<_, _> = std::mem::take(&mut after)
        .into_iter()
        .filter_map(|(p, c)| match p.strip_prefix("dest") {
            Ok(rel) if rel != Path::new("") => Some((rel.to_path_buf(), c)),
            Ok(_) => None,
            Err(_) => {
                after.insert(p, c);
                None
            }
        })
        .collect();
    let before_outside: BTreeMap<_, _> = before
        .into_iter()
        .filter(|(p, _)| !p.starts_with("dest"))
        .collect();
    assert_eq!(before_outside, after, "something outside dest changed");
    let mem = open_in_memory(bytes, "in.tar.gz", None, &limits());
    assert_eq!(
        result.is_ok(),
        mem.is_ok(),
        "unpack {:?} vs in memory {:?}",
        result.as_ref().err().map(ToString::to_string),
        mem.as_ref().err().map(ToString::to_string)
    );
    match result {
        Ok(manifest) => {
            let mem = mem.unwrap();
            assert_eq!(mem.manifest, manifest);
            let files: BTreeMap<PathBuf, Vec<u8>> = inside
                .into_iter()
                .filter_map(|(p, c)| c.map(|c| (p, c)))
                .collect();
            let want: BTreeMap<PathBuf, Vec<u8>> = mem
                .members
                .iter()
                .map(|(p, c)| (PathBuf::from(p), c.clone()))
                .collect();
            assert_eq!(files, want, "unpacked files vs members");
            for m in &manifest.members {
                // Hex digits in either case name the same digest (by design).
                assert_eq!(
                    mw_bundle::sha256_hex(&mem.members[&m.path]),
                    m.sha256.to_ascii_lowercase()
                );
            }
            true
        }
        Err(e) => {
            assert!(e.to_string().contains("in.tar.gz"), "{e}");
            assert!(inside.is_empty(), "left behind after `{e}`: {inside:?}");
            false
        }
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[derive(Debug, Clone)]
enum Damage {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Damage::Flip(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Damage::Insert(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match d {
        Damage::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Damage::Insert(i, v) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, v.iter().copied());
        }
    }
}

/// A tar stream holding one regular file `name` with `data` (no end blocks).
fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Manifest-like TOML with forged values: sizes, hashes, paths, kinds, formats.
fn manifest_text() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just("ok.txt".to_string()),
        Just("../x".to_string()),
        Just("/etc/passwd".to_string()),
        Just("a/./b".to_string()),
        Just("CON.txt".to_string()),
        Just(MANIFEST_NAME.to_string()),
        "[a-zA-Z/.:\\\\]{0,12}",
    ];
    let size = prop_oneof![
        Just("5".to_string()),
        Just("18446744073709551615".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-1".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let member = (path, size, "[0-9a-f]{0,66}").prop_map(|(p, s, h)| {
        format!("[[member]]\npath = \"{p}\"\nsha256 = \"{h}\"\nsize = {s}\n")
    });
    (
        prop_oneof![
            Just("1"),
            Just("0"),
            Just("2"),
            Just("4294967296"),
            Just("-1")
        ],
        prop_oneof![
            Just("program"),
            Just("task"),
            Just("result"),
            Just("pack"),
            Just("pack_result"),
            Just("bogus")
        ],
        any::<bool>(),
        prop::collection::vec(member, 0..4),
        ".{0,30}",
    )
        .prop_map(|(format, kind, info, members, noise)| {
            let mut s = format!("format = {format}\nkind = \"{kind}\"\n");
            if info {
                s.push_str("[program]\nexecutable = \"ok.txt\"\n");
            }
            for m in members {
                s.push_str(&m);
            }
            s.push_str(&noise);
            s
        })
}

proptest! {
    #![proptest_config(config(48))]

    /// A bundle this crate writes unpacks to exactly its files, on disk and in memory.
    #[test]
    fn bundles_round_trip(files in files()) {
        let bytes = build(&files);
        prop_assert!(unpack_checked(&bytes));
        let mem = open_in_memory(&bytes, "prog.tar.gz", Some(BundleKind::Program), &limits()).unwrap();
        for (path, data, exec) in &files {
            prop_assert_eq!(&mem.members[path], data);
            prop_assert_eq!(mem.manifest.member(path).unwrap().executable, *exec);
        }
        prop_assert_eq!(mem.members.len(), files.len());
        prop_assert_eq!(read_manifest_bytes(&bytes, "prog.tar.gz", &limits()).unwrap(), mem.manifest);
    }

    /// Arbitrary bytes, raw or gzip'd: refused cleanly, nothing written.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048), zip in any::<bool>()) {
        let bytes = if zip { gzip(&bytes) } else { bytes };
        // (Accepting is possible only for a valid bundle, which random bytes are not.)
        prop_assert!(!unpack_checked(&bytes));
        let _ = read_manifest_bytes(&bytes, "x", &limits());
    }

    /// A real bundle with its compressed bytes damaged: a clean verdict either way.
    #[test]
    fn damaged_archives_never_panic(files in files(), damage in prop::collection::vec(damage(), 1..4)) {
        let mut bytes = build(&files);
        for d in &damage {
            apply(&mut bytes, d);
        }
        unpack_checked(&bytes);
    }

    /// A real bundle with its tar stream damaged (headers, names, sizes, content) and
    /// compressed again, so the damage reaches the tar reader: a clean verdict either way,
    /// and what is accepted is exactly what the (damaged) manifest vouches for.
    #[test]
    fn damaged_tar_streams_never_panic(files in files(), damage in prop::collection::vec(damage(), 1..6)) {
        let mut tar = gunzip(&build(&files));
        for d in &damage {
            apply(&mut tar, d);
        }
        unpack_checked(&gzip(&tar));
    }

    /// A forged manifest (any sizes, hashes, paths, kinds, format numbers) followed by one
    /// file: refused cleanly unless it is honest.
    #[test]
    fn forged_manifests_are_refused_cleanly(text in manifest_text(), data in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut tar = tar_entry(MANIFEST_NAME, text.as_bytes());
        tar.extend(tar_entry("ok.txt", &data));
        tar.resize(tar.len() + 1024, 0);
        let bytes = gzip(&tar);
        let _ = read_manifest_bytes(&bytes, "in.tar.gz", &limits());
        unpack_checked(&bytes);
    }

    /// A path the bundle format accepts joins onto a directory below it: only normal
    /// components, no root, no `..`, no backslash.
    #[test]
    fn checked_relative_paths_stay_below(path in prop_oneof!["[a-z./\\\\:]{0,16}", ".{0,24}", "(\\.\\./|[a-z]{1,3}/){0,4}[a-z.]{0,4}"]) {
        if check_relative_path(&path).is_ok() {
            prop_assert!(Path::new(&path).components().all(|c| matches!(c, Component::Normal(_))), "{path:?}");
            prop_assert!(!path.contains('\\') && !path.contains('\0') && path != MANIFEST_NAME);
        }
    }
}

// ------------------------------------------------------------------ JSON results

/// JSON values without floats (whose text form need not round-trip exactly).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(0.5)),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON-ish bytes: valid JSON cut or spliced, separators, deep nesting, escapes, anything.
fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "[\\[\\]{}\",:0-9a-z\\\\ .eE+-]{0,120}".prop_map(String::into_bytes),
        (json_value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let s = v.to_string().into_bytes();
            let at = cut.index(s.len() + 1);
            s[..at].to_vec()
        }),
        (1usize..400).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        (1usize..3000).prop_map(|n| format!("[0{}]", ",0".repeat(n)).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// `check_json_limited` gives exactly `parse_json_limited`'s verdict, and neither
    /// accepts more bytes or values than the limit allows.
    #[test]
    fn json_check_and_parse_agree(text in json_ish(), limit in prop_oneof![0u64..64, 64u64..100_000, Just(u64::MAX)]) {
        let parsed = parse_json_limited(&text, limit);
        let checked = check_json_limited(&text, limit);
        prop_assert_eq!(
            parsed.as_ref().map(|_| ()).map_err(ToString::to_string),
            checked.as_ref().map(|_| ()).map_err(ToString::to_string)
        );
        if parsed.is_ok() {
            prop_assert!(text.len() as u64 <= limit);
        }
        match parsed {
            Err(JsonLimitError::TooLarge { size, limit: l }) => {
                prop_assert_eq!(size, text.len() as u64);
                prop_assert!(size > l);
            }
            Err(JsonLimitError::TooManyValues { values, max_values, .. }) => prop_assert!(values > max_values),
            _ => {}
        }
    }

    /// Under a roomy limit, valid UTF-8 is accepted exactly when serde_json accepts it
    /// (blank text being `null`), with the same value.
    #[test]
    fn json_agrees_with_serde_json(text in json_ish()) {
        if let Ok(s) = std::str::from_utf8(&text) {
            let ours = parse_json_limited(&text, 1 << 20);
            let theirs: Result<serde_json::Value, _> = if s.trim().is_empty() {
                Ok(serde_json::Value::Null)
            } else {
                serde_json::from_str(s.trim())
            };
            prop_assert_eq!(ours.ok(), theirs.ok());
        }
    }

    /// A value serde_json writes is read back unchanged.
    #[test]
    fn json_round_trips(v in json_value(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
        prop_assert_eq!(parse_json_limited(text.as_bytes(), 1 << 20).unwrap(), v);
        prop_assert!(check_json_limited(text.as_bytes(), 1 << 20).is_ok());
    }

    /// `tail` gives a suffix within `max` bytes, as long as it can be (at most 3 bytes
    /// short, a character's remainder); `clip` a prefix within `max` bytes plus its mark.
    #[test]
    fn tail_and_clip_stay_in_bounds(s in prop_oneof![".{0,40}", "[aé€😀]{0,20}"], max in 0usize..60) {
        let t = text::tail(&s, max);
        prop_assert!(t.len() <= max || t == s);
        prop_assert!(s.ends_with(t));
        prop_assert!(t.len() + 3 >= max.min(s.len()));
        let mut c = s.clone();
        text::clip(&mut c, max);
        if s.len() <= max {
            prop_assert_eq!(&c, &s);
        } else {
            let body = c.strip_suffix(" […]").unwrap();
            prop_assert!(body.len() <= max && body.len() + 3 >= max);
            prop_assert!(s.starts_with(body));
        }
    }
}
