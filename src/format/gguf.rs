//! GGUF, versions 2 and 3, little-endian: the model file of ggml and llama.cpp.
//!
//! The specification is ggml's `docs/gguf.md`; `docs/formats.md` (GGUF) says
//! what Hyperion reads from it and what it refuses. This module is the reader:
//! [`parse`] validates everything before the tensor data of a file held in
//! memory (pure, and the fuzz target's entry point); [`read_header`] and
//! [`read_metadata`] do the same from a path;
//! [`read_index`](crate::format::read_index) turns the tensors into layers.
//!
//! ```text
//! magic "GGUF" · version u32 · tensor_count u64 · kv_count u64
//! kv_count × (key: string · value_type u32 · value)
//! tensor_count × (name: string · n_dims u32 · ne[n_dims] u64 · type u32 · offset u64)
//! zero padding to the alignment · tensor data (each tensor at data_start + offset)
//! ```
//!
//! A string is a `u64` byte length and the bytes; an array is an element type
//! `u32`, a `u64` element count and the elements. `ne[0]` is the innermost
//! dimension; [`GgufTensor::shape`] (like every Hyperion shape) lists the
//! outermost first, so it is `ne` reversed.
//!
//! The reader treats the file as hostile: every length is checked against the
//! bytes that must hold it before anything is allocated for it, all arithmetic
//! on values from the file is checked, and every violation is a
//! [`FormatError`] naming the metadata key or tensor at fault.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;

use super::grouping::{group, FileTensor};
use super::read_up_to;
use crate::dtype::{DType, GgmlType};
use crate::error::{Error, FormatError, Result};
use crate::index::{FileFormat, ModelIndex};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// The oldest version read. Version 1 (32-bit counts and lengths) is refused,
/// as ggml refuses it.
pub const MIN_VERSION: u32 = 2;

/// The newest version read. Version 3 differs from 2 only in allowing
/// big-endian files, which this reader refuses.
pub const MAX_VERSION: u32 = 3;

/// The alignment of the data section and of every tensor offset when the file
/// does not set [`ALIGNMENT_KEY`].
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key that sets the alignment: a `UINT32`, a non-zero power of two.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// The most bytes the header, metadata and tensor infos may take together
/// (256 MiB); the reader never holds more of a file than this.
pub const MAX_METADATA_LEN: u64 = 256 << 20;

/// The most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// The longest metadata key, in bytes (the specification's limit).
pub const MAX_KEY_LEN: u64 = 65_535;

/// The longest tensor name, in bytes (the specification's limit).
pub const MAX_TENSOR_NAME_LEN: u64 = 64;

/// The deepest nesting of metadata arrays: an array of arrays of `UINT8` has
/// depth 2.
pub const MAX_ARRAY_DEPTH: u32 = 8;

/// The most arrays nested in other arrays, in the whole file. ggml cannot
/// read nested arrays at all, and each takes 40 bytes of memory for 12 in
/// the file; this keeps them to a few MiB.
pub const MAX_NESTED_ARRAYS: u64 = 1 << 16;

/// The most metadata pairs a file may have. Real files have tens; large
/// metadata (vocabularies) lives in arrays, which this does not limit.
pub const MAX_KV_COUNT: u64 = 1 << 16;

/// The most tensors a file may have: several times the largest models with
/// unmerged experts (some 50,000 tensors).
pub const MAX_TENSOR_COUNT: u64 = 1 << 18;

/// Bytes of magic, version, tensor_count and kv_count.
const FIXED_HEADER_LEN: u64 = 24;
/// The smallest key/value pair: key length, a one-byte key, the type, a one-byte value.
const MIN_KV_LEN: u64 = 8 + 1 + 4 + 1;
/// The smallest tensor info: name length, a one-byte name, n_dims, type, offset.
const MIN_TENSOR_INFO_LEN: u64 = 8 + 1 + 4 + 4 + 8;
/// The first read of a file's prefix; it doubles (or grows to what the parse
/// needs) until the metadata fits.
const FIRST_READ: u64 = 64 << 10;

// ---------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------

/// The type of a metadata value, with its GGUF id (`gguf_metadata_value_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgufType {
    /// `UINT8` (0).
    U8,
    /// `INT8` (1).
    I8,
    /// `UINT16` (2).
    U16,
    /// `INT16` (3).
    I16,
    /// `UINT32` (4).
    U32,
    /// `INT32` (5).
    I32,
    /// `FLOAT32` (6).
    F32,
    /// `BOOL` (7): one byte, 0 or 1.
    Bool,
    /// `STRING` (8): a `u64` length, then that many bytes.
    String,
    /// `ARRAY` (9): an element type, a `u64` count, then the elements.
    Array,
    /// `UINT64` (10).
    U64,
    /// `INT64` (11).
    I64,
    /// `FLOAT64` (12).
    F64,
}

/// (type, id, name, bytes of the smallest encoded value)
const VALUE_TYPES: [(GgufType, u32, &str, u64); 13] = [
    (GgufType::U8, 0, "UINT8", 1),
    (GgufType::I8, 1, "INT8", 1),
    (GgufType::U16, 2, "UINT16", 2),
    (GgufType::I16, 3, "INT16", 2),
    (GgufType::U32, 4, "UINT32", 4),
    (GgufType::I32, 5, "INT32", 4),
    (GgufType::F32, 6, "FLOAT32", 4),
    (GgufType::Bool, 7, "BOOL", 1),
    (GgufType::String, 8, "STRING", 8),
    (GgufType::Array, 9, "ARRAY", 12),
    (GgufType::U64, 10, "UINT64", 8),
    (GgufType::I64, 11, "INT64", 8),
    (GgufType::F64, 12, "FLOAT64", 8),
];

