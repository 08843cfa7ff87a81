//! The `.tmai` reader and writer: round trips, and one named test per way a
//! hostile or corrupt file can be wrong.
//!
//! The tests patch files through the byte layout of `docs/format.md`, so they
//! also check that the specification and the code agree.

use std::path::{Path, PathBuf};

use hyperion::format::read_index;
use hyperion::format::tmai::{
    parse_header, write_tmai, LayerDecl, TensorDecl, TmaiWriter, FIXED_HEADER_LEN, LAYER_ALIGN,
    LAYER_RECORD_LEN, MAGIC, MAX_DIMS, MAX_HEADER_LEN, TENSOR_ALIGN,
};
use hyperion::GgmlType;
use hyperion::{DType, Error, FormatError, ModelIndex};
use proptest::prelude::*;
use tempfile::TempDir;
use xxhash_rust::xxh3::xxh3_64;

// --- The layout of docs/format.md ---------------------------------------------

const VERSION_AT: usize = 8;
const FLAGS_AT: usize = 12;
const HEADER_LEN_AT: usize = 16;
const CHECKSUM_AT: usize = 24;
const LAYER_COUNT_AT: usize = 32;
const TENSOR_COUNT_AT: usize = 36;

const L_OFFSET: usize = 0;
const L_SIZE: usize = 8;
const L_CHECKSUM: usize = 16;
const L_INDEX: usize = 24;
const L_PRECISION: usize = 28;
const L_FIRST_TENSOR: usize = 32;
const L_TENSOR_COUNT: usize = 36;
const L_RESERVED: usize = 40;

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn header_len(file: &[u8]) -> usize {
    get_u64(file, HEADER_LEN_AT) as usize
}

/// Where field `field` of layer record `l` is.
fn layer_at(l: usize, field: usize) -> usize {
    FIXED_HEADER_LEN as usize + l * LAYER_RECORD_LEN as usize + field
}

/// Recomputes the header checksum: xxh3-64 (seed 0) of bytes 32..header_len
/// (or to the end of `file`, if `header_len` points past it).
fn reseal(file: &mut [u8]) {
    let end = header_len(file).clamp(32, file.len());
    let sum = xxh3_64(&file[32..end]);
    put_u64(file, CHECKSUM_AT, sum);
}

/// Where the fields of one tensor record are.
#[derive(Debug, Clone, Copy)]
struct TensorRec {
    start: usize,
    name_at: usize,
    name_len: usize,
    dtype_at: usize,
    ndim_at: usize,
    offset_at: usize,
    len_at: usize,
    end: usize,
}

impl TensorRec {
    fn dim_at(&self, d: usize) -> usize {
        self.ndim_at + 1 + 8 * d
    }
}

/// Walks the tensor table of a valid file.
fn tensor_recs(file: &[u8]) -> Vec<TensorRec> {
    let layers = get_u32(file, LAYER_COUNT_AT) as usize;
    let count = get_u32(file, TENSOR_COUNT_AT) as usize;
    let mut at = FIXED_HEADER_LEN as usize + layers * LAYER_RECORD_LEN as usize;
    (0..count)
        .map(|_| {
            let name_len = get_u16(file, at) as usize;
            let name_at = at + 2;
            let dtype_at = name_at + name_len;
            let ndim_at = dtype_at + 4;
            let ndim = file[ndim_at] as usize;
            let offset_at = ndim_at + 1 + 8 * ndim;
            let rec = TensorRec {
                start: at,
                name_at,
                name_len,
                dtype_at,
                ndim_at,
                offset_at,
                len_at: offset_at + 8,
                end: offset_at + 16,
            };
            at = rec.end;
            rec
        })
        .collect()
}

/// Replaces `remove` header bytes at `at` with `insert`, moving `header_len`
/// and taking or giving the difference from the padding before the data
/// region, so the layers stay where they are; then reseals.
fn splice_header(file: &mut [u8], at: usize, remove: usize, insert: &[u8]) {
    let old_len = header_len(file);
    let new_len = old_len - remove + insert.len();
    assert!(
        new_len <= LAYER_ALIGN as usize,
        "the splice must stay inside the first block"
    );
    let mut header = file[..old_len].to_vec();
    header.splice(at..at + remove, insert.iter().copied());
    header.resize(LAYER_ALIGN as usize, 0);
    file[..LAYER_ALIGN as usize].copy_from_slice(&header);
    put_u64(file, HEADER_LEN_AT, new_len as u64);
    reseal(file);
}

// --- Fixtures -------------------------------------------------------------------

/// Deterministic, non-zero-ish bytes.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8 + 1)
        .collect()
}

