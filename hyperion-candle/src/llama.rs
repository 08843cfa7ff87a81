//! A Llama-family transformer (the llama.cpp `llama` architecture: Llama
//! 2/3, SmolLM/SmolLM2, TinyLlama, Mistral-style grouped-query attention)
//! whose blocks stream through Hyperion, from GGUF.
//!
//! The math is candle-transformers' `quantized_llama` (same candle kernels,
//! same order of operations), so the logits are the same as that eager
//! model's; what differs is where the weights live:
//!
//! - **Resident**, read once at [`StreamedLlama::open`] and then dropped
//!   from Hyperion's cache: the token embedding (kept quantized, each row
//!   dequantized when it is looked up), the final norm, and the output head (the embedding's
//!   quantized table when the head is tied). Also resident: the KV cache.
//! - **Streamed**, each forward pass: every transformer block's layer is
//!   fetched with [`MappedModel::stream_layers`] (reading ahead while the
//!   current block computes), converted to candle's quantized tensors (one
//!   copy), used, and let go. Hyperion keeps as many blocks cached as
//!   `max_cache_size` allows; the rest are read again on the next pass.
//!   When the budget holds the whole model, a block's converted form is
//!   kept instead, and its layer released, after the first pass: later
//!   passes neither read nor convert it, and the memory in use stays the
//!   model's size.
//!
//! Only GGUF files with `general.architecture = "llama"` and without
//! mixture-of-experts are accepted; anything else is a one-line error that
//! says what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use futures::StreamExt;
use hyperion::format::gguf::{read_header, GgufHeader};
use hyperion::{LayerWeights, MappedModel, MmapConfig};

use crate::convert;
use crate::error::{Error, Result};
use crate::qmatmul::Linear;

/// The longest sequence (prompt plus generated tokens) the rotary tables
/// cover, as in candle's `quantized_llama`.
pub const MAX_SEQ_LEN: usize = 4096;

/// The hyper-parameters of a `llama` GGUF, from its metadata.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlamaConfig {
    /// `llama.block_count`: transformer blocks.
    pub block_count: usize,
    /// `llama.embedding_length`: the hidden size.
    pub embedding_length: usize,
    /// `llama.attention.head_count`.
    pub head_count: usize,
    /// `llama.attention.head_count_kv` (grouped-query attention when fewer
    /// than `head_count`).
    pub head_count_kv: usize,
    /// `llama.rope.dimension_count`: rotary dimensions per head.
    pub rope_dimension: usize,
    /// `llama.rope.freq_base` (10,000 when absent).
    pub rope_freq_base: f32,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f64,
    /// `llama.context_length`, if the file says.
    pub context_length: Option<usize>,
}

impl LlamaConfig {
    /// Reads the config from a GGUF header.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the first missing or unsupported key.
    pub fn from_gguf(path: &Path, header: &GgufHeader) -> Result<Self> {
        let unsupported = |what: String| Error::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let arch = header
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| unsupported("no general.architecture key".into()))?;
        if arch != "llama" {
            return Err(unsupported(format!(
                "architecture {arch:?} (only \"llama\" is supported)"
            )));
        }
        let int = |key: &str| -> Result<usize> {
            header
                .get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| unsupported(format!("no integer {key} key")))
        };
        if header
            .get("llama.expert_count")
            .and_then(|v| v.as_u64())
            .is_some_and(|n| n > 1)
        {
            return Err(unsupported("mixture-of-experts blocks".into()));
        }
        let config = LlamaConfig {
            block_count: int("llama.block_count")?,
            embedding_length: int("llama.embedding_length")?,
            head_count: int("llama.attention.head_count")?,
            head_count_kv: int("llama.attention.head_count_kv")?,
            rope_dimension: int("llama.rope.dimension_count")?,
            rope_freq_base: header
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rms_norm_eps: header
                .get("llama.attention.layer_norm_rms_epsilon")
                .and_then(|v| v.as_f64())
                .ok_or_else(|| {
                    unsupported("no llama.attention.layer_norm_rms_epsilon key".into())
                })?,
            context_length: int("llama.context_length").ok(),
        };
        if config.head_count == 0
            || config.head_count_kv == 0
            || config.head_count % config.head_count_kv != 0
            || config.embedding_length % config.head_count != 0
        {
            return Err(unsupported(format!(
                "{} heads, {} key/value heads and a hidden size of {}",
                config.head_count, config.head_count_kv, config.embedding_length
            )));
        }
        if header.get("llama.rope.scaling.type").is_some() {
            return Err(unsupported("rope scaling (llama.rope.scaling.*)".into()));
        }
        Ok(config)
    }

    fn head_dim(&self) -> usize {
        self.embedding_length / self.head_count
    }
}

