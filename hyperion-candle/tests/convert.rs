//! `convert`: plain dtypes become candle tensors with the same values,
//! tensors misaligned inside their packed layer are converted all the same
//! (candle would panic on them), and unsupported dtypes are typed errors.

use candle_core::{DType as CandleDType, Device};
use hyperion::half::{bf16, f16};
use hyperion::{MappedModel, MmapConfig};
use hyperion_candle::convert;

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{write_safetensors, St};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_dtypes_convert_with_their_values_aligned_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let halves: Vec<f16> = [1.5f32, -2.0, 65504.0].map(f16::from_f32).to_vec();
    let bhalves: Vec<bf16> = [0.25f32, -3.5, 1e30].map(bf16::from_f32).to_vec();
    let floats = [1.0f32, -0.5, 3.25, 7.0];
    let le = |v: &[u8]| v.to_vec();
    // One layer ("w.*"): the f16 tensor is 6 bytes, so the bf16 one starts at
    // byte 6 and the f32 one at byte 12 (+2 for the u8 pair): misaligned.
    let path = write_safetensors(
        dir.path(),
        &[
            St {
                name: "w.a",
                dtype: "F16",
                shape: &[3],
                data: le(bytemuck_cast(&halves)),
            },
            St {
                name: "w.b",
                dtype: "BF16",
                shape: &[3],
                data: le(bytemuck_cast(&bhalves)),
            },
            St {
                name: "w.c",
                dtype: "U8",
                shape: &[2],
                data: vec![9, 8],
            },
            St {
                name: "w.d",
                dtype: "F32",
                shape: &[2, 2],
                data: le(bytemuck_cast(&floats)),
            },
        ],
    );
    let model = MappedModel::open(&path, MmapConfig::default())
        .await
        .unwrap();
    let a = model.tensor("w.a").await.unwrap();
    let t = convert::to_tensor(&a.view(), &Device::Cpu).unwrap();
    assert_eq!(t.dtype(), CandleDType::F16);
    assert_eq!(t.to_vec1::<f16>().unwrap(), halves);
    let b = model.tensor("w.b").await.unwrap();
    let t = convert::to_tensor(&b.view(), &Device::Cpu).unwrap();
    assert_eq!(t.to_vec1::<bf16>().unwrap(), bhalves);
    let d = model.tensor("w.d").await.unwrap();
    assert!(
        d.view().bytes().as_ptr() as usize % 4 != 0,
        "the test wants a misaligned f32 tensor"
    );
    let t = convert::to_tensor(&d.view(), &Device::Cpu).unwrap();
    assert_eq!(t.dims(), [2, 2]);
    assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), floats);
    // As an unquantized QTensor too (candle asserts alignment there).
    let q = convert::to_qtensor(&d.view(), &Device::Cpu).unwrap();
    let back = q.dequantize(&Device::Cpu).unwrap();
    assert_eq!(
        back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        floats
    );
    // Dequantized: f16 to f32.
    let t = convert::to_dequantized(&a.view(), &Device::Cpu).unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), [1.5, -2.0, 65504.0]);
    // U8 has no GGML type: a typed error naming the tensor.
    let c = model.tensor("w.c").await.unwrap();
    let err = convert::to_qtensor(&c.view(), &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, hyperion_candle::Error::UnsupportedDType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("w.c"), "{err}");
}

fn bytemuck_cast<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}
