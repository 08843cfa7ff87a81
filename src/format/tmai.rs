//! The `.tmai` format: Hyperion's own file, one contiguous run of bytes per layer.
//!
//! `docs/format.md` is the specification; this module is its reference
//! reader ([`parse_header`], used by [`read_index`](crate::format::read_index))
//! and writer ([`TmaiWriter`], [`write_tmai`]).
//!
//! In short: a fixed 40-byte prefix, a table of fixed-size layer records, a
//! table of variable-size tensor records, then the data region from the first
//! 4 KiB boundary after the header. Each layer starts on a 4 KiB boundary,
//! each tensor on a 64-byte boundary inside its layer, and every layer records
//! the xxh3-64 checksum of its bytes.
//!
//! The reader treats the file as hostile: every count is bounded by the bytes
//! that hold it before anything is allocated, every sum is checked, and every
//! violation is a [`FormatError`] naming the layer or tensor at fault.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use crate::checksum::{xxh3_64, Xxh3};

use super::read_up_to;
use crate::dtype::DType;
use crate::error::{Error, FormatError, Result};
use crate::index::{FileFormat, FileRange, LayerSpec, ModelIndex, TensorSpec};

/// The first eight bytes of every `.tmai` file.
pub const MAGIC: [u8; 8] = *b"TMAI\x00\r\n\x1a";

/// The format version this module reads and writes.
pub const VERSION: u32 = 1;

/// Bytes of the fixed prefix: magic, version, flags, header_len, header
/// checksum, layer_count, tensor_count.
pub const FIXED_HEADER_LEN: u64 = 40;

/// Bytes of one layer record.
pub const LAYER_RECORD_LEN: u64 = 48;

/// Bytes of the smallest tensor record (a one-byte name and no dimensions).
pub const MIN_TENSOR_RECORD_LEN: u64 = 24;

/// The largest `header_len` a reader accepts (64 MiB).
pub const MAX_HEADER_LEN: u64 = 64 << 20;

/// The most dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;

/// The alignment of every layer's file offset, and of the data region.
pub const LAYER_ALIGN: u64 = 4096;

/// The alignment of every tensor's offset inside its layer.
pub const TENSOR_ALIGN: u64 = 64;

/// The largest precision (bits per weight) a layer may record.
pub const MAX_PRECISION: u32 = 64;

/// Offset of the first byte the header checksum covers (just after the checksum field).
const CHECKSUM_START: usize = 32;
/// Offset of the header checksum field.
const CHECKSUM_AT: usize = 24;
/// Offset of the checksum field inside a layer record.
const LAYER_CHECKSUM_AT: usize = 16;

/// A validated `.tmai` header: what [`parse_header`] learned from it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ParsedHeader {
    /// Bytes of the header, from the start of the file.
    pub header_len: u64,
    /// Where the data region starts: `header_len` rounded up to [`LAYER_ALIGN`].
    pub data_start: u64,
    /// The layers, in model order. Each has one [`FileRange`] into file 0 and
    /// a checksum; tensor offsets are relative to the layer's first byte.
    pub layers: Vec<LayerSpec>,
}

/// Validates the `.tmai` header in `bytes` for a file of `file_len` bytes and
/// returns its layers.
///
/// `bytes` holds the file from its first byte; it must hold at least the
/// `header_len` bytes the header declares, and anything after them is
/// ignored (so the whole file, or just its header, will do). This function
/// does all the checking the reader does, allocates no more than the header's
/// own size justifies, and never panics, whatever `bytes` holds: a fuzz
/// target can call it directly (recompute the checksum at bytes 24..32, the
/// xxh3-64 of bytes `32..header_len`, to get past the integrity check).
///
/// # Errors
///
/// A [`FormatError`] naming the field, layer (`layer 3`) or tensor
/// (`tensor "w" (layer 3)`, or `tensor #7 (layer 3)` before its name is
/// known) that breaks a rule of `docs/format.md`.
///
/// # Examples
///
/// ```
/// use hyperion::DType;
/// use hyperion::format::tmai::{parse_header, write_tmai, TensorDecl};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("tiny.tmai");
/// let bias = [0u8; 16];
/// write_tmai(&path, &[vec![(TensorDecl::new("bias", DType::F32, vec![4]), &bias[..])]])?;
///
/// let file = std::fs::read(&path)?;
/// let header = parse_header(&file, file.len() as u64)?;
/// assert_eq!(header.layers[0].tensors[0].name, "bias");
/// assert_eq!(header.layers[0].offset() % 4096, 0);
///
/// let mut corrupt = file.clone();
/// corrupt[40] ^= 1; // inside the checksummed part of the header
/// assert!(parse_header(&corrupt, file.len() as u64).is_err());
/// # Ok(()) }
/// ```
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<ParsedHeader, FormatError> {
    let prefix = parse_prefix(bytes, file_len)?;
    let header_len = prefix.header_len;
    let hlen = to_usize(header_len, "header_len")?;
    let header = bytes.get(..hlen).ok_or_else(|| FormatError::Truncated {
        what: "header".into(),
        needed: header_len,
        available: len_u64(bytes),
    })?;

    let covered = header.get(CHECKSUM_START..).unwrap_or_default();
    let actual = xxh3_64(covered);
    if actual != prefix.checksum {
        return Err(FormatError::ChecksumMismatch {
            what: "header".into(),
            expected: prefix.checksum,
            actual,
        });
    }

    // Bound both counts by the bytes that must hold their records before
    // anything is allocated for them.
    if prefix.layer_count == 0 {
        return Err(FormatError::Invalid(
            "layer_count is 0: a model has at least one layer".into(),
        ));
    }
    let max_layers = (header_len - FIXED_HEADER_LEN) / LAYER_RECORD_LEN;
    if u64::from(prefix.layer_count) > max_layers {
        return Err(FormatError::LimitExceeded {
            what: "layer_count (bounded by header_len)".into(),
            value: prefix.layer_count.into(),
            limit: max_layers,
        });
    }
    let layers_end = FIXED_HEADER_LEN + u64::from(prefix.layer_count) * LAYER_RECORD_LEN;
    let max_tensors = (header_len - layers_end) / MIN_TENSOR_RECORD_LEN;
    if u64::from(prefix.tensor_count) > max_tensors {
        return Err(FormatError::LimitExceeded {
            what: "tensor_count (bounded by header_len)".into(),
            value: prefix.tensor_count.into(),
            limit: max_tensors,
        });
    }

    let data_start = header_len
        .checked_next_multiple_of(LAYER_ALIGN)
        .ok_or_else(|| overflow("header_len rounded up to 4096"))?;
    let mut cursor = Cursor::new(header, FIXED_HEADER_LEN as usize);
    let records = parse_layer_table(&mut cursor, &prefix, data_start, file_len)?;

    let mut names: HashSet<&str> = HashSet::new();
    let mut layers = Vec::with_capacity(records.len());
    let mut position: u32 = 0;
    for (l, rec) in records.iter().enumerate() {
        let mut tensors = Vec::with_capacity(rec.tensor_count as usize);
        let mut prev: Option<Placed<'_>> = None;
        for _ in 0..rec.tensor_count {
            let at = TensorAt { position, layer: l };
            let (spec, placed) = parse_tensor(&mut cursor, at, rec.size, prev, &mut names)?;
            tensors.push(spec);
            prev = Some(placed);
            position = position.saturating_add(1);
        }
        let last_end = prev.map_or(0, |p| p.end);
        if rec.size != last_end {
            return Err(FormatError::Invalid(format!(
                "layer {l}: size is {}, but its last tensor ends at byte {last_end}; \
                 a layer ends where its last tensor ends",
                rec.size
            )));
        }
        layers.push(LayerSpec {
            name: format!("layer {l}"),
            ranges: vec![FileRange {
                file: 0,
                offset: rec.offset,
                len: rec.size,
            }],
            size: rec.size,
            precision: rec.precision,
            checksum: Some(rec.checksum),
            tensors: Arc::from(tensors),
        });
    }

    if cursor.pos != hlen {
        return Err(FormatError::Invalid(format!(
            "the tensor table ends at byte {}, but header_len is {header_len}: \
             {} unaccounted bytes in the header",
            cursor.pos,
            hlen - cursor.pos
        )));
    }
    Ok(ParsedHeader {
        header_len,
        data_start,
        layers,
    })
}

