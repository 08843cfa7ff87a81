//! The format-neutral description of a model: which bytes of which file make
//! up each layer, and which tensors live inside each layer.
//!
//! Every reader in [`crate::format`] turns a file into a [`ModelIndex`]; the
//! loader never looks at a format again after that.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::dtype::DType;

/// Names of the containers whose numbered children are blocks.
pub const BLOCK_CONTAINERS: &[&str] = &["layers", "layer", "blk", "h", "blocks", "block"];

/// The layer key of a tensor name: the prefix through the block number, if
/// the name is inside a block.
///
/// ```
/// use hyperion::index::block_key;
/// assert_eq!(block_key("model.layers.7.mlp.up_proj.weight"), Some("model.layers.7"));
/// assert_eq!(block_key("blk.7.attn_q.weight"), Some("blk.7"));
/// assert_eq!(block_key("token_embd.weight"), None);
/// ```
pub fn block_key(name: &str) -> Option<&str> {
    // Allocates nothing: it runs for every tensor, at open and in lookups.
    let mut container: Option<&str> = None;
    let mut start = 0;
    for segment in name.split('.') {
        let end = start + segment.len();
        // A number counts only if another segment follows it.
        if end < name.len()
            && container.is_some_and(|c| BLOCK_CONTAINERS.contains(&c))
            && !segment.is_empty()
            && segment.bytes().all(|b| b.is_ascii_digit())
        {
            return Some(&name[..end]);
        }
        container = Some(segment);
        start = end + 1;
    }
    None
}

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
///
/// Besides walking [`layers`](Self::layers), a tensor can be looked up by
/// name ([`find_tensor`](Self::find_tensor)) and a block by number
/// ([`block_layer`](Self::block_layer)). Those lookups use tables the index
/// builds from `layers` on the first lookup; changes made to `layers` after
/// that are not seen by them (the format readers return complete indexes).
///
/// # Examples
///
/// ```
/// use hyperion::DType;
/// use hyperion::format::tmai::{write_tmai, TensorDecl};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("model.tmai");
/// let embd = TensorDecl::new("token_embd.weight", DType::F32, vec![2]);
/// let q = |b: usize| TensorDecl::new(format!("blk.{b}.attn_q.weight"), DType::F32, vec![2]);
/// let bytes = [0u8; 8];
/// write_tmai(&path, &[
///     vec![(embd, &bytes[..])],
///     vec![(q(0), &bytes[..])],
///     vec![(q(1), &bytes[..])],
/// ])?;
///
/// let index = hyperion::format::read_index(&path)?;
/// let found = index.find_tensor("blk.1.attn_q.weight").expect("present");
/// assert_eq!(found.layer, 2);
/// assert_eq!(found.spec.shape, [2]);
/// assert_eq!(index.block_layer(1), Some(2));
/// assert_eq!(index.layers[2].block(), Some(1));
/// assert_eq!(index.find_tensor("token_embd.weight").map(|t| t.layer), Some(0));
/// assert_eq!(index.tensor_names().count(), 3);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ModelIndex {
    /// The format the index was read from.
    pub format: FileFormat,
    /// The files that hold layer bytes; [`FileRange::file`] indexes this list.
    pub files: Vec<Arc<Path>>,
    /// The layers, in model order.
    pub layers: Vec<LayerSpec>,
    /// Built on the first lookup by name or block.
    lookup: OnceLock<Lookup>,
}

impl fmt::Debug for ModelIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the lookup tables: they repeat `layers`.
        f.debug_struct("ModelIndex")
            .field("format", &self.format)
            .field("files", &self.files)
            .field("layers", &self.layers)
            .finish_non_exhaustive()
    }
}

/// Where a tensor is in a [`ModelIndex`]: what
/// [`ModelIndex::find_tensor`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorLocation<'a> {
    /// The layer that holds the tensor: an index into [`ModelIndex::layers`],
    /// and what [`MappedModel::layer`](crate::MappedModel::layer) takes.
    pub layer: usize,
    /// The tensor's position in that layer's
    /// [`tensors`](LayerSpec::tensors) (and in
    /// [`LayerWeights::tensors`](crate::LayerWeights::tensors)).
    pub position: usize,
    /// The tensor: name, dtype, shape, and offset in the layer's bytes.
    pub spec: &'a TensorSpec,
}

