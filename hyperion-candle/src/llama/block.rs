//! One transformer block's weights, built from its layer for a pass, under
//! either naming: GGUF's (`blk.N.attn_q.weight`, quantized) or Hugging
//! Face's (`model.layers.N.self_attn.q_proj.weight`, dense float).

use candle_core::{DType, Device, Tensor};
use hyperion::{LayerWeights, TensorView};

use crate::convert;
use crate::error::{Error, Result};
use crate::qmatmul::Linear;

/// Where a model's tensors come from, and so what they are called and how
/// they are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// llama.cpp's names and GGML block types; computes in `f32`, with
    /// interleaved rotary embeddings (as candle's `quantized_llama`).
    Gguf,
    /// Hugging Face names, dense weights in `dtype`; computes in `dtype`
    /// with attention in `f32` and half-split rotary embeddings (as
    /// candle's `llama`).
    Hf { dtype: DType },
}

impl Flavor {
    /// The name of a block's tensor, from its GGUF suffix.
    pub(crate) fn block_tensor(self, block: usize, gguf_suffix: &str) -> String {
        match self {
            Flavor::Gguf => format!("blk.{block}.{gguf_suffix}"),
            Flavor::Hf { .. } => {
                let hf = match gguf_suffix {
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    other => other,
                };
                format!("model.layers.{block}.{hf}")
            }
        }
    }

    /// The token embedding's name.
    pub(crate) fn embedding(self) -> &'static str {
        match self {
            Flavor::Gguf => "token_embd.weight",
            Flavor::Hf { .. } => "model.embed_tokens.weight",
        }
    }

    /// The final norm's name.
    pub(crate) fn final_norm(self) -> &'static str {
        match self {
            Flavor::Gguf => "output_norm.weight",
            Flavor::Hf { .. } => "model.norm.weight",
        }
    }

    /// The output head's name.
    pub(crate) fn output(self) -> &'static str {
        match self {
            Flavor::Gguf => "output.weight",
            Flavor::Hf { .. } => "lm_head.weight",
        }
    }

    /// The dtype activations are computed in.
    pub(crate) fn dtype(self) -> DType {
        match self {
            Flavor::Gguf => DType::F32,
            Flavor::Hf { dtype } => dtype,
        }
    }

    /// A norm's weight: dequantized to `f32` (GGUF), or in the compute dtype.
    pub(crate) fn norm_weight(self, view: &TensorView<'_>, device: &Device) -> Result<Tensor> {
        match self {
            Flavor::Gguf => convert::to_dequantized(view, device),
            Flavor::Hf { dtype } => Ok(convert::to_tensor(view, device)?.to_dtype(dtype)?),
        }
    }

    /// A weight matrix: read in place or converted (GGUF), or a dense
    /// `candle_nn::Linear` in the compute dtype (one copy).
    pub(crate) fn linear(
        self,
        weights: &LayerWeights,
        view: &TensorView<'_>,
        device: &Device,
    ) -> Result<Linear> {
        match self {
            Flavor::Gguf => Linear::from_view(weights, view, device),
            Flavor::Hf { dtype } => Ok(Linear::Dense(candle_nn::Linear::new(
                convert::to_tensor(view, device)?.to_dtype(dtype)?,
                None,
            ))),
        }
    }
}

/// An RMS norm with its weight resident, as candle-transformers' `RmsNorm`
/// (whose forward on contiguous input is this).
pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    pub(crate) eps: f32,
}

impl RmsNorm {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// One transformer block's weights for one pass.
pub(crate) struct Block {
    pub(crate) wq: Linear,
    pub(crate) wk: Linear,
    pub(crate) wv: Linear,
    pub(crate) wo: Linear,
    pub(crate) w_gate: Linear,
    pub(crate) w_down: Linear,
    pub(crate) w_up: Linear,
    pub(crate) attention_norm: RmsNorm,
    pub(crate) ffn_norm: RmsNorm,
}

impl Block {
    /// Builds block `block` from its layer's `weights`.
    pub(crate) fn from_layer(
        weights: &LayerWeights,
        flavor: Flavor,
        block: usize,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        let find = |suffix: &str| {
            let name = flavor.block_tensor(block, suffix);
            weights.tensor(&name).ok_or(Error::MissingTensor { name })
        };
        let linear = |suffix: &str| flavor.linear(weights, &find(suffix)?, device);
        let norm = |suffix: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: flavor.norm_weight(&find(suffix)?, device)?,
                eps: eps as f32,
            })
        };
        Ok(Block {
            wq: linear("attn_q.weight")?,
            wk: linear("attn_k.weight")?,
            wv: linear("attn_v.weight")?,
            wo: linear("attn_output.weight")?,
            w_gate: linear("ffn_gate.weight")?,
            w_down: linear("ffn_down.weight")?,
            w_up: linear("ffn_up.weight")?,
            attention_norm: norm("attn_norm.weight")?,
            ffn_norm: norm("ffn_norm.weight")?,
        })
    }

    /// Whether any matrix is read in place (the block holds its layer).
    pub(crate) fn reads_in_place(&self) -> bool {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_down,
            &self.w_up,
        ]
        .iter()
        .any(|l| matches!(l, Linear::InPlace(_)))
    }
}
