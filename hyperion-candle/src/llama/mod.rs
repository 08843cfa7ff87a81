//! A Llama-family transformer (the llama.cpp `llama` architecture: Llama
//! 2/3, SmolLM/SmolLM2, TinyLlama, Mistral-style grouped-query attention)
//! whose blocks stream through Hyperion, from a GGUF (quantized) or from
//! Hugging Face safetensors with their `config.json` (f32, f16 or bf16).
//!
//! The math is candle-transformers' (same candle kernels, same order of
//! operations): `quantized_llama` for GGUF, `llama` for safetensors, so the
//! logits are those eager models'. What differs is where the weights live:
//!
//! - **Resident**, read once at [`StreamedLlama::open`] and then dropped
//!   from Hyperion's cache: the token embedding (a GGUF's kept quantized,
//!   each row dequantized when it is looked up), the final norm, and the
//!   output head (the embedding when the head is tied). Also resident: the
//!   KV cache.
//! - **Streamed**, each forward pass: every transformer block's layer is
//!   fetched with [`MappedModel::stream_layers`] (reading ahead while the
//!   current block computes), used, and let go. A GGUF block's quantized
//!   matrices are multiplied in place over the layer buffer where candle's
//!   kernel allows ([`crate::qmatmul`]); dense matrices are copied into
//!   candle once per pass. Hyperion keeps as many blocks cached as
//!   `max_cache_size` allows; the rest are read again on the next pass.
//!   When the budget holds the whole model, each block is built once and
//!   kept (see `keep_converted`).
//!
//! Accepted: GGUF files with `general.architecture = "llama"` without
//! mixture-of-experts or rope scaling keys; `config.json` with `model_type`
//! `llama` (or `mistral` without a sliding window), SiLU, no biases, rotary
//! scaling of type `llama3` or none. Anything else is a one-line error that
//! says what is missing.

mod block;
mod config;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use futures::StreamExt;
use hyperion::files::{file_exists, read_prefix, read_small_file};
use hyperion::format::gguf::read_header;
use hyperion::source::is_object_url;
use hyperion::{MappedModel, MmapConfig};

use crate::convert;
use crate::error::{Error, Result};
use crate::tokenizer::MAX_JSON_LEN;
use block::{Block, Flavor, RmsNorm};
pub use config::{LlamaConfig, RopeScaling};

/// The longest sequence (prompt plus generated tokens) the rotary tables
/// cover, as in candle's `quantized_llama`.
pub const MAX_SEQ_LEN: usize = 4096;

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
    flavor: Flavor,
    device: Device,
    embedding: TokenEmbedding,
    norm: RmsNorm,
    output: OutputHead,
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

/// The token embedding: a GGUF's quantized table (rows dequantized on
/// lookup, as `quantized_llama`'s whole-table dequantization gives them), or
/// a dense table in the compute dtype.
enum TokenEmbedding {
    Quantized(Arc<QTensor>),
    Dense(candle_nn::Embedding),
}

impl TokenEmbedding {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            TokenEmbedding::Quantized(q) => q.embedding(ids),
            TokenEmbedding::Dense(e) => e.forward(ids),
        }
    }
}

/// The output head: quantized (GGUF) or dense (safetensors).
enum OutputHead {
    Quantized(QMatMul),
    Dense(candle_nn::Linear),
}

/// The files of a model, found from the path a user gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// A GGUF file: weights, hyper-parameters and tokenizer in one.
    Gguf(PathBuf),
    /// Hugging Face safetensors: `weights` (a `.safetensors` file or a
    /// `model.safetensors.index.json`), with `config.json` and (for text)
    /// `tokenizer.json` in the same directory.
    Safetensors {
        /// The weights file Hyperion opens.
        weights: PathBuf,
        /// The directory holding `config.json` and `tokenizer.json`.
        dir: PathBuf,
    },
}

