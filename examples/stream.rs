//! Streams every layer of a model file through the loader, cold, and prints
//! the throughput: the measurement behind the README's read figures.
//!
//! ```sh
//! cargo run --release --example stream -- MODEL.tmai [BUDGET_MIB] [auto|io-uring|pread|mmap]
//! ```
//!
//! Tuning knobs, for measuring the defaults: `CHUNK_MIB` or `CHUNK_KIB` (read_chunk_size),
//! `DEPTH` (reads_in_flight), `PREFETCH` (prefetch_threads, also the
//! lookahead), `DIRECT=0` (buffered reads), `VERIFY=0` (no checksums),
//! `PASSES=N` (N timed passes on the one model, reset between them),
//! `POOLED=1` (an untimed pass first, so the timed one reads into the
//! buffer pool rather than fresh memory).

use std::time::Instant;

use hyperion::{Backend, MappedModel, MmapConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: stream MODEL [BUDGET_MIB] [auto|io-uring|pread|mmap]")?;
    let budget: u64 = args.next().map_or(Ok(256), |s| s.parse())? << 20;
    let backend = match args.next().as_deref() {
        None | Some("auto") => Backend::Auto,
        Some("io-uring") => Backend::IoUring,
        Some("pread") => Backend::Pread,
        Some("mmap") => Backend::Mmap,
        Some(other) => return Err(format!("unknown backend {other}").into()),
    };
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    // WARM=1 keeps the file's pages cached (use with DIRECT=0 for a warm read).
    let warm = env("WARM") == Some(1);
    if !warm {
        hyperion::pagecache::drop_cached_pages(path.as_ref())?;
    }
    let defaults = MmapConfig::default();
    let config = MmapConfig {
        max_cache_size: budget,
        backend,
        read_chunk_size: env("CHUNK_KIB")
            .map(|k| k << 10)
            .or(env("CHUNK_MIB").map(|m| m << 20))
            .unwrap_or(defaults.read_chunk_size),
        reads_in_flight: env("DEPTH").map_or(defaults.reads_in_flight, |d| d as usize),
        prefetch_threads: env("PREFETCH").map_or(defaults.prefetch_threads, |p| p as usize),
        direct_io: env("DIRECT") != Some(0),
        verify_checksums: env("VERIFY") != Some(0),
        ..defaults
    };
    let lookahead = config.prefetch_threads;
    let model = MappedModel::open(&path, config).await?;
    // Every layer released (its buffer pooled) and, unless WARM, the file's
    // pages dropped: the next pass reads everything again, as the first.
    let reset = |model: &MappedModel| -> Result<(), Box<dyn std::error::Error>> {
        for i in 0..model.layer_count() {
            model.release(i)?;
        }
        if !warm {
            hyperion::pagecache::drop_cached_pages(path.as_ref())?;
        }
        Ok(())
    };
    if env("POOLED") == Some(1) {
        stream(&model, lookahead).await?;
        reset(&model)?;
    }
    // `PASSES=N`: N timed passes; all but the last print a short line.
    for _ in 1..env("PASSES").unwrap_or(1) {
        let start = Instant::now();
        let bytes = stream(&model, lookahead).await?;
        let secs = start.elapsed().as_secs_f64();
        println!("pass: {:.0} MB/s", bytes as f64 / 1e6 / secs);
        reset(&model)?;
    }
    let start = Instant::now();
    let bytes = stream(&model, lookahead).await?;
    let secs = start.elapsed().as_secs_f64();
    let stats = model.stats();
    println!(
        "{} backend: {} layers, {} MiB in {secs:.3} s = {:.0} MB/s (peak memory {} MiB of {} MiB)",
        model.backend().name(),
        model.layer_count(),
        bytes >> 20,
        bytes as f64 / 1e6 / secs,
        stats.peak_memory >> 20,
        budget >> 20
    );
    Ok(())
}

/// Reads every layer in order, keeping the prefetcher `lookahead` layers ahead.
async fn stream(model: &MappedModel, lookahead: usize) -> hyperion::Result<u64> {
    let mut bytes = 0u64;
    if std::env::var_os("STREAM_LAYERS").is_some() {
        use futures::StreamExt;
        let mut s = model.stream_layers(0..model.layer_count(), Some(lookahead));
        while let Some(w) = s.next().await {
            bytes += w?.len() as u64;
        }
        return Ok(bytes);
    }
    for i in 0..model.layer_count() {
        for ahead in i + 1..(i + 1 + lookahead).min(model.layer_count()) {
            let _ = model.prefetch(ahead);
        }
        bytes += model.layer(i).await?.len() as u64;
    }
    Ok(bytes)
}
