//! Loader configuration: the `HyperionMmapConfig` of the `mmap_loader` API
//! (`docs/api.md`) and a few Rust-side settings, with the reasoning and the
//! measurements behind each default.

use std::time::Duration;

use crate::error::{Error, Result};

/// Which I/O engine reads layers that are not cached.
///
/// Whatever the engine, a fetch returns the layer's exact bytes or an error.
/// They differ in what happens when another process truncates the file while
/// the model is open: io_uring and pread turn it into [`Error::Truncated`];
/// mmap can raise `SIGBUS`, which kills the process (see [`Backend::Mmap`]).
/// `Auto` never picks mmap.
///
/// Non-exhaustive: engines may be added (pread was), so a `match` on it
/// needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel allows it, else [`Backend::Pread`] (said once
    /// through `tracing::warn!`); with `direct_io: false`, always
    /// [`Backend::Pread`], which copies from the page cache faster and more
    /// steadily than buffered io_uring (measured: `docs/architecture.md`,
    /// "Backends"). With io_uring and `direct_io`, a layer found in the page
    /// cache is read by the pread engine too, whose copies run on a thread
    /// per layer rather than on the one ring thread. [`MappedModel::backend`](crate::MappedModel::backend)
    /// names the engine that reads from the disk. Never mmap, so never
    /// `SIGBUS`.
    #[default]
    Auto,
    /// io_uring through tokio-uring on a dedicated ring thread; fails to open
    /// with [`Error::BackendUnavailable`] if the ring cannot be created
    /// (seccomp, `io_uring_disabled`, old kernels).
    IoUring,
    /// Blocking `pread(2)` on tokio's blocking pool, one task per layer,
    /// into the same page-aligned buffers as io_uring, with the same
    /// `direct_io`, `read_chunk_size` and `reads_in_flight` (threads of the
    /// task instead of requests on a ring). Works wherever files can be read;
    /// a truncated file is [`Error::Truncated`]. With `O_DIRECT` it reads as
    /// fast as io_uring here (`docs/architecture.md`, "Measured here").
    Pread,
    /// `mmap` + `madvise`: layers are views into a mapping of the file (no
    /// copy; `direct_io` and the read settings do not apply).
    ///
    /// **Caveat:** if another process truncates the file while the model is
    /// open, touching a lost page raises `SIGBUS`, which kills the process.
    /// Each read re-checks the file's length, so a truncation *before* a read
    /// is [`Error::Truncated`], but one racing a read cannot be caught.
    /// Use it only for files nothing else will shrink (`docs/reliability.md`).
    Mmap,
    /// Ranged GETs to object storage, for models opened from an `s3://`
    /// URL (the `object-store` feature; `docs/object-storage.md`): what
    /// [`Backend::Auto`] reads such a model with, and the only engine that
    /// can. Each layer is `read_chunk_size` requests, `reads_in_flight` at
    /// a time, written straight into the layer's buffer.
    ObjectStore,
}

/// Which cold layers [`MmapConfig::share_cold_layers`] reads through the
/// page cache and shares (with [`MmapConfig::share_page_cache`]).
///
/// A copy into a buffer is the faster path where fresh memory is quick to
/// fault in (a buffer the model's pool already holds, or memory the guest
/// just freed): `O_DIRECT` at the disk's speed. It is the slower one where
/// the host must back every new page again (VMs with free page reporting,
/// a few seconds after memory was freed): there a whole load copying into
/// fresh memory ran at 155–170 MB/s and the same load through the page
/// cache at 1,406–1,627, while with backed memory the order was the other
/// way round (a copy 1,926, the page cache 1,232; `docs/performance.md`,
/// "Cold loads through the page cache").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ColdSharing {
    /// Cold layers are copied into buffers (the page cache is left alone).
    #[default]
    Never,
    /// A cold layer is shared when its read would need a fresh buffer (the
    /// pool has none of its size) and fresh memory was last seen faulting
    /// in slower than 1 GB/s, within the last 2 s (every fresh buffer is
    /// timed in 8 MiB steps as it is faulted in, and one huge page when the
    /// model opens); otherwise it is copied. So a load follows the memory
    /// the host gives it, layer by layer: the copy where memory is fast,
    /// the page cache where it is not. Layers already being copied when
    /// memory turns slow finish at its pace: on a settled host this came to
    /// 0.69–0.80× of `Always`, right after other loads 1.14–1.67× of it
    /// (`docs/performance.md`, "Following the memory").
    WhenFreshMemoryIsSlow,
    /// Every cold layer is shared.
    Always,
}