/// Reads the index of the `.tmai` file `file` (of `file_len` bytes): the
/// fixed prefix first, then, once its `header_len` has passed the limit and
/// the file length, exactly `header_len` bytes. Reads no layer bytes.
pub(crate) fn read_index(
    file: &mut dyn crate::source::Source,
    path: &Arc<Path>,
    file_len: u64,
) -> Result<ModelIndex> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, "seek to the header", e))?;
    let mut fixed = [0u8; FIXED_HEADER_LEN as usize];
    let n = read_up_to(file, &mut fixed).map_err(|e| Error::io(path, "read header", e))?;
    let prefix = fixed.get(..n).unwrap_or_default();
    let header_len = parse_prefix(prefix, file_len)
        .map_err(|e| Error::format(path, e))?
        .header_len;

    // header_len is now at most MAX_HEADER_LEN and at most the file's length.
    let hlen = to_usize(header_len, "header_len").map_err(|e| Error::format(path, e))?;
    let mut header = vec![0u8; hlen];
    let Some((head, rest)) = header.split_at_mut_checked(fixed.len()) else {
        // parse_prefix refused header_len < FIXED_HEADER_LEN.
        return Err(Error::format(
            path,
            overflow("header_len below the fixed header"),
        ));
    };
    head.copy_from_slice(&fixed);
    let got = read_up_to(file, rest).map_err(|e| Error::io(path, "read header", e))?;
    if got < rest.len() {
        // The file shrank since it was measured.
        return Err(Error::format(
            path,
            FormatError::Truncated {
                what: "header".into(),
                needed: header_len,
                available: FIXED_HEADER_LEN + got as u64,
            },
        ));
    }

    let parsed = parse_header(&header, file_len).map_err(|e| Error::format(path, e))?;
    Ok(ModelIndex::new(
        FileFormat::Tmai,
        vec![Arc::clone(path)],
        parsed.layers,
    ))
}

/// The fields of the fixed prefix, checked.
struct Prefix {
    header_len: u64,
    checksum: u64,
    layer_count: u32,
    tensor_count: u32,
}

