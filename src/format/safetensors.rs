//! safetensors: one `*.safetensors` file, or a sharded model given by its
//! `model.safetensors.index.json` (or the directory that holds it).
//!
//! A safetensors file is an 8-byte little-endian length `n`, `n` bytes of
//! UTF-8 JSON (the header: tensor name → dtype, shape and `data_offsets`,
//! plus an optional `__metadata__` object of strings), then the data section,
//! which the tensors' `data_offsets` (relative to its start) must tile
//! exactly: no gap, no overlap, nothing after the last tensor.
//!
//! Opening reads the length and the header, never the data section. The
//! header is parsed with the `safetensors` crate's own types ([`TensorInfo`],
//! [`Dtype`]) and checked against the crate's
//! validation ([`Metadata::new`]); the crate's whole-file entry point
//! (`SafeTensors::read_metadata`) wants the whole file in memory to compare
//! its length, so this module does that check, and every other, itself
//! against the file's length, with errors that name the tensor and the
//! problem. It also refuses two things the crate lets through: a name used
//! twice in one header (the crate keeps the last), and dtypes whose
//! elements do not fill whole bytes for the given shape.
//!
//! Tensors are grouped into layers by [`grouping`]; see
//! `docs/formats.md`.

use std::collections::{HashMap, HashSet};
use std::io::SeekFrom;
use std::path::{Component, Path};
use std::sync::Arc;

use ::safetensors::tensor::{Metadata, TensorInfo};
use ::safetensors::Dtype;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::grouping::{self, FileTensor};
use super::read_up_to;
use crate::dtype::DType;
use crate::error::{Error, FormatError, Result};
use crate::index::{FileFormat, ModelIndex};
use crate::source::{is_object_url, Opener, Source};

/// Bytes of the header-length prefix at the start of every file.
pub const LEN_PREFIX: u64 = 8;

/// The longest JSON header accepted (100 MB, the `safetensors` crate's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The largest shard index (`*.safetensors.index.json`) accepted.
pub const MAX_INDEX_LEN: u64 = 100_000_000;

/// The deepest nesting of JSON arrays and objects accepted in a header or an
/// index. A valid header nests 3 deep; the crate's parser stops at 128
/// levels for known fields but skips unknown ones at any depth.
pub const MAX_JSON_DEPTH: u64 = 64;

/// The name Hugging Face gives the index of a sharded model.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

/// A tensor of a safetensors file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderTensor {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape, outermost dimension first (empty for a scalar).
    pub shape: Vec<u64>,
    /// The file offset of its first byte (`data_offsets[0]` plus the start of
    /// the data section).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// A validated safetensors header: what [`parse_header`] learned from it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ParsedHeader {
    /// Bytes of the JSON header (the value of the length prefix).
    pub header_len: u64,
    /// File offset of the data section: `8 + header_len`.
    pub data_start: u64,
    /// The tensors, in file order (by offset; zero-length tensors that share
    /// an offset keep the header's order).
    pub tensors: Vec<HeaderTensor>,
    /// The `__metadata__` strings, if the header has them.
    pub metadata: Option<HashMap<String, String>>,
}

