//! Null streaming task (`[program] mode = "stream"`): answers each input line with the input
//! unchanged, for measuring mw's own overhead per task in stream mode.
fn main() {
    mw_worker_runtime::task::serve_stream(|v: serde_json::Value| Ok::<_, String>(v));
}
