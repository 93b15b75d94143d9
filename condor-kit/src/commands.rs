//! Thin wrappers over the HTCondor command-line tools found on PATH (`condor_submit -terse`,
//! `condor_rm`, `condor_q -json`, `condor_history -json`), returning typed results.
//! Arguments are passed as separate argv entries, never through a shell. What a command
//! prints is read up to [`MAX_OUTPUT_BYTES`] (its stderr up to [`MAX_STDERR_BYTES`]): a
//! command that prints more is stopped and is an error, so a huge queue or history cannot
//! exhaust memory. A `condor_q` or `condor_history` that runs longer than
//! [`CondorCli::query_timeout`] is stopped too. One job is looked up by its exact id ([`CondorCli::query_job`],
//! [`CondorCli::job_history`], the latter with `-limit 1` so the schedd stops at the first
//! match instead of scanning every history file).
//! This module must never know about mw's tasks, bundles or the master.

use crate::error::{CondorError, Result};
use crate::job::{JobHandle, JobStatus};
use crate::submit::parse_terse;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where and how to run the HTCondor tools. The default finds them on PATH with the
/// inherited environment and stops a query after [`DEFAULT_QUERY_TIMEOUT`]; `bin_dir` pins a
/// directory, `envs` adds variables (e.g. `CONDOR_CONFIG`).
#[derive(Debug, Clone)]
pub struct CondorCli {
    /// Where the `condor_*` commands are; `None` means PATH.
    pub bin_dir: Option<PathBuf>,
    /// Extra environment for every command (e.g. `CONDOR_CONFIG`).
    pub envs: Vec<(OsString, OsString)>,
    /// The longest a `condor_q` or `condor_history` may run: past it, it is stopped and an
    /// error ([`CondorError::CommandTimedOut`]). `None`: no limit.
    pub query_timeout: Option<Duration>,
}

/// How long a `condor_q` or `condor_history` may run by default (a busy schedd answers in
/// seconds; one that does not answer must not hold its caller for ever).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for CondorCli {
    fn default() -> Self {
        CondorCli {
            bin_dir: None,
            envs: Vec::new(),
            query_timeout: Some(DEFAULT_QUERY_TIMEOUT),
        }
    }
}

/// Attributes asked of `condor_q` / `condor_history`.
pub const QUERY_ATTRIBUTES: &[&str] = &[
    "ClusterId",
    "ProcId",
    "JobStatus",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "HoldReason",
    "HoldReasonCode",
    "HoldReasonSubCode",
    "NumJobStarts",
    "JobBatchName",
    "MwBatch",
    "MwTask",
    "RemoteHost",
    "LastRemoteHost",
    "JobCurrentStartDate",
    "EnteredCurrentStatus",
    "RemoteWallClockTime",
];

/// The job attribute that names an mw batch (`+MwBatch` in the submit description): written
/// into every job ad by `condor_submit`, so a batch can be found in the queue or the history
/// even when its cluster id was never seen by whoever submitted it.
pub const BATCH_ATTRIBUTE: &str = "MwBatch";

