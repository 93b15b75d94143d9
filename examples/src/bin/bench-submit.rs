//! Benchmark helper (bench/local.sh): submits N null tasks to a journaled master on local
//! cores and prints the submission time and the process's peak RSS; then cancels the rest.
//!
//! Usage: `bench-submit N JOB_DIR` (the null task `null-task` must be next to this binary).
use mw::{Master, MasterOptions, Multicore, Program, TaskSpec};
use mw_examples::driver;
use std::sync::Arc;
use std::time::Instant;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n = driver::number_arg(&mut args, 100_000)?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "bench-submit-job".into()));
    let program = Arc::new(Program::new(driver::sibling("null-task")?)?);
    let rss_before = peak_rss_kib();
    let master = Master::with_journal(
        Arc::new(Multicore::default()),
        MasterOptions::default(),
        &dir,
    )?;
    let specs: Vec<TaskSpec> = (0..n)
        .map(|i| TaskSpec::new(program.clone(), serde_json::json!({ "i": i })))
        .collect();
    let t0 = Instant::now();
    master.submit_many(specs)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "submitted {n} tasks to a journaled master in {secs:.3} s ({:.0} tasks/s); peak RSS {} MiB (at start {} MiB)",
        n as f64 / secs,
        peak_rss_kib() / 1024,
        rss_before / 1024
    );
    master.cancel_all();
    Ok(())
}
