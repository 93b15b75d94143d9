//! Hostile-input-safe reading of bundles.
//!
//! The archive is read as a stream; nothing is trusted. The manifest must come first, every
//! later entry must be a regular file (or directory) listed in the manifest, at a relative
//! path without `..`, within the size and entry-count limits; its SHA-256 and size are
//! checked as it is read. Links, devices, FIFOs and anything else are refused. Files are
//! created with `create_new` (never overwriting, never following an existing link) and with
//! mode 0644 or 0755 only: no setuid, no owner changes.
//!
//! The tar stream is read *raw* (the `tar` crate does not interpret extension headers):
//! GNU long names are handled here with a size cap, PAX headers and long link names are
//! refused, so no entry can make the reader buffer more than the limits allow. Parent
//! directories are created one component at a time and never through a symbolic link.
//! If unpacking fails, the files and directories it created are removed again.

use crate::{
    check_relative_path, BundleError, BundleKind, Manifest, Member, FORMAT_VERSION, MANIFEST_NAME,
};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// Limits applied while reading a bundle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest total of member sizes, in bytes.
    pub max_total_bytes: u64,
    /// Largest number of archive entries (manifest included).
    pub max_entries: usize,
    /// Largest manifest, in bytes.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 2 * 1024 * 1024 * 1024,
            max_entries: 10_000,
            max_manifest_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A bundle read fully into memory, checksums verified.
#[derive(Debug, Clone)]
pub struct InMemoryBundle {
    /// The manifest.
    pub manifest: Manifest,
    /// Member contents by path.
    pub members: BTreeMap<String, Vec<u8>>,
}

