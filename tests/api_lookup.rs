//! Looking tensors up by name and layers up by block number, on each format;
//! reading tensor elements whatever their alignment; `f16`/`bf16` views.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use common::{write_safetensors, St};
use hyperion::format::read_index;
use hyperion::format::tmai::{write_tmai, TensorDecl};
use hyperion::half::{bf16, f16};
use hyperion::{
    Backend, DType, Error, FileFormat, GgmlType, LayerWeights, MappedModel, ModelIndex, TensorView,
};
use tempfile::TempDir;

// --- Building files -------------------------------------------------------------

fn dir() -> TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn gstr(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// Writes a GGUF v3 file with an alignment of 1 (so tensors lie wherever the
/// previous one ended) holding `tensors` (name, type, shape outermost first,
/// bytes) back to back.
fn write_gguf(dir: &Path, tensors: &[(&str, GgmlType, &[u64], Vec<u8>)]) -> PathBuf {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // one key
    b.extend_from_slice(&gstr("general.alignment"));
    b.extend_from_slice(&4u32.to_le_bytes()); // UINT32
    b.extend_from_slice(&1u32.to_le_bytes());
    let mut data = Vec::new();
    for (name, ty, shape, bytes) in tensors {
        b.extend_from_slice(&gstr(name));
        b.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.id().to_le_bytes());
        b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        data.extend_from_slice(bytes);
    }
    b.extend_from_slice(&data);
    let path = dir.join("model.gguf");
    std::fs::write(&path, b).unwrap();
    path
}

fn le<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

fn f32s(values: &[f32]) -> Vec<u8> {
    le(values, f32::to_le_bytes)
}

fn f16s(values: &[f16]) -> Vec<u8> {
    le(values, f16::to_le_bytes)
}

fn bf16s(values: &[bf16]) -> Vec<u8> {
    le(values, bf16::to_le_bytes)
}

async fn open(path: &Path, backend: Backend) -> MappedModel {
    MappedModel::open(path, common::config(backend, 64 << 20))
        .await
        .unwrap()
}

/// Every tensor name of `index` is found, where the layers say it is.
fn every_name_is_found(index: &ModelIndex) {
    let mut count = 0;
    for (l, layer) in index.layers.iter().enumerate() {
        for (p, spec) in layer.tensors.iter().enumerate() {
            let found = index.find_tensor(&spec.name).unwrap();
            assert_eq!((found.layer, found.position), (l, p), "{}", spec.name);
            assert_eq!(found.spec, spec);
            count += 1;
        }
    }
    assert_eq!(index.tensor_names().count(), count);
    assert!(index
        .tensor_names()
        .all(|n| index.find_tensor(n).unwrap().spec.name == n));
    assert!(index.find_tensor("no.such.tensor").is_none());
}

/// The tensor `name` of the model, fetched through its location.
async fn fetch(model: &MappedModel, name: &str) -> LayerWeights {
    let at = model.index().find_tensor(name).unwrap();
    let weights = model.layer(at.layer).await.unwrap();
    let view = weights.tensors().nth(at.position).unwrap();
    assert_eq!(view.name(), name);
    weights
}

fn view<'a>(weights: &'a LayerWeights, name: &str) -> TensorView<'a> {
    weights.tensor(name).unwrap()
}

fn aligned<T>(view: &TensorView<'_>) -> bool {
    view.bytes().as_ptr() as usize % std::mem::align_of::<T>() == 0
}