/// Two layers: `a` F32[3] and `b` F16[5, 2] (at 0 and 64, size 84), then `c` U8[10].
fn sample_layers() -> Vec<Vec<(TensorDecl, Vec<u8>)>> {
    let t = |name: &str, dtype, shape: &[u64], seed| {
        let decl = TensorDecl::new(name, dtype, shape.to_vec());
        let bytes = pattern(seed, decl.byte_len().unwrap());
        (decl, bytes)
    };
    vec![
        vec![t("a", DType::F32, &[3], 1), t("b", DType::F16, &[5, 2], 2)],
        vec![t("c", DType::U8, &[10], 3)],
    ]
}

struct Written {
    _dir: TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
}

fn write_model(layers: &[Vec<(TensorDecl, Vec<u8>)>]) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.tmai");
    let borrowed: Vec<Vec<(TensorDecl, &[u8])>> = layers
        .iter()
        .map(|l| l.iter().map(|(d, b)| (d.clone(), &b[..])).collect())
        .collect();
    write_tmai(&path, &borrowed).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    Written {
        _dir: dir,
        path,
        bytes,
    }
}

fn sample() -> Vec<u8> {
    write_model(&sample_layers()).bytes
}

/// Writes `bytes` to a file and reads its index.
fn read_bytes(bytes: &[u8]) -> (PathBuf, hyperion::Result<ModelIndex>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.tmai");
    std::fs::write(&path, bytes).unwrap();
    let result = read_index(&path);
    (path, result, dir)
}

/// The format error reading `bytes` gives; checks it is `Error::Format` for
/// the file, and that `parse_header` on the same bytes agrees.
fn format_err(bytes: &[u8]) -> FormatError {
    let (path, result, _dir) = read_bytes(bytes);
    let source = match result {
        Err(Error::Format { path: p, source }) => {
            assert_eq!(&*p, path.as_path());
            source
        }
        other => panic!("expected Error::Format, got {other:?}"),
    };
    if bytes.len() >= MAGIC.len() {
        assert_eq!(
            parse_header(bytes, bytes.len() as u64).err(),
            Some(source.clone())
        );
    }
    let message = Error::Format {
        path: path.as_path().into(),
        source: source.clone(),
    }
    .to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    source
}

/// `format_err` after `edit`, with the header resealed.
fn patched(edit: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let mut file = sample();
    edit(&mut file);
    reseal(&mut file);
    format_err(&file)
}

fn assert_invalid(e: FormatError, needles: &[&str]) {
    let text = e.to_string();
    assert!(matches!(e, FormatError::Invalid(_)), "not Invalid: {e:?}");
    for n in needles {
        assert!(text.contains(n), "{text:?} lacks {n:?}");
    }
}

// --- Round trips ------------------------------------------------------------------

#[test]
fn sample_has_the_documented_layout() {
    let file = sample();
    assert_eq!(&file[..8], &MAGIC);
    assert_eq!(get_u32(&file, VERSION_AT), 1);
    assert_eq!(get_u32(&file, FLAGS_AT), 0);
    assert_eq!(header_len(&file), 40 + 2 * 48 + 32 + 40 + 32);
    assert_eq!(file.len(), 3 * 4096);
    assert_eq!(get_u64(&file, layer_at(0, L_OFFSET)), 4096);
    assert_eq!(get_u64(&file, layer_at(0, L_SIZE)), 84);
    assert_eq!(get_u64(&file, layer_at(1, L_OFFSET)), 8192);
    assert_eq!(get_u32(&file, layer_at(1, L_PRECISION)), 8);
    assert_eq!(get_u32(&file, layer_at(1, L_FIRST_TENSOR)), 2);
    let b = tensor_recs(&file)[1];
    assert_eq!(&file[b.name_at..b.name_at + b.name_len], b"b");
    assert_eq!(get_u32(&file, b.dtype_at), DType::F16.code());
    assert_eq!(
        (get_u64(&file, b.offset_at), get_u64(&file, b.len_at)),
        (64, 20)
    );
    // The padding inside a layer is zero and covered by its checksum.
    assert!(file[4096 + 12..4096 + 64].iter().all(|&x| x == 0));
    assert_eq!(
        get_u64(&file, layer_at(0, L_CHECKSUM)),
        xxh3_64(&file[4096..4096 + 84])
    );
    assert!(file[header_len(&file)..4096].iter().all(|&x| x == 0));
    assert!(file[8192 + 10..].iter().all(|&x| x == 0));
}

#[test]
fn sample_reads_back() {
    let w = write_model(&sample_layers());
    let index = read_index(&w.path).unwrap();
    assert_eq!(index.format, hyperion::FileFormat::Tmai);
    assert_eq!(index.files.len(), 1);
    assert_eq!(&*index.files[0], w.path.as_path());
    let l0 = &index.layers[0];
    assert_eq!(
        (l0.name.as_str(), l0.offset(), l0.size, l0.precision),
        ("layer 0", 4096, 84, 16) // F16 covers 20 of the 32 tensor bytes
    );
    assert_eq!(l0.tensors[1].name, "b");
    assert_eq!((l0.tensors[1].offset, l0.tensors[1].len), (64, 20));
    assert_eq!(l0.checksum, Some(xxh3_64(&w.bytes[4096..4096 + 84])));
}

