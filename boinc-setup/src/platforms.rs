//! One BOINC app version per platform mw ships a worker for.
//!
//! BOINC picks the app version for a host by its platform name; the names here are BOINC's
//! own (`windows_x86_64`, `aarch64-unknown-linux-gnu`, `x86_64-pc-linux-gnu`, as in the
//! project's `project.xml` `<platform>` list). `--worker-for PLATFORM=PATH` names the worker
//! of each; every platform gets `apps/<app>/<M.mm>/<platform>/` with the worker as its main
//! program (`.exe` on Windows, which the client needs to start it) and a `version.xml`.
//!
//! This module only lays out app-version files; it knows nothing of tasks or the master.

use crate::plan::{file_matches, push_write, Action, Content, Plan};
use crate::render::version_xml;
use crate::{elf_is_static, io_err, SetupError};
use std::path::{Path, PathBuf};

/// BOINC's platform name for 64-bit Windows.
pub const WINDOWS_X86_64: &str = "windows_x86_64";
/// BOINC's platform name for 64-bit ARM Linux.
pub const AARCH64_LINUX: &str = "aarch64-unknown-linux-gnu";
/// BOINC's platform name for x86_64 Linux.
pub const X86_64_LINUX: &str = "x86_64-pc-linux-gnu";
/// The platforms mw has workers for.
pub const KNOWN: &[&str] = &[X86_64_LINUX, WINDOWS_X86_64, AARCH64_LINUX];

/// A worker binary for one BOINC platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformWorker {
    /// BOINC platform name (one of [`KNOWN`]).
    pub platform: String,
    /// The worker binary built for it.
    pub worker: PathBuf,
}

/// Parses `PLATFORM=PATH` (the `--worker-for` option).
pub fn parse_worker_for(s: &str) -> Result<PlatformWorker, String> {
    let (platform, path) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected PLATFORM=PATH"))?;
    if !KNOWN.contains(&platform) {
        return Err(format!(
            "`{platform}` is not a platform mw has a worker for (known: {})",
            KNOWN.join(", ")
        ));
    }
    if path.is_empty() {
        return Err(format!("`{s}`: empty path"));
    }
    Ok(PlatformWorker {
        platform: platform.to_string(),
        worker: PathBuf::from(path),
    })
}

/// The worker's physical file name in the app version directory.
pub fn physical_name(app: &str, ver: &str, platform: &str) -> String {
    let ext = if platform.starts_with("windows") {
        ".exe"
    } else {
        ""
    };
    format!("{app}_worker_{ver}_{platform}{ext}")
}

/// A warning when `bytes` do not look like a worker for `platform` (never an error: the
/// checks are heuristics on headers).
pub fn check_binary(platform: &str, path: &Path, bytes: &[u8]) -> Option<String> {
    if platform.starts_with("windows") {
        // PE: "MZ", e_lfanew at 0x3c, "PE\0\0", then the machine (0x8664 = x86_64).
        let pe = bytes
            .get(0x3c..0x40)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .and_then(|off| usize::try_from(off).ok());
        let machine = pe.and_then(|o| {
            (bytes.get(o..o + 4)? == b"PE\0\0")
                .then(|| bytes.get(o + 4..o + 6))
                .flatten()
        });
        if !bytes.starts_with(b"MZ") || machine != Some(&[0x64, 0x86][..]) {
            return Some(format!(
                "{} is not an x86_64 Windows executable (build it with `cargo windows-worker`)",
                path.display()
            ));
        }
        return None;
    }
    let want_machine: u16 = if platform == AARCH64_LINUX { 183 } else { 62 };
    let machine = bytes
        .get(0x12..0x14)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes);
    match elf_is_static(bytes) {
        Some(_) if machine != Some(want_machine) => Some(format!(
            "{} is not an ELF executable for {platform}",
            path.display()
        )),
        Some(true) => None,
        Some(false) => Some(format!(
            "{} is dynamically linked: volunteers' hosts may lack its libraries; build mw-worker \
             with -C target-feature=+crt-static (or `cargo arm-worker` / `cargo musl-worker`)",
            path.display()
        )),
        None => Some(format!(
            "{} is not an ELF executable for {platform}",
            path.display()
        )),
    }
}

