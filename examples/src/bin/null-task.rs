//! Null task: copies its input (stdin) to its output (stdout) unchanged, for measuring
//! mw's own overhead per task.
use std::io::{Read, Write};

fn main() {
    let mut buf = Vec::new();
    if std::io::stdin().read_to_end(&mut buf).is_err() {
        std::process::exit(2);
    }
    if std::io::stdout().write_all(&buf).is_err() {
        std::process::exit(2);
    }
}