/// Checks the fixed prefix: magic, version, flags, and `header_len` against
/// [`FIXED_HEADER_LEN`], [`MAX_HEADER_LEN`] and `file_len`.
fn parse_prefix(bytes: &[u8], file_len: u64) -> Result<Prefix, FormatError> {
    let shown = bytes.get(..MAGIC.len()).unwrap_or(bytes);
    if MAGIC.get(..shown.len()) != Some(shown) {
        return Err(FormatError::BadMagic {
            found: shown.to_vec(),
        });
    }
    let mut c = Cursor::new(bytes, MAGIC.len());
    let short = |_: Short| FormatError::Truncated {
        what: "fixed header".into(),
        needed: FIXED_HEADER_LEN,
        available: len_u64(bytes),
    };
    let version = c.u32().map_err(short)?;
    let flags = c.u32().map_err(short)?;
    let header_len = c.u64().map_err(short)?;
    let checksum = c.u64().map_err(short)?;
    let layer_count = c.u32().map_err(short)?;
    let tensor_count = c.u32().map_err(short)?;

    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            format: "tmai",
            version,
        });
    }
    if flags != 0 {
        return Err(FormatError::Invalid(format!(
            "flags is {flags:#x}, but version 1 defines no flags: it must be 0"
        )));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::LimitExceeded {
            what: "header_len".into(),
            value: header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    if header_len < FIXED_HEADER_LEN {
        return Err(FormatError::Invalid(format!(
            "header_len is {header_len}, less than the {FIXED_HEADER_LEN}-byte fixed header"
        )));
    }
    if header_len > file_len {
        return Err(FormatError::Truncated {
            what: "header (header_len)".into(),
            needed: header_len,
            available: file_len,
        });
    }
    Ok(Prefix {
        header_len,
        checksum,
        layer_count,
        tensor_count,
    })
}

/// A layer record, checked.
struct LayerRecord {
    offset: u64,
    size: u64,
    checksum: u64,
    precision: u32,
    tensor_count: u32,
}

/// Reads and checks the layer table; the tensors the layers claim tile the
/// tensor table in order.
fn parse_layer_table(
    c: &mut Cursor<'_>,
    prefix: &Prefix,
    data_start: u64,
    file_len: u64,
) -> Result<Vec<LayerRecord>, FormatError> {
    // The caller bounded layer_count by the header's bytes.
    let mut records: Vec<LayerRecord> = Vec::with_capacity(prefix.layer_count as usize);
    let mut next_tensor: u64 = 0;
    let header_len = len_u64(c.buf);
    for l in 0..prefix.layer_count as usize {
        let start = c.pos;
        let short = |s: Short| FormatError::OutOfBounds {
            what: format!("layer {l} record"),
            start: start as u64,
            end: s.end,
            region: "the header",
            region_start: 0,
            region_end: header_len,
        };
        let offset = c.u64().map_err(short)?;
        let size = c.u64().map_err(short)?;
        let checksum = c.u64().map_err(short)?;
        let index = c.u32().map_err(short)?;
        let precision = c.u32().map_err(short)?;
        let first_tensor = c.u32().map_err(short)?;
        let tensor_count = c.u32().map_err(short)?;
        let reserved = c.u64().map_err(short)?;

        if index as usize != l {
            return Err(FormatError::Invalid(format!(
                "layer {l}: index field is {index}, but the record is at position {l}"
            )));
        }
        if reserved != 0 {
            return Err(FormatError::Invalid(format!(
                "layer {l}: reserved field is {reserved:#x}, but it must be 0"
            )));
        }
        if precision == 0 || precision > MAX_PRECISION {
            return Err(FormatError::Invalid(format!(
                "layer {l}: precision is {precision} bits, outside 1..={MAX_PRECISION}"
            )));
        }
        if offset % LAYER_ALIGN != 0 {
            return Err(FormatError::Misaligned {
                what: format!("layer {l}: offset"),
                value: offset,
                alignment: LAYER_ALIGN,
            });
        }
        let end = offset
            .checked_add(size)
            .ok_or_else(|| overflow(format!("layer {l}: offset {offset} + size {size}")))?;
        if offset < data_start || end > file_len {
            return Err(FormatError::OutOfBounds {
                what: format!("layer {l}"),
                start: offset,
                end,
                region: "the data region",
                region_start: data_start,
                region_end: file_len,
            });
        }
        if let Some(prev) = records.last() {
            let (prev_start, prev_end) = (prev.offset, prev.offset + prev.size);
            if offset < prev_start {
                return Err(FormatError::Invalid(format!(
                    "layer {l} starts at byte {offset}, before layer {} (byte {prev_start}); \
                     layers must be in increasing offset order",
                    l - 1
                )));
            }
            if offset < prev_end {
                return Err(FormatError::Overlap {
                    first: format!("layer {} (bytes {prev_start}..{prev_end})", l - 1),
                    second: format!("layer {l} (bytes {offset}..{end})"),
                });
            }
        }
        if u64::from(first_tensor) != next_tensor {
            return Err(FormatError::Invalid(format!(
                "layer {l}: first_tensor is {first_tensor}, but the layers before it end at \
                 tensor {next_tensor}; layers must claim the tensor table in order"
            )));
        }
        next_tensor += u64::from(tensor_count);
        if next_tensor > u64::from(prefix.tensor_count) {
            return Err(FormatError::Invalid(format!(
                "layer {l}: tensors {first_tensor}..{next_tensor} run past tensor_count {}",
                prefix.tensor_count
            )));
        }
        records.push(LayerRecord {
            offset,
            size,
            checksum,
            precision,
            tensor_count,
        });
    }
    if next_tensor != u64::from(prefix.tensor_count) {
        return Err(FormatError::Invalid(format!(
            "the layers claim {next_tensor} tensors, but tensor_count is {}",
            prefix.tensor_count
        )));
    }
    Ok(records)
}

/// A tensor by its position in the table, before its name is known.
#[derive(Clone, Copy)]
struct TensorAt {
    position: u32,
    layer: usize,
}

impl fmt::Display for TensorAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tensor #{} (layer {})", self.position, self.layer)
    }
}

/// Where the previous tensor of a layer lies.
#[derive(Clone, Copy)]
struct Placed<'a> {
    name: &'a str,
    start: u64,
    end: u64,
}