// --- Lookup ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmai_names_and_blocks() {
    // Layer i holds `layers.{i}.weight` and `layers.{i}.tail`.
    let m = common::TestModel::new(4, 4096 + 8);
    let index = read_index(&m.path).unwrap();
    assert_eq!(index.format, FileFormat::Tmai);
    every_name_is_found(&index);
    for i in 0..4 {
        assert_eq!(index.block_layer(i), Some(i));
        assert_eq!(index.block_layer_in("layers", i), Some(i));
        assert_eq!(index.layers[i].block(), Some(i));
        assert_eq!(
            index.layers[i].block_key(),
            Some(format!("layers.{i}").as_str())
        );
    }
    assert_eq!(index.block_layer(4), None);
    assert_eq!(index.block_layer_in("blk", 0), None);
    let tail = index.find_tensor("layers.2.tail").unwrap();
    assert_eq!((tail.layer, tail.position), (2, 1));
    assert_eq!(
        (tail.spec.dtype, &tail.spec.shape[..]),
        (DType::F32, &[2][..])
    );

    let model = m.open(common::config(Backend::Pread, 1 << 20)).await;
    let weights = fetch(&model, "layers.2.tail").await;
    let t = view(&weights, "layers.2.tail");
    let want = &m.spec.layer_bytes(2)[4096..];
    assert_eq!(t.bytes(), want);
    // `.tmai` tensors are aligned: borrowed, not copied.
    assert!(matches!(
        t.as_slice_or_copy::<f32>().unwrap(),
        Cow::Borrowed(_)
    ));
    assert_eq!(t.as_f32().unwrap(), &t.to_vec::<f32>().unwrap()[..]);
    assert_eq!(t.to_f32_vec().unwrap(), t.to_vec::<f32>().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_names_and_blocks() {
    let d = dir();
    // Sorted as text, as writers store them: block 10 before block 2.
    let t = |name, shape: &'static [u64]| St {
        name,
        dtype: "F32",
        shape,
        data: f32s(&vec![
            name.len() as f32;
            shape.iter().product::<u64>() as usize
        ]),
    };
    let path = write_safetensors(
        d.path(),
        &[
            t("lm_head.weight", &[2, 2]),
            t("model.embed_tokens.weight", &[2, 2]),
            t("model.layers.0.mlp.up_proj.weight", &[2]),
            t("model.layers.0.self_attn.q_proj.weight", &[2]),
            t("model.layers.1.mlp.up_proj.weight", &[2]),
            t("model.layers.10.mlp.up_proj.weight", &[2]),
            t("model.layers.2.mlp.up_proj.weight", &[3]),
            t("model.norm.weight", &[2]),
        ],
    );
    let index = read_index(&path).unwrap();
    assert_eq!(index.format, FileFormat::Safetensors);
    every_name_is_found(&index);
    for b in [0, 1, 2, 10] {
        let l = index.block_layer(b).unwrap();
        assert_eq!(index.layers[l].name, format!("model.layers.{b}"));
        assert_eq!(index.layers[l].block(), Some(b));
        assert_eq!(index.block_layer_in("model.layers", b), Some(l));
    }
    assert_eq!(index.block_layer(3), None);
    assert_eq!(
        index
            .find_tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .layer,
        index.block_layer(0).unwrap()
    );
    // Layers outside the blocks are found by a tensor they hold.
    let norm = index.find_tensor("model.norm.weight").unwrap();
    assert_eq!(index.layers[norm.layer].name, "model.norm.weight");
    assert_eq!(index.layers[norm.layer].block(), None);

    let model = open(&path, Backend::Mmap).await;
    let weights = fetch(&model, "model.layers.2.mlp.up_proj.weight").await;
    let v = view(&weights, "model.layers.2.mlp.up_proj.weight");
    let len = "model.layers.2.mlp.up_proj.weight".len() as f32;
    assert_eq!(v.to_f32_vec().unwrap(), [len; 3]);

    // MappedModel::tensor: the same bytes by name alone, with every engine.
    for backend in &[
        Backend::Auto,
        Backend::IoUring,
        Backend::Pread,
        Backend::Mmap,
    ] {
        let model = open(&path, *backend).await;
        for name in ["model.layers.2.mlp.up_proj.weight", "model.norm.weight"] {
            let tensor = model.tensor(name).await.unwrap();
            assert_eq!(tensor.view().name(), name);
            let expected = name.len() as f32;
            assert!(tensor
                .view()
                .to_f32_vec()
                .unwrap()
                .iter()
                .all(|&x| x == expected));
            let at = index.find_tensor(name).unwrap();
            assert_eq!(tensor.layer().layer_index(), at.layer);
        }
        let err = model
            .tensor("model.layers.3.mlp.up_proj.weight")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, hyperion::Error::TensorNotFound { name, .. } if name == "model.layers.3.mlp.up_proj.weight"),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("model.layers.3.mlp.up_proj.weight"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gguf_names_and_blocks() {
    let d = dir();
    let q4 = vec![0x11; 18]; // one Q4_0 block: 32 weights
    let path = write_gguf(
        d.path(),
        &[
            (
                "token_embd.weight",
                GgmlType::F32,
                &[2, 2],
                f32s(&[1., 2., 3., 4.]),
            ),
            (
                "blk.0.attn_norm.weight",
                GgmlType::F32,
                &[2],
                f32s(&[5., 6.]),
            ),
            ("blk.0.attn_q.weight", GgmlType::Q4_0, &[32], q4.clone()),
            (
                "blk.1.attn_norm.weight",
                GgmlType::F32,
                &[2],
                f32s(&[7., 8.]),
            ),
            ("output_norm.weight", GgmlType::F32, &[2], f32s(&[9., 10.])),
        ],
    );
    let index = read_index(&path).unwrap();
    assert_eq!(index.format, FileFormat::Gguf);
    every_name_is_found(&index);
    assert_eq!(index.find_tensor("token_embd.weight").unwrap().layer, 0);
    assert_eq!(index.block_layer(0), Some(1));
    assert_eq!(index.block_layer(1), Some(2));
    assert_eq!(index.block_layer_in("blk", 1), Some(2));
    assert_eq!(index.find_tensor("output_norm.weight").unwrap().layer, 3);
    let q = index.find_tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.layer, q.position), (1, 1));
    assert_eq!(q.spec.dtype, DType::Ggml(GgmlType::Q4_0));

    let model = open(&path, Backend::Pread).await;
    let weights = fetch(&model, "blk.0.attn_q.weight").await;
    let q = view(&weights, "blk.0.attn_q.weight");
    assert_eq!(q.bytes(), &q4[..]);
    // Block-quantized: no element type to read it as.
    let err = q.to_vec::<u8>().unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { tensor, .. } if tensor == "blk.0.attn_q.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("not whole bytes"), "{err}");
    assert!(q.to_f32_vec().is_err());
    let norm = view(&weights, "blk.0.attn_norm.weight");
    assert_eq!(norm.to_f32_vec().unwrap(), [5., 6.]);
}

