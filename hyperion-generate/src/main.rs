//! `hyperion-generate MODEL (--prompt TEXT | --tokens ID,ID,...)`: generates
//! text with a Llama-family model (GGUF, or Hugging Face safetensors with
//! their config.json) whose transformer blocks stream through
//! Hyperion within `--budget` bytes (see the repository's docs/candle.md).
//!
//! A binary of its own, not a `hyperion` subcommand, so that building the
//! `hyperion` command does not build candle.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use hyperion::MmapConfig;
use hyperion_candle::generate::{generate, Request};
use hyperion_candle::llama::StreamedLlama;
use hyperion_candle::sampling::Sampling;
use hyperion_candle::tokenizer::TextTokenizer;

/// Generates text with a Llama-family model (GGUF or safetensors) whose blocks stream
/// through Hyperion within a memory budget.
#[derive(Parser, Debug)]
#[command(name = "hyperion-generate", version)]
struct Args {
    /// The model: a GGUF file with `general.architecture = "llama"`, or
    /// Hugging Face Llama safetensors (a file, an index, or their directory)
    /// with config.json and tokenizer.json beside them.
    model: PathBuf,
    /// The prompt, tokenized with the model's tokenizer (the GGUF's own, or
    /// tokenizer.json).
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Bytes of layer memory Hyperion may hold at once (default: Hyperion's,
    /// a quarter of RAM).
    #[arg(long)]
    budget: Option<u64>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling: sample among the likeliest tokens whose
    /// probabilities add up to this.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyperion-generate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("hyperion-generate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], not {}", args.top_p);
    }
    let mut config = MmapConfig::default();
    if let Some(budget) = args.budget {
        config.max_cache_size = budget;
    }
    let tokenizer = match &args.prompt {
        Some(_) => Some(TextTokenizer::for_model(&args.model)?),
        None => TextTokenizer::for_model(&args.model).ok(),
    };
    let prompt = match (&args.prompt, &args.tokens) {
        (Some(text), _) => tokenizer.as_ref().context("no tokenizer")?.encode(text)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt or --tokens"),
    };
    if prompt.is_empty() {
        bail!("the prompt has no tokens");
    }
    let mut model = StreamedLlama::open(&args.model, config).await?;
    if prompt.len() > 32 {
        eprintln!(
            "hyperion-generate: prefill of {} prompt tokens through {} blocks",
            prompt.len(),
            model.config().block_count
        );
    }
    let request = Request {
        prompt: prompt.clone(),
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop: tokenizer.as_ref().and_then(TextTokenizer::eos),
    };
    // Without --json the text is printed as it is generated: each token's
    // text is the growing decoded text minus what was printed already.
    let mut printed = String::new();
    let mut generated = Vec::new();
    let json = args.json;
    let report = generate(&mut model, &request, |token| {
        generated.push(token);
        if json {
            return;
        }
        if let Some(t) = &tokenizer {
            if let Ok(text) = t.decode(&generated) {
                if let Some(new) = text.strip_prefix(printed.as_str()) {
                    print!("{new}");
                    let _ = std::io::stdout().flush();
                    printed = text;
                }
            }
        } else {
            print!("{token} ");
            let _ = std::io::stdout().flush();
        }
    })
    .await?;
    let text = match &tokenizer {
        Some(t) => Some(t.decode(&report.tokens)?),
        None => None,
    };
    if json {
        let out = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": report.tokens,
            "text": text,
            "tokens_per_s": report.tokens_per_s,
            "prefill_s": report.prefill_s,
            "peak_memory": report.peak_memory,
            "peak_rss": peak_rss(),
            "budget": report.budget,
            "bytes_read": report.bytes_read,
            "io_hidden": report.io_hidden,
            "decode_s": report.decode_s,
            "decode_read_s": report.decode_read_s,
            "stats": model.model().stats(),
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "hyperion-generate: {} tokens, {:.1} tokens/s; peak layer memory {} of {} bytes (process peak RSS {}); read {} bytes; {:.0}% of read time hidden",
            report.tokens.len(),
            report.tokens_per_s,
            report.peak_memory,
            report.budget,
            peak_rss().map_or("unknown".into(), |b| format!("{b} bytes")),
            report.bytes_read,
            report.io_hidden * 100.0
        );
    }
    Ok(())
}

/// The process's peak resident set size in bytes (`VmHWM`), where the OS
/// reports it: the layer budget plus everything resident beside it (the
/// embedding and head, the KV cache, candle's scratch, the binary).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
