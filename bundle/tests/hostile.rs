//! Hostile archives, crafted byte by byte with the `tar` crate's header type (never with
//! the bundle packer), must be refused with an error naming the archive, the entry and the
//! reason, and must write nothing outside the destination directory (nor leave anything
//! half-verified inside it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::{
    open_in_memory, unpack, BundleBuilder, BundleKind, Limits, Manifest, Member, ProgramInfo,
    FORMAT_VERSION, MANIFEST_NAME,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

const ARCHIVE: &str = "evil.tar.gz";

// ---------------------------------------------------------------- archive crafting

/// A tar stream written header by header, so any name, type and size can be forged.
#[derive(Default)]
struct Raw {
    tar: Vec<u8>,
}

fn header(name: &[u8], kind: EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let field = &mut h.as_old_mut().name;
    assert!(
        name.len() <= field.len(),
        "use a long-name entry for {name:?}"
    );
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl Raw {
    /// Appends a header (checksum fixed up here) and `data`, padded to 512 bytes.
    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.tar.extend_from_slice(h.as_bytes());
        self.tar.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.tar.resize(self.tar.len() + pad, 0);
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.push(
            header(
                name.as_bytes(),
                EntryType::Regular,
                data.len() as u64,
                0o644,
            ),
            data,
        )
    }

    fn link(&mut self, name: &str, kind: EntryType, target: &str) -> &mut Self {
        let mut h = header(name.as_bytes(), kind, 0, 0o777);
        h.set_link_name_literal(target.as_bytes()).unwrap();
        self.push(h, &[])
    }

    fn manifest(&mut self, m: &Manifest) -> &mut Self {
        let text = toml::to_string(m).unwrap();
        self.file(MANIFEST_NAME, text.as_bytes())
    }

    /// End-of-archive blocks, then gzip.
    fn gz(&self) -> Vec<u8> {
        let mut tar = self.tar.clone();
        tar.resize(tar.len() + 1024, 0);
        gzip(&tar)
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn member(path: &str, content: &[u8]) -> Member {
    Member {
        path: path.into(),
        sha256: mw_bundle::sha256_hex(content),
        size: content.len() as u64,
        executable: false,
    }
}

/// A program manifest listing `members`.
fn manifest(members: Vec<Member>) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        kind: BundleKind::Program,
        program: Some(ProgramInfo {
            executable: "run".into(),
            base_args: vec![],
        }),
        task: None,
        result: None,
        pack: None,
        pack_result: None,
        members,
    }
}

/// A raw archive starting with an honest manifest for `ok.txt`, plus `ok.txt` itself.
fn with_ok() -> Raw {
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("ok.txt", b"fine\n")]))
        .file("ok.txt", b"fine\n");
    r
}

// ---------------------------------------------------------------- the harness

/// Everything under `root` except `skip`: path -> description (type, mode, content).
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p == skip {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode();
            let desc = if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else if meta.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {:?}", std::fs::read(&p).unwrap())
            };
            out.insert(p, desc);
        }
    }
    out
}

/// A scratch area: `tmp/` holds a pre-existing file and directory outside `tmp/dest`.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("outside.txt"), "keep me\n").unwrap();
        std::fs::create_dir(tmp.path().join("outside_dir")).unwrap();
        std::fs::write(tmp.path().join("outside_dir/inner.txt"), "keep me too\n").unwrap();
        Scene { tmp }
    }
    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }
}

/// Unpacks `bytes` (as `tmp/evil.tar.gz` into `tmp/dest`) and reads them in memory; both
/// must fail with text holding the archive name and every string of `want`; nothing
/// outside `dest` may change and nothing may be left inside it. Returns the error text.
fn rejected_with(bytes: &[u8], limits: &Limits, want: &[&str]) -> String {
    let scene = Scene::new();
    rejected_in(&scene, bytes, limits, want)
}

fn rejected_in(scene: &Scene, bytes: &[u8], limits: &Limits, want: &[&str]) -> String {
    let err = unpack_rejected(scene, bytes, limits, want);
    let mem = open_in_memory(bytes, ARCHIVE, None, limits)
        .expect_err("a hostile archive was accepted by open_in_memory")
        .to_string();
    for w in want {
        assert!(mem.contains(w), "open_in_memory: wanted `{w}` in: {mem}");
    }
    assert!(mem.contains(ARCHIVE), "{mem}");
    err
}

