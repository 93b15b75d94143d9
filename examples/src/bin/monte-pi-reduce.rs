//! Reduce for Monte Carlo pi: sums the tasks' hits and points (JSON lines on stdin) and
//! prints `{"pi": ..., "hits": ..., "points": ...}`.
use std::io::BufRead;

fn main() -> anyhow::Result<()> {
    let (mut hits, mut points) = (0u64, 0u64);
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let out: mw_examples::PiOutput = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("line {}: not a pi task result: {e}", i + 1))?;
        hits += out.hits;
        points += out.points;
    }
    anyhow::ensure!(points > 0, "no points: no task results on stdin");
    let pi = 4.0 * hits as f64 / points as f64;
    println!(
        "{}",
        serde_json::json!({"pi": pi, "hits": hits, "points": points})
    );
    Ok(())
}
