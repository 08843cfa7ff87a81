//! A quantized matmul that reads its weights in place, from the layer
//! buffer Hyperion read them into: no copy into candle, no conversion per
//! pass.
//!
//! candle's `QMatMul` owns its blocks (a `Vec` per tensor), so a block
//! streamed through Hyperion would be copied into candle on every pass that
//! reads it: at 2 MB per block and 30 blocks a token, that copy costs as
//! much as a third of the compute of a small model. [`LayerQMatMul`] runs
//! candle's own CPU kernel (`k_quants::matmul`, the one `QMatMul` calls for
//! these types) over the layer's bytes instead, holding the
//! [`LayerWeights`] for as long as it lives, so the logits are bit-identical
//! to `QMatMul`'s.
//!
//! In place only where that is the kernel candle would run: on x86_64, for
//! `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q2_K`, `Q3_K` and `Q5_K`, with `f32`
//! activations. candle 0.11 runs `Q4_K`, `Q6_K` and `Q8_0` through repacked
//! tiles it builds from its own copy (a different summation order), and its
//! aarch64 kernels repack other types; those, and tensors whose bytes are
//! not aligned for their block type, are converted with one copy
//! ([`Linear::from_view`] decides).

use candle_core::backend::BackendStorage;
use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Module, Shape, Tensor};
use hyperion::{LayerWeights, TensorView};

use crate::convert;
use crate::error::{Error, Result};

/// A weight matrix for `x · Wᵀ`: in place over a layer, or converted.
#[derive(Debug)]
pub enum Linear {
    /// Read in place from the layer buffer ([`LayerQMatMul`]).
    InPlace(LayerQMatMul),
    /// Copied into candle's own quantized (or dequantized float) form.
    Converted(QMatMul),
    /// A dense float weight, multiplied as `candle_nn::Linear` does.
    Dense(candle_nn::Linear),
}

impl Linear {
    /// The GGUF-style weight `view` (of `weights`' layer) as a matmul: in
    /// place where [`LayerQMatMul`] can, else converted with one copy.
    ///
    /// # Errors
    /// As [`convert::to_qtensor`].
    pub fn from_view(
        weights: &LayerWeights,
        view: &TensorView<'_>,
        device: &Device,
    ) -> Result<Self> {
        if let Some(in_place) = LayerQMatMul::new(weights, view, device)? {
            return Ok(Linear::InPlace(in_place));
        }
        Ok(Linear::Converted(QMatMul::from_qtensor(
            convert::to_qtensor(view, device)?,
        )?))
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::InPlace(m) => m.forward(xs),
            Linear::Converted(m) => m.forward(xs),
            Linear::Dense(m) => m.forward(xs),
        }
    }
}

/// The GGML block types read in place, and the kernel for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q5K,
}

impl Kernel {
    /// The kernel for `dtype`, where candle itself would run `k_quants::matmul`.
    fn of(dtype: GgmlDType) -> Option<Self> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        Some(match dtype {
            GgmlDType::Q4_0 => Kernel::Q4_0,
            GgmlDType::Q4_1 => Kernel::Q4_1,
            GgmlDType::Q5_0 => Kernel::Q5_0,
            GgmlDType::Q5_1 => Kernel::Q5_1,
            GgmlDType::Q2K => Kernel::Q2K,
            GgmlDType::Q3K => Kernel::Q3K,
            GgmlDType::Q5K => Kernel::Q5K,
            _ => return None,
        })
    }

    /// Size and alignment of the block type, as Rust lays it out.
    fn layout(self) -> (usize, usize) {
        fn of<T>() -> (usize, usize) {
            (std::mem::size_of::<T>(), std::mem::align_of::<T>())
        }
        match self {
            Kernel::Q4_0 => of::<BlockQ4_0>(),
            Kernel::Q4_1 => of::<BlockQ4_1>(),
            Kernel::Q5_0 => of::<BlockQ5_0>(),
            Kernel::Q5_1 => of::<BlockQ5_1>(),
            Kernel::Q2K => of::<BlockQ2K>(),
            Kernel::Q3K => of::<BlockQ3K>(),
            Kernel::Q5K => of::<BlockQ5K>(),
        }
    }
}

/// A quantized weight matrix (`n` rows of `k` values, GGML's transposed
/// layout) multiplied in place, over the bytes of the layer it holds.
pub struct LayerQMatMul {
    weights: LayerWeights,
    /// The tensor's position in its layer ([`LayerWeights::tensor_at`]).
    position: usize,
    kernel: Kernel,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for LayerQMatMul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerQMatMul")
            .field("layer", &self.weights.layer_index())
            .field("position", &self.position)
            .field("kernel", &self.kernel)
            .field("shape", &(self.n, self.k))
            .finish()
    }
}