/// An RMS norm with its weight resident, as candle-transformers' `RmsNorm`.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// One transformer block's weights for one pass: its matrices read in place
/// from its layer where candle's kernel allows ([`Linear`]), else converted.
struct Block {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    w_gate: Linear,
    w_down: Linear,
    w_up: Linear,
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
}

impl Block {
    /// Converts the tensors of block `block` (its layer's `weights`).
    fn from_layer(weights: &LayerWeights, block: usize, eps: f64, device: &Device) -> Result<Self> {
        let find = |suffix: &str| {
            let name = format!("blk.{block}.{suffix}");
            weights.tensor(&name).ok_or(Error::MissingTensor { name })
        };
        let q = |suffix: &str| Linear::from_view(weights, &find(suffix)?, device);
        let norm = |suffix: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: convert::to_dequantized(&find(suffix)?, device)?,
                eps: eps as f32,
            })
        };
        Ok(Block {
            wq: q("attn_q.weight")?,
            wk: q("attn_k.weight")?,
            wv: q("attn_v.weight")?,
            wo: q("attn_output.weight")?,
            w_gate: q("ffn_gate.weight")?,
            w_down: q("ffn_down.weight")?,
            w_up: q("ffn_up.weight")?,
            attention_norm: norm("attn_norm.weight")?,
            ffn_norm: norm("ffn_norm.weight")?,
        })
    }
}