/// A generated tensor: dtype, shape, and the seed of its bytes.
type TensorGen = (DType, Vec<u64>, u64);
/// A generated layer: its tensors and maybe a precision.
type LayerGen = (Vec<TensorGen>, Option<u32>);

fn tensor_strategy() -> impl Strategy<Value = TensorGen> {
    let ggml = [GgmlType::Q4_0, GgmlType::Q6_K, GgmlType::F16].map(DType::Ggml);
    let dtypes: Vec<DType> = DType::ALL.into_iter().chain(ggml).collect();
    (
        prop::sample::select(dtypes),
        prop::collection::vec(0u64..6, 0..=3),
        any::<u64>(),
    )
        .prop_map(|(dtype, mut shape, seed)| {
            // Packed and block types need whole bytes and whole blocks.
            if let DType::Ggml(t) = dtype {
                match shape.last_mut() {
                    Some(inner) => *inner *= t.block_size(),
                    None => shape.push(t.block_size()),
                }
            }
            if dtype.byte_len(&shape).is_none() {
                shape.push(8);
            }
            (dtype, shape, seed)
        })
}

fn model_strategy() -> impl Strategy<Value = Vec<LayerGen>> {
    prop::collection::vec(
        (
            prop::collection::vec(tensor_strategy(), 0..4),
            prop::option::of(1u32..=64),
        ),
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any model written in pieces of any size reads back exactly, and the
    /// file obeys every layout rule; `write_tmai` writes the same bytes.
    #[test]
    fn round_trip(model in model_strategy(), chunks in prop::collection::vec(1usize..200, 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.tmai");
        let mut layers = Vec::new();
        let mut data: Vec<Vec<u8>> = Vec::new();
        for (l, (tensors, precision)) in model.iter().enumerate() {
            let decls: Vec<TensorDecl> = tensors
                .iter()
                .enumerate()
                .map(|(t, (dtype, shape, _))| TensorDecl::new(format!("l{l}.t{t}·ß"), *dtype, shape.clone()))
                .collect();
            for (d, (_, _, seed)) in decls.iter().zip(tensors) {
                data.push(pattern(*seed, d.byte_len().unwrap()));
            }
            layers.push(LayerDecl { tensors: decls, precision: *precision });
        }
        let all: Vec<u8> = data.concat();

        let mut writer = TmaiWriter::create(&path, layers.clone()).unwrap();
        let mut rest = &all[..];
        for &c in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(c.min(rest.len()));
            writer.write(now).unwrap();
            rest = later;
        }
        writer.finish().unwrap();

        let file = std::fs::read(&path).unwrap();
        prop_assert_eq!(file.len() as u64 % LAYER_ALIGN, 0);
        let index = read_index(&path).unwrap();
        prop_assert_eq!(index.layers.len(), layers.len());
        let mut next = data.iter();
        let mut prev_end = 0;
        for (l, (spec, decl)) in index.layers.iter().zip(&layers).enumerate() {
            prop_assert_eq!(&spec.name, &format!("layer {l}"));
            prop_assert_eq!(spec.offset() % LAYER_ALIGN, 0);
            prop_assert!(spec.offset() >= prev_end);
            prop_assert!(spec.offset() >= header_len(&file) as u64);
            prev_end = spec.offset() + spec.size;
            let bytes = &file[spec.offset() as usize..prev_end as usize];
            prop_assert_eq!(spec.checksum, Some(xxh3_64(bytes)));
            if let Some(p) = decl.precision {
                prop_assert_eq!(spec.precision, p);
            }
            prop_assert_eq!(spec.tensors.len(), decl.tensors.len());
            for (t, d) in spec.tensors.iter().zip(&decl.tensors) {
                prop_assert_eq!(&t.name, &d.name);
                prop_assert_eq!(t.dtype, d.dtype);
                prop_assert_eq!(&t.shape, &d.shape);
                prop_assert_eq!(t.offset % TENSOR_ALIGN, 0);
                let want = next.next().unwrap();
                prop_assert_eq!(&bytes[t.offset as usize..(t.offset + t.len) as usize], &want[..]);
            }
        }

        // The convenience writer makes the same file when precisions are derived.
        if layers.iter().all(|l| l.precision.is_none()) {
            let mut it = data.iter();
            let pairs: Vec<Vec<(TensorDecl, &[u8])>> = layers
                .iter()
                .map(|l| l.tensors.iter().map(|d| (d.clone(), &it.next().unwrap()[..])).collect())
                .collect();
            let again = dir.path().join("again.tmai");
            write_tmai(&again, &pairs).unwrap();
            prop_assert_eq!(std::fs::read(&again).unwrap(), file);
        }
    }

    /// Resealed random edits of a valid header never panic the parser, and
    /// whatever it accepts still obeys the layout rules.
    #[test]
    fn mutated_headers_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut file = sample();
        let len = header_len(&file);
        for (at, v) in &edits {
            let at = 32 + at.index(len - 32);
            file[at] = *v;
        }
        reseal(&mut file);
        if let Ok(h) = parse_header(&file, file.len() as u64) {
            check_invariants(&h, file.len() as u64);
        }
    }

    /// Edits that are not resealed are always caught by the checksum, or earlier.
    #[test]
    fn unsealed_edits_are_rejected(at in 0usize..240, bit in 0u8..8) {
        let mut file = sample();
        file[at] ^= 1 << bit;
        prop_assert!(parse_header(&file, file.len() as u64).is_err());
    }

    /// Arbitrary bytes after the magic never panic the parser.
    #[test]
    fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..400), len in any::<u64>()) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&tail);
        let _ = parse_header(&bytes, len);
        if bytes.len() >= 32 {
            let end = (get_u64(&bytes, HEADER_LEN_AT) as usize).clamp(32, bytes.len());
            let sum = xxh3_64(&bytes[32..end]);
            put_u64(&mut bytes, CHECKSUM_AT, sum);
            if let Ok(h) = parse_header(&bytes, len) {
                check_invariants(&h, len);
            }
        }
    }
}

