//! Sharing the page cache's pages instead of copying them
//! (`MmapConfig::share_page_cache`), without the mmap engine's `SIGBUS`.
//!
//! A layer whose bytes are in the page cache already is returned as a view
//! into a private, read-only mapping of the file: no copy, no fresh memory,
//! as the mmap-based Python loaders do. Every other layer is read by the
//! copying engine this one wraps (io_uring / pread), unless
//! `MmapConfig::share_cold_layers` says otherwise: then a cold layer is read
//! *through* the page cache (`MADV_WILLNEED` readahead of its window, then
//! `MADV_POPULATE_READ`) and shared the same way, needing no fresh
//! anonymous memory (the disk fills page-cache pages, which the guest does
//! not zero). `ColdSharing::Always` does so for every cold layer;
//! `ColdSharing::WhenFreshMemoryIsSlow` only for a layer whose read would
//! need a fresh buffer while fresh memory is slow to fault in
//! (`io/fresh_memory.rs`), and copies the others. With `MmapConfig::share_writable` each view's
//! window is made writable (`mprotect`): the mapping is private, so a
//! written page becomes an anonymous copy and the file never changes, as
//! with the private mappings `safetensors.torch.load_file` returns.
//!
//! # Why it cannot `SIGBUS`
//! Each file is mapped only while Hyperion holds a **read lease** on it
//! (`sys/lease.rs`): another process that opens the file for writing or
//! truncates it waits until the lease is released. A watcher thread asks
//! every [`LEASE_POLL`] whether a lease is being broken; when one is, it
//! stops sharing that file, replaces the pages of every live view of it
//! with an anonymous copy of the same bytes (`mremap` over the view's
//! window: readers see the same bytes throughout), and only then releases
//! the lease. The truncation proceeds against pages no view uses any more.
//! New reads of that file go to the copying engine, which turns a short
//! file into [`Error::Truncated`].
//!
//! Where a lease cannot be had (the file is open for writing, another
//! user's file without `CAP_LEASE`, a filesystem without leases, `SIGURG`
//! handled by the application, `lease-break-time` under 2 s), the file is
//! not shared: every layer is copied as without this option.
//!
//! # What is left
//! The kernel breaks a lease by force after `lease-break-time` (45 s by
//! default). The bytes shared at once are therefore capped at
//! `lease-break-time ×` [`COPY_RATE_FLOOR`] per model, so that copying them
//! all out stays well inside that time even on slow fresh memory
//! (0.3–1.2 GB/s on these VMs); beyond it, layers are copied. A copy that
//! cannot get memory keeps the lease (the writer keeps waiting) and is
//! retried on the next poll. A disk error while a shared page is faulted
//! back in after reclaim raises `SIGBUS` as for any mapping; a page being
//! populated or copied is in the page cache already (a disk error while a
//! cold layer is populated is the populate call's error: `Error::Io`). In a
//! writable view, a write by another thread between the copy-out's copy and
//! its `mremap` is lost (the copy predates it); a window made writable is
//! charged to the kernel's overcommit accounting, and where that is refused
//! the layer is copied.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use memmap2::{Mmap, MmapOptions};
use parking_lot::Mutex;

use super::ReadBackend;
use crate::budget::Charge;
use crate::config::{Backend, ColdSharing};
use crate::error::{Error, Result};
use crate::faults::FaultPlan;
use crate::index::{align_down, align_up, LayerSpec, BLOCK};
use crate::io::bytes::{LayerBytes, MappedView, Storage};
use crate::io::fresh_memory::{FreshMemory, FRESH_MEMORY};
use crate::io::verify::Verify;
use crate::sys::lease;
use crate::sys::pages::Residency;

/// How often the watcher asks whether a lease is being broken: a writer or
/// truncation of a shared file waits this long at most, plus the copy.
pub(crate) const LEASE_POLL: Duration = Duration::from_millis(20);

/// Bytes per second of `lease-break-time` that may be shared at once: a
/// copy rate below anything measured here for fresh memory (~300 MB/s at
/// worst), with room to spare.
pub(crate) const COPY_RATE_FLOOR: u64 = 128 << 20;

/// Below this `lease-break-time`, nothing is shared.
const MIN_LEASE_BREAK_SECS: u64 = 2;

