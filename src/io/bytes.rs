//! What a read engine produces for one layer: its bytes, in a buffer they
//! were read into or in a view of a file mapping, with the budget charge
//! that pays for that memory inside.

use std::ops::Range;
use std::sync::Arc;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::budget::Charge;
use crate::buffer::AlignedBuf;
use crate::index::{align_down, align_up, BLOCK};
use crate::io::shared::ShareGuard;

/// Where a layer's bytes live.
pub(crate) enum Storage {
    /// A buffer the bytes were read into.
    Heap(AlignedBuf),
    /// A view into a memory mapping of the file.
    Mapped(MappedView),
}

/// The bytes a backend produced for one layer: `len` bytes at `start` of `storage`.
pub(crate) struct LayerBytes {
    pub(crate) storage: Storage,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl LayerBytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        let all = match &self.storage {
            Storage::Heap(buf) => buf.as_slice(),
            Storage::Mapped(view) => view.as_slice(),
        };
        &all[self.start..self.start + self.len]
    }
}

/// A page-aligned window of a file mapping that one layer's bytes live in.
pub(crate) struct MappedView {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
    /// The layer's own bytes inside the window.
    layer_start: usize,
    layer_end: usize,
    /// Set when another live buffer of the same layer still uses these pages.
    pub(crate) keep_pages: bool,
    /// The window was made writable (`MmapConfig::share_writable`: a
    /// private mapping, so a write copies the page and never reaches the file).
    writable: bool,
    _charge: Charge,
    /// For a view of a leased file (`io/shared.rs`): keeps the lease and
    /// registers the window, so a lease break copies its pages out first.
    _share: Option<ShareGuard>,
}

impl MappedView {
    /// A view of `window` (page-aligned, inside `map`) for the layer whose
    /// bytes are `layer` (inside the window), paid for by `charge`.
    pub(crate) fn new(
        map: Arc<Mmap>,
        window: Range<usize>,
        layer: Range<usize>,
        charge: Charge,
    ) -> Self {
        debug_assert!(window.start <= layer.start && layer.end <= window.end);
        debug_assert!(window.end <= map.len());
        MappedView {
            map,
            start: window.start,
            len: window.end - window.start,
            layer_start: layer.start,
            layer_end: layer.end,
            keep_pages: false,
            writable: false,
            _charge: charge,
            _share: None,
        }
    }

    /// A view of a leased file's mapping (`io/shared.rs`), holding `share`;
    /// `writable` when its window was made writable.
    pub(crate) fn shared(
        map: Arc<Mmap>,
        window: Range<usize>,
        layer: Range<usize>,
        charge: Charge,
        share: ShareGuard,
        writable: bool,
    ) -> Self {
        let mut view = Self::new(map, window, layer, charge);
        view._share = Some(share);
        view.writable = writable;
        view
    }

    /// Whether the window's pages may be written (privately).
    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// Where the window starts in the mapping.
    pub(crate) fn window_start(&self) -> usize {
        self.start
    }

    /// Makes every page of the window resident now: `MADV_POPULATE_READ`
    /// (one call, page tables filled from the page cache, reading from the
    /// disk what is not cached), or where the kernel lacks it (before 5.14)
    /// [`MappedView::page_in`]. An error (a page past the end of the file)
    /// is returned, never a fault.
    pub(crate) fn populate(&self) -> std::io::Result<()> {
        if !crate::sys::lease::populate_read(&self.map, self.start..self.start + self.len)? {
            self.page_in();
        }
        Ok(())
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Starts readahead for the window (`MADV_WILLNEED`). A hint: if the
    /// kernel refuses it, paging in still faults every page in.
    pub(crate) fn will_need(&self) {
        let _ = self
            .map
            .advise_range(Advice::WillNeed, self.start, self.len);
    }

    /// Waits until every page is resident by touching each one.
    pub(crate) fn page_in(&self) {
        let bytes = self.as_slice();
        let mut sum = 0u8;
        for page in bytes.chunks(BLOCK as usize) {
            sum = sum.wrapping_add(page[0]);
        }
        std::hint::black_box(sum);
    }
}

impl Drop for MappedView {
    fn drop(&mut self) {
        if self.keep_pages {
            return;
        }
        // Only pages wholly inside this layer: a boundary page shared with a
        // neighbouring layer may be in use by that layer's view.
        let first = align_up(self.layer_start as u64, BLOCK) as usize;
        let last = align_down(self.layer_end as u64, BLOCK) as usize;
        if last <= first {
            return;
        }
        // SAFETY: MADV_DONTNEED on a file mapping only drops this process's
        // page-table entries (and, in a private mapping made writable for
        // `share_writable`, the private copies of pages written: the writes
        // of the views of this layer, none of which is left); any later
        // access faults the same file bytes back in, so no live reference can
        // observe changed data.
        // The range lies inside the map. If a lease break replaced these
        // pages with an anonymous copy (`io/shared.rs`), they read as zeros
        // afterwards; but no one reads them again: the pages lie wholly
        // inside this view's layer, no other live buffer of the layer exists
        // (`keep_pages` is false), and the broken file makes no new views.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first)
        };
    }
}