/// The on-disk half of [`rejected_in`].
fn unpack_rejected(scene: &Scene, bytes: &[u8], limits: &Limits, want: &[&str]) -> String {
    let archive = scene.root().join(ARCHIVE);
    std::fs::write(&archive, bytes).unwrap();
    let dest = scene.dest();
    let before = snapshot(scene.root(), &dest);
    let passwd = std::fs::read("/etc/passwd").ok();
    let dest_before = if dest.exists() {
        snapshot(&dest, Path::new("/nonexistent"))
    } else {
        BTreeMap::new()
    };

    let err = unpack(&archive, &dest, None, limits)
        .expect_err("a hostile archive was accepted by unpack")
        .to_string();
    for w in want {
        assert!(err.contains(w), "unpack: wanted `{w}` in: {err}");
    }
    assert!(err.contains(ARCHIVE), "unpack: archive not named in: {err}");
    assert_eq!(
        before,
        snapshot(scene.root(), &dest),
        "something outside dest changed ({err})"
    );
    assert_eq!(
        dest_before,
        snapshot(&dest, Path::new("/nonexistent")),
        "unpack left something in dest ({err})"
    );
    assert_eq!(passwd, std::fs::read("/etc/passwd").ok());
    assert_eq!(
        std::fs::read_to_string(scene.root().join("outside.txt")).unwrap(),
        "keep me\n"
    );
    err
}

fn small_limits() -> Limits {
    Limits {
        max_total_bytes: 64 * 1024,
        max_entries: 4,
        max_manifest_bytes: 4096,
    }
}

// ---------------------------------------------------------------- paths

#[test]
fn absolute_path_is_refused() {
    let scene = Scene::new();
    let abs = scene.root().join("pwned").display().to_string();
    let mut r = with_ok();
    r.file(&abs, b"owned\n");
    rejected_in(
        &scene,
        &r.gz(),
        &Limits::default(),
        &[&format!("entry `{abs}`"), "absolute path"],
    );
    assert!(!scene.root().join("pwned").exists());

    // Also when the manifest lists it.
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member(&abs, b"x")]))
        .file(&abs, b"x");
    rejected_in(
        &scene,
        &r.gz(),
        &Limits::default(),
        &[&format!("`{abs}`"), "absolute path"],
    );
}

#[test]
fn dotdot_paths_are_refused() {
    for name in ["../pwned", "a/../../pwned", "a/..", ".."] {
        let mut r = with_ok();
        r.file(name, b"owned\n");
        rejected_with(
            &r.gz(),
            &Limits::default(),
            &[&format!("entry `{name}`"), "`..` path component"],
        );
        // Listed in the manifest too: refused while reading the manifest.
        let mut r = Raw::default();
        r.manifest(&manifest(vec![member(name, b"owned\n")]))
            .file(name, b"owned\n");
        rejected_with(
            &r.gz(),
            &Limits::default(),
            &[&format!("`{name}`"), "`..` path component"],
        );
    }
}

#[test]
fn dot_and_empty_components_are_refused() {
    for (name, why) in [
        ("./ok.txt", "`.` path component"),
        ("a//b", "empty path component"),
    ] {
        let mut r = with_ok();
        r.file(name, b"x");
        rejected_with(
            &r.gz(),
            &Limits::default(),
            &[&format!("entry `{name}`"), why],
        );
    }
}

#[test]
fn non_utf8_path_is_refused() {
    let mut r = with_ok();
    r.push(header(b"bad\xff.txt", EntryType::Regular, 1, 0o644), b"x");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `bad\u{fffd}.txt`", "path is not UTF-8"],
    );
}

// ---------------------------------------------------------------- links and special files

#[test]
fn escaping_symlink_is_refused() {
    let mut r = with_ok();
    r.link("etc", EntryType::Symlink, "../../etc");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `etc`",
            "symbolic link to `../../etc` leaves the bundle directory",
        ],
    );
}

#[test]
fn absolute_symlink_is_refused() {
    let mut r = with_ok();
    r.link("pw", EntryType::Symlink, "/etc/passwd");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `pw`",
            "symbolic link to `/etc/passwd` leaves the bundle directory",
        ],
    );
}

