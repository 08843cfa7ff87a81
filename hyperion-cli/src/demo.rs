//! The demo: a pipelined forward pass over a synthetic model larger than the
//! cache budget, with every byte checked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyperion::synth::{SynthSpec, ROW};
use hyperion::{Backend, MappedModel, MmapConfig};
use indicatif::{ProgressBar, ProgressStyle};

const MIB: u64 = 1 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Layers in the synthetic model.
    #[arg(long, default_value_t = 64)]
    pub layers: usize,
    /// Bytes per layer.
    #[arg(long, default_value_t = 8 * MIB)]
    pub layer_size: u64,
    /// Cache budget in bytes (max_cache_size).
    #[arg(long, default_value_t = 128 * MIB)]
    pub budget: u64,
    /// Layers prefetched ahead of the one being computed.
    #[arg(long, default_value_t = 3)]
    pub lookahead: usize,
    /// Forward passes over the model (as for successive tokens).
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
    /// I/O backend: auto, io-uring, pread or mmap.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Directory for the model file (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            layers: 64,
            layer_size: 8 * MIB,
            budget: 128 * MIB,
            lookahead: 3,
            passes: 2,
            backend: BackendArg::Auto,
            dir: None,
        }
    }
}

/// The `--backend` values (also used by `hyperion load`).
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum BackendArg {
    /// io_uring, falling back to pread where io_uring is unavailable.
    Auto,
    /// io_uring only.
    IoUring,
    /// Blocking pread on the blocking pool.
    Pread,
    /// mmap + madvise (zero-copy; SIGBUS if the file is truncated under it).
    Mmap,
    /// Ranged GETs from object storage (s3:// models; what auto picks for them).
    ObjectStore,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::IoUring => Backend::IoUring,
            BackendArg::Pread => Backend::Pread,
            BackendArg::Mmap => Backend::Mmap,
            BackendArg::ObjectStore => Backend::ObjectStore,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(forward_pass(args))
}

async fn forward_pass(args: Args) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("demo.tmai");
    let spec = SynthSpec {
        layers: args.layers,
        layer_size: args.layer_size,
        precision: 32,
        ..SynthSpec::default()
    };
    let total = spec.layers as u64 * spec.layer_size;
    eprintln!(
        "hyperion demo: writing a {} MiB model ({} layers × {} MiB) to {}",
        total / MIB,
        spec.layers,
        spec.layer_size / MIB,
        path.display()
    );
    let t = Instant::now();
    {
        let (path, spec) = (path.clone(), spec.clone());
        tokio::task::spawn_blocking(move || hyperion::synth::write(&path, &spec)).await??;
    }
    // Start cold: what is read must come from the disk.
    hyperion::pagecache::drop_cached_pages(&path)?;
    eprintln!(
        "  written in {:.2} s; page cache dropped",
        t.elapsed().as_secs_f64()
    );

    // The forward pass, `passes` times (as for successive tokens), with the
    // default adaptive policy; then the same with plain LRU, to compare.
    let adaptive = run_passes(&path, &spec, &args, true).await?;
    hyperion::pagecache::drop_cached_pages(&path)?;
    let lru = run_passes(&path, &spec, &args, false).await?;
    let Report {
        wall,
        compute,
        waiting,
        verified,
        stats,
        backend,
        activations: x,
    } = adaptive;
    let n = spec.layers;
    let total = total * args.passes as u64;
    let io = Duration::from_nanos(stats.read_busy_nanos);
    let mb_s = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let hidden = (io + compute).saturating_sub(wall).min(io);
    let overlap = hidden.as_secs_f64() / io.as_secs_f64().max(1e-9);
    let ratio = wall.as_secs_f64() / io.max(compute).as_secs_f64().max(1e-9);
    let checksum = x.iter().sum::<f32>();

    println!(
        "hyperion demo: {n} layers ({} MiB of f32 weights) × {} passes through a {} MiB budget, {} backend",
        total / MIB / args.passes as u64,
        args.passes,
        args.budget / MIB,
        backend.name()
    );
    println!(
        "  forward pass   {:.3} s wall, {:.0} MB/s; compute {:.3} s, waiting for weights {:.3} s",
        wall.as_secs_f64(),
        mb_s(total, wall),
        compute.as_secs_f64(),
        waiting.as_secs_f64()
    );
    println!(
        "  disk           {} reads, {} MiB, busy {:.3} s ({:.0} MB/s while busy)",
        stats.reads,
        stats.bytes_read / MIB,
        io.as_secs_f64(),
        mb_s(stats.bytes_read, io)
    );
    println!(
        "  cache          hit rate {:.0}% ({} hits, {} misses of which {} joined a read in flight); {} evictions",
        stats.hit_rate() * 100.0,
        stats.hits,
        stats.misses,
        stats.coalesced,
        stats.evictions
    );
    println!(
        "  policy         adaptive read {} layers from disk ({:.0}% of fetches hit), LRU {} ({:.0}%) on the same passes",
        stats.reads,
        stats.hit_rate() * 100.0,
        lru.stats.reads,
        lru.stats.hit_rate() * 100.0
    );
    println!(
        "  prefetch       {} issued, {} used, {} wasted, {} skipped for lack of room",
        stats.prefetch_issued, stats.prefetch_used, stats.prefetch_wasted, stats.prefetch_skipped
    );
    println!(
        "  memory         peak {:.1} MiB of the {:.1} MiB budget",
        stats.peak_memory as f64 / MIB as f64,
        args.budget as f64 / MIB as f64
    );
    println!(
        "  overlap        {:.0}% of read time hidden behind compute; wall / max(I/O, compute) = {ratio:.2}",
        overlap * 100.0
    );
    println!(
        "  verified       {verified} bytes, every one exact (activation checksum {checksum:.6})"
    );
    println!(
        "summary: layers={n} passes={} bytes={total} backend={} throughput_mb_s={:.0} hit_rate={:.2} lru_hit_rate={:.2} reads={} lru_reads={} peak_memory={} budget={} overlap={:.2} verified=ok",
        args.passes,
        backend.name(),
        mb_s(total, wall),
        stats.hit_rate(),
        lru.stats.hit_rate(),
        stats.reads,
        lru.stats.reads,
        stats.peak_memory,
        args.budget,
        overlap
    );
    anyhow::ensure!(
        stats.peak_memory <= args.budget,
        "peak memory exceeded the budget"
    );
    Ok(())
}