/// Reads and checks one tensor record of a layer of `layer_size` bytes,
/// given the tensor before it in the same layer.
fn parse_tensor<'a>(
    c: &mut Cursor<'a>,
    at: TensorAt,
    layer_size: u64,
    prev: Option<Placed<'a>>,
    names: &mut HashSet<&'a str>,
) -> Result<(TensorSpec, Placed<'a>), FormatError> {
    let (start, header_len) = (c.pos, len_u64(c.buf));
    let short = |s: Short| FormatError::OutOfBounds {
        what: format!("{at} record"),
        start: start as u64,
        end: s.end,
        region: "the header",
        region_start: 0,
        region_end: header_len,
    };
    let name_len = c.u16().map_err(short)?;
    let name = c.bytes(name_len.into()).map_err(short)?;
    let code = c.u32().map_err(short)?;
    let ndim = c.u8().map_err(short)?;
    if usize::from(ndim) > MAX_DIMS {
        return Err(FormatError::LimitExceeded {
            what: format!("{at}: ndim"),
            value: ndim.into(),
            limit: MAX_DIMS as u64,
        });
    }
    let mut shape = Vec::with_capacity(ndim.into());
    for _ in 0..ndim {
        shape.push(c.u64().map_err(short)?);
    }
    let offset = c.u64().map_err(short)?;
    let len = c.u64().map_err(short)?;

    if name.is_empty() {
        return Err(FormatError::Invalid(format!("{at}: the name is empty")));
    }
    let name = std::str::from_utf8(name)
        .map_err(|e| FormatError::Invalid(format!("{at}: the name is not valid UTF-8 ({e})")))?;
    if !names.insert(name) {
        return Err(FormatError::DuplicateName { name: name.into() });
    }
    let who = || format!("tensor {name:?} (layer {})", at.layer);
    let dtype =
        DType::from_code(code).ok_or_else(|| FormatError::UnknownDType { what: who(), code })?;
    let expected = dtype
        .byte_len(&shape)
        .ok_or_else(|| overflow(format!("{}: bytes of {dtype} × {shape:?}", who())))?;
    if offset % TENSOR_ALIGN != 0 {
        return Err(FormatError::Misaligned {
            what: format!("{}: offset", who()),
            value: offset,
            alignment: TENSOR_ALIGN,
        });
    }
    let end = offset
        .checked_add(len)
        .ok_or_else(|| overflow(format!("{}: offset {offset} + len {len}", who())))?;
    if end > layer_size {
        return Err(FormatError::OutOfBounds {
            what: who(),
            start: offset,
            end,
            region: "its layer",
            region_start: 0,
            region_end: layer_size,
        });
    }
    if expected != len {
        return Err(FormatError::ShapeMismatch {
            tensor: name.into(),
            dtype: dtype.name().into(),
            shape,
            expected,
            actual: len,
        });
    }
    if let Some(p) = prev {
        if offset < p.start {
            return Err(FormatError::Invalid(format!(
                "{} starts at byte {offset}, before tensor {:?} (byte {}); tensors must be in \
                 increasing offset order within a layer",
                who(),
                p.name,
                p.start
            )));
        }
        if offset < p.end {
            return Err(FormatError::Overlap {
                first: format!(
                    "tensor {:?} (layer {}, bytes {}..{})",
                    p.name, at.layer, p.start, p.end
                ),
                second: format!(
                    "tensor {name:?} (layer {}, bytes {offset}..{end})",
                    at.layer
                ),
            });
        }
    }
    let placed = Placed {
        name,
        start: offset,
        end,
    };
    Ok((TensorSpec::new(name, dtype, shape, offset, len), placed))
}

/// A little-endian reader over a byte slice that never reads past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The input ended before the bytes asked for; they would have ended at `end`.
#[derive(Clone, Copy)]
struct Short {
    end: u64,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let Some(end) = self.pos.checked_add(n) else {
            return Err(Short { end: u64::MAX });
        };
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(Short { end: end as u64 })?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let at = self.pos;
        let s = self.bytes(N)?;
        <[u8; N]>::try_from(s).map_err(|_| Short {
            end: (at as u64).saturating_add(N as u64),
        })
    }

    fn u8(&mut self) -> Result<u8, Short> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

fn overflow(what: impl Into<String>) -> FormatError {
    FormatError::Overflow { what: what.into() }
}

fn len_u64(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

fn to_usize(v: u64, what: &str) -> Result<usize, FormatError> {
    usize::try_from(v).map_err(|_| overflow(format!("{what} {v} as a memory size")))
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// The buffer between [`TmaiWriter::write`] and the file.
const WRITE_BUFFER: usize = 8 << 20;

/// Zeros to pad with.
static ZEROS: [u8; LAYER_ALIGN as usize] = [0; LAYER_ALIGN as usize];

/// A tensor to be written: its name, dtype and shape. Its bytes follow
/// through [`TmaiWriter::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// The name, unique in the model, 1 to 65535 bytes of UTF-8.
    pub name: String,
    /// The element type.
    pub dtype: DType,
    /// The shape, outermost dimension first; at most [`MAX_DIMS`] dimensions.
    pub shape: Vec<u64>,
}

impl TensorDecl {
    /// A tensor declaration.
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<u64>) -> Self {
        TensorDecl {
            name: name.into(),
            dtype,
            shape,
        }
    }

    /// The tensor's bytes: the dtype's size times the product of the shape,
    /// or `None` on overflow.
    pub fn byte_len(&self) -> Option<u64> {
        self.dtype.byte_len(&self.shape)
    }
}

/// A layer to be written: its tensors, in the order their bytes will come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerDecl {
    /// The tensors, in file order.
    pub tensors: Vec<TensorDecl>,
    /// The precision to record, in bits per weight (1 to 64). `None`: the bits
    /// of the dtype covering the most bytes of the layer (on a tie, the one
    /// that comes first; 8 for a layer without tensors).
    pub precision: Option<u32>,
}

impl LayerDecl {
    /// A layer of `tensors`, its precision taken from them.
    pub fn new(tensors: Vec<TensorDecl>) -> Self {
        LayerDecl {
            tensors,
            precision: None,
        }
    }
}

