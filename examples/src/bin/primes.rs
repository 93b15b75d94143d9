//! The prime tester with the mw library: counts n <= MAX with n^2+1 prime, in CHUNKS tasks.
//!
//! Usage: `primes [MAX] [CHUNKS]` (defaults 100000 and 20). The task program `prime-task`
//! is expected next to this executable.
use mw::{Master, Multicore, Program, TaskSpec};
use mw_examples::driver;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let max = driver::number_arg(&mut args, 100_000)?;
    let chunks = driver::number_arg(&mut args, 20)?;
    anyhow::ensure!(chunks > 0 && max > 0, "MAX and CHUNKS must be positive");
    let size = max.div_ceil(chunks);
    let program = Arc::new(Program::new(driver::sibling("prime-task")?)?);
    let master = Master::new(Multicore::default())?;
    for chunk in 0..chunks {
        let input = mw_examples::PrimeInput { chunk, size, max };
        master.submit_task(TaskSpec::new(program.clone(), serde_json::to_value(input)?))?;
    }
    let mut count = 0;
    for _ in 0..chunks {
        let (_t, out): (mw::TaskId, mw_examples::PrimeOutput) = master.get_result(None)?;
        count += out.count;
    }
    println!("{}", serde_json::json!({"count": count, "max": max}));
    Ok(())
}