fn check_invariants(h: &hyperion::format::tmai::ParsedHeader, file_len: u64) {
    let mut prev_end = h.data_start;
    let mut names = std::collections::HashSet::new();
    for l in &h.layers {
        assert_eq!(l.ranges.len(), 1);
        assert_eq!(l.offset() % LAYER_ALIGN, 0);
        assert!(l.offset() >= prev_end);
        prev_end = l.offset().checked_add(l.size).unwrap();
        assert!(prev_end <= file_len);
        for t in l.tensors.iter() {
            assert!(t.offset.checked_add(t.len).unwrap() <= l.size);
            assert_eq!(t.dtype.byte_len(&t.shape), Some(t.len));
            assert!(names.insert(t.name.clone()));
        }
    }
}

// --- The prefix ---------------------------------------------------------------------

#[test]
fn rejects_bad_magic() {
    let mut file = sample();
    file[0] = b'X';
    let found = b"XMAI\x00\r\n\x1a".to_vec();
    assert_eq!(format_err(&file), FormatError::BadMagic { found });
    // A PNG, say.
    let e = format_err(b"\x89PNG\r\n\x1a\n and more");
    assert!(matches!(e, FormatError::BadMagic { .. }));
    assert!(matches!(format_err(b""), FormatError::BadMagic { found } if found.is_empty()));
}

#[test]
fn rejects_truncated_header_at_every_byte() {
    let file = sample();
    let len = header_len(&file);
    // The in-memory parser: every prefix of the header, with the true file length.
    for cut in 0..len {
        let e = parse_header(&file[..cut], file.len() as u64).unwrap_err();
        assert!(
            matches!(e, FormatError::Truncated { .. }),
            "cut at {cut}: {e:?}"
        );
    }
    // The reader: files cut at every byte of the header, and at the data.
    let cuts = (0..=len + 1).chain([4095, 4096, 4096 + 83, 8192, 8192 + 9]);
    for cut in cuts {
        let (_path, result, _dir) = read_bytes(&file[..cut]);
        match result {
            Err(Error::Format { .. }) => {}
            other => panic!("cut at {cut}: expected Error::Format, got {other:?}"),
        }
    }
}

#[test]
fn accepts_a_file_cut_right_after_its_last_layer() {
    // Readers do not require the final padding (writers always add it).
    let file = sample();
    let (_p, result, _d) = read_bytes(&file[..8192 + 10]);
    assert_eq!(result.unwrap().layers.len(), 2);
}

#[test]
fn rejects_unsupported_version() {
    for v in [0, 2, u32::MAX] {
        let e = patched(|f| put_u32(f, VERSION_AT, v));
        assert_eq!(
            e,
            FormatError::UnsupportedVersion {
                format: "tmai",
                version: v
            }
        );
    }
}

#[test]
fn rejects_nonzero_flags() {
    assert_invalid(
        patched(|f| put_u32(f, FLAGS_AT, 1 << 31)),
        &["flags", "0x80000000"],
    );
}

#[test]
fn rejects_header_len_over_limit() {
    // Refused from the 40-byte prefix, before anything is allocated for it.
    let e = patched(|f| put_u64(f, HEADER_LEN_AT, MAX_HEADER_LEN + 1));
    assert_eq!(
        e,
        FormatError::LimitExceeded {
            what: "header_len".into(),
            value: MAX_HEADER_LEN + 1,
            limit: MAX_HEADER_LEN
        }
    );
    let e = patched(|f| put_u64(f, HEADER_LEN_AT, u64::MAX));
    assert!(matches!(e, FormatError::LimitExceeded { .. }));
}

