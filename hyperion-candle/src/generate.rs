//! The generation loop: prefill the prompt in one pass, then one pass per
//! generated token, with the figures a user of a memory budget wants.

use std::time::Instant;

use crate::error::Result;
use crate::llama::StreamedLlama;
use crate::sampling::{Sampler, Sampling};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Stop after generating this token (end of sequence), if given.
    pub stop: Option<u32>,
}

/// What a generation did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Generation {
    /// The generated token ids (the stop token included, if reached).
    pub tokens: Vec<u32>,
    /// Seconds the prompt's pass took.
    pub prefill_s: f64,
    /// Generated tokens per second, after the prefill (0 for one token).
    pub tokens_per_s: f64,
    /// Seconds the passes after the prefill took (one per generated token
    /// but the last).
    pub decode_s: f64,
    /// Of `decode_s`, the seconds during which Hyperion had a read in
    /// flight: the time reading the layers, hidden or not.
    pub decode_read_s: f64,
    /// The most bytes of layer buffers Hyperion held at once.
    pub peak_memory: u64,
    /// Hyperion's budget (`max_cache_size`).
    pub budget: u64,
    /// Bytes Hyperion read from the model file.
    pub bytes_read: u64,
    /// Of the time Hyperion spent reading, the fraction the passes did not
    /// wait for (hidden behind compute): 1 when every block was ready when
    /// its turn came.
    pub io_hidden: f64,
}

/// Generates up to `request.max_tokens` tokens after the prompt, calling
/// `on_token` with each as it is chosen. The model's KV cache is cleared
/// first.
///
/// # Errors
/// Those of [`StreamedLlama::forward`].
pub async fn generate(
    model: &mut StreamedLlama,
    request: &Request,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    model.clear_kv_cache();
    let before = model.model().stats();
    let mut sampler = Sampler::new(request.sampling);
    let mut tokens = Vec::with_capacity(request.max_tokens);
    let mut waiting_s = 0.0;

    let started = Instant::now();
    let mut logits = model.forward(&request.prompt, 0).await?;
    waiting_s += model.last_pass().waiting_s;
    let prefill_s = started.elapsed().as_secs_f64();
    let decoding = Instant::now();
    let after_prefill = model.model().stats();
    while tokens.len() < request.max_tokens {
        let next = sampler.next(&logits)?;
        tokens.push(next);
        on_token(next);
        if Some(next) == request.stop || tokens.len() == request.max_tokens {
            break;
        }
        let position = request.prompt.len() + tokens.len() - 1;
        logits = model.forward(&[next], position).await?;
        waiting_s += model.last_pass().waiting_s;
    }
    let decode_s = decoding.elapsed().as_secs_f64();
    let after = model.model().stats();
    let read_s = (after.read_busy_nanos - before.read_busy_nanos) as f64 / 1e9;
    Ok(Generation {
        tokens_per_s: if tokens.len() > 1 && decode_s > 0.0 {
            (tokens.len() - 1) as f64 / decode_s
        } else {
            0.0
        },
        prefill_s,
        decode_s,
        decode_read_s: (after.read_busy_nanos - after_prefill.read_busy_nanos) as f64 / 1e9,
        peak_memory: after.peak_memory,
        budget: model.model().config().max_cache_size,
        bytes_read: after.bytes_read - before.bytes_read,
        io_hidden: if read_s > 0.0 {
            (1.0 - waiting_s / read_s).clamp(0.0, 1.0)
        } else {
            1.0
        },
        tokens,
    })
}
