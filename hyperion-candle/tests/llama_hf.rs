//! The layer-streamed Llama on Hugging Face safetensors + config.json,
//! written by `transformers` itself (`LlamaForCausalLM(config)` with random
//! weights, `save_pretrained`; tests/reference/hf_llama.py):
//!
//! - against candle-transformers' eager `models::llama` (the same kernels):
//!   the same 32 greedy tokens and every step's logits within 1e-4, at a
//!   budget above the model's size, at half of it and at its largest layer,
//!   in f32 (sharded) and bf16 (tied head);
//! - against `transformers`' own forward pass (PyTorch kernels): the same
//!   tokens, and logits within [`TRANSFORMERS_TOLERANCE`], with the default
//!   rotary frequencies and with Llama 3's scaled ones.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as candle_llama;
use hyperion::MmapConfig;
use hyperion_candle::llama::{LlamaConfig, StreamedLlama};
use hyperion_candle::tokenizer::TextTokenizer;

const GENERATED: usize = 32;

/// How far the streamed model's f32 logits may be from PyTorch's: both
/// compute the same function in f32, but with different matmul kernels
/// (candle's gemm and PyTorch's MKL/oneDNN sum in different orders, and
/// PyTorch's attention is a fused kernel), so they agree to a few f32
/// rounding steps of the largest logit, not bit for bit. Logits here are
/// up to ~10 in size; the largest difference measured was below 2e-5.
const TRANSFORMERS_TOLERANCE: f32 = 1e-3;

