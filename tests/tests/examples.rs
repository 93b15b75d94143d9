//! End to end: the real `mw` binary runs the paper's examples (copies of
//! examples/*/job.toml pointed at this build's task programs), and the examples' Rust
//! programs over the library (`monte-pi`, `primes`) run with small arguments. The prime
//! counts are checked against a deterministic Miller-Rabin computed here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Copies `examples/<name>/job.toml` into `dir`, pointing it at this build's binaries.
fn job_copy(name: &str, dir: &Path) -> PathBuf {
    let src = mw_tests::workspace_root()
        .join("examples")
        .join(name)
        .join("job.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    assert!(text.contains("../../target/release/"), "{}", src.display());
    let bins = mw_tests::bin_dir();
    let text = text.replace("../../target/release/", &format!("{}/", bins.display()));
    let dest = dir.join(format!("{name}.toml"));
    std::fs::write(&dest, text).unwrap();
    dest
}

fn mw(args: &[&str], jobs_dir: &Path) -> Output {
    let out = Command::new(mw_tests::bin("mw"))
        .args(args)
        .env("MW_JOBS_DIR", jobs_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mw {args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn last_json_line(out: &Output) -> Value {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    serde_json::from_str(line).unwrap()
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

fn pow_mod(mut b: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1 % m;
    b %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, b, m);
        }
        b = mul_mod(b, b, m);
        e >>= 1;
    }
    r
}

/// Deterministic Miller-Rabin: the first twelve primes as bases are exact below 3.3e24.
fn is_prime(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let (mut d, mut s) = (n - 1, 0);
    while d % 2 == 0 {
        d /= 2;
        s += 1;
    }
    'bases: for a in BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// Count of n in [1, max] with n^2 + 1 prime.
fn count_n2_plus_1_primes(max: u64) -> u64 {
    (1..=max).filter(|n| is_prime(n * n + 1)).count() as u64
}

#[test]
fn the_reference_primality_test_is_right_on_small_numbers() {
    // Cross-check against trial division up to 10^4.
    for n in 0..10_000u64 {
        let trial = n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
        assert_eq!(is_prime(n), trial, "{n}");
    }
    // n = 1, 2, 4, 6, 10: 2, 5, 17, 37, 101.
    assert_eq!(count_n2_plus_1_primes(10), 5);
}

#[test]
fn mw_run_monte_pi_job_prints_pi() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_copy("monte_pi", dir.path());
    let jobs = dir.path().join("jobs");
    let out = mw(&["run", job.to_str().unwrap()], &jobs);
    let v = last_json_line(&out);
    assert_eq!(v["points"], 100_000_000u64);
    let pi = v["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    let hits = v["hits"].as_u64().unwrap();
    assert_eq!(pi, 4.0 * hits as f64 / 1e8);
}

#[test]
fn mw_run_primes_job_finds_the_known_count() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_copy("primes", dir.path());
    let jobs = dir.path().join("jobs");
    let out = mw(&["run", job.to_str().unwrap(), "--workers", "2"], &jobs);
    let v = last_json_line(&out);
    let expected = count_n2_plus_1_primes(100_000);
    assert_eq!(v["count"].as_u64().unwrap(), expected, "{v}");
    // The largest such n up to 10^5, independently.
    let largest = (1..=100_000u64)
        .rev()
        .find(|n| is_prime(n * n + 1))
        .unwrap();
    assert_eq!(v["largest_n"].as_u64().unwrap(), largest);
}

#[test]
fn mw_run_null_job_returns_every_input() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_copy("null", dir.path());
    let jobs = dir.path().join("jobs");
    let results = dir.path().join("results.jsonl");
    mw(
        &[
            "run",
            job.to_str().unwrap(),
            "--output",
            results.to_str().unwrap(),
        ],
        &jobs,
    );
    let text = std::fs::read_to_string(&results).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1000);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["input"], serde_json::json!({"i": i}), "{line}");
        assert_eq!(line["output"], line["input"], "{line}");
    }
}

fn run_example(name: &str, args: &[&str]) -> Value {
    let out = Command::new(mw_tests::bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json_line(&out)
}

#[test]
fn the_monte_pi_library_program_estimates_pi() {
    let v = run_example("monte-pi", &["2000000", "4"]);
    assert_eq!(v["points"], 2_000_000);
    let pi = v["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
}

#[test]
fn the_primes_library_program_counts_right() {
    let v = run_example("primes", &["3000", "7"]);
    assert_eq!(v["count"].as_u64().unwrap(), count_n2_plus_1_primes(3000));
    assert_eq!(v["max"], 3000);
}
