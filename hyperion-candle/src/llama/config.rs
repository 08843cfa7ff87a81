//! The hyper-parameters of a Llama-family model: from a GGUF's metadata
//! (`llama.*` keys) or from a Hugging Face `config.json`.

use std::path::Path;

use hyperion::format::gguf::GgufHeader;
use serde_json::Value;

use crate::error::{Error, Result};

/// The hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlamaConfig {
    /// Transformer blocks (`llama.block_count`, `num_hidden_layers`).
    pub block_count: usize,
    /// The hidden size (`llama.embedding_length`, `hidden_size`).
    pub embedding_length: usize,
    /// Attention heads (`llama.attention.head_count`, `num_attention_heads`).
    pub head_count: usize,
    /// Key/value heads (`llama.attention.head_count_kv`,
    /// `num_key_value_heads`; grouped-query attention when fewer than
    /// `head_count`).
    pub head_count_kv: usize,
    /// Rotary dimensions per head (`llama.rope.dimension_count`; the head
    /// size in a `config.json`).
    pub rope_dimension: usize,
    /// The rotary base (`llama.rope.freq_base`, `rope_theta`; 10,000 when
    /// absent).
    pub rope_freq_base: f32,
    /// Llama 3's rotary frequency scaling, where the model has it.
    pub rope_scaling: Option<RopeScaling>,
    /// RMS norm epsilon (`llama.attention.layer_norm_rms_epsilon`,
    /// `rms_norm_eps`).
    pub rms_norm_eps: f64,
    /// The longest context the model was trained for, if the file says
    /// (`llama.context_length`, `max_position_embeddings`).
    pub context_length: Option<usize>,
    /// Whether the output head is the token embedding (`tie_word_embeddings`;
    /// a GGUF without `output.weight`).
    pub tied_output: bool,
}

