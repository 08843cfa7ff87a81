//! The buffer pool and the streaming checksum: buffers are reused, idle
//! pooled memory counts toward the budget and is reclaimed before any cached
//! layer is evicted, close frees it, and a checksum computed chunk by chunk
//! while reading catches what the whole-layer one catches.
//!
//! The pool holds the buffers the engines fill, so these tests run on each
//! engine that fills buffers (`on_buffer_backends!`: auto, io_uring and
//! pread); mmap returns views of the file and has no pool.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::{config, TestModel, KIB};
use hyperion::format::tmai::{write_tmai, TensorDecl};
use hyperion::{Backend, BufferPool, DType, Error, MappedModel, MmapConfig, Stats};

on_buffer_backends!(
    evicted_buffers_are_reused_for_later_layers,
    released_layers_stay_pooled_charged_and_are_reused,
    idle_buffers_of_another_size_are_reclaimed_before_anything_is_evicted,
    a_fetch_waiting_for_memory_takes_a_buffer_pooled_meanwhile,
    close_unmaps_the_pool_and_buffers_dropped_later,
    the_streaming_checksum_matches_and_catches_corruption_anywhere,
);

/// The budget holds live buffers and idle pooled ones together.
fn assert_within_budget(s: &Stats, budget: u64) {
    assert!(
        s.memory_usage + s.pool_idle_bytes <= budget,
        "live {} + idle {} > budget {budget}",
        s.memory_usage,
        s.pool_idle_bytes
    );
    assert!(s.peak_memory <= budget, "peak {} > {budget}", s.peak_memory);
}

async fn evicted_buffers_are_reused_for_later_layers(backend: Backend) {
    let m = TestModel::new(12, 64 * KIB);
    let budget = 4 * 64 * KIB;
    let model = m.open(config(backend, budget)).await;
    for i in 0..12 {
        let w = model.layer(i).await.unwrap();
        m.check(i, &w);
        assert_within_budget(&model.stats(), budget);
    }
    let s = model.stats();
    assert_eq!(s.reads, 12);
    // Layers 0–3 fill the budget; each later read evicts one layer, whose
    // buffer goes to the pool and is taken over at once.
    assert_eq!(s.evictions, 8);
    assert_eq!(s.pool_reuses, 8, "{s:?}");
    assert_eq!(s.memory_usage, budget);
    assert_eq!(s.pool_idle_bytes, 0);
}

async fn released_layers_stay_pooled_charged_and_are_reused(backend: Backend) {
    let m = TestModel::new(8, 64 * KIB);
    let budget = 4 * 64 * KIB;
    let model = m.open(config(backend, budget)).await;
    let first: Vec<_> = (0..4).map(|i| model.layer(i)).collect();
    drop(futures::future::try_join_all(first).await.unwrap());
    for i in 0..4 {
        model.release(i).unwrap();
    }
    let s = model.stats();
    // Released layers are not "memory usage" any more, but their buffers are
    // idle in the pool and still charged: the budget is full.
    assert_eq!((s.memory_usage, s.pool_idle_bytes), (0, budget));
    assert_within_budget(&s, budget);
    // A full budget of idle buffers is no obstacle: every read takes one.
    let held: Vec<_> = (4..8).map(|i| model.layer(i)).collect();
    let held = futures::future::try_join_all(held).await.unwrap();
    for (k, w) in held.iter().enumerate() {
        m.check(4 + k, w);
    }
    let s = model.stats();
    assert_eq!((s.pool_reuses, s.evictions), (4, 0), "{s:?}");
    assert_eq!((s.memory_usage, s.pool_idle_bytes), (budget, 0));
    assert_within_budget(&s, budget);
}

/// Writes a model whose layers have the given sizes (f32 values).
fn write_sized(path: &Path, sizes: &[u64]) -> Vec<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(l, &n)| (0..n).map(|b| (b as usize * 7 + l * 13) as u8).collect())
        .collect();
    let layers: Vec<Vec<(TensorDecl, &[u8])>> = bytes
        .iter()
        .enumerate()
        .map(|(l, b)| {
            vec![(
                TensorDecl::new(
                    format!("layers.{l}.w"),
                    DType::F32,
                    vec![b.len() as u64 / 4],
                ),
                &b[..],
            )]
        })
        .collect();
    write_tmai(path, &layers).unwrap();
    bytes
}

