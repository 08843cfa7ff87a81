//! Load: many tasks, many random operations, a model much larger than the
//! budget. `cargo test` runs 1000 tasks × 100 operations per backend (about
//! 2 s each); `HYPERION_LONG=1` (scripts/long-tests.sh) runs ten times more.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::{config, eventually, TestModel, KIB};
use hyperion::{Backend, LayerWeights, MmapConfig};
use rand::{Rng, SeedableRng};

on_all_backends!(
    random_operations_from_many_tasks_stay_within_budget_and_exact,
    the_same_with_adaptive_caching,
    one_cold_layer_awaited_by_a_thousand_tasks_is_read_once
);

fn long() -> bool {
    std::env::var_os("HYPERION_LONG").is_some()
}

async fn random_operations_from_many_tasks_stay_within_budget_and_exact(backend: Backend) {
    random_operations(backend, false, false).await
}

async fn the_same_with_adaptive_caching(backend: Backend) {
    random_operations(backend, true, false).await
}

/// The same through `Backend::Auto` (io_uring here) over a file whose first
/// half is in the page cache: layers there go to the pread engine, the rest
/// to io_uring, and chunks found cached are copied from the cache, all at
/// once from many tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_over_a_half_cached_file_stays_within_budget_and_exact() {
    random_operations(Backend::Auto, true, true).await
}

async fn random_operations(backend: Backend, adaptive: bool, cache_first_half: bool) {
    let (tasks, ops) = if long() { (1000, 1000) } else { (1000, 100) };
    let layers = 96;
    let layer_size = 32 * KIB;
    let budget = 12 * layer_size; // the model is 8× the budget
    let m = Arc::new(TestModel::new(layers, layer_size));
    if cache_first_half {
        // Read it all (cached), then drop the second half's pages (reading
        // only half would cache more through readahead).
        use std::os::fd::AsRawFd;
        let len = std::fs::read(&m.path).unwrap().len() as i64;
        let file = std::fs::File::open(&m.path).unwrap();
        // SAFETY: an open descriptor; the range lies inside the file.
        let rc =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), len / 2, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }
    let expected: Arc<Vec<Vec<u8>>> =
        Arc::new((0..layers).map(|i| m.spec.layer_bytes(i)).collect());
    let model = m
        .open(MmapConfig {
            memory_wait_timeout: Duration::from_secs(60),
            adaptive_caching: adaptive,
            ..config(backend, budget)
        })
        .await;
    let verified = Arc::new(AtomicU64::new(0));
    let over_budget = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for seed in 0..tasks as u64 {
        let (model, expected, verified, over, finished) = (
            model.clone(),
            expected.clone(),
            verified.clone(),
            over_budget.clone(),
            finished.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..ops {
                let i = rng.random_range(0..layers);
                match rng.random_range(0..10) {
                    0..=5 => {
                        let w: LayerWeights = model.layer(i).await.unwrap();
                        assert!(w[..] == expected[i][..], "layer {i}: wrong bytes");
                        verified.fetch_add(w.len() as u64, Relaxed);
                        if rng.random_bool(0.2) {
                            tokio::task::yield_now().await;
                        }
                    }
                    6 | 7 => {
                        let _ = model.prefetch(i);
                    }
                    8 => model.release(i).unwrap(),
                    _ => model.set_priority(i, rng.random_range(-2.0..2.0)).unwrap(),
                }
                // Live buffers and idle pooled ones share the budget.
                let s = model.stats();
                if s.memory_usage + s.pool_idle_bytes > budget {
                    over.fetch_add(1, Relaxed);
                }
            }
            finished.fetch_add(1, Relaxed);
        }));
    }
    // Sample from outside the tasks too, from start to finish of the run.
    let sampler = {
        let (model, over) = (model.clone(), over_budget.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            loop {
                let done = finished.load(Relaxed) == tasks as u64;
                let s = model.stats();
                if s.memory_usage + s.pool_idle_bytes > budget {
                    over.fetch_add(1, Relaxed);
                }
                samples += 1;
                if done && samples >= 200 {
                    break samples;
                }
                // The sampling interval (so that the sampler does not take a
                // core from the tasks), not a synchronisation: the loop ends
                // when the tasks are done, after 200 samples at least.
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    for h in handles {
        h.await.unwrap();
    }
    let samples = sampler.await.unwrap();
    let s = model.stats();
    assert_eq!(over_budget.load(Relaxed), 0);
    assert!(s.peak_memory <= budget, "peak {} > {budget}", s.peak_memory);
    assert!(s.evictions > 0 && s.reads > layers as u64);
    if common::fills_buffers(backend) {
        assert!(s.pool_reuses > 0, "the pool was never used: {s:?}");
    }
    if cache_first_half && common::direct_io_works(&m.path) {
        assert!(
            s.page_cache_bytes > 0,
            "nothing came from the page cache: {s:?}"
        );
        assert!(
            s.page_cache_bytes < s.bytes_read,
            "everything came from the page cache: {s:?}"
        );
    }
    println!(
        "{backend:?} (adaptive: {adaptive}): {} operations by {tasks} tasks, {} reads ({} of {} MiB from the page cache), {} evictions, {} MiB verified, peak {} of {budget}, {samples} samples from outside",
        tasks * ops,
        s.reads,
        s.page_cache_bytes >> 20,
        s.bytes_read >> 20,
        s.evictions,
        verified.load(Relaxed) >> 20,
        s.peak_memory
    );
    common::close_and_expect_freed(model).await;
}

async fn one_cold_layer_awaited_by_a_thousand_tasks_is_read_once(backend: Backend) {
    let m = TestModel::new(2, 256 * KIB);
    let model = m.open(config(backend, 1 << 20)).await;
    let gate = common::Gate::closed();
    gate.install(&model);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (model, barrier) = (model.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                model.layer(1).await
            })
        })
        .collect();
    gate.wait_entered(1).await;
    eventually("all 1000 fetches wait on the read", || {
        model.stats().misses == 1000
    })
    .await;
    gate.open(10);
    let mut first: Option<LayerWeights> = None;
    for t in tasks {
        let w = t.await.unwrap().unwrap();
        match &first {
            Some(f) => assert!(LayerWeights::ptr_eq(f, &w)),
            None => {
                m.check(1, &w);
                first = Some(w);
            }
        }
    }
    let s = model.stats();
    assert_eq!(
        s.reads, 1,
        "1000 tasks awaiting one cold layer must cause one read"
    );
    assert_eq!(s.coalesced, 999);
}
