//! Job-file settings → the interfaces' own settings types, and construction of the
//! remote-platform interfaces (HTCondor, BOINC). The interfaces never see the job file.

use crate::job::{CondorSection, Job, JobError};
use mw::condor::{CondorSettings, OnHold};
use mw::interface::Interface;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Checks, before any job directory is created, that the platform `interface` needs is
/// there: HTCondor's `condor_submit` on PATH for `condor`.
pub(crate) fn check_available(interface: &str) -> anyhow::Result<()> {
    if interface == "condor" && crate::job::find_on_path("condor_submit").is_none() {
        anyhow::bail!(
            "interface \"condor\" needs HTCondor, but `condor_submit` is not on PATH: run mw on \
             a submit host of your pool (or add HTCondor's bin directory to PATH); to run \
             this job here instead, pass `--interface multicore`"
        );
    }
    Ok(())
}

/// Checks, before a job is created, what interface `name` can check without changing
/// anything (BOINC: the project, mw's installation, permissions, settings; HTCondor: the
/// `mw-worker` shipped to the pool, and that the paths a submit description carries can be
/// written in one), so a refused job leaves no job directory behind. `jobs_root` is where
/// the job's directory will be made (none: the job keeps no directory).
pub(crate) fn preflight(name: &str, job: &Job, jobs_root: Option<&Path>) -> anyhow::Result<()> {
    if name == "condor" {
        // Every [condor] setting, checked now (the staging directory is not used here).
        let settings = condor_settings(job, "staging")?;
        check_condor_worker(job, &settings.worker)?;
        check_condor_paths(job, &settings.worker, jobs_root)?;
    }
    if name == "boinc" {
        let settings = job
            .file
            .boinc
            .to_settings(&job.base_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", job.path.display()))?;
        mw::boinc::Boinc::check(&settings, job.max_output_bytes()?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", job.path.display()))?;
    }
    Ok(())
}

/// The worker HTCondor ships with every job must be an executable file here (else every task
/// would fail on the pool after the job was created).
fn check_condor_worker(job: &Job, worker: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let usable =
        std::fs::metadata(worker).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if usable {
        return Ok(());
    }
    let from = if job.file.condor.worker.is_some() {
        "set by `worker` in [condor]"
    } else if std::env::var_os("MW_WORKER").is_some() {
        "from $MW_WORKER"
    } else {
        "the default: the static build mw found"
    };
    anyhow::bail!(
        "{}: [condor] worker: `{}` ({from}) is not an executable file: HTCondor ships it with \
         every task (build it with `cargo static-worker`, then set `worker` in [condor] or \
         $MW_WORKER)",
        job.path.display(),
        worker.display()
    )
}

/// The worker and the job's staging directory are written into every submit description
/// and item file, where a space or a comma would split them (condor-kit refuses such a
/// path): checked before the job exists, not when its first batch is submitted.
fn check_condor_paths(job: &Job, worker: &Path, jobs_root: Option<&Path>) -> anyhow::Result<()> {
    use mw_condor_kit::submit::check_path;
    check_path("worker", worker).map_err(|e| {
        anyhow::anyhow!(
            "{}: [condor] worker: {e}; HTCondor's submit description cannot carry it (copy              or link the worker to such a path)",
            job.path.display()
        )
    })?;
    let Some(jobs_root) = jobs_root else {
        return Ok(());
    };
    let staging = crate::absolute(jobs_root)
        .join(format!("{}-1", job.name))
        .join("staging")
        .join("condor");
    check_path("job directory", &staging).map_err(|e| {
        anyhow::anyhow!(
            "{e}: HTCondor jobs are staged under the jobs directory, which must not hold such              characters; pass --jobs-dir (or set MW_JOBS_DIR) to a directory that does not"
        )
    })?;
    Ok(())
}

/// Builds the interface named `name` for `job`, staging into `job_dir`.
pub(crate) fn make(name: &str, job: &Job, job_dir: &Path) -> anyhow::Result<Arc<dyn Interface>> {
    match name {
        "boinc" => {
            let settings = job
                .file
                .boinc
                .to_settings(&job.base_dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", job.path.display()))?;
            Ok(Arc::new(mw::boinc::Boinc::new(settings)?))
        }
        "condor" => {
            let settings = condor_settings(job, job_dir.join("staging").join("condor"))?;
            Ok(Arc::new(mw::condor::Condor::new(settings)?))
        }
        _ => anyhow::bail!("interface `{name}` is not available in this build"),
    }
}

/// The `mw-worker` a Condor job ships: `[condor] worker` (relative to the job file), else
/// `$MW_WORKER`, else the static worker of this build
/// ([`mw_worker_runtime::static_worker::find`]); an error says how to build one.
pub fn condor_worker(job: &Job) -> Result<PathBuf, JobError> {
    if let Some(w) = &job.file.condor.worker {
        let p = Path::new(w);
        return Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            job.base_dir.join(p)
        });
    }
    if let Some(p) = std::env::var_os("MW_WORKER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| JobError(format!("cannot locate this program: {e}")))?;
    mw_worker_runtime::static_worker::find(
        &exe,
        "name one with `[condor] worker = \"PATH\"` in the job file or MW_WORKER=PATH",
    )
    .map_err(JobError)
}

/// Condor settings from a job file's `[condor]` table (paths relative to the job file).
pub fn condor_settings(
    job: &Job,
    work_dir: impl Into<PathBuf>,
) -> Result<CondorSettings, JobError> {
    let c: &CondorSection = &job.file.condor;
    let mut s = CondorSettings::new(work_dir);
    s.worker = condor_worker(job)?;
    let rel = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            job.base_dir.join(p)
        }
    };
    let at = |field: &str, msg: String| {
        JobError(format!("{}: [condor] {field}: {msg}", job.path.display()))
    };
    if let Some(n) = c.request_cpus {
        if n == 0 {
            return Err(at("request_cpus", "must be at least 1".into()));
        }
        s.request_cpus = n;
    }
    if let Some(v) = &c.request_memory {
        s.request_memory_mb = size_mb(v).map_err(|m| at("request_memory", m))?;
    }
    if let Some(v) = &c.request_disk {
        s.request_disk_mb = size_mb(v).map_err(|m| at("request_disk", m))?;
    }
    if let Some(r) = &c.requirements {
        mw_condor_kit::submit::check_requirements(r)
            .map_err(|e| at("requirements", e.to_string()))?;
        s.requirements = Some(r.trim().to_string());
    }
    if let Some(w) = c.batch_window_secs {
        if !(w.is_finite() && (0.0..=3600.0).contains(&w)) {
            return Err(at(
                "batch_window_secs",
                "must be between 0 and 3600 seconds".into(),
            ));
        }
        s.batch_window = Duration::from_secs_f64(w);
    }
    if let Some(t) = &c.template {
        s.template = Some(rel(t));
    }
    match c.on_hold.as_deref() {
        None | Some("fail") => s.on_hold = OnHold::Fail,
        Some("wait") => s.on_hold = OnHold::Wait,
        Some(other) => {
            return Err(at(
                "on_hold",
                format!("`{other}`: expected \"fail\" or \"wait\""),
            ))
        }
    }
    let (per, target) = crate::job::packing("tasks_per_job", c.tasks_per_job, c.target_job_secs)
        .map_err(|m| JobError(format!("{}: [condor] {m}", job.path.display())))?;
    s.tasks_per_job = per;
    s.target_job_time = target;
    Ok(s)
}