pub(crate) struct SharedBackend {
    copy: Arc<dyn ReadBackend>,
    /// Per model file: `Some` where a lease was taken and the file mapped.
    files: Vec<Option<Arc<SharedFile>>>,
    /// Bytes of live views, against `limit`.
    live: Arc<AtomicU64>,
    limit: u64,
    /// `Stats::page_cache_shared_bytes`.
    shared_bytes: Arc<AtomicU64>,
    /// `MmapConfig::share_cold_layers`: which layers not in the page cache
    /// are shared too, read into it through the mapping.
    cold: ColdSharing,
    /// What `ColdSharing::WhenFreshMemoryIsSlow` asks.
    fresh: &'static FreshMemory,
    /// `MmapConfig::share_writable`: each view's window is made writable
    /// (the mapping is private: writes go to anonymous copies of the pages).
    writable: bool,
}

/// One leased, mapped file.
pub(crate) struct SharedFile {
    path: Arc<Path>,
    /// The descriptor the lease is on; closing it (when the last view and
    /// the backend are gone) releases the lease.
    file: File,
    map: Arc<Mmap>,
    residency: Residency,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// No new views: the lease is being broken (or was released).
    broken: bool,
    released: bool,
    next_id: u64,
    /// The windows of live views, by view, and whether each is writable.
    windows: BTreeMap<u64, (Range<usize>, bool)>,
}

/// Held by a view of a shared file: keeps the file (and its lease) alive
/// and the view's window registered, so a lease break copies it.
pub(crate) struct ShareGuard {
    file: Arc<SharedFile>,
    id: u64,
    bytes: u64,
    live: Arc<AtomicU64>,
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        self.file.state.lock().windows.remove(&self.id);
        self.live.fetch_sub(self.bytes, Relaxed);
    }
}

impl SharedBackend {
    /// Wraps `copy`, sharing the cached layers of every file of `paths` on
    /// which a lease can be taken.
    /// `cold` says which layers not in the page cache are shared too (read
    /// into it through the mapping); with `writable`, views may be written
    /// (privately).
    /// A fault plan that asks for slow fresh memory makes this backend see
    /// it so (tests).
    pub(crate) fn open(
        paths: &[Arc<Path>],
        copy: Arc<dyn ReadBackend>,
        shared_bytes: Arc<AtomicU64>,
        cold: ColdSharing,
        writable: bool,
        faults: Option<&FaultPlan>,
    ) -> SharedBackend {
        let secs = lease::lease_break_secs().unwrap_or(0);
        let mut files = vec![None; paths.len()];
        if secs >= MIN_LEASE_BREAK_SECS && lease::sigurg_is_unhandled() {
            match Watcher::start() {
                Ok(watcher) => {
                    for (slot, path) in files.iter_mut().zip(paths) {
                        *slot = SharedFile::open(path, watcher.tid).map(Arc::new);
                    }
                    watcher.watch(files.iter().flatten().map(Arc::downgrade).collect());
                }
                Err(e) => tracing::debug!(error = %e, "no lease watcher: layers are copied"),
            }
        }
        let fresh = if faults.is_some_and(FaultPlan::fresh_memory_is_slow) {
            FreshMemory::always_slow()
        } else {
            if cold == ColdSharing::WhenFreshMemoryIsSlow {
                // A verdict for the first reads, which start before any
                // buffer has been faulted in and timed.
                FRESH_MEMORY.probe();
            }
            &FRESH_MEMORY
        };
        SharedBackend {
            copy,
            files,
            live: Arc::new(AtomicU64::new(0)),
            limit: secs.saturating_mul(COPY_RATE_FLOOR),
            shared_bytes,
            cold,
            fresh,
            writable,
        }
    }

    /// Whether a layer not in the page cache is read through it and shared
    /// (`ColdSharing`); `pooled` when its charge took over a buffer already
    /// faulted in, which makes the copy cheap whatever fresh memory costs.
    fn shares_cold(&self, pooled: bool) -> bool {
        match self.cold {
            ColdSharing::Never => false,
            ColdSharing::Always => true,
            ColdSharing::WhenFreshMemoryIsSlow => !pooled && self.fresh.is_slow(),
        }
    }