async fn idle_buffers_of_another_size_are_reclaimed_before_anything_is_evicted(backend: Backend) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("sizes.tmai");
    let expected = write_sized(&path, &[64 * KIB, 64 * KIB, 64 * KIB, 64 * KIB, 128 * KIB]);
    let budget = 256 * KIB;
    let model = MappedModel::open(&path, config(backend, budget))
        .await
        .unwrap();
    let held = model.layer(0).await.unwrap();
    drop(model.layer(3).await.unwrap());
    let (one, two) = (model.layer(1).await.unwrap(), model.layer(2).await.unwrap());
    drop((one, two));
    model.release(1).unwrap();
    model.release(2).unwrap();
    // Layer 0 held, layer 3 cached, two 64 KiB buffers idle: the budget is full.
    let s = model.stats();
    assert_eq!((s.memory_usage, s.pool_idle_bytes), (128 * KIB, 128 * KIB));
    // A 128 KiB layer fits no idle buffer: the two idle ones are unmapped to
    // make room, and the cached layer 3 stays.
    let big = model.layer(4).await.unwrap();
    assert!(big[..] == expected[4][..]);
    let s = model.stats();
    assert_within_budget(&s, budget);
    assert_eq!((s.pool_reclaimed, s.evictions), (2, 0), "{s:?}");
    assert!(model.descriptor(3).unwrap().cached, "layer 3 was evicted");
    assert!(held[..] == expected[0][..]);
}

async fn a_fetch_waiting_for_memory_takes_a_buffer_pooled_meanwhile(backend: Backend) {
    let m = TestModel::new(3, 64 * KIB);
    let budget = 2 * 64 * KIB;
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::from_secs(10),
            ..config(backend, budget)
        })
        .await;
    let a = model.layer(0).await.unwrap();
    let b = model.layer(1).await.unwrap();
    model.release(0).unwrap();
    model.release(1).unwrap();
    // Everything is held: the fetch waits. Nothing the model reports says
    // when its read has begun to wait for memory (no counter of fetches
    // waiting, and the read gate comes after the reservation), so it is
    // given 50 ms to get there; if it has not, the test still checks that
    // the buffer pooled by the drop is the one the read takes.
    let waiting = tokio::spawn(model.layer(2));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    // Dropping a handle pools its buffer; the waiter takes it over.
    drop(a);
    let w = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter must be woken by the pooled buffer")
        .unwrap()
        .unwrap();
    m.check(2, &w);
    assert_eq!(model.stats().pool_reuses, 1);
    drop(b);
}

async fn close_unmaps_the_pool_and_buffers_dropped_later(backend: Backend) {
    let m = TestModel::new(8, 64 * KIB);
    let model = m.open(config(backend, 4 * 64 * KIB)).await;
    let outliving = model.layer(7).await.unwrap();
    for i in 0..7 {
        drop(model.layer(i).await.unwrap());
        model.release(i).unwrap();
    }
    let watcher = model.clone();
    assert!(watcher.stats().pool_idle_bytes > 0);
    model.close();
    let s = watcher.stats();
    assert_eq!((s.memory_usage, s.pool_idle_bytes), (64 * KIB, 0));
    // A handle that outlives close is unmapped when it drops, not pooled.
    m.check(7, &outliving);
    drop(outliving);
    let s = watcher.stats();
    assert_eq!((s.memory_usage, s.pool_idle_bytes), (0, 0));
}

/// A model of `layers` layers of `size` bytes, with `bytes` of layer
/// `corrupt` flipped at offsets `at`.
fn corrupted(layers: usize, size: u64, corrupt: usize, at: &[u64]) -> TestModel {
    let m = TestModel::new(layers, size);
    let offset = hyperion::format::read_index(&m.path).unwrap().layers[corrupt].offset();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&m.path)
        .unwrap();
    for &o in at {
        let old = m.spec.layer_bytes(corrupt)[o as usize];
        f.seek(SeekFrom::Start(offset + o)).unwrap();
        f.write_all(&[!old]).unwrap();
    }
    f.sync_all().unwrap();
    m
}

