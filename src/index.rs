//! The format-neutral description of a model: which bytes of which file make
//! up each layer, and which tensors live inside each layer.
//!
//! Every reader in [`crate::format`] turns a file into a [`ModelIndex`]; the
//! loader never looks at a format again after that.

use std::path::Path;
use std::sync::Arc;

use crate::dtype::DType;

/// The file formats Hyperion reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileFormat {
    /// Hyperion's own layer-contiguous format (`docs/format.md`).
    Tmai,
    /// safetensors, one file or sharded (`docs/formats.md`).
    Safetensors,
    /// GGUF v2/v3 (`docs/formats.md`).
    Gguf,
}

impl FileFormat {
    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Tmai => "tmai",
            FileFormat::Safetensors => "safetensors",
            FileFormat::Gguf => "gguf",
        }
    }
}

/// A model: its data files and its layers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ModelIndex {
    /// The format the index was read from.
    pub format: FileFormat,
    /// The files that hold layer bytes; [`FileRange::file`] indexes this list.
    pub files: Vec<Arc<Path>>,
    /// The layers, in model order.
    pub layers: Vec<LayerSpec>,
}

/// A run of bytes in one of the model's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    /// Index into [`ModelIndex::files`].
    pub file: usize,
    /// Byte offset in that file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl FileRange {
    /// One past the last byte (the caller has checked that this cannot overflow).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One layer: where its bytes are and what tensors they hold.
///
/// A layer's bytes, as [`LayerWeights`](crate::LayerWeights) presents them,
/// are the concatenation of its `ranges` in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LayerSpec {
    /// A human-readable name (`layer 3`, `model.layers.3` …).
    pub name: String,
    /// The byte ranges that make up the layer, in order. Never empty.
    pub ranges: Vec<FileRange>,
    /// Total bytes: the sum of the ranges' lengths.
    pub size: u64,
    /// The layer's precision in bits per weight (that of the dtype covering most bytes).
    pub precision: u32,
    /// The xxh3-64 checksum of the layer's bytes, where the format records one.
    pub checksum: Option<u64>,
    /// The tensors in the layer, with offsets relative to the layer's first byte.
    pub tensors: Arc<[TensorSpec]>,
}

impl LayerSpec {
    /// The file offset of the layer's first byte.
    pub fn offset(&self) -> u64 {
        self.ranges.first().map_or(0, |r| r.offset)
    }

    /// Bytes of memory one cached copy of this layer occupies: each range widened
    /// to whole 4 KiB blocks (what a direct read or a page mapping touches), the
    /// sum rounded up to `granule`, and never less than one granule.
    pub fn footprint(&self, granule: u64) -> u64 {
        let blocks: u64 = self
            .ranges
            .iter()
            .map(|r| align_up(r.end(), BLOCK) - align_down(r.offset, BLOCK))
            .sum();
        align_up(blocks.max(1), granule)
    }
}

/// A tensor inside a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorSpec {
    /// The tensor's name in the file.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape, outermost dimension first.
    pub shape: Vec<u64>,
    /// Offset of its first byte from the start of the layer's bytes.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl TensorSpec {
    /// A tensor description (used by format readers and writers).
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<u64>,
        offset: u64,
        len: u64,
    ) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
            offset,
            len,
        }
    }
}

/// The block size direct I/O and page mappings work in.
pub const BLOCK: u64 = 4096;

/// Rounds `v` up to a multiple of `to` (a power of two or any non-zero value).
/// Saturates instead of overflowing; callers check sizes before.
pub(crate) fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

/// Rounds `v` down to a multiple of `to`.
pub(crate) fn align_down(v: u64, to: u64) -> u64 {
    v - v % to
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(ranges: Vec<FileRange>) -> LayerSpec {
        let size = ranges.iter().map(|r| r.len).sum();
        LayerSpec {
            name: "l".into(),
            ranges,
            size,
            precision: 32,
            checksum: None,
            tensors: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn footprint_counts_whole_blocks_and_rounds_to_granule() {
        let r = |offset, len| FileRange {
            file: 0,
            offset,
            len,
        };
        assert_eq!(layer(vec![r(4096, 4096)]).footprint(4096), 4096);
        assert_eq!(layer(vec![r(4096, 1)]).footprint(4096), 4096);
        // An unaligned range touches two blocks.
        assert_eq!(layer(vec![r(4000, 200)]).footprint(4096), 8192);
        assert_eq!(layer(vec![r(0, 0)]).footprint(4096), 4096);
        assert_eq!(layer(vec![r(0, 4097)]).footprint(65536), 65536);
        assert_eq!(layer(vec![r(0, 4096), r(8192, 10)]).footprint(4096), 8192);
    }
}
