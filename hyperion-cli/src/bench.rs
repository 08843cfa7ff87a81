//! `hyperion bench`: measures, in one run on one file, what the disk and
//! memory can do (plain readers, memcpy) and what Hyperion delivers (cold,
//! warm, random-order, concurrent and prefetching streams), with ratios.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperion::buffer::AlignedBuf;

use anyhow::Context;
use futures::StreamExt;
use hyperion::synth::SynthSpec;
use hyperion::{Backend, BufferPool, MappedModel, MmapConfig};
use serde_json::{json, Map, Value};

const MIB: u64 = 1 << 20;
/// Request size of the O_DIRECT ceiling reader.
const DIRECT_CHUNK: usize = 4 << 20;
/// Alignment (and huge-page size) of the ceiling reader's buffer.
const HUGE_PAGE: usize = 2 << 20;
/// Buffer of the plain buffered reader.
const BUFFERED_CHUNK: usize = 8 << 20;
/// Bytes copied by the memcpy measurement.
const MEMCPY_BYTES: usize = 512 << 20;
/// A "cold" read faster than this came from memory, not this disk.
const COLD_SUSPICIOUS_MB_S: f64 = 8000.0;
/// Seed of the random layer order.
const RANDOM_SEED: u64 = 0x5eed_1a7e;
/// Slack allowed over the budget for the peak RSS of a streaming load.
const RSS_SLACK: u64 = 32 * MIB;
/// Task counts of the concurrency measurement.
const TASKS: [usize; 4] = [1, 4, 16, 64];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Total bytes of the test model (default 2 GiB; 256 MiB with --quick).
    /// Layers are 64 MiB (16 MiB with --quick) or fewer.
    #[arg(long)]
    pub size: Option<u64>,
    /// Directory for the test file (default: a temp dir in the current
    /// directory, so it is on the same filesystem).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A small, fast run: 256 MiB as 16 × 16 MiB, two repetitions, and a
    /// budget of a quarter of the file.
    #[arg(long)]
    pub quick: bool,
}

/// What the run measures on: the file's shape, the budget, the repetitions.
struct Plan {
    spec: SynthSpec,
    budget: u64,
    reps: usize,
}

impl Plan {
    fn new(args: &Args) -> anyhow::Result<Plan> {
        let (default_size, default_layers, max_layer, reps) = if args.quick {
            (256 * MIB, 16u64, 16 * MIB, 2)
        } else {
            (2048 * MIB, 32u64, 64 * MIB, 3)
        };
        let size = args.size.unwrap_or(default_size);
        anyhow::ensure!(
            size >= MIB,
            "--size {size} is too small: the test model needs at least 1 MiB"
        );
        // Keep the default layer count where the size allows, with layers of
        // at most `max_layer` and whole MiB.
        let layer_size = ((size / default_layers).min(max_layer) / MIB).max(1) * MIB;
        let layers = usize::try_from(size / layer_size)?;
        let file = layers as u64 * layer_size;
        let budget = if args.quick {
            (file / 4).max(2 * layer_size)
        } else {
            (512 * MIB).max(2 * layer_size)
        };
        Ok(Plan {
            spec: SynthSpec {
                layers,
                layer_size,
                precision: 32,
                ..SynthSpec::default()
            },
            budget,
            reps,
        })
    }

    fn model_bytes(&self) -> u64 {
        self.spec.layers as u64 * self.spec.layer_size
    }

    fn config(&self, backend: Backend, direct_io: bool) -> MmapConfig {
        MmapConfig {
            max_cache_size: self.budget,
            backend,
            direct_io,
            // Many tasks share a small budget in the concurrency runs; they
            // never hold a layer while waiting for another, so waiting is safe.
            memory_wait_timeout: Duration::from_secs(120),
            ..MmapConfig::default()
        }
    }
}

/// One measurement: MB/s of each repetition, notes, and extra figures.
struct Measurement {
    name: &'static str,
    runs: Vec<f64>,
    notes: String,
    extra: Map<String, Value>,
}

