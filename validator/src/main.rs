//! `mw-validator`: thin program over the `mw_validator` library. Installed as
//! `mw-validator-init` and `mw-validator-compare` (copies of this binary) in a BOINC
//! project's `bin/`; the name picks the mode. Prints one line to stderr, exits 0 / 1 / 3;
//! `--help` and `--version` print on stdout and exit 0.
//! It must never know about the master or BOINC's database.

fn main() {
    let mut argv = std::env::args_os();
    let argv0 = argv
        .next()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mw-validator".into());
    let args: Vec<String> = argv.map(|s| s.to_string_lossy().into_owned()).collect();
    if let Some(text) = mw_validator::help_or_version(&args) {
        use std::io::Write;
        // A closed stdout (`| head`) is no error here.
        let _ = std::io::stdout().write_all(text.as_bytes());
        std::process::exit(0);
    }
    let (code, line) = mw_validator::run(&argv0, &args);
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!("{name}: {}", line.replace('\n', " "));
    std::process::exit(code);
}