impl ModelFiles {
    /// Finds a model's files from `path`: a GGUF file (by its magic), a
    /// safetensors file or `model.safetensors.index.json`, or a directory
    /// holding `model.safetensors.index.json` or `model.safetensors`.
    /// `path` may be an `s3://bucket/key` URL (with Hyperion's
    /// `object-store` feature), where a URL ending in `/` is the directory.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming what is missing; Hyperion's errors
    /// (naming the URL) when an object cannot be asked for.
    pub fn locate(path: &Path) -> Result<Self> {
        let unsupported = |what: String| Error::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let is_dir = if is_object_url(path) {
            path.to_str().is_some_and(|p| p.ends_with('/'))
        } else {
            path.is_dir()
        };
        if is_dir {
            for name in ["model.safetensors.index.json", "model.safetensors"] {
                let weights = path.join(name);
                if file_exists(&weights)? {
                    return Ok(ModelFiles::Safetensors {
                        weights,
                        dir: path.to_path_buf(),
                    });
                }
            }
            return Err(unsupported(
                "no model.safetensors.index.json or model.safetensors in the directory".into(),
            ));
        }
        let magic = read_prefix(path, 4).map_err(|e| match e {
            hyperion::Error::Io { source, .. } => unsupported(format!("cannot read: {source}")),
            other => other.into(),
        })?;
        if magic == b"GGUF" {
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(ModelFiles::Safetensors {
            weights: path.to_path_buf(),
            dir,
        })
    }
}

impl StreamedLlama {
    /// Opens the model at `path` within `config`'s budget: a llama GGUF,
    /// or Hugging Face safetensors (a file, an index, or their directory)
    /// with `config.json` beside them ([`ModelFiles::locate`]). Reads the
    /// metadata, and the resident weights (embedding, final norm, output
    /// head) once. Blocks are read by [`forward`](Self::forward).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a model this does not run (naming what),
    /// [`Error::MissingTensor`], and Hyperion's errors (a budget smaller than
    /// the largest layer is [`hyperion::Error::LayerTooLarge`]).
    pub async fn open(path: impl AsRef<Path>, config: MmapConfig) -> Result<Self> {
        let files = ModelFiles::locate(path.as_ref())?;
        let (path, llama) = {
            let files = files.clone();
            let what = path.as_ref().display().to_string();
            tokio::task::spawn_blocking(move || read_config(&files))
                .await
                .map_err(|_| Error::RuntimeGone { what })??
        };
        let model = MappedModel::open(&path, config).await?;
        let device = Device::Cpu;
        let flavor = match files {
            ModelFiles::Gguf(_) => Flavor::Gguf,
            ModelFiles::Safetensors { .. } => {
                // The compute dtype is the embedding's, as stored.
                let name = Flavor::Hf { dtype: DType::F32 }.embedding();
                let at = model
                    .index()
                    .find_tensor(name)
                    .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
                let stored = at.spec.dtype;
                let dtype = convert::candle_dtype(stored)
                    .filter(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16))
                    .ok_or_else(|| Error::Unsupported {
                        path: path.clone(),
                        what: format!("{name} of dtype {stored} (f32, f16 or bf16 only)"),
                    })?;
                Flavor::Hf { dtype }
            }
        };
        let index = model.index();
        let blocks: Arc<[usize]> = (0..llama.block_count)
            .map(|b| {
                let name = flavor.block_tensor(b, "attn_q.weight");
                index
                    .find_tensor(&name)
                    .map(|at| at.layer)
                    .ok_or(Error::MissingTensor { name })
            })
            .collect::<Result<_>>()?;

        // Each resident tensor is converted (copied into candle) and its
        // layer released and dropped before the next is read, so opening
        // needs no more budget than the largest of them.
        let (embedding, output) = match flavor {
            Flavor::Gguf => {
                let table = Arc::new(
                    resident(&model, flavor.embedding(), |v| {
                        convert::to_qtensor(v, &device)
                    })
                    .await?,
                );
                // A missing output head is tied to the embedding, as in llama.cpp.
                let head = if model.index().find_tensor(flavor.output()).is_some() {
                    Arc::new(
                        resident(&model, flavor.output(), |v| convert::to_qtensor(v, &device))
                            .await?,
                    )
                } else {
                    Arc::clone(&table)
                };
                (
                    TokenEmbedding::Quantized(table),
                    OutputHead::Quantized(QMatMul::from_arc(head)?),
                )
            }
            Flavor::Hf { dtype } => {
                let dense = |v: &hyperion::TensorView<'_>| -> Result<Tensor> {
                    Ok(convert::to_tensor(v, &device)?.to_dtype(dtype)?)
                };
                let table = resident(&model, flavor.embedding(), dense).await?;
                let head = if llama.tied_output {
                    table.clone()
                } else {
                    resident(&model, flavor.output(), dense).await?
                };
                (
                    TokenEmbedding::Dense(candle_nn::Embedding::new(table, llama.embedding_length)),
                    OutputHead::Dense(candle_nn::Linear::new(head, None)),
                )
            }
        };
        let norm_weight = resident(&model, flavor.final_norm(), |v| {
            flavor.norm_weight(v, &device)
        })
        .await?;

