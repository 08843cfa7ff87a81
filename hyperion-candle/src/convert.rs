//! Hyperion tensors as candle tensors.
//!
//! | Hyperion dtype | candle | copies |
//! | --- | --- | --- |
//! | `F32`, `F16`, `BF16`, `F64`, `U8`, `U32`, `I16`, `I32`, `I64`, `F8E4M3` | [`Tensor`] of the same dtype ([`to_tensor`]) | one: candle's CPU storage owns a `Vec` |
//! | GGML `F32`, `F16`, `BF16`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q8_1`, `Q2_K` … `Q6_K`, `Q8_K` | [`QTensor`] of that [`GgmlDType`] ([`to_qtensor`]) | one: candle's quantized CPU storage owns a `Vec` of blocks |
//! | other GGML types (`IQ*`, `TQ*`, `MXFP4` …), `I8`, `U16`, `U64`, `Bool`, other 8/6/4-bit floats, `C64` | — | [`Error::UnsupportedDType`] |
//!
//! No conversion is zero-copy: candle's CPU tensors cannot borrow memory
//! they do not own. The one copy is also the moment a converted tensor stops
//! depending on the layer: the [`LayerWeights`](hyperion::LayerWeights) can
//! be released as soon as its tensors are converted.
//!
//! Tensors whose bytes are not aligned for their element or block type
//! inside the layer (safetensors and GGUF pack tensors back to back) are
//! first copied into an aligned buffer, because candle requires alignment;
//! that is the only case with a second copy.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType as CandleDType, Device, Tensor};
use hyperion::{DType, GgmlType, TensorView};

use crate::error::{Error, Result};

/// The candle dtype of a plain Hyperion dtype, if candle has it.
pub fn candle_dtype(dtype: DType) -> Option<CandleDType> {
    Some(match plain(dtype) {
        DType::U8 => CandleDType::U8,
        DType::U32 => CandleDType::U32,
        DType::I16 => CandleDType::I16,
        DType::I32 => CandleDType::I32,
        DType::I64 => CandleDType::I64,
        DType::F16 => CandleDType::F16,
        DType::BF16 => CandleDType::BF16,
        DType::F32 => CandleDType::F32,
        DType::F64 => CandleDType::F64,
        DType::F8E4M3 => CandleDType::F8E4M3,
        _ => return None,
    })
}

/// The candle GGML dtype of a Hyperion dtype, if candle's quantized tensors
/// have it (the plain `F32`, `F16` and `BF16` included).
pub fn ggml_dtype(dtype: DType) -> Option<GgmlDType> {
    let ggml = match dtype {
        DType::Ggml(t) => t,
        d => GgmlType::of_dtype(d)?,
    };
    Some(match ggml {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        GgmlType::Q8_K => GgmlDType::Q8K,
        _ => return None,
    })
}

/// `DType::Ggml` of a plain GGML type as the plain dtype (a `.tmai` file may
/// record either).
fn plain(dtype: DType) -> DType {
    match dtype {
        DType::Ggml(t) => t.plain_dtype().unwrap_or(dtype),
        d => d,
    }
}

/// The tensor's shape as candle dimensions.
pub fn dims(view: &TensorView<'_>) -> Result<Vec<usize>> {
    view.shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::TooLarge {
            tensor: view.name().to_string(),
            shape: view.shape().to_vec(),
        })
}

/// The tensor as a candle [`Tensor`] on `device`, same dtype and shape, with
/// one copy of its bytes.
///
/// # Errors
/// [`Error::UnsupportedDType`] for a GGML block type (use [`to_qtensor`], or
/// [`to_dequantized`]) or a dtype candle lacks; [`Error::TooLarge`].
///
/// # Examples
///
/// ```
/// # use hyperion::{synth, MappedModel, MmapConfig};
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("model.tmai");
/// # synth::write(&path, &synth::SynthSpec { layers: 2, layer_size: 64 << 10, ..Default::default() })?;
/// let model = MappedModel::open(&path, MmapConfig::default()).await?;
/// let weights = model.layer(0).await?;
/// let view = weights.tensors().next().unwrap();
/// let tensor = hyperion_candle::convert::to_tensor(&view, &candle_core::Device::Cpu)?;
/// assert_eq!(tensor.elem_count() * 4, view.bytes().len());
/// # Ok(())
/// # }
/// ```
pub fn to_tensor(view: &TensorView<'_>, device: &Device) -> Result<Tensor> {
    let dtype = candle_dtype(view.dtype()).ok_or_else(|| Error::UnsupportedDType {
        tensor: view.name().to_string(),
        dtype: view.dtype(),
        reason: match view.dtype() {
            DType::Ggml(_) => "a GGML block type: convert it with to_qtensor or to_dequantized",
            _ => "candle has no such dtype",
        },
    })?;
    // `from_raw_buffer` copies the bytes as they are (any alignment).
    Ok(Tensor::from_raw_buffer(
        view.bytes(),
        dtype,
        &dims(view)?,
        device,
    )?)
}

/// The tensor as a candle [`QTensor`] on `device`: GGML block types as they
/// are (for `QMatMul`), and `F32`/`F16`/`BF16` as unquantized `QTensor`s.
/// One copy of the bytes (two if they are misaligned in the layer).
///
/// # Errors
/// [`Error::UnsupportedDType`] for a type candle's quantized tensors lack;
/// [`Error::Candle`] if candle refuses the shape (a last dimension that is
/// not a whole number of blocks); [`Error::TooLarge`].
pub fn to_qtensor(view: &TensorView<'_>, device: &Device) -> Result<QTensor> {
    let ggml = ggml_dtype(view.dtype()).ok_or_else(|| Error::UnsupportedDType {
        tensor: view.name().to_string(),
        dtype: view.dtype(),
        reason: "candle's quantized tensors have no such type",
    })?;
    let dims = dims(view)?;
    let mut scratch = Vec::new();
    let bytes = aligned(view.bytes(), &mut scratch);
    // `from_data` copies the blocks into candle's own storage.
    let storage = QStorage::from_data(Cow::Borrowed(bytes), device, ggml)?;
    Ok(QTensor::new(storage, dims)?)
}

/// The tensor as an `F32` candle [`Tensor`], dequantized if it is a GGML
/// block type (as candle's `QTensor::dequantize`) and converted if it is
/// another float type.
///
/// # Errors
/// As [`to_tensor`] and [`to_qtensor`].
pub fn to_dequantized(view: &TensorView<'_>, device: &Device) -> Result<Tensor> {
    match view.dtype() {
        DType::Ggml(t) if t.plain_dtype().is_none() => {
            Ok(to_qtensor(view, device)?.dequantize(device)?)
        }
        _ => Ok(to_tensor(view, device)?.to_dtype(CandleDType::F32)?),
    }
}

/// `bytes` if they are aligned for every candle block type, else a copy of
/// them in `scratch` (candle asserts alignment, and would panic). Every
/// candle block type is a `repr(C)` struct of `f16`, `f32` and `u8` fields,
/// so 8-byte alignment covers them all.
fn aligned<'a>(bytes: &'a [u8], scratch: &'a mut Vec<u64>) -> &'a [u8] {
    if bytes.as_ptr() as usize % std::mem::align_of::<u64>() == 0 {
        return bytes;
    }
    scratch.clear();
    scratch.resize(bytes.len().div_ceil(8), 0);
    let words: &mut [u8] = bytemuck::cast_slice_mut(scratch.as_mut_slice());
    words[..bytes.len()].copy_from_slice(bytes);
    &words[..bytes.len()]
}
