//! The outside-style probe of deep read-ahead: a program that uses the
//! public API as a user's would — open a model, `prefetch` the next `AHEAD`
//! layers, `layer(i).await`, touch it, `release(i)` — on a fresh model,
//! three passes each, the page cache dropped before every pass, interleaved
//! with the `O_DIRECT` ceiling reader. Needs root (to drop the page cache).
//!
//! ```sh
//! cargo run --release --example prefetch_probe -- [MODEL_MIB] [LAYER_MIB] [BUDGET_MIB] [AHEAD,AHEAD,...]
//! ```
//!
//! Defaults: a 2 GiB model of 32 MiB layers, a 512 MiB budget, read-ahead
//! of 2 and of 14 (as far as the budget holds beside the layer in use).
//! Prints MB/s of each pass and its ratio to the ceiling read just before.
//!
//! `PROBE_MODES=fresh,pooled` opens, for each read-ahead, one model of each
//! mode in turn: `fresh` (the default config; a new model's buffers are new
//! memory) and `pooled` (the models share one `BufferPool` of the budget's
//! size, so a new model takes over the buffers the last pooled one left).
//! `PROBE_SETTLE=S` sleeps S seconds before each model opens: on these VMs
//! memory freed a few seconds ago has gone back to the host.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use hyperion::buffer::AlignedBuf;
use hyperion::{synth, BufferPool, MappedModel, MmapConfig};

const MIB: u64 = 1 << 20;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `O_DIRECT` reads of the whole file in 4 MiB requests into one
/// huge-page-advised buffer faulted in before the clock starts (as
/// `hyperion bench`'s `ceiling_direct`); MB/s.
fn ceiling(path: &std::path::Path) -> std::io::Result<f64> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = AlignedBuf::new(4 << 20)?;
    buf.as_mut_slice().fill(0);
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = file.read(buf.as_mut_slice())?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (model_mib, layer_mib, budget_mib) = (arg(1, 2048), arg(2, 32), arg(3, 512));
    let aheads: Vec<usize> = std::env::args()
        .nth(4)
        .unwrap_or_else(|| "2,14".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("probe.tmai");
    let layers = (model_mib / layer_mib) as usize;
    synth::write(
        &path,
        &synth::SynthSpec {
            layers,
            layer_size: layer_mib * MIB,
            precision: 32,
            ..synth::SynthSpec::default()
        },
    )?;
    let modes = std::env::var("PROBE_MODES").unwrap_or_else(|_| "fresh".into());
    let settle: f64 = std::env::var("PROBE_SETTLE").map_or(Ok(0.0), |s| s.parse())?;
    let pool = BufferPool::new(budget_mib * MIB);
    println!("{layers} layers × {layer_mib} MiB, budget {budget_mib} MiB; MB/s (× the ceiling read just before)");
    for (&ahead, mode) in aheads
        .iter()
        .flat_map(|a| modes.split(',').map(move |m| (a, m)))
    {
        let config = MmapConfig {
            max_cache_size: budget_mib * MIB,
            buffer_pool: match mode {
                "fresh" => None,
                "pooled" => Some(pool.clone()),
                other => return Err(format!("PROBE_MODES: unknown mode {other}").into()),
            },
            ..MmapConfig::default()
        };
        std::thread::sleep(std::time::Duration::from_secs_f64(settle));
        let model = MappedModel::open(&path, config).await?;
        let mut line = format!("{mode:>6} ahead {ahead:>2}:");
        for pass in 1..=3 {
            hyperion::pagecache::drop_cached_pages(&path)?;
            let bound = ceiling(&path)?;
            hyperion::pagecache::drop_cached_pages(&path)?;
            let start = Instant::now();
            let mut bytes = 0u64;
            let mut sum = 0u64;
            for i in 0..layers {
                for next in i + 1..=(i + ahead).min(layers - 1) {
                    model.prefetch(next)?;
                }
                let weights = model.layer(i).await?;
                let data = weights.bytes();
                // "Use" the layer: read one byte per page.
                sum = data
                    .iter()
                    .step_by(4096)
                    .fold(sum, |s, &b| s + u64::from(b));
                bytes += data.len() as u64;
                drop(weights);
                model.release(i)?;
            }
            let mb_s = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
            std::hint::black_box(sum);
            line += &format!(
                "  pass {pass} {mb_s:>6.0} ({:.2}; ceiling {bound:.0})",
                mb_s / bound
            );
        }
        let s = model.stats();
        line += &format!(
            "  [reads {}, prefetch used {} skipped {} wasted {}, pool reuses {} reclaimed {}]",
            s.reads,
            s.prefetch_used,
            s.prefetch_skipped,
            s.prefetch_wasted,
            s.pool_reuses,
            s.pool_reclaimed
        );
        println!("{line}");
        model.close();
    }
    Ok(())
}