#[test]
fn rejects_header_len_past_end_of_file() {
    let e = patched(|f| put_u64(f, HEADER_LEN_AT, MAX_HEADER_LEN));
    assert!(
        matches!(e, FormatError::Truncated { needed, available: 12288, .. } if needed == MAX_HEADER_LEN),
        "{e:?}"
    );
}

#[test]
fn rejects_header_len_below_fixed_header() {
    for v in [0, 39] {
        let mut file = sample();
        put_u64(&mut file, HEADER_LEN_AT, v);
        assert_invalid(format_err(&file), &["header_len", "40-byte"]);
    }
}

#[test]
fn rejects_header_checksum_mismatch() {
    let mut file = sample();
    let c = tensor_recs(&file)[2];
    file[c.name_at] = b'd';
    let e = format_err(&file);
    assert!(
        matches!(&e, FormatError::ChecksumMismatch { what, .. } if what == "header"),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("header: checksum mismatch"));
}

#[test]
fn rejects_zero_layers() {
    let e = patched(|f| put_u32(f, LAYER_COUNT_AT, 0));
    assert_invalid(e, &["layer_count is 0"]);
}

#[test]
fn rejects_huge_layer_count() {
    // 2^32 - 1 records of 48 bytes cannot fit in a 240-byte header: refused
    // before the table is allocated.
    let e = patched(|f| put_u32(f, LAYER_COUNT_AT, u32::MAX));
    assert!(
        matches!(e, FormatError::LimitExceeded { value, limit: 4, .. } if value == u64::from(u32::MAX)),
        "{e:?}"
    );
}

#[test]
fn rejects_huge_tensor_count() {
    let e = patched(|f| put_u32(f, TENSOR_COUNT_AT, u32::MAX));
    assert!(
        matches!(&e, FormatError::LimitExceeded { what, limit: 4, .. } if what.starts_with("tensor_count")),
        "{e:?}"
    );
}

// --- The layer table -----------------------------------------------------------------------

#[test]
fn rejects_layer_index_not_position() {
    let e = patched(|f| put_u32(f, layer_at(1, L_INDEX), 0));
    assert_invalid(e, &["layer 1: index field is 0"]);
}

#[test]
fn rejects_nonzero_reserved() {
    let e = patched(|f| put_u64(f, layer_at(1, L_RESERVED), 1));
    assert_invalid(e, &["layer 1: reserved"]);
}

#[test]
fn rejects_bad_precision() {
    for p in [0, 65, u32::MAX] {
        let e = patched(|f| put_u32(f, layer_at(0, L_PRECISION), p));
        assert_invalid(e, &["layer 0: precision"]);
    }
}

#[test]
fn rejects_misaligned_layer() {
    let e = patched(|f| put_u64(f, layer_at(1, L_OFFSET), 8192 + 64));
    assert_eq!(
        e,
        FormatError::Misaligned {
            what: "layer 1: offset".into(),
            value: 8256,
            alignment: 4096
        }
    );
}

#[test]
fn rejects_layer_offset_overflow() {
    let e = patched(|f| {
        put_u64(f, layer_at(1, L_OFFSET), u64::MAX - 4095);
        put_u64(f, layer_at(1, L_SIZE), 1 << 20);
    });
    assert!(
        matches!(&e, FormatError::Overflow { what } if what.starts_with("layer 1:")),
        "{e:?}"
    );
}