async fn the_streaming_checksum_matches_and_catches_corruption_anywhere(backend: Backend) {
    // Every engine that fills buffers hashes while reading where it can:
    // io_uring (chunks as they land, in order, direct reads only), pread (each
    // chunk in cache right after its read) and Auto (either), direct and
    // buffered.
    let size = 1024 * KIB + 4 * KIB + 12; // hashed while read; a ragged last chunk
    for ((chunk, depth), direct_io) in [(4 * KIB, 4), (64 * KIB, 2), (4 << 20, 2)]
        .into_iter()
        .flat_map(|c| [true, false].map(|d| (c, d)))
    {
        let cfg = MmapConfig {
            read_chunk_size: chunk,
            reads_in_flight: depth,
            direct_io,
            ..config(backend, 4 << 20)
        };
        // Intact: every layer verifies (a digest fed out of order, or missing
        // a chunk, would not).
        let m = TestModel::new(3, size);
        let model = m.open(cfg.clone()).await;
        for i in 0..3 {
            m.check(i, &model.layer(i).await.unwrap());
        }
        // One flipped byte, first, in the middle or last, is caught.
        for at in [0, size / 2 + 1, size - 1] {
            let m = corrupted(3, size, 1, &[at]);
            let model = m.open(cfg.clone()).await;
            let err = model.layer(1).await.unwrap_err();
            assert!(
                matches!(err, Error::ChecksumMismatch { layer: 1, .. }),
                "{backend:?} direct {direct_io}, chunk {chunk}, byte {at}: {err}"
            );
            assert_eq!(model.memory_usage(), 0);
            m.check(2, &model.layer(2).await.unwrap());
        }
    }
}

/// `MmapConfig::buffer_pool`: a closed model's idle buffers, and a handle
/// that outlived close, go to the shared pool (up to its cap) instead of
/// back to the kernel, and the next model's reads take them over, with
/// their exact bytes and within its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_pool_carries_buffers_to_the_next_model() {
    for backend in [Backend::Auto, Backend::Pread] {
        let pool = BufferPool::new(6 * 64 * KIB + 64 * KIB);
        let with_pool = |budget| MmapConfig {
            buffer_pool: Some(pool.clone()),
            ..config(backend, budget)
        };
        let budget = 4 * 64 * KIB + 16 * KIB;
        let first = TestModel::new(8, 64 * KIB);
        let model = first.open(with_pool(budget)).await;
        let outliving = model.layer(7).await.unwrap();
        for i in 0..7 {
            drop(model.layer(i).await.unwrap());
            model.release(i).unwrap();
        }
        let watcher = model.clone();
        model.close();
        assert_eq!(watcher.stats().memory_usage, 64 * KIB);
        let kept = pool.retained_bytes();
        assert!(kept >= 64 * KIB, "{pool:?}");
        first.check(7, &outliving);
        drop(outliving);
        assert_eq!(watcher.stats().memory_usage, 0);
        assert!(pool.retained_bytes() > kept, "the late buffer is kept too");
        assert!(pool.retained_bytes() <= pool.max_bytes());

        let second = TestModel::new(8, 64 * KIB);
        let model = second.open(with_pool(budget)).await;
        for i in 0..8 {
            let w = model.layer(i).await.unwrap();
            second.check(i, &w);
            assert_within_budget(&model.stats(), budget);
        }
        // Both buffers kept (the idle one and the late one) were taken over.
        let s = model.stats();
        assert_eq!(pool.reuses(), 2, "{pool:?}");
        assert_eq!(pool.retained_bytes(), 0);
        assert!(s.pool_reuses >= 2, "{s:?}");
        let watcher = model.clone();
        model.close();
        assert_eq!(watcher.stats().memory_usage, 0);
        pool.clear();
        assert_eq!(pool.retained_bytes(), 0);
    }
}
