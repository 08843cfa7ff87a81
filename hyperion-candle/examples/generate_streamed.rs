//! Runs a model larger than its memory budget: a Llama-family GGUF whose
//! blocks stream through Hyperion, next to candle's eager model (which holds
//! every weight), in one run, with the figures side by side.
//!
//! ```sh
//! cargo run --release -p hyperion-candle --example generate_streamed -- MODEL.gguf [TOKENS] [ROUNDS] [--cold]
//! ```
//!
//! For each of: candle's eager `quantized_llama`, and the streamed model at a
//! budget above the model's size, at half of it and at the smallest its
//! largest layer allows — greedy decoding of TOKENS tokens (default 32) from
//! the same prompt, ROUNDS times (default 3, interleaved), with the page
//! cache warm (or dropped before every run with `--cold`, as root). Prints
//! tokens/s (median), the ratio to eager, Hyperion's peak layer memory and
//! bytes read, the share of read time hidden behind compute, the time per
//! token over max(read time per token, eager compute time per token) (1.0
//! is perfect overlap), and whether the tokens are identical.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use hyperion::MmapConfig;
use hyperion_candle::generate::{generate, Request};
use hyperion_candle::llama::StreamedLlama;
use hyperion_candle::sampling::Sampling;

const PROMPT: [u32; 5] = [504, 3575, 282, 4649, 314];

fn eager(path: &PathBuf, tokens: usize) -> (Vec<u32>, f64) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let input = Tensor::new(&PROMPT[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut logits = model.forward(&input, 0).unwrap().squeeze(0).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    loop {
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        if out.len() == tokens {
            break;
        }
        let input = Tensor::new(&[next], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        logits = model
            .forward(&input, PROMPT.len() + out.len() - 1)
            .unwrap()
            .squeeze(0)
            .unwrap();
    }
    (out, (tokens - 1) as f64 / started.elapsed().as_secs_f64())
}

/// Empties the page cache (`--cold`), so that no read is served from it.
fn drop_page_cache() -> Result<(), Box<dyn std::error::Error>> {
    std::process::Command::new("sync").status()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("--cold needs root to drop the page cache: {e}"))?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let cold = all.iter().any(|a| a == "--cold");
    let mut args = all.into_iter().filter(|a| a != "--cold");
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: generate_streamed MODEL [TOKENS] [ROUNDS] [--cold]")?,
    );
    let tokens: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let index = hyperion::format::read_index(&path)?;
    let size: u64 = index.layers.iter().map(|l| l.size).sum();
    let largest = index
        .layers
        .iter()
        .map(|l| l.footprint(4096))
        .max()
        .unwrap_or(0);
    let budgets = [2 * size, size / 2, largest];
    println!(
        "model {} ({} bytes, largest layer {largest}); {tokens} tokens, {rounds} rounds",
        path.display(),
        size
    );

    let mut eager_rates = Vec::new();
    let mut streamed_rates = vec![Vec::new(); budgets.len()];
    let mut reference = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..rounds {
        if cold {
            drop_page_cache()?;
        }
        let (out, rate) = eager(&path, tokens);
        reference = out;
        eager_rates.push(rate);
        for (b, &budget) in budgets.iter().enumerate() {
            if cold {
                drop_page_cache()?;
            }
            let config = MmapConfig {
                max_cache_size: budget,
                ..MmapConfig::default()
            };
            let mut model = StreamedLlama::open(&path, config).await?;
            let request = Request {
                prompt: PROMPT.to_vec(),
                max_tokens: tokens,
                sampling: Sampling::default(),
                stop: None,
            };
            let report = generate(&mut model, &request, |_| {}).await?;
            streamed_rates[b].push(report.tokens_per_s);
            if reports.len() <= b {
                reports.push(report);
            } else {
                reports[b] = report;
            }
        }
    }
    let eager_median = median(&mut eager_rates);
    println!(
        "{:<28} {:>10} {:>8} {:>14} {:>14} {:>9} {:>12} {:>10}",
        "run",
        "tokens/s",
        "× eager",
        "peak memory",
        "bytes read",
        "io hidden",
        "÷ max(r, c)",
        "identical"
    );
    println!(
        "{:<28} {:>10.2} {:>8.2} {:>14} {:>14} {:>9} {:>12} {:>10}",
        "candle eager", eager_median, 1.0, "-", "-", "-", "-", "-"
    );
    for (b, &budget) in budgets.iter().enumerate() {
        let rate = median(&mut streamed_rates[b]);
        let r = &reports[b];
        // Time per generated token against the larger of its two parts:
        // reading the layers (Hyperion's read-busy time per token) and
        // computing (the eager model's time per token, no I/O at all).
        // 1.0 would be perfect overlap; the target is at most 1.1.
        let passes = (r.tokens.len().max(2) - 1) as f64;
        let per_token = r.decode_s / passes;
        let bound = (r.decode_read_s / passes).max(1.0 / eager_median);
        println!(
            "{:<28} {:>10.2} {:>8.2} {:>14} {:>14} {:>8.0}% {:>12.2} {:>10}",
            format!("streamed, budget {budget}"),
            rate,
            rate / eager_median,
            r.peak_memory,
            r.bytes_read,
            r.io_hidden * 100.0,
            per_token / bound,
            r.tokens == reference
        );
    }
    Ok(())
}