/// Validates the safetensors header in `bytes` for a file of `file_len`
/// bytes and returns its tensors.
///
/// `bytes` holds the file from its first byte; it must hold at least the
/// `8 + n` bytes of the length prefix and the JSON header, and anything
/// after them is ignored (so the whole file, or just its header, will do).
/// The data section is checked against `file_len` without being read. This
/// function allocates no more than the header's size justifies and never
/// panics, whatever `bytes` holds: a fuzz target calls it directly.
///
/// # Errors
///
/// A [`FormatError`]: [`Truncated`](FormatError::Truncated) when the file
/// ends inside the prefix, the header or a tensor;
/// [`LimitExceeded`](FormatError::LimitExceeded) for a header over
/// [`MAX_HEADER_LEN`]; [`NotUtf8`](FormatError::NotUtf8);
/// [`Json`](FormatError::Json) for JSON that does not parse or lacks a field
/// (naming the tensor); [`DuplicateName`](FormatError::DuplicateName);
/// [`ShapeMismatch`](FormatError::ShapeMismatch) when `data_offsets` disagree
/// with dtype × shape; [`Overflow`](FormatError::Overflow);
/// [`Overlap`](FormatError::Overlap) and [`Gap`](FormatError::Gap) when the
/// tensors do not tile the data section; [`Invalid`](FormatError::Invalid)
/// for the rest.
///
/// # Examples
///
/// ```
/// use hyperion::format::safetensors::parse_header;
/// use hyperion::{DType, FormatError};
///
/// let json = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
/// let mut file = (json.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(json);
/// file.extend_from_slice(&[0; 8]);
///
/// let header = parse_header(&file, file.len() as u64).unwrap();
/// assert_eq!(header.tensors[0].dtype, DType::F32);
/// assert_eq!(header.tensors[0].offset, header.data_start);
///
/// // One byte short: the tensor runs past the end of the file.
/// let err = parse_header(&file, file.len() as u64 - 1).unwrap_err();
/// assert!(matches!(err, FormatError::Truncated { .. }));
/// ```
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<ParsedHeader, FormatError> {
    let header_len = check_prefix(bytes, file_len)?;
    let data_start = LEN_PREFIX + header_len; // header_len <= MAX_HEADER_LEN
    let json = usize::try_from(data_start)
        .ok()
        .and_then(|end| bytes.get(LEN_PREFIX as usize..end))
        .ok_or_else(|| FormatError::Truncated {
            what: "the JSON header".into(),
            needed: data_start,
            available: len_u64(bytes),
        })?;
    let text = std::str::from_utf8(json).map_err(|e| FormatError::NotUtf8 {
        what: "the JSON header".into(),
        valid_up_to: e.valid_up_to() as u64,
    })?;
    check_depth(text, "the JSON header")?;
    let raw = parse_json_header(text)?;
    if raw.metadata_entries > 1 {
        return Err(FormatError::DuplicateName {
            name: METADATA_KEY.into(),
        });
    }
    let mut names = HashSet::with_capacity(raw.tensors.len());
    for (name, _) in &raw.tensors {
        if !names.insert(name.as_str()) {
            return Err(FormatError::DuplicateName { name: name.clone() });
        }
    }

    // file_len >= data_start: check_prefix made sure.
    let data_len = file_len - data_start;
    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (name, info) in &raw.tensors {
        tensors.push(check_tensor(name, info, data_start, file_len)?);
    }
    // By (start, end), as the crate sorts; ties (empty tensors sharing an
    // offset) keep the header's order, where the crate's is arbitrary.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].offset, tensors[i].len));
    check_tiling(&order, &tensors, data_start, data_len)?;

    // The crate's own validation, which the checks above must subsume: if it
    // ever disagrees, refuse rather than serve bytes it would not.
    let sorted: Vec<(String, TensorInfo)> = order.iter().map(|&i| raw.tensors[i].clone()).collect();
    // The crate's map type depends on its `std` feature: collect into either.
    let metadata = raw.metadata.clone().map(|m| m.into_iter().collect());
    let crate_len = Metadata::new(metadata, sorted)
        .map_err(|e| {
            FormatError::Invalid(format!("the safetensors crate refuses the header: {e}"))
        })?
        .data_len();
    if crate_len as u64 != data_len {
        return Err(FormatError::Invalid(format!(
            "the safetensors crate measures a {crate_len}-byte data section, \
             but the file has {data_len} bytes after the header"
        )));
    }

    let mut slots: Vec<Option<HeaderTensor>> = tensors.into_iter().map(Some).collect();
    let tensors = order.iter().filter_map(|&i| slots[i].take()).collect();
    Ok(ParsedHeader {
        header_len,
        data_start,
        tensors,
        metadata: raw.metadata,
    })
}

/// Checks the length prefix at the start of `bytes` against the limit and
/// `file_len`; returns the JSON header's length.
fn check_prefix(bytes: &[u8], file_len: u64) -> Result<u64, FormatError> {
    let prefix: [u8; LEN_PREFIX as usize] = bytes
        .get(..LEN_PREFIX as usize)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| FormatError::Truncated {
            what: "the header length (the first 8 bytes)".into(),
            needed: LEN_PREFIX,
            available: len_u64(bytes).min(file_len),
        })?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::LimitExceeded {
            what: "the header length".into(),
            value: header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    let data_start = LEN_PREFIX + header_len;
    if data_start > file_len {
        return Err(FormatError::Truncated {
            what: "the JSON header".into(),
            needed: data_start,
            available: file_len,
        });
    }
    Ok(header_len)
}

