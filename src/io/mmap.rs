//! The mmap backend: each file is mapped once, read-only; a layer is a view
//! into the mapping, paged in with `MADV_WILLNEED` and a touch of every page
//! on a blocking thread, so the future resolves only when the bytes are in
//! memory and the caller's compute never stalls on a page fault.
//!
//! # The hazard
//! A mapped file that shrinks under the mapping raises `SIGBUS` on access to
//! the lost pages. Hyperion checks every range against the file's length at
//! open and again before each read, but cannot stop another process
//! truncating the file during a read or while a view is held; that is why
//! [`Backend::Auto`] never uses this backend (io_uring, else pread, both turn
//! truncation into [`Error::Truncated`]), and why it is used only when
//! [`Backend::Mmap`] is asked for.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use memmap2::Mmap;

use crate::budget::Charge;
use crate::buffer::AlignedBuf;
use crate::config::Backend;
use crate::error::{Error, Result};
use crate::faults::{Fault, FaultPlan};
use crate::index::{align_down, align_up, LayerSpec, BLOCK};
use crate::io::bytes::{LayerBytes, MappedView, Storage};
use crate::io::verify::Verify;

#[derive(Clone)]
pub(crate) struct MmapBackend {
    files: Arc<[Arc<Path>]>,
    /// `None` for an empty file (which cannot be mapped and holds no layer bytes).
    maps: Arc<[Option<Arc<Mmap>>]>,
    faults: Option<Arc<FaultPlan>>,
}

impl MmapBackend {
    pub(crate) fn open(files: &[Arc<Path>], faults: Option<Arc<FaultPlan>>) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        for path in files {
            let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io(path, "stat", e))?
                .len();
            if len == 0 {
                maps.push(None);
                continue;
            }
            // SAFETY: the mapping is read-only and we never create a `&mut`
            // into it. The remaining hazard, another process truncating or
            // rewriting the file while it is mapped, is documented on this
            // module and on `Backend::Mmap`; every range we read is checked
            // against the mapping's length first.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "mmap", e))?;
            maps.push(Some(Arc::new(map)));
        }
        Ok(MmapBackend {
            files: files.into(),
            maps: maps.into(),
            faults,
        })
    }

    fn read_blocking(&self, layer: usize, spec: &LayerSpec, charge: Charge) -> Result<LayerBytes> {
        match self
            .faults
            .as_ref()
            .and_then(|f| f.draw(spec.size as usize))
        {
            Some(Fault::Error(errno)) => {
                return Err(Error::io(
                    &self.files[spec.ranges[0].file],
                    format!("read layer {layer}"),
                    std::io::Error::from_raw_os_error(errno),
                ))
            }
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            Some(Fault::Short(_)) | None => {}
        }
        for r in &spec.ranges {
            let path = &self.files[r.file];
            // The file may have shrunk since it was mapped: touching pages past
            // its end would raise SIGBUS, so check its length now. (This narrows
            // the window; it cannot close it against a concurrent truncation.)
            let now_len = std::fs::metadata(path)
                .map_err(|e| Error::io(path, "stat", e))?
                .len();
            let map_len = self.maps[r.file]
                .as_ref()
                .map_or(0, |m| m.len() as u64)
                .min(now_len);
            if r.end() > map_len && r.len > 0 {
                return Err(Error::Truncated {
                    path: Arc::clone(path),
                    layer,
                    offset: r.offset,
                    expected_end: r.end(),
                    end: map_len,
                });
            }
        }
        if let [r] = spec.ranges.as_slice() {
            let Some(map) = &self.maps[r.file] else {
                // An empty layer in an empty file: nothing to map.
                let buf = AlignedBuf::charged(0, Some(charge))
                    .map_err(|e| Error::io(&self.files[r.file], "allocate", e))?;
                return Ok(LayerBytes {
                    storage: Storage::Heap(buf),
                    start: 0,
                    len: 0,
                });
            };
            let start = align_down(r.offset, BLOCK) as usize;
            let end = (align_up(r.end(), BLOCK) as usize).min(map.len());
            // The charge pays for the view's pages, not for a buffer: unmap
            // any pooled buffer it took over, so both are never held at once.
            let charge = charge.unpooled();
            let view = MappedView::new(
                Arc::clone(map),
                start..end,
                r.offset as usize..r.end() as usize,
                charge,
            );
            // Readahead for the window, then every page made resident in one
            // call (`MADV_POPULATE_READ`, or a touch of every page on old
            // kernels). A page lost to a truncation since the check above
            // is an error from the call, not a fault (a touch would fault).
            view.will_need();
            view.populate().map_err(|e| {
                Error::io(
                    path_of(&self.files, r.file),
                    format!("page in layer {layer}"),
                    e,
                )
            })?;
            return Ok(LayerBytes {
                storage: Storage::Mapped(view),
                start: (r.offset as usize) - start,
                len: r.len as usize,
            });
        }
        // Several ranges: gather them into one buffer.
        let mut buf = AlignedBuf::charged(spec.size as usize, Some(charge))
            .map_err(|e| Error::io(&self.files[0], "allocate", e))?;
        let mut at = 0usize;
        for r in &spec.ranges {
            if r.len == 0 {
                continue;
            }
            let map = self.maps[r.file]
                .as_ref()
                .expect("non-empty range implies a mapped file");
            let src = &map[r.offset as usize..r.end() as usize];
            buf.as_mut_slice()[at..at + src.len()].copy_from_slice(src);
            at += src.len();
        }
        Ok(LayerBytes {
            storage: Storage::Heap(buf),
            start: 0,
            len: spec.size as usize,
        })
    }
}

fn path_of(files: &[Arc<Path>], file: usize) -> &Arc<Path> {
    &files[file]
}

impl super::ReadBackend for MmapBackend {
    fn kind(&self) -> Backend {
        Backend::Mmap
    }

    /// With `verify`, the layer is hashed after it is paged in.
    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        let this = self.clone();
        let spec = spec.clone();
        let path = Arc::clone(&self.files[spec.ranges[0].file]);
        async move {
            // Page faults block: keep them off the async workers.
            let bytes =
                tokio::task::spawn_blocking(move || this.read_blocking(layer, &spec, charge))
                    .await
                    .map_err(|_| Error::Aborted { path, layer })??;
            match verify {
                Some(v) => v.check(layer, bytes).await,
                None => Ok(bytes),
            }
        }
        .boxed()
    }
}
