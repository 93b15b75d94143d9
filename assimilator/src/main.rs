//! `mw-assimilator`: thin program over the `mw_assimilator` library, run by BOINC's
//! `script_assimilator`. Prints one line to stderr; exits nonzero only when BOINC should
//! call again later. It must never know about the master or BOINC's database.

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let (code, line) = mw_assimilator::run(&args);
    eprintln!("mw-assimilator: {}", line.replace('\n', " "));
    std::process::exit(code);
}