/// Unpacks the bundle at `archive` into `dest` (created if missing), verifying everything.
/// When `expect` is given, a bundle of another kind is refused.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    expect: Option<BundleKind>,
    limits: &Limits,
) -> Result<Manifest, BundleError> {
    let (label, file) = open_archive(archive)?;
    std::fs::create_dir_all(dest).map_err(|e| BundleError::Io {
        archive: label.clone(),
        context: format!("cannot create {}", dest.display()),
        source: e,
    })?;
    let mut created: Vec<(PathBuf, bool)> = Vec::new();
    let result = walk(file, &label, expect, limits, |_, member, reader| {
        let target = create_parents(dest, &member.path, &label, &mut created)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        let mode = {
            use std::os::unix::fs::OpenOptionsExt;
            let mode = if member.executable { 0o755 } else { 0o644 };
            opts.mode(mode);
            opts.custom_flags(libc::O_NOFOLLOW);
            mode
        };
        // On Windows `create_new` never follows a link either (CREATE_NEW fails on any
        // existing name, reparse points included), and there is no mode to set.
        let mut out = opts
            .open(&target)
            .map_err(|e| io_err(&label, &member.path, e))?;
        created.push((target, false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The umask may have removed bits; set exactly 0644/0755 (never setuid/setgid).
            out.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_err(&label, &member.path, e))?;
        }
        std::io::copy(reader, &mut out).map_err(|e| io_err(&label, &member.path, e))?;
        out.flush().map_err(|e| io_err(&label, &member.path, e))?;
        Ok(())
    });
    if result.is_err() {
        // Best effort: leave nothing half-verified behind.
        for (path, is_dir) in created.iter().rev() {
            let _ = if *is_dir {
                std::fs::remove_dir(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
    result
}

/// Creates the parent directories of `rel` under `dest` one component at a time, refusing
/// to pass through anything that is not a real directory (a symbolic link above all).
/// Returns the full target path. Directories created are recorded in `created`.
fn create_parents(
    dest: &Path,
    rel: &str,
    label: &str,
    created: &mut Vec<(PathBuf, bool)>,
) -> Result<PathBuf, BundleError> {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut dir = dest.to_path_buf();
    for (i, comp) in comps.iter().enumerate() {
        if i + 1 == comps.len() {
            break;
        }
        dir.push(comp);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(BundleError::Hostile {
                    archive: label.to_string(),
                    entry: rel.to_string(),
                    reason: format!(
                        "`{}` is in the way: not a directory (a file or a link)",
                        comps[..=i].join("/")
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|e| io_err(label, rel, e))?;
                created.push((dir.clone(), true));
            }
            Err(e) => return Err(io_err(label, rel, e)),
        }
    }
    Ok(safe_join(dest, rel))
}

/// Reads a whole bundle from bytes into memory, verifying everything.
pub fn open_in_memory(
    bytes: &[u8],
    label: &str,
    expect: Option<BundleKind>,
    limits: &Limits,
) -> Result<InMemoryBundle, BundleError> {
    open_in_memory_keeping(bytes, label, expect, limits, |_, _| true)
}

/// [`open_in_memory`] that verifies every member (size, checksum) but keeps in memory only
/// those `keep` selects (by the manifest and their entry in it, before any of their bytes is
/// read): the others pass through the hash and are dropped, so memory is the archive plus
/// what is kept.
pub fn open_in_memory_keeping(
    bytes: &[u8],
    label: &str,
    expect: Option<BundleKind>,
    limits: &Limits,
    mut keep: impl FnMut(&Manifest, &Member) -> bool,
) -> Result<InMemoryBundle, BundleError> {
    let mut members = BTreeMap::new();
    let manifest = walk(bytes, label, expect, limits, |manifest, member, reader| {
        if !keep(manifest, member) {
            return Ok(());
        }
        // The size is the manifest's claim, already within `limits` and equal to the entry's
        // header: reserving it exactly (up to 64 MiB, so a false claim cannot make one huge
        // allocation fail) costs address space only until the bytes arrive, and spares the
        // doubling copies (and heap holes) of a growing buffer, which made kept members take
        // up to half again their size.
        let mut data = Vec::with_capacity(member.size.min(64 << 20) as usize);
        reader
            .read_to_end(&mut data)
            .map_err(|e| io_err(label, &member.path, e))?;
        members.insert(member.path.clone(), data);
        Ok(())
    })?;
    Ok(InMemoryBundle { manifest, members })
}

/// Reads only the manifest (the first entry) of the bundle at `archive`.
pub fn read_manifest(archive: &Path, limits: &Limits) -> Result<Manifest, BundleError> {
    let (label, file) = open_archive(archive)?;
    manifest_of(file, &label, limits)
}

/// [`read_manifest`] of a bundle already in memory (the same bytes a caller then opens, so
/// the manifest and the content cannot come from two versions of a file).
pub fn read_manifest_bytes(
    bytes: &[u8],
    label: &str,
    limits: &Limits,
) -> Result<Manifest, BundleError> {
    manifest_of(bytes, label, limits)
}

fn manifest_of(archive: impl Read, label: &str, limits: &Limits) -> Result<Manifest, BundleError> {
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    let mut entries = tar.entries().map_err(|e| not_a_bundle(label, e))?.raw(true);
    let first = match entries.next() {
        Some(entry) => entry.map_err(|e| not_a_bundle(label, e))?,
        None => return Err(manifest_err(label, "archive is empty")),
    };
    parse_manifest_entry(first, label, None, limits)
}

fn io_err(label: &str, entry: &str, e: std::io::Error) -> BundleError {
    BundleError::Io {
        archive: label.to_string(),
        context: format!("entry `{entry}`"),
        source: e,
    }
}

fn not_a_bundle(label: &str, e: std::io::Error) -> BundleError {
    BundleError::NotABundle {
        archive: label.to_string(),
        reason: e.to_string(),
    }
}

fn manifest_err(label: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Manifest {
        archive: label.to_string(),
        reason: reason.into(),
    }
}

/// Joins a path already checked by [`check_relative_path`] onto `dest`.
fn safe_join(dest: &Path, rel: &str) -> PathBuf {
    let mut p = dest.to_path_buf();
    for comp in Path::new(rel).components() {
        if let Component::Normal(c) = comp {
            p.push(c);
        }
    }
    p
}

fn parse_manifest_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    label: &str,
    expect: Option<BundleKind>,
    limits: &Limits,
) -> Result<Manifest, BundleError> {
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if name != MANIFEST_NAME {
        return Err(manifest_err(
            label,
            format!("the first entry must be {MANIFEST_NAME}, found `{name}`"),
        ));
    }
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(manifest_err(label, "not a regular file"));
    }
    let size = entry.header().size().unwrap_or(u64::MAX);
    if size > limits.max_manifest_bytes {
        return Err(manifest_err(
            label,
            format!(
                "{size} bytes, over the limit of {} bytes",
                limits.max_manifest_bytes
            ),
        ));
    }
    let mut text = String::new();
    (&mut entry)
        .take(limits.max_manifest_bytes)
        .read_to_string(&mut text)
        .map_err(|e| manifest_err(label, format!("unreadable: {e}")))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => manifest_err(label, format!("line {line}: {}", e.message())),
            None => manifest_err(label, e.message().to_string()),
        }
    })?;
    if manifest.format == 0 {
        return Err(manifest_err(
            label,
            "format 0 is not a bundle format version",
        ));
    }
    if manifest.format > FORMAT_VERSION {
        return Err(manifest_err(
            label,
            format!(
                "format {} is newer than this mw understands ({FORMAT_VERSION}); upgrade mw",
                manifest.format
            ),
        ));
    }
    if let Some(kind) = expect {
        if manifest.kind != kind {
            return Err(manifest_err(
                label,
                format!("expected a {kind} bundle, found a {} bundle", manifest.kind),
            ));
        }
    }
    let present = match manifest.kind {
        BundleKind::Program => manifest.program.is_some(),
        BundleKind::Task => manifest.task.is_some(),
        BundleKind::Result => manifest.result.is_some(),
        BundleKind::Pack => manifest.pack.is_some(),
        BundleKind::PackResult => manifest.pack_result.is_some(),
    };
    if !present {
        return Err(manifest_err(
            label,
            format!(
                "a {} bundle without its [{}] table",
                manifest.kind, manifest.kind
            ),
        ));
    }
    if manifest.members.len() + 1 > limits.max_entries {
        return Err(BundleError::Limit {
            archive: label.to_string(),
            entry: MANIFEST_NAME.to_string(),
            reason: format!(
                "lists {} members, over the limit of {} entries",
                manifest.members.len(),
                limits.max_entries
            ),
        });
    }
    let mut seen = BTreeSet::new();
    let mut folded: BTreeMap<String, &str> = BTreeMap::new();
    let mut total: u64 = 0;
    for m in &manifest.members {
        check_relative_path(&m.path).map_err(|reason| BundleError::Hostile {
            archive: label.to_string(),
            entry: m.path.clone(),
            reason: format!("manifest member: {reason}"),
        })?;
        if !seen.insert(m.path.as_str()) {
            return Err(manifest_err(
                label,
                format!("member `{}` listed twice", m.path),
            ));
        }
        if let Some(other) = folded.insert(crate::case_fold_key(&m.path), m.path.as_str()) {
            return Err(BundleError::Hostile {
                archive: label.to_string(),
                entry: m.path.clone(),
                reason: format!(
                    "manifest member differs from `{other}` only in case \
                     (the same file on Windows)"
                ),
            });
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(manifest_err(
                label,
                format!("member `{}`: sha256 is not 64 hex digits", m.path),
            ));
        }
        total = total.saturating_add(m.size);
        if total > limits.max_total_bytes {
            return Err(BundleError::Limit {
                archive: label.to_string(),
                entry: m.path.clone(),
                reason: format!(
                    "{MANIFEST_NAME} lists {} bytes for it, bringing the members to {total} \
                     bytes, over the limit of {} bytes",
                    m.size, limits.max_total_bytes
                ),
            });
        }
    }
    Ok(manifest)
}

