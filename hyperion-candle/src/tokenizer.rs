//! Text in, text out: the tokenizer a GGUF embeds (`tokenizer.ggml.*`,
//! through candle's `TokenizerFromGguf`), or the `tokenizer.json` beside
//! Hugging Face safetensors, as a `tokenizers::Tokenizer`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;

use hyperion::files::read_small_file;
use hyperion::format::gguf::{read_header, GgufArray, GgufValue};

use crate::error::{Error, Result};
use crate::llama::ModelFiles;

/// The longest `tokenizer.json` or `config.json` read (the largest
/// published tokenizers are ~20 MB): a wrong path is an error, not a
/// gigabyte read.
pub(crate) const MAX_JSON_LEN: u64 = 256 << 20;

/// A tokenizer and the end-of-sequence token it declares.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    eos: Option<u32>,
}

impl TextTokenizer {
    /// The tokenizer embedded in the GGUF at `path`, a local file or an
    /// `s3://` URL (reads its metadata once more, with Hyperion's reader,
    /// and hands the `tokenizer.ggml.*` keys to candle's `TokenizerFromGguf`).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the file carries no tokenizer candle can
    /// build (only `tokenizer.ggml.model = "gpt2"`, byte-level BPE, today);
    /// Hyperion's errors when it cannot be read.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let header = read_header(path)?;
        let metadata = header
            .metadata
            .iter()
            .filter(|(key, _)| key.starts_with("tokenizer."))
            .filter_map(|(key, value)| Some((key.clone(), candle_value(value)?)))
            .collect();
        let content = gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos: Default::default(),
            tensor_data_offset: header.data_start,
        };
        let tokenizer = Tokenizer::from_gguf(&content).map_err(|e| Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("embedded tokenizer: {e}"),
        })?;
        let eos = header
            .get("tokenizer.ggml.eos_token_id")
            .and_then(GgufValue::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        Ok(TextTokenizer { tokenizer, eos })
    }

    /// The tokenizer of the model at `path` (as
    /// [`StreamedLlama::open`](crate::llama::StreamedLlama::open) takes it):
    /// the GGUF's own, or `tokenizer.json` beside safetensors.
    ///
    /// # Errors
    /// As [`from_gguf`](Self::from_gguf) and
    /// [`from_tokenizer_json`](Self::from_tokenizer_json).
    pub fn for_model(path: &Path) -> Result<Self> {
        match ModelFiles::locate(path)? {
            ModelFiles::Gguf(file) => Self::from_gguf(&file),
            ModelFiles::Safetensors { dir, .. } => Self::from_tokenizer_json(&dir),
        }
    }

    /// `dir/tokenizer.json`, with the end-of-sequence token of
    /// `dir/config.json` (`eos_token_id`, the first if a list) when there is
    /// one. `dir` is a local directory or an `s3://bucket/prefix/`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `tokenizer.json` is missing or unreadable.
    pub fn from_tokenizer_json(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let unsupported = |what: String| Error::Unsupported {
            path: file.clone(),
            what: format!("tokenizer.json: {what}"),
        };
        let bytes = read_small_file(&file, MAX_JSON_LEN).map_err(|e| unsupported(e.to_string()))?;
        let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| unsupported(e.to_string()))?;
        let eos = read_small_file(dir.join("config.json"), MAX_JSON_LEN)
            .ok()
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .and_then(|config| {
                let id = config.get("eos_token_id")?;
                id.as_u64()
                    .or_else(|| id.as_array()?.first()?.as_u64())
                    .and_then(|id| u32::try_from(id).ok())
            });
        Ok(TextTokenizer { tokenizer, eos })
    }

    /// The end-of-sequence token, if the file names one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The token ids of `text` (special tokens as the file's tokenizer adds them).
    ///
    /// # Errors
    /// [`Error::Unsupported`] if the tokenizer fails on the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Unsupported {
                path: Default::default(),
                what: format!("cannot tokenize the prompt: {e}"),
            })
    }

    /// The text of `tokens`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if a token id is unknown.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(tokens, true)
            .map_err(|e| Error::Unsupported {
                path: Default::default(),
                what: format!("cannot decode tokens: {e}"),
            })
    }
}

/// A GGUF metadata value as candle's reader gives it (strings lossily
/// decoded, as candle does); `None` for a kind of value candle has no
/// counterpart of (a later GGUF version's), which the tokenizer then lacks.
fn candle_value(value: &GgufValue) -> Option<gguf_file::Value> {
    use gguf_file::Value as V;
    Some(match value {
        GgufValue::U8(v) => V::U8(*v),
        GgufValue::I8(v) => V::I8(*v),
        GgufValue::U16(v) => V::U16(*v),
        GgufValue::I16(v) => V::I16(*v),
        GgufValue::U32(v) => V::U32(*v),
        GgufValue::I32(v) => V::I32(*v),
        GgufValue::U64(v) => V::U64(*v),
        GgufValue::I64(v) => V::I64(*v),
        GgufValue::F32(v) => V::F32(*v),
        GgufValue::F64(v) => V::F64(*v),
        GgufValue::Bool(v) => V::Bool(*v),
        GgufValue::String(v) => V::String(v.to_string_lossy().into_owned()),
        GgufValue::Array(a) => V::Array(candle_array(a)?),
        _ => return None,
    })
}

fn candle_array(array: &GgufArray) -> Option<Vec<gguf_file::Value>> {
    use gguf_file::Value as V;
    fn each<T: Copy>(items: &[T], f: impl Fn(T) -> V) -> Vec<V> {
        items.iter().map(|&v| f(v)).collect()
    }
    Some(match array {
        GgufArray::U8(a) => each(a, V::U8),
        GgufArray::I8(a) => each(a, V::I8),
        GgufArray::U16(a) => each(a, V::U16),
        GgufArray::I16(a) => each(a, V::I16),
        GgufArray::U32(a) => each(a, V::U32),
        GgufArray::I32(a) => each(a, V::I32),
        GgufArray::U64(a) => each(a, V::U64),
        GgufArray::I64(a) => each(a, V::I64),
        GgufArray::F32(a) => each(a, V::F32),
        GgufArray::F64(a) => each(a, V::F64),
        GgufArray::Bool(a) => each(a, V::Bool),
        GgufArray::String(a) => a
            .iter()
            .map(|s| V::String(String::from_utf8_lossy(s).into_owned()))
            .collect(),
        GgufArray::Array(a) => a
            .iter()
            .map(|inner| candle_array(inner).map(V::Array))
            .collect::<Option<_>>()?,
        _ => return None,
    })
}