#[test]
fn symlink_inside_then_file_through_it_is_refused() {
    let scene = Scene::new();
    // `d` -> `../outside_dir` (escapes), then `d/inner.txt` written through it.
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("d/inner.txt", b"owned\n")]))
        .link("d", EntryType::Symlink, "../outside_dir")
        .file("d/inner.txt", b"owned\n");
    rejected_in(
        &scene,
        &r.gz(),
        &Limits::default(),
        &["entry `d`", "leaves the bundle directory"],
    );

    // A link that stays inside is refused too: links are not part of the format.
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("sub/x", b"owned\n")]))
        .link("sub", EntryType::Symlink, "real")
        .file("sub/x", b"owned\n");
    rejected_in(
        &scene,
        &r.gz(),
        &Limits::default(),
        &[
            "entry `sub`",
            "symbolic link to `real`: links are not part of the bundle format",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(scene.root().join("outside_dir/inner.txt")).unwrap(),
        "keep me too\n"
    );
}

#[test]
fn existing_symlink_in_dest_is_not_followed() {
    // dest already holds `sub` -> ../outside_dir; an honest member `sub/new.txt` must
    // not be written through it.
    let scene = Scene::new();
    std::fs::create_dir(scene.dest()).unwrap();
    std::os::unix::fs::symlink("../outside_dir", scene.dest().join("sub")).unwrap();
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("sub/new.txt", b"owned\n")]))
        .file("sub/new.txt", b"owned\n");
    // Honest archive: only unpacking onto the planted link is refused.
    unpack_rejected(
        &scene,
        &r.gz(),
        &Limits::default(),
        &["entry `sub/new.txt`", "`sub` is in the way"],
    );
    assert!(!scene.root().join("outside_dir/new.txt").exists());
}

#[test]
fn hard_links_are_refused() {
    let mut r = with_ok();
    r.link("pw", EntryType::Link, "/etc/passwd");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `pw`",
            "hard link to `/etc/passwd` leaves the bundle directory",
        ],
    );

    let mut r = Raw::default();
    r.manifest(&manifest(vec![
        member("ok.txt", b"fine\n"),
        member("twin", b"fine\n"),
    ]))
    .file("ok.txt", b"fine\n")
    .link("twin", EntryType::Link, "ok.txt");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `twin`",
            "hard link to `ok.txt`: links are not part of the bundle format",
        ],
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, why) in [
        (EntryType::Char, "device files are not allowed"),
        (EntryType::Block, "device files are not allowed"),
        (EntryType::Fifo, "FIFOs are not allowed"),
    ] {
        let mut r = with_ok();
        let mut h = header(b"dev", kind, 0, 0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        r.push(h, &[]);
        rejected_with(&r.gz(), &Limits::default(), &["entry `dev`", why]);
    }
}

#[test]
fn other_entry_types_are_refused() {
    // A PAX extended header (could rename or resize the next entry).
    let mut r = with_ok();
    let pax = b"30 path=../../../../etc/passwd\n";
    r.push(
        header(b"PaxHeader/x", EntryType::XHeader, pax.len() as u64, 0o644),
        pax,
    )
    .file("x", b"x");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `PaxHeader/x`",
            "PAX extended headers are not part of the bundle format",
        ],
    );
    // A GNU sparse file.
    let mut r = with_ok();
    r.push(header(b"sparse", EntryType::GNUSparse, 0, 0o644), &[]);
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `sparse`", "entry type 'S' is not allowed"],
    );
    // A directory entry carrying data.
    let mut r = with_ok();
    r.push(header(b"dir/", EntryType::Directory, 5, 0o755), b"hello");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `dir/`", "directory entry carrying 5 bytes"],
    );
}

// ---------------------------------------------------------------- membership and checksums

#[test]
fn entry_not_in_manifest_is_refused() {
    let mut r = with_ok();
    r.file("extra.txt", b"sneaky\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `extra.txt`", "not listed in the manifest"],
    );
}

#[test]
fn manifest_member_missing_from_archive_is_refused() {
    let mut r = Raw::default();
    r.manifest(&manifest(vec![
        member("ok.txt", b"fine\n"),
        member("gone.txt", b"?"),
    ]))
    .file("ok.txt", b"fine\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `gone.txt`",
            "listed in the manifest but missing from the archive",
        ],
    );
}

#[test]
fn altered_content_is_refused() {
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("ok.txt", b"fine\n")]))
        .file("ok.txt", b"evil\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `ok.txt`",
            "SHA-256 mismatch",
            &mw_bundle::sha256_hex(b"evil\n"),
        ],
    );
}

