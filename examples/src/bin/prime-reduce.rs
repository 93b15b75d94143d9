//! Reduce for the prime tester: prints `{"count": total, "largest_n": ...}`.

fn main() -> anyhow::Result<()> {
    let mut count = 0u64;
    let mut largest = 0u64;
    mw_examples::driver::for_each_result("prime", |out: mw_examples::PrimeOutput| {
        count += out.count;
        largest = largest.max(out.n.iter().copied().max().unwrap_or(0));
    })?;
    println!(
        "{}",
        serde_json::json!({"count": count, "largest_n": largest})
    );
    Ok(())
}