/// Writes a `.tmai` file tensor by tensor, without holding the model in memory.
///
/// [`create`](Self::create) takes every layer's declaration, checks it, lays
/// the whole file out and writes a zero placeholder where the header goes.
/// [`write`](Self::write) then takes the tensors' bytes in declaration order,
/// in pieces of any size, inserting alignment padding as it crosses tensors
/// and layers and hashing each layer as it goes. [`finish`](Self::finish)
/// writes the header, with every checksum, and pads the file to 4 KiB.
///
/// A file whose writer is dropped, or fails, before `finish` writes the
/// header has no magic number, so no reader takes it for a model. After an
/// I/O error the writer is spent: every later call returns that error. A
/// `write` refused for going past the declared tensors writes nothing and
/// leaves the writer usable.
///
/// # Examples
///
/// Converting a model one tensor at a time:
///
/// ```
/// use hyperion::DType;
/// use hyperion::format::tmai::{LayerDecl, TensorDecl, TmaiWriter};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("model.tmai");
/// let layers = (0..2)
///     .map(|l| LayerDecl::new(vec![
///         TensorDecl::new(format!("blk.{l}.w"), DType::F32, vec![3, 4]),
///         TensorDecl::new(format!("blk.{l}.b"), DType::F32, vec![4]),
///     ]))
///     .collect();
/// let mut writer = TmaiWriter::create(&path, layers)?;
/// for _ in 0..2 {
///     writer.write(&[1; 48])?; // the weight
///     writer.write(&[2; 10])?; // the bias, in two pieces
///     writer.write(&[2; 6])?;
/// }
/// writer.finish()?;
///
/// let index = hyperion::format::read_index(&path)?;
/// assert_eq!(index.layers.len(), 2);
/// assert_eq!(index.layers[1].tensors[1].name, "blk.1.b");
/// assert_eq!(index.layers[1].tensors[1].offset, 64); // aligned to 64 bytes
/// # Ok(()) }
/// ```
pub struct TmaiWriter {
    path: Arc<Path>,
    out: BufWriter<File>,
    /// The final header, but for the checksums.
    header: Vec<u8>,
    layers: Vec<LayerLayout>,
    file_end: u64,
    /// Bytes written to the file so far.
    pos: u64,
    /// The layer being written.
    layer: usize,
    /// The tensor being written, in `layer`.
    tensor: usize,
    /// Bytes of that tensor written.
    done: u64,
    /// Tensor bytes not yet written.
    remaining: u64,
    hasher: Box<Xxh3>,
    checksums: Vec<u64>,
    failed: Option<Error>,
}

/// Where a layer goes.
struct LayerLayout {
    offset: u64,
    size: u64,
    tensors: Vec<TensorLayout>,
}

/// Where a tensor goes in its layer.
struct TensorLayout {
    name: String,
    offset: u64,
    len: u64,
}

/// The whole file, laid out.
struct Layout {
    header: Vec<u8>,
    data_start: u64,
    layers: Vec<LayerLayout>,
    file_end: u64,
    total: u64,
}

impl TmaiWriter {
    /// Creates (or truncates) the file at `path` for a model of `layers`, and
    /// writes a placeholder header.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the tensor or layer if a declaration
    /// is invalid: no layers, an empty, over-long (> 65535 bytes) or
    /// duplicate name, more than [`MAX_DIMS`] dimensions, a shape whose size
    /// overflows, a precision outside 1..=64, a header over
    /// [`MAX_HEADER_LEN`], or a layout past `u64`; [`Error::Io`] if the file
    /// cannot be created or written.
    pub fn create(path: &Path, layers: Vec<LayerDecl>) -> Result<Self> {
        let shared: Arc<Path> = Arc::from(path);
        let layout =
            plan(layers).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        let file = File::create(path).map_err(|e| Error::io(&shared, "create", e))?;
        let mut writer = TmaiWriter {
            path: shared,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            header: layout.header,
            checksums: Vec::with_capacity(layout.layers.len()),
            layers: layout.layers,
            file_end: layout.file_end,
            pos: 0,
            layer: 0,
            tensor: 0,
            done: 0,
            remaining: layout.total,
            hasher: Box::new(Xxh3::new()),
            failed: None,
        };
        writer.pad_to(layout.data_start, false)?;
        Ok(writer)
    }

    /// Appends `bytes` to the tensors, in declaration order: they may end a
    /// tensor and go on into the next ones, and a tensor may come in any
    /// number of calls. Padding between tensors and layers is inserted here.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `bytes` goes past the last declared
    /// tensor (nothing is written then); [`Error::Io`] if the file cannot be
    /// written.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let n = bytes.len() as u64;
        if n > self.remaining {
            return Err(Error::InvalidArgument(format!(
                "{}: {n} bytes written, but the declared tensors have only {} bytes left",
                self.path.display(),
                self.remaining
            )));
        }
        let result = self.write_tensors(bytes);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Completes the file: checks every declared byte was written, writes the
    /// header with the layers' and its own checksums, pads the file to a
    /// multiple of 4 KiB and flushes it. It does not `fsync`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the first incomplete tensor if bytes
    /// are missing; [`Error::Io`] if the file cannot be written; or the error
    /// an earlier call returned.
    pub fn finish(mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.remaining > 0 {
            return Err(self.missing());
        }
        while self.layer < self.layers.len() {
            self.close_layer()?;
        }
        self.pad_to(self.file_end, false)?;

        let mut header = std::mem::take(&mut self.header);
        for (l, sum) in self.checksums.iter().enumerate() {
            let at = FIXED_HEADER_LEN as usize + l * LAYER_RECORD_LEN as usize + LAYER_CHECKSUM_AT;
            put_at(&mut header, at, &sum.to_le_bytes());
        }
        let sum = xxh3_64(header.get(CHECKSUM_START..).unwrap_or_default());
        put_at(&mut header, CHECKSUM_AT, &sum.to_le_bytes());

        let path = self.path;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&path, "write", e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&path, "seek to the header", e))?;
        file.write_all(&header)
            .map_err(|e| Error::io(&path, "write header", e))?;
        file.flush().map_err(|e| Error::io(&path, "flush", e))
    }

    /// Writes `bytes` into the tensors; the caller checked they fit.
    fn write_tensors(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let room = self.open_tensor()?;
            let k = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
            let (now, rest) = bytes.split_at(k);
            self.put(now, true)?;
            self.done += k as u64;
            self.remaining -= k as u64;
            bytes = rest;
        }
        Ok(())
    }

    /// Moves to the first tensor, from the current one on, with room left,
    /// padding up to where its next byte goes; returns the room.
    fn open_tensor(&mut self) -> Result<u64> {
        loop {
            let Some(layer) = self.layers.get(self.layer) else {
                // `write` checked the bytes fit in what is left.
                return Err(Error::InvalidArgument(format!(
                    "{}: more bytes than the declared tensors hold",
                    self.path.display()
                )));
            };
            match layer.tensors.get(self.tensor) {
                Some(t) if self.done < t.len => {
                    let (target, room) = (layer.offset + t.offset + self.done, t.len - self.done);
                    self.pad_to(target, true)?;
                    return Ok(room);
                }
                Some(_) => {
                    self.tensor += 1;
                    self.done = 0;
                }
                None => self.close_layer()?,
            }
        }
    }

    /// Ends the current layer (padding to its end), records its checksum,
    /// and pads up to the next layer.
    fn close_layer(&mut self) -> Result<()> {
        let Some(end) = self.layers.get(self.layer).map(|l| l.offset + l.size) else {
            return Ok(());
        };
        self.pad_to(end, true)?;
        self.checksums.push(self.hasher.digest());
        *self.hasher = Xxh3::new();
        self.layer += 1;
        self.tensor = 0;
        self.done = 0;
        if let Some(next) = self.layers.get(self.layer).map(|l| l.offset) {
            self.pad_to(next, false)?;
        }
        Ok(())
    }

    /// Writes zeros up to file offset `target`.
    fn pad_to(&mut self, target: u64, hashed: bool) -> Result<()> {
        while self.pos < target {
            let k = usize::try_from(target - self.pos)
                .unwrap_or(usize::MAX)
                .min(ZEROS.len());
            self.put(&ZEROS[..k], hashed)?;
        }
        Ok(())
    }

    /// Writes `bytes` at the current position, hashing them into the layer if `hashed`.
    fn put(&mut self, bytes: &[u8], hashed: bool) -> Result<()> {
        if let Err(e) = self.out.write_all(bytes) {
            let in_layers = self.layer < self.layers.len()
                && self.layers.first().is_some_and(|l| self.pos >= l.offset);
            let op = if in_layers {
                format!("write layer {}", self.layer)
            } else {
                "write".to_string()
            };
            let e = Error::io(&self.path, op, e);
            self.failed = Some(e.clone());
            return Err(e);
        }
        if hashed {
            self.hasher.update(bytes);
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// The error for a `finish` with bytes missing, naming the first short tensor.
    fn missing(&self) -> Error {
        let mut done = self.done;
        let mut first = self.tensor;
        for (l, layer) in self.layers.iter().enumerate().skip(self.layer) {
            for t in layer.tensors.iter().skip(first) {
                if done < t.len {
                    return Error::InvalidArgument(format!(
                        "{}: tensor {:?} (layer {l}) got {done} of its {} bytes; {} bytes of the \
                         model were never written",
                        self.path.display(),
                        t.name,
                        t.len,
                        self.remaining
                    ));
                }
                done = 0;
            }
            first = 0;
        }
        Error::InvalidArgument(format!(
            "{}: {} bytes of the model were never written",
            self.path.display(),
            self.remaining
        ))
    }
}

impl fmt::Debug for TmaiWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TmaiWriter")
            .field("path", &self.path)
            .field("layers", &self.layers.len())
            .field("layer", &self.layer)
            .field("tensor", &self.tensor)
            .field("pos", &self.pos)
            .field("remaining", &self.remaining)
            .field("failed", &self.failed.is_some())
            .finish()
    }
}

