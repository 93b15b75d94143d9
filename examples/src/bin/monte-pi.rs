//! Monte Carlo pi with the mw library (paper Listing 1, in Rust): p tasks of n/p points on
//! local cores, results summed as they arrive.
//!
//! Usage: `monte-pi [TOTAL_POINTS] [TASKS]` (defaults 10^8 and 16). The task program
//! `monte-pi-task` is expected next to this executable.
use mw::{Master, Multicore, Program, TaskSpec};
use mw_examples::driver;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total = driver::number_arg(&mut args, 100_000_000)?;
    let tasks = driver::number_arg(&mut args, 16)?;
    anyhow::ensure!(tasks > 0, "TASKS must be positive");
    let program = Arc::new(Program::new(driver::sibling("monte-pi-task")?)?);

    let master = Master::new(Multicore::default())?;
    for seed in 0..tasks {
        let input = mw_examples::PiInput {
            seed,
            points: total / tasks,
        };
        master.submit_task(TaskSpec::new(program.clone(), serde_json::to_value(input)?))?;
    }
    let (mut hits, mut points) = (0u64, 0u64);
    for _ in 0..tasks {
        let (_task, out): (mw::TaskId, mw_examples::PiOutput) = master.get_result(None)?;
        hits += out.hits;
        points += out.points;
    }
    println!(
        "{}",
        serde_json::json!({"pi": 4.0 * hits as f64 / points as f64, "hits": hits, "points": points})
    );
    Ok(())
}
