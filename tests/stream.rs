//! `stream_layers`: the pipelined pass, on every backend.

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::{config, eventually, Gate, TestModel, KIB};
use futures::StreamExt;
use hyperion::{Backend, Error, MmapConfig};

on_all_backends!(
    streams_every_layer_in_order_within_the_budget,
    follows_any_order_and_reports_bad_indices_in_place,
    reads_ahead_exactly_lookahead_layers,
    a_dropped_stream_leaks_nothing,
);

async fn streams_every_layer_in_order_within_the_budget(backend: Backend) {
    let m = TestModel::new(24, 128 * KIB);
    let budget = 5 * 128 * KIB;
    let model = m.open(config(backend, budget)).await;
    assert_eq!(model.default_lookahead(), 4);
    let mut stream = model.stream_layers(0..24, None);
    let mut seen = 0;
    while let Some(w) = stream.next().await {
        let w = w.unwrap();
        assert_eq!(w.layer_index(), seen);
        m.check(seen, &w);
        assert!(model.memory_usage() <= budget);
        // Some compute for the read-ahead to run beside: a pass over the
        // weights (bounded work, not a length of time).
        let sum: f64 = w
            .tensors()
            .filter_map(|t| t.as_f32())
            .flatten()
            .map(|&x| f64::from(x))
            .sum();
        std::hint::black_box(sum);
        // A pass whose compute outlasts the reads: the next layer's
        // read-ahead lands before the consumer moves on. (A consumer that
        // outruns the disk can make a fetch evict a layer read ahead for a
        // later step, which is then read twice: not what this test is about.)
        if seen + 1 < 24 {
            eventually("the next layer's read-ahead lands", || {
                model.descriptor(seen + 1).unwrap().cached
            })
            .await;
        }
        seen += 1;
    }
    assert_eq!(seen, 24);
    let s = model.stats();
    assert!(s.peak_memory <= budget);
    assert_eq!(s.reads, 24, "one pass reads each layer once");
    assert!(
        s.prefetch_used + s.coalesced >= 20,
        "read-ahead served the pass: {s:?}"
    );
}

async fn follows_any_order_and_reports_bad_indices_in_place(backend: Backend) {
    let m = TestModel::new(4, 64 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let items: Vec<_> = model
        .stream_layers([3, 1, 99, 1, 0], Some(2))
        .collect()
        .await;
    assert_eq!(items.len(), 5);
    for (item, want) in items.iter().zip([Some(3), Some(1), None, Some(1), Some(0)]) {
        match (item, want) {
            (Ok(w), Some(i)) => m.check(i, w),
            (Err(Error::LayerOutOfRange { layer: 99, .. }), None) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn reads_ahead_exactly_lookahead_layers(backend: Backend) {
    let m = TestModel::new(10, 64 * KIB);
    let model = m
        .open(MmapConfig {
            prefetch_threads: 8,
            ..config(backend, 1 << 20)
        })
        .await;
    let gate = Gate::closed();
    gate.install(&model);
    let mut stream = model.stream_layers(0..10, Some(3));
    let first = tokio::spawn(async move {
        let w = stream.next().await.unwrap().unwrap();
        (w, stream)
    });
    // Layer 0 and three read-ahead layers reach the gate; no more.
    gate.wait_entered(4).await;
    assert_eq!(gate.entered.load(SeqCst), 4);
    gate.open(1000);
    let (w, _stream) = first.await.unwrap();
    m.check(0, &w);
    eventually("the read-ahead lands", || {
        (1..4).all(|i| model.descriptor(i).unwrap().cached)
    })
    .await;
    // A fourth read-ahead would have been issued at the same step as the
    // three that have now landed, through the gate, open since: it is not
    // there, and neither is its read.
    assert!(!model.descriptor(4).unwrap().cached);
    assert_eq!(gate.entered.load(SeqCst), 4);
    let s = model.stats();
    assert_eq!((s.reads, s.prefetch_issued), (4, 3), "{s:?}");
}

async fn a_dropped_stream_leaks_nothing(backend: Backend) {
    let m = TestModel::new(12, 64 * KIB);
    let model = m.open(config(backend, 4 * 64 * KIB)).await;
    {
        let mut stream = model.stream_layers(0..12, None);
        for i in 0..5 {
            m.check(i, &stream.next().await.unwrap().unwrap());
        }
    }
    assert!(model.memory_usage() <= 4 * 64 * KIB);
    let watcher = model.clone();
    model.close();
    eventually("memory returns to zero", || watcher.memory_usage() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_lookahead_follows_the_budget() {
    let m = TestModel::new(4, 100 * KIB);
    let fp = 100 * KIB + 4 * KIB - (100 * KIB) % (4 * KIB); // 100 KiB rounded to blocks
    for (budget, want) in [(fp, 0), (2 * fp, 1), (3 * fp, 2), (100 * fp, 4)] {
        let model = m.open(config(Backend::Mmap, budget)).await;
        assert_eq!(model.default_lookahead(), want, "budget {budget}");
    }
}
