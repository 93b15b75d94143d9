//! The `mw` command: a thin binary over the `mw` library's `cli` module.

fn main() {
    std::process::exit(mw_cli::main());
}
