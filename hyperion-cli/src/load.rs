//! `hyperion load`: loads a model file the way a user would — every tensor's
//! bytes in memory and touched — and reports MB/s and the process's peak RSS.
//!
//! Two modes:
//! - whole (the default): the budget is the whole model, and every layer is
//!   held until the last one has been read and touched, so at the end the
//!   whole model is in memory at once (what `safetensors.load_file` gives);
//! - streaming (`--budget BYTES`): each layer is touched and dropped while
//!   the next ones stream in, within the budget.
//!
//! "Touched" means summed: the wrapping sum of each tensor's little-endian
//! `u64` words (a tail shorter than 8 bytes adds its bytes one by one), added
//! up over all tensors. `scripts/peer_load.py` computes the same checksum, so
//! every loader in `scripts/bench-peers.sh` is checked to have delivered the
//! same bytes.
//!
//! Peak RSS is the process's `VmHWM` (from `/proc/self/status`), read after
//! the load: one load per process, so the figure belongs to this load alone
//! (it includes the runtime's few MiB).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::demo::BackendArg;
use anyhow::Context;
use futures::StreamExt;
use hyperion::{ColdSharing, LayerWeights, MappedModel, MmapConfig};
use serde_json::json;

const MIB: f64 = (1u64 << 20) as f64;

/// When `--share-cold` shares a cold layer.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareCold {
    /// Every cold layer.
    Always,
    /// Only while fresh memory is slow to fault in.
    Auto,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The model file (.tmai, safetensors, GGUF).
    pub file: PathBuf,
    /// Stream within this many bytes instead of holding the whole model:
    /// each layer is touched and dropped. Without it the budget is the whole
    /// model and every layer is held until all are loaded.
    #[arg(long)]
    pub budget: Option<u64>,
    /// Drop the file's pages from the page cache first, so the load is cold.
    #[arg(long)]
    pub cold: bool,
    /// Buffered reads (`direct_io: false`), so a warm page cache is used.
    #[arg(long)]
    pub buffered: bool,
    /// Share the page cache's pages instead of copying cached layers
    /// (`share_page_cache: true`): views under a read lease, never SIGBUS.
    #[arg(long)]
    pub share_page_cache: bool,
    /// With --share-page-cache, share the layers not in the page cache too,
    /// read into it through the file mapping instead of copied into fresh
    /// memory: `always` (the default of the bare flag;
    /// `ColdSharing::Always`), or `auto`, only while fresh memory is slow to
    /// fault in (`ColdSharing::WhenFreshMemoryIsSlow`).
    #[arg(
        long,
        requires = "share_page_cache",
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always",
        value_name = "WHEN"
    )]
    pub share_cold: Option<ShareCold>,
    /// With --share-page-cache, make the shared views writable (privately,
    /// copy on write: `share_writable: true`), as the Python package's
    /// `load_file` does.
    #[arg(long, requires = "share_page_cache")]
    pub share_writable: bool,
    /// The read backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// What one load measured.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: String,
    pub mode: &'static str,
    pub backend: &'static str,
    pub direct_io: bool,
    pub cold: bool,
    pub budget: u64,
    pub file_bytes: u64,
    pub layers: usize,
    pub tensors: usize,
    /// Tensor bytes delivered and touched.
    pub bytes: u64,
    /// Seconds from before the file's header is read to the last byte touched.
    pub seconds: f64,
    pub checksum: u64,
    /// The most layer bytes Hyperion held at once (its own accounting).
    pub peak_memory: u64,
    /// Bytes that direct reads copied from the page cache because they were
    /// cached already (`Stats::page_cache_bytes`).
    pub page_cache_bytes: u64,
    /// Bytes returned as views of the page cache's pages
    /// (`Stats::page_cache_shared_bytes`).
    pub page_cache_shared_bytes: u64,
    /// `VmRSS` just before the load started.
    pub rss_before: u64,
    /// `VmHWM` after the load: the process's peak resident set.
    pub peak_rss: u64,
}