/// Converts and checks one tensor entry on its own: dtype, dtype × shape
/// against `data_offsets`, and its place inside the file.
fn check_tensor(
    name: &str,
    info: &TensorInfo,
    data_start: u64,
    file_len: u64,
) -> Result<HeaderTensor, FormatError> {
    let who = || format!("tensor {name:?}");
    let dtype = dtype_of(info.dtype).ok_or_else(|| {
        FormatError::Invalid(format!(
            "{}: dtype {} is not supported by this build",
            who(),
            info.dtype
        ))
    })?;
    let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
    let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
    if end < start {
        return Err(FormatError::Invalid(format!(
            "{}: data_offsets [{start}, {end}] end before they start",
            who()
        )));
    }
    let elements = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| overflow(format!("{}: elements of shape {shape:?}", who())))?;
    let bits = elements
        .checked_mul(u64::from(dtype.bits()))
        .ok_or_else(|| overflow(format!("{}: bits of {dtype} × {shape:?}", who())))?;
    if bits % 8 != 0 {
        return Err(FormatError::Invalid(format!(
            "{}: {elements} elements of {dtype} ({} bits each) are not a whole number of bytes",
            who(),
            dtype.bits()
        )));
    }
    let expected = bits / 8;
    let len = end - start;
    if len != expected {
        return Err(FormatError::ShapeMismatch {
            tensor: name.into(),
            dtype: dtype.name().into(),
            shape,
            expected,
            actual: len,
        });
    }
    let file_end = data_start
        .checked_add(end)
        .ok_or_else(|| overflow(format!("{}: data section start + data_offsets end", who())))?;
    if file_end > file_len {
        return Err(FormatError::Truncated {
            what: format!("{} (data_offsets [{start}, {end}])", who()),
            needed: file_end,
            available: file_len,
        });
    }
    Ok(HeaderTensor {
        name: name.into(),
        dtype,
        shape,
        offset: data_start + start,
        len,
    })
}

/// Checks that the tensors, taken in `order` (by offset), tile the data
/// section (`data_len` bytes from `data_start`) exactly.
fn check_tiling(
    order: &[usize],
    tensors: &[HeaderTensor],
    data_start: u64,
    data_len: u64,
) -> Result<(), FormatError> {
    let mut prev: Option<&HeaderTensor> = None;
    let mut covered = 0u64; // relative to the data section
    for t in order.iter().filter_map(|&i| tensors.get(i)) {
        let (start, end) = (t.offset - data_start, t.offset - data_start + t.len);
        if start < covered {
            let p = prev.map_or_else(String::new, |p| describe(p, data_start));
            return Err(FormatError::Overlap {
                first: p,
                second: describe(t, data_start),
            });
        }
        if start > covered {
            let what = match prev {
                Some(p) => format!(
                    "the data section, between tensors {:?} and {:?}",
                    p.name, t.name
                ),
                None => format!("the data section, before tensor {:?}", t.name),
            };
            return Err(FormatError::Gap {
                what,
                start: covered,
                end: start,
            });
        }
        covered = end;
        prev = Some(t);
    }
    if covered != data_len {
        let what = match prev {
            Some(p) => format!("the data section, after its last tensor {:?}", p.name),
            None => "the data section of a header without tensors".into(),
        };
        return Err(FormatError::Gap {
            what,
            start: covered,
            end: data_len,
        });
    }
    Ok(())
}

/// `tensor "w" (data_offsets [0, 16])`.
fn describe(t: &HeaderTensor, data_start: u64) -> String {
    let start = t.offset - data_start;
    format!(
        "tensor {:?} (data_offsets [{start}, {}])",
        t.name,
        start + t.len
    )
}

