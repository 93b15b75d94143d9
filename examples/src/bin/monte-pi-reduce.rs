//! Reduce for Monte Carlo pi: sums the tasks' hits and points (JSON lines on stdin) and
//! prints `{"pi": ..., "hits": ..., "points": ...}`.

fn main() -> anyhow::Result<()> {
    let (mut hits, mut points) = (0u64, 0u64);
    mw_examples::driver::for_each_result("pi", |out: mw_examples::PiOutput| {
        hits += out.hits;
        points += out.points;
    })?;
    anyhow::ensure!(points > 0, "no points: no task results on stdin");
    let pi = 4.0 * hits as f64 / points as f64;
    println!(
        "{}",
        serde_json::json!({"pi": pi, "hits": hits, "points": points})
    );
    Ok(())
}