#[test]
fn size_mismatch_is_refused() {
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("ok.txt", b"fine\n")]))
        .file("ok.txt", b"fine\nand more\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `ok.txt`",
            "size 14 in the archive, 5 in the manifest",
        ],
    );
}

#[test]
fn duplicate_entry_is_refused() {
    let mut r = with_ok();
    r.file("ok.txt", b"fine\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `ok.txt`", "appears twice in the archive"],
    );
    // A second manifest is refused as a member name.
    let mut r = with_ok();
    r.file(MANIFEST_NAME, b"format = 1\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            "entry `MANIFEST.toml`",
            "member may not be named MANIFEST.toml",
        ],
    );
}

// ---------------------------------------------------------------- the manifest itself

#[test]
fn manifest_not_first_is_refused() {
    let mut r = Raw::default();
    r.file("ok.txt", b"fine\n")
        .manifest(&manifest(vec![member("ok.txt", b"fine\n")]));
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[
            MANIFEST_NAME,
            "the first entry must be MANIFEST.toml, found `ok.txt`",
        ],
    );
}

#[test]
fn missing_manifest_is_refused() {
    let mut r = Raw::default();
    r.file("ok.txt", b"fine\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[MANIFEST_NAME, "found `ok.txt`"],
    );
    rejected_with(
        &Raw::default().gz(),
        &Limits::default(),
        &[MANIFEST_NAME, "archive is empty"],
    );
    // A manifest that is a symlink.
    let mut r = Raw::default();
    r.link(MANIFEST_NAME, EntryType::Symlink, "/etc/passwd");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &[MANIFEST_NAME, "not a regular file"],
    );
}

#[test]
fn oversized_manifest_is_refused() {
    let many: Vec<Member> = (0..200)
        .map(|i| member(&format!("f{i:03}"), b"x"))
        .collect();
    let mut r = Raw::default();
    r.manifest(&manifest(many));
    let err = rejected_with(
        &r.gz(),
        &small_limits(),
        &[MANIFEST_NAME, "over the limit of 4096 bytes"],
    );
    assert!(err.contains("bytes"), "{err}");
}

#[test]
fn too_many_entries_is_refused() {
    // The manifest lists too many members.
    let names = ["a", "b", "c", "d"];
    let mut r = Raw::default();
    r.manifest(&manifest(
        names.iter().map(|n| member(n, n.as_bytes())).collect(),
    ));
    for n in names {
        r.file(n, n.as_bytes());
    }
    rejected_with(
        &r.gz(),
        &small_limits(),
        &[
            MANIFEST_NAME,
            "lists 4 members, over the limit of 4 entries",
        ],
    );

    // The manifest is modest but the archive is flooded with directory entries.
    let mut r = with_ok();
    for i in 0..10 {
        r.push(
            header(
                format!("dir{i}/").as_bytes(),
                EntryType::Directory,
                0,
                0o755,
            ),
            &[],
        );
    }
    rejected_with(
        &r.gz(),
        &small_limits(),
        &["entry `dir2/`", "more than 4 entries"],
    );
}

#[test]
fn total_size_over_limit_is_refused() {
    let big = vec![7u8; 100 * 1024];
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("big.bin", &big)]))
        .file("big.bin", &big);
    rejected_with(
        &r.gz(),
        &small_limits(),
        &["entry `big.bin`", "over the limit of 65536 bytes"],
    );
}

#[test]
fn gzip_bombs_are_refused() {
    // An honest manifest for 64 MiB of zeros (about 64 KiB compressed).
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("zeros.bin", &zeros)]))
        .file("zeros.bin", &zeros);
    let bytes = r.gz();
    assert!(
        bytes.len() < 1024 * 1024,
        "the bomb is small: {}",
        bytes.len()
    );
    rejected_with(
        &bytes,
        &small_limits(),
        &["entry `zeros.bin`", "over the limit of 65536 bytes"],
    );

    // A lying manifest (5 bytes) for the same 64 MiB member: refused before reading it.
    let mut r = Raw::default();
    r.manifest(&manifest(vec![member("zeros.bin", b"fine\n")]))
        .file("zeros.bin", &zeros);
    rejected_with(
        &r.gz(),
        &small_limits(),
        &[
            "entry `zeros.bin`",
            "size 67108864 in the archive, 5 in the manifest",
        ],
    );

    // A 64 MiB GNU long name: must not be buffered.
    let mut r = with_ok();
    r.push(
        header(
            b"././@LongLink",
            EntryType::GNULongName,
            zeros.len() as u64,
            0o644,
        ),
        &zeros,
    )
    .file("x", b"x");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `././@LongLink`", "GNU long name of 67108864 bytes"],
    );
}

