//! Prime tester task: input `{"chunk": c, "size": s}`, tests n^2+1 for n in the chunk with
//! Miller-Rabin (k = 50) and outputs `{"first", "last", "count", "n": [...]}`.
fn main() {
    mw_worker_runtime::task::serve(|input: mw_examples::PrimeInput| {
        if input.size == 0 {
            return Err("size must be positive".to_string());
        }
        Ok(mw_examples::prime_chunk(&input))
    });
}
