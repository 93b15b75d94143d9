//! `mw-mpi-driver`: a small master program over the `mw` library for the MPI end-to-end tests
//! and `bench/mpi.sh` (not a test double: it drives the real `Mpi` and `Multicore` interfaces).
//!
//! ```text
//! mpirun -n 3 mw-mpi-driver PROGRAM NTASKS [--timeout SECS] [--cancel] [--quiet]
//! mw-mpi-driver PROGRAM NTASKS --multicore [SLOTS]     # same job on local cores (no MPI)
//! ```
//!
//! Task `i` gets the input `{"i": i}`. Rank 0 prints one JSON line per finished task
//! (`{"task":N,"ok":true,"value":...}`, values longer than 200 bytes are replaced by
//! `"value_len"`; or `{"task":N,"ok":false,"kind":"failed|cancelled|interface|...","error":"..."}`)
//! and a last line `{"summary":{...,"tasks_per_s":X}}`. `--cancel` cancels each task once it
//! runs. Worker ranks print nothing. It knows nothing of job files or the CLI.

use anyhow::{bail, Context, Result};
use mw::{Interface, Master, MasterOptions, MwError, Program, TaskSpec, TaskState};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    program: String,
    tasks: u64,
    timeout: Option<Duration>,
    cancel: bool,
    quiet: bool,
    multicore: Option<usize>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: mw-mpi-driver PROGRAM NTASKS [--timeout SECS] [--cancel] [--quiet] [--multicore [SLOTS]]";
    let program = it.next().context(usage)?;
    let tasks = it
        .next()
        .context(usage)?
        .parse()
        .context("NTASKS must be a whole number")?;
    let mut a = Args {
        program,
        tasks,
        timeout: None,
        cancel: false,
        quiet: false,
        multicore: None,
    };
    let rest: Vec<String> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        match rest[i].as_str() {
            "--timeout" => {
                i += 1;
                let secs: f64 = rest
                    .get(i)
                    .context("--timeout needs SECS")?
                    .parse()
                    .context("--timeout SECS must be a number")?;
                a.timeout = Some(Duration::from_secs_f64(secs));
            }
            "--cancel" => a.cancel = true,
            "--quiet" => a.quiet = true,
            "--multicore" => {
                let slots = rest.get(i + 1).and_then(|s| s.parse().ok());
                if slots.is_some() {
                    i += 1;
                }
                a.multicore = Some(slots.unwrap_or(0));
            }
            other => bail!("unknown argument {other:?}\n{usage}"),
        }
        i += 1;
    }
    Ok(a)
}

fn kind(e: &MwError) -> &'static str {
    match e {
        MwError::TaskFailed { .. } => "failed",
        MwError::Cancelled(_) => "cancelled",
        MwError::Interface { .. } => "interface",
        MwError::BadOutput { .. } => "bad_output",
        _ => "other",
    }
}

fn main() -> Result<()> {
    mw::mpi::prepare_process();
    let args = parse_args()?;
    let interface: Arc<dyn Interface> = match args.multicore {
        Some(0) => Arc::new(mw::Multicore::default()),
        Some(n) => Arc::new(mw::Multicore::new(n)),
        None => match mw::mpi::Mpi::init()? {
            mw::mpi::MpiRole::Master(m) => Arc::new(m),
            mw::mpi::MpiRole::Worker => return Ok(()),
        },
    };
    let name = interface.name();
    let master = Master::with_options(interface, MasterOptions::default())?;
    let program = Arc::new(Program::new(&args.program)?);
    let specs = (0..args.tasks)
        .map(|i| {
            let mut s = TaskSpec::new(program.clone(), json!({ "i": i }));
            s.timeout = args.timeout;
            s
        })
        .collect();
    let t0 = Instant::now();
    let ids = master.submit_many(specs)?;
    if args.cancel {
        for id in &ids {
            // Wait until the scheduler handed the task to a worker, then cancel it.
            while master.task_state(*id) == Some(TaskState::Queued) {
                std::thread::sleep(Duration::from_millis(5));
            }
            master.cancel(*id)?;
        }
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for _ in 0..args.tasks {
        let line = match master.get_output(None) {
            Ok(out) => {
                ok += 1;
                let text = out.value.to_string();
                if text.len() > 200 {
                    json!({"task": out.task.0, "ok": true, "value_len": text.len(), "host": out.host})
                } else {
                    json!({"task": out.task.0, "ok": true, "value": out.value, "host": out.host})
                }
            }
            Err(e) => {
                failed += 1;
                json!({"task": e.task().map(|t| t.0), "ok": false, "kind": kind(&e), "error": e.to_string()})
            }
        };
        if !args.quiet {
            println!("{line}");
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let status = master.status();
    drop(master);
    println!(
        "{}",
        json!({"summary": {
            "interface": name,
            "tasks": args.tasks,
            "ok": ok,
            "failed": failed,
            "secs": secs,
            "tasks_per_s": args.tasks as f64 / secs.max(1e-9),
            "interface_status": status.interface_status,
        }})
    );
    Ok(())
}
