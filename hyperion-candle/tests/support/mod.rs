//! What the model tests share: the budgets every model is checked at, the
//! reference scripts, greedy decoding with the streamed model, and the
//! comparison of logits.
#![allow(dead_code)]

use std::path::Path;

use hyperion::MmapConfig;
use hyperion_candle::llama::StreamedLlama;

use crate::common;

/// The model's size and the budgets the streamed model must be exact at:
/// above the model's size, half of it, and the smallest its largest layer
/// allows (in these small models the embedding or the head).
pub fn budgets(weights: &Path) -> (u64, [u64; 3]) {
    let index = hyperion::format::read_index(weights).unwrap();
    let size: u64 = index.layers.iter().map(|l| l.size).sum();
    let largest = index
        .layers
        .iter()
        .map(|l| l.footprint(4096))
        .max()
        .unwrap();
    (size, [2 * size, size / 2, largest])
}

/// Runs the reference script `script` (under `hyperion-candle/tests/reference/`)
/// with `args` in the project's Python environment, or returns `None`
/// (skipped, outside CI) without it.
pub fn run_reference(script: &str, args: &[&std::ffi::OsStr]) -> Option<()> {
    let python = common::python()?;
    let path = common::repo_root()
        .join("hyperion-candle/tests/reference")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// A Llama checkpoint written by transformers (`hf_llama.py` with `args`:
/// weights, config.json, tokenizer.json and its greedy reference.json) in a
/// temp dir, or `None` (skipped, outside CI) without the Python environment.
pub fn hf_checkpoint(args: &[&str]) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![dir.path().as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    run_reference("hf_llama.py", &all)?;
    Some(dir)
}

/// The index of the largest value (the first of equals): greedy decoding.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The largest absolute difference between two runs' logits, step by step.
pub fn worst_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "the runs have different lengths");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0f32, f32::max)
}

/// Greedy decoding of `steps` tokens by `forward(tokens, position)` (which
/// returns the last position's logits): the tokens and every step's logits.
pub async fn greedy(
    prompt: &[u32],
    steps: usize,
    mut forward: impl AsyncFnMut(&[u32], usize) -> Vec<f32>,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut logits = forward(prompt, 0).await;
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let next = argmax(&logits);
        tokens.push(next);
        all.push(logits);
        if step + 1 == steps {
            break;
        }
        logits = forward(&[next], prompt.len() + step).await;
    }
    (tokens, all)
}

/// What a streamed run gives: the tokens, every step's logits, Hyperion's
/// statistics and the bytes it still holds at the end.
pub struct Streamed {
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub stats: hyperion::Stats,
    pub held: u64,
}

/// Greedy decoding of `steps` tokens with the streamed model within `budget`.
pub async fn streamed(path: &Path, budget: u64, prompt: &[u32], steps: usize) -> Streamed {
    let config = MmapConfig {
        max_cache_size: budget,
        ..MmapConfig::default()
    };
    let mut model = StreamedLlama::open(path, config).await.unwrap();
    let (tokens, all) = greedy(prompt, steps, async |ids: &[u32], pos| {
        let logits = model.forward(ids, pos).await.unwrap();
        logits.to_vec1().unwrap()
    })
    .await;
    Streamed {
        tokens,
        logits: all,
        stats: model.model().stats(),
        held: model.model().memory_usage(),
    }
}
