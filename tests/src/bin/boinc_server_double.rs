//! TEST DOUBLE: stands in for BOINC's server daemons, which cannot be installed here
//! (no MySQL, Apache or BOINC server build on the test machine).
//!
//! It plays the parts of a BOINC project that `mw` touches, as reference/boinc-server.md
//! describes them (§0 observed on a real server, §1-§6 from the source):
//! - `make-project DIR`: lays out a project as `tools/make_project` does (config.xml from a
//!   real make_project config with `<host>` = this host's short name, project.xml, bin/,
//!   cgi-bin/, download/, upload/, templates/, apps/, keys/, `log_<host>/`) and installs
//!   `bin/xadd`, `bin/update_versions`, `bin/create_work` and `bin/cancel_jobs` as small
//!   scripts that call back into this program.
//! - The tools record every call (arguments, working directory, stdin) as JSON lines in
//!   `DIR/double/calls.jsonl` and store workunits as `DIR/double/wus/<name>.json`;
//!   `cancel_jobs --name W` leaves the marker `DIR/double/cancel/W`. While the file
//!   `DIR/double/hold_create_work` exists, `create_work` is recorded but holds before
//!   creating anything (lets a test act while a batch is being created); a call made with
//!   the environment variable `BOINC_DOUBLE_NO_HOLD` set (a test's own) does not hold.
//!   `create_work` checks what the real one checks (run from the project root, templates
//!   readable, `--stdin` line options, inputs staged in the download hierarchy, unique names).
//! - `serve DIR` (started by a test; stops when `DIR/double/stop` appears) is the
//!   transitioner + scheduler + validator + assimilator + file_deleter: for each workunit it
//!   runs Debian's REAL `boinc` client through `mw_tests::boinc_client` (one data directory
//!   per simulated host and round, the app's main program taken from `apps/`; what the
//!   project sent the host is deleted once its client has quit, as a real client deletes a
//!   finished workunit's files, so hundreds of results do not keep hundreds of worker
//!   copies), places each output where the upload handler puts it
//!   (`upload/<h>/<wu>_<k>_r<rand>_0`), calls `mw-validator-init`, `mw-validator-compare`
//!   and `mw-assimilator` exactly as `script_validator` and `script_assimilator` do
//!   (`../bin/NAME` + default tokens, through `/bin/sh -c`, cwd `tmp_<host>`). Without
//!   `serve` (benchmarks) workunits are only recorded.
//!
//! Real server behaviours it reproduces (reference/boinc-server.md §0.2, §0.3, §6):
//! - **One result per host** (`one_result_per_host_per_wu`): a fixed pool of hosts
//!   `host_0..host_{N-1}` (N from `DIR/double/host_count`, default 8); a reissued result needs a
//!   host that has not returned one for the workunit, else it stays unsent indefinitely.
//! - **Limits as the transitioner and validator apply them**: errors > max_error_results →
//!   mask 2; results needed but max_total_results reached → mask 8; no quorum → target raised
//!   to viable + 1, mask 4 once viable > max_success_results. Client errors still upload
//!   their output files.
//! - **An input that cannot be downloaded** (a workunit whose file is not in `download/<h>/`
//!   when a host gets it): the scheduler sends the result anyway (it never checks inputs);
//!   the real client's download gets HTTP 404, it gives up at once ("permanent HTTP error")
//!   and reports the result unrun as a client error (state downloading, exit status
//!   `ERR_RESULT_DOWNLOAD` -186, `<message>WU download error: couldn't get input files:`;
//!   BOINC's client/cs_apps.cpp `report_result_error`, reference/boinc-client.md). Such
//!   results count as errors like any other, so the workunit ends with the error mask
//!   `max_error_results` / `max_total_results` give it; no client is started for it.
//! - **A host that never answers**: when the harness fails (the client does not start or
//!   hangs), that host's results become `no_reply` (they count towards max_total_results
//!   only, as missed deadlines do) instead of being retried round after round, and the
//!   host's directory is removed: no failure leaves a worker copy behind.
//! - **Chunked `create_work --stdin`**: lines are inserted in chunks (`DIR/double/
//!   create_work_chunk` lines, default 1000); a duplicate name fails its whole chunk with
//!   MySQL's `Duplicate entry '<name>' for key 'name'` after the long SQL statement, exit 1,
//!   and leaves the earlier chunks created.
//! - **Cancel**: `cancel_jobs` sets mask 16 at once; results that hosts were computing when it
//!   ran arrive late: the error is assimilated (`--error 16`) and files deleted first, then
//!   the late canonical result is assimilated again with its upload already deleted.
//! - **The assimilator daemon stops** on a nonzero exit of the script (`handler error …
//!   exiting`): the double then assimilates nothing more (marker `DIR/double/
//!   assimilator_stopped`), as the real daemon crashes on the same workunit after every
//!   restart.
//! - **The file deleter** removes upload files and every input without `<no_delete/>` in its
//!   `<file_info>` (with its `.md5`) right after assimilation.
//!
//! Test hook (a hostile volunteer): a file `DIR/double/forge/<suffix>` is uploaded once, in
//! place of what the client produced, for a workunit whose name ends in `<suffix>`; the
//! upload handler names it as BOINC names every upload.
#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use mw_tests::boinc_client::{DataDir, Job};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TOOLS: [&str; 4] = ["xadd", "update_versions", "create_work", "cancel_jobs"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boinc_server_double: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<i32> {
    match args.first().map(String::as_str) {
        Some("make-project") if args.len() == 2 => make_project(Path::new(&args[1])).map(|_| 0),
        Some("tool") if args.len() >= 2 => {
            let cwd = std::env::current_dir()?;
            tool(&args[1], &args[2..], &cwd)
        }
        Some("serve") if args.len() == 2 => serve(&Path::new(&args[1]).canonicalize()?).map(|_| 0),
        _ => bail!("usage: boinc_server_double make-project DIR | serve DIR | tool NAME ARGS…"),
    }
}