// ---------------------------------------------------------------- broken archives

#[test]
fn not_gzip_is_refused() {
    rejected_with(
        b"this is plainly not a gzip file, it is text\n",
        &Limits::default(),
        &["not a valid bundle (gzip'd tar)"],
    );
    // gzip, but not a tar inside.
    rejected_with(
        &gzip(&[b'x'; 2048]),
        &Limits::default(),
        &["not a valid bundle (gzip'd tar)", "cksum"],
    );
}

#[test]
fn truncated_archive_is_refused() {
    // An incompressible member so that truncation lands inside its data.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut b = BundleBuilder::program(
        ProgramInfo {
            executable: "noise.bin".into(),
            base_args: vec![],
        },
        "p",
    );
    b.add_bytes("noise.bin", noise, true).unwrap();
    let full = b.to_bytes().unwrap();
    let cut = &full[..full.len() / 2];
    let err = rejected_with(cut, &Limits::default(), &["noise.bin"]);
    assert!(
        err.contains("truncated") || err.contains("incomplete") || err.contains("end of file"),
        "{err}"
    );
    // Cut inside the gzip trailer only: the content is complete but the stream is not.
    let cut = &full[..full.len() - 4];
    let scene = Scene::new();
    let archive = scene.root().join(ARCHIVE);
    std::fs::write(&archive, cut).unwrap();
    // Either refused, or (all content verified) accepted: never a panic, never a wrong file.
    if let Ok(m) = unpack(&archive, &scene.dest(), None, &Limits::default()) {
        let got = std::fs::read(scene.dest().join("noise.bin")).unwrap();
        assert_eq!(mw_bundle::sha256_hex(&got), m.members[0].sha256);
    }
}

// ---------------------------------------------------------------- modes

#[test]
fn setuid_and_odd_header_modes_are_not_honoured() {
    let run = b"#!/bin/sh\n";
    let data = b"data\n";
    let mut m = manifest(vec![member("data", data), member("run", run)]);
    m.members[1].executable = true;
    let mut r = Raw::default();
    r.manifest(&m)
        .push(
            header(b"data", EntryType::Regular, data.len() as u64, 0o6777),
            data,
        )
        .push(
            header(b"run", EntryType::Regular, run.len() as u64, 0o4755),
            run,
        );
    let scene = Scene::new();
    let archive = scene.root().join(ARCHIVE);
    std::fs::write(&archive, r.gz()).unwrap();
    unpack(
        &archive,
        &scene.dest(),
        Some(BundleKind::Program),
        &Limits::default(),
    )
    .unwrap();
    let mode = |n: &str| {
        std::fs::metadata(scene.dest().join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("run"), 0o755);
    assert_eq!(mode("data"), 0o644);
}

// ---------------------------------------------------------------- Windows names

#[test]
fn windows_paths_and_device_names_are_refused_everywhere() {
    for name in [
        "..\\evil",
        "C:\\x",
        "C:x",
        "\\\\server\\share\\x",
        "CON",
        "sub/nul.txt",
        "COM1",
        "lpt3.dat",
        "a:stream",
        "ok.txt:hidden",
        "dot.",
        "space ",
    ] {
        let mut r = with_ok();
        r.file(name, b"owned\n");
        rejected_with(&r.gz(), &Limits::default(), &[&format!("entry `{name}`")]);
        // Listed in the manifest too: refused while reading the manifest.
        let mut r = Raw::default();
        r.manifest(&manifest(vec![member(name, b"owned\n")]))
            .file(name, b"owned\n");
        rejected_with(&r.gz(), &Limits::default(), &[&format!("`{name}`")]);
    }
}

#[test]
fn case_insensitive_duplicates_are_refused() {
    let mut r = Raw::default();
    r.manifest(&manifest(vec![
        member("Run.exe", b"one\n"),
        member("run.EXE", b"two\n"),
    ]))
    .file("Run.exe", b"one\n")
    .file("run.EXE", b"two\n");
    rejected_with(
        &r.gz(),
        &Limits::default(),
        &["entry `run.EXE`", "only in case"],
    );
}