impl Backend {
    /// A short lowercase name (`auto`, `io_uring`, `pread`, `mmap`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Pread => "pread",
            Backend::Mmap => "mmap",
            Backend::ObjectStore => "object_store",
        }
    }
}

/// How a model is loaded and cached.
///
/// The first five fields are the C API's `HyperionMmapConfig`
/// (`docs/api.md`); the rest tune the Rust implementation. Build one with struct-update syntax:
///
/// ```
/// use hyperion::{Backend, MmapConfig};
/// let config = MmapConfig {
///     max_cache_size: 512 << 20,
///     backend: Backend::Mmap,
///     ..MmapConfig::default()
/// };
/// assert!(config.prefetch_enabled);
/// ```
///
/// Always build it with `..MmapConfig::default()`: fields may be added.
#[derive(Debug, Clone, PartialEq)]
pub struct MmapConfig {
    /// Bytes of layer buffers held at once — cached, held by callers, and
    /// being read — never exceeded at any instant.
    ///
    /// Default: a quarter of physical memory, clamped to 256 MiB..=16 GiB.
    /// Weights are only part of what an inference process holds (activations,
    /// KV cache, the page cache that feeds reads), and a quarter leaves room
    /// for the rest on any machine from a laptop to a workstation.
    pub max_cache_size: u64,
    /// Whether [`prefetch`](crate::MappedModel::prefetch) reads ahead. When
    /// false, it returns [`Error::PrefetchDisabled`] and reads nothing.
    ///
    /// Default: true. Prefetching is how I/O overlaps compute.
    pub prefetch_enabled: bool,
    /// The most prefetch reads in flight at once (a semaphore, not OS threads).
    ///
    /// Default: 2. On the disk measured here, which serves one request at a
    /// time, 1, 2 and 4 were within the noise of each other, and a lookahead
    /// of 4 layers was no faster than 2; more prefetches in flight only
    /// reserve budget earlier. 2 costs nothing here and leaves room for
    /// faster devices (`docs/architecture.md`, "Measured here";
    /// `docs/performance.md`).
    pub prefetch_threads: usize,
    /// Whether eviction learns from the access pattern. False: lowest
    /// priority first, then least recently used. True: lowest priority
    /// first, then the adaptive policy (LIRS, switching to LRU while LRU does
    /// better; `docs/caching.md`), which keeps a stable set of layers when a
    /// cyclic pass does not fit, where LRU misses on every access.
    ///
    /// Default: true. In the simulator it reaches 0.95–0.98× the optimal
    /// hit rate on cyclic passes (LRU: 0), beats LRU on Zipf-skewed access,
    /// and stays within 0.2 points of LRU on recency-friendly traces
    /// (`docs/caching.md`, "Measurements").
    pub adaptive_caching: bool,
    /// The allocation granule: every cached layer is charged and allocated in
    /// whole multiples of this many bytes, and at least one. Rounded up to a
    /// multiple of 4 KiB, the block size of direct I/O.
    ///
    /// Default: 4 KiB — the smallest that direct I/O allows, so small layers
    /// (norms, biases) waste at most 4 KiB of budget each.
    pub min_layer_cache_size: u64,
    /// The I/O engine.
    ///
    /// Default: [`Backend::Auto`] — io_uring, or pread where io_uring is
    /// unavailable; with `O_DIRECT` the two read as fast as each other here
    /// (`docs/architecture.md`, "Measured here"), and neither can `SIGBUS`
    /// on a truncated file. [`Backend::Mmap`] only when asked for.
    pub backend: Backend,
    /// Read with `O_DIRECT` (io_uring and pread): reads bypass the page cache,
    /// so a layer is held once (in our buffer), not twice. Falls back to
    /// buffered reads where the filesystem refuses it. Chunks whose pages
    /// are in the page cache already are copied from it instead of read from
    /// the disk again ([`Stats::page_cache_bytes`](crate::Stats::page_cache_bytes)).
    ///
    /// Default: true — the fastest path measured here (cold: 3,678 MB/s
    /// against 2,347 buffered through the same engine, in one `hyperion
    /// bench` run: `docs/performance.md`), and no double caching.
    pub direct_io: bool,
    /// Share the page cache's pages instead of copying them: a layer whose
    /// bytes are cached already (one byte range, its first, middle and last
    /// pages cached) is returned as a view into a read-only mapping of the
    /// file, as the mmap-based loaders do — no copy, no fresh memory. Other
    /// layers are read by the engine `backend` picks (not [`Backend::Mmap`]
    /// or [`Backend::ObjectStore`], which ignore this).
    ///
    /// It cannot raise `SIGBUS`: a file is mapped only under a read lease
    /// (`fcntl(F_SETLEASE)`), so a process that opens it for writing or
    /// truncates it waits until Hyperion has copied every shared page it
    /// still uses into its own memory and released the lease. Where no lease
    /// can be taken (the file is open for writing elsewhere, another user's
    /// file without `CAP_LEASE`, a filesystem without leases, a `SIGURG`
    /// handler installed) layers are copied as without it. What it costs
    /// others: a writer or truncation of the file waits up to ~20 ms plus
    /// the copy while layers are shared. `docs/architecture.md`, "Sharing
    /// the page cache", and `docs/reliability.md`.
    ///
    /// Default: false. A warm whole-model load of 2 GiB here: ~10× faster
    /// with it ([`Stats::page_cache_shared_bytes`](crate::Stats::page_cache_shared_bytes)
    /// counts the bytes shared; `docs/performance.md`, "Warm whole loads").
    pub share_page_cache: bool,
    /// With [`share_page_cache`](Self::share_page_cache), whether layers
    /// that are *not* in the page cache are shared too: read through it
    /// (`MADV_WILLNEED` readahead of the layer's window of the leased file
    /// mapping, then `MADV_POPULATE_READ`) and returned as the mapped pages,
    /// instead of copied into fresh anonymous memory. The lease, the
    /// copy-out before a truncation and the cap on shared bytes are the
    /// same; layers past the cap, of more than one byte range, or of a file
    /// that could not be leased are copied. Ignored without
    /// `share_page_cache`. See [`ColdSharing`] for the three choices.
    ///
    /// What it costs: the model's bytes stay in the page cache after the
    /// load (reclaimable, as after any buffered read), where `O_DIRECT`
    /// leaves the cache alone.
    ///
    /// Default: [`ColdSharing::Never`].
    pub share_cold_layers: ColdSharing,
    /// With [`share_page_cache`](Self::share_page_cache), shared views may
    /// be written through a raw pointer, as `torch.UntypedStorage.from_file(…,
    /// shared=False)` (what `safetensors.torch.load_file` returns) may: the
    /// file is mapped privately and each view's window made writable, so a
    /// written page becomes a private anonymous copy and the file and its
    /// page cache never change. For the Python package's `load_file`, whose
    /// arrays are writable. Rust never writes through
    /// [`LayerWeights::bytes`](crate::LayerWeights::bytes).
    ///
    /// What it costs: a window made writable is charged to the kernel's
    /// overcommit accounting (as private writable memory) whether or not it
    /// is written; where that is refused, the layer is copied instead. A write racing the copy-out before a
    /// lease break (another process truncating or opening the file for
    /// writing at that moment) may be lost.
    ///
    /// Default: false.
    pub share_writable: bool,
    /// Size of each read request a layer is split into (rounded to 4 KiB;
    /// io_uring and pread).
    ///
    /// Default: 4 MiB. Into the engines' 2 MiB-aligned huge-page buffers a
    /// 4 MiB read reaches the device as one request, and that is what this
    /// disk's ceiling needs: ~2,500–3,300 MB/s, where `O_DIRECT` reads into
    /// ordinary 4 KiB-page buffers, which the kernel splits into small
    /// requests, reach ~1,000–1,300 (`docs/bench/baseline.md`). Larger
    /// requests gain nothing: 16 MiB reads were no faster (~2,800), and in
    /// the loader 8 and 16 MiB chunks were within the noise of 4 MiB, while
    /// 2 MiB chunks were slower (`docs/architecture.md`, "Measured here").
    /// 4 MiB is the smallest request on that plateau.
    pub read_chunk_size: u64,
    /// Chunk reads of one layer in flight at once: requests on the ring for
    /// io_uring, threads of the layer's blocking task for pread.
    ///
    /// Default: 2. The disk measured here serves one request at a time, and
    /// 1, 2 and 4 chunk reads in flight per layer were within the noise of
    /// each other (`docs/architecture.md`, "Measured here"); 2 costs nothing
    /// here and leaves room for devices with deeper queues (NVMe may want
    /// more).
    pub reads_in_flight: usize,
    /// Whether a layer read from disk is checked against the checksum its file
    /// records (`.tmai` only); a mismatch is [`Error::ChecksumMismatch`].
    ///
    /// Default: true — a loader must never return wrong bytes. The check is
    /// xxh3 (30–34 GB/s on one core here), far faster than the disk, but it
    /// is one more pass over memory: a cold stream of `.tmai` layers runs
    /// 4–8% below the same stream unchecked (`docs/performance.md`, "The
    /// checksum on a cold read").
    pub verify_checksums: bool,
    /// How long a fetch that finds no memory waits for some to be freed
    /// (handles dropped, reads in flight finishing and becoming evictable)
    /// before it fails with [`Error::BudgetExhausted`]. `Duration::ZERO` fails
    /// at once; `Duration::MAX` waits as long as it takes.
    ///
    /// Default: 1 s. Long enough to ride out other tasks' brief holds (a
    /// layer being handed to its reader, a compute step), so concurrent tasks
    /// get backpressure instead of spurious errors; short enough that a task
    /// that holds the whole budget and asks for more gets its error promptly
    /// instead of hanging. It should exceed the time to read one layer, since
    /// a read in flight holds its memory until it lands: at this disk's
    /// ~3 GB/s, 1 s covers layers up to a few GB (`docs/architecture.md`,
    /// "When every byte is held").
    pub memory_wait_timeout: Duration,
    /// Layer buffers shared with the models opened after this one: when
    /// the model closes, its idle buffers go to this pool (up to the pool's
    /// cap) instead of back to the kernel, and its reads take buffers of
    /// the right size from the pool before they fault fresh memory in. For
    /// a process that opens model after model (a server swapping models).
    /// The memory a pool holds is resident and counted in no model's
    /// budget; [`BufferPool::retained_bytes`](crate::BufferPool::retained_bytes)
    /// tells how much.
    ///
    /// Default: `None` — `close` gives all memory back. Where fresh memory
    /// is slow (these VMs, a few seconds after a free: the host must back
    /// every new page again) a new model's first pass ran at the disk's
    /// speed with a pool instead of at the rate fresh memory faults in
    /// (`docs/performance.md`, "A buffer pool across models").
    pub buffer_pool: Option<crate::buffer_pool::BufferPool>,
    /// How models in object storage (`s3://bucket/key`) are reached: the
    /// endpoint, retries, timeouts and requests in flight. Local files
    /// ignore it. Credentials and the region come from the standard `AWS_*`
    /// environment (`docs/object-storage.md`).
    pub object_store: ObjectStoreConfig,
}

