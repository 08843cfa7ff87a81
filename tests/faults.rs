//! Injected I/O faults: every fetch yields the exact bytes or a typed error,
//! no waiter is left stuck, and the budget returns to zero afterwards.
//! Needs `--features fault-injection` (README's test command enables it).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, TestModel, KIB};
use hyperion::faults::FaultPlan;
use hyperion::{Backend, Error, MappedModel, MmapConfig};

const LAYERS: usize = 16;

/// Fetches every layer (several rounds, with evictions) under `plan`; returns
/// (exact layers, typed errors). Panics on wrong bytes, an untyped error or a
/// fetch that does not finish.
async fn run(backend: Backend, plan: FaultPlan, chunk: u64) -> (usize, usize, Arc<FaultPlan>) {
    let m = TestModel::new(LAYERS, 96 * KIB + 8);
    let plan = Arc::new(plan);
    let cfg = MmapConfig {
        read_chunk_size: chunk,
        reads_in_flight: 4,
        ..config(backend, 6 * 100 * KIB)
    };
    let model = MappedModel::open_with_faults(&m.path, cfg, Arc::clone(&plan))
        .await
        .unwrap();
    let expected: Arc<Vec<Vec<u8>>> =
        Arc::new((0..LAYERS).map(|i| m.spec.layer_bytes(i)).collect());
    let (mut ok, mut failed) = (0, 0);
    for round in 0..3 {
        // Each task checks and drops its layer itself, so the fetches only
        // ever hold memory briefly.
        let fetches: Vec<_> = (0..LAYERS)
            .map(|i| {
                let _ = model.prefetch((i + round) % LAYERS);
                let (model, expected) = (model.clone(), Arc::clone(&expected));
                tokio::spawn(async move {
                    let w = model.layer(i).await?;
                    assert!(w[..] == expected[i][..], "layer {i}: wrong bytes");
                    Ok::<(), Error>(())
                })
            })
            .collect();
        for (i, f) in fetches.into_iter().enumerate() {
            let result = tokio::time::timeout(Duration::from_secs(20), f)
                .await
                .expect("a fetch under faults must finish")
                .unwrap();
            match result {
                Ok(()) => ok += 1,
                Err(Error::Io { ref op, .. }) if op.contains(&format!("layer {i}")) => failed += 1,
                Err(e) => panic!("layer {i}: unexpected error {e}"),
            }
        }
    }
    // Buffers of failed reads, some dropped on the ring thread when the
    // kernel completes their last request, are freed too: none stays pooled.
    common::close_and_expect_freed(model).await;
    println!(
        "{backend:?}: {} faults injected; {ok} fetches exact, {failed} typed errors",
        plan.injected()
    );
    (ok, failed, plan)
}

on_all_backends!(
    transient_errors_are_retried_or_reported,
    hard_errors_are_typed_and_leave_nothing_stuck,
    delays_reorder_completions_without_changing_bytes
);

async fn transient_errors_are_retried_or_reported(backend: Backend) {
    let plan = FaultPlan::new(1).with_errors(0.3, &[libc::EINTR, libc::EAGAIN, libc::ECANCELED]);
    let (ok, failed, plan) = run(backend, plan, 16 * KIB).await;
    assert!(plan.injected() > 10, "{} faults", plan.injected());
    if common::fills_buffers(backend) {
        // io_uring and pread (and so Auto) retry transient errors: every
        // layer arrives.
        assert_eq!((ok, failed), (3 * LAYERS, 0), "{backend:?}");
    } else {
        // mmap has no transient errors of its own: injected ones are reported.
        assert_eq!(backend, Backend::Mmap);
        assert!(ok > 0 && failed > 0 && ok + failed == 3 * LAYERS);
    }
}

async fn hard_errors_are_typed_and_leave_nothing_stuck(backend: Backend) {
    // mmap draws one fault per layer read, the others one per chunk (seven
    // here): at 10% mmap sometimes put every fault on prefetches no fetch
    // joined, and no fetch saw an error.
    let rate = if backend == Backend::Mmap { 0.3 } else { 0.1 };
    let plan = FaultPlan::new(2).with_errors(rate, &[libc::EIO]);
    let (ok, failed, plan) = run(backend, plan, 16 * KIB).await;
    assert!(plan.injected() > 0);
    assert!(failed > 0, "some fetches must see the EIO");
    assert!(ok > 0, "the others arrive exact");
}