    /// The view of `spec`'s one range if it can be shared now: the file is
    /// leased and not being broken, the range is within the file and cached
    /// (sampled) or `share_cold` (from [`Self::shares_cold`]), and the cap
    /// leaves room. Registers the window. The flag says whether the range
    /// looked cached.
    fn try_share(&self, spec: &LayerSpec, share_cold: bool) -> Option<Share> {
        let [r] = spec.ranges.as_slice() else {
            return None;
        };
        let file = self.files[r.file].as_ref()?;
        if r.len == 0 || r.end() > file.map.len() as u64 {
            return None;
        }
        let cached = file.residency.cached(r.offset, r.len);
        if !cached && !share_cold {
            return None;
        }
        let start = align_down(r.offset, BLOCK) as usize;
        let end = (align_up(r.end(), BLOCK) as usize).min(file.map.len());
        let bytes = (end - start) as u64;
        if self.live.fetch_add(bytes, Relaxed) + bytes > self.limit {
            self.live.fetch_sub(bytes, Relaxed);
            return None;
        }
        let mut state = file.state.lock();
        if state.broken {
            drop(state);
            self.live.fetch_sub(bytes, Relaxed);
            return None;
        }
        if self.writable {
            // Under the state lock, so a copy-out cannot run between this and
            // the window's registration. Refused (overcommit), it is copied.
            if let Err(e) = lease::make_writable(&file.map, start..end) {
                drop(state);
                self.live.fetch_sub(bytes, Relaxed);
                tracing::debug!(path = %file.path.display(), error = %e, "cannot make a shared window writable: the layer is copied");
                return None;
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        state.windows.insert(id, (start..end, self.writable));
        drop(state);
        let guard = ShareGuard {
            file: Arc::clone(file),
            id,
            bytes,
            live: Arc::clone(&self.live),
        };
        Some(Share {
            file: Arc::clone(file),
            window: start..end,
            guard,
            cached,
        })
    }
}

/// A window [`SharedBackend::try_share`] registered.
struct Share {
    file: Arc<SharedFile>,
    window: Range<usize>,
    guard: ShareGuard,
    /// The range looked cached; if not, readahead is started first.
    cached: bool,
}

impl ReadBackend for SharedBackend {
    fn kind(&self) -> Backend {
        self.copy.kind()
    }

    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        let Some(Share {
            file,
            window,
            guard,
            cached,
        }) = self.try_share(spec, self.shares_cold(charge.has_mapping()))
        else {
            return self.copy.read(layer, spec, charge, verify);
        };
        let r = spec.ranges[0];
        let shared_bytes = Arc::clone(&self.shared_bytes);
        let writable = self.writable;
        async move {
            let path = Arc::clone(&file.path);
            // The charge pays for the view's pages: drop any pooled buffer.
            let charge = charge.unpooled();
            let bytes = tokio::task::spawn_blocking(move || {
                let view = MappedView::shared(
                    Arc::clone(&file.map),
                    window,
                    r.offset as usize..r.end() as usize,
                    charge,
                    guard,
                    writable,
                );
                if !cached {
                    // The whole window's reads go to the disk at once
                    // (readahead into the page cache); populating then
                    // waits for them instead of faulting page by page.
                    view.will_need();
                }
                view.populate()
                    .map_err(|e| Error::io(&file.path, format!("page in layer {layer}"), e))?;
                if !cached {
                    // One read per page, now, while the next layers' reads
                    // are in flight. On these VMs the first access to a page
                    // the disk just filled costs a host-level fault even
                    // though it is mapped (a 2 GiB load's first touch took
                    // 1.3-1.7 s after the load, 0.17 s warm); done here it
                    // overlaps the disk instead of following it.
                    view.page_in();
                }
                Ok::<_, Error>(LayerBytes {
                    start: r.offset as usize - view.window_start(),
                    len: r.len as usize,
                    storage: Storage::Mapped(view),
                })
            })
            .await
            .map_err(|_| Error::Aborted { path, layer })??;
            shared_bytes.fetch_add(r.len, Relaxed);
            match verify {
                Some(v) => v.check(layer, bytes).await,
                None => Ok(bytes),
            }
        }
        .boxed()
    }
}

impl SharedFile {
    /// Leases and maps `path`; `None` (and a debug event) where either fails.
    fn open(path: &Arc<Path>, watcher: libc::pid_t) -> Option<SharedFile> {
        let attempt = || -> std::io::Result<SharedFile> {
            let file = File::open(path)?;
            lease::take_read_lease(&file, watcher)?;
            // From here the file cannot shrink: its length now bounds every
            // view (a range past it was cut before the lease: it is copied,
            // and the copy reports the truncation).
            let residency = Residency::map(&file)?;
            // SAFETY: a private read-only mapping (MAP_PRIVATE: a window
            // made writable for `share_writable` gets anonymous copies of the
            // pages it writes, never the file's). The file cannot be
            // truncated while the lease is held, and before the lease is
            // released every live view's pages are replaced by a copy
            // (`SharedFile::give_up`), so no access through this mapping can
            // fault past the end of the file.
            let map = unsafe { MmapOptions::new().map_copy_read_only(&file) }?;
            Ok(SharedFile {
                path: Arc::clone(path),
                file,
                map: Arc::new(map),
                residency,
                state: Mutex::new(State::default()),
            })
        };
        match attempt() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no read lease: this file's layers are copied");
                None
            }
        }
    }

    /// Called by the watcher: if the lease is being broken, stops sharing,
    /// copies every live view's pages out of the file, then releases the
    /// lease.
    fn check(&self) {
        if lease::lease_intact(&self.file) {
            return;
        }
        self.give_up();
    }

    pub(crate) fn give_up(&self) {
        let mut state = self.state.lock();
        if state.released {
            return;
        }
        state.broken = true;
        // The union of the live windows, each copied once; a merged window
        // is writable if any of its views is.
        let mut windows: Vec<(Range<usize>, bool)> = state.windows.values().cloned().collect();
        windows.sort_by_key(|(w, _)| w.start);
        let mut merged: Vec<(Range<usize>, bool)> = Vec::new();
        for (w, writable) in windows {
            match merged.last_mut() {
                Some((last, any)) if w.start <= last.end => {
                    last.end = last.end.max(w.end);
                    *any |= writable;
                }
                _ => merged.push((w, writable)),
            }
        }
        for (w, writable) in merged {
            if let Err(e) = lease::replace_with_copy(&self.map, w, writable) {
                // Keep the lease: the writer waits, and the next poll retries.
                tracing::warn!(path = %self.path.display(), error = %e, "cannot copy shared pages out before a lease break; retrying");
                return;
            }
        }
        state.released = true;
        if let Err(e) = lease::release_lease(&self.file) {
            tracing::debug!(path = %self.path.display(), error = %e, "releasing the read lease");
        }
        tracing::debug!(path = %self.path.display(), "read lease broken: shared pages copied out");
    }
}

