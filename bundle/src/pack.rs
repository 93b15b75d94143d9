//! Deterministic packing: sorted entries, fixed owner and mtime, gzip header without a
//! timestamp, so the same content always gives the same archive bytes and hash.

use crate::{
    check_relative_path, BundleError, BundleKind, Manifest, Member, PackInfo, PackResultInfo,
    ProgramInfo, ResultInfo, TaskInfo, FORMAT_VERSION, MANIFEST_NAME,
};
use flate2::{write::GzEncoder, Compression};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

struct Entry {
    source: Source,
    executable: bool,
}

/// Builds one bundle from files on disk and in-memory bytes.
pub struct BundleBuilder {
    label: String,
    kind: BundleKind,
    program: Option<ProgramInfo>,
    task: Option<TaskInfo>,
    result: Option<ResultInfo>,
    pack: Option<PackInfo>,
    pack_result: Option<PackResultInfo>,
    entries: BTreeMap<String, Entry>,
    /// Case-folded member path → the member's path (see `case_fold_key`).
    folded: BTreeMap<String, String>,
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's content, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    hash_reader(std::fs::File::open(path)?).map(|(sha256, _)| sha256)
}

impl BundleBuilder {
    fn new(kind: BundleKind, label: &str) -> Self {
        BundleBuilder {
            label: label.to_string(),
            kind,
            program: None,
            task: None,
            result: None,
            pack: None,
            pack_result: None,
            entries: BTreeMap::new(),
            folded: BTreeMap::new(),
        }
    }

    /// A program bundle; `label` names it in error messages.
    pub fn program(info: ProgramInfo, label: &str) -> Self {
        let mut b = Self::new(BundleKind::Program, label);
        b.program = Some(info);
        b
    }

    /// A task bundle.
    pub fn task(info: TaskInfo, label: &str) -> Self {
        let mut b = Self::new(BundleKind::Task, label);
        b.task = Some(info);
        b
    }

    /// A result bundle.
    pub fn result(info: ResultInfo, label: &str) -> Self {
        let mut b = Self::new(BundleKind::Result, label);
        b.result = Some(info);
        b
    }

    /// A pack bundle: add each task's bundle as [`crate::pack_task_member`]`(task)`.
    pub fn pack(info: PackInfo, label: &str) -> Self {
        let mut b = Self::new(BundleKind::Pack, label);
        b.pack = Some(info);
        b
    }

    /// A pack result bundle: add each result bundle as [`crate::pack_result_member`]`(task)`.
    pub fn pack_result(info: PackResultInfo, label: &str) -> Self {
        let mut b = Self::new(BundleKind::PackResult, label);
        b.pack_result = Some(info);
        b
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), BundleError> {
        check_relative_path(path).map_err(|reason| BundleError::Build {
            archive: self.label.clone(),
            reason: format!("member `{path}`: {reason}"),
        })?;
        let key = crate::case_fold_key(path);
        if let Some(other) = self.folded.get(&key).filter(|o| o.as_str() != path) {
            return Err(BundleError::Build {
                archive: self.label.clone(),
                reason: format!(
                    "member `{path}` differs from member `{other}` only in case \
                     (one file on Windows)"
                ),
            });
        }
        if self.entries.insert(path.to_string(), entry).is_some() {
            return Err(BundleError::Build {
                archive: self.label.clone(),
                reason: format!("member `{path}` added twice"),
            });
        }
        self.folded.insert(key, path.to_string());
        Ok(())
    }

