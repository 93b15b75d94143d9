//! The `mw` command: a thin binary over the `mw` library's `cli` module.

/// mimalloc instead of the system allocator: a fast job allocates and frees small blocks on
/// one thread and frees them on another (scheduler, slots, journal writer, result printing),
/// where glibc's allocator spent a third of the master's time (BENCHMARKS.md, stream mode).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(mw_cli::main());
}