impl Measurement {
    fn new(name: &'static str, notes: impl Into<String>) -> Measurement {
        Measurement {
            name,
            runs: Vec::new(),
            notes: notes.into(),
            extra: Map::new(),
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(0.0)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("min_mb_s".into(), json!(self.min()));
        m.insert("median_mb_s".into(), json!(self.median()));
        m.insert("max_mb_s".into(), json!(self.max()));
        m.insert("runs_mb_s".into(), json!(self.runs));
        m.insert("notes".into(), json!(self.notes));
        m.extend(self.extra.clone());
        Value::Object(m)
    }
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// Everything one run collected.
struct Report {
    measurements: Vec<Measurement>,
    warnings: Vec<String>,
    rss: Option<RssCheck>,
}

/// Peak RSS of streaming a model 8× the budget, each load in its own process.
struct RssCheck {
    budget: u64,
    model_bytes: u64,
    /// `VmHWM` of each run's `hyperion load` process.
    peak_rss: Vec<u64>,
}

impl RssCheck {
    fn worst(&self) -> u64 {
        self.peak_rss.iter().copied().max().unwrap_or(0)
    }

    fn limit(&self) -> u64 {
        self.budget + RSS_SLACK
    }

    fn met(&self) -> bool {
        !self.peak_rss.is_empty() && self.worst() <= self.limit()
    }

    fn to_json(&self) -> Value {
        json!({
            "budget": self.budget,
            "model_bytes": self.model_bytes,
            "model_over_budget": self.model_bytes as f64 / self.budget as f64,
            "peak_rss_bytes": self.peak_rss,
            "worst_peak_rss_bytes": self.worst(),
            "limit_bytes": self.limit(),
            "met": self.met(),
        })
    }
}

impl Report {
    fn push(&mut self, m: Measurement) {
        eprintln!("  {:<30} median {:>8.0} MB/s", m.name, m.median());
        self.measurements.push(m);
    }

    fn median_of(&self, name: &str) -> f64 {
        self.measurements
            .iter()
            .find(|m| m.name == name)
            .map_or(0.0, Measurement::median)
    }

    /// The ratio of `name`'s runs to `base`'s, round by round (for rows
    /// measured in the same rounds).
    fn round_ratios(&self, name: &str, base: &str) -> Vec<f64> {
        let runs = |n: &str| {
            self.measurements
                .iter()
                .find(|m| m.name == n)
                .map_or(Vec::new(), |m| m.runs.clone())
        };
        runs(name)
            .iter()
            .zip(runs(base))
            .map(|(a, b)| if b > 0.0 { a / b } else { 0.0 })
            .collect()
    }

    /// Warns when a cold read ran faster than any disk here can.
    fn check_cold(&mut self, name: &str, mb_s: f64) {
        if mb_s > COLD_SUSPICIOUS_MB_S {
            let w = format!(
                "{name}: a cold read ran at {mb_s:.0} MB/s (> {COLD_SUSPICIOUS_MB_S:.0}): \
                 dropping the page cache did not work, so this figure is not a cold read"
            );
            eprintln!("hyperion bench: warning: {w}");
            self.warnings.push(w);
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // One line with every cause: "context: cause".
    bench(args).map_err(|e| anyhow::anyhow!("bench: {e:#}"))
}

fn bench(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let parent = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("cannot get the current directory")?,
    };
    let dir = tempfile::Builder::new()
        .prefix("hyperion-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
    let path = dir.path().join("bench.tmai");
    eprintln!(
        "hyperion bench: writing a {} MiB model ({} layers × {} MiB) to {}",
        plan.model_bytes() / MIB,
        plan.spec.layers,
        plan.spec.layer_size / MIB,
        path.display()
    );
    hyperion::synth::write(&path, &plan.spec)
        .with_context(|| format!("cannot write the test model {}", path.display()))?;
    let file_bytes = std::fs::metadata(&path)?.len();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = Report {
        measurements: Vec::new(),
        warnings: Vec::new(),
        rss: None,
    };
    measure(&rt, &plan, &path, file_bytes, &mut report)?;
    drop(rt);

    let cold = report.median_of("stream_cold_io_uring");
    let ceiling = report.median_of("ceiling_direct");
    let warm = report.median_of("stream_warm");
    let memcpy = report.median_of("memcpy");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let cold_ratio = ratio(cold, ceiling);
    let warm_ratio = ratio(warm, memcpy);
    let noverify_ratio = ratio(report.median_of("stream_cold_io_uring_noverify"), ceiling);
    let fresh_ratio = ratio(report.median_of("stream_cold_io_uring_fresh"), ceiling);
    let pooled_ratio = ratio(report.median_of("stream_cold_fresh_pooled"), ceiling);
    let deep_ratio = ratio(report.median_of("stream_cold_deep"), ceiling);
    let first_pass_ratio = ratio(report.median_of("prefetch_ahead"), ceiling);
    let warm_default_ratio = ratio(report.median_of("stream_warm_default"), memcpy);

    if args.json {
        let measurements: Map<String, Value> = report
            .measurements
            .iter()
            .map(|m| (m.name.to_string(), m.to_json()))
            .collect();
        let out = json!({
            "model": {
                "layers": plan.spec.layers,
                "layer_size": plan.spec.layer_size,
                "model_bytes": plan.model_bytes(),
                "file_bytes": file_bytes,
                "dir": parent.display().to_string(),
            },
            "budget": plan.budget,
            "repetitions": plan.reps,
            "quick": args.quick,
            "measurements": measurements,
            "ratios": {
                "cold_stream_over_ceiling": cold_ratio,
                "cold_stream_noverify_over_ceiling": noverify_ratio,
                "cold_stream_fresh_over_ceiling": fresh_ratio,
                "cold_stream_fresh_pooled_over_ceiling": pooled_ratio,
                "cold_stream_deep_over_ceiling": deep_ratio,
                "first_pass_default_lookahead_over_ceiling": first_pass_ratio,
                "warm_over_memcpy": warm_ratio,
                "warm_default_config_over_memcpy": warm_default_ratio,
                "per_round": {
                    "cold_stream_over_ceiling": report.round_ratios("stream_cold_io_uring", "ceiling_direct"),
                    "cold_stream_noverify_over_ceiling": report.round_ratios("stream_cold_io_uring_noverify", "ceiling_direct"),
                    "cold_stream_deep_over_ceiling": report.round_ratios("stream_cold_deep", "ceiling_direct"),
                    "warm_over_memcpy": report.round_ratios("stream_warm", "memcpy"),
                    "warm_default_config_over_memcpy": report.round_ratios("stream_warm_default", "memcpy"),
                },
            },
            "targets": {
                "cold_stream_over_ceiling": 0.9,
                "warm_over_memcpy": 0.8,
                "stream_8x_budget_peak_rss_over_budget": RSS_SLACK,
            },
            "rss": {
                "stream_8x_budget": report.rss.as_ref().map(RssCheck::to_json),
            },
            "warnings": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "hyperion bench: {} MiB model ({} layers × {} MiB), budget {} MiB, {} repetitions, MB/s = 10^6 bytes/s",
            plan.model_bytes() / MIB,
            plan.spec.layers,
            plan.spec.layer_size / MIB,
            plan.budget / MIB,
            plan.reps
        );
        println!(
            "{:<30} {:>8} {:>8} {:>8}  notes",
            "measurement", "min", "median", "max"
        );
        for m in &report.measurements {
            println!(
                "{:<30} {:>8.0} {:>8.0} {:>8.0}  {}",
                m.name,
                m.min(),
                m.median(),
                m.max(),
                m.notes
            );
        }
        let rounds = |name: &str, base: &str| {
            let r: Vec<String> = report
                .round_ratios(name, base)
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect();
            r.join(" ")
        };
        println!(
            "ratio cold io_uring stream / O_DIRECT ceiling: {cold_ratio:.2} (target ≥ 0.90: {}; round by round {})",
            if cold_ratio >= 0.9 { "met" } else { "missed" },
            rounds("stream_cold_io_uring", "ceiling_direct")
        );
        println!(
            "  the same without checksums: {noverify_ratio:.2}; a new model per pass (fresh memory): {fresh_ratio:.2}, \
             sharing a BufferPool: {pooled_ratio:.2}"
        );
        println!(
            "  reading ahead as far as the budget holds: {deep_ratio:.2} (target ≥ 0.90; round by round {}); \
             a new model's first pass, default lookahead (prefetch_ahead): {first_pass_ratio:.2} (target ≥ 0.75)",
            rounds("stream_cold_deep", "ceiling_direct")
        );
        println!(
            "ratio warm stream / memcpy:                    {warm_ratio:.2} (target ≥ 0.80: {}; round by round {})",
            if warm_ratio >= 0.8 { "met" } else { "missed" },
            rounds("stream_warm", "memcpy")
        );
        println!("  the same with the default config (direct_io, cached chunks copied): {warm_default_ratio:.2}");
        if let Some(r) = &report.rss {
            println!(
                "peak RSS streaming a {} MiB model through a {} MiB budget ({:.1}×), own process per run: \
                 {:.1} MiB worst of {} (target ≤ budget + {} MiB = {} MiB: {})",
                r.model_bytes / MIB,
                r.budget / MIB,
                r.model_bytes as f64 / r.budget as f64,
                r.worst() as f64 / MIB as f64,
                r.peak_rss.len(),
                RSS_SLACK / MIB,
                r.limit() / MIB,
                if r.met() { "met" } else { "missed" }
            );
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
    }
    dir.close()
        .context("cannot remove the temp dir of the test model")?;
    Ok(())
}

fn drop_cache(path: &Path) -> anyhow::Result<()> {
    hyperion::pagecache::drop_cached_pages(path)
        .with_context(|| format!("cannot drop the cached pages of {}", path.display()))
}

fn measure(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    path: &Path,
    file_bytes: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let reps = plan.reps;
    let n = plan.spec.layers;

    let sequential: Vec<usize> = (0..n).collect();

    // Cold, round-robin: each round reads the file once with the ceiling
    // reader and once with each open model below, so that a host whose speed
    // drifts from minute to minute (these VMs) affects every figure of a
    // ratio alike.
    //
    // Hyperion is measured in the steady state of a process that keeps the
    // model open and streams it through a budget smaller than the model
    // (every pass reads every layer from the disk): one open model whose
    // buffer pool an untimed pass filled, every layer released and the file's
    // pages dropped before each pass. The ceiling reader reads into one
    // pre-faulted buffer too. (A new model per pass: further below.)
    let mut ceiling = Measurement::new(
        "ceiling_direct",
        "O_DIRECT pread, 4 MiB requests, 2 MiB-aligned MADV_HUGEPAGE buffer, cold; interleaved with the two rows below",
    );
    let open_cold = [
        (
            "stream_cold_io_uring",
            true,
            Ahead::PrefetchThreads,
            "io_uring, O_DIRECT, default config (checksums on), lookahead = prefetch_threads; one open model, pool full, cache dropped before each pass",
        ),
        (
            "stream_cold_io_uring_noverify",
            false,
            Ahead::PrefetchThreads,
            "the same with verify_checksums: false (the work the ceiling reader does)",
        ),
        (
            "stream_cold_deep",
            true,
            Ahead::Deep,
            "the first row reading ahead as many layers as the budget holds beside the one in use (deep read-ahead, steady state)",
        ),
    ];
    let mut streams = OpenStreams::open(
        rt,
        path,
        &sequential,
        open_cold.map(|(name, verify, ahead, notes)| {
            let config = MmapConfig {
                verify_checksums: verify,
                ..plan.config(Backend::IoUring, true)
            };
            (name, config, ahead, notes)
        }),
    )?;
    let mut buf = huge_buffer(DIRECT_CHUNK)?;
    for _ in 0..reps {
        drop_cache(path)?;
        let v = read_direct(path, &mut buf, file_bytes)?;
        report.check_cold(ceiling.name, v);
        ceiling.runs.push(v);
        streams.round(rt, path, Pages::Dropped, report)?;
    }
    drop(buf);
    report.push(ceiling);
    streams.finish(report);

    let mut m = Measurement::new("ceiling_buffered", "plain read(), 8 MiB buffer, cold");
    for _ in 0..reps {
        drop_cache(path)?;
        let v = read_buffered(path, file_bytes)?;
        report.check_cold(m.name, v);
        m.runs.push(v);
    }
    report.push(m);

    // Warm, round-robin as above: each round copies memory once (`memcpy`)
    // and streams the page-cached file once on each open model. The file is
    // put in the page cache by one plain sequential read (as a download, a
    // copy or `cat` leaves it).
    read_buffered(path, file_bytes)?;
    let mut memcpy = Measurement::new(
        "memcpy",
        "one thread, 512 MiB warm buffer into another (second of two copies); interleaved with the warm rows",
    );
    let warm_streams = [
        (
            "stream_warm",
            Backend::Auto,
            false,
            "Backend::Auto with direct_io: false (Auto picks the pread engine for buffered reads), file in the page cache, one open model, pool full",
        ),
        (
            "stream_warm_default",
            Backend::Auto,
            true,
            "the default config (direct_io: true): layers found in the page cache are read by the pread engine (io/auto.rs)",
        ),
        (
            "stream_warm_io_uring",
            Backend::IoUring,
            false,
            "buffered io_uring, for comparison",
        ),
    ];
    let mut streams = OpenStreams::open(
        rt,
        path,
        &sequential,
        warm_streams.map(|(name, backend, direct, notes)| {
            (
                name,
                plan.config(backend, direct),
                Ahead::PrefetchThreads,
                notes,
            )
        }),
    )?;
    {
        let src = vec![0x5au8; MEMCPY_BYTES];
        let mut dst = vec![0u8; MEMCPY_BYTES];
        for _ in 0..reps {
            dst.copy_from_slice(std::hint::black_box(&src));
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            memcpy.runs.push(mb_s(MEMCPY_BYTES as u64, t.elapsed()));
            streams.round(rt, path, Pages::Kept, report)?;
        }
    }
    report.push(memcpy);
    streams.finish(report);

    // Cold, one freshly opened model per pass: its first budget of layer
    // buffers is new memory (docs/performance.md, "Fresh memory"), unless
    // the models share a `BufferPool` (the second row, interleaved with the
    // first; one untimed pass fills the pool first, as a process that
    // opens model after model has it filled).
    let config = plan.config(Backend::IoUring, true);
    let lookahead = Some(config.prefetch_threads);
    let pool = BufferPool::new(config.max_cache_size);
    let pooled_config = MmapConfig {
        buffer_pool: Some(pool.clone()),
        ..config.clone()
    };
    drop_cache(path)?;
    rt.block_on(stream_pass(
        path,
        pooled_config.clone(),
        &sequential,
        lookahead,
    ))?;
    let mut fresh = Measurement::new(
        "stream_cold_io_uring_fresh",
        "io_uring, O_DIRECT, default config, a new model per pass (first budget into fresh memory)",
    );
    let mut pooled = Measurement::new(
        "stream_cold_fresh_pooled",
        "the same, the models sharing a BufferPool of one budget (MmapConfig::buffer_pool): each takes over the last one's buffers",
    );
    for _ in 0..reps {
        for (m, config) in [(&mut fresh, &config), (&mut pooled, &pooled_config)] {
            drop_cache(path)?;
            let r = rt.block_on(stream_pass(path, config.clone(), &sequential, lookahead))?;
            report.check_cold(m.name, r.mb_s);
            m.runs.push(r.mb_s);
            m.extra.insert("backend".into(), json!(r.backend));
        }
    }
    pooled
        .extra
        .insert("pool_reuses".into(), json!(pool.reuses()));
    report.push(fresh);
    report.push(pooled);
    drop(pool);

    let cold_streams = [
        (
            "stream_cold_io_uring_buffered",
            Backend::IoUring,
            false,
            "io_uring, direct_io: false, lookahead = prefetch_threads",
        ),
        (
            "stream_cold_pread",
            Backend::Pread,
            true,
            "pread engine (Auto's fallback), O_DIRECT, lookahead = prefetch_threads",
        ),
        (
            "stream_cold_mmap",
            Backend::Mmap,
            true,
            "mmap backend, lookahead = prefetch_threads",
        ),
    ];
    for (name, backend, direct, notes) in cold_streams {
        let config = plan.config(backend, direct);
        let lookahead = Some(config.prefetch_threads);
        let mut m = Measurement::new(name, notes);
        for _ in 0..reps {
            drop_cache(path)?;
            let r = rt.block_on(stream_pass(path, config.clone(), &sequential, lookahead))?;
            report.check_cold(name, r.mb_s);
            m.runs.push(r.mb_s);
            m.extra.insert("backend".into(), json!(r.backend));
        }
        report.push(m);
    }

    // Random order, cold.
    let config = plan.config(Backend::IoUring, true);
    let order = permutation(n, RANDOM_SEED);
    let mut m = Measurement::new(
        "random_cold",
        format!("io_uring O_DIRECT, layers in a fixed-seed permutation (seed {RANDOM_SEED:#x}), lookahead = prefetch_threads"),
    );
    for _ in 0..reps {
        drop_cache(path)?;
        let r = rt.block_on(stream_pass(
            path,
            config.clone(),
            &order,
            Some(config.prefetch_threads),
        ))?;
        report.check_cold(m.name, r.mb_s);
        m.runs.push(r.mb_s);
    }
    report.push(m);

    // Concurrent tasks on one model, cold at the start.
    for (k, &tasks) in TASKS.iter().enumerate() {
        let name = [
            "concurrent_1",
            "concurrent_4",
            "concurrent_16",
            "concurrent_64",
        ][k];
        let mut m = Measurement::new(
            name,
            format!("{tasks} task(s) on one model, each streams every layer from its own rotation; aggregate layer bytes delivered"),
        );
        let (mut reads, mut disk) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            drop_cache(path)?;
            let r = rt.block_on(concurrent_pass(path, config.clone(), n, tasks))?;
            m.runs.push(r.mb_s);
            reads.push(r.stats.reads);
            let disk_mb_s = mb_s(r.stats.bytes_read, r.wall);
            report.check_cold(name, disk_mb_s);
            disk.push(disk_mb_s);
        }
        m.notes += &format!("; disk reads per run {reads:?}");
        m.extra.insert("tasks".into(), json!(tasks));
        m.extra.insert("disk_reads".into(), json!(reads));
        m.extra.insert("disk_mb_s".into(), json!(disk));
        report.push(m);
    }

    // Prefetch-ahead: stream_layers with its default lookahead.
    let model_lookahead = rt.block_on(async {
        let model = MappedModel::open(path, config.clone()).await?;
        let l = model.default_lookahead();
        model.close();
        anyhow::Ok(l)
    })?;
    let mut m = Measurement::new(
        "prefetch_ahead",
        format!(
            "io_uring O_DIRECT, stream_layers default lookahead ({model_lookahead} layers), cold"
        ),
    );
    for _ in 0..reps {
        drop_cache(path)?;
        let r = rt.block_on(stream_pass(path, config.clone(), &sequential, None))?;
        report.check_cold(m.name, r.mb_s);
        m.runs.push(r.mb_s);
        m.extra.insert("lookahead".into(), json!(model_lookahead));
        m.extra
            .insert("prefetch_used".into(), json!(r.stats.prefetch_used));
    }
    report.push(m);

    // Peak RSS streaming a model 8× the budget: each run is `hyperion load`
    // in a child process, so its VmHWM is that load's alone.
    let budget = (plan.model_bytes() / 8).max(2 * plan.spec.layer_size);
    let mut m = Measurement::new(
        "stream_8x_budget",
        format!(
            "hyperion load --budget {} MiB in its own process, cold, default config; peak RSS per run in the JSON",
            budget / MIB
        ),
    );
    let mut check = RssCheck {
        budget,
        model_bytes: plan.model_bytes(),
        peak_rss: Vec::new(),
    };
    for _ in 0..reps {
        let r = load_in_child(path, budget)?;
        let field = |k: &str| {
            r[k].as_f64()
                .with_context(|| format!("`hyperion load --json` printed no {k}: {r}"))
        };
        let v = field("mb_s")?;
        report.check_cold(m.name, v);
        m.runs.push(v);
        check.peak_rss.push(field("peak_rss_bytes")? as u64);
    }
    m.notes += &format!(
        "; peak RSS MiB {:?}",
        check.peak_rss.iter().map(|b| b / MIB).collect::<Vec<_>>()
    );
    m.extra.insert("budget".into(), json!(budget));
    m.extra
        .insert("peak_rss_bytes".into(), json!(check.peak_rss));
    report.push(m);
    report.rss = Some(check);
    Ok(())
}

/// Runs `hyperion load --cold --json --budget BUDGET PATH` as a child
/// process (this same executable) and returns its JSON report.
fn load_in_child(path: &Path, budget: u64) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("cannot find the hyperion executable")?;
    let out = std::process::Command::new(&exe)
        .args(["load", "--cold", "--json", "--budget"])
        .arg(budget.to_string())
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {} load", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "hyperion load failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("hyperion load printed no JSON")
}

/// What one pass through Hyperion measured.
struct Pass {
    mb_s: f64,
    wall: Duration,
    stats: hyperion::Stats,
    backend: &'static str,
}

/// Opens the model and streams `order` through `stream_layers`, timing from
/// the first request to the last layer delivered.
async fn stream_pass(
    path: &Path,
    config: MmapConfig,
    order: &[usize],
    lookahead: Option<usize>,
) -> anyhow::Result<Pass> {
    let model = MappedModel::open(path, config).await?;
    let start = Instant::now();
    let bytes = stream_bytes(&model, order.to_vec(), lookahead).await?;
    Ok(finish(model, bytes, start))
}

/// Whether the file's pages are dropped from the page cache before a
/// [`timed_pass`].
#[derive(Clone, Copy, PartialEq)]
enum Pages {
    Dropped,
    Kept,
}

/// Rows measured on open models, one timed pass each per round, in the
/// same rounds as the figure they are compared with (see `measure`).
struct OpenStreams<'a> {
    rows: Vec<(Measurement, MappedModel, usize)>,
    order: &'a [usize],
}

/// How far a row's passes read ahead through `stream_layers`.
#[derive(Clone, Copy)]
enum Ahead {
    /// `prefetch_threads` layers: as many as can be read at once.
    PrefetchThreads,
    /// As many as the budget holds beside the layer being used: a user who
    /// prefetches as far as the budget allows (issue 16's "deep" probe).
    Deep,
}

impl Ahead {
    fn layers(self, model: &MappedModel) -> usize {
        match self {
            Ahead::PrefetchThreads => model.config().prefetch_threads,
            Ahead::Deep => model.max_lookahead().max(1),
        }
    }
}

impl<'a> OpenStreams<'a> {
    /// Opens one model per row (name, config, notes) and streams `order`
    /// once on each, untimed, so that its buffer pool holds a budget of
    /// buffers: the steady state of a process that keeps a model open. (A new
    /// model's first budget of buffers is new memory, whose first touch
    /// costs more than the read on these VMs, and erratically:
    /// docs/performance.md, "Fresh memory".)
    fn open(
        rt: &tokio::runtime::Runtime,
        path: &Path,
        order: &'a [usize],
        rows: impl IntoIterator<Item = (&'static str, MmapConfig, Ahead, &'static str)>,
    ) -> anyhow::Result<Self> {
        let mut opened = Vec::new();
        for (name, config, ahead, notes) in rows {
            let (model, lookahead) = rt.block_on(async {
                let model = MappedModel::open(path, config).await?;
                let lookahead = ahead.layers(&model);
                stream_bytes(&model, order.to_vec(), Some(lookahead)).await?;
                anyhow::Ok((model, lookahead))
            })?;
            let mut m = Measurement::new(name, notes);
            m.extra.insert("lookahead".into(), json!(lookahead));
            opened.push((m, model, lookahead));
        }
        Ok(OpenStreams {
            rows: opened,
            order,
        })
    }

    /// One round: a [`timed_pass`] on each model in turn; with
    /// `Pages::Dropped` each figure is checked as a cold read.
    fn round(
        &mut self,
        rt: &tokio::runtime::Runtime,
        path: &Path,
        pages: Pages,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        for (m, model, lookahead) in &mut self.rows {
            let v = rt.block_on(timed_pass(model, path, self.order, *lookahead, pages))?;
            if pages == Pages::Dropped {
                report.check_cold(m.name, v);
            }
            m.runs.push(v);
        }
        Ok(())
    }

    /// Records each row's engine, closes its model and reports the row.
    fn finish(self, report: &mut Report) {
        for (mut m, model, _) in self.rows {
            m.extra
                .insert("backend".into(), json!(model.backend().name()));
            model.close();
            report.push(m);
        }
    }
}

/// One timed pass over `order` on an open model, reading `lookahead`
/// layers ahead, after releasing every layer (so each is read again, into a
/// pooled buffer) and, with `Pages::Dropped`, dropping the file's pages;
/// MB/s.
async fn timed_pass(
    model: &MappedModel,
    path: &Path,
    order: &[usize],
    lookahead: usize,
    pages: Pages,
) -> anyhow::Result<f64> {
    for i in 0..model.layer_count() {
        model.release(i)?;
    }
    if pages == Pages::Dropped {
        drop_cache(path)?;
    }
    let start = Instant::now();
    let bytes = stream_bytes(model, order.to_vec(), Some(lookahead)).await?;
    Ok(mb_s(bytes, start.elapsed()))
}

/// `tasks` tasks on one model, task `k` streaming every layer starting at
/// layer `k * n / tasks`; MB/s of all the layer bytes delivered.
async fn concurrent_pass(
    path: &Path,
    config: MmapConfig,
    n: usize,
    tasks: usize,
) -> anyhow::Result<Pass> {
    let model = MappedModel::open(path, config).await?;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let model = model.clone();
            let first = k * n / tasks;
            tokio::spawn(async move {
                let order = (0..n).map(move |i| (first + i) % n);
                stream_bytes(&model, order, None).await
            })
        })
        .collect();
    let mut bytes = 0u64;
    for h in handles {
        bytes += h.await.context("a benchmark task failed")??;
    }
    Ok(finish(model, bytes, start))
}

/// Streams `order` and returns the layer bytes delivered.
async fn stream_bytes(
    model: &MappedModel,
    order: impl IntoIterator<Item = usize>,
    lookahead: Option<usize>,
) -> anyhow::Result<u64> {
    let mut layers = model.stream_layers(order, lookahead);
    let mut bytes = 0u64;
    while let Some(w) = layers.next().await {
        bytes += w?.len() as u64;
    }
    Ok(bytes)
}

/// The pass's figures, taken when its last layer was delivered; closes the model.
fn finish(model: MappedModel, bytes: u64, start: Instant) -> Pass {
    let wall = start.elapsed();
    let pass = Pass {
        mb_s: mb_s(bytes, wall),
        wall,
        stats: model.stats(),
        backend: model.backend().name(),
    };
    model.close();
    pass
}

/// A Fisher–Yates shuffle of `0..n` driven by SplitMix64 from `seed`.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Reads the whole file with O_DIRECT, `DIRECT_CHUNK` bytes per request, into
/// `buf`; returns MB/s.
fn read_direct(path: &Path, buf: &mut AlignedBuf, file_bytes: u64) -> anyhow::Result<f64> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("cannot open {} with O_DIRECT", path.display()))?;
    let dst = buf.as_mut_slice();
    let start = Instant::now();
    let mut off = 0u64;
    while off < file_bytes {
        let got = file
            .read_at(dst, off)
            .with_context(|| format!("O_DIRECT read at offset {off} failed"))?;
        if got == 0 {
            break;
        }
        off += got as u64;
        if got < dst.len() && off < file_bytes {
            anyhow::bail!("O_DIRECT read at offset {off}: short read of {got} bytes mid-file");
        }
    }
    let wall = start.elapsed();
    anyhow::ensure!(
        off == file_bytes,
        "O_DIRECT reader read {off} of {file_bytes} bytes"
    );
    Ok(mb_s(off, wall))
}