    /// Adds a file from disk under `path`; its executable bit is kept.
    pub fn add_file(&mut self, path: &str, source: &Path) -> Result<(), BundleError> {
        let meta = std::fs::metadata(source).map_err(|e| BundleError::Build {
            archive: self.label.clone(),
            reason: format!("member `{path}`: cannot read {}: {e}", source.display()),
        })?;
        if !meta.is_file() {
            return Err(BundleError::Build {
                archive: self.label.clone(),
                reason: format!(
                    "member `{path}`: {} is not a regular file",
                    source.display()
                ),
            });
        }
        #[cfg(unix)]
        let executable = {
            use std::os::unix::fs::PermissionsExt;
            meta.permissions().mode() & 0o111 != 0
        };
        // Windows has no executable bit: a program's `.exe`/`.bat`/`.cmd` files are marked.
        #[cfg(not(unix))]
        let executable = source
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "exe" | "bat" | "cmd"));
        self.insert(
            path,
            Entry {
                source: Source::File(source.to_path_buf()),
                executable,
            },
        )
    }

    /// Adds in-memory content under `path`.
    pub fn add_bytes(
        &mut self,
        path: &str,
        bytes: Vec<u8>,
        executable: bool,
    ) -> Result<(), BundleError> {
        self.insert(
            path,
            Entry {
                source: Source::Bytes(bytes),
                executable,
            },
        )
    }

    /// Writes the archive to `out` (through a temporary file renamed into place) and
    /// returns the SHA-256 of the archive bytes. The archive is streamed, never held whole.
    pub fn write_to(self, out: &Path) -> Result<String, BundleError> {
        let label = out.display().to_string();
        let dir = out.parent().unwrap_or(Path::new("."));
        let io = |context: &str, source| BundleError::Io {
            archive: label.clone(),
            context: context.to_string(),
            source,
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| io("creating temp file", e))?;
        let sink = HashingWriter {
            inner: std::io::BufWriter::new(tmp.as_file_mut()),
            hasher: Sha256::new(),
        };
        let HashingWriter { inner, hasher } = self.write_into(sink)?;
        if let Err(e) = inner.into_inner() {
            return Err(io("writing", e.into_error()));
        }
        let sha256 = hex::encode(hasher.finalize());
        tmp.persist(out)
            .map_err(|e| io("renaming into place", e.error))?;
        Ok(sha256)
    }

    /// Produces the archive bytes.
    pub fn to_bytes(self) -> Result<Vec<u8>, BundleError> {
        self.write_into(Vec::new())
    }

    /// Writes the archive to `out` as it is built and returns `out` (flushed of the gzip
    /// stream, not synced). Members added from files are hashed for the manifest, then
    /// copied: never held in memory whole. A file that changes in between is an error.
    pub fn write_into<W: Write>(self, out: W) -> Result<W, BundleError> {
        let label = self.label.clone();
        let build_err = |reason: String| BundleError::Build {
            archive: label.clone(),
            reason,
        };
        let cannot_read = |path: &str, p: &Path, e: std::io::Error| {
            build_err(format!("member `{path}`: cannot read {}: {e}", p.display()))
        };
        // Every member's hash and size first: the manifest comes first in the archive.
        let mut members = Vec::with_capacity(self.entries.len());
        for (path, entry) in &self.entries {
            let (sha256, size) = match &entry.source {
                Source::Bytes(b) => (sha256_hex(b), b.len() as u64),
                Source::File(p) => std::fs::File::open(p)
                    .and_then(hash_reader)
                    .map_err(|e| cannot_read(path, p, e))?,
            };
            members.push(Member {
                path: path.clone(),
                sha256,
                size,
                executable: entry.executable,
            });
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            kind: self.kind,
            program: self.program,
            task: self.task,
            result: self.result,
            pack: self.pack,
            pack_result: self.pack_result,
            members,
        };
        let manifest_text = toml::to_string(&manifest)
            .map_err(|e| build_err(format!("cannot serialise manifest: {e}")))?;

        let gz = GzEncoder::new(out, Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let io = |e: std::io::Error| build_err(format!("writing archive: {e}"));
        append(&mut tar, MANIFEST_NAME, manifest_text.as_bytes(), false).map_err(io)?;
        for ((path, entry), member) in self.entries.into_iter().zip(&manifest.members) {
            match entry.source {
                Source::Bytes(data) => append(&mut tar, &path, &data, entry.executable),
                Source::File(p) => {
                    let file = std::fs::File::open(&p).map_err(|e| cannot_read(&path, &p, e))?;
                    let mut reader = crate::unpack::Checked {
                        inner: file.take(member.size),
                        hasher: Sha256::new(),
                        count: 0,
                        limit: member.size,
                    };
                    let mut header = header(member.size, entry.executable);
                    tar.append_data(&mut header, &path, &mut reader)
                        .map_err(io)?;
                    if reader.count != member.size
                        || hex::encode(reader.hasher.finalize()) != member.sha256
                    {
                        return Err(build_err(format!(
                            "member `{path}`: {} changed while the bundle was built",
                            p.display()
                        )));
                    }
                    Ok(())
                }
            }
            .map_err(io)?;
        }
        let gz = tar.into_inner().map_err(io)?;
        gz.finish().map_err(io)
    }
}

/// The hex SHA-256 and the length of everything `r` yields.
fn hash_reader<R: Read>(mut r: R) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// A writer hashing what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A member's tar header: fixed owner, mode and mtime (deterministic archives).
fn header(size: u64, executable: bool) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(if executable { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    executable: bool,
) -> std::io::Result<()> {
    let mut header = header(data.len() as u64, executable);
    tar.append_data(&mut header, path, data)
}