impl Loaded {
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "file": self.file,
            "mode": self.mode,
            "backend": self.backend,
            "direct_io": self.direct_io,
            "cold": self.cold,
            "budget": self.budget,
            "file_bytes": self.file_bytes,
            "layers": self.layers,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "mb_s": self.mb_s(),
            "checksum": format!("{:016x}", self.checksum),
            "peak_memory": self.peak_memory,
            "page_cache_bytes": self.page_cache_bytes,
            "page_cache_shared_bytes": self.page_cache_shared_bytes,
            "rss_before_bytes": self.rss_before,
            "peak_rss_bytes": self.peak_rss,
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load(&args).map_err(|e| anyhow::anyhow!("load: {e:#}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&loaded.to_json())?);
    } else {
        println!(
            "{}: {} — {} layers, {} tensors, {:.1} MiB in {:.3} s = {:.0} MB/s; peak RSS {:.1} MiB \
             (file {:.1} MiB, budget {:.1} MiB, {} {}, {}; {:.1} MiB copied from the page cache, {:.1} MiB shared); checksum {:016x}",
            args.file.display(),
            loaded.mode,
            loaded.layers,
            loaded.tensors,
            loaded.bytes as f64 / MIB,
            loaded.seconds,
            loaded.mb_s(),
            loaded.peak_rss as f64 / MIB,
            loaded.file_bytes as f64 / MIB,
            loaded.budget as f64 / MIB,
            loaded.backend,
            match (loaded.backend, loaded.direct_io) {
                ("mmap", _) => "mapped",
                ("object_store", _) => "ranged GETs",
                (_, true) => "O_DIRECT",
                (_, false) => "buffered",
            },
            if loaded.cold { "cold" } else { "as cached" },
            loaded.page_cache_bytes as f64 / MIB,
            loaded.page_cache_shared_bytes as f64 / MIB,
            loaded.checksum
        );
    }
    Ok(())
}

/// Loads `args.file` as described in the module docs.
pub fn load(args: &Args) -> anyhow::Result<Loaded> {
    let path = args.file.as_path();
    let remote = hyperion::source::is_object_url(path);
    // An object's size is not a local stat: its layers' bytes stand in
    // (measured after the index is read).
    let file_bytes = if remote {
        0
    } else {
        std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len()
    };
    // An object has no local page cache to drop: every read is cold.
    if args.cold && !remote {
        hyperion::pagecache::drop_cached_pages(path)
            .with_context(|| format!("cannot drop the cached pages of {}", path.display()))?;
    }
    if args.budget == Some(0) {
        anyhow::bail!("--budget 0: the budget must hold at least one layer");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rss_before = rss_field("VmRSS")?;
    let loaded = rt.block_on(load_async(args, path, file_bytes, rss_before))?;
    drop(rt);
    Ok(loaded)
}

async fn load_async(
    args: &Args,
    path: &Path,
    file_bytes: u64,
    rss_before: u64,
) -> anyhow::Result<Loaded> {
    let defaults = MmapConfig::default();
    let start = Instant::now();
    let index = hyperion::format::read_index(path)?;
    let file_bytes = match file_bytes {
        0 => index.layers.iter().map(|l| l.size).sum(),
        n => n,
    };
    let (mode, budget) = match args.budget {
        Some(b) => ("stream", b),
        None => (
            "whole",
            index
                .layers
                .iter()
                .map(|l| l.footprint(defaults.min_layer_cache_size))
                .sum::<u64>()
                .max(defaults.min_layer_cache_size),
        ),
    };
    let config = MmapConfig {
        max_cache_size: budget,
        backend: args.backend.into(),
        direct_io: !args.buffered,
        share_page_cache: args.share_page_cache,
        share_cold_layers: match args.share_cold {
            None => ColdSharing::Never,
            Some(ShareCold::Always) => ColdSharing::Always,
            Some(ShareCold::Auto) => ColdSharing::WhenFreshMemoryIsSlow,
        },
        share_writable: args.share_writable,
        ..defaults
    };
    let model = MappedModel::open(path, config).await?;
    let n = model.layer_count();
    let mut layers = model.stream_layers(0..n, None);
    let (mut bytes, mut tensors, mut checksum) = (0u64, 0usize, 0u64);
    let mut held: Vec<LayerWeights> = Vec::new();
    let mut i = 0;
    while let Some(w) = layers.next().await {
        let w = w.with_context(|| format!("layer {i}"))?;
        for t in w.tensors() {
            checksum = checksum.wrapping_add(touch(t.bytes()));
            bytes += t.bytes().len() as u64;
            tensors += 1;
        }
        if args.budget.is_none() {
            held.push(w);
        }
        i += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let stats = model.stats();
    let backend = model.backend().name();
    drop(layers);
    drop(held);
    model.close();
    Ok(Loaded {
        file: path.display().to_string(),
        mode,
        backend,
        direct_io: !args.buffered,
        // An object is read from the server every time: always cold.
        cold: args.cold || hyperion::source::is_object_url(path),
        budget,
        file_bytes,
        layers: n,
        tensors,
        bytes,
        seconds,
        checksum,
        peak_memory: stats.peak_memory,
        page_cache_bytes: stats.page_cache_bytes,
        page_cache_shared_bytes: stats.page_cache_shared_bytes,
        rss_before,
        peak_rss: rss_field("VmHWM")?,
    })
}

/// The wrapping sum of `bytes` as little-endian `u64` words, a shorter tail
/// added byte by byte: reads every byte, cheaply.
pub fn touch(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|&b| u64::from(b)).sum();
    words
        .map(|w| u64::from_le_bytes(w.try_into().expect("chunks of 8")))
        .fold(tail, u64::wrapping_add)
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn rss_field(name: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {name} in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_sums_words_and_tail() {
        assert_eq!(touch(&[]), 0);
        assert_eq!(touch(&[1, 0, 0, 0, 0, 0, 0, 0]), 1);
        assert_eq!(touch(&[0, 1, 0, 0, 0, 0, 0, 0, 5, 6]), 256 + 11);
        assert_eq!(touch(&[0xff; 16]), u64::MAX.wrapping_add(u64::MAX));
    }

    #[test]
    fn rss_fields_are_read() {
        assert!(rss_field("VmRSS").unwrap() > 0);
        assert!(rss_field("VmHWM").unwrap() >= rss_field("VmRSS").unwrap() / 2);
        assert!(rss_field("NoSuchField").is_err());
    }
}