impl GgufType {
    fn row(self) -> (GgufType, u32, &'static str, u64) {
        VALUE_TYPES
            .into_iter()
            .find(|row| row.0 == self)
            .unwrap_or(VALUE_TYPES[0])
    }

    /// The type with GGUF id `id`, if there is one.
    pub fn from_id(id: u32) -> Option<GgufType> {
        VALUE_TYPES
            .into_iter()
            .find(|row| row.1 == id)
            .map(|row| row.0)
    }

    /// The GGUF id.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The name gguf-py gives the type (`UINT32`, `STRING` …).
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Bytes of the smallest encoding of a value of this type.
    fn min_len(self) -> u64 {
        self.row().3
    }
}

impl fmt::Display for GgufType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata string: bytes, which should be UTF-8 but need not be (some
/// tokenizer vocabularies hold raw bytes), so they are kept as they are.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgufString(Box<[u8]>);

impl GgufString {
    /// The bytes, as in the file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The string, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string, with invalid UTF-8 replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl fmt::Debug for GgufString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

/// Lossy: invalid UTF-8 shows as U+FFFD.
impl fmt::Display for GgufString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl From<&str> for GgufString {
    fn from(s: &str) -> Self {
        GgufString(s.as_bytes().into())
    }
}

impl From<String> for GgufString {
    fn from(s: String) -> Self {
        GgufString(s.into_bytes().into_boxed_slice())
    }
}

impl From<Vec<u8>> for GgufString {
    fn from(bytes: Vec<u8>) -> Self {
        GgufString(bytes.into_boxed_slice())
    }
}

impl PartialEq<str> for GgufString {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl PartialEq<&str> for GgufString {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

/// The strings of a `STRING` array, stored together: one buffer of their
/// bytes and the end of each, so a 256k-token vocabulary is two allocations
/// and takes no more memory than the file spends on it.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct GgufStrings {
    bytes: Box<[u8]>,
    /// `ends[i]` is where string `i` ends in `bytes`; it starts where `i - 1` ends.
    ends: Box<[usize]>,
}

impl GgufStrings {
    /// The number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`'s bytes.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(p) => *self.ends.get(p)?,
            None => 0,
        };
        self.bytes.get(start..end)
    }

    /// String `i`, if it exists and is valid UTF-8.
    pub fn get_str(&self, i: usize) -> Option<&str> {
        std::str::from_utf8(self.get(i)?).ok()
    }

    /// The strings' bytes, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }
}

impl<S: AsRef<[u8]>> FromIterator<S> for GgufStrings {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for s in iter {
            bytes.extend_from_slice(s.as_ref());
            ends.push(bytes.len());
        }
        GgufStrings {
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl fmt::Debug for GgufStrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|s| GgufString(s.into())))
            .finish()
    }
}

/// A metadata value.
///
/// `Display` prints scalars plainly, strings quoted, and arrays as
/// `[a, b, …]`; a precision caps the elements shown per array
/// (`format!("{value:.8}")` shows at most 8, then how many were left out).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GgufValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    String(GgufString),
    /// `ARRAY`.
    Array(GgufArray),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn value_type(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array(_) => GgufType::Array,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F64(_) => GgufType::F64,
        }
    }

    /// The value as a `u64`, if it is an integer of any width that fits
    /// (counts are `UINT32` in some files and `UINT64` in others).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `i64`, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as an `f64`, if it is a `FLOAT32` or `FLOAT64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a `bool`, if it is a `BOOL`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as text, if it is a `STRING` of valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => s.as_str(),
            _ => None,
        }
    }

    /// The array, if the value is one.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) => write!(f, "{:?}", s.to_string_lossy()),
            GgufValue::Array(a) => fmt::Display::fmt(a, f),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
        }
    }
}

/// A metadata array: its elements, all of one type. An empty array keeps its
/// declared element type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GgufArray {
    /// Of `UINT8`.
    U8(Box<[u8]>),
    /// Of `INT8`.
    I8(Box<[i8]>),
    /// Of `UINT16`.
    U16(Box<[u16]>),
    /// Of `INT16`.
    I16(Box<[i16]>),
    /// Of `UINT32`.
    U32(Box<[u32]>),
    /// Of `INT32`.
    I32(Box<[i32]>),
    /// Of `FLOAT32`.
    F32(Box<[f32]>),
    /// Of `BOOL`.
    Bool(Box<[bool]>),
    /// Of `STRING`.
    String(GgufStrings),
    /// Of `ARRAY` (nested arrays; each inner array has its own element type).
    Array(Box<[GgufArray]>),
    /// Of `UINT64`.
    U64(Box<[u64]>),
    /// Of `INT64`.
    I64(Box<[i64]>),
    /// Of `FLOAT64`.
    F64(Box<[f64]>),
}

