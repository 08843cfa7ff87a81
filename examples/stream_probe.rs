//! Cold and warm streams next to the ceilings that bound them, interleaved in
//! one run so that a noisy machine affects every figure alike: the
//! measurement behind the buffer pool and the streaming checksum
//! (`docs/architecture.md`, "Measured here").
//!
//! ```sh
//! cargo run --release --example stream_probe -- [MODEL_MIB] [LAYER_MIB] [BUDGET_MIB] [REPS]
//! ```
//!
//! Defaults: a 2 GiB model of 64 MiB layers, a 512 MiB budget, 5 repetitions
//! (as `hyperion bench`). The model is written to a temp dir in the current
//! directory. Prints min / median / max MB/s of each figure:
//!
//! - `ceiling_direct`: `O_DIRECT` `pread`, 4 MiB requests, into one warm
//!   huge-page buffer, cold;
//! - `cold` / `cold_noverify`: the default config through `stream_layers`
//!   (lookahead `prefetch_threads`), checksums on / off;
//! - `cold_pooled` / `cold_pooled_noverify`: the same on one open model
//!   whose buffer pool an untimed pass filled (every layer released and the
//!   page cache dropped before each pass): no fresh memory;
//! - `warm` / `warm_noverify`: the same with `direct_io: false` and the file in
//!   the page cache;
//! - `copy_warm_buf`: `pread` of the page-cached file, one layer per call, into
//!   one reused, already-faulted buffer (the kernel's copy, nothing else);
//! - `copy_rotating`: the same into `budget / layer` already-faulted buffers
//!   in turn (what a warm pool gives the loader);
//! - `copy_fresh`: the same into a fresh mapping per layer (first touch);
//! - `xxh3`: hashing a warm layer-sized buffer;
//! - `memcpy`: one thread, 512 MiB warm buffer into another.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use hyperion::buffer::AlignedBuf;
use hyperion::{Backend, MappedModel, MmapConfig};