/// Hyperion's dtype for a safetensors dtype.
fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Bool,
        Dtype::F4 => DType::F4,
        Dtype::F6_E2M3 => DType::F6E2M3,
        Dtype::F6_E3M2 => DType::F6E3M2,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::F8_E5M2 => DType::F8E5M2,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F8_E8M0 => DType::F8E8M0,
        Dtype::F8_E4M3FNUZ => DType::F8E4M3Fnuz,
        Dtype::F8_E5M2FNUZ => DType::F8E5M2Fnuz,
        Dtype::I16 => DType::I16,
        Dtype::U16 => DType::U16,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::F32 => DType::F32,
        Dtype::C64 => DType::C64,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U64 => DType::U64,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

const METADATA_KEY: &str = "__metadata__";

/// The header as parsed, before any check beyond its JSON shape. Entries
/// keep their order and duplicates, so that duplicates can be refused.
#[derive(Default)]
struct RawHeader {
    metadata: Option<HashMap<String, String>>,
    /// How many `__metadata__` keys there were.
    metadata_entries: usize,
    tensors: Vec<(String, TensorInfo)>,
}

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`] before it is parsed.
///
/// serde_json skips an unknown field without recursion (so at any depth),
/// while the crate, which buffers the header before it deserializes it,
/// refuses one nested past 128 levels; refusing deep nesting up front keeps
/// this reader from accepting a header the crate refuses. Counts brackets
/// outside strings; malformed JSON is left to the parser.
fn check_depth(text: &str, what: &str) -> Result<(), FormatError> {
    let mut depth = 0u64;
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(FormatError::LimitExceeded {
                        what: format!("the nesting depth of {what}"),
                        value: depth,
                        limit: MAX_JSON_DEPTH,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses the JSON header; an error names the entry being read.
fn parse_json_header(text: &str) -> Result<RawHeader, FormatError> {
    let mut current = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = HeaderVisitor {
        current: &mut current,
    }
    .deserialize(&mut de)
    .and_then(|raw| de.end().map(|()| raw));
    parsed.map_err(|e| FormatError::Json {
        what: match current {
            Some(key) if key == METADATA_KEY => "__metadata__ in the JSON header".into(),
            Some(key) => format!("tensor {key:?} in the JSON header"),
            None => "the JSON header".into(),
        },
        message: e.to_string(),
    })
}

/// Reads the header object, recording in `current` the key whose value is
/// being read.
struct HeaderVisitor<'a> {
    current: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for HeaderVisitor<'_> {
    type Value = RawHeader;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = RawHeader;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a safetensors header: a JSON object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut raw = RawHeader::default();
        while let Some(key) = map.next_key::<String>()? {
            let is_metadata = key == METADATA_KEY;
            *self.current = Some(key);
            if is_metadata {
                raw.metadata = map.next_value()?;
                raw.metadata_entries += 1;
                *self.current = None;
            } else {
                let info: TensorInfo = map.next_value()?;
                if let Some(name) = self.current.take() {
                    raw.tensors.push((name, info));
                }
            }
        }
        Ok(raw)
    }
}

// ---------------------------------------------------------------------------
// Shard index
// ---------------------------------------------------------------------------

/// A validated shard index (`model.safetensors.index.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardIndex {
    /// Tensor name → shard file name (relative to the index's directory), in
    /// the index's order. Names are unique; shard names are plain relative
    /// paths.
    pub weight_map: Vec<(String, String)>,
}