impl GgufArray {
    /// The type of the elements.
    pub fn element_type(&self) -> GgufType {
        match self {
            GgufArray::U8(_) => GgufType::U8,
            GgufArray::I8(_) => GgufType::I8,
            GgufArray::U16(_) => GgufType::U16,
            GgufArray::I16(_) => GgufType::I16,
            GgufArray::U32(_) => GgufType::U32,
            GgufArray::I32(_) => GgufType::I32,
            GgufArray::F32(_) => GgufType::F32,
            GgufArray::Bool(_) => GgufType::Bool,
            GgufArray::String(_) => GgufType::String,
            GgufArray::Array(_) => GgufType::Array,
            GgufArray::U64(_) => GgufType::U64,
            GgufArray::I64(_) => GgufType::I64,
            GgufArray::F64(_) => GgufType::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes `[a, b, …]`, at most `f.precision()` elements.
fn fmt_items<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    mut each: impl FnMut(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    let shown = f.precision().unwrap_or(usize::MAX).min(items.len());
    f.write_str("[")?;
    for (i, item) in items.iter().take(shown).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        each(f, item)?;
    }
    if shown < items.len() {
        if shown > 0 {
            f.write_str(", ")?;
        }
        write!(f, "… {} more", items.len() - shown)?;
    }
    f.write_str("]")
}

impl fmt::Display for GgufArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn plain<T: fmt::Display>(f: &mut fmt::Formatter<'_>, v: &T) -> fmt::Result {
            write!(f, "{v}")
        }
        match self {
            GgufArray::U8(v) => fmt_items(f, v, plain),
            GgufArray::I8(v) => fmt_items(f, v, plain),
            GgufArray::U16(v) => fmt_items(f, v, plain),
            GgufArray::I16(v) => fmt_items(f, v, plain),
            GgufArray::U32(v) => fmt_items(f, v, plain),
            GgufArray::I32(v) => fmt_items(f, v, plain),
            GgufArray::F32(v) => fmt_items(f, v, plain),
            GgufArray::Bool(v) => fmt_items(f, v, plain),
            GgufArray::String(v) => {
                let v: Vec<&[u8]> = v.iter().collect();
                fmt_items(f, &v, |f, s| write!(f, "{:?}", String::from_utf8_lossy(s)))
            }
            GgufArray::Array(v) => fmt_items(f, v, |f, a| fmt::Display::fmt(a, f)),
            GgufArray::U64(v) => fmt_items(f, v, plain),
            GgufArray::I64(v) => fmt_items(f, v, plain),
            GgufArray::F64(v) => fmt_items(f, v, plain),
        }
    }
}

// ---------------------------------------------------------------------------
// The parsed file
// ---------------------------------------------------------------------------

/// A tensor of a GGUF file, checked: its bytes lie inside the file and
/// overlap no other tensor's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GgufTensor {
    /// The name, unique in the file.
    pub name: String,
    /// The GGML type, as the file records it.
    pub ggml_type: GgmlType,
    /// The shape, outermost dimension first: GGUF's `ne` reversed.
    pub shape: Vec<u64>,
    /// The offset of its first byte from the start of the file (the data
    /// section's start plus the offset the file records).
    pub offset: u64,
    /// Its length in bytes: the type's size of `shape`.
    pub len: u64,
}

impl GgufTensor {
    /// The dtype Hyperion gives the tensor ([`GgmlType::dtype`]): `F32` for
    /// a GGML `F32` tensor and likewise for the other plain types, and
    /// `DType::Ggml(…)` for the block-quantized ones.
    pub fn dtype(&self) -> DType {
        self.ggml_type.dtype()
    }
}

/// Everything in a GGUF file before its tensor data, checked.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GgufHeader {
    /// The format version: 2 or 3.
    pub version: u32,
    /// The alignment of the data section and the tensor offsets.
    pub alignment: u64,
    /// Bytes of the header, metadata and tensor infos: where the padding
    /// before the data section starts.
    pub metadata_len: u64,
    /// Where the data section starts: `metadata_len` rounded up to `alignment`.
    pub data_start: u64,
    /// The metadata, in file order; keys are unique.
    pub metadata: Vec<(String, GgufValue)>,
    /// The tensors, in file order.
    pub tensors: Vec<GgufTensor>,
}