/// What one run of the demo's passes measured.
struct Report {
    wall: Duration,
    compute: Duration,
    waiting: Duration,
    verified: u64,
    stats: hyperion::Stats,
    backend: Backend,
    activations: Vec<f32>,
}

/// Opens the model and runs `args.passes` forward passes over it through
/// `stream_layers`, checking every byte.
async fn run_passes(
    path: &std::path::Path,
    spec: &SynthSpec,
    args: &Args,
    adaptive: bool,
) -> anyhow::Result<Report> {
    let config = MmapConfig {
        max_cache_size: args.budget,
        backend: args.backend.into(),
        adaptive_caching: adaptive,
        ..MmapConfig::default()
    };
    let model = MappedModel::open(path, config).await?;
    let n = model.layer_count();
    let bar = ProgressBar::new((n * args.passes) as u64);
    let policy = if adaptive { "adaptive" } else { "LRU" };
    bar.set_style(ProgressStyle::with_template(&format!(
        "  {policy:>8} {{bar:40}} {{pos}}/{{len}} layers {{msg}}"
    ))?);
    let mut x = vec![1.0f32 / ROW as f32; ROW as usize];
    let (mut compute, mut waiting, mut verified) = (Duration::ZERO, Duration::ZERO, 0u64);
    let start = Instant::now();
    let order = (0..args.passes).flat_map(|_| 0..n);
    let mut layers = model.stream_layers(order, Some(args.lookahead));
    while let Some(weights) = {
        let t = Instant::now();
        let next = layers.next().await;
        waiting += t.elapsed();
        next
    } {
        let weights = weights?;
        let i = weights.layer_index();
        let t = Instant::now();
        let w = weights
            .tensor(&format!("layers.{i}.weight"))
            .and_then(|t| t.as_f32())
            .ok_or_else(|| anyhow::anyhow!("layer {i} has no f32 weight matrix"))?;
        x = layer_forward(w, &x);
        verify(spec, i, &weights)?;
        verified += weights.len() as u64;
        compute += t.elapsed();
        drop(weights);
        bar.inc(1);
        bar.set_message(format!("{} MiB in use", model.memory_usage() / MIB));
    }
    drop(layers);
    let wall = start.elapsed();
    bar.finish_and_clear();
    let report = Report {
        wall,
        compute,
        waiting,
        verified,
        stats: model.stats(),
        backend: model.backend(),
        activations: x,
    };
    model.close();
    Ok(report)
}

/// One layer of "compute": `y = W·x` over the `[rows, 256]` matrix, folded
/// back to 256 activations and squashed with `tanh`.
fn layer_forward(w: &[f32], x: &[f32]) -> Vec<f32> {
    let mut acc = vec![0.0f32; x.len()];
    for (r, row) in w.chunks_exact(x.len()).enumerate() {
        let mut lanes = [0.0f32; 8];
        for (ws, xs) in row.chunks_exact(8).zip(x.chunks_exact(8)) {
            for k in 0..8 {
                lanes[k] += ws[k] * xs[k];
            }
        }
        acc[r % x.len()] += lanes.iter().sum::<f32>();
    }
    acc.iter().map(|v| v.tanh()).collect()
}

/// Checks the layer against a regeneration of its synthetic content.
fn verify(spec: &SynthSpec, layer: usize, got: &[u8]) -> anyhow::Result<()> {
    let mut expected = vec![0u8; MIB as usize];
    for (k, chunk) in got.chunks(MIB as usize).enumerate() {
        let expected = &mut expected[..chunk.len()];
        spec.fill(layer, k as u64 * MIB / 4, expected);
        if chunk != expected {
            let at = chunk
                .iter()
                .zip(expected.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            anyhow::bail!(
                "layer {layer}: byte {} differs from the model written",
                k as u64 * MIB + at as u64
            );
        }
    }
    Ok(())
}
