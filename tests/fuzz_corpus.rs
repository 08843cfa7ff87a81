//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! parsers in a plain `cargo test`, with the checks of the fuzz targets: no
//! panic, and for safetensors, agreement with the `safetensors` crate. Files
//! named `ok-*` must parse and `bad-*` must not (for safetensors headers),
//! `index-ok-*` / `index-bad-*` likewise for shard indexes; GGUF seeds named
//! `ok-*` must parse, `truncated-*` and `big-endian*` must not (they were made
//! from a gguf-py file by `tests/python`-style truncation and bit flips).
//!
//! `cargo test --release --test fuzz_corpus -- --ignored regenerate` rewrites
//! the seed files from the code below (valid minimal files and one file per
//! attack); `scripts/fuzz.sh` grows its own corpus elsewhere.

use std::path::{Path, PathBuf};

use hyperion::format::safetensors::{parse_header as st_parse, parse_shard_index};
use hyperion::format::tmai::{parse_header as tmai_parse, write_tmai, TensorDecl};
use hyperion::{DType, FormatError, GgmlType};
use safetensors::SafeTensors;
use xxhash_rust::xxh3::xxh3_64;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn tmai_corpus_replays() {
    let files = corpus("tmai");
    assert!(files.len() >= 20, "{} files", files.len());
    for (name, data) in files {
        let result = tmai_parse(&data, data.len() as u64);
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name}: {result:?}");
        } else if name.starts_with("bad-") {
            assert!(result.is_err(), "{name} parsed");
        }
    }
}

#[test]
fn gguf_corpus_replays() {
    let files = corpus("gguf");
    assert!(files.len() >= 20, "{} files", files.len());
    for (name, data) in files {
        // As the fuzz target does: as a whole file, and as a prefix.
        let whole = hyperion::format::gguf::parse(&data, data.len() as u64);
        let _ = hyperion::format::gguf::parse(&data, u64::MAX);
        if name.starts_with("ok-") {
            assert!(whole.is_ok(), "{name}: {:?}", whole.err());
        } else if name.starts_with("truncated-") || name.starts_with("big-endian") {
            assert!(whole.is_err(), "{name} must be refused");
        }
    }
}

#[test]
fn safetensors_corpus_replays() {
    let files = corpus("safetensors");
    assert!(files.len() >= 20, "{} files", files.len());
    for (name, data) in files {
        let ours = st_parse(&data, data.len() as u64);
        let reference = SafeTensors::read_metadata(&data);
        match (&ours, &reference) {
            (Ok(header), Ok((_, metadata))) => {
                assert_eq!(header.tensors.len(), metadata.tensors().len(), "{name}");
                for t in &header.tensors {
                    let info = metadata.info(&t.name).unwrap();
                    let start = t.offset - header.data_start;
                    assert_eq!(
                        info.data_offsets,
                        (start as usize, (start + t.len) as usize),
                        "{name}"
                    );
                }
            }
            (Ok(_), Err(e)) => panic!("{name}: accepted a header the crate refuses: {e}"),
            (Err(FormatError::DuplicateName { .. }), Ok(_)) => {}
            (Err(FormatError::LimitExceeded { what, .. }), Ok(_)) if what.contains("nesting") => {}
            (Err(e), Ok(_)) => panic!("{name}: refused a header the crate accepts: {e}"),
            (Err(_), Err(_)) => {}
        }
        if name.starts_with("ok-") {
            assert!(ours.is_ok(), "{name}: {ours:?}");
        } else if name.starts_with("bad-") {
            assert!(ours.is_err(), "{name} parsed");
        }
        let index = parse_shard_index(&data);
        if name.starts_with("index-ok-") {
            assert!(index.is_ok(), "{name}: {index:?}");
        } else if name.starts_with("index-bad-") {
            assert!(index.is_err(), "{name} parsed");
        }
    }
}