impl GgufHeader {
    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Validates the GGUF file whose first bytes are `bytes`, `file_len` bytes in
/// all, and returns its metadata and tensors.
///
/// `bytes` holds the file from its first byte and must reach at least to the
/// end of the tensor infos; anything after them (the tensor data) is ignored,
/// so the whole file or just its prefix will do. When `bytes` stops short,
/// the error is [`FormatError::Truncated`] with `available` equal to
/// `bytes.len()` and `needed` saying how much more would get further. This
/// function does all the checking the reader does, allocates no more than
/// the bytes it was given justify, and never panics, whatever they hold: a
/// fuzz target can call it directly.
///
/// # Errors
///
/// A [`FormatError`] naming the metadata key (`metadata key
/// "general.alignment"`, or `metadata key #3` before the key is read) or the
/// tensor (`tensor "blk.0.attn_q.weight"`, or `tensor #7`) at fault: bad
/// magic, version 1 or big-endian files, truncation, over-long keys, names or
/// metadata, more pairs, tensors or nested arrays than the limits allow,
/// unknown value or tensor types, invalid `BOOL` bytes, arrays nested too
/// deep, duplicate keys or tensor names, a bad alignment, too many
/// dimensions, an innermost dimension that is not a whole number of blocks,
/// element counts or sizes that overflow, offsets that are misaligned, lie
/// outside the file, or make tensors overlap.
///
/// # Examples
///
/// Checking a file written by hand: one `F32` tensor of two elements.
///
/// ```
/// use hyperion::format::gguf::{parse, GgufValue};
/// use hyperion::DType;
///
/// let mut file = Vec::new();
/// file.extend_from_slice(b"GGUF");
/// file.extend_from_slice(&3u32.to_le_bytes()); // version
/// file.extend_from_slice(&1u64.to_le_bytes()); // tensor_count
/// file.extend_from_slice(&1u64.to_le_bytes()); // kv_count
/// let key = b"general.name";
/// file.extend_from_slice(&(key.len() as u64).to_le_bytes());
/// file.extend_from_slice(key);
/// file.extend_from_slice(&8u32.to_le_bytes()); // STRING
/// file.extend_from_slice(&4u64.to_le_bytes());
/// file.extend_from_slice(b"tiny");
/// let name = b"output_norm.weight";
/// file.extend_from_slice(&(name.len() as u64).to_le_bytes());
/// file.extend_from_slice(name);
/// file.extend_from_slice(&1u32.to_le_bytes()); // n_dims
/// file.extend_from_slice(&2u64.to_le_bytes()); // ne[0]
/// file.extend_from_slice(&0u32.to_le_bytes()); // F32
/// file.extend_from_slice(&0u64.to_le_bytes()); // offset in the data section
/// file.resize(file.len().next_multiple_of(32), 0);
/// file.extend_from_slice(&[0; 8]); // the tensor's bytes
///
/// let header = parse(&file, file.len() as u64)?;
/// assert_eq!(header.get("general.name").and_then(GgufValue::as_str), Some("tiny"));
/// let t = &header.tensors[0];
/// assert_eq!((t.dtype(), t.shape.as_slice(), t.len), (DType::F32, &[2][..], 8));
/// assert_eq!(t.offset, header.data_start);
///
/// // One byte short of the tensor's end.
/// assert!(parse(&file, file.len() as u64 - 1).is_err());
/// # Ok::<(), hyperion::FormatError>(())
/// ```
pub fn parse(bytes: &[u8], file_len: u64) -> Result<GgufHeader, FormatError> {
    // Bytes past the file's end or the metadata limit are never looked at.
    let usable = file_len.min(MAX_METADATA_LEN);
    let held = usize::try_from(usable).map_or(bytes.len(), |n| n.min(bytes.len()));
    let bytes = bytes.get(..held).unwrap_or(bytes);
    let mut c = Cursor {
        buf: bytes,
        pos: 0,
        file_len,
        nested_arrays: 0,
    };

    let shown = bytes.get(..MAGIC.len()).unwrap_or(bytes);
    if MAGIC.get(..shown.len()) != Some(shown) {
        return Err(FormatError::BadMagic {
            found: shown.to_vec(),
        });
    }
    c.take(MAGIC.len() as u64, Item::Header)?;
    let version = c.u32(Item::Header)?;
    check_version(version)?;
    let tensor_count = c.u64(Item::Header)?;
    let kv_count = c.u64(Item::Header)?;

    for (what, count, limit) in [
        ("kv_count", kv_count, MAX_KV_COUNT),
        ("tensor_count", tensor_count, MAX_TENSOR_COUNT),
    ] {
        if count > limit {
            return Err(FormatError::LimitExceeded {
                what: format!("the GGUF header's {what}"),
                value: count,
                limit,
            });
        }
    }
    // Both counts must fit the bytes that hold their records (in the file
    // and under the metadata limit) before anything is done with them.
    let records = kv_count
        .saturating_mul(MIN_KV_LEN)
        .saturating_add(tensor_count.saturating_mul(MIN_TENSOR_INFO_LEN));
    if FIXED_HEADER_LEN.saturating_add(records) > usable {
        let counts = format!(
            "the GGUF header's {kv_count} metadata pairs and {tensor_count} tensor infos \
             (at least {MIN_KV_LEN} and {MIN_TENSOR_INFO_LEN} bytes each)"
        );
        return Err(match c.short(records, Item::Header) {
            FormatError::Truncated {
                needed, available, ..
            } => FormatError::Truncated {
                what: counts,
                needed,
                available,
            },
            FormatError::LimitExceeded { value, limit, .. } => FormatError::LimitExceeded {
                what: format!("the metadata section ({counts})"),
                value,
                limit,
            },
            other => other,
        });
    }

    let metadata = parse_metadata(&mut c, kv_count)?;
    let alignment = alignment_of(&metadata)?;
    let infos = parse_tensor_infos(&mut c, tensor_count, alignment)?;
    let metadata_len = c.pos as u64;
    let data_start = metadata_len
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| overflow("the data section's start"))?;
    let tensors = place_tensors(infos, data_start, file_len)?;
    Ok(GgufHeader {
        version,
        alignment,
        metadata_len,
        data_start,
        metadata,
        tensors,
    })
}

fn check_version(version: u32) -> Result<(), FormatError> {
    // A big-endian file's version reads byte-swapped: 3 becomes 0x03000000.
    let swapped = version.swap_bytes();
    if version & 0xFFFF == 0 && (MIN_VERSION..=MAX_VERSION).contains(&swapped) {
        return Err(FormatError::Invalid(format!(
            "the version field reads {version:#010x}: this is a big-endian GGUF file \
             (version {swapped}), and only little-endian files are supported"
        )));
    }
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            format: "gguf",
            version,
        });
    }
    Ok(())
}

fn parse_metadata<'a>(
    c: &mut Cursor<'a>,
    kv_count: u64,
) -> Result<Vec<(String, GgufValue)>, FormatError> {
    let mut metadata = Vec::with_capacity(c.affordable(kv_count, MIN_KV_LEN));
    let mut keys: HashSet<&'a str> = HashSet::new();
    for i in 0..kv_count {
        let key = c.name(Item::Key(i), MAX_KEY_LEN)?;
        if !keys.insert(key) {
            return Err(FormatError::Invalid(format!(
                "metadata key {key:?} appears twice; keys must be unique"
            )));
        }
        let at = Item::Value(key);
        let id = c.u32(at)?;
        let ty = GgufType::from_id(id)
            .ok_or_else(|| FormatError::Invalid(format!("{at}: unknown value type {id}")))?;
        let value = c.value(ty, at)?;
        metadata.push((key.to_string(), value));
    }
    Ok(metadata)
}