/// Reads the whole file with plain `read` into an 8 MiB buffer; returns MB/s.
fn read_buffered(path: &Path, file_bytes: u64) -> anyhow::Result<f64> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; BUFFERED_CHUNK];
    buf.fill(1); // touch it before timing
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let got = file.read(&mut buf).context("buffered read failed")?;
        if got == 0 {
            break;
        }
        total += got as u64;
    }
    let wall = start.elapsed();
    anyhow::ensure!(
        total == file_bytes,
        "buffered reader read {total} of {file_bytes} bytes"
    );
    Ok(mb_s(total, wall))
}

/// A 2 MiB-aligned, `MADV_HUGEPAGE` buffer (the loader's own kind),
/// pre-faulted so first touch is not timed.
fn huge_buffer(len: usize) -> anyhow::Result<AlignedBuf> {
    let mut buf = AlignedBuf::new(len.next_multiple_of(HUGE_PAGE))?;
    buf.as_mut_slice().fill(0);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(32, RANDOM_SEED);
        assert_ne!(p, (0..32).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..32).collect::<Vec<_>>());
    }

    #[test]
    fn plan_sizes() {
        let args = |quick, size| Args {
            json: false,
            size,
            dir: None,
            quick,
        };
        let p = Plan::new(&args(false, None)).unwrap();
        assert_eq!((p.spec.layers, p.spec.layer_size), (32, 64 * MIB));
        assert_eq!(p.budget, 512 * MIB);
        let p = Plan::new(&args(true, None)).unwrap();
        assert_eq!((p.spec.layers, p.spec.layer_size), (16, 16 * MIB));
        assert_eq!(p.budget, 64 * MIB);
        let p = Plan::new(&args(true, Some(64 * MIB))).unwrap();
        assert_eq!((p.spec.layers, p.spec.layer_size), (16, 4 * MIB));
        assert!(Plan::new(&args(true, Some(1000))).is_err());
    }
}