// --- Regenerating the seeds ----------------------------------------------------------

fn out_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// Recomputes the `.tmai` header checksum (docs/format.md, section 7).
fn reseal(file: &mut [u8]) {
    let header_len = u64::from_le_bytes(file[16..24].try_into().unwrap());
    let end = (header_len as usize).clamp(32, file.len());
    let sum = xxh3_64(&file[32..end]);
    put_u64(file, 24, sum);
}

fn tmai_file(layers: &[Vec<(TensorDecl, Vec<u8>)>]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let layers: Vec<Vec<(TensorDecl, &[u8])>> = layers
        .iter()
        .map(|l| l.iter().map(|(d, b)| (d.clone(), b.as_slice())).collect())
        .collect();
    write_tmai(&path, &layers).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn regenerate() {
    regenerate_tmai();
    regenerate_safetensors();
}

fn regenerate_tmai() {
    let dir = out_dir("tmai");
    let w = |name: &str, b: &[u8]| std::fs::write(dir.join(name), b).unwrap();
    let f32s = |name: &str, n: u64| {
        (
            TensorDecl::new(name, DType::F32, vec![n]),
            (0..n * 4).map(|i| i as u8).collect::<Vec<u8>>(),
        )
    };
    // One layer with one tensor `w` (the worked example of docs/format.md).
    let one = tmai_file(&[vec![(
        TensorDecl::new("w", DType::F32, vec![2, 2]),
        [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    )]]);
    w("ok-worked-example.tmai", &one);
    let two = tmai_file(&[
        vec![f32s("a", 3), f32s("b", 17)],
        vec![],
        vec![(
            TensorDecl::new("q", DType::Ggml(GgmlType::Q4_0), vec![32]),
            vec![0; 18],
        )],
    ]);
    w("ok-three-layers.tmai", &two);

    // The first tensor record of `one`: after the 40-byte prefix and one
    // 48-byte layer record. Its name is 1 byte, its ndim 2.
    let t0 = 40 + 48;
    type Patch = fn(&mut Vec<u8>);
    let patches: Vec<(&str, Patch, bool)> = vec![
        ("bad-magic", |f| f[0] = b'X', true),
        ("bad-version", |f| put_u32(f, 8, 2), true),
        ("bad-flags", |f| put_u32(f, 12, 1), true),
        ("bad-header-len-huge", |f| put_u64(f, 16, u64::MAX), true),
        ("bad-header-len-small", |f| put_u64(f, 16, 39), true),
        ("bad-checksum", |f| f[40] ^= 1, false),
        ("bad-layer-count-zero", |f| put_u32(f, 32, 0), true),
        ("bad-layer-count-huge", |f| put_u32(f, 32, u32::MAX), true),
        ("bad-tensor-count-huge", |f| put_u32(f, 36, u32::MAX), true),
        ("bad-layer-misaligned", |f| put_u64(f, 40, 4097), true),
        (
            "bad-layer-overflow",
            |f| put_u64(f, 40, u64::MAX - 4095),
            true,
        ),
        ("bad-layer-outside", |f| put_u64(f, 40, 1 << 20), true),
        ("bad-layer-index", |f| put_u32(f, 40 + 24, 1), true),
        ("bad-layer-precision", |f| put_u32(f, 40 + 28, 0), true),
        ("bad-layer-first-tensor", |f| put_u32(f, 40 + 32, 1), true),
        ("bad-layer-reserved", |f| put_u64(f, 40 + 40, 1), true),
        ("bad-tensor-name-empty", |f| put_u16(f, 88, 0), true),
        ("bad-tensor-name-utf8", |f| f[88 + 2] = 0xff, true),
        ("bad-tensor-dtype", |f| put_u32(f, 88 + 3, 9999), true),
        ("bad-tensor-ndim", |f| f[88 + 7] = 9, true),
        ("bad-tensor-shape", |f| put_u64(f, 88 + 8, 3), true),
        (
            "bad-tensor-offset-misaligned",
            |f| put_u64(f, 88 + 8 + 16, 1),
            true,
        ),
        ("bad-tensor-len", |f| put_u64(f, 88 + 16 + 16, 15), true),
    ];
    assert_eq!(t0, 88);
    for (name, patch, seal) in patches {
        let mut f = one.clone();
        patch(&mut f);
        if seal {
            reseal(&mut f);
        }
        w(&format!("{name}.tmai"), &f);
    }
    // Overlapping layers: the second layer of `two` moved onto the first.
    let mut f = two.clone();
    let first = u64::from_le_bytes(f[40..48].try_into().unwrap());
    put_u64(&mut f, 40 + 48, first);
    reseal(&mut f);
    w("bad-layers-overlap.tmai", &f);
    // Truncated in the prefix, the header and the data.
    for (what, at) in [("prefix", 20), ("header", 100), ("data", 4100)] {
        w(&format!("bad-truncated-{what}.tmai"), &one[..at]);
    }
}

/// A safetensors file from a JSON header (padded to 8 bytes) and data.
fn st_bytes(json: &str, data: &[u8]) -> Vec<u8> {
    let mut header = json.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(data);
    file
}

fn regenerate_safetensors() {
    let dir = out_dir("safetensors");
    let w = |name: &str, b: &[u8]| std::fs::write(dir.join(name), b).unwrap();
    let t = |d: &str, shape: &str, s: u64, e: u64| {
        format!(r#"{{"dtype":"{d}","shape":{shape},"data_offsets":[{s},{e}]}}"#)
    };

    // Valid files, from the crate's writer and by hand.
    let data: Vec<u8> = (0..64).collect();
    let views = [
        (
            "model.layers.0.w",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data[..16])
                .unwrap(),
        ),
        (
            "model.layers.0.b",
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2], &data[16..20])
                .unwrap(),
        ),
        (
            "lm_head.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![0], &data[..0])
                .unwrap(),
        ),
        (
            "f4",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F4, vec![4], &data[20..22])
                .unwrap(),
        ),
    ];
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    w(
        "ok-crate-writer.safetensors",
        &safetensors::serialize(views, Some(meta)).unwrap(),
    );
    w("ok-empty.safetensors", &st_bytes("{}", &[]));
    w(
        "ok-metadata-only.safetensors",
        &st_bytes(r#"{"__metadata__":{"a":"b"}}"#, &[]),
    );
    w(
        "ok-scalar.safetensors",
        &st_bytes(&format!(r#"{{"s":{}}}"#, t("F64", "[]", 0, 8)), &[1; 8]),
    );
    w(
        "ok-zero-length-first.safetensors",
        &st_bytes(
            &format!(
                r#"{{"e":{},"a":{}}}"#,
                t("I8", "[0,5]", 0, 0),
                t("I16", "[3]", 0, 6)
            ),
            &[2; 6],
        ),
    );

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad-short-prefix", vec![4, 0, 0]),
        ("bad-header-len-huge", {
            let mut f = st_bytes("{}", &[]);
            put_u64(&mut f, 0, u64::MAX);
            f
        }),
        ("bad-header-len-past-end", {
            let mut f = st_bytes("{}", &[]);
            put_u64(&mut f, 0, 1000);
            f
        }),
        ("bad-header-empty", 0u64.to_le_bytes().to_vec()),
        ("bad-not-json", st_bytes("{nope", &[])),
        ("bad-not-object", st_bytes("[1,2]", &[])),
        ("bad-trailing", st_bytes("{} x", &[])),
        ("bad-utf8", {
            let mut f = st_bytes(r#"{"?":{}}"#, &[]);
            f[10] = 0xc3;
            f
        }),
        (
            "bad-missing-field",
            st_bytes(r#"{"w":{"dtype":"U8","shape":[1]}}"#, &[0]),
        ),
        (
            "bad-unknown-dtype",
            st_bytes(&format!(r#"{{"w":{}}}"#, t("Q4_K", "[1]", 0, 1)), &[0]),
        ),
        (
            "bad-negative-dim",
            st_bytes(&format!(r#"{{"w":{}}}"#, t("U8", "[-1]", 0, 1)), &[0]),
        ),
        (
            "bad-metadata-number",
            st_bytes(r#"{"__metadata__":{"a":1}}"#, &[]),
        ),
        (
            "bad-duplicate",
            st_bytes(
                &format!(
                    r#"{{"w":{},"w":{}}}"#,
                    t("U8", "[1]", 0, 1),
                    t("U8", "[1]", 0, 1)
                ),
                &[0],
            ),
        ),
        (
            "bad-overlap",
            st_bytes(
                &format!(
                    r#"{{"a":{},"b":{}}}"#,
                    t("U8", "[4]", 0, 4),
                    t("U8", "[4]", 2, 6)
                ),
                &[0; 6],
            ),
        ),
        (
            "bad-gap",
            st_bytes(
                &format!(
                    r#"{{"a":{},"b":{}}}"#,
                    t("U8", "[2]", 0, 2),
                    t("U8", "[2]", 4, 6)
                ),
                &[0; 6],
            ),
        ),
        (
            "bad-trailing-bytes",
            st_bytes(&format!(r#"{{"a":{}}}"#, t("U8", "[2]", 0, 2)), &[0; 3]),
        ),
        (
            "bad-shape-mismatch",
            st_bytes(&format!(r#"{{"a":{}}}"#, t("F32", "[2]", 0, 4)), &[0; 4]),
        ),
        (
            "bad-sub-byte",
            st_bytes(&format!(r#"{{"a":{}}}"#, t("F4", "[3]", 0, 2)), &[0; 2]),
        ),
        (
            "bad-end-before-start",
            st_bytes(&format!(r#"{{"a":{}}}"#, t("U8", "[0]", 2, 1)), &[0; 2]),
        ),
        (
            "bad-offsets-overflow",
            st_bytes(
                &format!(
                    r#"{{"a":{}}}"#,
                    t("U8", "[18446744073709551610]", 0, 18446744073709551610)
                ),
                &[],
            ),
        ),
        (
            "bad-shape-overflow",
            st_bytes(
                &format!(r#"{{"a":{}}}"#, t("F32", "[4294967296,4294967296]", 0, 4)),
                &[0; 4],
            ),
        ),
        (
            "bad-past-end",
            st_bytes(&format!(r#"{{"a":{}}}"#, t("U8", "[4]", 0, 4)), &[0; 2]),
        ),
        (
            "bad-deep",
            st_bytes(&format!(r#"{{"a":{}}}"#, "[".repeat(200)), &[]),
        ),
    ];
    for (name, f) in bad {
        w(&format!("{name}.safetensors"), &f);
    }

    // Shard indexes.
    let index = |map: &str| format!(r#"{{"metadata":{{"total_size":8}},"weight_map":{{{map}}}}}"#);
    let indexes = [
        (
            "index-ok-hf",
            index(
                r#""a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors""#,
            ),
        ),
        ("index-ok-subdir", index(r#""a":"sub/x.safetensors""#)),
        ("index-bad-empty", index("")),
        (
            "index-bad-twice",
            index(r#""a":"x.safetensors","a":"y.safetensors""#),
        ),
        ("index-bad-dotdot", index(r#""a":"../x.safetensors""#)),
        ("index-bad-absolute", index(r#""a":"/etc/passwd""#)),
        ("index-bad-not-string", index(r#""a":7"#)),
        ("index-bad-no-map", r#"{"metadata":{}}"#.to_string()),
    ];
    for (name, json) in indexes {
        w(&format!("{name}.json"), json.as_bytes());
    }
}