/// How an `s3://` model is read (the `object-store` feature): what the
/// standard `AWS_*` environment does not say, or what overrides it.
///
/// Always build it with `..ObjectStoreConfig::default()`: fields may be added.
///
/// ```
/// use std::time::Duration;
/// use hyperion::{MmapConfig, ObjectStoreConfig};
/// let config = MmapConfig {
///     object_store: ObjectStoreConfig {
///         endpoint: Some("http://127.0.0.1:9000".into()),
///         max_retries: 3,
///         ..ObjectStoreConfig::default()
///     },
///     ..MmapConfig::default()
/// };
/// assert_eq!(config.object_store.request_timeout, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStoreConfig {
    /// The S3 endpoint (`http://127.0.0.1:9000`, `https://s3.example.com`).
    /// `None`: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), else AWS itself.
    /// An `http://` endpoint is allowed without `AWS_ALLOW_HTTP`: naming
    /// one is the permission.
    pub endpoint: Option<String>,
    /// Extra `object_store` settings applied after the environment, as
    /// `(key, value)` pairs of `AmazonS3ConfigKey` names
    /// (`aws_access_key_id`, `aws_region`, `aws_skip_signature` …); an
    /// unknown key is [`Error::ObjectStore`] at open.
    pub options: Vec<(String, String)>,
    /// How many times a failed request is retried: 5xx and throttling
    /// answers, refused or dropped connections, a body cut short (resumed
    /// from the byte where it broke, only if the ETag is unchanged).
    ///
    /// Default: 10 (object_store's default).
    pub max_retries: usize,
    /// The first retry waits this long; each later one up to twice as long
    /// (with jitter), never more than [`max_backoff`](Self::max_backoff).
    ///
    /// Default: 100 ms.
    pub retry_backoff: Duration,
    /// The longest wait between two retries. Default: 15 s.
    pub max_backoff: Duration,
    /// No retry starts later than this after a request's first attempt, so
    /// a failing request ends within about `retry_timeout +
    /// request_timeout`.
    ///
    /// Default: 60 s.
    pub retry_timeout: Duration,
    /// The longest one attempt may take, from sending the request to the
    /// body's last byte; a stalled request is cut and retried.
    ///
    /// Default: 30 s: a `read_chunk_size` request of 4 MiB needs only
    /// ~140 KB/s to finish in time.
    pub request_timeout: Duration,
    /// The longest a connection may take to open. Default: 5 s.
    pub connect_timeout: Duration,
    /// Requests in flight at once for one model, over all its layers (each
    /// layer issues up to `reads_in_flight`).
    ///
    /// Default: 64: well above `prefetch_threads × reads_in_flight` with
    /// the defaults (4), so it only bounds many concurrent demand fetches.
    pub max_requests_in_flight: usize,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            endpoint: None,
            options: Vec::new(),
            max_retries: 10,
            retry_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            retry_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_requests_in_flight: 64,
        }
    }
}