/// Plans the app version of one platform; returns whether anything changes in it.
pub(crate) fn plan_app_version(
    plan: &mut Plan,
    root: &Path,
    app: &str,
    ver: &str,
    pw: &PlatformWorker,
) -> Result<bool, SetupError> {
    let worker_bytes = std::fs::read(&pw.worker).map_err(io_err(&pw.worker, "reading"))?;
    if let Some(w) = check_binary(&pw.platform, &pw.worker, &worker_bytes) {
        plan.warnings.push(w);
    }
    let physical = physical_name(app, ver, &pw.platform);
    let vdir = root.join("apps").join(app).join(ver).join(&pw.platform);
    let worker_dest = vdir.join(&physical);
    let vxml_dest = vdir.join("version.xml");
    let vxml = version_xml(&physical);
    if vdir.is_dir() {
        // An app version is immutable once registered: refuse to change it.
        for (path, same) in [
            (
                &worker_dest,
                file_matches(&worker_dest, &Content::CopyOf(pw.worker.clone()), 0o755)?,
            ),
            (
                &vxml_dest,
                file_matches(
                    &vxml_dest,
                    &Content::Bytes(vxml.clone().into_bytes()),
                    0o644,
                )?,
            ),
        ] {
            if !same && path.exists() {
                return Err(SetupError::Conflict {
                    path: path.clone(),
                    reason: format!(
                        "app version {ver} already holds different content; BOINC files are \
                         immutable: install with a higher --app-version"
                    ),
                });
            }
        }
        let entries = std::fs::read_dir(&vdir).map_err(io_err(&vdir, "listing"))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != physical && name != "version.xml" && !name.ends_with(".sig") {
                plan.warnings.push(format!(
                    "{} holds a stray file {name}: update_versions makes every file there part \
                     of the app version",
                    vdir.display()
                ));
            }
        }
    } else {
        plan.actions.push(Action::CreateDir(vdir.clone()));
    }
    let w1 = push_write(
        plan,
        worker_dest,
        Content::CopyOf(pw.worker.clone()),
        0o755,
        &format!("mw-worker for {}, main program", pw.platform),
    )?;
    let w2 = push_write(
        plan,
        vxml_dest,
        Content::Bytes(vxml.into_bytes()),
        0o644,
        &format!("version.xml for {}", pw.platform),
    )?;
    Ok(w1 || w2)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn worker_for_takes_boinc_platform_names_only() {
        let w = parse_worker_for("windows_x86_64=/b/mw-worker.exe").unwrap();
        assert_eq!(w.platform, "windows_x86_64");
        assert_eq!(w.worker, PathBuf::from("/b/mw-worker.exe"));
        assert!(parse_worker_for("win64=/x").unwrap_err().contains("win64"));
        assert!(parse_worker_for("x86_64-pc-linux-gnu").is_err());
        assert!(parse_worker_for("x86_64-pc-linux-gnu=").is_err());
        assert_eq!(
            physical_name("mw", "1.00", WINDOWS_X86_64),
            "mw_worker_1.00_windows_x86_64.exe"
        );
        assert_eq!(
            physical_name("mw", "1.00", AARCH64_LINUX),
            "mw_worker_1.00_aarch64-unknown-linux-gnu"
        );
    }

    #[test]
    fn binaries_are_checked_against_their_platform() {
        let p = Path::new("w");
        assert!(check_binary(WINDOWS_X86_64, p, b"#!/bin/sh\n").is_some());
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&[0x64, 0x86]);
        assert_eq!(check_binary(WINDOWS_X86_64, p, &pe), None);
        assert!(check_binary(AARCH64_LINUX, p, &pe).is_some());
    }
}
