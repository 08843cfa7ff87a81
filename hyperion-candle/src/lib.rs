//! Hyperion for [candle](https://github.com/huggingface/candle): run candle
//! models on weights that Hyperion reads, checks and budgets.
//!
//! - [`convert`]: a Hyperion [`TensorView`](hyperion::TensorView) as a
//!   candle [`Tensor`](candle_core::Tensor) (plain dtypes) or
//!   [`QTensor`](candle_core::quantized::QTensor) (GGML block types).
//! - [`HyperionBackend`]: a `candle_nn::VarBuilder` backend over a
//!   [`MappedModel`](hyperion::MappedModel), so any candle model that is
//!   built from a `VarBuilder` loads its weights through Hyperion, from
//!   `.tmai`, safetensors (single or sharded) or GGUF.
//!
//! candle owns the memory of its CPU tensors, so every conversion copies the
//! bytes once, out of the layer buffer and into candle's storage; nothing
//! here copies twice (but for tensors misaligned in their layer).
//! - [`qmatmul`]: the exception, a quantized matmul that runs candle's own
//!   kernel over the layer buffer in place, for the block types where that
//!   is the kernel candle would run.
//!
//! - [`llama`]: a Llama-family model (GGUF) whose transformer blocks stream
//!   through Hyperion during the forward pass, within its memory budget, with
//!   the same output as candle-transformers' eager `quantized_llama`;
//!   [`generate`], [`sampling`] and [`tokenizer`] turn it into text.
//!
//! The repository's `docs/candle.md` says what is streamed and what stays
//! resident, what was measured, and how to add an architecture.

pub mod backend;
pub mod convert;
mod error;
pub mod generate;
pub mod llama;
pub mod qmatmul;
pub mod sampling;
pub mod tokenizer;

pub use backend::HyperionBackend;
pub use error::{Error, Result};