/// transformers' greedy run (reference.json).
struct Reference {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn reference(dir: &Path) -> Reference {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    Reference {
        prompt: ids("prompt"),
        tokens: ids("tokens"),
        logits: json["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| {
                step.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
    }
}

/// The safetensors files of a checkpoint (one, or the shards).
fn weight_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// Greedy decoding with candle's eager `models::llama`, its weights loaded
/// by candle's own safetensors reader: the tokens and every step's logits.
async fn eager(dir: &Path, dtype: DType, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let ours = LlamaConfig::from_hf_json(dir, &json).unwrap();
    let config = candle_llama::Config {
        hidden_size: ours.embedding_length,
        intermediate_size: serde_json::from_str::<serde_json::Value>(&json).unwrap()
            ["intermediate_size"]
            .as_u64()
            .unwrap() as usize,
        vocab_size: 384,
        num_hidden_layers: ours.block_count,
        num_attention_heads: ours.head_count,
        num_key_value_heads: ours.head_count_kv,
        use_flash_attn: false,
        rms_norm_eps: ours.rms_norm_eps,
        rope_theta: ours.rope_freq_base,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: ours.rope_scaling.map(|s| candle_llama::Llama3RopeConfig {
            factor: s.factor,
            low_freq_factor: s.low_freq_factor,
            high_freq_factor: s.high_freq_factor,
            original_max_position_embeddings: s.original_max_position_embeddings,
            rope_type: candle_llama::Llama3RopeType::Llama3,
        }),
        max_position_embeddings: 512,
        tie_word_embeddings: ours.tied_output,
    };
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    for file in weight_files(dir) {
        tensors.extend(candle_core::safetensors::load(file, &device).unwrap());
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, &device);
    let model = candle_llama::Llama::load(vb, &config).unwrap();
    let mut cache = candle_llama::Cache::new(true, dtype, &config, &device).unwrap();
    let forward = |cache: &mut candle_llama::Cache, ids: &[u32], pos: usize| -> Vec<f32> {
        let input = Tensor::new(ids, &device).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input, pos, cache).unwrap();
        logits.squeeze(0).unwrap().to_vec1().unwrap()
    };
    support::greedy(prompt, GENERATED, async |ids: &[u32], pos| {
        forward(&mut cache, ids, pos)
    })
    .await
}

/// The streamed model, at every budget, against candle's eager model.
async fn same_as_candle(path: &Path, dir: &Path, dtype: DType, prompt: &[u32]) {
    let (want_tokens, want_logits) = eager(dir, dtype, prompt).await;
    let weights = match hyperion_candle::llama::ModelFiles::locate(path).unwrap() {
        hyperion_candle::llama::ModelFiles::Safetensors { weights, .. } => weights,
        other => panic!("not safetensors: {other:?}"),
    };
    let (size, budgets) = support::budgets(&weights);
    for budget in budgets {
        let support::Streamed {
            tokens,
            logits,
            stats,
            ..
        } = support::streamed(path, budget, prompt, GENERATED).await;
        assert_eq!(tokens, want_tokens, "budget {budget}: greedy tokens differ");
        let worst = support::worst_difference(&logits, &want_logits);
        assert!(worst <= 1e-4, "budget {budget}: logits differ by {worst}");
        assert!(stats.peak_memory <= budget, "budget {budget}: {stats:?}");
        if budget < size {
            assert!(
                stats.bytes_read > 2 * size,
                "budget {budget}: every pass streams what does not fit: {stats:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f32_sharded_checkpoint_generates_what_candle_and_transformers_generate() {
    let Some(dir) = support::hf_checkpoint(&["--shard-size", "300KB"]) else {
        return;
    };
    let dir = dir.path();
    assert!(dir.join("model.safetensors.index.json").is_file());
    let want = reference(dir);
    // The directory, as a user passes it: the index is found in it.
    same_as_candle(dir, dir, DType::F32, &want.prompt).await;

    let run = support::streamed(dir, u64::MAX / 4, &want.prompt, GENERATED).await;
    assert_eq!(
        run.tokens, want.tokens,
        "greedy tokens differ from transformers'"
    );
    let worst = support::worst_difference(&run.logits, &want.logits);
    println!("largest logit difference from transformers: {worst:e}");
    assert!(
        worst <= TRANSFORMERS_TOLERANCE,
        "logits differ from transformers' by {worst}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_checkpoint_with_a_tied_head_generates_what_candle_generates() {
    let Some(dir) = support::hf_checkpoint(&["--dtype", "bfloat16", "--tie", "--tokens", "1"])
    else {
        return;
    };
    let dir = dir.path();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    // The safetensors file itself, as a user may pass it.
    let file = dir.join("model.safetensors");
    let index = hyperion::format::read_index(&file).unwrap();
    assert!(
        index.find_tensor("lm_head.weight").is_none(),
        "tied: no head tensor"
    );
    same_as_candle(&file, dir, DType::BF16, &[1, 17, 42, 99, 7]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama3_rope_scaling_generates_what_transformers_generates() {
    let Some(dir) = support::hf_checkpoint(&["--llama3-rope"]) else {
        return;
    };
    let dir = dir.path();
    let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = LlamaConfig::from_hf_json(dir, &json).unwrap();
    assert!(config.rope_scaling.is_some(), "{json}");
    assert_eq!(config.rope_freq_base, 500_000.0);
    let want = reference(dir);
    same_as_candle(dir, dir, DType::F32, &want.prompt).await;
    let run = support::streamed(dir, u64::MAX / 4, &want.prompt, GENERATED).await;
    assert_eq!(run.tokens, want.tokens);
    let worst = support::worst_difference(&run.logits, &want.logits);
    assert!(worst <= TRANSFORMERS_TOLERANCE, "{worst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_json_and_config_errors() {
    let Some(dir) = support::hf_checkpoint(&["--tokens", "1"]) else {
        return;
    };
    let dir = dir.path();
    let tokenizer = TextTokenizer::for_model(dir).unwrap();
    assert_eq!(tokenizer.encode("w1 w17 w42").unwrap(), [1, 17, 42]);
    assert_eq!(tokenizer.decode(&[5, 6]).unwrap(), "w5 w6");
    assert_eq!(tokenizer.eos(), Some(2));

    // What this model does not run: one line that names it.
    let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let refuse = |edit: &dyn Fn(&mut serde_json::Value), what: &str| {
        let mut config: serde_json::Value = serde_json::from_str(&json).unwrap();
        edit(&mut config);
        let err = LlamaConfig::from_hf_json(dir, &config.to_string()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(what) && !msg.contains('\n'), "{msg}");
    };
    refuse(&|c| c["attention_bias"] = true.into(), "attention_bias");
    refuse(&|c| c["model_type"] = "gpt2".into(), "\"gpt2\"");
    refuse(&|c| c["hidden_act"] = "gelu".into(), "gelu");
    refuse(
        &|c| {
            c.as_object_mut().unwrap().remove("rms_norm_eps");
        },
        "rms_norm_eps",
    );
    refuse(
        &|c| c["rope_parameters"]["rope_type"] = "yarn".into(),
        "\"yarn\"",
    );

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = StreamedLlama::open(dir, MmapConfig::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json") && !err.contains('\n'), "{err}");
}
