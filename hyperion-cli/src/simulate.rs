//! `hyperion simulate`: replays an access trace through the eviction
//! policies and prints their hit rates next to Belady's optimum.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::ValueEnum;
use hyperion::policy::{belady, simulate_with, traces, PolicyKind, Replay, SimResult};

#[derive(clap::Args)]
pub struct Args {
    /// The policy to simulate; it is always shown next to Belady's optimum.
    #[arg(long, value_enum, default_value_t = PolicyArg::All)]
    policy: PolicyArg,
    /// `cyclic` (forward passes over every layer), `zipf` (skewed random),
    /// `mixed` (recency-friendly phases), or a file of layer indices
    /// separated by whitespace.
    #[arg(long)]
    trace: String,
    /// Number of layers (default for a file: its largest index + 1).
    #[arg(long)]
    layers: Option<usize>,
    /// Cache capacity, in layers.
    #[arg(long)]
    capacity: usize,
    /// Passes of a `cyclic` trace.
    #[arg(long, default_value_t = 20)]
    passes: usize,
    /// Accesses of a `zipf` or `mixed` trace.
    #[arg(long, default_value_t = 100_000)]
    len: usize,
    /// Exponent of a `zipf` trace.
    #[arg(long, default_value_t = 1.0)]
    exponent: f64,
    /// Seed of a `zipf` or `mixed` trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How accesses reach the policy: as they happen, or batched before each
    /// eviction as the concurrent cache does.
    #[arg(long, value_enum, default_value_t = ReplayArg::Immediate)]
    replay: ReplayArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    Lru,
    Adaptive,
    Belady,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReplayArg {
    Immediate,
    LastUse,
    LayerOrder,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (trace, layers) = load_trace(&args)?;
    let replay = match args.replay {
        ReplayArg::Immediate => Replay::Immediate,
        ReplayArg::LastUse => Replay::BatchedByLastUse,
        ReplayArg::LayerOrder => Replay::BatchedByLayer,
    };
    let kinds: &[PolicyKind] = match args.policy {
        PolicyArg::Lru => &[PolicyKind::Lru],
        PolicyArg::Adaptive => &[PolicyKind::Adaptive],
        PolicyArg::Belady => &[],
        PolicyArg::All => &[PolicyKind::Lru, PolicyKind::Adaptive],
    };
    let optimum = belady(&trace, args.capacity);
    let mut rows: Vec<(&str, SimResult)> = kinds
        .iter()
        .map(|&k| {
            let r = simulate_with(k, &trace, layers, args.capacity, replay);
            (k.name(), r)
        })
        .collect();
    rows.push(("belady", optimum));
    let of_belady = |r: &SimResult| (optimum.hits > 0).then(|| r.hit_rate() / optimum.hit_rate());
    if args.json {
        let results: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(name, r)| {
                let v = serde_json::json!({
                    "hits": r.hits,
                    "misses": r.misses,
                    "hit_rate": r.hit_rate(),
                    "of_belady": of_belady(r),
                });
                (name.to_string(), v)
            })
            .collect();
        let out = serde_json::json!({
            "trace": args.trace,
            "layers": layers,
            "accesses": trace.len(),
            "capacity": args.capacity,
            "replay": args.replay.to_possible_value().map(|v| v.get_name().to_owned()),
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "trace {}: {layers} layers, {} accesses; capacity {} layers",
            args.trace,
            trace.len(),
            args.capacity
        );
        println!();
        println!(
            "{:<10} {:>10} {:>10} {:>9} {:>10}",
            "policy", "hits", "misses", "hit rate", "of Belady"
        );
        for (name, r) in &rows {
            let ratio = of_belady(r).map_or("-".to_owned(), |x| format!("{x:.3}"));
            println!(
                "{name:<10} {:>10} {:>10} {:>9.3} {ratio:>10}",
                r.hits,
                r.misses,
                r.hit_rate()
            );
        }
    }
    Ok(())
}

/// The trace and its number of layers.
fn load_trace(args: &Args) -> anyhow::Result<(Vec<usize>, usize)> {
    let generated = |name: &str| {
        args.layers
            .with_context(|| format!("--layers is required for a {name} trace"))
    };
    let (trace, layers) = match args.trace.as_str() {
        "cyclic" => {
            let n = generated("cyclic")?;
            (traces::cyclic(n, args.passes), n)
        }
        "zipf" => {
            let n = generated("zipf")?;
            if !args.exponent.is_finite() || args.exponent < 0.0 {
                bail!("--exponent must be a finite number >= 0");
            }
            (traces::zipf(n, args.len, args.exponent, args.seed), n)
        }
        "mixed" => {
            let n = generated("mixed")?;
            (traces::mixed(n, args.len, args.seed), n)
        }
        file => {
            let path = PathBuf::from(file);
            let trace = traces::from_file(&path)
                .map_err(|e| anyhow::anyhow!("reading the trace {}: {e}", path.display()))?;
            let needed = trace.iter().max().map_or(0, |m| m + 1);
            let n = args.layers.unwrap_or(needed);
            (trace, n)
        }
    };
    if let Some(&bad) = trace.iter().find(|&&x| x >= layers) {
        bail!("the trace accesses layer {bad}, but there are {layers} layers");
    }
    Ok((trace, layers))
}