/// The alignment the metadata sets, checked.
fn alignment_of(metadata: &[(String, GgufValue)]) -> Result<u64, FormatError> {
    match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some((_, GgufValue::U32(a))) => Err(FormatError::Invalid(format!(
            "metadata key {ALIGNMENT_KEY:?} is {a}, but the alignment must be a non-zero \
             power of two"
        ))),
        Some((_, v)) => Err(FormatError::Invalid(format!(
            "metadata key {ALIGNMENT_KEY:?} has type {}, but it must be UINT32",
            v.value_type()
        ))),
    }
}

/// A tensor info as read, before the data section's start is known.
struct Info<'a> {
    name: &'a str,
    ggml_type: GgmlType,
    shape: Vec<u64>,
    /// Offset from the data section's start.
    offset: u64,
    len: u64,
}

fn parse_tensor_infos<'a>(
    c: &mut Cursor<'a>,
    tensor_count: u64,
    alignment: u64,
) -> Result<Vec<Info<'a>>, FormatError> {
    let mut infos = Vec::with_capacity(c.affordable(tensor_count, MIN_TENSOR_INFO_LEN));
    let mut names: HashSet<&'a str> = HashSet::new();
    for i in 0..tensor_count {
        let name = c.name(Item::Tensor(i), MAX_TENSOR_NAME_LEN)?;
        if !names.insert(name) {
            return Err(FormatError::DuplicateName { name: name.into() });
        }
        let at = Item::Named(name);
        let n_dims = c.u32(at)?;
        if n_dims as usize > MAX_DIMS {
            return Err(FormatError::LimitExceeded {
                what: format!("{at}: n_dims"),
                value: n_dims.into(),
                limit: MAX_DIMS as u64,
            });
        }
        let mut ne = [1u64; MAX_DIMS];
        for d in ne.iter_mut().take(n_dims as usize) {
            *d = c.u64(at)?;
        }
        let type_id = c.u32(at)?;
        let offset = c.u64(at)?;

        let ne = ne.get(..n_dims as usize).unwrap_or_default();
        for (j, &d) in ne.iter().enumerate() {
            // ggml reads dimensions as int64_t and refuses negative ones.
            if d > i64::MAX as u64 {
                return Err(FormatError::LimitExceeded {
                    what: format!("{at}: ne[{j}]"),
                    value: d,
                    limit: i64::MAX as u64,
                });
            }
        }
        let shape: Vec<u64> = ne.iter().rev().copied().collect();
        let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if elements.is_none_or(|n| n > i64::MAX as u64) {
            return Err(overflow(format!(
                "{at}: the element count of shape {shape:?}"
            )));
        }
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| FormatError::UnknownDType {
            what: at.to_string(),
            code: type_id,
        })?;
        let inner = ne.first().copied().unwrap_or(1);
        if inner % ggml_type.block_size() != 0 {
            return Err(FormatError::Invalid(format!(
                "{at}: type {} packs {} elements per block, but ne[0] (the innermost \
                 dimension) is {inner}, not a multiple of it",
                ggml_type.name(),
                ggml_type.block_size()
            )));
        }
        let len = ggml_type.dtype().byte_len(&shape).ok_or_else(|| {
            overflow(format!(
                "{at}: the bytes of {} × {shape:?}",
                ggml_type.name()
            ))
        })?;
        if offset % alignment != 0 {
            return Err(FormatError::Misaligned {
                what: format!("{at}: offset"),
                value: offset,
                alignment,
            });
        }
        infos.push(Info {
            name,
            ggml_type,
            shape,
            offset,
            len,
        });
    }
    Ok(infos)
}

/// Places the tensors in the file: each inside the data section, none
/// overlapping another.
fn place_tensors(
    infos: Vec<Info<'_>>,
    data_start: u64,
    file_len: u64,
) -> Result<Vec<GgufTensor>, FormatError> {
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let at = Item::Named(info.name);
        let start = data_start.checked_add(info.offset).ok_or_else(|| {
            overflow(format!(
                "{at}: data section start {data_start} + offset {}",
                info.offset
            ))
        })?;
        let end = start
            .checked_add(info.len)
            .ok_or_else(|| overflow(format!("{at}: start {start} + length {}", info.len)))?;
        if end > file_len {
            return Err(FormatError::OutOfBounds {
                what: at.to_string(),
                start,
                end,
                region: "the data section",
                region_start: data_start,
                region_end: file_len,
            });
        }
        tensors.push(GgufTensor {
            name: info.name.to_string(),
            ggml_type: info.ggml_type,
            shape: info.shape,
            offset: start,
            len: info.len,
        });
    }

    // Empty tensors overlap nothing; among the others, sorted by start, any
    // overlap shows between neighbours.
    let mut by_start: Vec<&GgufTensor> = tensors.iter().filter(|t| t.len > 0).collect();
    by_start.sort_by_key(|t| (t.offset, t.len));
    for pair in by_start.windows(2) {
        if let [a, b] = pair {
            let a_end = a.offset + a.len; // checked above
            if b.offset < a_end {
                return Err(FormatError::Overlap {
                    first: format!("tensor {:?} (bytes {}..{a_end})", a.name, a.offset),
                    second: format!(
                        "tensor {:?} (bytes {}..{})",
                        b.name,
                        b.offset,
                        b.offset + b.len
                    ),
                });
            }
        }
    }
    Ok(tensors)
}

/// The item being read, for error messages.
#[derive(Clone, Copy)]
enum Item<'a> {
    Header,
    Key(u64),
    Value(&'a str),
    Tensor(u64),
    Named(&'a str),
}

impl fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Header => f.write_str("the GGUF header"),
            Item::Key(i) => write!(f, "metadata key #{i}"),
            Item::Value(key) => write!(f, "metadata key {key:?}"),
            Item::Tensor(i) => write!(f, "tensor #{i}"),
            Item::Named(name) => write!(f, "tensor {name:?}"),
        }
    }
}

