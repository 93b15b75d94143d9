//! Which `mw-worker` a remote platform receives: the statically linked one, since an HTCondor
//! execute machine or a BOINC volunteer may lack this machine's C library. [`find`] locates
//! the build of `cargo static-worker` (`.cargo/config.toml`) from the running tool, and
//! [`linkage_of`] tells a static ELF executable from a dynamically linked one (PT_INTERP).
//! The tools that ship the worker (`mw` for Condor jobs, `mw-condor`, `mw-boinc-setup`) pick
//! their default here. It must never know how the worker is shipped or run.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The command that builds the static worker, from mw's source tree.
pub const BUILD_COMMAND: &str = "cargo static-worker";

/// Where [`BUILD_COMMAND`] writes it, relative to the source tree.
pub const BUILD_OUTPUT: &str = "target/static/release/mw-worker";

/// How an executable is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// An ELF executable without a program interpreter: runs without this machine's libraries.
    Static,
    /// An ELF executable that needs its program interpreter (the dynamic loader) and libraries.
    Dynamic {
        /// The interpreter it names, e.g. `/lib64/ld-linux-x86-64.so.2`.
        interpreter: String,
    },
    /// Not a 64-bit little-endian ELF file (a script, a Windows executable, ...).
    Other,
}

/// Reads the linkage from an executable's first bytes (bounds-checked: any file may come in).
pub fn linkage(bytes: &[u8]) -> Linkage {
    elf_interpreter(bytes).unwrap_or(Linkage::Other)
}

fn elf_interpreter(bytes: &[u8]) -> Option<Linkage> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| -> Option<u64> {
        Some(u64::from(u16::from_le_bytes(
            bytes.get(o..o.checked_add(2)?)?.try_into().ok()?,
        )))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let phoff = u64_at(0x20)?;
    let phentsize = u16_at(0x36)?;
    let phnum = u16_at(0x38)?;
    for i in 0..phnum {
        let off = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        let p_type = u32::from_le_bytes(bytes.get(off..off.checked_add(4)?)?.try_into().ok()?);
        if p_type == 3 {
            // PT_INTERP: p_offset at +8, p_filesz at +32; the path is NUL-terminated.
            let start = usize::try_from(u64_at(off.checked_add(8)?)?).ok();
            let len = usize::try_from(u64_at(off.checked_add(32)?)?).ok();
            let interpreter = start
                .zip(len)
                .and_then(|(s, l)| bytes.get(s..s.checked_add(l.min(4096))?))
                .map(|b| {
                    let b = b.split(|&c| c == 0).next().unwrap_or_default();
                    String::from_utf8_lossy(b).into_owned()
                })
                .unwrap_or_else(|| "a program interpreter".into());
            return Some(Linkage::Dynamic { interpreter });
        }
    }
    Some(Linkage::Static)
}

/// The linkage of the file at `path` (its first MiB is enough: program headers and the
/// interpreter path sit at the start of an executable).
pub fn linkage_of(path: &Path) -> std::io::Result<Linkage> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(1 << 20)
        .read_to_end(&mut bytes)?;
    Ok(linkage(&bytes))
}

/// Where the static worker may be for a tool running as `exe`: the output of
/// [`BUILD_COMMAND`] in the tree `exe` was built in (`target/<profile>/<tool>` →
/// `target/static/release/mw-worker`), then `mw-worker` beside `exe`.
pub fn candidates(exe: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = exe.parent() {
        if let Some(target) = dir.parent() {
            out.push(target.join("static").join("release").join("mw-worker"));
        }
        out.push(dir.join("mw-worker"));
    }
    out
}

/// The first of [`candidates`] that is a statically linked ELF executable; otherwise an error
/// saying where it looked and how to build one. `how_to_name` says how the user names another
/// worker (e.g. "pass --worker PATH").
pub fn find(exe: &Path, how_to_name: &str) -> Result<PathBuf, String> {
    let looked = candidates(exe);
    for c in &looked {
        if matches!(linkage_of(c), Ok(Linkage::Static)) {
            return Ok(c.clone());
        }
    }
    let list: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "no statically linked mw-worker found (looked at {}); remote machines need the static \
         one: build it in mw's source tree with `{BUILD_COMMAND}` (it writes {BUILD_OUTPUT}), \
         or {how_to_name}",
        list.join(", ")
    ))
}

/// A warning when `path` is a dynamically linked ELF executable (`None` otherwise, also for
/// a file that cannot be read: the caller reports that).
pub fn dynamic_warning(path: &Path) -> Option<String> {
    match linkage_of(path) {
        Ok(Linkage::Dynamic { interpreter }) => Some(format!(
            "{} is dynamically linked (it needs {interpreter} and this machine's libraries): \
             remote machines may not have them; the static worker runs anywhere (`{BUILD_COMMAND}` \
             writes {BUILD_OUTPUT})",
            path.display()
        )),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An ELF64 LE header with `phdrs` program headers of (type, offset, size), the
    /// interpreter path at 0x200.
    fn elf(phdrs: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut e = vec![0u8; 0x300];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, (t, off, size)) in phdrs.iter().enumerate() {
            let o = 64 + 56 * i;
            e[o..o + 4].copy_from_slice(&t.to_le_bytes());
            e[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
            e[o + 32..o + 40].copy_from_slice(&size.to_le_bytes());
        }
        let interp = b"/lib/ld-test.so.1\0";
        e[0x200..0x200 + interp.len()].copy_from_slice(interp);
        e
    }

    #[test]
    fn static_dynamic_and_other_files() {
        assert_eq!(linkage(&elf(&[(1, 0, 0)])), Linkage::Static);
        assert_eq!(
            linkage(&elf(&[(6, 0, 0), (3, 0x200, 18)])),
            Linkage::Dynamic {
                interpreter: "/lib/ld-test.so.1".into()
            }
        );
        // An interpreter out of the file's bounds still means dynamic.
        assert!(matches!(
            linkage(&elf(&[(3, u64::MAX, 18)])),
            Linkage::Dynamic { .. }
        ));
        assert_eq!(linkage(b"#!/bin/sh\necho hi\n"), Linkage::Other);
        assert_eq!(linkage(&elf(&[])[..40]), Linkage::Other);
        // Program headers beyond the end: not readable as ELF.
        let mut e = elf(&[(1, 0, 0)]);
        e[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(linkage(&e), Linkage::Other);
    }

    #[test]
    fn finds_the_static_build_first_and_says_how_to_make_one() {
        let t = tempfile::tempdir().unwrap();
        let release = t.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        let exe = release.join("mw-condor");
        // Only a dynamic worker beside the tool: not taken.
        std::fs::write(release.join("mw-worker"), elf(&[(3, 0x200, 18)])).unwrap();
        let e = find(&exe, "pass --worker PATH").unwrap_err();
        assert!(
            e.contains(BUILD_COMMAND) && e.contains("pass --worker PATH"),
            "{e}"
        );
        assert!(
            e.contains(&release.join("mw-worker").display().to_string()),
            "{e}"
        );
        // The static build wins.
        let s = t.path().join("target/static/release");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join("mw-worker"), elf(&[(1, 0, 0)])).unwrap();
        assert_eq!(find(&exe, "").unwrap(), s.join("mw-worker"));
        assert!(dynamic_warning(&release.join("mw-worker")).is_some());
        assert!(dynamic_warning(&s.join("mw-worker")).is_none());
    }
}
