//! Opening a GGUF model reads its metadata, not its tensors. One test in this
//! file: it measures the whole process's read bytes (`rchar` in /proc/self/io).

mod common;

use common::{bytes_read_by_this_process, config};
use hyperion::format::gguf;
use hyperion::MappedModel;

fn gstr(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s);
}

/// A sparse GGUF file: `blocks` layers of one 1 MiB F32 tensor each, and a
/// `vocab_bytes`-byte string in the metadata.
fn write_model(path: &std::path::Path, blocks: u64, vocab_bytes: usize) -> u64 {
    let mib = 1u64 << 20;
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&blocks.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    gstr(&mut b, b"tokenizer.chat_template");
    b.extend_from_slice(&8u32.to_le_bytes());
    gstr(&mut b, &vec![b'x'; vocab_bytes]);
    for i in 0..blocks {
        gstr(&mut b, format!("blk.{i}.ffn_up.weight").as_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(mib / 4).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&(i * mib).to_le_bytes());
    }
    let metadata_len = b.len() as u64;
    let data_start = metadata_len.next_multiple_of(32);
    std::fs::write(path, &b).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(data_start + blocks * mib).unwrap();
    metadata_len
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_only_the_metadata() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (vocab, limit) in [(100, 256u64 << 10), (3 << 20, 8 << 20)] {
        let path = dir.path().join(format!("model-{vocab}.gguf"));
        let metadata_len = write_model(&path, 64, vocab);
        for &backend in common::ENGINES {
            let before = bytes_read_by_this_process();
            let model = MappedModel::open(&path, config(backend, 8 << 20))
                .await
                .unwrap();
            let read = bytes_read_by_this_process() - before;
            assert!(
                read < limit,
                "{backend:?}: opening a 64 MiB model with {metadata_len} bytes of metadata \
                 read {read} bytes"
            );
            let s = model.stats();
            assert_eq!((s.reads, s.bytes_read, s.memory_usage), (0, 0, 0));
            assert_eq!(model.layer_count(), 64);
        }
        let before = bytes_read_by_this_process();
        let header = gguf::read_header(&path).unwrap();
        let read = bytes_read_by_this_process() - before;
        assert_eq!(header.metadata_len, metadata_len);
        assert!(read < limit, "read_header read {read} bytes");
        eprintln!("metadata {metadata_len} bytes: read_header read {read} bytes");
    }
}
