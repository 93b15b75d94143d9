//! Reduce for the prime tester: prints `{"count": total, "largest_n": ...}`.
use std::io::BufRead;

fn main() -> anyhow::Result<()> {
    let mut count = 0u64;
    let mut largest = 0u64;
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let out: mw_examples::PrimeOutput = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("line {}: not a prime task result: {e}", i + 1))?;
        count += out.count;
        largest = largest.max(out.n.iter().copied().max().unwrap_or(0));
    }
    println!(
        "{}",
        serde_json::json!({"count": count, "largest_n": largest})
    );
    Ok(())
}