impl LayerQMatMul {
    /// `view` (a tensor of `weights`) multiplied in place, or `None` when it
    /// must be converted: not a CPU device, a type without an in-place
    /// kernel, or bytes not aligned for the block type.
    ///
    /// # Errors
    /// [`Error::Candle`] for a shape that is not whole blocks of a matrix,
    /// or bytes of the wrong length (a checked file never has either).
    pub fn new(
        weights: &LayerWeights,
        view: &TensorView<'_>,
        device: &Device,
    ) -> Result<Option<Self>> {
        let Some(ggml) = convert::ggml_dtype(view.dtype()).filter(|_| device.is_cpu()) else {
            return Ok(None);
        };
        let Some(kernel) = Kernel::of(ggml) else {
            return Ok(None);
        };
        let (size, align) = kernel.layout();
        let bytes = view.bytes();
        if size != ggml.type_size() || bytes.as_ptr() as usize % align != 0 {
            return Ok(None);
        }
        let dims = convert::dims(view)?;
        // GGML's `[k, n]` is candle's `(n, k)`: n rows of k values.
        let &[n, k] = dims.as_slice() else {
            return Err(candle_core::Error::Msg(format!(
                "{}: a quantized matmul needs a matrix, not shape {dims:?}",
                view.name()
            ))
            .into());
        };
        let blocks_per_row = k / ggml.block_size();
        if k % ggml.block_size() != 0 || bytes.len() != n * blocks_per_row * size {
            return Err(candle_core::Error::Msg(format!(
                "{}: {} bytes are not {n} rows of {k} {ggml:?} values",
                view.name(),
                bytes.len()
            ))
            .into());
        }
        let position = (0..)
            .map_while(|i| weights.tensor_at(i))
            .position(|t| t.name() == view.name())
            .ok_or_else(|| Error::MissingTensor {
                name: view.name().to_string(),
            })?;
        Ok(Some(LayerQMatMul {
            weights: weights.clone(),
            position,
            kernel,
            n,
            k,
        }))
    }

    /// The tensor's bytes, inside the held layer.
    fn bytes(&self) -> &[u8] {
        self.weights
            .tensor_at(self.position)
            .map(|t| t.bytes())
            .unwrap_or_default()
    }
}

impl Module for LayerQMatMul {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for LayerQMatMul {
    fn name(&self) -> &'static str {
        "hyperion-qmatmul"
    }

    /// As candle's `QTensor` op for `f32` activations: `dst = xs · Wᵀ`.
    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("input tensor is not contiguous {layout:?}")
        }
        let src_shape = layout.shape();
        let mut dst_dims = src_shape.dims().to_vec();
        if dst_dims.len() < 2 || dst_dims.pop() != Some(self.k) {
            candle_core::bail!(
                "input tensor {layout:?} incompatible with ({}, {})",
                self.n,
                self.k
            )
        }
        dst_dims.push(self.n);
        let dst_shape = Shape::from(dst_dims);
        let CpuStorage::F32(lhs) = storage else {
            candle_core::bail!(
                "in-place quantized matmul takes f32 activations, not {:?}",
                storage.dtype()
            )
        };
        let lhs = &lhs[layout.start_offset()..layout.start_offset() + src_shape.elem_count()];
        let mut dst = vec![0f32; dst_shape.elem_count()];
        let mkn = (dst_shape.elem_count() / self.n, self.k, self.n);
        let bytes = self.bytes();
        match self.kernel {
            Kernel::Q4_0 => k_quants::matmul(mkn, lhs, blocks::<BlockQ4_0>(bytes)?, &mut dst)?,
            Kernel::Q4_1 => k_quants::matmul(mkn, lhs, blocks::<BlockQ4_1>(bytes)?, &mut dst)?,
            Kernel::Q5_0 => k_quants::matmul(mkn, lhs, blocks::<BlockQ5_0>(bytes)?, &mut dst)?,
            Kernel::Q5_1 => k_quants::matmul(mkn, lhs, blocks::<BlockQ5_1>(bytes)?, &mut dst)?,
            Kernel::Q2K => k_quants::matmul(mkn, lhs, blocks::<BlockQ2K>(bytes)?, &mut dst)?,
            Kernel::Q3K => k_quants::matmul(mkn, lhs, blocks::<BlockQ3K>(bytes)?, &mut dst)?,
            Kernel::Q5K => k_quants::matmul(mkn, lhs, blocks::<BlockQ5K>(bytes)?, &mut dst)?,
        }
        Ok((CpuStorage::F32(dst), dst_shape))
    }
}

/// `bytes` as GGML blocks of type `T`.
///
/// Only called by [`LayerQMatMul::cpu_fwd`] with the `T` of its kernel, on
/// bytes [`LayerQMatMul::new`] checked (so the error is unreachable).
fn blocks<T: GgmlType>(bytes: &[u8]) -> candle_core::Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if bytes.as_ptr() as usize % std::mem::align_of::<T>() != 0 || bytes.len() % size != 0 {
        candle_core::bail!("{:?} blocks misaligned or cut short in the layer", T::DTYPE)
    }
    // SAFETY: the pointer is aligned for `T` and the slice covers
    // `bytes.len() / size` whole `T`s inside `bytes` (checked above), which
    // stay borrowed, immutable, for the returned lifetime. Every block type
    // with a kernel here is a `repr(C)` struct of `f16` and `u8`/`i8` arrays
    // only, with no padding (`LayerQMatMul::new` checked that its size is
    // GGML's block size), so every bit pattern is a valid `T`.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}
