//! Submit descriptions for one batch of mw tasks (one cluster, one job per task), rendered from a
//! tera template a person can read, edit and reuse, plus the item file its `queue ... from` line
//! reads, and the parser of `condor_submit -terse` output.
//! This module must never know about the master, the journal or what is inside a bundle.

use crate::error::{io_err, CondorError, Result};
use crate::job::JobHandle;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The built-in template (`condor-kit/templates/submit.tera`).
pub const DEFAULT_TEMPLATE: &str = include_str!("../templates/submit.tera");

/// One batch of tasks = one cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubmitSpec {
    /// `batch_name` (letters, digits, `_ . -`); also names the files `write_submit_files` writes.
    pub batch_name: String,
    /// The static `mw-worker` binary on the submit side (shipped with `transfer_executable = true`).
    pub executable: PathBuf,
    /// The program bundle, sent to every job; it arrives in the scratch dir under its basename.
    pub program_bundle: PathBuf,
    /// Where result bundles come back to (`initialdir`); relative paths are relative to it.
    pub initialdir: PathBuf,
    /// The job event log of this batch.
    pub log: PathBuf,
    /// `request_cpus`.
    pub request_cpus: u32,
    /// `request_memory`, in MB.
    pub request_memory_mb: u64,
    /// `request_disk`, in MB.
    pub request_disk_mb: u64,
    /// A ClassAd boolean expression (one line), e.g. `(OpSys == "LINUX")`.
    pub requirements: Option<String>,
    /// `max_retries`: how often HTCondor re-runs a job that exits non-zero.
    pub max_retries: u32,
    /// One per task, in proc order (item i becomes proc i).
    pub items: Vec<SubmitItem>,
}

/// One task of the batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubmitItem {
    /// The task's index (the item's first column).
    pub task_index: u64,
    /// The task bundle on the submit side; it arrives in the scratch dir under its basename.
    pub task_bundle: PathBuf,
    /// File name (no directory) of the result bundle `mw-worker` writes; it comes back to `initialdir`.
    pub result_bundle: String,
    /// Where the job's stdout / stderr go on the submit side.
    pub output: PathBuf,
    /// The job's stderr file.
    pub error: PathBuf,
}

fn unsafe_value(field: &str, value: &str, why: &'static str) -> CondorError {
    CondorError::UnsafeValue {
        field: field.to_string(),
        value: value.to_string(),
        why,
    }
}

fn safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ':' | '%' | '~')
}

/// A path written into the submit file or the item file: only `A-Z a-z 0-9 / . _ - + @ : % ~`, so
/// it cannot break the comma/space-separated lists, the `queue` line, macros or a shell.
pub fn check_path(field: &str, path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| unsafe_value(field, &path.to_string_lossy(), "not valid UTF-8"))?;
    if s.is_empty() {
        return Err(unsafe_value(field, s, "empty"));
    }
    if !s.chars().all(safe_char) {
        return Err(unsafe_value(
            field,
            s,
            "only letters, digits and / . _ - + @ : % ~ are allowed (no spaces, commas, quotes, $ or #)",
        ));
    }
    Ok(s.to_string())
}

/// A `requirements` expression as one submit-description line: not empty, no control
/// characters, and no `\` at its end (the submit language continues such a line on the
/// next one, which would swallow the template's next command).
pub fn check_requirements(r: &str) -> Result<()> {
    if r.trim().is_empty() || r.chars().any(|c| c.is_control()) {
        return Err(unsafe_value(
            "requirements",
            r,
            "must be one non-empty line without control characters",
        ));
    }
    if r.trim_end().ends_with('\\') {
        return Err(unsafe_value(
            "requirements",
            r,
            "must not end with `\\` (it would continue onto the next line)",
        ));
    }
    Ok(())
}

/// A plain file name (no directory), with the same characters as [`check_path`].
pub fn check_name(field: &str, name: &str) -> Result<String> {
    check_path(field, Path::new(name))?;
    if name.contains('/') || name == "." || name == ".." {
        return Err(unsafe_value(field, name, "must be a file name, not a path"));
    }
    Ok(name.to_string())
}

fn basename(field: &str, path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| unsafe_value(field, &path.to_string_lossy(), "has no file name"))?;
    check_name(field, name)
}