/// Writes a small model whose tensors' bytes are all in memory: one inner
/// `Vec` per layer, each tensor with its bytes.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if a tensor's bytes are not the length its
/// dtype and shape give, or for the declaration errors of
/// [`TmaiWriter::create`]; [`Error::Io`] if the file cannot be written.
///
/// # Examples
///
/// ```
/// use hyperion::DType;
/// use hyperion::format::tmai::{write_tmai, TensorDecl};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("tiny.tmai");
/// let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// write_tmai(&path, &[vec![(TensorDecl::new("w", DType::F32, vec![2, 2]), &w[..])]])?;
///
/// let index = hyperion::format::read_index(&path)?;
/// assert_eq!(index.layers[0].size, 16);
/// assert_eq!(index.layers[0].precision, 32);
/// # Ok(()) }
/// ```
pub fn write_tmai(path: &Path, layers: &[Vec<(TensorDecl, &[u8])>]) -> Result<()> {
    for (l, layer) in layers.iter().enumerate() {
        for (decl, bytes) in layer {
            if let Some(n) = decl.byte_len() {
                if n != bytes.len() as u64 {
                    return Err(Error::InvalidArgument(format!(
                        "{}: tensor {:?} (layer {l}): dtype {} with shape {:?} needs {n} bytes, \
                         but {} were given",
                        path.display(),
                        decl.name,
                        decl.dtype,
                        decl.shape,
                        bytes.len()
                    )));
                }
            }
        }
    }
    let decls = layers
        .iter()
        .map(|layer| LayerDecl::new(layer.iter().map(|(decl, _)| decl.clone()).collect()))
        .collect();
    let mut writer = TmaiWriter::create(path, decls)?;
    for (_, bytes) in layers.iter().flatten() {
        writer.write(bytes)?;
    }
    writer.finish()
}