/// A little-endian reader over the bytes held of a file, which never reads
/// past them and says, when they run out, whether the file, the metadata
/// limit or only the bytes held are to blame.
struct Cursor<'a> {
    /// The bytes held: at most the file's length and [`MAX_METADATA_LEN`].
    buf: &'a [u8],
    pos: usize,
    file_len: u64,
    /// Arrays read so far as elements of other arrays.
    nested_arrays: u64,
}

impl<'a> Cursor<'a> {
    /// The error for `n` bytes from `pos` that are not held.
    fn short(&self, n: u64, at: Item<'_>) -> FormatError {
        let needed = (self.pos as u64).saturating_add(n);
        if needed > self.file_len {
            FormatError::Truncated {
                what: at.to_string(),
                needed,
                available: self.file_len,
            }
        } else if needed > MAX_METADATA_LEN {
            FormatError::LimitExceeded {
                what: format!("the metadata section (through {at})"),
                value: needed,
                limit: MAX_METADATA_LEN,
            }
        } else {
            FormatError::Truncated {
                what: at.to_string(),
                needed,
                available: self.buf.len() as u64,
            }
        }
    }

    /// Checks that the next `n` bytes are held, without consuming them.
    fn ensure(&self, n: u64, at: Item<'_>) -> Result<(), FormatError> {
        let left = (self.buf.len() - self.pos.min(self.buf.len())) as u64;
        if n > left {
            return Err(self.short(n, at));
        }
        Ok(())
    }

    /// How many records of at least `min_len` bytes, of `count` declared, the
    /// bytes held after `pos` could contain: a capacity the input justifies.
    fn affordable(&self, count: u64, min_len: u64) -> usize {
        let left = (self.buf.len() - self.pos.min(self.buf.len())) as u64;
        usize::try_from(count.min(left / min_len.max(1))).unwrap_or(0)
    }

    fn take(&mut self, n: u64, at: Item<'_>) -> Result<&'a [u8], FormatError> {
        self.ensure(n, at)?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .ok_or_else(|| self.short(n, at))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.short(n, at))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, at: Item<'_>) -> Result<[u8; N], FormatError> {
        let s = self.take(N as u64, at)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, at: Item<'_>) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(at)?))
    }

    fn u64(&mut self, at: Item<'_>) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(at)?))
    }

    /// A key or tensor name: a string of 1 to `max_len` bytes of UTF-8.
    fn name(&mut self, at: Item<'_>, max_len: u64) -> Result<&'a str, FormatError> {
        let len = self.u64(at)?;
        if len > max_len {
            return Err(FormatError::LimitExceeded {
                what: format!("{at}: name length"),
                value: len,
                limit: max_len,
            });
        }
        if len == 0 {
            return Err(FormatError::Invalid(format!("{at}: the name is empty")));
        }
        let bytes = self.take(len, at)?;
        std::str::from_utf8(bytes)
            .map_err(|e| FormatError::Invalid(format!("{at}: the name is not valid UTF-8 ({e})")))
    }

    /// A string value: a `u64` length and the bytes.
    fn string(&mut self, at: Item<'_>) -> Result<GgufString, FormatError> {
        let len = self.u64(at)?;
        Ok(GgufString(self.take(len, at)?.into()))
    }

    /// The `count` strings of a `STRING` array: their lengths are walked
    /// first, so that their bytes go into one buffer of the exact size.
    fn strings(&mut self, count: u64, at: Item<'_>) -> Result<GgufStrings, FormatError> {
        let start = self.pos;
        let mut total: u64 = 0;
        for _ in 0..count {
            let len = self.u64(at)?;
            self.take(len, at)?;
            total = total.saturating_add(len);
        }
        // Every string was held, so these sizes fit in memory.
        let n = usize::try_from(count).unwrap_or(0);
        let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let mut ends = Vec::with_capacity(n);
        self.pos = start;
        for _ in 0..count {
            let len = self.u64(at)?;
            bytes.extend_from_slice(self.take(len, at)?);
            ends.push(bytes.len());
        }
        Ok(GgufStrings {
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
        })
    }

    fn bool(&mut self, at: Item<'_>) -> Result<bool, FormatError> {
        match self.array::<1>(at)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(FormatError::Invalid(format!(
                "{at}: a BOOL is {b:#04x} at byte {}, but it must be 0 or 1",
                self.pos - 1
            ))),
        }
    }