fn validate(spec: &SubmitSpec) -> Result<()> {
    if spec.batch_name.is_empty()
        || !spec
            .batch_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(unsafe_value(
            "batch_name",
            &spec.batch_name,
            "must be non-empty letters, digits and _ . -",
        ));
    }
    if spec.request_cpus == 0 {
        return Err(unsafe_value("request_cpus", "0", "must be at least 1"));
    }
    if let Some(r) = &spec.requirements {
        check_requirements(r)?;
    }
    if spec.items.is_empty() {
        return Err(unsafe_value("items", "", "a batch needs at least one task"));
    }
    let mut results = HashSet::new();
    for (i, item) in spec.items.iter().enumerate() {
        let f = |name: &str| format!("items[{i}].{name}");
        check_path(&f("task_bundle"), &item.task_bundle)?;
        basename(&f("task_bundle"), &item.task_bundle)?;
        check_name(&f("result_bundle"), &item.result_bundle)?;
        check_path(&f("output"), &item.output)?;
        check_path(&f("error"), &item.error)?;
        if !results.insert(item.result_bundle.as_str()) {
            return Err(unsafe_value(
                &f("result_bundle"),
                &item.result_bundle,
                "used by two tasks of the batch",
            ));
        }
    }
    Ok(())
}

/// The item file: one line per task, `task_index task_path task_bundle result_bundle task_out task_err`
/// (queue variables are not named `output`/`error`: those are submit commands).
pub fn render_items(spec: &SubmitSpec) -> Result<String> {
    validate(spec)?;
    let mut out = String::new();
    for (i, item) in spec.items.iter().enumerate() {
        let f = |name: &str| format!("items[{i}].{name}");
        out.push_str(&format!(
            "{} {} {} {} {} {}\n",
            item.task_index,
            check_path(&f("task_bundle"), &item.task_bundle)?,
            basename(&f("task_bundle"), &item.task_bundle)?,
            item.result_bundle,
            check_path(&f("output"), &item.output)?,
            check_path(&f("error"), &item.error)?,
        ));
    }
    Ok(out)
}

/// One line of an item file, as [`render_items`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLine {
    /// The task's index (`task_index`).
    pub task_index: u64,
    /// The task bundle on the submit side (`task_path`).
    pub task_path: PathBuf,
    /// Its basename, as it arrives in the job's scratch directory (`task_bundle`).
    pub task_bundle: String,
    /// File name of the result bundle (`result_bundle`), relative to `initialdir`.
    pub result_bundle: String,
    /// The job's stdout on the submit side (`task_out`).
    pub output: PathBuf,
    /// The job's stderr on the submit side (`task_err`).
    pub error: PathBuf,
}

/// Parses an item file written by [`render_items`] (it is read back from disk, so it is
/// checked like any outside input): one [`ItemLine`] per non-empty line, item `i` = proc `i`.
pub fn parse_items(text: &str) -> std::result::Result<Vec<ItemLine>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {:?}", n + 1, truncate(line));
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [index, task_path, task_bundle, result_bundle, output, error] = cols[..] else {
            return Err(bad("expected 6 columns (task_index task_path task_bundle result_bundle task_out task_err)"));
        };
        let task_index = index
            .parse::<u64>()
            .map_err(|_| bad("task_index is not a number"))?;
        let path = |field: &str, v: &str| {
            check_path(field, Path::new(v))
                .map(PathBuf::from)
                .map_err(|e| bad(&e.to_string()))
        };
        let name = |field: &str, v: &str| check_name(field, v).map_err(|e| bad(&e.to_string()));
        out.push(ItemLine {
            task_index,
            task_path: path("task_path", task_path)?,
            task_bundle: name("task_bundle", task_bundle)?,
            result_bundle: name("result_bundle", result_bundle)?,
            output: path("task_out", output)?,
            error: path("task_err", error)?,
        });
    }
    Ok(out)
}

fn truncate(line: &str) -> String {
    line.chars().take(200).collect()
}