/// The lookup tables of a [`ModelIndex`].
#[derive(Debug, Clone, Default)]
struct Lookup {
    /// Tensor name → (layer, position in the layer); the first if a name repeats.
    tensors: HashMap<Box<str>, (usize, usize)>,
    /// Block number → the first layer in model order that is that block.
    blocks: HashMap<usize, usize>,
    /// Block family (`model.layers`) → block number → its first layer.
    families: HashMap<Box<str>, HashMap<usize, usize>>,
}

impl Lookup {
    fn build(layers: &[LayerSpec]) -> Lookup {
        let mut lookup = Lookup::default();
        for (l, layer) in layers.iter().enumerate() {
            for (p, t) in layer.tensors.iter().enumerate() {
                lookup
                    .tensors
                    .entry(t.name.as_str().into())
                    .or_insert((l, p));
            }
            let Some((family, block)) = layer.block_key().and_then(split_block_key) else {
                continue;
            };
            lookup.blocks.entry(block).or_insert(l);
            lookup
                .families
                .entry(family.into())
                .or_default()
                .entry(block)
                .or_insert(l);
        }
        lookup
    }
}

/// `model.layers.7` → (`model.layers`, 7); `None` if the number does not
/// fit a `usize`.
fn split_block_key(key: &str) -> Option<(&str, usize)> {
    let (family, number) = key.rsplit_once('.')?;
    Some((family, number.parse().ok()?))
}

impl ModelIndex {
    /// An index of `layers` in `files` (used by the format readers).
    pub(crate) fn new(format: FileFormat, files: Vec<Arc<Path>>, layers: Vec<LayerSpec>) -> Self {
        ModelIndex {
            format,
            files,
            layers,
            lookup: OnceLock::new(),
        }
    }

    fn lookup(&self) -> &Lookup {
        self.lookup.get_or_init(|| Lookup::build(&self.layers))
    }