/// Checks the declarations and lays the file out: the header (checksums
/// zero), and where every layer and tensor goes. Errors name the item.
fn plan(layers: Vec<LayerDecl>) -> std::result::Result<Layout, String> {
    if layers.is_empty() {
        return Err("a model needs at least one layer".into());
    }
    let layer_count =
        u32::try_from(layers.len()).map_err(|_| format!("{} layers is over 2^32", layers.len()))?;
    let too_big = || format!("the header is over the {MAX_HEADER_LEN}-byte limit");

    // Check the tensors and size the header.
    let mut names: HashSet<&str> = HashSet::new();
    let mut header_len = FIXED_HEADER_LEN + u64::from(layer_count) * LAYER_RECORD_LEN;
    let mut tensor_count: u32 = 0;
    for (l, layer) in layers.iter().enumerate() {
        if let Some(p) = layer.precision {
            if p == 0 || p > MAX_PRECISION {
                return Err(format!(
                    "layer {l}: precision {p} is outside 1..={MAX_PRECISION}"
                ));
            }
        }
        for t in &layer.tensors {
            let who = || format!("tensor {:?} (layer {l})", t.name);
            if t.name.is_empty() {
                return Err(format!("{}: the name is empty", who()));
            }
            if t.name.len() > usize::from(u16::MAX) {
                return Err(format!(
                    "{}: the name is {} bytes, over 65535",
                    who(),
                    t.name.len()
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("{}: the name is already used", who()));
            }
            if t.shape.len() > MAX_DIMS {
                return Err(format!(
                    "{}: {} dimensions, over {MAX_DIMS}",
                    who(),
                    t.shape.len()
                ));
            }
            if t.byte_len().is_none() {
                return Err(format!(
                    "{}: the size of {} × {:?} overflows",
                    who(),
                    t.dtype,
                    t.shape
                ));
            }
            tensor_count = tensor_count
                .checked_add(1)
                .ok_or_else(|| "more than 2^32 - 1 tensors".to_string())?;
            let record = 2 + t.name.len() as u64 + 4 + 1 + 8 * t.shape.len() as u64 + 16;
            header_len = header_len.checked_add(record).ok_or_else(too_big)?;
        }
    }
    if header_len > MAX_HEADER_LEN {
        return Err(too_big());
    }
    let data_start = header_len.next_multiple_of(LAYER_ALIGN);

    // Place the layers and tensors, and write the header.
    let past_u64 = || "the file would be larger than 2^64 bytes".to_string();
    let mut header = Vec::with_capacity(header_len as usize);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // flags
    header.extend_from_slice(&header_len.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes()); // header checksum, set by `finish`
    header.extend_from_slice(&layer_count.to_le_bytes());
    header.extend_from_slice(&tensor_count.to_le_bytes());

    let mut placed = Vec::with_capacity(layers.len());
    let mut pos = data_start;
    let mut total: u64 = 0;
    let mut first_tensor: u32 = 0;
    for (l, layer) in layers.iter().enumerate() {
        let offset = pos
            .checked_next_multiple_of(LAYER_ALIGN)
            .ok_or_else(past_u64)?;
        let mut cursor: u64 = 0;
        let mut tensors = Vec::with_capacity(layer.tensors.len());
        for t in &layer.tensors {
            let len = t.byte_len().unwrap_or(0); // checked above
            let at = cursor
                .checked_next_multiple_of(TENSOR_ALIGN)
                .ok_or_else(past_u64)?;
            cursor = at.checked_add(len).ok_or_else(past_u64)?;
            total = total.checked_add(len).ok_or_else(past_u64)?;
            tensors.push((at, len));
        }
        let size = cursor;
        pos = offset.checked_add(size).ok_or_else(past_u64)?;
        let precision = layer
            .precision
            .unwrap_or_else(|| default_precision(&layer.tensors));
        let count = layer.tensors.len() as u32; // the total fits in u32

        header.extend_from_slice(&offset.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes()); // checksum, set by `finish`
        header.extend_from_slice(&(l as u32).to_le_bytes());
        header.extend_from_slice(&precision.to_le_bytes());
        header.extend_from_slice(&first_tensor.to_le_bytes());
        header.extend_from_slice(&count.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes()); // reserved
        first_tensor += count;
        placed.push((offset, size, tensors));
    }
    let file_end = pos
        .checked_next_multiple_of(LAYER_ALIGN)
        .ok_or_else(past_u64)?;

    for t in layers.iter().flat_map(|l| &l.tensors) {
        header.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
        header.extend_from_slice(t.name.as_bytes());
        header.extend_from_slice(&t.dtype.code().to_le_bytes());
        header.push(t.shape.len() as u8);
        for d in &t.shape {
            header.extend_from_slice(&d.to_le_bytes());
        }
        // Offset and length go in below, once the tensors are paired with their places.
        header.extend_from_slice(&[0; 16]);
    }
    debug_assert_eq!(header.len() as u64, header_len);

    // Fill in the tensors' offsets and lengths, and keep the layout.
    let mut at = FIXED_HEADER_LEN as usize + layers.len() * LAYER_RECORD_LEN as usize;
    let mut out = Vec::with_capacity(layers.len());
    for (layer, (offset, size, places)) in layers.into_iter().zip(placed) {
        let mut tensors = Vec::with_capacity(places.len());
        for (t, (t_offset, len)) in layer.tensors.into_iter().zip(places) {
            at += 2 + t.name.len() + 4 + 1 + 8 * t.shape.len();
            put_at(&mut header, at, &t_offset.to_le_bytes());
            put_at(&mut header, at + 8, &len.to_le_bytes());
            at += 16;
            tensors.push(TensorLayout {
                name: t.name,
                offset: t_offset,
                len,
            });
        }
        out.push(LayerLayout {
            offset,
            size,
            tensors,
        });
    }
    Ok(Layout {
        header,
        data_start,
        layers: out,
        file_end,
        total,
    })
}

/// The bits of the dtype covering the most bytes of `tensors` (on a tie, the
/// first; 8 without tensors).
fn default_precision(tensors: &[TensorDecl]) -> u32 {
    let mut totals: Vec<(DType, u64)> = Vec::new();
    for t in tensors {
        let len = t.byte_len().unwrap_or(0);
        match totals.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, n)) => *n = n.saturating_add(len),
            None => totals.push((t.dtype, len)),
        }
    }
    let mut best: Option<(DType, u64)> = None;
    for (d, n) in totals {
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((d, n));
        }
    }
    best.map_or(8, |(d, _)| d.bits())
}