impl ShardIndex {
    /// The distinct shard names, sorted: the order of the model's files
    /// (`model-00001-of-00003.safetensors` first).
    pub fn shards(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.weight_map.iter().map(|(_, s)| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Validates a shard index: a JSON object whose `weight_map` maps each
/// tensor name to the file holding it. Other keys (`metadata`) are ignored.
///
/// Never panics, whatever `bytes` holds.
///
/// # Errors
///
/// [`NotUtf8`](FormatError::NotUtf8), [`Json`](FormatError::Json) (not JSON,
/// no `weight_map`, a value that is not a string),
/// [`DuplicateName`](FormatError::DuplicateName) for a tensor listed twice,
/// [`UnsafePath`](FormatError::UnsafePath) for a shard name that is empty,
/// absolute or has a `.` or `..` component, [`Invalid`](FormatError::Invalid)
/// for an empty `weight_map`.
///
/// # Examples
///
/// ```
/// use hyperion::format::safetensors::parse_shard_index;
/// use hyperion::FormatError;
///
/// let index = br#"{"metadata": {"total_size": 16},
///                  "weight_map": {"b": "model-2.safetensors", "a": "model-1.safetensors"}}"#;
/// let parsed = parse_shard_index(index).unwrap();
/// assert_eq!(parsed.shards(), ["model-1.safetensors", "model-2.safetensors"]);
///
/// let escape = br#"{"weight_map": {"a": "../../etc/passwd"}}"#;
/// assert!(matches!(parse_shard_index(escape), Err(FormatError::UnsafePath { .. })));
/// ```
pub fn parse_shard_index(bytes: &[u8]) -> Result<ShardIndex, FormatError> {
    const WHAT: &str = "the shard index";
    let text = std::str::from_utf8(bytes).map_err(|e| FormatError::NotUtf8 {
        what: WHAT.into(),
        valid_up_to: e.valid_up_to() as u64,
    })?;
    check_depth(text, WHAT)?;
    let mut current = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = IndexVisitor {
        current: &mut current,
    }
    .deserialize(&mut de)
    .and_then(|raw| de.end().map(|()| raw));
    let raw = parsed.map_err(|e| FormatError::Json {
        what: match current {
            Some(key) => format!("weight_map entry {key:?} in {WHAT}"),
            None => WHAT.into(),
        },
        message: e.to_string(),
    })?;
    if raw.weight_maps > 1 {
        return Err(FormatError::DuplicateName {
            name: "weight_map".into(),
        });
    }
    if raw.weight_maps == 0 {
        return Err(FormatError::Json {
            what: WHAT.into(),
            message: "it has no \"weight_map\" object".into(),
        });
    }
    if raw.weight_map.is_empty() {
        return Err(FormatError::Invalid(format!(
            "{WHAT}: weight_map is empty: it names no tensor"
        )));
    }
    let mut names = HashSet::with_capacity(raw.weight_map.len());
    for (tensor, shard) in &raw.weight_map {
        if !names.insert(tensor.as_str()) {
            return Err(FormatError::DuplicateName {
                name: tensor.clone(),
            });
        }
        if !is_plain_relative(shard) {
            return Err(FormatError::UnsafePath {
                what: format!("weight_map: the shard of tensor {tensor:?}"),
                name: shard.clone(),
            });
        }
    }
    Ok(ShardIndex {
        weight_map: raw.weight_map,
    })
}

/// Whether `name` is a non-empty relative path made of plain components
/// only: no root, no `.`, no `..`, no NUL.
fn is_plain_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && !name.starts_with('/')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

#[derive(Default)]
struct RawIndex {
    weight_maps: usize,
    weight_map: Vec<(String, String)>,
}

/// Reads the index object: `weight_map` entry by entry (recording the tensor
/// being read in `current`), anything else skipped.
struct IndexVisitor<'a> {
    current: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for IndexVisitor<'_> {
    type Value = RawIndex;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawIndex, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IndexVisitor<'_> {
    type Value = RawIndex;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a shard index: a JSON object with a \"weight_map\" object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawIndex, A::Error> {
        let mut raw = RawIndex::default();
        while let Some(key) = map.next_key::<String>()? {
            if key == "weight_map" {
                raw.weight_maps += 1;
                map.next_value_seed(WeightMapVisitor {
                    current: &mut *self.current,
                    out: &mut raw.weight_map,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(raw)
    }
}

/// Reads `weight_map`, keeping order and duplicates.
struct WeightMapVisitor<'a> {
    current: &'a mut Option<String>,
    out: &'a mut Vec<(String, String)>,
}

impl<'de> DeserializeSeed<'de> for WeightMapVisitor<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WeightMapVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a weight_map: a JSON object of tensor name → shard file name")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(tensor) = map.next_key::<String>()? {
            *self.current = Some(tensor);
            let shard: String = map.next_value()?;
            if let Some(tensor) = self.current.take() {
                self.out.push((tensor, shard));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------

/// Whether the file at `path`, whose first bytes are `first`, is to be read
/// as safetensors: its name ends in `.safetensors`, or its first 8 bytes are
/// a plausible header length (2 to [`MAX_HEADER_LEN`]) followed by `{`.
pub(crate) fn sniff(file: &mut dyn Source, path: &Path, first: &[u8]) -> bool {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return true;
    }
    let Ok(prefix) = <[u8; LEN_PREFIX as usize]>::try_from(first) else {
        return false;
    };
    let mut brace = [0u8; 1];
    (2..=MAX_HEADER_LEN).contains(&u64::from_le_bytes(prefix))
        && file.seek(SeekFrom::Start(LEN_PREFIX)).is_ok()
        && matches!(read_up_to(file, &mut brace), Ok(1))
        && brace[0] == b'{'
}

/// Whether `path` is to be read as a directory or a shard index (a `.json`
/// file) rather than as one file.
pub(crate) fn is_index_path(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "json")
}

/// Reads the index of a model given as a directory or a shard index (an
/// object URL is always an index: object storage has no directories), with
/// its files opened by `opener`.
pub(crate) fn read_index_at(path: &Path, opener: &mut dyn Opener) -> Result<ModelIndex> {
    if !is_object_url(path) && path.is_dir() {
        read_dir_index(path, opener)
    } else {
        read_sharded_index(path, opener)
    }
}

/// Reads the index of the single safetensors file `file` (of `file_len`
/// bytes): its length prefix, then the JSON header. Reads no tensor bytes.
pub(crate) fn read_file_index(
    file: &mut dyn Source,
    path: &Arc<Path>,
    file_len: u64,
) -> Result<ModelIndex> {
    let header = read_header(file, path, file_len)?;
    let tensors = header
        .tensors
        .into_iter()
        .map(|t| file_tensor(t, 0))
        .collect();
    Ok(ModelIndex::new(
        FileFormat::Safetensors,
        vec![Arc::clone(path)],
        grouping::group(tensors),
    ))
}

fn file_tensor(t: HeaderTensor, file: usize) -> FileTensor {
    FileTensor {
        name: t.name,
        dtype: t.dtype,
        shape: t.shape,
        file,
        offset: t.offset,
        len: t.len,
    }
}

/// Reads and parses the header of `file`: 8 bytes, then, once the length
/// has passed the limit and the file's length, exactly that many.
fn read_header(file: &mut dyn Source, path: &Arc<Path>, file_len: u64) -> Result<ParsedHeader> {
    let fail = |e| Error::format(path, e);
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, "seek to the header", e))?;
    let mut prefix = [0u8; LEN_PREFIX as usize];
    let n = read_up_to(file, &mut prefix).map_err(|e| Error::io(path, "read header", e))?;
    let header_len = check_prefix(prefix.get(..n).unwrap_or_default(), file_len).map_err(fail)?;
    // At most MAX_HEADER_LEN + 8 bytes, and no more than the file has.
    let total = LEN_PREFIX + header_len;
    let mut buf = vec![0u8; total as usize];
    let (head, rest) = buf.split_at_mut(prefix.len());
    head.copy_from_slice(&prefix);
    let got = read_up_to(file, rest).map_err(|e| Error::io(path, "read header", e))?;
    if got < rest.len() {
        // The file shrank since it was measured.
        return Err(fail(FormatError::Truncated {
            what: "the JSON header".into(),
            needed: total,
            available: LEN_PREFIX + got as u64,
        }));
    }
    parse_header(&buf, file_len).map_err(fail)
}

/// Reads a model given as a directory: its `model.safetensors.index.json`,
/// else its only `*.safetensors.index.json`, else its only `*.safetensors`.
fn read_dir_index(dir: &Path, opener: &mut dyn Opener) -> Result<ModelIndex> {
    let shared: Arc<Path> = Arc::from(dir);
    let hf_index = dir.join(INDEX_FILE_NAME);
    if hf_index.is_file() {
        return read_sharded_index(&hf_index, opener);
    }
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(&shared, "list directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&shared, "list directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_file() {
            continue;
        }
        if name.ends_with(".safetensors.index.json") {
            indexes.push(name);
        } else if name.ends_with(".safetensors") {
            singles.push(name);
        }
    }
    indexes.sort();
    singles.sort();
    match (indexes.as_slice(), singles.as_slice()) {
        ([index], _) => read_sharded_index(&dir.join(index), opener),
        ([], [single]) => {
            let path: Arc<Path> = Arc::from(dir.join(single));
            let (mut file, len) = opener.open(&path)?;
            read_file_index(&mut file, &path, len)
        }
        _ => Err(Error::format(
            &shared,
            FormatError::Invalid(format!(
                "a model directory holds {INDEX_FILE_NAME}, or one *.safetensors.index.json, \
                 or one *.safetensors file; this one holds the indexes {indexes:?} and the \
                 files {singles:?}"
            )),
        )),
    }
}

/// Reads a sharded model from its index: the index, then each shard's
/// header, and checks that the index and the shards agree tensor by tensor.
fn read_sharded_index(index_path: &Path, opener: &mut dyn Opener) -> Result<ModelIndex> {
    let ipath: Arc<Path> = Arc::from(index_path);
    let fail = |e| Error::format(&ipath, e);
    let bytes = read_bounded(&ipath, MAX_INDEX_LEN, opener)?;
    let index = parse_shard_index(&bytes).map_err(fail)?;
    let dir = index_path.parent().unwrap_or(Path::new(""));
    let shards = index.shards();
    let file_of: HashMap<&str, usize> = shards.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    // Every shard name of the weight map is in `file_of`.
    let assigned: HashMap<&str, usize> = index
        .weight_map
        .iter()
        .filter_map(|(t, s)| Some((t.as_str(), *file_of.get(s.as_str())?)))
        .collect();

    let mut files = Vec::with_capacity(shards.len());
    let mut tensors = Vec::with_capacity(index.weight_map.len());
    for (i, &shard) in shards.iter().enumerate() {
        let path: Arc<Path> = Arc::from(dir.join(shard));
        let missing = |reason: String| {
            fail(FormatError::MissingFile {
                what: "weight_map names a shard that".into(),
                name: shard.into(),
                reason,
            })
        };
        let (mut file, len) = opener.open(&path).map_err(|e| missing(reason(e)))?;
        let header = read_header(&mut file, &path, len)?;
        for t in header.tensors {
            if assigned.get(t.name.as_str()) != Some(&i) {
                return Err(fail(FormatError::NotInIndex {
                    tensor: t.name,
                    file: shard.into(),
                }));
            }
            tensors.push(file_tensor(t, i));
        }
        files.push(path);
    }
    if tensors.len() != index.weight_map.len() {
        let held: HashSet<(&str, usize)> =
            tensors.iter().map(|t| (t.name.as_str(), t.file)).collect();
        for (tensor, shard) in &index.weight_map {
            let file = file_of.get(shard.as_str()).copied().unwrap_or(usize::MAX);
            if !held.contains(&(tensor.as_str(), file)) {
                return Err(fail(FormatError::NotInShard {
                    tensor: tensor.clone(),
                    file: shard.clone(),
                }));
            }
        }
    }
    Ok(ModelIndex::new(
        FileFormat::Safetensors,
        files,
        grouping::group(tensors),
    ))
}

/// Reads the whole of a small file, refusing one over `limit` bytes before
/// allocating for it.
fn read_bounded(path: &Arc<Path>, limit: u64, opener: &mut dyn Opener) -> Result<Vec<u8>> {
    let (mut file, len) = opener.open(path)?;
    if len > limit {
        return Err(Error::format(
            path,
            FormatError::LimitExceeded {
                what: "the shard index's size".into(),
                value: len,
                limit,
            },
        ));
    }
    let mut buf = vec![0u8; len as usize];
    let got = read_up_to(&mut file, &mut buf).map_err(|e| Error::io(path, "read", e))?;
    buf.truncate(got);
    Ok(buf)
}

/// Why a shard could not be opened: the system's message for a local file,
/// the whole error (kind and client message) for an object.
fn reason(e: Error) -> String {
    match e {
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn overflow(what: impl Into<String>) -> FormatError {
    FormatError::Overflow { what: what.into() }
}

fn len_u64(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}
