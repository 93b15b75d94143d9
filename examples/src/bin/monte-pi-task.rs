//! Monte Carlo pi task (paper Listing 1): input `{"seed": s, "points": n}`, output
//! `{"hits": h, "points": n}`.
fn main() {
    mw_worker_runtime::task::serve(|input: mw_examples::PiInput| {
        Ok::<_, String>(mw_examples::monte_pi(&input))
    });
}