// --- Elements, aligned or not ---------------------------------------------------

/// `f16` values that round-trip through `f32` exactly: zero, negative zero,
/// normals, the largest finite, the smallest normal and subnormal, infinity.
fn halves() -> Vec<f16> {
    let mut v: Vec<f16> = [0.0f32, -0.0, 1.0, -2.5, 0.333_251_95]
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    v.extend([
        f16::MAX,
        f16::MIN_POSITIVE,
        f16::from_bits(1),
        f16::INFINITY,
    ]);
    v
}

fn bhalves() -> Vec<bf16> {
    [0.0f32, -1.0, 3.0e38, 1.0e-38, 0.1, f32::NEG_INFINITY]
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect()
}

fn bits16<T: Copy>(v: &[T], to: fn(T) -> u16) -> Vec<u16> {
    v.iter().map(|&x| to(x)).collect()
}

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_and_bf16_round_trip_through_tmai() {
    let d = dir();
    let path = d.path().join("halves.tmai");
    let (h, b) = (halves(), bhalves());
    let f = [1.5f32, -0.25];
    let wide = [0.1f64, -1e300];
    let ints = [-3i8, 4];
    let (hb, bb, fb) = (f16s(&h), bf16s(&b), f32s(&f));
    let wb = le(&wide, f64::to_le_bytes);
    let ib = le(&ints, i8::to_le_bytes);
    let decl = |name: &str, dtype, n: usize| TensorDecl::new(name, dtype, vec![n as u64]);
    write_tmai(
        &path,
        &[vec![
            (decl("blk.0.h", DType::F16, h.len()), &hb[..]),
            (decl("blk.0.b", DType::BF16, b.len()), &bb[..]),
            (decl("blk.0.f", DType::F32, f.len()), &fb[..]),
            (decl("blk.0.w", DType::F64, wide.len()), &wb[..]),
            (decl("blk.0.i", DType::I8, ints.len()), &ib[..]),
        ]],
    )
    .unwrap();

    let model = open(&path, Backend::Pread).await;
    assert_eq!(model.index().block_layer(0), Some(0));
    let weights = fetch(&model, "blk.0.h").await;

    let hv = view(&weights, "blk.0.h");
    let want_h = bits16(&h, f16::to_bits);
    assert_eq!(bits16(hv.as_f16().unwrap(), f16::to_bits), want_h);
    assert!(matches!(
        hv.as_slice_or_copy::<f16>().unwrap(),
        Cow::Borrowed(_)
    ));
    assert_eq!(bits16(&hv.to_vec::<f16>().unwrap(), f16::to_bits), want_h);
    let as_f32: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
    assert_eq!(bits32(&hv.to_f32_vec().unwrap()), bits32(&as_f32));
    assert_eq!(hv.to_f32_vec().unwrap()[..4], [0.0, -0.0, 1.0, -2.5]);
    assert!(hv.as_bf16().is_none() && hv.as_f32().is_none());
    // Same size, so the raw bits read too.
    assert_eq!(hv.as_slice::<u16>().unwrap(), &want_h[..]);

    let bv = view(&weights, "blk.0.b");
    let want_b = bits16(&b, bf16::to_bits);
    assert_eq!(bits16(bv.as_bf16().unwrap(), bf16::to_bits), want_b);
    assert_eq!(bits16(&bv.to_vec::<bf16>().unwrap(), bf16::to_bits), want_b);
    let as_f32: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
    assert_eq!(bits32(&bv.to_f32_vec().unwrap()), bits32(&as_f32));
    assert!(bv.as_f16().is_none());

    assert_eq!(view(&weights, "blk.0.f").to_f32_vec().unwrap(), f);
    assert_eq!(
        view(&weights, "blk.0.w").to_f32_vec().unwrap(),
        [0.1f32, f32::NEG_INFINITY]
    );
    assert_eq!(view(&weights, "blk.0.i").to_vec::<i8>().unwrap(), ints);

    // Wrong types are errors that name the tensor and the reason.
    let err = hv.to_vec::<u32>().unwrap_err();
    match &err {
        Error::DTypeMismatch {
            tensor,
            dtype,
            requested,
            ..
        } => {
            assert_eq!(tensor, "blk.0.h");
            assert_eq!(*dtype, DType::F16);
            assert_eq!(*requested, "u32");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        err.to_string(),
        "tensor \"blk.0.h\" of dtype F16 cannot be read as u32: its elements are 2 bytes, a u32 is 4"
    );
    assert!(hv.as_slice_or_copy::<f32>().is_err());
    let err = view(&weights, "blk.0.i").to_f32_vec().unwrap_err();
    assert!(err.to_string().contains("\"blk.0.i\" of dtype I8"), "{err}");
}

/// Checks the element reads of a layer whose `w` (F32), `h` (F16) and `b`
/// (BF16) may be misaligned; returns whether any of them was.
fn check_elements(weights: &LayerWeights, w: &[f32], h: &[f16], b: &[bf16]) -> bool {
    let wv = view(weights, "blk.0.w");
    let hv = view(weights, "blk.0.h");
    let bv = view(weights, "blk.0.b");
    // Whatever the alignment, the copies are the bytes reinterpreted.
    let reinterpreted: Vec<u32> = wv
        .bytes()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(wv.to_vec::<u32>().unwrap(), reinterpreted);
    assert_eq!(wv.to_vec::<f32>().unwrap(), w);
    assert_eq!(wv.to_f32_vec().unwrap(), w);
    assert_eq!(&*wv.as_slice_or_copy::<f32>().unwrap(), w);
    assert_eq!(
        bits16(&hv.to_vec::<f16>().unwrap(), f16::to_bits),
        bits16(h, f16::to_bits)
    );
    assert_eq!(
        bits16(&bv.to_vec::<bf16>().unwrap(), bf16::to_bits),
        bits16(b, bf16::to_bits)
    );
    let h32: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
    let b32: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
    assert_eq!(bits32(&hv.to_f32_vec().unwrap()), bits32(&h32));
    assert_eq!(bits32(&bv.to_f32_vec().unwrap()), bits32(&b32));

    // The zero-copy views exactly when aligned; the Cow borrows exactly then.
    assert_eq!(wv.as_f32().is_some(), aligned::<f32>(&wv));
    assert_eq!(hv.as_f16().is_some(), aligned::<f16>(&hv));
    assert_eq!(bv.as_bf16().is_some(), aligned::<bf16>(&bv));
    assert_eq!(
        matches!(wv.as_slice_or_copy::<f32>().unwrap(), Cow::Borrowed(_)),
        aligned::<f32>(&wv)
    );
    assert_eq!(
        matches!(hv.as_slice_or_copy::<f16>().unwrap(), Cow::Borrowed(_)),
        aligned::<f16>(&hv)
    );
    !(aligned::<f32>(&wv) && aligned::<f16>(&hv) && aligned::<bf16>(&bv))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaligned_safetensors_tensors_are_copied() {
    let d = dir();
    let w = [1.5f32, -2.0, 1e-3];
    let (h, b) = (halves(), bhalves());
    // A one-byte tensor first puts the rest of the layer at odd offsets
    // (the data section starts 8-aligned).
    let path = write_safetensors(
        d.path(),
        &[
            St {
                name: "blk.0.mask",
                dtype: "U8",
                shape: &[1],
                data: vec![1],
            },
            St {
                name: "blk.0.w",
                dtype: "F32",
                shape: &[3],
                data: f32s(&w),
            },
            St {
                name: "blk.0.h",
                dtype: "F16",
                shape: &[h.len() as u64],
                data: f16s(&h),
            },
            St {
                name: "blk.0.b",
                dtype: "BF16",
                shape: &[b.len() as u64],
                data: bf16s(&b),
            },
        ],
    );
    let index = read_index(&path).unwrap();
    assert_eq!(index.layers.len(), 1);
    assert_eq!(index.find_tensor("blk.0.w").unwrap().spec.offset, 1);
    for backend in [Backend::Mmap, Backend::Pread] {
        let model = open(&path, backend).await;
        let weights = fetch(&model, "blk.0.w").await;
        let misaligned = check_elements(&weights, &w, &h, &b);
        if backend == Backend::Mmap {
            // A mapping keeps the file's alignment, so `w` is at an odd address.
            assert!(misaligned, "mmap: the tensors should be misaligned");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaligned_gguf_tensors_are_copied() {
    let d = dir();
    let w = [0.5f32, 4.0, -8.0];
    let (h, b) = (halves(), bhalves());
    let path = write_gguf(
        d.path(),
        &[
            ("blk.0.mask", GgmlType::I8, &[1], vec![1]),
            ("blk.0.w", GgmlType::F32, &[3], f32s(&w)),
            ("blk.0.h", GgmlType::F16, &[h.len() as u64], f16s(&h)),
            ("blk.0.pad", GgmlType::I8, &[1], vec![0]),
            ("blk.0.b", GgmlType::BF16, &[b.len() as u64], bf16s(&b)),
        ],
    );
    // The data section starts wherever the metadata ends (alignment 1), so
    // which tensors are misaligned depends on the metadata's length; but with
    // one byte between `h` and `b`, one of those two always is.
    let index = read_index(&path).unwrap();
    assert_eq!(index.layers.len(), 1);
    let at = |name| index.find_tensor(name).unwrap().spec.offset;
    assert_eq!((at("blk.0.w"), at("blk.0.h"), at("blk.0.b")), (1, 13, 32));
    for backend in [Backend::Mmap, Backend::Pread] {
        let model = open(&path, backend).await;
        let weights = fetch(&model, "blk.0.h").await;
        let misaligned = check_elements(&weights, &w, &h, &b);
        if backend == Backend::Mmap {
            assert!(misaligned, "mmap: some tensor should be misaligned");
        }
    }
}