#[test]
fn rejects_layer_outside_file() {
    // Past the end.
    let e = patched(|f| put_u64(f, layer_at(1, L_OFFSET), 12288));
    assert_eq!(
        e,
        FormatError::OutOfBounds {
            what: "layer 1".into(),
            start: 12288,
            end: 12298,
            region: "the data region",
            region_start: 4096,
            region_end: 12288
        }
    );
    // Too long.
    let e = patched(|f| put_u64(f, layer_at(1, L_SIZE), 4097));
    assert!(matches!(e, FormatError::OutOfBounds { .. }), "{e:?}");
    // Over the header.
    let e = patched(|f| put_u64(f, layer_at(0, L_OFFSET), 0));
    assert!(
        matches!(e, FormatError::OutOfBounds { start: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn rejects_overlapping_layers() {
    let e = patched(|f| put_u64(f, layer_at(1, L_OFFSET), 4096));
    assert_eq!(
        e,
        FormatError::Overlap {
            first: "layer 0 (bytes 4096..4180)".into(),
            second: "layer 1 (bytes 4096..4106)".into()
        }
    );
}

#[test]
fn rejects_layers_out_of_order() {
    let e = patched(|f| {
        put_u64(f, layer_at(0, L_OFFSET), 8192);
        put_u64(f, layer_at(1, L_OFFSET), 4096);
    });
    assert_invalid(
        e,
        &[
            "layer 1 starts at byte 4096, before layer 0",
            "increasing offset order",
        ],
    );
}

#[test]
fn rejects_layers_that_do_not_tile_the_tensor_table() {
    let e = patched(|f| put_u32(f, layer_at(1, L_FIRST_TENSOR), 1));
    assert_invalid(e, &["layer 1: first_tensor is 1"]);
    let e = patched(|f| put_u32(f, layer_at(1, L_TENSOR_COUNT), 2));
    assert_invalid(e, &["layer 1: tensors 2..4 run past tensor_count 3"]);
    let e = patched(|f| put_u32(f, layer_at(1, L_TENSOR_COUNT), 0));
    assert_invalid(e, &["the layers claim 2 tensors, but tensor_count is 3"]);
}

#[test]
fn rejects_layer_size_past_its_last_tensor() {
    let e = patched(|f| put_u64(f, layer_at(0, L_SIZE), 100));
    assert_invalid(e, &["layer 0: size is 100", "last tensor ends at byte 84"]);
}

// --- The tensor table ---------------------------------------------------------------------------

fn rec(file: &[u8], i: usize) -> TensorRec {
    tensor_recs(file)[i]
}

#[test]
fn rejects_tensor_outside_layer() {
    let e = patched(|f| {
        let c = rec(f, 2);
        put_u64(f, c.offset_at, 64);
    });
    assert_eq!(
        e,
        FormatError::OutOfBounds {
            what: "tensor \"c\" (layer 1)".into(),
            start: 64,
            end: 74,
            region: "its layer",
            region_start: 0,
            region_end: 10
        }
    );
}

#[test]
fn rejects_tensor_offset_overflow() {
    let e = patched(|f| {
        let c = rec(f, 2);
        put_u64(f, c.offset_at, u64::MAX - 63);
        put_u64(f, c.len_at, 64); // checked before the length is matched to the shape
    });
    assert!(
        matches!(&e, FormatError::Overflow { what } if what.starts_with("tensor \"c\" (layer 1)")),
        "{e:?}"
    );
}

#[test]
fn rejects_overlapping_tensors() {
    let e = patched(|f| {
        let b = rec(f, 1);
        put_u64(f, b.offset_at, 0);
    });
    assert_eq!(
        e,
        FormatError::Overlap {
            first: "tensor \"a\" (layer 0, bytes 0..12)".into(),
            second: "tensor \"b\" (layer 0, bytes 0..20)".into()
        }
    );
}

#[test]
fn rejects_tensors_out_of_order() {
    // b before a: a at 64, b at 0 (and the layer still ends at 84).
    let e = patched(|f| {
        let (a, b) = (rec(f, 0), rec(f, 1));
        put_u64(f, a.offset_at, 64);
        put_u64(f, b.offset_at, 0);
    });
    assert_invalid(
        e,
        &["tensor \"b\" (layer 0) starts at byte 0, before tensor \"a\""],
    );
}

#[test]
fn rejects_misaligned_tensor() {
    let e = patched(|f| {
        let b = rec(f, 1);
        put_u64(f, b.offset_at, 32);
    });
    assert_eq!(
        e,
        FormatError::Misaligned {
            what: "tensor \"b\" (layer 0): offset".into(),
            value: 32,
            alignment: 64
        }
    );
}

#[test]
fn rejects_shape_size_mismatch() {
    let e = patched(|f| {
        let a = rec(f, 0);
        put_u64(f, a.dim_at(0), 4);
    });
    assert_eq!(
        e,
        FormatError::ShapeMismatch {
            tensor: "a".into(),
            dtype: "F32".into(),
            shape: vec![4],
            expected: 16,
            actual: 12
        }
    );
    assert!(e.to_string().contains("tensor \"a\""));
}

#[test]
fn rejects_shape_overflow() {
    let e = patched(|f| {
        let b = rec(f, 1);
        put_u64(f, b.dim_at(0), u64::MAX);
    });
    assert!(
        matches!(&e, FormatError::Overflow { what } if what.starts_with("tensor \"b\" (layer 0)")),
        "{e:?}"
    );
}

#[test]
fn rejects_ndim_over_limit() {
    let e = patched(|f| {
        let a = rec(f, 0);
        f[a.ndim_at] = MAX_DIMS as u8 + 1;
    });
    assert_eq!(
        e,
        FormatError::LimitExceeded {
            what: "tensor #0 (layer 0): ndim".into(),
            value: 9,
            limit: 8
        }
    );
    let e = patched(|f| {
        let a = rec(f, 0);
        f[a.ndim_at] = u8::MAX;
    });
    assert!(matches!(e, FormatError::LimitExceeded { value: 255, .. }));
}

#[test]
fn rejects_unknown_dtype() {
    // 22 is the first unassigned plain code; 64 + 4 and 64 + 36 are GGML ids
    // that ggml has retired.
    for code in [22, 63, 68, 100, u32::MAX] {
        let e = patched(|f| {
            let c = rec(f, 2);
            put_u32(f, c.dtype_at, code);
        });
        assert_eq!(
            e,
            FormatError::UnknownDType {
                what: "tensor \"c\" (layer 1)".into(),
                code
            }
        );
    }
}

#[test]
fn rejects_duplicate_tensor_name() {
    let e = patched(|f| {
        let c = rec(f, 2);
        f[c.name_at] = b'a';
    });
    assert_eq!(e, FormatError::DuplicateName { name: "a".into() });
}

#[test]
fn rejects_bad_utf8_name() {
    let e = patched(|f| {
        let b = rec(f, 1);
        f[b.name_at] = 0xFF;
    });
    assert_invalid(e, &["tensor #1 (layer 0)", "UTF-8"]);
}

#[test]
fn rejects_empty_name() {
    let mut file = sample();
    let b = rec(&file, 1);
    splice_header(&mut file, b.start, 3, &[0, 0]); // name_len 0, name gone
    assert_invalid(
        format_err(&file),
        &["tensor #1 (layer 0): the name is empty"],
    );
}

#[test]
fn rejects_tensor_record_past_header() {
    // A name length that runs the record past header_len.
    let e = patched(|f| {
        let c = rec(f, 2);
        put_u16(f, c.start, u16::MAX);
    });
    assert!(
        matches!(&e, FormatError::OutOfBounds { what, region: "the header", region_end: 240, .. }
            if what == "tensor #2 (layer 1) record"),
        "{e:?}"
    );
}

#[test]
fn rejects_unaccounted_header_bytes() {
    let mut file = sample();
    let end = header_len(&file);
    splice_header(&mut file, end, 0, &[0; 8]);
    assert_invalid(format_err(&file), &["8 unaccounted bytes"]);
}

#[test]
fn huge_counts_in_a_tiny_file_fail_fast() {
    // A 40-byte prefix claiming the largest header and counts: refused from
    // the prefix alone, whatever the counts.
    let mut file = vec![0u8; 40];
    file[..8].copy_from_slice(&MAGIC);
    put_u32(&mut file, VERSION_AT, 1);
    put_u64(&mut file, HEADER_LEN_AT, MAX_HEADER_LEN);
    put_u32(&mut file, LAYER_COUNT_AT, u32::MAX);
    put_u32(&mut file, TENSOR_COUNT_AT, u32::MAX);
    assert!(matches!(format_err(&file), FormatError::Truncated { .. }));
    // With a header_len that fits the file, the counts are bounded by it.
    put_u64(&mut file, HEADER_LEN_AT, 40);
    reseal(&mut file);
    assert!(matches!(
        format_err(&file),
        FormatError::LimitExceeded { limit: 0, .. }
    ));
}

// --- The writer -----------------------------------------------------------------------------

fn one_layer(decls: Vec<TensorDecl>) -> Vec<LayerDecl> {
    vec![LayerDecl::new(decls)]
}

fn invalid_argument(result: hyperion::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn writer_refuses_bytes_past_the_last_tensor_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let mut w = TmaiWriter::create(
        &path,
        one_layer(vec![TensorDecl::new("w", DType::U16, vec![4])]),
    )
    .unwrap();
    w.write(&[1; 6]).unwrap();
    let m = invalid_argument(w.write(&[2; 3]));
    assert!(m.contains("only 2 bytes left"), "{m}");
    w.write(&[3; 2]).unwrap();
    w.finish().unwrap();
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[4096..4104], &[1, 1, 1, 1, 1, 1, 3, 3]);
}

#[test]
fn writer_finish_names_the_first_incomplete_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let layers = vec![
        LayerDecl::new(vec![TensorDecl::new("a", DType::U8, vec![4])]),
        LayerDecl::new(vec![
            TensorDecl::new("empty", DType::F32, vec![0]),
            TensorDecl::new("b", DType::U8, vec![4]),
        ]),
    ];
    let mut w = TmaiWriter::create(&path, layers).unwrap();
    w.write(&[0; 5]).unwrap();
    let m = invalid_argument(w.finish());
    assert!(
        m.contains("tensor \"b\" (layer 1) got 1 of its 4 bytes"),
        "{m}"
    );
    assert!(m.contains("3 bytes of the model were never written"), "{m}");
}

#[test]
fn unfinished_file_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let mut w = TmaiWriter::create(
        &path,
        one_layer(vec![TensorDecl::new("w", DType::U8, vec![8192])]),
    )
    .unwrap();
    w.write(&[7; 5000]).unwrap();
    drop(w);
    assert!(matches!(
        read_index(&path),
        Err(Error::Format {
            source: FormatError::BadMagic { .. },
            ..
        })
    ));
}

#[test]
fn writer_rejects_bad_declarations_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let dup = vec![
        LayerDecl::new(vec![TensorDecl::new("w", DType::U8, vec![1])]),
        LayerDecl::new(vec![TensorDecl::new("w", DType::U8, vec![1])]),
    ];
    let m = invalid_argument(TmaiWriter::create(&path, dup));
    assert!(m.contains("tensor \"w\" (layer 1)"), "{m}");
    assert!(!path.exists(), "nothing is created for bad declarations");
    let m = invalid_argument(TmaiWriter::create(&path, vec![]));
    assert!(m.contains("at least one layer"), "{m}");
    let m = invalid_argument(TmaiWriter::create(
        &path,
        one_layer(vec![TensorDecl::new("big", DType::F64, vec![1 << 62, 4])]),
    ));
    assert!(m.contains("tensor \"big\" (layer 0)"), "{m}");
}