/// Reader that hashes and counts what passes through it, and refuses to go past `limit`.
pub(crate) struct Checked<R> {
    pub(crate) inner: R,
    pub(crate) hasher: Sha256,
    pub(crate) count: u64,
    pub(crate) limit: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(std::io::Error::other(
                "entry is larger than its manifest size",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn describe_link(entry_name: &str, target: &[u8], hard: bool) -> String {
    let target = String::from_utf8_lossy(target);
    let kind = if hard { "hard link" } else { "symbolic link" };
    let leaves = target.starts_with('/') || {
        // Lexical resolution relative to the link's own directory.
        let mut depth: i64 = entry_name.matches('/').count() as i64;
        let mut escaped = false;
        for comp in target.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    depth -= 1;
                    if depth < 0 {
                        escaped = true;
                    }
                }
                _ => depth += 1,
            }
        }
        escaped
    };
    if leaves {
        format!("{kind} to `{target}` leaves the bundle directory")
    } else {
        format!("{kind} to `{target}`: links are not part of the bundle format")
    }
}

/// Longest GNU long-name payload accepted: a 1024-byte path plus its NUL.
const MAX_LONG_NAME: u64 = 1025;

/// A tar entry and its full name (long name applied), in bytes.
type NamedEntry<'a, R> = (tar::Entry<'a, R>, Vec<u8>);

