//! `mw-assimilator`: thin program over the `mw_assimilator` library, run by BOINC's
//! `script_assimilator`. Prints one line to stderr; exits nonzero only when BOINC should
//! call again later; `--help` and `--version` print on stdout and exit 0. It must never know
//! about the master or BOINC's database.

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if let Some(text) = mw_assimilator::help_or_version(&args) {
        use std::io::Write;
        // A closed stdout (`| head`) is no error here.
        let _ = std::io::stdout().write_all(text.as_bytes());
        std::process::exit(0);
    }
    let (code, line) = mw_assimilator::run(&args);
    eprintln!("mw-assimilator: {}", line.replace('\n', " "));
    std::process::exit(code);
}