#[test]
fn write_tmai_checks_each_tensors_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let m = invalid_argument(write_tmai(
        &path,
        &[vec![(
            TensorDecl::new("w", DType::F32, vec![2]),
            &[0u8; 7][..],
        )]],
    ));
    assert!(
        m.contains("tensor \"w\" (layer 0)") && m.contains("needs 8 bytes, but 7"),
        "{m}"
    );
}

#[test]
fn writer_io_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("m.tmai");
    match TmaiWriter::create(&path, one_layer(vec![])) {
        Err(Error::Io { path: p, op, .. }) => {
            assert_eq!(&*p, path.as_path());
            assert_eq!(op, "create");
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn empty_layers_and_tensors_round_trip() {
    let layers = vec![
        vec![],
        vec![(TensorDecl::new("scalar", DType::F64, vec![]), pattern(1, 8))],
        vec![
            (TensorDecl::new("none", DType::BF16, vec![0, 5]), vec![]),
            (TensorDecl::new("x", DType::I8, vec![3]), pattern(2, 3)),
            (TensorDecl::new("tail", DType::I32, vec![7, 0]), vec![]),
        ],
        vec![],
    ];
    let w = write_model(&layers);
    let index = read_index(&w.path).unwrap();
    let sizes: Vec<_> = index
        .layers
        .iter()
        .map(|l| (l.offset(), l.size, l.precision))
        .collect();
    // The empty layer takes no block: the next layer starts where it does.
    // "tail" is empty but aligned to 64, so layer 2 ends at 64.
    assert_eq!(
        sizes,
        [(4096, 0, 8), (4096, 8, 64), (8192, 64, 8), (12288, 0, 8)]
    );
    assert_eq!(index.layers[0].checksum, Some(xxh3_64(b"")));
    assert_eq!(w.bytes.len(), 12288);
    assert_eq!(index.layers[2].tensors[2].offset, 64);
}

#[test]
fn public_types_are_send_and_sync() {
    fn bounds<T: Send + Sync>() {}
    bounds::<TmaiWriter>();
    bounds::<hyperion::format::tmai::ParsedHeader>();
    bounds::<TensorDecl>();
    bounds::<LayerDecl>();
}

// --- The specification ------------------------------------------------------------------------

#[test]
fn spec_lists_every_dtype_code() {
    let spec =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/format.md"))
            .unwrap();
    for d in DType::ALL {
        let row = format!("| {} | `{}` | {} |", d.code(), d.name(), d.bits());
        assert!(spec.contains(&row), "docs/format.md lacks the row {row:?}");
    }
}

#[test]
fn spec_worked_example_matches_the_writer() {
    let spec =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/format.md"))
            .unwrap();
    let example = spec
        .split("## 13. Worked example")
        .nth(1)
        .expect("section 13");
    let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let file = write_model(&[vec![(TensorDecl::new("w", DType::F32, vec![2, 2]), w)]]).bytes;
    assert_eq!(file.len(), 8192);
    let mut checked = 0;
    for line in example.lines() {
        let mut tokens = line.split_whitespace();
        let Some(offset) = tokens.next().filter(|t| t.len() == 8) else {
            continue;
        };
        let Ok(offset) = usize::from_str_radix(offset, 16) else {
            continue;
        };
        let bytes: Vec<u8> = tokens
            .take_while(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
            .map(|t| u8::from_str_radix(t, 16).unwrap())
            .collect();
        assert_eq!(
            &file[offset..offset + bytes.len()],
            &bytes[..],
            "line {line:?}"
        );
        checked += bytes.len();
    }
    assert_eq!(
        checked,
        128 + 1 + 16 + 1,
        "every header byte, and the data, is shown"
    );
}
