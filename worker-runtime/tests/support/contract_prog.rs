//! A task program for the cross-platform worker tests (`tests/targets.rs`), built for the
//! worker's own target (e.g. `x86_64-pc-windows-gnu`, run under Wine). Its first argument
//! picks what it does:
//!
//! - `echo`: prints `{"got":<stdin>,"entries":[<names in its working directory>]}`,
//!   writes `out.txt`;
//! - `fail`: prints `it went wrong` on stderr and exits with status 5;
//! - `tree`: starts a copy of itself in `hang` mode (a child that would outlive it), writes
//!   the child's process id to the file named by `MW_PIDFILE`, then hangs itself;
//! - `orphan`: like `tree`, but exits 0 at once, leaving the child behind;
//! - `hang`: sleeps for ever;
//! - `gone PID`: waits (bounded, 60 s) for process PID to end; exits 0 when it has, 1 if not.
//!
//! Not part of mw: test equipment only (built as an example: `--example contract_prog`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let code = match mode {
        "echo" => echo(),
        "fail" => {
            eprintln!("it went wrong");
            5
        }
        "tree" | "orphan" => tree(mode == "orphan"),
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(1000));
        },
        "gone" => match args.get(2).and_then(|p| p.parse::<u32>().ok()) {
            Some(pid) if gone(pid) => 0,
            Some(_) => 1,
            None => 2,
        },
        _ => {
            eprintln!("contract_prog: unknown mode `{mode}`");
            2
        }
    };
    std::process::exit(code);
}

fn echo() -> i32 {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        return 2;
    }
    let mut entries: Vec<String> = std::fs::read_dir(".")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    let listed: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
    if std::fs::write("out.txt", "written\n").is_err() {
        return 3;
    }
    print!(
        "{{\"got\":{},\"entries\":[{}]}}",
        input.trim(),
        listed.join(",")
    );
    let _ = std::io::stdout().flush();
    0
}

fn tree(exit_at_once: bool) -> i32 {
    let Ok(me) = std::env::current_exe() else {
        return 2;
    };
    let Ok(pidfile) = std::env::var("MW_PIDFILE") else {
        return 2;
    };
    let child = match std::process::Command::new(me)
        .arg("hang")
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return 2,
    };
    let tmp = format!("{pidfile}.tmp");
    if std::fs::write(&tmp, child.id().to_string()).is_err()
        || std::fs::rename(&tmp, &pidfile).is_err()
    {
        return 2;
    }
    if exit_at_once {
        return 0;
    }
    loop {
        std::thread::sleep(Duration::from_secs(1000));
    }
}

#[cfg(windows)]
fn gone(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, WAIT_OBJECT_0};
    use windows_sys::Win32::System::Threading::{OpenProcess, WaitForSingleObject};
    const SYNCHRONIZE: u32 = 0x0010_0000;
    // SAFETY: opens a process by id for waiting only; closed below.
    let h = unsafe { OpenProcess(SYNCHRONIZE, 0, pid) };
    if h.is_null() {
        return true; // no such process (any more)
    }
    // SAFETY: `h` is a live process handle with SYNCHRONIZE access.
    let r = unsafe { WaitForSingleObject(h, 60_000) };
    // SAFETY: the handle is ours.
    unsafe {
        CloseHandle(h);
    }
    r == WAIT_OBJECT_0
}

#[cfg(unix)]
fn gone(pid: u32) -> bool {
    // Bounded poll: a killed process may take a moment to disappear (or stay a zombie,
    // which counts as gone).
    for _ in 0..600 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next());
                if matches!(state, Some("Z") | Some("X")) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