/// Overwrites `header[at..at + bytes.len()]`; the caller computed `at` from the layout.
fn put_at(header: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = header.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    } else {
        debug_assert!(false, "header field at {at} out of range");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, dtype: DType, shape: &[u64]) -> TensorDecl {
        TensorDecl::new(name, dtype, shape.to_vec())
    }

    /// A header for `layers`, with its checksums filled in (layers' checksums zero).
    fn sealed(layers: Vec<LayerDecl>) -> (Vec<u8>, u64) {
        let layout = plan(layers).unwrap();
        let mut header = layout.header;
        reseal(&mut header);
        (header, layout.file_end)
    }

    fn reseal(header: &mut [u8]) {
        let sum = xxh3_64(&header[CHECKSUM_START..]);
        header[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    }

    fn two_layers() -> Vec<LayerDecl> {
        vec![
            LayerDecl::new(vec![
                decl("a", DType::F32, &[3]),
                decl("b", DType::F16, &[5, 2]),
            ]),
            LayerDecl::new(vec![decl("c", DType::U8, &[4097])]),
        ]
    }

    #[test]
    fn plan_aligns_tensors_and_layers() {
        let layout = plan(two_layers()).unwrap();
        assert_eq!(layout.data_start, 4096);
        let l0 = &layout.layers[0];
        assert_eq!((l0.offset, l0.size), (4096, 64 + 20));
        assert_eq!(
            l0.tensors
                .iter()
                .map(|t| (t.offset, t.len))
                .collect::<Vec<_>>(),
            [(0, 12), (64, 20)]
        );
        let l1 = &layout.layers[1];
        assert_eq!((l1.offset, l1.size), (8192, 4097));
        assert_eq!(layout.file_end, 16384);
        assert_eq!(layout.total, 12 + 20 + 4097);
    }

    #[test]
    fn header_round_trips_through_parse_header() {
        let (header, file_end) = sealed(two_layers());
        let parsed = parse_header(&header, file_end).unwrap();
        assert_eq!(parsed.header_len, header.len() as u64);
        assert_eq!(parsed.data_start, 4096);
        let l1 = &parsed.layers[1];
        assert_eq!(l1.name, "layer 1");
        assert_eq!(
            l1.ranges,
            [FileRange {
                file: 0,
                offset: 8192,
                len: 4097
            }]
        );
        assert_eq!(l1.precision, 8);
        assert_eq!(l1.checksum, Some(0));
        assert_eq!(
            *l1.tensors,
            [TensorSpec::new("c", DType::U8, vec![4097], 0, 4097)]
        );
        assert_eq!(
            parsed.layers[0].tensors[1],
            TensorSpec::new("b", DType::F16, vec![5, 2], 64, 20)
        );
        assert_eq!(parsed.layers[0].precision, 16);
    }

    #[test]
    fn parse_header_ignores_bytes_after_the_header() {
        let (mut header, file_end) = sealed(two_layers());
        header.extend_from_slice(&[0xAB; 100]);
        assert!(parse_header(&header, file_end).is_ok());
    }

    #[test]
    fn prefix_checks_in_order() {
        let (header, file_end) = sealed(two_layers());
        assert!(matches!(
            parse_prefix(b"TMA", 10),
            Err(FormatError::Truncated { .. })
        ));
        assert_eq!(
            parse_prefix(b"TMB", 10).err(),
            Some(FormatError::BadMagic {
                found: b"TMB".to_vec()
            })
        );
        assert!(matches!(
            parse_prefix(b"", 0),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            parse_prefix(&header[..39], file_end),
            Err(FormatError::Truncated {
                needed: 40,
                available: 39,
                ..
            })
        ));
        let mut h = header.clone();
        h[16..24].copy_from_slice(&39u64.to_le_bytes());
        assert!(matches!(
            parse_prefix(&h, file_end),
            Err(FormatError::Invalid(_))
        ));
        h[16..24].copy_from_slice(&(MAX_HEADER_LEN + 1).to_le_bytes());
        assert!(matches!(
            parse_prefix(&h, u64::MAX),
            Err(FormatError::LimitExceeded { .. })
        ));
        assert!(matches!(
            parse_prefix(&header, 100),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn cursor_stops_at_the_end() {
        let mut c = Cursor::new(&[1, 2, 3], 0);
        assert_eq!(c.u16().ok(), Some(0x0201));
        assert_eq!(c.u16().err().map(|s| s.end), Some(4));
        assert_eq!(c.pos, 2);
        assert!(c.bytes(usize::MAX).is_err());
        assert_eq!(c.u8().ok(), Some(3));
    }

    #[test]
    fn default_precision_follows_the_largest_dtype() {
        assert_eq!(default_precision(&[]), 8);
        let t = [decl("a", DType::F32, &[2]), decl("b", DType::BF16, &[8])];
        assert_eq!(default_precision(&t), 16); // 16 bytes of BF16 over 8 of F32
        let tie = [decl("a", DType::F64, &[1]), decl("b", DType::U8, &[8])];
        assert_eq!(default_precision(&tie), 64);
        let empty = [decl("a", DType::I16, &[0]), decl("b", DType::F32, &[0])];
        assert_eq!(default_precision(&empty), 16);
    }

    #[test]
    fn plan_rejects_bad_declarations() {
        let bad = |layers: Vec<LayerDecl>, needle: &str| {
            let e = plan(layers).err().expect("should fail");
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        };
        bad(vec![], "at least one layer");
        bad(
            vec![LayerDecl::new(vec![decl("", DType::U8, &[1])])],
            "empty",
        );
        bad(
            vec![LayerDecl::new(vec![decl(
                &"x".repeat(65536),
                DType::U8,
                &[1],
            )])],
            "over 65535",
        );
        bad(
            vec![
                LayerDecl::new(vec![decl("w", DType::U8, &[1])]),
                LayerDecl::new(vec![decl("w", DType::U8, &[1])]),
            ],
            "tensor \"w\" (layer 1): the name is already used",
        );
        bad(
            vec![LayerDecl::new(vec![decl("w", DType::U8, &[1; 9])])],
            "9 dimensions",
        );
        bad(
            vec![LayerDecl::new(vec![decl("w", DType::F32, &[u64::MAX])])],
            "overflows",
        );
        bad(
            vec![LayerDecl {
                tensors: vec![],
                precision: Some(65),
            }],
            "layer 0: precision 65",
        );
        bad(
            vec![LayerDecl::new(vec![
                decl("a", DType::U8, &[u64::MAX]),
                decl("b", DType::U8, &[1]),
            ])],
            "larger than 2^64",
        );
    }

    #[test]
    fn header_over_the_limit_is_refused_by_the_writer() {
        let name = "n".repeat(60_000);
        let tensors = (0..1200)
            .map(|i| decl(&format!("{name}{i}"), DType::U8, &[0]))
            .collect();
        let e = plan(vec![LayerDecl::new(tensors)]).err().unwrap();
        assert!(e.contains("limit"), "{e}");
    }
}