        let model_bytes: u64 = model.index().layers.iter().map(|l| l.size).sum();
        let keep_converted = model.config().max_cache_size >= model_bytes;
        let (cos, sin) = rope_tables(&llama, flavor.dtype(), &device)?;
        Ok(StreamedLlama {
            kv_cache: vec![None; llama.block_count],
            norm: RmsNorm {
                weight: norm_weight,
                eps: llama.rms_norm_eps as f32,
            },
            output,
            neg_inf: Tensor::new(f32::NEG_INFINITY, &device)?,
            masks: HashMap::new(),
            lookahead: None,
            last_pass: PassStats::default(),
            keep_converted,
            converted: (0..llama.block_count).map(|_| None).collect(),
            model,
            path,
            config: llama,
            flavor,
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
        let mut x = self.embedding.forward(&ids)?;
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
                    let (eps, flavor) = (self.config.rms_norm_eps, self.flavor);
                    let b =
                        compute(|| Block::from_layer(&weights, flavor, block, eps, &self.device))?;
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
        let logits = match &self.output {
            OutputHead::Quantized(head) => head.forward(&x)?,
            // As candle's `llama`: a contiguous last row, logits in f32.
            OutputHead::Dense(head) => head.forward(&x.contiguous()?)?.to_dtype(DType::F32)?,
        };
        let logits = logits.squeeze(0)?;
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
        match self.flavor {
            Flavor::Gguf => self.attention_gguf(b, block, x, mask, index_pos),
            Flavor::Hf { .. } => self.attention_hf(b, block, x, mask, index_pos),
        }
    }

    /// Attention as `quantized_llama`'s (all in `f32`, interleaved rotary).
    fn attention_gguf(
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
        let q = self.rope_interleaved(&q, index_pos)?;
        let k = self.rope_interleaved(&k, index_pos)?;
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
        let att = self.masked(att, mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape(&[b_sz, seq_len, n_embd])?;
        Ok(b.wo.forward(&y)?)
    }

    /// Attention as candle's `llama` (Hugging Face weights): projections in
    /// the compute dtype, half-split rotary, scores and softmax in `f32`.
    fn attention_hf(
        &mut self,
        b: &Block,
        block: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        index_pos: usize,
    ) -> Result<Tensor> {
        let (b_sz, seq_len, hidden) = x.dims3()?;
        let (n_head, n_kv_head, head_dim) = (
            self.config.head_count,
            self.config.head_count_kv,
            self.config.head_dim(),
        );
        let q =
            b.wq.forward(x)?
                .reshape((b_sz, seq_len, n_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
        let k =
            b.wk.forward(x)?
                .reshape((b_sz, seq_len, n_kv_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
        let mut v =
            b.wv.forward(x)?
                .reshape((b_sz, seq_len, n_kv_head, head_dim))?
                .transpose(1, 2)?;
        let q = self.rope_half(&q, index_pos)?;
        let mut k = self.rope_half(&k, index_pos)?;
        if let Some((k_cache, v_cache)) = &self.kv_cache[block] {
            if index_pos > 0 {
                k = Tensor::cat(&[k_cache, &k], 2)?.contiguous()?;
                v = Tensor::cat(&[v_cache, &v], 2)?.contiguous()?;
            }
        }
        self.kv_cache[block] = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, n_head / n_kv_head)?;
        let v = repeat_kv(v, n_head / n_kv_head)?;
        let in_dtype = q.dtype();
        let q = q.to_dtype(DType::F32)?;
        let k = k.to_dtype(DType::F32)?;
        let v = v.to_dtype(DType::F32)?;
        let att = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let att = self.masked(att, mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?.to_dtype(in_dtype)?;
        let y = y.transpose(1, 2)?.reshape(&[b_sz, seq_len, hidden])?;
        Ok(b.wo.forward(&y)?)
    }

    /// `-inf` where the causal `mask` is set (prefill only).
    fn masked(&self, att: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(match mask {
            None => att,
            Some(mask) => {
                let mask = mask.broadcast_as(att.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(mask.shape().dims())?, &att)?
            }
        })
    }

    /// Rotary embedding, interleaved (llama.cpp's "norm" convention for
    /// `llama`, whose GGUF weights are permuted for it).
    fn rope_interleaved(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_, _, seq_len, _) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        Ok(candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)?)
    }

    /// Rotary embedding on the two halves of each head (Hugging Face's
    /// `rotate_half`).
    fn rope_half(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_, _, seq_len, _) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?)
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

/// The rotary cos/sin tables for [`MAX_SEQ_LEN`] positions, in `dtype`.
fn rope_tables(config: &LlamaConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta = config.inv_freq();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx_theta = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((MAX_SEQ_LEN, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((
        idx_theta.cos()?.to_dtype(dtype)?,
        idx_theta.sin()?.to_dtype(dtype)?,
    ))
}

/// Reads the hyper-parameters of `files`, and says which file Hyperion
/// opens.
fn read_config(files: &ModelFiles) -> Result<(PathBuf, LlamaConfig)> {
    match files {
        ModelFiles::Gguf(path) => {
            let header = read_header(path)?;
            Ok((path.clone(), LlamaConfig::from_gguf(path, &header)?))
        }
        ModelFiles::Safetensors { weights, dir } => {
            let config = dir.join("config.json");
            let json = read_small_file(&config, MAX_JSON_LEN)
                .map_err(|e| e.to_string())
                .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "not UTF-8".into()))
                .map_err(|why| Error::Unsupported {
                    path: config.clone(),
                    what: format!("no readable config.json beside the weights: {why}"),
                })?;
            Ok((weights.clone(), LlamaConfig::from_hf_json(&config, &json)?))
        }
    }
}

fn repeat_kv(xs: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b_sz, n_kv_head, seq_len, head_dim) = xs.dims4()?;
    Tensor::cat(&vec![&xs; n_rep], 2)?.reshape((b_sz, n_kv_head * n_rep, seq_len, head_dim))
}