fn short_host() -> String {
    let out = Command::new("hostname").arg("-s").output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "localhost".into(),
    }
}

fn safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

/// BOINC's `filename_hash` / `dir_hier_path` sub-directory (computed independently of mw).
fn hier(name: &str, fanout: u64) -> String {
    let d = Md5::digest(name.as_bytes());
    let hexs: String = d.iter().map(|b| format!("{b:02x}")).collect();
    let n = u64::from_str_radix(&hexs[1..8], 16).unwrap();
    format!("{:x}", n % fanout)
}

fn xml_value(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let a = text.find(&open)? + open.len();
    let b = text[a..].find(&format!("</{tag}>"))? + a;
    Some(text[a..b].trim().to_string())
}

fn set_xml_value(text: &str, tag: &str, value: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) => format!("{}{open}{value}{}", &text[..a], &text[b..]),
        _ => text.to_string(),
    }
}

fn make_project(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let host = short_host();
    for d in [
        "bin",
        "cgi-bin",
        "templates",
        "upload",
        "download",
        "apps",
        "keys",
        "html/user",
        "html/inc",
        "double/wus",
        &format!("log_{host}"),
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let fixture = mw_tests::workspace_root().join("tests/boinc-double/config.xml");
    let mut cfg = std::fs::read_to_string(&fixture)
        .with_context(|| format!("reading {}", fixture.display()))?;
    let p = dir.display().to_string();
    for (tag, v) in [
        ("upload_dir", format!("{p}/upload")),
        ("download_dir", format!("{p}/download")),
        ("app_dir", format!("{p}/apps")),
        ("log_dir", format!("{p}/log_{host}")),
        ("key_dir", format!("{p}/keys/")),
        ("host", host.clone()),
    ] {
        cfg = set_xml_value(&cfg, tag, &v);
    }
    std::fs::write(dir.join("config.xml"), cfg)?;
    std::fs::write(
        dir.join("project.xml"),
        "<boinc>\n    <platform>\n        <name>x86_64-pc-linux-gnu</name>\n        \
         <user_friendly_name>Linux running on an AMD x86_64 or Intel EM64T CPU</user_friendly_name>\n    \
         </platform>\n</boinc>\n",
    )?;
    let me = std::env::current_exe()?;
    let me = me.display().to_string();
    if me.contains('\'') {
        bail!("path {me} contains a quote");
    }
    for t in TOOLS {
        let path = dir.join("bin").join(t);
        std::fs::write(
            &path,
            format!("#!/bin/sh\n# TEST DOUBLE of BOINC's {t}\nexec '{me}' tool {t} \"$@\"\n"),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    println!("project laid out in {}", dir.display());
    Ok(())
}

fn record(project: &Path, value: serde_json::Value) -> Result<()> {
    let mut line = serde_json::to_string(&value)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(project.join("double/calls.jsonl"))?;
    f.write_all(line.as_bytes())?;
    Ok(())
}

/// A stored workunit.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wu {
    id: u64,
    name: String,
    appname: String,
    wu_template: String,
    result_template: String,
    inputs: Vec<String>,
    no_delete: Vec<bool>,
    min_quorum: u32,
    target_nresults: u32,
    max_error_results: u32,
    max_total_results: u32,
    max_success_results: u32,
    delay_bound: u64,
    #[serde(default)]
    cancelled: bool,
    #[serde(default)]
    results: Vec<ResultRec>,
    #[serde(default)]
    error_mask: u64,
    /// "" while in progress, then "assimilated" or "error".
    #[serde(default)]
    done: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResultRec {
    name: String,
    host: String,
    /// "success" or "client_error".
    outcome: String,
    client_state: String,
    exit_status: String,
    upload: Option<PathBuf>,
    /// "", "valid" or "invalid".
    validate: String,
}

fn wu_path(project: &Path, name: &str) -> PathBuf {
    project.join("double/wus").join(format!("{name}.json"))
}

/// Written by `cancel_jobs --name WU`; `serve` sets the workunit's CANCELLED bit.
fn cancel_marker(project: &Path, name: &str) -> PathBuf {
    project.join("double/cancel").join(name)
}

fn save(project: &Path, wu: &Wu) -> Result<()> {
    let path = wu_path(project, &wu.name);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(wu)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn tool(name: &str, args: &[String], cwd: &Path) -> Result<i32> {
    let mut stdin = String::new();
    if name == "create_work" && args.iter().any(|a| a == "--stdin" || a == "-stdin") {
        std::io::stdin().read_to_string(&mut stdin)?;
    }
    // Like BOINC's tools: the project is the current directory (config.xml + cgi-bin/).
    if !cwd.join("config.xml").is_file() || !cwd.join("cgi-bin").is_dir() {
        eprintln!("{name}: can't find project directory (run me from the project root)");
        return Ok(1);
    }
    let project = cwd.canonicalize()?;
    record(
        &project,
        serde_json::json!({"tool": name, "args": args, "cwd": project, "stdin": stdin}),
    )?;
    match name {
        "xadd" => {
            println!("added app: mw (double)");
            Ok(0)
        }
        "update_versions" => {
            for a in args {
                if a != "--noconfirm" && a != "--verbose" {
                    println!("unknown arg {a}");
                    return Ok(0); // the real one exits 0 here too
                }
            }
            println!();
            println!("    App version added successfully; ID=1");
            Ok(0)
        }
        "cancel_jobs" => {
            if args.len() != 2 || args[0] != "--name" {
                eprintln!("Usage: cancel_jobs min-ID max-ID\nor cancel_jobs --name wuname");
                return Ok(1);
            }
            if !safe(&args[1]) || args[1].contains('/') || !wu_path(&project, &args[1]).is_file() {
                eprintln!("No workunit named '{}'", args[1]);
                return Ok(1);
            }
            // A marker, not a rewrite of the workunit file: `serve` may be saving that file
            // at the same moment (the real tool updates one database column).
            std::fs::create_dir_all(project.join("double/cancel"))?;
            std::fs::write(cancel_marker(&project, &args[1]), "")?;
            Ok(0)
        }
        "create_work" => {
            // Test hook: while `double/hold_create_work` exists, create_work has been called
            // (and recorded) but has not created anything yet.
            let exempt = std::env::var_os("BOINC_DOUBLE_NO_HOLD").is_some();
            while !exempt && project.join("double/hold_create_work").exists() {
                if project.join("double/abort_create_work").exists() {
                    record(&project, serde_json::json!({"tool": "create_work_aborted"}))?;
                    eprintln!("create_work: aborted by the test before creating anything");
                    return Ok(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            create_work(&project, args, &stdin)
        }
        other => bail!("unknown tool {other}"),
    }
}

fn template_values(text: &str) -> Result<[u64; 6]> {
    let mut out = [0u64; 6];
    for (i, tag) in [
        "min_quorum",
        "target_nresults",
        "max_error_results",
        "max_total_results",
        "max_success_results",
        "delay_bound",
    ]
    .iter()
    .enumerate()
    {
        out[i] = xml_value(text, tag)
            .with_context(|| format!("template has no <{tag}> (mw puts every value in it)"))?
            .parse()
            .with_context(|| format!("<{tag}> is not a number"))?;
    }
    Ok(out)
}

fn create_work(project: &Path, args: &[String], stdin: &str) -> Result<i32> {
    let mut appname = None;
    let mut wu_template = None;
    let mut result_template = None;
    let mut use_stdin = false;
    let mut positional = Vec::new();
    let mut wu_name = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].trim_start_matches('-');
        let takes = |i: usize| -> Result<String> {
            args.get(i + 1)
                .cloned()
                .with_context(|| format!("create_work: {} needs a value", args[i]))
        };
        match a {
            "appname" => appname = Some(takes(i)?),
            "wu_template" => wu_template = Some(takes(i)?),
            "result_template" => result_template = Some(takes(i)?),
            "wu_name" => wu_name = Some(takes(i)?),
            "batch"
            | "priority"
            | "command_line"
            | "min_quorum"
            | "target_nresults"
            | "max_error_results"
            | "max_total_results"
            | "max_success_results"
            | "delay_bound"
            | "rsc_fpops_est"
            | "rsc_fpops_bound"
            | "rsc_memory_bound"
            | "rsc_disk_bound" => {
                takes(i)?;
            }
            "stdin" => {
                use_stdin = true;
                i += 1;
                continue;
            }
            _ if args[i].starts_with('-') => {
                eprintln!("create_work: bad argument {}", args[i]);
                return Ok(1);
            }
            _ => {
                positional.push(args[i].clone());
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let Some(app) = appname else {
        eprintln!("create_work: missing --appname");
        return Ok(1);
    };
    let wu_t = wu_template.unwrap_or(format!("templates/{app}_in"));
    let res_t = result_template.unwrap_or(format!("templates/{app}_out"));
    if Path::new(&res_t).is_absolute() || res_t.len() > 63 {
        eprintln!("create_work: result template {res_t} must be relative, at most 63 characters");
        return Ok(1);
    }
    let Ok(res_text) = std::fs::read_to_string(project.join(&res_t)) else {
        eprintln!("create_work: Can't read result template {res_t}");
        return Ok(1);
    };
    if !res_text.contains("<max_nbytes>") {
        eprintln!("create_work: result template without <max_nbytes>");
        return Ok(1);
    }
    let cfg = std::fs::read_to_string(project.join("config.xml"))?;
    let fanout: u64 = xml_value(&cfg, "uldl_dir_fanout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut jobs: Vec<(Option<String>, Option<String>, Vec<String>)> = Vec::new();
    if use_stdin {
        for line in stdin.lines() {
            if line.len() >= 4096 {
                eprintln!("create_work: fgets() buffer was too small");
                return Ok(1);
            }
            let toks: Vec<&str> = line.split_whitespace().collect();
            let (mut name, mut tmpl, mut files) = (None, None, Vec::new());
            let mut k = 0;
            while k < toks.len() {
                match toks[k] {
                    "--wu_name" | "-wu_name" => name = toks.get(k + 1).map(|s| s.to_string()),
                    "--wu_template" | "-wu_template" => {
                        tmpl = toks.get(k + 1).map(|s| s.to_string())
                    }
                    "--command_line" | "--result_template" | "--priority" | "--target_host"
                    | "--target_user" => {}
                    t if t.starts_with('-') => {
                        eprintln!("create_work: bad stdin argument {t}");
                        return Ok(1);
                    }
                    t => {
                        files.push(t.to_string());
                        k += 1;
                        continue;
                    }
                }
                k += 2;
            }
            jobs.push((name, tmpl, files));
        }
    } else {
        jobs.push((wu_name.clone(), None, positional));
    }
    let next_id = std::fs::read_dir(project.join("double/wus"))?.count() as u64 + 1;
    let mut wus = Vec::new();
    for (idx, (name, tmpl, files)) in jobs.into_iter().enumerate() {
        let name = name.unwrap_or_else(|| format!("{app}_{}_{idx}", std::process::id()));
        let tmpl = tmpl.unwrap_or(wu_t.clone());
        if !safe(&name) || name.contains('/') || name.len() > 191 {
            eprintln!("create_work: bad workunit name {name:?}");
            return Ok(1);
        }
        let Ok(t_text) = std::fs::read_to_string(project.join(&tmpl)) else {
            eprintln!("create_work: Can't read WU template {tmpl}");
            return Ok(1);
        };
        let v = match template_values(&t_text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("create_work: {e}");
                return Ok(1);
            }
        };
        let infos: Vec<&str> = t_text.split("<file_info>").skip(1).collect();
        if infos.len() != files.len() {
            eprintln!(
                "create_work: {} input files given, template {tmpl} has {}",
                files.len(),
                infos.len()
            );
            return Ok(1);
        }
        for f in &files {
            let staged = project
                .join("download")
                .join(if fanout > 0 {
                    hier(f, fanout)
                } else {
                    String::new()
                })
                .join(f);
            if !staged.is_file() {
                let flat = project.join("download").join(f);
                if flat.is_file() {
                    // Like the real one, it makes the hierarchy's sub-directory as needed.
                    if let Some(d) = staged.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    std::fs::rename(&flat, &staged)?;
                } else {
                    eprintln!(
                        "create_work: input file {f} is not staged ({})",
                        staged.display()
                    );
                    return Ok(1);
                }
            }
        }
        wus.push(Wu {
            id: next_id + idx as u64,
            name,
            appname: app.clone(),
            wu_template: tmpl,
            result_template: res_t.clone(),
            no_delete: infos
                .iter()
                .map(|i| {
                    i.split("</file_info>")
                        .next()
                        .unwrap_or("")
                        .contains("<no_delete/>")
                })
                .collect(),
            inputs: files,
            min_quorum: v[0] as u32,
            target_nresults: v[1] as u32,
            max_error_results: v[2] as u32,
            max_total_results: v[3] as u32,
            max_success_results: v[4] as u32,
            delay_bound: v[5],
            cancelled: false,
            results: Vec::new(),
            error_mask: 0,
            done: String::new(),
        });
    }
    // Bulk INSERT in chunks: a duplicate name fails its whole chunk; earlier chunks stay.
    let chunk: usize = std::fs::read_to_string(project.join("double/create_work_chunk"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1000);
    let mut seen = std::collections::HashSet::new();
    for part in wus.chunks(chunk) {
        let dup = part
            .iter()
            .find(|w| wu_path(project, &w.name).exists() || !seen.insert(w.name.clone()));
        if let Some(d) = dup {
            let sql: Vec<String> = part
                .iter()
                .map(|w| format!("({},'{}',...)", w.id, w.name))
                .collect();
            eprintln!(
                "insert into workunit (id, create_time, appid, name, xml_doc, ...) values {}",
                sql.join(",")
            );
            eprintln!("Duplicate entry '{}' for key 'name'", d.name);
            return Ok(1);
        }
        for w in part {
            save(project, w)?;
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------
// The daemons.

struct Project {
    root: PathBuf,
    host: String,
    fanout: u64,
}

fn serve(root: &Path) -> Result<()> {
    let cfg = std::fs::read_to_string(root.join("config.xml"))?;
    let p = Project {
        root: root.to_path_buf(),
        host: xml_value(&cfg, "host").unwrap_or_default(),
        fanout: xml_value(&cfg, "uldl_dir_fanout")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    std::fs::create_dir_all(root.join(format!("tmp_{}", p.host)))?;
    let mut round = 0u64;
    loop {
        if root.join("double/stop").exists() {
            return Ok(());
        }
        let mut active = Vec::new();
        for e in std::fs::read_dir(root.join("double/wus"))?.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(wu) = serde_json::from_slice::<Wu>(&bytes) else {
                continue;
            };
            if wu.done.is_empty() {
                let mut wu = wu;
                wu.cancelled |= cancel_marker(root, &wu.name).exists();
                active.push(wu);
            }
        }
        if active.is_empty() {
            // Daemon idle interval (BOINC's daemons sleep 5-10 s; faster here).
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        active.sort_by_key(|w| w.id);
        round += 1;
        if let Err(e) = step(&p, &mut active, round) {
            eprintln!("boinc_server_double: round {round}: {e:#}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn needed(wu: &Wu) -> u32 {
    let success = wu
        .results
        .iter()
        .filter(|r| r.outcome == "success" && r.validate != "invalid")
        .count() as u32;
    wu.target_nresults.saturating_sub(success)
}

/// The pool of hosts (`one_result_per_host_per_wu`): `DIR/double/host_count`, default 8.
fn host_count(root: &Path) -> usize {
    std::fs::read_to_string(root.join("double/host_count"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(8)
}

/// One transitioner/scheduler/validator/assimilator pass over the active workunits.
fn step(p: &Project, active: &mut [Wu], round: u64) -> Result<()> {
    // Transitioner: cancelled and impossible workunits become errors.
    for wu in active.iter_mut() {
        if wu.cancelled {
            wu.error_mask |= 16;
        }
        // As the transitioner counts them: client errors, not results that got no reply
        // (those count only towards max_total_results).
        let errors = wu
            .results
            .iter()
            .filter(|r| r.outcome == "client_error")
            .count() as u32;
        if errors > wu.max_error_results {
            wu.error_mask |= 2;
        }
        if needed(wu) > 0 && wu.results.len() as u32 >= wu.max_total_results {
            wu.error_mask |= 8;
        }
    }
    // Scheduler: each result still needed goes to a host that has none of the workunit yet.
    let hosts = host_count(&p.root);
    let mut per_host: Vec<Vec<Wu>> = vec![Vec::new(); hosts];
    for w in active.iter().filter(|w| w.error_mask == 0) {
        let mut n = needed(w).min(w.max_total_results.saturating_sub(w.results.len() as u32));
        for (h, list) in per_host.iter_mut().enumerate() {
            if n == 0 {
                break;
            }
            let name = format!("host_{h}");
            if w.results.iter().all(|r| r.host != name) {
                list.push(w.clone());
                n -= 1;
            }
        }
    }
    let mut handles = Vec::new();
    for (h, names) in per_host.into_iter().enumerate() {
        if names.is_empty() {
            continue;
        }
        let host = format!("host_{h}");
        let dir = format!("r{round}_{host}");
        let root = p.root.clone();
        handles.push(std::thread::spawn(move || {
            run_host(&root, &host, &dir, &names)
        }));
    }
    let mut outcomes: Vec<(String, ResultRec)> = Vec::new();
    let idle = handles.is_empty();
    for h in handles {
        match h.join() {
            Ok(v) => outcomes.extend(v),
            Err(_) => eprintln!("boinc_server_double: client host thread panicked"),
        }
    }
    for (wu_name, mut rec) in outcomes {
        let Some(wu) = active.iter_mut().find(|w| w.name == wu_name) else {
            continue;
        };
        // Upload handler: the output goes to upload/<h>/<wu>_<k>_r<random>_0, even after a
        // client error (the client uploads outputs whatever the exit status).
        let k = wu.results.len();
        let random = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos() % 2_000_000_000;
        let phys = format!("{}_{k}_r{random}_0", wu.name);
        if let Some(forged) = take_forgery(&p.root, &wu.name) {
            // A hostile volunteer uploads whatever it likes under the name BOINC gave it.
            rec.upload = Some(forged);
        }
        if let Some(src) = rec.upload.take() {
            if src.is_file() {
                let dir = p.root.join("upload").join(if p.fanout > 0 {
                    hier(&phys, p.fanout)
                } else {
                    String::new()
                });
                std::fs::create_dir_all(&dir)?;
                std::fs::copy(&src, dir.join(&phys))?;
                rec.upload = Some(dir.join(&phys));
            }
        }
        rec.name = format!("{}_{k}", wu.name);
        wu.results.push(rec);
    }
    for wu in active.iter_mut() {
        // bin/cancel_jobs may have run while the hosts computed: the real tool set mask 16 at
        // once; what the hosts return now are late results.
        let late = !wu.cancelled && cancel_marker(&p.root, &wu.name).exists();
        if late {
            wu.cancelled = true;
            wu.error_mask |= 16;
        }
        validate_and_assimilate(p, wu, late)?;
        save(&p.root, wu)?;
    }
    if idle {
        // Nothing could be sent (no eligible host): the scheduler waits for the next request.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The test hook of a hostile volunteer: a file `double/forge/<suffix>` is uploaded (once)
/// instead of what the client produced, for the first result of a workunit whose name ends
/// in `<suffix>`. Returns where the forged upload now is (moved out of the hook directory).
fn take_forgery(root: &Path, wu: &str) -> Option<PathBuf> {
    let dir = root.join("double/forge");
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let suffix = e.file_name().to_string_lossy().into_owned();
        if wu.ends_with(&suffix) {
            let taken = root.join("double").join(format!("forged-{wu}"));
            std::fs::rename(e.path(), &taken).ok()?;
            return Some(taken);
        }
    }
    None
}

/// The real client's exit status for a result whose input files could not be downloaded
/// (`ERR_RESULT_DOWNLOAD`, lib/error_numbers.h).
const ERR_RESULT_DOWNLOAD: &str = "-186";

/// Where input file `f` is served from: `download/<h>/<f>`.
fn download_path(root: &Path, fanout: u64, f: &str) -> PathBuf {
    root.join("download")
        .join(if fanout > 0 {
            hier(f, fanout)
        } else {
            String::new()
        })
        .join(f)
}

/// Runs one simulated host: a fresh client data directory holding `wus`, the real client.
/// Always returns one result per workunit, and never leaves the host's copy of the worker
/// behind (each copy is tens of MB):
/// - a workunit with an input missing from the download hierarchy is not run: the real
///   client's download gets HTTP 404 ("Giving up on download of …: permanent HTTP error"),
///   and it reports the result as a client error (`WU download error: couldn't get input
///   files`, exit status `ERR_RESULT_DOWNLOAD`) without running anything;
/// - when the harness itself fails (the client does not start or hangs), the host's
///   results are `no_reply`, as results whose host vanished are after their deadline, and
///   the whole host directory is removed.
fn run_host(root: &Path, host: &str, dir: &str, wus: &[Wu]) -> Vec<(String, ResultRec)> {
    let cfg = std::fs::read_to_string(root.join("config.xml")).unwrap_or_default();
    let fanout: u64 = xml_value(&cfg, "uldl_dir_fanout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut out = Vec::new();
    let mut runnable = Vec::new();
    for w in wus {
        let missing: Vec<&String> = w
            .inputs
            .iter()
            .filter(|f| !download_path(root, fanout, f).is_file())
            .collect();
        if missing.is_empty() && w.inputs.len() == 2 {
            runnable.push(w);
            continue;
        }
        let errors: String = missing
            .iter()
            .map(|f| {
                format!(
                    "<file_xfer_error>\n  <file_name>{f}</file_name>\n  \
                     <error_code>-224 (permanent HTTP error)</error_code>\n</file_xfer_error>\n"
                )
            })
            .collect();
        let stderr = format!(
            "<message>\nWU download error: couldn't get input files:\n{errors}</message>\n"
        );
        let _ = record(
            root,
            serde_json::json!({"tool": "client", "wu": w.name, "host": host,
                "state": "downloading", "exit_status": ERR_RESULT_DOWNLOAD,
                "download_error": missing, "stderr": stderr}),
        );
        out.push((
            w.name.clone(),
            ResultRec {
                name: String::new(),
                host: host.to_string(),
                outcome: "client_error".into(),
                client_state: "downloading".into(),
                exit_status: ERR_RESULT_DOWNLOAD.into(),
                upload: None,
                validate: String::new(),
            },
        ));
    }
    if runnable.is_empty() {
        return out;
    }
    let dir = root.join("double/hosts").join(dir);
    // Removes the host's directory unless the client finished normally (then only what the
    // project sent it was removed, and its results wait there to be uploaded), even if the
    // harness panics.
    let mut guard = RemoveOnDrop(Some(dir.clone()));
    match run_client(root, host, &dir, &runnable, fanout) {
        Ok(v) => {
            guard.0 = None;
            out.extend(v)
        }
        Err(e) => {
            eprintln!("boinc_server_double: client host {host} failed: {e:#}");
            drop(guard);
            for w in runnable {
                let _ = record(
                    root,
                    serde_json::json!({"tool": "client", "wu": w.name, "host": host,
                        "state": "no_reply", "harness_error": format!("{e:#}")}),
                );
                out.push((
                    w.name.clone(),
                    ResultRec {
                        name: String::new(),
                        host: host.to_string(),
                        outcome: "no_reply".into(),
                        client_state: String::new(),
                        exit_status: String::new(),
                        upload: None,
                        validate: String::new(),
                    },
                ));
            }
        }
    }
    out
}

/// A directory removed (with its contents) when dropped, unless taken out.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The real client on `wus` (every input present) in the fresh data directory `dir`.
fn run_client(
    root: &Path,
    host: &str,
    dir: &Path,
    wus: &[&Wu],
    fanout: u64,
) -> Result<Vec<(String, ResultRec)>> {
    let worker = app_main_program(root, &wus[0].appname)?;
    let jobs: Vec<Job> = wus
        .iter()
        .map(|w| Job {
            name: w.name.clone(),
            program_bundle: download_path(root, fanout, &w.inputs[0]),
            task_bundle: download_path(root, fanout, &w.inputs[1]),
        })
        .collect();
    let data = DataDir::create(dir, &worker, &jobs, &format!("auth{host}"))?;
    let mut client = data.start()?;
    let names: Vec<String> = jobs.iter().map(|j| j.result_name()).collect();
    let waited = client.wait_for(
        "the host's tasks to finish",
        Duration::from_secs(180),
        |t| {
            names
                .iter()
                .all(|n| t.iter().any(|t| t.name() == n && t.is_finished()))
        },
    );
    client.quit(Duration::from_secs(30))?;
    let tasks = waited?;
    data.remove_inputs()?;
    let mut out = Vec::new();
    for j in &jobs {
        let t = tasks
            .iter()
            .find(|t| t.name() == j.result_name())
            .context("task vanished")?;
        let ok = t.state() == "uploaded" && t.get("exit_status") == Some("0");
        let rec = ResultRec {
            name: String::new(),
            host: host.to_string(),
            outcome: if ok { "success" } else { "client_error" }.into(),
            client_state: t.state().to_string(),
            exit_status: t.get("exit_status").unwrap_or("").to_string(),
            upload: Some(data.result_file(&j.name)),
            validate: String::new(),
        };
        record(
            root,
            serde_json::json!({"tool": "client", "wu": j.name, "host": host,
                "state": rec.client_state, "exit_status": rec.exit_status,
                "stderr": data.stderr_txt(&j.result_name())}),
        )?;
        out.push((j.name.clone(), rec));
    }
    Ok(out)
}

/// The app version's main program as installed under `apps/<app>/<ver>/<platform>/`.
fn app_main_program(root: &Path, app: &str) -> Result<PathBuf> {
    let adir = root.join("apps").join(app);
    for v in std::fs::read_dir(&adir)
        .with_context(|| format!("{}", adir.display()))?
        .flatten()
    {
        let pdir = v.path().join("x86_64-pc-linux-gnu");
        if let Ok(rd) = std::fs::read_dir(&pdir) {
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n != "version.xml" && !n.ends_with(".sig") {
                    return Ok(f.path());
                }
            }
        }
    }
    bail!("no app version installed under {}", adir.display())
}

/// `system()` as script_validator / script_assimilator do it, from `tmp_<host>`.
fn script(p: &Project, daemon: &str, cmd: &str) -> Result<i32> {
    if !cmd.split(' ').all(|w| safe(w) || w == "--error") {
        bail!("refusing a command that is not shell-safe: {cmd:?}");
    }
    let path = format!(
        "{}:{}",
        p.root.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(p.root.join(format!("tmp_{}", p.host)))
        .env("PATH", path)
        .status()?;
    let code = status.code().unwrap_or(-1);
    record(
        &p.root,
        serde_json::json!({"tool": daemon, "cmd": cmd, "exit": code}),
    )?;
    Ok(code)
}

/// Marker of a stopped assimilator daemon (it exited on a script's nonzero exit).
fn assimilator_stopped(p: &Project) -> PathBuf {
    p.root.join("double/assimilator_stopped")
}

/// Runs the assimilator script as `script_assimilator` does; a nonzero exit stops the daemon.
fn assimilate(p: &Project, cmd: &str) -> Result<bool> {
    if assimilator_stopped(p).exists() {
        return Ok(false);
    }
    let code = script(p, "script_assimilator", cmd)?;
    if code != 0 {
        std::fs::write(
            assimilator_stopped(p),
            format!("handler error {code} on `{cmd}`: exiting\n"),
        )?;
    }
    Ok(code == 0)
}

fn validate_and_assimilate(p: &Project, wu: &mut Wu, late: bool) -> Result<()> {
    if late {
        // The error (mask 16) is assimilated and the files deleted first; then the late
        // results are validated, one becomes canonical and is assimilated again — with its
        // upload already removed by the file deleter (reference §0.3).
        let cmd = format!(
            "../bin/mw-assimilator --error {} {} {} 0",
            wu.error_mask, wu.name, wu.id
        );
        if !assimilate(p, &cmd)? {
            return Ok(());
        }
        wu.done = "error".into();
        delete_files(p, wu);
        if let Some(r) = wu.results.iter_mut().find(|r| r.outcome == "success") {
            r.validate = "valid".into();
            let path = r.upload.clone().unwrap_or_default();
            assimilate(
                p,
                &format!("../bin/mw-assimilator {} {}", wu.id, path.display()),
            )?;
        }
        return Ok(());
    }
    if wu.error_mask == 0 {
        // Validator: init each new successful result, then look for a canonical one.
        for r in wu.results.iter_mut() {
            if r.outcome == "success" && r.validate.is_empty() {
                let path = r
                    .upload
                    .clone()
                    .context("successful result without output")?;
                let code = script(
                    p,
                    "script_validator",
                    &format!("../bin/mw-validator-init {}", path.display()),
                )?;
                r.validate = if code == 0 { "init_ok" } else { "invalid" }.into();
            }
        }
        let viable: Vec<usize> = (0..wu.results.len())
            .filter(|&i| wu.results[i].outcome == "success" && wu.results[i].validate != "invalid")
            .collect();
        if (viable.len() as u32) < wu.min_quorum {
            if needed(wu) == 0 {
                wu.target_nresults += 1;
            }
            return Ok(());
        }
        let mut canonical = None;
        if wu.min_quorum <= 1 {
            canonical = viable.first().copied();
        } else {
            let want = wu.min_quorum / 2 + 1;
            'outer: for &i in &viable {
                let mut matches = 1;
                for &j in &viable {
                    if i == j {
                        continue;
                    }
                    let a = wu.results[i].upload.clone().unwrap_or_default();
                    let b = wu.results[j].upload.clone().unwrap_or_default();
                    let code = script(
                        p,
                        "script_validator",
                        &format!(
                            "../bin/mw-validator-compare {} {}",
                            a.display(),
                            b.display()
                        ),
                    )?;
                    if code == 0 {
                        matches += 1;
                    }
                    if matches >= want {
                        canonical = Some(i);
                        break 'outer;
                    }
                }
            }
        }
        match canonical {
            None => {
                if viable.len() as u32 > wu.max_success_results {
                    wu.error_mask |= 4;
                } else {
                    wu.target_nresults = viable.len() as u32 + 1;
                    return Ok(());
                }
            }
            Some(c) => {
                for &i in &viable {
                    wu.results[i].validate = "valid".into();
                }
                let path = wu.results[c].upload.clone().unwrap_or_default();
                let cmd = format!("../bin/mw-assimilator {} {}", wu.id, path.display());
                if !assimilate(p, &cmd)? {
                    // The real assimilator daemon exits; the workunit stays READY.
                    return Ok(());
                }
                wu.done = "assimilated".into();
                delete_files(p, wu);
                return Ok(());
            }
        }
    }
    if wu.error_mask != 0 {
        let cmd = format!(
            "../bin/mw-assimilator --error {} {} {} 0",
            wu.error_mask, wu.name, wu.id
        );
        if assimilate(p, &cmd)? {
            wu.done = "error".into();
            delete_files(p, wu);
        }
    }
    Ok(())
}

/// file_deleter: upload files and inputs not marked `<no_delete/>`.
fn delete_files(p: &Project, wu: &Wu) {
    for r in &wu.results {
        if let Some(u) = &r.upload {
            if u.starts_with(p.root.join("upload")) {
                let _ = std::fs::remove_file(u);
            }
        }
    }
    for (i, f) in wu.inputs.iter().enumerate() {
        if !wu.no_delete.get(i).copied().unwrap_or(false) {
            let dir = p.root.join("download").join(if p.fanout > 0 {
                hier(f, p.fanout)
            } else {
                String::new()
            });
            let _ = std::fs::remove_file(dir.join(f));
            let _ = std::fs::remove_file(dir.join(format!("{f}.md5")));
        }
    }
}
