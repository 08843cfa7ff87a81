//! GGUF: files written by gguf-py (the reference writer) read back through
//! the loader and compared with what gguf-py's reader reports; version 2
//! files; and one named test per attack on the reader, on files built by hand.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::config;
use hyperion::format::gguf::{
    self, parse, GgufArray, GgufHeader, GgufString, GgufType, GgufValue, MAX_ARRAY_DEPTH,
    MAX_KV_COUNT, MAX_METADATA_LEN, MAX_NESTED_ARRAYS, MAX_TENSOR_COUNT,
};
use hyperion::{Backend, DType, Error, FileFormat, FormatError, GgmlType, MappedModel};
use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Building files by hand
// ---------------------------------------------------------------------------

fn gstr(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

/// A key/value pair: the key, the type id, the value's bytes.
fn kv(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut b = gstr(key.as_bytes());
    b.extend_from_slice(&type_id.to_le_bytes());
    b.extend_from_slice(value);
    b
}

/// An array value's bytes: element type, count, the elements' bytes.
fn arr(elem: u32, count: u64, items: &[u8]) -> Vec<u8> {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(items);
    b
}

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// A tensor info, field by field.
#[derive(Clone)]
struct Info {
    name: Vec<u8>,
    ne: Vec<u64>,
    type_id: u32,
    offset: u64,
}

/// A GGUF file built by hand, so tests can break any field of it.
#[derive(Clone)]
struct Builder {
    version: u32,
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Info>,
    /// The alignment used to lay out the data (set the key separately).
    alignment: u64,
    data: Vec<u8>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            version: 3,
            tensor_count: None,
            kv_count: None,
            kvs: Vec::new(),
            infos: Vec::new(),
            alignment: 32,
            data: Vec::new(),
        }
    }

    fn kv(mut self, bytes: Vec<u8>) -> Builder {
        self.kvs.push(bytes);
        self
    }

    fn alignment(mut self, a: u32) -> Builder {
        self.alignment = a.into();
        self.kv(kv("general.alignment", T_U32, &a.to_le_bytes()))
    }

    /// Adds a tensor of GGML type `ty` with GGUF dims `ne` (innermost first)
    /// and `bytes`, placed at the next aligned offset.
    fn tensor(mut self, name: &str, ty: GgmlType, ne: &[u64], bytes: &[u8]) -> Builder {
        let offset = (self.data.len() as u64).next_multiple_of(self.alignment);
        self.data.resize(offset as usize, 0);
        self.data.extend_from_slice(bytes);
        self.infos.push(Info {
            name: name.as_bytes().to_vec(),
            ne: ne.to_vec(),
            type_id: ty.id(),
            offset,
        });
        self
    }

    /// Adds a tensor info with no bytes behind it.
    fn info(mut self, info: Info) -> Builder {
        self.infos.push(info);
        self
    }

    /// The bytes up to the end of the tensor infos.
    fn metadata(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        let tensors = self.tensor_count.unwrap_or(self.infos.len() as u64);
        b.extend_from_slice(&tensors.to_le_bytes());
        let kvs = self.kv_count.unwrap_or(self.kvs.len() as u64);
        b.extend_from_slice(&kvs.to_le_bytes());
        for kv in &self.kvs {
            b.extend_from_slice(kv);
        }
        for t in &self.infos {
            b.extend_from_slice(&gstr(&t.name));
            b.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.type_id.to_le_bytes());
            b.extend_from_slice(&t.offset.to_le_bytes());
        }
        b
    }

    fn build(&self) -> Vec<u8> {
        let mut b = self.metadata();
        b.resize(
            (b.len() as u64).next_multiple_of(self.alignment) as usize,
            0,
        );
        b.extend_from_slice(&self.data);
        b
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small valid file: metadata of every type, five tensors in three layers
/// and two layer-less tensors.
fn sample() -> Builder {
    let nested = {
        let inner1 = arr(T_U16, 2, &[1, 0, 2, 0]);
        let inner2 = arr(T_STRING, 1, &gstr(b"x"));
        let mut items = inner1;
        items.extend_from_slice(&inner2);
        arr(T_ARRAY, 2, &items)
    };
    Builder::new()
        .kv(kv("general.architecture", T_STRING, &gstr(b"llama")))
        .kv(kv("t.u8", T_U8, &[7]))
        .kv(kv("t.i8", T_I8, &(-7i8).to_le_bytes()))
        .kv(kv("t.u16", T_U16, &700u16.to_le_bytes()))
        .kv(kv("t.i16", T_I16, &(-700i16).to_le_bytes()))
        .kv(kv("t.u32", T_U32, &70_000u32.to_le_bytes()))
        .kv(kv("t.i32", T_I32, &(-70_000i32).to_le_bytes()))
        .kv(kv("t.f32", T_F32, &0.25f32.to_le_bytes()))
        .kv(kv("t.bool", T_BOOL, &[1]))
        .kv(kv("t.u64", T_U64, &u64::MAX.to_le_bytes()))
        .kv(kv("t.i64", T_I64, &i64::MIN.to_le_bytes()))
        .kv(kv("t.f64", T_F64, &(-1.5f64).to_le_bytes()))
        .kv(kv("t.raw", T_STRING, &gstr(&[0xff, b'a'])))
        .kv(kv("t.empty", T_ARRAY, &arr(T_I64, 0, &[])))
        .kv(kv("t.bools", T_ARRAY, &arr(T_BOOL, 3, &[1, 0, 1])))
        .kv(kv("t.nested", T_ARRAY, &nested))
        .tensor(
            "token_embd.weight",
            GgmlType::F32,
            &[4, 2],
            &f32_bytes(&[0., 1., 2., 3., 4., 5., 6., 7.]),
        )
        .tensor("blk.0.attn_q.weight", GgmlType::Q4_0, &[32, 2], &[0xa0; 36])
        .tensor(
            "blk.0.attn_norm.weight",
            GgmlType::F32,
            &[4],
            &f32_bytes(&[1.; 4]),
        )
        .tensor("blk.1.attn_q.weight", GgmlType::F16, &[8], &[0x3c; 16])
        .tensor("output_norm.weight", GgmlType::BF16, &[2], &[1, 2, 3, 4])
        .tensor("output.weight", GgmlType::Q8_0, &[32, 1], &[0x11; 34])
}

/// Parses a whole file.
fn parsed(bytes: &[u8]) -> Result<GgufHeader, FormatError> {
    parse(bytes, bytes.len() as u64)
}

fn err(bytes: &[u8]) -> FormatError {
    parsed(bytes).expect_err("the file should be refused")
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Writes `bytes` to a file and reads its index the way `MappedModel::open`
/// does; returns the format error, checking that it names the file.
fn index_err(bytes: &[u8]) -> FormatError {
    let dir = scratch();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    match hyperion::format::read_index(&path) {
        Err(Error::Format { path: p, source }) => {
            assert_eq!(&*p, path.as_path());
            let shown = Error::Format {
                path: p,
                source: source.clone(),
            }
            .to_string();
            assert!(shown.starts_with(&path.display().to_string()), "{shown}");
            source
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn assert_message(e: &FormatError, needles: &[&str]) {
    let shown = e.to_string();
    for n in needles {
        assert!(shown.contains(n), "{shown:?} lacks {n:?}");
    }
}

// ---------------------------------------------------------------------------
// Hand-built files: what is accepted
// ---------------------------------------------------------------------------

#[test]
fn sample_parses_with_every_value_type() {
    let b = sample().build();
    let h = parsed(&b).unwrap();
    assert_eq!((h.version, h.alignment), (3, 32));
    assert_eq!(h.data_start % 32, 0);
    assert_eq!(
        h.get("general.architecture").and_then(GgufValue::as_str),
        Some("llama")
    );
    assert_eq!(h.get("t.u8"), Some(&GgufValue::U8(7)));
    assert_eq!(h.get("t.i8"), Some(&GgufValue::I8(-7)));
    assert_eq!(h.get("t.u16"), Some(&GgufValue::U16(700)));
    assert_eq!(h.get("t.i16"), Some(&GgufValue::I16(-700)));
    assert_eq!(h.get("t.u32"), Some(&GgufValue::U32(70_000)));
    assert_eq!(h.get("t.i32"), Some(&GgufValue::I32(-70_000)));
    assert_eq!(h.get("t.f32"), Some(&GgufValue::F32(0.25)));
    assert_eq!(h.get("t.bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(h.get("t.u64"), Some(&GgufValue::U64(u64::MAX)));
    assert_eq!(h.get("t.i64"), Some(&GgufValue::I64(i64::MIN)));
    assert_eq!(h.get("t.f64"), Some(&GgufValue::F64(-1.5)));
    let raw = h.get("t.raw").unwrap();
    assert_eq!(raw, &GgufValue::String(GgufString::from(vec![0xff, b'a'])));
    assert_eq!(raw.as_str(), None, "not UTF-8, kept as bytes");
    assert_eq!(
        h.get("t.empty"),
        Some(&GgufValue::Array(GgufArray::I64(Box::new([]))))
    );
    assert_eq!(
        h.get("t.bools"),
        Some(&GgufValue::Array(GgufArray::Bool(Box::new([
            true, false, true
        ]))))
    );
    let nested = h.get("t.nested").and_then(GgufValue::as_array).unwrap();
    assert_eq!(
        nested,
        &GgufArray::Array(Box::new([
            GgufArray::U16(Box::new([1, 2])),
            GgufArray::String(["x"].into_iter().collect()),
        ]))
    );
    assert_eq!(h.get("t.nested").unwrap().to_string(), r#"[[1, 2], ["x"]]"#);

    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.0.attn_norm.weight",
            "blk.1.attn_q.weight",
            "output_norm.weight",
            "output.weight"
        ]
    );
    let q = &h.tensors[1];
    assert_eq!(q.ggml_type, GgmlType::Q4_0);
    assert_eq!(q.dtype(), DType::Ggml(GgmlType::Q4_0));
    assert_eq!(q.shape, [2, 32], "ne reversed: outermost first");
    assert_eq!(q.len, 36);
    assert_eq!(h.tensors[0].dtype(), DType::F32);
    assert_eq!(h.tensors[4].dtype(), DType::BF16);
    for t in &h.tensors {
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.dtype().byte_len(&t.shape), Some(t.len));
    }
}

#[test]
fn a_version_2_file_reads_like_version_3() {
    let mut v2 = sample();
    v2.version = 2;
    let h2 = parsed(&v2.build()).unwrap();
    let h3 = parsed(&sample().build()).unwrap();
    assert_eq!(h2.version, 2);
    assert_eq!(h2.metadata, h3.metadata);
    assert_eq!(h2.tensors, h3.tensors);
}

#[test]
fn the_index_groups_tensors_into_layers_by_block() {
    let dir = scratch();
    let path = dir.path().join("sample.gguf");
    std::fs::write(&path, sample().build()).unwrap();
    let index = hyperion::format::read_index(&path).unwrap();
    assert_eq!(index.format, FileFormat::Gguf);
    assert_eq!(index.files.len(), 1);
    let layers: Vec<(&str, Vec<&str>)> = index
        .layers
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.tensors.iter().map(|t| t.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        layers,
        [
            ("token_embd.weight", vec!["token_embd.weight"]),
            (
                "blk.0",
                vec!["blk.0.attn_q.weight", "blk.0.attn_norm.weight"]
            ),
            ("blk.1", vec!["blk.1.attn_q.weight"]),
            ("output_norm.weight", vec!["output_norm.weight"]),
            ("output.weight", vec!["output.weight"]),
        ]
    );
    // blk.0: a 36-byte Q4_0 tensor, padding to 64, a 16-byte F32 tensor: one range.
    let blk0 = &index.layers[1];
    assert_eq!(blk0.ranges.len(), 1);
    assert_eq!(blk0.size, 64 + 16);
    assert_eq!((blk0.tensors[1].offset, blk0.tensors[1].len), (64, 16));
    assert_eq!(blk0.checksum, None);
}

#[test]
fn alignment_is_honoured_and_defaults_to_32() {
    for a in [1u32, 2, 8, 64, 4096, 1 << 16] {
        let b = Builder::new()
            .alignment(a)
            .tensor("a", GgmlType::I8, &[3], &[1, 2, 3])
            .tensor("b", GgmlType::I8, &[5], &[4; 5])
            .build();
        let h = parsed(&b).unwrap();
        assert_eq!(h.alignment, u64::from(a));
        assert_eq!(h.data_start % u64::from(a), 0);
        assert_eq!(
            h.tensors[1].offset - h.data_start,
            3u64.next_multiple_of(a.into())
        );
        assert_eq!(&b[h.tensors[1].offset as usize..][..5], &[4; 5]);
    }
}

#[test]
fn zero_sized_tensors_overlap_nothing() {
    let b = Builder::new()
        .tensor("a", GgmlType::F32, &[0, 4], &[])
        .tensor("b", GgmlType::F32, &[4, 0], &[])
        .tensor("c", GgmlType::F32, &[1], &[0; 4])
        .build();
    let h = parsed(&b).unwrap();
    assert_eq!(h.tensors[0].shape, [4, 0]);
    assert_eq!(h.tensors[0].len, 0);
    assert_eq!(h.tensors[0].offset, h.tensors[2].offset);
}

#[test]
fn a_scalar_tensor_has_no_dimensions() {
    let b = Builder::new()
        .tensor("s", GgmlType::F32, &[], &1f32.to_le_bytes())
        .build();
    let h = parsed(&b).unwrap();
    assert_eq!((h.tensors[0].shape.len(), h.tensors[0].len), (0, 4));
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    let mut v = arr(T_U8, 1, &[9]);
    for _ in 1..MAX_ARRAY_DEPTH {
        v = arr(T_ARRAY, 1, &v);
    }
    let b = Builder::new().kv(kv("deep", T_ARRAY, &v)).build();
    let h = parsed(&b).unwrap();
    let mut a = h.get("deep").and_then(GgufValue::as_array).unwrap();
    let mut depth = 1;
    while let GgufArray::Array(inner) = a {
        a = &inner[0];
        depth += 1;
    }
    assert_eq!((depth, a), (MAX_ARRAY_DEPTH, &GgufArray::U8(Box::new([9]))));
}

#[test]
fn a_file_without_tensors_has_metadata_but_no_layers() {
    let b = Builder::new()
        .kv(kv("tokenizer.ggml.model", T_STRING, &gstr(b"gpt2")))
        .build();
    assert_eq!(parsed(&b).unwrap().metadata.len(), 1);
    let e = index_err(&b);
    assert_message(&e, &["no tensors"]);
}

#[test]
fn read_metadata_returns_every_key_in_order() {
    let dir = scratch();
    let path = dir.path().join("sample.gguf");
    std::fs::write(&path, sample().build()).unwrap();
    let md = gguf::read_metadata(&path).unwrap();
    assert_eq!(md.len(), 16);
    assert_eq!(md[0].0, "general.architecture");
    assert_eq!(md[15].0, "t.nested");
    assert_eq!(md, gguf::read_header(&path).unwrap().metadata);
}

#[test]
fn metadata_larger_than_the_first_read_is_read_in_full() {
    // 300 KiB of metadata: the reader's first 64 KiB chunk is not enough.
    let big = vec![b'z'; 300 << 10];
    let b = Builder::new()
        .kv(kv("big", T_STRING, &gstr(&big)))
        .kv(kv("many", T_ARRAY, &arr(T_U32, 40_000, &vec![1; 160_000])))
        .tensor("w", GgmlType::F32, &[2], &[0; 8])
        .build();
    let dir = scratch();
    let path = dir.path().join("big.gguf");
    std::fs::write(&path, &b).unwrap();
    let h = gguf::read_header(&path).unwrap();
    assert_eq!(h, parsed(&b).unwrap());
    assert_eq!(
        h.get("big").map(|v| v.to_string().len()),
        Some(2 + (300 << 10))
    );
}

// ---------------------------------------------------------------------------
// Attacks: one named test per class
// ---------------------------------------------------------------------------

#[test]
fn attack_bad_magic() {
    let mut b = sample().build();
    b[3] = b'G';
    assert_eq!(
        err(&b),
        FormatError::BadMagic {
            found: b"GGUG".to_vec()
        }
    );
    assert!(matches!(err(b"GX"), FormatError::BadMagic { .. }));
    // A prefix of the magic is a truncated file, not a foreign one.
    assert!(matches!(err(b"GG"), FormatError::Truncated { .. }));
    assert!(matches!(
        err(b"GGUF"),
        FormatError::Truncated { needed: 8, .. }
    ));
}

#[test]
fn attack_version_1_and_unknown_versions() {
    for v in [0u32, 1, 4, 0xFFFF, u32::MAX] {
        let mut b = sample();
        b.version = v;
        let e = err(&b.build());
        assert_eq!(
            e,
            FormatError::UnsupportedVersion {
                format: "gguf",
                version: v
            }
        );
    }
    let mut b = sample();
    b.version = 1;
    assert_message(&index_err(&b.build()), &["unsupported gguf version 1"]);
}

#[test]
fn attack_big_endian_file() {
    // A big-endian v3 file: every number byte-swapped, the magic as bytes.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    let e = err(&b);
    assert_message(&e, &["big-endian", "version 3", "little-endian"]);
    let mut b2 = b.clone();
    b2[4..8].copy_from_slice(&2u32.to_be_bytes());
    assert_message(&err(&b2), &["big-endian", "version 2"]);
}

#[test]
fn attack_truncated_at_every_byte() {
    let b = sample().build();
    let h = parsed(&b).unwrap();
    for len in 0..b.len() {
        let e = parse(&b[..len], len as u64).expect_err("a cut file is refused");
        if len < h.metadata_len as usize {
            assert!(
                matches!(e, FormatError::Truncated { available, .. } if available == len as u64),
                "cut at {len}: {e}"
            );
        } else {
            // The metadata is whole; a tensor runs past the end.
            assert!(
                matches!(e, FormatError::OutOfBounds { ref what, .. } if what.starts_with("tensor")),
                "cut at {len}: {e}"
            );
        }
    }
    // And through the file reader, which names the file and the tensor.
    let e = index_err(&b[..b.len() - 1]);
    assert_message(
        &e,
        &["tensor \"output.weight\"", "outside the data section"],
    );
    // A file too short for the records its counts announce.
    assert_message(
        &index_err(&b[..100]),
        &["16 metadata pairs and 6 tensor infos", "the file has 100"],
    );
}

#[test]
fn attack_truncation_names_the_item() {
    let b = sample().build();
    let full = b.len() as u64;
    // Prefixes of the file: what the reader holds before it reads more.
    let cut = |len: usize| parse(&b[..len], full).unwrap_err();
    let key_at = 24 + 8 + "general.architecture".len() + 4 + 4;
    for (len, item) in [
        (10, "the GGUF header"),
        (30, "metadata key #0"),
        (key_at, "metadata key \"general.architecture\""),
        (sample().metadata().len() - 3, "tensor \"output.weight\""),
    ] {
        assert_eq!(
            cut(len),
            FormatError::Truncated {
                what: item.into(),
                needed: match len {
                    10 => 16,
                    30 => 32,
                    _ if len == key_at => key_at as u64 + 4,
                    _ => len as u64 + 3,
                },
                available: len as u64
            },
            "prefix of {len} bytes"
        );
    }
    // A file that really ends inside the last tensor info.
    let m = sample().metadata();
    let e = err(&m[..m.len() - 3]);
    assert_message(&e, &["tensor \"output.weight\"", "truncated"]);
}

#[test]
fn attack_string_lengths() {
    for len in [u64::MAX, 1 << 62, 1 << 40, 1000] {
        let mut value = len.to_le_bytes().to_vec();
        value.extend_from_slice(b"short");
        let b = Builder::new().kv(kv("s", T_STRING, &value)).build();
        let e = err(&b);
        assert!(
            matches!(e, FormatError::Truncated { ref what, .. } if what == "metadata key \"s\""),
            "{len}: {e}"
        );
    }
    // A key length beyond the file.
    let mut b = Builder::new();
    b.kv_count = Some(1);
    let mut b = b.metadata();
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    assert_eq!(
        err(&b),
        FormatError::LimitExceeded {
            what: "metadata key #0: name length".into(),
            value: u64::MAX,
            limit: 65_535
        }
    );
}

#[test]
fn attack_key_and_name_limits() {
    let long_key = "k".repeat(65_536);
    let b = Builder::new().kv(kv(&long_key, T_U8, &[1])).build();
    assert_eq!(
        err(&b),
        FormatError::LimitExceeded {
            what: "metadata key #0: name length".into(),
            value: 65_536,
            limit: 65_535
        }
    );
    let ok_key = "k".repeat(65_535);
    assert!(parsed(&Builder::new().kv(kv(&ok_key, T_U8, &[1])).build()).is_ok());

    let b = Builder::new().kv(kv("", T_U8, &[1])).build();
    assert_message(&err(&b), &["metadata key #0", "empty"]);
    let mut bad_utf8 = gstr(&[b'a', 0xc3]);
    bad_utf8.extend_from_slice(&T_U8.to_le_bytes());
    bad_utf8.push(1);
    assert_message(
        &err(&Builder::new().kv(bad_utf8).build()),
        &["metadata key #0", "UTF-8"],
    );

    let name = "n".repeat(65);
    let b = Builder::new()
        .tensor(&name, GgmlType::I8, &[1], &[0])
        .build();
    assert_eq!(
        err(&b),
        FormatError::LimitExceeded {
            what: "tensor #0: name length".into(),
            value: 65,
            limit: 64
        }
    );
    let name = "n".repeat(64);
    assert!(parsed(
        &Builder::new()
            .tensor(&name, GgmlType::I8, &[1], &[0])
            .build()
    )
    .is_ok());
    let b = Builder::new().tensor("", GgmlType::I8, &[1], &[0]).build();
    assert_message(&err(&b), &["tensor #0", "empty"]);
    let mut b = Builder::new().tensor("x", GgmlType::I8, &[1], &[0]);
    b.infos[0].name = vec![0xff];
    assert_message(&err(&b.build()), &["tensor #0", "UTF-8"]);
}

#[test]
fn attack_array_counts() {
    // Claimed counts far beyond the file: refused before anything is allocated.
    for (elem, count) in [
        (T_U8, u64::MAX),
        (T_U64, 1u64 << 61),
        (T_BOOL, 1 << 40),
        (T_STRING, 1 << 40),
        (T_ARRAY, 1 << 40),
        (T_F64, 3),
    ] {
        let b = Builder::new()
            .kv(kv("a", T_ARRAY, &arr(elem, count, &[0; 16])))
            .metadata();
        let e = err(&b);
        assert!(
            matches!(e, FormatError::Truncated { ref what, .. } if what == "metadata key \"a\""),
            "{elem} × {count}: {e}"
        );
    }
    // A claim that fits the file but not the metadata limit.
    let b = Builder::new()
        .kv(kv("a", T_ARRAY, &arr(T_U64, 40 << 20, &[])))
        .build();
    let e = parse(&b, 1 << 40).unwrap_err();
    assert!(
        matches!(e, FormatError::LimitExceeded { limit, .. } if limit == MAX_METADATA_LEN),
        "{e}"
    );
}

#[test]
fn attack_counts_over_the_limits() {
    for (tensors, kvs, what, value, limit) in [
        (u64::MAX, 0, "tensor_count", u64::MAX, MAX_TENSOR_COUNT),
        (
            MAX_TENSOR_COUNT + 1,
            0,
            "tensor_count",
            MAX_TENSOR_COUNT + 1,
            MAX_TENSOR_COUNT,
        ),
        (0, u64::MAX, "kv_count", u64::MAX, MAX_KV_COUNT),
        (1, 1 << 40, "kv_count", 1 << 40, MAX_KV_COUNT),
    ] {
        let mut b = Builder::new();
        b.tensor_count = Some(tensors);
        b.kv_count = Some(kvs);
        // Refused whatever the file's length.
        for file_len in [b.build().len() as u64, u64::MAX] {
            assert_eq!(
                parse(&b.build(), file_len).unwrap_err(),
                FormatError::LimitExceeded {
                    what: format!("the GGUF header's {what}"),
                    value,
                    limit
                }
            );
        }
    }
}

#[test]
fn attack_counts_beyond_the_file() {
    // Counts whose records cannot fit the file: refused before any is read.
    for (tensors, kvs) in [(MAX_TENSOR_COUNT, 0), (0, MAX_KV_COUNT), (1, 1)] {
        let mut b = Builder::new();
        b.tensor_count = Some(tensors);
        b.kv_count = Some(kvs);
        let b = b.metadata();
        let e = err(&b);
        assert_eq!(
            e,
            FormatError::Truncated {
                what: format!(
                    "the GGUF header's {kvs} metadata pairs and {tensors} tensor infos \
                     (at least 14 and 25 bytes each)"
                ),
                needed: 24 + 14 * kvs + 25 * tensors,
                available: 24
            }
        );
    }
    // A plausible count that the bytes do not back up.
    let mut b =
        Builder::new()
            .kv(kv("aaaaaaaaaa", T_U64, &[0; 8]))
            .kv(kv("bbbbbbbbbb", T_U64, &[0; 8]));
    b.kv_count = Some(3);
    assert_message(&err(&b.metadata()), &["truncated", "metadata key #2"]);
}

#[test]
fn attack_metadata_over_the_limit() {
    // A string longer than the metadata limit, in a file long enough to hold it.
    let builder = Builder::new().kv(kv("s", T_STRING, &(MAX_METADATA_LEN).to_le_bytes()));
    let b = builder.build();
    let e = parse(&b, 1 << 40).unwrap_err();
    assert_eq!(
        e,
        FormatError::LimitExceeded {
            what: "the metadata section (through metadata key \"s\")".into(),
            value: builder.metadata().len() as u64 + MAX_METADATA_LEN,
            limit: MAX_METADATA_LEN
        }
    );
    // Through the file reader: a sparse 1 GiB file, read no further than needed.
    let dir = scratch();
    let path = dir.path().join("sparse.gguf");
    std::fs::write(&path, &b).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = hyperion::format::read_index(&path).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Format {
                source: FormatError::LimitExceeded { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn attack_nesting_depth() {
    // One level deeper than allowed.
    let mut v = arr(T_U8, 0, &[]);
    for _ in 0..MAX_ARRAY_DEPTH {
        v = arr(T_ARRAY, 1, &v);
    }
    let e = err(&Builder::new().kv(kv("deep", T_ARRAY, &v)).build());
    assert_eq!(
        e,
        FormatError::LimitExceeded {
            what: "metadata key \"deep\": array nesting depth".into(),
            value: u64::from(MAX_ARRAY_DEPTH) + 1,
            limit: MAX_ARRAY_DEPTH.into()
        }
    );
    // A million levels: refused at the limit, without a deep recursion.
    let mut chain = Vec::new();
    for _ in 0..1_000_000 {
        chain.extend_from_slice(&arr(T_ARRAY, 1, &[]));
    }
    let e = err(&Builder::new().kv(kv("chain", T_ARRAY, &chain)).build());
    assert!(matches!(e, FormatError::LimitExceeded { .. }), "{e}");
}

#[test]
fn attack_many_nested_arrays() {
    // Empty arrays inside an array: 12 bytes in the file, 40 in memory each.
    // The file may hold MAX_NESTED_ARRAYS of them in all, and no more.
    let empties = |n: u64| {
        let one = arr(T_U8, 0, &[]);
        arr(T_ARRAY, n, &one.repeat(n as usize))
    };
    let half = MAX_NESTED_ARRAYS / 2;
    let ok = Builder::new()
        .kv(kv("a", T_ARRAY, &empties(half)))
        .kv(kv("b", T_ARRAY, &empties(half)))
        .build();
    assert!(parsed(&ok).is_ok());
    let over = Builder::new()
        .kv(kv("a", T_ARRAY, &empties(half)))
        .kv(kv("b", T_ARRAY, &empties(half + 1)))
        .build();
    assert_eq!(
        err(&over),
        FormatError::LimitExceeded {
            what: "metadata key \"b\": arrays nested in arrays (in the whole file)".into(),
            value: MAX_NESTED_ARRAYS + 1,
            limit: MAX_NESTED_ARRAYS
        }
    );
}

#[test]
fn attack_unknown_value_types() {
    for id in [13u32, 255, u32::MAX] {
        let e = err(&Builder::new().kv(kv("v", id, &[0; 8])).build());
        assert_eq!(
            e,
            FormatError::Invalid(format!("metadata key \"v\": unknown value type {id}"))
        );
        let e = err(&Builder::new()
            .kv(kv("a", T_ARRAY, &arr(id, 1, &[0; 8])))
            .build());
        assert_message(&e, &["metadata key \"a\"", "unknown array element type"]);
    }
}

#[test]
fn attack_invalid_bool() {
    let e = err(&Builder::new().kv(kv("b", T_BOOL, &[2])).build());
    assert_message(&e, &["metadata key \"b\"", "0x02", "0 or 1"]);
    let e = err(&Builder::new()
        .kv(kv("bs", T_ARRAY, &arr(T_BOOL, 2, &[1, 0xff])))
        .build());
    assert_message(&e, &["metadata key \"bs\"", "0xff"]);
}

#[test]
fn attack_duplicate_keys() {
    let b = Builder::new()
        .kv(kv("general.name", T_STRING, &gstr(b"a")))
        .kv(kv("general.name", T_U8, &[1]))
        .build();
    assert_eq!(
        err(&b),
        FormatError::Invalid(
            "metadata key \"general.name\" appears twice; keys must be unique".into()
        )
    );
}

#[test]
fn attack_duplicate_tensor_names() {
    let b = Builder::new()
        .tensor("blk.0.w", GgmlType::I8, &[1], &[0])
        .tensor("blk.0.w", GgmlType::I8, &[1], &[0])
        .build();
    assert_eq!(
        err(&b),
        FormatError::DuplicateName {
            name: "blk.0.w".into()
        }
    );
}

#[test]
fn attack_bad_alignment() {
    for a in [0u32, 3, 48, 4097, u32::MAX] {
        let b = Builder::new()
            .kv(kv("general.alignment", T_U32, &a.to_le_bytes()))
            .build();
        assert_message(
            &err(&b),
            &["\"general.alignment\"", &a.to_string(), "power of two"],
        );
    }
    for (ty, bytes) in [
        (T_U64, 32u64.to_le_bytes().to_vec()),
        (T_I32, 32i32.to_le_bytes().to_vec()),
        (T_STRING, gstr(b"32")),
    ] {
        let b = Builder::new()
            .kv(kv("general.alignment", ty, &bytes))
            .build();
        assert_message(&err(&b), &["\"general.alignment\"", "UINT32"]);
    }
    // The largest power of two a u32 holds: valid, and the tensor lies past the file.
    let b = Builder::new()
        .kv(kv("general.alignment", T_U32, &(1u32 << 31).to_le_bytes()))
        .info(Info {
            name: b"w".to_vec(),
            ne: vec![1],
            type_id: 0,
            offset: 0,
        })
        .metadata();
    let e = parse(&b, b.len() as u64 + 64).unwrap_err();
    assert!(
        matches!(e, FormatError::OutOfBounds { start, .. } if start == 1 << 31),
        "{e}"
    );
}

#[test]
fn attack_too_many_dimensions() {
    for n in [5usize, 64] {
        let b = Builder::new()
            .tensor("w", GgmlType::I8, &vec![1; n], &[0])
            .build();
        assert_eq!(
            err(&b),
            FormatError::LimitExceeded {
                what: "tensor \"w\": n_dims".into(),
                value: n as u64,
                limit: 4
            }
        );
    }
    // n_dims = u32::MAX: refused before any dimension is read.
    let mut b = Builder::new()
        .tensor("w", GgmlType::I8, &[1], &[0])
        .metadata();
    let at = b.len() - 8 - 4 - 8 - 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        matches!(err(&b), FormatError::LimitExceeded { value, .. } if value == u32::MAX as u64)
    );
}

#[test]
fn attack_dimension_overflow() {
    let info = |ne: Vec<u64>, ty: GgmlType| Info {
        name: b"w".to_vec(),
        ne,
        type_id: ty.id(),
        offset: 0,
    };
    // A dimension ggml would read as negative.
    let b = Builder::new()
        .info(info(vec![1 << 63], GgmlType::I8))
        .build();
    assert_message(&err(&b), &["tensor \"w\": ne[0]"]);
    // Element counts that overflow.
    for ne in [
        vec![1 << 32, 1 << 32],
        vec![1 << 62, 2],
        vec![u32::MAX as u64; 3],
    ] {
        let b = Builder::new().info(info(ne.clone(), GgmlType::I8)).build();
        assert!(
            matches!(err(&b), FormatError::Overflow { ref what } if what.contains("tensor \"w\"")),
            "{ne:?}"
        );
    }
    // Elements fit, bytes do not.
    let b = Builder::new()
        .info(info(vec![1 << 62], GgmlType::F64))
        .build();
    assert_message(&err(&b), &["tensor \"w\"", "overflows"]);
}

#[test]
fn attack_unknown_tensor_types() {
    // Retired ids (4, 5, 31–33, 36–38), ids past the table, and u32::MAX.
    for id in [4u32, 5, 31, 33, 36, 38, 43, 1000, u32::MAX] {
        let b = Builder::new()
            .info(Info {
                name: b"blk.0.w".to_vec(),
                ne: vec![32],
                type_id: id,
                offset: 0,
            })
            .build();
        assert_eq!(
            err(&b),
            FormatError::UnknownDType {
                what: "tensor \"blk.0.w\"".into(),
                code: id
            }
        );
    }
}

#[test]
fn attack_rows_not_whole_blocks() {
    let b = Builder::new()
        .tensor("q", GgmlType::Q4_K, &[128, 2], &[0; 144])
        .build();
    assert_message(&err(&b), &["tensor \"q\"", "Q4_K", "256", "ne[0]", "128"]);
}

#[test]
fn attack_misaligned_offset() {
    let mut b =
        Builder::new()
            .tensor("a", GgmlType::I8, &[1], &[0])
            .tensor("b", GgmlType::I8, &[1], &[0]);
    b.infos[1].offset = 16;
    assert_eq!(
        err(&b.build()),
        FormatError::Misaligned {
            what: "tensor \"b\": offset".into(),
            value: 16,
            alignment: 32
        }
    );
}

#[test]
fn attack_offsets_outside_the_file() {
    let mut b = Builder::new().tensor("a", GgmlType::F32, &[8], &[0; 32]);
    b.infos[0].offset = 1 << 20;
    assert!(matches!(
        err(&b.build()),
        FormatError::OutOfBounds { ref what, region: "the data section", .. } if what == "tensor \"a\""
    ));
    // Offsets whose sum with the data start (64 here) or the length overflows.
    for offset in [u64::MAX - 31, (u64::MAX - 64) & !31] {
        let mut b = Builder::new().tensor("a", GgmlType::F32, &[8], &[0; 32]);
        b.infos[0].offset = offset;
        let e = err(&b.build());
        assert!(
            matches!(e, FormatError::Overflow { ref what } if what.starts_with("tensor \"a\"")),
            "{e}"
        );
    }
}

#[test]
fn attack_overlapping_tensors() {
    // Same offset.
    let mut b = Builder::new()
        .tensor("a", GgmlType::F32, &[16], &[0; 64])
        .tensor("b", GgmlType::F32, &[8], &[0; 32]);
    b.infos[1].offset = 0;
    let e = err(&b.build());
    assert!(matches!(e, FormatError::Overlap { .. }), "{e}");
    assert_message(&e, &["tensor \"a\"", "tensor \"b\""]);
    // Partial overlap: b starts inside a.
    b.infos[1].offset = 32;
    assert!(matches!(err(&b.build()), FormatError::Overlap { .. }));
    // One tensor inside a much larger one further on in the table.
    let mut b = Builder::new()
        .tensor("big", GgmlType::I8, &[256], &[0; 256])
        .tensor("x", GgmlType::I8, &[1], &[0])
        .tensor("inside", GgmlType::I8, &[1], &[0]);
    b.infos[2].offset = 96;
    assert!(matches!(err(&b.build()), FormatError::Overlap { .. }));
    // Out of order but disjoint is fine.
    let mut b =
        Builder::new()
            .tensor("a", GgmlType::I8, &[1], &[0])
            .tensor("b", GgmlType::I8, &[1], &[0]);
    b.infos.swap(0, 1);
    assert!(parsed(&b.build()).is_ok());
}

#[test]
fn attacks_are_format_errors_through_open() {
    let mut dup = sample();
    dup.infos[2].name = b"blk.0.attn_q.weight".to_vec();
    let e = index_err(&dup.build());
    assert_message(&e, &["duplicate name \"blk.0.attn_q.weight\""]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = scratch();
    let path = dir.path().join("dup.gguf");
    std::fs::write(&path, dup.build()).unwrap();
    let e = rt
        .block_on(MappedModel::open(&path, config(Backend::Mmap, 1 << 20)))
        .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("dup.gguf") && shown.contains("blk.0.attn_q.weight"),
        "{shown}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any mutation of a valid file is parsed or refused, never a panic, and
    /// whatever is accepted is consistent.
    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut b = sample().build();
        for (at, byte) in edits {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if do_cut {
            b.truncate(cut.index(b.len()));
        }
        if let Ok(h) = parsed(&b) {
            check_consistent(&h, b.len() as u64);
        }
    }

    /// Random bytes after a valid prefix of the header.
    #[test]
    fn random_tails_never_panic(tail in prop::collection::vec(any::<u8>(), 0..512), keep in 0usize..200) {
        let mut b = sample().build();
        b.truncate(keep.min(b.len()));
        b.extend_from_slice(&tail);
        if let Ok(h) = parsed(&b) {
            check_consistent(&h, b.len() as u64);
        }
    }
}

fn check_consistent(h: &GgufHeader, file_len: u64) {
    assert!(h.alignment.is_power_of_two());
    assert!(h.data_start >= h.metadata_len && h.data_start % h.alignment == 0);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for t in &h.tensors {
        assert!(t.offset >= h.data_start && t.offset + t.len <= file_len);
        assert_eq!((t.offset - h.data_start) % h.alignment, 0);
        assert_eq!(t.dtype().byte_len(&t.shape), Some(t.len));
        if t.len > 0 {
            ranges.push((t.offset, t.offset + t.len));
        }
    }
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
}

// ---------------------------------------------------------------------------
// Files written by gguf-py, checked against gguf-py's reader
// ---------------------------------------------------------------------------

/// The reference files and gguf-py's manifest of them, made once per run;
/// `None`, with a SKIPPED message for each test that asks, when the Python
/// environment cannot be set up because the package registry is unreachable
/// (outside CI only: `common::python`).
fn reference() -> Option<&'static (PathBuf, Value)> {
    static REFERENCE: OnceLock<(PathBuf, Value)> = OnceLock::new();
    let python = common::python()?;
    Some(REFERENCE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gguf-reference");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(&python)
            .arg(root.join("tests/python/gguf_reference.py"))
            .arg(&dir)
            .output()
            .expect("run tests/python/gguf_reference.py");
        assert!(
            out.status.success(),
            "gguf_reference.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
        (dir, serde_json::from_slice(&manifest).unwrap())
    }))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value in the manifest's form: `{"type": NAME, "value": …}`.
fn canonical(v: &GgufValue) -> Value {
    let value = match v {
        GgufValue::Array(a) => canonical_array(a),
        other => bare_scalar(other),
    };
    json!({"type": v.value_type().name(), "value": value})
}

fn bare_scalar(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::F32(x) => json!(f64::from(*x)),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(s) => json!(to_hex(s.as_bytes())),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Array(a) => canonical_array(a),
        _ => unreachable!("a new value type"),
    }
}

/// The elements of an array as scalar values (nested arrays stay arrays).
fn elements(a: &GgufArray) -> Vec<GgufValue> {
    fn each<T: Clone>(v: &[T], f: impl Fn(T) -> GgufValue) -> Vec<GgufValue> {
        v.iter().cloned().map(f).collect()
    }
    match a {
        GgufArray::U8(v) => each(v, GgufValue::U8),
        GgufArray::I8(v) => each(v, GgufValue::I8),
        GgufArray::U16(v) => each(v, GgufValue::U16),
        GgufArray::I16(v) => each(v, GgufValue::I16),
        GgufArray::U32(v) => each(v, GgufValue::U32),
        GgufArray::I32(v) => each(v, GgufValue::I32),
        GgufArray::F32(v) => each(v, GgufValue::F32),
        GgufArray::Bool(v) => each(v, GgufValue::Bool),
        GgufArray::String(v) => v
            .iter()
            .map(|s| GgufValue::String(s.to_vec().into()))
            .collect(),
        GgufArray::Array(v) => each(v, GgufValue::Array),
        GgufArray::U64(v) => each(v, GgufValue::U64),
        GgufArray::I64(v) => each(v, GgufValue::I64),
        GgufArray::F64(v) => each(v, GgufValue::F64),
        _ => unreachable!("a new value type"),
    }
}

fn canonical_array(a: &GgufArray) -> Value {
    let items: Vec<Value> = elements(a).iter().map(bare_scalar).collect();
    json!({"elem": a.element_type().name(), "items": items})
}

/// GGUFReader's view of a field: its types (following first elements) and
/// its leaf values, flattened.
fn reader_view(v: &GgufValue) -> (Vec<u32>, Vec<Value>) {
    fn types(v: &GgufValue, out: &mut Vec<u32>) {
        out.push(v.value_type().id());
        if let GgufValue::Array(a) = v {
            if let Some(first) = elements(a).first() {
                types(first, out);
            }
        }
    }
    fn leaves(v: &GgufValue, out: &mut Vec<Value>) {
        match v {
            GgufValue::Array(a) => elements(a).iter().for_each(|e| leaves(e, out)),
            scalar => out.push(bare_scalar(scalar)),
        }
    }
    let (mut t, mut l) = (Vec::new(), Vec::new());
    types(v, &mut t);
    leaves(v, &mut l);
    (t, l)
}

/// GGML types ggml has that gguf-py 0.19 does not know yet.
const NEWER_THAN_GGUF_PY: &[GgmlType] = &[GgmlType::Q2_0];

/// Where gguf-py's table is known to be wrong: (type, gguf-py's block and
/// type size). gguf-py 0.19 gives Q8_1 40-byte blocks, but ggml's
/// `block_q8_1` is two halves and 32 quants, 36 bytes (`static_assert`ed in
/// ggml-common.h; gguf-py fixed in ggml-org/llama.cpp#29036).
const GGUF_PY_ERRATA: &[(GgmlType, (u64, u64))] = &[(GgmlType::Q8_1, (32, 40))];

#[test]
fn ggml_type_table_matches_gguf_py() {
    let Some((_, manifest)) = reference() else {
        return;
    };
    let sizes = manifest["quant_sizes"].as_object().unwrap();
    let mut known = Vec::new();
    for (name, row) in sizes {
        let id = row[0].as_u64().unwrap() as u32;
        let t = GgmlType::from_id(id)
            .unwrap_or_else(|| panic!("gguf-py's {name} (id {id}) is missing from src/ggml.rs"));
        assert_eq!(t.name(), name, "id {id}");
        let theirs = (row[1].as_u64().unwrap(), row[2].as_u64().unwrap());
        if !GGUF_PY_ERRATA.contains(&(t, theirs)) {
            assert_eq!(
                (t.block_size(), t.type_size()),
                theirs,
                "{name}: block size and type size"
            );
        }
        known.push(t);
    }
    for t in GgmlType::all() {
        assert!(
            known.contains(&t) || NEWER_THAN_GGUF_PY.contains(&t),
            "{t:?} is not a gguf-py type"
        );
    }
}

fn reference_files(manifest: &Value) -> Vec<(&String, &Value)> {
    let files: Vec<_> = manifest["files"].as_object().unwrap().iter().collect();
    assert_eq!(files.len(), 3);
    files
}

#[test]
fn metadata_matches_gguf_py() {
    let Some((dir, manifest)) = reference() else {
        return;
    };
    for (file, m) in reference_files(manifest) {
        let h = gguf::read_header(dir.join(file)).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.alignment, m["alignment"].as_u64().unwrap(), "{file}");
        assert_eq!(h.data_start, m["data_offset"].as_u64().unwrap(), "{file}");

        let keys: Vec<&str> = h.metadata.iter().map(|(k, _)| k.as_str()).collect();
        let expected: Vec<&str> = m["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, expected, "{file}: keys in file order");

        let written = m["written"].as_object().unwrap();
        assert_eq!(written.len(), h.metadata.len(), "{file}");
        for (key, value) in &h.metadata {
            assert_eq!(&canonical(value), &written[key], "{file}: {key} as written");
            let (types, leaves) = reader_view(value);
            let field = &m["fields"][key];
            assert_eq!(
                json!(types),
                field["types"],
                "{file}: {key}: GGUFReader's types"
            );
            assert_eq!(
                json!(leaves),
                field["leaves"],
                "{file}: {key}: GGUFReader's values"
            );
        }
        // Spot checks in plain Rust.
        assert_eq!(h.get("test.u64"), Some(&GgufValue::U64((1 << 63) + 5)));
        assert_eq!(
            h.get("test.string").and_then(GgufValue::as_str),
            Some("héllo wörld ✓")
        );
        let raw = h
            .get("test.array.raw_bytes")
            .and_then(GgufValue::as_array)
            .unwrap();
        assert_eq!(
            raw,
            &GgufArray::String([&[0xff, 0xfe][..], b"ok"].into_iter().collect())
        );
        assert_eq!(
            h.get("test.array.nested").map(|v| v.to_string()).as_deref(),
            Some("[[1, 2], [3]]")
        );
        assert_eq!(
            h.get("test.array.nested").map(|v| v.value_type()),
            Some(GgufType::Array)
        );
    }
}

#[test]
fn tensor_infos_match_gguf_py() {
    let Some((dir, manifest)) = reference() else {
        return;
    };
    for (file, m) in reference_files(manifest) {
        let h = gguf::read_header(dir.join(file)).unwrap();
        let tensors = m["tensors"].as_array().unwrap();
        assert_eq!(h.tensors.len(), tensors.len(), "{file}");
        for (t, r) in h.tensors.iter().zip(tensors) {
            let who = format!("{file}: {}", t.name);
            assert_eq!(t.name, r["name"].as_str().unwrap());
            assert_eq!(
                u64::from(t.ggml_type.id()),
                r["type"].as_u64().unwrap(),
                "{who}"
            );
            // GGUFReader's shape is ne order, innermost first; ours is reversed.
            let mut dims: Vec<u64> = r["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            dims.reverse();
            assert_eq!(t.shape, dims, "{who}");
            assert_eq!(t.len, r["n_bytes"].as_u64().unwrap(), "{who}");
            assert_eq!(t.offset, r["data_offset"].as_u64().unwrap(), "{who}");
            assert_eq!(t.dtype().byte_len(&t.shape), Some(t.len), "{who}");
        }
        // Every block-quantized type gguf-py knows (and sizes right) is among them.
        let skipped = |t: &GgmlType| {
            NEWER_THAN_GGUF_PY.contains(t) || GGUF_PY_ERRATA.iter().any(|(e, _)| e == t)
        };
        for t in GgmlType::all().filter(|t| t.is_quantized() && !skipped(t)) {
            assert!(
                h.tensors.iter().any(|x| x.ggml_type == t),
                "{file}: no {t:?} tensor"
            );
        }
    }
}

on_all_backends!(
    tensors_through_the_loader_match_gguf_py,
    a_layer_of_one_empty_tensor_reads_as_nothing,
);

async fn tensors_through_the_loader_match_gguf_py(backend: Backend) {
    let Some((dir, manifest)) = reference() else {
        return;
    };
    for (file, m) in reference_files(manifest) {
        let model = MappedModel::open(dir.join(file), config(backend, 64 << 20))
            .await
            .unwrap();
        assert_eq!(model.index().format, FileFormat::Gguf);
        let mut names = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for i in 0..model.layer_count() {
            names.push(model.index().layers[i].name.clone());
            let w = model.layer(i).await.unwrap();
            for t in w.tensors() {
                seen.insert(
                    t.name().to_string(),
                    (t.dtype(), t.shape().to_vec(), t.bytes().to_vec()),
                );
            }
            if let Some(norm) = w.tensor("blk.0.attn_norm.weight") {
                let floats = norm.as_f32().expect("an F32 tensor reads as f32");
                assert_eq!(floats.len(), 64);
                assert_eq!(floats[0].to_le_bytes(), norm.bytes()[..4]);
            }
        }
        let mut expected_layers = vec!["token_embd.weight", "blk.0", "blk.1", "blk.2", "blk.3"];
        if file.contains("4096") {
            expected_layers.push("blk.4");
        }
        expected_layers.extend(["output_norm.weight", "output.weight"]);
        assert_eq!(names, expected_layers, "{file}");

        let tensors = m["tensors"].as_array().unwrap();
        assert_eq!(seen.len(), tensors.len(), "{file}");
        for r in tensors {
            let name = r["name"].as_str().unwrap();
            let (dtype, shape, bytes) = &seen[name];
            let ggml = GgmlType::from_id(r["type"].as_u64().unwrap() as u32).unwrap();
            assert_eq!(*dtype, ggml.dtype(), "{file}: {name}");
            assert_eq!(GgmlType::of_dtype(*dtype), Some(ggml));
            let mut dims: Vec<u64> = r["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            dims.reverse();
            assert_eq!(shape, &dims, "{file}: {name}");
            assert!(
                bytes == &hex(r["hex"].as_str().unwrap()),
                "{file} ({backend:?}): {name}: bytes differ from GGUFReader's"
            );
        }
        model.close();
    }
}

#[test]
fn a_gguf_py_file_relabelled_version_2_reads_the_same() {
    let Some((dir, _)) = reference() else {
        return;
    };
    let path = dir.join("v3-align64.gguf");
    let mut b = std::fs::read(&path).unwrap();
    let v3 = parsed(&b).unwrap();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = parsed(&b).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!((v2.metadata, v2.tensors), (v3.metadata, v3.tensors));

    let scratch = scratch();
    let v2_path = scratch.path().join("v2.gguf");
    std::fs::write(&v2_path, &b).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let model = MappedModel::open(&v2_path, config(Backend::Mmap, 1 << 20))
            .await
            .unwrap();
        let w = model.layer(1).await.unwrap();
        assert_eq!(w.tensors().count(), 5);
    });
}

/// A layer whose only tensor is empty reads as zero bytes.
async fn a_layer_of_one_empty_tensor_reads_as_nothing(backend: Backend) {
    let b = Builder::new()
        .tensor("blk.0.empty", GgmlType::F32, &[0], &[])
        .tensor(
            "output.weight",
            GgmlType::F32,
            &[2],
            &f32_bytes(&[1.0, 2.0]),
        )
        .build();
    let dir = scratch();
    let path = dir.path().join("empty.gguf");
    std::fs::write(&path, &b).unwrap();
    let model = MappedModel::open(&path, config(backend, 1 << 20))
        .await
        .unwrap();
    assert_eq!(model.layer_count(), 2);
    let empty = model.layer(0).await.unwrap();
    assert_eq!(empty.bytes().len(), 0);
    assert_eq!(empty.tensor("blk.0.empty").unwrap().shape(), [0]);
    let out = model.layer(1).await.unwrap();
    assert_eq!(
        out.tensor("output.weight").unwrap().as_f32(),
        Some(&[1.0f32, 2.0][..])
    );
}