/// True for a batch name that may be written into a ClassAd constraint unquoted-safe:
/// non-empty letters, digits and `_ . -` (what [`crate::SubmitSpec::batch_name`] allows).
pub fn is_batch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One job ad from `condor_q -json` or `condor_history -json`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAd {
    /// The job this row describes.
    pub handle: JobHandle,
    /// Its `JobStatus`.
    pub status: JobStatus,
    /// `ExitCode`, when the job exited.
    pub exit_code: Option<i64>,
    /// `ExitSignal`, when a signal ended it.
    pub exit_signal: Option<i64>,
    /// `HoldReason`, when held.
    pub hold_reason: Option<String>,
    /// `HoldReasonCode`, when held.
    pub hold_reason_code: Option<i64>,
    /// The whole ad as printed.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl CondorCli {
    /// Runs the commands from `dir` instead of PATH.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Sets how long a `condor_q` or `condor_history` may run (`None`: no limit).
    pub fn with_query_timeout(mut self, limit: Option<Duration>) -> Self {
        self.query_timeout = limit;
        self
    }

    /// Adds `key=value` to every command's environment.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// `condor_submit -terse FILE`: the handles of all submitted jobs, in proc (= item) order.
    pub fn submit(&self, submit_file: &Path) -> Result<Vec<JobHandle>> {
        let args = vec![
            "-terse".to_string(),
            submit_file.to_string_lossy().into_owned(),
        ];
        let out = self.run("condor_submit", &args)?;
        parse_terse(&out).map_err(|message| CondorError::BadOutput {
            command: format!("condor_submit -terse {}", submit_file.display()),
            message,
            output: bounded_text(&out, MAX_SHOWN_OUTPUT),
        })
    }

    /// `condor_rm C.P ...`. Does nothing for an empty list.
    pub fn remove(&self, handles: &[JobHandle]) -> Result<()> {
        if handles.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = handles.iter().map(|h| h.to_string()).collect();
        self.run("condor_rm", &args).map(|_| ())
    }

    /// `condor_q -json -attributes ... CLUSTER...`: jobs still in the queue. No clusters = all.
    pub fn query_jobs(&self, clusters: &[u64]) -> Result<Vec<JobAd>> {
        self.query("condor_q", clusters, &[])
    }

    /// `condor_q -json -attributes ... C.P`: job `h`, if it is still in the queue.
    pub fn query_job(&self, h: JobHandle) -> Result<Option<JobAd>> {
        let ads = self.query("condor_q", &[], &[h.to_string()])?;
        Ok(ads.into_iter().find(|a| a.handle == h))
    }

    /// `condor_history -json -attributes ... -limit 1 C.P`: job `h`, if it has left the queue
    /// and the history still has it. `-limit 1` stops the search at the first match.
    pub fn job_history(&self, h: JobHandle) -> Result<Option<JobAd>> {
        let extra = ["-limit".to_string(), "1".to_string(), h.to_string()];
        let ads = self.query("condor_history", &[], &extra)?;
        Ok(ads.into_iter().find(|a| a.handle == h))
    }

    /// `condor_history -json -attributes ... [-limit N] CLUSTER...`: jobs that left the queue.
    pub fn history(&self, clusters: &[u64], limit: Option<u64>) -> Result<Vec<JobAd>> {
        let extra = match limit {
            Some(n) => vec!["-limit".to_string(), n.to_string()],
            None => vec![],
        };
        self.query("condor_history", clusters, &extra)
    }

    /// The jobs of the named batches (by [`BATCH_ATTRIBUTE`]) still in the queue
    /// (`condor_q -constraint`) and, with `history`, those that left it (`condor_history
    /// -constraint`). Names that are not [`is_batch_name`] are refused.
    pub fn batch_jobs(&self, batches: &[String], history: bool) -> Result<Vec<JobAd>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(bad) = batches.iter().find(|b| !is_batch_name(b)) {
            return Err(CondorError::UnsafeValue {
                field: "batch".into(),
                value: bad.clone(),
                why: "not a batch name (letters, digits and _ . -)",
            });
        }
        let mut ads = Vec::new();
        // A few hundred names per constraint keep the command line short.
        for chunk in batches.chunks(200) {
            let constraint = chunk
                .iter()
                .map(|b| format!("{BATCH_ATTRIBUTE} == \"{b}\""))
                .collect::<Vec<_>>()
                .join(" || ");
            let extra = vec!["-constraint".to_string(), constraint];
            // Every owner's jobs (condor_q shows only the caller's without cluster ids).
            let q_extra = [vec!["-allusers".to_string()], extra.clone()].concat();
            ads.extend(self.query("condor_q", &[], &q_extra)?);
            if history {
                ads.extend(self.query("condor_history", &[], &extra)?);
            }
        }
        Ok(ads)
    }

    /// `condor_rm CLUSTER ...`: every job of these clusters. Does nothing for an empty list.
    pub fn remove_clusters(&self, clusters: &[u64]) -> Result<()> {
        if clusters.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = clusters.iter().map(|c| c.to_string()).collect();
        self.run("condor_rm", &args).map(|_| ())
    }

    fn query(&self, program: &str, clusters: &[u64], extra: &[String]) -> Result<Vec<JobAd>> {
        let mut args = vec![
            "-json".to_string(),
            "-attributes".to_string(),
            QUERY_ATTRIBUTES.join(","),
        ];
        args.extend(extra.iter().cloned());
        args.extend(clusters.iter().map(|c| c.to_string()));
        let out = self.run_limited(program, &args, self.query_timeout)?;
        let command = format!("{program} {}", args.join(" "));
        parse_ads(&out).map_err(|message| CondorError::BadOutput {
            command,
            message,
            output: bounded_text(&out, MAX_SHOWN_OUTPUT),
        })
    }

    fn run(&self, name: &str, args: &[String]) -> Result<String> {
        self.run_limited(name, args, None)
    }

    fn run_limited(&self, name: &str, args: &[String], limit: Option<Duration>) -> Result<String> {
        let program = match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        };
        run(&program, args, &self.envs, limit)
    }
}

