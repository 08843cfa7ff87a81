//! Opening a safetensors model, one file or sharded, reads its headers, not
//! its tensors. One test in this file: it measures the whole process's read
//! bytes (`rchar` in /proc/self/io), which other tests running at the same
//! time would disturb.

mod common;

use std::io::Write;
use std::path::Path;

use common::{bytes_read_by_this_process, config};
use hyperion::MappedModel;

/// Writes a safetensors file of `blocks` blocks of two 1 MiB F32 tensors,
/// named `prefix`N, whose data is a hole (the file is sparse).
fn write_sparse(path: &Path, first_block: usize, blocks: usize) -> Vec<String> {
    const MIB: usize = 1 << 20;
    let mut entries = Vec::new();
    let mut names = Vec::new();
    for b in first_block..first_block + blocks {
        for part in ["q", "k"] {
            let (i, name) = (entries.len(), format!("model.layers.{b}.{part}.weight"));
            entries.push(format!(
                r#""{name}":{{"dtype":"F32","shape":[512,512],"data_offsets":[{},{}]}}"#,
                i * MIB,
                (i + 1) * MIB
            ));
            names.push(name);
        }
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    f.set_len(8 + header.len() as u64 + (entries.len() * MIB) as u64)
        .unwrap();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_reads_only_the_headers() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let single = dir.path().join("model.safetensors");
    write_sparse(&single, 0, 32); // 64 MiB
    let shards = dir.path().join("sharded");
    std::fs::create_dir(&shards).unwrap();
    let mut weight_map = serde_json::Map::new();
    for s in 0..3 {
        let name = format!("model-0000{}-of-00003.safetensors", s + 1);
        for t in write_sparse(&shards.join(&name), s * 16, 16) {
            weight_map.insert(t, name.clone().into());
        }
    }
    let index = serde_json::json!({ "weight_map": weight_map });
    std::fs::write(
        shards.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    for (path, layers) in [(single.as_path(), 32), (shards.as_path(), 48)] {
        for &backend in common::ENGINES {
            let before = bytes_read_by_this_process();
            let model = MappedModel::open(path, config(backend, 8 << 20))
                .await
                .unwrap();
            let read = bytes_read_by_this_process() - before;
            eprintln!("{backend:?}: opening {} read {read} bytes", path.display());
            assert!(
                read < 64 << 10,
                "{backend:?}: opening {} read {read} bytes",
                path.display()
            );
            let s = model.stats();
            assert_eq!((s.reads, s.bytes_read, s.memory_usage), (0, 0, 0));
            assert_eq!(model.layer_count(), layers);
            // And the layers are there to be read.
            let last = model.layer(layers - 1).await.unwrap();
            assert_eq!(last.bytes().len(), 2 << 20);
            assert!(last.bytes().iter().all(|&b| b == 0));
        }
    }
}
