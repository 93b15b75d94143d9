//! Shared pieces of the examples: a small deterministic random number generator (so task
//! results are reproducible across platforms), the Monte Carlo pi kernel, and the
//! Miller-Rabin primality test used by the prime tester.
//!
//! Nothing here knows about mw's platforms: these are the user's computations.

use serde::{Deserialize, Serialize};

/// SplitMix64: tiny, fast, and good enough for Monte Carlo sampling.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Input of one Monte Carlo pi task (paper Listing 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PiInput {
    /// Random seed of this task.
    pub seed: u64,
    /// Points to throw.
    pub points: u64,
}

/// Output of one Monte Carlo pi task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PiOutput {
    /// Points inside the quarter circle.
    pub hits: u64,
    /// Points thrown.
    pub points: u64,
}

/// Throws `points` random points into the unit square and counts those in the circle.
pub fn monte_pi(input: &PiInput) -> PiOutput {
    let mut rng = SplitMix64::new(input.seed);
    let mut hits = 0u64;
    for _ in 0..input.points {
        let x = rng.next_f64();
        let y = rng.next_f64();
        if x * x + y * y <= 1.0 {
            hits += 1;
        }
    }
    PiOutput {
        hits,
        points: input.points,
    }
}

/// Input of one prime-tester task: the chunk `chunk` of `size` consecutive n, starting at 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimeInput {
    /// Chunk index from 0.
    pub chunk: u64,
    /// Values of n per chunk.
    pub size: u64,
    /// Largest n overall (the last chunk stops here).
    #[serde(default = "default_max")]
    pub max: u64,
}

fn default_max() -> u64 {
    100_000
}

/// Output of one prime-tester task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrimeOutput {
    /// First n tested.
    pub first: u64,
    /// Last n tested.
    pub last: u64,
    /// How many n gave a prime n^2 + 1.
    pub count: u64,
    /// Those n.
    pub n: Vec<u64>,
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1u64 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

/// Miller-Rabin with `k` random bases (the paper's test, k = 50).
pub fn miller_rabin(n: u64, k: u32, rng: &mut SplitMix64) -> bool {
    if n < 4 {
        return n == 2 || n == 3;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = n - 1;
    let mut r = 0;
    while d.is_multiple_of(2) {
        d /= 2;
        r += 1;
    }
    'witness: for _ in 0..k {
        let a = 2 + rng.next_u64() % (n - 3);
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..r {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// Tests n^2 + 1 for every n of the chunk.
pub fn prime_chunk(input: &PrimeInput) -> PrimeOutput {
    let first = input.chunk * input.size + 1;
    let last = ((input.chunk + 1) * input.size).min(input.max);
    let mut rng = SplitMix64::new(input.chunk);
    let n: Vec<u64> = (first..=last)
        .filter(|n| miller_rabin(n * n + 1, 50, &mut rng))
        .collect();
    PrimeOutput {
        first,
        last,
        count: n.len() as u64,
        n,
    }
}

/// What the example binaries share: number arguments, finding a sibling task program, and
/// reading task results as JSON lines. These are the driver's chores, not the computation.
pub mod driver {
    use serde::de::DeserializeOwned;
    use std::io::BufRead;
    use std::path::PathBuf;

    /// The next command-line argument as a whole number, or `default` when it is absent.
    pub fn number_arg(
        args: &mut impl Iterator<Item = String>,
        default: u64,
    ) -> anyhow::Result<u64> {
        match args.next() {
            Some(s) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("{s:?} is not a whole number: {e}")),
            None => Ok(default),
        }
    }

    /// The path of the program `name` in the directory of the running executable.
    pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
        Ok(dir.join(name))
    }

    /// Calls `each` with every non-blank line of stdin parsed as a `what` result.
    pub fn for_each_result<T: DeserializeOwned>(
        what: &str,
        mut each: impl FnMut(T),
    ) -> anyhow::Result<()> {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let out = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("line {}: not a {what} task result: {e}", i + 1))?;
            each(out);
        }
        Ok(())
    }
}