async fn delays_reorder_completions_without_changing_bytes(backend: Backend) {
    let plan = FaultPlan::new(3).with_delays(0.5, Duration::from_millis(3));
    let (ok, failed, plan) = run(backend, plan, 8 * KIB).await;
    assert!(plan.injected() > 10);
    assert_eq!((ok, failed), (3 * LAYERS, 0));
}

/// Short reads exist only for the engines that issue read requests into
/// buffers they fill (mmap reads by touching pages): these run on auto,
/// io_uring and pread.
mod requests {
    use super::*;

    on_buffer_backends!(short_reads_are_resumed, everything_at_once);
}

async fn short_reads_are_resumed(backend: Backend) {
    let plan = FaultPlan::new(4).with_short_reads(0.6);
    let (ok, failed, plan) = run(backend, plan, 32 * KIB).await;
    assert!(plan.injected() > 10, "{} short reads", plan.injected());
    assert_eq!((ok, failed), (3 * LAYERS, 0));
}

async fn everything_at_once(backend: Backend) {
    let plan = FaultPlan::new(5)
        .with_errors(0.05, &[libc::EINTR, libc::EIO, libc::ECANCELED])
        .with_short_reads(0.3)
        .with_delays(0.3, Duration::from_millis(2));
    let (ok, failed, _) = run(backend, plan, 8 * KIB).await;
    assert_eq!(ok + failed, 3 * LAYERS);
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_that_cannot_be_created_falls_back_to_pread_or_is_an_error() {
    let m = TestModel::new(3, 64 * KIB);
    let plan = || Arc::new(FaultPlan::new(6).with_ring_setup_failure());
    let err = MappedModel::open_with_faults(&m.path, config(Backend::IoUring, 1 << 20), plan())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err}");
    let model = MappedModel::open_with_faults(&m.path, config(Backend::Auto, 1 << 20), plan())
        .await
        .unwrap();
    assert_eq!(model.backend(), Backend::Pread);
    for i in 0..3 {
        m.check(i, &model.layer(i).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_buffer_whose_read_fails_midway_exposes_no_stale_bytes() {
    // One layer size and room for two layers: after the first two, every read
    // lands in a pooled buffer that holds another layer's bytes. Errors and
    // short reads strike chunks in the middle of layers; every fetch must give
    // the exact bytes or an error, never a mix with the previous layer's.
    let m = TestModel::new(8, 96 * KIB + 8);
    let plan = Arc::new(
        FaultPlan::new(11)
            .with_errors(0.08, &[libc::EIO])
            .with_short_reads(0.3),
    );
    let cfg = MmapConfig {
        read_chunk_size: 16 * KIB,
        reads_in_flight: 2,
        ..config(Backend::IoUring, 2 * 100 * KIB)
    };
    let model = MappedModel::open_with_faults(&m.path, cfg, Arc::clone(&plan))
        .await
        .unwrap();
    let (mut ok, mut failed) = (0, 0);
    for _round in 0..6 {
        for i in 0..8 {
            match model.layer(i).await {
                Ok(w) => {
                    m.check(i, &w);
                    ok += 1;
                }
                Err(Error::Io { .. }) => failed += 1,
                Err(e) => panic!("layer {i}: unexpected error {e}"),
            }
        }
    }
    let s = model.stats();
    assert!(s.pool_reuses >= 30, "buffers were not reused: {s:?}");
    assert!(ok > 0 && failed > 0, "{ok} exact, {failed} failed");
    assert!(s.memory_usage + s.pool_idle_bytes <= 2 * 100 * KIB);
    common::close_and_expect_freed(model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_checksum_follows_layer_order_when_completions_do_not() {
    // Layers large enough to be hashed while they are read, in many small
    // chunks with several in flight and random delays: chunks complete out of
    // order, and the digest must still be that of the bytes in order.
    let m = TestModel::new(4, 512 * KIB + 4 * KIB + 8);
    let plan = Arc::new(FaultPlan::new(12).with_delays(0.6, Duration::from_millis(2)));
    let cfg = MmapConfig {
        read_chunk_size: 16 * KIB,
        reads_in_flight: 6,
        ..config(Backend::IoUring, 4 << 20)
    };
    let model = MappedModel::open_with_faults(&m.path, cfg, Arc::clone(&plan))
        .await
        .unwrap();
    for i in 0..4 {
        let w = model.layer(i).await.unwrap();
        m.check(i, &w);
    }
    assert!(plan.injected() > 20, "{} delays", plan.injected());
}