/// Next logical entry of a raw tar stream, with a GNU long name (if any) applied.
/// Returns the entry and its full name in bytes.
fn next_entry<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
    label: &str,
    prev: &str,
) -> Result<Option<NamedEntry<'a, R>>, BundleError> {
    let broken = |e: std::io::Error| BundleError::NotABundle {
        archive: label.to_string(),
        reason: format!("after entry `{prev}`: {e}"),
    };
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let mut entry = match entries.next() {
            Some(entry) => entry.map_err(broken)?,
            None if long_name.is_some() => {
                return Err(broken(std::io::Error::other(
                    "a long-name entry with no entry after it",
                )))
            }
            None => return Ok(None),
        };
        let kind = entry.header().entry_type();
        let own_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let hostile = |reason: &str| BundleError::Hostile {
            archive: label.to_string(),
            entry: own_name.clone(),
            reason: reason.to_string(),
        };
        if kind.is_gnu_longname() {
            if long_name.is_some() {
                return Err(hostile("two long-name entries for one member"));
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > MAX_LONG_NAME {
                return Err(hostile(&format!(
                    "GNU long name of {size} bytes, over the limit of {MAX_LONG_NAME} bytes"
                )));
            }
            let mut name = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(MAX_LONG_NAME)
                .read_to_end(&mut name)
                .map_err(broken)?;
            if name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            continue;
        }
        if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            return Err(hostile(
                "PAX extended headers are not part of the bundle format",
            ));
        }
        if kind.is_gnu_longlink() {
            return Err(hostile(
                "GNU long link name: links are not part of the bundle format",
            ));
        }
        let name = match long_name {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        return Ok(Some((entry, name)));
    }
}