/// The most a command's stdout may hold (a `condor_q` of a large batch is a few MiB).
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// The most of a command's stderr that is read (the rest is drained and dropped).
pub const MAX_STDERR_BYTES: u64 = 64 << 10;

/// The most of a command's output an error message shows.
const MAX_SHOWN_OUTPUT: usize = 4096;

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

fn run(
    program: &Path,
    args: &[String],
    envs: &[(OsString, OsString)],
    limit: Option<Duration>,
) -> Result<String> {
    use std::io::Read;
    use std::process::Stdio;
    use std::sync::mpsc;
    let started = Instant::now();
    let command_line = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CondorError::CommandMissing {
                command: program.display().to_string(),
            }
        } else {
            CondorError::CommandSpawn {
                command: command_line.clone(),
                source: e,
            }
        }
    })?;
    // Both pipes are read on threads of their own (bounded; stderr's rest drained) so that
    // neither can fill up and stall the command, and so that a command that does not finish
    // can be stopped.
    let stderr_reader = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut err).take(MAX_STDERR_BYTES).read_to_end(&mut kept);
            let _ = std::io::copy(&mut err, &mut std::io::sink());
            kept
        })
    });
    let (out_tx, out_rx) = mpsc::channel();
    let stdout_pipe = child.stdout.take();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let read = match stdout_pipe {
            Some(out) => out
                .take(MAX_OUTPUT_BYTES + 1)
                .read_to_end(&mut kept)
                .map(|_| ()),
            None => Ok(()),
        };
        let _ = out_tx.send((kept, read));
    });
    let deadline = limit.map(|l| started + l);
    let timed_out = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
        CondorError::CommandTimedOut {
            command: command_line.clone(),
            seconds: limit.map_or(0.0, |l| l.as_secs_f64()),
        }
    };
    let got = match deadline {
        None => out_rx.recv().ok(),
        Some(d) => match out_rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
            Ok(got) => Some(got),
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(timed_out(&mut child)),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        },
    };
    let (stdout, read) = got.unwrap_or_else(|| (Vec::new(), Ok(())));
    let too_long = stdout.len() as u64 > MAX_OUTPUT_BYTES;
    if too_long || read.is_err() {
        // Stop it: what it prints beyond this is not read.
        let _ = child.kill();
    }
    let status = loop {
        let waited = match deadline {
            None => child.wait().map(Some),
            Some(_) => child.try_wait(),
        };
        match waited {
            Ok(Some(status)) => break status,
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(timed_out(&mut child))
            }
            // Its output is closed: it is ending.
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(CondorError::CommandSpawn {
                    command: command_line,
                    source: e,
                })
            }
        }
    };
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    if too_long {
        return Err(CondorError::BadOutput {
            command: command_line,
            message: format!("it printed more than {MAX_OUTPUT_BYTES} bytes; stopped it"),
            output: bounded_text(&String::from_utf8_lossy(&stdout), MAX_SHOWN_OUTPUT),
        });
    }
    if let Err(e) = read {
        return Err(CondorError::CommandSpawn {
            command: command_line,
            source: e,
        });
    }
    if !status.success() {
        return Err(CondorError::CommandFailed {
            command: command_line,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// [`CondorCli::submit`] with the tools on PATH.
pub fn submit(submit_file: &Path) -> Result<Vec<JobHandle>> {
    CondorCli::default().submit(submit_file)
}

/// [`CondorCli::remove`] with the tools on PATH.
pub fn remove(handles: &[JobHandle]) -> Result<()> {
    CondorCli::default().remove(handles)
}

/// [`CondorCli::query_jobs`] with the tools on PATH.
pub fn query_jobs(clusters: &[u64]) -> Result<Vec<JobAd>> {
    CondorCli::default().query_jobs(clusters)
}

/// [`CondorCli::history`] with the tools on PATH.
pub fn history(clusters: &[u64], limit: Option<u64>) -> Result<Vec<JobAd>> {
    CondorCli::default().history(clusters, limit)
}

/// Parses a JSON array of job ads; empty output (what `condor_q` prints for no jobs) is `[]`.
/// Text over [`MAX_OUTPUT_BYTES`], or far denser in values than ads are (a `[0,0,…]` would
/// take some 30 times its size as a tree), is refused before a tree is built.
pub fn parse_ads(text: &str) -> std::result::Result<Vec<JobAd>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v = mw_bundle::parse_json_limited(text.as_bytes(), MAX_OUTPUT_BYTES)
        .map_err(|e| format!("not JSON job ads: {e}"))?;
    let arr = v.as_array().ok_or("not a JSON array")?;
    arr.iter()
        .enumerate()
        .map(|(i, ad)| {
            let obj = ad
                .as_object()
                .ok_or_else(|| format!("entry {i} is not an object"))?;
            let int = |k: &str| obj.get(k).and_then(|v| v.as_i64());
            let id = |k: &str| {
                int(k)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| format!("entry {i}: {k} missing or not a non-negative integer"))
            };
            Ok(JobAd {
                handle: JobHandle::new(id("ClusterId")?, id("ProcId")?),
                status: JobStatus::from_code(
                    int("JobStatus").ok_or_else(|| format!("entry {i}: JobStatus missing"))?,
                ),
                exit_code: int("ExitCode"),
                exit_signal: int("ExitSignal"),
                hold_reason: obj
                    .get("HoldReason")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                hold_reason_code: int("HoldReasonCode"),
                attributes: obj.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ads() {
        assert!(parse_ads("").unwrap().is_empty());
        let a = parse_ads(
            "[\n{\"ClusterId\": 3, \"ProcId\": 1, \"JobStatus\": 5, \"HoldReason\": \"x\"}\n]\n",
        )
        .unwrap();
        assert_eq!(a[0].handle, JobHandle::new(3, 1));
        assert_eq!(a[0].status, JobStatus::Held);
        assert_eq!(a[0].hold_reason.as_deref(), Some("x"));
        assert!(parse_ads("[{\"ProcId\": 1}]").is_err());
    }

    /// Output far denser in values than job ads (here 5 million values in 10 MB, some
    /// 150 MB as a tree) is refused before it is parsed.
    #[test]
    fn dense_output_is_refused_unparsed() {
        let dense = format!("[{}0]", "0,".repeat(5_000_000));
        let e = parse_ads(&dense).unwrap_err();
        assert!(e.contains("values"), "{e}");
    }
}
