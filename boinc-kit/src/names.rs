//! Every name mw gives to something in a BOINC project, and the one shell-safe name check.
//!
//! BOINC passes names through `/bin/sh` (`script_validator`, `script_assimilator`) and stores
//! them in its database: every name mw builds is checked with [`is_safe_name`] before use.

use md5::{Digest, Md5};

/// Config file `mw-boinc-setup` writes at the project root ([`crate::MwBoincConfig`]).
pub const CONFIG_FILE_NAME: &str = "mw_boinc.toml";
/// Spool directory (under the project root) the assimilator writes into.
pub const SPOOL_DIR_NAME: &str = "mw_spool";
/// Environment variable naming the spool directory directly (overrides the config file).
pub const SPOOL_ENV: &str = "MW_BOINC_SPOOL";
/// Logical (open) name of the program bundle in the slot (the worker resolves it).
pub const PROGRAM_LOGICAL_NAME: &str = "mw_program";
/// Logical name of the task bundle in the slot.
pub const TASK_LOGICAL_NAME: &str = "mw_task";
/// Logical name of the result bundle the worker writes in the slot.
pub const RESULT_LOGICAL_NAME: &str = "mw_result";
/// Program name of the validator's init script in `bin/`.
pub const VALIDATOR_INIT_NAME: &str = "mw-validator-init";
/// Program name of the validator's compare script in `bin/`.
pub const VALIDATOR_COMPARE_NAME: &str = "mw-validator-compare";
/// Program name of the assimilator script in `bin/`.
pub const ASSIMILATOR_NAME: &str = "mw-assimilator";
/// The platform of mw's static Linux worker.
pub const LINUX_X86_64: &str = "x86_64-pc-linux-gnu";
/// `<api_version>` in version.xml: ≥ 6 makes the client use the `boinc_mmap_file` channel.
pub const API_VERSION: &str = "7.20.0";
/// Longest template path BOINC stores (a workunit row keeps it in 64 bytes).
pub const MAX_TEMPLATE_PATH: usize = 63;

/// True when `s` is a name BOINC and `/bin/sh` both take as one plain word: 1-128 characters
/// of `[A-Za-z0-9_.-]`, not starting with `-` or `.`. The one name check of mw's BOINC path.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// True when `s` is a relative path of [`is_safe_name`] components separated by `/`.
pub fn is_safe_rel_path(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(is_safe_name)
}

/// True when `s` is an absolute path of [`is_safe_name`] components (a path that may be put
/// into a shell command or a BOINC config line as one word).
pub fn is_safe_abs_path(s: &str) -> bool {
    s.strip_prefix('/')
        .is_some_and(|rest| rest.is_empty() || is_safe_rel_path(rest.trim_end_matches('/')))
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} is not 1-128 characters of [A-Za-z0-9_.-] (not starting with - or .)")]
pub struct NameError {
    /// What the name was for.
    pub what: &'static str,
    /// The refused name.
    pub name: String,
}

/// A workunit name: `mw_<job>_<run>_<task>_<attempt>`, unique per BOINC project (whose
/// database refuses a second workunit of the same name, across all submitters): `<run>` is a
/// random id drawn once per master run ([`fresh_run_id`]), so two jobs directories running
/// the same job never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WuName(String);

impl WuName {
    /// The name of one attempt of a task.
    pub fn for_task(job: &str, run: &str, task: u64, attempt: u32) -> Result<WuName, NameError> {
        WuName::parse(&format!("mw_{job}_{run}_{task}_{attempt}"))
    }

    /// The name of a pack of tasks (many tasks in one workunit): `mw_<job>_<run>_p<seq>`,
    /// `<seq>` counting the packs of one master run (a task may be packed again after its
    /// pack came back without its result, so a pack is not named after its tasks).
    pub fn for_pack(job: &str, run: &str, seq: u64) -> Result<WuName, NameError> {
        WuName::parse(&format!("mw_{job}_{run}_p{seq}"))
    }