fn walk<R: Read>(
    reader: R,
    label: &str,
    expect: Option<BundleKind>,
    limits: &Limits,
    mut sink: impl FnMut(&Manifest, &Member, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<Manifest, BundleError> {
    let mut tar = tar::Archive::new(GzDecoder::new(reader));
    let mut entries = tar.entries().map_err(|e| not_a_bundle(label, e))?.raw(true);
    let first = match entries.next() {
        Some(entry) => entry.map_err(|e| not_a_bundle(label, e))?,
        None => return Err(manifest_err(label, "archive is empty")),
    };
    let manifest = parse_manifest_entry(first, label, expect, limits)?;
    let by_path: BTreeMap<&str, &Member> = manifest
        .members
        .iter()
        .map(|m| (m.path.as_str(), m))
        .collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut count = 1usize;
    let mut prev = MANIFEST_NAME.to_string();
    while let Some((mut entry, raw)) = next_entry(&mut entries, label, &prev)? {
        count += 1;
        let name = String::from_utf8_lossy(&raw).into_owned();
        prev = name.clone();
        if count > limits.max_entries {
            return Err(BundleError::Limit {
                archive: label.to_string(),
                entry: name,
                reason: format!("more than {} entries", limits.max_entries),
            });
        }
        let hostile = |reason: String| BundleError::Hostile {
            archive: label.to_string(),
            entry: name.clone(),
            reason,
        };
        if std::str::from_utf8(&raw).is_err() {
            return Err(hostile("path is not UTF-8".into()));
        }
        let kind = entry.header().entry_type();
        // A directory entry ends in '/'; check its path without it.
        let check_name = if kind == tar::EntryType::Directory {
            name.trim_end_matches('/')
        } else {
            name.as_str()
        };
        check_relative_path(check_name).map_err(&hostile)?;
        let header_size = entry.header().size().unwrap_or(u64::MAX);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory if header_size == 0 => continue,
            tar::EntryType::Directory => {
                return Err(hostile(format!(
                    "directory entry carrying {header_size} bytes"
                )))
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                return Err(hostile(describe_link(
                    &name,
                    &target,
                    kind == tar::EntryType::Link,
                )));
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(hostile("device files are not allowed".into()))
            }
            tar::EntryType::Fifo => return Err(hostile("FIFOs are not allowed".into())),
            other => {
                return Err(hostile(format!(
                    "entry type {:?} is not allowed",
                    other.as_byte() as char
                )))
            }
        }
        let Some(member) = by_path.get(name.as_str()) else {
            return Err(BundleError::Membership {
                archive: label.to_string(),
                entry: name,
                reason: "not listed in the manifest".into(),
            });
        };
        if !done.insert(name.clone()) {
            return Err(BundleError::Membership {
                archive: label.to_string(),
                entry: name,
                reason: "appears twice in the archive".into(),
            });
        }
        if header_size != member.size {
            return Err(BundleError::Checksum {
                archive: label.to_string(),
                entry: name,
                reason: format!(
                    "size {header_size} in the archive, {} in the manifest",
                    member.size
                ),
            });
        }
        let mut checked = Checked {
            inner: &mut entry,
            hasher: Sha256::new(),
            count: 0,
            limit: member.size,
        };
        sink(&manifest, member, &mut checked)?;
        // Drain anything the sink did not read so the hash covers the whole entry.
        std::io::copy(&mut checked, &mut std::io::sink()).map_err(|e| BundleError::Limit {
            archive: label.to_string(),
            entry: name.clone(),
            reason: e.to_string(),
        })?;
        if checked.count != member.size {
            return Err(BundleError::Checksum {
                archive: label.to_string(),
                entry: name,
                reason: format!(
                    "archive is truncated: {} of {} bytes present",
                    checked.count, member.size
                ),
            });
        }
        let actual = hex::encode(checked.hasher.finalize());
        if !actual.eq_ignore_ascii_case(&member.sha256) {
            return Err(BundleError::Checksum {
                archive: label.to_string(),
                entry: name,
                reason: format!(
                    "SHA-256 mismatch: manifest says {}, content is {actual}",
                    member.sha256
                ),
            });
        }
    }
    for m in &manifest.members {
        if !done.contains(&m.path) {
            return Err(BundleError::Membership {
                archive: label.to_string(),
                entry: m.path.clone(),
                reason: "listed in the manifest but missing from the archive".into(),
            });
        }
    }
    Ok(manifest)
}

/// Opens a bundle file; its display name labels every error about it.
fn open_archive(archive: &Path) -> Result<(String, std::fs::File), BundleError> {
    let label = archive.display().to_string();
    let file = std::fs::File::open(archive).map_err(|e| BundleError::Io {
        archive: label.clone(),
        context: "cannot open".into(),
        source: e,
    })?;
    Ok((label, file))
}