impl Default for MmapConfig {
    fn default() -> Self {
        MmapConfig {
            max_cache_size: default_cache_size(),
            prefetch_enabled: true,
            prefetch_threads: 2,
            adaptive_caching: true,
            min_layer_cache_size: 4096,
            backend: Backend::Auto,
            direct_io: true,
            share_page_cache: false,
            share_cold_layers: ColdSharing::Never,
            share_writable: false,
            read_chunk_size: 4 << 20,
            reads_in_flight: 2,
            verify_checksums: true,
            memory_wait_timeout: Duration::from_secs(1),
            buffer_pool: None,
            object_store: ObjectStoreConfig::default(),
        }
    }
}

/// The most prefetch reads, or chunk reads per layer, that may be in flight.
pub const MAX_PARALLEL: usize = 1024;

impl MmapConfig {
    /// Checks the values and returns the allocation granule.
    pub(crate) fn validate(&self) -> Result<u64> {
        if self.max_cache_size == 0 {
            return Err(Error::InvalidArgument("max_cache_size must be > 0".into()));
        }
        if self.prefetch_threads == 0 && self.prefetch_enabled {
            return Err(Error::InvalidArgument(
                "prefetch_threads must be > 0 when prefetch_enabled is true".into(),
            ));
        }
        if self.prefetch_threads > MAX_PARALLEL {
            return Err(Error::InvalidArgument(format!(
                "prefetch_threads is {}, above the limit of {MAX_PARALLEL}",
                self.prefetch_threads
            )));
        }
        if self.reads_in_flight == 0 || self.reads_in_flight > MAX_PARALLEL {
            return Err(Error::InvalidArgument(format!(
                "reads_in_flight must be between 1 and {MAX_PARALLEL}, not {}",
                self.reads_in_flight
            )));
        }
        if self.read_chunk_size == 0 || self.read_chunk_size > 1 << 30 {
            return Err(Error::InvalidArgument(
                "read_chunk_size must be between 1 byte and 1 GiB".into(),
            ));
        }
        if self.min_layer_cache_size > 1 << 40 {
            return Err(Error::InvalidArgument(
                "min_layer_cache_size is above 1 TiB".into(),
            ));
        }
        let o = &self.object_store;
        if o.max_requests_in_flight == 0 || o.max_requests_in_flight > MAX_PARALLEL {
            return Err(Error::InvalidArgument(format!(
                "object_store.max_requests_in_flight must be between 1 and {MAX_PARALLEL}, not {}",
                o.max_requests_in_flight
            )));
        }
        Ok(self.min_layer_cache_size.max(1).next_multiple_of(4096))
    }
}

fn default_cache_size() -> u64 {
    let total = crate::sys::file::physical_memory().unwrap_or(4 << 30);
    (total / 4).clamp(256 << 20, 16 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_granule_is_whole_blocks() {
        let c = MmapConfig::default();
        assert_eq!(c.validate().unwrap(), 4096);
        assert!(c.max_cache_size >= 256 << 20);
        let c = MmapConfig {
            min_layer_cache_size: 5000,
            ..c
        };
        assert_eq!(c.validate().unwrap(), 8192);
        let c = MmapConfig {
            min_layer_cache_size: 0,
            ..c
        };
        assert_eq!(c.validate().unwrap(), 4096);
        assert!(MmapConfig {
            max_cache_size: 0,
            ..c.clone()
        }
        .validate()
        .is_err());
        assert!(MmapConfig {
            reads_in_flight: 0,
            ..c
        }
        .validate()
        .is_err());
    }
}