impl Block {
    /// Whether any matrix is read in place (the block holds its layer).
    fn reads_in_place(&self) -> bool {
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

/// What a forward pass read and computed, for reports and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct PassStats {
    /// Seconds waiting for a block's layer (reads not hidden by compute).
    pub waiting_s: f64,
    /// Seconds converting and computing the blocks.
    pub compute_s: f64,
}

/// A Llama-family model whose blocks stream through Hyperion.
///
/// # Examples
///
/// Greedy next token for a prompt (`model.gguf` being a llama GGUF):
///
/// ```no_run
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> hyperion_candle::Result<()> {
/// use hyperion::MmapConfig;
/// use hyperion_candle::llama::StreamedLlama;
///
/// let config = MmapConfig { max_cache_size: 32 << 20, ..MmapConfig::default() };
/// let mut model = StreamedLlama::open("model.gguf", config).await?;
/// let logits = model.forward(&[1, 504, 3575], 0).await?;
/// let next = logits.argmax(0)?.to_scalar::<u32>()?;
/// # Ok(())
/// # }
/// ```
pub struct StreamedLlama {
    model: MappedModel,
    path: PathBuf,
    config: LlamaConfig,
    device: Device,
    /// The token embedding, quantized as in the file.
    embedding: Arc<QTensor>,
    norm: RmsNorm,
    output: QMatMul,
    /// Layer index of each block, in block order.
    blocks: Arc<[usize]>,
    /// Whether blocks are kept between passes: when the budget holds every
    /// layer of the model, a block built in the first pass is kept, and
    /// later passes neither read nor convert it. A block read in place keeps
    /// its layer (cached, within the budget); a block copied into candle
    /// replaces it (the layer is released), so the memory in use stays the
    /// model's size either way.
    keep_converted: bool,
    /// Blocks kept (only with `keep_converted`).
    converted: Vec<Option<Arc<Block>>>,
    kv_cache: Vec<Option<(Tensor, Tensor)>>,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    masks: HashMap<(usize, usize), Tensor>,
    lookahead: Option<usize>,
    last_pass: PassStats,
}

impl StreamedLlama {
    /// Opens the GGUF at `path` within `config`'s budget: reads its metadata,
    /// and reads the resident weights (embedding, final norm, output head)
    /// once. Blocks are read by [`forward`](Self::forward).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a file that is not a `llama` GGUF,
    /// [`Error::MissingTensor`], and Hyperion's errors (a budget smaller than
    /// the largest layer is [`hyperion::Error::LayerTooLarge`]).
    pub async fn open(path: impl AsRef<Path>, config: MmapConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let header = {
            let path = path.clone();
            let what = path.display().to_string();
            tokio::task::spawn_blocking(move || read_header(&path))
                .await
                .map_err(|_| Error::RuntimeGone { what })??
        };
        let llama = LlamaConfig::from_gguf(&path, &header)?;
        let model = MappedModel::open(&path, config).await?;
        let device = Device::Cpu;
        let index = model.index();
        let blocks: Arc<[usize]> = (0..llama.block_count)
            .map(|b| {
                index
                    .find_tensor(&format!("blk.{b}.attn_q.weight"))
                    .map(|at| at.layer)
                    .ok_or(Error::MissingTensor {
                        name: format!("blk.{b}.attn_q.weight"),
                    })
            })
            .collect::<Result<_>>()?;

        // Each resident tensor is converted (copied into candle) and its
        // layer released and dropped before the next is read, so opening
        // needs no more budget than the largest of them.
        let embd_q = resident(&model, "token_embd.weight", |v| {
            convert::to_qtensor(v, &device)
        })
        .await?;
        // Rows are dequantized as they are looked up (`QTensor::embedding`,
        // the same per-block conversion as the eager model's whole-table
        // `dequantize`): the table stays in its file's size, not four bytes a
        // value.
        let embedding = Arc::new(embd_q);
        let norm_weight = resident(&model, "output_norm.weight", |v| {
            convert::to_dequantized(v, &device)
        })
        .await?;
        // A missing output head is tied to the embedding, as in llama.cpp.
        let output = if model.index().find_tensor("output.weight").is_some() {
            Arc::new(resident(&model, "output.weight", |v| convert::to_qtensor(v, &device)).await?)
        } else {
            Arc::clone(&embedding)
        };

        let model_bytes: u64 = model.index().layers.iter().map(|l| l.size).sum();
        let keep_converted = model.config().max_cache_size >= model_bytes;
        let (cos, sin) = rope_tables(llama.rope_dimension, llama.rope_freq_base, &device)?;
        Ok(StreamedLlama {
            kv_cache: vec![None; llama.block_count],
            norm: RmsNorm {
                weight: norm_weight,
                eps: llama.rms_norm_eps as f32,
            },
            output: QMatMul::from_arc(output)?,
            neg_inf: Tensor::new(f32::NEG_INFINITY, &device)?,
            masks: HashMap::new(),
            lookahead: None,
            last_pass: PassStats::default(),
            keep_converted,
            converted: (0..llama.block_count).map(|_| None).collect(),
            model,
            path,
            config: llama,
            device,
            embedding,
            blocks,
            cos,
            sin,
        })
    }

    /// The hyper-parameters read from the file.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The Hyperion model the blocks stream from (stats, budget).
    pub fn model(&self) -> &MappedModel {
        &self.model
    }

    /// Sets how many blocks are read ahead of the one computing (`None`: as
    /// many of the largest block as fit in the budget beside the one
    /// computing, up to 4; unlike [`MappedModel::default_lookahead`], the
    /// resident layers, often far larger than a block, are not counted).
    pub fn set_lookahead(&mut self, lookahead: Option<usize>) {
        self.lookahead = lookahead;
    }

    /// The default read-ahead: as many of the largest block as fit in the
    /// budget beside the one computing, at most 4.
    fn block_lookahead(&self) -> usize {
        let largest = self
            .blocks
            .iter()
            .filter_map(|&l| self.model.footprint(l).ok())
            .max()
            .unwrap_or(1)
            .max(1);
        ((self.model.config().max_cache_size / largest) as usize)
            .saturating_sub(1)
            .min(4)
    }

    /// Time waiting for weights and computing in the last forward pass.
    pub fn last_pass(&self) -> PassStats {
        self.last_pass
    }

    /// Forgets the KV cache (a new sequence starts at position 0).
    pub fn clear_kv_cache(&mut self) {
        self.kv_cache.iter_mut().for_each(|kv| *kv = None);
    }

    /// Runs `tokens` (at positions `index_pos..`) through the model and
    /// returns the logits of the last one (a `vocab`-long `f32` vector).
    /// A prompt is one call (prefill, the whole prompt through each block);
    /// each generated token is one more.
    ///
    /// # Cancel safety
    /// Dropping the future mid-pass leaves the KV cache of the blocks not yet
    /// run one position short: call [`clear_kv_cache`](Self::clear_kv_cache)
    /// and start the sequence again.
    ///
    /// # Errors
    /// Hyperion's read errors (every one names the file and layer),
    /// [`Error::MissingTensor`], [`Error::Candle`], and
    /// [`Error::Unsupported`] past [`MAX_SEQ_LEN`].
    pub async fn forward(&mut self, tokens: &[u32], index_pos: usize) -> Result<Tensor> {
        let seq_len = tokens.len();
        if seq_len == 0 || index_pos + seq_len > MAX_SEQ_LEN {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                what: format!(
                    "{seq_len} tokens at position {index_pos} (1 to {MAX_SEQ_LEN} positions)"
                ),
            });
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mask = if seq_len == 1 {
            None
        } else {
            Some(self.mask(seq_len, index_pos)?)
        };
        let mut x = self.embedding.embedding(&ids)?;
        let mut stats = PassStats::default();
        let lookahead = self.lookahead.unwrap_or_else(|| self.block_lookahead());
        // Blocks already converted and kept (see `keep_converted`) are not
        // read; the others stream in block order.
        let pending: Vec<usize> = (0..self.config.block_count)
            .filter(|&b| self.converted[b].is_none())
            .map(|b| self.blocks[b])
            .collect();
        // The next pass reads the same blocks (unless this one keeps them):
        // its first ones are read ahead while this pass ends (the stream is
        // dropped after this pass's items).
        let next_pass = if self.keep_converted {
            Vec::new()
        } else {
            pending.clone()
        };
        let mut layers = self
            .model
            .stream_layers(pending.into_iter().chain(next_pass), Some(lookahead));
        for block in 0..self.config.block_count {
            let converted = match &self.converted[block] {
                Some(b) => Arc::clone(b),
                None => {
                    let waited = std::time::Instant::now();
                    let weights = layers.next().await.ok_or_else(|| Error::RuntimeGone {
                        what: format!("block {block}"),
                    })??;
                    stats.waiting_s += waited.elapsed().as_secs_f64();
                    let computed = std::time::Instant::now();
                    let eps = self.config.rms_norm_eps;
                    let b = compute(|| Block::from_layer(&weights, block, eps, &self.device))?;
                    stats.compute_s += computed.elapsed().as_secs_f64();
                    let b = Arc::new(b);
                    if self.keep_converted {
                        self.converted[block] = Some(Arc::clone(&b));
                        if !b.reads_in_place() {
                            // candle's copy replaces the layer: let Hyperion's go.
                            self.model.release(weights.layer_index())?;
                        }
                    }
                    b
                }
            };
            let computed = std::time::Instant::now();
            x = compute(|| self.block_forward(&converted, block, &x, mask.as_ref(), index_pos))?;
            stats.compute_s += computed.elapsed().as_secs_f64();
        }
        let x = self.norm.forward(&x)?;
        let x = x.i((.., seq_len - 1, ..))?;
        let logits = self.output.forward(&x)?.squeeze(0)?;
        self.last_pass = stats;
        Ok(logits)
    }

    /// One block, as `quantized_llama`'s layer loop body.
    fn block_forward(
        &mut self,
        b: &Block,
        block: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        index_pos: usize,
    ) -> Result<Tensor> {
        let residual = x;
        let h = b.attention_norm.forward(x)?;
        let attn = self.attention(b, block, &h, mask, index_pos)?;
        let x = (attn + residual)?;
        let residual = &x;
        let h = b.ffn_norm.forward(&x)?;
        let gate = b.w_gate.forward(&h)?;
        let up = b.w_up.forward(&h)?;
        let mlp = b.w_down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
        Ok((mlp + residual)?)
    }

    fn attention(
        &mut self,
        b: &Block,
        block: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        index_pos: usize,
    ) -> Result<Tensor> {
        let (b_sz, seq_len, n_embd) = x.dims3()?;
        let (n_head, n_kv_head, head_dim) = (
            self.config.head_count,
            self.config.head_count_kv,
            self.config.head_dim(),
        );
        let q =
            b.wq.forward(x)?
                .reshape((b_sz, seq_len, n_head, head_dim))?
                .transpose(1, 2)?;
        let k =
            b.wk.forward(x)?
                .reshape((b_sz, seq_len, n_kv_head, head_dim))?
                .transpose(1, 2)?;
        let v =
            b.wv.forward(x)?
                .reshape((b_sz, seq_len, n_kv_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
        let q = self.rope(&q, index_pos)?;
        let k = self.rope(&k, index_pos)?;
        let (k, v) = match &self.kv_cache[block] {
            Some((k_cache, v_cache)) if index_pos > 0 => (
                Tensor::cat(&[k_cache, &k], 2)?,
                Tensor::cat(&[v_cache, &v], 2)?,
            ),
            _ => (k, v),
        };
        self.kv_cache[block] = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, n_head / n_kv_head)?;
        let v = repeat_kv(v, n_head / n_kv_head)?;
        let att = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let att = match mask {
            None => att,
            Some(mask) => {
                let mask = mask.broadcast_as(att.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(mask.shape().dims())?, &att)?
            }
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape(&[b_sz, seq_len, n_embd])?;
        Ok(b.wo.forward(&y)?)
    }

    /// Rotary embedding, interleaved (llama.cpp's "norm" convention for `llama`).
    fn rope(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_, _, seq_len, _) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        Ok(candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)?)
    }

    fn mask(&mut self, seq_len: usize, index_pos: usize) -> Result<Tensor> {
        let kv_len = index_pos + seq_len;
        if let Some(mask) = self.masks.get(&(seq_len, kv_len)) {
            return Ok(mask.clone());
        }
        let mask: Vec<u8> = (0..seq_len)
            .flat_map(|i| (0..kv_len).map(move |j| u8::from(j > index_pos + i)))
            .collect();
        let mask = Tensor::from_slice(&mask, (seq_len, kv_len), &self.device)?;
        self.masks.insert((seq_len, kv_len), mask.clone());
        Ok(mask)
    }
}

impl std::fmt::Debug for StreamedLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedLlama")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs CPU-heavy `work` without stalling the runtime: on a multi-thread
/// runtime the worker hands its other tasks (the read-ahead) to another
/// worker first.
fn compute<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Reads tensor `name`, converts it with `convert`, and lets go of its layer
/// (released from the cache, the handle dropped) before returning.
async fn resident<T>(
    model: &MappedModel,
    name: &str,
    convert: impl FnOnce(&hyperion::TensorView<'_>) -> Result<T>,
) -> Result<T> {
    let handle = model.tensor(name).await.map_err(|e| match e {
        hyperion::Error::TensorNotFound { .. } => Error::MissingTensor { name: name.into() },
        e => e.into(),
    })?;
    let converted = convert(&handle.view())?;
    model.release(handle.layer().layer_index())?;
    Ok(converted)
}

fn rope_tables(head_dim: usize, freq_base: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / freq_base.powf(i as f32 / head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx_theta = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((MAX_SEQ_LEN, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((idx_theta.cos()?, idx_theta.sin()?))
}

fn repeat_kv(xs: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b_sz, n_kv_head, seq_len, head_dim) = xs.dims4()?;
    Tensor::cat(&vec![&xs; n_rep], 2)?.reshape((b_sz, n_kv_head * n_rep, seq_len, head_dim))
}
