//! Access traces for [`simulate`](super::simulate): sequences of layer
//! indices, generated deterministically from a seed or read from a file.

use std::io;
use std::path::Path;

/// `passes` forward passes over `layers` layers: `0, 1, …, layers-1`,
/// repeated. The access pattern of a model run layer after layer, and the
/// worst case of LRU when the layers do not all fit.
pub fn cyclic(layers: usize, passes: usize) -> Vec<usize> {
    (0..passes).flat_map(|_| 0..layers).collect()
}

/// `len` accesses drawn independently from a Zipf distribution over `layers`
/// layers: the layer of popularity rank `k` (1-based) is drawn with
/// probability proportional to `1 / k^exponent`. Ranks are assigned to
/// layers by a random permutation, so the popular layers are scattered.
/// Skewed random access, where frequency matters more than recency.
pub fn zipf(layers: usize, len: usize, exponent: f64, seed: u64) -> Vec<usize> {
    if layers == 0 {
        return Vec::new();
    }
    let mut rng = SplitMix64::new(seed);
    let order = permutation(layers, &mut rng);
    let mut cdf = Vec::with_capacity(layers);
    let mut total = 0.0;
    for k in 1..=layers {
        total += 1.0 / (k as f64).powf(exponent);
        cdf.push(total);
    }
    (0..len)
        .map(|_| {
            let u = rng.next_f64() * total;
            let rank = cdf.partition_point(|&c| c <= u).min(layers - 1);
            order[rank]
        })
        .collect()
}

/// `len` recency-friendly accesses over `layers` layers, in phases.
///
/// The trace is a sequence of phases, each of a length drawn uniformly from
/// `2·layers .. 8·layers` accesses (the last one cut at `len`), alternating
/// between two kinds:
///
/// - **Drifting hot set.** A window of `w` consecutive layers (`w` drawn
///   from `layers/8 ..= layers/4`, at least 2; layer numbers wrap around)
///   starts at a random layer and slides forward by one layer every `w`
///   accesses. 90% of accesses pick a layer of the window uniformly, 10% any
///   layer uniformly.
/// - **LRU stack model.** With probability 0.85, re-access the layer at
///   depth `d` of the recency stack (the most recent layer has depth 0), `d`
///   geometric with mean `layers/16` (at least 1); otherwise a uniformly
///   random layer.
///
/// Both reward keeping what was used recently; a policy that protects what
/// was used often (or long ago) does worse than LRU on them.
pub fn mixed(layers: usize, len: usize, seed: u64) -> Vec<usize> {
    if layers == 0 {
        return Vec::new();
    }
    let mut rng = SplitMix64::new(seed);
    // Recency stack, most recent first, for the stack model.
    let mut stack: Vec<usize> = permutation(layers, &mut rng);
    let mut trace = Vec::with_capacity(len);
    let mut drifting = true;
    while trace.len() < len {
        let phase = (2 * layers + rng.below(6 * layers)).min(len - trace.len());
        // Drifting hot set: window width and start.
        let lo = (layers / 8).clamp(2.min(layers), layers);
        let hi = (layers / 4).max(lo);
        let w = lo + rng.below(hi - lo + 1);
        let start = rng.below(layers);
        // Stack model: success probability of the geometric depth.
        let p = 1.0 / ((layers as f64 / 16.0).max(1.0) + 1.0);
        for i in 0..phase {
            let x = if drifting {
                if rng.next_f64() < 0.9 {
                    (start + i / w + rng.below(w)) % layers
                } else {
                    rng.below(layers)
                }
            } else if rng.next_f64() < 0.85 {
                // Geometric on {0, 1, …}: P(d) = p (1 - p)^d.
                let d = (rng.next_f64().ln() / (1.0 - p).ln()).floor() as usize;
                stack[d.min(layers - 1)]
            } else {
                rng.below(layers)
            };
            trace.push(x);
            let at = stack.iter().position(|&y| y == x).expect("every layer");
            stack[..=at].rotate_right(1);
        }
        drifting = !drifting;
    }
    trace
}

/// Reads a trace from a text file: layer indices as decimal integers,
/// separated by whitespace (one per line or several per line). Text after a
/// `#` on a line is a comment.
///
/// # Errors
///
/// The file's I/O errors, and [`io::ErrorKind::InvalidData`] for a token
/// that is not a non-negative integer (the message gives its line).
pub fn from_file(path: impl AsRef<Path>) -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string(path.as_ref())?;
    parse(&text)
}

/// Parses the text of a trace file (see [`from_file`]).
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] for a token that is not a non-negative
/// integer (the message gives its line).
pub fn parse(text: &str) -> io::Result<Vec<usize>> {
    let mut trace = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for token in line.split_whitespace() {
            let layer = token.parse::<usize>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {}: {token:?} is not a layer index", n + 1),
                )
            })?;
            trace.push(layer);
        }
    }
    Ok(trace)
}

/// A random permutation of `0..n` (Fisher–Yates).
fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast, and the same on
/// every platform, so a seed names one trace for good.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`); the bias of the modulo is below 2^-40
    /// for the sizes used here.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclic_is_passes_of_every_layer() {
        assert_eq!(cyclic(3, 2), [0, 1, 2, 0, 1, 2]);
        assert!(cyclic(0, 5).is_empty());
    }

    #[test]
    fn zipf_is_deterministic_skewed_and_in_range() {
        let a = zipf(50, 20_000, 1.0, 7);
        assert_eq!(a, zipf(50, 20_000, 1.0, 7));
        assert_ne!(a, zipf(50, 20_000, 1.0, 8));
        assert!(a.iter().all(|&x| x < 50));
        let mut counts = [0usize; 50];
        for &x in &a {
            counts[x] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // Rank 1 over rank 2 is 2 for exponent 1; allow sampling noise.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.7..2.3).contains(&ratio), "{ratio}");
        // The top rank has 1/H(50) ≈ 22% of the accesses.
        let top = counts[0] as f64 / a.len() as f64;
        assert!((0.20..0.245).contains(&top), "{top}");
    }

    #[test]
    fn mixed_is_deterministic_and_in_range() {
        let a = mixed(64, 10_000, 3);
        assert_eq!(a.len(), 10_000);
        assert_eq!(a, mixed(64, 10_000, 3));
        assert!(a.iter().all(|&x| x < 64));
        assert!(mixed(1, 100, 0).iter().all(|&x| x == 0));
    }

    #[test]
    fn parse_accepts_lines_spaces_and_comments() {
        let t = parse("# a trace\n0 1 2\n3\n\n  4 5 # five\n").unwrap();
        assert_eq!(t, [0, 1, 2, 3, 4, 5]);
        let e = parse("0\n1 x\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse("-1").is_err());
    }
}