/// The thread that watches the leases.
struct Watcher {
    tid: libc::pid_t,
    files: std::sync::mpsc::Sender<Vec<Weak<SharedFile>>>,
}

impl Watcher {
    /// Starts the thread; it blocks `SIGURG` (the break signal is directed
    /// at it) and waits for the files to watch.
    fn start() -> std::io::Result<Watcher> {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (files_tx, files_rx) = std::sync::mpsc::channel::<Vec<Weak<SharedFile>>>();
        std::thread::Builder::new()
            .name("hyperion-lease".into())
            .spawn(move || {
                let blocked = lease::block_sigurg_in_this_thread();
                let _ = tid_tx.send(blocked.map(|()| lease::this_thread_id()));
                let Ok(files) = files_rx.recv() else {
                    return;
                };
                loop {
                    std::thread::sleep(LEASE_POLL);
                    let mut any = false;
                    for f in files.iter().filter_map(Weak::upgrade) {
                        any = true;
                        f.check();
                    }
                    if !any {
                        return;
                    }
                }
            })?;
        let tid = tid_rx
            .recv()
            .map_err(|_| std::io::Error::other("the lease watcher did not start"))??;
        Ok(Watcher {
            tid,
            files: files_tx,
        })
    }

    fn watch(self, files: Vec<Weak<SharedFile>>) {
        let _ = self.files.send(files);
    }
}