/// A size in MiB: a number (MiB) or a string with a K/M/G/T suffix (`"2GB"`, `"512M"`).
pub fn size_mb(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        toml::Value::String(s) => {
            let t = s.trim().to_ascii_uppercase();
            let t = t.strip_suffix('B').unwrap_or(&t);
            let (num, mult) = match t.chars().last() {
                Some('K') => (&t[..t.len() - 1], 1.0 / 1024.0),
                Some('M') => (&t[..t.len() - 1], 1.0),
                Some('G') => (&t[..t.len() - 1], 1024.0),
                Some('T') => (&t[..t.len() - 1], 1024.0 * 1024.0),
                _ => (t, 1.0),
            };
            let n: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a size like 512, \"512MB\" or \"2GB\""))?;
            let mb = (n * mult).ceil();
            if !(mb.is_finite() && (1.0..1e12).contains(&mb)) {
                return Err(format!("{s:?} is not a positive size"));
            }
            Ok(mb as u64)
        }
        other => Err(format!(
            "{other} is not a size like 512, \"512MB\" or \"2GB\""
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_mb(&toml::Value::Integer(512)).unwrap(), 512);
        assert_eq!(size_mb(&toml::Value::String("2GB".into())).unwrap(), 2048);
        assert_eq!(size_mb(&toml::Value::String("512 M".into())).unwrap(), 512);
        assert!(size_mb(&toml::Value::String("lots".into())).is_err());
        assert!(size_mb(&toml::Value::Integer(0)).is_err());
    }
}