const MIB: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let model_mib = args.next().transpose()?.unwrap_or(2048);
    let layer_mib = args.next().transpose()?.unwrap_or(64);
    let budget_mib = args.next().transpose()?.unwrap_or(512);
    let reps = args.next().transpose()?.unwrap_or(5) as usize;
    let layer = layer_mib * MIB;
    let layers = (model_mib / layer_mib) as usize;
    let budget = budget_mib * MIB;
    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("probe.tmai");
    let spec = hyperion::synth::SynthSpec {
        layers,
        layer_size: layer,
        precision: 32,
        ..Default::default()
    };
    hyperion::synth::write(&path, &spec)?;
    let file_bytes = std::fs::metadata(&path)?.len();
    let model_bytes = layers as u64 * layer;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = |direct_io: bool, verify: bool| MmapConfig {
        max_cache_size: budget,
        backend: Backend::IoUring,
        direct_io,
        verify_checksums: verify,
        // `WARM_CHUNK_KIB`: the request size of the buffered (warm) passes.
        read_chunk_size: match std::env::var("WARM_CHUNK_KIB") {
            Ok(k) if !direct_io => k.parse::<u64>().unwrap_or(4096) << 10,
            _ => MmapConfig::default().read_chunk_size,
        },
        ..MmapConfig::default()
    };
    let names = [
        "ceiling_direct",
        "cold",
        "cold_noverify",
        "warm",
        "warm_noverify",
        "copy_warm_buf",
        "copy_rotating",
        "copy_fresh",
        "xxh3",
        "memcpy",
        "cold_pooled",
        "cold_pooled_noverify",
    ];
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ceiling_buf = AlignedBuf::new(4 * MIB as usize)?;
    ceiling_buf.as_mut_slice().fill(1);
    let mut warm_buf = AlignedBuf::new(layer as usize)?;
    warm_buf.as_mut_slice().fill(1);
    let rotating = (budget / layer).max(1) as usize;
    let mut rot: Vec<AlignedBuf> = (0..rotating)
        .map(|_| {
            let mut b = AlignedBuf::new(layer as usize)?;
            b.as_mut_slice().fill(1);
            Ok(b)
        })
        .collect::<std::io::Result<_>>()?;
    let src = vec![0x5au8; 512 * MIB as usize];
    let mut dst = vec![0u8; 512 * MIB as usize];
    // One open model per checksum setting, its pool filled by an untimed pass.
    let pooled: Vec<MappedModel> = [true, false]
        .into_iter()
        .map(|verify| {
            rt.block_on(async {
                let model = MappedModel::open(&path, config(true, verify)).await?;
                stream_on(&model, layers).await?;
                Ok::<_, hyperion::Error>(model)
            })
        })
        .collect::<Result<_, _>>()?;
    for rep in 0..reps {
        eprintln!("repetition {}/{reps}", rep + 1);
        hyperion::pagecache::drop_cached_pages(&path)?;
        runs[0].push(read_direct(&path, &mut ceiling_buf, file_bytes)?);
        for (k, verify) in [(1, true), (2, false)] {
            hyperion::pagecache::drop_cached_pages(&path)?;
            let v = rt.block_on(stream(&path, config(true, verify), layers))?;
            runs[k].push(v);
        }
        for (k, model) in [(10, &pooled[0]), (11, &pooled[1])] {
            for i in 0..layers {
                model.release(i)?;
            }
            hyperion::pagecache::drop_cached_pages(&path)?;
            runs[k].push(rt.block_on(stream_on(model, layers))?);
        }
        // `COLD_ONLY=1`: only the cold figures, for more repetitions.
        if std::env::var_os("COLD_ONLY").is_some() {
            continue;
        }
        // Warm the page cache with one untimed pass (as `hyperion bench`
        // does), then the warm figures.
        let f = File::open(&path)?;
        rt.block_on(stream(&path, config(false, false), layers))?;
        copy_into(&f, layer, layers, std::slice::from_mut(&mut warm_buf))?;
        for (k, verify) in [(3, true), (4, false)] {
            let resident = hyperion::pagecache::cached_fraction(&path)?;
            let v = rt.block_on(stream(&path, config(false, verify), layers))?;
            if resident < 0.999 {
                eprintln!(
                    "warning: only {:.1}% of the file was in the page cache",
                    resident * 100.0
                );
            }
            runs[k].push(v);
        }
        runs[5].push(copy_into(
            &f,
            layer,
            layers,
            std::slice::from_mut(&mut warm_buf),
        )?);
        runs[6].push(copy_into(&f, layer, layers, &mut rot)?);
        let t = Instant::now();
        for i in 0..layers {
            let mut b = AlignedBuf::new(layer as usize)?;
            read_full(&f, b.as_mut_slice(), i as u64 * layer)?;
            std::hint::black_box(&b);
        }
        runs[7].push(model_bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut h = 0u64;
        for _ in 0..8 {
            h ^= twox_hash::XxHash3_64::oneshot(std::hint::black_box(warm_buf.as_slice()));
        }
        std::hint::black_box(h);
        runs[8].push(8.0 * layer as f64 / 1e6 / t.elapsed().as_secs_f64());
        dst.copy_from_slice(std::hint::black_box(&src));
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        runs[9].push(src.len() as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    println!(
        "{layers} x {layer_mib} MiB, budget {budget_mib} MiB, {reps} repetitions (MB/s: min / median / max)"
    );
    for (name, mut r) in names.iter().zip(runs) {
        if r.is_empty() {
            continue;
        }
        r.sort_by(f64::total_cmp);
        println!(
            "{name:16} {:>8.0} {:>8.0} {:>8.0}   all: {:?}",
            r[0],
            r[r.len() / 2],
            r[r.len() - 1],
            r.iter().map(|v| v.round() as u64).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// MB/s of one pass over every layer of an open model.
async fn stream_on(model: &MappedModel, layers: usize) -> hyperion::Result<f64> {
    let lookahead = model.config().prefetch_threads;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut s = model.stream_layers(0..layers, Some(lookahead));
    while let Some(w) = s.next().await {
        bytes += w?.len() as u64;
    }
    Ok(bytes as f64 / 1e6 / start.elapsed().as_secs_f64())
}

async fn stream(path: &Path, config: MmapConfig, layers: usize) -> hyperion::Result<f64> {
    let lookahead = config.prefetch_threads;
    let model = MappedModel::open(path, config).await?;
    let before = vmstat();
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut s = model.stream_layers(0..layers, Some(lookahead));
    while let Some(w) = s.next().await {
        bytes += w?.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    if std::env::var_os("PROBE_STATS").is_some() {
        let after = vmstat();
        let delta: Vec<String> = after
            .iter()
            .zip(&before)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| format!("{}+{}", a.0, a.1.saturating_sub(b.1)))
            .collect();
        let st = model.stats();
        eprintln!(
            "direct {} verify {}: {:.0} MB/s, reads busy {} ms, pool reuses {}; vmstat {}",
            model.config().direct_io,
            model.config().verify_checksums,
            bytes as f64 / 1e6 / secs,
            st.read_busy_nanos / 1_000_000,
            st.pool_reuses,
            delta.join(" ")
        );
    }
    model.close();
    Ok(bytes as f64 / 1e6 / secs)
}

fn read_full(f: &File, buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let n = f.read_at(&mut buf[at..], off)?;
        if n == 0 {
            break;
        }
        at += n;
        off += n as u64;
    }
    Ok(())
}

/// Reads the (page-cached) file with `pread`, one layer-sized call at a
/// time, into `bufs` in turn; MB/s.
fn copy_into(f: &File, layer: u64, layers: usize, bufs: &mut [AlignedBuf]) -> std::io::Result<f64> {
    let t = Instant::now();
    for i in 0..layers {
        let n = bufs.len();
        read_full(f, bufs[i % n].as_mut_slice(), i as u64 * layer)?;
    }
    Ok((layers as u64 * layer) as f64 / 1e6 / t.elapsed().as_secs_f64())
}

fn read_direct(path: &Path, buf: &mut AlignedBuf, file_bytes: u64) -> std::io::Result<f64> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let t = Instant::now();
    let mut off = 0;
    while off < file_bytes {
        let n = f.read_at(buf.as_mut_slice(), off)?;
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    Ok(off as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// A few counters of `/proc/vmstat` (for `PROBE_STATS`).
fn vmstat() -> Vec<(String, u64)> {
    const KEYS: [&str; 9] = [
        "pgfault",
        "thp_fault_alloc",
        "thp_fault_fallback",
        "compact_stall",
        "pgscan_kswapd",
        "pgscan_direct",
        "workingset_refault_file",
        "pgmajfault",
        "pgactivate",
    ];
    let text = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| KEYS.contains(k))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap_or(0)))
        .collect()
}
