//! Choosing the next token: greedy, or temperature and top-p (nucleus)
//! sampling from a seeded generator, so a run can be repeated exactly.

use candle_core::Tensor;

use crate::error::Result;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 (or less): greedy, the most likely token. Otherwise logits are
    /// divided by it before the softmax.
    pub temperature: f64,
    /// Sample only among the most likely tokens whose probabilities add up
    /// to at least this (1.0: all of them).
    pub top_p: f64,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for Sampling {
    /// Greedy.
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Draws tokens by a [`Sampling`] rule.
#[derive(Debug, Clone)]
pub struct Sampler {
    rule: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler seeded with `rule.seed`.
    pub fn new(rule: Sampling) -> Self {
        Sampler {
            rule,
            state: rule.seed,
        }
    }

    /// The next token for `logits` (a vector of `f32`, one per token).
    ///
    /// # Errors
    /// [`Error::Candle`](crate::Error::Candle) if `logits` is not such a vector.
    pub fn next(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        if self.rule.temperature <= 0.0 {
            return Ok(argmax(&logits));
        }
        // Softmax of logits / temperature, in f64.
        let t = self.rule.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
            .collect();
        let sum: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= sum);
        // The nucleus: the most likely tokens until their mass reaches top_p.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p.1;
            if mass >= self.rule.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut draw = self.uniform() * total;
        for &(token, p) in &probs {
            if draw < p {
                return Ok(token);
            }
            draw -= p;
        }
        Ok(probs[probs.len() - 1].0)
    }

    /// A uniform number in [0, 1) (SplitMix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The index of the largest value (the first of equals), as candle's `argmax`.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn greedy_takes_the_largest_and_the_first_of_equals() {
        let mut s = Sampler::new(Sampling::default());
        assert_eq!(s.next(&logits(&[0.1, 3.0, -1.0, 3.0])).unwrap(), 1);
    }

    #[test]
    fn a_seed_repeats_and_top_p_keeps_the_nucleus() {
        let rule = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        };
        let l = logits(&[5.0, 4.0, 0.0, -3.0]);
        let draw = |rule| {
            let mut s = Sampler::new(rule);
            (0..200).map(|_| s.next(&l).unwrap()).collect::<Vec<_>>()
        };
        let a = draw(rule);
        assert_eq!(a, draw(rule), "same seed, same tokens");
        assert_ne!(a, draw(Sampling { seed: 8, ..rule }));
        // p(0) ≈ 0.73, p(1) ≈ 0.27: the nucleus at 0.9 is {0, 1}.
        assert!(a.iter().all(|&t| t <= 1));
        assert!(a.contains(&0) && a.contains(&1));
        let only_first = draw(Sampling { top_p: 0.5, ..rule });
        assert!(only_first.iter().all(|&t| t == 0));
    }
}