/// Llama 3's rotary scaling (`rope_scaling` with `rope_type = "llama3"`):
/// long wavelengths divided by `factor`, short ones kept, a smooth blend
/// between.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RopeScaling {
    /// How much the long wavelengths are stretched.
    pub factor: f32,
    /// Wavelengths longer than `original_max_position_embeddings /
    /// low_freq_factor` are scaled.
    pub low_freq_factor: f32,
    /// Wavelengths shorter than `original_max_position_embeddings /
    /// high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
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
        if header.get("llama.rope.scaling.type").is_some() {
            return Err(unsupported("rope scaling (llama.rope.scaling.*)".into()));
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
            rope_scaling: None,
            rms_norm_eps: header
                .get("llama.attention.layer_norm_rms_epsilon")
                .and_then(|v| v.as_f64())
                .ok_or_else(|| {
                    unsupported("no llama.attention.layer_norm_rms_epsilon key".into())
                })?,
            context_length: int("llama.context_length").ok(),
            // Decided by the tensors (`output.weight` present or not).
            tied_output: false,
        };
        config.check(path)?;
        Ok(config)
    }

    /// Reads the config from a Hugging Face `config.json` (the text `json`,
    /// read from `path`): `model_type` `llama` or `mistral` (without
    /// sliding-window attention), SiLU MLP, no biases, rotary scaling of the
    /// `llama3` type or none. Both the flat `rope_theta`/`rope_scaling` keys
    /// and the `rope_parameters` object of newer `transformers` are read.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the first missing or unsupported key.
    pub fn from_hf_json(path: &Path, json: &str) -> Result<Self> {
        let unsupported = |what: String| Error::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let root: Value = serde_json::from_str(json)
            .map_err(|e| unsupported(format!("config.json is not JSON: {e}")))?;
        let model_type = root.get("model_type").and_then(Value::as_str);
        match model_type {
            Some("llama") => {}
            Some("mistral") => {
                if root.get("sliding_window").is_some_and(|w| !w.is_null()) {
                    return Err(unsupported("sliding-window attention (mistral)".into()));
                }
            }
            Some(other) => {
                return Err(unsupported(format!(
                    "model_type {other:?} (only \"llama\" and \"mistral\" are supported)"
                )))
            }
            None => return Err(unsupported("no model_type key in config.json".into())),
        }
        let int = |key: &str| -> Result<usize> {
            root.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| unsupported(format!("no integer {key} key in config.json")))
        };
        let flag = |key: &str| root.get(key).and_then(Value::as_bool).unwrap_or(false);
        for key in ["attention_bias", "mlp_bias"] {
            if flag(key) {
                return Err(unsupported(format!("{key} = true (biases)")));
            }
        }
        if let Some(act) = root.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(unsupported(format!("hidden_act {act:?} (only \"silu\")")));
            }
        }
        let head_count = int("num_attention_heads")?;
        let embedding_length = int("hidden_size")?;
        let head_dim = embedding_length.checked_div(head_count).unwrap_or(0);
        if let Some(d) = root.get("head_dim").and_then(Value::as_u64) {
            if d as usize != head_dim {
                return Err(unsupported(format!(
                    "head_dim {d} (only hidden_size / num_attention_heads = {head_dim})"
                )));
            }
        }
        // transformers 5 moved the rotary keys into `rope_parameters`.
        let rope = root.get("rope_parameters").filter(|v| v.is_object());
        let rope_key = |key: &str| {
            rope.and_then(|r| r.get(key))
                .or_else(|| root.get(key))
                .filter(|v| !v.is_null())
        };
        let scaling_object = root.get("rope_scaling").filter(|v| v.is_object()).or(rope);
        let rope_type = scaling_object
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let rope_scaling = match rope_type {
            "default" => None,
            "llama3" => {
                let s = scaling_object
                    .ok_or_else(|| unsupported("llama3 rope scaling without parameters".into()))?;
                let float = |key: &str| {
                    s.get(key)
                        .and_then(Value::as_f64)
                        .map(|v| v as f32)
                        .ok_or_else(|| unsupported(format!("llama3 rope scaling without {key}")))
                };
                Some(RopeScaling {
                    factor: float("factor")?,
                    low_freq_factor: float("low_freq_factor")?,
                    high_freq_factor: float("high_freq_factor")?,
                    original_max_position_embeddings: s
                        .get("original_max_position_embeddings")
                        .and_then(Value::as_u64)
                        .map(|v| v as usize)
                        .ok_or_else(|| {
                            unsupported(
                                "llama3 rope scaling without original_max_position_embeddings"
                                    .into(),
                            )
                        })?,
                })
            }
            other => return Err(unsupported(format!("rope scaling of type {other:?}"))),
        };
        let config = LlamaConfig {
            block_count: int("num_hidden_layers")?,
            embedding_length,
            head_count,
            head_count_kv: int("num_key_value_heads").unwrap_or(head_count),
            rope_dimension: head_dim,
            rope_freq_base: rope_key("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0) as f32,
            rope_scaling,
            rms_norm_eps: root
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .ok_or_else(|| unsupported("no rms_norm_eps key in config.json".into()))?,
            context_length: int("max_position_embeddings").ok(),
            tied_output: flag("tie_word_embeddings"),
        };
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.head_count == 0
            || self.head_count_kv == 0
            || self.head_count % self.head_count_kv != 0
            || self.embedding_length % self.head_count != 0
            || self.block_count == 0
        {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "{} blocks, {} heads, {} key/value heads and a hidden size of {}",
                    self.block_count, self.head_count, self.head_count_kv, self.embedding_length
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.embedding_length / self.head_count
    }

    /// The rotary inverse frequencies, as candle-transformers computes them
    /// (`quantized_llama` for GGUF, `llama` with Llama 3 scaling).
    pub(crate) fn inv_freq(&self) -> Vec<f32> {
        let dim = self.rope_dimension;
        let base = self.rope_freq_base;
        let freqs = (0..dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / dim as f32));
        let Some(s) = self.rope_scaling else {
            return freqs.collect();
        };
        let original = s.original_max_position_embeddings as f32;
        let low_freq_wavelen = original / s.low_freq_factor;
        let high_freq_wavelen = original / s.high_freq_factor;
        freqs
            .map(|freq| {
                let wavelen = 2. * std::f32::consts::PI / freq;
                if wavelen < high_freq_wavelen {
                    freq
                } else if wavelen > low_freq_wavelen {
                    freq / s.factor
                } else {
                    let smooth = (original / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1. - smooth) * freq / s.factor + smooth * freq
                }
            })
            .collect()
    }
}