/// Renders the submit description. `items_file` is the path written in the `queue ... from` line
/// (absolute is best: `condor_submit` reads it relative to its working directory). `template`
/// is a user's tera template, or `None` for [`DEFAULT_TEMPLATE`]. Template variables:
/// batch_name, executable, program_bundle, program_bundle_name, initialdir, log, request_cpus,
/// request_memory_mb, request_disk_mb, requirements (may be absent), max_retries, items_file,
/// items (list of task_index, task_path, task_bundle, result_bundle, output, error).
pub fn render_submit(
    spec: &SubmitSpec,
    items_file: &Path,
    template: Option<&Path>,
) -> Result<String> {
    validate(spec)?;
    let (name, text) = match template {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(io_err(p))?,
        ),
        None => (
            "(built-in submit.tera)".to_string(),
            DEFAULT_TEMPLATE.to_string(),
        ),
    };
    let mut ctx = tera::Context::new();
    ctx.insert("batch_name", &spec.batch_name);
    ctx.insert("executable", &check_path("executable", &spec.executable)?);
    ctx.insert(
        "program_bundle",
        &check_path("program_bundle", &spec.program_bundle)?,
    );
    ctx.insert(
        "program_bundle_name",
        &basename("program_bundle", &spec.program_bundle)?,
    );
    ctx.insert("initialdir", &check_path("initialdir", &spec.initialdir)?);
    ctx.insert("log", &check_path("log", &spec.log)?);
    ctx.insert("request_cpus", &spec.request_cpus);
    ctx.insert("request_memory_mb", &spec.request_memory_mb);
    ctx.insert("request_disk_mb", &spec.request_disk_mb);
    if let Some(r) = &spec.requirements {
        ctx.insert("requirements", r.trim());
    }
    ctx.insert("max_retries", &spec.max_retries);
    ctx.insert("items_file", &check_path("items_file", items_file)?);
    let items: Vec<serde_json::Value> = spec
        .items
        .iter()
        .map(|it| {
            serde_json::json!({
                "task_index": it.task_index,
                "task_path": it.task_bundle.to_string_lossy(),
                "task_bundle": it.task_bundle.file_name().map(|n| n.to_string_lossy().to_string()),
                "result_bundle": it.result_bundle,
                "output": it.output.to_string_lossy(),
                "error": it.error.to_string_lossy(),
            })
        })
        .collect();
    ctx.insert("items", &items);
    tera::Tera::one_off(&text, &ctx, false).map_err(|e| CondorError::Template {
        source_name: name,
        message: error_chain(&e),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Writes `<dir>/<batch_name>.sub` and `<dir>/<batch_name>.items` and returns their paths.
/// A relative `dir` is made absolute (the submit file names the item file by its path).
pub fn write_submit_files(
    spec: &SubmitSpec,
    dir: &Path,
    template: Option<&Path>,
) -> Result<(PathBuf, PathBuf)> {
    // Absolute, because condor_submit reads the item file relative to its own working directory.
    let dir = std::path::absolute(dir).map_err(io_err(dir))?;
    let dir = dir.as_path();
    let items_path = dir.join(format!("{}.items", spec.batch_name));
    let submit_path = dir.join(format!("{}.sub", spec.batch_name));
    let items = render_items(spec)?;
    let submit = render_submit(spec, &items_path, template)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::write(&items_path, items).map_err(io_err(&items_path))?;
    std::fs::write(&submit_path, submit).map_err(io_err(&submit_path))?;
    Ok((submit_path, items_path))
}

/// Turns the one `queue ... from FILE` line of a rendered submit description into
/// `queue ... from ( ... )` holding `items` (the item file's text, as [`render_items`] writes
/// it), so the description stands alone: HTCondor needs no item file beside it. For previews
/// (`mw-condor submit-file`); `mw` itself submits with the item file.
pub fn inline_items(submit: &str, items: &str) -> Result<String> {
    let bad = |message: String| CondorError::Template {
        source_name: "(the rendered submit description)".into(),
        message,
    };
    if let Some(l) = items
        .lines()
        .find(|l| l.trim_start().starts_with(')') || l.trim_start().starts_with('#'))
    {
        return Err(bad(format!(
            "item line {l:?} would end the inline item list"
        )));
    }
    let mut out = String::with_capacity(submit.len() + items.len() + 8);
    let mut found = 0;
    for line in submit.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let lower = body.trim_start().to_ascii_lowercase();
        let from = lower
            .strip_prefix("queue")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .and_then(|_| body.to_ascii_lowercase().rfind(" from "));
        match from {
            Some(at) if !body[at + 6..].trim_start().starts_with('(') => {
                found += 1;
                out.push_str(&body[..at]);
                out.push_str(" from (\n");
                for item in items.lines().filter(|l| !l.trim().is_empty()) {
                    out.push_str(item);
                    out.push('\n');
                }
                out.push_str(")\n");
            }
            _ => out.push_str(line),
        }
    }
    if found != 1 {
        return Err(bad(format!(
            "expected one `queue ... from FILE` line, found {found}"
        )));
    }
    Ok(out)
}

/// Most jobs [`parse_terse`] expands the output of one `condor_submit` into: far above any
/// batch mw submits (HTCondor's own `MAX_JOBS_PER_SUBMISSION` defaults to 20,000), so a
/// forged `0.0 - 0.18446744073709551615` is refused instead of allocated.
pub const MAX_TERSE_JOBS: u64 = 1 << 24;

/// Parses `condor_submit -terse` output: one `C.first - C.last` line per cluster, expanded to
/// every `cluster.proc` in order (at most [`MAX_TERSE_JOBS`] in all).
pub fn parse_terse(output: &str) -> std::result::Result<Vec<JobHandle>, String> {
    let mut handles = Vec::new();
    for (n, line) in output.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (a, b) = line
            .split_once(" - ")
            .ok_or_else(|| format!("line {}: {line:?} is not \"C.P - C.P\"", n + 1))?;
        let first: JobHandle = a.parse().map_err(|e| format!("line {}: {e}", n + 1))?;
        let last: JobHandle = b.parse().map_err(|e| format!("line {}: {e}", n + 1))?;
        if first.cluster != last.cluster || last.proc < first.proc {
            return Err(format!(
                "line {}: {line:?} is not a proc range of one cluster",
                n + 1
            ));
        }
        let total = (last.proc - first.proc)
            .checked_add(1)
            .and_then(|n| n.checked_add(handles.len() as u64))
            .filter(|n| *n <= MAX_TERSE_JOBS);
        if total.is_none() {
            return Err(format!(
                "line {}: {line:?} brings the batch over {MAX_TERSE_JOBS} procs",
                n + 1
            ));
        }
        handles.extend((first.proc..=last.proc).map(|p| JobHandle::new(first.cluster, p)));
    }
    if handles.is_empty() {
        return Err("no job ids in the output".into());
    }
    Ok(handles)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn items_inline_into_the_queue_line() {
        let sub = "universe = vanilla\nqueue a, b from /x/y.items\n";
        let out = inline_items(sub, "1 p\n2 q\n").unwrap();
        assert_eq!(out, "universe = vanilla\nqueue a, b from (\n1 p\n2 q\n)\n");
        // No queue line, two of them, or an item that would end the list: refused.
        assert!(inline_items("universe = vanilla\n", "1 p\n").is_err());
        assert!(inline_items(&format!("{sub}{sub}"), "1 p\n").is_err());
        assert!(inline_items(sub, ") p\n").is_err());
    }

    #[test]
    fn terse_ranges() {
        let h = parse_terse("12.0 - 12.2\n13.0 - 13.0\n").unwrap();
        assert_eq!(
            h,
            vec![
                JobHandle::new(12, 0),
                JobHandle::new(12, 1),
                JobHandle::new(12, 2),
                JobHandle::new(13, 0)
            ]
        );
        assert!(parse_terse("Submitting job(s)...\n").is_err());
        assert!(parse_terse("").is_err());
        assert!(parse_terse("12.3 - 12.1").is_err());
    }

    #[test]
    fn items_round_trip() {
        let spec = SubmitSpec {
            batch_name: "b-1".into(),
            executable: "/w/mw-worker".into(),
            program_bundle: "/s/p.mwp".into(),
            initialdir: "/s/b".into(),
            log: "/s/b/b.log".into(),
            request_cpus: 1,
            request_memory_mb: 1,
            request_disk_mb: 1,
            requirements: None,
            max_retries: 0,
            items: (0..3)
                .map(|i| SubmitItem {
                    task_index: 10 + i,
                    task_bundle: format!("/s/b/t{i}.mwt").into(),
                    result_bundle: format!("t{i}.result"),
                    output: format!("/s/b/t{i}.out").into(),
                    error: format!("/s/b/t{i}.err").into(),
                })
                .collect(),
        };
        let items = parse_items(&render_items(&spec).unwrap()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].task_index, 12);
        assert_eq!(items[2].task_bundle, "t2.mwt");
        assert_eq!(items[2].result_bundle, "t2.result");
        assert_eq!(items[1].error, PathBuf::from("/s/b/t1.err"));
        for bad in [
            "1 /a b c d",
            "x /a a.mwt a.r /o /e",
            "1 /a ../a a.r /o /e",
            "1 /a a a.r /o$ /e",
        ] {
            assert!(parse_items(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in ["a b", "a,b", "x\"y", "$(x)", "a#b", "a|", ""] {
            let e = check_path("task_bundle", Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("task_bundle"), "{e}");
        }
        assert!(check_path("p", Path::new("/tmp/a-b_c.1+2/x.tar.gz")).is_ok());
        assert!(check_name("r", "dir/x").is_err());
    }
}