    /// The tensor called `name`: its layer, its position there and its
    /// [`TensorSpec`]. Takes constant time (a hash lookup), after a first call
    /// that builds the table in time linear in the number of tensors.
    ///
    /// Tensor names are unique in every format Hyperion reads.
    ///
    /// ```
    /// # fn demo(index: &hyperion::ModelIndex) {
    /// if let Some(t) = index.find_tensor("token_embd.weight") {
    ///     println!("{} is in layer {}, {:?} {}", t.spec.name, t.layer, t.spec.shape, t.spec.dtype);
    /// }
    /// # }
    /// ```
    pub fn find_tensor(&self, name: &str) -> Option<TensorLocation<'_>> {
        let &(layer, position) = self.lookup().tensors.get(name)?;
        let spec = self.layers.get(layer)?.tensors.get(position)?;
        // Only if `layers` was edited after the table was built could this fail.
        (spec.name == name).then_some(TensorLocation {
            layer,
            position,
            spec,
        })
    }

    /// The names of all tensors, in model order (layer by layer, and in
    /// file order within a layer).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.layers
            .iter()
            .flat_map(|l| l.tensors.iter().map(|t| t.name.as_str()))
    }

    /// The layer that is block `block`: the layer of `model.layers.7.*`,
    /// `blk.7.*` or `transformer.h.7.*` for block 7 (see
    /// [`LayerSpec::block`]). `None` if no layer is.
    ///
    /// A model whose blocks are numbered in more than one family (an encoder
    /// and a decoder, a vision tower and a language model) has more than one
    /// block 7; this gives the first in model order, and
    /// [`block_layer_in`](Self::block_layer_in) chooses the family.
    ///
    /// Layers outside any block (embeddings, final norm, head) have no
    /// number; find them by a tensor they hold with
    /// [`find_tensor`](Self::find_tensor).
    pub fn block_layer(&self, block: usize) -> Option<usize> {
        self.lookup().blocks.get(&block).copied()
    }

    /// The layer that is block `block` of the family `family`: the part of
    /// the tensor names before the block number, as in
    /// `block_layer_in("model.layers", 7)` or
    /// `block_layer_in("vision_model.encoder.layers", 0)`.
    pub fn block_layer_in(&self, family: &str, block: usize) -> Option<usize> {
        self.lookup().families.get(family)?.get(&block).copied()
    }
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
    /// The number of the block this layer is, if it is one: 7 for the layer
    /// of `model.layers.7.*`, `blk.7.*`, `transformer.h.7.*` … (the names
    /// [`format::grouping`](crate::format::grouping) groups by). Computed from
    /// the tensor names (see [`block_key`](Self::block_key)), so a `.tmai`
    /// layer whose tensors are all in one block has that block's number too.
    ///
    /// `None` for a layer outside any block (embeddings, final norm, head),
    /// one whose tensors are in different blocks, or a number too large for a
    /// `usize`.
    ///
    /// ```
    /// # fn demo(index: &hyperion::ModelIndex) {
    /// for (i, layer) in index.layers.iter().enumerate() {
    ///     match layer.block() {
    ///         Some(b) => println!("layer {i} is block {b}"),
    ///         None => println!("layer {i} is {}", layer.name),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn block(&self) -> Option<usize> {
        split_block_key(self.block_key()?).map(|(_, block)| block)
    }

    /// The block this layer is, as the prefix of its tensors' names through
    /// the block number (`model.layers.7`, `blk.7`), if all of its tensors
    /// are in that one block ([`block_key`]).
    pub fn block_key(&self) -> Option<&str> {
        let (first, rest) = self.tensors.split_first()?;
        let key = block_key(&first.name)?;
        rest.iter()
            .all(|t| block_key(&t.name) == Some(key))
            .then_some(key)
    }

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

    fn layer_of(names: &[&str]) -> LayerSpec {
        let tensors: Vec<TensorSpec> = names
            .iter()
            .enumerate()
            .map(|(i, n)| TensorSpec::new(*n, DType::U8, vec![1], i as u64, 1))
            .collect();
        LayerSpec {
            name: names.first().map_or("", |n| n).into(),
            tensors: Arc::from(tensors),
            ..layer(vec![FileRange {
                file: 0,
                offset: 0,
                len: names.len() as u64,
            }])
        }
    }

    fn index_of(layers: &[&[&str]]) -> ModelIndex {
        ModelIndex::new(
            FileFormat::Safetensors,
            vec![Arc::from(Path::new("m"))],
            layers.iter().map(|names| layer_of(names)).collect(),
        )
    }

    #[test]
    fn a_layer_is_a_block_when_all_its_tensors_are_in_it() {
        let block = |names: &[&str]| layer_of(names).block();
        assert_eq!(block(&["blk.7.a", "blk.7.b"]), Some(7));
        assert_eq!(block(&["model.layers.007.a"]), Some(7));
        assert_eq!(
            layer_of(&["model.layers.7.a"]).block_key(),
            Some("model.layers.7")
        );
        assert_eq!(block(&["blk.7.a", "blk.8.b"]), None);
        assert_eq!(block(&["blk.7.a", "output.weight"]), None);
        assert_eq!(block(&["token_embd.weight"]), None);
        assert_eq!(block(&[]), None);
        // A key whose number does not fit a usize is still a key.
        let huge = "blk.99999999999999999999999.a";
        assert_eq!(layer_of(&[huge]).block(), None);
        assert!(layer_of(&[huge]).block_key().is_some());
    }

    #[test]
    fn lookups_by_name_and_block() {
        let index = index_of(&[
            &["token_embd.weight"],
            &["vision.blocks.0.w"],
            &["model.layers.0.a", "model.layers.0.b"],
            &["model.layers.1.a"],
            &["vision.blocks.1.w"],
            &["output.weight", "token_embd.weight"],
        ]);
        let t = index.find_tensor("model.layers.0.b").unwrap();
        assert_eq!(
            (t.layer, t.position, t.spec.name.as_str()),
            (2, 1, "model.layers.0.b")
        );
        // A repeated name gives its first place.
        assert_eq!(index.find_tensor("token_embd.weight").unwrap().layer, 0);
        assert!(index.find_tensor("model.layers.0").is_none());
        assert!(index.find_tensor("").is_none());
        assert_eq!(index.tensor_names().count(), 8);
        assert_eq!(index.tensor_names().nth(3), Some("model.layers.0.b"));

        assert_eq!(index.block_layer(0), Some(1)); // the first family in model order
        assert_eq!(index.block_layer(1), Some(3));
        assert_eq!(index.block_layer(2), None);
        assert_eq!(index.block_layer_in("model.layers", 0), Some(2));
        assert_eq!(index.block_layer_in("vision.blocks", 1), Some(4));
        assert_eq!(index.block_layer_in("vision.blocks", 2), None);
        assert_eq!(index.block_layer_in("model", 0), None);

        // A clone carries the tables; Debug leaves them out.
        let clone = index.clone();
        assert_eq!(clone.find_tensor("output.weight").unwrap().layer, 5);
        assert!(!format!("{index:?}").contains("lookup"));
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
