//! Text in, text out: the tokenizer a GGUF embeds (`tokenizer.ggml.*`,
//! through candle's `TokenizerFromGguf`), or the `tokenizer.json` beside
//! Hugging Face safetensors, as a `tokenizers::Tokenizer`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::llama::ModelFiles;

/// A tokenizer and the end-of-sequence token it declares.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    eos: Option<u32>,
}

impl TextTokenizer {
    /// The tokenizer embedded in the GGUF at `path` (reads its metadata once
    /// more, with candle's reader, which `TokenizerFromGguf` takes).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the file carries no tokenizer candle can
    /// build (only `tokenizer.ggml.model = "gpt2"`, byte-level BPE, today).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let unsupported = |what: String| Error::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let mut file =
            std::fs::File::open(path).map_err(|e| unsupported(format!("cannot open: {e}")))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| unsupported(format!("GGUF metadata: {e}")))?;
        let tokenizer = Tokenizer::from_gguf(&content)
            .map_err(|e| unsupported(format!("embedded tokenizer: {e}")))?;
        let eos = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok());
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
    /// `dir/config.json` (`eos_token_id`, the first if a list) when there is one.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `tokenizer.json` is missing or unreadable.
    pub fn from_tokenizer_json(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&file).map_err(|e| Error::Unsupported {
            path: file.clone(),
            what: format!("tokenizer.json: {e}"),
        })?;
        let eos = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
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