    /// A value of type `ty`.
    fn value(&mut self, ty: GgufType, at: Item<'_>) -> Result<GgufValue, FormatError> {
        Ok(match ty {
            GgufType::U8 => GgufValue::U8(u8::from_le_bytes(self.array(at)?)),
            GgufType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(at)?)),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(at)?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(at)?)),
            GgufType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(at)?)),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(at)?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(at)?)),
            GgufType::Bool => GgufValue::Bool(self.bool(at)?),
            GgufType::String => GgufValue::String(self.string(at)?),
            GgufType::Array => GgufValue::Array(self.array_value(at, 1)?),
            GgufType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(at)?)),
            GgufType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(at)?)),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(at)?)),
        })
    }

    /// An array at nesting depth `depth` (1 for a value's own array).
    fn array_value(&mut self, at: Item<'_>, depth: u32) -> Result<GgufArray, FormatError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(FormatError::LimitExceeded {
                what: format!("{at}: array nesting depth"),
                value: depth.into(),
                limit: MAX_ARRAY_DEPTH.into(),
            });
        }
        let id = self.u32(at)?;
        let ty = GgufType::from_id(id).ok_or_else(|| {
            FormatError::Invalid(format!("{at}: unknown array element type {id}"))
        })?;
        let count = self.u64(at)?;
        // Every element takes at least min_len bytes: they must all be held
        // before anything is allocated for them.
        self.ensure(count.saturating_mul(ty.min_len()), at)?;
        let n = self.affordable(count, ty.min_len());

        macro_rules! numbers {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>();
                let bytes = self.take(count.saturating_mul(size as u64), at)?;
                GgufArray::$variant(
                    bytes
                        .chunks_exact(size)
                        .map(|b| {
                            let mut a = [0u8; std::mem::size_of::<$t>()];
                            a.copy_from_slice(b);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            GgufType::U8 => numbers!(U8, u8),
            GgufType::I8 => numbers!(I8, i8),
            GgufType::U16 => numbers!(U16, u16),
            GgufType::I16 => numbers!(I16, i16),
            GgufType::U32 => numbers!(U32, u32),
            GgufType::I32 => numbers!(I32, i32),
            GgufType::F32 => numbers!(F32, f32),
            GgufType::U64 => numbers!(U64, u64),
            GgufType::I64 => numbers!(I64, i64),
            GgufType::F64 => numbers!(F64, f64),
            GgufType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..count {
                    v.push(self.bool(at)?);
                }
                GgufArray::Bool(v.into_boxed_slice())
            }
            GgufType::String => GgufArray::String(self.strings(count, at)?),
            GgufType::Array => {
                self.nested_arrays = self.nested_arrays.saturating_add(count);
                if self.nested_arrays > MAX_NESTED_ARRAYS {
                    return Err(FormatError::LimitExceeded {
                        what: format!("{at}: arrays nested in arrays (in the whole file)"),
                        value: self.nested_arrays,
                        limit: MAX_NESTED_ARRAYS,
                    });
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..count {
                    v.push(self.array_value(at, depth + 1)?);
                }
                GgufArray::Array(v.into_boxed_slice())
            }
        })
    }
}

fn overflow(what: impl Into<String>) -> FormatError {
    FormatError::Overflow { what: what.into() }
}

// ---------------------------------------------------------------------------
// Reading from a file
// ---------------------------------------------------------------------------

/// Reads and checks everything before the tensor data of the GGUF file at
/// `path` (a local file, or an `s3://` object with the `object-store`
/// feature). Reads the file's prefix in growing chunks (64 KiB first, at most
/// [`MAX_METADATA_LEN`] in all) until the tensor infos end; reads no tensor
/// data beyond what those chunks overshoot.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be opened or read; [`Error::Format`], with
/// the [`FormatError`] [`parse`] describes, if it is not a valid GGUF file.
///
/// # Examples
///
/// Listing a model's tensors and architecture (here a file written by hand;
/// see [`parse`] for the bytes).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("tiny.gguf");
/// # let mut f = Vec::new();
/// # f.extend_from_slice(b"GGUF");
/// # for n in [3u32] { f.extend_from_slice(&n.to_le_bytes()); }
/// # for n in [1u64, 1, 20] { f.extend_from_slice(&n.to_le_bytes()); }
/// # f.extend_from_slice(b"general.architecture");
/// # f.extend_from_slice(&8u32.to_le_bytes());
/// # f.extend_from_slice(&5u64.to_le_bytes());
/// # f.extend_from_slice(b"llama");
/// # f.extend_from_slice(&17u64.to_le_bytes());
/// # f.extend_from_slice(b"blk.0.attn_q.bias");
/// # f.extend_from_slice(&1u32.to_le_bytes());
/// # f.extend_from_slice(&4u64.to_le_bytes());
/// # f.extend_from_slice(&0u32.to_le_bytes());
/// # f.extend_from_slice(&0u64.to_le_bytes());
/// # f.resize(f.len().next_multiple_of(32) + 16, 0);
/// # std::fs::write(&path, &f)?;
/// use hyperion::format::gguf::{read_header, GgufValue};
///
/// let header = read_header(&path)?;
/// let arch = header.get("general.architecture").and_then(GgufValue::as_str);
/// assert_eq!(arch, Some("llama"));
/// for t in &header.tensors {
///     println!("{} {} {:?} at byte {}", t.name, t.ggml_type.name(), t.shape, t.offset);
/// }
/// # Ok(()) }
/// ```
pub fn read_header(path: impl AsRef<Path>) -> Result<GgufHeader> {
    crate::object::with_files(path.as_ref(), |path, opener| {
        let path: Arc<Path> = Arc::from(path);
        let (mut file, file_len) = opener.open(&path)?;
        read_from(&mut file, &path, file_len)
    })
}

/// The metadata of the GGUF file at `path`: every key and value, in file
/// order. Reads as [`read_header`] does.
///
/// # Errors
///
/// As [`read_header`].
pub fn read_metadata(path: impl AsRef<Path>) -> Result<Vec<(String, GgufValue)>> {
    read_header(path).map(|header| header.metadata)
}

/// Reads the index of the GGUF file `file` (of `file_len` bytes): its
/// tensors, grouped into layers by the block number in their names
/// (`blk.N.`). Reads no tensor data beyond what the metadata chunks overshoot.
pub(crate) fn read_index(
    file: &mut dyn crate::source::Source,
    path: &Arc<Path>,
    file_len: u64,
) -> Result<ModelIndex> {
    let header = read_from(file, path, file_len)?;
    if header.tensors.is_empty() {
        return Err(Error::format(
            path,
            FormatError::Invalid(
                "the file has no tensors (a vocabulary-only GGUF?), so no layers to serve".into(),
            ),
        ));
    }
    let tensors = header
        .tensors
        .into_iter()
        .map(|t| FileTensor {
            dtype: t.dtype(),
            name: t.name,
            shape: t.shape,
            file: 0,
            offset: t.offset,
            len: t.len,
        })
        .collect();
    Ok(ModelIndex::new(
        FileFormat::Gguf,
        vec![Arc::clone(path)],
        group(tensors),
    ))
}