    /// True for a pack's name ([`for_pack`](Self::for_pack)).
    pub fn is_pack(&self) -> bool {
        self.0.rsplit_once('_').is_some_and(|(_, last)| {
            last.strip_prefix('p')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    }

    /// A name read back (from the journal, the spool, BOINC): checked shell-safe.
    pub fn parse(s: &str) -> Result<WuName, NameError> {
        // Result names add `_<k>`, output names `_<k>_r<random>_<n>`: keep room for both.
        if is_safe_name(s) && s.len() <= 100 {
            Ok(WuName(s.to_string()))
        } else {
            Err(NameError {
                what: "workunit name (at most 100 characters)",
                name: s.to_string(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The job, run, task and attempt a name made by [`for_task`](Self::for_task) carries
    /// (`None` for any other name). What BOINC vouches for about a result: a result bundle
    /// whose manifest names another job, task or attempt is forged or misfiled.
    pub fn parts(&self) -> Option<WuParts<'_>> {
        let rest = self.0.strip_prefix("mw_")?;
        let (rest, attempt) = rest.rsplit_once('_')?;
        let (rest, task) = rest.rsplit_once('_')?;
        let (job, run) = rest.rsplit_once('_')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if job.is_empty() || run.is_empty() || !digits(task) || !digits(attempt) {
            return None;
        }
        Some(WuParts {
            job,
            run,
            task: task.parse().ok()?,
            attempt: attempt.parse().ok()?,
        })
    }

    /// Physical name of this workunit's task bundle in `download/`.
    pub fn task_file_name(&self) -> String {
        format!("{}_task.tar.gz", self.0)
    }

    /// The spool entry of this workunit's canonical result.
    pub fn result_spool_name(&self) -> String {
        format!("result_{}.tar.gz", self.0)
    }

    /// The spool entry of this workunit's error record.
    pub fn error_spool_name(&self) -> String {
        format!("error_{}.toml", self.0)
    }

    /// The spool marker of a workunit mw cancelled: whatever BOINC still assimilates for it
    /// (its `--error 16` call, late results) is consumed, not spooled.
    pub fn cancel_marker_name(&self) -> String {
        format!("cancelled_{}", self.0)
    }

    /// The workunit whose cancel marker ([`WuName::cancel_marker_name`]) `file_name` is.
    pub fn of_cancel_marker(file_name: &str) -> Option<WuName> {
        WuName::parse(file_name.strip_prefix("cancelled_")?).ok()
    }

    /// Where a second, different canonical result of this workunit is kept.
    pub fn conflict_spool_name(&self, wu_id: u64) -> String {
        format!("conflict_{}_wu{wu_id}.tar.gz", self.0)
    }
}

/// File in the spool whose modification time says when cancel markers were last pruned.
pub const MARKERS_PRUNED_STAMP: &str = ".mw-markers-pruned";

/// The parts of a workunit name `mw_<job>_<run>_<task>_<attempt>` ([`WuName::parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WuParts<'a> {
    /// The job's name.
    pub job: &'a str,
    /// The master run that created the workunit.
    pub run: &'a str,
    /// The task index.
    pub task: u64,
    /// The attempt (1 for the first).
    pub attempt: u32,
}

impl std::fmt::Display for WuName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The spool entry of an error record whose workunit name is not safe to use as a file name.
pub fn error_spool_name_by_id(wu_id: u64) -> String {
    format!("error_wu{wu_id}.toml")
}

/// A fresh run id: 8 lower-case hex digits, random (from `/dev/urandom`, else the clock and
/// the process id).
pub fn fresh_run_id() -> String {
    use std::io::Read;
    let mut buf = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let d = Md5::digest(format!("{nanos}-{}", std::process::id()).as_bytes());
        buf.copy_from_slice(&d[..4]);
    }
    hex::encode(buf)
}

/// Physical name of a program bundle in `download/`, content-addressed by its sha256 (hex):
/// its first 32 digits (characters, so no text makes it cut inside one).
pub fn program_file_name(sha256_hex: &str) -> String {
    let prefix: String = sha256_hex.chars().take(32).collect();
    format!("mw_prog_{prefix}.tar.gz")
}

/// What a spool file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolEntry {
    /// `result_<wu>.tar.gz`: the canonical result bundle.
    Result(WuName),
    /// `error_<wu>.toml`: an [`crate::ErrorRecord`].
    Error(WuName),
}

impl SpoolEntry {
    /// Classifies a spool file name; `None` for anything else (temporary files, conflicts).
    pub fn parse(file_name: &str) -> Option<SpoolEntry> {
        if let Some(wu) = file_name
            .strip_prefix("result_")
            .and_then(|r| r.strip_suffix(".tar.gz"))
        {
            return WuName::parse(wu).ok().map(SpoolEntry::Result);
        }
        file_name
            .strip_prefix("error_")
            .and_then(|r| r.strip_suffix(".toml"))
            .and_then(|wu| WuName::parse(wu).ok())
            .map(SpoolEntry::Error)
    }
}

/// The workunit name inside an output file name `<wu_name>_<k>_r<random>_<n>` (BOINC's
/// upload handler names every output so; the name is what the server vouches for).
pub fn wu_name_from_output(file_name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (rest, n) = file_name.rsplit_once('_')?;
    let (rest, r) = rest.rsplit_once('_')?;
    let (wu, k) = rest.rsplit_once('_')?;
    let random = r.strip_prefix('r')?;
    (digits(n) && digits(random) && digits(k) && !wu.is_empty()).then_some(wu)
}

/// BOINC's `dir_hier_path` sub-directory for `name`: the 7 hex digits of md5(name) starting
/// at index 1, as a number, modulo `fanout`, printed as lower-case hex without padding.
/// `None` for fanout 0 (flat directory).
pub fn dir_hier_path(name: &str, fanout: u32) -> Option<String> {
    if fanout == 0 {
        return None;
    }
    let md5 = hex::encode(Md5::digest(name.as_bytes()));
    let n = u64::from_str_radix(&md5[1..8], 16).unwrap_or(0);
    Some(format!("{:x}", n % u64::from(fanout)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fanout_matches_the_reference_example() {
        // reference §0.2: `in_t1` → download/262/ with fanout 1024.
        assert_eq!(dir_hier_path("in_t1", 1024).as_deref(), Some("262"));
        assert_eq!(dir_hier_path("x", 0), None);
    }

    #[test]
    fn names_are_shell_safe() {
        let w = WuName::for_task("monte_pi-1", "0a1b2c3d", 3, 1).unwrap();
        assert_eq!(w.as_str(), "mw_monte_pi-1_0a1b2c3d_3_1");
        assert!(WuName::for_task("a b", "r", 0, 1).is_err());
        let p = WuName::for_pack("monte_pi-1", "0a1b2c3d", 12).unwrap();
        assert_eq!(p.as_str(), "mw_monte_pi-1_0a1b2c3d_p12");
        assert!(p.is_pack());
        assert!(!w.is_pack());
        assert!(!WuName::parse("mw_x_p_1").unwrap().is_pack());
        assert!(WuName::for_task("x;rm", "r", 0, 1).is_err());
        assert!(!is_safe_name("-x"));
        assert!(!is_safe_name(".."));
        assert!(!is_safe_rel_path("templates/../x"));
        assert!(is_safe_rel_path("templates/mw_in"));
        assert!(is_safe_abs_path("/srv/boinc/p1"));
        assert!(!is_safe_abs_path("/srv/bo inc"));
    }

    #[test]
    fn spool_names_round_trip() {
        let w = WuName::parse("mw_j-1_ab_0_1").unwrap();
        assert_eq!(
            SpoolEntry::parse(&w.result_spool_name()),
            Some(SpoolEntry::Result(w.clone()))
        );
        assert_eq!(
            SpoolEntry::parse(&w.error_spool_name()),
            Some(SpoolEntry::Error(w.clone()))
        );
        assert_eq!(SpoolEntry::parse(".tmp-x"), None);
        assert_eq!(SpoolEntry::parse("result_a b.tar.gz"), None);
        assert_eq!(
            wu_name_from_output("mw_j-1_ab_0_1_0_r758802475_0"),
            Some("mw_j-1_ab_0_1")
        );
        assert_eq!(wu_name_from_output("garbage"), None);
    }

    #[test]
    fn a_workunit_name_gives_back_its_job_task_and_attempt() {
        let wu = WuName::for_task("my_job-1", "0a1b2c3d", 5, 2).unwrap();
        assert_eq!(
            wu.parts(),
            Some(WuParts {
                job: "my_job-1",
                run: "0a1b2c3d",
                task: 5,
                attempt: 2
            })
        );
        for other in [
            "mw_j7_t42",
            "mw_x_1",
            "other_j_r_1_1",
            "mw__r_1_1",
            "mw_j_r_1_x",
        ] {
            assert_eq!(WuName::parse(other).unwrap().parts(), None, "{other}");
        }
    }

    #[test]
    fn run_ids_differ() {
        let a = fresh_run_id();
        assert_eq!(a.len(), 8);
        assert!(is_safe_name(&a));
        assert_ne!(a, fresh_run_id());
    }
}
