//! Streams every layer of a model file through the loader, cold, and prints
//! the throughput: the measurement behind the README's read figures.
//!
//! ```sh
//! cargo run --release --example stream -- MODEL.tmai [BUDGET_MIB] [auto|io-uring|mmap]
//! ```

use std::time::Instant;

use hyperion::{Backend, MappedModel, MmapConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: stream MODEL [BUDGET_MIB] [auto|io-uring|mmap]")?;
    let budget: u64 = args.next().map_or(Ok(256), |s| s.parse())? << 20;
    let backend = match args.next().as_deref() {
        None | Some("auto") => Backend::Auto,
        Some("io-uring") => Backend::IoUring,
        Some("mmap") => Backend::Mmap,
        Some(other) => return Err(format!("unknown backend {other}").into()),
    };
    hyperion::pagecache::drop_cached_pages(path.as_ref())?;
    let config = MmapConfig {
        max_cache_size: budget,
        backend,
        ..MmapConfig::default()
    };
    let model = MappedModel::open(&path, config).await?;
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..model.layer_count() {
        // Keep the prefetcher two layers ahead.
        for ahead in i + 1..(i + 3).min(model.layer_count()) {
            model.prefetch(ahead);
        }
        bytes += model.layer(i).await?.len() as u64;
    }
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