/// Reads the file's prefix, growing it until [`parse`] has what it needs.
fn read_from(
    file: &mut dyn crate::source::Source,
    path: &Arc<Path>,
    file_len: u64,
) -> Result<GgufHeader> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, "seek to the header", e))?;
    let limit = file_len.min(MAX_METADATA_LEN);
    let mut buf: Vec<u8> = Vec::new();
    let mut want = limit.min(FIRST_READ);
    loop {
        let old = buf.len();
        let new = usize::try_from(want)
            .map_err(|_| Error::format(path, overflow(format!("{want} bytes as a memory size"))))?;
        buf.resize(new, 0);
        let tail = buf.get_mut(old..).unwrap_or_default();
        let got = read_up_to(file, tail).map_err(|e| Error::io(path, "read the metadata", e))?;
        if got < tail.len() {
            // The file shrank since it was measured: judge it by what is left.
            buf.truncate(old + got);
            let len = buf.len() as u64;
            return parse(&buf, len).map_err(|e| Error::format(path, e));
        }
        match parse(&buf, file_len) {
            Err(FormatError::Truncated {
                needed, available, ..
            }) if available == buf.len() as u64 && available < limit => {
                // Only the bytes held ran out: read more, at least double.
                want = needed.max(available.saturating_mul(2)).min(limit);
            }
            result => return result.map_err(|e| Error::format(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&tensors.to_le_bytes());
        b.extend_from_slice(&kvs.to_le_bytes());
        b
    }

    #[test]
    fn value_types_round_trip() {
        for (i, row) in VALUE_TYPES.iter().enumerate() {
            assert_eq!(row.1 as usize, i);
            assert_eq!(GgufType::from_id(row.1), Some(row.0));
            assert_eq!(row.0.id(), row.1);
        }
        assert_eq!(GgufType::from_id(13), None);
    }

    #[test]
    fn an_empty_file_is_valid_metadata() {
        let b = header(3, 0, 0);
        let h = parse(&b, b.len() as u64).unwrap();
        assert_eq!((h.metadata_len, h.data_start), (24, 32));
        assert!(h.tensors.is_empty() && h.metadata.is_empty());
    }

    #[test]
    fn a_short_prefix_says_how_much_more_it_needs() {
        let mut b = header(3, 0, 1);
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"a.bc");
        b.extend_from_slice(&GgufType::String.id().to_le_bytes());
        b.extend_from_slice(&1000u64.to_le_bytes());
        b.resize(b.len() + 1000, b'x');
        let full = parse(&b, b.len() as u64).unwrap();
        assert_eq!(
            full.get("a.bc").and_then(|v| v.as_str()).map(str::len),
            Some(1000)
        );
        let e = parse(&b[..100], b.len() as u64).unwrap_err();
        assert_eq!(
            e,
            FormatError::Truncated {
                what: "metadata key \"a.bc\"".into(),
                needed: b.len() as u64,
                available: 100
            }
        );
        // With the whole file held, a file one byte short is truncated for good.
        let e = parse(&b[..b.len() - 1], b.len() as u64 - 1).unwrap_err();
        assert!(
            matches!(e, FormatError::Truncated { available, .. } if available == b.len() as u64 - 1)
        );
    }

    #[test]
    fn display_caps_elements_with_the_precision() {
        let v = GgufValue::Array(GgufArray::Array(
            vec![
                GgufArray::U8(vec![1, 2, 3].into()),
                GgufArray::String([&b"a"[..], &[0xff]].into_iter().collect()),
            ]
            .into(),
        ));
        assert_eq!(v.to_string(), r#"[[1, 2, 3], ["a", "�"]]"#);
        assert_eq!(format!("{v:.1}"), "[[1, … 2 more], … 1 more]");
        assert_eq!(
            format!("{:.0}", GgufArray::I8(vec![1].into())),
            "[… 1 more]"
        );
        assert_eq!(
            format!("{:?}", GgufString::from(vec![b'a', 0xff])),
            r#"b"a\xff""#
        );
    }

    #[test]
    fn strings_are_stored_together_and_read_apart() {
        let s: GgufStrings = ["ab", "", "c"].into_iter().collect();
        assert_eq!((s.len(), s.is_empty()), (3, false));
        assert_eq!(s.get(0), Some(&b"ab"[..]));
        assert_eq!(s.get(1), Some(&b""[..]));
        assert_eq!(s.get_str(2), Some("c"));
        assert_eq!(s.get(3), None);
        assert_eq!(s.iter().collect::<Vec<_>>(), [&b"ab"[..], b"", b"c"]);
        assert_eq!(format!("{s:?}"), r#"["ab", "", "c"]"#);
        assert!(GgufStrings::default().is_empty());
    }

    #[test]
    fn integer_accessors_widen_and_refuse_what_does_not_fit() {
        assert_eq!(GgufValue::U32(7).as_u64(), Some(7));
        assert_eq!(GgufValue::I32(-1).as_u64(), None);
        assert_eq!(GgufValue::I32(-1).as_i64(), Some(-1));
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(GgufValue::F32(0.5).as_u64(), None);
        assert_eq!(GgufValue::Bool(true).as_bool(), Some(true));
    }
}
